//! The event log: what the console's timeline and overview show, recorded
//! off the hot path.
//!
//! Recording is a send on a bounded channel (no I/O, no lock held across an
//! await): every callback attempt with its outcome and latency, every
//! takeover, and a count per minute of the transactions that ended. One
//! writer task per process batches them: every [`FLUSH_EVERY`] it writes the
//! attempts as one row per transaction (one multi-row `INSERT`) and the
//! minute counts as one upsert, on the relaxed pool. A full channel drops
//! the event and counts it (`tandem_events_dropped_total`): the log is a
//! diagnostic, it never holds a transaction up. The writer also deletes
//! events older than the retention, in batches of [`DELETE_BATCH`].

use crate::metrics::Metrics;
use crate::store::{EventRow, MinuteRow, Store};
use chrono::{DateTime, DurationRound, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_wire::{GlobalStatus, Mode, TimelineEvent, Xid, MAX_EVENT_ERROR_BYTES};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events buffered before recording drops them.
const CHANNEL: usize = 65_536;
/// How often the writer writes what it has.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How often the writer deletes what is past the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per retention statement (short statements: live traffic is not held up).
const DELETE_BATCH: i64 = 1_000;
/// Retention statements per prune (the rest waits for the next).
const DELETE_ROUNDS: usize = 20;
/// How long the per-minute counts are kept.
pub const MINUTES_RETENTION: Duration = Duration::from_secs(48 * 3600);

/// One recorded event of one transaction.
#[derive(Debug)]
struct Recorded {
    /// The transaction.
    xid: Xid,
    /// The event.
    event: TimelineEvent,
}

/// Ended transactions counted per (minute, mode, terminal status).
type MinuteCounts = HashMap<(DateTime<Utc>, Mode, GlobalStatus), i64>;

/// The recording side, held by the callback client and the driver. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    /// To the writer.
    tx: mpsc::Sender<Recorded>,
    /// Ended transactions not yet written.
    minutes: Arc<Mutex<MinuteCounts>>,
    /// Dropped events.
    metrics: Metrics,
}

/// The writing side: started once per process by [`EventLog::start`].
pub struct EventWriter {
    /// From the recorders.
    rx: mpsc::Receiver<Recorded>,
    /// Shared with the recorders.
    minutes: Arc<Mutex<MinuteCounts>>,
    /// This process's instance id.
    coordinator: Arc<str>,
    /// How long events are kept.
    retention: Duration,
}

impl EventLog {
    /// A log stamping events with `coordinator`, and the writer to run.
    pub fn new(coordinator: &str, metrics: Metrics, retention: Duration) -> (EventLog, EventWriter) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let minutes = Arc::new(Mutex::new(HashMap::new()));
        let coordinator: Arc<str> = coordinator.into();
        let log = EventLog { tx, minutes: minutes.clone(), metrics };
        (log, EventWriter { rx, minutes, coordinator, retention })
    }

    /// Records `event` of `xid`; its error text cut to
    /// [`MAX_EVENT_ERROR_BYTES`]. The coordinator is not stamped on each
    /// event: the row written says which one recorded them.
    pub fn record(&self, xid: &Xid, mut event: TimelineEvent) {
        if let Some(d) = event.detail.as_mut() {
            truncate_utf8(d, MAX_EVENT_ERROR_BYTES);
        }
        if self.tx.try_send(Recorded { xid: xid.clone(), event }).is_err() {
            self.metrics.events_dropped.inc();
        }
    }

    /// Counts a transaction of `mode` that ended `terminal` now.
    pub fn ended(&self, mode: Mode, terminal: GlobalStatus) {
        let minute = minute_of(Utc::now());
        if let Ok(mut m) = self.minutes.lock() {
            *m.entry((minute, mode, terminal)).or_insert(0) += 1;
        }
    }
}

/// The start of the minute `t` falls in.
pub fn minute_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(chrono::Duration::minutes(1)).unwrap_or(t)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl EventWriter {
    /// Writes what is recorded until `stop` is cancelled, then writes what
    /// is left and returns. Cancel `stop` after the drivers ended, so that
    /// their last attempts are written.
    pub async fn run(mut self, store: Store, stop: CancellationToken) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Vec<Recorded> = Vec::new();
        loop {
            tokio::select! {
                got = self.rx.recv() => match got {
                    Some(r) => pending.push(r),
                    None => break,
                },
                _ = flush.tick() => self.flush(&store, &mut pending).await,
                _ = prune.tick() => self.prune(&store).await,
                _ = stop.cancelled() => break,
            }
        }
        while let Ok(r) = self.rx.try_recv() {
            pending.push(r);
        }
        self.flush(&store, &mut pending).await;
    }

    /// Writes the pending events (one row per transaction) and the minute counts.
    async fn flush(&mut self, store: &Store, pending: &mut Vec<Recorded>) {
        while let Ok(r) = self.rx.try_recv() {
            pending.push(r);
        }
        if !pending.is_empty() {
            let rows = group(std::mem::take(pending), &self.coordinator);
            if let Err(e) = store.insert_events(&rows).await {
                // Handled here: a diagnostic is lost, nothing else.
                tracing::warn!(error = %e, rows = rows.len(), "could not write transaction events; dropped");
            }
        }
        let counts = match self.minutes.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(_) => return,
        };
        if counts.is_empty() {
            return;
        }
        let rows: Vec<MinuteRow> =
            counts.into_iter().map(|((minute, mode, outcome), n)| MinuteRow { minute, mode, outcome, n }).collect();
        if let Err(e) = store.add_minute_counts(&self.coordinator, &rows).await {
            tracing::warn!(error = %e, "could not write the per-minute counts; dropped");
        }
    }

    /// Deletes events past the retention, and minute counts past theirs.
    async fn prune(&self, store: &Store) {
        let Ok(retention) = chrono::Duration::from_std(self.retention) else {
            return;
        };
        let before = Utc::now() - retention;
        for _ in 0..DELETE_ROUNDS {
            match store.delete_events_before(before, DELETE_BATCH).await {
                Ok(n) if n < DELETE_BATCH as u64 => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not delete old transaction events; next time");
                    break;
                }
            }
        }
        let minutes_before = Utc::now() - chrono::Duration::from_std(MINUTES_RETENTION).unwrap_or_default();
        if let Err(e) = store.delete_minutes_before(minutes_before).await {
            tracing::warn!(error = %e, "could not delete old per-minute counts; next time");
        }
    }
}

/// One row per transaction, its events in the order recorded.
fn group(recorded: Vec<Recorded>, coordinator: &str) -> Vec<EventRow> {
    let mut index: HashMap<Xid, usize> = HashMap::new();
    let mut rows: Vec<EventRow> = Vec::new();
    for Recorded { xid, event } in recorded {
        match index.get(&xid) {
            Some(&i) => rows[i].events.push(event),
            None => {
                index.insert(xid.clone(), rows.len());
                rows.push(EventRow { xid, at: event.at, coordinator: coordinator.to_owned(), events: vec![event] });
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_wire::EventKind;

    #[test]
    fn events_are_grouped_per_transaction_in_order() {
        let a = Xid::parse("a1").expect("xid");
        let b = Xid::parse("b1").expect("xid");
        let t0 = Utc::now();
        let ev = |s: i64| TimelineEvent::new(t0 + chrono::Duration::seconds(s), EventKind::Attempt);
        let rows = group(
            vec![
                Recorded { xid: a.clone(), event: ev(0) },
                Recorded { xid: b.clone(), event: ev(1) },
                Recorded { xid: a.clone(), event: ev(2) },
            ],
            "c1",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].xid, a);
        assert_eq!(rows[0].events.iter().map(|e| e.at).collect::<Vec<_>>(), vec![ev(0).at, ev(2).at]);
        assert_eq!(rows[0].at, t0);
        assert_eq!(rows[1].events.len(), 1);
    }

    #[test]
    fn errors_are_cut_on_a_character_boundary() {
        let mut s = "é".repeat(600);
        truncate_utf8(&mut s, MAX_EVENT_ERROR_BYTES);
        assert_eq!(s.len(), MAX_EVENT_ERROR_BYTES);
        let mut s = format!("a{}", "é".repeat(600));
        truncate_utf8(&mut s, MAX_EVENT_ERROR_BYTES);
        assert_eq!(s.len(), MAX_EVENT_ERROR_BYTES - 1);
    }

    #[test]
    fn minutes_start_on_the_minute() {
        let t = DateTime::parse_from_rfc3339("2026-12-03T10:11:12.5Z").expect("time").with_timezone(&Utc);
        assert_eq!(minute_of(t).to_rfc3339(), "2026-12-03T10:11:00+00:00");
    }
}
