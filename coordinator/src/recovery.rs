//! The recovery worker: rolls back transactions past their deadline and
//! resumes phase 2 of decided transactions whose lease expired (a crashed or
//! stopped coordinator) or whose retry is due, and 3PC transactions left in
//! a status before their decision (3PC's `can_commit`, `pre_committed`) by a
//! coordinator that died (see [`crate::modes`]). Several coordinators run it
//! against one database; `FOR UPDATE SKIP LOCKED` and the lease keep them
//! from driving the same transaction at once.

use crate::driver::Job;
use crate::modes::Resumed;
use crate::store::{StoreError, TxRow};
use crate::Coordinator;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_wire::{EventKind, TimelineEvent};
use tokio::sync::Semaphore;

/// Transactions this worker drives at once (each holds a lease).
const MAX_DRIVERS: usize = 64;
/// Transactions claimed per query.
const BATCH: usize = 32;

/// Runs until the coordinator's shutdown token is cancelled.
pub async fn run(coordinator: Coordinator) {
    let permits = Arc::new(Semaphore::new(MAX_DRIVERS));
    let interval = coordinator.timing().recovery_interval;
    let shutdown = coordinator.shutdown_token().clone();
    loop {
        if let Err(e) = pass(&coordinator, &permits).await {
            // Handled here: the next tick tries again.
            tracing::warn!(error = %e, "recovery pass failed");
        }
        // Spread the scans of several coordinators (±20 %).
        let jitter = rand::random::<f64>() * 0.4 + 0.8;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval.mul_f64(jitter)) => {}
        }
    }
}

/// One scan: claims as many transactions as there are free driver slots.
pub async fn pass(coordinator: &Coordinator, permits: &Arc<Semaphore>) -> Result<(), StoreError> {
    let store = coordinator.store();
    let lease = coordinator.timing().lease;
    let owner = coordinator.instance_id();
    loop {
        let free = permits.available_permits().min(BATCH);
        if free == 0 || coordinator.shutdown_token().is_cancelled() {
            return Ok(());
        }
        let leased_at = Instant::now();
        let expired = store.claim_expired(owner, lease, free as i64).await?;
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), "rolling back transactions past their deadline");
        }
        let claimed_expired = expired.len();
        // Start what is claimed before claiming more: a failure later in this
        // pass must not leave claimed transactions waiting for their lease.
        let expired = expired.into_iter().map(|t| (t, None)).collect();
        start(coordinator, permits, "timeout", expired, leased_at).await;
        let left = free - claimed_expired;
        let mut claimed_due = 0;
        if left > 0 {
            let leased_at = Instant::now();
            let due = store.claim_due(owner, lease, left as i64).await?;
            claimed_due = due.len();
            start(coordinator, permits, "resume", due, leased_at).await;
        }
        if claimed_expired + claimed_due < free {
            return Ok(());
        }
        // A full batch: there may be more; yield briefly and claim again.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Drives each claimed transaction; one whose lease had expired under
/// another coordinator (`previous` owner) gets a takeover event.
async fn start(
    coordinator: &Coordinator,
    permits: &Arc<Semaphore>,
    kind: &str,
    rows: Vec<(TxRow, Option<String>)>,
    leased_at: Instant,
) {
    if rows.is_empty() {
        return;
    }
    coordinator.metrics().recovered.with_label_values(&[kind]).inc_by(rows.len() as u64);
    let xids: Vec<_> = rows.iter().map(|(t, _)| t.xid.clone()).collect();
    let mut branches = match coordinator.store().branches_of(&xids).await {
        Ok(b) => b,
        Err(e) => {
            // Handled here: the leases expire and the next scans take these again.
            tracing::warn!(error = %e, count = rows.len(), "could not load branches of claimed transactions");
            return;
        }
    };
    for (tx, previous) in rows {
        if let Some(previous) = previous {
            let mut event = TimelineEvent::new(chrono::Utc::now(), EventKind::Takeover);
            event.status = Some(tx.status);
            event.detail = Some(format!("the lease of {previous} expired"));
            coordinator.events().record(&tx.xid, event);
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Cannot happen (claims are bounded by free permits); the lease expires and it is claimed again.
            continue;
        };
        let branches = branches.remove(&tx.xid).unwrap_or_default();
        tracing::info!(xid = %tx.xid, status = %tx.status, attempts = tx.attempts, "recovery drives the transaction");
        coordinator.spawn_driver(
            Job { tx, branches, leased_at, resumed: Resumed::TakenOver, recorded_starts: Vec::new() },
            Some(permit),
        );
    }
}
