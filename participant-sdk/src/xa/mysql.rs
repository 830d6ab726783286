//! MySQL / MariaDB XA (`XA START / END / PREPARE / COMMIT / ROLLBACK`,
//! `XA RECOVER`), always through the plain text protocol (a statement without
//! arguments goes as COM_QUERY): XA statements cannot be server-side prepared.
//! MariaDB 10.5+ and MySQL 5.7+ keep prepared branches across disconnects and
//! restarts; the session that prepared a branch is closed afterwards.

use super::{Gid, XaBackend, XaError, MYSQL_FORMAT_ID};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Executor, MySql, MySqlConnection, MySqlPool, Row};
use tandem_wire::{CallbackAction, CallbackOutcome};

/// The MySQL/MariaDB backend. Tables must be InnoDB.
#[derive(Debug, Clone)]
pub struct MySqlXa {
    /// The participant's database.
    pool: MySqlPool,
}

impl MySqlXa {
    /// Wraps a pool.
    pub fn new(pool: MySqlPool) -> MySqlXa {
        MySqlXa { pool }
    }
}

/// SQLSTATE XAE04 (error 1397, XAER_NOTA): unknown XID.
fn is_unknown_xid(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("XAE04"))
}

fn recovered(row: &MySqlRow) -> Option<Gid> {
    let format_id: i64 = row.try_get(0).ok()?;
    let gtrid_len: i64 = row.try_get(1).ok()?;
    let data: String = row
        .try_get::<String, _>(3)
        .or_else(|_| row.try_get::<Vec<u8>, _>(3).map(|b| String::from_utf8_lossy(&b).into_owned()))
        .ok()?;
    Gid::parse_mysql(format_id, usize::try_from(gtrid_len).ok()?, &data).ok()
}

#[async_trait]
impl XaBackend for MySqlXa {
    type Conn = MySqlConnection;
    type Pooled = PoolConnection<MySql>;

    async fn check(&self) -> Result<(), XaError> {
        // XA RECOVER fails where XA is unavailable (for example without the privilege).
        if self.pool.fetch_all("XA RECOVER").await.is_err() {
            return Err(XaError::Unavailable(
                "this MySQL/MariaDB server refused XA RECOVER: XA needs InnoDB and, on MySQL 8, \
                 the XA_RECOVER_ADMIN privilege for the participant's user",
            ));
        }
        Ok(())
    }

    async fn begin(&self, gid: &Gid) -> Result<Self::Pooled, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        (&mut *conn).execute(gid.mysql_statement("START").as_str()).await?;
        Ok(conn)
    }

    async fn abort(&self, mut conn: Self::Pooled, gid: &Gid) {
        let end = (&mut *conn).execute(gid.mysql_statement("END").as_str()).await;
        let rollback = (&mut *conn).execute(gid.mysql_statement("ROLLBACK").as_str()).await;
        if end.is_err() || rollback.is_err() {
            conn.detach();
        }
    }

    async fn prepare(&self, mut conn: Self::Pooled, gid: &Gid) -> Result<bool, sqlx::Error> {
        let r = async {
            (&mut *conn).execute(gid.mysql_statement("END").as_str()).await?;
            (&mut *conn).execute(gid.mysql_statement("PREPARE").as_str()).await
        }
        .await;
        if let Err(e) = r {
            // The server may have rolled the branch back (deadlock): make sure, and drop the connection.
            let _ = (&mut *conn).execute(gid.mysql_statement("ROLLBACK").as_str()).await;
            conn.detach();
            return Err(e);
        }
        // MariaDB keeps the session bound to its prepared branch (error 1399 on
        // the next XA START); the branch survives a disconnect (10.5+), so the
        // session is closed rather than returned to the pool.
        let _ = conn.detach().close().await;
        Ok(self.prepared().await?.iter().any(|(g, _)| g == gid))
    }

    async fn finish(&self, gid: &Gid, action: CallbackAction) -> Result<CallbackOutcome, sqlx::Error> {
        let verb = match action {
            CallbackAction::Commit => "COMMIT",
            // Only commit and rollback reach here (`XaParticipant::handle_callback`).
            _ => "ROLLBACK",
        };
        match self.pool.execute(gid.mysql_statement(verb).as_str()).await {
            Ok(_) => Ok(CallbackOutcome::Applied),
            Err(e) if is_unknown_xid(&e) => Ok(CallbackOutcome::AlreadyDone),
            Err(e) => Err(e),
        }
    }

    async fn prepared(&self) -> Result<Vec<(Gid, Option<DateTime<Utc>>)>, sqlx::Error> {
        let rows = self.pool.fetch_all("XA RECOVER").await?;
        Ok(rows
            .iter()
            .filter(|r| r.try_get::<i64, _>(0).ok() == Some(MYSQL_FORMAT_ID))
            .filter_map(recovered)
            .map(|g| (g, None))
            .collect())
    }
}
