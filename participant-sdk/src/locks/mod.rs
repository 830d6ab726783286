//! Distributed locks with leases, a renewal watchdog, owner-checked release,
//! re-entrancy and fencing tokens, behind one interface over three backends:
//!
//! - [`coordinator`]: the coordinator's lock service (`/v1/named-locks`),
//!   kept in its PostgreSQL: FIFO waiting with one waiter woken per
//!   release, across coordinator processes; survives coordinator crashes.
//! - [`redis`]: one Redis server (`SET NX PX` in a Lua script with a
//!   random owner, owner-checked release and renewal in Lua, tokens from
//!   `INCR`), for high lock rates.
//! - [`redlock`]: RedLock over N independent Redis servers: a majority
//!   within the validity time.
//!
//! [`Locks`] is the client: [`Locks::lock`] acquires with single-flight
//! inside the process (tasks asking for the same name share one
//! acquisition and hand it over locally), [`Locks::lock_as`] for an
//! explicit owner (re-entrant). Both return a [`LockGuard`]: its fencing
//! token, its loss signal (a [`CancellationToken`] the watchdog cancels
//! when renewal fails or the lease is lost, before the lease ends), and
//! release on drop or with [`LockGuard::release`].
//!
//! [`fencing`] is the resource's side: the check that refuses a write with
//! a token lower than the last one seen, on PostgreSQL.
//!
//! `docs/locks.md` says which backend to use for what, and what each
//! guarantees.

pub mod coordinator;
pub mod fencing;
mod guard;
pub mod redis;
pub mod redlock;

pub use guard::{LockGuard, LockOptions, Locks};
pub use tandem_wire::{LockName, LockOwner};
pub use tokio_util::sync::CancellationToken;

use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// A fencing token: strictly greater for every new grant of a lock name
/// than for any earlier one (a re-entry or a local hand-off keeps it). A
/// resource accepts a write only with a token at least as high as the
/// highest it has seen ([`fencing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A grant, as a backend answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The grant's fencing token.
    pub token: FencingToken,
    /// The owner's hold count after this acquire (1: a new grant).
    pub holds: u32,
    /// Until when, on this process's monotonic clock, the lease is surely
    /// still valid: measured from before the request was sent, so that it
    /// ends no later than the backend's lease (RedLock also takes off the
    /// time spent and a clock-drift allowance).
    pub valid_until: Instant,
}

/// The answer to an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock is the owner's.
    Granted(Grant),
    /// Another owner holds it and the wait ended.
    Busy,
}

/// The answer to a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease is extended; valid until then (as in [`Grant::valid_until`]).
    Renewed {
        /// End of the renewed lease on this process's clock.
        valid_until: Instant,
    },
    /// The owner does not hold the lock (its lease ended, or it was released).
    Lost,
}

/// The answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// One hold released; `holds` remain (0: the lock is free).
    Released {
        /// Holds the owner still has.
        holds: u32,
    },
    /// The owner did not hold the lock: nothing changed.
    NotHeld,
}

/// Errors of the lock client and its backends.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The backend could not be reached or did not answer in time (or, for
    /// RedLock, too few servers did); the outcome of the request is unknown.
    #[error("lock backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the request as invalid (a bad name, owner or lease).
    #[error("lock request refused: {0}")]
    Invalid(String),
    /// The lock was not acquired within the wait asked for.
    #[error("lock {name} is held by another owner (waited {waited:?})")]
    Busy {
        /// The lock.
        name: LockName,
        /// How long the acquire waited.
        waited: Duration,
    },
    /// The owner does not hold the lock (release or renewal of a lease that
    /// ended or was never granted).
    #[error("lock {0} is not held by this owner")]
    NotHeld(LockName),
}

/// Where locks are kept. Every call is one owner-checked, atomic operation
/// on the backend; [`Locks`] builds the watchdog, single-flight and guards
/// on top.
#[async_trait::async_trait]
pub trait LockBackend: Send + Sync + 'static {
    /// Acquires `name` for `owner` with a lease of `ttl`, waiting up to
    /// `wait` (zero: try once). The owner that holds the lock re-enters:
    /// its hold count grows, its lease is extended to `ttl`, and the token
    /// stays.
    async fn acquire(
        &self,
        name: &LockName,
        owner: &LockOwner,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Acquired, LockError>;

    /// Extends `owner`'s lease of `name` to `ttl` from now, if it still
    /// holds it.
    async fn renew(&self, name: &LockName, owner: &LockOwner, ttl: Duration) -> Result<Renewal, LockError>;

    /// Releases one of `owner`'s holds of `name`.
    async fn release(&self, name: &LockName, owner: &LockOwner) -> Result<Release, LockError>;

    /// A short name of the backend, for logs (`coordinator`, `redis`, `redlock`).
    fn kind(&self) -> &'static str;
}
