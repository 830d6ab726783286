//! What authentication keeps in the database: who began a transaction, and
//! the console's sessions.

use super::{Store, StoreError};
use chrono::{DateTime, Utc};
use sqlx::Row;

impl Store {
    /// Whether `xid` exists and was begun by `name` (a client's access to
    /// its own transactions). `false` for an unknown xid too.
    pub async fn began_by(&self, xid: &str, name: &str) -> Result<bool, StoreError> {
        let row = self
            .timed(
                "began_by",
                sqlx::query("SELECT began_by IS NOT DISTINCT FROM $2 AS mine FROM global_transactions WHERE xid = $1")
                    .bind(xid)
                    .bind(name)
                    .fetch_optional(&self.durable),
            )
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<bool, _>("mine")?,
            None => false,
        })
    }

    /// Stores a console session (its id's hash) for `name` until `expires_at`.
    pub async fn insert_session(
        &self,
        id_hash: &[u8],
        name: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.timed(
            "insert_session",
            sqlx::query("INSERT INTO console_sessions (id_hash, name, expires_at) VALUES ($1, $2, $3)")
                .bind(id_hash)
                .bind(name)
                .bind(expires_at)
                .execute(&self.durable),
        )
        .await?;
        Ok(())
    }

    /// The name of the unexpired session whose id hashes to `id_hash`.
    pub async fn session(&self, id_hash: &[u8]) -> Result<Option<String>, StoreError> {
        let row = self
            .timed(
                "session",
                sqlx::query("SELECT name FROM console_sessions WHERE id_hash = $1 AND expires_at > now()")
                    .bind(id_hash)
                    .fetch_optional(&self.durable),
            )
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<String, _>("name")?),
            None => None,
        })
    }

    /// Ends a session (logout); and removes every expired one.
    pub async fn delete_session(&self, id_hash: &[u8]) -> Result<(), StoreError> {
        self.timed(
            "delete_session",
            sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1 OR expires_at <= now()")
                .bind(id_hash)
                .execute(&self.durable),
        )
        .await?;
        Ok(())
    }
}
