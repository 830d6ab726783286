//! Part of the `coordinator` suite: what an operator reads and does, over
//! the HTTP API and through the `tandem` CLI run as a process against a
//! running coordinator: timelines with every attempt, the overview, list
//! filters, locks, retry and stop.

use crate::support::{self, answering as participant, committed_to, eventually, TestDb};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tandem_sdk::wire::{
    BeginRequest, EventKind, GlobalStatus, LockList, Mode, Overview, RegisterBranchRequest, Timeline, Transaction,
    TransactionList, Xid, STUCK_ATTEMPTS,
};

async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> (u16, Option<T>) {
    let r = reqwest::get(url).await.expect("get");
    let status = r.status().as_u16();
    (status, r.json::<T>().await.ok())
}

async fn timeline(base: &str, xid: &Xid) -> Timeline {
    let (status, t) = get_json::<Timeline>(&format!("{base}/v1/transactions/{xid}/timeline")).await;
    assert_eq!(status, 200);
    t.expect("a timeline")
}

/// Runs the real `tandem` binary with `args`; (exit code, stdout, stderr).
async fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("TANDEM_URL", url)
        .output()
        .await
        .expect("run tandem");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timelines_record_every_attempt_and_operators_retry_and_stop() {
    let db = TestDb::new("operator").await;
    let (app, client) = support::spawn_coordinator(support::fast_settings(&db.url)).await;
    let base = app.url.clone();
    let (ok, _) = participant(200).await;
    let (refusing, _) = participant(409).await;
    let (failing, failing_calls) = participant(500).await;

    // Committed: begun, registered, decided, one attempt answered 200, finished.
    let good = committed_to(&client, "op.good", &ok).await;
    support::wait_status(&client, &good, "committed", Duration::from_secs(10)).await;
    let t = eventually("the commit's attempt recorded", Duration::from_secs(10), || async {
        let t = timeline(&base, &good).await;
        t.events.iter().any(|e| e.kind == EventKind::Attempt).then_some(t)
    })
    .await;
    let kinds: Vec<EventKind> = t.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Begun, EventKind::Registered, EventKind::Decided, EventKind::Attempt, EventKind::Finished]
    );
    let attempt = &t.events[3];
    assert_eq!(attempt.http_status, Some(200));
    assert_eq!(attempt.outcome.map(|o| o.as_str()), Some("done"));
    assert_eq!(attempt.action.map(|a| a.as_str()), Some("commit"));
    assert!(attempt.latency_us.is_some_and(|us| us > 0));
    assert_eq!(attempt.coordinator.as_deref(), Some(app.coordinator().instance_id()));
    assert!(t.events.windows(2).all(|w| w[0].at <= w[1].at), "oldest first");

    // Refused for good: commit_failed, needs attention; neither retried nor stopped.
    let refused = committed_to(&client, "op.refused", &refusing).await;
    support::wait_status(&client, &refused, "commit_failed", Duration::from_secs(10)).await;
    let http = reqwest::Client::new();
    let r = http.post(format!("{base}/v1/transactions/{refused}/retry")).send().await.expect("retry");
    assert_eq!(r.status(), 409);
    let p: serde_json::Value = r.json().await.expect("problem");
    assert_eq!(p["code"], "invalid_state");
    assert!(p["detail"].as_str().unwrap_or("").contains("terminal"), "{p}");

    // Failing with 500: retried; after STUCK_ATTEMPTS passes it needs attention.
    let stuck = committed_to(&client, "op.stuck", &failing).await;
    eventually("the stuck transaction retried often", Duration::from_secs(30), || async {
        let t = client.get(&stuck).await.ok()?;
        (t.branches[0].attempts >= STUCK_ATTEMPTS as u32).then_some(())
    })
    .await;
    let overview = client.overview().await.expect("overview");
    let attention: Vec<&Xid> = overview.needs_attention.iter().map(|t| &t.xid).collect();
    assert!(attention.contains(&&refused) && attention.contains(&&stuck), "{attention:?}");
    assert!(!attention.contains(&&good));
    assert!(overview.in_flight.iter().any(|c| c.status == GlobalStatus::Committing && c.count >= 1));
    assert!(overview.oldest_unfinished.iter().any(|t| t.xid == stuck));
    assert_eq!(overview.last_hour.len(), 60);
    let t = timeline(&base, &stuck).await;
    let failed_attempts = t.events.iter().filter(|e| e.kind == EventKind::Attempt && e.http_status == Some(500));
    assert!(failed_attempts.count() >= 1);

    // Retry now: accepted, recorded, and the participant is called again.
    let before = failing_calls.load(Ordering::SeqCst);
    let retried = client.retry(&stuck).await.expect("retry");
    assert_eq!(retried.status, GlobalStatus::Committing);
    eventually("the retry called the participant", Duration::from_secs(10), || async {
        (failing_calls.load(Ordering::SeqCst) > before).then_some(())
    })
    .await;
    assert!(timeline(&base, &stuck).await.events.iter().any(|e| e.kind == EventKind::OperatorRetry));

    // Stop with a note: commit_failed, the note in the timeline and on the branch.
    let r = http
        .post(format!("{base}/v1/transactions/{stuck}/stop"))
        .json(&serde_json::json!({"note": "participant retired; repaired by hand (ticket 42)"}))
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), 200);
    let stopped: Transaction = r.json().await.expect("transaction");
    assert_eq!(stopped.status, GlobalStatus::CommitFailed);
    assert!(stopped.branches[0].last_error.as_deref().unwrap_or("").contains("ticket 42"));
    let t = timeline(&base, &stuck).await;
    let stop = t.events.iter().find(|e| e.kind == EventKind::OperatorStop).expect("a stop event");
    assert!(stop.detail.as_deref().unwrap_or("").contains("ticket 42"));
    assert_eq!(t.events.last().map(|e| e.kind), Some(EventKind::Finished));
    // Stopped: a second stop is refused, and nothing changes.
    let r = http
        .post(format!("{base}/v1/transactions/{stuck}/stop"))
        .json(&serde_json::json!({"note": "again"}))
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), 409);
    // Bad input: an empty note, and an unknown transaction.
    let r = http
        .post(format!("{base}/v1/transactions/{good}/stop"))
        .json(&serde_json::json!({"note": ""}))
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), 422);
    // A one-character note is valid whatever the character (the schema's
    // rule; U+0085 was once trimmed away and refused): here the committed
    // transaction's state refuses the stop, not the note.
    let r = http
        .post(format!("{base}/v1/transactions/{good}/stop"))
        .json(&serde_json::json!({"note": "\u{85}"}))
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), 409);
    let r = http.post(format!("{base}/v1/transactions/nope/retry")).send().await.expect("retry");
    assert_eq!(r.status(), 404);
    assert_eq!(get_json::<serde_json::Value>(&format!("{base}/v1/transactions/nope/timeline")).await.0, 404);

    // The minute counts reach the overview.
    eventually("ended transactions counted per minute", Duration::from_secs(10), || async {
        let (_, o) = get_json::<Overview>(&format!("{base}/v1/overview")).await;
        let o = o?;
        let last: i64 = o.last_hour.iter().map(|m| m.committed).sum();
        let failed: i64 = o.last_hour.iter().map(|m| m.failed).sum();
        (last >= 1 && failed >= 2).then_some(())
    })
    .await;

    // List filters: name prefix, xid part, status, time range.
    let list = |q: String| {
        let base = base.clone();
        async move { get_json::<TransactionList>(&format!("{base}/v1/transactions?{q}")).await }
    };
    let names =
        |l: &TransactionList| l.transactions.iter().map(|t| t.name.clone().unwrap_or_default()).collect::<Vec<_>>();
    let (_, l) = list("name=op.".into()).await;
    assert_eq!(names(&l.expect("list")), ["op.stuck", "op.refused", "op.good"]);
    let (_, l) = list("name=op.s".into()).await;
    assert_eq!(names(&l.expect("list")), ["op.stuck"]);
    let q = tandem_sdk::client::ListQuery { name: Some("op.r".into()), ..Default::default() };
    assert_eq!(names(&client.list(&q).await.expect("list")), ["op.refused"]);
    let part = &good.as_str()[good.as_str().len() - 8..];
    let (_, l) = list(format!("xid={part}")).await;
    assert_eq!(
        l.expect("list").transactions.iter().map(|t| t.xid.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&good)
    );
    let (_, l) = list("status=commit_failed".into()).await;
    assert_eq!(names(&l.expect("list")), ["op.stuck", "op.refused"]);
    let (_, l) = list("created_after=2999-01-01T00:00:00Z".into()).await;
    assert!(l.expect("list").transactions.is_empty());
    let (_, l) = list("created_before=2999-01-01T00:00:00Z&name=op.&limit=1".into()).await;
    let l = l.expect("list");
    assert_eq!(names(&l), ["op.stuck"]);
    let (_, l) = list(format!("name=op.&limit=1&after={}", l.next.expect("a next page"))).await;
    assert_eq!(names(&l.expect("list")), ["op.refused"]);
    assert_eq!(list("created_after=yesterday".into()).await.0, 400);
    assert_eq!(list("xid=%00".into()).await.0, 400);

    // The CLI, as a process, against the running coordinator.
    let (code, out, err) = cli(&base, &["tx", "list", "--status", "commit_failed", "--since", "1h"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(stuck.as_str()) && out.contains(refused.as_str()) && !out.contains(good.as_str()), "{out}");
    assert!(out.contains("STATUS") && out.contains("commit_failed"), "{out}");
    let (code, out, _) = cli(&base, &["tx", "list", "--mode", "tcc", "--json"]).await;
    assert_eq!(code, 0);
    let parsed: TransactionList = serde_json::from_str(&out).expect("--json is the API's list");
    assert_eq!(parsed.transactions.len(), 3);
    let (code, out, _) = cli(&base, &["tx", "show", good.as_str()]).await;
    assert_eq!(code, 0);
    for expected in
        ["committed", "branches", "timeline", "begun", "registered", "decided", "attempt", "finished", "200"]
    {
        assert!(out.contains(expected), "tx show lacks {expected}: {out}");
    }
    let (code, out, _) = cli(&base, &["tx", "show", stuck.as_str(), "--json"]).await;
    assert_eq!(code, 0);
    let t: Timeline = serde_json::from_str(&out).expect("--json is the API's timeline");
    assert!(t.events.iter().any(|e| e.kind == EventKind::OperatorStop));
    let (code, _, err) = cli(&base, &["tx", "retry", good.as_str()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("409 invalid_state") && err.contains("terminal"), "{err}");
    let (code, _, err) = cli(&base, &["tx", "show", "not an xid"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not an xid"), "{err}");

    // A second stuck transaction stopped through the CLI.
    let again = committed_to(&client, "op.cli", &failing).await;
    support::wait_status(&client, &again, "committing", Duration::from_secs(10)).await;
    let (code, out, err) = cli(&base, &["tx", "stop", again.as_str(), "--note", "stopped from the CLI"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("commit_failed"), "{out}");
    assert_eq!(client.get(&again).await.expect("get").status, GlobalStatus::CommitFailed);

    // An unreachable coordinator: a clear error, exit 1.
    let (code, _, err) = cli("http://127.0.0.1:1", &["tx", "list"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    app.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_global_locks_are_listed_in_the_api_and_the_cli() {
    let db = TestDb::new("operator_locks").await;
    let (app, client) = support::spawn_coordinator(support::fast_settings(&db.url)).await;
    let (ok, _) = participant(200).await;
    let begin =
        BeginRequest { mode: Mode::At, name: Some("locks".into()), timeout_ms: Some(60_000), three_phase: None };
    let tx = client.begin(&begin).await.expect("begin");
    let keys = vec!["public.stock:1".to_owned(), "public.stock:2".to_owned()];
    let reg =
        RegisterBranchRequest { resource: "inventory".into(), callback_url: ok, payload: None, lock_keys: Some(keys) };
    let b = client.register(&tx.xid, &reg).await.expect("register");
    let (status, list) = get_json::<LockList>(&format!("{}/v1/locks", app.url)).await;
    assert_eq!(status, 200);
    let list = list.expect("locks");
    assert_eq!(list.total, 2);
    assert_eq!(
        list.locks.iter().map(|l| l.lock_key.as_str()).collect::<Vec<_>>(),
        ["public.stock:1", "public.stock:2"]
    );
    assert!(list.locks.iter().all(|l| l.xid == tx.xid.as_str() && l.branch_id == b.branch_id.as_str()));
    assert_eq!(get_json::<serde_json::Value>(&format!("{}/v1/locks?limit=0", app.url)).await.0, 400);
    let (code, out, _) = cli(&app.url, &["locks", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("public.stock:2") && out.contains("inventory") && out.contains("2 of 2 locks held"), "{out}");
    let (code, out, _) = cli(&app.url, &["locks", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<LockList>(&out).expect("json").total, 2);
    // Released with the branch's phase 2.
    client.rollback(&tx.xid, Some(Duration::from_secs(5))).await.expect("rollback");
    let (_, list) = get_json::<LockList>(&format!("{}/v1/locks", app.url)).await;
    assert_eq!(list.expect("locks").total, 0);
    app.stop().await.expect("coordinator stops");
}
