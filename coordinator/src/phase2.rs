//! The phase-2 driver: delivers the recorded decision to every branch, in the
//! mode's order, under a lease.
//!
//! A pass walks the branches that are not final yet. A branch answered 2xx or
//! 409 gets its final status; the first branch whose outcome is unknown ends
//! the pass, which records the progress and schedules the next pass after an
//! exponential, jittered delay, with the lease released, so that any
//! coordinator (this one's recovery worker included) may take it then. When
//! every branch is final, the terminal status is written in one statement.

use crate::store::{BranchRow, BranchUpdate, StoreError, TxRow};
use crate::transaction::mode;
use crate::transaction::state::{self, CallbackResult, Decision};
use crate::Coordinator;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::{Duration, Instant};
use tandem_wire::{GlobalStatus, Transaction};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// A decided transaction whose lease this process holds.
#[derive(Debug, Clone)]
pub struct Phase2Job {
    /// The transaction row (status `committing` or `rolling_back`).
    pub tx: TxRow,
    /// Its branches in registration order.
    pub branches: Vec<BranchRow>,
    /// Taken before the statement that granted the lease: the lease lasts at
    /// least until `leased_at + lease` (a later instant would overestimate it).
    pub leased_at: Instant,
}

/// How a pass ended.
#[derive(Debug, Clone)]
pub enum Phase2Outcome {
    /// Every branch is final; the terminal state.
    Finished(Box<Transaction>),
    /// Not finished: a retry is scheduled, the lease was lost, or the process is stopping.
    Pending,
}

/// Delay before phase-2 pass number `attempts + 1`: exponential from
/// `base` to `max`, with jitter so that retries of many transactions spread out.
pub fn retry_delay(base: Duration, max: Duration, attempts: i32) -> Duration {
    let n = usize::try_from(attempts.clamp(0, 40)).unwrap_or(0);
    ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(n)
        .unwrap_or(max)
}

impl Coordinator {
    /// Runs one phase-2 pass in a tracked task. `permit` bounds recovery's concurrency.
    pub(crate) fn spawn_phase2(
        &self,
        job: Phase2Job,
        permit: Option<OwnedSemaphorePermit>,
    ) -> JoinHandle<Phase2Outcome> {
        let this = self.clone();
        let span = tracing::info_span!("phase2", xid = %job.tx.xid, decision = %job.tx.status);
        self.tasks().spawn(
            async move {
                let _permit = permit;
                let xid = job.tx.xid.clone();
                match this.drive(job).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        // Handled here: the lease expires and recovery takes the transaction again.
                        tracing::warn!(%xid, error = %e, "phase-2 pass failed on the database; recovery will retry");
                        Phase2Outcome::Pending
                    }
                }
            }
            .instrument(span),
        )
    }

    /// One phase-2 pass (see the module docs).
    pub(crate) async fn drive(&self, job: Phase2Job) -> Result<Phase2Outcome, StoreError> {
        let Phase2Job { tx, mut branches, leased_at } = job;
        let Some(decision) = Decision::of_status(tx.status).filter(|_| !tx.status.is_terminal()) else {
            return Ok(Phase2Outcome::Pending);
        };
        let timing = self.timing();
        let owner = self.instance_id();
        let store = self.store();
        let mut lease_until = leased_at + timing.lease;
        let order = mode::phase2_order(tx.mode, decision, (0..branches.len()).collect());
        let mut updates: Vec<BranchUpdate> = Vec::new();

        for i in order {
            let branch = &branches[i];
            if branch.status.is_final() {
                continue;
            }
            if self.shutdown_token().is_cancelled() {
                store.schedule_retry(&tx.xid, owner, &updates, Duration::ZERO).await?;
                return Ok(Phase2Outcome::Pending);
            }
            if lease_until.saturating_duration_since(Instant::now()) < timing.callback_timeout * 2 {
                if !store.renew_lease(&tx.xid, owner, timing.lease).await? {
                    tracing::info!(xid = %tx.xid, "lease lost; another coordinator drives this transaction");
                    return Ok(Phase2Outcome::Pending);
                }
                lease_until = Instant::now() + timing.lease;
            }
            let result = self
                .callbacks()
                .send(&tx, branch, decision.action())
                .instrument(tracing::debug_span!("callback", branch_id = %branch.branch_id))
                .await;
            match state::branch_after_callback(decision, &result) {
                Some(status) => {
                    let last_error = match &result {
                        CallbackResult::Refused(e) | CallbackResult::HeuristicCommit(e) => {
                            tracing::warn!(xid = %tx.xid, branch_id = %branch.branch_id, error = %e,
                                "participant refused phase 2 permanently");
                            Some(e.clone())
                        }
                        _ => None,
                    };
                    updates.push(BranchUpdate {
                        branch_id: branch.branch_id.clone(),
                        status: Some(status),
                        attempts_added: 1,
                        last_error: last_error.clone(),
                    });
                    let b = &mut branches[i];
                    b.status = status;
                    b.attempts += 1;
                    b.last_error = last_error.or(b.last_error.take());
                }
                None => {
                    let error = match result {
                        CallbackResult::Unknown(e) => e,
                        _ => String::new(),
                    };
                    let delay = retry_delay(timing.retry_base, timing.retry_max, tx.attempts);
                    tracing::info!(xid = %tx.xid, branch_id = %branch.branch_id, %error,
                        retry_in_ms = delay.as_millis() as u64, "callback outcome unknown; will retry");
                    updates.push(BranchUpdate {
                        branch_id: branch.branch_id.clone(),
                        status: None,
                        attempts_added: 1,
                        last_error: Some(error),
                    });
                    store.schedule_retry(&tx.xid, owner, &updates, delay).await?;
                    return Ok(Phase2Outcome::Pending);
                }
            }
        }

        let statuses: Vec<_> = branches.iter().map(|b| b.status).collect();
        let Some(terminal) = state::phase2_outcome(decision, &statuses) else {
            return Ok(Phase2Outcome::Pending);
        };
        let Some(finished_at) = store.finish(&tx.xid, tx.status, terminal, &updates).await? else {
            // Someone else finished it first (after our lease expired).
            return Ok(Phase2Outcome::Pending);
        };
        self.count_terminal(&tx, terminal);
        let mut done = tx.to_wire(&branches);
        done.status = terminal;
        done.finished_at = Some(finished_at);
        tracing::debug!(xid = %tx.xid, status = %terminal, "phase 2 finished");
        Ok(Phase2Outcome::Finished(Box::new(done)))
    }

    fn count_terminal(&self, tx: &TxRow, terminal: GlobalStatus) {
        let m = self.metrics();
        let mode = tx.mode.as_str();
        match terminal {
            GlobalStatus::Committed => m.committed.with_label_values(&[mode]).inc(),
            GlobalStatus::RolledBack => {
                let reason = tx.rollback_reason.map(|r| r.as_str()).unwrap_or("requested");
                m.rolled_back.with_label_values(&[mode, reason]).inc()
            }
            GlobalStatus::HeuristicMixed => {
                tracing::error!(xid = %tx.xid, "heuristic outcome: a participant committed on its own timeout \
                    although the transaction was rolled back; an operator must look");
                m.heuristic.with_label_values(&[mode]).inc();
                m.failed.with_label_values(&[mode, terminal.as_str()]).inc()
            }
            other => m.failed.with_label_values(&[mode, other.as_str()]).inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let first = retry_delay(base, max, 0);
        assert!(first >= base && first <= base * 2, "{first:?}");
        let later = retry_delay(base, max, 3);
        assert!(later >= base * 8, "{later:?}");
        for n in [10, 40, 1000, -5] {
            assert!(retry_delay(base, max, n) <= max * 2, "attempt {n}");
        }
    }
}
