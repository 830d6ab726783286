//! Statements on `global_transactions` and `branches`.

use super::rows::{branch_cols, branch_cols_b, tx_cols, BranchRow, TxRow};
use super::{Store, StoreError};
use crate::metrics::Metrics;
use crate::transaction::mode;
use crate::transaction::state::DecisionOutcome;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::{FromRow, PgPool};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;
use tandem_wire::{BranchId, BranchStatus, GlobalStatus, Mode, RollbackReason, ThreePhaseTimeouts, Xid};

/// A transaction to insert.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    /// Fresh xid.
    pub xid: Xid,
    /// Mode.
    pub mode: Mode,
    /// Optional name.
    pub name: Option<String>,
    /// Timeout (validated positive).
    pub timeout_ms: i64,
    /// Optional client idempotency key.
    pub idempotency_key: Option<String>,
    /// Phase timeouts (`3pc` only).
    pub three_phase: Option<ThreePhaseTimeouts>,
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

/// A branch's phase-2 progress to record.
#[derive(Debug, Clone)]
pub struct BranchUpdate {
    /// Which branch.
    pub branch_id: BranchId,
    /// Its final status, or `None` while the outcome is unknown (left as it is).
    pub status: Option<BranchStatus>,
    /// Callback attempts made in this pass.
    pub attempts_added: i32,
    /// Last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Result of a decision attempt, read and written under the transaction's row lock.
#[derive(Debug, Clone)]
pub struct DecideResult {
    /// The transaction after the decision (or as it was, if nothing was written).
    pub tx: TxRow,
    /// Its branches in registration order.
    pub branches: Vec<BranchRow>,
    /// What the state machine answered.
    pub outcome: DecisionOutcome,
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
    Applied(BranchRow),
}

/// How a branch moving `from` → `to` changes the transaction's
/// (`branches_failed`, `branches_unprepared`) counters.
fn counter_deltas(from: BranchStatus, to: BranchStatus) -> (i32, i32) {
    let failed = |s: BranchStatus| i32::from(s == BranchStatus::Phase1Failed);
    let unprepared = |s: BranchStatus| i32::from(s != BranchStatus::Prepared);
    (failed(to) - failed(from), unprepared(to) - unprepared(from))
}

/// Parses rows of a transaction joined with its branches (`b_` columns).
fn tx_with_branches(rows: &[sqlx::postgres::PgRow]) -> Result<Option<(TxRow, Vec<BranchRow>)>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let tx = TxRow::from_row(first)?;
    let mut branches = Vec::with_capacity(rows.len());
    for r in rows {
        if r.try_get::<Option<String>, _>("b_branch_id")?.is_some() {
            branches.push(BranchRow::from_prefixed(r, "b_")?);
        }
    }
    Ok(Some((tx, branches)))
}

/// Statuses of a leased, unfinished transaction (bound as a parameter):
/// decided, or a 3PC commit collecting votes or acknowledgements.
const DECIDED: &[&str] = &["committing", "rolling_back", "can_commit", "pre_committed"];

/// Branch statuses that release the branch's global locks: phase 2 completed.
/// A `rollback_failed` branch keeps them, so that nobody writes over rows an
/// operator must repair.
const RELEASING: &[&str] = &["committed", "rolled_back"];

/// The text forms of the modes for which `policy` holds.
pub(super) fn modes(policy: fn(Mode) -> bool) -> Vec<&'static str> {
    Mode::ALL.iter().copied().filter(|m| policy(*m)).map(Mode::as_str).collect()
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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

    /// The transaction begun with this idempotency key.
    pub async fn transaction_by_idempotency_key(&self, key: &str) -> Result<Option<TxRow>, StoreError> {
        self.timed(
            "transaction_by_idempotency_key",
            sqlx::query_as::<_, TxRow>(concat!(
                "SELECT ",
                tx_cols!(),
                " FROM global_transactions WHERE idempotency_key = $1"
            ))
            .bind(key)
            .fetch_optional(&self.relaxed),
        )
        .await
    }

    /// One transaction row.
    pub async fn transaction(&self, xid: &Xid) -> Result<Option<TxRow>, StoreError> {
        self.timed(
            "transaction",
            sqlx::query_as::<_, TxRow>(concat!("SELECT ", tx_cols!(), " FROM global_transactions WHERE xid = $1"))
                .bind(xid.as_str())
                .fetch_optional(&self.relaxed),
        )
        .await
    }

    /// Branches of one transaction in registration order.
    pub async fn branches(&self, xid: &Xid) -> Result<Vec<BranchRow>, StoreError> {
        self.timed(
            "branches",
            sqlx::query_as::<_, BranchRow>(concat!(
                "SELECT ",
                branch_cols!(),
                " FROM branches WHERE xid = $1 ORDER BY seq"
            ))
            .bind(xid.as_str())
            .fetch_all(&self.relaxed),
        )
        .await
    }

    /// Branches of several transactions, grouped by xid, each in registration order.
    pub async fn branches_of(&self, xids: &[Xid]) -> Result<HashMap<Xid, Vec<BranchRow>>, StoreError> {
        if xids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = xids.iter().map(Xid::as_str).collect();
        let rows = self
            .timed(
                "branches_of",
                sqlx::query_as::<_, BranchRow>(concat!(
                    "SELECT ",
                    branch_cols!(),
                    " FROM branches WHERE xid = ANY($1) ORDER BY xid, seq"
                ))
                .bind(&ids)
                .fetch_all(&self.relaxed),
            )
            .await?;
        let mut map: HashMap<Xid, Vec<BranchRow>> = HashMap::new();
        for r in rows {
            map.entry(r.xid.clone()).or_default().push(r);
        }
        Ok(map)
    }

    /// A page of transactions, newest first (xids are UUIDv7, time-ordered),
    /// strictly older than `after` (an xid). The cursor is an index bound, so a
    /// deep page costs what the first does.
    pub async fn list_transactions(
        &self,
        status: Option<GlobalStatus>,
        mode: Option<Mode>,
        limit: i64,
        after: Option<&Xid>,
    ) -> Result<Vec<TxRow>, StoreError> {
        let q = match after {
            Some(after) => sqlx::query_as::<_, TxRow>(concat!(
                "SELECT ",
                tx_cols!(),
                " FROM global_transactions WHERE xid < $4 \
                   AND ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR mode = $2) \
                 ORDER BY xid DESC LIMIT $3"
            ))
            .bind(status.map(GlobalStatus::as_str))
            .bind(mode.map(Mode::as_str))
            .bind(limit)
            .bind(after.as_str()),
            None => sqlx::query_as::<_, TxRow>(concat!(
                "SELECT ",
                tx_cols!(),
                " FROM global_transactions \
                 WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR mode = $2) \
                 ORDER BY xid DESC LIMIT $3"
            ))
            .bind(status.map(GlobalStatus::as_str))
            .bind(mode.map(Mode::as_str))
            .bind(limit),
        };
        self.timed("list_transactions", q.fetch_all(&self.relaxed)).await
    }

    /// Registers a branch if the transaction is active and not past its
    /// deadline. `None` means it is not (the caller finds out why).
    ///
    /// Durable: the participant runs its phase 1 once this returns. Bumping
    /// the transaction's `version` in the same statement row-locks it against
    /// a concurrent decision and invalidates any decision computed before.
    /// Batched with concurrent registrations (one statement, one WAL flush).
    pub async fn insert_branch(&self, xid: &Xid, b: &NewBranch) -> Result<Option<BranchRow>, StoreError> {
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
                return Ok(ReportResult::Applied(branch));
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
            Ok::<_, sqlx::Error>(ReportResult::Applied(updated))
        }
        .await;
        self.observe("report_branch", started);
        Ok(r?)
    }

    /// The transaction and its branches (registration order), read in one statement.
    pub async fn transaction_with_branches(&self, xid: &Xid) -> Result<Option<(TxRow, Vec<BranchRow>)>, StoreError> {
        let rows = self
            .timed(
                "transaction_with_branches",
                sqlx::query(concat!(
                    "SELECT t.*, ",
                    branch_cols_b!(),
                    " FROM (SELECT ",
                    tx_cols!(),
                    " FROM global_transactions WHERE xid = $1) t \
                     LEFT JOIN branches b ON b.xid = t.xid ORDER BY b.seq"
                ))
                .bind(xid.as_str())
                .fetch_all(&self.relaxed),
            )
            .await?;
        tx_with_branches(&rows)
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
    ) -> Result<Option<BranchRow>, StoreError> {
        let (failed, unprepared) = counter_deltas(BranchStatus::Registered, to);
        self.timed(
            "report_expected",
            sqlx::query_as::<_, BranchRow>(concat!(
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
                 SELECT * FROM b"
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

    /// The common decision in one statement: writes `outcome` (what the state
    /// machine answers for an active, unexpired transaction with no failed
    /// branch and, where its mode requires it, every branch prepared) only if
    /// the row is exactly in that state, and returns
    /// the decided row with its branches. `None`: the row is in another state
    /// (or absent); use [`Store::decide`]. `strict` is false for a rollback
    /// request, which only needs the transaction to be active; a commit of a
    /// three-phase mode is never decided here.
    pub async fn decide_expected(
        &self,
        xid: &Xid,
        outcome: (GlobalStatus, Option<RollbackReason>),
        strict: bool,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(TxRow, Vec<BranchRow>)>, StoreError> {
        // The modes' policies as bound lists, computed once.
        static NEEDING_PREPARED: LazyLock<Vec<&'static str>> = LazyLock::new(|| modes(mode::requires_prepared));
        static THREE_PHASE: LazyLock<Vec<&'static str>> = LazyLock::new(|| modes(mode::three_phase));
        let rows = self
            .timed(
                "decide_expected",
                sqlx::query(concat!(
                    "WITH d AS (UPDATE global_transactions SET status = $2, rollback_reason = $3, decided_at = now(), \
                                owner = $4, next_attempt_at = now() + $5 * interval '1 millisecond' \
                     WHERE xid = $1 AND status = $6 AND ($7 IS FALSE OR (deadline > now() AND branches_failed = 0 \
                           AND (branches_unprepared = 0 OR NOT (mode = ANY($8))) AND NOT (mode = ANY($9)))) \
                     RETURNING ",
                    tx_cols!(),
                    ") SELECT d.*, ",
                    branch_cols_b!(),
                    " FROM d LEFT JOIN branches b ON b.xid = d.xid ORDER BY b.seq"
                ))
                .bind(xid.as_str())
                .bind(outcome.0.as_str())
                .bind(outcome.1.map(RollbackReason::as_str))
                .bind(owner)
                .bind(ms(lease))
                .bind(GlobalStatus::Active.as_str())
                .bind(strict)
                .bind(&*NEEDING_PREPARED)
                .bind(&*THREE_PHASE)
                .fetch_all(&self.durable),
            )
            .await?;
        let Some((tx, mut branches)) = tx_with_branches(&rows)? else {
            return Ok(None);
        };
        // The join read the statement's snapshot; a registration that committed
        // while this update waited for the row lock is counted but not seen.
        if branches.len() != usize::try_from(tx.branch_count).unwrap_or(0) {
            branches = self.branches(xid).await?;
        }
        Ok(Some((tx, branches)))
    }

    /// Decides commit or rollback, optimistically: reads the transaction and
    /// its branches, asks `decide` (pure), and writes the decision only if
    /// the row is still at the version read (no registration or report
    /// since), still active, and, for a commit, still before its deadline;
    /// otherwise reads again. The decision carries a lease for `owner`.
    /// Durable: the write returns only once flushed, and phase 2 starts after.
    pub async fn decide(
        &self,
        xid: &Xid,
        owner: &str,
        lease: Duration,
        decide: impl Fn(&TxRow, &[BranchRow]) -> DecisionOutcome,
    ) -> Result<Option<DecideResult>, StoreError> {
        for _ in 0..16 {
            let Some((tx, branches)) = self.transaction_with_branches(xid).await? else {
                return Ok(None);
            };
            let outcome = decide(&tx, &branches);
            let DecisionOutcome::Decide { status, reason, .. } = outcome else {
                return Ok(Some(DecideResult { tx, branches, outcome }));
            };
            let written = self
                .timed(
                    "decide",
                    sqlx::query_as::<_, TxRow>(concat!(
                        "UPDATE global_transactions SET status = $2, rollback_reason = $3, \
                         decided_at = CASE WHEN $2 IN ('committing', 'rolling_back') THEN now() END, \
                         owner = $4, next_attempt_at = now() + $5 * interval '1 millisecond' \
                         WHERE xid = $1 AND version = $6 AND status = $7 \
                           AND ($2 = 'rolling_back' OR deadline > now()) RETURNING ",
                        tx_cols!()
                    ))
                    .bind(xid.as_str())
                    .bind(status.as_str())
                    .bind(reason.map(RollbackReason::as_str))
                    .bind(owner)
                    .bind(ms(lease))
                    .bind(tx.version)
                    .bind(GlobalStatus::Active.as_str())
                    .fetch_optional(&self.durable),
                )
                .await?;
            if let Some(tx) = written {
                return Ok(Some(DecideResult { tx, branches, outcome }));
            }
            // Something changed between the read and the write: decide again on fresh state.
        }
        Err(StoreError::Contended)
    }

    /// Records the end of phase 2: branch statuses and the terminal global
    /// status. Relaxed: if lost, recovery drives phase 2 again and idempotent
    /// callbacks make that harmless. Batched with concurrent finishes. Returns
    /// the finish time, or `None` if the transaction was no longer `decided`.
    pub async fn finish(
        &self,
        xid: &Xid,
        decided: GlobalStatus,
        terminal: GlobalStatus,
        updates: &[BranchUpdate],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.finishes.submit(Finish { xid: xid.clone(), decided, terminal, updates: updates.to_vec() }).await
    }

    /// Records a phase-2 pass that ended with a branch in an unknown state and
    /// schedules the next pass after `delay` (any coordinator may take it then).
    /// Only while `owner` still holds the lease: the branch bookkeeping is
    /// written only if the lease check passes. Relaxed.
    pub async fn schedule_retry(
        &self,
        xid: &Xid,
        owner: &str,
        updates: &[BranchUpdate],
        delay: Duration,
    ) -> Result<bool, StoreError> {
        let (ids, statuses, attempts, errors) = split_updates(updates);
        let n: i64 = self
            .timed(
                "schedule_retry",
                sqlx::query_scalar(
                    "WITH t AS (UPDATE global_transactions SET attempts = attempts + 1, owner = NULL, \
                                next_attempt_at = now() + $7 * interval '1 millisecond' \
                                WHERE xid = $1 AND owner = $6 AND status = ANY($8) RETURNING xid), \
                          b AS (UPDATE branches SET status = COALESCE(u.status, branches.status), \
                                attempts = branches.attempts + u.attempts, \
                                last_error = COALESCE(u.last_error, branches.last_error) \
                                FROM unnest($2::text[], $3::text[], $4::int[], $5::text[]) \
                                     AS u(branch_id, status, attempts, last_error), t \
                                WHERE branches.xid = t.xid AND branches.branch_id = u.branch_id), \
                          l AS (DELETE FROM global_locks gl \
                                USING unnest($2::text[], $3::text[]) AS u(branch_id, status), t \
                                WHERE gl.xid = t.xid AND gl.branch_id = u.branch_id AND u.status = ANY($9)) \
                     SELECT count(*) FROM t",
                )
                .bind(xid.as_str())
                .bind(&ids)
                .bind(&statuses)
                .bind(&attempts)
                .bind(&errors)
                .bind(owner)
                .bind(ms(delay))
                .bind(DECIDED)
                .bind(RELEASING)
                .fetch_one(&self.relaxed),
            )
            .await?;
        Ok(n == 1)
    }

    /// Extends `owner`'s lease. `false` means the lease was lost (another
    /// coordinator took over, or the transaction finished): stop driving it.
    pub async fn renew_lease(&self, xid: &Xid, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let n = self
            .timed(
                "renew_lease",
                sqlx::query(
                    "UPDATE global_transactions SET next_attempt_at = now() + $3 * interval '1 millisecond' \
                     WHERE xid = $1 AND owner = $2 AND status = ANY($4)",
                )
                .bind(xid.as_str())
                .bind(owner)
                .bind(ms(lease))
                .bind(DECIDED)
                .execute(&self.relaxed),
            )
            .await?;
        Ok(n.rows_affected() == 1)
    }

    /// Gives the lease up so that any coordinator may take phase 2 at once
    /// (graceful shutdown).
    pub async fn release_lease(&self, xid: &Xid, owner: &str) -> Result<(), StoreError> {
        self.timed(
            "release_lease",
            sqlx::query(
                "UPDATE global_transactions SET owner = NULL, next_attempt_at = now() \
                 WHERE xid = $1 AND owner = $2 AND status = ANY($3)",
            )
            .bind(xid.as_str())
            .bind(owner)
            .bind(DECIDED)
            .execute(&self.relaxed),
        )
        .await?;
        Ok(())
    }

    /// Decides rollback (`timeout`) for up to `limit` active transactions past
    /// their deadline, leased to `owner`. Rows locked by a concurrent
    /// registration or decision are skipped this round. Durable: a decision.
    pub async fn claim_expired(&self, owner: &str, lease: Duration, limit: i64) -> Result<Vec<TxRow>, StoreError> {
        self.timed(
            "claim_expired",
            sqlx::query_as::<_, TxRow>(concat!(
                "UPDATE global_transactions SET status = 'rolling_back', rollback_reason = 'timeout', \
                        decided_at = now(), owner = $1, next_attempt_at = now() + $2 * interval '1 millisecond' \
                 WHERE xid IN (SELECT xid FROM global_transactions WHERE status = 'active' AND deadline <= now() \
                               ORDER BY deadline LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
                tx_cols!()
            ))
            .bind(owner)
            .bind(ms(lease))
            .bind(limit)
            .fetch_all(&self.durable),
        )
        .await
    }

    /// Leases up to `limit` decided, unfinished transactions whose lease has
    /// expired or whose retry is due. `FOR UPDATE SKIP LOCKED` keeps two
    /// coordinators from taking the same one. Relaxed: a lost lease write only
    /// means it is taken again.
    pub async fn claim_due(&self, owner: &str, lease: Duration, limit: i64) -> Result<Vec<TxRow>, StoreError> {
        self.timed(
            "claim_due",
            sqlx::query_as::<_, TxRow>(concat!(
                "UPDATE global_transactions SET owner = $1, next_attempt_at = now() + $2 * interval '1 millisecond' \
                 WHERE xid IN (SELECT xid FROM global_transactions \
                               WHERE status IN ('committing', 'rolling_back', 'can_commit', 'pre_committed') \
                                 AND next_attempt_at <= now() \
                               ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
                tx_cols!()
            ))
            .bind(owner)
            .bind(ms(lease))
            .bind(limit)
            .fetch_all(&self.relaxed),
        )
        .await
    }

    /// Count of non-terminal transactions by status.
    pub async fn in_flight_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.timed(
            "in_flight_counts",
            sqlx::query_as::<_, (String, i64)>(
                // Each branch matches one partial index exactly.
                "SELECT 'active', count(*) FROM global_transactions WHERE status = 'active' \
                 UNION ALL SELECT status, count(*) FROM global_transactions \
                 WHERE status IN ('committing', 'rolling_back', 'can_commit', 'pre_committed') GROUP BY status",
            )
            .fetch_all(&self.relaxed),
        )
        .await
    }
}

/// One phase-2 completion to record.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The transaction.
    pub xid: Xid,
    /// Its decided status (`committing` / `rolling_back`); the write is conditional on it.
    pub decided: GlobalStatus,
    /// Its terminal status.
    pub terminal: GlobalStatus,
    /// Branch progress of the last pass.
    pub updates: Vec<BranchUpdate>,
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
    let timeouts: Vec<i64> = items.iter().map(|t| t.timeout_ms).collect();
    let keys: Vec<Option<&str>> = items.iter().map(|t| t.idempotency_key.as_deref()).collect();
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
                                             can_commit_timeout_ms, pre_commit_timeout_ms, do_commit_timeout_ms) \
             SELECT u.xid, u.mode, u.name, $6, u.timeout_ms, now() + u.timeout_ms * interval '1 millisecond', u.key, \
                    u.can, u.pre, u.done \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $7::bigint[], $8::bigint[], \
                         $9::bigint[]) AS u(xid, mode, name, timeout_ms, key, can, pre, done) \
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
        .fetch_all(&pool),
    )
    .await?;
    let mut by_xid: HashMap<Xid, TxRow> = rows.into_iter().map(|r| (r.xid.clone(), r)).collect();
    Ok(items.iter().map(|t| by_xid.remove(&t.xid)).collect())
}

/// Registers a batch of branches in one durable statement; one result per
/// input (`None` where the transaction is not active or past its deadline).
pub(super) async fn insert_branches(
    pool: PgPool,
    metrics: Metrics,
    items: Vec<(Xid, NewBranch)>,
) -> Result<Vec<Option<BranchRow>>, StoreError> {
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
        sqlx::query_as::<_, BranchRow>(concat!(
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
                        WHERE g.xid = c.xid AND g.status = $7 AND g.deadline > now() RETURNING g.xid) \
             INSERT INTO branches (branch_id, xid, resource, callback_url, status, payload, lock_keys) \
             SELECT i.branch_id, i.xid, i.resource, i.callback_url, $8, i.payload, \
                    ARRAY(SELECT jsonb_array_elements_text(i.lock_keys)) \
             FROM input i JOIN t ON t.xid = i.xid ORDER BY i.ord RETURNING ",
            branch_cols!()
        ))
        .bind(&xids)
        .bind(&ids)
        .bind(&resources)
        .bind(&urls)
        .bind(&payloads)
        .bind(&keys)
        .bind(GlobalStatus::Active.as_str())
        .bind(BranchStatus::Registered.as_str())
        .fetch_all(&pool),
    )
    .await?;
    let mut by_id: HashMap<BranchId, BranchRow> = rows.into_iter().map(|r| (r.branch_id.clone(), r)).collect();
    Ok(items.iter().map(|(_, b)| by_id.remove(&b.branch_id)).collect())
}

/// Records a batch of phase-2 completions in one statement; one result per input.
pub(super) async fn finish_many(
    pool: PgPool,
    metrics: Metrics,
    items: Vec<Finish>,
) -> Result<Vec<Option<DateTime<Utc>>>, StoreError> {
    let all: Vec<(&Xid, &BranchUpdate)> =
        items.iter().flat_map(|f| f.updates.iter().map(move |u| (&f.xid, u))).collect();
    let b_xids: Vec<&str> = all.iter().map(|(x, _)| x.as_str()).collect();
    let b_ids: Vec<&str> = all.iter().map(|(_, u)| u.branch_id.as_str()).collect();
    let b_statuses: Vec<Option<&str>> = all.iter().map(|(_, u)| u.status.map(BranchStatus::as_str)).collect();
    let b_attempts: Vec<i32> = all.iter().map(|(_, u)| u.attempts_added).collect();
    let b_errors: Vec<Option<&str>> = all.iter().map(|(_, u)| u.last_error.as_deref()).collect();
    let xids: Vec<&str> = items.iter().map(|f| f.xid.as_str()).collect();
    let terminals: Vec<&str> = items.iter().map(|f| f.terminal.as_str()).collect();
    let decided: Vec<&str> = items.iter().map(|f| f.decided.as_str()).collect();
    let rows: Vec<(String, DateTime<Utc>)> = super::timed_with(
        &metrics,
        "finish",
        sqlx::query_as(
            // Branch bookkeeping only for transactions this statement finishes: a
            // driver whose lease was taken over must not overwrite the new owner's.
            "WITH g AS (UPDATE global_transactions g SET status = f.terminal, finished_at = now(), owner = NULL, \
                        next_attempt_at = NULL \
                        FROM unnest($6::text[], $7::text[], $8::text[]) AS f(xid, terminal, decided) \
                        WHERE g.xid = f.xid AND g.status = f.decided RETURNING g.xid, g.finished_at), \
                  b AS (UPDATE branches SET status = COALESCE(u.status, branches.status), \
                        attempts = branches.attempts + u.attempts, \
                        last_error = COALESCE(u.last_error, branches.last_error) \
                        FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[]) \
                             AS u(xid, branch_id, status, attempts, last_error), g \
                        WHERE g.xid = u.xid AND branches.xid = u.xid AND branches.branch_id = u.branch_id), \
                  -- AT: a branch's global locks go when its phase 2 completes.
                  l AS (DELETE FROM global_locks gl \
                        USING unnest($1::text[], $2::text[], $3::text[]) AS u(xid, branch_id, status), g \
                        WHERE g.xid = u.xid AND gl.xid = u.xid AND gl.branch_id = u.branch_id \
                          AND u.status = ANY($9)) \
             SELECT xid, finished_at FROM g",
        )
        .bind(&b_xids)
        .bind(&b_ids)
        .bind(&b_statuses)
        .bind(&b_attempts)
        .bind(&b_errors)
        .bind(&xids)
        .bind(&terminals)
        .bind(&decided)
        .bind(RELEASING)
        .fetch_all(&pool),
    )
    .await?;
    let mut by_xid: HashMap<String, DateTime<Utc>> = rows.into_iter().collect();
    Ok(items.iter().map(|f| by_xid.remove(f.xid.as_str())).collect())
}

type SplitUpdates<'a> = (Vec<&'a str>, Vec<Option<&'static str>>, Vec<i32>, Vec<Option<&'a str>>);

fn split_updates(updates: &[BranchUpdate]) -> SplitUpdates<'_> {
    (
        updates.iter().map(|u| u.branch_id.as_str()).collect(),
        updates.iter().map(|u| u.status.map(BranchStatus::as_str)).collect(),
        updates.iter().map(|u| u.attempts_added).collect(),
        updates.iter().map(|u| u.last_error.as_deref()).collect(),
    )
}
