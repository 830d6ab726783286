-- Global transactions and their branches.
--
-- Text statuses with CHECK constraints (not enum types) so that later modes can
-- add statuses with a constraint swap instead of ALTER TYPE.

CREATE TABLE global_transactions (
    xid              text        PRIMARY KEY,
    mode             text        NOT NULL CHECK (mode IN ('tcc', 'xa', 'at', '3pc', 'saga')),
    name             text,
    status           text        NOT NULL CHECK (status IN ('active', 'committing', 'committed',
                                     'rolling_back', 'rolled_back', 'commit_failed', 'rollback_failed')),
    rollback_reason  text        CHECK (rollback_reason IN ('requested', 'timeout', 'branch_failed')),
    timeout_ms       bigint      NOT NULL CHECK (timeout_ms > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    deadline         timestamptz NOT NULL,
    decided_at       timestamptz,
    finished_at      timestamptz,
    -- Client-supplied Idempotency-Key of the begin request.
    idempotency_key  text        UNIQUE,
    -- Coordinator instance that holds the phase-2 lease (diagnostic and fencing).
    owner            text,
    -- While deciding or decided and unfinished: the time after which any
    -- coordinator may take phase 2 over (lease expiry, or the next retry).
    next_attempt_at  timestamptz,
    -- Phase-2 passes that ended with a branch in an unknown state (drives backoff).
    attempts         integer     NOT NULL DEFAULT 0
);

-- Recovery scans: undecided past deadline, decided and due.
CREATE INDEX global_transactions_deadline_active ON global_transactions (deadline)
    WHERE status = 'active';
CREATE INDEX global_transactions_due ON global_transactions (next_attempt_at)
    WHERE status IN ('committing', 'rolling_back');
-- Listing, newest first.
CREATE INDEX global_transactions_created ON global_transactions (created_at DESC, xid DESC);

CREATE TABLE branches (
    branch_id     text        PRIMARY KEY,
    xid           text        NOT NULL REFERENCES global_transactions (xid) ON DELETE CASCADE,
    -- Registration order (phase 2 walks it forwards or backwards by mode).
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    resource      text        NOT NULL,
    callback_url  text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('registered', 'prepared', 'phase1_failed',
                                  'committed', 'rolled_back', 'commit_failed', 'rollback_failed')),
    payload       jsonb,
    lock_keys     text[]      NOT NULL DEFAULT '{}',
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX branches_xid_seq ON branches (xid, seq);
