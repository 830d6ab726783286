-- Saga branch barrier of the Tandem SDK (MySQL / MariaDB). Apply it in each
-- participant database (the SDK does so with `SagaParticipant::install`, or
-- copy it into your own migrations). Idempotent.
--
-- Rows are written in the same local transaction as a step's business
-- action or compensation, and only ever inserted (or purged by age):
--   op          the callback the row stands for: 'action' or 'compensate'
--   origin      the callback whose transaction inserted it:
--                 ('action', 'action')          the action committed
--                 ('compensate', 'compensate')  a compensation committed
--                 ('action', 'compensate')      the compensation came first
--                   (an empty compensation): it took the action's row, so a
--                   late action finds it taken and is refused
-- The primary key is the barrier, written with INSERT IGNORE on it alone:
-- no locking read of an absent key, so none of the gap locks that deadlock
-- a fence read with SELECT ... FOR UPDATE under REPEATABLE READ.
-- Identifiers compare byte for byte (ascii_bin): xids and branch ids that
-- differ only in case are different branches.
CREATE TABLE IF NOT EXISTS tandem_barrier (
    xid        varchar(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    branch_id  varchar(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    op         varchar(10)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    origin     varchar(10)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    resource   varchar(128) CHARACTER SET utf8mb4 NOT NULL,
    created_at datetime(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (xid, branch_id, op),
    KEY tandem_barrier_created (created_at),
    CONSTRAINT tandem_barrier_op CHECK (op IN ('action', 'compensate')),
    CONSTRAINT tandem_barrier_origin CHECK (origin IN ('action', 'compensate')),
    -- Only a compensation writes a compensation's row.
    CONSTRAINT tandem_barrier_compensate_origin CHECK (op = 'action' OR origin = 'compensate')
) ENGINE = InnoDB;
