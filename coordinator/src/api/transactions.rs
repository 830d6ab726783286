//! `/v1/transactions` handlers.

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::openapi::{BodyProblems, QueryProblems, ServerProblems};
use crate::auth::Caller;
use crate::error::CoordinatorError;
use crate::transaction::service::{DecideReply, ListFilter};
use crate::transaction::state::Decision;
use crate::Coordinator;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::time::Duration;
use tandem_wire::limits::{DEFAULT_PAGE, MAX_PAGE};
use tandem_wire::{
    BeginRequest, Branch, ErrorCode, GlobalStatus, Mode, Problem, RegisterBranchRequest, ReportRequest, Transaction,
    TransactionList, Xid,
};
use utoipa::IntoParams;

/// Default of commit/rollback `wait_ms`.
pub const DEFAULT_WAIT_MS: u64 = 5_000;

fn validation(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ValidationFailed, detail)
}

/// The request's `Idempotency-Key`, if any.
// `ApiError` is what every handler answers with; these helpers return it
// as the handlers do.
#[allow(clippy::result_large_err)]
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => Ok(Some(v.to_str().map_err(|_| validation("Idempotency-Key must be visible ASCII"))?.to_owned())),
    }
}

/// Refuses a `client` acting on a transaction it did not begin, as if the
/// transaction did not exist (see [`crate::auth::policy::Scope`]).
pub(super) async fn own(c: &Coordinator, caller: &Caller, xid: &str) -> Result<(), ApiError> {
    let Some(name) = caller.only_own() else {
        return Ok(());
    };
    match c.store().began_by(xid, name).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(CoordinatorError::TransactionNotFound(xid.to_owned()).into()),
        Err(e) => Err(CoordinatorError::from(e).into()),
    }
}

/// Begin a global transaction.
#[utoipa::path(post, path = "/v1/transactions", tag = "transactions",
    request_body = BeginRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same key → same transaction (answered 201 again, with `Idempotent-Replayed: true`)")),
    responses(
        (status = 201, description = "Begun (or, with a known `Idempotency-Key`, the transaction it began)",
            body = Transaction),
        BodyProblems,
        (status = 422, description = "`validation_failed`: a field outside its limits; `mode_not_supported`; \
            `idempotency_key_reused`: the key began a different transaction", body = Problem,
            content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn begin(
    State(c): State<Coordinator>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<BeginRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let (tx, created) = c.begin(req, key, caller.name()).await?;
    let mut resp = (StatusCode::CREATED, Json(tx)).into_response();
    if !created {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// Read one transaction with its branches.
#[utoipa::path(get, path = "/v1/transactions/{xid}", tag = "transactions",
    params(("xid" = String, Path, description = "Global transaction id")),
    responses(
        (status = 200, description = "The transaction", body = Transaction),
        (status = 404, description = "`transaction_not_found`", body = Problem, content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn get(
    State(c): State<Coordinator>,
    caller: Caller,
    Path(xid): Path<String>,
) -> Result<Json<Transaction>, ApiError> {
    own(&c, &caller, &xid).await?;
    Ok(Json(c.get(&xid).await?))
}

/// Query of `GET /v1/transactions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only transactions in this status.
    #[param(value_type = Option<GlobalStatus>)]
    status: Option<String>,
    /// Only transactions of this mode.
    #[param(value_type = Option<Mode>)]
    mode: Option<String>,
    /// Only transactions whose name starts with this. Extension.
    name: Option<String>,
    /// Only transactions whose xid contains this. Extension.
    xid: Option<String>,
    /// Only transactions created at or after this time (RFC 3339). Extension.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    created_after: Option<String>,
    /// Only transactions created before this time (RFC 3339). Extension.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    created_before: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    /// Cursor: the `next` of the previous page.
    after: Option<String>,
}

/// An RFC 3339 time of a query parameter.
#[allow(clippy::result_large_err)]
fn time_param(name: &str, v: Option<String>) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| validation(format!("{name}: not an RFC 3339 time: {e}")))
    })
    .transpose()
}

/// A text query parameter: at most `max` characters, no U+0000.
#[allow(clippy::result_large_err)]
fn text_param(name: &'static str, v: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    if let Some(s) = &v {
        tandem_wire::limits::check_text(name, s, 0, max).map_err(|e| validation(e.to_string()))?;
    }
    Ok(v.filter(|s| !s.is_empty()))
}

/// List transactions, newest first, paged.
#[utoipa::path(get, path = "/v1/transactions", tag = "transactions", params(ListParams),
    responses(
        (status = 200, description = "One page, newest first", body = TransactionList),
        QueryProblems,
        ServerProblems,
    ))]
pub async fn list(
    State(c): State<Coordinator>,
    caller: Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<TransactionList>, ApiError> {
    let status = p.status.map(|s| s.parse::<GlobalStatus>()).transpose().map_err(|e| validation(e.to_string()))?;
    let mode = p.mode.map(|s| s.parse::<Mode>()).transpose().map_err(|e| validation(e.to_string()))?;
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(validation(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let limit = i64::from(limit);
    let after = p.after.map(Xid::parse).transpose().map_err(|e| validation(format!("after: {e}")))?;
    let name = text_param("name", p.name, tandem_wire::limits::MAX_NAME_CHARS)?;
    let xid = text_param("xid", p.xid, tandem_wire::MAX_ID_LEN)?;
    let created_after = time_param("created_after", p.created_after)?;
    let created_before = time_param("created_before", p.created_before)?;
    // A client lists only what it began; an admin everything.
    let began_by = if caller.lists_all() { None } else { caller.name().map(str::to_owned) };
    let filter = ListFilter { status, mode, name, xid, created_after, created_before, began_by, limit, after };
    Ok(Json(c.list(filter).await?))
}

/// Register a branch.
#[utoipa::path(post, path = "/v1/transactions/{xid}/branches", tag = "branches",
    params(("xid" = String, Path, description = "Global transaction id")),
    request_body = RegisterBranchRequest,
    responses(
        (status = 201, description = "Registered", body = Branch),
        BodyProblems,
        (status = 404, description = "`transaction_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: the transaction is no longer active; `lock_conflict` (AT): \
            another transaction holds a lock key", body = Problem, content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn register(
    State(c): State<Coordinator>,
    Path(xid): Path<String>,
    ApiJson(req): ApiJson<RegisterBranchRequest>,
) -> Result<(StatusCode, Json<Branch>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.register(&xid, req).await?)))
}

/// Report a branch's phase-1 result.
#[utoipa::path(post, path = "/v1/transactions/{xid}/branches/{branch_id}/report", tag = "branches",
    params(("xid" = String, Path), ("branch_id" = String, Path)),
    request_body = ReportRequest,
    responses(
        (status = 200, description = "Recorded (or recorded before: a repeated report)", body = Branch),
        BodyProblems,
        (status = 404, description = "`transaction_not_found`, `branch_not_found`", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: the branch or its transaction is past phase 1", body = Problem,
            content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn report(
    State(c): State<Coordinator>,
    Path((xid, branch_id)): Path<(String, String)>,
    ApiJson(req): ApiJson<ReportRequest>,
) -> Result<Json<Branch>, ApiError> {
    Ok(Json(c.report(&xid, &branch_id, req).await?))
}

/// Query of commit and rollback.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// How long to wait for the end before answering 202 (default 5000, or
    /// the largest accepted where that is less).
    wait_ms: Option<u64>,
}

/// How long a request waits, from its `wait_ms`.
#[allow(clippy::result_large_err)]
pub(super) fn wait_of(c: &Coordinator, p: &WaitParams) -> Result<Duration, ApiError> {
    let max = c.timing().max_wait;
    // Without `wait_ms`, the default, or less where the request timeout is short.
    let wait = p.wait_ms.map_or(Duration::from_millis(DEFAULT_WAIT_MS).min(max), Duration::from_millis);
    if wait > max {
        return Err(validation(format!("wait_ms must be at most {}", max.as_millis())));
    }
    Ok(wait)
}

/// A decision's answer: 200 terminal, 202 still running.
pub(super) fn decided(reply: DecideReply) -> Response {
    match reply {
        DecideReply::Finished(t) => (StatusCode::OK, Json(*t)).into_response(),
        DecideReply::InProgress(t) => (StatusCode::ACCEPTED, Json(*t)).into_response(),
    }
}

async fn decide(c: Coordinator, caller: Caller, xid: String, d: Decision, p: WaitParams) -> Result<Response, ApiError> {
    let wait = wait_of(&c, &p)?;
    own(&c, &caller, &xid).await?;
    Ok(decided(c.decide(&xid, d, wait).await?))
}

/// Decide commit.
#[utoipa::path(post, path = "/v1/transactions/{xid}/commit", tag = "transactions",
    params(("xid" = String, Path), WaitParams),
    responses(
        (status = 200, description = "Terminal", body = Transaction),
        (status = 202, description = "Decided durably; phase 2 still running", body = Transaction),
        QueryProblems,
        (status = 404, description = "`transaction_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: already rolled back, or rolled back instead (the problem's \
            `transaction` shows the state)", body = Problem, content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn commit(
    State(c): State<Coordinator>,
    caller: Caller,
    Path(xid): Path<String>,
    ApiQuery(p): ApiQuery<WaitParams>,
) -> Result<Response, ApiError> {
    decide(c, caller, xid, Decision::Commit, p).await
}

/// Decide rollback.
#[utoipa::path(post, path = "/v1/transactions/{xid}/rollback", tag = "transactions",
    params(("xid" = String, Path), WaitParams),
    responses(
        (status = 200, description = "Terminal", body = Transaction),
        (status = 202, description = "Decided durably; phase 2 still running", body = Transaction),
        QueryProblems,
        (status = 404, description = "`transaction_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: already committed, or (3PC) the votes or acknowledgements \
            are being collected", body = Problem, content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn rollback(
    State(c): State<Coordinator>,
    caller: Caller,
    Path(xid): Path<String>,
    ApiQuery(p): ApiQuery<WaitParams>,
) -> Result<Response, ApiError> {
    decide(c, caller, xid, Decision::Rollback, p).await
}
