-- Outbox of the Tandem SDK (PostgreSQL): the local message table. Apply it
-- in the service's own database (the SDK does so with `Outbox::install`, or
-- copy it into your own migrations). Idempotent.
--
-- A message is a row of tandem_outbox, inserted by `Outbox::enqueue` in the
-- business transaction: it commits or rolls back with the business rows.
-- The relay publishes it and sets sent_at in one transaction of its own.
--
-- tandem_outbox_key: one row per ordering key, its last sequence number.
--   Enqueue increments it (INSERT ... ON CONFLICT DO UPDATE), which locks
--   the row until the business transaction ends: messages of one key get
--   their seq in commit order, so the relay never finds a message whose
--   earlier one (lower seq) is still to commit. A row whose key has no
--   message left and has not been used for the retention is purged (the
--   key's seq then starts again at 1).
-- tandem_outbox:
--   message_id       sent with the message (Tandem-Message-Id, Nats-Msg-Id,
--                    AMQP message_id): consumers and JetStream dedupe on it
--   ordering_key     messages of one key are published in seq order, each
--   seq              only once every earlier one was sent
--   target_kind      'http' (target: the URL, POSTed) or 'destination'
--                    (target: a destination name of the relay's brokers)
--   payload          the body, as enqueued (JSON)
--   headers          JSON array of [name, value] pairs sent along
--   attempts         publish attempts so far; last_error, the last failure's
--   next_attempt_at  when a failed message may be tried again (backoff)
--   sent_at          when the broker or endpoint confirmed it (kept, then
--                    purged after the retention)
CREATE TABLE IF NOT EXISTS tandem_outbox_key (
    ordering_key text        PRIMARY KEY,
    last_seq     bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS tandem_outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      text        NOT NULL UNIQUE,
    ordering_key    text        NOT NULL,
    seq             bigint      NOT NULL,
    target_kind     text        NOT NULL CHECK (target_kind IN ('http', 'destination')),
    target          text        NOT NULL,
    payload         bytea       NOT NULL,
    headers         text        NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    sent_at         timestamptz,
    UNIQUE (ordering_key, seq)
);
-- The relay's scan for due messages, and its check for an earlier unsent
-- message of the same key; the purge's scan of sent rows by age.
CREATE INDEX IF NOT EXISTS tandem_outbox_due ON tandem_outbox (next_attempt_at, id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS tandem_outbox_unsent ON tandem_outbox (ordering_key, seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS tandem_outbox_sent ON tandem_outbox (sent_at) WHERE sent_at IS NOT NULL;
