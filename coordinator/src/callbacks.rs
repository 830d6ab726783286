//! Delivery of callbacks to participants over HTTP.

use crate::metrics::Metrics;
use crate::store::{BranchRow, TxRow};
use crate::transaction::state::{classify_http, CallbackResult};
use std::time::{Duration, Instant};
use tandem_wire::{CallbackAction, CallbackRequest, XID_HEADER};

/// How much of a participant's answer body is kept for `last_error` (an AT
/// dirty-write refusal lists the conflicting rows there).
const MAX_ERROR_BODY: usize = 8192;

/// HTTP client for participant callbacks (keep-alive pooled).
#[derive(Clone)]
pub struct CallbackClient {
    /// Pooled client with the callback timeout applied to every request.
    http: reqwest::Client,
    /// Callback metrics.
    metrics: Metrics,
}

impl CallbackClient {
    /// A client whose requests time out after `timeout`.
    pub fn new(timeout: Duration, metrics: Metrics) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        Ok(CallbackClient { http, metrics })
    }

    /// Sends one callback and classifies the answer per the contract.
    pub async fn send(&self, tx: &TxRow, branch: &BranchRow, action: CallbackAction) -> CallbackResult {
        self.send_within(tx, branch, action, None).await
    }

    /// [`CallbackClient::send`] with its own timeout instead of the client's
    /// (3PC phases wait the transaction's phase timeout).
    pub async fn send_within(
        &self,
        tx: &TxRow,
        branch: &BranchRow,
        action: CallbackAction,
        timeout: Option<Duration>,
    ) -> CallbackResult {
        self.send_to(tx, branch, &branch.callback_url, action, timeout).await
    }

    /// [`CallbackClient::send_within`] to `url` instead of the branch's
    /// callback URL (a saga step's action).
    pub async fn send_to(
        &self,
        tx: &TxRow,
        branch: &BranchRow,
        url: &str,
        action: CallbackAction,
        timeout: Option<Duration>,
    ) -> CallbackResult {
        let body = CallbackRequest {
            xid: tx.xid.clone(),
            branch_id: branch.branch_id.clone(),
            mode: tx.mode,
            action,
            resource: branch.resource.clone(),
            payload: branch.payload.clone(),
            three_phase: tx.three_phase,
        };
        let started = Instant::now();
        let mut request = self.http.post(url).header(XID_HEADER, tx.xid.as_str()).json(&body);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let result = match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = if (200..300).contains(&status) { String::new() } else { read_prefix(resp).await };
                classify_http(status, &text)
            }
            Err(e) if e.is_timeout() => CallbackResult::Unknown(format!("no answer within the callback timeout: {e}")),
            Err(e) => CallbackResult::Unknown(format!("request failed: {e}")),
        };
        let outcome = match &result {
            CallbackResult::Done => "done",
            CallbackResult::Refused(_) => "refused",
            CallbackResult::HeuristicCommit(_) => "heuristic",
            CallbackResult::Unknown(_) => "unknown",
        };
        self.metrics
            .callback_seconds
            .with_label_values(&[action.as_str(), outcome])
            .observe(started.elapsed().as_secs_f64());
        if outcome != "done" {
            self.metrics.callback_failures.with_label_values(&[action.as_str(), outcome]).inc();
        }
        result
    }
}

/// Reads at most [`MAX_ERROR_BODY`] bytes of an answer (participants' error pages can be large).
async fn read_prefix(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(MAX_ERROR_BODY);
    // Kept as `last_error` text: PostgreSQL stores no NUL.
    String::from_utf8_lossy(&buf).replace('\0', "\u{FFFD}")
}
