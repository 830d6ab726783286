//! Named locks for users (`/v1/named-locks`): leases (TTL), owner-checked
//! renewal and release, re-entrant holds, a FIFO queue whose waiters are
//! woken one per release across coordinator processes, and a fencing token
//! per grant, strictly increasing per name. Kept in the coordinator's
//! PostgreSQL, so any coordinator serves any lock and everything survives
//! a coordinator crash.
//!
//! - [`policy`]: the decisions, pure.
//! - [`service`]: the operations (the policy through the store's `LockTx`)
//!   and the wait of an acquire.
//! - [`hub`]: LISTEN/NOTIFY wake-ups of waiting acquires.
//!
//! (AT mode's global row locks are another thing: `store::locks`.)

pub mod hub;
pub mod policy;
pub mod service;

pub use service::{AcquireReply, LockService, LockServiceError};

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the reaper settles locks whose holder's lease ended.
pub const REAP_INTERVAL: Duration = Duration::from_millis(250);

/// Runs the grant listener and the reaper until `shutdown`.
pub async fn run(service: LockService, metrics: crate::metrics::Metrics, shutdown: CancellationToken) {
    let listener = tokio::spawn(service.hub().clone().run(service.store().clone(), metrics, shutdown.clone()));
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = service.reap().await {
            tracing::debug!(error = %e, "named locks: reaping failed; next tick retries");
        }
    }
    let _ = listener.await;
}
