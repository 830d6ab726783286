//! The resource's side of a lock: fencing-token checks on PostgreSQL.
//!
//! A lock alone cannot stop a holder that paused past its lease (a GC
//! pause, SIGSTOP, a slow disk) from writing after someone else was
//! granted the lock. The resource can: every write carries the writer's
//! [`FencingToken`], and the resource refuses a token lower than the
//! highest it has accepted. Do the check in the same database transaction
//! as the write, so that either both commit or neither does.
//!
//! Two forms:
//!
//! - [`Fence`]: a table of its own (`tandem_lock_fence`, one row per
//!   protected resource): `fence.check(&mut tx, "account:42", token)`
//!   before the writes of the transaction. Concurrent writers serialize on
//!   the fence row, so a lower token that reaches it later is refused.
//! - A guarded UPDATE on the business row itself, when the row can carry a
//!   `fence_token bigint NOT NULL DEFAULT 0` column: `UPDATE accounts SET
//!   balance = $2, fence_token = $3 WHERE id = $1 AND fence_token <= $3`;
//!   zero rows updated means a newer holder has written ([`bind_value`]
//!   gives the token as the `bigint` to bind).

use super::FencingToken;
use sqlx::{PgConnection, PgPool, Row};

/// The highest token a resource accepted, and what a write with another
/// was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceCheck {
    /// The token is at least the highest seen: the write may proceed (the
    /// token is now the highest seen).
    Accepted,
    /// A newer holder has written with `seen`: this writer's lock is gone;
    /// roll back.
    Stale {
        /// The highest token accepted so far.
        seen: FencingToken,
    },
}

/// Errors of the fence.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The database failed.
    #[error("fence check failed: {0}")]
    Database(#[from] sqlx::Error),
    /// A token beyond what PostgreSQL's `bigint` holds.
    #[error("fencing token {0} is out of range")]
    OutOfRange(FencingToken),
}

/// The fence table on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct Fence {
    pool: PgPool,
}

fn bigint(token: FencingToken) -> Result<i64, FenceError> {
    i64::try_from(token.0).map_err(|_| FenceError::OutOfRange(token))
}

impl Fence {
    /// The fence of `pool`'s database.
    pub fn new(pool: PgPool) -> Fence {
        Fence { pool }
    }

    /// Creates `tandem_lock_fence` if it is missing
    /// (`participant-sdk/migrations/postgres/…_tandem_lock_fence.sql`).
    pub async fn install(&self) -> Result<(), FenceError> {
        crate::migrations::install_postgres(&self.pool, crate::migrations::LOCK_FENCE).await?;
        Ok(())
    }

    /// Checks `token` for `resource` inside the caller's transaction and,
    /// if it is at least the highest seen, records it: the caller's writes
    /// that follow in the same transaction are fenced. On
    /// [`FenceCheck::Stale`] nothing was written; roll back.
    pub async fn check(
        &self,
        conn: &mut PgConnection,
        resource: &str,
        token: FencingToken,
    ) -> Result<FenceCheck, FenceError> {
        let t = bigint(token)?;
        // The upsert locks the resource's row: a concurrent writer with a
        // lower token waits, then sees the higher one and is refused.
        let accepted = sqlx::query(
            "INSERT INTO tandem_lock_fence AS f (resource, token) VALUES ($1, $2) \
             ON CONFLICT (resource) DO UPDATE SET token = excluded.token, updated_at = now() \
             WHERE f.token <= excluded.token RETURNING token",
        )
        .bind(resource)
        .bind(t)
        .fetch_optional(&mut *conn)
        .await?;
        if accepted.is_some() {
            return Ok(FenceCheck::Accepted);
        }
        let seen: i64 = sqlx::query("SELECT token FROM tandem_lock_fence WHERE resource = $1")
            .bind(resource)
            .fetch_one(&mut *conn)
            .await?
            .try_get("token")?;
        Ok(FenceCheck::Stale { seen: FencingToken(u64::try_from(seen).unwrap_or(0)) })
    }

    /// The highest token accepted for `resource`, if any.
    pub async fn highest(&self, resource: &str) -> Result<Option<FencingToken>, FenceError> {
        let t: Option<i64> = sqlx::query_scalar("SELECT token FROM tandem_lock_fence WHERE resource = $1")
            .bind(resource)
            .fetch_optional(&self.pool)
            .await?;
        Ok(t.map(|t| FencingToken(u64::try_from(t).unwrap_or(0))))
    }
}

/// The token as PostgreSQL's `bigint`, for binding in a guarded UPDATE.
pub fn bind_value(token: FencingToken) -> Result<i64, FenceError> {
    bigint(token)
}
