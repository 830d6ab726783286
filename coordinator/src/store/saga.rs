//! A saga's statements: its insert with every step, and the driver's
//! writes while its actions run (starts, answers, the move to compensation,
//! the end).

use super::rows::{tx_cols, BranchRow, TxRow};
use super::sql::ms;
use super::{Store, StoreError};
use crate::dtm::DtmOptions;
use std::time::Duration;
use tandem_wire::{ActionStatus, BranchId, BranchStatus, GlobalStatus, Mode, RollbackReason, Xid};

/// A submitted saga to insert.
#[derive(Debug, Clone)]
pub struct NewSaga {
    /// Fresh xid.
    pub xid: Xid,
    /// Optional name.
    pub name: Option<String>,
    /// Timeout in ms.
    pub timeout_ms: u64,
    /// Optional client idempotency key.
    pub idempotency_key: Option<String>,
    /// Transient failures retried per action.
    pub retry_limit: Option<u32>,
    /// The name of the token that began it (none: authentication off).
    pub began_by: Option<String>,
    /// The steps, in definition order.
    pub steps: Vec<NewStep>,
    /// Submitted through DTM's protocol: its options.
    pub dtm: Option<DtmOptions>,
}

/// One step of a [`NewSaga`].
#[derive(Debug, Clone)]
pub struct NewStep {
    /// Fresh branch id.
    pub branch_id: BranchId,
    /// Step name (the branch's resource).
    pub resource: String,
    /// The action's URL.
    pub action_url: String,
    /// The compensation's URL (the branch's callback URL).
    pub compensate_url: String,
    /// Payload of both.
    pub payload: Option<serde_json::Value>,
    /// Indexes of the steps it runs after.
    pub after: Vec<u32>,
    /// `running` for the steps the driver calls as soon as the saga is
    /// stored (their start is recorded with the definition), else `pending`.
    pub action: ActionStatus,
}

/// What a saga write records of one step.
#[derive(Debug, Clone)]
pub struct StepMark {
    /// The step's branch.
    pub branch_id: BranchId,
    /// Its action's new status, or `None` to keep it.
    pub action: Option<ActionStatus>,
    /// Action calls to add.
    pub attempts_added: i32,
    /// The action's last error, or `None` to keep it.
    pub error: Option<String>,
    /// The branch's new status, or `None` to keep it.
    pub status: Option<BranchStatus>,
}

/// What happens to the lease with a saga write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAfter {
    /// The driver goes on: the lease holds this long from now.
    Hold(Duration),
    /// The driver stops: the lease is released and any coordinator may take
    /// the saga after this delay (a retry).
    RetryIn(Duration),
    /// The saga ended.
    Finished,
}

/// How a saga write commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Waits for the WAL flush: an action's start (its compensation must
    /// run if the saga fails, whoever drives it then) and the move to
    /// compensation (a decision).
    Synchronous,
    /// `synchronous_commit = off`: answers and the end, whose loss makes a
    /// recovering driver call an action again (the barrier makes it a no-op).
    Relaxed,
}

/// A saga write: the saga's move (if any) and what was learnt of its steps.
#[derive(Debug, Clone)]
pub struct SagaWrite {
    /// The status the driver saw (the write is conditional on it and on the lease).
    pub from: GlobalStatus,
    /// The new status and, for a rollback, why.
    pub to: Option<(GlobalStatus, Option<RollbackReason>)>,
    /// The steps' progress.
    pub marks: Vec<StepMark>,
    /// The lease afterwards.
    pub lease: LeaseAfter,
}

impl Store {
    /// Inserts a saga `running`, leased to `owner` for `lease`, with its
    /// steps, in one durable statement: the definition (and the start of the
    /// steps marked `running`) is on disk before any action is called.
    /// Returns the row and its branches; `None` if the idempotency key is
    /// taken (the caller reads that transaction).
    pub async fn insert_saga(
        &self,
        s: &NewSaga,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(TxRow, Vec<BranchRow>)>, StoreError> {
        let ids: Vec<&str> = s.steps.iter().map(|x| x.branch_id.as_str()).collect();
        let resources: Vec<&str> = s.steps.iter().map(|x| x.resource.as_str()).collect();
        let callbacks: Vec<&str> = s.steps.iter().map(|x| x.compensate_url.as_str()).collect();
        let payloads: Vec<Option<&serde_json::Value>> = s.steps.iter().map(|x| x.payload.as_ref()).collect();
        let actions: Vec<&str> = s.steps.iter().map(|x| x.action_url.as_str()).collect();
        let after: Vec<String> =
            s.steps.iter().map(|x| x.after.iter().map(u32::to_string).collect::<Vec<_>>().join(",")).collect();
        let statuses: Vec<&str> = s.steps.iter().map(|x| x.action.as_str()).collect();
        let attempts: Vec<i32> = s.steps.iter().map(|x| i32::from(x.action == ActionStatus::Running)).collect();
        let n = i32::try_from(s.steps.len()).unwrap_or(i32::MAX);
        let q = sqlx::query_as::<_, TxRow>(concat!(
            "WITH t AS (INSERT INTO global_transactions (xid, mode, name, status, timeout_ms, deadline, \
                            idempotency_key, owner, next_attempt_at, retry_limit, branch_count, branches_unprepared, \
                            began_by, dtm) \
                        VALUES ($1, $2, $3, $4, $5, now() + $5 * interval '1 millisecond', $6, $7, \
                                now() + $8 * interval '1 millisecond', $9, $10, $10, $20, $21) \
                        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING *), \
             b AS (INSERT INTO branches (xid, branch_id, resource, callback_url, status, payload, action_url, \
                                         after_steps, action_status, action_attempts) \
                   SELECT t.xid, s.branch_id, s.resource, s.callback_url, $11, s.payload, s.action_url, \
                          string_to_array(s.after_steps, ',')::int[], s.action_status, s.attempts \
                   FROM t, unnest($12::text[], $13::text[], $14::text[], $15::jsonb[], $16::text[], $17::text[], \
                                  $18::text[], $19::int[]) WITH ORDINALITY \
                        AS s(branch_id, resource, callback_url, payload, action_url, after_steps, action_status, \
                             attempts, ord) \
                   ORDER BY s.ord) \
             SELECT ",
            tx_cols!(),
            " FROM t"
        ))
        .bind(s.xid.as_str())
        .bind(Mode::Saga.as_str())
        .bind(s.name.as_deref())
        .bind(GlobalStatus::Running.as_str())
        .bind(i64::try_from(s.timeout_ms).unwrap_or(i64::MAX))
        .bind(s.idempotency_key.as_deref())
        .bind(owner)
        .bind(ms(lease))
        .bind(s.retry_limit.map(|r| i32::try_from(r).unwrap_or(i32::MAX)))
        .bind(n)
        .bind(BranchStatus::Registered.as_str())
        .bind(&ids)
        .bind(&resources)
        .bind(&callbacks)
        .bind(&payloads)
        .bind(&actions)
        .bind(&after)
        .bind(&statuses)
        .bind(&attempts)
        .bind(s.began_by.as_deref())
        .bind(s.dtm.as_ref().map(sqlx::types::Json));
        let Some(tx) = self.timed("insert_saga", q.fetch_optional(&self.durable)).await? else {
            return Ok(None);
        };
        let branches = s
            .steps
            .iter()
            .enumerate()
            .map(|(i, x)| BranchRow {
                branch_id: x.branch_id.clone(),
                xid: s.xid.clone(),
                seq: i as i64,
                resource: x.resource.clone(),
                callback_url: x.compensate_url.clone(),
                status: BranchStatus::Registered,
                payload: x.payload.clone(),
                lock_keys: Vec::new(),
                attempts: 0,
                last_error: None,
                action_url: Some(x.action_url.clone()),
                after_steps: Some(x.after.iter().map(|&j| j as i32).collect()),
                action_status: Some(x.action),
                action_attempts: u32::from(x.action == ActionStatus::Running),
                action_error: None,
                destination: None,
            })
            .collect();
        Ok(Some((tx, branches)))
    }

    /// Records a saga driver's progress in one statement, only while `owner`
    /// holds the lease and the saga is still in `w.from`. `None`: the lease
    /// was lost; someone else drives the saga now.
    pub async fn saga_write(
        &self,
        xid: &Xid,
        owner: &str,
        w: &SagaWrite,
        durability: Durability,
    ) -> Result<Option<TxRow>, StoreError> {
        let ids: Vec<&str> = w.marks.iter().map(|m| m.branch_id.as_str()).collect();
        let actions: Vec<Option<&str>> = w.marks.iter().map(|m| m.action.map(ActionStatus::as_str)).collect();
        let added: Vec<i32> = w.marks.iter().map(|m| m.attempts_added).collect();
        let errors: Vec<Option<&str>> = w.marks.iter().map(|m| m.error.as_deref()).collect();
        let statuses: Vec<Option<&str>> = w.marks.iter().map(|m| m.status.map(BranchStatus::as_str)).collect();
        let (to, reason) = match w.to {
            Some((to, reason)) => (Some(to.as_str()), reason.map(RollbackReason::as_str)),
            None => (None, None),
        };
        let decides = w.to.is_some_and(|(to, _)| !to.is_terminal());
        let (release, finishes, next_ms, retry) = match w.lease {
            LeaseAfter::Hold(d) => (false, false, ms(d), 0),
            LeaseAfter::RetryIn(d) => (true, false, ms(d), 1),
            LeaseAfter::Finished => (true, true, 0.0, 0),
        };
        let q = sqlx::query_as::<_, TxRow>(concat!(
            "WITH t AS (UPDATE global_transactions SET status = COALESCE($6, status), \
                        rollback_reason = COALESCE($7, rollback_reason), \
                        decided_at = CASE WHEN $8 THEN now() ELSE decided_at END, \
                        finished_at = CASE WHEN $9 THEN now() ELSE finished_at END, \
                        owner = CASE WHEN $10 THEN NULL ELSE owner END, \
                        next_attempt_at = CASE WHEN $9 THEN NULL ELSE now() + $11 * interval '1 millisecond' END, \
                        attempts = attempts + $12 \
                        WHERE xid = $13 AND owner = $14 AND status = $15 RETURNING *), \
             s AS (UPDATE branches b SET action_status = COALESCE(m.action_status, b.action_status), \
                          action_attempts = b.action_attempts + m.added, \
                          action_error = COALESCE(m.error, b.action_error), \
                          status = COALESCE(m.status, b.status) \
                   FROM t, unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[]) \
                        AS m(branch_id, action_status, added, error, status) \
                   WHERE b.xid = t.xid AND b.branch_id = m.branch_id) \
             SELECT ",
            tx_cols!(),
            " FROM t"
        ))
        .bind(&ids)
        .bind(&actions)
        .bind(&added)
        .bind(&errors)
        .bind(&statuses)
        .bind(to)
        .bind(reason)
        .bind(decides)
        .bind(finishes)
        .bind(release)
        .bind(next_ms)
        .bind(retry)
        .bind(xid.as_str())
        .bind(owner)
        .bind(w.from.as_str());
        let pool = match durability {
            Durability::Synchronous => &self.durable,
            Durability::Relaxed => &self.relaxed,
        };
        self.timed("saga_write", q.fetch_optional(pool)).await
    }
}
