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
pub const DEFAULT_CAN_COMMIT_TIMEOUT_MS: u64 = 5_000;
/// Default wait for PreCommit acknowledgements: they run the branch's work and
/// a local prepare, and a voter waits this long for PreCommit.
pub const DEFAULT_PRE_COMMIT_TIMEOUT_MS: u64 = 10_000;
/// Default time a pre-committed participant waits for DoCommit or abort
/// before it commits on its own. It covers the coordinator's PreCommit wait
/// (10 s) plus the default lease after which another coordinator takes over
/// (15 s) plus margin, so that an abort decided by a live or a recovered
/// coordinator normally arrives before any participant's timer fires.
pub const DEFAULT_DO_COMMIT_TIMEOUT_MS: u64 = 30_000;

/// Phase timeouts as given at begin; each defaults when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThreePhaseOptions {
    /// How long the coordinator waits for every CanCommit vote (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_commit_timeout_ms: Option<u64>,
    /// How long the coordinator waits for every PreCommit acknowledgement, and
    /// a yes-voter for its PreCommit (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_commit_timeout_ms: Option<u64>,
    /// How long a pre-committed participant waits for DoCommit or abort
    /// before committing on its own (default 30000; more than
    /// `pre_commit_timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// Fills in the defaults and checks the values: each positive and at most
    /// `max_ms`, and `do_commit_timeout_ms` above `pre_commit_timeout_ms` (a
    /// participant must not commit on its own while the coordinator may still
    /// be waiting for another branch's acknowledgement and then abort).
    pub fn resolve(self, max_ms: u64) -> Result<ThreePhaseTimeouts, String> {
        let d = ThreePhaseTimeouts::default();
        let t = ThreePhaseTimeouts {
            can_commit_timeout_ms: self.can_commit_timeout_ms.unwrap_or(d.can_commit_timeout_ms),
            pre_commit_timeout_ms: self.pre_commit_timeout_ms.unwrap_or(d.pre_commit_timeout_ms),
            do_commit_timeout_ms: self
                .do_commit_timeout_ms
                .unwrap_or(d.do_commit_timeout_ms.max(self.pre_commit_timeout_ms.unwrap_or(0).saturating_mul(3))),
        };
        for (name, v) in [
            ("can_commit_timeout_ms", t.can_commit_timeout_ms),
            ("pre_commit_timeout_ms", t.pre_commit_timeout_ms),
            ("do_commit_timeout_ms", t.do_commit_timeout_ms),
        ] {
            if v == 0 || v > max_ms {
                return Err(format!("three_phase.{name} must be 1 to {max_ms}"));
            }
        }
        if t.do_commit_timeout_ms <= t.pre_commit_timeout_ms {
            return Err("three_phase.do_commit_timeout_ms must be greater than pre_commit_timeout_ms".into());
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        assert_eq!(ThreePhaseOptions::default().resolve(600_000), Ok(ThreePhaseTimeouts::default()));
        let long_pre = ThreePhaseOptions { pre_commit_timeout_ms: Some(20_000), ..Default::default() };
        assert_eq!(long_pre.resolve(600_000).map(|t| t.do_commit_timeout_ms), Ok(60_000));
        let zero = ThreePhaseOptions { can_commit_timeout_ms: Some(0), ..Default::default() };
        assert!(zero.resolve(600_000).is_err());
        let inverted = ThreePhaseOptions {
            pre_commit_timeout_ms: Some(500),
            do_commit_timeout_ms: Some(500),
            ..Default::default()
        };
        assert!(inverted.resolve(600_000).unwrap_err().contains("greater"));
        assert!(ThreePhaseOptions { do_commit_timeout_ms: Some(700_000), ..Default::default() }
            .resolve(600_000)
            .is_err());
    }
}
