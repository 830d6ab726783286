//! What an operator reads and does (extension of the contract, served to
//! the console and the `tandem` CLI): a transaction's timeline, the
//! overview, the global locks held, and the two actions on a transaction
//! that needs a person: retry now, and stop retrying with a note.

use crate::{CallbackAction, GlobalStatus, Mode, RollbackReason, Transaction};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest operator's note of a stop, in characters.
pub const MAX_NOTE_CHARS: usize = 1_000;

/// Longest error text kept with one recorded attempt, in bytes.
pub const MAX_EVENT_ERROR_BYTES: usize = 1_024;

/// What happened to a transaction at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The transaction was begun (its `created_at`).
    Begun,
    /// A branch was registered (the branch's `created_at`).
    Registered,
    /// Commit or rollback was decided (`decided_at`, with the reason of a rollback).
    Decided,
    /// One callback to a participant (or a delivery, or a back-check) and its outcome.
    Attempt,
    /// A coordinator took the transaction over: a lease expired (the
    /// previous owner stopped or died) or a scheduled retry came due.
    Takeover,
    /// An operator asked for a retry now.
    OperatorRetry,
    /// An operator stopped the retries, with a note.
    OperatorStop,
    /// The transaction reached its terminal status (`finished_at`).
    Finished,
}

impl EventKind {
    /// The kind as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Begun => "begun",
            EventKind::Registered => "registered",
            EventKind::Decided => "decided",
            EventKind::Attempt => "attempt",
            EventKind::Takeover => "takeover",
            EventKind::OperatorRetry => "operator_retry",
            EventKind::OperatorStop => "operator_stop",
            EventKind::Finished => "finished",
        }
    }
}

/// How one callback attempt ended, as the coordinator classified the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// 2xx (or a broker's confirmation): the branch did what was asked.
    Done,
    /// A definitive no (409): the branch will not do it.
    Refused,
    /// A 3PC participant had committed on its own timeout.
    Heuristic,
    /// No usable answer (timeout, connection error, 5xx…): retried later.
    Unknown,
}

impl AttemptOutcome {
    /// The outcome as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Done => "done",
            AttemptOutcome::Refused => "refused",
            AttemptOutcome::Heuristic => "heuristic",
            AttemptOutcome::Unknown => "unknown",
        }
    }
}

/// One entry of a transaction's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimelineEvent {
    /// When it happened (for an attempt: when it was sent).
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The coordinator process that did it (attempts, takeovers, operator actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// The branch concerned (registrations, attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_id: Option<String>,
    /// The action an attempt sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<CallbackAction>,
    /// How an attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    /// The HTTP status a participant answered an attempt with (none: no answer, or a broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// How long an attempt took, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// The status a decision or the end wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<GlobalStatus>,
    /// Why a rollback was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RollbackReason>,
    /// An attempt's error (at most 1 KiB), a takeover's previous owner, an operator's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl TimelineEvent {
    /// An event of `kind` at `at` with nothing else set.
    pub fn new(at: DateTime<Utc>, kind: EventKind) -> TimelineEvent {
        TimelineEvent {
            at,
            kind,
            coordinator: None,
            branch_id: None,
            action: None,
            outcome: None,
            http_status: None,
            latency_us: None,
            status: None,
            reason: None,
            detail: None,
        }
    }
}

/// `GET /v1/transactions/{xid}/timeline`: everything known to have happened
/// to a transaction, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Timeline {
    /// The transaction as it is now.
    pub transaction: Transaction,
    /// Its events, oldest first. Attempts older than the coordinator's event
    /// retention are gone; begin, registrations, decision and end come from
    /// the transaction itself and stay as long as it does.
    pub events: Vec<TimelineEvent>,
}

/// `POST /v1/transactions/{xid}/stop`: stop retrying a decided transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StopRequest {
    /// Why, for whoever reads the transaction later (1 to 1000 characters).
    pub note: String,
}

/// A count of transactions by status and mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusCount {
    /// The status.
    pub status: GlobalStatus,
    /// The mode.
    pub mode: Mode,
    /// How many.
    pub count: i64,
}

/// Transactions that ended in one minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MinuteCount {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Ended committed (or delivered).
    pub committed: i64,
    /// Ended rolled back.
    pub rolled_back: i64,
    /// Ended needing a person (`commit_failed`, `rollback_failed`, `heuristic_mixed`).
    pub failed: i64,
}

/// `GET /v1/overview`: what the coordinators are doing now and did lately.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    /// Unfinished transactions by status and mode.
    pub in_flight: Vec<StatusCount>,
    /// Transactions that ended in the last 24 hours, by terminal status and
    /// mode (from the coordinators' per-minute counts).
    pub ended_last_24h: Vec<StatusCount>,
    /// The last 60 minutes, oldest first, one entry per minute (zeros included).
    pub last_hour: Vec<MinuteCount>,
    /// The oldest unfinished transactions (at most 10), oldest first.
    pub oldest_unfinished: Vec<Transaction>,
    /// Transactions that need a person, newest first (at most 50): ended
    /// `commit_failed`, `rollback_failed` or `heuristic_mixed`, or decided and
    /// retried at least [`STUCK_ATTEMPTS`] times.
    pub needs_attention: Vec<Transaction>,
}

/// Phase-2 passes after which a decided transaction is listed as needing a person.
pub const STUCK_ATTEMPTS: i32 = 5;

/// One global lock (AT) held by a branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LockInfo {
    /// The participant's resource.
    pub resource: String,
    /// The locked row, as the participant sent it (`schema.table:pk`).
    pub lock_key: String,
    /// The holding transaction.
    pub xid: String,
    /// The holding branch.
    pub branch_id: String,
    /// Since when.
    pub since: DateTime<Utc>,
}

/// `GET /v1/locks`: global locks held, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LockList {
    /// The page.
    pub locks: Vec<LockInfo>,
    /// How many locks are held in all.
    pub total: i64,
}
