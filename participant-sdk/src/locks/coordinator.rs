//! The coordinator's lock service as a [`LockBackend`]: locks kept in the
//! coordinator's PostgreSQL, FIFO waiting (a waiting acquire is a held-open
//! request, woken only when the lock is handed to it), tokens from a
//! database sequence. Several coordinator URLs give failover: a request
//! that cannot reach one goes to the next, and a waiter's place in the
//! queue is kept for a few seconds between requests, so a coordinator
//! crash loses neither held locks nor the queue.

use super::{Acquired, FencingToken, Grant, LockBackend, LockError, LockName, LockOwner, Release, Renewal};
use crate::client::{ClientError, LockAcquire, TandemClient};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tandem_wire::{AcquireLockRequest, ErrorCode, ReleaseLockRequest, RenewLockRequest};
use tokio::time::Instant;

/// The coordinator backend.
#[derive(Debug)]
pub struct CoordinatorLocks {
    /// The coordinators, tried in turn.
    clients: Vec<TandemClient>,
    /// The one that answered last.
    current: AtomicUsize,
}

/// How an error of one request counts.
enum Failure {
    /// The coordinator did not answer, or answered 503: try another.
    Unreachable(String),
    /// A problem answer that stands, by its code.
    Refused(ErrorCode, String),
}

fn classify(e: ClientError) -> Failure {
    match &e {
        ClientError::Problem(p) if p.status < 500 && !matches!(p.status, 408 | 429) => {
            Failure::Refused(p.code, e.to_string())
        }
        ClientError::Http(_) => Failure::Unreachable(e.to_string()),
        ClientError::Problem(p) if p.status >= 500 || p.code == ErrorCode::Unavailable => {
            Failure::Unreachable(e.to_string())
        }
        ClientError::Problem(p) if p.status == 408 || p.status == 429 => Failure::Unreachable(e.to_string()),
        ClientError::Unexpected { status, .. } if *status >= 500 => Failure::Unreachable(e.to_string()),
        _ => Failure::Refused(ErrorCode::Internal, e.to_string()),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl CoordinatorLocks {
    /// Locks at one coordinator.
    pub fn new(client: TandemClient) -> CoordinatorLocks {
        CoordinatorLocks { clients: vec![client], current: AtomicUsize::new(0) }
    }

    /// Locks at any of `clients` (coordinators sharing one database), with
    /// failover between them. `None` for an empty list.
    pub fn with_failover(clients: Vec<TandemClient>) -> Option<CoordinatorLocks> {
        (!clients.is_empty()).then(|| CoordinatorLocks { clients, current: AtomicUsize::new(0) })
    }

    /// Runs `op` at the current coordinator, then at each other once while
    /// they cannot be reached.
    async fn each<T, F, Fut>(&self, op: F) -> Result<T, Failure>
    where
        F: Fn(TandemClient) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.clients.len() {
            let at = (start + i) % self.clients.len();
            match op(self.clients[at].clone()).await {
                Ok(v) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => match classify(e) {
                    Failure::Unreachable(why) => last = why,
                    refused @ Failure::Refused(..) => {
                        self.current.store(at, Ordering::Relaxed);
                        return Err(refused);
                    }
                },
            }
        }
        Err(Failure::Unreachable(last))
    }
}

#[async_trait::async_trait]
impl LockBackend for CoordinatorLocks {
    async fn acquire(
        &self,
        name: &LockName,
        owner: &LockOwner,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Acquired, LockError> {
        let deadline = Instant::now() + wait;
        loop {
            let sent = Instant::now();
            let req = AcquireLockRequest {
                owner: owner.clone(),
                ttl_ms: ms(ttl),
                wait_ms: ms(deadline.saturating_duration_since(sent)),
            };
            match self
                .each(|c| {
                    let req = req.clone();
                    async move { c.acquire_lock(name, &req).await }
                })
                .await
            {
                Ok(LockAcquire::Granted(g)) => {
                    return Ok(Acquired::Granted(Grant {
                        token: FencingToken(g.token),
                        holds: g.holds,
                        valid_until: sent + Duration::from_millis(g.remaining_ms),
                    }))
                }
                // Still queued: ask again at once to keep the place.
                Ok(LockAcquire::Waiting(_)) => continue,
                Err(Failure::Refused(ErrorCode::LockHeld, _)) => return Ok(Acquired::Busy),
                Err(Failure::Refused(_, why)) => return Err(LockError::Invalid(why)),
                Err(Failure::Unreachable(why)) => {
                    // No coordinator answered. The place in the queue is kept
                    // for a few seconds: try again shortly while the wait lasts.
                    if Instant::now() + Duration::from_millis(100) >= deadline {
                        return Err(LockError::Unavailable(why));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn renew(&self, name: &LockName, owner: &LockOwner, ttl: Duration) -> Result<Renewal, LockError> {
        let sent = Instant::now();
        let req = RenewLockRequest { owner: owner.clone(), ttl_ms: ms(ttl) };
        match self
            .each(|c| {
                let req = req.clone();
                async move { c.renew_lock(name, &req).await }
            })
            .await
        {
            Ok(g) => Ok(Renewal::Renewed { valid_until: sent + Duration::from_millis(g.remaining_ms) }),
            Err(Failure::Refused(ErrorCode::LockNotHeld, _)) => Ok(Renewal::Lost),
            Err(Failure::Refused(_, why)) => Err(LockError::Invalid(why)),
            Err(Failure::Unreachable(why)) => Err(LockError::Unavailable(why)),
        }
    }

    async fn release(&self, name: &LockName, owner: &LockOwner) -> Result<Release, LockError> {
        let req = ReleaseLockRequest { owner: owner.clone() };
        match self
            .each(|c| {
                let req = req.clone();
                async move { c.release_lock(name, &req).await }
            })
            .await
        {
            Ok(r) => Ok(Release::Released { holds: r.holds }),
            Err(Failure::Refused(ErrorCode::LockNotHeld, _)) => Ok(Release::NotHeld),
            Err(Failure::Refused(_, why)) => Err(LockError::Invalid(why)),
            Err(Failure::Unreachable(why)) => Err(LockError::Unavailable(why)),
        }
    }

    fn kind(&self) -> &'static str {
        "coordinator"
    }
}
