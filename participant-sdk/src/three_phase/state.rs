//! The participant's 3PC state machine, without I/O: what each message or
//! timer does to a branch in a given local state.
//!
//! | state \ event | CanCommit | PreCommit | DoCommit | abort | vote timer | commit timer |
//! |---|---|---|---|---|---|---|
//! | unknown | vote (yes → voted, no → aborted) | no | refused | mark aborted | – | – |
//! | voted | yes | prepare → pre-committed | refused | mark aborted | mark aborted | – |
//! | pre-committed | yes | yes | commit prepared | roll back prepared | – | commit prepared |
//! | committed | yes | yes | done | **heuristic commit** | – | – |
//! | aborted | no | no | refused | done | – | – |

/// Where a branch stands at this participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalState {
    /// Nothing recorded: never asked (or asked about a branch this database never saw).
    Unknown,
    /// Voted yes; waiting for PreCommit (aborts on its own at the vote deadline).
    Voted,
    /// Executed and prepared (`PREPARE TRANSACTION`); waiting for DoCommit or
    /// abort (commits on its own at the commit deadline).
    PreCommitted,
    /// Committed, by DoCommit or on its own timeout.
    Committed,
    /// Aborted: voted no, abort received, or no PreCommit before the vote deadline.
    Aborted,
}

impl LocalState {
    /// Stable lowercase name (answers and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            LocalState::Unknown => "unknown",
            LocalState::Voted => "voted",
            LocalState::PreCommitted => "pre_committed",
            LocalState::Committed => "committed",
            LocalState::Aborted => "aborted",
        }
    }
}

/// What happened to a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// CanCommit, with the application's vote.
    CanCommit {
        /// The application can take the transaction.
        yes: bool,
    },
    /// PreCommit: execute and prepare.
    PreCommit,
    /// DoCommit.
    DoCommit,
    /// Abort (the coordinator's rollback).
    Abort,
    /// The vote deadline passed without PreCommit.
    VoteTimeout,
    /// The commit deadline passed without DoCommit or abort.
    CommitTimeout,
}

/// The local work an event calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to do.
    Nothing,
    /// Record the yes vote with its deadline, and arm the vote timer.
    RecordVote,
    /// Record the branch as aborted (a marker that refuses a late PreCommit).
    RecordAbort,
    /// Run the work in a local transaction and prepare it; arm the commit timer.
    Prepare,
    /// `COMMIT PREPARED`.
    CommitPrepared,
    /// `ROLLBACK PREPARED`, then record the branch as aborted.
    RollbackPrepared,
}

/// What the participant answers (timers answer nobody).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 2xx: yes / done.
    Yes,
    /// 409: a no vote, or a PreCommit refused.
    No,
    /// 409 `invalid_state`: the action contradicts the branch's state.
    Refused,
    /// 409 `heuristic_commit`: a rollback for a branch that committed on its own.
    HeuristicCommit,
}

/// The effect and answer of `event` on a branch in `state`.
pub fn next(state: LocalState, event: Event) -> (Effect, Reply) {
    use Effect as E;
    use LocalState as S;
    use Reply as R;
    match (state, event) {
        (S::Unknown, Event::CanCommit { yes: true }) => (E::RecordVote, R::Yes),
        (S::Unknown, Event::CanCommit { yes: false }) => (E::RecordAbort, R::No),
        (S::Voted | S::PreCommitted | S::Committed, Event::CanCommit { .. }) => (E::Nothing, R::Yes),
        (S::Aborted, Event::CanCommit { .. }) => (E::Nothing, R::No),

        // No recorded vote: never prepare what was not voted for.
        (S::Unknown | S::Aborted, Event::PreCommit) => (E::Nothing, R::No),
        (S::Voted, Event::PreCommit) => (E::Prepare, R::Yes),
        // Acknowledged again (a recovering coordinator re-sends PreCommit).
        (S::PreCommitted | S::Committed, Event::PreCommit) => (E::Nothing, R::Yes),

        (S::PreCommitted, Event::DoCommit) => (E::CommitPrepared, R::Yes),
        (S::Committed, Event::DoCommit) => (E::Nothing, R::Yes),
        (S::Unknown | S::Voted | S::Aborted, Event::DoCommit) => (E::Nothing, R::Refused),

        (S::PreCommitted, Event::Abort) => (E::RollbackPrepared, R::Yes),
        (S::Unknown | S::Voted, Event::Abort) => (E::RecordAbort, R::Yes),
        (S::Aborted, Event::Abort) => (E::Nothing, R::Yes),
        (S::Committed, Event::Abort) => (E::Nothing, R::HeuristicCommit),

        (S::Voted, Event::VoteTimeout) => (E::RecordAbort, R::Yes),
        (S::PreCommitted, Event::CommitTimeout) => (E::CommitPrepared, R::Yes),
        (_, Event::VoteTimeout | Event::CommitTimeout) => (E::Nothing, R::Yes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect as E;
    use LocalState as S;

    #[test]
    fn classic_three_phase_rules() {
        // Voted yes and no PreCommit before the deadline → abort.
        assert_eq!(next(S::Voted, Event::VoteTimeout), (E::RecordAbort, Reply::Yes));
        // Pre-committed and neither DoCommit nor abort before the deadline → commit.
        assert_eq!(next(S::PreCommitted, Event::CommitTimeout), (E::CommitPrepared, Reply::Yes));
        // A stale timer does nothing.
        for s in [S::Unknown, S::PreCommitted, S::Committed, S::Aborted] {
            assert_eq!(next(s, Event::VoteTimeout).0, E::Nothing, "{s:?}");
        }
        for s in [S::Unknown, S::Voted, S::Committed, S::Aborted] {
            assert_eq!(next(s, Event::CommitTimeout).0, E::Nothing, "{s:?}");
        }
    }

    #[test]
    fn late_and_repeated_messages() {
        assert_eq!(next(S::Aborted, Event::PreCommit), (E::Nothing, Reply::No));
        assert_eq!(next(S::Unknown, Event::PreCommit), (E::Nothing, Reply::No));
        assert_eq!(next(S::PreCommitted, Event::PreCommit), (E::Nothing, Reply::Yes));
        assert_eq!(next(S::Committed, Event::PreCommit), (E::Nothing, Reply::Yes));
        assert_eq!(next(S::Committed, Event::DoCommit), (E::Nothing, Reply::Yes));
        assert_eq!(next(S::Aborted, Event::Abort), (E::Nothing, Reply::Yes));
        assert_eq!(next(S::Aborted, Event::DoCommit).1, Reply::Refused);
        assert_eq!(next(S::Unknown, Event::Abort), (E::RecordAbort, Reply::Yes));
    }

    #[test]
    fn abort_after_a_timeout_commit_is_a_heuristic_outcome() {
        assert_eq!(next(S::Committed, Event::Abort), (E::Nothing, Reply::HeuristicCommit));
        assert_eq!(next(S::PreCommitted, Event::Abort), (E::RollbackPrepared, Reply::Yes));
    }
}
