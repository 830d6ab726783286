//! Decisions: the one-statement common case and the optimistic general one.

use super::reads::tx_with_branches;
use super::rows::{branch_cols_b, tx_cols, BranchRow, TxRow};
use super::sql::ms;
use super::{Store, StoreError};
use crate::modes::{self, CommitRequires, Expiry};
use crate::transaction::state::{DecisionOutcome, FastChecks, FastDecision, Transition};
use std::sync::LazyLock;
use std::time::Duration;
use tandem_wire::{GlobalStatus, RollbackReason, Xid};

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

impl Store {
    /// The common decision in one statement: writes `fast` (what the state
    /// machine answers in the common case; see
    /// [`crate::transaction::state::fast_decision`]) only if the row is in
    /// that case, and returns the decided row with its branches. `None`: the
    /// row is in another case (or absent); use [`Store::decide`].
    pub async fn decide_expected(
        &self,
        xid: &Xid,
        fast: FastDecision,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(TxRow, Vec<BranchRow>)>, StoreError> {
        // The modes' policies as bound lists, computed once.
        static NEEDING_PREPARED: LazyLock<Vec<&'static str>> =
            LazyLock::new(|| modes::modes_where(|p| p.commit_requires() == CommitRequires::EveryBranchPrepared));
        static PHASES_FIRST: LazyLock<Vec<&'static str>> =
            LazyLock::new(|| modes::modes_where(|p| p.commit_status() != GlobalStatus::Committing));
        let check_commit = match fast.checks {
            FastChecks::StatusOnly => false,
            FastChecks::CommitReady => true,
        };
        let rows = self
            .timed(
                "decide_expected",
                sqlx::query(concat!(
                    "WITH d AS (UPDATE global_transactions SET status = $2, rollback_reason = $3, \
                                decided_at = CASE WHEN $10 THEN now() END, \
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
                .bind(fast.transition.to().as_str())
                .bind(fast.reason.map(RollbackReason::as_str))
                .bind(owner)
                .bind(ms(lease))
                .bind(fast.transition.from().as_str())
                .bind(check_commit)
                .bind(&*NEEDING_PREPARED)
                .bind(&*PHASES_FIRST)
                .bind(fast.transition.records_decision())
                .fetch_all(&self.durable),
            )
            .await?;
        let Some((tx, mut branches)) = tx_with_branches(&rows)? else {
            return Ok(None);
        };
        // The join read the statement's snapshot; a registration that committed
        // while this update waited for the row lock is counted but not seen.
        if branches.len() != tx.branch_count as usize {
            branches = self.branches(xid).await?;
        }
        Ok(Some((tx, branches)))
    }

    /// Decides commit or rollback, optimistically: reads the transaction and
    /// its branches, asks `decide` (pure), and writes the decision only if
    /// the row is still at the version read (no registration or report
    /// since), still in the status read, and, for a commit, still before its
    /// deadline; otherwise reads again. The decision carries a lease for
    /// `owner`. Durable: the write returns only once flushed, and phase 2
    /// (or the phases before the decision) starts after.
    pub async fn decide(
        &self,
        xid: &Xid,
        owner: &str,
        lease: Duration,
        decide: impl Fn(&TxRow, &[BranchRow]) -> Result<DecisionOutcome, StoreError>,
    ) -> Result<Option<DecideResult>, StoreError> {
        for _ in 0..CONTENDED_AFTER {
            let Some((tx, branches)) = self.transaction_with_branches(xid).await? else {
                return Ok(None);
            };
            let outcome = decide(&tx, &branches)?;
            let DecisionOutcome::Decide { status, reason, .. } = outcome else {
                return Ok(Some(DecideResult { tx, branches, outcome }));
            };
            let transition = Transition::new(tx.status, status).map_err(|e| StoreError::Internal(e.to_string()))?;
            // A rollback may be written after the deadline; anything else
            // only before it, unless the deadline only starts back-checks.
            let before_deadline = transition.to() != GlobalStatus::RollingBack
                && modes::protocol(tx.mode).is_some_and(|p| p.expiry() == Expiry::RollsBack);
            let written = self
                .timed(
                    "decide",
                    sqlx::query_as::<_, TxRow>(concat!(
                        "UPDATE global_transactions SET status = $2, rollback_reason = $3, \
                         decided_at = CASE WHEN $8 THEN now() END, \
                         owner = $4, next_attempt_at = now() + $5 * interval '1 millisecond' \
                         WHERE xid = $1 AND version = $6 AND status = $7 \
                           AND ($9 IS FALSE OR deadline > now()) RETURNING ",
                        tx_cols!()
                    ))
                    .bind(xid.as_str())
                    .bind(transition.to().as_str())
                    .bind(reason.map(RollbackReason::as_str))
                    .bind(owner)
                    .bind(ms(lease))
                    .bind(tx.version)
                    .bind(transition.from().as_str())
                    .bind(transition.records_decision())
                    .bind(before_deadline)
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
}

/// Optimistic decisions lost in a row before the request is answered 503
/// (retryable): each loss means a registration or report landed in between.
const CONTENDED_AFTER: usize = 16;
