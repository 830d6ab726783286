-- TCC fence of the Tandem SDK. Apply it in each participant database (the SDK
-- does so with `TccParticipant::install`, or copy it into your own
-- migrations). Idempotent.
--
-- One row per branch, written in the same local transaction as the business
-- change of each step:
--   tried        Try committed
--   committed    Confirm committed (a repeated confirm does nothing)
--   rolled_back  Cancel undid a committed Try (a repeated cancel does nothing)
--   suspended    Cancel arrived before any Try: empty rollback; a late Try
--                finds this row and is refused (anti-suspension)
CREATE TABLE IF NOT EXISTS tandem_tcc_fence (
    xid         text        NOT NULL,
    branch_id   text        NOT NULL,
    resource    text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('tried', 'committed', 'rolled_back', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, branch_id)
);
CREATE INDEX IF NOT EXISTS tandem_tcc_fence_updated ON tandem_tcc_fence (updated_at);
