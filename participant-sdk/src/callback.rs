//! The participant's side of the callback contract, the same for every mode:
//! how a callback is read, run and answered.
//!
//! - The body is a [`CallbackRequest`]; one that is not is answered as a
//!   problem with the extractor's status (400, 415, 422).
//! - The work runs in its own task: a coordinator that stops waiting closes
//!   the connection, which drops the request's handler, and a local
//!   transaction, a prepare or a restore must not be abandoned half way.
//!   The next delivery of the callback finds the work done.
//! - Success is 200 with a [`CallbackReply`]; failure is an
//!   `application/problem+json` [`Problem`] whose status the coordinator
//!   reads per the contract: 409 is permanent, anything else is retried.

use crate::verify::Verifier;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use std::future::Future;
use tandem_wire::{CallbackReply, CallbackRequest, ErrorCode, Problem, PROBLEM_CONTENT_TYPE};

/// A participant that answers callbacks: each mode implements it once, and
/// [`router`] serves it.
pub(crate) trait Callbacks: Clone + Send + Sync + 'static {
    /// The mode's name in logs (`TCC`, `XA`, `AT`, `3PC`).
    const MODE: &'static str;

    /// Carries out one callback. Runs in a task of its own (see the module
    /// docs), so it owns what it needs.
    fn answer(self, req: CallbackRequest) -> impl Future<Output = Result<CallbackReply, Refusal>> + Send + 'static;
}

/// A router serving `path` with `participant`'s callbacks, each verified
/// by `verifier` first ([`crate::verify`]).
pub(crate) fn router<P: Callbacks>(path: &'static str, participant: P, verifier: &Verifier) -> Router {
    verifier.announce(P::MODE);
    Router::new()
        .route(path, post(handle::<P>))
        .with_state(participant)
        .layer(axum::middleware::from_fn_with_state(verifier.clone(), crate::verify::verify))
}

/// How a participant answers a callback it did not carry out.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The answer's status: 409 tells the coordinator the refusal is
    /// permanent; any other status has the callback delivered again.
    status: StatusCode,
    /// The problem's code.
    code: ErrorCode,
    /// What went wrong.
    detail: String,
    /// Members added to the problem (AT: the rows in conflict, `conflicts`).
    extensions: serde_json::Map<String, serde_json::Value>,
}

impl Refusal {
    /// 409: the callback can never succeed (the branch becomes
    /// `commit_failed` / `rollback_failed`, or a 3PC vote is no).
    pub(crate) fn permanent(code: ErrorCode, detail: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::CONFLICT, code, detail)
    }

    /// 503: the callback may succeed later (database down, a phase 1 still
    /// committing); the coordinator delivers it again.
    pub(crate) fn retry(detail: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, detail)
    }

    /// 404: this participant serves no such resource (a misrouted callback;
    /// the coordinator retries, as for any answer but 2xx and 409).
    pub(crate) fn unknown_resource(detail: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, detail)
    }

    /// Adds the member `key` to the problem.
    pub(crate) fn with(mut self, key: &str, value: impl serde::Serialize) -> Refusal {
        match serde_json::to_value(value) {
            Ok(v) => {
                self.extensions.insert(key.to_owned(), v);
            }
            // The problem still says what happened in `detail`.
            Err(e) => tracing::warn!(key, error = %e, "a member of a callback's problem could not be encoded"),
        }
        self
    }

    fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Refusal {
        Refusal { status, code, detail: detail.into(), extensions: serde_json::Map::new() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let problem = Problem::new(self.status.as_u16(), self.code, title, self.detail);
        let body = match serde_json::to_value(&problem) {
            Ok(serde_json::Value::Object(mut members)) => {
                members.extend(self.extensions);
                serde_json::Value::Object(members)
            }
            // A Problem is always an object; were it not, send it as it is.
            Ok(other) => other,
            Err(_) => serde_json::Value::Null,
        };
        (self.status, [(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)], Json(body)).into_response()
    }
}

async fn handle<P: Callbacks>(State(p): State<P>, body: Result<Json<CallbackRequest>, JsonRejection>) -> Response {
    let req = match body {
        Ok(Json(req)) => req,
        Err(rejection) => return rejected(&rejection).into_response(),
    };
    let (xid, branch_id, action) = (req.xid.clone(), req.branch_id.clone(), req.action);
    // Awaiting the handle does not tie the task to this handler: dropped, it
    // lets the task run to its end.
    let result = match tokio::spawn(p.answer(req)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(mode = P::MODE, %xid, %branch_id, error = %e, "callback task failed");
            Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "callback task failed"))
        }
    };
    match result {
        Ok(reply) => (StatusCode::OK, Json(reply)).into_response(),
        Err(refusal) => {
            let (action, status, detail) = (action.as_str(), refusal.status.as_u16(), &refusal.detail);
            // A permanent refusal is an answer (a no vote, a conflict the mode
            // logs itself where a person must act); anything else is a failure.
            if refusal.status == StatusCode::CONFLICT {
                tracing::info!(mode = P::MODE, %xid, %branch_id, action, status, %detail, "callback refused");
            } else {
                tracing::warn!(mode = P::MODE, %xid, %branch_id, action, status, %detail, "callback failed; retried");
            }
            refusal.into_response()
        }
    }
}

/// A body that is not a callback, as a problem with the extractor's status.
pub(crate) fn rejected(rejection: &JsonRejection) -> Refusal {
    let status = rejection.status();
    let code = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        _ => ErrorCode::ValidationFailed,
    };
    Refusal::new(status, code, rejection.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refusal_is_a_problem_with_its_extensions() {
        let r = Refusal::permanent(ErrorCode::InvalidState, "dirty write").with("conflicts", vec![1, 2]);
        let response = r.into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        assert_eq!(content_type, Some(PROBLEM_CONTENT_TYPE));
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(body["code"], "invalid_state");
        assert_eq!(body["status"], 409);
        assert_eq!(body["detail"], "dirty write");
        assert_eq!(body["conflicts"], serde_json::json!([1, 2]));
    }

    #[test]
    fn a_reply_names_its_outcome() {
        let reply = CallbackReply::new(tandem_wire::CallbackOutcome::AlreadyDone);
        assert_eq!(serde_json::to_value(reply).ok(), Some(serde_json::json!({"outcome": "already_done"})));
    }
}
