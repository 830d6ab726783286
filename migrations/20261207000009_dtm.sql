-- DTM's HTTP protocol (docs/dtm-compatibility.md). A transaction begun through
-- /api/dtmsvr keeps the DTM options it was begun with here (branch headers, the
-- per-call timeout, what the client asked for retries and timeouts); a non-null
-- value also means its branches are called the way DTM calls them (query
-- parameters gid, trans_type, branch_id, op; the payload as the raw body).
ALTER TABLE global_transactions
    ADD COLUMN dtm jsonb;
