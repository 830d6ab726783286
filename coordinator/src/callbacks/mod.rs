//! Everything the coordinator sends out: callbacks to participants over
//! HTTP, a message's back-check, and a message's deliveries to configured
//! broker destinations (published through `tandem-brokers`, done once the
//! broker confirmed them).
//!
//! Every HTTP request goes only where the allow-list permits ([`allow`]),
//! checked at registration, before the call, and on the resolved address;
//! and carries a `Tandem-Signature` (`tandem_wire::signature`) when a
//! signing key is configured.

pub mod allow;
pub mod dtm;

use crate::dtm::DtmOptions;
use crate::events::EventLog;
use crate::metrics::Metrics;
use crate::store::{BranchRow, TxRow};
use crate::transaction::state::{classify_http, CallbackResult};
use allow::{AllowList, PolicyResolver, Refused};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_brokers::{Brokers, Outgoing};
use tandem_wire::signature::{SigningKey, SIGNATURE_HEADER};
use tandem_wire::{
    message_id, AttemptOutcome, BranchId, CallbackAction, CallbackRequest, CheckOutcome, CheckReply, CheckRequest,
    EventKind, TimelineEvent, MAX_EVENT_ERROR_BYTES, MESSAGE_ID_HEADER, XID_HEADER,
};

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
    /// The configured broker destinations of message deliveries.
    brokers: Brokers,
    /// Where every attempt is recorded (the timeline).
    events: EventLog,
    /// Where requests may go.
    allow: Arc<AllowList>,
    /// The key callbacks are signed with (none: unsigned, only allowed
    /// without authentication).
    signing: Option<SigningKey>,
}

/// How the coordinator calls out.
#[derive(Debug, Clone)]
pub struct CallbackConfig {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Where requests may go.
    pub allow: AllowList,
    /// The signing key of callbacks.
    pub signing: Option<SigningKey>,
    /// Certificate authorities trusted for `https` callbacks besides the
    /// public (webpki) roots.
    pub roots: Vec<reqwest::Certificate>,
}

impl CallbackClient {
    /// A client calling out as `config` says, publishing message deliveries
    /// through `brokers`.
    pub fn new(
        config: CallbackConfig,
        metrics: Metrics,
        brokers: Brokers,
        events: EventLog,
    ) -> Result<Self, reqwest::Error> {
        let allow = Arc::new(config.allow);
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(2)))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // A participant must not send the coordinator elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // Environment proxies would hide the real destination from the resolver's check.
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver::new(allow.clone())));
        for root in config.roots {
            builder = builder.add_root_certificate(root);
        }
        let http = builder.build()?;
        Ok(CallbackClient { http, metrics, brokers, events, allow, signing: config.signing })
    }

    /// Whether the coordinator may call `url` (registration and call time).
    pub fn allowed(&self, url: &str) -> Result<(), Refused> {
        self.allow.check_url(url)
    }

    /// A POST of `body` about `xid` to `url`: the body serialized once,
    /// signed when a key is configured.
    fn post(&self, url: &str, xid: &str, body: &impl serde::Serialize) -> Result<reqwest::RequestBuilder, String> {
        self.allowed(url).map_err(|e| format!("not called: {e}"))?;
        let bytes = serde_json::to_vec(body).map_err(|e| format!("body not serializable: {e}"))?;
        let mut request =
            self.http.post(url).header(XID_HEADER, xid).header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.signing {
            request = request.header(SIGNATURE_HEADER, key.sign(Utc::now().timestamp(), xid, &bytes));
        }
        Ok(request.body(bytes))
    }

    /// Whether `name` is a configured broker destination.
    pub fn has_destination(&self, name: &str) -> bool {
        self.brokers.contains(name)
    }

    /// The configured broker destinations' names.
    pub fn destinations(&self) -> Vec<&str> {
        self.brokers.names()
    }

    /// Back-checks a prepared message at its producer's `check_url`: the
    /// outcome it answered (200 with a [`CheckReply`]; 409 counts as
    /// `rolled_back`, as a definitive no does everywhere in the contract),
    /// or why there is none.
    pub async fn check(&self, tx: &TxRow) -> Result<CheckOutcome, String> {
        let Some(url) = tx.check_url.as_deref() else {
            return Err("the message has no check_url".into());
        };
        if let Some(options) = &tx.dtm {
            return self.check_dtm(tx, url, options).await;
        }
        let body =
            CheckRequest { xid: tx.xid.clone(), mode: tx.mode, action: CallbackAction::Check, name: tx.name.clone() };
        let (started, at) = (Instant::now(), Utc::now());
        let request = self.post(url, tx.xid.as_str(), &body)?;
        let (result, http_status) = match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let result = match status {
                    200 => match resp.json::<CheckReply>().await {
                        Ok(reply) => Ok(reply.outcome),
                        Err(e) => Err(format!("200 without a check reply: {e}")),
                    },
                    409 => Ok(CheckOutcome::RolledBack),
                    _ => Err(format!("{status}: {}", read_prefix(resp).await)),
                };
                (result, Some(status))
            }
            Err(e) if e.is_timeout() => (Err(format!("no answer within the callback timeout: {e}")), None),
            Err(e) => (Err(format!("request failed: {}", chain(&e))), None),
        };
        let attempt = Attempt { branch_id: None, action: CallbackAction::Check, at, started, http_status };
        self.checked(tx, attempt, &result);
        result
    }

    /// Publishes a message delivery to its broker destination: done once the
    /// broker confirmed it; anything else is retried (a broker down, a
    /// refusal, a destination no longer configured).
    async fn publish(&self, tx: &TxRow, branch: &BranchRow, destination: &str) -> CallbackResult {
        let id = message_id(&tx.xid, &branch.branch_id);
        let payload = match serde_json::to_vec(&branch.payload.clone().unwrap_or(serde_json::Value::Null)) {
            Ok(p) => p,
            Err(e) => return CallbackResult::Unknown(format!("payload not serializable: {e}")),
        };
        let headers = [
            (XID_HEADER, tx.xid.as_str()),
            ("Tandem-Branch-Id", branch.branch_id.as_str()),
            ("Tandem-Resource", branch.resource.as_str()),
        ];
        let msg = Outgoing { message_id: &id, payload: &payload, headers: &headers };
        match self.brokers.publish(destination, &msg).await {
            Ok(()) => CallbackResult::Done,
            Err(e) => CallbackResult::Unknown(format!("publish to {destination}: {e}")),
        }
    }

    fn observe(&self, action: CallbackAction, outcome: &str, started: Instant) {
        self.metrics
            .callback_seconds
            .with_label_values(&[action.as_str(), outcome])
            .observe(started.elapsed().as_secs_f64());
        if outcome != "done" {
            self.metrics.callback_failures.with_label_values(&[action.as_str(), outcome]).inc();
        }
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
        let (started, at) = (Instant::now(), Utc::now());
        if let Some(destination) = branch.destination.as_deref() {
            let result = self.publish(tx, branch, destination).await;
            let attempt = Attempt { branch_id: Some(&branch.branch_id), action, at, started, http_status: None };
            self.finished(tx, attempt, &result);
            return result;
        }
        if let Some(options) = &tx.dtm {
            return self.send_dtm(tx, branch, url, action, options, timeout).await;
        }
        let body = CallbackRequest {
            xid: tx.xid.clone(),
            branch_id: branch.branch_id.clone(),
            mode: tx.mode,
            action,
            resource: branch.resource.clone(),
            payload: branch.payload.clone(),
            three_phase: tx.three_phase,
        };
        let mut request = match self.post(url, tx.xid.as_str(), &body) {
            Ok(r) => r,
            Err(e) => {
                let result = CallbackResult::Unknown(e);
                let attempt = Attempt { branch_id: Some(&branch.branch_id), action, at, started, http_status: None };
                self.finished(tx, attempt, &result);
                return result;
            }
        };
        if action == CallbackAction::Deliver {
            request = request.header(MESSAGE_ID_HEADER, message_id(&tx.xid, &branch.branch_id));
        }
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let mut http_status = None;
        let result = match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                http_status = Some(status);
                let text = if (200..300).contains(&status) { String::new() } else { read_prefix(resp).await };
                classify_http(status, &text)
            }
            Err(e) if e.is_timeout() => CallbackResult::Unknown(format!("no answer within the callback timeout: {e}")),
            Err(e) => CallbackResult::Unknown(format!("request failed: {}", chain(&e))),
        };
        let attempt = Attempt { branch_id: Some(&branch.branch_id), action, at, started, http_status };
        self.finished(tx, attempt, &result);
        result
    }

    /// A DTM request to `url` (see [`dtm`]): its query parameters, headers
    /// and signature; `None` body: a GET.
    fn dtm_request(
        &self,
        tx: &TxRow,
        url: &str,
        params: [(&str, &str); 4],
        body: Option<Vec<u8>>,
        options: &DtmOptions,
    ) -> Result<reqwest::RequestBuilder, String> {
        self.allowed(url).map_err(|e| format!("not called: {e}"))?;
        let bytes = body.as_deref().unwrap_or_default();
        let mut request = match &body {
            Some(_) => self.http.post(url),
            None => self.http.get(url),
        };
        request = request
            .query(&params)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(XID_HEADER, tx.xid.as_str());
        for (name, value) in &options.branch_headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(key) = &self.signing {
            request = request.header(SIGNATURE_HEADER, key.sign(Utc::now().timestamp(), tx.xid.as_str(), bytes));
        }
        if options.request_timeout > 0 {
            request = request.timeout(Duration::from_secs(options.request_timeout));
        }
        Ok(match body {
            Some(b) => request.body(b),
            None => request,
        })
    }

    /// Calls a branch of a DTM transaction the way DTM does ([`dtm`]).
    async fn send_dtm(
        &self,
        tx: &TxRow,
        branch: &BranchRow,
        url: &str,
        action: CallbackAction,
        options: &DtmOptions,
        timeout: Option<Duration>,
    ) -> CallbackResult {
        let (started, at) = (Instant::now(), Utc::now());
        // A TCC branch's confirm has its own URL; its callback URL is the cancel.
        let url = match (action, branch.action_url.as_deref()) {
            (CallbackAction::Commit, Some(confirm)) => confirm,
            _ => url,
        };
        let mut http_status = None;
        let result = if url.is_empty() {
            CallbackResult::Done
        } else {
            let payload = crate::dtm::view::payload_text(branch.payload.as_ref());
            let body = dtm::is_post(tx.mode, &payload).then(|| payload.into_bytes());
            let params = [
                ("gid", tx.xid.as_str()),
                ("trans_type", crate::dtm::view::trans_type_name(tx.mode)),
                ("branch_id", branch.branch_id.as_str()),
                ("op", dtm::op(tx.mode, action)),
            ];
            match self.dtm_request(tx, url, params, body, options) {
                Err(e) => CallbackResult::Unknown(e),
                Ok(mut request) => {
                    if let Some(t) = timeout {
                        request = request.timeout(t);
                    }
                    match request.send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            http_status = Some(status);
                            dtm::classify(status, &read_prefix(resp).await)
                        }
                        Err(e) if e.is_timeout() => {
                            CallbackResult::Unknown(format!("no answer within the callback timeout: {e}"))
                        }
                        Err(e) => CallbackResult::Unknown(format!("request failed: {}", chain(&e))),
                    }
                }
            }
        };
        let attempt = Attempt { branch_id: Some(&branch.branch_id), action, at, started, http_status };
        self.finished(tx, attempt, &result);
        result
    }

    /// Back-checks a DTM message: `GET query_prepared?…&branch_id=00&op=msg`.
    async fn check_dtm(&self, tx: &TxRow, url: &str, options: &DtmOptions) -> Result<CheckOutcome, String> {
        if url.is_empty() {
            // DTM's rule: a msg without query_prepared counts as committed.
            return Ok(CheckOutcome::Committed);
        }
        let (started, at) = (Instant::now(), Utc::now());
        let params = [
            ("gid", tx.xid.as_str()),
            ("trans_type", "msg"),
            ("branch_id", crate::dtm::plan::CHECK_BRANCH_ID),
            ("op", dtm::op(tx.mode, CallbackAction::Check)),
        ];
        let (result, http_status) = match self.dtm_request(tx, url, params, None, options) {
            Err(e) => (Err(e), None),
            Ok(request) => match request.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    (dtm::check_outcome(status, &read_prefix(resp).await), Some(status))
                }
                Err(e) if e.is_timeout() => (Err(format!("no answer within the callback timeout: {e}")), None),
                Err(e) => (Err(format!("request failed: {}", chain(&e))), None),
            },
        };
        let attempt = Attempt { branch_id: None, action: CallbackAction::Check, at, started, http_status };
        self.checked(tx, attempt, &result);
        result
    }

    /// Times and records a back-check's answer.
    fn checked(&self, tx: &TxRow, attempt: Attempt<'_>, result: &Result<CheckOutcome, String>) {
        let (outcome, error) = match result {
            Ok(CheckOutcome::Unknown) => (AttemptOutcome::Unknown, Some("the producer does not know yet".to_owned())),
            Err(e) => (AttemptOutcome::Unknown, Some(e.clone())),
            Ok(o) => (AttemptOutcome::Done, Some(format!("the producer answered {o:?}"))),
        };
        self.observe(CallbackAction::Check, outcome.as_str(), attempt.started);
        self.attempted(tx, attempt, outcome, error);
    }

    /// Times and records a callback's result.
    fn finished(&self, tx: &TxRow, attempt: Attempt<'_>, result: &CallbackResult) {
        let (outcome, error) = match result {
            CallbackResult::Done => (AttemptOutcome::Done, None),
            CallbackResult::Refused(e) => (AttemptOutcome::Refused, Some(e)),
            CallbackResult::HeuristicCommit(e) => (AttemptOutcome::Heuristic, Some(e)),
            CallbackResult::Unknown(e) => (AttemptOutcome::Unknown, Some(e)),
        };
        self.observe(attempt.action, outcome.as_str(), attempt.started);
        self.attempted(tx, attempt, outcome, error.map(|e| truncated(e, MAX_EVENT_ERROR_BYTES)));
    }

    /// Records one attempt in the event log.
    fn attempted(&self, tx: &TxRow, attempt: Attempt<'_>, outcome: AttemptOutcome, error: Option<String>) {
        let mut event = TimelineEvent::new(attempt.at, EventKind::Attempt);
        event.branch_id = attempt.branch_id.map(|b| b.as_str().to_owned());
        event.action = Some(attempt.action);
        event.outcome = Some(outcome);
        event.http_status = attempt.http_status;
        event.latency_us = Some(u64::try_from(attempt.started.elapsed().as_micros()).unwrap_or(u64::MAX));
        event.detail = error;
        self.events.record(&tx.xid, event);
    }
}

/// One callback being made, for its record.
struct Attempt<'a> {
    /// The branch called (none: a message's back-check).
    branch_id: Option<&'a BranchId>,
    /// What was asked.
    action: CallbackAction,
    /// When it was sent (wall clock, for the timeline).
    at: DateTime<Utc>,
    /// When it was sent (monotonic, for its latency).
    started: Instant,
    /// The participant's HTTP status, if it answered.
    http_status: Option<u16>,
}

/// An error with its causes (reqwest's own message omits them: why a
/// connection failed, or an address the allow-list refused).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
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
