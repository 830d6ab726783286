//! The routes of DTM's protocol and its answers: 200
//! `{"dtm_result":"SUCCESS"}`, 409 `{"dtm_result":"FAILURE","message":…}`,
//! 425 `{"dtm_result":"ONGOING","message":…}`; a request Tandem cannot act
//! on is `{"message":…}` with 400, 404 or 422 (DTM answers those 500). The
//! one place where [`DtmError`] becomes HTTP; the service layer's errors
//! keep the status of their own mapping ([`crate::api::error`]).

use super::request::{BranchRequest, TransRequest};
use super::service::DtmError;
use crate::api::error::ApiError;
use crate::auth::Caller;
use crate::Coordinator;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tandem_wire::Xid;
use utoipa::{IntoParams, ToSchema};

/// DTM's answer to an operation: `SUCCESS`, `FAILURE` (409) or `ONGOING` (425).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DtmResult {
    /// `SUCCESS`, `FAILURE` or `ONGOING`.
    pub dtm_result: String,
    /// Why, for a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A request Tandem cannot act on (400, 404, 413, 422), or an internal error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DtmMessage {
    /// What is wrong.
    pub message: String,
}

/// `newGid`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DtmGid {
    /// A fresh gid (a Tandem xid).
    pub gid: String,
    /// `SUCCESS`.
    pub dtm_result: String,
}

/// `query`: the transaction and its branches in DTM's shapes (one branch
/// row per op), `null` and `[]` for an unknown gid.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DtmQuery {
    /// The transaction (DTM's `TransGlobal` fields, plus `tandem_status`).
    #[schema(value_type = Option<Object>)]
    pub transaction: Option<Value>,
    /// Its branches, one row per op (plus `tandem_status`).
    #[schema(value_type = Vec<Object>)]
    pub branches: Vec<Value>,
}

/// `all`: a page of transactions, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DtmAll {
    /// The page.
    #[schema(value_type = Vec<Object>)]
    pub transactions: Vec<Value>,
    /// `position` of the next page; empty at the end.
    pub next_position: String,
}

/// `version`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DtmVersion {
    /// `tandem-` and this build's version.
    pub version: String,
}

/// `/api/ping`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DtmPong {
    /// `pong`.
    pub msg: String,
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": text.into() }))).into_response()
}

impl IntoResponse for DtmError {
    fn into_response(self) -> Response {
        match self {
            DtmError::Failure(m) => {
                (StatusCode::CONFLICT, axum::Json(json!({"dtm_result": "FAILURE", "message": m}))).into_response()
            }
            DtmError::Ongoing(m) => {
                (StatusCode::TOO_EARLY, axum::Json(json!({"dtm_result": "ONGOING", "message": m}))).into_response()
            }
            DtmError::Invalid(m) => message(StatusCode::UNPROCESSABLE_ENTITY, m),
            DtmError::Malformed(m) => message(StatusCode::BAD_REQUEST, m),
            e @ DtmError::TooLarge => message(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            e @ DtmError::NotFound(_) => message(StatusCode::NOT_FOUND, e.to_string()),
            DtmError::Coordinator(e) => {
                let problem = ApiError::from(e).0;
                let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                if status == StatusCode::CONFLICT {
                    return DtmError::Failure(problem.detail).into_response();
                }
                message(status, problem.detail)
            }
        }
    }
}

fn success() -> Response {
    axum::Json(json!({"dtm_result": "SUCCESS"})).into_response()
}

/// The body as JSON: too large is 413, not JSON is 400.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, DtmError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            DtmError::TooLarge
        } else {
            DtmError::Malformed(r.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| DtmError::Malformed(format!("the body is not JSON: {e}")))
}

fn trans(body: Result<Bytes, BytesRejection>) -> Result<TransRequest, DtmError> {
    TransRequest::parse(&json_body(body)?).map_err(DtmError::Invalid)
}

fn answer(r: Result<(), DtmError>) -> Response {
    match r {
        Ok(()) => success(),
        Err(e) => e.into_response(),
    }
}

/// A global transaction as DTM's clients send it (`TransGlobal`): `gid`,
/// `trans_type`, `steps`, `payloads`, `custom_data`, `query_prepared`,
/// `wait_result`, `timeout_to_fail`, `request_timeout`, `retry_interval`,
/// `retry_limit`, `branch_headers`, `concurrent`; others are ignored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DtmTrans {
    /// The gid (`newGid`, or 1 to 64 of A-Z a-z 0-9 _ . : -).
    pub gid: String,
    /// `saga`, `msg`, `tcc` or `xa`.
    pub trans_type: String,
}

/// A branch as DTM's clients register it: all values strings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DtmBranch {
    /// The gid.
    pub gid: String,
    /// The client's branch id (`01`, `0101`…).
    pub branch_id: String,
    /// `tcc` or `xa`.
    pub trans_type: String,
    /// TCC: the confirm URL.
    #[serde(default)]
    pub confirm: Option<String>,
    /// TCC: the cancel URL.
    #[serde(default)]
    pub cancel: Option<String>,
    /// XA: the branch URL (phase 2 with `op=commit` / `op=rollback`).
    #[serde(default)]
    pub url: Option<String>,
    /// The body of the phase-2 calls.
    #[serde(default)]
    pub data: Option<String>,
}

/// `newGid`: a fresh gid.
#[utoipa::path(get, path = "/api/dtmsvr/newGid", tag = "dtm",
    responses((status = 200, description = "A fresh gid", body = DtmGid)))]
pub async fn new_gid() -> Response {
    axum::Json(json!({"gid": Xid::generate().as_str(), "dtm_result": "SUCCESS"})).into_response()
}

/// `version`.
#[utoipa::path(get, path = "/api/dtmsvr/version", tag = "dtm",
    responses((status = 200, description = "This build", body = DtmVersion)))]
pub async fn version() -> Response {
    axum::Json(json!({"version": concat!("tandem-", env!("CARGO_PKG_VERSION"))})).into_response()
}

/// `/api/ping` (DTM answers any method; GET and POST here).
#[utoipa::path(get, path = "/api/ping", tag = "dtm", responses((status = 200, description = "pong", body = DtmPong)))]
pub async fn ping() -> Response {
    axum::Json(json!({"msg": "pong"})).into_response()
}

/// `POST /api/ping`.
#[utoipa::path(post, path = "/api/ping", tag = "dtm", responses((status = 200, description = "pong", body = DtmPong)))]
pub async fn ping_post() -> Response {
    ping().await
}

/// `prepare`: begins a TCC or XA transaction, or prepares a msg (with its
/// steps and `query_prepared`). Again on a prepared gid: success.
#[utoipa::path(post, path = "/api/dtmsvr/prepare", tag = "dtm", request_body = DtmTrans,
    responses(
        (status = 200, description = "Prepared (durably)", body = DtmResult),
        (status = 408, description = "`request_timeout`: the request took longer than the server's request timeout \
            (a wait_result longer than it)", body = tandem_wire::Problem, content_type = "application/problem+json"),
        (status = 400, description = "The body is not JSON", body = DtmMessage),
        (status = 409, description = "FAILURE: the gid exists in another state", body = DtmResult),
        (status = 413, description = "The body or a payload is too large", body = DtmMessage),
        (status = 422, description = "Not a transaction Tandem can begin (gid, trans_type, a field, a URL the \
            allow-list refuses); nothing stored", body = DtmMessage),
        (status = 500, description = "Internal error", body = DtmMessage),
        (status = 503, description = "The database is unavailable; retry", body = DtmMessage),
    ))]
pub async fn prepare(State(c): State<Coordinator>, caller: Caller, body: Result<Bytes, BytesRejection>) -> Response {
    match trans(body) {
        Ok(req) => answer(c.dtm_prepare(req, &caller).await),
        Err(e) => e.into_response(),
    }
}

/// `submit`: starts a saga or msg, or commits a prepared TCC, XA or msg.
/// Answered once the decision is durable; with `wait_result`, at the end
/// (FAILURE if it was rolled back, ONGOING if not finished in time).
#[utoipa::path(post, path = "/api/dtmsvr/submit", tag = "dtm", request_body = DtmTrans,
    responses(
        (status = 200, description = "Submitted (durably); with wait_result, finished", body = DtmResult),
        (status = 408, description = "`request_timeout`: the request took longer than the server's request timeout \
            (a wait_result longer than it)", body = tandem_wire::Problem, content_type = "application/problem+json"),
        (status = 400, description = "The body is not JSON", body = DtmMessage),
        (status = 409, description = "FAILURE: a state that cannot be submitted, or rolled back", body = DtmResult),
        (status = 413, description = "The body or a payload is too large", body = DtmMessage),
        (status = 422, description = "Not a transaction Tandem can run (gid, trans_type, steps, orders with a \
            cycle, a URL the allow-list refuses); nothing stored", body = DtmMessage),
        (status = 425, description = "ONGOING: wait_result, and not finished yet", body = DtmResult),
        (status = 500, description = "Internal error", body = DtmMessage),
        (status = 503, description = "The database is unavailable; retry", body = DtmMessage),
    ))]
pub async fn submit(State(c): State<Coordinator>, caller: Caller, body: Result<Bytes, BytesRejection>) -> Response {
    match trans(body) {
        Ok(req) => answer(c.dtm_submit(req, &caller).await),
        Err(e) => e.into_response(),
    }
}

/// `abort`: rolls back a prepared TCC or XA transaction, or a prepared msg.
#[utoipa::path(post, path = "/api/dtmsvr/abort", tag = "dtm", request_body = DtmTrans,
    responses(
        (status = 200, description = "Rollback decided (durably)", body = DtmResult),
        (status = 408, description = "`request_timeout`: the request took longer than the server's request timeout \
            (a wait_result longer than it)", body = tandem_wire::Problem, content_type = "application/problem+json"),
        (status = 400, description = "The body is not JSON", body = DtmMessage),
        (status = 404, description = "No such gid", body = DtmMessage),
        (status = 409, description = "FAILURE: a state or type that cannot be aborted", body = DtmResult),
        (status = 413, description = "The body is too large", body = DtmMessage),
        (status = 422, description = "Not a gid Tandem keeps", body = DtmMessage),
        (status = 500, description = "Internal error", body = DtmMessage),
        (status = 503, description = "The database is unavailable; retry", body = DtmMessage),
    ))]
pub async fn abort(State(c): State<Coordinator>, caller: Caller, body: Result<Bytes, BytesRejection>) -> Response {
    match trans(body) {
        Ok(req) => answer(c.dtm_abort(req, &caller).await),
        Err(e) => e.into_response(),
    }
}

/// `forceStop`: ends an unfinished transaction without calling its branches
/// again (`rollback_failed`, or `commit_failed` after a commit decision).
#[utoipa::path(post, path = "/api/dtmsvr/forceStop", tag = "dtm", request_body = DtmTrans,
    responses(
        (status = 200, description = "Stopped", body = DtmResult),
        (status = 408, description = "`request_timeout`: the request took longer than the server's request timeout \
            (a wait_result longer than it)", body = tandem_wire::Problem, content_type = "application/problem+json"),
        (status = 400, description = "The body is not JSON", body = DtmMessage),
        (status = 404, description = "No such gid", body = DtmMessage),
        (status = 409, description = "FAILURE: it had finished", body = DtmResult),
        (status = 413, description = "The body is too large", body = DtmMessage),
        (status = 422, description = "Not a gid Tandem keeps", body = DtmMessage),
        (status = 500, description = "Internal error", body = DtmMessage),
        (status = 503, description = "The database is unavailable; retry", body = DtmMessage),
    ))]
pub async fn force_stop(State(c): State<Coordinator>, caller: Caller, body: Result<Bytes, BytesRejection>) -> Response {
    match trans(body) {
        Ok(req) => answer(c.dtm_force_stop(req, &caller).await),
        Err(e) => e.into_response(),
    }
}

async fn register(c: Coordinator, caller: Caller, body: Result<Bytes, BytesRejection>) -> Response {
    let req = json_body(body).and_then(|v| BranchRequest::parse(&v).map_err(DtmError::Invalid));
    match req {
        Ok(req) => answer(c.dtm_register(req, &caller).await),
        Err(e) => e.into_response(),
    }
}

/// The answers of `registerBranch` and its aliases.
pub struct RegisterAnswers;

impl utoipa::IntoResponses for RegisterAnswers {
    fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let answer = |description: &str, schema: &str| {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(schema))).build();
            ResponseBuilder::new().description(description).content("application/json", content).build().into()
        };
        [
            ("200", answer("Registered (durably), or registered before", "DtmResult")),
            ("400", answer("The body is not JSON", "DtmMessage")),
            ("409", answer("FAILURE: no prepared transaction with this gid", "DtmResult")),
            ("413", answer("The body or data is too large", "DtmMessage")),
            (
                "422",
                answer(
                    "Not a branch Tandem can register (ids, trans_type, a URL the allow-list refuses); nothing stored",
                    "DtmMessage",
                ),
            ),
            ("500", answer("Internal error", "DtmMessage")),
            ("503", answer("The database is unavailable; retry", "DtmMessage")),
        ]
        .into_iter()
        .map(|(status, r)| (status.to_owned(), r))
        .collect()
    }
}

/// `registerBranch`: a TCC branch (`confirm`, `cancel`, `data`) or an XA
/// branch (`url`) of a prepared transaction, under the client's branch id.
#[utoipa::path(post, path = "/api/dtmsvr/registerBranch", tag = "dtm", request_body = DtmBranch,
    responses(RegisterAnswers))]
pub async fn register_branch(
    State(c): State<Coordinator>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    register(c, caller, body).await
}

/// `registerTccBranch`: older clients' name of `registerBranch`.
#[utoipa::path(post, path = "/api/dtmsvr/registerTccBranch", tag = "dtm", request_body = DtmBranch,
    responses(RegisterAnswers))]
pub async fn register_tcc_branch(
    State(c): State<Coordinator>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    register(c, caller, body).await
}

/// `registerXaBranch`: older clients' name of `registerBranch`.
#[utoipa::path(post, path = "/api/dtmsvr/registerXaBranch", tag = "dtm", request_body = DtmBranch,
    responses(RegisterAnswers))]
pub async fn register_xa_branch(
    State(c): State<Coordinator>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    register(c, caller, body).await
}

/// `query`'s parameters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct GidParam {
    /// The gid.
    #[serde(default)]
    pub gid: Option<String>,
}

/// `query`: the transaction and its branches in DTM's shapes.
#[utoipa::path(get, path = "/api/dtmsvr/query", tag = "dtm", params(GidParam),
    responses(
        (status = 200, description = "The transaction (null if unknown) and its branches", body = DtmQuery),
        (status = 400, description = "Bad query parameters", body = DtmMessage),
        (status = 422, description = "No gid given", body = DtmMessage),
        (status = 500, description = "Internal error", body = DtmMessage),
        (status = 503, description = "The database is unavailable; retry", body = DtmMessage),
    ))]
pub async fn query(
    State(c): State<Coordinator>,
    caller: Caller,
    q: Result<Query<GidParam>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return message(StatusCode::BAD_REQUEST, "bad query parameters");
    };
    match c.dtm_query(q.gid.as_deref().unwrap_or_default(), &caller).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `all`'s parameters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AllParams {
    /// The last gid of the previous page.
    #[serde(default)]
    pub position: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[serde(default)]
    pub limit: Option<String>,
    /// Only this DTM status (`prepared`, `submitted`, `aborting`, `succeed`, `failed`).
    #[serde(default)]
    pub status: Option<String>,
}

/// `all`: a page of transactions, newest first.
#[utoipa::path(get, path = "/api/dtmsvr/all", tag = "dtm", params(AllParams),
    responses(
        (status = 200, description = "A page", body = DtmAll),
        (status = 400, description = "Bad query parameters", body = DtmMessage),
        (status = 422, description = "A limit or position out of range", body = DtmMessage),
        (status = 500, description = "Internal error", body = DtmMessage),
        (status = 503, description = "The database is unavailable; retry", body = DtmMessage),
    ))]
pub async fn all(
    State(c): State<Coordinator>,
    caller: Caller,
    q: Result<Query<AllParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return message(StatusCode::BAD_REQUEST, "bad query parameters");
    };
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => 100,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => return message(StatusCode::UNPROCESSABLE_ENTITY, format!("limit {l:?}: 1 to 500")),
        },
    };
    match c.dtm_all(q.position.as_deref(), limit, q.status.as_deref(), &caller).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
