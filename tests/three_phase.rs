//! Three-phase commit (mode `3pc`) end to end: the coordinator (in process, or
//! the real binary where it is SIGKILLed) drives participants that
//! pre-commit with real `PREPARE TRANSACTION` on the PostgreSQL with prepared
//! transactions enabled (scripts/xa-postgres.sh), over HTTP on loopback.
//!
//! Each participant sits behind a fault gate that can answer 503 instead of
//! delivering an action (a partition), delay an action (a slow participant),
//! or run an action and never answer (an acknowledgement lost with its
//! coordinator). Every test ends with no prepared transaction left.

mod support;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tandem_sdk::three_phase::{LocalState, ThreePhaseParticipant, ThreePhaseWork};
use tandem_sdk::wire::{
    BeginRequest, BranchStatus, CallbackRequest, ErrorCode, GlobalStatus, Mode, RollbackReason, ThreePhaseOptions,
    Transaction, Xid,
};
use tandem_sdk::BoxError;
use tandem_sdk::TandemClient;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(30);

/// The application of a test participant: votes as told, and PreCommit
/// inserts the payload's amount into `ledger`.
struct Ledger {
    vote: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ThreePhaseWork for Ledger {
    async fn can_commit(&self, _pool: &PgPool, payload: &serde_json::Value) -> Result<bool, BoxError> {
        Ok(self.vote.load(Ordering::SeqCst) && payload.get("amount").is_some_and(|a| a.is_i64()))
    }

    async fn execute(&self, conn: &mut PgConnection, payload: &serde_json::Value) -> Result<(), BoxError> {
        let amount = payload.get("amount").and_then(|a| a.as_i64()).ok_or("payload without amount")?;
        let xid = payload.get("xid").and_then(|x| x.as_str()).ok_or("payload without xid")?;
        sqlx::query("INSERT INTO ledger (xid, amount) VALUES ($1, $2)").bind(xid).bind(amount).execute(conn).await?;
        Ok(())
    }
}

/// Faults on a participant's callback endpoint, by action (`can_commit`,
/// `pre_commit`, `commit`, `rollback`).
#[derive(Default)]
struct Gate {
    /// Actions that arrived, in order.
    seen: Mutex<Vec<String>>,
    /// Answered 503 without reaching the participant (a partition).
    fail: Mutex<HashSet<String>>,
    /// Reach the participant only after this delay (a slow participant).
    delay: Mutex<HashMap<String, Duration>>,
    /// Reach the participant, then never answer (the answer is lost).
    hold: Mutex<HashSet<String>>,
    /// Answers withheld so far.
    held: AtomicUsize,
}

impl Gate {
    fn set(&self, which: &Mutex<HashSet<String>>, action: &str, on: bool) {
        let mut s = which.lock().expect("gate");
        if on {
            s.insert(action.to_owned());
        } else {
            s.remove(action);
        }
    }
    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("gate").clone()
    }
}

async fn gate(State(g): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (axum::http::StatusCode::BAD_REQUEST, "body").into_response();
    };
    let action =
        serde_json::from_slice::<CallbackRequest>(&bytes).map(|c| c.action.as_str().to_owned()).unwrap_or_default();
    g.seen.lock().expect("gate").push(action.clone());
    if g.fail.lock().expect("gate").contains(&action) {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "partitioned").into_response();
    }
    let delay = g.delay.lock().expect("gate").get(&action).copied();
    if let Some(d) = delay {
        // Simulates a slow participant; not a synchronisation.
        tokio::time::sleep(d).await;
    }
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if g.hold.lock().expect("gate").contains(&action) {
        g.held.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    response
}

/// A participant service on its own database of the prepared-transactions server.
struct Shop {
    /// Dropped with the shop (the database goes with it).
    _db: TestDb,
    pool: PgPool,
    participant: ThreePhaseParticipant,
    vote: Arc<AtomicBool>,
    gate: Arc<Gate>,
    url: String,
    resource: String,
}

impl Shop {
    async fn start(tag: &str, coordinator: &str) -> Shop {
        let db = TestDb::new_on(&xa_pg_server(), tag).await;
        let pool = db.pool().await;
        sqlx::raw_sql("CREATE TABLE ledger (xid text PRIMARY KEY, amount bigint NOT NULL)")
            .execute(&pool)
            .await
            .expect("schema");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let vote = Arc::new(AtomicBool::new(true));
        let gate = Arc::new(Gate::default());
        let participant = Self::participant(&pool, coordinator, tag, &url, &vote);
        participant.install().await.expect("install");
        participant.check().await.expect("prepared transactions available");
        let app = participant.router().layer(axum::middleware::from_fn_with_state(gate.clone(), self::gate));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Shop { _db: db, pool, participant, vote, gate, url, resource: tag.to_owned() }
    }

    fn participant(
        pool: &PgPool,
        coordinator: &str,
        tag: &str,
        url: &str,
        vote: &Arc<AtomicBool>,
    ) -> ThreePhaseParticipant {
        let client = TandemClient::new(coordinator).expect("client");
        ThreePhaseParticipant::builder(pool.clone(), client, tag, url, Ledger { vote: vote.clone() }).build()
    }

    async fn join(&self, xid: &Xid, amount: i64) {
        let payload = serde_json::json!({ "xid": xid.as_str(), "amount": amount });
        self.participant.join(xid, payload).await.expect("join");
    }

    async fn amount(&self, xid: &Xid) -> Option<i64> {
        sqlx::query_scalar("SELECT amount FROM ledger WHERE xid = $1")
            .bind(xid.as_str())
            .fetch_optional(&self.pool)
            .await
            .expect("ledger")
    }

    /// The state and detail the participant recorded for its branch of `xid`.
    async fn state(&self, t: &Transaction) -> (LocalState, Option<String>) {
        let b = t.branches.iter().find(|b| b.resource == self.resource).expect("branch of this shop");
        let state = self.participant.state(&t.xid, &b.branch_id).await.expect("state");
        let detail = sqlx::query_scalar("SELECT detail FROM tandem_three_phase WHERE xid = $1 AND branch_id = $2")
            .bind(t.xid.as_str())
            .bind(b.branch_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .expect("detail")
            .flatten();
        (state, detail)
    }

    /// Waits for `want` with its detail (a commit records how it came about
    /// just after the commit itself).
    async fn wait_state(&self, t: &Transaction, want: LocalState) -> String {
        eventually(&format!("{} {}", self.resource, want.as_str()), WAIT, || async {
            match self.state(t).await {
                (s, Some(d)) if s == want => Some(d),
                _ => None,
            }
        })
        .await
    }

    async fn prepared(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
            .fetch_one(&self.pool)
            .await
            .expect("pg_prepared_xacts")
    }

    async fn assert_nothing_prepared(&self) {
        eventually(&format!("{}: no prepared transaction left", self.resource), WAIT, || async {
            (self.prepared().await == 0).then_some(())
        })
        .await;
    }
}

fn three_pc(can: u64, pre: u64, done: u64) -> BeginRequest {
    BeginRequest {
        mode: Mode::ThreePc,
        name: Some("three-phase-test".into()),
        timeout_ms: Some(60_000),
        three_phase: Some(ThreePhaseOptions {
            can_commit_timeout_ms: Some(can),
            pre_commit_timeout_ms: Some(pre),
            do_commit_timeout_ms: Some(done),
        }),
    }
}

async fn begin(client: &TandemClient, req: &BeginRequest, a: &Shop, b: &Shop) -> Xid {
    let t = client.begin(req).await.expect("begin");
    a.join(&t.xid, 10).await;
    b.join(&t.xid, 20).await;
    t.xid
}

/// The coordinator's answer to a commit that it turned into an abort: 409 with the transaction.
async fn commit_refused(client: &TandemClient, xid: &Xid, wait: Duration) -> Transaction {
    match client.commit(xid, Some(wait)).await {
        Err(tandem_sdk::ClientError::Problem(p)) => {
            assert_eq!((p.status, p.code), (409, ErrorCode::InvalidState), "{p:?}");
            *p.transaction.expect("the problem carries the transaction")
        }
        other => panic!("expected 409, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_phases_commit_every_branch_in_order() {
    let db = TestDb::new("tpc_happy").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (a, b) = (Shop::start("tpc_happy_a", &c.url).await, Shop::start("tpc_happy_b", &c.url).await);
    let xid = begin(&client, &three_pc(2_000, 3_000, 20_000), &a, &b).await;

    let done = client.commit(&xid, Some(Duration::from_secs(10))).await.expect("commit");
    assert!(done.finished);
    let t = done.transaction;
    assert_eq!(t.status, GlobalStatus::Committed);
    assert!(t.branches.iter().all(|br| br.status == BranchStatus::Committed), "{:?}", t.branches);
    let timeouts = t.three_phase.expect("3pc timeouts in the transaction");
    assert_eq!(
        (timeouts.can_commit_timeout_ms, timeouts.pre_commit_timeout_ms, timeouts.do_commit_timeout_ms),
        (2_000, 3_000, 20_000)
    );
    for (shop, amount) in [(&a, 10), (&b, 20)] {
        assert_eq!(shop.gate.seen(), ["can_commit", "pre_commit", "commit"], "{}", shop.resource);
        assert_eq!(shop.amount(&xid).await, Some(amount));
        assert_eq!(shop.state(&t).await, (LocalState::Committed, Some("committed by DoCommit".into())));
        shop.assert_nothing_prepared().await;
    }
    // A repeated commit answers the same final state.
    let again = client.commit(&xid, None).await.expect("commit again");
    assert_eq!(again.transaction.status, GlobalStatus::Committed);
    // The transaction ended at the coordinator: its rows may go.
    assert_eq!(a.participant.purge(Duration::ZERO).await.expect("purge"), 1);
    assert_eq!(a.state(&t).await, (LocalState::Unknown, None));
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_vote_aborts_before_anything_executes() {
    let db = TestDb::new("tpc_no").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (a, b) = (Shop::start("tpc_no_a", &c.url).await, Shop::start("tpc_no_b", &c.url).await);
    b.vote.store(false, Ordering::SeqCst);
    let xid = begin(&client, &three_pc(2_000, 3_000, 20_000), &a, &b).await;

    let t = commit_refused(&client, &xid, Duration::from_secs(10)).await;
    let t = wait_status(&client, &t.xid, "rolled_back", WAIT).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::BranchFailed));
    let no = t.branches.iter().find(|br| br.resource == b.resource).expect("b");
    assert_eq!(no.status, BranchStatus::RolledBack);
    assert!(no.last_error.as_deref().is_some_and(|e| e.contains("CanCommit")), "{:?}", no.last_error);
    for shop in [&a, &b] {
        assert!(!shop.gate.seen().contains(&"pre_commit".to_owned()), "{}: {:?}", shop.resource, shop.gate.seen());
        assert_eq!(shop.state(&t).await.0, LocalState::Aborted);
        assert_eq!(shop.amount(&xid).await, None);
        shop.assert_nothing_prepared().await;
    }
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_can_commit_timeout_aborts() {
    let db = TestDb::new("tpc_cto").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (a, b) = (Shop::start("tpc_cto_a", &c.url).await, Shop::start("tpc_cto_b", &c.url).await);
    b.gate.delay.lock().expect("gate").insert("can_commit".into(), Duration::from_millis(1_500));
    let xid = begin(&client, &three_pc(300, 3_000, 20_000), &a, &b).await;

    let t = commit_refused(&client, &xid, Duration::from_secs(10)).await;
    let t = wait_status(&client, &t.xid, "rolled_back", WAIT).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::Timeout));
    for shop in [&a, &b] {
        assert!(!shop.gate.seen().contains(&"pre_commit".to_owned()));
        // B's vote arrives late, or after the abort: either way B ends aborted.
        shop.wait_state(&t, LocalState::Aborted).await;
        assert_eq!(shop.amount(&xid).await, None);
        shop.assert_nothing_prepared().await;
    }
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_commit_acknowledgement_timeout_aborts_and_undoes_the_late_prepare() {
    let db = TestDb::new("tpc_pto").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (a, b) = (Shop::start("tpc_pto_a", &c.url).await, Shop::start("tpc_pto_b", &c.url).await);
    b.gate.delay.lock().expect("gate").insert("pre_commit".into(), Duration::from_millis(1_500));
    let xid = begin(&client, &three_pc(300, 600, 20_000), &a, &b).await;

    let t = commit_refused(&client, &xid, Duration::from_secs(10)).await;
    let t = wait_status(&client, &t.xid, "rolled_back", WAIT).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::Timeout));
    let late = t.branches.iter().find(|br| br.resource == b.resource).expect("b");
    assert!(late.last_error.as_deref().is_some_and(|e| e.contains("PreCommit")), "{:?}", late.last_error);
    // A pre-committed and was rolled back; B's PreCommit ran late and was refused or undone.
    assert_eq!(a.state(&t).await.0, LocalState::Aborted);
    assert_eq!(a.gate.seen(), ["can_commit", "pre_commit", "rollback"]);
    b.wait_state(&t, LocalState::Aborted).await;
    for shop in [&a, &b] {
        shop.assert_nothing_prepared().await;
        assert_eq!(shop.amount(&xid).await, None);
    }
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_commit_on_their_own_when_the_coordinator_dies_after_pre_commit() {
    let db = TestDb::new("tpc_dead").await;
    let mut c = Process::spawn(&db.url, FAST_FLAGS).await;
    let (a, b) = (Shop::start("tpc_dead_a", &c.url).await, Shop::start("tpc_dead_b", &c.url).await);
    // B pre-commits but its acknowledgement never reaches the coordinator.
    b.gate.set(&b.gate.hold, "pre_commit", true);
    let xid = begin(&c.client, &three_pc(1_000, 2_000, 7_000), &a, &b).await;
    let _ = c.client.commit(&xid, Some(Duration::ZERO)).await.expect("commit accepted");
    eventually("B pre-committed", WAIT, || async { (b.gate.held.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    let t = c.client.get(&xid).await.expect("get");
    assert_eq!(t.status, GlobalStatus::PreCommitted);
    c.kill9().await;

    // A restarts too: a new participant re-arms its timer from the gid alone.
    eventually("A pre-committed", WAIT, || async { (a.state(&t).await.0 == LocalState::PreCommitted).then_some(()) })
        .await;
    a.participant.stop();
    let a2 = Shop::participant(&a.pool, &c.url, &a.resource, &a.url, &a.vote);
    let rearmed = a2.recover().await.expect("recover");
    assert_eq!(rearmed.pre_committed, 1);

    // No DoCommit, no abort: both commit on their own timeout.
    for shop in [&a, &b] {
        let how = shop.wait_state(&t, LocalState::Committed).await;
        assert_eq!(how, "committed on its own timeout", "{}", shop.resource);
        assert!(shop.amount(&xid).await.is_some());
        shop.assert_nothing_prepared().await;
    }

    // The restarted coordinator re-sends PreCommit, both acknowledge (they
    // are past it), and it commits: one outcome everywhere.
    b.gate.set(&b.gate.hold, "pre_commit", false);
    let c2 = Process::spawn(&db.url, FAST_FLAGS).await;
    let t = wait_status(&c2.client, &xid, "committed", WAIT).await;
    assert!(t.branches.iter().all(|br| br.status == BranchStatus::Committed), "{:?}", t.branches);
}

/// Kills the coordinator while `action`'s answer from B is withheld, restarts
/// it, and returns the final transaction with the shops.
async fn killed_during(tag: &str, action: &str) -> (Transaction, Shop, Shop) {
    let db = TestDb::new(tag).await;
    let mut c = Process::spawn(&db.url, FAST_FLAGS).await;
    let (a, b) = (Shop::start(&format!("{tag}_a"), &c.url).await, Shop::start(&format!("{tag}_b"), &c.url).await);
    b.gate.set(&b.gate.hold, action, true);
    // Long participant timers: the restarted coordinator must settle everything itself.
    let xid = begin(&c.client, &three_pc(2_000, 20_000, 60_000), &a, &b).await;
    let _ = c.client.commit(&xid, Some(Duration::ZERO)).await.expect("commit accepted");
    eventually(&format!("B's {action} answer withheld"), WAIT, || async {
        (b.gate.held.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    c.kill9().await;
    b.gate.set(&b.gate.hold, action, false);
    let c2 = Process::spawn(&db.url, FAST_FLAGS).await;
    let t = eventually("a terminal status after the restart", WAIT, || async {
        c2.client.get(&xid).await.ok().filter(|t| t.status.is_terminal())
    })
    .await;
    drop(c2);
    drop(db);
    (t, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_while_collecting_votes_aborts_after_restart() {
    let (t, a, b) = killed_during("tpc_kvote", "can_commit").await;
    assert_eq!((t.status, t.rollback_reason), (GlobalStatus::RolledBack, Some(RollbackReason::Timeout)));
    for shop in [&a, &b] {
        assert_eq!(shop.state(&t).await.0, LocalState::Aborted);
        assert!(!shop.gate.seen().contains(&"pre_commit".to_owned()));
        assert_eq!(shop.amount(&t.xid).await, None);
        shop.assert_nothing_prepared().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_while_collecting_acknowledgements_commits_after_restart() {
    let (t, a, b) = killed_during("tpc_kpre", "pre_commit").await;
    assert_eq!(t.status, GlobalStatus::Committed);
    for shop in [&a, &b] {
        assert_eq!(shop.state(&t).await, (LocalState::Committed, Some("committed by DoCommit".into())));
        assert!(shop.amount(&t.xid).await.is_some());
        shop.assert_nothing_prepared().await;
    }
    // The restarted coordinator re-sent PreCommit to both (neither acknowledgement was recorded).
    assert_eq!(b.gate.seen(), ["can_commit", "pre_commit", "pre_commit", "commit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_during_do_commit_finishes_after_restart() {
    let (t, a, b) = killed_during("tpc_kdo", "commit").await;
    assert_eq!(t.status, GlobalStatus::Committed);
    for shop in [&a, &b] {
        assert_eq!(shop.state(&t).await.0, LocalState::Committed);
        assert!(shop.amount(&t.xid).await.is_some());
        shop.assert_nothing_prepared().await;
    }
    // DoCommit is delivered at least once; the repeat is harmless.
    assert_eq!(b.gate.seen().iter().filter(|a| *a == "commit").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_after_pre_commit_splits_the_outcome_and_the_coordinator_shows_it() {
    let db = TestDb::new("tpc_split").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (a, b) = (Shop::start("tpc_split_a", &c.url).await, Shop::start("tpc_split_b", &c.url).await);
    // B is cut off from PreCommit, so the coordinator aborts; A, pre-committed,
    // is cut off from the abort, so it commits on its own timeout.
    b.gate.set(&b.gate.fail, "pre_commit", true);
    a.gate.set(&a.gate.fail, "rollback", true);
    let xid = begin(&client, &three_pc(300, 500, 6_000), &a, &b).await;

    let t = commit_refused(&client, &xid, Duration::from_secs(1)).await;
    assert_eq!(t.status, GlobalStatus::RollingBack);
    a.wait_state(&t, LocalState::Committed).await;
    b.wait_state(&t, LocalState::Aborted).await;
    // The inconsistency, in the data: A has the row, B has not.
    assert_eq!(a.amount(&xid).await, Some(10));
    assert_eq!(b.amount(&xid).await, None);

    // Still rolling back: A's row is what will answer the abort, so it stays.
    assert_eq!(a.participant.purge(Duration::ZERO).await.expect("purge"), 0);

    // The partition heals: the abort reaches A, which answers that it committed.
    a.gate.set(&a.gate.fail, "rollback", false);
    let t = wait_status(&client, &xid, "heuristic_mixed", WAIT).await;
    let status = |shop: &Shop| t.branches.iter().find(|br| br.resource == shop.resource).map(|br| br.status);
    assert_eq!(status(&a), Some(BranchStatus::HeuristicCommitted));
    assert_eq!(status(&b), Some(BranchStatus::RolledBack));
    let metrics = reqwest::get(format!("{}/metrics", c.url)).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.lines().any(|l| l == "tandem_heuristic_outcomes_total{mode=\"3pc\"} 1"),
        "metrics:\n{}",
        metrics.lines().filter(|l| l.contains("heuristic")).collect::<Vec<_>>().join("\n")
    );
    let listed = client
        .list(&tandem_sdk::client::ListQuery { status: Some(GlobalStatus::HeuristicMixed), ..Default::default() })
        .await
        .expect("list");
    assert_eq!(listed.transactions.iter().map(|t| &t.xid).collect::<Vec<_>>(), [&xid]);
    for shop in [&a, &b] {
        shop.assert_nothing_prepared().await;
        assert_eq!(shop.participant.purge(Duration::ZERO).await.expect("purge"), 1, "{}", shop.resource);
    }
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_in_progress_are_visible_and_refuse_a_rollback() {
    let db = TestDb::new("tpc_vis").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (a, b) = (Shop::start("tpc_vis_a", &c.url).await, Shop::start("tpc_vis_b", &c.url).await);
    b.gate.set(&b.gate.hold, "can_commit", true);
    let xid = begin(&client, &three_pc(1_000, 3_000, 20_000), &a, &b).await;
    let accepted = client.commit(&xid, Some(Duration::ZERO)).await.expect("commit accepted");
    assert!(!accepted.finished);
    eventually("B's vote withheld", WAIT, || async { (b.gate.held.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    assert_eq!(client.get(&xid).await.expect("get").status, GlobalStatus::CanCommit);
    let refused = client.rollback(&xid, None).await.expect_err("rollback while voting");
    assert_eq!((refused.status(), refused.code()), (Some(409), Some(ErrorCode::InvalidState)));
    // The withheld vote counts as no answer: abort on the CanCommit timeout.
    let t = wait_status(&client, &xid, "rolled_back", WAIT).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::Timeout));
    for shop in [&a, &b] {
        shop.wait_state(&t, LocalState::Aborted).await;
        shop.assert_nothing_prepared().await;
    }
    c.stop().await.expect("coordinator stops");
}

/// The statuses of the branches, by shop.
async fn branch_statuses(
    client: &TandemClient,
    xid: &Xid,
    a: &Shop,
    b: &Shop,
) -> (GlobalStatus, BranchStatus, BranchStatus) {
    let t = client.get(xid).await.expect("get");
    let of = |shop: &Shop| t.branches.iter().find(|br| br.resource == shop.resource).map(|br| br.status);
    (t.status, of(a).expect("a"), of(b).expect("b"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_states_say_where_each_branch_is_in_the_protocol() {
    let db = TestDb::new("tpc_names").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (a, b) = (Shop::start("tpc_names_a", &c.url).await, Shop::start("tpc_names_b", &c.url).await);
    // B acknowledges PreCommit late, then its DoCommit answer is lost until released.
    b.gate.delay.lock().expect("gate").insert("pre_commit".into(), Duration::from_millis(1_500));
    b.gate.set(&b.gate.hold, "commit", true);
    let xid = begin(&client, &three_pc(1_000, 5_000, 60_000), &a, &b).await;
    let _ = client.commit(&xid, Some(Duration::ZERO)).await.expect("commit accepted");
    let voted = eventually("both voted yes, PreCommit outstanding", WAIT, || async {
        let s = branch_statuses(&client, &xid, &a, &b).await;
        (s.0 == GlobalStatus::PreCommitted).then_some(s)
    })
    .await;
    assert_eq!(voted, (GlobalStatus::PreCommitted, BranchStatus::VotedYes, BranchStatus::VotedYes));
    let acked = eventually("A committed, B acknowledged PreCommit and awaits DoCommit", WAIT, || async {
        let s = branch_statuses(&client, &xid, &a, &b).await;
        (s.1 == BranchStatus::Committed).then_some(s)
    })
    .await;
    assert_eq!(acked, (GlobalStatus::Committing, BranchStatus::Committed, BranchStatus::PreCommitted));
    b.gate.set(&b.gate.hold, "commit", false);
    let t = wait_status(&client, &xid, "committed", WAIT).await;
    assert!(t.branches.iter().all(|br| br.status == BranchStatus::Committed), "{:?}", t.branches);

    // A no vote is told apart from a missing one, until the rollback reaches it.
    b.vote.store(false, Ordering::SeqCst);
    b.gate.set(&b.gate.hold, "rollback", true);
    let xid = begin(&client, &three_pc(1_000, 5_000, 60_000), &a, &b).await;
    let t = commit_refused(&client, &xid, Duration::from_secs(10)).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::BranchFailed));
    let no = eventually("A rolled back, B's rollback answer lost", WAIT, || async {
        let s = branch_statuses(&client, &xid, &a, &b).await;
        (s.1 == BranchStatus::RolledBack).then_some(s)
    })
    .await;
    assert_eq!(no, (GlobalStatus::RollingBack, BranchStatus::RolledBack, BranchStatus::VotedNo));
    b.gate.set(&b.gate.hold, "rollback", false);
    wait_status(&client, &xid, "rolled_back", WAIT).await;
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_three_phase_options_are_refused() {
    let db = TestDb::new("tpc_bad").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let mut tcc = three_pc(1_000, 2_000, 5_000);
    tcc.mode = Mode::Tcc;
    // A participant that could commit on its own while a coordinator may still abort.
    let inverted = three_pc(1_000, 5_000, 5_000);
    let short = three_pc(1_000, 5_000, 12_000);
    let slow_votes = three_pc(5_000, 5_000, 60_000);
    let zero = three_pc(0, 2_000, 60_000);
    let cases = [
        (&tcc, "only for mode 3pc"),
        (&inverted, "greater than"),
        (&short, "greater than"),
        (&slow_votes, "less than"),
        (&zero, "can_commit_timeout_ms"),
    ];
    for (req, says) in cases {
        let e = client.begin(req).await.expect_err("refused");
        assert_eq!((e.status(), e.code()), (Some(422), Some(ErrorCode::ValidationFailed)), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    // Defaults when none are given.
    let t = client
        .begin(&BeginRequest { mode: Mode::ThreePc, name: None, timeout_ms: None, three_phase: None })
        .await
        .expect("begin");
    let d = t.three_phase.expect("defaults");
    assert_eq!((d.can_commit_timeout_ms, d.pre_commit_timeout_ms, d.do_commit_timeout_ms), (3_000, 5_000, 40_000));
    let listed = client.list(&Default::default()).await.expect("list");
    assert_eq!(listed.transactions.len(), 1, "refused begins wrote nothing");
    c.stop().await.expect("coordinator stops");
}

/// The participant process of
/// `a_participant_process_killed_after_pre_commit_commits_on_its_own_after_restart`:
/// run by that test as a child process (this test binary, filtered to this
/// entry point), never on its own (hence `ignore`). It serves a 3PC
/// participant on the given port and database, re-arms its timers
/// (`recover`), joins `CHILD_JOIN` if set, says so on stdout, and runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_participant_process_killed_after_pre_commit_commits_on_its_own_after_restart"]
async fn three_phase_participant_child_process() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set: this runs as a child process"));
    let (coordinator, db_url, port) = (var("CHILD_COORDINATOR"), var("CHILD_DB"), var("CHILD_PORT"));
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&db_url).await.expect("pool");
    let url = format!("http://127.0.0.1:{port}");
    let vote = Arc::new(AtomicBool::new(true));
    let p = Shop::participant(&pool, &coordinator, "child", &url, &vote);
    p.install().await.expect("install");
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind");
    let app = p.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let rearmed = p.recover().await.expect("recover");
    println!("REARMED {}", rearmed.pre_committed);
    if let Ok(xid) = std::env::var("CHILD_JOIN") {
        let xid = Xid::parse(xid).expect("xid");
        p.join(&xid, serde_json::json!({ "xid": xid.as_str(), "amount": 30 })).await.expect("join");
    }
    println!("READY");
    std::future::pending::<()>().await;
}

/// Starts the child participant process and waits for its `READY`; returns it
/// with what its `recover` re-armed.
async fn child_participant(
    coordinator: &str,
    db: &TestDb,
    port: u16,
    join: Option<&Xid>,
) -> (tokio::process::Child, usize) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut cmd = tokio::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["three_phase_participant_child_process", "--exact", "--ignored", "--nocapture"])
        .env("CHILD_COORDINATOR", coordinator)
        .env("CHILD_DB", &db.url)
        .env("CHILD_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(xid) = join {
        cmd.env("CHILD_JOIN", xid.as_str());
    }
    let mut child = cmd.spawn().expect("spawn participant process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let rearmed = tokio::time::timeout(WAIT, async {
        let mut rearmed = None;
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(n) = line.strip_prefix("REARMED ") {
                rearmed = n.trim().parse().ok();
            }
            if line.contains("READY") {
                return rearmed.expect("REARMED before READY");
            }
        }
        panic!("the participant process ended before it was ready");
    })
    .await
    .expect("the participant process starts");
    // Keep draining its output so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, rearmed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_process_killed_after_pre_commit_commits_on_its_own_after_restart() {
    let db = TestDb::new("tpc_pkill").await;
    let mut c = Process::spawn(&db.url, FAST_FLAGS).await;
    let b = Shop::start("tpc_pkill_b", &c.url).await;
    let adb = TestDb::new_on(&xa_pg_server(), "tpc_pkill_a").await;
    let apool = adb.pool().await;
    sqlx::raw_sql("CREATE TABLE ledger (xid text PRIMARY KEY, amount bigint NOT NULL)")
        .execute(&apool)
        .await
        .expect("schema");
    let port = free_port().await;
    let t = c.client.begin(&three_pc(1_000, 2_000, 7_000)).await.expect("begin");
    let xid = t.xid.clone();
    let (mut a, rearmed) = child_participant(&c.url, &adb, port, Some(&xid)).await;
    assert_eq!(rearmed, 0);
    b.join(&xid, 20).await;

    // A pre-commits and acknowledges; B's acknowledgement is withheld, so the
    // coordinator is still waiting when both it and A's process are killed.
    b.gate.set(&b.gate.hold, "pre_commit", true);
    let _ = c.client.commit(&xid, Some(Duration::ZERO)).await.expect("commit accepted");
    eventually("B pre-committed, acknowledgement withheld", WAIT, || async {
        (b.gate.held.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let prepared_at_a = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'tandem3|%'",
        )
        .fetch_one(&apool)
        .await
        .expect("pg_prepared_xacts")
    };
    eventually("A pre-committed", WAIT, || async { (prepared_at_a().await == 1).then_some(()) }).await;
    let t = c.client.get(&xid).await.expect("get");
    assert_eq!(t.status, GlobalStatus::PreCommitted);
    c.kill9().await;
    a.kill().await.expect("SIGKILL the participant");
    assert_eq!(prepared_at_a().await, 1, "the pre-committed branch survives its process");

    // A's process restarts; its timer comes back from the gid and commits on its own.
    let (_a2, rearmed) = child_participant(&c.url, &adb, port, None).await;
    assert_eq!(rearmed, 1);
    let how = eventually("A committed by its restarted process", WAIT, || async {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT state, detail FROM tandem_three_phase WHERE xid = $1")
                .bind(xid.as_str())
                .fetch_optional(&apool)
                .await
                .expect("state row");
        row.filter(|(s, d)| s == "committed" && d.is_some()).and_then(|(_, d)| d)
    })
    .await;
    assert_eq!(how, "committed on its own timeout");
    let amount: Option<i64> = sqlx::query_scalar("SELECT amount FROM ledger WHERE xid = $1")
        .bind(xid.as_str())
        .fetch_optional(&apool)
        .await
        .expect("ledger");
    assert_eq!(amount, Some(30));
    assert_eq!(prepared_at_a().await, 0);
    b.wait_state(&t, LocalState::Committed).await;
    b.assert_nothing_prepared().await;

    // The restarted coordinator finds both past PreCommit and commits.
    b.gate.set(&b.gate.hold, "pre_commit", false);
    let c2 = Process::spawn(&db.url, FAST_FLAGS).await;
    let done = wait_status(&c2.client, &xid, "committed", WAIT).await;
    assert!(done.branches.iter().all(|br| br.status == BranchStatus::Committed), "{:?}", done.branches);
}
