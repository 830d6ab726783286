-- Outbox of the Tandem SDK (MySQL 8 / MariaDB 10.6+: the relay claims with
-- SKIP LOCKED): the local message table. Apply it in the service's own
-- database (the SDK does so with `Outbox::install`, or copy it into your own
-- migrations). Idempotent.
--
-- A message is a row of tandem_outbox, inserted by `Outbox::enqueue` in the
-- business transaction: it commits or rolls back with the business rows.
-- The relay publishes it and sets sent_at in one transaction of its own.
--
-- tandem_outbox_key: one row per ordering key, its last sequence number.
--   Enqueue increments it (INSERT ... ON DUPLICATE KEY UPDATE), which locks
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
-- Keys compare byte for byte (ascii_bin): keys that differ only in case are
-- different keys.
CREATE TABLE IF NOT EXISTS tandem_outbox_key (
    ordering_key varchar(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    last_seq     bigint       NOT NULL,
    updated_at   datetime(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (ordering_key)
) ENGINE = InnoDB;
CREATE TABLE IF NOT EXISTS tandem_outbox (
    id              bigint       NOT NULL AUTO_INCREMENT,
    message_id      varchar(64)  CHARACTER SET ascii NOT NULL,
    ordering_key    varchar(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    seq             bigint       NOT NULL,
    target_kind     varchar(16)  CHARACTER SET ascii NOT NULL,
    target          text         CHARACTER SET utf8mb4 NOT NULL,
    payload         longblob     NOT NULL,
    headers         text         CHARACTER SET utf8mb4 NOT NULL,
    created_at      datetime(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    attempts        int          NOT NULL DEFAULT 0,
    next_attempt_at datetime(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    last_error      text         CHARACTER SET utf8mb4 NULL,
    sent_at         datetime(6)  NULL,
    PRIMARY KEY (id),
    UNIQUE KEY tandem_outbox_message_id (message_id),
    UNIQUE KEY tandem_outbox_key_seq (ordering_key, seq),
    -- The relay's scan for due messages (sent_at IS NULL first) and the
    -- purge's scan of sent rows by age.
    KEY tandem_outbox_due (sent_at, next_attempt_at),
    -- The relay's check for an earlier unsent message of the same key.
    KEY tandem_outbox_unsent (ordering_key, sent_at, seq),
    CONSTRAINT tandem_outbox_target_kind CHECK (target_kind IN ('http', 'destination'))
) ENGINE = InnoDB;
