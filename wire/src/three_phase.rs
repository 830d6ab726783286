//! Phase timeouts of three-phase commit (`3pc`), set per transaction.
//!
//! The coordinator waits `can_commit_timeout_ms` for every vote and
//! `pre_commit_timeout_ms` for every PreCommit acknowledgement; a missing
//! answer aborts. A participant that voted yes aborts on its own when no
//! PreCommit came within `pre_commit_timeout_ms` of its vote; one that
//! pre-committed commits on its own when neither DoCommit nor abort came
//! within `do_commit_timeout_ms` of its acknowledgement.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Default wait for the votes: a vote is a quick check that takes no locks.
pub const DEFAULT_CAN_COMMIT_TIMEOUT_MS: u64 = 3_000;
/// Default wait for PreCommit acknowledgements: they run the branch's work and
/// a local prepare. A yes-voter waits as long for its PreCommit.
pub const DEFAULT_PRE_COMMIT_TIMEOUT_MS: u64 = 5_000;
/// Default time a pre-committed participant waits for DoCommit or abort
/// before it commits on its own (see [`ThreePhaseOptions::resolve`] for the
/// least value allowed, which a longer `pre_commit_timeout_ms` raises).
pub const DEFAULT_DO_COMMIT_TIMEOUT_MS: u64 = 40_000;
/// Margin added to the least safe `do_commit_timeout_ms` when it defaults.
const DO_COMMIT_MARGIN_MS: u64 = 10_000;

/// Why phase timeouts are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// A value is 0 or above the coordinator's largest timeout.
    #[error("three_phase.{name} must be 1 to {max_ms}")]
    OutOfRange {
        /// The field.
        name: &'static str,
        /// The largest value accepted.
        max_ms: u64,
    },
    /// The votes may take as long as a yes-voter waits for PreCommit.
    #[error(
        "three_phase.can_commit_timeout_ms ({can}) must be less than pre_commit_timeout_ms ({pre}): \
         a yes-voter waits pre_commit_timeout_ms for PreCommit"
    )]
    VotesOutlastPreCommit {
        /// `can_commit_timeout_ms`.
        can: u64,
        /// `pre_commit_timeout_ms`.
        pre: u64,
    },
    /// A pre-committed participant could commit on its own while a
    /// coordinator may still abort.
    #[error(
        "three_phase.do_commit_timeout_ms ({done}) must be greater than 2 x pre_commit_timeout_ms + \
         the coordinator's takeover time ({takeover_ms}) = {least_do}"
    )]
    DoCommitTooShort {
        /// `do_commit_timeout_ms`.
        done: u64,
        /// The coordinator's lease plus its recovery interval.
        takeover_ms: u64,
        /// The least value allowed.
        least_do: u64,
    },
}

/// Phase timeouts as given at begin; each defaults when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThreePhaseOptions {
    /// How long the coordinator waits for every CanCommit vote (default 3000).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::de::opt_u64")]
    pub can_commit_timeout_ms: Option<u64>,
    /// How long the coordinator waits for every PreCommit acknowledgement, and
    /// a yes-voter for its PreCommit (default 5000; more than
    /// `can_commit_timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::de::opt_u64")]
    pub pre_commit_timeout_ms: Option<u64>,
    /// How long a pre-committed participant waits for DoCommit or abort
    /// before committing on its own (default 40000, or more when
    /// `pre_commit_timeout_ms` is long: it must exceed twice
    /// `pre_commit_timeout_ms` plus the coordinator's lease and recovery
    /// interval).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::de::opt_u64")]
    pub do_commit_timeout_ms: Option<u64>,
}

/// The phase timeouts in force for one `3pc` transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThreePhaseTimeouts {
    /// Coordinator's wait for the votes.
    pub can_commit_timeout_ms: u64,
    /// Coordinator's wait for PreCommit acknowledgements; a yes-voter's wait for PreCommit.
    pub pre_commit_timeout_ms: u64,
    /// A pre-committed participant's wait for DoCommit or abort.
    pub do_commit_timeout_ms: u64,
}

impl Default for ThreePhaseTimeouts {
    fn default() -> Self {
        ThreePhaseTimeouts {
            can_commit_timeout_ms: DEFAULT_CAN_COMMIT_TIMEOUT_MS,
            pre_commit_timeout_ms: DEFAULT_PRE_COMMIT_TIMEOUT_MS,
            do_commit_timeout_ms: DEFAULT_DO_COMMIT_TIMEOUT_MS,
        }
    }
}

impl ThreePhaseOptions {
    /// Fills in the defaults and checks the values against the coordinator's
    /// `takeover_ms` (its lease plus its recovery interval: how long until
    /// another coordinator takes over a dead one's transaction):
    ///
    /// - each value is 1 to `max_ms`;
    /// - `can_commit_timeout_ms < pre_commit_timeout_ms`: a yes-voter waits
    ///   `pre_commit_timeout_ms` for PreCommit, which comes only once every
    ///   vote is in;
    /// - `do_commit_timeout_ms > 2 × pre_commit_timeout_ms + takeover_ms`: a
    ///   pre-committed participant must not commit on its own while a
    ///   coordinator may still abort, that is while the first coordinator
    ///   waits for the other acknowledgements, a successor takes over after
    ///   it died, and the successor waits for them again.
    ///
    /// `do_commit_timeout_ms` defaults to 40 s, or to that least value plus
    /// 10 s if that is more.
    pub fn resolve(self, max_ms: u64, takeover_ms: u64) -> Result<ThreePhaseTimeouts, TimeoutError> {
        let can = self.can_commit_timeout_ms.unwrap_or(DEFAULT_CAN_COMMIT_TIMEOUT_MS);
        let pre = self.pre_commit_timeout_ms.unwrap_or(DEFAULT_PRE_COMMIT_TIMEOUT_MS);
        let least_do = pre.saturating_mul(2).saturating_add(takeover_ms);
        let done = self
            .do_commit_timeout_ms
            .unwrap_or_else(|| DEFAULT_DO_COMMIT_TIMEOUT_MS.max(least_do.saturating_add(DO_COMMIT_MARGIN_MS)));
        for (name, v) in
            [("can_commit_timeout_ms", can), ("pre_commit_timeout_ms", pre), ("do_commit_timeout_ms", done)]
        {
            if v == 0 || v > max_ms {
                return Err(TimeoutError::OutOfRange { name, max_ms });
            }
        }
        if can >= pre {
            return Err(TimeoutError::VotesOutlastPreCommit { can, pre });
        }
        if done <= least_do {
            return Err(TimeoutError::DoCommitTooShort { done, takeover_ms, least_do });
        }
        Ok(ThreePhaseTimeouts { can_commit_timeout_ms: can, pre_commit_timeout_ms: pre, do_commit_timeout_ms: done })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let takeover = 16_000;
        assert_eq!(ThreePhaseOptions::default().resolve(600_000, takeover), Ok(ThreePhaseTimeouts::default()));
        // A longer PreCommit wait raises the default DoCommit wait past its least safe value.
        let long_pre = ThreePhaseOptions { pre_commit_timeout_ms: Some(20_000), ..Default::default() };
        assert_eq!(long_pre.resolve(600_000, takeover).map(|t| t.do_commit_timeout_ms), Ok(66_000));
        let zero = ThreePhaseOptions { can_commit_timeout_ms: Some(0), ..Default::default() };
        assert!(zero.resolve(600_000, takeover).is_err());
        let unsafe_do = ThreePhaseOptions { do_commit_timeout_ms: Some(26_000), ..Default::default() };
        assert!(unsafe_do.resolve(600_000, takeover).expect_err("refused").to_string().contains("greater than"));
        let slow_votes = ThreePhaseOptions { can_commit_timeout_ms: Some(5_000), ..Default::default() };
        assert!(slow_votes.resolve(600_000, takeover).expect_err("refused").to_string().contains("less than"));
        let too_long = ThreePhaseOptions { do_commit_timeout_ms: Some(700_000), ..Default::default() };
        assert!(too_long.resolve(600_000, takeover).is_err());
    }
}
