-- Global transactions and their branches.
--
-- Every global transaction inserts and updates these rows several times, so
-- they carry only what the hot path needs:
-- - few indexes (each is paid on each non-HOT write);
-- - no CHECK constraints: PostgreSQL re-reads their stored expressions for
--   every statement's executor (measured: 6 % of its CPU under the benchmark).
--   Modes and statuses are text written only from the coordinator's typed
--   enums (tandem-wire), which is where their domain is enforced; later modes
--   add values without a migration.

CREATE TABLE global_transactions (
    -- UUIDv7 text: sorts by creation time, so "newest first" is ORDER BY xid DESC.
    xid              text        PRIMARY KEY,
    mode             text        NOT NULL,  -- tcc | xa | at | 3pc | saga
    name             text,
    -- active | committing | committed | rolling_back | rolled_back | commit_failed | rollback_failed
    status           text        NOT NULL,
    rollback_reason  text,       -- requested | timeout | branch_failed
    timeout_ms       bigint      NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    deadline         timestamptz NOT NULL,
    decided_at       timestamptz,
    finished_at      timestamptz,
    -- Client-supplied Idempotency-Key of the begin request.
    idempotency_key  text,
    -- Coordinator instance that holds the phase-2 lease (diagnostic and fencing).
    owner            text,
    -- While decided and unfinished: the time after which any coordinator may
    -- take phase 2 over (lease expiry, or the next retry).
    next_attempt_at  timestamptz,
    -- Phase-2 passes that ended with a branch in an unknown state (drives backoff).
    attempts         integer     NOT NULL DEFAULT 0,
    -- Bumped by every branch registration and report: a decision computed from
    -- a read at version v is written only if the row is still at v.
    version          integer     NOT NULL DEFAULT 0,
    -- Counters kept by registration and report, so that the common decision
    -- can be checked and written in one statement (see store::decide).
    branch_count        integer  NOT NULL DEFAULT 0,
    branches_failed     integer  NOT NULL DEFAULT 0,  -- in phase1_failed
    branches_unprepared integer  NOT NULL DEFAULT 0   -- not in prepared
) WITH (fillfactor = 70);  -- room for HOT updates of version / lease columns

CREATE UNIQUE INDEX global_transactions_idempotency_key ON global_transactions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Recovery scans: undecided past deadline, decided and due.
CREATE INDEX global_transactions_deadline_active ON global_transactions (deadline)
    WHERE status = 'active';
CREATE INDEX global_transactions_due ON global_transactions (next_attempt_at)
    WHERE status IN ('committing', 'rolling_back');

-- No foreign key to global_transactions: a branch is only ever inserted by a
-- statement that has just updated (and so locked) its active transaction row,
-- and the RI trigger would cost a query per registration.
CREATE TABLE branches (
    xid           text        NOT NULL,
    branch_id     text        NOT NULL,
    -- Registration order (phase 2 walks it forwards or backwards by mode).
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    resource      text        NOT NULL,
    callback_url  text        NOT NULL,
    -- registered | prepared | phase1_failed | committed | rolled_back | commit_failed | rollback_failed
    status        text        NOT NULL,
    payload       jsonb,
    lock_keys     text[]      NOT NULL DEFAULT '{}',
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, branch_id)
) WITH (fillfactor = 80);
