-- Lock rows were keyed `resource || '^^^' || lock_key`, which two different
-- (resource, lock key) pairs can share (resource `a^^^b` with key `c`, and
-- resource `a` with key `b^^^c`): such rows blocked each other. The key now
-- starts with the resource's length in bytes, which makes it injective.
-- Rewritten through a copy, so that no new key meets an old one mid-way.
-- All coordinators of a database must run this version once it is applied.
CREATE TEMPORARY TABLE global_locks_old ON COMMIT DROP AS SELECT * FROM global_locks;
DELETE FROM global_locks;
INSERT INTO global_locks (row_key, xid, branch_id, resource, lock_key, created_at)
SELECT octet_length(resource)::text || ':' || resource || lock_key, xid, branch_id, resource, lock_key, created_at
FROM global_locks_old;
