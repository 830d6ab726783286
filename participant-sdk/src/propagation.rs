//! `Tandem-Xid` propagation.
//!
//! Incoming: [`xid_middleware`] runs the rest of the request with the header's
//! xid as the task-local [`current_xid`]; [`GlobalXid`] extracts it in a handler.
//! Outgoing: [`RequestBuilderExt::propagate_xid`] copies the current xid into a
//! reqwest request. The task-local follows the request's future, not threads:
//! work moved into `tokio::spawn` must be wrapped in [`with_xid`] again.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use tandem_wire::{ErrorCode, Problem, Xid, PROBLEM_CONTENT_TYPE, XID_HEADER};

tokio::task_local! {
    static CURRENT_XID: Xid;
}

/// The xid of the global transaction this task runs in, if any.
pub fn current_xid() -> Option<Xid> {
    CURRENT_XID.try_with(Clone::clone).ok()
}

/// Runs `f` with `xid` as the current xid.
pub async fn with_xid<F: Future>(xid: Xid, f: F) -> F::Output {
    CURRENT_XID.scope(xid, f).await
}

fn bad_xid(detail: String) -> Response {
    let p = Problem::new(400, ErrorCode::ValidationFailed, "Bad Request", detail);
    let mut r = (StatusCode::BAD_REQUEST, axum::Json(p)).into_response();
    if let Ok(v) = PROBLEM_CONTENT_TYPE.parse() {
        r.headers_mut().insert(axum::http::header::CONTENT_TYPE, v);
    }
    r
}

/// The header's xid, or what is wrong with it.
fn read_header(parts: &Parts) -> Result<Option<Xid>, String> {
    match parts.headers.get(XID_HEADER) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().map_err(|_| format!("{XID_HEADER} is not ASCII"))?;
            Xid::parse(s).map(Some).map_err(|e| format!("{XID_HEADER}: {e}"))
        }
    }
}

/// axum middleware (`axum::middleware::from_fn(xid_middleware)`): a request
/// carrying `Tandem-Xid` runs with it as the current xid. A malformed header is 400.
pub async fn xid_middleware(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match read_header(&parts) {
        Err(detail) => bad_xid(detail),
        Ok(None) => next.run(Request::from_parts(parts, body)).await,
        Ok(Some(xid)) => with_xid(xid, next.run(Request::from_parts(parts, body))).await,
    }
}

/// Extractor: the request's `Tandem-Xid`, if present (malformed: 400).
#[derive(Debug, Clone)]
pub struct GlobalXid(pub Option<Xid>);

impl<S: Send + Sync> FromRequestParts<S> for GlobalXid {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        read_header(parts).map(GlobalXid).map_err(bad_xid)
    }
}

/// Adds `Tandem-Xid` to outgoing reqwest requests.
pub trait RequestBuilderExt {
    /// Sets the header to `xid`.
    fn xid(self, xid: &Xid) -> Self;
    /// Sets the header to the current xid, if this task runs in a global transaction.
    fn propagate_xid(self) -> Self;
}

impl RequestBuilderExt for reqwest::RequestBuilder {
    fn xid(self, xid: &Xid) -> Self {
        self.header(XID_HEADER, xid.as_str())
    }

    fn propagate_xid(self) -> Self {
        match current_xid() {
            Some(x) => self.xid(&x),
            None => self,
        }
    }
}
