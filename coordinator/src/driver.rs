//! The one driver: performs a leased transaction's protocol steps
//! ([`crate::modes`]) with I/O, for every mode, from a decision (or the
//! first status of phases before it) to the end.
//!
//! A step is one of: send callbacks (phase 2, or a phase before the
//! decision), write a new status durably, write the terminal status. In
//! phase 2 a branch answered 2xx or 409 gets its final status; a branch whose
//! outcome is unknown ends the pass, which records the progress and
//! schedules the next pass after an exponential, jittered delay, with the
//! lease released, so that any coordinator (this one's recovery worker
//! included) may take it then. A phase before the decision sends to every
//! branch at once and keeps the lease alive while it waits; the protocol
//! judges the answers together. Every status write is conditional on the
//! lease and on the status the driver saw, so a driver that lost its lease
//! changes nothing.

use crate::modes::msg;
use crate::modes::saga::{action_verdict, StepView};
use crate::modes::{self, Advance, Resumed, Send, Step, Then, View};
use crate::store::{
    BranchRow, BranchUpdate, Durability, LeaseAfter, PhaseStep, SagaWrite, StepMark, StoreError, TxRow,
};
use crate::transaction::state::{self, CallbackResult, Decision, Transition};
use crate::Coordinator;
use futures::stream::{FuturesUnordered, StreamExt};
use std::time::{Duration, Instant};
use tandem_wire::{ActionStatus, CallbackAction, GlobalStatus, RollbackReason, Transaction};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// A transaction whose lease this process holds.
#[derive(Debug, Clone)]
pub struct Job {
    /// The transaction row (a leased status).
    pub tx: TxRow,
    /// Its branches in registration order.
    pub branches: Vec<BranchRow>,
    /// Taken before the statement that granted the lease: the lease lasts at
    /// least until `leased_at + lease` (a later instant would overestimate it).
    pub leased_at: Instant,
    /// Whether this driver took the transaction over from another.
    pub resumed: Resumed,
    /// Saga: steps whose start the statement that leased the transaction
    /// already recorded (a submit's first steps): called without another write.
    pub recorded_starts: Vec<usize>,
}

/// How a drive ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every branch is final; the terminal state.
    Finished(Box<Transaction>),
    /// Not finished: a retry is scheduled, the lease was lost, or the process is stopping.
    Pending,
}

pub use tandem_wire::backoff::retry_delay;

/// A driver's failure: the database, or a row no protocol can drive (a bug
/// or a mode this build does not serve).
#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl Coordinator {
    /// Drives a leased transaction in a tracked task. `permit` bounds
    /// recovery's concurrency.
    pub(crate) fn spawn_driver(&self, job: Job, permit: Option<OwnedSemaphorePermit>) -> JoinHandle<Outcome> {
        let this = self.clone();
        let span = tracing::info_span!("drive", xid = %job.tx.xid, status = %job.tx.status, resumed = ?job.resumed);
        self.tasks().spawn(
            async move {
                let _permit = permit;
                let xid = job.tx.xid.clone();
                match this.drive(job).await {
                    Ok(outcome) => outcome,
                    // Handled here: the lease expires and recovery takes the transaction again.
                    Err(DriveError::Store(e)) => {
                        tracing::warn!(%xid, error = %e, "driver failed on the database; recovery will retry");
                        Outcome::Pending
                    }
                    Err(DriveError::Internal(e)) => {
                        tracing::error!(%xid, error = %e, "driver cannot drive this transaction");
                        Outcome::Pending
                    }
                }
            }
            .instrument(span),
        )
    }

    /// Performs the protocol's steps until the end, a retry or a lost lease.
    async fn drive(&self, job: Job) -> Result<Outcome, DriveError> {
        let Job { mut tx, mut branches, leased_at, resumed, mut recorded_starts } = job;
        let protocol = modes::protocol(tx.mode)
            .ok_or_else(|| DriveError::Internal(format!("no protocol serves mode {}", tx.mode)))?;
        let timing = self.timing();
        let owner = self.instance_id();
        let mut lease_until = leased_at + timing.lease;
        // Phase-2 progress of this pass, recorded with its end.
        let mut updates: Vec<BranchUpdate> = Vec::new();
        // Forward actions' answers not written yet, recorded with the next write.
        let mut marks: Vec<StepMark> = Vec::new();
        // Why the forward actions failed, where it is more than a 409.
        let mut failure: Option<RollbackReason> = None;
        loop {
            let statuses: Vec<_> = branches.iter().map(|b| b.status).collect();
            // Copied: the branches change while the view is alive.
            let after: Vec<Option<Vec<i32>>> = branches.iter().map(|b| b.after_steps.clone()).collect();
            let steps: Vec<StepView<'_>> = branches
                .iter()
                .zip(&after)
                .map(|(b, after)| StepView { action: b.action_status, after: after.as_deref() })
                .collect();
            let view = View {
                status: tx.status,
                branches: &statuses,
                resumed,
                three_phase: tx.three_phase,
                steps: &steps,
                expired: tx.expired || tx.deadline <= chrono::Utc::now(),
                order: tx.delivery_order,
            };
            match protocol.next_step(&view) {
                Step::Stop => return Ok(Outcome::Pending),
                Step::Finish(terminal) => {
                    if let Some(end) = protocol.end_status_of_untouched(terminal) {
                        for b in branches.iter().filter(|b| !b.status.is_final()) {
                            marks.push(StepMark {
                                branch_id: b.branch_id.clone(),
                                action: None,
                                attempts_added: 0,
                                error: None,
                                status: Some(end),
                            });
                        }
                    }
                    if marks.is_empty() {
                        return self.finish(&tx, &branches, terminal, &updates).await;
                    }
                    return self.finish_steps(&tx, &mut branches, terminal, marks).await;
                }
                Step::Advance(mut advance) => {
                    if advance.reason == Some(RollbackReason::BranchFailed) {
                        advance.reason = failure.or(advance.reason);
                    }
                    let started = Instant::now();
                    let moved = if marks.is_empty() {
                        self.advance(&mut tx, &mut branches, advance).await?
                    } else {
                        self.advance_steps(&mut tx, &mut branches, advance, std::mem::take(&mut marks)).await?
                    };
                    if !moved {
                        return Ok(Outcome::Pending);
                    }
                    lease_until = started + timing.lease;
                }
                Step::Forward(ready) => {
                    let run = Forward { ready, recorded: std::mem::take(&mut recorded_starts) };
                    match self.forward(&mut tx, &mut branches, run, &mut marks, &mut lease_until).await? {
                        ForwardEnd::Settled(reason) => failure = failure.or(reason),
                        ForwardEnd::Unknown(error) => {
                            let mut delay = retry_delay(timing.retry_base, timing.retry_max, tx.attempts);
                            // A retry never sleeps past the deadline, which compensates.
                            let left = (tx.deadline - chrono::Utc::now()).to_std().unwrap_or_default();
                            delay = delay.min(left.max(timing.retry_base));
                            tracing::info!(xid = %tx.xid, %error, retry_in_ms = delay.as_millis() as u64,
                                "action outcome unknown; will retry");
                            let w = SagaWrite {
                                from: tx.status,
                                to: None,
                                marks: std::mem::take(&mut marks),
                                lease: LeaseAfter::RetryIn(delay),
                            };
                            self.store().saga_write(&tx.xid, owner, &w, Durability::Relaxed).await?;
                            return Ok(Outcome::Pending);
                        }
                        ForwardEnd::Stopping => {
                            let w = SagaWrite {
                                from: tx.status,
                                to: None,
                                marks: std::mem::take(&mut marks),
                                lease: LeaseAfter::RetryIn(Duration::ZERO),
                            };
                            self.store().saga_write(&tx.xid, owner, &w, Durability::Relaxed).await?;
                            return Ok(Outcome::Pending);
                        }
                        ForwardEnd::LeaseLost => return Ok(Outcome::Pending),
                    }
                }
                Step::Check => {
                    let answer = self.callbacks().check(&tx).await;
                    let verdict = answer.as_ref().ok().and_then(|&outcome| msg::after_check(outcome));
                    let Some((to, reason)) = verdict else {
                        let delay = retry_delay(timing.retry_base, timing.retry_max, tx.attempts);
                        let why = match answer {
                            Ok(outcome) => format!("the producer answered {outcome:?}"),
                            Err(e) => e,
                        };
                        tracing::info!(xid = %tx.xid, why, retry_in_ms = delay.as_millis() as u64,
                            "back-check did not decide; will ask again");
                        self.store().schedule_retry(&tx.xid, owner, &[], delay).await?;
                        return Ok(Outcome::Pending);
                    };
                    tracing::info!(xid = %tx.xid, status = %to, "back-check decided the message");
                    let started = Instant::now();
                    let advance = Advance { to, reason, marks: Vec::new() };
                    if !self.advance(&mut tx, &mut branches, advance).await? {
                        return Ok(Outcome::Pending);
                    }
                    lease_until = started + timing.lease;
                }
                Step::Send(send) => match send.then {
                    Then::Record(decision) => {
                        let pass = self.deliver(&tx, &mut branches, &send, decision, &mut lease_until, &mut updates);
                        if let Some(ended) = pass.await? {
                            let delay = match ended {
                                PassEnd::Unknown(error) => {
                                    let mut delay = retry_delay(timing.retry_base, timing.retry_max, tx.attempts);
                                    if let Some(cap) = protocol.retry_cap(&view) {
                                        delay = delay.min(cap.max(timing.retry_base));
                                    }
                                    tracing::info!(xid = %tx.xid, %error, retry_in_ms = delay.as_millis() as u64,
                                        "callback outcome unknown; will retry");
                                    delay
                                }
                                PassEnd::Stopping => Duration::ZERO,
                                PassEnd::LeaseLost => return Ok(Outcome::Pending),
                            };
                            self.store().schedule_retry(&tx.xid, owner, &updates, delay).await?;
                            return Ok(Outcome::Pending);
                        }
                    }
                    Then::Judge(phase) => {
                        let asked = send.rounds.concat();
                        let Some(results) = self.ask(&tx, &branches, &send, &asked).await? else {
                            return Ok(Outcome::Pending);
                        };
                        let advance = protocol.after_phase(phase, &asked, &results, &view);
                        if advance.to == GlobalStatus::RollingBack {
                            tracing::info!(action = send.action.as_str(), reason = ?advance.reason,
                                "phase failed; aborting");
                        }
                        let started = Instant::now();
                        if !self.advance(&mut tx, &mut branches, advance).await? {
                            return Ok(Outcome::Pending);
                        }
                        lease_until = started + timing.lease;
                    }
                },
            }
        }
    }

    /// Forward actions (saga): calls the ready steps, each start recorded
    /// durably before its call (a failed saga compensates exactly the steps
    /// whose action was called, whoever drives it then), and asks the
    /// protocol again after every answer. Once an answer fails the saga, an
    /// outcome is unknown, the deadline passes or the process stops, no new
    /// action starts and those in flight are waited for. Answers are kept
    /// in `marks`, written with the next write.
    async fn forward(
        &self,
        tx: &mut TxRow,
        branches: &mut [BranchRow],
        run: Forward,
        marks: &mut Vec<StepMark>,
        lease_until: &mut Instant,
    ) -> Result<ForwardEnd, DriveError> {
        let protocol = modes::protocol(tx.mode)
            .ok_or_else(|| DriveError::Internal(format!("no protocol serves mode {}", tx.mode)))?;
        let timing = self.timing();
        let owner = self.instance_id();
        let mut flying = vec![false; branches.len()];
        let mut in_flight = FuturesUnordered::new();
        let mut ready = Some(run.ready);
        let mut recorded = run.recorded;
        let mut unknown: Option<String> = None;
        let mut failure: Option<RollbackReason> = None;
        let mut stopping = false;
        let left = (tx.deadline - chrono::Utc::now()).to_std().unwrap_or_default();
        let deadline = tokio::time::sleep(left);
        tokio::pin!(deadline);
        let mut expired = left.is_zero();
        let period = (timing.lease / 3).max(Duration::from_millis(10));
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let starting = unknown.is_none() && failure.is_none() && !expired && !stopping;
            if let Some(ready) = ready.take().filter(|_| starting) {
                let start: Vec<usize> = ready.into_iter().filter(|&i| i < branches.len() && !flying[i]).collect();
                let fresh: Vec<usize> = start.iter().copied().filter(|i| !recorded.contains(i)).collect();
                recorded.clear();
                if !fresh.is_empty() {
                    for &i in &fresh {
                        let b = &mut branches[i];
                        b.action_status = Some(ActionStatus::Running);
                        b.action_attempts += 1;
                        marks.push(StepMark {
                            branch_id: b.branch_id.clone(),
                            action: Some(ActionStatus::Running),
                            attempts_added: 1,
                            error: None,
                            status: None,
                        });
                    }
                    let w = SagaWrite {
                        from: tx.status,
                        to: None,
                        marks: std::mem::take(marks),
                        lease: LeaseAfter::Hold(timing.lease),
                    };
                    let started = Instant::now();
                    let Some(row) = self.store().saga_write(&tx.xid, owner, &w, Durability::Synchronous).await? else {
                        tracing::info!(xid = %tx.xid, "lease lost; another coordinator drives this saga");
                        return Ok(ForwardEnd::LeaseLost);
                    };
                    *tx = row;
                    *lease_until = started + timing.lease;
                }
                for i in start {
                    flying[i] = true;
                    let b = branches[i].clone();
                    let url = b.action_url.clone().unwrap_or_default();
                    let tx = tx.clone();
                    let callbacks = self.callbacks().clone();
                    in_flight.push(async move {
                        let r = callbacks
                            .send_to(&tx, &b, &url, CallbackAction::Action, None)
                            .instrument(tracing::debug_span!("action", branch_id = %b.branch_id))
                            .await;
                        (i, r)
                    });
                }
            }
            if in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some((i, result)) = in_flight.next() => {
                    flying[i] = false;
                    let b = &mut branches[i];
                    let (status, reason) = action_verdict(&result, b.action_attempts, tx.retry_limit);
                    let error = match &result {
                        CallbackResult::Done => None,
                        CallbackResult::Refused(e) | CallbackResult::HeuristicCommit(e) | CallbackResult::Unknown(e) => {
                            Some(e.clone())
                        }
                    };
                    if status == ActionStatus::Failed {
                        tracing::info!(xid = %tx.xid, branch_id = %b.branch_id, error = ?error, "action failed; compensating");
                    }
                    b.action_status = Some(status);
                    if error.is_some() {
                        b.action_error = error.clone();
                    }
                    marks.push(StepMark { branch_id: b.branch_id.clone(), action: Some(status), attempts_added: 0,
                        error: error.clone(), status: None });
                    if let Some(reason) = reason {
                        failure = failure.or(Some(reason));
                    } else if status == ActionStatus::Running {
                        unknown = unknown.or(error);
                    }
                    // Ask again: new steps may be ready, or the saga is over.
                    let statuses: Vec<_> = branches.iter().map(|b| b.status).collect();
                    let steps: Vec<StepView<'_>> = branches
                        .iter()
                        .map(|b| StepView { action: b.action_status, after: b.after_steps.as_deref() })
                        .collect();
                    let view = View { status: tx.status, branches: &statuses, resumed: Resumed::Fresh,
                        three_phase: tx.three_phase, steps: &steps, expired, order: tx.delivery_order };
                    if let Step::Forward(next) = protocol.next_step(&view) {
                        ready = Some(next);
                    }
                }
                _ = beat.tick() => {
                    if lease_until.saturating_duration_since(Instant::now()) < timing.lease / 2 {
                        if !self.store().renew_lease(&tx.xid, owner, timing.lease).await? {
                            tracing::info!(xid = %tx.xid, "lease lost; another coordinator drives this saga");
                            return Ok(ForwardEnd::LeaseLost);
                        }
                        *lease_until = Instant::now() + timing.lease;
                    }
                }
                _ = &mut deadline, if !expired => expired = true,
                _ = self.shutdown_token().cancelled(), if !stopping => stopping = true,
            }
        }
        if stopping && failure.is_none() {
            return Ok(ForwardEnd::Stopping);
        }
        match unknown {
            Some(error) if failure.is_none() && !expired => Ok(ForwardEnd::Unknown(error)),
            _ => Ok(ForwardEnd::Settled(failure)),
        }
    }

    /// [`Coordinator::advance`] with forward actions' answers (saga), in one
    /// durable statement.
    async fn advance_steps(
        &self,
        tx: &mut TxRow,
        branches: &mut [BranchRow],
        advance: Advance,
        mut marks: Vec<StepMark>,
    ) -> Result<bool, DriveError> {
        Transition::new(tx.status, advance.to).map_err(|e| DriveError::Internal(e.to_string()))?;
        let n = branches.len();
        for (i, status, error) in advance.marks {
            let b =
                branches.get_mut(i).ok_or_else(|| DriveError::Internal(format!("a step names branch {i} of {n}")))?;
            b.status = status;
            marks.push(StepMark {
                branch_id: b.branch_id.clone(),
                action: None,
                attempts_added: 0,
                error,
                status: Some(status),
            });
        }
        let w = SagaWrite {
            from: tx.status,
            to: Some((advance.to, advance.reason)),
            marks,
            lease: LeaseAfter::Hold(self.timing().lease),
        };
        let Some(row) = self.store().saga_write(&tx.xid, self.instance_id(), &w, Durability::Synchronous).await? else {
            tracing::info!(from = %tx.status, to = %advance.to, "lease lost; another coordinator drives this transaction");
            return Ok(false);
        };
        *tx = row;
        Ok(true)
    }

    /// [`Coordinator::finish`] with forward actions' answers and branch
    /// statuses (saga). Relaxed, as every end: lost, the saga is driven
    /// again, and its actions answer as before.
    async fn finish_steps(
        &self,
        tx: &TxRow,
        branches: &mut [BranchRow],
        terminal: GlobalStatus,
        marks: Vec<StepMark>,
    ) -> Result<Outcome, DriveError> {
        Transition::new(tx.status, terminal).map_err(|e| DriveError::Internal(e.to_string()))?;
        for m in &marks {
            if let Some(b) = branches.iter_mut().find(|b| b.branch_id == m.branch_id) {
                if let Some(s) = m.status {
                    b.status = s;
                }
                if let Some(a) = m.action {
                    b.action_status = Some(a);
                }
            }
        }
        let w = SagaWrite { from: tx.status, to: Some((terminal, None)), marks, lease: LeaseAfter::Finished };
        let Some(row) = self.store().saga_write(&tx.xid, self.instance_id(), &w, Durability::Relaxed).await? else {
            return Ok(Outcome::Pending);
        };
        self.count_terminal(tx, terminal);
        tracing::debug!(xid = %tx.xid, status = %terminal, "saga finished");
        Ok(Outcome::Finished(Box::new(row.to_wire(branches))))
    }

    /// Phase 2: sends `send`'s rounds one after another, recording each
    /// answer; `None` when every branch answered, else why the pass ended.
    async fn deliver(
        &self,
        tx: &TxRow,
        branches: &mut [BranchRow],
        send: &Send,
        decision: Decision,
        lease_until: &mut Instant,
        updates: &mut Vec<BranchUpdate>,
    ) -> Result<Option<PassEnd>, DriveError> {
        let timing = self.timing();
        let store = self.store();
        for round in &send.rounds {
            if self.shutdown_token().is_cancelled() {
                return Ok(Some(PassEnd::Stopping));
            }
            if lease_until.saturating_duration_since(Instant::now()) < timing.callback_timeout * 2 {
                if !store.renew_lease(&tx.xid, self.instance_id(), timing.lease).await? {
                    tracing::info!(xid = %tx.xid, "lease lost; another coordinator drives this transaction");
                    return Ok(Some(PassEnd::LeaseLost));
                }
                *lease_until = Instant::now() + timing.lease;
            }
            let results = futures::future::join_all(round.iter().map(|&i| {
                let branch = &branches[i];
                self.callbacks()
                    .send_within(tx, branch, send.action, send.wait)
                    .instrument(tracing::debug_span!("callback", branch_id = %branch.branch_id))
            }))
            .await;
            let mut unknown = None;
            for (&i, result) in round.iter().zip(results) {
                if let Some(error) = record(tx, decision, &mut branches[i], &result, updates) {
                    unknown = Some(error);
                }
            }
            if let Some(error) = unknown {
                return Ok(Some(PassEnd::Unknown(error)));
            }
        }
        Ok(None)
    }

    /// A phase before the decision: sends to the branches `asked` at once and
    /// waits for every answer, renewing the lease meanwhile (it stays short,
    /// so that a dead coordinator is taken over within one lease, however
    /// long the phase may wait). `None`: the lease was lost.
    async fn ask(
        &self,
        tx: &TxRow,
        branches: &[BranchRow],
        send: &Send,
        asked: &[usize],
    ) -> Result<Option<Vec<CallbackResult>>, DriveError> {
        let lease = self.timing().lease;
        let phase = futures::future::join_all(asked.iter().map(|&i| {
            let b = &branches[i];
            self.callbacks().send_within(tx, b, send.action, send.wait).instrument(tracing::debug_span!(
                "callback",
                branch_id = %b.branch_id,
                action = send.action.as_str()
            ))
        }));
        tokio::pin!(phase);
        let period = (lease / 3).max(Duration::from_millis(10));
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                results = &mut phase => return Ok(Some(results)),
                _ = beat.tick() => {
                    if !self.store().renew_lease(&tx.xid, self.instance_id(), lease).await? {
                        tracing::info!("lease lost; another coordinator drives this transaction");
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Writes `advance` durably; on success updates `tx` and the branches in
    /// memory. `false`: the lease was lost.
    async fn advance(&self, tx: &mut TxRow, branches: &mut [BranchRow], advance: Advance) -> Result<bool, DriveError> {
        let transition = Transition::new(tx.status, advance.to).map_err(|e| DriveError::Internal(e.to_string()))?;
        let mut marks = Vec::with_capacity(advance.marks.len());
        for (i, status, error) in advance.marks {
            let b = branches
                .get(i)
                .ok_or_else(|| DriveError::Internal(format!("a step names branch {i} of {}", branches.len())))?;
            marks.push(BranchUpdate {
                branch_id: b.branch_id.clone(),
                status: Some(status),
                attempts_added: 0,
                last_error: error,
            });
        }
        let step = PhaseStep { transition, reason: advance.reason, hold: self.timing().lease, branches: marks };
        let Some(row) = self.store().advance(&tx.xid, self.instance_id(), &step).await? else {
            tracing::info!(from = %tx.status, to = %step.transition.to(),
                "lease lost; another coordinator drives this transaction");
            return Ok(false);
        };
        for u in &step.branches {
            if let Some(b) = branches.iter_mut().find(|b| b.branch_id == u.branch_id) {
                if let Some(status) = u.status {
                    b.status = status;
                }
                if u.last_error.is_some() {
                    b.last_error = u.last_error.clone();
                }
            }
        }
        tracing::debug!(status = %row.status, "step recorded");
        *tx = row;
        Ok(true)
    }

    /// Writes the terminal status with the pass's branch progress.
    async fn finish(
        &self,
        tx: &TxRow,
        branches: &[BranchRow],
        terminal: GlobalStatus,
        updates: &[BranchUpdate],
    ) -> Result<Outcome, DriveError> {
        let transition = Transition::new(tx.status, terminal).map_err(|e| DriveError::Internal(e.to_string()))?;
        let Some(finished_at) = self.store().finish(&tx.xid, transition, updates).await? else {
            // Someone else finished it first (after our lease expired).
            return Ok(Outcome::Pending);
        };
        self.count_terminal(tx, terminal);
        let mut done = tx.to_wire(branches);
        done.status = terminal;
        done.finished_at = Some(finished_at);
        tracing::debug!(xid = %tx.xid, status = %terminal, "phase 2 finished");
        Ok(Outcome::Finished(Box::new(done)))
    }

    fn count_terminal(&self, tx: &TxRow, terminal: GlobalStatus) {
        self.events().ended(tx.mode, terminal);
        let m = self.metrics();
        let mode = tx.mode.as_str();
        match terminal {
            GlobalStatus::Committed | GlobalStatus::Delivered => m.committed.with_label_values(&[mode]).inc(),
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

/// A [`Step::Forward`] to run.
struct Forward {
    /// The steps the protocol named.
    ready: Vec<usize>,
    /// Those whose start is already recorded ([`Job::recorded_starts`]).
    recorded: Vec<usize>,
}

/// How a run of forward actions ended.
enum ForwardEnd {
    /// Nothing in flight and nothing more to start: ask the protocol (with
    /// why the actions failed, where one failed more than a 409 says).
    Settled(Option<RollbackReason>),
    /// An action's outcome is unknown (this error): retry later.
    Unknown(String),
    /// The process is stopping: hand the saga back now.
    Stopping,
    /// Another coordinator drives it now.
    LeaseLost,
}

/// Why a phase-2 pass ended before every branch answered.
enum PassEnd {
    /// A branch's outcome is unknown (this error): retry later.
    Unknown(String),
    /// The process is stopping: hand the transaction back now.
    Stopping,
    /// Another coordinator drives it now.
    LeaseLost,
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
