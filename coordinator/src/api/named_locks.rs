//! `/v1/named-locks` handlers: the lock service (`crate::locks`) for users.
//! Extension of the contract.

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::openapi::{BodyProblems, QueryProblems, ServerProblems};
use crate::locks::AcquireReply;
use crate::Coordinator;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tandem_wire::{
    AcquireLockRequest, ErrorCode, LockGrant, LockName, LockReleased, LockWaiting, NamedLockList, Problem,
    ReleaseLockRequest, RenewLockRequest,
};
use utoipa::IntoParams;

/// Most locks listed at once.
const MAX_LISTED: i64 = 500;

/// The lock named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LockPath {
    /// The lock's name: 1 to 200 ASCII letters, digits, `-`, `_`, `.`, `:` and `@`.
    #[param(pattern = "^[A-Za-z0-9_.:@-]{1,200}$")]
    name: String,
}

#[allow(clippy::result_large_err)] // The answer itself, built once per request.
fn lock_name(p: LockPath) -> Result<LockName, ApiError> {
    LockName::parse(p.name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ValidationFailed, format!("lock name {e}")))
}

/// Acquires a named lock: at once when it is free (and nobody waits
/// first) or held by the same owner (a re-entry: one more hold, the same
/// token, the lease extended); otherwise the owner joins the lock's FIFO
/// queue and the request is held open until the lock is handed to it or
/// the wait ends. A wait longer than one request (20 s at most) is
/// answered 202 with the owner's place, kept while it asks again within
/// `keep_place_ms`. Every new grant carries a fencing token greater than
/// any earlier grant's of this name.
#[utoipa::path(post, path = "/v1/named-locks/{name}/acquire", tag = "named-locks",
    params(LockPath),
    request_body = AcquireLockRequest,
    responses(
        (status = 200, description = "Granted (or re-entered)", body = LockGrant),
        (status = 202, description = "Not yet: still queued; ask again to keep the place", body = LockWaiting),
        (status = 400, description = "`validation_failed`: the name or the body is malformed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lock_held`: another owner holds it and the wait ended", body = Problem, content_type = "application/problem+json"),
        BodyProblems,
        ServerProblems,
    ))]
pub async fn acquire(
    State(c): State<Coordinator>,
    Path(p): Path<LockPath>,
    ApiJson(req): ApiJson<AcquireLockRequest>,
) -> Result<Response, ApiError> {
    let name = lock_name(p)?;
    Ok(match c.named_locks().acquire(name, req).await? {
        AcquireReply::Granted(g) => (StatusCode::OK, Json(g)).into_response(),
        AcquireReply::Waiting(w) => (StatusCode::ACCEPTED, Json::<LockWaiting>(w)).into_response(),
    })
}

/// Extends the holder's lease to `ttl_ms` from now. Refused once the
/// lease has ended, even if nobody took the lock since: the holder ran
/// unprotected and must know it.
#[utoipa::path(post, path = "/v1/named-locks/{name}/renew", tag = "named-locks",
    params(LockPath),
    request_body = RenewLockRequest,
    responses(
        (status = 200, description = "Renewed", body = LockGrant),
        (status = 409, description = "`lock_not_held`: the owner does not hold it", body = Problem, content_type = "application/problem+json"),
        BodyProblems,
        ServerProblems,
    ))]
pub async fn renew(
    State(c): State<Coordinator>,
    Path(p): Path<LockPath>,
    ApiJson(req): ApiJson<RenewLockRequest>,
) -> Result<Json<LockGrant>, ApiError> {
    let name = lock_name(p)?;
    Ok(Json(c.named_locks().renew(name, req.owner, req.ttl_ms).await?))
}

/// Releases one of the holder's holds; the last one frees the lock and
/// hands it to the first waiter still there (only its request is woken).
#[utoipa::path(post, path = "/v1/named-locks/{name}/release", tag = "named-locks",
    params(LockPath),
    request_body = ReleaseLockRequest,
    responses(
        (status = 200, description = "Released; `holds` remain", body = LockReleased),
        (status = 409, description = "`lock_not_held`: the owner does not hold it (nothing changed)", body = Problem, content_type = "application/problem+json"),
        BodyProblems,
        ServerProblems,
    ))]
pub async fn release(
    State(c): State<Coordinator>,
    Path(p): Path<LockPath>,
    ApiJson(req): ApiJson<ReleaseLockRequest>,
) -> Result<Json<LockReleased>, ApiError> {
    let name = lock_name(p)?;
    Ok(Json(c.named_locks().release(name, req.owner).await?))
}

/// Query of `GET /v1/named-locks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Most locks listed, 1 to 500 (default 100).
    limit: Option<u32>,
}

/// The named locks held or waited for, by name, with their queues.
#[utoipa::path(get, path = "/v1/named-locks", tag = "operators", params(ListParams),
    responses((status = 200, description = "Locks held or waited for, and their number", body = NamedLockList),
        QueryProblems, ServerProblems))]
pub async fn list(
    State(c): State<Coordinator>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<NamedLockList>, ApiError> {
    let limit = i64::from(p.limit.unwrap_or(100));
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationFailed,
            format!("limit must be 1 to {MAX_LISTED}"),
        ));
    }
    Ok(Json(c.named_locks().list(limit).await?))
}
