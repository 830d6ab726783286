//! The SDK's saga participant and its barrier, on PostgreSQL and MariaDB:
//! a stock-reservation step served over real HTTP on 127.0.0.1, its
//! callbacks sent here (as the coordinator would, duplicates and races
//! included). Each test has a database of its own.

use crate::support::{TestDb, TestMariaDb};
use async_trait::async_trait;
use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::{MySql, MySqlConnection, PgConnection, Pool, Postgres};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tandem_sdk::saga::{BarrierDb, Op, SagaParticipant, SagaSteps, StepContext, StepError};
use tandem_sdk::wire::{BranchId, CallbackAction, CallbackRequest, Mode, Xid, XID_HEADER};
use tokio::net::TcpListener;

/// Units in stock when a test starts.
const STOCK: i64 = 1_000;
/// The step's name.
const STEP: &str = "reserve";

/// What the step saw, and the faults it injects.
#[derive(Default)]
struct Counters {
    /// Business actions started (committed or not).
    actions: AtomicUsize,
    /// Business compensations started.
    compensations: AtomicUsize,
    /// Fail this many more actions transiently, after their writes.
    transient_failures: AtomicUsize,
}

/// The reservation step: the action takes `qty` (payload, default 1) from
/// the stock and records a reservation; the compensation gives it back.
/// `"fail": "permanent"` in the payload fails the action after its writes.
struct Reserve {
    counters: Arc<Counters>,
}

fn qty_of(payload: &Value) -> i64 {
    payload.get("qty").and_then(Value::as_i64).unwrap_or(1)
}

/// Faults injected after the action's writes, so that a failure shows
/// whether they were rolled back.
fn injected_failure(counters: &Counters, payload: &Value) -> Result<(), StepError> {
    if payload.get("fail").and_then(Value::as_str) == Some("permanent") {
        return Err(StepError::reject("injected permanent failure"));
    }
    let transient =
        counters.transient_failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if transient {
        return Err(StepError::Retry("injected transient failure".into()));
    }
    Ok(())
}

#[async_trait]
impl SagaSteps for Reserve {
    fn name(&self) -> &str {
        STEP
    }

    async fn action(&self, db: &mut PgConnection, step: &StepContext, payload: &Value) -> Result<(), StepError> {
        self.counters.actions.fetch_add(1, Ordering::SeqCst);
        let qty = qty_of(payload);
        let taken = sqlx::query("UPDATE stock SET qty = qty - $1 WHERE id = 1 AND qty >= $1")
            .bind(qty)
            .execute(&mut *db)
            .await?
            .rows_affected();
        if taken == 0 {
            return Err(StepError::reject("insufficient stock"));
        }
        sqlx::query("INSERT INTO reservations (xid, branch_id, qty) VALUES ($1, $2, $3)")
            .bind(step.xid.as_str())
            .bind(step.branch_id.as_str())
            .bind(qty)
            .execute(&mut *db)
            .await?;
        injected_failure(&self.counters, payload)
    }

    async fn compensate(&self, db: &mut PgConnection, step: &StepContext, _: &Value) -> Result<(), StepError> {
        self.counters.compensations.fetch_add(1, Ordering::SeqCst);
        let qty: Option<i64> =
            sqlx::query_scalar("DELETE FROM reservations WHERE xid = $1 AND branch_id = $2 RETURNING qty")
                .bind(step.xid.as_str())
                .bind(step.branch_id.as_str())
                .fetch_optional(&mut *db)
                .await?;
        // The barrier runs a compensation only after a committed action.
        let qty = qty.ok_or_else(|| StepError::reject("compensation without a reservation"))?;
        sqlx::query("UPDATE stock SET qty = qty + $1 WHERE id = 1").bind(qty).execute(&mut *db).await?;
        Ok(())
    }
}

#[async_trait]
impl SagaSteps<MySql> for Reserve {
    fn name(&self) -> &str {
        STEP
    }

    async fn action(&self, db: &mut MySqlConnection, step: &StepContext, payload: &Value) -> Result<(), StepError> {
        self.counters.actions.fetch_add(1, Ordering::SeqCst);
        let qty = qty_of(payload);
        let taken = sqlx::query("UPDATE stock SET qty = qty - ? WHERE id = 1 AND qty >= ?")
            .bind(qty)
            .bind(qty)
            .execute(&mut *db)
            .await?
            .rows_affected();
        if taken == 0 {
            return Err(StepError::reject("insufficient stock"));
        }
        sqlx::query("INSERT INTO reservations (xid, branch_id, qty) VALUES (?, ?, ?)")
            .bind(step.xid.as_str())
            .bind(step.branch_id.as_str())
            .bind(qty)
            .execute(&mut *db)
            .await?;
        injected_failure(&self.counters, payload)
    }

    async fn compensate(&self, db: &mut MySqlConnection, step: &StepContext, _: &Value) -> Result<(), StepError> {
        self.counters.compensations.fetch_add(1, Ordering::SeqCst);
        // The stock first, as the action does: business locks in one order
        // (a plain read of the reservation, committed before, takes none).
        let qty: Option<i64> = sqlx::query_scalar("SELECT qty FROM reservations WHERE xid = ? AND branch_id = ?")
            .bind(step.xid.as_str())
            .bind(step.branch_id.as_str())
            .fetch_optional(&mut *db)
            .await?;
        let qty = qty.ok_or_else(|| StepError::reject("compensation without a reservation"))?;
        sqlx::query("UPDATE stock SET qty = qty + ? WHERE id = 1").bind(qty).execute(&mut *db).await?;
        let deleted = sqlx::query("DELETE FROM reservations WHERE xid = ? AND branch_id = ?")
            .bind(step.xid.as_str())
            .bind(step.branch_id.as_str())
            .execute(&mut *db)
            .await?
            .rows_affected();
        if deleted != 1 {
            return Err(StepError::reject("the reservation vanished"));
        }
        Ok(())
    }
}

/// A participant served on 127.0.0.1, its database, and what its step saw.
struct Env<DB: Backend> {
    participant: SagaParticipant<DB>,
    counters: Arc<Counters>,
    http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    /// Drops the test's database after the test.
    _db: Box<dyn std::any::Any>,
}

/// What the tests need of a database beyond the barrier: a fresh one with
/// the business tables, and reads of them.
trait Backend: BarrierDb + Sized {
    /// A fresh database with the business tables, the barrier installed,
    /// and the participant served.
    async fn start(tag: &str) -> Env<Self>;
    /// Units in stock.
    async fn stock(pool: &Pool<Self>) -> i64;
    /// The reservation of a branch, if any.
    async fn reservation(pool: &Pool<Self>, xid: &Xid, branch: &BranchId) -> Option<i64>;
    /// The barrier rows of a branch, as (op, origin), sorted.
    async fn barrier(pool: &Pool<Self>, xid: &Xid, branch: &BranchId) -> Vec<(String, String)>;
}

impl Backend for Postgres {
    async fn start(tag: &str) -> Env<Postgres> {
        let db = TestDb::new(tag).await;
        let pool = db.pool().await;
        sqlx::raw_sql(&format!(
            "CREATE TABLE stock (id int PRIMARY KEY, qty bigint NOT NULL); INSERT INTO stock VALUES (1, {STOCK}); \
             CREATE TABLE reservations (xid text, branch_id text, qty bigint NOT NULL, PRIMARY KEY (xid, branch_id));"
        ))
        .execute(&pool)
        .await
        .unwrap();
        serve(pool, Box::new(db)).await
    }

    async fn stock(pool: &Pool<Postgres>) -> i64 {
        sqlx::query_scalar("SELECT qty FROM stock WHERE id = 1").fetch_one(pool).await.unwrap()
    }

    async fn reservation(pool: &Pool<Postgres>, xid: &Xid, branch: &BranchId) -> Option<i64> {
        sqlx::query_scalar("SELECT qty FROM reservations WHERE xid = $1 AND branch_id = $2")
            .bind(xid.as_str())
            .bind(branch.as_str())
            .fetch_optional(pool)
            .await
            .unwrap()
    }

    async fn barrier(pool: &Pool<Postgres>, xid: &Xid, branch: &BranchId) -> Vec<(String, String)> {
        sqlx::query_as("SELECT op, origin FROM tandem_barrier WHERE xid = $1 AND branch_id = $2 ORDER BY op")
            .bind(xid.as_str())
            .bind(branch.as_str())
            .fetch_all(pool)
            .await
            .unwrap()
    }
}

impl Backend for MySql {
    async fn start(tag: &str) -> Env<MySql> {
        let db = TestMariaDb::new(tag).await;
        let pool = sqlx::mysql::MySqlPoolOptions::new().max_connections(32).connect(&db.url).await.unwrap();
        // The server's default isolation, which the barrier must not deadlock under.
        let isolation: String = sqlx::query_scalar("SELECT @@tx_isolation").fetch_one(&pool).await.unwrap();
        assert_eq!(isolation, "REPEATABLE-READ");
        sqlx::raw_sql(&format!(
            "CREATE TABLE stock (id int PRIMARY KEY, qty bigint NOT NULL) ENGINE = InnoDB; \
             INSERT INTO stock VALUES (1, {STOCK}); \
             CREATE TABLE reservations (xid varchar(64), branch_id varchar(64), qty bigint NOT NULL, \
                PRIMARY KEY (xid, branch_id)) ENGINE = InnoDB;"
        ))
        .execute(&pool)
        .await
        .unwrap();
        serve(pool, Box::new(db)).await
    }

    async fn stock(pool: &Pool<MySql>) -> i64 {
        sqlx::query_scalar("SELECT qty FROM stock WHERE id = 1").fetch_one(pool).await.unwrap()
    }

    async fn reservation(pool: &Pool<MySql>, xid: &Xid, branch: &BranchId) -> Option<i64> {
        sqlx::query_scalar("SELECT qty FROM reservations WHERE xid = ? AND branch_id = ?")
            .bind(xid.as_str())
            .bind(branch.as_str())
            .fetch_optional(pool)
            .await
            .unwrap()
    }

    async fn barrier(pool: &Pool<MySql>, xid: &Xid, branch: &BranchId) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT CAST(op AS CHAR), CAST(origin AS CHAR) FROM tandem_barrier \
             WHERE xid = ? AND branch_id = ? ORDER BY op",
        )
        .bind(xid.as_str())
        .bind(branch.as_str())
        .fetch_all(pool)
        .await
        .unwrap()
    }
}

/// Builds the participant on `pool`, installs the barrier (twice: it is
/// idempotent) and serves it on a port of its own.
async fn serve<DB: Backend>(pool: Pool<DB>, db: Box<dyn std::any::Any>) -> Env<DB>
where
    Reserve: SagaSteps<DB>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let counters = Arc::new(Counters::default());
    let participant =
        SagaParticipant::builder(pool, &base).step(Reserve { counters: counters.clone() }).build().unwrap();
    participant.install().await.unwrap();
    participant.install().await.unwrap();
    let app = participant.router();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Env { participant, counters, http: reqwest::Client::new(), server, _db: db }
}

/// A participant's answer to one callback.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    /// The `outcome` of a 2xx answer.
    fn outcome(&self) -> &str {
        assert_eq!(self.status, 200, "{self:?}");
        self.body["outcome"].as_str().unwrap()
    }
}

impl<DB: Backend> Env<DB> {
    /// POSTs `op`'s callback of `branch` to the step's URL for `op`.
    async fn call(&self, op: Op, xid: &Xid, branch: &BranchId, payload: Value) -> Answer {
        let (url, action) = match op {
            Op::Action => (self.participant.action_url(STEP).unwrap(), CallbackAction::Action),
            Op::Compensate => (self.participant.compensate_url(STEP).unwrap(), CallbackAction::Compensate),
        };
        self.post(&url, &callback(action, xid, branch, payload)).await
    }

    async fn post(&self, url: &str, body: &CallbackRequest) -> Answer {
        let resp = self.http.post(url).header(XID_HEADER, body.xid.as_str()).json(body).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Answer { status, body }
    }

    fn pool(&self) -> &Pool<DB> {
        self.participant.pool()
    }

    async fn stock(&self) -> i64 {
        DB::stock(self.pool()).await
    }

    async fn reservation(&self, xid: &Xid, branch: &BranchId) -> Option<i64> {
        DB::reservation(self.pool(), xid, branch).await
    }

    async fn barrier(&self, xid: &Xid, branch: &BranchId) -> Vec<(String, String)> {
        DB::barrier(self.pool(), xid, branch).await
    }

    fn actions(&self) -> usize {
        self.counters.actions.load(Ordering::SeqCst)
    }

    fn compensations(&self) -> usize {
        self.counters.compensations.load(Ordering::SeqCst)
    }

    /// Stops serving and closes the pool (so the database drops at once).
    async fn close(self) {
        self.server.abort();
        self.participant.pool().close().await;
    }
}

fn callback(action: CallbackAction, xid: &Xid, branch: &BranchId, payload: Value) -> CallbackRequest {
    CallbackRequest {
        xid: xid.clone(),
        branch_id: branch.clone(),
        mode: Mode::Saga,
        action,
        // The coordinator names a submitted saga's steps `step-N`.
        resource: "step-1".into(),
        payload: Some(payload),
        three_phase: None,
    }
}

fn ids() -> (Xid, BranchId) {
    (Xid::generate(), BranchId::generate())
}

fn rows(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

// ---- scenarios, each run on both databases ----

async fn action_applies_once_under_duplicate_delivery<DB: Backend>(tag: &str) {
    let env = DB::start(tag).await;
    let (xid, branch) = ids();
    let first = env.call(Op::Action, &xid, &branch, json!({"qty": 3})).await;
    assert_eq!(first.outcome(), "applied");
    // Repeated one after another, then all at once.
    assert_eq!(env.call(Op::Action, &xid, &branch, json!({"qty": 3})).await.outcome(), "already_done");
    let again = join_all((0..8).map(|_| env.call(Op::Action, &xid, &branch, json!({"qty": 3})))).await;
    assert!(again.iter().all(|a| a.outcome() == "already_done"), "{again:?}");
    assert_eq!(env.stock().await, STOCK - 3);
    assert_eq!(env.reservation(&xid, &branch).await, Some(3));
    assert_eq!(env.actions(), 1, "the business action ran once");
    assert_eq!(env.barrier(&xid, &branch).await, rows(&[("action", "action")]));
    env.close().await;
}

async fn concurrent_first_deliveries_apply_once<DB: Backend>(tag: &str) {
    let env = DB::start(tag).await;
    let (xid, branch) = ids();
    let answers = join_all((0..8).map(|_| env.call(Op::Action, &xid, &branch, json!({"qty": 2})))).await;
    let applied = answers.iter().filter(|a| a.outcome() == "applied").count();
    assert_eq!(applied, 1, "{answers:?}");
    assert!(answers.iter().all(|a| matches!(a.outcome(), "applied" | "already_done")));
    assert_eq!(env.stock().await, STOCK - 2);
    assert_eq!(env.actions(), 1);
    env.close().await;
}

async fn compensation_applies_once_under_duplicates<DB: Backend>(tag: &str) {
    let env = DB::start(tag).await;
    let (xid, branch) = ids();
    assert_eq!(env.call(Op::Action, &xid, &branch, json!({"qty": 5})).await.outcome(), "applied");
    assert_eq!(env.stock().await, STOCK - 5);
    let answers = join_all((0..8).map(|_| env.call(Op::Compensate, &xid, &branch, json!({"qty": 5})))).await;
    let applied = answers.iter().filter(|a| a.outcome() == "applied").count();
    assert_eq!(applied, 1, "{answers:?}");
    assert!(answers.iter().all(|a| matches!(a.outcome(), "applied" | "already_done")));
    assert_eq!(env.call(Op::Compensate, &xid, &branch, json!({"qty": 5})).await.outcome(), "already_done");
    assert_eq!(env.stock().await, STOCK, "the compensation gave the stock back once");
    assert_eq!(env.reservation(&xid, &branch).await, None);
    assert_eq!(env.compensations(), 1, "the business compensation ran once");
    assert_eq!(env.barrier(&xid, &branch).await, rows(&[("action", "action"), ("compensate", "compensate")]));
    // A late repeat of the action changes nothing.
    assert_eq!(env.call(Op::Action, &xid, &branch, json!({"qty": 5})).await.outcome(), "already_done");
    assert_eq!(env.stock().await, STOCK);
    assert_eq!(env.actions(), 1);
    env.close().await;
}

async fn compensation_first_is_empty_and_refuses_the_late_action<DB: Backend>(tag: &str) {
    let env = DB::start(tag).await;
    let (xid, branch) = ids();
    assert_eq!(env.call(Op::Compensate, &xid, &branch, json!({"qty": 4})).await.outcome(), "empty_rollback");
    assert_eq!(env.compensations(), 0, "an empty compensation runs no business code");
    assert_eq!(env.barrier(&xid, &branch).await, rows(&[("action", "compensate"), ("compensate", "compensate")]));
    // The action, late: refused for good, with no effect.
    for _ in 0..2 {
        let late = env.call(Op::Action, &xid, &branch, json!({"qty": 4})).await;
        assert_eq!(late.status, 409, "{late:?}");
        assert_eq!(late.body["code"], "invalid_state", "{late:?}");
    }
    assert_eq!(env.actions(), 0);
    assert_eq!(env.stock().await, STOCK);
    assert_eq!(env.reservation(&xid, &branch).await, None);
    assert_eq!(env.call(Op::Compensate, &xid, &branch, json!({"qty": 4})).await.outcome(), "already_done");
    env.close().await;
}

async fn action_then_compensation_restores_the_data<DB: Backend>(tag: &str) {
    let env = DB::start(tag).await;
    let steps: Vec<(Xid, BranchId)> = (0..3).map(|_| ids()).collect();
    for (i, (xid, branch)) in steps.iter().enumerate() {
        let qty = i64::try_from(i).unwrap() + 1;
        assert_eq!(env.call(Op::Action, xid, branch, json!({ "qty": qty })).await.outcome(), "applied");
    }
    assert_eq!(env.stock().await, STOCK - 6);
    for (xid, branch) in steps.iter().rev() {
        assert_eq!(env.call(Op::Compensate, xid, branch, json!({})).await.outcome(), "applied");
    }
    assert_eq!(env.stock().await, STOCK);
    for (xid, branch) in &steps {
        assert_eq!(env.reservation(xid, branch).await, None);
    }
    assert_eq!((env.actions(), env.compensations()), (3, 3));
    env.close().await;
}

async fn permanent_failure_answers_409_and_writes_nothing<DB: Backend>(tag: &str) {
    let env = DB::start(tag).await;
    let (xid, branch) = ids();
    // Insufficient stock: refused by the business action itself.
    let refused = env.call(Op::Action, &xid, &branch, json!({"qty": STOCK + 1})).await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert!(refused.body["detail"].as_str().unwrap().contains("insufficient stock"), "{refused:?}");
    // A failure after the action's writes: they are rolled back, barrier row included.
    let (xid2, branch2) = ids();
    let failed = env.call(Op::Action, &xid2, &branch2, json!({"qty": 7, "fail": "permanent"})).await;
    assert_eq!(failed.status, 409, "{failed:?}");
    assert_eq!(env.stock().await, STOCK);
    assert_eq!(env.reservation(&xid2, &branch2).await, None);
    assert!(env.barrier(&xid2, &branch2).await.is_empty());
    // So a redelivery runs the action again (and fails again the same way).
    let again = env.call(Op::Action, &xid2, &branch2, json!({"qty": 7, "fail": "permanent"})).await;
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(env.actions(), 3);
    // The saga then compensates: nothing to undo.
    assert_eq!(env.call(Op::Compensate, &xid2, &branch2, json!({})).await.outcome(), "empty_rollback");
    assert_eq!(env.compensations(), 0);
    assert_eq!(env.stock().await, STOCK);
    env.close().await;
}

async fn transient_failure_answers_5xx_and_writes_nothing<DB: Backend>(tag: &str) {
    let env = DB::start(tag).await;
    let (xid, branch) = ids();
    env.counters.transient_failures.store(2, Ordering::SeqCst);
    for _ in 0..2 {
        let failed = env.call(Op::Action, &xid, &branch, json!({"qty": 2})).await;
        assert!(failed.status >= 500, "{failed:?}");
        assert_eq!(failed.body["code"], "unavailable", "{failed:?}");
        assert_eq!(env.stock().await, STOCK);
        assert!(env.barrier(&xid, &branch).await.is_empty());
    }
    // The coordinator's retry succeeds once the fault is gone.
    assert_eq!(env.call(Op::Action, &xid, &branch, json!({"qty": 2})).await.outcome(), "applied");
    assert_eq!(env.stock().await, STOCK - 2);
    assert_eq!(env.actions(), 3);
    env.close().await;
}

/// Many branches, each with its action and its compensation delivered at
/// once (some of them twice, some with a failing action): nothing
/// surfaces but the contract's answers (no deadlock, no 5xx), and every
/// branch ends consistent: its action applied and compensated, or its
/// compensation empty and its action refused (or failed).
async fn racing_actions_and_compensations_end_consistent<DB: Backend>(tag: &str) {
    let env = DB::start(tag).await;
    const BRANCHES: usize = 48;
    // One saga with many branches (adjacent barrier keys), and sagas of one branch.
    let shared = Xid::generate();
    let branches: Vec<(Xid, BranchId)> =
        (0..BRANCHES).map(|i| if i % 2 == 0 { (shared.clone(), BranchId::generate()) } else { ids() }).collect();
    let deliveries = branches.iter().enumerate().flat_map(|(i, (xid, branch))| {
        let payload = if i % 4 == 3 { json!({"qty": 1, "fail": "permanent"}) } else { json!({"qty": 1}) };
        // Every third branch has both callbacks delivered twice.
        let copies = if i % 3 == 0 { 2 } else { 1 };
        let mut calls = Vec::new();
        for _ in 0..copies {
            calls.push((i, Op::Action, xid.clone(), branch.clone(), payload.clone()));
            calls.push((i, Op::Compensate, xid.clone(), branch.clone(), payload.clone()));
        }
        calls
    });
    let answers = join_all(deliveries.map(|(i, op, xid, branch, payload)| {
        let env = &env;
        async move { (i, op, env.call(op, &xid, &branch, payload).await) }
    }))
    .await;

    for (i, (xid, branch)) in branches.iter().enumerate() {
        let mine: Vec<&(usize, Op, Answer)> = answers.iter().filter(|(j, _, _)| *j == i).collect();
        for (_, op, a) in &mine {
            let text = a.body.to_string();
            assert!(!text.contains("1213") && !text.to_lowercase().contains("deadlock"), "branch {i}: {a:?}");
            match op {
                Op::Action => assert!(a.status == 200 || a.status == 409, "branch {i}: action answered {a:?}"),
                Op::Compensate => assert_eq!(a.status, 200, "branch {i}: compensation answered {a:?}"),
            }
        }
        let outcomes = |op: Op| -> Vec<String> {
            mine.iter()
                .filter(|(_, o, _)| *o == op)
                .map(|(_, _, a)| a.body["outcome"].as_str().unwrap_or("refused").to_owned())
                .collect()
        };
        let (actions, compensations) = (outcomes(Op::Action), outcomes(Op::Compensate));
        let applied_actions = actions.iter().filter(|o| *o == "applied").count();
        let applied_compensations = compensations.iter().filter(|o| *o == "applied").count();
        let empty = compensations.iter().filter(|o| *o == "empty_rollback").count();
        assert_eq!(applied_compensations + empty, 1, "branch {i}: one compensation took effect: {compensations:?}");
        if applied_actions == 1 {
            assert_eq!(applied_compensations, 1, "branch {i}: an applied action is compensated: {compensations:?}");
            assert_eq!(env.barrier(xid, branch).await, rows(&[("action", "action"), ("compensate", "compensate")]));
        } else {
            assert_eq!(applied_actions, 0, "branch {i}: {actions:?}");
            assert_eq!(empty, 1, "branch {i}: no action, so the compensation was empty: {compensations:?}");
            assert!(actions.iter().all(|o| o == "refused" || o == "already_done"), "branch {i}: {actions:?}");
            assert_eq!(
                env.barrier(xid, branch).await,
                rows(&[("action", "compensate"), ("compensate", "compensate")]),
                "branch {i}"
            );
        }
        if i % 4 == 3 {
            assert_eq!(applied_actions, 0, "branch {i}: a failing action never applies");
        }
        assert_eq!(env.reservation(xid, branch).await, None, "branch {i}");
    }
    assert_eq!(env.stock().await, STOCK, "every applied action was compensated");
    env.close().await;
}

/// A callback for another endpoint, mode or step is refused, and runs nothing.
async fn misrouted_callbacks_are_refused<DB: Backend>(tag: &str) {
    let env = DB::start(tag).await;
    let (xid, branch) = ids();
    let action_url = env.participant.action_url(STEP).unwrap();
    let compensate_url = env.participant.compensate_url(STEP).unwrap();
    let swapped = env.post(&action_url, &callback(CallbackAction::Compensate, &xid, &branch, json!({}))).await;
    assert_eq!(swapped.status, 409, "{swapped:?}");
    let swapped = env.post(&compensate_url, &callback(CallbackAction::Action, &xid, &branch, json!({}))).await;
    assert_eq!(swapped.status, 409, "{swapped:?}");
    let mut tcc = callback(CallbackAction::Action, &xid, &branch, json!({}));
    tcc.mode = Mode::Tcc;
    assert_eq!(env.post(&action_url, &tcc).await.status, 409);
    let unknown_url = action_url.replace(STEP, "ship");
    let unknown = env.post(&unknown_url, &callback(CallbackAction::Action, &xid, &branch, json!({}))).await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.body["code"], "not_found", "{unknown:?}");
    let garbage = env.http.post(&action_url).json(&json!({"xid": 1})).send().await.unwrap();
    assert!(garbage.status().is_client_error(), "{garbage:?}");
    assert_eq!((env.actions(), env.compensations()), (0, 0));
    assert!(env.barrier(&xid, &branch).await.is_empty());
    assert!(env.participant.action_url("ship").is_err());
    env.close().await;
}

/// Step by step: `run_step` registers the branch, its `callback_url` the
/// step's compensation, before it runs the action behind the barrier (a
/// stub stands in for the coordinator's registration endpoint).
async fn run_step_registers_the_compensation_then_runs_the_action<DB: Backend>(tag: &str) {
    use axum::extract::{Path, State};
    use tandem_sdk::wire::{Branch, BranchStatus, RegisterBranchRequest};
    type Seen = Arc<std::sync::Mutex<Vec<(String, RegisterBranchRequest)>>>;

    async fn register(
        State(seen): State<Seen>,
        Path(xid): Path<String>,
        axum::Json(req): axum::Json<RegisterBranchRequest>,
    ) -> axum::Json<Branch> {
        seen.lock().unwrap().push((xid, req.clone()));
        axum::Json(Branch {
            branch_id: BranchId::generate(),
            resource: req.resource,
            callback_url: req.callback_url,
            status: BranchStatus::Registered,
            payload: req.payload,
            lock_keys: Vec::new(),
            global_locks: None,
            attempts: 0,
            last_error: None,
            saga: None,
            destination: None,
        })
    }

    let env = DB::start(tag).await;
    let seen: Seen = Arc::default();
    let stub = axum::Router::new()
        .route("/v1/transactions/{xid}/branches", axum::routing::post(register))
        .with_state(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tandem_sdk::TandemClient::new(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let stub = tokio::spawn(async move {
        let _ = axum::serve(listener, stub).await;
    });

    let xid = Xid::generate();
    let ctx = env.participant.run_step(&client, &xid, STEP, json!({"qty": 6})).await.unwrap();
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let (registered_xid, req) = &seen[0];
        assert_eq!(registered_xid, xid.as_str());
        assert_eq!(req.resource, STEP);
        assert_eq!(req.callback_url, env.participant.compensate_url(STEP).unwrap());
        assert_eq!(req.payload, Some(json!({"qty": 6})));
        assert_eq!(req.lock_keys, None);
    }
    assert_eq!(env.stock().await, STOCK - 6);
    assert_eq!(env.barrier(&xid, &ctx.branch_id).await, rows(&[("action", "action")]));
    // The rollback's compensation, as the coordinator sends it to the callback URL.
    assert_eq!(env.call(Op::Compensate, &xid, &ctx.branch_id, json!({"qty": 6})).await.outcome(), "applied");
    assert_eq!(env.stock().await, STOCK);

    // A failing action: registered (so the rollback reaches it), nothing written.
    let failed = env.participant.run_step(&client, &xid, STEP, json!({"qty": STOCK + 1})).await;
    assert!(matches!(failed, Err(tandem_sdk::saga::SagaError::StepFailed { op: Op::Action, .. })), "{failed:?}");
    assert_eq!(seen.lock().unwrap().len(), 2);
    // An unknown step registers nothing.
    assert!(env.participant.run_step(&client, &xid, "ship", json!({})).await.is_err());
    assert_eq!(seen.lock().unwrap().len(), 2);
    stub.abort();
    env.close().await;
}

macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario::<sqlx::Postgres>("saga_barrier").await;
                }
            )*
        }
        mod mariadb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario::<sqlx::MySql>("saga_barrier").await;
                }
            )*
        }
    };
}

on_both!(
    action_applies_once_under_duplicate_delivery,
    concurrent_first_deliveries_apply_once,
    compensation_applies_once_under_duplicates,
    compensation_first_is_empty_and_refuses_the_late_action,
    action_then_compensation_restores_the_data,
    permanent_failure_answers_409_and_writes_nothing,
    transient_failure_answers_5xx_and_writes_nothing,
    racing_actions_and_compensations_end_consistent,
    misrouted_callbacks_are_refused,
    run_step_registers_the_compensation_then_runs_the_action,
);

#[test]
fn step_names_must_be_path_segments() {
    struct Named(&'static str);
    #[async_trait]
    impl SagaSteps for Named {
        fn name(&self) -> &str {
            self.0
        }
        async fn action(&self, _: &mut PgConnection, _: &StepContext, _: &Value) -> Result<(), StepError> {
            Ok(())
        }
        async fn compensate(&self, _: &mut PgConnection, _: &StepContext, _: &Value) -> Result<(), StepError> {
            Ok(())
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Lazy: no connection is made.
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let build = |names: &[&'static str]| {
            names
                .iter()
                .fold(SagaParticipant::builder(pool.clone(), "http://svc:8080/"), |b, n| b.step(Named(n)))
                .build()
        };
        let p = build(&["reserve", "charge"]).unwrap();
        assert_eq!(p.action_url("reserve").unwrap(), "http://svc:8080/tandem/saga/reserve/action");
        assert_eq!(p.compensate_url("charge").unwrap(), "http://svc:8080/tandem/saga/charge/compensate");
        assert_eq!(p.steps(), vec!["charge", "reserve"]);
        assert!(build(&["a/b"]).is_err());
        assert!(build(&["same", "same"]).is_err());
    });
}

/// The whole flow: a saga submitted with the SDK's builder to a real
/// coordinator, one step on PostgreSQL and one on MariaDB, served by the
/// SDK's participant.
mod end_to_end {
    use super::*;
    use crate::support::{fast_settings, spawn_coordinator};
    use std::time::Duration;
    use tandem_sdk::saga::Saga;
    use tandem_sdk::wire::GlobalStatus;

    #[tokio::test]
    async fn a_saga_across_postgres_and_mariadb_commits_or_compensates() {
        let db = TestDb::new("saga_e2e").await;
        let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
        let pg = Postgres::start("saga_e2e_pg").await;
        let my = MySql::start("saga_e2e_my").await;
        let saga = |qty_pg: i64, qty_my: i64| {
            Saga::new("order")
                .step(
                    pg.participant.action_url(STEP).unwrap(),
                    pg.participant.compensate_url(STEP).unwrap(),
                    json!({ "qty": qty_pg }),
                )
                .step(
                    my.participant.action_url(STEP).unwrap(),
                    my.participant.compensate_url(STEP).unwrap(),
                    json!({ "qty": qty_my }),
                )
        };
        let done = saga(10, 20).submit_and_wait(&client, Duration::from_secs(20)).await.unwrap();
        assert_eq!(done.transaction.status, GlobalStatus::Committed);
        assert_eq!((pg.stock().await, my.stock().await), (STOCK - 10, STOCK - 20));
        // MariaDB has not that much: its action answers 409, PostgreSQL's is compensated.
        let err = saga(10, STOCK + 1).submit_and_wait(&client, Duration::from_secs(20)).await.unwrap_err();
        let t = match err {
            tandem_sdk::ClientError::Problem(p) => *p.transaction.expect("the transaction"),
            other => panic!("{other}"),
        };
        assert_eq!(t.status, GlobalStatus::RolledBack);
        assert_eq!((pg.stock().await, my.stock().await), (STOCK - 10, STOCK - 20), "back to before");
        assert_eq!(pg.counters.compensations.load(Ordering::SeqCst), 1);
        // The failed action's compensation was empty: its business code never ran.
        assert_eq!(my.counters.compensations.load(Ordering::SeqCst), 0);
        let failed = &t.branches[1];
        assert_eq!(my.barrier(&t.xid, &failed.branch_id).await.len(), 2, "compensate and its action marker");
    }
}
