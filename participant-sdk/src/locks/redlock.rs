//! RedLock: one lock over N independent Redis servers (no replication
//! between them), held when a majority granted it within its lease.
//!
//! # The algorithm
//!
//! Acquire (antirez's RedLock, with fencing tokens added):
//!
//! 1. Note the time, then run [`super::redis`]'s acquire script on every
//!    server at once, each with a short timeout (so that a server that is
//!    down or stopped costs little): `SET NX PX` of a random owner, or a
//!    re-entry by the owner.
//! 2. The lock is granted if a majority (N/2 + 1) of servers granted it and
//!    time is left of the lease: validity = ttl − time spent − a drift
//!    allowance (ttl/100 + 2 ms).
//! 3. Token phase: each granting server answered its own fence, the
//!    larger of its last token + 1 and its clock in microseconds. The
//!    grant's token is the largest, and a second script stores it on the
//!    granting servers (`fence = max(fence, token)`, owner-checked); a
//!    majority must store it. Why two phases: the servers' counters are
//!    independent, so the largest counter of one majority says nothing
//!    about another. A majority that stored `t` meets every later majority
//!    in at least one server, whose next grant answers more than `t`; so
//!    every later grant's token is larger.
//! 4. Otherwise (no majority, no time left, or the token phase fell short)
//!    the owner's key is released on every server that may have set it,
//!    and the acquire tries again after a random delay while its wait
//!    lasts.
//!
//! A re-entry is a majority of servers answering that the owner holds the
//! lock already: the token is the largest grant token among them.
//! Renewal counts like an acquire (a majority within the validity);
//! release is sent to every server.
//!
//! # What it guarantees, and what it does not
//!
//! RedLock keeps working while a minority of servers is down, slow, or
//! stopped: `N = 5` tolerates 2. Two owners hold the same lock at the same
//! time only if its assumptions break:
//!
//! - **Clock rates are bounded.** Leases are timed by each server's clock
//!   and validity by this process's; the drift allowance covers clocks that
//!   run at different rates by up to about 1%, not a clock that jumps (an
//!   operator or NTP stepping a server's clock forward expires its keys
//!   early).
//! - **Processes are not paused past the validity.** A holder stopped by a
//!   GC pause, SIGSTOP, a VM migration or swapping, after its last check
//!   and before its write, wakes with a lease that ended while it slept and
//!   another owner may hold the lock. No lock service can prevent that; it
//!   can only be detected by the resource.
//! - **Servers remember.** A server that restarts without persistence (the
//!   default here: nothing on disk) forgets its keys; with one forgetting
//!   server, a lock held on exactly a majority can be granted to a second
//!   owner. Antirez's remedy is delayed restarts: keep a restarted server
//!   out for longer than the longest lease. Tokens still increase across
//!   such a restart (the time floor).
//!
//! What makes it safe anyway is the fencing token: the resource refuses a
//! write carrying a token lower than the highest it has seen
//! ([`super::fencing`]). A paused or forgotten holder's late write carries
//! an older token than the new holder's and is refused; RedLock's job is
//! then only to make two holders rare, and tokens to make them harmless.
//!
//! Waiting is polling with a random backoff, not FIFO, as with
//! [`super::redis`]. Servers are connected on first use and reconnected
//! when a connection breaks, so a server that is down when the client is
//! made, or restarts later, does not stop it.

use super::redis::{deadline, drift, ttl_ms, Attempt, Backoff, LockKeys, Server, DEFAULT_PREFIX};
use super::{Acquired, FencingToken, Grant, LockBackend, LockError, LockName, LockOwner, Release, Renewal};
use futures::future::join_all;
use std::time::Duration;
use tokio::time::Instant;

/// The shortest per-server timeout of the default.
const MIN_SERVER_TIMEOUT: Duration = Duration::from_millis(5);
/// The longest per-server timeout of the default (and the release timeout).
const MAX_SERVER_TIMEOUT: Duration = Duration::from_millis(50);

/// How [`RedLock`] talks to its servers.
#[derive(Debug, Clone)]
pub struct RedLockOptions {
    /// Prefix of every key (default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// How long one server may take to answer one script. `None` (the
    /// default): a tenth of the lease, between 5 ms and 50 ms, so that an
    /// unreachable server costs a small part of the lease; a release gets
    /// 50 ms.
    pub server_timeout: Option<Duration>,
    /// Longest one connection attempt to a server may take (default
    /// 250 ms); a server that cannot be connected to counts as not answering.
    pub connect_timeout: Duration,
}

impl Default for RedLockOptions {
    fn default() -> Self {
        RedLockOptions {
            prefix: DEFAULT_PREFIX.to_owned(),
            server_timeout: None,
            connect_timeout: Duration::from_millis(250),
        }
    }
}

impl RedLockOptions {
    /// The same options with key prefix `prefix`.
    pub fn prefix(self, prefix: impl Into<String>) -> RedLockOptions {
        RedLockOptions { prefix: prefix.into(), ..self }
    }

    /// The same options with a per-server timeout of `timeout`.
    pub fn server_timeout(self, timeout: Duration) -> RedLockOptions {
        RedLockOptions { server_timeout: Some(timeout), ..self }
    }
}

/// A lock backend over N independent Redis servers (module docs).
#[derive(Debug, Clone)]
pub struct RedLock {
    /// The servers, each with its own reconnecting connection.
    servers: Vec<Server>,
    /// Prefix and timeouts.
    opts: RedLockOptions,
}

/// How one acquire round ended, short of a grant.
enum Miss {
    /// Other owners hold enough servers that no majority was possible.
    Busy,
    /// Too few servers answered, or too late.
    Unavailable(String),
}

/// A server that granted in a round.
struct Granting {
    /// Its index in [`RedLock::servers`].
    server: usize,
    /// Its answer.
    attempt: Attempt,
}

impl RedLock {
    /// A client of the Redis servers at `urls`, with the default options.
    /// Nothing is connected yet: servers that are down now count as not
    /// answering until they are back.
    pub async fn connect<S: AsRef<str>>(urls: &[S]) -> Result<RedLock, LockError> {
        RedLock::connect_with(urls, RedLockOptions::default()).await
    }

    /// A client of the Redis servers at `urls` with `opts`. Fails only on
    /// an empty list or a URL that does not parse. (Async because the
    /// connections' background tasks need the tokio runtime.)
    pub async fn connect_with<S: AsRef<str>>(urls: &[S], opts: RedLockOptions) -> Result<RedLock, LockError> {
        if urls.is_empty() {
            return Err(LockError::Invalid("RedLock needs at least one Redis server".into()));
        }
        let servers =
            urls.iter().map(|u| Server::lazy(u.as_ref(), opts.connect_timeout)).collect::<Result<Vec<_>, _>>()?;
        Ok(RedLock { servers, opts })
    }

    /// How many servers there are.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// How many servers make a majority: N/2 + 1.
    pub fn quorum(&self) -> usize {
        self.servers.len() / 2 + 1
    }

    /// The keys of `name` (the same on every server).
    pub fn keys(&self, name: &LockName) -> LockKeys {
        LockKeys::new(&self.opts.prefix, name)
    }

    /// The options.
    pub fn options(&self) -> &RedLockOptions {
        &self.opts
    }

    fn server_timeout(&self, lease: Duration) -> Duration {
        self.opts.server_timeout.unwrap_or((lease / 10).clamp(MIN_SERVER_TIMEOUT, MAX_SERVER_TIMEOUT))
    }

    /// One round of the algorithm.
    async fn round(&self, keys: &LockKeys, owner: &LockOwner, ttl_ms: u64) -> Result<Grant, Miss> {
        let start = Instant::now();
        let lease = Duration::from_millis(ttl_ms);
        let limit = self.server_timeout(lease);
        let answers = join_all(self.servers.iter().map(|s| s.acquire(keys, owner, ttl_ms, limit))).await;

        let mut granting = Vec::new();
        let mut busy = 0;
        let mut first_error = None;
        for (server, answer) in answers.iter().enumerate() {
            match answer {
                Ok(Attempt::Busy { .. }) => busy += 1,
                Ok(attempt) => granting.push(Granting { server, attempt: *attempt }),
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let quorum = self.quorum();
        let outcome = if granting.len() >= quorum {
            self.settle(keys, owner, &granting, start, lease, limit).await
        } else if busy > self.servers.len() - quorum {
            Err(Miss::Busy)
        } else {
            Err(Miss::Unavailable(format!(
                "RedLock: {} of {} servers granted, {quorum} needed ({})",
                granting.len(),
                self.servers.len(),
                first_error.as_deref().unwrap_or("the others are held by other owners")
            )))
        };
        if outcome.is_err() {
            // Every server that may have set the owner's key (all but the
            // ones that said another owner holds it) gets a release, so a
            // failed round leaves nothing held; see `acquire`'s note on
            // re-entries.
            let touched = self.servers.iter().zip(&answers).filter(|(_, a)| !matches!(a, Ok(Attempt::Busy { .. })));
            let release = self.opts.server_timeout.unwrap_or(MAX_SERVER_TIMEOUT);
            join_all(touched.map(|(s, _)| s.release(keys, owner, release))).await;
        }
        outcome
    }

    /// Turns a majority of grants into the grant: its token and holds,
    /// stored on a majority for a new grant (the token phase), and the
    /// validity left.
    async fn settle(
        &self,
        keys: &LockKeys,
        owner: &LockOwner,
        granting: &[Granting],
        start: Instant,
        lease: Duration,
        limit: Duration,
    ) -> Result<Grant, Miss> {
        let quorum = self.quorum();
        let reentered: Vec<(u64, u32)> = granting
            .iter()
            .filter_map(|g| match g.attempt {
                Attempt::Reentered { token, holds, .. } => Some((token, holds)),
                _ => None,
            })
            .collect();
        let fences = granting.iter().map(|g| match g.attempt {
            Attempt::New { token } => token,
            Attempt::Reentered { fence, .. } => fence,
            Attempt::Busy { .. } => 0,
        });
        let (token, holds, new) = if reentered.len() >= quorum {
            let token = reentered.iter().map(|r| r.0).max().unwrap_or(0);
            let holds = reentered.iter().map(|r| r.1).max().unwrap_or(1);
            (token, holds, false)
        } else {
            // A new grant. A server that re-entered (a lease that lingers
            // on a minority) answered its fence, which may equal the last
            // token handed out; + 1 keeps the new token above it.
            let top = fences.max().unwrap_or(0);
            (if reentered.is_empty() { top } else { top + 1 }, 1, true)
        };
        let agree = granting.iter().all(|g| match g.attempt {
            Attempt::Reentered { token: t, holds: h, .. } => t == token && h == holds,
            _ => false,
        });
        if new || !agree {
            let stored =
                join_all(granting.iter().map(|g| self.servers[g.server].fence(keys, owner, token, holds, limit))).await;
            let acks = stored.iter().filter(|r| matches!(r, Ok(true))).count();
            // A re-entry's majority already holds its token; the phase only
            // evens out the others, so falling short does not fail it.
            if new && acks < quorum {
                return Err(Miss::Unavailable(format!(
                    "RedLock: the token was stored on {acks} of {} servers, {quorum} needed",
                    self.servers.len()
                )));
            }
        }
        let valid_until = start + lease.saturating_sub(drift(lease));
        if Instant::now() >= valid_until {
            return Err(Miss::Unavailable(format!(
                "RedLock: the servers took {:?}, longer than the lease of {lease:?}",
                start.elapsed()
            )));
        }
        Ok(Grant { token: FencingToken(token), holds, valid_until })
    }
}

#[async_trait::async_trait]
impl LockBackend for RedLock {
    /// Rounds of the algorithm until one grants or the wait ends. The
    /// answer at the end is [`Acquired::Busy`] if other owners held
    /// enough servers to deny a majority, else [`LockError::Unavailable`].
    ///
    /// A failed round releases one hold on every server that did not say
    /// "held by another owner", including servers that did not answer: for
    /// a new acquire that removes what they may have set. For a re-entry
    /// whose round failed (servers too slow, the owner holding the lock
    /// all along) it can take one of the owner's earlier holds off a
    /// server that had not applied the re-entry.
    async fn acquire(
        &self,
        name: &LockName,
        owner: &LockOwner,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Acquired, LockError> {
        let ttl_ms = ttl_ms(ttl)?;
        let keys = self.keys(name);
        let deadline = deadline(wait);
        let mut backoff = Backoff::default();
        loop {
            let miss = match self.round(&keys, owner, ttl_ms).await {
                Ok(grant) => return Ok(Acquired::Granted(grant)),
                Err(miss) => miss,
            };
            let now = Instant::now();
            if now >= deadline {
                return match miss {
                    Miss::Busy => Ok(Acquired::Busy),
                    Miss::Unavailable(why) => Err(LockError::Unavailable(why)),
                };
            }
            tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
        }
    }

    /// Renewed if a majority renewed within the validity; lost if a
    /// majority said the owner does not hold it; otherwise unavailable
    /// (the watchdog tries again).
    async fn renew(&self, name: &LockName, owner: &LockOwner, ttl: Duration) -> Result<Renewal, LockError> {
        let ttl_ms = ttl_ms(ttl)?;
        let lease = Duration::from_millis(ttl_ms);
        let limit = self.server_timeout(lease);
        let keys = self.keys(name);
        let start = Instant::now();
        let answers = join_all(self.servers.iter().map(|s| s.renew(&keys, owner, ttl_ms, limit))).await;
        let renewed = answers.iter().filter(|a| matches!(a, Ok(true))).count();
        let not_held = answers.iter().filter(|a| matches!(a, Ok(false))).count();
        let quorum = self.quorum();
        let valid_until = start + lease.saturating_sub(drift(lease));
        if renewed >= quorum && Instant::now() < valid_until {
            return Ok(Renewal::Renewed { valid_until });
        }
        if not_held >= quorum {
            return Ok(Renewal::Lost);
        }
        let why = answers.iter().find_map(|a| a.as_ref().err()).map(ToString::to_string).unwrap_or_default();
        Err(LockError::Unavailable(format!(
            "RedLock: {renewed} of {} servers renewed in time, {not_held} said not held, {quorum} needed ({why})",
            self.servers.len()
        )))
    }

    /// Released if any server released (holds: the most any reported);
    /// not held if a majority said so; otherwise unavailable.
    async fn release(&self, name: &LockName, owner: &LockOwner) -> Result<Release, LockError> {
        let keys = self.keys(name);
        let limit = self.opts.server_timeout.unwrap_or(MAX_SERVER_TIMEOUT);
        let answers = join_all(self.servers.iter().map(|s| s.release(&keys, owner, limit))).await;
        let released = answers.iter().filter_map(|a| a.as_ref().ok().copied().flatten()).max();
        let not_held = answers.iter().filter(|a| matches!(a, Ok(None))).count();
        match released {
            Some(holds) => Ok(Release::Released { holds }),
            None if not_held >= self.quorum() => Ok(Release::NotHeld),
            None => {
                let why = answers.iter().find_map(|a| a.as_ref().err()).map(ToString::to_string).unwrap_or_default();
                Err(LockError::Unavailable(format!(
                    "RedLock: no server released, {not_held} of {} said not held, {} needed for that ({why})",
                    self.servers.len(),
                    self.quorum()
                )))
            }
        }
    }

    fn kind(&self) -> &'static str {
        "redlock"
    }
}
