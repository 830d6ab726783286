//! `/v1/messages`: two-phase messages (extension, `docs/messages.md`).

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::openapi::{BodyProblems, QueryProblems, ServerProblems};
use super::transactions::{decided, idempotency_key, own, wait_of, WaitParams};
use crate::auth::Caller;
use crate::transaction::state::Decision;
use crate::Coordinator;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tandem_wire::{MessageRequest, Problem, Transaction};

/// Prepare a message: stored `prepared` (durably) with its deliveries,
/// before the producer's local transaction runs. Submit it after that
/// transaction committed, abort it after a rollback; a message left
/// prepared past its `timeout_ms` is back-checked at its `check_url`.
#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    request_body = MessageRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same key → same message (answered 201 again, with `Idempotent-Replayed: true`)")),
    responses(
        (status = 201, description = "Prepared (or, with a known `Idempotency-Key`, the message it prepared)",
            body = Transaction),
        BodyProblems,
        (status = 422, description = "`validation_failed`: no deliveries or too many, a delivery with neither \
            or both of `url` and `destination`, a destination the coordinator does not have, a field outside its \
            limits; nothing stored. `idempotency_key_reused`: the key prepared a different message", body = Problem,
            content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn prepare(
    State(c): State<Coordinator>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<MessageRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let (tx, created) = c.prepare_message(req, key, caller.name()).await?;
    let mut resp = (StatusCode::CREATED, Json(tx)).into_response();
    if !created {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

async fn decide(c: Coordinator, caller: Caller, xid: String, d: Decision, p: WaitParams) -> Result<Response, ApiError> {
    own(&c, &caller, &xid).await?;
    let wait = wait_of(&c, &p)?;
    Ok(decided(c.decide_message(&xid, d, wait).await?))
}

/// Submit a prepared message: `delivering` (durably), then every delivery
/// until acknowledged. The same as `POST /v1/transactions/{xid}/commit`.
#[utoipa::path(post, path = "/v1/messages/{xid}/submit", tag = "messages",
    params(("xid" = String, Path), WaitParams),
    responses(
        (status = 200, description = "Terminal: `delivered` (or `commit_failed`: a consumer refused for good)",
            body = Transaction),
        (status = 202, description = "Submitted durably; deliveries still running", body = Transaction),
        QueryProblems,
        (status = 404, description = "`transaction_not_found`: no message with this xid", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: the message was aborted, or a back-check found the \
            producer's local transaction rolled back (the problem's `transaction` shows it)", body = Problem,
            content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn submit(
    State(c): State<Coordinator>,
    caller: Caller,
    Path(xid): Path<String>,
    ApiQuery(p): ApiQuery<WaitParams>,
) -> Result<Response, ApiError> {
    decide(c, caller, xid, Decision::Commit, p).await
}

/// Abort a prepared message: nothing is delivered; it ends `rolled_back`.
/// The same as `POST /v1/transactions/{xid}/rollback`.
#[utoipa::path(post, path = "/v1/messages/{xid}/abort", tag = "messages",
    params(("xid" = String, Path), WaitParams),
    responses(
        (status = 200, description = "Terminal: `rolled_back`", body = Transaction),
        (status = 202, description = "Aborted durably; not finished yet", body = Transaction),
        QueryProblems,
        (status = 404, description = "`transaction_not_found`: no message with this xid", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: already submitted (or delivered)", body = Problem,
            content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn abort(
    State(c): State<Coordinator>,
    caller: Caller,
    Path(xid): Path<String>,
    ApiQuery(p): ApiQuery<WaitParams>,
) -> Result<Response, ApiError> {
    decide(c, caller, xid, Decision::Rollback, p).await
}
