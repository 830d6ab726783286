-- Three-phase commit (mode 3pc).
--
-- Per-transaction phase timeouts (NULL for other modes), and two statuses
-- before the decision: can_commit (votes being collected) and pre_committed
-- (PreCommit acknowledgements being collected). A coordinator that dies in
-- either leaves the row leased; recovery takes it over when the lease expires,
-- so the due index covers them too.
ALTER TABLE global_transactions
    ADD COLUMN can_commit_timeout_ms bigint,
    ADD COLUMN pre_commit_timeout_ms bigint,
    ADD COLUMN do_commit_timeout_ms  bigint;

DROP INDEX global_transactions_due;
CREATE INDEX global_transactions_due ON global_transactions (next_attempt_at)
    WHERE status IN ('committing', 'rolling_back', 'can_commit', 'pre_committed');
