//! The coordinator's lock service over HTTP: grants, re-entry, the owner
//! check, FIFO order, one wake-up per release, leases that end, and the
//! operators' listing.

use crate::support::{eventually, fast_settings, spawn_coordinator, TestDb};
use std::time::Duration;
use tandem_sdk::wire::{AcquireLockRequest, ErrorCode, LockName, LockOwner, ReleaseLockRequest, RenewLockRequest};
use tandem_sdk::{ClientError, LockAcquire, TandemClient};

pub fn name(tag: &str) -> LockName {
    LockName::parse(format!("{tag}:{}", uuid::Uuid::new_v4().simple())).unwrap()
}

pub fn owner(tag: &str) -> LockOwner {
    LockOwner::random(tag)
}

pub async fn acquire(
    c: &TandemClient,
    n: &LockName,
    o: &LockOwner,
    ttl_ms: u64,
    wait_ms: u64,
) -> Result<LockAcquire, ClientError> {
    c.acquire_lock(n, &AcquireLockRequest { owner: o.clone(), ttl_ms, wait_ms }).await
}

pub async fn granted(
    c: &TandemClient,
    n: &LockName,
    o: &LockOwner,
    ttl_ms: u64,
    wait_ms: u64,
) -> tandem_sdk::wire::LockGrant {
    match acquire(c, n, o, ttl_ms, wait_ms).await.expect("acquire") {
        LockAcquire::Granted(g) => g,
        LockAcquire::Waiting(w) => panic!("not granted: {w:?}"),
    }
}

/// `tandem_named_lock_wakeups_total` of the coordinator at `url`.
pub async fn wakeups(url: &str) -> u64 {
    metric(url, "tandem_named_lock_wakeups_total").await
}

pub async fn metric(url: &str, metric: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(metric) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_reentry_and_the_owner_check() {
    let db = TestDb::new("locks_basic").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (n, a, b) = (name("basic"), owner("a"), owner("b"));

    let g1 = granted(&client, &n, &a, 10_000, 0).await;
    assert_eq!((g1.holds, g1.owner.clone()), (1, a.clone()));
    assert!(g1.token > 0 && g1.remaining_ms <= 10_000 && g1.remaining_ms > 9_000, "{g1:?}");
    // Re-entry: a second hold, the same token.
    let g2 = granted(&client, &n, &a, 10_000, 0).await;
    assert_eq!((g2.holds, g2.token), (2, g1.token));
    // Another owner: held, at once without a wait.
    let e = acquire(&client, &n, &b, 10_000, 0).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::LockHeld), "{e}");
    // ...and with a short one.
    let e = acquire(&client, &n, &b, 10_000, 300).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::LockHeld), "{e}");
    // Release and renewal by another owner are refused and change nothing.
    let e = client.release_lock(&n, &ReleaseLockRequest { owner: b.clone() }).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::LockNotHeld), "{e}");
    let e = client.renew_lock(&n, &RenewLockRequest { owner: b.clone(), ttl_ms: 1000 }).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::LockNotHeld), "{e}");
    let list = client.named_locks(None).await.unwrap();
    let info = list.locks.iter().find(|l| l.name == n).expect("listed");
    assert_eq!((info.owner.as_ref(), info.holds, info.token, info.waiters.len()), (Some(&a), 2, g1.token, 0));
    // The owner renews, then releases twice.
    let r = client.renew_lock(&n, &RenewLockRequest { owner: a.clone(), ttl_ms: 20_000 }).await.unwrap();
    assert!(r.remaining_ms > 19_000 && r.token == g1.token, "{r:?}");
    assert_eq!(client.release_lock(&n, &ReleaseLockRequest { owner: a.clone() }).await.unwrap().holds, 1);
    assert_eq!(client.release_lock(&n, &ReleaseLockRequest { owner: a.clone() }).await.unwrap().holds, 0);
    let e = client.release_lock(&n, &ReleaseLockRequest { owner: a.clone() }).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::LockNotHeld), "{e}");
    // The next grant has a higher token.
    let g3 = granted(&client, &n, &b, 10_000, 0).await;
    assert!(g3.token > g1.token, "{} after {}", g3.token, g1.token);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_ends_unless_renewed_and_then_cannot_be_renewed() {
    let db = TestDb::new("locks_lease").await;
    let (_c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (n, a, b) = (name("lease"), owner("a"), owner("b"));
    let g = granted(&client, &n, &a, 300, 0).await;
    let started = std::time::Instant::now();
    // Waiting for it, the next owner gets it once the lease ends, not before.
    let g2 = granted(&client, &n, &b, 5_000, 5_000).await;
    assert!(started.elapsed() >= Duration::from_millis(250), "granted after {:?}", started.elapsed());
    assert!(g2.token > g.token);
    let e = client.renew_lock(&n, &RenewLockRequest { owner: a.clone(), ttl_ms: 1000 }).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::LockNotHeld), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_changes_nothing() {
    let db = TestDb::new("locks_input").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let http = reqwest::Client::new();
    for (path, body, status) in [
        ("/v1/named-locks/a%20b/acquire", r#"{"owner":"x","ttl_ms":1000}"#, 400),
        ("/v1/named-locks/ok/acquire", r#"{"owner":"x y","ttl_ms":1000}"#, 422),
        ("/v1/named-locks/ok/acquire", r#"{"owner":"x","ttl_ms":1}"#, 422),
        ("/v1/named-locks/ok/acquire", r#"{"owner":"x","ttl_ms":1000,"wait_ms":600001}"#, 422),
        ("/v1/named-locks/ok/acquire", r#"{"owner":"x""#, 400),
        ("/v1/named-locks/ok/renew", r#"{"owner":"x","ttl_ms":99999999999}"#, 422),
    ] {
        let r = http
            .post(format!("{}{path}", c.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {body}");
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["code"], "validation_failed", "{p}");
    }
    assert_eq!(client.named_locks(None).await.unwrap().total, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_are_granted_in_fifo_order_and_each_release_wakes_one() {
    let db = TestDb::new("locks_fifo").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let n = name("fifo");
    let holder = owner("holder");
    let first = granted(&client, &n, &holder, 30_000, 0).await;
    // Five waiters join one after the other.
    let mut waiters = Vec::new();
    for i in 0..5 {
        let o = owner(&format!("w{i}"));
        let (client, n2, o2) = (client.clone(), n.clone(), o.clone());
        let task = tokio::spawn(async move { granted(&client, &n2, &o2, 30_000, 15_000).await });
        eventually("the waiter queued", Duration::from_secs(5), || {
            let (client, n) = (client_for(&c.url), n.clone());
            async move {
                let l = client.named_locks(None).await.ok()?;
                l.locks.iter().find(|l| l.name == n).filter(|l| l.waiters.len() == i + 1).map(|_| ())
            }
        })
        .await;
        waiters.push((o, task));
    }
    let listed = client.named_locks(None).await.unwrap();
    let queue: Vec<_> =
        listed.locks.iter().find(|l| l.name == n).unwrap().waiters.iter().map(|w| w.owner.clone()).collect();
    assert_eq!(queue, waiters.iter().map(|(o, _)| o.clone()).collect::<Vec<_>>());

    let mut last = (holder, first.token);
    for (i, (o, task)) in waiters.into_iter().enumerate() {
        let before = wakeups(&c.url).await;
        client.release_lock(&n, &ReleaseLockRequest { owner: last.0.clone() }).await.unwrap();
        let g = tokio::time::timeout(Duration::from_secs(5), task).await.expect("granted in time").unwrap();
        assert_eq!(g.owner, o, "grant {i} went to the first in line");
        assert!(g.token > last.1);
        // Exactly one waiter was woken by this release; the others still wait.
        let after = eventually("the wake-up counted", Duration::from_secs(2), || {
            let url = c.url.clone();
            async move { Some(wakeups(&url).await).filter(|w| *w > before) }
        })
        .await;
        assert_eq!(after - before, 1, "release {i} woke {} waiters", after - before);
        let l = client.named_locks(None).await.unwrap();
        let info = l.locks.iter().find(|l| l.name == n).unwrap();
        assert_eq!(info.waiters.len(), 4 - i);
        assert_eq!(info.owner.as_ref(), Some(&o));
        last = (o, g.token);
    }
}

fn client_for(url: &str) -> TandemClient {
    TandemClient::new(url).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_list_holders_and_queues_with_the_cli() {
    let db = TestDb::new("locks_cli").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let n = name("cli");
    let (h, w) = (owner("holder"), owner("waiter"));
    let g = granted(&client, &n, &h, 60_000, 0).await;
    let waiting = {
        let (client, n, w) = (client.clone(), n.clone(), w.clone());
        tokio::spawn(async move { acquire(&client, &n, &w, 60_000, 15_000).await })
    };
    eventually("the waiter queued", Duration::from_secs(5), || {
        let (client, n) = (client.clone(), n.clone());
        async move {
            let l = client.named_locks(None).await.ok()?;
            l.locks.iter().find(|l| l.name == n).filter(|l| l.waiters.len() == 1).map(|_| ())
        }
    })
    .await;
    let run = |args: &'static [&'static str]| {
        let url = c.url.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
                .args(args)
                .env("TANDEM_URL", url)
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let text = run(&["locks", "named"]).await;
    let row = text.lines().find(|l| l.contains(n.as_str())).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains(h.as_str()) && row.contains(w.as_str()) && row.contains(&g.token.to_string()), "{row}");
    assert!(text.contains("1 of 1 named locks held or waited for"), "{text}");
    let json: tandem_sdk::wire::NamedLockList =
        serde_json::from_str(&run(&["locks", "named", "--json"]).await).unwrap();
    assert_eq!(json.locks[0].waiters[0].owner, w);
    waiting.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_that_stops_waiting_leaves_the_queue_and_renewal_never_shortens() {
    let db = TestDb::new("locks_leave").await;
    let mut s = fast_settings(&db.url);
    // One request is held open at most 600 ms here: a longer wait is answered 202.
    s.request_timeout_ms = 6_600;
    let (_c, client) = spawn_coordinator(s).await;
    let (n, a, b, c2) = (name("leave"), owner("a"), owner("b"), owner("c"));
    let g = granted(&client, &n, &a, 60_000, 0).await;
    match acquire(&client, &n, &b, 60_000, 5_000).await.unwrap() {
        LockAcquire::Waiting(w) => assert_eq!((w.position, w.keep_place_ms), (1, 5_000)),
        other => panic!("{other:?}"),
    }
    // b asks again without a wait: refused, and out of the queue.
    let e = acquire(&client, &n, &b, 60_000, 0).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::LockHeld));
    let l = client.named_locks(None).await.unwrap();
    assert!(l.locks.iter().find(|l| l.name == n).unwrap().waiters.is_empty());
    // A re-entry or a renewal with a shorter lease does not shorten it.
    let r = granted(&client, &n, &a, 1_000, 0).await;
    assert!(r.remaining_ms > 50_000, "{r:?}");
    let r = client.renew_lock(&n, &RenewLockRequest { owner: a.clone(), ttl_ms: 1_000 }).await.unwrap();
    assert!(r.remaining_ms > 50_000, "{r:?}");
    client.release_lock(&n, &ReleaseLockRequest { owner: a.clone() }).await.unwrap();
    client.release_lock(&n, &ReleaseLockRequest { owner: a.clone() }).await.unwrap();
    // Free for the next newcomer: nobody gone is handed it.
    let g2 = granted(&client, &n, &c2, 10_000, 0).await;
    assert!(g2.token > g.token);
}
