//! Begin, branch registration and phase-1 reports.

use super::rows::{branch_cols, tx_cols, BranchRow, BranchWithMode, TxRow};
use super::{Store, StoreError};
use crate::dtm::DtmOptions;
use crate::metrics::Metrics;
use sqlx::PgPool;
use std::collections::HashMap;
use tandem_wire::{BranchId, BranchStatus, GlobalStatus, Mode, ThreePhaseTimeouts, Xid};

/// A transaction to insert.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    /// Fresh xid.
    pub xid: Xid,
    /// Mode.
    pub mode: Mode,
    /// Optional name.
    pub name: Option<String>,
    /// Timeout in ms (validated: 1 to the coordinator's largest).
    pub timeout_ms: u64,
    /// Optional client idempotency key.
    pub idempotency_key: Option<String>,
    /// Phase timeouts (`3pc` only).
    pub three_phase: Option<ThreePhaseTimeouts>,
    /// The name of the token that began it (none: authentication off).
    pub began_by: Option<String>,
    /// Begun through DTM's protocol: its options.
    pub dtm: Option<DtmOptions>,
}

/// A branch to insert.
#[derive(Debug, Clone)]
pub struct NewBranch {
    /// Fresh branch id.
    pub branch_id: BranchId,
    /// Resource name.
    pub resource: String,
    /// Callback URL.
    pub callback_url: String,
    /// Payload.
    pub payload: Option<serde_json::Value>,
    /// Lock keys.
    pub lock_keys: Vec<String>,
}

/// Result of a phase-1 report.
#[derive(Debug, Clone)]
pub enum ReportResult<R> {
    /// No such transaction.
    NoTransaction,
    /// No such branch in that transaction.
    NoBranch,
    /// The state machine refused.
    Refused(R),
    /// Applied (or already so).
    Applied(Box<BranchWithMode>),
}

/// How a branch moving `from` → `to` changes the transaction's
/// (`branches_failed`, `branches_unprepared`) counters.
fn counter_deltas(from: BranchStatus, to: BranchStatus) -> (i32, i32) {
    let failed = |s: BranchStatus| i32::from(s == BranchStatus::Phase1Failed);
    let unprepared = |s: BranchStatus| i32::from(s != BranchStatus::Prepared);
    (failed(to) - failed(from), unprepared(to) - unprepared(from))
}

impl Store {
    /// Inserts a new active transaction. Returns `None` if `idempotency_key`
    /// is already taken (the caller then reads that transaction).
    ///
    /// Relaxed commit: nothing outside depends on this row until a branch
    /// registers, and that durable commit flushes the WAL past this insert.
    /// Batched with concurrent begins.
    pub async fn insert_transaction(&self, t: &NewTransaction) -> Result<Option<TxRow>, StoreError> {
        self.begins.submit(t.clone()).await
    }

    /// Registers a branch if the transaction is active and not past its
    /// deadline. `None` means it is not (the caller finds out why).
    ///
    /// Durable: the participant runs its phase 1 once this returns. Bumping
    /// the transaction's `version` in the same statement row-locks it against
    /// a concurrent decision and invalidates any decision computed before.
    /// Batched with concurrent registrations (one statement, one WAL flush).
    pub async fn insert_branch(&self, xid: &Xid, b: &NewBranch) -> Result<Option<BranchWithMode>, StoreError> {
        self.registrations.submit((xid.clone(), b.clone())).await
    }

    /// Applies a phase-1 report under the transaction's and the branch's row
    /// locks, bumping the transaction's `version`; `apply` is the pure
    /// transition. Durable.
    pub async fn report_branch<R>(
        &self,
        xid: &Xid,
        branch_id: &BranchId,
        detail: Option<&str>,
        apply: impl FnOnce(GlobalStatus, BranchStatus) -> Result<BranchStatus, R>,
    ) -> Result<ReportResult<R>, StoreError> {
        let started = std::time::Instant::now();
        let r = async {
            let mut db = self.durable.begin().await?;
            let Some(tx) = sqlx::query_as::<_, TxRow>(concat!(
                "SELECT ",
                tx_cols!(),
                " FROM global_transactions WHERE xid = $1 FOR UPDATE"
            ))
            .bind(xid.as_str())
            .fetch_optional(&mut *db)
            .await?
            else {
                return Ok(ReportResult::NoTransaction);
            };
            let Some(branch) = sqlx::query_as::<_, BranchRow>(concat!(
                "SELECT ",
                branch_cols!(),
                " FROM branches WHERE xid = $1 AND branch_id = $2 FOR UPDATE"
            ))
            .bind(xid.as_str())
            .bind(branch_id.as_str())
            .fetch_optional(&mut *db)
            .await?
            else {
                return Ok(ReportResult::NoBranch);
            };
            let next = match apply(tx.status, branch.status) {
                Ok(next) => next,
                Err(refusal) => return Ok(ReportResult::Refused(refusal)),
            };
            if next == branch.status {
                return Ok(ReportResult::Applied(Box::new(BranchWithMode { mode: tx.mode, row: branch })));
            }
            let updated = sqlx::query_as::<_, BranchRow>(concat!(
                "UPDATE branches SET status = $3, last_error = COALESCE($4, last_error) \
                 WHERE xid = $1 AND branch_id = $2 RETURNING ",
                branch_cols!()
            ))
            .bind(xid.as_str())
            .bind(branch_id.as_str())
            .bind(next.as_str())
            .bind(detail)
            .fetch_one(&mut *db)
            .await?;
            let (failed, unprepared) = counter_deltas(branch.status, next);
            sqlx::query(
                "UPDATE global_transactions SET version = version + 1, branches_failed = branches_failed + $2, \
                 branches_unprepared = branches_unprepared + $3 WHERE xid = $1",
            )
            .bind(xid.as_str())
            .bind(failed)
            .bind(unprepared)
            .execute(&mut *db)
            .await?;
            db.commit().await?;
            Ok::<_, sqlx::Error>(ReportResult::Applied(Box::new(BranchWithMode { mode: tx.mode, row: updated })))
        }
        .await;
        self.observe("report_branch", started);
        Ok(r?)
    }

    /// The common phase-1 report in one statement: moves the branch from
    /// `registered` to `to` (the state machine's answer for a registered
    /// branch of an active transaction) only if it is exactly there and its
    /// transaction is active, adjusting the transaction's counters in the same
    /// statement. `None`: any other state; use [`Store::report_branch`]. Durable.
    pub async fn report_expected(
        &self,
        xid: &Xid,
        branch_id: &BranchId,
        to: BranchStatus,
        detail: Option<&str>,
    ) -> Result<Option<BranchWithMode>, StoreError> {
        let (failed, unprepared) = counter_deltas(BranchStatus::Registered, to);
        self.timed(
            "report_expected",
            sqlx::query_as::<_, BranchWithMode>(concat!(
                // The branch row is locked (and rechecked) first; the counters move
                // only with it, so a duplicate report cannot count twice.
                "WITH b AS (UPDATE branches SET status = $3, last_error = COALESCE($4, last_error) \
                            WHERE xid = $1 AND branch_id = $2 AND status = $5 \
                              AND EXISTS (SELECT 1 FROM global_transactions WHERE xid = $1 AND status = $6) \
                            RETURNING ",
                branch_cols!(),
                "), t AS (UPDATE global_transactions g SET version = version + 1, \
                                 branches_failed = branches_failed + $7, \
                                 branches_unprepared = branches_unprepared + $8 \
                          FROM b WHERE g.xid = b.xid AND g.status = $6) \
                 SELECT b.*, (SELECT mode FROM global_transactions WHERE xid = $1) AS tx_mode FROM b"
            ))
            .bind(xid.as_str())
            .bind(branch_id.as_str())
            .bind(to.as_str())
            .bind(detail)
            .bind(BranchStatus::Registered.as_str())
            .bind(GlobalStatus::Active.as_str())
            .bind(failed)
            .bind(unprepared)
            .fetch_optional(&self.durable),
        )
        .await
    }
}

/// Inserts a batch of transactions in one statement; one result per input
/// (`None` where the idempotency key was taken).
pub(super) async fn insert_transactions(
    pool: PgPool,
    metrics: Metrics,
    items: Vec<NewTransaction>,
) -> Result<Vec<Option<TxRow>>, StoreError> {
    let xids: Vec<&str> = items.iter().map(|t| t.xid.as_str()).collect();
    let modes: Vec<&str> = items.iter().map(|t| t.mode.as_str()).collect();
    let names: Vec<Option<&str>> = items.iter().map(|t| t.name.as_deref()).collect();
    let timeouts: Vec<i64> = items.iter().map(|t| i64::try_from(t.timeout_ms).unwrap_or(i64::MAX)).collect();
    let keys: Vec<Option<&str>> = items.iter().map(|t| t.idempotency_key.as_deref()).collect();
    let began_by: Vec<Option<&str>> = items.iter().map(|t| t.began_by.as_deref()).collect();
    let dtm: Vec<Option<sqlx::types::Json<&DtmOptions>>> =
        items.iter().map(|t| t.dtm.as_ref().map(sqlx::types::Json)).collect();
    let phase = |f: fn(&ThreePhaseTimeouts) -> u64| -> Vec<Option<i64>> {
        items.iter().map(|t| t.three_phase.as_ref().map(|p| i64::try_from(f(p)).unwrap_or(i64::MAX))).collect()
    };
    let (can, pre, done) =
        (phase(|p| p.can_commit_timeout_ms), phase(|p| p.pre_commit_timeout_ms), phase(|p| p.do_commit_timeout_ms));
    let rows = super::timed_with(
        &metrics,
        "insert_transactions",
        sqlx::query_as::<_, TxRow>(concat!(
            "INSERT INTO global_transactions (xid, mode, name, status, timeout_ms, deadline, idempotency_key, \
                                             can_commit_timeout_ms, pre_commit_timeout_ms, do_commit_timeout_ms, began_by, dtm) \
             SELECT u.xid, u.mode, u.name, $6, u.timeout_ms, now() + u.timeout_ms * interval '1 millisecond', u.key, \
                    u.can, u.pre, u.done, u.began_by, u.dtm \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $7::bigint[], $8::bigint[], \
                         $9::bigint[], $10::text[], $11::jsonb[]) \
                  AS u(xid, mode, name, timeout_ms, key, can, pre, done, began_by, dtm) \
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING ",
            tx_cols!()
        ))
        .bind(&xids)
        .bind(&modes)
        .bind(&names)
        .bind(&timeouts)
        .bind(&keys)
        .bind(GlobalStatus::Active.as_str())
        .bind(&can)
        .bind(&pre)
        .bind(&done)
        .bind(&began_by)
        .bind(&dtm)
        .fetch_all(&pool),
    )
    .await?;
    let mut by_xid: HashMap<Xid, TxRow> = rows.into_iter().map(|r| (r.xid.clone(), r)).collect();
    Ok(items.iter().map(|t| by_xid.remove(&t.xid)).collect())
}

/// Registers a batch of branches in one durable statement; one result per
/// input (`None` where the transaction is not active, past its deadline, or
/// would pass `max_branches`).
pub(super) async fn insert_branches(
    pool: PgPool,
    metrics: Metrics,
    max_branches: i32,
    items: Vec<(Xid, NewBranch)>,
) -> Result<Vec<Option<BranchWithMode>>, StoreError> {
    let xids: Vec<&str> = items.iter().map(|(x, _)| x.as_str()).collect();
    let ids: Vec<&str> = items.iter().map(|(_, b)| b.branch_id.as_str()).collect();
    let resources: Vec<&str> = items.iter().map(|(_, b)| b.resource.as_str()).collect();
    let urls: Vec<&str> = items.iter().map(|(_, b)| b.callback_url.as_str()).collect();
    let payloads: Vec<Option<&serde_json::Value>> = items.iter().map(|(_, b)| b.payload.as_ref()).collect();
    // Ragged text[][] cannot be bound; each branch's keys travel as one JSON array.
    let keys: Vec<serde_json::Value> = items.iter().map(|(_, b)| serde_json::json!(b.lock_keys)).collect();
    let rows = super::timed_with(
        &metrics,
        "insert_branches",
        sqlx::query_as::<_, BranchWithMode>(concat!(
            // Statuses are bound, not literal, in hot statements: a literal lets a
            // generic plan prefer a partial index (see `Store::connect`).
            "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[]) \
                            WITH ORDINALITY AS u(xid, branch_id, resource, callback_url, payload, lock_keys, ord)), \
                  counts AS (SELECT xid, count(*)::int AS n FROM input GROUP BY xid), \
                  -- Lock the transaction rows in xid order: batches of two coordinators never deadlock.
                  locked AS MATERIALIZED (SELECT g.xid FROM global_transactions g JOIN counts c ON c.xid = g.xid \
                                          ORDER BY g.xid FOR UPDATE OF g), \
                  t AS (UPDATE global_transactions g SET version = version + c.n, branch_count = branch_count + c.n, \
                               branches_unprepared = branches_unprepared + c.n \
                        FROM counts c JOIN locked l ON l.xid = c.xid \
                        WHERE g.xid = c.xid AND g.status = $7 AND g.deadline > now() \
                              AND g.branch_count + c.n <= $9 RETURNING g.xid, g.mode), \
                  ins AS (INSERT INTO branches (branch_id, xid, resource, callback_url, status, payload, lock_keys) \
                          SELECT i.branch_id, i.xid, i.resource, i.callback_url, $8, i.payload, \
                                 ARRAY(SELECT jsonb_array_elements_text(i.lock_keys)) \
                          FROM input i JOIN t ON t.xid = i.xid ORDER BY i.ord RETURNING ",
            branch_cols!(),
            ") SELECT ins.*, t.mode AS tx_mode FROM ins JOIN t ON t.xid = ins.xid"
        ))
        .bind(&xids)
        .bind(&ids)
        .bind(&resources)
        .bind(&urls)
        .bind(&payloads)
        .bind(&keys)
        .bind(GlobalStatus::Active.as_str())
        .bind(BranchStatus::Registered.as_str())
        .bind(max_branches)
        .fetch_all(&pool),
    )
    .await?;
    let mut by_id: HashMap<BranchId, BranchWithMode> = rows.into_iter().map(|r| (r.row.branch_id.clone(), r)).collect();
    Ok(items.iter().map(|(_, b)| by_id.remove(&b.branch_id)).collect())
}
