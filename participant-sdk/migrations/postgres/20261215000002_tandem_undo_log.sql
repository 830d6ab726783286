-- AT undo log of the Tandem SDK (PostgreSQL). Apply it in each database an
-- AT participant writes to (the SDK does so with `AtParticipant::install`, or
-- copy it into your own migrations). Idempotent.
--
-- One row per branch, written in the same local transaction as the branch's
-- changes; a rollback replays it, a commit deletes it in a background batch.
CREATE TABLE IF NOT EXISTS tandem_undo_log (
    xid           text        NOT NULL,
    branch_key    text        NOT NULL,  -- chosen by the SDK, sent as the branch payload's undo_key
    state         smallint    NOT NULL,  -- 0: phase-1 images; 1: rolled back, or empty-rollback marker
    rollback_info text,                  -- UndoLog as plain JSON
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, branch_key)
);
