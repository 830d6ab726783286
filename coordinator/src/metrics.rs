//! Prometheus metrics of one coordinator process.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics, registered in one registry and rendered by `GET /metrics`.
#[derive(Clone)]
pub struct Metrics {
    /// The registry rendered at `/metrics`.
    registry: Registry,
    /// Transactions begun, by mode.
    pub begun: IntCounterVec,
    /// Transactions that reached `committed`, by mode.
    pub committed: IntCounterVec,
    /// Transactions that reached `rolled_back`, by mode and reason.
    pub rolled_back: IntCounterVec,
    /// Transactions that ended `commit_failed` / `rollback_failed`, by mode and status.
    pub failed: IntCounterVec,
    /// Callback round-trip time, by action and outcome (`done`, `refused`, `unknown`).
    pub callback_seconds: HistogramVec,
    /// Callbacks that did not succeed, by action and kind (`refused`, `unknown`).
    pub callback_failures: IntCounterVec,
    /// Transactions not yet terminal, by status (read from the database at scrape time).
    pub in_flight: IntGaugeVec,
    /// Duration of every database call, by query name.
    pub db_seconds: HistogramVec,
    /// Transactions taken over by the recovery worker, by kind (`timeout`, `resume`).
    pub recovered: IntCounterVec,
    /// AT branch registrations refused because another transaction held a global lock.
    pub lock_conflicts: IntCounter,
    /// 3PC transactions that ended `heuristic_mixed` (a participant committed
    /// on its own timeout while the coordinator decided rollback), by mode.
    pub heuristic: IntCounterVec,
    /// Timeline events dropped because the event log's writer fell behind.
    pub events_dropped: IntCounter,
    /// Waiting named-lock acquires of this process woken by a grant
    /// announcement (one per release or expiry with a queue: no herd).
    pub lock_wakeups: IntCounter,
    /// Named-lock grants, by how (`new`, `reentry`, `handoff`).
    pub lock_grants: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let begun = counter("tandem_transactions_begun_total", "Global transactions begun", &["mode"])?;
        let committed = counter("tandem_transactions_committed_total", "Global transactions committed", &["mode"])?;
        let rolled_back =
            counter("tandem_transactions_rolled_back_total", "Global transactions rolled back", &["mode", "reason"])?;
        let failed = counter(
            "tandem_transactions_failed_total",
            "Global transactions that ended commit_failed or rollback_failed",
            &["mode", "status"],
        )?;
        let callback_failures = counter(
            "tandem_callback_failures_total",
            "Callbacks refused (409) or with an unknown outcome",
            &["action", "kind"],
        )?;
        let heuristic = counter(
            "tandem_heuristic_outcomes_total",
            "Transactions that ended heuristic_mixed: a participant committed on its own timeout after an abort",
            &["mode"],
        )?;
        let recovered =
            counter("tandem_recovery_taken_total", "Transactions taken over by the recovery worker", &["kind"])?;
        let lock_conflicts = IntCounter::new(
            "tandem_lock_conflicts_total",
            "AT registrations refused with lock_conflict (another transaction held a global lock)",
        )?;
        registry.register(Box::new(lock_conflicts.clone()))?;
        let events_dropped = IntCounter::new(
            "tandem_events_dropped_total",
            "Timeline events (callback attempts, takeovers) dropped because the event log fell behind",
        )?;
        registry.register(Box::new(events_dropped.clone()))?;
        let lock_wakeups = IntCounter::new(
            "tandem_named_lock_wakeups_total",
            "Waiting named-lock acquires woken because they were handed the lock",
        )?;
        registry.register(Box::new(lock_wakeups.clone()))?;
        let lock_grants = counter("tandem_named_lock_grants_total", "Named-lock grants", &["how"])?;
        let callback_seconds = HistogramVec::new(
            HistogramOpts::new("tandem_callback_duration_seconds", "Callback round trip")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["action", "outcome"],
        )?;
        registry.register(Box::new(callback_seconds.clone()))?;
        let db_seconds = HistogramVec::new(
            HistogramOpts::new("tandem_db_query_duration_seconds", "Database call duration")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            &["query"],
        )?;
        registry.register(Box::new(db_seconds.clone()))?;
        let in_flight = IntGaugeVec::new(
            Opts::new("tandem_transactions_in_flight", "Transactions not yet terminal, by status"),
            &["status"],
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Metrics {
            registry,
            begun,
            committed,
            rolled_back,
            failed,
            callback_seconds,
            callback_failures,
            in_flight,
            db_seconds,
            recovered,
            lock_conflicts,
            heuristic,
            events_dropped,
            lock_wakeups,
            lock_grants,
        })
    }

    /// Count and total seconds of each database statement so far, by query name
    /// (for the benchmark's report).
    pub fn db_summary(&self) -> Vec<(String, u64, f64)> {
        let mut out = Vec::new();
        for family in self.registry.gather() {
            if family.name() != "tandem_db_query_duration_seconds" {
                continue;
            }
            for m in family.get_metric() {
                let query = m.get_label().iter().find(|l| l.name() == "query").map(|l| l.value().to_owned());
                let h = m.get_histogram();
                out.push((query.unwrap_or_default(), h.get_sample_count(), h.get_sample_sum()));
            }
        }
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
