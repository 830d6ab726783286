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

-- Takes a branch's locks, all or none: called by the registration statement
-- in the same statement that inserts the branch, so that a conflict (raised
-- as SQLSTATE TD409) rolls back the branch row and every key taken so far.
-- A key the transaction already holds is granted again. DO NOTHING takes no
-- row lock on another transaction's lock row (DO UPDATE would, even when its
-- WHERE fails), so a registration never holds up that holder's release.
CREATE FUNCTION tandem_take_locks(p_xid text, p_branch_id text, p_resource text,
                                  p_row_keys text[], p_lock_keys text[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    granted integer;
BEGIN
    INSERT INTO global_locks (row_key, xid, branch_id, resource, lock_key)
    SELECT k.row_key, p_xid, p_branch_id, p_resource, k.lock_key
    FROM unnest(p_row_keys, p_lock_keys) AS k(row_key, lock_key)
    ON CONFLICT (row_key) DO NOTHING;
    SELECT count(*) INTO granted FROM global_locks WHERE row_key = ANY(p_row_keys) AND xid = p_xid;
    IF granted < cardinality(p_row_keys) THEN
        RAISE EXCEPTION USING ERRCODE = 'TD409', MESSAGE = 'global lock held by another transaction';
    END IF;
    RETURN granted;
END
$$;
