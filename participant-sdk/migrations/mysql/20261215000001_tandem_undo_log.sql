-- AT undo log of the Tandem SDK (MySQL / MariaDB). Apply it in each database
-- an AT participant writes to (the SDK does so with `AtParticipant::install`,
-- or copy it into your own migrations). Idempotent.
--
-- One row per branch, written in the same local transaction as the branch's
-- changes; a rollback replays it, a commit deletes it in a background batch.
-- state 0: phase-1 images; 1: rolled back, or empty-rollback marker.
-- branch_key is chosen by the SDK and sent as the branch payload's undo_key.
CREATE TABLE IF NOT EXISTS tandem_undo_log (
    xid           varchar(64)  NOT NULL,
    branch_key    varchar(64)  NOT NULL,
    state         smallint     NOT NULL,
    rollback_info longtext,
    created_at    datetime(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (xid, branch_key)
) ENGINE = InnoDB;
