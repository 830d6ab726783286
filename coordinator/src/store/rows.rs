//! Row types and their conversion to wire types.

use crate::transaction::mode::takes_global_locks;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use std::str::FromStr;
use tandem_wire::{
    Branch, BranchId, BranchStatus, GlobalStatus, Mode, RollbackReason, ThreePhaseTimeouts, Transaction, Xid,
};

/// Column list of [`TxRow`], for `concat!` into statements.
macro_rules! tx_cols {
    () => {
        "xid, mode, name, status, rollback_reason, timeout_ms, created_at, deadline, decided_at, \
         finished_at, owner, attempts, version, branch_count, (deadline <= now()) AS expired, \
         can_commit_timeout_ms, pre_commit_timeout_ms, do_commit_timeout_ms"
    };
}
/// Column list of [`BranchRow`].
macro_rules! branch_cols {
    () => {
        "branch_id, xid, seq, resource, callback_url, status, payload, lock_keys, attempts, last_error"
    };
}
/// [`branch_cols`] from alias `b`, prefixed `b_` (for joins with the transaction).
macro_rules! branch_cols_b {
    () => {
        "b.branch_id AS b_branch_id, b.xid AS b_xid, b.seq AS b_seq, b.resource AS b_resource, \
         b.callback_url AS b_callback_url, b.status AS b_status, b.payload AS b_payload, \
         b.lock_keys AS b_lock_keys, b.attempts AS b_attempts, b.last_error AS b_last_error"
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
    pub timeout_ms: i64,
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
    pub attempts: i32,
    /// Optimistic-concurrency version (bumped by registrations and reports).
    pub version: i32,
    /// Branches registered so far.
    pub branch_count: i32,
    /// `deadline <= now()` when the row was read.
    pub expired: bool,
    /// Phase timeouts of a `3pc` transaction.
    pub three_phase: Option<ThreePhaseTimeouts>,
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
    pub attempts: i32,
    /// Last callback error.
    pub last_error: Option<String>,
    /// Whether the lock keys were taken as global locks, where the statement
    /// that read the row says so (registration with lock keys); else unknown.
    pub locked: Option<bool>,
}

fn decode_err(col: &str, e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: col.to_owned(), source: Box::new(e) }
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
            timeout_ms: row.try_get("timeout_ms")?,
            created_at: row.try_get("created_at")?,
            deadline: row.try_get("deadline")?,
            decided_at: row.try_get("decided_at")?,
            finished_at: row.try_get("finished_at")?,
            owner: row.try_get("owner")?,
            attempts: row.try_get("attempts")?,
            version: row.try_get("version")?,
            branch_count: row.try_get("branch_count")?,
            expired: row.try_get("expired")?,
            three_phase: match (
                row.try_get::<Option<i64>, _>("can_commit_timeout_ms")?,
                row.try_get::<Option<i64>, _>("pre_commit_timeout_ms")?,
                row.try_get::<Option<i64>, _>("do_commit_timeout_ms")?,
            ) {
                (Some(c), Some(p), Some(d)) => Some(ThreePhaseTimeouts {
                    can_commit_timeout_ms: u64::try_from(c).unwrap_or(0),
                    pre_commit_timeout_ms: u64::try_from(p).unwrap_or(0),
                    do_commit_timeout_ms: u64::try_from(d).unwrap_or(0),
                }),
                _ => None,
            },
        })
    }
}

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
            attempts: row.try_get(c("attempts").as_str())?,
            last_error: row.try_get(c("last_error").as_str())?,
            // Only the locking registration returns `locked` (an int, NULL when no lock was taken).
            locked: match row.try_get::<Option<i32>, _>(c("locked").as_str()) {
                Ok(v) => Some(v.is_some()),
                Err(sqlx::Error::ColumnNotFound(_)) => None,
                Err(e) => return Err(e),
            },
        })
    }
}

impl BranchRow {
    /// The wire form.
    pub fn to_wire(&self) -> Branch {
        Branch {
            branch_id: self.branch_id.clone(),
            resource: self.resource.clone(),
            callback_url: self.callback_url.clone(),
            status: self.status,
            payload: self.payload.clone(),
            lock_keys: self.lock_keys.clone(),
            global_locks: self.locked,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            last_error: self.last_error.clone(),
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
            timeout_ms: u64::try_from(self.timeout_ms).unwrap_or(0),
            created_at: self.created_at,
            deadline: self.deadline,
            decided_at: self.decided_at,
            finished_at: self.finished_at,
            three_phase: self.three_phase,
            branches: branches
                .iter()
                .map(|b| {
                    let mut w = b.to_wire();
                    let held = !matches!(b.status, BranchStatus::Committed | BranchStatus::RolledBack);
                    w.global_locks = Some(takes_global_locks(self.mode) && !b.lock_keys.is_empty() && held);
                    w
                })
                .collect(),
        }
    }
}
