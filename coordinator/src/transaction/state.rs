//! Pure state-transition logic: which status may follow which, and what the
//! coordinator must do next. No I/O here; the service and the phase-2 driver
//! read rows, ask these functions, and write what they answer.

use tandem_wire::{BranchStatus, CallbackAction, GlobalStatus, ReportStatus, RollbackReason};

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
            GlobalStatus::Active => None,
            GlobalStatus::Committing | GlobalStatus::Committed | GlobalStatus::CommitFailed => Some(Decision::Commit),
            GlobalStatus::RollingBack | GlobalStatus::RolledBack | GlobalStatus::RollbackFailed => {
                Some(Decision::Rollback)
            }
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
    /// The mode requires every branch to report `prepared` before commit (XA, 3PC).
    pub requires_prepared: bool,
}

/// What to do with a decision request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionOutcome {
    /// Record this decision now; then run phase 2.
    Decide {
        /// The decision to record.
        decision: Decision,
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
    match Decision::of_status(input.status) {
        Some(existing) if existing == requested => DecisionOutcome::AlreadyDecided,
        Some(_) => DecisionOutcome::Conflict,
        None => match requested {
            Decision::Rollback => DecisionOutcome::Decide {
                decision: Decision::Rollback,
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
                    None => DecisionOutcome::Decide { decision: Decision::Commit, reason: None, overridden: false },
                    Some(reason) => {
                        DecisionOutcome::Decide { decision: Decision::Rollback, reason: Some(reason), overridden: true }
                    }
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
}

/// Classifies an HTTP status of a callback answer (contract table).
pub fn classify_http(status: u16, body: &str) -> CallbackResult {
    match status {
        200..=299 => CallbackResult::Done,
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
        (Decision::Commit, CallbackResult::Refused(_)) => Some(BranchStatus::CommitFailed),
        (Decision::Rollback, CallbackResult::Refused(_)) => Some(BranchStatus::RollbackFailed),
    }
}

/// The terminal global status once every branch has a final phase-2 status,
/// or `None` if some branch is still pending.
pub fn phase2_outcome(decision: Decision, branches: &[BranchStatus]) -> Option<GlobalStatus> {
    if !branches.iter().all(|b| b.is_final()) {
        return None;
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(status: GlobalStatus) -> DecisionInput {
        DecisionInput { status, expired: false, any_phase1_failed: false, all_prepared: true, requires_prepared: false }
    }

    #[test]
    fn commit_of_active_commits() {
        assert_eq!(
            decide(Decision::Commit, input(GlobalStatus::Active)),
            DecisionOutcome::Decide { decision: Decision::Commit, reason: None, overridden: false }
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
                reason: Some(RollbackReason::Timeout),
                overridden: true
            }
        );
        // A rollback request is honoured as requested even when expired.
        assert_eq!(
            decide(Decision::Rollback, i),
            DecisionOutcome::Decide {
                decision: Decision::Rollback,
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
