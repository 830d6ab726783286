-- 3PC participant table of the Tandem SDK (PostgreSQL). Apply it in each
-- database a 3PC participant works in (the SDK does so with
-- `ThreePhaseParticipant::install`, or copy it into your own migrations).
-- Idempotent.
--
-- One row per branch the participant voted on.
CREATE TABLE IF NOT EXISTS tandem_three_phase (
    xid          text        NOT NULL,
    branch_id    text        NOT NULL,
    -- The participant's resource: recover() re-arms only its own branches.
    resource     text        NOT NULL,
    -- voted | aborted | committed. Pre-committed is a prepared transaction whose
    -- own update turns 'voted' into 'committed' when it commits.
    state        text        NOT NULL,
    -- Voted: when the branch aborts on its own without PreCommit (Unix ms).
    deadline_ms  bigint,
    -- Why it aborted, or how it committed (DoCommit or its own timeout).
    detail       text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, branch_id)
);
