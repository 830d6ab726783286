//! Wake-ups of waiting acquires, across coordinator processes: a grant to
//! a waiter is announced with `NOTIFY` on commit; every process's listener
//! receives it, and only the process serving that waiter's request wakes
//! it (one waiter per release, no herd).

use crate::metrics::Metrics;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The waiting acquires of this process, by `"{name} {owner}"`.
#[derive(Clone, Default)]
pub struct Hub {
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

/// A waiting acquire's registration; dropping it unregisters.
pub struct Registration {
    /// The hub's map.
    hub: Hub,
    /// The key.
    key: String,
    /// Notified when the waiter is handed the lock (or must look again).
    notify: Arc<Notify>,
}

impl Registration {
    /// Resolves at the next wake-up (a wake-up sent before this call counts).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.hub.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.key).is_some_and(|n| Arc::ptr_eq(n, &self.notify)) {
            map.remove(&self.key);
        }
    }
}

impl Hub {
    /// Registers the acquire of `name` by `owner`, before it looks at the queue.
    pub fn register(&self, name: &str, owner: &str) -> Registration {
        let key = format!("{name} {owner}");
        let notify = Arc::new(Notify::new());
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), notify.clone());
        Registration { hub: self.clone(), key, notify }
    }

    /// Wakes the acquire registered under `payload`, if it is this process's.
    fn wake(&self, payload: &str) -> bool {
        let map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(payload) {
            Some(n) => {
                // A permit is stored if the waiter is between two looks: not lost.
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// Wakes every acquire of this process (notifications may have been
    /// missed while the listener reconnected: each looks again).
    fn wake_all(&self) {
        for n in self.waiters.lock().unwrap_or_else(|p| p.into_inner()).values() {
            n.notify_one();
        }
    }

    /// Listens until `shutdown`, reconnecting after errors.
    pub async fn run(self, store: Store, metrics: Metrics, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let mut listener = match store.lock_listener().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "named locks: cannot listen for grants; waiters poll meanwhile");
                    tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            // Anything announced before this listener was up is looked for again.
            self.wake_all();
            loop {
                let n = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.try_recv() => n,
                };
                match n {
                    Ok(Some(n)) => {
                        if self.wake(n.payload()) {
                            metrics.lock_wakeups.inc();
                        }
                    }
                    // The connection was lost; `try_recv` reconnects on the next call.
                    Ok(None) => self.wake_all(),
                    Err(e) => {
                        tracing::warn!(error = %e, "named locks: the grant listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}
