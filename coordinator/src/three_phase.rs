//! The three-phase commit driver (mode `3pc`): CanCommit, then PreCommit,
//! then the decision, which the phase-2 driver delivers as DoCommit or abort.
//!
//! A commit request writes `can_commit` durably (with a lease) before the
//! first vote is asked. Every vote yes → `pre_committed` is written durably
//! before the first PreCommit goes out. Every PreCommit acknowledged →
//! `committing` (the decision), else `rolling_back`. Each write is fenced by
//! the lease and the status it leaves, so a coordinator that lost its lease
//! changes nothing. Votes and acknowledgements are not retried: a missing
//! answer within the phase timeout is the signal to abort.
//!
//! A coordinator taking over a dead one's transaction (recovery) aborts one
//! in `can_commit` (the votes were in memory; a yes-voter aborts on its own
//! timeout anyway) and re-sends PreCommit for one in `pre_committed`
//! (idempotent at the participant: a pre-committed or timeout-committed
//! branch acknowledges again, an aborted one says no).

use crate::phase2::{Phase2Job, Phase2Outcome};
use crate::store::{BranchRow, PhaseStep, StoreError, TxRow};
use crate::transaction::state::{self, PhaseVerdict, ThreePhaseStep};
use crate::Coordinator;
use std::time::{Duration, Instant};
use tandem_wire::{BranchStatus, CallbackAction, GlobalStatus, RollbackReason};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tracing::Instrument;

impl Coordinator {
    /// Drives a leased transaction in a tracked task: the 3PC phases first if
    /// it is in one, then phase 2. `resumed`: taken over by recovery.
    pub(crate) fn spawn_driver(
        &self,
        job: Phase2Job,
        resumed: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> JoinHandle<Phase2Outcome> {
        if !job.tx.status.is_three_phase_pending() {
            return self.spawn_phase2(job, permit);
        }
        let this = self.clone();
        let span = tracing::info_span!("three_phase", xid = %job.tx.xid, status = %job.tx.status, resumed);
        self.tasks().spawn(
            async move {
                let _permit = permit;
                let xid = job.tx.xid.clone();
                match this.drive_three_phase(job, resumed).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        // Handled here: the lease expires and recovery takes the transaction over.
                        tracing::warn!(%xid, error = %e, "3PC driver failed on the database; recovery will take over");
                        Phase2Outcome::Pending
                    }
                }
            }
            .instrument(span),
        )
    }

    /// Runs the 3PC phases from the transaction's status to a decision, then phase 2.
    async fn drive_three_phase(&self, job: Phase2Job, resumed: bool) -> Result<Phase2Outcome, StoreError> {
        let Phase2Job { mut tx, mut branches, leased_at } = job;
        let timeouts = tx.three_phase.unwrap_or_default();
        let lease = self.timing().lease;
        let owner = self.instance_id();
        let mut lease_from = leased_at;
        loop {
            let (wait, action) = match state::three_phase_step(tx.status, resumed) {
                ThreePhaseStep::Phase2 => break,
                ThreePhaseStep::AbortLostVotes => {
                    tracing::info!("coordinator stopped while collecting votes; aborting");
                    let step = PhaseStep {
                        from: tx.status,
                        to: GlobalStatus::RollingBack,
                        reason: Some(RollbackReason::Timeout),
                        hold: lease,
                        branches: Vec::new(),
                    };
                    match self.advance(&mut tx, &mut branches, &step).await? {
                        true => continue,
                        false => return Ok(Phase2Outcome::Pending),
                    }
                }
                ThreePhaseStep::AskVotes => {
                    (Duration::from_millis(timeouts.can_commit_timeout_ms), CallbackAction::CanCommit)
                }
                ThreePhaseStep::PreCommit => {
                    (Duration::from_millis(timeouts.pre_commit_timeout_ms), CallbackAction::PreCommit)
                }
            };
            // PreCommit goes only to branches that have not acknowledged it (recovery re-sends).
            let asked: Vec<usize> = (0..branches.len())
                .filter(|&i| action == CallbackAction::CanCommit || branches[i].status != BranchStatus::Prepared)
                .collect();
            let results = {
                let phase = futures::future::join_all(asked.iter().map(|&i| {
                    let b = &branches[i];
                    self.callbacks().send_within(&tx, b, action, Some(wait)).instrument(
                        tracing::debug_span!("callback", branch_id = %b.branch_id, action = action.as_str()),
                    )
                }));
                tokio::pin!(phase);
                // Heartbeat: the lease stays short (a dead coordinator is taken
                // over within one lease) however long the phase may wait.
                let period = (lease / 3).max(Duration::from_millis(10));
                let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                loop {
                    tokio::select! {
                        results = &mut phase => break results,
                        _ = beat.tick() => {
                            if !self.store().renew_lease(&tx.xid, owner, lease).await? {
                                tracing::info!("lease lost; another coordinator drives this transaction");
                                return Ok(Phase2Outcome::Pending);
                            }
                        }
                    }
                }
            };
            let verdict = state::phase_verdict(&results);
            let step = next_step(&tx, &branches, &asked, action, verdict, lease);
            if step.to == GlobalStatus::RollingBack {
                tracing::info!(phase = action.as_str(), reason = ?step.reason, "3PC phase failed; aborting");
            }
            let started = Instant::now();
            if !self.advance(&mut tx, &mut branches, &step).await? {
                return Ok(Phase2Outcome::Pending);
            }
            lease_from = started;
        }
        self.drive(Phase2Job { tx, branches, leased_at: lease_from }).await
    }

    /// Writes `step`; on success updates `tx` and the branches in memory.
    /// `false`: the lease was lost.
    async fn advance(&self, tx: &mut TxRow, branches: &mut [BranchRow], step: &PhaseStep) -> Result<bool, StoreError> {
        let Some(row) = self.store().advance_three_phase(&tx.xid, self.instance_id(), step).await? else {
            tracing::info!(from = %step.from, to = %step.to, "lease lost; another coordinator drives this transaction");
            return Ok(false);
        };
        for (id, status, error) in &step.branches {
            if let Some(b) = branches.iter_mut().find(|b| &b.branch_id == id) {
                b.status = *status;
                if error.is_some() {
                    b.last_error = error.clone();
                }
            }
        }
        tracing::debug!(status = %row.status, "3PC step recorded");
        *tx = row;
        Ok(true)
    }
}

/// The step after a phase whose branches `asked` answered as `verdict`.
fn next_step(
    tx: &TxRow,
    branches: &[BranchRow],
    asked: &[usize],
    action: CallbackAction,
    verdict: PhaseVerdict,
    lease: Duration,
) -> PhaseStep {
    let acked = |failed: &[(usize, String)]| -> Vec<_> {
        asked
            .iter()
            .enumerate()
            .filter(|(k, _)| action == CallbackAction::PreCommit && !failed.iter().any(|(f, _)| f == k))
            .map(|(_, &i)| (branches[i].branch_id.clone(), BranchStatus::Prepared, None))
            .collect()
    };
    match verdict {
        PhaseVerdict::Proceed => {
            let (to, marks) = match action {
                // From here `prepared` means "acknowledged PreCommit", whatever a
                // branch may have reported before the commit request.
                CallbackAction::CanCommit => (
                    GlobalStatus::PreCommitted,
                    branches.iter().map(|b| (b.branch_id.clone(), BranchStatus::Registered, None)).collect(),
                ),
                _ => (GlobalStatus::Committing, acked(&[])),
            };
            PhaseStep { from: tx.status, to, reason: None, hold: lease, branches: marks }
        }
        PhaseVerdict::Abort { reason, failed } => {
            let mut marks = acked(&failed);
            for (k, error) in &failed {
                let what = match action {
                    CallbackAction::CanCommit => "CanCommit",
                    _ => "PreCommit",
                };
                marks.push((
                    branches[asked[*k]].branch_id.clone(),
                    BranchStatus::Phase1Failed,
                    Some(format!("{what}: {error}")),
                ));
            }
            PhaseStep {
                from: tx.status,
                to: GlobalStatus::RollingBack,
                reason: Some(reason),
                hold: lease,
                branches: marks,
            }
        }
    }
}
