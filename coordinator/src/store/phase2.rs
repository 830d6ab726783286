//! A leased transaction's writes: protocol steps, phase-2 progress, the end,
//! and the lease itself. Every write is conditional on the lease (`owner`)
//! or on the status the driver saw, so a driver that lost its lease changes
//! nothing.

use super::rows::{tx_cols, TxRow};
use super::sql::{branch_progress, ms};
use super::{Store, StoreError};
use crate::metrics::Metrics;
use crate::transaction::state::Transition;
use crate::transaction::statuses::{self, LEASED, RELEASING};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;
use tandem_wire::{BranchId, BranchStatus, RollbackReason, Xid};

/// A branch's progress to record.
#[derive(Debug, Clone)]
pub struct BranchUpdate {
    /// Which branch.
    pub branch_id: BranchId,
    /// Its new status, or `None` while the outcome is unknown (left as it is).
    pub status: Option<BranchStatus>,
    /// Callback attempts made in this pass.
    pub attempts_added: i32,
    /// Last error, if the last attempt failed (`None` keeps the previous one).
    pub last_error: Option<String>,
}

/// A protocol step to record: the transaction's move and what was learnt of
/// its branches.
#[derive(Debug, Clone)]
pub struct PhaseStep {
    /// The move (the write is conditional on `from`).
    pub transition: Transition,
    /// Set when the move is to `rolling_back`.
    pub reason: Option<RollbackReason>,
    /// How long the lease holds from now (the driver renews it while a phase waits).
    pub hold: Duration,
    /// Branch statuses learnt, with the answer as `last_error` where a
    /// branch did not say yes.
    pub branches: Vec<BranchUpdate>,
}

/// The text forms bound for the lease checks and the lock release.
static LEASED_TEXT: LazyLock<Vec<&'static str>> = LazyLock::new(|| statuses::texts(&LEASED));
static RELEASING_TEXT: LazyLock<Vec<&'static str>> = LazyLock::new(|| statuses::texts(RELEASING));

/// Branch updates of transactions as the bound columns of [`branch_progress`].
struct Progress<'a> {
    xids: Vec<&'a str>,
    ids: Vec<&'a str>,
    statuses: Vec<Option<&'static str>>,
    attempts: Vec<i32>,
    errors: Vec<Option<&'a str>>,
}

impl<'a> Progress<'a> {
    fn of(updates: impl Iterator<Item = (&'a Xid, &'a BranchUpdate)>) -> Progress<'a> {
        let mut p = Progress { xids: vec![], ids: vec![], statuses: vec![], attempts: vec![], errors: vec![] };
        for (xid, u) in updates {
            p.xids.push(xid.as_str());
            p.ids.push(u.branch_id.as_str());
            p.statuses.push(u.status.map(BranchStatus::as_str));
            p.attempts.push(u.attempts_added);
            p.errors.push(u.last_error.as_deref());
        }
        p
    }

    /// Binds `$1` to `$6` of [`branch_progress`].
    fn bind<'q, O>(
        &'q self,
        q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        q.bind(&self.xids)
            .bind(&self.ids)
            .bind(&self.statuses)
            .bind(&self.attempts)
            .bind(&self.errors)
            .bind(&*RELEASING_TEXT)
    }
}

impl Store {
    /// Moves a leased transaction by `step` with its branch statuses, in one
    /// durable statement, only while `owner` holds the lease and the status
    /// is still `step.transition.from()`. Durable: a move into `committing` or
    /// `rolling_back` is a decision, and one into a phase before it (3PC's
    /// `pre_committed`) must be on disk before any message of that phase goes
    /// out (a recovering coordinator would otherwise abort, from
    /// `can_commit`, a transaction whose participants are pre-committed and
    /// will commit on their timeout). `None`: the lease was lost; someone
    /// else drives the transaction now.
    pub async fn advance(&self, xid: &Xid, owner: &str, step: &PhaseStep) -> Result<Option<TxRow>, StoreError> {
        let progress = Progress::of(step.branches.iter().map(|u| (xid, u)));
        let q = sqlx::query_as::<_, TxRow>(concat!(
            "WITH t AS (UPDATE global_transactions SET status = $8, rollback_reason = $9, \
                        decided_at = CASE WHEN $10 THEN now() END, \
                        next_attempt_at = now() + $11 * interval '1 millisecond' \
                        WHERE xid = $12 AND owner = $13 AND status = $7 RETURNING *), ",
            branch_progress!(),
            " SELECT ",
            tx_cols!(),
            " FROM t"
        ));
        let q = progress
            .bind(q)
            .bind(step.transition.from().as_str())
            .bind(step.transition.to().as_str())
            .bind(step.reason.map(RollbackReason::as_str))
            .bind(step.transition.records_decision())
            .bind(ms(step.hold))
            .bind(xid.as_str())
            .bind(owner);
        self.timed("advance", q.fetch_optional(&self.durable)).await
    }

    /// Records the end: branch statuses and the terminal status
    /// (`transition.to()`). Relaxed: if lost, recovery drives phase 2 again
    /// and idempotent callbacks make that harmless. Batched with concurrent
    /// finishes. Returns the finish time, or `None` if the transaction was no
    /// longer in `transition.from()`.
    pub async fn finish(
        &self,
        xid: &Xid,
        transition: Transition,
        updates: &[BranchUpdate],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.finishes.submit(Finish { xid: xid.clone(), transition, updates: updates.to_vec() }).await
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
        let progress = Progress::of(updates.iter().map(|u| (xid, u)));
        let q = sqlx::query_as::<_, (i64,)>(concat!(
            "WITH t AS (UPDATE global_transactions SET attempts = attempts + 1, owner = NULL, \
                        next_attempt_at = now() + $7 * interval '1 millisecond' \
                        WHERE xid = $8 AND owner = $9 AND status = ANY($10) RETURNING xid), ",
            branch_progress!(),
            " SELECT count(*) FROM t"
        ));
        let q = progress.bind(q).bind(ms(delay)).bind(xid.as_str()).bind(owner).bind(&*LEASED_TEXT);
        let (n,) = self.timed("schedule_retry", q.fetch_one(&self.relaxed)).await?;
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
                .bind(&*LEASED_TEXT)
                .execute(&self.relaxed),
            )
            .await?;
        Ok(n.rows_affected() == 1)
    }

    /// Gives the lease up so that any coordinator may take the transaction
    /// at once (graceful shutdown).
    pub async fn release_lease(&self, xid: &Xid, owner: &str) -> Result<(), StoreError> {
        self.timed(
            "release_lease",
            sqlx::query(
                "UPDATE global_transactions SET owner = NULL, next_attempt_at = now() \
                 WHERE xid = $1 AND owner = $2 AND status = ANY($3)",
            )
            .bind(xid.as_str())
            .bind(owner)
            .bind(&*LEASED_TEXT)
            .execute(&self.relaxed),
        )
        .await?;
        Ok(())
    }
}

/// One end to record.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The transaction.
    pub xid: Xid,
    /// From its decided status to its terminal one; the write is conditional on the former.
    pub transition: Transition,
    /// Branch progress of the last pass.
    pub updates: Vec<BranchUpdate>,
}

/// Records a batch of ends in one statement; one result per input.
pub(super) async fn finish_many(
    pool: PgPool,
    metrics: Metrics,
    items: Vec<Finish>,
) -> Result<Vec<Option<DateTime<Utc>>>, StoreError> {
    let progress = Progress::of(items.iter().flat_map(|f| f.updates.iter().map(move |u| (&f.xid, u))));
    let xids: Vec<&str> = items.iter().map(|f| f.xid.as_str()).collect();
    let terminals: Vec<&str> = items.iter().map(|f| f.transition.to().as_str()).collect();
    let decided: Vec<&str> = items.iter().map(|f| f.transition.from().as_str()).collect();
    let q = sqlx::query_as::<_, (String, DateTime<Utc>)>(concat!(
        "WITH t AS (UPDATE global_transactions g SET status = f.terminal, finished_at = now(), owner = NULL, \
                    next_attempt_at = NULL \
                    FROM unnest($7::text[], $8::text[], $9::text[]) AS f(xid, terminal, decided) \
                    WHERE g.xid = f.xid AND g.status = f.decided RETURNING g.xid, g.finished_at), ",
        branch_progress!(),
        " SELECT xid, finished_at FROM t"
    ));
    let q = progress.bind(q).bind(&xids).bind(&terminals).bind(&decided);
    let rows = super::timed_with(&metrics, "finish", q.fetch_all(&pool)).await?;
    let mut by_xid: HashMap<String, DateTime<Utc>> = rows.into_iter().collect();
    Ok(items.iter().map(|f| by_xid.remove(f.xid.as_str())).collect())
}
