//! `/v1/locks` handlers (AT mode). Extension of the contract.

use super::error::ApiError;
use super::extract::ApiJson;
use super::openapi::{BodyProblems, ServerProblems};
use crate::Coordinator;
use axum::extract::State;
use axum::Json;
use tandem_wire::{LockCheckRequest, LockCheckResponse};

/// Whether global locks are free for a transaction.
///
/// The SDK asks this for rows it reads with `SELECT ... FOR UPDATE` inside a
/// global transaction: they are read-committed only if no other transaction
/// holds their global lock.
#[utoipa::path(post, path = "/v1/locks/check", tag = "locks",
    request_body = LockCheckRequest,
    responses(
        (status = 200, description = "Whether the keys are free, and one holder if not", body = LockCheckResponse),
        BodyProblems,
        ServerProblems,
    ))]
pub async fn check(
    State(c): State<Coordinator>,
    ApiJson(req): ApiJson<LockCheckRequest>,
) -> Result<Json<LockCheckResponse>, ApiError> {
    Ok(Json(c.check_locks(req).await?))
}
