//! What an operator reads and does, for the console, the CLI and the API:
//! a transaction's timeline, the overview, the attention list, the global
//! locks held, and the two actions on a decided transaction: retry now,
//! and stop retrying with a note.
//!
//! Policy, chosen where the issue is silent:
//! - **retry** applies to a decided, unfinished transaction (`committing`,
//!   `rolling_back`, `delivering`) that no coordinator is driving at this
//!   moment: it becomes due now with its backoff reset, and this process
//!   drives it at once. A terminal `commit_failed` / `rollback_failed` is not
//!   reopened: a participant said no for good, and only a person who
//!   repaired its data knows what is true now.
//! - **stop** applies to the same statuses, whoever drives them: the
//!   transaction ends `commit_failed` (commit decided) or `rollback_failed`
//!   (rollback decided), its unfinished branches too, with the note as
//!   their last error; the coordinator calls them no more. AT global locks
//!   stay held, as for any failed branch, until a person releases the rows.

use super::service::parse_xid;
use crate::driver::Job;
use crate::error::CoordinatorError;
use crate::modes::Resumed;
use crate::store::TxRow;
use crate::transaction::statuses::DECIDED;
use crate::Coordinator;
use chrono::{DateTime, Duration as Span, Utc};
use std::collections::HashMap;
use std::time::Instant;
use tandem_wire::limits;
use tandem_wire::{
    EventKind, GlobalStatus, LockList, MinuteCount, Overview, StatusCount, Timeline, TimelineEvent, Transaction,
    MAX_NOTE_CHARS,
};

/// Most transactions listed as oldest unfinished.
const OLDEST: i64 = 10;
/// Most transactions listed as needing attention.
const ATTENTION: i64 = 50;
/// Most locks listed.
pub const MAX_LOCKS: i64 = 500;

fn invalid(detail: String, tx: Transaction) -> CoordinatorError {
    CoordinatorError::InvalidState { detail, transaction: Some(Box::new(tx)) }
}

impl Coordinator {
    /// The transaction and everything known to have happened to it, oldest first.
    pub async fn timeline(&self, xid: &str) -> Result<Timeline, CoordinatorError> {
        let id = parse_xid(xid)?;
        let Some((row, branches)) = self.store().transaction_with_branches(&id).await? else {
            return Err(CoordinatorError::TransactionNotFound(xid.to_owned()));
        };
        let (recorded, registered) = self.store().events_of(&id).await?;
        let transaction = row.to_wire(&branches);
        Ok(Timeline { events: merge(&transaction, &registered, recorded), transaction })
    }

    /// Counts, the last hour, the oldest unfinished and those needing attention.
    pub async fn overview(&self) -> Result<Overview, CoordinatorError> {
        let store = self.store();
        let now = Utc::now();
        let count = |(status, mode, count)| StatusCount { status, mode, count };
        let in_flight = store.in_flight_by_mode().await?.into_iter().map(count).collect();
        let ended_last_24h = store.ended_since(now - Span::hours(24)).await?.into_iter().map(count).collect();
        let first = crate::events::minute_of(now) - Span::minutes(59);
        let last_hour = per_minute(first, store.ended_per_minute(first).await?);
        let oldest_unfinished = self.with_branches(store.oldest_unfinished(OLDEST).await?).await?;
        let needs_attention = self.with_branches(store.needing_attention(ATTENTION).await?).await?;
        Ok(Overview { in_flight, ended_last_24h, last_hour, oldest_unfinished, needs_attention })
    }

    /// The global locks held, oldest first (at most `limit`), and their number.
    pub async fn locks(&self, limit: i64) -> Result<LockList, CoordinatorError> {
        let (locks, total) = self.store().held_locks(limit.clamp(1, MAX_LOCKS)).await?;
        Ok(LockList { locks, total })
    }

    /// Retries a decided, unfinished transaction now (see the module's policy).
    pub async fn retry(&self, xid: &str) -> Result<Transaction, CoordinatorError> {
        let id = parse_xid(xid)?;
        let mut event = TimelineEvent::new(Utc::now(), EventKind::OperatorRetry);
        event.coordinator = Some(self.instance_id().to_owned());
        let leased_at = Instant::now();
        let Some(row) = self.store().retry_now(&id, &event).await? else {
            let now = self.get(xid).await?;
            let why = if DECIDED.contains(&now.status) {
                "a coordinator is driving it at this moment; its next attempt follows on its own".to_owned()
            } else {
                refusal(now.status)
            };
            return Err(invalid(format!("transaction {xid} cannot be retried now: {why}"), now));
        };
        // Due now: claim it here rather than wait for a recovery scan.
        let branches = self.store().branches(&id).await?;
        let transaction = row.to_wire(&branches);
        if let Some(tx) = self.store().claim_one(&row.xid, self.instance_id(), self.timing().lease).await? {
            let job = Job { tx, branches, leased_at, resumed: Resumed::TakenOver, recorded_starts: Vec::new() };
            self.spawn_driver(job, None);
        }
        tracing::info!(%xid, "operator retry");
        Ok(transaction)
    }

    /// Stops retrying a decided, unfinished transaction, with a note (see the module's policy).
    pub async fn stop(&self, xid: &str, note: &str) -> Result<Transaction, CoordinatorError> {
        let id = parse_xid(xid)?;
        // As the schema says: 1 to 1000 characters, whatever they are (a
        // trim here refused notes the document accepts, such as U+0085).
        limits::check_text("note", note, 1, MAX_NOTE_CHARS)?;
        let mut event = TimelineEvent::new(Utc::now(), EventKind::OperatorStop);
        event.coordinator = Some(self.instance_id().to_owned());
        event.detail = Some(note.to_owned());
        let error = format!("stopped by an operator: {note}");
        match self.store().stop(&id, &error, &event).await? {
            Some(row) => {
                let branches = self.store().branches(&id).await?;
                self.events().ended(row.mode, row.status);
                tracing::warn!(%xid, status = %row.status, note, "operator stopped the transaction");
                Ok(row.to_wire(&branches))
            }
            None => {
                let now = self.get(xid).await?;
                let why = refusal(now.status);
                Err(invalid(format!("transaction {xid} cannot be stopped: {why}"), now))
            }
        }
    }

    /// The wire form of `rows`, with their branches.
    async fn with_branches(&self, rows: Vec<TxRow>) -> Result<Vec<Transaction>, CoordinatorError> {
        let xids: Vec<_> = rows.iter().map(|r| r.xid.clone()).collect();
        let mut branches = self.store().branches_of(&xids).await?;
        Ok(rows.iter().map(|r| r.to_wire(&branches.remove(&r.xid).unwrap_or_default())).collect())
    }
}

/// Why an operator action does not apply to a transaction in `status`.
fn refusal(status: GlobalStatus) -> String {
    match status {
        s if s.is_terminal() => format!(
            "it is {s}, terminal: the coordinator calls its branches no more (a refused branch needs its \
             data repaired by hand)"
        ),
        GlobalStatus::Active => "it is active: nothing is decided yet (commit or roll it back instead)".into(),
        s => format!("it is {s}: the decision is being made, wait for it"),
    }
}

/// The timeline: the transaction's own times (begin, registrations,
/// decision, end) merged with the recorded events, oldest first (stable:
/// equal times keep the order begin, registration, recorded, decision, end).
pub fn merge(
    tx: &Transaction,
    registered: &[(String, DateTime<Utc>)],
    recorded: Vec<TimelineEvent>,
) -> Vec<TimelineEvent> {
    let mut out = Vec::with_capacity(recorded.len() + registered.len() + 3);
    let mut begun = TimelineEvent::new(tx.created_at, EventKind::Begun);
    begun.detail = tx.name.clone();
    out.push(begun);
    for (branch_id, at) in registered {
        let mut e = TimelineEvent::new(*at, EventKind::Registered);
        e.branch_id = Some(branch_id.clone());
        e.detail = tx.branches.iter().find(|b| &b.branch_id.to_string() == branch_id).map(|b| b.resource.clone());
        out.push(e);
    }
    if let Some(at) = tx.decided_at {
        let mut e = TimelineEvent::new(at, EventKind::Decided);
        e.status = Some(match tx.status.outcome() {
            tandem_wire::TransactionOutcome::RolledBack => GlobalStatus::RollingBack,
            _ => GlobalStatus::Committing,
        });
        e.reason = tx.rollback_reason;
        out.push(e);
    }
    out.extend(recorded);
    if let Some(at) = tx.finished_at {
        let mut e = TimelineEvent::new(at, EventKind::Finished);
        e.status = Some(tx.status);
        out.push(e);
    }
    out.sort_by_key(|e| e.at);
    out
}

/// Sixty minutes from `first`, zeros included, from (minute, outcome, n) rows.
fn per_minute(first: DateTime<Utc>, rows: Vec<(DateTime<Utc>, GlobalStatus, i64)>) -> Vec<MinuteCount> {
    let mut by_minute: HashMap<DateTime<Utc>, MinuteCount> = HashMap::new();
    for (minute, outcome, n) in rows {
        let m = by_minute.entry(minute).or_insert(MinuteCount { minute, committed: 0, rolled_back: 0, failed: 0 });
        match outcome {
            GlobalStatus::Committed | GlobalStatus::Delivered => m.committed += n,
            GlobalStatus::RolledBack => m.rolled_back += n,
            _ => m.failed += n,
        }
    }
    (0..60)
        .map(|i| {
            let minute = first + Span::minutes(i);
            by_minute.remove(&minute).unwrap_or(MinuteCount { minute, committed: 0, rolled_back: 0, failed: 0 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_minute_fills_sixty_minutes_and_sorts_outcomes() {
        let first = crate::events::minute_of(Utc::now()) - Span::minutes(59);
        let rows = vec![
            (first, GlobalStatus::Committed, 3),
            (first, GlobalStatus::Delivered, 1),
            (first + Span::minutes(5), GlobalStatus::RolledBack, 2),
            (first + Span::minutes(59), GlobalStatus::CommitFailed, 1),
            (first + Span::minutes(59), GlobalStatus::HeuristicMixed, 1),
        ];
        let got = per_minute(first, rows);
        assert_eq!(got.len(), 60);
        assert_eq!((got[0].committed, got[0].rolled_back, got[0].failed), (4, 0, 0));
        assert_eq!(got[5].rolled_back, 2);
        assert_eq!(got[59].failed, 2);
        assert_eq!(got.iter().map(|m| m.committed + m.rolled_back + m.failed).sum::<i64>(), 8);
        assert!(got.windows(2).all(|w| w[1].minute - w[0].minute == Span::minutes(1)));
    }

    #[test]
    fn refusals_say_why() {
        assert!(refusal(GlobalStatus::Committed).contains("terminal"));
        assert!(refusal(GlobalStatus::Active).contains("nothing is decided"));
        assert!(refusal(GlobalStatus::CanCommit).contains("being made"));
    }
}
