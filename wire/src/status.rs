//! Modes and statuses, with their stable text forms (used on the wire and in the database).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A text value that names no known variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    /// What was being parsed (`mode`, `status`, ...).
    pub kind: &'static str,
    /// The offending text.
    pub value: String,
}

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] #[schema(rename = $text)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Stable text form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: $kind, value: s.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Transaction mode.
    Mode, "mode" {
        /// Try-Confirm-Cancel: the participant supplies all three actions.
        Tcc = "tcc",
        /// Two-phase commit on real database prepares.
        Xa = "xa",
        /// Automatic compensation from undo logs.
        At = "at",
        /// Three-phase commit with participant timeouts.
        ThreePc = "3pc",
        /// Saga: actions driven by the coordinator, compensations in reverse
        /// on failure; or steps registered as the client's code runs them.
        Saga = "saga",
        /// Two-phase message: prepared before the producer's local
        /// transaction, submitted after it (or back-checked), then delivered
        /// to HTTP endpoints and brokers until acknowledged.
        Msg = "msg",
    }
);

text_enum!(
    /// Status of a global transaction.
    GlobalStatus, "global status" {
        /// Begun; branches may register; not decided.
        Active = "active",
        /// Commit decided (durably); phase 2 running.
        Committing = "committing",
        /// Every branch committed. Terminal.
        Committed = "committed",
        /// Rollback decided (durably); phase 2 running.
        RollingBack = "rolling_back",
        /// Every branch rolled back. Terminal.
        RolledBack = "rolled_back",
        /// A branch refused its commit permanently; an operator must look. Terminal.
        CommitFailed = "commit_failed",
        /// A branch refused its rollback permanently; an operator must look. Terminal.
        RollbackFailed = "rollback_failed",
        /// 3PC: commit requested; the coordinator is collecting CanCommit votes.
        /// Not a decision: a coordinator that dies here is followed by an abort.
        CanCommit = "can_commit",
        /// 3PC: every branch voted yes; PreCommit sent, acknowledgements being
        /// collected. Not a decision yet: all acknowledged → commit, else abort.
        PreCommitted = "pre_committed",
        /// 3PC: rollback was decided, but at least one branch had already
        /// committed on its own timeout (`heuristic_committed`). The outcome
        /// differs between participants; an operator must look. Terminal.
        HeuristicMixed = "heuristic_mixed",
        /// Saga: submitted; the coordinator is calling the actions. Not a
        /// decision: every action succeeding → `committed`, a failure or the
        /// timeout → `rolling_back` (compensations).
        Running = "running",
        /// Message: prepared (durably); the producer's local transaction is
        /// running. Submit → `delivering`, abort → `rolling_back`; past its
        /// timeout the coordinator back-checks the producer. Not a decision.
        Prepared = "prepared",
        /// Message: submitted (durably): the deliveries are being made, each
        /// retried until acknowledged.
        Delivering = "delivering",
        /// Message: every delivery acknowledged. Terminal.
        Delivered = "delivered",
    }
);

text_enum!(
    /// Status of a branch.
    BranchStatus, "branch status" {
        /// Registered; phase 1 running or done without a report.
        Registered = "registered",
        /// Phase 1 done and reported ready to commit.
        Prepared = "prepared",
        /// Phase 1 failed; the transaction cannot commit.
        Phase1Failed = "phase1_failed",
        /// Phase 2 commit delivered and acknowledged.
        Committed = "committed",
        /// Phase 2 rollback delivered and acknowledged.
        RolledBack = "rolled_back",
        /// The participant refused the commit permanently (409).
        CommitFailed = "commit_failed",
        /// The participant refused the rollback permanently (409).
        RollbackFailed = "rollback_failed",
        /// 3PC: the participant answered the rollback that it had already
        /// committed on its own timeout (409 `heuristic_commit`).
        HeuristicCommitted = "heuristic_committed",
        /// 3PC: voted yes to CanCommit; PreCommit not acknowledged yet.
        VotedYes = "voted_yes",
        /// 3PC: voted no to CanCommit, or refused PreCommit (409); the
        /// transaction aborts.
        VotedNo = "voted_no",
        /// 3PC: acknowledged PreCommit: its work is done and prepared, and it
        /// commits on its own if neither DoCommit nor abort comes in time.
        PreCommitted = "pre_committed",
        /// Saga: the step's action was never called, so there is nothing to
        /// compensate.
        Skipped = "skipped",
    }
);

text_enum!(
    /// Where a saga step's action stands.
    ActionStatus, "action status" {
        /// Not called yet.
        Pending = "pending",
        /// Called (at least once); its outcome is not known yet.
        Running = "running",
        /// Answered 2xx: done.
        Succeeded = "succeeded",
        /// Answered 409, or failed transiently more than `retry_limit` times.
        Failed = "failed",
    }
);

text_enum!(
    /// Where a saga step's compensation stands.
    CompensationStatus, "compensation status" {
        /// Not run (the saga has not failed, or has not reached this step yet).
        NotRun = "not_run",
        /// Compensated (2xx).
        Compensated = "compensated",
        /// The participant refused the compensation permanently (409): an
        /// operator must look.
        Failed = "failed",
        /// The step's action was never called: nothing to compensate.
        Skipped = "skipped",
    }
);

text_enum!(
    /// Why a transaction rolled back.
    RollbackReason, "rollback reason" {
        /// A client asked for rollback.
        Requested = "requested",
        /// The deadline passed before a decision.
        Timeout = "timeout",
        /// A branch reported `phase1_failed` (commit was asked and refused).
        BranchFailed = "branch_failed",
        /// Saga: an action failed transiently more than the saga's `retry_limit` times.
        RetryLimit = "retry_limit",
        /// Message: the back-check answered that the producer's local
        /// transaction rolled back (or never committed).
        BackCheck = "back_check",
    }
);

text_enum!(
    /// What a participant may report about phase 1.
    ReportStatus, "report status" {
        /// Ready to commit.
        Prepared = "prepared",
        /// Phase 1 failed.
        Phase1Failed = "phase1_failed",
    }
);

impl GlobalStatus {
    /// No further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            GlobalStatus::Committed
                | GlobalStatus::RolledBack
                | GlobalStatus::CommitFailed
                | GlobalStatus::RollbackFailed
                | GlobalStatus::HeuristicMixed
                | GlobalStatus::Delivered
        )
    }

    /// A 3PC commit in progress before its decision (`can_commit`, `pre_committed`).
    pub fn is_three_phase_pending(self) -> bool {
        matches!(self, GlobalStatus::CanCommit | GlobalStatus::PreCommitted)
    }
}

impl BranchStatus {
    /// Phase 2 is finished for this branch.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BranchStatus::Committed
                | BranchStatus::RolledBack
                | BranchStatus::CommitFailed
                | BranchStatus::RollbackFailed
                | BranchStatus::HeuristicCommitted
                | BranchStatus::Skipped
        )
    }
}

/// How a global transaction ends for its participants, as far as its status
/// tells: what a participant finishing or cleaning up a branch on its own
/// (XA recovery, an AT purge) may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionOutcome {
    /// Commit is decided: every branch commits (or already did).
    Committed,
    /// Rollback is decided: every branch rolls back (or already did).
    RolledBack,
    /// Nothing is decided yet: the branch must wait.
    Undecided,
}

impl GlobalStatus {
    /// How the transaction ends for its participants. A decision never
    /// changes, so `Committed` and `RolledBack` hold from the decision on,
    /// terminal or not (combine with [`GlobalStatus::is_terminal`] where
    /// phase 2 must be over). `commit_failed` is a commit decision whose
    /// phase 2 an operator finishes; `heuristic_mixed` a rollback decision
    /// that a branch contradicted on its own.
    pub fn outcome(self) -> TransactionOutcome {
        // No wildcard: a new status must say how it ends.
        match self {
            GlobalStatus::Committing
            | GlobalStatus::Committed
            | GlobalStatus::CommitFailed
            | GlobalStatus::Delivering
            | GlobalStatus::Delivered => TransactionOutcome::Committed,
            GlobalStatus::RollingBack
            | GlobalStatus::RolledBack
            | GlobalStatus::RollbackFailed
            | GlobalStatus::HeuristicMixed => TransactionOutcome::RolledBack,
            GlobalStatus::Active
            | GlobalStatus::CanCommit
            | GlobalStatus::PreCommitted
            | GlobalStatus::Running
            | GlobalStatus::Prepared => TransactionOutcome::Undecided,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(*m));
            assert_eq!(serde_json::to_string(m).ok(), Some(format!("\"{}\"", m.as_str())));
        }
        for s in GlobalStatus::ALL {
            assert_eq!(s.as_str().parse::<GlobalStatus>(), Ok(*s));
        }
        for s in BranchStatus::ALL {
            assert_eq!(s.as_str().parse::<BranchStatus>(), Ok(*s));
        }
        assert!("nope".parse::<Mode>().is_err());
        assert_eq!("3pc".parse::<Mode>(), Ok(Mode::ThreePc));
    }

    #[test]
    fn every_terminal_status_is_decided() {
        for s in GlobalStatus::ALL {
            if s.is_terminal() {
                assert_ne!(s.outcome(), TransactionOutcome::Undecided, "{s}");
            }
        }
        assert_eq!(GlobalStatus::Committing.outcome(), TransactionOutcome::Committed);
        assert_eq!(GlobalStatus::HeuristicMixed.outcome(), TransactionOutcome::RolledBack);
        assert_eq!(GlobalStatus::PreCommitted.outcome(), TransactionOutcome::Undecided);
    }
}
