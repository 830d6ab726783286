//! A DTM participant that records every call (method, path, query
//! parameters, headers, body) and answers each path as told.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One call received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub body: String,
}

impl Call {
    pub fn q(&self, key: &str) -> &str {
        self.query.get(key).map(String::as_str).unwrap_or_default()
    }
}

#[derive(Clone, Default)]
struct Inner {
    calls: Arc<Mutex<Vec<Call>>>,
    answers: Arc<Mutex<HashMap<String, (u16, String)>>>,
}

/// The recorder: base URL, calls, answers.
#[derive(Clone)]
pub struct Recorder {
    pub base: String,
    inner: Inner,
}

async fn handle(
    State(inner): State<Inner>,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let path = format!("/{path}");
    inner.calls.lock().unwrap().push(Call {
        method,
        path: path.clone(),
        query,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let (status, body) =
        inner.answers.lock().unwrap().get(&path).cloned().unwrap_or((200, r#"{"dtm_result":"SUCCESS"}"#.into()));
    (StatusCode::from_u16(status).unwrap(), body)
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let inner = Inner::default();
        let app = axum::Router::new().route("/{*path}", axum::routing::any(handle)).with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { base, inner }
    }

    /// The URL of `path` (`/a1`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answers `path` with `status` and `body` from now on.
    pub fn answer(&self, path: &str, status: u16, body: &str) {
        self.inner.answers.lock().unwrap().insert(path.to_owned(), (status, body.to_owned()));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// The calls of transaction `gid`, in arrival order.
    pub fn of(&self, gid: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.q("gid") == gid).collect()
    }
}
