-- Saga branch barrier of the Tandem SDK (PostgreSQL). Apply it in each
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
-- The primary key is the barrier: a second insert of a key does nothing
-- (ON CONFLICT DO NOTHING), and one racing an uncommitted insert of the same
-- key waits for it, which orders a racing action and compensation.
CREATE TABLE IF NOT EXISTS tandem_barrier (
    xid        text        NOT NULL,
    branch_id  text        NOT NULL,
    op         text        NOT NULL CHECK (op IN ('action', 'compensate')),
    origin     text        NOT NULL CHECK (origin IN ('action', 'compensate')),
    resource   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, branch_id, op),
    -- Only a compensation writes a compensation's row.
    CHECK (op = 'action' OR origin = 'compensate')
);
CREATE INDEX IF NOT EXISTS tandem_barrier_created ON tandem_barrier (created_at);
