-- Fencing tokens seen by a resource that a distributed lock protects
-- (tandem_sdk::locks::fencing): per protected resource, the highest token
-- a write was accepted with. A write with a lower token is refused.
CREATE TABLE IF NOT EXISTS tandem_lock_fence (
    resource    text PRIMARY KEY,
    token       bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
