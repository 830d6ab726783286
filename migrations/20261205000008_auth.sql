-- Authentication (issue 15).

-- The name of the token that began a transaction (NULL: begun with
-- authentication off). A `client` token reads and decides only its own.
ALTER TABLE global_transactions ADD COLUMN began_by text;

-- The console's login sessions: the cookie carries a random id, the table
-- only its SHA-256, so a copy of the table logs nobody in. Any coordinator
-- process knows every session; logout deletes the row.
CREATE TABLE console_sessions (
    id_hash     bytea PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
