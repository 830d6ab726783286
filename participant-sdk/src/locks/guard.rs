//! The lock client over any [`LockBackend`]: guards, the renewal watchdog,
//! and single-flight inside the process.

use super::{Acquired, FencingToken, LockBackend, LockError, LockName, LockOwner, Release, Renewal};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a lock is asked for.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    /// The lease. The watchdog renews it while the guard lives; if the
    /// process dies, the lock is free this long after the last renewal.
    /// Default 30 s.
    pub ttl: Duration,
    /// How long to wait for the lock in all (zero: try once). Default 10 s.
    pub wait: Duration,
    /// Renewal period; default a third of `ttl`.
    pub renew_every: Option<Duration>,
    /// Most times in a row a lock taken by [`Locks::lock`] is handed from
    /// one task of this process to the next without being released, so
    /// that other processes get their turn too. Default 16.
    pub max_local_handoffs: u32,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            renew_every: None,
            max_local_handoffs: 16,
        }
    }
}

impl LockOptions {
    /// A lease of `ttl`, the other options at their defaults.
    pub fn ttl(ttl: Duration) -> LockOptions {
        LockOptions { ttl, ..LockOptions::default() }
    }

    /// The same options with a wait of `wait`.
    pub fn wait(self, wait: Duration) -> LockOptions {
        LockOptions { wait, ..self }
    }

    fn renew_period(&self) -> Duration {
        self.renew_every.unwrap_or(self.ttl / 3).max(Duration::from_millis(1))
    }

    /// How long before the end of the lease the watchdog gives up and
    /// signals loss: a tenth of the lease, at least 5 ms.
    fn margin(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(5))
    }
}

/// The lock client. Cheap to clone; clones share the single-flight state.
#[derive(Clone)]
pub struct Locks {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the locks are kept.
    backend: Arc<dyn LockBackend>,
    /// Prefix of the owners this client makes (one per backend acquisition).
    owner_prefix: String,
    /// Per lock name, this process's queue of tasks ([`Locks::lock`]).
    local: Mutex<HashMap<LockName, Arc<Local>>>,
}

/// This process's tasks for one lock name.
struct Local {
    /// Whose turn it is: tokio's mutex queues its waiters in FIFO order.
    turn: Arc<tokio::sync::Mutex<Slot>>,
    /// Tasks waiting for their turn; a guard that sees some hands the lease over.
    queued: AtomicUsize,
}

/// A task counted among a name's local waiters while it waits.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(count: &'a AtomicUsize) -> Queued<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Queued(count)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The lease the process holds for a name, between its tasks.
#[derive(Default)]
struct Slot {
    /// The backend lease, kept across local hand-offs.
    held: Option<Arc<Lease>>,
    /// Hand-offs of `held` so far.
    handoffs: u32,
}

/// A lease held at the backend, renewed by its watchdog.
struct Lease {
    /// The lock.
    name: LockName,
    /// Its owner at the backend.
    owner: LockOwner,
    /// The grant's token.
    token: FencingToken,
    /// Cancelled by the watchdog when the lease is lost or cannot be renewed in time.
    lost: CancellationToken,
    /// Cancelled to stop the watchdog (the lease is being released).
    stop: CancellationToken,
    /// End of the lease on this process's clock, moved by each renewal.
    valid_until: Mutex<Instant>,
    /// How long before `valid_until` the lease counts as lost
    /// ([`LockOptions::margin`]).
    margin: Duration,
}

impl Lease {
    fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lost: signalled by the watchdog, or past the margin before the
    /// lease's end (a watchdog that could not run signals nothing).
    fn is_lost(&self) -> bool {
        self.lost.is_cancelled() || Instant::now() + self.margin >= self.valid_until()
    }

    fn usable(&self) -> bool {
        !self.is_lost()
    }
}

impl Locks {
    /// A client of `backend`; its owners are named after the process.
    pub fn new(backend: impl LockBackend) -> Locks {
        Locks::with_backend(Arc::new(backend))
    }

    /// A client of a shared backend.
    pub fn with_backend(backend: Arc<dyn LockBackend>) -> Locks {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "tandem".into());
        let owner_prefix = format!("{host}-{}", std::process::id());
        Locks { inner: Arc::new(Inner { backend, owner_prefix, local: Mutex::new(HashMap::new()) }) }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn LockBackend> {
        &self.inner.backend
    }

    /// Acquires `name` for this process, with single-flight: the tasks of
    /// the process asking for one name queue here in FIFO order, only the
    /// first asks the backend, and a task done with the lock hands it to
    /// the next local task without releasing it (up to
    /// [`LockOptions::max_local_handoffs`] times in a row). Every task that
    /// gets it sees the same token while the lease lasts. Not re-entrant:
    /// a task that already holds `name` this way waits for itself; use
    /// [`Locks::lock_as`] for re-entry.
    pub async fn lock(&self, name: &LockName, opts: &LockOptions) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let local = self.local(name);
        let queued = Queued::enter(&local.queued);
        let turn = tokio::time::timeout(opts.wait, local.turn.clone().lock_owned()).await;
        // Counted out also when this call is dropped while it waits.
        drop(queued);
        let Ok(mut slot) = turn else {
            return Err(LockError::Busy { name: name.clone(), waited: started.elapsed() });
        };
        let reuse = slot.held.as_ref().filter(|l| l.usable()).cloned();
        let lease = match reuse {
            Some(lease) => {
                slot.handoffs += 1;
                lease
            }
            None => {
                if let Some(old) = slot.held.take() {
                    // Lost or nearly ended: stop renewing it, and give back
                    // whatever the backend still holds of it.
                    old.stop.cancel();
                    if let Err(e) = self.inner.backend.release(&old.name, &old.owner).await {
                        tracing::debug!(lock = %old.name, error = %e, "releasing a lost lease");
                    }
                }
                let owner = LockOwner::random(&self.inner.owner_prefix);
                let wait = opts.wait.saturating_sub(started.elapsed());
                let lease = self.acquire(name, owner, opts, wait, started).await?;
                slot.held = Some(lease.clone());
                slot.handoffs = 0;
                lease
            }
        };
        Ok(LockGuard {
            lease,
            backend: self.inner.backend.clone(),
            hold: Hold::Shared { slot: Some(slot), local, max_handoffs: opts.max_local_handoffs },
        })
    }

    /// Acquires `name` for `owner`, straight at the backend: re-entrant
    /// (the same owner acquiring again adds a hold and keeps the token;
    /// each guard releases one), across processes too, for example with a
    /// global transaction's xid as the owner. Each guard renews the lease.
    pub async fn lock_as(
        &self,
        owner: &LockOwner,
        name: &LockName,
        opts: &LockOptions,
    ) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let lease = self.acquire(name, owner.clone(), opts, opts.wait, started).await?;
        Ok(LockGuard { lease, backend: self.inner.backend.clone(), hold: Hold::Direct { released: false } })
    }

    fn local(&self, name: &LockName) -> Arc<Local> {
        let mut map = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        // Entries nobody holds or waits for go, so the map stays as small as the names in use.
        map.retain(|_, l| Arc::strong_count(l) > 1 || l.turn.try_lock().map(|s| s.held.is_some()).unwrap_or(true));
        map.entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Local {
                    turn: Arc::new(tokio::sync::Mutex::new(Slot::default())),
                    queued: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    async fn acquire(
        &self,
        name: &LockName,
        owner: LockOwner,
        opts: &LockOptions,
        wait: Duration,
        started: Instant,
    ) -> Result<Arc<Lease>, LockError> {
        let backend = &self.inner.backend;
        match backend.acquire(name, &owner, opts.ttl, wait).await? {
            Acquired::Busy => Err(LockError::Busy { name: name.clone(), waited: started.elapsed() }),
            Acquired::Granted(grant) => {
                let lease = Arc::new(Lease {
                    name: name.clone(),
                    owner,
                    token: grant.token,
                    lost: CancellationToken::new(),
                    stop: CancellationToken::new(),
                    valid_until: Mutex::new(grant.valid_until),
                    margin: opts.margin(),
                });
                tokio::spawn(watchdog(backend.clone(), lease.clone(), *opts));
                Ok(lease)
            }
        }
    }
}

/// Renews `lease` every [`LockOptions::renew_period`] until stopped; when a
/// renewal answers that the lease is lost, or none has succeeded by
/// [`LockOptions::margin`] before the lease ends, cancels `lease.lost`.
async fn watchdog(backend: Arc<dyn LockBackend>, lease: Arc<Lease>, opts: LockOptions) {
    let period = opts.renew_period();
    let retry = (period / 4).max(Duration::from_millis(5));
    // Renew in time even when the grant came with less left than a period
    // (a lease handed over while its owner was between two requests).
    let renew_at = |lease: &Lease| {
        let latest = lease.valid_until().checked_sub(opts.margin() + retry).unwrap_or_else(Instant::now);
        (Instant::now() + period).min(latest)
    };
    let mut next = renew_at(&lease);
    loop {
        let give_up = lease.valid_until().checked_sub(opts.margin()).unwrap_or_else(Instant::now);
        let renew = async {
            tokio::time::sleep_until(next).await;
            backend.renew(&lease.name, &lease.owner, opts.ttl).await
        };
        tokio::select! {
            biased;
            _ = lease.stop.cancelled() => return,
            _ = tokio::time::sleep_until(give_up) => {
                tracing::warn!(lock = %lease.name, backend = backend.kind(), "lock lease could not be renewed in time: signalling its holder");
                lease.lost.cancel();
                return;
            }
            r = renew => match r {
                Ok(Renewal::Renewed { valid_until }) => {
                    *lease.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = valid_until;
                    next = renew_at(&lease);
                }
                Ok(Renewal::Lost) => {
                    tracing::warn!(lock = %lease.name, backend = backend.kind(), "lock lease lost: signalling its holder");
                    lease.lost.cancel();
                    return;
                }
                Err(e) => {
                    tracing::debug!(lock = %lease.name, error = %e, "lock renewal failed; retrying");
                    next = Instant::now() + retry;
                }
            }
        }
    }
}

/// How a guard holds its lease.
enum Hold {
    /// Through [`Locks::lock`]: the process's turn for the name.
    Shared {
        /// The turn (`None` once given back).
        slot: Option<OwnedMutexGuard<Slot>>,
        /// The name's local queue.
        local: Arc<Local>,
        /// [`LockOptions::max_local_handoffs`].
        max_handoffs: u32,
    },
    /// Through [`Locks::lock_as`]: one hold at the backend.
    Direct {
        /// Whether the hold was released.
        released: bool,
    },
}

/// A held lock. Check [`LockGuard::is_lost`] (or select on
/// [`LockGuard::lost`]) before each step of the work, and pass
/// [`LockGuard::token`] to every resource the lock protects. Released on
/// drop (in the background) or with [`LockGuard::release`].
pub struct LockGuard {
    lease: Arc<Lease>,
    backend: Arc<dyn LockBackend>,
    hold: Hold,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.lease.name)
            .field("owner", &self.lease.owner)
            .field("token", &self.lease.token)
            .field("lost", &self.lease.lost.is_cancelled())
            .finish()
    }
}

impl LockGuard {
    /// The lock.
    pub fn name(&self) -> &LockName {
        &self.lease.name
    }

    /// The owner at the backend.
    pub fn owner(&self) -> &LockOwner {
        &self.lease.owner
    }

    /// The grant's fencing token.
    pub fn token(&self) -> FencingToken {
        self.lease.token
    }

    /// Whether the lease is lost (renewal failed or was refused): the work
    /// must stop, its writes are no longer protected.
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Resolves when the lease is lost; select on it beside the work.
    pub async fn lost(&self) {
        self.lease.lost.cancelled().await
    }

    /// The loss signal, to hand to code that checks it on its own.
    pub fn lost_signal(&self) -> CancellationToken {
        self.lease.lost.clone()
    }

    /// Until when the lease surely holds, on this process's clock.
    pub fn valid_until(&self) -> Instant {
        self.lease.valid_until()
    }

    /// Releases now and says whether the backend still held it.
    pub async fn release(mut self) -> Result<(), LockError> {
        match self.take() {
            Some(step) => step.run(&self.backend).await,
            None => Ok(()),
        }
    }

    /// What giving the lock back takes, once.
    fn take(&mut self) -> Option<Step> {
        match &mut self.hold {
            Hold::Direct { released } => {
                if *released {
                    return None;
                }
                *released = true;
                self.lease.stop.cancel();
                Some(Step::Release { lease: self.lease.clone(), slot: None })
            }
            Hold::Shared { slot, local, max_handoffs } => {
                let mut turn = slot.take()?;
                let others = local.queued.load(Ordering::SeqCst) > 0;
                if others && turn.handoffs < *max_handoffs && self.lease.usable() {
                    // The next task of this process takes the lease as it is.
                    drop(turn);
                    reclaim_if_untaken(local.turn.clone(), self.lease.clone(), self.backend.clone());
                    return None;
                }
                turn.held = None;
                self.lease.stop.cancel();
                Some(Step::Release { lease: self.lease.clone(), slot: Some(turn) })
            }
        }
    }
}

/// After a local hand-off: if nobody took the turn after all (the waiter
/// gave up at that moment), release the lease at the backend, so that it is
/// not renewed for nobody. tokio's mutex hands a released turn straight to
/// its first waiter, so `try_lock` succeeds only if there was none.
fn reclaim_if_untaken(turn: Arc<tokio::sync::Mutex<Slot>>, lease: Arc<Lease>, backend: Arc<dyn LockBackend>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    rt.spawn(async move {
        let Ok(mut slot) = turn.try_lock_owned() else { return };
        if !slot.held.as_ref().is_some_and(|l| Arc::ptr_eq(l, &lease)) {
            return;
        }
        slot.held = None;
        lease.stop.cancel();
        if let Err(e) = backend.release(&lease.name, &lease.owner).await {
            tracing::debug!(lock = %lease.name, error = %e, "releasing a lease nobody took");
        }
        drop(slot);
    });
}

/// A release to perform.
enum Step {
    Release {
        /// The lease.
        lease: Arc<Lease>,
        /// The process's turn, kept until the backend has released, so the
        /// next local task acquires after this release.
        slot: Option<OwnedMutexGuard<Slot>>,
    },
}

impl Step {
    async fn run(self, backend: &Arc<dyn LockBackend>) -> Result<(), LockError> {
        let Step::Release { lease, slot } = self;
        let r = backend.release(&lease.name, &lease.owner).await;
        drop(slot);
        match r? {
            Release::Released { .. } => Ok(()),
            Release::NotHeld => Err(LockError::NotHeld(lease.name.clone())),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(step) = self.take() else { return };
        let backend = self.backend.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = step.run(&backend).await {
                        tracing::debug!(error = %e, "releasing a dropped lock guard");
                    }
                });
            }
            // No runtime: the lease ends on its own.
            Err(_) => drop(step),
        }
    }
}
