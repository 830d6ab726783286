//! How the contract's retries are spaced (`docs/http-api.md`, "Callbacks"):
//! exponential with jitter, from a base delay to a cap. Used by the
//! coordinator's driver and by the SDK's outbox relay alike.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// The delay before attempt number `attempts + 1`: exponential from `base`
/// to `max`, with jitter so that the retries of many transactions or
/// messages spread out.
pub fn retry_delay(base: Duration, max: Duration, attempts: u32) -> Duration {
    let n = attempts.min(40) as usize;
    ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(n)
        .unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let first = retry_delay(base, max, 0);
        assert!(first >= base && first <= base * 2, "{first:?}");
        let later = retry_delay(base, max, 3);
        assert!(later >= base * 8, "{later:?}");
        for n in [10, 40, 1000, u32::MAX] {
            assert!(retry_delay(base, max, n) <= max * 2, "attempt {n}");
        }
    }
}
