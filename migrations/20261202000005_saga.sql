-- Saga (mode saga).
--
-- A submitted saga is inserted `running` with its steps as branches: each
-- branch's callback_url is the step's compensation, action_url its action
-- (NULL for a step registered step by step: the client ran the action
-- itself), after_steps the indexes (in seq order, from 0) of the steps it
-- waits for. The action's progress is kept apart from the branch's status
-- (which, for a saga, tells its compensation): action_status is
-- pending | running | succeeded | failed (NULL: run by the client).
ALTER TABLE global_transactions
    ADD COLUMN retry_limit integer;

ALTER TABLE branches
    ADD COLUMN action_url      text,
    ADD COLUMN after_steps     integer[],
    ADD COLUMN action_status   text,
    ADD COLUMN action_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN action_error    text;

-- A running saga is leased by the driver calling its actions; recovery
-- takes it over when the lease expires or its retry is due.
DROP INDEX global_transactions_due;
CREATE INDEX global_transactions_due ON global_transactions (next_attempt_at)
    WHERE status IN ('committing', 'rolling_back', 'can_commit', 'pre_committed', 'running');
