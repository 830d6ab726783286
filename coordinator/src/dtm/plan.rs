//! What a DTM request means in Tandem's terms, pure: its mode, its timeout,
//! its saga dependencies, its branch ids, and what forceStop makes of each
//! status. Every choice where the two protocols differ is made here and
//! written down in docs/dtm-compatibility.md.

use super::request::{SagaCustom, TransRequest, TransType};
use crate::modes::saga;
use crate::transaction::statuses::IN_FLIGHT;
use std::time::Duration;
use tandem_wire::{GlobalStatus, Mode, SagaStepRequest};

/// DTM's default `timeout_to_fail` of msg, TCC and XA (its `TimeoutToFail`).
pub const DEFAULT_TIMEOUT_TO_FAIL: Duration = Duration::from_secs(35);
/// DTM's default per-call timeout (its `RequestTimeout`), used for how long
/// a `wait_result` submit waits when the client gave no `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a `wait_result` submit waits for the end.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The branch id DTM's back-check uses (`branch_id=00&op=msg`).
pub const CHECK_BRANCH_ID: &str = "00";

/// The Tandem mode of a DTM type.
pub fn mode(t: TransType) -> Mode {
    match t {
        TransType::Saga => Mode::Saga,
        TransType::Msg => Mode::Msg,
        TransType::Tcc => Mode::Tcc,
        TransType::Xa => Mode::Xa,
    }
}

/// The DTM type of a Tandem mode, if it has one.
pub fn trans_type(mode: Mode) -> Option<TransType> {
    match mode {
        Mode::Saga => Some(TransType::Saga),
        Mode::Msg => Some(TransType::Msg),
        Mode::Tcc => Some(TransType::Tcc),
        Mode::Xa => Some(TransType::Xa),
        _ => None,
    }
}

/// The transaction's timeout: `timeout_to_fail` seconds; absent, DTM's
/// default (35 s), except a saga, which DTM never times out: it gets the
/// coordinator's longest timeout. More than `max` is refused.
pub fn timeout(t: TransType, timeout_to_fail: u64, max: Duration) -> Result<Duration, String> {
    let asked = match (timeout_to_fail, t) {
        (0, TransType::Saga) => return Ok(max),
        (0, _) => DEFAULT_TIMEOUT_TO_FAIL.min(max),
        (s, _) => Duration::from_secs(s),
    };
    if asked > max {
        return Err(format!(
            "timeout_to_fail {timeout_to_fail} s is more than this coordinator's longest timeout, {} s (--max-timeout-ms)",
            max.as_secs()
        ));
    }
    Ok(asked)
}

/// How long a `wait_result` submit waits for the end: the client's
/// `request_timeout` (DTM's 3 s default), at most [`MAX_WAIT`].
pub fn wait(request_timeout: u64) -> Duration {
    match request_timeout {
        0 => DEFAULT_REQUEST_TIMEOUT,
        s => Duration::from_secs(s).min(MAX_WAIT),
    }
}

/// DTM's id of step `i` (from 0): `01`, `02`, …
pub fn step_branch_id(i: usize) -> String {
    format!("{:02}", i + 1)
}

/// The steps each saga step runs after: one after another, or, with
/// `custom_data.concurrent`, only the `orders` listed (a step without one
/// runs at once). Checked as Tandem checks a saga (no unknown step, no cycle).
pub fn saga_after(req: &TransRequest) -> Result<Vec<Vec<u32>>, String> {
    let custom = SagaCustom::parse(req.custom_data.as_deref())?;
    let concurrent = custom.concurrent || req.concurrent;
    let steps: Vec<SagaStepRequest> = (0..req.steps.len())
        .map(|i| SagaStepRequest {
            name: None,
            action_url: String::new(),
            compensate_url: String::new(),
            payload: None,
            after: concurrent.then(|| {
                custom.orders.get(&i).map(|list| list.iter().map(|&j| j as u32).collect()).unwrap_or_default()
            }),
        })
        .collect();
    if let Some(&bad) = custom.orders.keys().find(|&&k| k >= req.steps.len()) {
        return Err(format!("custom_data.orders names step {bad}; the saga has {} steps", req.steps.len()));
    }
    saga::dependencies(&steps).map_err(|e| e.to_string())
}

/// Whether steps run concurrently (saga `custom_data`, or msg `concurrent`).
pub fn concurrent(req: &TransRequest) -> bool {
    req.concurrent || SagaCustom::parse(req.custom_data.as_deref()).is_ok_and(|c| c.concurrent)
}

/// What DTM's `forceStop` makes of each unfinished status: the transaction
/// ends without calling its branches again, and says that nothing proves
/// its data consistent: `commit_failed` where a commit was decided,
/// `rollback_failed` everywhere else (DTM calls both `failed`).
pub fn force_stop_moves() -> Vec<(GlobalStatus, GlobalStatus)> {
    IN_FLIGHT
        .iter()
        .map(|&s| match s {
            GlobalStatus::Committing | GlobalStatus::Delivering => (s, GlobalStatus::CommitFailed),
            _ => (s, GlobalStatus::RollbackFailed),
        })
        .collect()
}

/// A branch's resource name, for operators: its URL without scheme and
/// query, at most 100 characters.
pub fn resource(url: &str) -> String {
    let name = url.split_once("://").map_or(url, |(_, rest)| rest);
    let name = name.split(['?', '#']).next().unwrap_or_default();
    let name = if name.is_empty() { "dtm-branch" } else { name };
    name.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(n: usize, custom: Option<&str>) -> TransRequest {
        TransRequest {
            steps: vec![Default::default(); n],
            custom_data: custom.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn an_ordinary_saga_runs_step_after_step() {
        assert_eq!(saga_after(&saga(3, None)).expect("ok"), vec![vec![], vec![0], vec![1]]);
    }

    #[test]
    fn a_concurrent_saga_follows_its_orders() {
        let deps = saga_after(&saga(3, Some(r#"{"concurrent":true,"orders":{"2":[0,1]}}"#))).expect("ok");
        assert_eq!(deps, vec![vec![], vec![], vec![0, 1]]);
        let e = saga_after(&saga(2, Some(r#"{"concurrent":true,"orders":{"0":[1],"1":[0]}}"#))).expect_err("cycle");
        assert!(e.contains("cycle"), "{e}");
        assert!(saga_after(&saga(2, Some(r#"{"concurrent":true,"orders":{"5":[0]}}"#))).is_err());
        assert!(saga_after(&saga(0, None)).is_err(), "no steps");
    }

    #[test]
    fn timeouts_follow_dtms_defaults() {
        let max = Duration::from_secs(3600);
        assert_eq!(timeout(TransType::Tcc, 0, max), Ok(DEFAULT_TIMEOUT_TO_FAIL));
        assert_eq!(timeout(TransType::Saga, 0, max), Ok(max));
        assert_eq!(timeout(TransType::Msg, 2, max), Ok(Duration::from_secs(2)));
        assert!(timeout(TransType::Xa, 7200, max).is_err());
        assert_eq!(wait(0), DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(wait(600), MAX_WAIT);
    }

    #[test]
    fn force_stop_never_claims_success() {
        for (from, to) in force_stop_moves() {
            assert!(!from.is_terminal());
            assert!(matches!(to, GlobalStatus::CommitFailed | GlobalStatus::RollbackFailed), "{from} → {to}");
        }
        assert!(force_stop_moves().contains(&(GlobalStatus::Active, GlobalStatus::RollbackFailed)));
    }

    #[test]
    fn ids_and_names() {
        assert_eq!(step_branch_id(0), "01");
        assert_eq!(step_branch_id(10), "11");
        assert_eq!(resource("http://127.0.0.1:8080/api/TransOut?x=1"), "127.0.0.1:8080/api/TransOut");
        assert_eq!(resource(""), "dtm-branch");
    }
}
