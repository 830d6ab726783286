//! The phase-2 driver: delivers the recorded decision to every branch, in the
//! mode's order, under a lease.
//!
//! A pass walks the branches that are not final yet, one at a time, or all at
//! once in a concurrent mode (3PC). A branch answered 2xx or 409 gets its
//! final status; the first branch whose outcome is unknown (in a concurrent
//! mode: any) ends the pass, which records the progress and schedules the next pass after an
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
        let order: Vec<usize> = mode::phase2_order(tx.mode, decision, (0..branches.len()).collect())
            .into_iter()
            .filter(|&i| !branches[i].status.is_final())
            .collect();
        let mut updates: Vec<BranchUpdate> = Vec::new();
        let mut unknown: Option<String> = None;

        // Concurrent modes send to every branch at once (one that does not
        // answer holds up no other); the others one branch at a time, and the
        // first branch whose outcome is unknown ends the pass.
        let rounds: Vec<Vec<usize>> =
            if mode::concurrent_phase2(tx.mode) { vec![order] } else { order.into_iter().map(|i| vec![i]).collect() };
        for round in rounds {
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
            let results = futures::future::join_all(round.iter().map(|&i| {
                let branch = &branches[i];
                self.callbacks()
                    .send(&tx, branch, decision.action())
                    .instrument(tracing::debug_span!("callback", branch_id = %branch.branch_id))
            }))
            .await;
            for (&i, result) in round.iter().zip(results) {
                if let Some(error) = record(&tx, decision, &mut branches[i], &result, &mut updates) {
                    unknown = Some(error);
                }
            }
            if unknown.is_some() {
                break;
            }
        }
        if let Some(error) = unknown {
            let mut delay = retry_delay(timing.retry_base, timing.retry_max, tx.attempts);
            if let Some(t) = tx.three_phase {
                // A 3PC abort must reach pre-committed participants before they
                // commit on their own: keep several attempts inside that window.
                delay = delay.min(Duration::from_millis(t.do_commit_timeout_ms / 8).max(timing.retry_base));
            }
            tracing::info!(xid = %tx.xid, %error, retry_in_ms = delay.as_millis() as u64,
                "callback outcome unknown; will retry");
            store.schedule_retry(&tx.xid, owner, &updates, delay).await?;
            return Ok(Phase2Outcome::Pending);
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

/// Records a callback's result on `branch` and in `updates`; returns the
/// error when the outcome is unknown (the branch stays as it was).
fn record(
    tx: &TxRow,
    decision: Decision,
    branch: &mut BranchRow,
    result: &CallbackResult,
    updates: &mut Vec<BranchUpdate>,
) -> Option<String> {
    let status = state::branch_after_callback(decision, result);
    let error = match result {
        CallbackResult::Done => None,
        CallbackResult::Refused(e) | CallbackResult::HeuristicCommit(e) => {
            tracing::warn!(xid = %tx.xid, branch_id = %branch.branch_id, error = %e,
                "participant refused phase 2 permanently");
            Some(e.clone())
        }
        CallbackResult::Unknown(e) => Some(e.clone()),
    };
    updates.push(BranchUpdate {
        branch_id: branch.branch_id.clone(),
        status,
        attempts_added: 1,
        last_error: error.clone(),
    });
    branch.attempts += 1;
    if let Some(e) = &error {
        branch.last_error = Some(e.clone());
    }
    match status {
        Some(s) => {
            branch.status = s;
            None
        }
        None => error,
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
