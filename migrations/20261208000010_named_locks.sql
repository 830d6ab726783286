-- Named locks (`/v1/named-locks`): leases with fencing tokens, re-entrant
-- holds and a FIFO queue of waiters. Every change to a lock and its queue
-- takes the lock's row first, so one name's operations are serialized
-- across every coordinator process.

-- Fencing tokens. One sequence for every name: strictly increasing per name
-- (and globally), never reused, across restarts and failovers; a lock row
-- may therefore be deleted when idle without its next token going back.
CREATE SEQUENCE named_lock_tokens AS bigint;

CREATE TABLE named_locks (
    name        text PRIMARY KEY,
    -- The holder; NULL when free. A lease past `expires_at` counts as free.
    owner       text,
    -- Re-entrant holds of `owner`.
    holds       integer NOT NULL DEFAULT 0,
    -- The current (or last) grant's fencing token; 0: never granted.
    token       bigint NOT NULL DEFAULT 0,
    granted_at  timestamptz,
    -- End of the holder's lease; when free, when it was released (idle rows are deleted after a while).
    expires_at  timestamptz NOT NULL DEFAULT now(),
    -- The lease the holder asked for, in milliseconds.
    ttl_ms      bigint NOT NULL DEFAULT 0,
    -- false: granted to a waiter on a release or an expiry, and its
    -- acquire request has not answered it yet (its next acquire claims it,
    -- and is not a re-entry).
    claimed     boolean NOT NULL DEFAULT true,
    -- Rows in named_lock_waiters for this name (kept under the row lock).
    waiting     integer NOT NULL DEFAULT 0
);

-- Locks with a queue: what the reaper looks at for expired holders.
CREATE INDEX named_locks_queued ON named_locks (expires_at) WHERE waiting > 0;
-- Rows nobody waits for: the idle ones among them are deleted.
CREATE INDEX named_locks_unqueued ON named_locks (expires_at) WHERE waiting = 0;
-- What operators list: held or waited for.
CREATE INDEX named_locks_active ON named_locks (name) WHERE owner IS NOT NULL OR waiting > 0;

CREATE TABLE named_lock_waiters (
    -- Queue order: first in, first granted.
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    owner        text NOT NULL,
    ttl_ms       bigint NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    -- The waiter's place is kept until then; it asks again before (each
    -- acquire request moves it). Past it, the waiter has vanished and is
    -- skipped and deleted.
    alive_until  timestamptz NOT NULL,
    UNIQUE (name, owner)
);
CREATE INDEX named_lock_waiters_queue ON named_lock_waiters (name, id);
