//! The lock service's operations: the policy of [`super::policy`] applied
//! through the store's [`LockTx`], and the wait of an acquire (woken by
//! [`super::hub`], or by its own timer when it is next and the holder's
//! lease ends).

use super::hub::Hub;
use super::policy::{self, AcquireStep, Answering, GiveUp, LockState, ReleaseStep, Waiting};
use crate::metrics::Metrics;
use crate::store::{Claimed, GrantRow, LockTx, Store, StoreError};
use std::collections::HashMap;
use std::time::Duration;
use tandem_wire::{
    AcquireLockRequest, LockGrant, LockName, LockOwner, LockReleased, LockWaiterInfo, LockWaiting, NamedLockInfo,
    NamedLockList, MAX_LOCK_POLL_MS, MAX_LOCK_TTL_MS, MAX_LOCK_WAIT_MS, MIN_LOCK_TTL_MS,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a waiter's place is kept after its acquire request ends
/// without a grant (a 202, or a coordinator that died under it): its
/// client asks again within this, at any coordinator.
pub const KEEP_PLACE_MS: u64 = 5_000;

/// Errors of the lock service.
#[derive(Debug, thiserror::Error)]
pub enum LockServiceError {
    /// Another owner holds the lock and the wait ended.
    #[error("lock {0} is held by another owner")]
    Held(LockName),
    /// The owner does not hold the lock.
    #[error("lock {name} is not held by {owner} (never granted, released, or its lease ended)")]
    NotHeld {
        /// The lock.
        name: LockName,
        /// Who asked.
        owner: LockOwner,
    },
    /// A lease or wait out of bounds.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer to an acquire.
#[derive(Debug, Clone)]
pub enum AcquireReply {
    /// Granted (or re-entered).
    Granted(LockGrant),
    /// Still waiting: ask again to keep the place.
    Waiting(LockWaiting),
}

/// The lock service. Cheap to clone.
#[derive(Clone)]
pub struct LockService {
    /// Persistence.
    store: Store,
    /// Where waiting acquires are woken.
    hub: Hub,
    /// Metrics.
    metrics: Metrics,
    /// Longest time one acquire request is held open.
    max_poll: Duration,
    /// Cancelled on shutdown: waiting acquires answer at once.
    shutdown: CancellationToken,
}

fn grant(name: &LockName, owner: &LockOwner, g: GrantRow) -> LockGrant {
    LockGrant {
        name: name.clone(),
        owner: owner.clone(),
        token: g.token,
        holds: g.holds,
        ttl_ms: g.ttl_ms,
        expires_at: g.expires_at,
        remaining_ms: g.remaining_ms,
    }
}

fn check_ttl(ttl_ms: u64) -> Result<(), LockServiceError> {
    if (MIN_LOCK_TTL_MS..=MAX_LOCK_TTL_MS).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(LockServiceError::Invalid(format!(
            "ttl_ms must be between {MIN_LOCK_TTL_MS} and {MAX_LOCK_TTL_MS}, not {ttl_ms}"
        )))
    }
}

impl LockService {
    /// The service on `store`; an acquire is held open at most
    /// `max_wait` (the longest wait a request may take within the
    /// server's request timeout) and [`MAX_LOCK_POLL_MS`].
    pub fn new(store: Store, metrics: Metrics, max_wait: Duration, shutdown: CancellationToken) -> LockService {
        let max_poll = Duration::from_millis(MAX_LOCK_POLL_MS).min(max_wait).max(Duration::from_millis(100));
        LockService { store, hub: Hub::default(), metrics, max_poll, shutdown }
    }

    /// The wake-up hub (its listener runs in [`super::run`]).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Acquires `name` for `req.owner`: at once if it is free with nobody
    /// waiting first, or held by the same owner (a re-entry); else queued
    /// and waited for up to `req.wait_ms` (in polls of at most
    /// [`MAX_LOCK_POLL_MS`]).
    pub async fn acquire(&self, name: LockName, req: AcquireLockRequest) -> Result<AcquireReply, LockServiceError> {
        check_ttl(req.ttl_ms)?;
        if req.wait_ms > MAX_LOCK_WAIT_MS {
            return Err(LockServiceError::Invalid(format!(
                "wait_ms must be at most {MAX_LOCK_WAIT_MS}, not {}",
                req.wait_ms
            )));
        }
        let owner = req.owner;
        if let Some(g) = self.store.lock_fast(&name, &owner, req.ttl_ms).await? {
            self.count_grant(if g.holds > 1 { "reentry" } else { "new" });
            return Ok(AcquireReply::Granted(grant(&name, &owner, g)));
        }
        if req.wait_ms == 0 {
            return match self.look(&name, &owner, req.ttl_ms, None).await? {
                Look::Granted(g) => Ok(AcquireReply::Granted(grant(&name, &owner, g))),
                Look::Busy => Err(LockServiceError::Held(name)),
                Look::Queued { .. } => {
                    Err(StoreError::Internal("an acquire that does not wait was queued".into()).into())
                }
            };
        }
        let started = Instant::now();
        let poll = Duration::from_millis(req.wait_ms).min(self.max_poll);
        let poll_end = started + poll;
        let last_poll = req.wait_ms <= duration_ms(self.max_poll);
        // Registered before the first look: a grant announced in between is not missed.
        let registration = self.hub.register(name.as_str(), owner.as_str());
        let mut abandon = Abandon { service: Some(self.clone()), name: name.clone(), owner: owner.clone() };
        let mut position;
        loop {
            let keep_ms = duration_ms(poll_end.saturating_duration_since(Instant::now())) + KEEP_PLACE_MS;
            match self.look(&name, &owner, req.ttl_ms, Some(keep_ms)).await? {
                Look::Granted(g) => {
                    abandon.disarm();
                    return Ok(AcquireReply::Granted(grant(&name, &owner, g)));
                }
                Look::Busy => {
                    return Err(StoreError::Internal("a waiting acquire was answered busy".into()).into());
                }
                Look::Queued { position: p, holder_left_ms } => {
                    position = p;
                    // The next in line also wakes when the holder's lease ends
                    // (nobody releases a dead holder's lock); the others only
                    // when they are handed the lock.
                    let timer = if p == 1 {
                        poll_end.min(Instant::now() + Duration::from_millis(holder_left_ms))
                    } else {
                        poll_end
                    };
                    tokio::select! {
                        _ = registration.notified() => {}
                        _ = tokio::time::sleep_until(timer) => {}
                        _ = self.shutdown.cancelled() => break,
                    }
                    if Instant::now() >= poll_end {
                        break;
                    }
                }
            }
        }
        abandon.disarm();
        // A coordinator shutting down answers 202: the waiter keeps its
        // place and asks again, at another coordinator.
        if last_poll && !self.shutdown.is_cancelled() {
            return match self.give_up(&name, &owner, Answering::Yes).await? {
                Some(g) => Ok(AcquireReply::Granted(grant(&name, &owner, g))),
                None => Err(LockServiceError::Held(name)),
            };
        }
        Ok(AcquireReply::Waiting(LockWaiting { name, owner, position, keep_place_ms: KEEP_PLACE_MS }))
    }

    /// Settles the lock and applies `owner`'s acquire step, in one
    /// transaction; `keep_ms` is `Some` for an acquire that waits (its
    /// place is kept that long).
    async fn look(
        &self,
        name: &LockName,
        owner: &LockOwner,
        ttl_ms: u64,
        keep_ms: Option<u64>,
    ) -> Result<Look, LockServiceError> {
        let Some((mut tx, mut state)) = self.store.lock_tx(name).await? else {
            // Deleted as idle since the fast path created it: it is free.
            return match self.store.lock_fast(name, owner, ttl_ms).await? {
                Some(g) => Ok(Look::Granted(g)),
                None => Err(StoreError::Contended.into()),
            };
        };
        let mut queue = tx.queue().await?;
        self.settle_in(&mut tx, &mut state, &mut queue).await?;
        let waiting = if keep_ms.is_some() { Waiting::Yes } else { Waiting::No };
        let look = match policy::acquire(&state, &queue, owner, waiting) {
            AcquireStep::ReEnter => {
                self.count_grant("reentry");
                Look::Granted(tx.add_hold(ttl_ms).await?)
            }
            AcquireStep::Claim => Look::Granted(tx.claim().await?),
            AcquireStep::Grant => {
                tx.leave_queue(owner).await?;
                self.count_grant("new");
                Look::Granted(tx.grant(owner, ttl_ms, Claimed::Yes).await?)
            }
            AcquireStep::Queue { position } => {
                tx.join_queue(owner, ttl_ms, keep_ms.unwrap_or(KEEP_PLACE_MS)).await?;
                Look::Queued { position, holder_left_ms: state.left_ms }
            }
            AcquireStep::Busy => {
                // An acquire that no longer waits leaves its place (if it had one).
                tx.leave_queue(owner).await?;
                Look::Busy
            }
        };
        tx.commit().await?;
        Ok(look)
    }

    /// Deletes vanished waiters and hands a free lock to the first live
    /// one (announced on commit); updates `state` and `queue` to match.
    async fn settle_in(
        &self,
        tx: &mut LockTx,
        state: &mut LockState,
        queue: &mut Vec<policy::Waiter>,
    ) -> Result<(), LockServiceError> {
        let s = policy::settle(state, queue);
        if s.is_noop() {
            return Ok(());
        }
        let mut gone = s.dead.clone();
        if let Some(w) = &s.hand_to {
            gone.push(w.id);
        }
        tx.delete_waiters(&gone).await?;
        queue.retain(|w| !gone.contains(&w.id));
        if let Some(w) = s.hand_to {
            let g = tx.grant(&w.owner, w.ttl_ms, Claimed::No { keep_ms: KEEP_PLACE_MS }).await?;
            tx.notify(&w.owner).await?;
            self.count_grant("handoff");
            *state =
                LockState { owner: Some(w.owner), holds: g.holds, live: true, claimed: false, left_ms: g.remaining_ms };
        }
        Ok(())
    }

    /// The end of a wait: claims a grant handed over meanwhile (if
    /// `answering`), else leaves the queue, releasing an unclaimed grant.
    async fn give_up(
        &self,
        name: &LockName,
        owner: &LockOwner,
        answering: Answering,
    ) -> Result<Option<GrantRow>, LockServiceError> {
        let Some((mut tx, mut state)) = self.store.lock_tx(name).await? else { return Ok(None) };
        let got = match policy::give_up(&state, owner, answering) {
            GiveUp::Claim => Some(tx.claim().await?),
            GiveUp::Leave => {
                tx.leave_queue(owner).await?;
                None
            }
            GiveUp::ReleaseUnclaimed => {
                tx.leave_queue(owner).await?;
                tx.free().await?;
                state = LockState { owner: None, holds: 0, live: false, claimed: true, left_ms: 0 };
                let mut queue = tx.queue().await?;
                self.settle_in(&mut tx, &mut state, &mut queue).await?;
                None
            }
        };
        tx.commit().await?;
        Ok(got)
    }

    /// Extends `owner`'s running lease.
    pub async fn renew(&self, name: LockName, owner: LockOwner, ttl_ms: u64) -> Result<LockGrant, LockServiceError> {
        check_ttl(ttl_ms)?;
        match self.store.lock_renew(&name, &owner, ttl_ms).await? {
            Some(g) => Ok(grant(&name, &owner, g)),
            None => Err(LockServiceError::NotHeld { name, owner }),
        }
    }

    /// Releases one of `owner`'s holds; the last one hands the lock to the
    /// first live waiter, whose process alone is woken.
    pub async fn release(&self, name: LockName, owner: LockOwner) -> Result<LockReleased, LockServiceError> {
        let Some((mut tx, mut state)) = self.store.lock_tx(&name).await? else {
            return Err(LockServiceError::NotHeld { name, owner });
        };
        let holds = match policy::release(&state, &owner) {
            ReleaseStep::NotHeld => return Err(LockServiceError::NotHeld { name, owner }),
            ReleaseStep::Decrement { left } => {
                tx.set_holds(left).await?;
                left
            }
            ReleaseStep::Free => {
                tx.free().await?;
                state = LockState { owner: None, holds: 0, live: false, claimed: true, left_ms: 0 };
                let mut queue = tx.queue().await?;
                self.settle_in(&mut tx, &mut state, &mut queue).await?;
                0
            }
        };
        tx.commit().await?;
        Ok(LockReleased { name, holds })
    }

    /// Settles locks whose holder's lease ended while others wait (nobody
    /// releases a dead holder's lock), and deletes rows idle for an hour.
    /// Any number of coordinator processes may run this at once: each lock
    /// is settled under its row lock.
    pub async fn reap(&self) -> Result<usize, LockServiceError> {
        let names = self.store.locks_to_settle(64).await?;
        let mut settled = 0;
        for name in names {
            let Some((mut tx, mut state)) = self.store.lock_tx(&name).await? else { continue };
            let mut queue = tx.queue().await?;
            self.settle_in(&mut tx, &mut state, &mut queue).await?;
            tx.commit().await?;
            settled += 1;
        }
        self.store.delete_idle_locks(3_600_000, 500).await?;
        Ok(settled)
    }

    /// Locks held or waited for, with their queues.
    pub async fn list(&self, limit: i64) -> Result<NamedLockList, LockServiceError> {
        let (locks, waiters, total) = self.store.active_locks(limit).await?;
        let mut queues: HashMap<LockName, Vec<LockWaiterInfo>> = HashMap::new();
        for w in waiters {
            queues.entry(w.name).or_default().push(LockWaiterInfo {
                owner: w.owner,
                ttl_ms: w.ttl_ms,
                since: w.since,
                keep_until: w.keep_until,
            });
        }
        let locks = locks
            .into_iter()
            .map(|l| NamedLockInfo {
                waiters: queues.remove(&l.name).unwrap_or_default(),
                name: l.name,
                owner: l.owner,
                holds: l.holds,
                token: l.token,
                granted_at: l.granted_at,
                expires_at: l.expires_at,
            })
            .collect();
        Ok(NamedLockList { locks, total })
    }

    fn count_grant(&self, how: &str) {
        self.metrics.lock_grants.with_label_values(&[how]).inc();
    }
}

/// What one look at the queue found.
enum Look {
    /// The lock is the owner's.
    Granted(GrantRow),
    /// Held by another, and the caller does not wait (not queued).
    Busy,
    /// Queued at `position`.
    Queued {
        /// 1-based place.
        position: u32,
        /// What is left of the holder's lease.
        holder_left_ms: u64,
    },
}

/// Leaves the queue (and releases a grant nobody will answer) when a
/// waiting acquire is dropped: its client went away.
struct Abandon {
    /// `None` once the acquire answered.
    service: Option<LockService>,
    /// The lock.
    name: LockName,
    /// The waiter.
    owner: LockOwner,
}

impl Abandon {
    fn disarm(&mut self) {
        self.service = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(service) = self.service.take() else { return };
        let (name, owner) = (self.name.clone(), self.owner.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = service.give_up(&name, &owner, Answering::No).await {
                    tracing::warn!(lock = %name, error = %e, "named locks: could not remove an abandoned waiter; its place lapses");
                }
            });
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
