//! Statements on `global_locks` (AT mode).
//!
//! A lock is a row whose primary key is made of the resource and the lock
//! key ([`row_key`]); whoever inserts it holds it. Locks are taken in the same database transaction as the
//! branch row, so a branch exists exactly when its locks do, and are released
//! by the phase-2 bookkeeping statements (`finish_many`, `schedule_retry`)
//! when the branch completes.

use super::registration::NewBranch;
use super::rows::{branch_cols, parsed, parsed_opt, BranchWithMode};
use super::{Store, StoreError};
use crate::modes::{self, Locking};
use sqlx::Row;
use std::sync::LazyLock;
use tandem_wire::{BranchStatus, GlobalStatus, LockHolder, Xid};

/// Modes whose branches take their lock keys, as bound into the statement.
static LOCKING_MODES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| modes::modes_where(|p| p.locking() == Locking::RowLocks));

/// Outcome of registering a branch together with its global locks.
#[derive(Debug, Clone)]
pub enum LockedRegistration {
    /// Branch inserted and every lock granted (in a locking mode), durably.
    Registered(Box<BranchWithMode>),
    /// The transaction is not active (or past its deadline); nothing written.
    NotActive,
    /// Another transaction holds one of the keys; nothing written.
    Conflict(LockHolder),
}

/// The lock table's key for `lock_key` of `resource`: the resource's length
/// in bytes first, so that distinct pairs never share a key (migration 4
/// rewrote older keys to this form).
fn row_key(resource: &str, lock_key: &str) -> String {
    format!("{}:{resource}{lock_key}", resource.len())
}

/// How often a registration retries when the holder it lost to vanished
/// before it could be named (it released in between).
const VANISHED_HOLDER_RETRIES: usize = 3;

impl Store {
    /// Registers `b` on `xid` and, if the transaction is in a locking mode
    /// (AT), takes its `lock_keys`, atomically and in one durable statement:
    /// either the branch row and all its locks commit together, or nothing does
    /// (`tandem_take_locks` raises SQLSTATE TD409 on a conflict).
    ///
    /// Keys are inserted in sorted order, so two registrations that want
    /// overlapping keys wait for each other in one direction only (no
    /// deadlock). Locks already held by the same transaction are granted again.
    pub async fn insert_branch_locking(&self, xid: &Xid, b: &NewBranch) -> Result<LockedRegistration, StoreError> {
        let mut keys: Vec<&str> = b.lock_keys.iter().map(String::as_str).collect();
        keys.sort_unstable();
        keys.dedup();
        let row_keys: Vec<String> = keys.iter().map(|k| row_key(&b.resource, k)).collect();
        for _ in 0..VANISHED_HOLDER_RETRIES {
            let r = self
                .timed(
                    "insert_branch_locking",
                    sqlx::query_as::<_, BranchWithMode>(concat!(
                        "WITH t AS (UPDATE global_transactions SET version = version + 1, \
                                    branch_count = branch_count + 1, branches_unprepared = branches_unprepared + 1 \
                                    WHERE xid = $1 AND status = $8 AND deadline > now() \
                                    AND branch_count < $11 RETURNING xid, mode), \
                              ins AS (INSERT INTO branches (branch_id, xid, resource, callback_url, status, payload, lock_keys) \
                                      SELECT $2, t.xid, $3, $4, $9, $5, $7 FROM t RETURNING ",
                        branch_cols!(),
                        ") SELECT ins.*, t.mode AS tx_mode, CASE WHEN t.mode = ANY($10) \
                                  THEN tandem_take_locks(ins.xid, ins.branch_id, ins.resource, $6, $7) END AS locked \
                         FROM ins, t"
                    ))
                    .bind(xid.as_str())
                    .bind(b.branch_id.as_str())
                    .bind(&b.resource)
                    .bind(&b.callback_url)
                    .bind(&b.payload)
                    .bind(&row_keys)
                    .bind(&keys)
                    .bind(GlobalStatus::Active.as_str())
                    .bind(BranchStatus::Registered.as_str())
                    .bind(&*LOCKING_MODES)
                    .bind(self.max_branches)
                    .fetch_optional(&self.durable),
                )
                .await;
            match r {
                Ok(Some(branch)) => return Ok(LockedRegistration::Registered(Box::new(branch))),
                Ok(None) => return Ok(LockedRegistration::NotActive),
                Err(StoreError::LockConflict) => {
                    let mut conn = self.relaxed.acquire().await?;
                    if let Some(holder) = self.holder_on(&mut *conn, &row_keys, Some(xid)).await? {
                        return Ok(LockedRegistration::Conflict(holder));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Contended)
    }

    /// One holder, other than `xid`, of any of `lock_keys` of `resource`.
    pub async fn lock_holder(
        &self,
        resource: &str,
        lock_keys: &[String],
        xid: Option<&Xid>,
    ) -> Result<Option<LockHolder>, StoreError> {
        let row_keys: Vec<String> = lock_keys.iter().map(|k| row_key(resource, k)).collect();
        let mut conn = self.relaxed.acquire().await?;
        self.holder_on(&mut *conn, &row_keys, xid).await
    }

    async fn holder_on<'c>(
        &self,
        db: impl sqlx::PgExecutor<'c>,
        row_keys: &[String],
        xid: Option<&Xid>,
    ) -> Result<Option<LockHolder>, StoreError> {
        let row = self
            .timed(
                "lock_holder",
                sqlx::query(
                    "SELECT l.lock_key, l.xid, l.branch_id, g.status FROM global_locks l \
                     LEFT JOIN global_transactions g ON g.xid = l.xid \
                     WHERE l.row_key = ANY($1) AND l.xid IS DISTINCT FROM $2 LIMIT 1",
                )
                .bind(row_keys)
                .bind(xid.map(Xid::as_str))
                .fetch_optional(db),
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(LockHolder {
            lock_key: row.try_get("lock_key")?,
            xid: parsed(&row, "xid")?,
            branch_id: parsed(&row, "branch_id")?,
            // A lock whose transaction row is gone is an orphan; report it as active.
            status: parsed_opt(&row, "status")?.unwrap_or(GlobalStatus::Active),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::row_key;

    #[test]
    fn row_keys_are_injective() {
        assert_ne!(row_key("a^^^b", "c"), row_key("a", "b^^^c"));
        assert_ne!(row_key("ab", "c"), row_key("a", "bc"));
        assert_ne!(row_key("1:a", "b"), row_key("1", ":ab"));
        assert_eq!(row_key("inventory", "public.stock:1"), "9:inventorypublic.stock:1");
    }
}
