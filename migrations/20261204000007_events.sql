-- What the console's timeline and overview read, kept apart from the hot
-- tables so that recording it costs them nothing.
--
-- tx_events: a transaction's attempts (every callback, delivery and
-- back-check with its outcome and latency), takeovers and operator actions.
-- Written by each coordinator's event log in batches (one row per
-- transaction per batch, its events as a JSON array), asynchronously
-- committed: a crash may lose the last fraction of a second of them, which
-- only thins a diagnostic. An operator's stop is written by the statement
-- that stops the transaction, durably. Begin, registrations, decision and
-- end are not copied here: the transaction's own rows carry their times.
-- Deleted after the retention period (--events-retention-ms) in small
-- batches by any coordinator.
CREATE TABLE tx_events (
    xid          text        NOT NULL,
    -- The first event's time: what retention and the BRIN index go by.
    at           timestamptz NOT NULL,
    coordinator  text        NOT NULL,
    -- json, not jsonb: stored as sent, no parse into the binary form on the
    -- write path; it is read whole, per transaction, by the timeline only.
    events       json        NOT NULL
);
CREATE INDEX tx_events_xid ON tx_events (xid);
-- Appended in time order: a BRIN index finds old rows for retention at
-- almost no cost per insert.
CREATE INDEX tx_events_at ON tx_events USING brin (at);

-- Transactions that ended, per minute, mode, terminal status and
-- coordinator: the overview's charts and counts, without scanning
-- global_transactions. Upserted by each coordinator about once a second;
-- kept 48 hours.
CREATE TABLE tx_minutes (
    minute       timestamptz NOT NULL,
    mode         text        NOT NULL,
    outcome      text        NOT NULL,
    coordinator  text        NOT NULL,
    n            bigint      NOT NULL,
    PRIMARY KEY (minute, mode, outcome, coordinator)
);

-- Transactions that ended needing a person (the console's attention list).
-- A row enters it only at its end, so the hot path never writes it.
CREATE INDEX global_transactions_attention ON global_transactions (xid)
    WHERE status IN ('commit_failed', 'rollback_failed', 'heuristic_mixed');
