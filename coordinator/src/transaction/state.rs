//! Pure state-transition logic: which status may follow which, and what the
//! coordinator must do next. No I/O here; the service and the phase-2 driver
//! read rows, ask these functions, and write what they answer.

use tandem_wire::{BranchStatus, CallbackAction, ErrorCode, GlobalStatus, Problem, ReportStatus, RollbackReason};

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `POST .../commit`
    Commit,
    /// `POST .../rollback`
    Rollback,
}

impl Decision {
    /// The in-progress status that records this decision durably.
    pub fn deciding_status(self) -> GlobalStatus {
        match self {
            Decision::Commit => GlobalStatus::Committing,
            Decision::Rollback => GlobalStatus::RollingBack,
        }
    }

    /// The phase-2 callback action for this decision.
    pub fn action(self) -> CallbackAction {
        match self {
            Decision::Commit => CallbackAction::Commit,
            Decision::Rollback => CallbackAction::Rollback,
        }
    }

    /// The decision a status records, if it records one.
    pub fn of_status(status: GlobalStatus) -> Option<Decision> {
        match status {
            // A 3PC commit collecting votes or acknowledgements has not decided yet.
            GlobalStatus::Active | GlobalStatus::CanCommit | GlobalStatus::PreCommitted => None,
            GlobalStatus::Committing | GlobalStatus::Committed | GlobalStatus::CommitFailed => Some(Decision::Commit),
            GlobalStatus::RollingBack
            | GlobalStatus::RolledBack
            | GlobalStatus::RollbackFailed
            | GlobalStatus::HeuristicMixed => Some(Decision::Rollback),
        }
    }
}

/// What the transaction looks like when a decision is requested (read under a row lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionInput {
    /// Current global status.
    pub status: GlobalStatus,
    /// The deadline has passed (by the database clock).
    pub expired: bool,
    /// Some branch reported `phase1_failed`.
    pub any_phase1_failed: bool,
    /// Every branch has reported `prepared` (vacuously true without branches).
    pub all_prepared: bool,
    /// The mode requires every branch to report `prepared` before commit (XA).
    pub requires_prepared: bool,
    /// The mode commits in three phases (3PC): a commit request starts
    /// CanCommit instead of deciding.
    pub three_phase: bool,
}

/// What to do with a decision request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionOutcome {
    /// Record this decision now; then run phase 2.
    Decide {
        /// The decision to record.
        decision: Decision,
        /// The status to write: the decision's, or `can_commit` for a 3PC commit.
        status: GlobalStatus,
        /// Set when the decision is a rollback.
        reason: Option<RollbackReason>,
        /// The client asked for something else (commit turned into rollback): answer 409.
        overridden: bool,
    },
    /// The same decision was already made: answer with the current state.
    AlreadyDecided,
    /// The opposite decision was already made: answer 409.
    Conflict,
}

/// Decides what a commit or rollback request does to a transaction.
pub fn decide(requested: Decision, input: DecisionInput) -> DecisionOutcome {
    if input.status.is_three_phase_pending() {
        // The commit asked for earlier is running its phases: a repeated commit
        // waits for it; a rollback would race the driver and is refused.
        return match requested {
            Decision::Commit => DecisionOutcome::AlreadyDecided,
            Decision::Rollback => DecisionOutcome::Conflict,
        };
    }
    match Decision::of_status(input.status) {
        Some(existing) if existing == requested => DecisionOutcome::AlreadyDecided,
        Some(_) => DecisionOutcome::Conflict,
        None => match requested {
            Decision::Rollback => DecisionOutcome::Decide {
                decision: Decision::Rollback,
                status: GlobalStatus::RollingBack,
                reason: Some(RollbackReason::Requested),
                overridden: false,
            },
            Decision::Commit => {
                let reason = if input.any_phase1_failed || (input.requires_prepared && !input.all_prepared) {
                    Some(RollbackReason::BranchFailed)
                } else if input.expired {
                    Some(RollbackReason::Timeout)
                } else {
                    None
                };
                match reason {
                    None => DecisionOutcome::Decide {
                        decision: Decision::Commit,
                        status: if input.three_phase { GlobalStatus::CanCommit } else { GlobalStatus::Committing },
                        reason: None,
                        overridden: false,
                    },
                    Some(reason) => DecisionOutcome::Decide {
                        decision: Decision::Rollback,
                        status: GlobalStatus::RollingBack,
                        reason: Some(reason),
                        overridden: true,
                    },
                }
            }
        },
    }
}

/// Why a branch may not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterRefusal {
    /// The transaction is decided (or finished).
    NotActive(GlobalStatus),
    /// Still active, but its deadline has passed: it is about to roll back.
    Expired,
}

/// Whether a branch may join a transaction in this state.
pub fn may_register(status: GlobalStatus, expired: bool) -> Result<(), RegisterRefusal> {
    match status {
        GlobalStatus::Active if expired => Err(RegisterRefusal::Expired),
        GlobalStatus::Active => Ok(()),
        other => Err(RegisterRefusal::NotActive(other)),
    }
}

/// Why a phase-1 report is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportRefusal {
    /// The transaction is already decided.
    TransactionDecided(GlobalStatus),
    /// The branch already reported the other result or is in phase 2.
    BranchState(BranchStatus),
}

/// What a phase-1 report does to a branch: the new status, or a refusal.
/// Repeating the same report is accepted (idempotent).
pub fn apply_report(
    global: GlobalStatus,
    branch: BranchStatus,
    report: ReportStatus,
) -> Result<BranchStatus, ReportRefusal> {
    let target = match report {
        ReportStatus::Prepared => BranchStatus::Prepared,
        ReportStatus::Phase1Failed => BranchStatus::Phase1Failed,
    };
    if branch == target {
        return Ok(target);
    }
    if global != GlobalStatus::Active {
        return Err(ReportRefusal::TransactionDecided(global));
    }
    match branch {
        BranchStatus::Registered => Ok(target),
        other => Err(ReportRefusal::BranchState(other)),
    }
}

/// How a participant answered a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackResult {
    /// 2xx: done; never sent again.
    Done,
    /// 409: permanent refusal.
    Refused(String),
    /// Anything else, or no answer: retry later.
    Unknown(String),
    /// 409 with the problem code `heuristic_commit`: a 3PC participant
    /// committed on its own timeout and refuses the rollback.
    HeuristicCommit(String),
}

/// Classifies an HTTP status of a callback answer (contract table). A 409
/// whose problem body has the code `heuristic_commit` is told apart.
pub fn classify_http(status: u16, body: &str) -> CallbackResult {
    match status {
        200..=299 => CallbackResult::Done,
        409 if serde_json::from_str::<Problem>(body).is_ok_and(|p| p.code == ErrorCode::HeuristicCommit) => {
            CallbackResult::HeuristicCommit(format!("409: {body}"))
        }
        409 => CallbackResult::Refused(format!("409: {body}")),
        other => CallbackResult::Unknown(format!("{other}: {body}")),
    }
}

/// The branch status after a phase-2 callback, or `None` while unknown.
pub fn branch_after_callback(decision: Decision, result: &CallbackResult) -> Option<BranchStatus> {
    match (decision, result) {
        (_, CallbackResult::Unknown(_)) => None,
        (Decision::Commit, CallbackResult::Done) => Some(BranchStatus::Committed),
        (Decision::Rollback, CallbackResult::Done) => Some(BranchStatus::RolledBack),
        (Decision::Commit, CallbackResult::Refused(_) | CallbackResult::HeuristicCommit(_)) => {
            Some(BranchStatus::CommitFailed)
        }
        (Decision::Rollback, CallbackResult::Refused(_)) => Some(BranchStatus::RollbackFailed),
        (Decision::Rollback, CallbackResult::HeuristicCommit(_)) => Some(BranchStatus::HeuristicCommitted),
    }
}

/// The terminal global status once every branch has a final phase-2 status,
/// or `None` if some branch is still pending.
pub fn phase2_outcome(decision: Decision, branches: &[BranchStatus]) -> Option<GlobalStatus> {
    if !branches.iter().all(|b| b.is_final()) {
        return None;
    }
    if decision == Decision::Rollback && branches.contains(&BranchStatus::HeuristicCommitted) {
        return Some(GlobalStatus::HeuristicMixed);
    }
    let failed = branches.iter().any(|b| matches!(b, BranchStatus::CommitFailed | BranchStatus::RollbackFailed));
    Some(match (decision, failed) {
        (Decision::Commit, false) => GlobalStatus::Committed,
        (Decision::Commit, true) => GlobalStatus::CommitFailed,
        (Decision::Rollback, false) => GlobalStatus::RolledBack,
        (Decision::Rollback, true) => GlobalStatus::RollbackFailed,
    })
}

/// Whether `to` may follow `from` for a global transaction. The service and the
/// driver only write transitions this allows; the tests enumerate it.
pub fn global_transition_allowed(from: GlobalStatus, to: GlobalStatus) -> bool {
    use GlobalStatus::*;
    matches!(
        (from, to),
        (Active, Committing)
            | (Active, RollingBack)
            | (Committing, Committed)
            | (Committing, CommitFailed)
            | (RollingBack, RolledBack)
            | (RollingBack, RollbackFailed)
            | (RollingBack, HeuristicMixed)
            | (Active, CanCommit)
            | (CanCommit, PreCommitted)
            | (CanCommit, RollingBack)
            | (PreCommitted, Committing)
            | (PreCommitted, RollingBack)
    )
}

/// Where a 3PC phase (CanCommit or PreCommit) goes once every branch has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseVerdict {
    /// Every branch answered 2xx: go to the next phase.
    Proceed,
    /// Abort, for `reason`; `failed` lists the branches (by index) that did
    /// not say yes, with what they answered.
    Abort {
        /// `branch_failed` for a no (409), `timeout` for no answer in time.
        reason: RollbackReason,
        /// Index and error of each branch that did not answer 2xx.
        failed: Vec<(usize, String)>,
    },
}

/// Judges the answers of one 3PC phase (`results[i]` from branch `i`): all
/// yes → proceed; any no → abort `branch_failed`; otherwise (no answer, or an
/// error) → abort `timeout`. 3PC phase 1 and 2 answers are not retried: a
/// missing vote or acknowledgement is itself the signal to abort.
pub fn phase_verdict(results: &[CallbackResult]) -> PhaseVerdict {
    let mut failed = Vec::new();
    let mut refused = false;
    for (i, r) in results.iter().enumerate() {
        match r {
            CallbackResult::Done => {}
            CallbackResult::Refused(e) | CallbackResult::HeuristicCommit(e) => {
                refused = true;
                failed.push((i, e.clone()));
            }
            CallbackResult::Unknown(e) => failed.push((i, e.clone())),
        }
    }
    if failed.is_empty() {
        return PhaseVerdict::Proceed;
    }
    let reason = if refused { RollbackReason::BranchFailed } else { RollbackReason::Timeout };
    PhaseVerdict::Abort { reason, failed }
}

/// What a coordinator does with a 3PC transaction it finds in `status`
/// (its own fresh commit request, or one taken over from a dead coordinator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreePhaseStep {
    /// Send CanCommit to every branch.
    AskVotes,
    /// Send PreCommit to every branch not yet acknowledged (`prepared`).
    PreCommit,
    /// Abort: the votes of a dead coordinator are lost, and a yes-voter aborts
    /// on its own timeout anyway.
    AbortLostVotes,
    /// Nothing for the 3PC driver (decided or finished): phase 2 as usual.
    Phase2,
}

/// The next 3PC step for `status`; `resumed` is true when recovery took the
/// transaction over from a coordinator whose lease expired.
pub fn three_phase_step(status: GlobalStatus, resumed: bool) -> ThreePhaseStep {
    match (status, resumed) {
        (GlobalStatus::CanCommit, false) => ThreePhaseStep::AskVotes,
        (GlobalStatus::CanCommit, true) => ThreePhaseStep::AbortLostVotes,
        // Re-sending PreCommit is safe: a participant already pre-committed
        // (or committed on its timeout) acknowledges again; one that aborted
        // says no. All yes → commit, which is what every participant would
        // otherwise do on its own timeout.
        (GlobalStatus::PreCommitted, _) => ThreePhaseStep::PreCommit,
        _ => ThreePhaseStep::Phase2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(status: GlobalStatus) -> DecisionInput {
        DecisionInput {
            status,
            expired: false,
            any_phase1_failed: false,
            all_prepared: true,
            requires_prepared: false,
            three_phase: false,
        }
    }

    #[test]
    fn commit_of_active_commits() {
        assert_eq!(
            decide(Decision::Commit, input(GlobalStatus::Active)),
            DecisionOutcome::Decide {
                decision: Decision::Commit,
                status: GlobalStatus::Committing,
                reason: None,
                overridden: false
            }
        );
    }

    #[test]
    fn commit_with_failed_branch_rolls_back_and_conflicts() {
        let mut i = input(GlobalStatus::Active);
        i.any_phase1_failed = true;
        assert_eq!(
            decide(Decision::Commit, i),
            DecisionOutcome::Decide {
                decision: Decision::Rollback,
                status: GlobalStatus::RollingBack,
                reason: Some(RollbackReason::BranchFailed),
                overridden: true
            }
        );
    }

    #[test]
    fn commit_after_deadline_rolls_back_on_timeout() {
        let mut i = input(GlobalStatus::Active);
        i.expired = true;
        assert_eq!(
            decide(Decision::Commit, i),
            DecisionOutcome::Decide {
                decision: Decision::Rollback,
                status: GlobalStatus::RollingBack,
                reason: Some(RollbackReason::Timeout),
                overridden: true
            }
        );
        // A rollback request is honoured as requested even when expired.
        assert_eq!(
            decide(Decision::Rollback, i),
            DecisionOutcome::Decide {
                decision: Decision::Rollback,
                status: GlobalStatus::RollingBack,
                reason: Some(RollbackReason::Requested),
                overridden: false
            }
        );
    }

    #[test]
    fn prepared_modes_need_every_branch_prepared() {
        let mut i = input(GlobalStatus::Active);
        i.requires_prepared = true;
        i.all_prepared = false;
        assert!(matches!(
            decide(Decision::Commit, i),
            DecisionOutcome::Decide { decision: Decision::Rollback, overridden: true, .. }
        ));
    }

    #[test]
    fn decisions_are_idempotent_and_final() {
        for s in [GlobalStatus::Committing, GlobalStatus::Committed, GlobalStatus::CommitFailed] {
            assert_eq!(decide(Decision::Commit, input(s)), DecisionOutcome::AlreadyDecided);
            assert_eq!(decide(Decision::Rollback, input(s)), DecisionOutcome::Conflict);
        }
        for s in [GlobalStatus::RollingBack, GlobalStatus::RolledBack, GlobalStatus::RollbackFailed] {
            assert_eq!(decide(Decision::Rollback, input(s)), DecisionOutcome::AlreadyDecided);
            assert_eq!(decide(Decision::Commit, input(s)), DecisionOutcome::Conflict);
        }
    }

    #[test]
    fn every_decision_is_an_allowed_transition() {
        for d in [Decision::Commit, Decision::Rollback] {
            assert!(global_transition_allowed(GlobalStatus::Active, d.deciding_status()));
        }
        for from in GlobalStatus::ALL {
            for to in GlobalStatus::ALL {
                if global_transition_allowed(*from, *to) {
                    assert!(!from.is_terminal(), "{from} is terminal");
                    assert_ne!(to, &GlobalStatus::Active);
                }
            }
        }
    }

    #[test]
    fn registration_only_while_active_and_unexpired() {
        assert_eq!(may_register(GlobalStatus::Active, false), Ok(()));
        assert_eq!(may_register(GlobalStatus::Active, true), Err(RegisterRefusal::Expired));
        assert_eq!(
            may_register(GlobalStatus::RolledBack, false),
            Err(RegisterRefusal::NotActive(GlobalStatus::RolledBack))
        );
    }

    #[test]
    fn reports() {
        use BranchStatus as B;
        use GlobalStatus as G;
        assert_eq!(apply_report(G::Active, B::Registered, ReportStatus::Prepared), Ok(B::Prepared));
        assert_eq!(apply_report(G::Active, B::Prepared, ReportStatus::Prepared), Ok(B::Prepared));
        assert_eq!(
            apply_report(G::Active, B::Prepared, ReportStatus::Phase1Failed),
            Err(ReportRefusal::BranchState(B::Prepared))
        );
        assert_eq!(
            apply_report(G::RollingBack, B::Registered, ReportStatus::Prepared),
            Err(ReportRefusal::TransactionDecided(G::RollingBack))
        );
        // A repeated report after the decision is still idempotent.
        assert_eq!(apply_report(G::RollingBack, B::Phase1Failed, ReportStatus::Phase1Failed), Ok(B::Phase1Failed));
    }

    #[test]
    fn callback_classification() {
        assert_eq!(classify_http(200, ""), CallbackResult::Done);
        assert_eq!(classify_http(204, ""), CallbackResult::Done);
        assert!(matches!(classify_http(409, "no"), CallbackResult::Refused(_)));
        assert!(matches!(classify_http(503, ""), CallbackResult::Unknown(_)));
        assert!(matches!(classify_http(404, ""), CallbackResult::Unknown(_)));
        assert_eq!(branch_after_callback(Decision::Commit, &CallbackResult::Done), Some(BranchStatus::Committed));
        assert_eq!(
            branch_after_callback(Decision::Rollback, &CallbackResult::Refused("x".into())),
            Some(BranchStatus::RollbackFailed)
        );
        assert_eq!(branch_after_callback(Decision::Commit, &CallbackResult::Unknown("x".into())), None);
    }

    #[test]
    fn three_phase_commit_starts_with_can_commit_and_cannot_be_raced() {
        let mut i = input(GlobalStatus::Active);
        i.three_phase = true;
        assert!(matches!(
            decide(Decision::Commit, i),
            DecisionOutcome::Decide { decision: Decision::Commit, status: GlobalStatus::CanCommit, .. }
        ));
        // A failed branch still turns the commit into a rollback at once.
        i.any_phase1_failed = true;
        assert!(matches!(
            decide(Decision::Commit, i),
            DecisionOutcome::Decide { status: GlobalStatus::RollingBack, overridden: true, .. }
        ));
        for s in [GlobalStatus::CanCommit, GlobalStatus::PreCommitted] {
            assert_eq!(Decision::of_status(s), None, "{s} is not a decision");
            assert_eq!(decide(Decision::Commit, input(s)), DecisionOutcome::AlreadyDecided);
            assert_eq!(decide(Decision::Rollback, input(s)), DecisionOutcome::Conflict);
        }
        assert_eq!(Decision::of_status(GlobalStatus::HeuristicMixed), Some(Decision::Rollback));
        assert!(global_transition_allowed(GlobalStatus::Active, GlobalStatus::CanCommit));
        assert!(global_transition_allowed(GlobalStatus::CanCommit, GlobalStatus::PreCommitted));
        assert!(global_transition_allowed(GlobalStatus::PreCommitted, GlobalStatus::Committing));
        assert!(!global_transition_allowed(GlobalStatus::CanCommit, GlobalStatus::Committing));
        assert!(!global_transition_allowed(GlobalStatus::PreCommitted, GlobalStatus::Committed));
    }

    #[test]
    fn three_phase_verdicts_and_steps() {
        let done = CallbackResult::Done;
        assert_eq!(phase_verdict(&[done.clone(), done.clone()]), PhaseVerdict::Proceed);
        assert_eq!(phase_verdict(&[]), PhaseVerdict::Proceed);
        assert_eq!(
            phase_verdict(&[done.clone(), CallbackResult::Unknown("timeout".into())]),
            PhaseVerdict::Abort { reason: RollbackReason::Timeout, failed: vec![(1, "timeout".into())] }
        );
        // A no anywhere makes the abort a branch failure, even beside a timeout.
        assert!(matches!(
            phase_verdict(&[CallbackResult::Unknown("t".into()), CallbackResult::Refused("no".into())]),
            PhaseVerdict::Abort { reason: RollbackReason::BranchFailed, ref failed } if failed.len() == 2
        ));
        assert_eq!(three_phase_step(GlobalStatus::CanCommit, false), ThreePhaseStep::AskVotes);
        assert_eq!(three_phase_step(GlobalStatus::CanCommit, true), ThreePhaseStep::AbortLostVotes);
        assert_eq!(three_phase_step(GlobalStatus::PreCommitted, true), ThreePhaseStep::PreCommit);
        assert_eq!(three_phase_step(GlobalStatus::Committing, true), ThreePhaseStep::Phase2);
    }

    #[test]
    fn heuristic_commit_is_told_apart_and_ends_mixed() {
        let body = r#"{"type":"about:blank","title":"t","status":409,"detail":"committed on timeout","code":"heuristic_commit"}"#;
        let r = classify_http(409, body);
        assert!(matches!(r, CallbackResult::HeuristicCommit(_)));
        assert_eq!(branch_after_callback(Decision::Rollback, &r), Some(BranchStatus::HeuristicCommitted));
        let other = r#"{"type":"about:blank","title":"t","status":409,"detail":"x","code":"invalid_state"}"#;
        assert!(matches!(classify_http(409, other), CallbackResult::Refused(_)));
        use BranchStatus as B;
        assert_eq!(
            phase2_outcome(Decision::Rollback, &[B::HeuristicCommitted, B::RolledBack]),
            Some(GlobalStatus::HeuristicMixed)
        );
        assert!(GlobalStatus::HeuristicMixed.is_terminal());
        assert!(global_transition_allowed(GlobalStatus::RollingBack, GlobalStatus::HeuristicMixed));
    }

    #[test]
    fn phase2_outcomes() {
        use BranchStatus as B;
        assert_eq!(phase2_outcome(Decision::Commit, &[]), Some(GlobalStatus::Committed));
        assert_eq!(phase2_outcome(Decision::Commit, &[B::Committed, B::Committed]), Some(GlobalStatus::Committed));
        assert_eq!(
            phase2_outcome(Decision::Commit, &[B::Committed, B::CommitFailed]),
            Some(GlobalStatus::CommitFailed)
        );
        assert_eq!(phase2_outcome(Decision::Commit, &[B::Committed, B::Registered]), None);
        assert_eq!(
            phase2_outcome(Decision::Rollback, &[B::RolledBack, B::RollbackFailed]),
            Some(GlobalStatus::RollbackFailed)
        );
    }
}
