//! Row types and their conversion to wire types.

use crate::dtm::DtmOptions;
use crate::modes::{self, Locking};
use crate::transaction::statuses;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use std::str::FromStr;
use tandem_wire::{
    ActionSide, ActionStatus, Branch, BranchId, BranchStatus, CompensationSide, CompensationStatus, DeliveryOrder,
    GlobalStatus, MessageInfo, Mode, RollbackReason, SagaStep, ThreePhaseTimeouts, Transaction, Xid,
};

/// Column list of [`TxRow`], for `concat!` into statements.
macro_rules! tx_cols {
    () => {
        "xid, mode, name, status, rollback_reason, timeout_ms, created_at, deadline, decided_at, \
         finished_at, owner, attempts, version, branch_count, (deadline <= now()) AS expired, \
         can_commit_timeout_ms, pre_commit_timeout_ms, do_commit_timeout_ms, retry_limit, check_url, delivery_order, dtm"
    };
}
/// Column list of [`BranchRow`].
macro_rules! branch_cols {
    () => {
        "branch_id, xid, seq, resource, callback_url, status, payload, lock_keys, attempts, last_error, \
         action_url, after_steps, action_status, action_attempts, action_error, destination"
    };
}
/// [`branch_cols`] from alias `b`, prefixed `b_` (for joins with the transaction).
macro_rules! branch_cols_b {
    () => {
        "b.branch_id AS b_branch_id, b.xid AS b_xid, b.seq AS b_seq, b.resource AS b_resource, \
         b.callback_url AS b_callback_url, b.status AS b_status, b.payload AS b_payload, \
         b.lock_keys AS b_lock_keys, b.attempts AS b_attempts, b.last_error AS b_last_error, \
         b.action_url AS b_action_url, b.after_steps AS b_after_steps, b.action_status AS b_action_status, \
         b.action_attempts AS b_action_attempts, b.action_error AS b_action_error, b.destination AS b_destination"
    };
}
pub(crate) use {branch_cols, branch_cols_b, tx_cols};

/// A `global_transactions` row.
#[derive(Debug, Clone)]
pub struct TxRow {
    /// Global transaction id.
    pub xid: Xid,
    /// Mode.
    pub mode: Mode,
    /// Optional name.
    pub name: Option<String>,
    /// Status.
    pub status: GlobalStatus,
    /// Why it rolled back.
    pub rollback_reason: Option<RollbackReason>,
    /// Timeout in ms.
    pub timeout_ms: u64,
    /// Creation time (database clock).
    pub created_at: DateTime<Utc>,
    /// Deadline (database clock).
    pub deadline: DateTime<Utc>,
    /// Decision time.
    pub decided_at: Option<DateTime<Utc>>,
    /// Phase-2 end.
    pub finished_at: Option<DateTime<Utc>>,
    /// Lease holder.
    pub owner: Option<String>,
    /// Phase-2 passes that ended unknown.
    pub attempts: u32,
    /// Optimistic-concurrency version (bumped by registrations and reports).
    pub version: i32,
    /// Branches registered so far.
    pub branch_count: u32,
    /// `deadline <= now()` when the row was read.
    pub expired: bool,
    /// Phase timeouts of a `3pc` transaction.
    pub three_phase: Option<ThreePhaseTimeouts>,
    /// Saga: transient failures of one action retried before it counts as failed.
    pub retry_limit: Option<u32>,
    /// Message: the producer's back-check endpoint.
    pub check_url: Option<String>,
    /// Message: its deliveries' order.
    pub delivery_order: Option<DeliveryOrder>,
    /// Begun through DTM's protocol: its options, and its branches are
    /// called the way DTM calls them (`None`: Tandem's own callbacks).
    pub dtm: Option<DtmOptions>,
}

/// A `branches` row.
#[derive(Debug, Clone)]
pub struct BranchRow {
    /// Branch id.
    pub branch_id: BranchId,
    /// Owning transaction.
    pub xid: Xid,
    /// Registration order.
    pub seq: i64,
    /// Resource name.
    pub resource: String,
    /// Callback URL.
    pub callback_url: String,
    /// Status.
    pub status: BranchStatus,
    /// Registered payload.
    pub payload: Option<serde_json::Value>,
    /// Global lock keys.
    pub lock_keys: Vec<String>,
    /// Callback attempts.
    pub attempts: u32,
    /// Last callback error.
    pub last_error: Option<String>,
    /// Saga: the step's action URL (`None`: run by the client, step by step).
    pub action_url: Option<String>,
    /// Saga: indexes of the steps it runs after (`None`: registered step by
    /// step, after the step registered before it).
    pub after_steps: Option<Vec<i32>>,
    /// Saga: the action's status (`None`: run by the client).
    pub action_status: Option<ActionStatus>,
    /// Saga: action calls made.
    pub action_attempts: u32,
    /// Saga: the last action call's error.
    pub action_error: Option<String>,
    /// Message: the broker destination of this delivery (`None`: an HTTP
    /// delivery to `callback_url`).
    pub destination: Option<String>,
}

fn decode_err(col: &str, e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: col.to_owned(), source: Box::new(e) }
}

/// A non-negative integer column, refused loudly if the database holds
/// something the type cannot (a bug or a hand edit), never defaulted.
fn unsigned<T, U>(row: &PgRow, col: &str) -> Result<U, sqlx::Error>
where
    T: for<'a> sqlx::Decode<'a, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    U: TryFrom<T>,
    <U as TryFrom<T>>::Error: std::error::Error + Send + Sync + 'static,
{
    let v: T = row.try_get(col)?;
    U::try_from(v).map_err(|e| decode_err(col, e))
}

pub(super) fn parsed<T>(row: &PgRow, col: &str) -> Result<T, sqlx::Error>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = row.try_get(col)?;
    s.parse().map_err(|e| decode_err(col, e))
}

pub(super) fn parsed_opt<T>(row: &PgRow, col: &str) -> Result<Option<T>, sqlx::Error>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| s.parse().map_err(|e| decode_err(col, e))).transpose()
}

impl<'r> FromRow<'r, PgRow> for TxRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(TxRow {
            xid: parsed(row, "xid")?,
            mode: parsed(row, "mode")?,
            name: row.try_get("name")?,
            status: parsed(row, "status")?,
            rollback_reason: parsed_opt(row, "rollback_reason")?,
            timeout_ms: unsigned::<i64, u64>(row, "timeout_ms")?,
            created_at: row.try_get("created_at")?,
            deadline: row.try_get("deadline")?,
            decided_at: row.try_get("decided_at")?,
            finished_at: row.try_get("finished_at")?,
            owner: row.try_get("owner")?,
            attempts: unsigned::<i32, u32>(row, "attempts")?,
            version: row.try_get("version")?,
            branch_count: unsigned::<i32, u32>(row, "branch_count")?,
            expired: row.try_get("expired")?,
            three_phase: three_phase_timeouts(row)?,
            retry_limit: row
                .try_get::<Option<i32>, _>("retry_limit")?
                .map(u32::try_from)
                .transpose()
                .map_err(|e| decode_err("retry_limit", e))?,
            check_url: row.try_get("check_url")?,
            delivery_order: parsed_opt(row, "delivery_order")?,
            dtm: row.try_get::<Option<sqlx::types::Json<DtmOptions>>, _>("dtm")?.map(|j| j.0),
        })
    }
}

/// The phase timeouts of a `3pc` row: all three, or none for other modes;
/// anything else is a row this coordinator did not write.
fn three_phase_timeouts(row: &PgRow) -> Result<Option<ThreePhaseTimeouts>, sqlx::Error> {
    let col = |name: &str| -> Result<Option<u64>, sqlx::Error> {
        row.try_get::<Option<i64>, _>(name)?.map(|v| u64::try_from(v).map_err(|e| decode_err(name, e))).transpose()
    };
    let mode: Mode = parsed(row, "mode")?;
    match (mode, col("can_commit_timeout_ms")?, col("pre_commit_timeout_ms")?, col("do_commit_timeout_ms")?) {
        (Mode::ThreePc, Some(can), Some(pre), Some(done)) => Ok(Some(ThreePhaseTimeouts {
            can_commit_timeout_ms: can,
            pre_commit_timeout_ms: pre,
            do_commit_timeout_ms: done,
        })),
        (_, None, None, None) if mode != Mode::ThreePc => Ok(None),
        _ => Err(decode_err("can_commit_timeout_ms", MissingTimeouts)),
    }
}

/// A `3pc` row without all three phase timeouts, or another mode's row with some.
#[derive(Debug, thiserror::Error)]
#[error("phase timeouts must be set for every 3pc transaction and for no other")]
struct MissingTimeouts;

impl<'r> FromRow<'r, PgRow> for BranchRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        BranchRow::from_prefixed(row, "")
    }
}

impl BranchRow {
    /// Reads a branch whose columns carry `prefix` (joined reads use `b_`).
    pub(super) fn from_prefixed(row: &PgRow, prefix: &str) -> Result<BranchRow, sqlx::Error> {
        let c = |name: &str| format!("{prefix}{name}");
        Ok(BranchRow {
            branch_id: parsed(row, &c("branch_id"))?,
            xid: parsed(row, &c("xid"))?,
            seq: row.try_get(c("seq").as_str())?,
            resource: row.try_get(c("resource").as_str())?,
            callback_url: row.try_get(c("callback_url").as_str())?,
            status: parsed(row, &c("status"))?,
            payload: row.try_get(c("payload").as_str())?,
            lock_keys: row.try_get(c("lock_keys").as_str())?,
            attempts: unsigned::<i32, u32>(row, &c("attempts"))?,
            last_error: row.try_get(c("last_error").as_str())?,
            action_url: row.try_get(c("action_url").as_str())?,
            after_steps: row.try_get(c("after_steps").as_str())?,
            action_status: parsed_opt(row, &c("action_status"))?,
            action_attempts: unsigned::<i32, u32>(row, &c("action_attempts"))?,
            action_error: row.try_get(c("action_error").as_str())?,
            destination: row.try_get(c("destination").as_str())?,
        })
    }
}

/// A branch with its transaction's mode, which its wire form depends on
/// (statements that return one branch select the mode with it).
#[derive(Debug, Clone)]
pub struct BranchWithMode {
    /// The transaction's mode.
    pub mode: Mode,
    /// The branch.
    pub row: BranchRow,
}

impl<'r> FromRow<'r, PgRow> for BranchWithMode {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(BranchWithMode { mode: parsed(row, "tx_mode")?, row: BranchRow::from_prefixed(row, "")? })
    }
}

impl BranchWithMode {
    /// The wire form.
    pub fn to_wire(&self) -> Branch {
        self.row.to_wire(self.mode)
    }
}

/// Whether a branch of a `mode` transaction holds global locks now: the
/// mode takes them, the branch named keys, and its phase 2 has not released
/// them. The one place the API's `global_locks` comes from.
pub fn holds_global_locks(mode: Mode, branch: &BranchRow) -> bool {
    let locking = modes::protocol(mode).map(|p| p.locking()).unwrap_or(Locking::None);
    locking == Locking::RowLocks && !branch.lock_keys.is_empty() && !statuses::RELEASING.contains(&branch.status)
}

impl BranchRow {
    /// The wire form, for a branch of a `mode` transaction.
    pub fn to_wire(&self, mode: Mode) -> Branch {
        Branch {
            branch_id: self.branch_id.clone(),
            resource: self.resource.clone(),
            callback_url: self.callback_url.clone(),
            status: self.status,
            payload: self.payload.clone(),
            lock_keys: self.lock_keys.clone(),
            global_locks: Some(holds_global_locks(mode, self)),
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            saga: (mode == Mode::Saga).then(|| self.saga_step()),
            destination: self.destination.clone(),
        }
    }

    /// What a saga branch shows of its step.
    fn saga_step(&self) -> SagaStep {
        let compensation = match self.status {
            BranchStatus::RolledBack => CompensationStatus::Compensated,
            BranchStatus::RollbackFailed => CompensationStatus::Failed,
            BranchStatus::Skipped => CompensationStatus::Skipped,
            _ => CompensationStatus::NotRun,
        };
        SagaStep {
            action_url: self.action_url.clone(),
            after: self.after_steps.iter().flatten().filter_map(|&i| u32::try_from(i).ok()).collect(),
            action: ActionSide {
                status: self.action_status.unwrap_or(ActionStatus::Succeeded),
                attempts: self.action_attempts,
                last_error: self.action_error.clone(),
            },
            compensation: CompensationSide {
                status: compensation,
                attempts: self.attempts,
                last_error: self.last_error.clone(),
            },
        }
    }
}

impl TxRow {
    /// The wire form, with `branches` in registration order.
    pub fn to_wire(&self, branches: &[BranchRow]) -> Transaction {
        Transaction {
            xid: self.xid.clone(),
            mode: self.mode,
            name: self.name.clone(),
            status: self.status,
            rollback_reason: self.rollback_reason,
            timeout_ms: self.timeout_ms,
            created_at: self.created_at,
            deadline: self.deadline,
            decided_at: self.decided_at,
            finished_at: self.finished_at,
            three_phase: self.three_phase,
            message: self.check_url.as_ref().map(|check_url| MessageInfo {
                check_url: check_url.clone(),
                order: self.delivery_order.unwrap_or_default(),
                checks: self.attempts,
            }),
            branches: branches.iter().map(|b| b.to_wire(self.mode)).collect(),
        }
    }
}
