//! Calling branches the way DTM does, for transactions begun through its
//! protocol (`crate::dtm`): the URL gets the query parameters `gid`,
//! `trans_type`, `branch_id` and `op`; the body is the payload as the text
//! it came as (POST), or nothing (GET) when there is none, except for XA,
//! always POST; `branch_headers` are sent as headers. The answer is read as
//! DTM reads it: 425 or a body containing `ONGOING` is "not yet", 409 or a
//! body containing `FAILURE` is a failure, any other 200 is success,
//! anything else is unknown and retried. An empty URL is success without a
//! call (DTM's rule for a step with nothing to undo).

use crate::transaction::state::CallbackResult;
use tandem_wire::{CallbackAction, CheckOutcome, Mode};

/// DTM's `op` for `action` in `mode`.
pub fn op(mode: Mode, action: CallbackAction) -> &'static str {
    match (mode, action) {
        (_, CallbackAction::Check) => "msg",
        (_, CallbackAction::Action) => "action",
        (_, CallbackAction::Compensate) => "compensate",
        (Mode::Msg, _) => "action",
        (Mode::Tcc, CallbackAction::Commit) => "confirm",
        (Mode::Tcc, _) => "cancel",
        (_, CallbackAction::Commit) => "commit",
        _ => "rollback",
    }
}

/// Whether the call is a POST (with the payload) or a GET (without).
pub fn is_post(mode: Mode, payload: &str) -> bool {
    !payload.is_empty() || mode == Mode::Xa
}

/// A branch's answer as DTM reads it.
pub fn classify(status: u16, body: &str) -> CallbackResult {
    if status == 425 || body.contains("ONGOING") {
        CallbackResult::Unknown(format!("{status} (ongoing): {body}"))
    } else if status == 409 || body.contains("FAILURE") {
        CallbackResult::Refused(format!("{status}: {body}"))
    } else if status == 200 {
        CallbackResult::Done
    } else {
        CallbackResult::Unknown(format!("{status}: {body}"))
    }
}

/// A back-check's answer (`query_prepared`) as DTM reads it: success means
/// the producer's transaction committed, a failure that it rolled back,
/// ongoing that it does not know yet; anything else is no answer.
pub fn check_outcome(status: u16, body: &str) -> Result<CheckOutcome, String> {
    match classify(status, body) {
        CallbackResult::Done => Ok(CheckOutcome::Committed),
        CallbackResult::Refused(_) | CallbackResult::HeuristicCommit(_) => Ok(CheckOutcome::RolledBack),
        CallbackResult::Unknown(_) if status == 425 || body.contains("ONGOING") => Ok(CheckOutcome::Unknown),
        CallbackResult::Unknown(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_dtm_reads_them() {
        assert_eq!(classify(200, r#"{"dtm_result":"SUCCESS"}"#), CallbackResult::Done);
        assert_eq!(classify(200, ""), CallbackResult::Done);
        assert!(matches!(classify(409, ""), CallbackResult::Refused(_)));
        assert!(matches!(classify(200, r#"{"dtm_result":"FAILURE"}"#), CallbackResult::Refused(_)));
        assert!(matches!(classify(425, ""), CallbackResult::Unknown(_)));
        assert!(matches!(classify(200, "ONGOING"), CallbackResult::Unknown(_)));
        // ONGOING is read before FAILURE, as DTM does.
        assert!(matches!(classify(409, "ONGOING"), CallbackResult::Unknown(_)));
        assert!(matches!(classify(500, "oops"), CallbackResult::Unknown(_)));
        assert!(matches!(classify(204, ""), CallbackResult::Unknown(_)));
    }

    #[test]
    fn back_checks() {
        assert_eq!(check_outcome(200, ""), Ok(CheckOutcome::Committed));
        assert_eq!(check_outcome(409, "FAILURE"), Ok(CheckOutcome::RolledBack));
        assert_eq!(check_outcome(425, ""), Ok(CheckOutcome::Unknown));
        assert!(check_outcome(502, "").is_err());
    }

    #[test]
    fn ops_by_mode() {
        assert_eq!(op(Mode::Tcc, CallbackAction::Commit), "confirm");
        assert_eq!(op(Mode::Tcc, CallbackAction::Rollback), "cancel");
        assert_eq!(op(Mode::Xa, CallbackAction::Commit), "commit");
        assert_eq!(op(Mode::Xa, CallbackAction::Rollback), "rollback");
        assert_eq!(op(Mode::Saga, CallbackAction::Action), "action");
        assert_eq!(op(Mode::Saga, CallbackAction::Compensate), "compensate");
        assert_eq!(op(Mode::Msg, CallbackAction::Deliver), "action");
        assert!(is_post(Mode::Xa, ""));
        assert!(!is_post(Mode::Tcc, ""));
    }
}
