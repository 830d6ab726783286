-- Global row locks of AT mode.
--
-- One row per locked business row. The primary key is the lock itself: two
-- transactions cannot both insert `resource^^^lock_key`, so the database,
-- not the coordinator's memory, enforces mutual exclusion, and any number of
-- coordinator processes share the locks.
CREATE TABLE global_locks (
    row_key     text        PRIMARY KEY,   -- resource || '^^^' || lock_key
    xid         text        NOT NULL,
    branch_id   text        NOT NULL,
    resource    text        NOT NULL,
    lock_key    text        NOT NULL,      -- as the participant sent it, e.g. public.stock:42
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Release when a branch's phase 2 completes; listing by transaction.
CREATE INDEX global_locks_branch ON global_locks (xid, branch_id);
