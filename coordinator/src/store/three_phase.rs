//! Statements of three-phase commit (mode `3pc`): the moves between
//! `can_commit`, `pre_committed` and the decision, each fenced by the lease.

use super::rows::{tx_cols, TxRow};
use super::transactions::ms;
use super::{Store, StoreError};
use std::time::Duration;
use tandem_wire::{BranchId, BranchStatus, GlobalStatus, RollbackReason, Xid};

/// One step of a 3PC transaction to record.
#[derive(Debug, Clone)]
pub struct PhaseStep {
    /// The status the driver saw (the write is conditional on it).
    pub from: GlobalStatus,
    /// The status to write: `pre_committed`, `committing` or `rolling_back`.
    pub to: GlobalStatus,
    /// Set when `to` is `rolling_back`.
    pub reason: Option<RollbackReason>,
    /// How long the lease holds from now (the driver renews it while a phase waits).
    pub hold: Duration,
    /// Branch statuses learnt in the phase: `prepared` for an acknowledged
    /// PreCommit, `phase1_failed` (with the answer as `last_error`) for a
    /// branch that said no or did not answer.
    pub branches: Vec<(BranchId, BranchStatus, Option<String>)>,
}

impl Store {
    /// Moves a 3PC transaction from `step.from` to `step.to` with its branch
    /// statuses, in one durable statement, only while `owner` holds the lease
    /// and the status is still `step.from`. Durable: `committing` and
    /// `rolling_back` are decisions, and `pre_committed` must be on disk
    /// before any PreCommit goes out (a recovering coordinator would otherwise
    /// abort, from `can_commit`, a transaction whose participants are
    /// pre-committed and will commit on their timeout). `None`: the lease was
    /// lost; someone else drives the transaction now.
    pub async fn advance_three_phase(
        &self,
        xid: &Xid,
        owner: &str,
        step: &PhaseStep,
    ) -> Result<Option<TxRow>, StoreError> {
        let ids: Vec<&str> = step.branches.iter().map(|(b, _, _)| b.as_str()).collect();
        let statuses: Vec<&str> = step.branches.iter().map(|(_, s, _)| s.as_str()).collect();
        let errors: Vec<Option<&str>> = step.branches.iter().map(|(_, _, e)| e.as_deref()).collect();
        self.timed(
            "advance_three_phase",
            sqlx::query_as::<_, TxRow>(concat!(
                "WITH t AS (UPDATE global_transactions SET status = $3, rollback_reason = $4, \
                            decided_at = CASE WHEN $3 IN ('committing', 'rolling_back') THEN now() END, \
                            next_attempt_at = now() + $5 * interval '1 millisecond' \
                            WHERE xid = $1 AND owner = $6 AND status = $2 RETURNING *), \
                      b AS (UPDATE branches SET status = u.status, last_error = COALESCE(u.last_error, branches.last_error) \
                            FROM unnest($7::text[], $8::text[], $9::text[]) AS u(branch_id, status, last_error), t \
                            WHERE branches.xid = t.xid AND branches.branch_id = u.branch_id) \
                 SELECT ",
                tx_cols!(),
                " FROM t"
            ))
            .bind(xid.as_str())
            .bind(step.from.as_str())
            .bind(step.to.as_str())
            .bind(step.reason.map(RollbackReason::as_str))
            .bind(ms(step.hold))
            .bind(owner)
            .bind(&ids)
            .bind(&statuses)
            .bind(&errors)
            .fetch_optional(&self.durable),
        )
        .await
    }
}
