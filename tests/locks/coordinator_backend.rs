//! The SDK's `Locks` on the coordinator backend, against coordinators in
//! this process and `tandem serve` processes on real PostgreSQL, with
//! holders in their own processes SIGKILLed and SIGSTOPped.

use crate::holder::{fenced_write, Holder, Spec, FENCED_TABLE};
use crate::service::{name, owner};
use crate::support::{eventually, fast_settings, spawn_coordinator, Process, TestDb};
use async_trait::async_trait;
use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tandem_sdk::locks::coordinator::CoordinatorLocks;
use tandem_sdk::locks::fencing::FenceCheck;
use tandem_sdk::locks::{Acquired, LockBackend, LockError, LockName, LockOptions, LockOwner, Locks, Release, Renewal};
use tandem_sdk::TandemClient;

fn locks_at(urls: &[&str]) -> Locks {
    let clients = urls.iter().map(|u| TandemClient::new(u).unwrap()).collect();
    Locks::new(CoordinatorLocks::with_failover(clients).unwrap())
}

async fn fenced_db(tag: &str) -> (TestDb, sqlx::PgPool) {
    let db = TestDb::new(tag).await;
    let pool = db.pool().await;
    tandem_sdk::locks::fencing::Fence::new(pool.clone()).install().await.unwrap();
    sqlx::raw_sql(FENCED_TABLE).execute(&pool).await.unwrap();
    (db, pool)
}

/// The DB's view of a lock: (owner, token, granted_at, expires_at).
async fn lock_row(
    pool: &sqlx::PgPool,
    n: &LockName,
) -> (Option<String>, i64, Option<chrono::DateTime<chrono::Utc>>, chrono::DateTime<chrono::Utc>) {
    sqlx::query_as("SELECT owner, token, granted_at, expires_at FROM named_locks WHERE name = $1")
        .bind(n.as_str())
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_exclusion_under_contention_with_a_fenced_counter() {
    let db = TestDb::new("locks_mutex").await;
    let (c, _) = spawn_coordinator(fast_settings(&db.url)).await;
    let (_rdb, pool) = fenced_db("locks_mutex_res").await;
    sqlx::raw_sql("CREATE TABLE counter (id int PRIMARY KEY, v bigint NOT NULL); INSERT INTO counter VALUES (1, 0)")
        .execute(&pool)
        .await
        .unwrap();
    let locks = locks_at(&[&c.url]);
    let n = name("mutex");
    let (tasks, rounds) = (8, 10);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (locks, n, pool) = (locks.clone(), n.clone(), pool.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let opts = LockOptions::ttl(Duration::from_secs(5)).wait(Duration::from_secs(30));
                let g = locks.lock_as(&LockOwner::random("inc"), &n, &opts).await.unwrap();
                // A read-modify-write in two statements: only the lock keeps it exact.
                let v: i64 = sqlx::query_scalar("SELECT v FROM counter WHERE id = 1").fetch_one(&pool).await.unwrap();
                let mut tx = pool.begin().await.unwrap();
                let fence = tandem_sdk::locks::fencing::Fence::new(pool.clone());
                assert_eq!(fence.check(&mut tx, n.as_str(), g.token()).await.unwrap(), FenceCheck::Accepted);
                sqlx::query("UPDATE counter SET v = $1 WHERE id = 1").bind(v + 1).execute(&mut *tx).await.unwrap();
                sqlx::query("INSERT INTO fenced_writes (token, writer) VALUES ($1, 'inc')")
                    .bind(g.token().0 as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                g.release().await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let v: i64 = sqlx::query_scalar("SELECT v FROM counter WHERE id = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(v, tasks * rounds);
    let tokens: Vec<i64> =
        sqlx::query_scalar("SELECT token FROM fenced_writes ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(tokens.len() as i64, tasks * rounds);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens in commit order strictly increase: {tokens:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_holder_s_lock_goes_to_the_next_after_its_lease_not_before() {
    let db = TestDb::new("locks_kill").await;
    let (c, _) = spawn_coordinator(fast_settings(&db.url)).await;
    let pool = db.pool().await;
    let n = name("kill");
    // No renewal within the test: the lease's end is fixed at the grant.
    let spec = Spec {
        coordinators: vec![c.url.clone()],
        redis: None,
        name: n.to_string(),
        ttl_ms: 1_500,
        renew_every_ms: Some(60_000),
        write_db: None,
    };
    let mut holder = Holder::spawn(&spec);
    let token: u64 = holder.expect("GRANTED", Duration::from_secs(30)).await[8..].parse().unwrap();
    let (_, _, _, lease_end) = lock_row(&pool, &n).await;
    let locks = locks_at(&[&c.url]);
    let waiter = {
        let (locks, n) = (locks.clone(), n.clone());
        tokio::spawn(async move {
            let opts = LockOptions::ttl(Duration::from_secs(5)).wait(Duration::from_secs(20));
            let g = locks.lock_as(&owner("next"), &n, &opts).await.unwrap();
            (g.token(), g)
        })
    };
    holder.child.kill().await.unwrap();
    let (next_token, _g) = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert!(next_token.0 > token);
    let (_, _, granted_at, _) = lock_row(&pool, &n).await;
    let granted_at = granted_at.unwrap();
    assert!(granted_at >= lease_end, "granted at {granted_at}, before the dead holder's lease ended at {lease_end}");
    assert!(granted_at - lease_end < chrono::Duration::seconds(2), "granted {granted_at}, lease ended {lease_end}");
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_keeps_a_lock_past_several_ttls() {
    let db = TestDb::new("locks_renew").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let locks = locks_at(&[&c.url]);
    let n = name("renew");
    // A lease long enough that a renewal delayed by a loaded machine (the
    // whole suite runs at once on two cores) still lands in time.
    let g = locks.lock_as(&owner("a"), &n, &LockOptions::ttl(Duration::from_millis(1_000))).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(3_500);
    while tokio::time::Instant::now() < until {
        let r = crate::service::acquire(&client, &n, &owner("b"), 1000, 0).await;
        assert!(r.is_err(), "another owner got a renewed lock: {r:?}");
        assert!(!g.is_lost());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = client.named_locks(None).await.unwrap();
    assert_eq!(l.locks.iter().find(|l| l.name == n).and_then(|l| l.owner.clone()).as_ref(), Some(g.owner()));
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_coordinator_fires_the_loss_signal_before_the_lease_ends() {
    let db = TestDb::new("locks_unreach").await;
    let mut p = Process::spawn(&db.url, &[]).await;
    let locks = locks_at(&[&p.url]);
    let n = name("unreach");
    let g = locks.lock_as(&owner("a"), &n, &LockOptions::ttl(Duration::from_millis(900))).await.unwrap();
    p.kill9().await;
    let killed = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3), g.lost()).await.expect("the loss signal fired");
    let fired = tokio::time::Instant::now();
    assert!(fired < g.valid_until(), "fired {:?} after the lease's end", fired - g.valid_until());
    assert!(fired - killed < Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_coordinator_s_locks_tokens_and_queue_survive_on_another() {
    let db = TestDb::new("locks_failover").await;
    let mut a = Process::spawn(&db.url, &[]).await;
    let b = Process::spawn(&db.url, &[]).await;
    let n = name("failover");
    // Everyone asks A first, then B.
    let locks = locks_at(&[&a.url, &b.url]);
    let holder = locks.lock_as(&owner("h"), &n, &LockOptions::ttl(Duration::from_millis(1_500))).await.unwrap();
    let mut waiters = Vec::new();
    for i in 0..2 {
        let o = owner(&format!("w{i}"));
        let (locks, n2, o2) = (locks.clone(), n.clone(), o.clone());
        waiters.push((
            o,
            tokio::spawn(async move {
                let opts = LockOptions::ttl(Duration::from_secs(5)).wait(Duration::from_secs(30));
                locks.lock_as(&o2, &n2, &opts).await.unwrap()
            }),
        ));
        eventually("the waiter queued", Duration::from_secs(5), || {
            let (c, n) = (b.client.clone(), n.clone());
            async move {
                let l = c.named_locks(None).await.ok()?;
                l.locks.iter().find(|l| l.name == n).filter(|l| l.waiters.len() == i + 1).map(|_| ())
            }
        })
        .await;
    }
    a.kill9().await;
    // Renewals go to B: the holder keeps the lock over more than a lease.
    let until = tokio::time::Instant::now() + Duration::from_millis(2_500);
    while tokio::time::Instant::now() < until {
        assert!(!holder.is_lost());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = b.client.named_locks(None).await.unwrap();
    let info = l.locks.iter().find(|l| l.name == n).unwrap();
    assert_eq!(info.owner.as_ref(), Some(holder.owner()));
    assert_eq!(info.token, holder.token().0);
    let queue: Vec<_> = info.waiters.iter().map(|w| w.owner.clone()).collect();
    assert_eq!(queue, waiters.iter().map(|(o, _)| o.clone()).collect::<Vec<_>>(), "the queue kept its order");
    let mut last = holder.token();
    holder.release().await.unwrap();
    for (o, task) in waiters {
        let g = tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
        assert_eq!(g.owner(), &o);
        assert!(g.token() > last);
        last = g.token();
        g.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_holder_s_late_write_is_refused_by_the_fence() {
    let db = TestDb::new("locks_pause").await;
    let (c, _) = spawn_coordinator(fast_settings(&db.url)).await;
    let (rdb, pool) = fenced_db("locks_pause_res").await;
    let n = name("pause");
    let spec = Spec {
        coordinators: vec![c.url.clone()],
        redis: None,
        name: n.to_string(),
        ttl_ms: 600,
        renew_every_ms: None,
        write_db: Some(rdb.url.clone()),
    };
    let mut holder = Holder::spawn(&spec);
    let t1: u64 = holder.expect("GRANTED", Duration::from_secs(30)).await[8..].parse().unwrap();
    holder.expect("WROTE", Duration::from_secs(5)).await;
    holder.signal(Signal::SIGSTOP);
    // Its lease ends while it is stopped; the next holder writes.
    let locks = locks_at(&[&c.url]);
    let opts = LockOptions::ttl(Duration::from_secs(10)).wait(Duration::from_secs(10));
    let g = locks.lock_as(&owner("next"), &n, &opts).await.unwrap();
    let t2 = g.token().0;
    assert!(t2 > t1);
    assert_eq!(fenced_write(&pool, n.as_str(), t2, "next").await, FenceCheck::Accepted);
    holder.signal(Signal::SIGCONT);
    let refused = holder.expect("REFUSED", Duration::from_secs(5)).await;
    assert_eq!(refused, format!("REFUSED {t1} {t2}"));
    // No write of the paused holder landed after the new holder's.
    let after: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fenced_writes WHERE writer = 'holder' AND id > (SELECT min(id) FROM fenced_writes WHERE writer = 'next')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(after, 0);
    let _ = holder.child.wait().await;
}

/// A backend that counts what reaches the real one.
struct Counting {
    inner: CoordinatorLocks,
    acquiring: AtomicUsize,
    held: AtomicUsize,
    max_held: AtomicUsize,
    max_acquiring: AtomicUsize,
    acquisitions: AtomicUsize,
}

#[async_trait]
impl LockBackend for Counting {
    async fn acquire(&self, n: &LockName, o: &LockOwner, ttl: Duration, wait: Duration) -> Result<Acquired, LockError> {
        let now = self.acquiring.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_acquiring.fetch_max(now, Ordering::SeqCst);
        let r = self.inner.acquire(n, o, ttl, wait).await;
        self.acquiring.fetch_sub(1, Ordering::SeqCst);
        if let Ok(Acquired::Granted(_)) = r {
            self.acquisitions.fetch_add(1, Ordering::SeqCst);
            let h = self.held.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_held.fetch_max(h, Ordering::SeqCst);
        }
        r
    }
    async fn renew(&self, n: &LockName, o: &LockOwner, ttl: Duration) -> Result<Renewal, LockError> {
        self.inner.renew(n, o, ttl).await
    }
    async fn release(&self, n: &LockName, o: &LockOwner) -> Result<Release, LockError> {
        let r = self.inner.release(n, o).await;
        if let Ok(Release::Released { holds: 0 }) = r {
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
        r
    }
    fn kind(&self) -> &'static str {
        "counting"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn single_flight_one_acquisition_at_a_time_for_a_hundred_tasks() {
    let db = TestDb::new("locks_flight").await;
    let (c, _) = spawn_coordinator(fast_settings(&db.url)).await;
    let counting = Arc::new(Counting {
        inner: CoordinatorLocks::new(TandemClient::new(&c.url).unwrap()),
        acquiring: AtomicUsize::new(0),
        held: AtomicUsize::new(0),
        max_held: AtomicUsize::new(0),
        max_acquiring: AtomicUsize::new(0),
        acquisitions: AtomicUsize::new(0),
    });
    let locks = Locks::with_backend(counting.clone());
    let n = name("flight");
    let inside = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (locks, n, inside, done) = (locks.clone(), n.clone(), inside.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let opts = LockOptions::ttl(Duration::from_secs(5)).wait(Duration::from_secs(60));
            let g = locks.lock(&n, &opts).await.unwrap();
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two tasks inside at once");
            tokio::task::yield_now().await;
            inside.fetch_sub(1, Ordering::SeqCst);
            done.fetch_add(1, Ordering::SeqCst);
            drop(g);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 100);
    assert_eq!(counting.max_acquiring.load(Ordering::SeqCst), 1, "one acquisition at a time");
    assert_eq!(counting.max_held.load(Ordering::SeqCst), 1);
    let acquisitions = counting.acquisitions.load(Ordering::SeqCst);
    assert!((1..=20).contains(&acquisitions), "{acquisitions} acquisitions for 100 tasks (local hand-offs share them)");
    // The last guard released it.
    eventually("released", Duration::from_secs(5), || {
        let c = counting.clone();
        async move { (c.held.load(Ordering::SeqCst) == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_waiter_that_gives_up_does_not_keep_the_lock_held() {
    let db = TestDb::new("locks_giveup").await;
    let (c, _) = spawn_coordinator(fast_settings(&db.url)).await;
    let locks = locks_at(&[&c.url]);
    let n = name("giveup");
    let opts = LockOptions::ttl(Duration::from_millis(600)).wait(Duration::from_secs(10));
    let g = locks.lock(&n, &opts).await.unwrap();
    // A second task of the process waits for its turn, then is cancelled.
    let waiting = {
        let (locks, n) = (locks.clone(), n.clone());
        tokio::spawn(async move { locks.lock(&n, &opts).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    waiting.abort();
    let _ = waiting.await;
    drop(g);
    // Released at the backend: another process's client gets it at once.
    let other = locks_at(&[&c.url]);
    let g2 = eventually("released", Duration::from_secs(3), || {
        let (other, n) = (other.clone(), n.clone());
        async move {
            other
                .lock_as(&owner("other"), &n, &LockOptions::ttl(Duration::from_secs(5)).wait(Duration::ZERO))
                .await
                .ok()
        }
    })
    .await;
    assert!(!g2.is_lost());
}
