//! PostgreSQL prepared transactions (`PREPARE TRANSACTION`).

use super::{Gid, XaBackend, XaError, GID_PREFIX};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgConnection, PgPool, Postgres};
use tandem_wire::{CallbackAction, CallbackOutcome};

/// The PostgreSQL backend. Don't use sqlx's `Transaction` guard for a branch:
/// its commit or drop would send COMMIT/ROLLBACK; BEGIN and PREPARE are
/// issued here on a plain pooled connection, as argument-less statements
/// (the simple query protocol: the gid is a literal, see [`Gid`]).
#[derive(Debug, Clone)]
pub struct PgXa {
    /// The participant's database.
    pool: PgPool,
}

impl PgXa {
    /// Wraps a pool.
    pub fn new(pool: PgPool) -> PgXa {
        PgXa { pool }
    }
}

/// Whether the server can prepare transactions (`max_prepared_transactions > 0`).
pub(crate) async fn prepared_transactions_enabled(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let n: String = sqlx::query_scalar("SHOW max_prepared_transactions").fetch_one(pool).await?;
    Ok(n.trim() != "0")
}

/// SQLSTATE 42704: no prepared transaction with that gid.
fn is_unknown_gid(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42704"))
}

#[async_trait]
impl XaBackend for PgXa {
    type Conn = PgConnection;
    type Pooled = PoolConnection<Postgres>;

    async fn check(&self) -> Result<(), XaError> {
        if !prepared_transactions_enabled(&self.pool).await? {
            return Err(XaError::Unavailable(
                "PostgreSQL has max_prepared_transactions = 0, so XA branches cannot be prepared: \
                 set max_prepared_transactions (for example to 64) in postgresql.conf and restart the server",
            ));
        }
        Ok(())
    }

    async fn begin(&self, _gid: &Gid) -> Result<Self::Pooled, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        (&mut *conn).execute("BEGIN").await?;
        Ok(conn)
    }

    async fn abort(&self, mut conn: Self::Pooled, _gid: &Gid) {
        if (&mut *conn).execute("ROLLBACK").await.is_err() {
            // Unknown state: never hand this connection back to the pool.
            conn.detach();
        }
    }

    async fn prepare(&self, mut conn: Self::Pooled, gid: &Gid) -> Result<bool, sqlx::Error> {
        if let Err(e) = (&mut *conn).execute(gid.statement("PREPARE TRANSACTION").as_str()).await {
            conn.detach();
            return Err(e);
        }
        // Inside an aborted block PREPARE answers ROLLBACK and no error: check.
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = $1)")
            .bind(gid.as_postgres())
            .fetch_one(&mut *conn)
            .await
    }

    async fn finish(&self, gid: &Gid, action: CallbackAction) -> Result<CallbackOutcome, sqlx::Error> {
        let verb = match action {
            CallbackAction::Commit => "COMMIT PREPARED",
            // Only commit and rollback reach here (`XaParticipant::handle_callback`).
            _ => "ROLLBACK PREPARED",
        };
        match self.pool.execute(gid.statement(verb).as_str()).await {
            Ok(_) => Ok(CallbackOutcome::Applied),
            Err(e) if is_unknown_gid(&e) => Ok(CallbackOutcome::AlreadyDone),
            Err(e) => Err(e),
        }
    }

    async fn prepared(&self) -> Result<Vec<(Gid, Option<DateTime<Utc>>)>, sqlx::Error> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT gid, prepared FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1)",
        )
        .bind(GID_PREFIX)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(|(g, at)| Gid::parse_postgres(&g).ok().map(|g| (g, Some(at)))).collect())
    }
}
