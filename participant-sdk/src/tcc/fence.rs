//! The TCC fence: every SQL statement on `tandem_tcc_fence`, run inside the
//! participant's local transaction together with the business step. The
//! table is [`crate::migrations::TCC_FENCE`].

use sqlx::PgConnection;
use tandem_wire::{BranchId, Xid};

/// Fence status of a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceStatus {
    /// Try committed.
    Tried,
    /// Confirm committed.
    Committed,
    /// Cancel undid a Try.
    RolledBack,
    /// Cancel came first (empty rollback); a later Try is refused.
    Suspended,
}

impl FenceStatus {
    fn as_str(self) -> &'static str {
        match self {
            FenceStatus::Tried => "tried",
            FenceStatus::Committed => "committed",
            FenceStatus::RolledBack => "rolled_back",
            FenceStatus::Suspended => "suspended",
        }
    }

    fn parse(s: &str) -> Option<FenceStatus> {
        Some(match s {
            "tried" => FenceStatus::Tried,
            "committed" => FenceStatus::Committed,
            "rolled_back" => FenceStatus::RolledBack,
            "suspended" => FenceStatus::Suspended,
            _ => return None,
        })
    }
}

/// Inserts the branch's row with `status` unless one exists. `true` if inserted.
/// A concurrent insert of the same key waits for the other transaction and then
/// does nothing, which is what orders a racing Try and Cancel.
pub async fn insert(
    db: &mut PgConnection,
    xid: &Xid,
    branch: &BranchId,
    resource: &str,
    status: FenceStatus,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO tandem_tcc_fence (xid, branch_id, resource, status) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (xid, branch_id) DO NOTHING",
    )
    .bind(xid.as_str())
    .bind(branch.as_str())
    .bind(resource)
    .bind(status.as_str())
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Locks and reads the branch's row.
pub async fn lock(db: &mut PgConnection, xid: &Xid, branch: &BranchId) -> Result<Option<FenceStatus>, sqlx::Error> {
    let s: Option<String> =
        sqlx::query_scalar("SELECT status FROM tandem_tcc_fence WHERE xid = $1 AND branch_id = $2 FOR UPDATE")
            .bind(xid.as_str())
            .bind(branch.as_str())
            .fetch_optional(db)
            .await?;
    match s {
        None => Ok(None),
        Some(s) => FenceStatus::parse(&s).map(Some).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown fence status {s:?}").into(),
        }),
    }
}

/// Moves the branch's row to `status`.
pub async fn set(db: &mut PgConnection, xid: &Xid, branch: &BranchId, status: FenceStatus) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tandem_tcc_fence SET status = $3, updated_at = now() WHERE xid = $1 AND branch_id = $2")
        .bind(xid.as_str())
        .bind(branch.as_str())
        .bind(status.as_str())
        .execute(db)
        .await?;
    Ok(())
}

/// Deletes finished fence rows not touched for `older_than`. Keep it far above
/// the longest transaction timeout: a deleted `suspended` row no longer
/// refuses a late Try.
pub async fn purge(pool: &sqlx::PgPool, older_than: std::time::Duration) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM tandem_tcc_fence WHERE status IN ('committed', 'rolled_back', 'suspended') \
         AND updated_at < now() - $1 * interval '1 millisecond'",
    )
    .bind(older_than.as_secs_f64() * 1000.0)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}
