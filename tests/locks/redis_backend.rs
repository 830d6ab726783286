//! The Redis backend on the machine's Redis (`127.0.0.1:6379`) and on
//! servers of the suite's own (to stop them), and RedLock over servers of
//! the suite's own. Every test uses lock names of its own (a UUID), so they
//! run in parallel, and removes the keys it made on the machine's Redis.

use crate::servers::RedisServer;
use redis::aio::MultiplexedConnection;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tandem_sdk::locks::redis::{LockKeys, RedisLocks};
use tandem_sdk::locks::redlock::RedLock;
use tandem_sdk::locks::{
    Acquired, Grant, LockBackend, LockError, LockName, LockOptions, LockOwner, Locks, Release, Renewal,
};
use tokio::time::Instant;

/// The machine's Redis.
const MACHINE_REDIS: &str = "redis://127.0.0.1:6379";

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn lock_name(tag: &str) -> LockName {
    LockName::parse(format!("test:{tag}:{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn owner(tag: &str) -> LockOwner {
    LockOwner::random(tag)
}

/// The backend on the machine's Redis, and a connection of the test's own.
async fn machine() -> (RedisLocks, MultiplexedConnection) {
    let backend = RedisLocks::connect(MACHINE_REDIS).await.expect("the machine's Redis at 127.0.0.1:6379");
    (backend, connect(MACHINE_REDIS).await)
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn granted(a: Acquired) -> Grant {
    match a {
        Acquired::Granted(g) => g,
        Acquired::Busy => panic!("expected a grant, got Busy"),
    }
}

async fn get(c: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(c).await.unwrap()
}

async fn hget(c: &mut MultiplexedConnection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET").arg(key).arg(field).query_async(c).await.unwrap()
}

async fn pttl(c: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(c).await.unwrap()
}

async fn exists(c: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query_async::<i64>(c).await.unwrap() == 1
}

async fn del(c: &mut MultiplexedConnection, key: &str) {
    redis::cmd("DEL").arg(key).query_async::<i64>(c).await.unwrap();
}

/// Removes a lock's keys (the fence key has no expiry).
async fn forget(c: &mut MultiplexedConnection, keys: &LockKeys) {
    for k in [&keys.lock, &keys.grant, &keys.fence] {
        del(c, k).await;
    }
}

fn wall_clock_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_grants_refuses_reenters_and_releases() {
    let (backend, mut c) = machine().await;
    let name = lock_name("grant");
    let keys = backend.keys(&name);
    let (a, b) = (owner("a"), owner("b"));
    let clock = wall_clock_us();

    let before = Instant::now();
    let g = granted(backend.acquire(&name, &a, 5 * SEC, Duration::ZERO).await.unwrap());
    let after = Instant::now();
    assert_eq!(g.holds, 1);
    // Valid from before the request for the lease less 1% + 2 ms.
    assert!(g.valid_until >= before + Duration::from_millis(4948), "{:?}", g.valid_until - before);
    assert!(g.valid_until <= after + Duration::from_millis(4948));
    assert_eq!(get(&mut c, &keys.lock).await.as_deref(), Some(a.as_str()));
    // The token is exact (16 digits through Lua's doubles) and is what the server stored.
    assert_eq!(hget(&mut c, &keys.grant, "token").await, Some(g.token.0.to_string()));
    assert_eq!(hget(&mut c, &keys.grant, "holds").await.as_deref(), Some("1"));
    assert_eq!(get(&mut c, &keys.fence).await, Some(g.token.0.to_string()));
    assert!(g.token.0 >= clock, "the first token is the server's clock in µs: {} < {clock}", g.token);
    assert!(pttl(&mut c, &keys.lock).await > 4000);
    assert!(pttl(&mut c, &keys.grant).await > 4000);
    assert_eq!(pttl(&mut c, &keys.fence).await, -1, "the fence key has no expiry");

    assert_eq!(backend.acquire(&name, &b, 5 * SEC, Duration::ZERO).await.unwrap(), Acquired::Busy);

    let again = granted(backend.acquire(&name, &a, 5 * SEC, Duration::ZERO).await.unwrap());
    assert_eq!((again.holds, again.token), (2, g.token));
    assert_eq!(hget(&mut c, &keys.grant, "holds").await.as_deref(), Some("2"));

    assert_eq!(backend.release(&name, &a).await.unwrap(), Release::Released { holds: 1 });
    assert!(exists(&mut c, &keys.lock).await);
    assert_eq!(backend.acquire(&name, &b, 5 * SEC, Duration::ZERO).await.unwrap(), Acquired::Busy);
    assert_eq!(backend.release(&name, &a).await.unwrap(), Release::Released { holds: 0 });
    assert!(!exists(&mut c, &keys.lock).await);
    assert!(!exists(&mut c, &keys.grant).await);
    assert_eq!(backend.release(&name, &a).await.unwrap(), Release::NotHeld);

    let next = granted(backend.acquire(&name, &b, 5 * SEC, Duration::ZERO).await.unwrap());
    assert!(next.token > g.token);
    assert_eq!(backend.kind(), "redis");
    forget(&mut c, &keys).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_release_by_another_owner_is_refused() {
    let (backend, mut c) = machine().await;
    let name = lock_name("release");
    let keys = backend.keys(&name);
    let (a, b) = (owner("a"), owner("b"));
    granted(backend.acquire(&name, &a, 5 * SEC, Duration::ZERO).await.unwrap());

    assert_eq!(backend.release(&name, &b).await.unwrap(), Release::NotHeld);
    assert_eq!(get(&mut c, &keys.lock).await.as_deref(), Some(a.as_str()));
    assert_eq!(hget(&mut c, &keys.grant, "holds").await.as_deref(), Some("1"));
    // Through the client too: a guard can be released only by its owner's release.
    assert_eq!(backend.acquire(&name, &b, 5 * SEC, Duration::ZERO).await.unwrap(), Acquired::Busy);

    assert_eq!(backend.release(&name, &a).await.unwrap(), Release::Released { holds: 0 });
    forget(&mut c, &keys).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_renewal_extends_the_lease_and_only_for_its_owner() {
    let (backend, mut c) = machine().await;
    let name = lock_name("renew");
    let keys = backend.keys(&name);
    let (a, b) = (owner("a"), owner("b"));
    granted(backend.acquire(&name, &a, SEC, Duration::ZERO).await.unwrap());
    assert!(pttl(&mut c, &keys.lock).await <= 1000);

    let before = Instant::now();
    let Renewal::Renewed { valid_until } = backend.renew(&name, &a, 10 * SEC).await.unwrap() else {
        panic!("the owner's renewal was refused");
    };
    assert!(valid_until >= before + Duration::from_millis(9898) && valid_until <= Instant::now() + 10 * SEC);
    assert!(pttl(&mut c, &keys.lock).await > 9000);
    assert!(pttl(&mut c, &keys.grant).await > 9000);

    assert_eq!(backend.renew(&name, &b, 60 * SEC).await.unwrap(), Renewal::Lost);
    let left = pttl(&mut c, &keys.lock).await;
    assert!(left > 8000 && left <= 10_000, "another owner's renewal changed the lease: {left}");
    assert_eq!(get(&mut c, &keys.lock).await.as_deref(), Some(a.as_str()));

    assert_eq!(backend.release(&name, &a).await.unwrap(), Release::Released { holds: 0 });
    assert_eq!(backend.renew(&name, &a, SEC).await.unwrap(), Renewal::Lost);
    assert!(!exists(&mut c, &keys.lock).await, "a refused renewal made the key again");
    forget(&mut c, &keys).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_tokens_increase_across_grants_even_without_the_counter() {
    let (backend, mut c) = machine().await;
    let name = lock_name("tokens");
    let keys = backend.keys(&name);
    let mut last = 0;
    for i in 0..5 {
        let o = owner(&format!("o{i}"));
        let g = granted(backend.acquire(&name, &o, 5 * SEC, Duration::ZERO).await.unwrap());
        assert!(g.token.0 > last, "token {} after {last}", g.token);
        assert_eq!(get(&mut c, &keys.fence).await, Some(g.token.0.to_string()));
        last = g.token.0;
        assert_eq!(backend.release(&name, &o).await.unwrap(), Release::Released { holds: 0 });
    }

    // The counter is lost (a Redis restarted without persistence): the server's clock carries on.
    del(&mut c, &keys.fence).await;
    let o = owner("after-loss");
    let g = granted(backend.acquire(&name, &o, 5 * SEC, Duration::ZERO).await.unwrap());
    assert!(g.token.0 > last, "token {} after {last} once the fence key was gone", g.token);
    backend.release(&name, &o).await.unwrap();

    // A counter ahead of the clock is counted on by one, exactly, at 16+ digits.
    let ahead = g.token.0 + 1_000_000_007;
    redis::cmd("SET").arg(&keys.fence).arg(ahead).query_async::<()>(&mut c).await.unwrap();
    let o = owner("ahead");
    let g = granted(backend.acquire(&name, &o, 5 * SEC, Duration::ZERO).await.unwrap());
    assert_eq!(g.token.0, ahead + 1);
    assert_eq!(get(&mut c, &keys.fence).await, Some((ahead + 1).to_string()));
    backend.release(&name, &o).await.unwrap();
    forget(&mut c, &keys).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_lease_of_a_silent_holder_ends_after_its_ttl_and_not_before() {
    let (backend, mut c) = machine().await;
    let name = lock_name("expiry");
    let keys = backend.keys(&name);
    let ttl = 300 * MS;
    let sent = Instant::now();
    // Taken at the backend: no watchdog renews it.
    let g = granted(backend.acquire(&name, &owner("silent"), ttl, Duration::ZERO).await.unwrap());

    let other = owner("next");
    let deadline = sent + 3 * SEC;
    let mut refused = 0;
    let got = loop {
        match backend.acquire(&name, &other, 5 * SEC, Duration::ZERO).await.unwrap() {
            Acquired::Granted(next) => {
                assert!(next.token > g.token);
                break Instant::now();
            }
            Acquired::Busy => refused += 1,
        }
        assert!(Instant::now() < deadline, "the lease did not end within 3 s");
        tokio::time::sleep(5 * MS).await;
    };
    assert!(refused > 10, "only {refused} refusals during the lease");
    // Not before the end of the lease (Redis keeps expiries in whole ms), and not before valid_until.
    assert!(got >= sent + ttl - MS, "granted to another owner {:?} after the first grant", got - sent);
    assert!(got >= g.valid_until);
    assert!(got < sent + ttl + 500 * MS, "the lock was free only {:?} after the grant", got - sent);
    backend.release(&name, &other).await.unwrap();
    forget(&mut c, &keys).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_waiting_acquire_gets_a_released_lock_and_gives_up_at_its_wait() {
    let (backend, mut c) = machine().await;
    let backend = Arc::new(backend);
    let name = lock_name("wait");
    let keys = backend.keys(&name);
    let (a, b, late) = (owner("a"), owner("b"), owner("late"));
    granted(backend.acquire(&name, &a, 5 * SEC, Duration::ZERO).await.unwrap());

    let releaser = {
        let (backend, name, a) = (backend.clone(), name.clone(), a.clone());
        tokio::spawn(async move {
            tokio::time::sleep(150 * MS).await;
            backend.release(&name, &a).await.unwrap()
        })
    };
    let started = Instant::now();
    let g = granted(backend.acquire(&name, &b, 5 * SEC, 3 * SEC).await.unwrap());
    let waited = started.elapsed();
    assert_eq!(releaser.await.unwrap(), Release::Released { holds: 0 });
    assert!(waited >= 140 * MS && waited < SEC, "waited {waited:?} for a lock released after 150 ms");
    assert_eq!(g.holds, 1);
    assert_eq!(get(&mut c, &keys.lock).await.as_deref(), Some(b.as_str()));

    let started = Instant::now();
    assert_eq!(backend.acquire(&name, &late, 5 * SEC, 200 * MS).await.unwrap(), Acquired::Busy);
    let waited = started.elapsed();
    assert!(waited >= 200 * MS && waited < 500 * MS, "gave up after {waited:?} of a 200 ms wait");
    backend.release(&name, &b).await.unwrap();
    forget(&mut c, &keys).await;
}

/// 16 tasks × 25 increments of a counter kept in Redis by GET then SET (a
/// read-modify-write that loses updates unless the lock excludes), each
/// under a lock of its own taken through [`Locks::lock_as`]; records each
/// grant's token in lock order. Returns the tokens.
async fn contend(locks: Locks, name: &LockName, mut counter: MultiplexedConnection) -> Vec<u64> {
    const TASKS: usize = 16;
    const ROUNDS: usize = 25;
    let key = format!("test:counter:{}", uuid::Uuid::new_v4().simple());
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let opts = LockOptions::ttl(5 * SEC).wait(20 * SEC);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (locks, name, key, tokens, mut c) =
                (locks.clone(), name.clone(), key.clone(), tokens.clone(), counter.clone());
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = locks.lock_as(&owner(&format!("t{t}")), &name, &opts).await.unwrap();
                    tokens.lock().unwrap().push(guard.token().0);
                    let n: Option<u64> = redis::cmd("GET").arg(&key).query_async(&mut c).await.unwrap();
                    // Let the other tasks run between the read and the write.
                    tokio::task::yield_now().await;
                    redis::cmd("SET").arg(&key).arg(n.unwrap_or(0) + 1).query_async::<()>(&mut c).await.unwrap();
                    assert!(!guard.is_lost());
                    guard.release().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total: Option<u64> = redis::cmd("GET").arg(&key).query_async(&mut counter).await.unwrap();
    redis::cmd("DEL").arg(&key).query_async::<i64>(&mut counter).await.unwrap();
    assert_eq!(total, Some((TASKS * ROUNDS) as u64), "updates were lost: the lock did not exclude");
    let tokens = Arc::try_unwrap(tokens).unwrap().into_inner().unwrap();
    assert_eq!(tokens.len(), TASKS * ROUNDS);
    for w in tokens.windows(2) {
        assert!(w[1] > w[0], "token {} granted after {}", w[1], w[0]);
    }
    tokens
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_excludes_under_contention_with_increasing_tokens() {
    let (backend, mut c) = machine().await;
    let name = lock_name("contention");
    let keys = backend.keys(&name);
    let started = Instant::now();
    contend(Locks::new(backend), &name, c.clone()).await;
    assert!(!exists(&mut c, &keys.lock).await, "the lock is still held after every release");
    forget(&mut c, &keys).await;
    eprintln!("redis contention: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn redlock_excludes_under_contention_with_increasing_tokens() {
    let servers = RedisServer::start_many(3).await;
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let backend = RedLock::connect(&urls).await.unwrap();
    assert_eq!((backend.servers(), backend.quorum(), backend.kind()), (3, 2, "redlock"));
    let name = lock_name("redlock-contention");
    let keys = backend.keys(&name);
    let started = Instant::now();
    let tokens = contend(Locks::new(backend), &name, connect(&servers[0].url()).await).await;
    eprintln!("redlock contention: {:?}", started.elapsed());
    let last = tokens.last().copied().unwrap();
    let mut stored = 0;
    for s in &servers {
        let mut c = s.connection().await;
        assert!(!exists(&mut c, &keys.lock).await, "the lock is still held on {}", s.url());
        let fence: u64 = get(&mut c, &keys.fence).await.unwrap().parse().unwrap();
        assert!(fence <= last + 1_000_000, "fence {fence} far above the last token {last}");
        stored += usize::from(fence >= last);
    }
    assert!(stored >= 2, "the last token was stored on {stored} of 3 servers");
}

#[tokio::test(flavor = "multi_thread")]
async fn redlock_grants_with_a_minority_down_and_refuses_without_a_majority() {
    let mut servers = RedisServer::start_many(5).await;
    servers[0].kill().await;
    servers[1].pause();
    // A server that is down when the client is made does not stop it.
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let backend = RedLock::connect(&urls).await.unwrap();
    let name = lock_name("majority");
    let keys = backend.keys(&name);
    let a = owner("a");

    let started = Instant::now();
    let g = granted(backend.acquire(&name, &a, 5 * SEC, Duration::ZERO).await.unwrap());
    assert!(started.elapsed() < SEC, "granting past a paused server took {:?}", started.elapsed());
    assert_eq!(g.holds, 1);
    for s in &servers[2..] {
        let mut c = s.connection().await;
        assert_eq!(get(&mut c, &keys.lock).await.as_deref(), Some(a.as_str()));
        assert_eq!(hget(&mut c, &keys.grant, "token").await, Some(g.token.0.to_string()));
        assert_eq!(get(&mut c, &keys.fence).await, Some(g.token.0.to_string()));
    }
    assert!(matches!(backend.renew(&name, &a, 5 * SEC).await.unwrap(), Renewal::Renewed { .. }));
    assert_eq!(backend.release(&name, &a).await.unwrap(), Release::Released { holds: 0 });
    for s in &servers[2..] {
        assert!(!exists(&mut s.connection().await, &keys.lock).await);
    }

    servers[2].kill().await;
    let b = owner("b");
    let started = Instant::now();
    match backend.acquire(&name, &b, 5 * SEC, 300 * MS).await {
        Err(LockError::Unavailable(why)) => assert!(why.contains("of 5 servers granted"), "{why}"),
        Ok(Acquired::Busy) => {}
        other => panic!("granted by 2 of 5 servers: {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= 300 * MS && waited < 2 * SEC, "refused after {waited:?}");
    for s in &servers[3..] {
        let mut c = s.connection().await;
        assert!(!exists(&mut c, &keys.lock).await, "a refused acquire left its key on {}", s.url());
        assert!(!exists(&mut c, &keys.grant).await);
    }
    servers[1].resume();
}

#[tokio::test(flavor = "multi_thread")]
async fn redlock_reenters_renews_and_keeps_tokens_increasing_when_servers_forget() {
    let mut servers = RedisServer::start_many(3).await;
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let backend = RedLock::connect(&urls).await.unwrap();
    let name = lock_name("redlock");
    let keys = backend.keys(&name);
    let (a, b) = (owner("a"), owner("b"));

    let g = granted(backend.acquire(&name, &a, 2 * SEC, Duration::ZERO).await.unwrap());
    let again = granted(backend.acquire(&name, &a, 2 * SEC, Duration::ZERO).await.unwrap());
    assert_eq!((again.holds, again.token), (2, g.token));
    assert_eq!(backend.acquire(&name, &b, 2 * SEC, Duration::ZERO).await.unwrap(), Acquired::Busy);
    assert_eq!(backend.release(&name, &b).await.unwrap(), Release::NotHeld);
    assert_eq!(backend.renew(&name, &b, 2 * SEC).await.unwrap(), Renewal::Lost);
    let Renewal::Renewed { .. } = backend.renew(&name, &a, 10 * SEC).await.unwrap() else {
        panic!("the owner's renewal was refused");
    };
    for s in &servers {
        let mut c = s.connection().await;
        assert_eq!(get(&mut c, &keys.lock).await.as_deref(), Some(a.as_str()));
        assert_eq!(hget(&mut c, &keys.grant, "token").await, Some(g.token.0.to_string()));
        assert_eq!(hget(&mut c, &keys.grant, "holds").await.as_deref(), Some("2"));
        assert!(pttl(&mut c, &keys.lock).await > 9000);
        assert!(pttl(&mut c, &keys.grant).await > 9000);
    }
    assert_eq!(backend.release(&name, &a).await.unwrap(), Release::Released { holds: 1 });
    assert_eq!(backend.release(&name, &a).await.unwrap(), Release::Released { holds: 0 });
    assert_eq!(backend.release(&name, &a).await.unwrap(), Release::NotHeld);

    let g2 = granted(backend.acquire(&name, &b, 2 * SEC, Duration::ZERO).await.unwrap());
    assert!(g2.token > g.token);
    backend.release(&name, &b).await.unwrap();

    // Two of the three servers forget everything (a restart without
    // persistence, a deleted fence key); the third's fence, met by every
    // majority, keeps the next token above the last.
    servers[0].restart().await;
    del(&mut servers[1].connection().await, &keys.fence).await;
    let c = owner("c");
    let g3 = granted(backend.acquire(&name, &c, 2 * SEC, SEC).await.unwrap());
    assert!(g3.token > g2.token, "token {} after {}", g3.token, g2.token);
    backend.release(&name, &c).await.unwrap();
}

/// Holds a lock on a suite server with a 600 ms lease through [`Locks`],
/// then stops the server with `stop`: the guard must signal loss before
/// the lease it last saw ends, and within a lease of the stop.
async fn loss_is_signalled_in_time(stop: impl AsyncFnOnce(&mut RedisServer)) {
    let mut server = RedisServer::start().await;
    let backend = RedisLocks::connect(&server.url()).await.unwrap();
    let locks = Locks::new(backend);
    let name = lock_name("loss");
    let ttl = 600 * MS;
    let guard = locks.lock_as(&owner("holder"), &name, &LockOptions::ttl(ttl).wait(Duration::ZERO)).await.unwrap();
    // Past the first renewal (a third of the lease).
    tokio::time::sleep(250 * MS).await;
    assert!(!guard.is_lost());

    let stopped = Instant::now();
    stop(&mut server).await;
    tokio::time::timeout(ttl, guard.lost()).await.expect("loss not signalled within the lease");
    let fired = Instant::now();
    let lease_end = guard.valid_until();
    assert!(fired <= lease_end, "loss signalled {:?} after the lease ended", fired - lease_end);
    assert!(fired - stopped <= ttl);
    assert!(guard.is_lost());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_guard_signals_loss_before_its_lease_ends_when_the_server_is_paused() {
    loss_is_signalled_in_time(async |s: &mut RedisServer| s.pause()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_guard_signals_loss_before_its_lease_ends_when_the_server_is_killed() {
    loss_is_signalled_in_time(async |s: &mut RedisServer| s.kill().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_renewal_keeps_a_lock_for_several_leases() {
    let (backend, mut c) = machine().await;
    let other = RedisLocks::connect(MACHINE_REDIS).await.unwrap();
    let locks = Locks::new(backend);
    let name = lock_name("kept");
    let keys = other.keys(&name);
    let holder = owner("holder");
    let guard = locks.lock_as(&holder, &name, &LockOptions::ttl(300 * MS).wait(Duration::ZERO)).await.unwrap();
    let until = Instant::now() + 1500 * MS;
    let mut refused = 0;
    while Instant::now() < until {
        assert_eq!(other.acquire(&name, &owner("other"), SEC, Duration::ZERO).await.unwrap(), Acquired::Busy);
        refused += 1;
        assert!(!guard.is_lost());
        tokio::time::sleep(100 * MS).await;
    }
    assert!(refused >= 10);
    assert!(!guard.is_lost());
    assert!(guard.valid_until() > Instant::now());
    assert_eq!(get(&mut c, &keys.lock).await.as_deref(), Some(holder.as_str()));
    guard.release().await.unwrap();
    assert!(!exists(&mut c, &keys.lock).await);
    forget(&mut c, &keys).await;
}
