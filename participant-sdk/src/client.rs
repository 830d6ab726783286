//! Typed client for the coordinator's HTTP contract.

use crate::verify::Verifier;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tandem_wire::signature::SigningKey;
use tandem_wire::{
    AcquireLockRequest, LockGrant, LockName, LockReleased, LockWaiting, NamedLockList, ReleaseLockRequest,
    RenewLockRequest,
};
use tandem_wire::{
    BeginRequest, Branch, BranchId, ErrorCode, GlobalStatus, LockCheckRequest, LockCheckResponse, LockList,
    MessageRequest, Mode, Overview, Problem, RegisterBranchRequest, ReportRequest, SagaRequest, StopRequest, Timeline,
    Transaction, TransactionList, Xid,
};

/// Errors of [`TandemClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete (connection, timeout, body).
    #[error("coordinator request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The coordinator answered with a problem.
    #[error("coordinator answered {}: {} ({})", .0.status, .0.detail, .0.code.as_str())]
    Problem(Box<Problem>),
    /// The coordinator answered something that is not the contract.
    #[error("unexpected answer {status}: {body}")]
    Unexpected {
        /// HTTP status.
        status: u16,
        /// Body prefix.
        body: String,
    },
    /// The base URL is not a valid URL.
    #[error("invalid coordinator URL {0:?}")]
    BadUrl(String),
}

impl ClientError {
    /// The contract's error code, when the coordinator sent a problem.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Problem(p) => Some(p.code),
            _ => None,
        }
    }
    /// HTTP status of the answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem(p) => Some(p.status),
            ClientError::Unexpected { status, .. } => Some(*status),
            ClientError::Http(e) => e.status().map(|s| s.as_u16()),
            ClientError::BadUrl(_) => None,
        }
    }
}

/// The answer to [`TandemClient::acquire_lock`].
#[derive(Debug, Clone)]
pub enum LockAcquire {
    /// 200: granted (or re-entered).
    Granted(LockGrant),
    /// 202: still queued; ask again within `keep_place_ms` to keep the place.
    Waiting(LockWaiting),
}

/// Result of commit or rollback.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The transaction as the coordinator returned it.
    pub transaction: Transaction,
    /// `true` for 200 (terminal), `false` for 202 (phase 2 still running).
    pub finished: bool,
}

/// Query of [`TandemClient::list`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListQuery {
    /// Only this status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<GlobalStatus>,
    /// Only this mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Only names starting with this (extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Page size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Client of one coordinator (or a load balancer in front of several). Cheap to clone.
#[derive(Clone)]
pub struct TandemClient {
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:7070`.
    base: String,
    /// Pooled HTTP client.
    http: reqwest::Client,
    /// `Authorization: Bearer …` of every request (none: the coordinator
    /// serves without authentication).
    token: Option<Arc<str>>,
    /// How the participants built with this client verify callbacks.
    verifier: Verifier,
}

impl std::fmt::Debug for TandemClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TandemClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "redacted"))
            .field("verifier", &self.verifier)
            .finish()
    }
}

impl TandemClient {
    /// A client with a 30 s request timeout.
    pub fn new(base_url: &str) -> Result<TandemClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            // The coordinator closes connections idle for 30 s; dropping
            // ours first keeps a request off a connection being closed.
            .pool_idle_timeout(Duration::from_secs(20))
            .build()?;
        TandemClient::with_http(base_url, http)
    }

    /// A client using your own `reqwest::Client`.
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Result<TandemClient, ClientError> {
        let url = reqwest::Url::parse(base_url).map_err(|_| ClientError::BadUrl(base_url.to_owned()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl(base_url.to_owned()));
        }
        Ok(TandemClient {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            token: None,
            verifier: Verifier::default(),
        })
    }

    /// Sends `token` as the bearer token of every request.
    pub fn with_token(mut self, token: impl Into<String>) -> TandemClient {
        self.token = Some(Arc::from(token.into()));
        self
    }

    /// Participants built with this client accept only callbacks signed
    /// with `key` (the coordinator's `--callback-key`).
    pub fn with_callback_key(self, key: SigningKey) -> TandemClient {
        self.with_callback_keys(vec![key])
    }

    /// As [`TandemClient::with_callback_key`], with several keys (while the
    /// coordinator's key is rotated).
    pub fn with_callback_keys(mut self, keys: Vec<SigningKey>) -> TandemClient {
        self.verifier = Verifier::new(keys);
        self
    }

    /// How participants built with this client verify callbacks (for a saga
    /// participant or a message consumer: their `verify_with`).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, T), ClientError> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map(|v| (status, v)).map_err(|_| ClientError::Unexpected {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            });
        }
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(p) => Err(ClientError::Problem(Box::new(p))),
            Err(_) => Err(ClientError::Unexpected {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            }),
        }
    }

    /// `POST /v1/transactions`.
    pub async fn begin(&self, req: &BeginRequest) -> Result<Transaction, ClientError> {
        Ok(self.call(Method::POST, "/v1/transactions", Some(req), &[]).await?.1)
    }

    /// `POST /v1/transactions` with an `Idempotency-Key`.
    pub async fn begin_idempotent(&self, req: &BeginRequest, key: &str) -> Result<Transaction, ClientError> {
        Ok(self.call(Method::POST, "/v1/transactions", Some(req), &[("idempotency-key", key)]).await?.1)
    }

    /// `GET /v1/transactions/{xid}`.
    pub async fn get(&self, xid: &Xid) -> Result<Transaction, ClientError> {
        Ok(self.call::<(), _>(Method::GET, &format!("/v1/transactions/{xid}"), None, &[]).await?.1)
    }

    /// `GET /v1/transactions`.
    pub async fn list(&self, q: &ListQuery) -> Result<TransactionList, ClientError> {
        let mut path = String::from("/v1/transactions?");
        if let Some(s) = q.status {
            path.push_str(&format!("status={s}&"));
        }
        if let Some(m) = q.mode {
            path.push_str(&format!("mode={m}&"));
        }
        if let Some(n) = &q.name {
            let n: String = url::form_urlencoded::byte_serialize(n.as_bytes()).collect();
            path.push_str(&format!("name={n}&"));
        }
        if let Some(l) = q.limit {
            path.push_str(&format!("limit={l}&"));
        }
        if let Some(a) = &q.after {
            // Cursors are xids: URL-safe characters only.
            path.push_str(&format!("after={a}&"));
        }
        Ok(self.call::<(), _>(Method::GET, path.trim_end_matches(['&', '?']), None, &[]).await?.1)
    }

    /// `GET /v1/transactions/{xid}/timeline`: the transaction and its events.
    pub async fn timeline(&self, xid: &Xid) -> Result<Timeline, ClientError> {
        Ok(self.call::<(), _>(Method::GET, &format!("/v1/transactions/{xid}/timeline"), None, &[]).await?.1)
    }

    /// `POST /v1/transactions/{xid}/retry`: retry a decided, unfinished transaction now.
    pub async fn retry(&self, xid: &Xid) -> Result<Transaction, ClientError> {
        Ok(self.call::<(), _>(Method::POST, &format!("/v1/transactions/{xid}/retry"), None, &[]).await?.1)
    }

    /// `POST /v1/transactions/{xid}/stop`: stop retrying it, with a note.
    pub async fn stop(&self, xid: &Xid, note: &str) -> Result<Transaction, ClientError> {
        let body = StopRequest { note: note.to_owned() };
        Ok(self.call(Method::POST, &format!("/v1/transactions/{xid}/stop"), Some(&body), &[]).await?.1)
    }

    /// `GET /v1/overview`.
    pub async fn overview(&self) -> Result<Overview, ClientError> {
        Ok(self.call::<(), _>(Method::GET, "/v1/overview", None, &[]).await?.1)
    }

    /// `GET /v1/locks?limit=`: the AT global locks held.
    pub async fn locks(&self, limit: u32) -> Result<LockList, ClientError> {
        Ok(self.call::<(), _>(Method::GET, &format!("/v1/locks?limit={limit}"), None, &[]).await?.1)
    }

    /// `POST /v1/transactions/{xid}/branches`.
    pub async fn register(&self, xid: &Xid, req: &RegisterBranchRequest) -> Result<Branch, ClientError> {
        Ok(self.call(Method::POST, &format!("/v1/transactions/{xid}/branches"), Some(req), &[]).await?.1)
    }

    /// `POST /v1/locks/check` (AT mode).
    pub async fn check_locks(&self, req: &LockCheckRequest) -> Result<LockCheckResponse, ClientError> {
        Ok(self.call(Method::POST, "/v1/locks/check", Some(req), &[]).await?.1)
    }

    /// `POST /v1/named-locks/{name}/acquire`: granted (200) or still
    /// waiting with the place kept (202); another owner holding it when the
    /// wait ends is the problem `lock_held`.
    pub async fn acquire_lock(&self, name: &LockName, req: &AcquireLockRequest) -> Result<LockAcquire, ClientError> {
        let path = format!("/v1/named-locks/{name}/acquire");
        let (status, body) = self.call::<_, serde_json::Value>(Method::POST, &path, Some(req), &[]).await?;
        let unexpected = |body: &serde_json::Value| ClientError::Unexpected {
            status: status.as_u16(),
            body: body.to_string().chars().take(512).collect(),
        };
        if status == StatusCode::ACCEPTED {
            serde_json::from_value(body.clone()).map(LockAcquire::Waiting).map_err(|_| unexpected(&body))
        } else {
            serde_json::from_value(body.clone()).map(LockAcquire::Granted).map_err(|_| unexpected(&body))
        }
    }

    /// `POST /v1/named-locks/{name}/renew`.
    pub async fn renew_lock(&self, name: &LockName, req: &RenewLockRequest) -> Result<LockGrant, ClientError> {
        let path = format!("/v1/named-locks/{name}/renew");
        Ok(self.call(Method::POST, &path, Some(req), &[]).await?.1)
    }

    /// `POST /v1/named-locks/{name}/release`.
    pub async fn release_lock(&self, name: &LockName, req: &ReleaseLockRequest) -> Result<LockReleased, ClientError> {
        let path = format!("/v1/named-locks/{name}/release");
        Ok(self.call(Method::POST, &path, Some(req), &[]).await?.1)
    }

    /// `GET /v1/named-locks`: the named locks held or waited for (operators).
    pub async fn named_locks(&self, limit: Option<u32>) -> Result<NamedLockList, ClientError> {
        let path = match limit {
            Some(l) => format!("/v1/named-locks?limit={l}"),
            None => "/v1/named-locks".to_owned(),
        };
        Ok(self.call::<(), _>(Method::GET, &path, None, &[]).await?.1)
    }

    /// `POST /v1/transactions/{xid}/branches/{branch_id}/report`.
    pub async fn report(&self, xid: &Xid, branch: &BranchId, req: &ReportRequest) -> Result<Branch, ClientError> {
        let path = format!("/v1/transactions/{xid}/branches/{branch}/report");
        Ok(self.call(Method::POST, &path, Some(req), &[]).await?.1)
    }

    /// `POST /v1/{collection}/{xid}/{verb}?wait_ms=`: a decision, waited for up to `wait`.
    async fn decide(
        &self,
        collection: &str,
        xid: &Xid,
        verb: &str,
        wait: Option<Duration>,
    ) -> Result<Decided, ClientError> {
        let path = match wait {
            Some(w) => format!("/v1/{collection}/{xid}/{verb}?wait_ms={}", w.as_millis()),
            None => format!("/v1/{collection}/{xid}/{verb}"),
        };
        let (status, transaction) = self.call::<(), Transaction>(Method::POST, &path, None, &[]).await?;
        Ok(Decided { transaction, finished: status == StatusCode::OK })
    }

    /// `POST /v1/transactions/{xid}/commit`. A commit that the coordinator turned
    /// into a rollback is an `invalid_state` problem carrying the transaction.
    pub async fn commit(&self, xid: &Xid, wait: Option<Duration>) -> Result<Decided, ClientError> {
        self.decide("transactions", xid, "commit", wait).await
    }

    /// `POST /v1/transactions/{xid}/rollback`.
    pub async fn rollback(&self, xid: &Xid, wait: Option<Duration>) -> Result<Decided, ClientError> {
        self.decide("transactions", xid, "rollback", wait).await
    }

    /// `POST /v1/sagas`: submits a whole saga and waits up to `wait` for its
    /// end (`None`: the coordinator's default). `finished` is false while
    /// actions or compensations still run (202). A saga that ended
    /// compensated is an `invalid_state` problem carrying the transaction.
    pub async fn submit_saga(
        &self,
        req: &SagaRequest,
        wait: Option<Duration>,
        idempotency_key: Option<&str>,
    ) -> Result<Decided, ClientError> {
        let path = match wait {
            Some(w) => format!("/v1/sagas?wait_ms={}", w.as_millis()),
            None => "/v1/sagas".to_owned(),
        };
        let headers: Vec<(&str, &str)> = idempotency_key.map(|k| ("idempotency-key", k)).into_iter().collect();
        let (status, transaction) = self.call(Method::POST, &path, Some(req), &headers).await?;
        Ok(Decided { transaction, finished: status == StatusCode::OK })
    }

    /// `POST /v1/messages`: prepares a message (durably `prepared` when this
    /// returns). Extension.
    pub async fn prepare_message(
        &self,
        req: &MessageRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Transaction, ClientError> {
        let headers: Vec<(&str, &str)> = idempotency_key.map(|k| ("idempotency-key", k)).into_iter().collect();
        Ok(self.call(Method::POST, "/v1/messages", Some(req), &headers).await?.1)
    }

    /// `POST /v1/messages/{xid}/submit`: the producer's local transaction
    /// committed; deliver. `finished` once every delivery was acknowledged
    /// within `wait` (`None`: the coordinator's default).
    pub async fn submit_message(&self, xid: &Xid, wait: Option<Duration>) -> Result<Decided, ClientError> {
        self.decide("messages", xid, "submit", wait).await
    }

    /// `POST /v1/messages/{xid}/abort`: nothing is delivered.
    pub async fn abort_message(&self, xid: &Xid, wait: Option<Duration>) -> Result<Decided, ClientError> {
        self.decide("messages", xid, "abort", wait).await
    }
}
