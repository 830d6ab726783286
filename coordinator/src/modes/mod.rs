//! The modes, one module each, behind one interface: a [`Protocol`] holds a
//! mode's whole policy (its begin options, what commit requires of phase 1,
//! whether registrations take global locks, which statuses a driver leases,
//! how phase 2 reaches the branches) and its pure steps ("given this
//! transaction and its branches, what next"). The one driver
//! ([`crate::driver`]) performs the steps with I/O; nothing outside this
//! module asks which mode a transaction is in.
//!
//! Adding a mode is a module here implementing [`Protocol`], its line in
//! [`PROTOCOLS`], its statuses in `wire` (if it has any of its own), a
//! migration if it needs columns, and its participant in the SDK
//! (ARCHITECTURE.md, "Adding a mode").

pub mod at;
pub mod msg;
pub mod saga;
pub mod tcc;
pub mod three_phase;
pub mod xa;

use crate::transaction::state::{self, CallbackResult, Decision};
use std::time::Duration;
use tandem_wire::{
    BeginRequest, BranchStatus, CallbackAction, DeliveryOrder, GlobalStatus, Mode, RollbackReason, ThreePhaseTimeouts,
    TimeoutError,
};

/// What a commit needs from phase 1, besides no branch having failed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitRequires {
    /// Nothing more (TCC, AT: a registered branch has done its phase 1).
    NoFailedBranch,
    /// Every branch reported `prepared` (XA).
    EveryBranchPrepared,
}

/// Whether a branch's lock keys are taken as global locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// Kept for operators only.
    None,
    /// Taken in the registration's statement, released with phase 2 (AT).
    RowLocks,
}

/// The order in which branches are reached one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Registration order.
    Registration,
    /// Newest first.
    Reverse,
}

/// How phase 2 reaches a transaction's branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One branch at a time in this order; the first whose outcome is
    /// unknown ends the pass (later branches wait).
    OneAtATime(Order),
    /// Every branch at once; each outcome independent of the others.
    AllAtOnce,
}

/// The limits begin options are checked against (the coordinator's own).
#[derive(Debug, Clone, Copy)]
pub struct OptionLimits {
    /// Largest timeout accepted, in ms.
    pub max_ms: u64,
    /// How long until another coordinator takes over a dead one's
    /// transaction (lease plus recovery interval), in ms.
    pub takeover_ms: u64,
}

/// A mode's options as resolved at begin (stored with the transaction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeOptions {
    /// 3PC: the phase timeouts.
    pub three_phase: Option<ThreePhaseTimeouts>,
}

/// A begin option refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// The option belongs to another mode.
    #[error("{option} is only for mode {only}, not {mode}")]
    NotForMode {
        /// The option's field name.
        option: &'static str,
        /// The mode it belongs to.
        only: Mode,
        /// The mode asked for.
        mode: Mode,
    },
    /// A 3PC timeout is out of range or unsafe.
    #[error(transparent)]
    Timeouts(#[from] TimeoutError),
    /// The mode's transactions are not begun with `POST /v1/transactions`.
    #[error("mode {mode} is not begun with POST /v1/transactions: use {endpoint}")]
    BegunElsewhere {
        /// The mode asked for.
        mode: Mode,
        /// Where its transactions start.
        endpoint: &'static str,
    },
}

/// Where a mode's transactions start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// `POST /v1/transactions`.
    Transactions,
    /// Another operation (messages: `POST /v1/messages`).
    Elsewhere(&'static str),
}

/// What a transaction's deadline does before a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// It rolls the transaction back, and a commit after it is refused.
    RollsBack,
    /// It starts back-checks (messages): the producer is asked, and a
    /// submit is still accepted until a back-check decided otherwise.
    BackCheck,
}

/// A transaction as a protocol's steps see it.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Its status.
    pub status: GlobalStatus,
    /// Its branches' statuses, in registration order.
    pub branches: &'a [BranchStatus],
    /// Taken over by recovery from a coordinator whose lease expired.
    pub resumed: Resumed,
    /// 3PC: its phase timeouts.
    pub three_phase: Option<ThreePhaseTimeouts>,
    /// Saga: its steps (the branches), in registration order.
    pub steps: &'a [saga::StepView<'a>],
    /// Its deadline has passed.
    pub expired: bool,
    /// Message: its deliveries' order.
    pub order: Option<DeliveryOrder>,
}

/// Whether a driver started the transaction's current protocol step itself
/// or took it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// The driver of the request that decided (or started the phases).
    Fresh,
    /// Recovery, after the previous driver's lease expired.
    TakenOver,
}

/// A protocol phase before the decision, whose answers together decide
/// where the transaction goes (3PC's CanCommit and PreCommit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The votes.
    CanCommit,
    /// The acknowledgements.
    PreCommit,
}

/// What the driver does with a sending's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Phase 2 of `decision`: each answer gives its branch a final status;
    /// an unknown one ends the pass (the transaction is retried later).
    Record(Decision),
    /// A phase: [`Protocol::after_phase`] judges all the answers.
    Judge(Phase),
}

/// Callbacks to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// The action.
    pub action: CallbackAction,
    /// Branches (indexes in registration order), by rounds: a round goes to
    /// its branches at once and waits for all of them.
    pub rounds: Vec<Vec<usize>>,
    /// How long each answer may take (`None`: the coordinator's callback timeout).
    pub wait: Option<Duration>,
    /// What the answers do.
    pub then: Then,
}

/// A durable move of the transaction to `to`, with what was learnt of its
/// branches (index, new status, error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// The new status.
    pub to: GlobalStatus,
    /// Set when `to` is a rollback.
    pub reason: Option<RollbackReason>,
    /// Branch statuses learnt.
    pub marks: Vec<(usize, BranchStatus, Option<String>)>,
}

/// The next thing a driver does for a leased transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send callbacks.
    Send(Send),
    /// Write a new status durably (fenced by the lease and the status seen).
    Advance(Advance),
    /// Every branch is final: write this terminal status.
    Finish(GlobalStatus),
    /// Call the forward actions of these steps (saga), except those already
    /// in flight; ask again after each answer.
    Forward(Vec<usize>),
    /// Back-check the producer of a prepared message ([`msg::after_check`]
    /// says where its answer leads).
    Check,
    /// Nothing to drive (not a leased status).
    Stop,
}

/// A mode: its policy and its pure steps.
pub trait Protocol: std::marker::Send + Sync + 'static {
    /// The mode.
    fn mode(&self) -> Mode;

    /// Where its transactions start.
    fn begin(&self) -> Begin {
        Begin::Transactions
    }

    /// Checks and resolves the mode's begin options.
    fn begin_options(&self, req: &BeginRequest, _limits: OptionLimits) -> Result<ModeOptions, OptionError> {
        match req.three_phase {
            Some(_) => Err(OptionError::NotForMode { option: "three_phase", only: Mode::ThreePc, mode: self.mode() }),
            None => Ok(ModeOptions::default()),
        }
    }

    /// What a commit needs from phase 1.
    fn commit_requires(&self) -> CommitRequires {
        CommitRequires::NoFailedBranch
    }

    /// The status a commit request writes: the decision itself
    /// (`committing`), or the first status of phases that come before it.
    fn commit_status(&self) -> GlobalStatus {
        GlobalStatus::Committing
    }

    /// Whether registrations take global locks.
    fn locking(&self) -> Locking {
        Locking::None
    }

    /// Statuses a driver leases before the decision (3PC's phases); the
    /// decided ones (`committing`, `rolling_back`) are leased in every mode.
    fn pre_decision_statuses(&self) -> &'static [GlobalStatus] {
        &[]
    }

    /// What the deadline does before a decision.
    fn expiry(&self) -> Expiry {
        Expiry::RollsBack
    }

    /// The status the end gives branches that no callback reached (saga:
    /// a committed saga's steps, which have nothing left to do).
    fn end_status_of_untouched(&self, _terminal: GlobalStatus) -> Option<BranchStatus> {
        None
    }

    /// How phase 2 of `decision` reaches the branches.
    fn delivery(&self, _decision: Decision) -> Delivery {
        Delivery::OneAtATime(Order::Registration)
    }

    /// The longest delay before the next phase-2 pass, if the mode needs one
    /// shorter than the coordinator's backoff.
    fn retry_cap(&self, _view: &View<'_>) -> Option<Duration> {
        None
    }

    /// The next step for a leased transaction.
    fn next_step(&self, view: &View<'_>) -> Step {
        phase2_step(self.delivery_for(view.status), view)
    }

    /// Where the answers of `phase` (from the branches `asked`, in that
    /// order) take the transaction. Only modes with phases before the
    /// decision ([`Then::Judge`]) are asked.
    fn after_phase(&self, _phase: Phase, _asked: &[usize], _results: &[CallbackResult], _view: &View<'_>) -> Advance {
        Advance { to: GlobalStatus::RollingBack, reason: Some(RollbackReason::Timeout), marks: Vec::new() }
    }

    /// Why a commit request ended in a rollback, for the 409 answer.
    fn commit_refused_because(&self, reason: Option<RollbackReason>) -> &'static str {
        match reason {
            Some(RollbackReason::Timeout) => "its deadline had passed",
            _ => "a branch failed phase 1",
        }
    }

    /// The delivery of the decision `status` records, if it records one.
    fn delivery_for(&self, status: GlobalStatus) -> Option<(Decision, Delivery)> {
        let decision = Decision::of_status(status).filter(|_| !status.is_terminal())?;
        Some((decision, self.delivery(decision)))
    }
}

/// Phase 2 of a decided transaction: the branches not final yet, in the
/// mode's order and rounds; when none is left, the terminal status.
pub fn phase2_step(delivery: Option<(Decision, Delivery)>, view: &View<'_>) -> Step {
    let Some((decision, delivery)) = delivery else {
        return Step::Stop;
    };
    let mut pending: Vec<usize> = (0..view.branches.len()).filter(|&i| !view.branches[i].is_final()).collect();
    if pending.is_empty() {
        return match state::phase2_outcome(decision, view.branches) {
            Some(terminal) => Step::Finish(terminal),
            None => Step::Stop,
        };
    }
    let rounds = match delivery {
        Delivery::AllAtOnce => vec![pending],
        Delivery::OneAtATime(order) => {
            if order == Order::Reverse {
                pending.reverse();
            }
            pending.into_iter().map(|i| vec![i]).collect()
        }
    };
    Step::Send(Send { action: decision.action(), rounds, wait: None, then: Then::Record(decision) })
}

/// Every mode this coordinator serves, one protocol each.
pub static PROTOCOLS: &[&dyn Protocol] =
    &[&tcc::Tcc, &xa::Xa, &at::At, &three_phase::ThreePhase, &saga::Saga, &msg::Msg];

/// The protocol of `mode`, or `None` if this coordinator does not serve it.
pub fn protocol(mode: Mode) -> Option<&'static dyn Protocol> {
    PROTOCOLS.iter().copied().find(|p| p.mode() == mode)
}

/// The modes whose protocols answer `pred` with true, as their text forms
/// (bound into SQL).
pub fn modes_where(pred: impl Fn(&dyn Protocol) -> bool) -> Vec<&'static str> {
    PROTOCOLS.iter().filter(|p| pred(**p)).map(|p| p.mode().as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_wire::BranchStatus as B;

    fn view(status: GlobalStatus, branches: &[BranchStatus]) -> View<'_> {
        View { status, branches, resumed: Resumed::Fresh, three_phase: None, steps: &[], expired: false, order: None }
    }

    fn rounds(p: &dyn Protocol, status: GlobalStatus, branches: &[BranchStatus]) -> Vec<Vec<usize>> {
        match p.next_step(&view(status, branches)) {
            Step::Send(s) => s.rounds,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn phase2_orders_follow_the_modes() {
        let three = [B::Registered, B::Registered, B::Registered];
        let tcc = protocol(Mode::Tcc).expect("served");
        assert_eq!(rounds(tcc, GlobalStatus::Committing, &three), vec![vec![2], vec![1], vec![0]]);
        assert_eq!(rounds(tcc, GlobalStatus::RollingBack, &three), vec![vec![2], vec![1], vec![0]]);
        let xa = protocol(Mode::Xa).expect("served");
        assert_eq!(rounds(xa, GlobalStatus::Committing, &three), vec![vec![0], vec![1], vec![2]]);
        let at = protocol(Mode::At).expect("served");
        assert_eq!(rounds(at, GlobalStatus::RollingBack, &three), vec![vec![2], vec![1], vec![0]]);
        assert_eq!(rounds(at, GlobalStatus::Committing, &three), vec![vec![0], vec![1], vec![2]]);
        let tpc = protocol(Mode::ThreePc).expect("served");
        assert_eq!(rounds(tpc, GlobalStatus::RollingBack, &three), vec![vec![0, 1, 2]]);
        // Final branches are not sent again; all final: the terminal status.
        assert_eq!(rounds(tcc, GlobalStatus::Committing, &[B::Committed, B::Registered]), vec![vec![1]]);
        assert_eq!(
            tcc.next_step(&view(GlobalStatus::Committing, &[B::Committed])),
            Step::Finish(GlobalStatus::Committed)
        );
        assert_eq!(tcc.next_step(&view(GlobalStatus::Active, &three)), Step::Stop);
        assert_eq!(tcc.next_step(&view(GlobalStatus::Committed, &[B::Committed])), Step::Stop);
    }

    #[test]
    fn policies() {
        assert_eq!(protocol(Mode::Saga).map(|p| p.pre_decision_statuses()), Some(&[GlobalStatus::Running][..]));
        assert_eq!(protocol(Mode::Xa).map(|p| p.commit_requires()), Some(CommitRequires::EveryBranchPrepared));
        assert_eq!(protocol(Mode::Tcc).map(|p| p.commit_requires()), Some(CommitRequires::NoFailedBranch));
        assert_eq!(protocol(Mode::At).map(|p| p.locking()), Some(Locking::RowLocks));
        assert_eq!(protocol(Mode::Tcc).map(|p| p.locking()), Some(Locking::None));
        assert_eq!(protocol(Mode::ThreePc).map(|p| p.commit_status()), Some(GlobalStatus::CanCommit));
        assert_eq!(modes_where(|p| p.locking() == Locking::RowLocks), vec!["at"]);
        for p in PROTOCOLS {
            assert_eq!(protocol(p.mode()).map(|q| q.mode()), Some(p.mode()), "one protocol per mode");
        }
    }
}
