//! What operators read and do (extension of the contract): a transaction's
//! timeline, retry now, stop with a note, the overview, the global locks.
//! Served to the console and the `tandem` CLI.

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::openapi::{BodyProblems, QueryProblems, ServerProblems};
use crate::transaction::operator::MAX_LOCKS;
use crate::Coordinator;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use tandem_wire::{ErrorCode, LockList, Overview, Problem, StopRequest, Timeline, Transaction};
use utoipa::IntoParams;

/// A transaction's timeline: begin, registrations, decision, every callback
/// attempt with its outcome and latency, takeovers, operator actions, end.
#[utoipa::path(get, path = "/v1/transactions/{xid}/timeline", tag = "operators",
    params(("xid" = String, Path, description = "Global transaction id")),
    responses(
        (status = 200, description = "The transaction and its events, oldest first", body = Timeline),
        (status = 404, description = "`transaction_not_found`", body = Problem, content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn timeline(
    State(c): State<Coordinator>,
    caller: crate::auth::Caller,
    Path(xid): Path<String>,
) -> Result<Json<Timeline>, ApiError> {
    super::transactions::own(&c, &caller, &xid).await?;
    Ok(Json(c.timeline(&xid).await?))
}

/// Retry a decided, unfinished transaction now, its backoff reset.
#[utoipa::path(post, path = "/v1/transactions/{xid}/retry", tag = "operators",
    params(("xid" = String, Path, description = "Global transaction id")),
    responses(
        (status = 200, description = "Due now; this coordinator drives it", body = Transaction),
        (status = 404, description = "`transaction_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: not decided, already terminal, or being driven at this \
            moment (the problem's `transaction` shows it)", body = Problem, content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn retry(State(c): State<Coordinator>, Path(xid): Path<String>) -> Result<Json<Transaction>, ApiError> {
    Ok(Json(c.retry(&xid).await?))
}

/// Stop retrying a decided, unfinished transaction, with an operator's note:
/// it ends `commit_failed` (commit decided) or `rollback_failed` (rollback
/// decided), and its branches are called no more.
#[utoipa::path(post, path = "/v1/transactions/{xid}/stop", tag = "operators",
    params(("xid" = String, Path, description = "Global transaction id")),
    request_body = StopRequest,
    responses(
        (status = 200, description = "Stopped: the transaction, now terminal", body = Transaction),
        BodyProblems,
        (status = 404, description = "`transaction_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: not decided, or already terminal", body = Problem,
            content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn stop(
    State(c): State<Coordinator>,
    Path(xid): Path<String>,
    ApiJson(req): ApiJson<StopRequest>,
) -> Result<Json<Transaction>, ApiError> {
    Ok(Json(c.stop(&xid, &req.note).await?))
}

/// Counts by status and mode, the last hour per minute, the oldest
/// unfinished transactions and those that need a person.
#[utoipa::path(get, path = "/v1/overview", tag = "operators",
    responses((status = 200, description = "The overview", body = Overview), ServerProblems))]
pub async fn overview(State(c): State<Coordinator>) -> Result<Json<Overview>, ApiError> {
    Ok(Json(c.overview().await?))
}

/// Query of `GET /v1/locks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LocksParams {
    /// Most locks listed, 1 to 500 (default 100).
    limit: Option<u32>,
}

/// The global locks (AT) held, oldest first.
#[utoipa::path(get, path = "/v1/locks", tag = "operators", params(LocksParams),
    responses((status = 200, description = "The locks held, and their number", body = LockList),
        QueryProblems, ServerProblems))]
pub async fn locks(
    State(c): State<Coordinator>,
    ApiQuery(p): ApiQuery<LocksParams>,
) -> Result<Json<LockList>, ApiError> {
    let limit = i64::from(p.limit.unwrap_or(100));
    if !(1..=MAX_LOCKS).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationFailed,
            format!("limit must be 1 to {MAX_LOCKS}"),
        ));
    }
    Ok(Json(c.locks(limit).await?))
}
