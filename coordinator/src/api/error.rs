//! The one place where errors become HTTP answers (`application/problem+json`).

use crate::error::CoordinatorError;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tandem_wire::{ErrorCode, Problem, PROBLEM_CONTENT_TYPE};

/// An error answer.
#[derive(Debug)]
pub struct ApiError(pub Problem);

impl ApiError {
    /// A problem with the contract's title for `code`.
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> ApiError {
        let title = status.canonical_reason().unwrap_or("Error");
        ApiError(Problem::new(status.as_u16(), code, title, detail))
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> ApiError {
        use CoordinatorError as E;
        let detail = e.to_string();
        match e {
            E::Validation(_) | E::Limit(_) | E::Option(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationFailed, detail)
            }
            E::ModeNotSupported(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ModeNotSupported, detail)
            }
            E::IdempotencyKeyReused(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::IdempotencyKeyReused, detail)
            }
            E::TransactionNotFound(_) => ApiError::new(StatusCode::NOT_FOUND, ErrorCode::TransactionNotFound, detail),
            E::BranchNotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, ErrorCode::BranchNotFound, detail),
            E::InvalidState { transaction, .. } => {
                let mut err = ApiError::new(StatusCode::CONFLICT, ErrorCode::InvalidState, detail);
                err.0.transaction = transaction;
                err
            }
            E::LockConflict(holder) => {
                let mut err = ApiError::new(StatusCode::CONFLICT, ErrorCode::LockConflict, detail);
                err.0.lock_holder = Some(*holder);
                err
            }
            E::CallbackNotAllowed { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::CallbackNotAllowed, detail)
            }
            E::PayloadTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, detail)
            }
            E::LimitExceeded(_) => ApiError::new(StatusCode::CONFLICT, ErrorCode::LimitExceeded, detail),
            E::Store(e) => {
                // Logged here, where it is handled, and only here.
                if e.is_transient() {
                    tracing::warn!(error = %e, "database unavailable or contended");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Unavailable,
                        "the coordinator's database is unavailable or busy; retry",
                    )
                } else {
                    tracing::error!(error = %e, "database error");
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error")
                }
            }
        }
    }
}

impl From<crate::locks::LockServiceError> for ApiError {
    fn from(e: crate::locks::LockServiceError) -> ApiError {
        use crate::locks::LockServiceError as E;
        let detail = e.to_string();
        match e {
            E::Held(_) => ApiError::new(StatusCode::CONFLICT, ErrorCode::LockHeld, detail),
            E::NotHeld { .. } => ApiError::new(StatusCode::CONFLICT, ErrorCode::LockNotHeld, detail),
            E::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationFailed, detail),
            E::Store(e) => CoordinatorError::Store(e).into(),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, "request body is too large")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ValidationFailed, r.body_text())
        }
    }
}

impl From<serde_json::Error> for ApiError {
    /// A body that is not JSON is malformed (400); JSON that does not fit
    /// the request's type is invalid (422).
    fn from(e: serde_json::Error) -> ApiError {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::ValidationFailed,
                format!("the body does not match the request's schema: {e}"),
            ),
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::ValidationFailed,
                format!("the body is not JSON: {e}"),
            ),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ValidationFailed, r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.0)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        resp
    }
}

/// Gives bare error answers produced outside the handlers (no route, wrong
/// method, request timeout, body limit) a problem+json body, so that every
/// error of the API has the contract's shape. The console's pages (under
/// `/console/`) answer HTML errors of their own.
pub async fn problem_for_bare_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let console = req.uri().path().starts_with("/console/") || req.uri().path() == "/console";
    // DTM's protocol answers its errors in its own JSON shapes (`crate::dtm::api`).
    let dtm = req.uri().path().starts_with("/api/");
    let resp = next.run(req).await;
    if dtm && resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/json") {
        return resp;
    }
    if console && resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/html")) {
        return resp;
    }
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_CONTENT_TYPE.as_bytes()));
    if is_problem {
        return resp;
    }
    let (code, detail) = match status {
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => (ErrorCode::MethodNotAllowed, "method not allowed on this endpoint"),
        StatusCode::REQUEST_TIMEOUT => (ErrorCode::RequestTimeout, "the request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (ErrorCode::UnsupportedMediaType, "unsupported media type"),
        s if s.is_client_error() => (ErrorCode::ValidationFailed, "bad request"),
        _ => (ErrorCode::Internal, "internal error"),
    };
    let mut out = ApiError::new(status, code, detail).into_response();
    // Keep headers such as x-request-id and allow.
    for (name, value) in resp.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
