//! Locks on one Redis server.
//!
//! Each lock `name` is three keys that share a hash slot (the hash tag is
//! the name, so the scripts also run on a Redis Cluster node):
//!
//! - `{prefix}{name}`: the owner, set with `SET NX PX ttl`; its expiry is
//!   the lease.
//! - `{prefix}{name}:grant`: a hash of the grant's `token` and the owner's
//!   `holds`, with the same expiry as the lock key.
//! - `{prefix}{name}:fence`: the last fencing token handed out for the
//!   name. It has no expiry, so that tokens keep increasing across grants.
//!
//! Acquire, renew and release are each one Lua script (so each is atomic
//! and owner-checked on the server), sent as `EVALSHA` and loaded on a
//! `NOSCRIPT` answer. A new grant's token is the larger of the last token
//! plus one and the server's clock in microseconds (`TIME`): a Redis that
//! keeps nothing on disk and restarts, or a fence key someone deleted,
//! still hands out tokens above every earlier one, as long as the server's
//! clock does not go back by more than the time since the last grant.
//!
//! Waiting for a busy lock is polling with a jittered backoff (5 ms
//! doubling up to 100 ms, never past the wait's end, and a last try at
//! the end). It is not FIFO: whichever waiter asks first after a release
//! gets the lock. The coordinator backend
//! ([`super::coordinator`]) queues its waiters in order.
//!
//! What one server guarantees: mutual exclusion while the server runs and
//! its clock is sane. It does not survive the server: a restart without
//! persistence, or a failover to a replica that had not yet received the
//! key, frees every lock at once. Fencing tokens (checked by the resource,
//! [`super::fencing`]) keep a holder that outlived its lease from
//! overwriting the next holder's work; [`super::redlock`] spreads locks
//! over independent servers.
//!
//! Every request has a timeout ([`RedisOptions::request_timeout`], never
//! longer than the lease), so that a server that stopped answering (a
//! paused process, a partition) makes calls fail with
//! [`LockError::Unavailable`] instead of hanging, and the watchdog of a
//! held lock signals loss before the lease ends.

use super::{Acquired, FencingToken, Grant, LockBackend, LockError, LockName, LockOwner, Release, Renewal};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisResult, Script};
use rand::Rng;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;
use tandem_wire::{MAX_LOCK_TTL_MS, MIN_LOCK_TTL_MS};
use tokio::time::Instant;

/// The key prefix unless told otherwise.
pub const DEFAULT_PREFIX: &str = "tandem:lock:";

/// Acquire: a new grant (`SET NX PX`, token = max(fence + 1, server time
/// in µs), stored back into the fence key, grant hash {token, holds = 1}
/// with the lease), or a re-entry by the owner (holds + 1, both keys'
/// lease reset, token kept), or busy (with the lock's remaining PTTL).
///
/// KEYS: lock, grant, fence. ARGV: owner, ttl in ms.
/// Answers `{'1', token}`, `{'2', token, holds, fence}` or `{'0', pttl}`.
/// Numbers go back as strings: Lua numbers are doubles, and `%.0f` is the
/// format that writes a 16-digit microsecond count exactly (`tostring`
/// would write `1.7e+15`).
const ACQUIRE_LUA: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last = tonumber(redis.call('GET', KEYS[3])) or 0
  local token = string.format('%.0f', math.max(last + 1, floor))
  redis.call('SET', KEYS[3], token)
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'token', token, 'holds', '1')
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {'1', token}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local holds = redis.call('HINCRBY', KEYS[2], 'holds', 1)
  -- Never shortened: another hold of this owner may count on a longer lease.
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
  local token = redis.call('HGET', KEYS[2], 'token') or '0'
  local fence = redis.call('GET', KEYS[3]) or '0'
  return {'2', token, tostring(holds), fence}
end
return {'0', tostring(redis.call('PTTL', KEYS[1]))}
";

/// Renew: if the owner holds the lock, both keys' lease is extended to the
/// ttl if that is later (never shortened: a re-entrant owner's other hold
/// may have asked for more) (1), else nothing changes (0).
///
/// KEYS: lock, grant. ARGV: owner, ttl in ms.
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  -- Never shortened: another hold of this owner may count on a longer lease.
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
  return 1
end
return 0
";

/// Release: if the owner holds the lock, one hold goes; at zero both keys
/// go (answers 0), else the lease is left as it is (answers the holds
/// left). Not the owner's: -1, nothing changes.
///
/// KEYS: lock, grant. ARGV: owner.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local holds = redis.call('HINCRBY', KEYS[2], 'holds', -1)
if holds <= 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 0
end
return holds
";

/// RedLock's token phase: if the owner holds the lock here, the fence
/// becomes max(fence, token) and the grant hash {token, holds} (keeping
/// the lock's lease) and answers 1; else 0.
///
/// KEYS: lock, grant, fence. ARGV: owner, token, holds.
const FENCE_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if (tonumber(redis.call('GET', KEYS[3])) or 0) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[3], ARGV[2])
end
redis.call('HSET', KEYS[2], 'token', ARGV[2], 'holds', ARGV[3])
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[2], pttl)
end
return 1
";

/// The scripts, hashed once for the process.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));
static FENCE: LazyLock<Script> = LazyLock::new(|| Script::new(FENCE_LUA));

/// How [`RedisLocks`] talks to its server.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prefix of every key (default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// Longest one request may take before it fails with
    /// [`LockError::Unavailable`] (default 1 s). An acquire or renewal
    /// gets at most its lease.
    pub request_timeout: Duration,
    /// Longest one connection attempt may take (default 1 s).
    pub connect_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: DEFAULT_PREFIX.to_owned(),
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

impl RedisOptions {
    /// The same options with key prefix `prefix`.
    pub fn prefix(self, prefix: impl Into<String>) -> RedisOptions {
        RedisOptions { prefix: prefix.into(), ..self }
    }

    /// The same options with a request timeout of `timeout`.
    pub fn request_timeout(self, timeout: Duration) -> RedisOptions {
        RedisOptions { request_timeout: timeout, ..self }
    }
}

/// The Redis keys of one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKeys {
    /// The owner, with the lease as its expiry: `{prefix}{name}`.
    pub lock: String,
    /// The grant's `token` and `holds`: `{prefix}{name}:grant`.
    pub grant: String,
    /// The last token handed out, without expiry: `{prefix}{name}:fence`.
    pub fence: String,
}

impl LockKeys {
    /// The keys of `name` under `prefix`.
    pub fn new(prefix: &str, name: &LockName) -> LockKeys {
        let lock = format!("{prefix}{{{name}}}");
        LockKeys { grant: format!("{lock}:grant"), fence: format!("{lock}:fence"), lock }
    }
}

/// A lock backend on one Redis server.
#[derive(Debug, Clone)]
pub struct RedisLocks {
    /// The server.
    server: Server,
    /// Prefix and timeouts.
    opts: RedisOptions,
}

impl RedisLocks {
    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`)
    /// with the default options.
    pub async fn connect(url: &str) -> Result<RedisLocks, LockError> {
        RedisLocks::connect_with(url, RedisOptions::default()).await
    }

    /// Connects to the Redis at `url` with `opts`. Fails if the server
    /// cannot be reached now; once connected, the connection is re-made
    /// in the background when it breaks (calls fail meanwhile).
    pub async fn connect_with(url: &str, opts: RedisOptions) -> Result<RedisLocks, LockError> {
        let server = Server::lazy(url, opts.connect_timeout)?;
        let mut conn = server.conn.clone();
        within(
            &server.addr,
            opts.connect_timeout,
            async move { conn.send_packed_command(&::redis::cmd("PING")).await },
        )
        .await?;
        Ok(RedisLocks { server, opts })
    }

    /// The keys of `name`.
    pub fn keys(&self, name: &LockName) -> LockKeys {
        LockKeys::new(&self.opts.prefix, name)
    }

    /// The options.
    pub fn options(&self) -> &RedisOptions {
        &self.opts
    }

    fn limit(&self, lease: Duration) -> Duration {
        self.opts.request_timeout.min(lease)
    }
}

#[async_trait::async_trait]
impl LockBackend for RedisLocks {
    async fn acquire(
        &self,
        name: &LockName,
        owner: &LockOwner,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Acquired, LockError> {
        let ttl_ms = ttl_ms(ttl)?;
        let lease = Duration::from_millis(ttl_ms);
        let keys = self.keys(name);
        let deadline = deadline(wait);
        let mut backoff = Backoff::default();
        loop {
            let sent = Instant::now();
            match self.server.acquire(&keys, owner, ttl_ms, self.limit(lease)).await? {
                Attempt::New { token } => {
                    return Ok(Acquired::Granted(Grant {
                        token: FencingToken(token),
                        holds: 1,
                        valid_until: valid_until(sent, lease),
                    }));
                }
                Attempt::Reentered { token, holds, .. } => {
                    return Ok(Acquired::Granted(Grant {
                        token: FencingToken(token),
                        holds,
                        valid_until: valid_until(sent, lease),
                    }));
                }
                Attempt::Busy { pttl } => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(Acquired::Busy);
                    }
                    // A lease about to end is tried again as it ends, not a backoff later.
                    let pause = match pttl {
                        Some(left) => backoff.next_delay().min(left + Duration::from_millis(1)),
                        None => backoff.next_delay(),
                    };
                    tokio::time::sleep(pause.min(deadline - now)).await;
                }
            }
        }
    }

    async fn renew(&self, name: &LockName, owner: &LockOwner, ttl: Duration) -> Result<Renewal, LockError> {
        let ttl_ms = ttl_ms(ttl)?;
        let lease = Duration::from_millis(ttl_ms);
        let sent = Instant::now();
        if self.server.renew(&self.keys(name), owner, ttl_ms, self.limit(lease)).await? {
            Ok(Renewal::Renewed { valid_until: valid_until(sent, lease) })
        } else {
            Ok(Renewal::Lost)
        }
    }

    async fn release(&self, name: &LockName, owner: &LockOwner) -> Result<Release, LockError> {
        match self.server.release(&self.keys(name), owner, self.opts.request_timeout).await? {
            Some(holds) => Ok(Release::Released { holds }),
            None => Ok(Release::NotHeld),
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// One Redis server and its reconnecting connection.
#[derive(Debug, Clone)]
pub(super) struct Server {
    /// `host:port`, for errors and logs (the URL without its password).
    pub(super) addr: String,
    /// The multiplexed connection, re-made when it breaks.
    conn: ConnectionManager,
}

/// One server's answer to the acquire script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// A new grant; the server's fence is now `token`.
    New {
        /// This server's token for the grant.
        token: u64,
    },
    /// The owner held the lock here: one more hold.
    Reentered {
        /// The grant's token stored here.
        token: u64,
        /// The owner's holds here, this one included.
        holds: u32,
        /// This server's fence (the last token it handed out or stored).
        fence: u64,
    },
    /// Another owner holds it.
    Busy {
        /// What is left of the other owner's lease, if the server said.
        pttl: Option<Duration>,
    },
}

impl Server {
    /// A server at `url`, connected on first use (so that a server that is
    /// down now does not stop the client from being made).
    pub(super) fn lazy(url: &str, connect_timeout: Duration) -> Result<Server, LockError> {
        let client = Client::open(url).map_err(|e| LockError::Invalid(format!("redis url: {e}")))?;
        let addr = client.get_connection_info().addr().to_string();
        // Few, quick reconnection attempts: a request arriving while the
        // server is down should fail (and be retried by its caller) rather
        // than wait out a long backoff, and a restarted server is found as
        // soon as the next request asks.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(5))
            .set_max_delay(Duration::from_millis(50))
            .set_connection_timeout(Some(connect_timeout))
            // Requests are timed out by the callers, each with its own limit.
            .set_response_timeout(None);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| LockError::Invalid(format!("redis {addr}: {e}")))?;
        Ok(Server { addr, conn })
    }

    /// Runs the acquire script.
    pub(super) async fn acquire(
        &self,
        keys: &LockKeys,
        owner: &LockOwner,
        ttl_ms: u64,
        limit: Duration,
    ) -> Result<Attempt, LockError> {
        let mut conn = self.conn.clone();
        let reply: Vec<String> = within(&self.addr, limit, async move {
            ACQUIRE
                .key(&keys.lock)
                .key(&keys.grant)
                .key(&keys.fence)
                .arg(owner.as_str())
                .arg(ttl_ms)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
        let bad = || LockError::Unavailable(format!("redis {}: unexpected acquire answer {reply:?}", self.addr));
        let num = |i: usize| reply.get(i).and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad);
        let unsigned = |i: usize| num(i).and_then(|n| u64::try_from(n).map_err(|_| bad()));
        match reply.first().map(String::as_str) {
            Some("1") => Ok(Attempt::New { token: unsigned(1)? }),
            Some("2") => Ok(Attempt::Reentered {
                token: unsigned(1)?,
                holds: u32::try_from(unsigned(2)?).map_err(|_| bad())?,
                fence: unsigned(3)?,
            }),
            Some("0") => Ok(Attempt::Busy { pttl: u64::try_from(num(1)?).ok().map(Duration::from_millis) }),
            _ => Err(bad()),
        }
    }

    /// Runs the renew script: whether the owner held the lock.
    pub(super) async fn renew(
        &self,
        keys: &LockKeys,
        owner: &LockOwner,
        ttl_ms: u64,
        limit: Duration,
    ) -> Result<bool, LockError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = within(&self.addr, limit, async move {
            RENEW.key(&keys.lock).key(&keys.grant).arg(owner.as_str()).arg(ttl_ms).invoke_async(&mut conn).await
        })
        .await?;
        Ok(renewed == 1)
    }

    /// Runs the release script: the holds left, `None` if the owner did
    /// not hold the lock.
    pub(super) async fn release(
        &self,
        keys: &LockKeys,
        owner: &LockOwner,
        limit: Duration,
    ) -> Result<Option<u32>, LockError> {
        let mut conn = self.conn.clone();
        let left: i64 = within(&self.addr, limit, async move {
            RELEASE.key(&keys.lock).key(&keys.grant).arg(owner.as_str()).invoke_async(&mut conn).await
        })
        .await?;
        Ok(u32::try_from(left).ok())
    }

    /// Runs RedLock's token phase: whether the owner held the lock here
    /// (and now has `token` and `holds`).
    pub(super) async fn fence(
        &self,
        keys: &LockKeys,
        owner: &LockOwner,
        token: u64,
        holds: u32,
        limit: Duration,
    ) -> Result<bool, LockError> {
        let mut conn = self.conn.clone();
        let stored: i64 = within(&self.addr, limit, async move {
            FENCE
                .key(&keys.lock)
                .key(&keys.grant)
                .key(&keys.fence)
                .arg(owner.as_str())
                .arg(token)
                .arg(holds)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
        Ok(stored == 1)
    }
}

/// `request`, failing with [`LockError::Unavailable`] if it errs or takes
/// longer than `limit` (its outcome is then unknown).
async fn within<T>(addr: &str, limit: Duration, request: impl Future<Output = RedisResult<T>>) -> Result<T, LockError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(LockError::Unavailable(format!("redis {addr}: {e}"))),
        Err(_) => Err(LockError::Unavailable(format!("redis {addr}: no answer within {limit:?}"))),
    }
}

/// The lease in whole milliseconds (what `PX` takes), within the bounds
/// the coordinator backend accepts too.
pub(super) fn ttl_ms(ttl: Duration) -> Result<u64, LockError> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if (MIN_LOCK_TTL_MS..=MAX_LOCK_TTL_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(LockError::Invalid(format!("lease of {ttl:?}: must be {MIN_LOCK_TTL_MS} ms to {MAX_LOCK_TTL_MS} ms")))
    }
}

/// What is taken off a lease for the clocks of this process and of the
/// server running at different rates: 1% of it plus 2 ms.
pub(super) fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// The end of a lease of `lease` asked for at `sent`, on this process's
/// clock: the server started it no earlier than `sent`, so it ends no
/// earlier than this (give or take the drift allowance).
pub(super) fn valid_until(sent: Instant, lease: Duration) -> Instant {
    sent + lease.saturating_sub(drift(lease))
}

/// When a wait of `wait` from now ends (far in the future for absurd waits).
pub(super) fn deadline(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait).unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

/// Jittered exponential delays between tries: 5 ms doubling up to 100 ms,
/// each a random duration in the upper half of the current step (so that
/// waiters that collided spread out).
#[derive(Debug)]
pub(super) struct Backoff {
    /// The current step.
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: Backoff::FIRST }
    }
}

impl Backoff {
    /// The first step.
    const FIRST: Duration = Duration::from_millis(5);
    /// The largest step.
    const MAX: Duration = Duration::from_millis(100);

    /// The next delay.
    pub(super) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(Backoff::MAX);
        let micros = u64::try_from(step.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::thread_rng().gen_range(micros / 2..=micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_names_hash_slot() {
        let name = LockName::parse("order:42").expect("name");
        let keys = LockKeys::new(DEFAULT_PREFIX, &name);
        assert_eq!(keys.lock, "tandem:lock:{order:42}");
        assert_eq!(keys.grant, "tandem:lock:{order:42}:grant");
        assert_eq!(keys.fence, "tandem:lock:{order:42}:fence");
    }

    #[test]
    fn leases_are_checked_and_trimmed() {
        assert!(ttl_ms(Duration::from_millis(9)).is_err());
        assert_eq!(ttl_ms(Duration::from_micros(10_999)).ok(), Some(10));
        assert!(ttl_ms(Duration::from_secs(86_401)).is_err());
        assert_eq!(drift(Duration::from_secs(1)), Duration::from_millis(12));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_micros(2500) && first <= Duration::from_millis(5));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(50) && late <= Duration::from_millis(100));
    }
}
