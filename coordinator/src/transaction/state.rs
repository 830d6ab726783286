//! Pure state-transition logic: which status may follow which, and what the
//! coordinator must do next. No I/O here; the service and the phase-2 driver
//! read rows, ask these functions, and write what they answer.

use crate::modes::CommitRequires;
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
            // A running saga has not decided either.
            // Nor a prepared message.
            GlobalStatus::Active
            | GlobalStatus::CanCommit
            | GlobalStatus::PreCommitted
            | GlobalStatus::Running
            | GlobalStatus::Prepared => None,
            GlobalStatus::Committing
            | GlobalStatus::Committed
            | GlobalStatus::CommitFailed
            | GlobalStatus::Delivering
            | GlobalStatus::Delivered => Some(Decision::Commit),
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
    /// What the mode's commit needs from phase 1.
    pub requires: CommitRequires,
    /// The status the mode's commit request writes: `committing`, or the
    /// first of the phases before the decision (3PC: `can_commit`).
    pub commit_status: GlobalStatus,
}

impl DecisionInput {
    /// The input for a transaction in `status` (`expired` by the database
    /// clock) with `branches`, under its mode's `protocol`.
    pub fn new(
        status: GlobalStatus,
        expired: bool,
        branches: impl IntoIterator<Item = BranchStatus> + Clone,
        protocol: &dyn crate::modes::Protocol,
    ) -> DecisionInput {
        DecisionInput {
            status,
            // A message's deadline starts back-checks; a submit is still taken.
            expired: expired && protocol.expiry() == crate::modes::Expiry::RollsBack,
            any_phase1_failed: branches.clone().into_iter().any(|b| b == BranchStatus::Phase1Failed),
            all_prepared: branches.into_iter().all(|b| b == BranchStatus::Prepared),
            requires: protocol.commit_requires(),
            commit_status: protocol.commit_status(),
        }
    }
}

/// What to do with a decision request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionOutcome {
    /// Record this decision now; then run phase 2.
    Decide {
        /// The decision to record.
        decision: Decision,
        /// The status to write: the decision's, or the first of the mode's
        /// phases before it (3PC: `can_commit`).
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
    match (input.status, Decision::of_status(input.status)) {
        // Open for a decision: a transaction, or a prepared message.
        (GlobalStatus::Active | GlobalStatus::Prepared, _) => {}
        (_, Some(existing)) if existing == requested => return DecisionOutcome::AlreadyDecided,
        (_, Some(_)) => return DecisionOutcome::Conflict,
        // A commit asked for earlier is running its phases (3PC): a repeated
        // commit waits for it; a rollback would race the driver and is refused.
        (_, None) => {
            return match requested {
                Decision::Commit => DecisionOutcome::AlreadyDecided,
                Decision::Rollback => DecisionOutcome::Conflict,
            }
        }
    }
    let reason = match requested {
        Decision::Rollback => {
            return DecisionOutcome::Decide {
                decision: Decision::Rollback,
                status: GlobalStatus::RollingBack,
                reason: Some(RollbackReason::Requested),
                overridden: false,
            }
        }
        Decision::Commit => {
            let unprepared = input.requires == CommitRequires::EveryBranchPrepared && !input.all_prepared;
            if input.any_phase1_failed || unprepared {
                Some(RollbackReason::BranchFailed)
            } else if input.expired {
                Some(RollbackReason::Timeout)
            } else {
                None
            }
        }
    };
    match reason {
        None => DecisionOutcome::Decide {
            decision: Decision::Commit,
            status: input.commit_status,
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

/// What the one-statement decision (the common case) writes for a request,
/// and what it checks of the row first. It writes only where [`decide`]
/// answers the same; a property test holds the two together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastDecision {
    /// The move it writes.
    pub transition: Transition,
    /// Set for a rollback.
    pub reason: Option<RollbackReason>,
    /// What the row must satisfy besides being `active`.
    pub checks: FastChecks,
}

/// The conditions of [`FastDecision`] beyond the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastChecks {
    /// None: a rollback request is granted to any active transaction.
    StatusOnly,
    /// A commit: before the deadline, no branch failed phase 1, every branch
    /// prepared where the mode requires it, and the mode's commit is the
    /// decision itself (not phases before it).
    CommitReady,
}

/// The one-statement decision for `requested`.
pub fn fast_decision(requested: Decision) -> FastDecision {
    match requested {
        Decision::Commit => {
            FastDecision { transition: Transition::COMMIT, reason: None, checks: FastChecks::CommitReady }
        }
        Decision::Rollback => FastDecision {
            transition: Transition::ROLLBACK,
            reason: Some(RollbackReason::Requested),
            checks: FastChecks::StatusOnly,
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

/// Whether `to` may follow `from` for a global transaction. Every status
/// write goes through a [`Transition`], which only this allows; the tests
/// enumerate it.
pub const fn global_transition_allowed(from: GlobalStatus, to: GlobalStatus) -> bool {
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
            | (Running, Committed)
            | (Running, RollingBack)
            | (Prepared, Delivering)
            | (Prepared, RollingBack)
            | (Delivering, Delivered)
            | (Delivering, CommitFailed)
    )
}

/// A move of a global transaction from one status to another that
/// [`global_transition_allowed`] allows. The store's writes of a status take
/// one, and are conditional on the row still being in `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The status the writer saw.
    from: GlobalStatus,
    /// The status it writes.
    to: GlobalStatus,
}

/// A transition [`global_transition_allowed`] refuses (a bug in a protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no transition from {from} to {to}")]
pub struct TransitionError {
    /// The status the writer saw.
    pub from: GlobalStatus,
    /// The status it meant to write.
    pub to: GlobalStatus,
}

impl Transition {
    /// A commit request's decision.
    pub const COMMIT: Transition = Transition::checked(GlobalStatus::Active, GlobalStatus::Committing);
    /// A rollback, requested or on timeout, of an active transaction.
    pub const ROLLBACK: Transition = Transition::checked(GlobalStatus::Active, GlobalStatus::RollingBack);

    /// `from` → `to`, if allowed.
    pub const fn new(from: GlobalStatus, to: GlobalStatus) -> Result<Transition, TransitionError> {
        if global_transition_allowed(from, to) {
            Ok(Transition { from, to })
        } else {
            Err(TransitionError { from, to })
        }
    }

    /// For constants: refuses to compile a transition that is not allowed.
    const fn checked(from: GlobalStatus, to: GlobalStatus) -> Transition {
        match Transition::new(from, to) {
            Ok(t) => t,
            Err(_) => panic!("transition not allowed"),
        }
    }

    /// The status the writer saw.
    pub fn from(self) -> GlobalStatus {
        self.from
    }

    /// The status written.
    pub fn to(self) -> GlobalStatus {
        self.to
    }

    /// Whether the move records the decision (sets `decided_at`): into
    /// `committing` or `rolling_back`.
    pub fn records_decision(self) -> bool {
        !self.to.is_terminal() && Decision::of_status(self.to).is_some()
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
            requires: CommitRequires::NoFailedBranch,
            commit_status: GlobalStatus::Committing,
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
        i.requires = CommitRequires::EveryBranchPrepared;
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
        i.commit_status = GlobalStatus::CanCommit;
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
    fn transitions_are_checked_and_say_whether_they_decide() {
        assert!(Transition::new(GlobalStatus::Committed, GlobalStatus::RollingBack).is_err());
        assert!(Transition::new(GlobalStatus::CanCommit, GlobalStatus::Committing).is_err());
        let pre = Transition::new(GlobalStatus::CanCommit, GlobalStatus::PreCommitted).expect("allowed");
        assert!(!pre.records_decision());
        let begin3 = Transition::new(GlobalStatus::Active, GlobalStatus::CanCommit).expect("allowed");
        assert!(!begin3.records_decision());
        assert!(Transition::COMMIT.records_decision() && Transition::ROLLBACK.records_decision());
        let done = Transition::new(GlobalStatus::Committing, GlobalStatus::Committed).expect("allowed");
        assert!(!done.records_decision());
        assert_eq!(
            Transition::new(GlobalStatus::PreCommitted, GlobalStatus::Committing).map(|t| t.to()),
            Ok(GlobalStatus::Committing)
        );
    }

    #[test]
    fn the_fast_decision_is_what_decide_answers_in_the_common_case() {
        for requested in [Decision::Commit, Decision::Rollback] {
            let fast = fast_decision(requested);
            let DecisionOutcome::Decide { status, reason, overridden: false, .. } =
                decide(requested, input(GlobalStatus::Active))
            else {
                panic!("the common case decides");
            };
            assert_eq!(
                (fast.transition.from(), fast.transition.to(), fast.reason),
                (GlobalStatus::Active, status, reason)
            );
        }
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
