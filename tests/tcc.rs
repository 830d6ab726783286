//! TCC mode end to end, against real PostgreSQL, real HTTP on loopback, and
//! real coordinator processes where a crash is part of the story.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tandem_sdk::tcc::TccError;
use tandem_sdk::wire::{BeginRequest, BranchStatus, ErrorCode, GlobalStatus, Mode, RollbackReason};

const WAIT: Duration = Duration::from_secs(20);

fn tcc() -> BeginRequest {
    BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: None, three_phase: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_commits_both_legs_in_reverse_order() {
    let w = World::new("happy").await;
    let (c, client) = spawn_coordinator(fast_settings(&w.db.url)).await;
    let (a, b) = w.banks(&c.url, 1_000).await;

    let (xid, branch_a, branch_b) = begin_transfer(&client, &a, &b, 300).await;
    assert_eq!(a.balance("alice").await, (1_000, 300, 0), "try froze the debit");
    assert_eq!(b.balance("bob").await, (0, 0, 300), "try recorded the credit");

    let decided = client.commit(&xid, None).await.expect("commit");
    assert!(decided.finished);
    let t = decided.transaction;
    assert_eq!(t.status, GlobalStatus::Committed);
    assert!(t.decided_at.is_some() && t.finished_at.is_some());
    assert!(t.branches.iter().all(|b| b.status == BranchStatus::Committed && b.attempts == 1));

    assert_eq!(a.balance("alice").await, (700, 0, 0));
    assert_eq!(b.balance("bob").await, (300, 0, 0));
    assert_eq!(a.steps(&branch_a, "confirm").await, 1);
    assert_eq!(b.steps(&branch_b, "confirm").await, 1);

    // Phase 2 in reverse registration order: bob's branch (registered second) first.
    let seen: Vec<_> = w.log.lock().expect("log").iter().map(|s| s.branch_id.clone()).collect();
    assert_eq!(seen, vec![branch_b.clone(), branch_a.clone()]);

    // The stored state says the same.
    let stored = client.get(&xid).await.expect("get");
    assert_eq!(stored.status, GlobalStatus::Committed);
    assert_eq!(stored.branches.len(), 2);

    // Commit is idempotent.
    let again = client.commit(&xid, None).await.expect("commit again");
    assert!(again.finished);
    assert_eq!(again.transaction.status, GlobalStatus::Committed);
    assert_eq!(a.steps(&branch_a, "confirm").await, 1);
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_try_cancels_everywhere_and_commit_is_refused() {
    let w = World::new("failtry").await;
    let (c, client) = spawn_coordinator(fast_settings(&w.db.url)).await;
    let (a, b) = w.banks(&c.url, 100).await;

    let tx = client.begin(&tcc()).await.expect("begin");
    let branch_b = b.leg(&tx.xid, "bob", 500, "credit").await.expect("credit leg tried");
    assert_eq!(a.leg(&tx.xid, "alice", 500, "debit").await, Err(409), "insufficient funds");
    let t = client.get(&tx.xid).await.expect("get");
    assert_eq!(t.branches[1].status, BranchStatus::Phase1Failed, "the failed try was reported");
    let branch_a = t.branches[1].branch_id.to_string();

    // Commit with a failed branch: rolled back instead, answered 409 with the final state.
    let err = client.commit(&tx.xid, None).await.expect_err("commit refused");
    assert_eq!(err.code(), Some(ErrorCode::InvalidState));
    assert_eq!(err.status(), Some(409));
    let t = wait_status(&client, &tx.xid, "rolled_back", WAIT).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::BranchFailed));
    assert!(t.branches.iter().all(|b| b.status == BranchStatus::RolledBack));

    assert_eq!(b.steps(&branch_b, "cancel").await, 1, "bob's tried credit cancelled");
    assert_eq!(a.steps(&branch_a, "cancel").await, 0, "alice's failed try: empty rollback");
    assert_eq!(a.balance("alice").await, (100, 0, 0));
    assert_eq!(b.balance("bob").await, (0, 0, 0));
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_is_retried_through_503s_and_downtime_and_applied_once() {
    let w = World::new("retry").await;
    let (c, client) = spawn_coordinator(fast_settings(&w.db.url)).await;
    let (a, b) = w.banks(&c.url, 1_000).await;
    let (xid, branch_a, branch_b) = begin_transfer(&client, &a, &b, 250).await;

    // Bank B is down when phase 2 starts.
    b.stop().await;
    let decided = client.commit(&xid, Some(Duration::ZERO)).await.expect("commit decided");
    assert!(!decided.finished, "202 while bank B is down");
    assert_eq!(decided.transaction.status, GlobalStatus::Committing);
    eventually("two failed attempts on bank B", WAIT, || async {
        let t = client.get(&xid).await.ok()?;
        let bb = t.branches.iter().find(|x| x.branch_id.as_str() == branch_b)?;
        (bb.attempts >= 2 && bb.last_error.is_some()).then_some(())
    })
    .await;

    // It comes back, but answers 503 twice more.
    b.faults.fail_next.store(2, Ordering::SeqCst);
    let b = b.restart().await;
    let t = wait_status(&client, &xid, "committed", WAIT).await;
    let bb = t.branches.iter().find(|x| x.branch_id.as_str() == branch_b).expect("branch b");
    assert!(bb.attempts >= 4, "down twice, 503 twice, then done: {} attempts", bb.attempts);
    assert_eq!(b.faults.fail_next.load(Ordering::SeqCst), 0, "both 503s were served");

    assert_eq!(b.steps(&branch_b, "confirm").await, 1);
    assert_eq!(a.steps(&branch_a, "confirm").await, 1);
    assert_eq!(a.balance("alice").await, (750, 0, 0));
    assert_eq!(b.balance("bob").await, (250, 0, 0));
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_confirm_and_cancel_are_applied_once() {
    let w = World::new("dup").await;
    let (c, client) = spawn_coordinator(fast_settings(&w.db.url)).await;
    let (a, b) = w.banks(&c.url, 1_000).await;
    let http = reqwest::Client::new();
    let callback = |bank: &Bank| format!("{}{}", bank.url, tandem_sdk::tcc::CALLBACK_PATH);

    // A committed transfer; then the coordinator's confirm delivered twice more.
    let (xid, branch_a, _) = begin_transfer(&client, &a, &b, 100).await;
    let committed = client.commit(&xid, None).await.expect("commit").transaction;
    let leg_a = committed.branches.iter().find(|x| x.branch_id.as_str() == branch_a).expect("a").clone();
    for _ in 0..2 {
        let body = serde_json::json!({"xid": xid, "branch_id": branch_a, "mode": "tcc", "action": "commit",
            "resource": "account", "payload": leg_a.payload});
        let r = http.post(callback(&a)).json(&body).send().await.expect("post");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["outcome"], "already_done");
    }
    assert_eq!(a.steps(&branch_a, "confirm").await, 1);
    assert_eq!(a.balance("alice").await, (900, 0, 0));
    // A cancel of a confirmed branch is a permanent conflict.
    let body = serde_json::json!({"xid": xid, "branch_id": branch_a, "mode": "tcc", "action": "rollback",
        "resource": "account", "payload": leg_a.payload});
    assert_eq!(http.post(callback(&a)).json(&body).send().await.expect("post").status(), 409);

    // A rolled-back transfer; then cancel delivered twice more.
    let (xid, branch_a, _) = begin_transfer(&client, &a, &b, 100).await;
    let rolled = client.rollback(&xid, None).await.expect("rollback").transaction;
    assert_eq!(rolled.status, GlobalStatus::RolledBack);
    let leg_a = rolled.branches.iter().find(|x| x.branch_id.as_str() == branch_a).expect("a").clone();
    for _ in 0..2 {
        let body = serde_json::json!({"xid": xid, "branch_id": branch_a, "mode": "tcc", "action": "rollback",
            "resource": "account", "payload": leg_a.payload});
        let r = http.post(callback(&a)).json(&body).send().await.expect("post");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(a.steps(&branch_a, "cancel").await, 1);
    assert_eq!(a.balance("alice").await, (900, 0, 0), "the cancelled debit left the balance alone");
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_without_try_is_an_empty_rollback() {
    let w = World::new("empty").await;
    let (c, client) = spawn_coordinator(fast_settings(&w.db.url)).await;
    let (a, _b) = w.banks(&c.url, 1_000).await;

    let tx = client.begin(&tcc()).await.expect("begin");
    let payload = serde_json::json!({"account": "alice", "amount": 40, "direction": "debit"});
    // Registered, but the try never runs (say the service crashed in between).
    let ctx = a.participant.register(&tx.xid, "account", &payload).await.expect("register");
    let t = client.rollback(&tx.xid, None).await.expect("rollback").transaction;
    assert_eq!(t.status, GlobalStatus::RolledBack);
    assert_eq!(t.branches[0].status, BranchStatus::RolledBack);

    let bid = ctx.branch_id.to_string();
    assert_eq!(a.steps(&bid, "cancel").await, 0, "business cancel skipped");
    let fence: String = sqlx::query_scalar("SELECT status FROM tandem_tcc_fence WHERE branch_id = $1")
        .bind(&bid)
        .fetch_one(&a.pool)
        .await
        .expect("fence row");
    assert_eq!(fence, "suspended");
    assert_eq!(a.balance("alice").await, (1_000, 0, 0));
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_try_after_cancel_is_refused() {
    let w = World::new("suspend").await;
    let (c, client) = spawn_coordinator(fast_settings(&w.db.url)).await;
    let (a, _b) = w.banks(&c.url, 1_000).await;

    let tx = client.begin(&tcc()).await.expect("begin");
    let payload = serde_json::json!({"account": "alice", "amount": 40, "direction": "debit"});
    let ctx = a.participant.register(&tx.xid, "account", &payload).await.expect("register");
    client.rollback(&tx.xid, None).await.expect("rollback");

    // The delayed try finally arrives.
    let late = a.participant.execute_try(&ctx, &payload).await;
    assert!(matches!(late, Err(TccError::Suspended(_))), "{late:?}");
    assert_eq!(a.steps(ctx.branch_id.as_str(), "try").await, 0);
    assert_eq!(a.balance("alice").await, (1_000, 0, 0), "nothing frozen by the late try");
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_transaction_is_rolled_back_at_its_deadline() {
    let w = World::new("timeout").await;
    let (c, client) = spawn_coordinator(fast_settings(&w.db.url)).await;
    let (a, b) = w.banks(&c.url, 1_000).await;

    let tx = client
        .begin(&BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: Some(400), three_phase: None })
        .await
        .expect("begin");
    let branch_a = a.leg(&tx.xid, "alice", 10, "debit").await.expect("leg a");
    let branch_b = b.leg(&tx.xid, "bob", 10, "credit").await.expect("leg b");
    // Nobody commits.
    let t = wait_status(&client, &tx.xid, "rolled_back", WAIT).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::Timeout));
    assert_eq!(a.steps(&branch_a, "cancel").await, 1);
    assert_eq!(b.steps(&branch_b, "cancel").await, 1);
    assert_eq!(a.balance("alice").await, (1_000, 0, 0));
    assert_eq!(b.balance("bob").await, (0, 0, 0));

    // Too late for anything else.
    let err = client.commit(&tx.xid, None).await.expect_err("commit after timeout");
    assert_eq!((err.status(), err.code()), (Some(409), Some(ErrorCode::InvalidState)));
    let late = a.leg(&tx.xid, "alice", 10, "debit").await;
    assert_eq!(late, Err(502), "registration refused by the coordinator (409) → bank answers 502");
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_decision_is_finished_by_a_restart() {
    let w = World::new("kill").await;
    let mut p = Process::spawn(&w.db.url, FAST_FLAGS).await;
    let (a, b) = w.banks(&p.url, 1_000).await;
    let (xid, branch_a, branch_b) = begin_transfer(&p.client, &a, &b, 500).await;

    // Phase 2 reaches bank B (first, reverse order) and hangs there.
    b.faults.hold_callbacks();
    let decided = p.client.commit(&xid, Some(Duration::ZERO)).await.expect("commit decided");
    assert_eq!(decided.transaction.status, GlobalStatus::Committing);
    eventually("bank B receives the confirm", WAIT, || async {
        (b.faults.arrived.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    p.kill9().await;
    b.faults.release();

    // The decision survived the crash.
    let coordinator_db = w.db.pool().await;
    let status: String = sqlx::query_scalar("SELECT status FROM global_transactions WHERE xid = $1")
        .bind(xid.as_str())
        .fetch_one(&coordinator_db)
        .await
        .expect("row");
    assert_eq!(status, "committing");

    // A restarted coordinator (new process, same database, same address for the banks) finishes it.
    let restarted = Process::spawn(&w.db.url, FAST_FLAGS).await;
    let t = wait_status(&restarted.client, &xid, "committed", WAIT).await;
    assert!(t.branches.iter().all(|b| b.status == BranchStatus::Committed));
    assert_eq!(a.steps(&branch_a, "confirm").await, 1);
    assert_eq!(b.steps(&branch_b, "confirm").await, 1);
    assert_eq!(a.balance("alice").await, (500, 0, 0));
    assert_eq!(b.balance("bob").await, (500, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_coordinator_finishes_phase_2_of_a_killed_one() {
    let w = World::new("twocoord").await;
    let mut p1 = Process::spawn(&w.db.url, FAST_FLAGS).await;
    let p2 = Process::spawn(&w.db.url, FAST_FLAGS).await;
    let (a, b) = w.banks(&p1.url, 1_000).await;
    let (xid, branch_a, branch_b) = begin_transfer(&p1.client, &a, &b, 123).await;

    b.faults.hold_callbacks();
    p1.client.commit(&xid, Some(Duration::ZERO)).await.expect("commit decided");
    eventually("bank B receives the confirm from p1", WAIT, || async {
        (b.faults.arrived.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    p1.kill9().await;
    b.faults.release();

    let t = wait_status(&p2.client, &xid, "committed", WAIT).await;
    assert!(t.branches.iter().all(|b| b.status == BranchStatus::Committed));
    assert_eq!(a.steps(&branch_a, "confirm").await, 1);
    assert_eq!(b.steps(&branch_b, "confirm").await, 1);
    assert_eq!(a.balance("alice").await, (877, 0, 0));
    assert_eq!(b.balance("bob").await, (123, 0, 0));
    let metrics = reqwest::get(format!("{}/metrics", p2.url)).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.lines().any(|l| l.starts_with("tandem_recovery_taken_total{kind=\"resume\"}") && !l.ends_with(" 0")),
        "p2 took the transaction over:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully() {
    let db = TestDb::new("sigterm").await;
    let mut p = Process::spawn(&db.url, FAST_FLAGS).await;
    let tx = p.client.begin(&tcc()).await.expect("begin");
    let status = p.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    // A later process sees the transaction intact.
    let q = Process::spawn(&db.url, FAST_FLAGS).await;
    assert_eq!(q.client.get(&tx.xid).await.expect("get").status, GlobalStatus::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_begin_returns_the_same_transaction() {
    let db = TestDb::new("idem").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let req =
        BeginRequest { mode: Mode::Tcc, name: Some("order-7".into()), timeout_ms: Some(30_000), three_phase: None };
    let first = client.begin_idempotent(&req, "order-7-attempt").await.expect("first");
    let second = client.begin_idempotent(&req, "order-7-attempt").await.expect("second");
    assert_eq!(first.xid, second.xid);
    let other = BeginRequest { timeout_ms: Some(10_000), ..req };
    let err = client.begin_idempotent(&other, "order-7-attempt").await.expect_err("different request");
    assert_eq!(err.code(), Some(ErrorCode::IdempotencyKeyReused));
    let list = client.list(&Default::default()).await.expect("list");
    assert_eq!(list.transactions.len(), 1);
    c.stop().await.expect("coordinator stops");
}

/// Sends a raw request; returns status, content type and the JSON body.
async fn raw(method: reqwest::Method, url: String, body: Option<(&str, Vec<u8>)>) -> (u16, String, serde_json::Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some((ct, b)) = body {
        r = r.header("content-type", ct).body(b);
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let v = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, ct, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_problems_and_changes_nothing() {
    use reqwest::Method;
    let db = TestDb::new("badinput").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let json = "application/json";
    let tx = client.begin(&tcc()).await.expect("begin");
    let x = tx.xid.to_string();
    let reg = serde_json::json!({"resource": "r", "callback_url": ok_participant().await});
    let branch = client.register(&tx.xid, &serde_json::from_value(reg.clone()).expect("req")).await.expect("register");
    let before = client.get(&tx.xid).await.expect("get");

    let u = |p: &str| format!("{}{p}", c.url);
    // (method, url, (content type, body), expected status, expected code)
    type Case<'a> = (Method, String, Option<(&'a str, Vec<u8>)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (Method::POST, u("/v1/transactions"), Some((json, b"{\"mode\":".to_vec())), 400, "validation_failed"),
        (Method::POST, u("/v1/transactions"), Some((json, b"{\"mode\":\"nope\"}".to_vec())), 422, "validation_failed"),
        (
            Method::POST,
            u("/v1/transactions"),
            Some((json, b"{\"mode\":\"tcc\",\"timeout_ms\":-1}".to_vec())),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            u("/v1/transactions"),
            Some((json, b"{\"mode\":\"tcc\",\"timeout_ms\":0}".to_vec())),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            u("/v1/transactions"),
            Some((json, b"{\"mode\":\"workflow\"}".to_vec())),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            u("/v1/transactions"),
            Some(("text/plain", b"{\"mode\":\"tcc\"}".to_vec())),
            415,
            "unsupported_media_type",
        ),
        (Method::POST, u("/v1/transactions"), Some((json, vec![b' '; 2 << 20])), 413, "payload_too_large"),
        (
            Method::POST,
            u("/v1/transactions"),
            Some((json, br#"{"mode":"tcc","name":"a\u0000b"}"#.to_vec())),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            u(&format!("/v1/transactions/{x}/branches")),
            Some((json, br#"{"resource":"r","callback_url":"http://a/b","payload":{"k":"nul\u0000"}}"#.to_vec())),
            422,
            "validation_failed",
        ),
        (Method::GET, u("/v1/transactions/0000-unknown"), None, 404, "transaction_not_found"),
        (Method::GET, u("/v1/transactions/bad%20id"), None, 404, "transaction_not_found"),
        (Method::GET, u("/v1/transactions?status=weird"), None, 400, "validation_failed"),
        (Method::GET, u("/v1/transactions?limit=0"), None, 400, "validation_failed"),
        (Method::POST, u("/v1/transactions/0000-unknown/commit"), None, 404, "transaction_not_found"),
        (Method::POST, u(&format!("/v1/transactions/{x}/commit?wait_ms=abc")), None, 400, "validation_failed"),
        (
            Method::POST,
            u("/v1/transactions/0000-unknown/branches"),
            Some((json, serde_json::to_vec(&reg).expect("j"))),
            404,
            "transaction_not_found",
        ),
        (
            Method::POST,
            u(&format!("/v1/transactions/{x}/branches")),
            Some((json, b"{\"resource\":\"r\",\"callback_url\":\"not a url\"}".to_vec())),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            u(&format!("/v1/transactions/{x}/branches")),
            Some((json, b"{\"resource\":\"\",\"callback_url\":\"http://a/b\"}".to_vec())),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            u(&format!("/v1/transactions/{x}/branches")),
            Some((json, vec![b'['; 2 << 20])),
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            u(&format!("/v1/transactions/{x}/branches/nope/report")),
            Some((json, b"{\"status\":\"prepared\"}".to_vec())),
            404,
            "branch_not_found",
        ),
        (
            Method::POST,
            u(&format!("/v1/transactions/{x}/branches/{}/report", branch.branch_id)),
            Some((json, b"{\"status\":\"committed\"}".to_vec())),
            422,
            "validation_failed",
        ),
        (Method::DELETE, u(&format!("/v1/transactions/{x}")), None, 405, "method_not_allowed"),
        (Method::GET, u("/v2/nothing"), None, 404, "not_found"),
    ];
    for (method, url, body, status, code) in cases {
        let what = format!("{method} {url}");
        let (got, ct, v) = raw(method, url, body).await;
        assert_eq!(got, status, "{what}: {v}");
        assert_eq!(ct, "application/problem+json", "{what}");
        assert_eq!(v["code"], code, "{what}: {v}");
        assert_eq!(v["status"], status, "{what}");
        assert!(v["title"].is_string() && v["detail"].is_string() && v["type"].is_string(), "{what}: {v}");
    }
    assert_eq!(client.get(&tx.xid).await.expect("get"), before, "nothing changed");
    assert_eq!(client.list(&Default::default()).await.expect("list").transactions.len(), 1, "no transaction begun");

    // Wrong states: 409, with nothing changed.
    client.rollback(&tx.xid, Some(Duration::ZERO)).await.expect("rollback");
    let after_rollback = wait_status(&client, &tx.xid, "rolled_back", WAIT).await;
    let reg_req = serde_json::from_value(reg).expect("req");
    let err = client.register(&tx.xid, &reg_req).await.expect_err("register on rolled back");
    assert_eq!((err.status(), err.code()), (Some(409), Some(ErrorCode::InvalidState)));
    let err = client.commit(&tx.xid, None).await.expect_err("commit after rollback");
    assert_eq!((err.status(), err.code()), (Some(409), Some(ErrorCode::InvalidState)));
    assert_eq!(client.get(&tx.xid).await.expect("get"), after_rollback);

    let done = client.begin(&tcc()).await.expect("begin");
    client.commit(&done.xid, None).await.expect("commit empty");
    let err = client.rollback(&done.xid, None).await.expect_err("rollback after commit");
    assert_eq!((err.status(), err.code()), (Some(409), Some(ErrorCode::InvalidState)));
    assert_eq!(client.get(&done.xid).await.expect("get").status, GlobalStatus::Committed);
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_openapi_health_and_metrics() {
    let db = TestDb::new("ops").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let doc: serde_json::Value =
        reqwest::get(format!("{}/openapi.json", c.url)).await.expect("get").json().await.expect("json");
    for path in [
        "/v1/transactions",
        "/v1/transactions/{xid}",
        "/v1/transactions/{xid}/branches",
        "/v1/transactions/{xid}/branches/{branch_id}/report",
        "/v1/transactions/{xid}/commit",
        "/v1/transactions/{xid}/rollback",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    let statuses = &doc["components"]["schemas"]["GlobalStatus"]["enum"];
    for s in GlobalStatus::ALL {
        assert!(statuses.as_array().expect("enum").iter().any(|v| v == s.as_str()), "{s} in the enum");
    }
    let branch_statuses = &doc["components"]["schemas"]["BranchStatus"]["enum"];
    for s in tandem_sdk::wire::BranchStatus::ALL {
        assert!(branch_statuses.as_array().expect("enum").iter().any(|v| v == s.as_str()), "{s} in the enum");
    }
    // 3PC: its actions and per-transaction phase timeouts are documented too.
    let actions = doc["components"]["schemas"]["CallbackAction"].to_string();
    assert!(actions.contains("can_commit") && actions.contains("pre_commit"), "{actions}");
    assert!(doc["components"]["schemas"]["ThreePhaseOptions"]["properties"]["do_commit_timeout_ms"].is_object());
    assert_eq!(reqwest::get(format!("{}/healthz", c.url)).await.expect("h").status(), 200);
    assert_eq!(reqwest::get(format!("{}/readyz", c.url)).await.expect("r").status(), 200);
    let tx = client.begin(&tcc()).await.expect("begin");
    client.commit(&tx.xid, None).await.expect("commit");
    let m = reqwest::get(format!("{}/metrics", c.url)).await.expect("m").text().await.expect("t");
    assert!(m.contains("tandem_transactions_begun_total{mode=\"tcc\"} 1"), "{m}");
    assert!(m.contains("tandem_transactions_committed_total{mode=\"tcc\"} 1"), "{m}");
    assert!(m.contains("tandem_transactions_in_flight"), "{m}");
    assert!(m.contains("tandem_db_query_duration_seconds_bucket"), "{m}");
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_racing_a_commit_are_either_in_the_decision_or_refused() {
    let db = TestDb::new("race").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (url, seen) = recording_participant().await;
    let tx = client.begin(&tcc()).await.expect("begin");
    let req: tandem_sdk::wire::RegisterBranchRequest =
        serde_json::from_value(serde_json::json!({"resource": "r", "callback_url": url})).expect("req");

    let racers: Vec<_> = (0..60)
        .map(|_| {
            let (client, xid, req) = (client.clone(), tx.xid.clone(), req.clone());
            tokio::spawn(async move { client.register(&xid, &req).await })
        })
        .collect();
    // Commit while registrations are still arriving.
    eventually("some registrations landed", WAIT, || async {
        let t = client.get(&tx.xid).await.ok()?;
        (t.branches.len() >= 5).then_some(())
    })
    .await;
    let decided = client.commit(&tx.xid, None).await.expect("commit").transaction;
    assert_eq!(decided.status, GlobalStatus::Committed);

    let mut accepted = Vec::new();
    for r in racers {
        match r.await.expect("task") {
            Ok(b) => accepted.push(b.branch_id.to_string()),
            Err(e) => assert_eq!((e.status(), e.code()), (Some(409), Some(ErrorCode::InvalidState)), "{e}"),
        }
    }
    let in_decision: Vec<String> = decided.branches.iter().map(|b| b.branch_id.to_string()).collect();
    accepted.sort();
    let mut sorted = in_decision.clone();
    sorted.sort();
    assert_eq!(accepted, sorted, "every accepted registration is in the decision, and only those");
    let mut called = seen.lock().expect("lock").clone();
    called.sort();
    assert_eq!(called, sorted, "each committed exactly once");
    c.stop().await.expect("coordinator stops");
}
