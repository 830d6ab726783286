//! The coordinator's two-phase messages against an HTTP consumer and a
//! producer's back-check endpoint over real HTTP, both scripted and
//! recording every call.

use crate::support::{eventually, fast_settings, spawn_coordinator, wait_status, TestDb};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_sdk::wire::{
    BranchStatus, CallbackAction, CallbackRequest, CheckOutcome, CheckReply, CheckRequest, DeliveryOrder,
    DeliveryRequest, ErrorCode, GlobalStatus, MessageRequest, Mode, RollbackReason, Transaction, MESSAGE_ID_HEADER,
};
use tandem_sdk::{ClientError, TandemClient};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const WAIT: Duration = Duration::from_secs(20);

/// One delivery an [`Endpoint`] received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The delivery's name (the URL's last segment).
    pub name: String,
    /// The callback.
    pub callback: CallbackRequest,
    /// Its `Tandem-Message-Id` header.
    pub message_id: Option<String>,
    /// The status answered.
    pub status: u16,
}

/// What an [`Endpoint`] does.
#[derive(Default)]
pub struct Script {
    /// Per delivery name: answer 503 this many more times.
    pub transient: HashMap<String, usize>,
    /// Per delivery name: answer 409.
    pub refuse: Vec<String>,
    /// Hold deliveries until released.
    pub hold: bool,
    /// The back-check's answers, in order (the last one repeats); empty: 503.
    pub checks: VecDeque<CheckOutcome>,
}

/// A consumer (`POST /deliver/{name}`) and a producer's back-check
/// (`POST /check`) on one port, recording everything.
#[derive(Clone)]
pub struct Endpoint {
    /// Base URL.
    pub base: String,
    /// Deliveries answered, in order of answer.
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Back-checks received.
    pub checks: Arc<Mutex<Vec<CheckRequest>>>,
    /// Deliveries that arrived (answered or still held).
    pub arrived: Arc<std::sync::atomic::AtomicUsize>,
    /// Behaviour.
    pub script: Arc<Mutex<Script>>,
    changed: watch::Sender<u64>,
}

impl Endpoint {
    pub async fn start() -> Endpoint {
        Endpoint::on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn on(listener: TcpListener) -> Endpoint {
        let (changed, _) = watch::channel(0);
        let e = Endpoint {
            base: format!("http://{}", listener.local_addr().unwrap()),
            received: Arc::default(),
            checks: Arc::default(),
            arrived: Arc::default(),
            script: Arc::default(),
            changed,
        };
        let app = axum::Router::new()
            .route("/deliver/{name}", axum::routing::post(deliver))
            .route("/check", axum::routing::post(check))
            .with_state(e.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        e
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/deliver/{name}", self.base)
    }

    pub fn check_url(&self) -> String {
        format!("{}/check", self.base)
    }

    pub fn edit(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
        self.changed.send_modify(|v| *v += 1);
    }

    /// Deliveries answered 2xx, by name.
    pub fn acknowledged(&self, name: &str) -> Vec<Received> {
        self.received.lock().unwrap().iter().filter(|r| r.name == name && r.status == 200).cloned().collect()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

async fn deliver(
    State(e): State<Endpoint>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(callback): Json<CallbackRequest>,
) -> StatusCode {
    e.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut rx = e.changed.subscribe();
    while e.script.lock().unwrap().hold {
        if rx.changed().await.is_err() {
            break;
        }
    }
    let status = {
        let mut s = e.script.lock().unwrap();
        if s.refuse.contains(&name) {
            StatusCode::CONFLICT
        } else if let Some(n) = s.transient.get_mut(&name).filter(|n| **n > 0) {
            *n -= 1;
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    };
    let message_id = headers.get(MESSAGE_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    e.received.lock().unwrap().push(Received { name, callback, message_id, status: status.as_u16() });
    status
}

async fn check(State(e): State<Endpoint>, Json(req): Json<CheckRequest>) -> Result<Json<CheckReply>, StatusCode> {
    e.checks.lock().unwrap().push(req);
    let mut s = e.script.lock().unwrap();
    let outcome = if s.checks.len() > 1 { s.checks.pop_front() } else { s.checks.front().copied() };
    outcome.map(|outcome| Json(CheckReply { outcome })).ok_or(StatusCode::SERVICE_UNAVAILABLE)
}

pub fn http(name: &str, url: String, payload: serde_json::Value) -> DeliveryRequest {
    DeliveryRequest { name: Some(name.into()), url: Some(url), destination: None, payload: Some(payload) }
}

pub fn message(check_url: String, deliveries: Vec<DeliveryRequest>) -> MessageRequest {
    MessageRequest { name: Some("order-placed".into()), timeout_ms: None, check_url, order: None, deliveries }
}

async fn setup(tag: &str) -> (TestDb, tandem_coordinator::RunningCoordinator, TandemClient, Endpoint) {
    let db = TestDb::new(tag).await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    (db, c, client, Endpoint::start().await)
}

#[tokio::test]
async fn a_submitted_message_is_delivered_once_to_every_endpoint() {
    let (_db, _c, client, e) = setup("msg_submit").await;
    let req = message(
        e.check_url(),
        vec![
            http("shipping", e.url("shipping"), serde_json::json!({"order": 7})),
            http("mail", e.url("mail"), serde_json::json!({})),
        ],
    );
    let prepared = client.prepare_message(&req, None).await.unwrap();
    assert_eq!(prepared.status, GlobalStatus::Prepared);
    assert_eq!(prepared.mode, Mode::Msg);
    let info = prepared.message.clone().expect("message info");
    assert_eq!(info.check_url, e.check_url());
    assert_eq!(info.order, DeliveryOrder::Concurrent);
    assert_eq!(e.count(), 0, "nothing is delivered before the submit");

    let done = client.submit_message(&prepared.xid, Some(WAIT)).await.unwrap();
    assert!(done.finished);
    assert_eq!(done.transaction.status, GlobalStatus::Delivered);
    assert!(done.transaction.branches.iter().all(|b| b.status == BranchStatus::Committed));
    let shipping = e.acknowledged("shipping");
    assert_eq!(shipping.len(), 1);
    let cb = &shipping[0].callback;
    assert_eq!((cb.action, cb.mode, &cb.xid), (CallbackAction::Deliver, Mode::Msg, &prepared.xid));
    assert_eq!(cb.payload, Some(serde_json::json!({"order": 7})));
    assert_eq!(shipping[0].message_id, Some(format!("{}/{}", prepared.xid, cb.branch_id)));
    assert_eq!(e.acknowledged("mail").len(), 1);
    assert!(e.checks.lock().unwrap().is_empty(), "a submitted message is not back-checked");
    // A repeated submit answers the end again; a later abort is refused.
    let again = client.submit_message(&prepared.xid, Some(WAIT)).await.unwrap();
    assert_eq!(again.transaction.status, GlobalStatus::Delivered);
    let abort = client.abort_message(&prepared.xid, None).await.unwrap_err();
    assert_eq!(abort.code(), Some(ErrorCode::InvalidState));
    assert_eq!(e.count(), 2);
}

#[tokio::test]
async fn an_aborted_message_delivers_nothing() {
    let (_db, _c, client, e) = setup("msg_abort").await;
    let prepared = client
        .prepare_message(&message(e.check_url(), vec![http("a", e.url("a"), serde_json::json!({}))]), None)
        .await
        .unwrap();
    let done = client.abort_message(&prepared.xid, Some(WAIT)).await.unwrap();
    assert_eq!(done.transaction.status, GlobalStatus::RolledBack);
    assert_eq!(done.transaction.rollback_reason, Some(RollbackReason::Requested));
    assert_eq!(done.transaction.branches[0].status, BranchStatus::Skipped);
    let submit = client.submit_message(&prepared.xid, None).await.unwrap_err();
    assert_eq!(submit.code(), Some(ErrorCode::InvalidState));
    assert_eq!(e.count(), 0);
}

#[tokio::test]
async fn in_order_deliveries_wait_for_the_one_before_and_transient_failures_are_retried() {
    let (_db, _c, client, e) = setup("msg_order").await;
    e.edit(|s| {
        s.transient.insert("first".into(), 2);
    });
    let mut req = message(
        e.check_url(),
        vec![
            http("first", e.url("first"), serde_json::json!(1)),
            http("second", e.url("second"), serde_json::json!(2)),
            http("third", e.url("third"), serde_json::json!(3)),
        ],
    );
    req.order = Some(DeliveryOrder::InOrder);
    let prepared = client.prepare_message(&req, None).await.unwrap();
    assert_eq!(prepared.message.as_ref().map(|m| m.order), Some(DeliveryOrder::InOrder));
    client.submit_message(&prepared.xid, Some(Duration::ZERO)).await.unwrap();
    let t = wait_status(&client, &prepared.xid, "delivered", WAIT).await;
    let received = e.received.lock().unwrap().clone();
    let names: Vec<(&str, u16)> = received.iter().map(|r| (r.name.as_str(), r.status)).collect();
    assert_eq!(names, vec![("first", 503), ("first", 503), ("first", 200), ("second", 200), ("third", 200)]);
    assert_eq!(t.branches[0].attempts, 3);
    assert!(t.branches[0].last_error.as_deref().is_some_and(|e| e.starts_with("503")));
}

#[tokio::test]
async fn concurrent_deliveries_go_out_at_once_and_a_consumer_down_then_up_gets_its_message() {
    let db = TestDb::new("msg_down").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let e = Endpoint::start().await;
    // The second consumer's port, with nobody listening yet.
    let later = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let later_addr = later.local_addr().unwrap();
    drop(later);
    let later_url = format!("http://{later_addr}/deliver/late");
    e.edit(|s| s.hold = true);
    let req = message(
        e.check_url(),
        vec![
            http("x", e.url("x"), serde_json::json!({})),
            http("late", later_url, serde_json::json!({"n": 1})),
            http("y", e.url("y"), serde_json::json!({})),
        ],
    );
    let prepared = client.prepare_message(&req, None).await.unwrap();
    client.submit_message(&prepared.xid, Some(Duration::ZERO)).await.unwrap();
    // Both held deliveries arrive together: nothing waits for the other.
    eventually("x and y delivered while the consumer holds them", WAIT, || async {
        let t = client.get(&prepared.xid).await.ok()?;
        (t.branches[1].attempts >= 2).then_some(())
    })
    .await;
    e.edit(|s| s.hold = false);
    eventually("x and y acknowledged", WAIT, || async {
        (e.acknowledged("x").len() == 1 && e.acknowledged("y").len() == 1).then_some(())
    })
    .await;
    let t = client.get(&prepared.xid).await.unwrap();
    assert_eq!(t.status, GlobalStatus::Delivering, "the unreachable consumer keeps it delivering");
    assert!(t.branches[1].last_error.as_deref().is_some_and(|e| e.contains("request failed")), "{t:?}");
    // The consumer comes up on its port.
    let late = Endpoint::on(TcpListener::bind(later_addr).await.unwrap()).await;
    let t = wait_status(&client, &prepared.xid, "delivered", WAIT).await;
    assert_eq!(late.acknowledged("late").len(), 1);
    assert_eq!(late.acknowledged("late")[0].callback.payload, Some(serde_json::json!({"n": 1})));
    assert_eq!(e.acknowledged("x").len() + e.acknowledged("y").len(), 2, "acknowledged deliveries are not repeated");
    assert_eq!(t.branches.iter().filter(|b| b.status == BranchStatus::Committed).count(), 3);
}

#[tokio::test]
async fn a_delivery_refused_for_good_ends_the_message_commit_failed() {
    let (_db, _c, client, e) = setup("msg_refused").await;
    e.edit(|s| s.refuse.push("bad".into()));
    let req = message(
        e.check_url(),
        vec![http("good", e.url("good"), serde_json::json!({})), http("bad", e.url("bad"), serde_json::json!({}))],
    );
    let prepared = client.prepare_message(&req, None).await.unwrap();
    let done = client.submit_message(&prepared.xid, Some(WAIT)).await.unwrap();
    assert_eq!(done.transaction.status, GlobalStatus::CommitFailed);
    assert_eq!(done.transaction.branches[1].status, BranchStatus::CommitFailed);
    assert_eq!(done.transaction.branches[0].status, BranchStatus::Committed);
}

/// A message left prepared past its timeout, back-checked: `outcomes` are
/// the producer's answers in order.
struct Checked {
    e: Endpoint,
    prepared: Transaction,
    client: TandemClient,
    _c: tandem_coordinator::RunningCoordinator,
    _db: TestDb,
}

async fn back_checked(tag: &str, outcomes: &[CheckOutcome]) -> Checked {
    let db = TestDb::new(tag).await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let e = Endpoint::start().await;
    e.edit(|s| s.checks = outcomes.iter().copied().collect());
    let mut req = message(e.check_url(), vec![http("a", e.url("a"), serde_json::json!({"k": 1}))]);
    req.timeout_ms = Some(200);
    let prepared = client.prepare_message(&req, None).await.unwrap();
    Checked { e, prepared, client, _c: c, _db: db }
}

#[tokio::test]
async fn the_back_check_delivers_a_message_whose_producer_committed_and_asks_again_while_unknown() {
    let Checked { e, prepared, client, .. } =
        &back_checked("msg_check_commit", &[CheckOutcome::Unknown, CheckOutcome::Unknown, CheckOutcome::Committed])
            .await;
    let t = wait_status(client, &prepared.xid, "delivered", WAIT).await;
    let checks = e.checks.lock().unwrap().clone();
    assert_eq!(checks.len(), 3, "asked until it knew");
    assert!(checks.iter().all(|c| c.xid == prepared.xid && c.action == CallbackAction::Check && c.mode == Mode::Msg));
    assert_eq!(checks[0].name.as_deref(), Some("order-placed"));
    assert_eq!(t.message.as_ref().map(|m| m.checks), Some(2), "two back-checks did not decide");
    assert_eq!(e.acknowledged("a").len(), 1);
}

#[tokio::test]
async fn the_back_check_drops_a_message_whose_producer_rolled_back() {
    let Checked { e, prepared, client, .. } = &back_checked("msg_check_rb", &[CheckOutcome::RolledBack]).await;
    let t = wait_status(client, &prepared.xid, "rolled_back", WAIT).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::BackCheck));
    assert_eq!(t.branches[0].status, BranchStatus::Skipped);
    assert_eq!(e.count(), 0);
    // A submit that comes after is refused with the state.
    let late = client.submit_message(&prepared.xid, None).await.unwrap_err();
    let ClientError::Problem(problem) = &late else { panic!("{late:?}") };
    assert_eq!(problem.code, ErrorCode::InvalidState);
    assert!(problem.detail.contains("back-check"), "{}", problem.detail);
}

#[tokio::test]
async fn a_producer_that_does_not_answer_is_asked_again_and_a_late_submit_still_wins() {
    // No answers scripted: every back-check gets a 503.
    let Checked { e, prepared, client, .. } = &back_checked("msg_check_none", &[]).await;
    eventually("back-checked twice", WAIT, || async { (e.checks.lock().unwrap().len() >= 2).then_some(()) }).await;
    let t = client.get(&prepared.xid).await.unwrap();
    assert_eq!(t.status, GlobalStatus::Prepared);
    // The producer's transaction committed after all: its submit is taken
    // although the deadline has passed.
    let done = client.submit_message(&prepared.xid, Some(WAIT)).await.unwrap();
    assert_eq!(done.transaction.status, GlobalStatus::Delivered);
    assert_eq!(e.acknowledged("a").len(), 1);
}

#[tokio::test]
async fn repeated_prepares_with_one_idempotency_key_are_one_message() {
    let (db, _c, client, e) = setup("msg_idem").await;
    let req = message(e.check_url(), vec![http("a", e.url("a"), serde_json::json!({}))]);
    let first = client.prepare_message(&req, Some("order-7")).await.unwrap();
    let second = client.prepare_message(&req, Some("order-7")).await.unwrap();
    assert_eq!(first.xid, second.xid);
    let mut other = req.clone();
    other.deliveries[0].payload = Some(serde_json::json!({"different": true}));
    let reused = client.prepare_message(&other, Some("order-7")).await.unwrap_err();
    assert_eq!(reused.code(), Some(ErrorCode::IdempotencyKeyReused));
    let pool = db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM global_transactions").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_message_is_not_begun_committed_or_registered_like_a_transaction() {
    let (_db, _c, client, e) = setup("msg_misuse").await;
    let begin = client
        .begin(&tandem_sdk::wire::BeginRequest { mode: Mode::Msg, name: None, timeout_ms: None, three_phase: None })
        .await
        .unwrap_err();
    assert_eq!(begin.status(), Some(422));
    assert!(begin.to_string().contains("POST /v1/messages"), "{begin}");
    let prepared = client
        .prepare_message(&message(e.check_url(), vec![http("a", e.url("a"), serde_json::json!({}))]), None)
        .await
        .unwrap();
    let reg = client
        .register(
            &prepared.xid,
            &tandem_sdk::wire::RegisterBranchRequest {
                resource: "x".into(),
                callback_url: e.url("x"),
                payload: None,
                lock_keys: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(reg.code(), Some(ErrorCode::InvalidState));
    // A TCC transaction is not a message.
    let tcc = client
        .begin(&tandem_sdk::wire::BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: None, three_phase: None })
        .await
        .unwrap();
    let not_msg = client.submit_message(&tcc.xid, None).await.unwrap_err();
    assert_eq!(not_msg.code(), Some(ErrorCode::TransactionNotFound));
    assert_eq!(client.get(&tcc.xid).await.unwrap().status, GlobalStatus::Active);
    // The generic commit submits a message too.
    let done = client.commit(&prepared.xid, Some(WAIT)).await.unwrap();
    assert_eq!(done.transaction.status, GlobalStatus::Delivered);
}
