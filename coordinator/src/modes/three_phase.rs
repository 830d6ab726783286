//! Three-phase commit (mode `3pc`): CanCommit, then PreCommit, then the
//! decision, which phase 2 delivers as DoCommit or abort.
//!
//! A commit request writes `can_commit` durably before the first vote is
//! asked. Every vote yes → `pre_committed` is written durably before the
//! first PreCommit goes out. Every PreCommit acknowledged → `committing` (the
//! decision), else `rolling_back`. Votes and acknowledgements are not
//! retried: a missing answer within the phase timeout is the signal to abort.
//!
//! A coordinator taking over a dead one's transaction aborts one in
//! `can_commit` (the votes were in memory; a yes-voter aborts on its own
//! timeout anyway) and re-sends PreCommit for one in `pre_committed`
//! (idempotent at the participant: a pre-committed or timeout-committed
//! branch acknowledges again, an aborted one says no).

use super::{
    phase2_step, Advance, Delivery, ModeOptions, OptionError, OptionLimits, Phase, Protocol, Resumed, Send, Step, Then,
    View,
};
use crate::transaction::state::{CallbackResult, Decision};
use std::time::Duration;
use tandem_wire::{BeginRequest, BranchStatus, CallbackAction, GlobalStatus, Mode, RollbackReason};

/// The 3PC protocol.
#[derive(Debug, Clone, Copy)]
pub struct ThreePhase;

impl Protocol for ThreePhase {
    fn mode(&self) -> Mode {
        Mode::ThreePc
    }

    fn begin_options(&self, req: &BeginRequest, limits: OptionLimits) -> Result<ModeOptions, OptionError> {
        let timeouts = req.three_phase.unwrap_or_default().resolve(limits.max_ms, limits.takeover_ms)?;
        Ok(ModeOptions { three_phase: Some(timeouts) })
    }

    fn commit_status(&self) -> GlobalStatus {
        GlobalStatus::CanCommit
    }

    fn pre_decision_statuses(&self) -> &'static [GlobalStatus] {
        &[GlobalStatus::CanCommit, GlobalStatus::PreCommitted]
    }

    /// Every branch at once: an unreachable branch must not hold back the
    /// abort of a pre-committed one, which would commit on its own timeout.
    fn delivery(&self, _decision: Decision) -> Delivery {
        Delivery::AllAtOnce
    }

    /// An abort must reach pre-committed participants before they commit on
    /// their own: several attempts inside that window.
    fn retry_cap(&self, view: &View<'_>) -> Option<Duration> {
        view.three_phase.map(|t| Duration::from_millis(t.do_commit_timeout_ms / 8))
    }

    fn next_step(&self, view: &View<'_>) -> Step {
        let Some(t) = view.three_phase else {
            return phase2_step(self.delivery_for(view.status), view);
        };
        match (view.status, view.resumed) {
            (GlobalStatus::CanCommit, Resumed::Fresh) => Step::Send(Send {
                action: CallbackAction::CanCommit,
                rounds: vec![(0..view.branches.len()).collect()],
                wait: Some(Duration::from_millis(t.can_commit_timeout_ms)),
                then: Then::Judge(Phase::CanCommit),
            }),
            (GlobalStatus::CanCommit, Resumed::TakenOver) => Step::Advance(Advance {
                to: GlobalStatus::RollingBack,
                reason: Some(RollbackReason::Timeout),
                marks: vec![],
            }),
            // Re-sending PreCommit is safe: a participant already pre-committed
            // (or committed on its timeout) acknowledges again; one that
            // aborted says no. All yes → commit, which is what every
            // participant would otherwise do on its own timeout.
            (GlobalStatus::PreCommitted, _) => Step::Send(Send {
                action: CallbackAction::PreCommit,
                rounds: vec![(0..view.branches.len())
                    .filter(|&i| view.branches[i] != BranchStatus::PreCommitted)
                    .collect()],
                wait: Some(Duration::from_millis(t.pre_commit_timeout_ms)),
                then: Then::Judge(Phase::PreCommit),
            }),
            _ => phase2_step(self.delivery_for(view.status), view),
        }
    }

    fn after_phase(&self, phase: Phase, asked: &[usize], results: &[CallbackResult], _view: &View<'_>) -> Advance {
        let verdict = verdict(results);
        let what = match phase {
            Phase::CanCommit => "CanCommit",
            Phase::PreCommit => "PreCommit",
        };
        // The branches that said yes in this phase.
        let yes: Vec<(usize, BranchStatus, Option<String>)> = asked
            .iter()
            .zip(results)
            .filter(|(_, r)| **r == CallbackResult::Done)
            .map(|(&i, _)| {
                let s = match phase {
                    Phase::CanCommit => BranchStatus::VotedYes,
                    Phase::PreCommit => BranchStatus::PreCommitted,
                };
                (i, s, None)
            })
            .collect();
        match verdict {
            Verdict::Proceed => {
                let to = match phase {
                    Phase::CanCommit => GlobalStatus::PreCommitted,
                    Phase::PreCommit => GlobalStatus::Committing,
                };
                // From here the branch statuses say where each branch is in
                // the protocol, whatever one may have reported before.
                Advance { to, reason: None, marks: yes }
            }
            Verdict::Abort { reason, failed } => {
                let mut marks = yes;
                for (k, failure) in failed {
                    let status = match failure {
                        Failure::Refused(_) => BranchStatus::VotedNo,
                        Failure::NoAnswer(_) => BranchStatus::Phase1Failed,
                    };
                    let error = match &failure {
                        Failure::Refused(e) | Failure::NoAnswer(e) => format!("{what}: {e}"),
                    };
                    marks.push((asked[k], status, Some(error)));
                }
                Advance { to: GlobalStatus::RollingBack, reason: Some(reason), marks }
            }
        }
    }

    fn commit_refused_because(&self, reason: Option<RollbackReason>) -> &'static str {
        match reason {
            Some(RollbackReason::Timeout) => "a participant did not answer CanCommit or PreCommit in time",
            _ => "a participant voted no or failed PreCommit",
        }
    }
}

/// Why a branch did not say yes in a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It said no (409).
    Refused(String),
    /// No answer in time, or an error.
    NoAnswer(String),
}

/// Where a 3PC phase goes once every branch has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every branch answered 2xx: go to the next phase.
    Proceed,
    /// Abort, for `reason`; `failed` lists the branches (by position among
    /// those asked) that did not say yes.
    Abort {
        /// `branch_failed` for a no, `timeout` for no answer in time.
        reason: RollbackReason,
        /// Position and failure of each branch that did not answer 2xx.
        failed: Vec<(usize, Failure)>,
    },
}

/// Judges the answers of one phase (`results[i]` from the `i`-th branch
/// asked): all yes → proceed; any no → abort `branch_failed`; otherwise (no
/// answer, or an error) → abort `timeout`.
pub fn verdict(results: &[CallbackResult]) -> Verdict {
    let mut failed = Vec::new();
    let mut refused = false;
    for (i, r) in results.iter().enumerate() {
        match r {
            CallbackResult::Done => {}
            CallbackResult::Refused(e) | CallbackResult::HeuristicCommit(e) => {
                refused = true;
                failed.push((i, Failure::Refused(e.clone())));
            }
            CallbackResult::Unknown(e) => failed.push((i, Failure::NoAnswer(e.clone()))),
        }
    }
    if failed.is_empty() {
        return Verdict::Proceed;
    }
    let reason = if refused { RollbackReason::BranchFailed } else { RollbackReason::Timeout };
    Verdict::Abort { reason, failed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_wire::{BranchStatus as B, ThreePhaseTimeouts};

    fn view<'a>(status: GlobalStatus, branches: &'a [BranchStatus], resumed: Resumed) -> View<'a> {
        View {
            status,
            branches,
            resumed,
            three_phase: Some(ThreePhaseTimeouts::default()),
            steps: &[],
            expired: false,
            order: None,
        }
    }

    #[test]
    fn verdicts() {
        let done = CallbackResult::Done;
        assert_eq!(verdict(&[done.clone(), done.clone()]), Verdict::Proceed);
        assert_eq!(verdict(&[]), Verdict::Proceed);
        assert_eq!(
            verdict(&[done.clone(), CallbackResult::Unknown("timeout".into())]),
            Verdict::Abort { reason: RollbackReason::Timeout, failed: vec![(1, Failure::NoAnswer("timeout".into()))] }
        );
        // A no anywhere makes the abort a branch failure, even beside a timeout.
        assert!(matches!(
            verdict(&[CallbackResult::Unknown("t".into()), CallbackResult::Refused("no".into())]),
            Verdict::Abort { reason: RollbackReason::BranchFailed, ref failed } if failed.len() == 2
        ));
    }

    #[test]
    fn steps() {
        let p = ThreePhase;
        let two = [B::Registered, B::Registered];
        let Step::Send(s) = p.next_step(&view(GlobalStatus::CanCommit, &two, Resumed::Fresh)) else { panic!() };
        assert_eq!(
            (s.action, s.rounds, s.then),
            (CallbackAction::CanCommit, vec![vec![0, 1]], Then::Judge(Phase::CanCommit))
        );
        assert!(matches!(
            p.next_step(&view(GlobalStatus::CanCommit, &two, Resumed::TakenOver)),
            Step::Advance(Advance { to: GlobalStatus::RollingBack, reason: Some(RollbackReason::Timeout), .. })
        ));
        // PreCommit again only to the branches that have not acknowledged it.
        let half = [B::PreCommitted, B::VotedYes];
        let Step::Send(s) = p.next_step(&view(GlobalStatus::PreCommitted, &half, Resumed::TakenOver)) else { panic!() };
        assert_eq!((s.action, s.rounds), (CallbackAction::PreCommit, vec![vec![1]]));
        let Step::Send(s) = p.next_step(&view(GlobalStatus::RollingBack, &half, Resumed::Fresh)) else { panic!() };
        assert_eq!((s.action, s.rounds), (CallbackAction::Rollback, vec![vec![0, 1]]));
    }

    #[test]
    fn phase_answers_name_each_branch() {
        let p = ThreePhase;
        let two = [B::Registered, B::Registered];
        let v = view(GlobalStatus::CanCommit, &two, Resumed::Fresh);
        let yes = p.after_phase(Phase::CanCommit, &[0, 1], &[CallbackResult::Done, CallbackResult::Done], &v);
        assert_eq!(yes.to, GlobalStatus::PreCommitted);
        assert_eq!(yes.marks, vec![(0, B::VotedYes, None), (1, B::VotedYes, None)]);
        let no = p.after_phase(
            Phase::CanCommit,
            &[0, 1],
            &[CallbackResult::Refused("409".into()), CallbackResult::Unknown("late".into())],
            &v,
        );
        assert_eq!((no.to, no.reason), (GlobalStatus::RollingBack, Some(RollbackReason::BranchFailed)));
        assert_eq!(no.marks[0], (0, B::VotedNo, Some("CanCommit: 409".into())));
        assert_eq!(no.marks[1], (1, B::Phase1Failed, Some("CanCommit: late".into())));
        let acked = p.after_phase(Phase::PreCommit, &[1], &[CallbackResult::Done], &v);
        assert_eq!((acked.to, acked.marks), (GlobalStatus::Committing, vec![(1, B::PreCommitted, None)]));
    }
}
