//! The coordinator's saga engine, against participants over real HTTP that
//! record every call and can be told to fail, delay or hold one.

use crate::support::{eventually, fast_settings, spawn_coordinator, wait_status, TestDb};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_sdk::wire::{
    ActionStatus, BeginRequest, CallbackRequest, CompensationStatus, ErrorCode, GlobalStatus, Mode,
    RegisterBranchRequest, RollbackReason, SagaRequest, SagaStepRequest, Transaction,
};
use tandem_sdk::{ClientError, TandemClient};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const WAIT: Duration = Duration::from_secs(20);

/// One call a [`Steps`] participant received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `step/op`, e.g. `s1/action`.
    pub key: String,
    /// When it arrived.
    pub start: Instant,
    /// When it was answered.
    pub end: Instant,
    /// The status answered.
    pub status: u16,
}

/// What a [`Steps`] participant does, per `step/op`.
#[derive(Default)]
pub struct Script {
    /// Answer 409.
    pub refuse: HashSet<String>,
    /// Answer 503 this many more times.
    pub transient: HashMap<String, usize>,
    /// Answer after this long.
    pub delay: HashMap<String, Duration>,
    /// Wait until released.
    pub hold: HashSet<String>,
}

/// A participant serving `POST /{step}/{op}` for any step, recording calls;
/// an effect is applied once per (xid, step, op) however often it is delivered.
#[derive(Clone)]
pub struct Steps {
    /// Base URL.
    pub base: String,
    /// Calls answered, in order of answer.
    pub calls: Arc<Mutex<Vec<Call>>>,
    /// Calls that arrived (`step/op`), in order of arrival.
    pub arrived: Arc<Mutex<Vec<String>>>,
    /// Effects applied: (xid, `step/op`).
    pub effects: Arc<Mutex<HashSet<(String, String)>>>,
    /// Behaviour.
    pub script: Arc<Mutex<Script>>,
    /// Bumped when the script changes, for held calls.
    changed: watch::Sender<u64>,
}

impl Steps {
    /// Starts one on a free port.
    pub async fn start() -> Steps {
        Steps::on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    /// Starts one on `listener`.
    pub async fn on(listener: TcpListener) -> Steps {
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (changed, _) = watch::channel(0);
        let s = Steps {
            base,
            calls: Arc::default(),
            arrived: Arc::default(),
            effects: Arc::default(),
            script: Arc::default(),
            changed,
        };
        let app = axum::Router::new().route("/{step}/{op}", axum::routing::post(handle)).with_state(s.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        s
    }

    /// A step calling this participant.
    pub fn step(&self, name: &str) -> SagaStepRequest {
        SagaStepRequest {
            name: Some(name.into()),
            action_url: format!("{}/{name}/action", self.base),
            compensate_url: format!("{}/{name}/compensate", self.base),
            payload: Some(serde_json::json!({ "step": name })),
            after: None,
        }
    }

    /// Changes the script.
    pub fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Keys of the calls answered 2xx, in order of answer.
    pub fn done(&self) -> Vec<String> {
        self.calls.lock().unwrap().iter().filter(|c| c.status < 300).map(|c| c.key.clone()).collect()
    }

    /// The answered calls of `key`.
    pub fn calls_of(&self, key: &str) -> Vec<Call> {
        self.calls.lock().unwrap().iter().filter(|c| c.key == key).cloned().collect()
    }

    /// Effects applied for `key` in any saga.
    pub fn effects_of(&self, key: &str) -> usize {
        self.effects.lock().unwrap().iter().filter(|(_, k)| k == key).count()
    }

    /// Waits until a call of `key` has arrived.
    pub async fn arrived_at(&self, key: &str) {
        eventually(&format!("a call of {key}"), WAIT, || async {
            self.arrived.lock().unwrap().iter().any(|k| k == key).then_some(())
        })
        .await
    }
}

async fn handle(
    State(s): State<Steps>,
    Path((step, op)): Path<(String, String)>,
    Json(cb): Json<CallbackRequest>,
) -> (StatusCode, String) {
    let key = format!("{step}/{op}");
    let start = Instant::now();
    s.arrived.lock().unwrap().push(key.clone());
    assert_eq!(cb.action.as_str(), op, "the callback's action names the URL it was sent to");
    let mut rx = s.changed.subscribe();
    while s.script.lock().unwrap().hold.contains(&key) {
        let _ = rx.changed().await;
    }
    let delay = s.script.lock().unwrap().delay.get(&key).copied();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let status = {
        let mut script = s.script.lock().unwrap();
        if let Some(n) = script.transient.get_mut(&key).filter(|n| **n > 0) {
            *n -= 1;
            StatusCode::SERVICE_UNAVAILABLE
        } else if script.refuse.contains(&key) {
            StatusCode::CONFLICT
        } else {
            s.effects.lock().unwrap().insert((cb.xid.to_string(), key.clone()));
            StatusCode::OK
        }
    };
    s.calls.lock().unwrap().push(Call { key, start, end: Instant::now(), status: status.as_u16() });
    let body = if status == StatusCode::OK { r#"{"outcome":"applied"}"# } else { r#"{"detail":"scripted"}"# };
    (status, body.into())
}

/// A saga of `steps`.
pub fn saga(steps: Vec<SagaStepRequest>) -> SagaRequest {
    SagaRequest { name: Some("test-saga".into()), timeout_ms: None, retry_limit: None, steps }
}

/// Submits and waits for the end; a compensated saga's transaction from its 409.
pub async fn run(client: &TandemClient, req: &SagaRequest) -> Transaction {
    match client.submit_saga(req, Some(WAIT), None).await {
        Ok(d) => {
            assert!(d.finished, "ended within the wait");
            d.transaction
        }
        Err(ClientError::Problem(p)) if p.status == 409 => {
            let t = *p.transaction.clone().expect("the 409 carries the transaction");
            assert!(t.status.is_terminal(), "ended within the wait: {:?}", t.status);
            t
        }
        Err(e) => panic!("submit failed: {e}"),
    }
}

fn actions(t: &Transaction) -> Vec<ActionStatus> {
    t.branches.iter().map(|b| b.saga.as_ref().unwrap().action.status).collect()
}

fn compensations(t: &Transaction) -> Vec<CompensationStatus> {
    t.branches.iter().map(|b| b.saga.as_ref().unwrap().compensation.status).collect()
}

#[tokio::test]
async fn happy_path_runs_the_actions_in_order() {
    let db = TestDb::new("saga_happy").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Steps::start().await;
    let t = run(&client, &saga(vec![p.step("s0"), p.step("s1"), p.step("s2")])).await;
    assert_eq!(t.status, GlobalStatus::Committed);
    assert_eq!(t.mode, Mode::Saga);
    assert_eq!(p.done(), ["s0/action", "s1/action", "s2/action"]);
    let calls = p.calls.lock().unwrap().clone();
    for pair in calls.windows(2) {
        assert!(pair[1].start >= pair[0].end, "{} started before {} ended", pair[1].key, pair[0].key);
    }
    assert_eq!(actions(&t), [ActionStatus::Succeeded; 3]);
    assert_eq!(compensations(&t), [CompensationStatus::NotRun; 3]);
    assert!(t.branches.iter().all(|b| b.status.as_str() == "committed"));
    assert_eq!(t.branches[1].saga.as_ref().unwrap().after, [0]);
    // The stored state says the same.
    let stored = client.get(&t.xid).await.unwrap();
    assert_eq!(stored.status, GlobalStatus::Committed);
    assert_eq!(actions(&stored), [ActionStatus::Succeeded; 3]);
    assert!(stored.branches.iter().all(|b| b.saga.as_ref().unwrap().action.attempts == 1));
}

#[tokio::test]
async fn a_failure_at_step_k_compensates_k_to_1_in_reverse_and_nothing_else() {
    let db = TestDb::new("saga_fail").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Steps::start().await;
    p.set(|s| {
        s.refuse.insert("s2/action".into());
    });
    let req = saga(vec![p.step("s0"), p.step("s1"), p.step("s2"), p.step("s3")]);
    let err = client.submit_saga(&req, Some(WAIT), None).await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    let t = run(&client, &req).await;
    assert_eq!(t.status, GlobalStatus::RolledBack);
    assert_eq!(t.rollback_reason, Some(RollbackReason::BranchFailed));
    let keys: Vec<String> =
        p.calls.lock().unwrap().iter().filter(|c| c.key.starts_with('s')).map(|c| c.key.clone()).collect();
    // Two sagas ran the same script; each saw the same calls, one after the other.
    let one = ["s0/action", "s1/action", "s2/action", "s2/compensate", "s1/compensate", "s0/compensate"];
    assert_eq!(keys, one.iter().chain(one.iter()).map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        actions(&t),
        [ActionStatus::Succeeded, ActionStatus::Succeeded, ActionStatus::Failed, ActionStatus::Pending]
    );
    assert_eq!(
        compensations(&t),
        [
            CompensationStatus::Compensated,
            CompensationStatus::Compensated,
            CompensationStatus::Compensated,
            CompensationStatus::Skipped
        ]
    );
    assert!(t.branches[2].saga.as_ref().unwrap().action.last_error.as_deref().unwrap().starts_with("409"));
}

#[tokio::test]
async fn independent_steps_run_at_once_and_compensate_in_reverse_dependency_order() {
    let db = TestDb::new("saga_dag").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Steps::start().await;
    p.set(|s| {
        s.delay.insert("a/action".into(), Duration::from_millis(400));
        s.delay.insert("b/action".into(), Duration::from_millis(400));
        s.delay.insert("a/compensate".into(), Duration::from_millis(200));
        s.delay.insert("b/compensate".into(), Duration::from_millis(200));
        s.refuse.insert("d/action".into());
    });
    // a, b → c → d (fails); e depends on a only.
    let mut steps = vec![p.step("a"), p.step("b"), p.step("c"), p.step("d"), p.step("e")];
    steps[0].after = Some(vec![]);
    steps[1].after = Some(vec![]);
    steps[2].after = Some(vec![0, 1]);
    steps[3].after = Some(vec![2]);
    steps[4].after = Some(vec![0]);
    let t = run(&client, &saga(steps)).await;
    assert_eq!(t.status, GlobalStatus::RolledBack);
    let a = &p.calls_of("a/action")[0];
    let b = &p.calls_of("b/action")[0];
    assert!(a.start < b.end && b.start < a.end, "a and b ran at the same time: {a:?} {b:?}");
    let c = &p.calls_of("c/action")[0];
    assert!(c.start >= a.end && c.start >= b.end, "c waited for a and b");
    // Compensations: d before c, c before a and b (which ran at once); e
    // depends on a only, so e's compensation comes before a's.
    let comp = |k: &str| p.calls_of(&format!("{k}/compensate"))[0].clone();
    let (ca, cb, cc, cd, ce) = (comp("a"), comp("b"), comp("c"), comp("d"), comp("e"));
    assert!(cc.start >= cd.end, "c's compensation after d's");
    assert!(ca.start >= cc.end && cb.start >= cc.end, "a's and b's after c's");
    assert!(ca.start >= ce.end, "a's after e's");
    assert!(ca.start < cb.end && cb.start < ca.end, "a's and b's at once");
    assert_eq!(compensations(&t), [CompensationStatus::Compensated; 5]);
}

#[tokio::test]
async fn transient_failures_are_retried_and_applied_once() {
    let db = TestDb::new("saga_transient").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Steps::start().await;
    p.set(|s| {
        s.transient.insert("s1/action".into(), 2);
    });
    let t = run(&client, &saga(vec![p.step("s0"), p.step("s1")])).await;
    assert_eq!(t.status, GlobalStatus::Committed);
    assert_eq!(p.effects_of("s1/action"), 1);
    let calls: Vec<u16> = p.calls_of("s1/action").iter().map(|c| c.status).collect();
    assert_eq!(calls, [503, 503, 200]);
    assert_eq!(t.branches[1].saga.as_ref().unwrap().action.attempts, 3);
}

#[tokio::test]
async fn a_participant_down_for_a_while_then_up() {
    let db = TestDb::new("saga_down").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    // Reserve a port and close it: nothing listens there for now.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let base = format!("http://{addr}");
    let step = |name: &str| SagaStepRequest {
        name: Some(name.into()),
        action_url: format!("{base}/{name}/action"),
        compensate_url: format!("{base}/{name}/compensate"),
        payload: None,
        after: None,
    };
    let d = client.submit_saga(&saga(vec![step("s0"), step("s1")]), Some(Duration::ZERO), None).await.unwrap();
    assert!(!d.finished);
    let xid = d.transaction.xid.clone();
    eventually("several attempts against the absent participant", WAIT, || async {
        let t = client.get(&xid).await.ok()?;
        (t.status == GlobalStatus::Running && t.branches[0].saga.as_ref()?.action.attempts >= 2).then_some(())
    })
    .await;
    let p = Steps::on(TcpListener::bind(addr).await.unwrap()).await;
    let t = wait_status(&client, &xid, "committed", WAIT).await;
    assert_eq!(p.done(), ["s0/action", "s1/action"]);
    assert!(t.branches[0].saga.as_ref().unwrap().action.last_error.is_some(), "the connection errors were kept");
}

#[tokio::test]
async fn retry_limit_reached_compensates() {
    let db = TestDb::new("saga_limit").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Steps::start().await;
    p.set(|s| {
        s.transient.insert("s1/action".into(), usize::MAX);
    });
    let mut req = saga(vec![p.step("s0"), p.step("s1"), p.step("s2")]);
    req.retry_limit = Some(2);
    let t = run(&client, &req).await;
    assert_eq!(t.status, GlobalStatus::RolledBack);
    assert_eq!(t.rollback_reason, Some(RollbackReason::RetryLimit));
    assert_eq!(p.calls_of("s1/action").len(), 3, "the first call and two retries");
    assert_eq!(p.done(), ["s0/action", "s1/compensate", "s0/compensate"]);
    assert_eq!(actions(&t)[1], ActionStatus::Failed);
}

#[tokio::test]
async fn the_timeout_compensates_a_saga_not_done_by_then() {
    let db = TestDb::new("saga_timeout").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Steps::start().await;
    p.set(|s| {
        s.transient.insert("s1/action".into(), usize::MAX);
    });
    let mut req = saga(vec![p.step("s0"), p.step("s1"), p.step("s2")]);
    req.timeout_ms = Some(1_500);
    let t = run(&client, &req).await;
    assert_eq!(t.status, GlobalStatus::RolledBack);
    assert_eq!(t.rollback_reason, Some(RollbackReason::Timeout));
    assert_eq!(p.done(), ["s0/action", "s1/compensate", "s0/compensate"]);
    assert!(p.calls_of("s1/action").len() >= 2);
    assert_eq!(compensations(&t)[2], CompensationStatus::Skipped);
}

#[tokio::test]
async fn a_refused_compensation_ends_rollback_failed() {
    let db = TestDb::new("saga_compfail").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Steps::start().await;
    p.set(|s| {
        s.refuse.insert("s1/action".into());
        s.refuse.insert("s0/compensate".into());
    });
    let t = run(&client, &saga(vec![p.step("s0"), p.step("s1")])).await;
    assert_eq!(t.status, GlobalStatus::RollbackFailed);
    assert_eq!(compensations(&t), [CompensationStatus::Failed, CompensationStatus::Compensated]);
}

#[tokio::test]
async fn submit_without_waiting_and_idempotent_replay() {
    let db = TestDb::new("saga_nowait").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Steps::start().await;
    p.set(|s| {
        s.hold.insert("s0/action".into());
    });
    let req = saga(vec![p.step("s0")]);
    let d = client.submit_saga(&req, Some(Duration::ZERO), Some("saga-key-1")).await.unwrap();
    assert!(!d.finished);
    assert_eq!(d.transaction.status, GlobalStatus::Running);
    let again = client.submit_saga(&req, Some(Duration::ZERO), Some("saga-key-1")).await.unwrap();
    assert_eq!(again.transaction.xid, d.transaction.xid, "same key, same saga");
    let mut other = req.clone();
    other.name = Some("another".into());
    let err = client.submit_saga(&other, Some(Duration::ZERO), Some("saga-key-1")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::IdempotencyKeyReused));
    // A running saga cannot be rolled back by hand; its commit waits for it.
    let err = client.rollback(&d.transaction.xid, None).await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    p.set(|s| {
        s.hold.clear();
    });
    wait_status(&client, &d.transaction.xid, "committed", WAIT).await;
    assert_eq!(p.effects_of("s0/action"), 1);
}

#[tokio::test]
async fn step_by_step_commit_and_rollback() {
    let db = TestDb::new("saga_steps").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Steps::start().await;
    let begin = BeginRequest { mode: Mode::Saga, name: Some("by-hand".into()), timeout_ms: None, three_phase: None };
    let register = |xid, name: &str| {
        let req = RegisterBranchRequest {
            resource: name.into(),
            callback_url: format!("{}/{name}/compensate", p.base),
            payload: None,
            lock_keys: None,
        };
        let client = client.clone();
        async move { client.register(&xid, &req).await.unwrap() }
    };
    // Rolled back: compensations in reverse registration order.
    let t = client.begin(&begin).await.unwrap();
    for name in ["r0", "r1", "r2"] {
        register(t.xid.clone(), name).await;
    }
    let d = client.rollback(&t.xid, Some(WAIT)).await.unwrap();
    assert_eq!(d.transaction.status, GlobalStatus::RolledBack);
    assert_eq!(p.done(), ["r2/compensate", "r1/compensate", "r0/compensate"]);
    assert_eq!(actions(&d.transaction), [ActionStatus::Succeeded; 3]);
    assert_eq!(compensations(&d.transaction), [CompensationStatus::Compensated; 3]);
    // Committed: nothing to call.
    let t = client.begin(&begin).await.unwrap();
    register(t.xid.clone(), "k0").await;
    let d = client.commit(&t.xid, Some(WAIT)).await.unwrap();
    assert_eq!(d.transaction.status, GlobalStatus::Committed);
    assert!(d.transaction.branches.iter().all(|b| b.status.as_str() == "committed"));
    assert_eq!(p.done().len(), 3, "a commit calls nobody");
}
