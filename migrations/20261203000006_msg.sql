-- Two-phase messages (mode msg).
--
-- A prepared message is inserted `prepared` with its deliveries as
-- branches: an HTTP delivery's callback_url is its endpoint; a broker
-- delivery has an empty callback_url and the configured destination's name
-- in `destination`. The message keeps the producer's back-check endpoint
-- (check_url) and its deliveries' order (delivery_order: concurrent |
-- in_order). `next_attempt_at` of a prepared message is its deadline: the
-- recovery worker takes it then, like a leased status, and back-checks it.
ALTER TABLE global_transactions
    ADD COLUMN check_url      text,
    ADD COLUMN delivery_order text;

ALTER TABLE branches
    ADD COLUMN destination text;

DROP INDEX global_transactions_due;
CREATE INDEX global_transactions_due ON global_transactions (next_attempt_at)
    WHERE status IN ('committing', 'rolling_back', 'can_commit', 'pre_committed', 'running', 'prepared', 'delivering');
