//! Timers at wall-clock deadlines. A deadline is kept as Unix milliseconds
//! (in the database, or in a prepared transaction's gid) so that a restarted
//! participant re-arms it; the wait itself runs on tokio's clock, so tests
//! can drive it with `tokio::time::pause`.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// How long from `now_ms` until `deadline_ms` (zero if it has passed).
pub fn delay_until(deadline_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(deadline_ms.saturating_sub(now_ms)).unwrap_or(0))
}

/// Runs `action` at `deadline_ms` (Unix ms), unless `stop` is cancelled first.
/// The action must re-check the state it acts on: a timer is never disarmed,
/// it only finds nothing to do.
pub fn arm<F>(deadline_ms: i64, stop: CancellationToken, action: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let delay = delay_until(deadline_ms, now_ms());
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(delay) => action.await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn delays() {
        assert_eq!(delay_until(1_500, 1_000), Duration::from_millis(500));
        assert_eq!(delay_until(1_000, 1_500), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_its_deadline_not_before() {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let t = arm(now_ms() + 30_000, CancellationToken::new(), async move { f.store(true, Ordering::SeqCst) });
        tokio::time::advance(Duration::from_millis(29_000)).await;
        tokio::task::yield_now().await;
        assert!(!fired.load(Ordering::SeqCst), "fired early");
        tokio::time::advance(Duration::from_millis(1_500)).await;
        t.await.expect("timer task");
        assert!(fired.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_participant_fires_nothing() {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let stop = CancellationToken::new();
        let t = arm(now_ms() + 1_000, stop.clone(), async move { f.store(true, Ordering::SeqCst) });
        stop.cancel();
        tokio::time::advance(Duration::from_millis(5_000)).await;
        t.await.expect("timer task");
        assert!(!fired.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_fires_at_once() {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        arm(now_ms() - 10, CancellationToken::new(), async move { f.store(true, Ordering::SeqCst) })
            .await
            .expect("timer task");
        assert!(fired.load(Ordering::SeqCst));
    }
}
