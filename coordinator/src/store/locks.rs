//! Statements on `global_locks` (AT mode).
//!
//! A lock is a row whose primary key is `resource^^^lock_key`; whoever inserts
//! it holds it. Locks are taken in the same database transaction as the
//! branch row, so a branch exists exactly when its locks do, and are released
//! by the phase-2 bookkeeping statements (`finish_many`, `schedule_retry`)
//! when the branch completes.

use super::rows::{parsed, parsed_opt};
use super::transactions::{insert_branches_on, NewBranch};
use super::{BranchRow, Store, StoreError};
use sqlx::Row;
use tandem_wire::{GlobalStatus, LockHolder, Xid};

/// Outcome of registering a branch together with its global locks.
#[derive(Debug, Clone)]
pub enum LockedRegistration {
    /// Branch inserted and every lock granted, durably.
    Registered(BranchRow),
    /// The transaction is not active (or past its deadline); nothing written.
    NotActive,
    /// Another transaction holds one of the keys; nothing written.
    Conflict(LockHolder),
}

/// The lock table's key for `lock_key` of `resource`.
fn row_key(resource: &str, lock_key: &str) -> String {
    format!("{resource}^^^{lock_key}")
}

/// How often a registration retries when the holder it lost to vanished
/// before it could be named (it released in between).
const VANISHED_HOLDER_RETRIES: usize = 3;

impl Store {
    /// Registers `b` on `xid` and takes its `lock_keys`, atomically: either the
    /// branch row and all its locks commit together (durably), or nothing does.
    ///
    /// Keys are inserted in sorted order, so two registrations that want
    /// overlapping keys wait for each other in one direction only (no
    /// deadlock). Locks already held by the same transaction are granted again.
    pub async fn insert_branch_with_locks(&self, xid: &Xid, b: &NewBranch) -> Result<LockedRegistration, StoreError> {
        let mut keys: Vec<&str> = b.lock_keys.iter().map(String::as_str).collect();
        keys.sort_unstable();
        keys.dedup();
        let row_keys: Vec<String> = keys.iter().map(|k| row_key(&b.resource, k)).collect();
        for _ in 0..VANISHED_HOLDER_RETRIES {
            let mut db = self.durable.begin().await?;
            let item = [(xid.clone(), b.clone())];
            let Some(Some(branch)) = insert_branches_on(&mut *db, &self.metrics, &item).await?.pop() else {
                db.rollback().await?;
                return Ok(LockedRegistration::NotActive);
            };
            let granted: i64 = self
                .timed(
                    "take_locks",
                    sqlx::query_scalar(
                        // DO UPDATE (a no-op) instead of DO NOTHING so that a key this
                        // transaction already holds counts as granted.
                        "WITH ins AS (INSERT INTO global_locks (row_key, xid, branch_id, resource, lock_key) \
                                      SELECT k.row_key, $1, $2, $3, k.lock_key \
                                      FROM unnest($4::text[], $5::text[]) AS k(row_key, lock_key) \
                                      ON CONFLICT (row_key) DO UPDATE SET xid = global_locks.xid \
                                      WHERE global_locks.xid = EXCLUDED.xid RETURNING 1) \
                         SELECT count(*) FROM ins",
                    )
                    .bind(xid.as_str())
                    .bind(branch.branch_id.as_str())
                    .bind(&b.resource)
                    .bind(&row_keys)
                    .bind(&keys)
                    .fetch_one(&mut *db),
                )
                .await?;
            if granted as usize == keys.len() {
                db.commit().await?;
                return Ok(LockedRegistration::Registered(branch));
            }
            let holder = self.holder_on(&mut *db, &row_keys, Some(xid)).await?;
            db.rollback().await?;
            if let Some(holder) = holder {
                return Ok(LockedRegistration::Conflict(holder));
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
