//! The callback endpoint the coordinator calls.

use super::{Phase2Result, StepError, TccError, TccParticipant};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tandem_wire::{CallbackRequest, ErrorCode, Problem};

/// Path of the TCC callback endpoint.
pub const CALLBACK_PATH: &str = "/tandem/tcc/callback";

impl TccParticipant {
    /// A router serving [`CALLBACK_PATH`]; merge it into the service's router.
    pub fn router(&self) -> Router {
        Router::new().route(CALLBACK_PATH, post(callback)).with_state(self.clone())
    }
}

async fn callback(State(p): State<TccParticipant>, Json(req): Json<CallbackRequest>) -> Response {
    match p.handle_callback(&req).await {
        Ok(r) => {
            let outcome = match r {
                Phase2Result::Applied => "applied",
                Phase2Result::AlreadyDone => "already_done",
                Phase2Result::EmptyRollback => "empty_rollback",
            };
            (StatusCode::OK, Json(serde_json::json!({ "outcome": outcome }))).into_response()
        }
        Err(e) => {
            // The contract: 409 is permanent, anything else is retried.
            let (status, code) = match &e {
                TccError::Conflict(_) | TccError::StepFailed { error: StepError::Permanent(_), .. } => {
                    (StatusCode::CONFLICT, ErrorCode::InvalidState)
                }
                TccError::UnknownResource(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
                _ => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            };
            tracing::warn!(xid = %req.xid, branch_id = %req.branch_id, error = %e, "callback failed");
            let title = status.canonical_reason().unwrap_or("Error");
            (status, Json(Problem::new(status.as_u16(), code, title, e.to_string()))).into_response()
        }
    }
}
