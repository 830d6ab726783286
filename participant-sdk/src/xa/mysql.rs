//! MySQL / MariaDB XA (`XA START / END / PREPARE / COMMIT / ROLLBACK`,
//! `XA RECOVER`), always through the plain text protocol (a statement without
//! arguments goes as COM_QUERY): XA statements cannot be server-side prepared.
//! MariaDB 10.5+ and MySQL 5.7+ keep prepared branches across disconnects and
//! restarts; the session that prepared a branch is closed afterwards.
//!
//! **A prepare returns only once the server has ended the preparing
//! session**, and **"unknown XID" means done only if `XA RECOVER` does not
//! list the branch.** MariaDB ends a closed session asynchronously; until it
//! has, the branch is still that session's, and `XA COMMIT` or `XA ROLLBACK`
//! from any other session answers `XAER_NOTA` (1397). Read as "already
//! finished", that answer once let the coordinator record a branch committed
//! that was still prepared, and MariaDB 10.11 sometimes then lost the branch
//! from `XA RECOVER` altogether (found by the fault-injection suite,
//! docs/reliability.md: 7 to 39 % of commits issued right after the close
//! answered `XAER_NOTA`; none once the session had left the process list).

use super::{Gid, XaBackend, XaError, MYSQL_FORMAT_ID};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Executor, MySql, MySqlConnection, MySqlPool, Row};
use std::time::{Duration, Instant};
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

    /// Waits (bounded) until the server no longer lists `session`: only then
    /// may another session finish the branch it prepared.
    async fn session_ended(&self, session: u64) -> Result<(), sqlx::Error> {
        let deadline = Instant::now() + SESSION_END_WITHIN;
        let mut pause = Duration::from_millis(1);
        loop {
            let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?")
                .bind(session)
                .fetch_one(&self.pool)
                .await?;
            if open == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(sqlx::Error::Protocol(format!(
                    "the session that prepared the branch ({session}) was still open {SESSION_END_WITHIN:?} after it closed"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// How long a prepare waits for the server to end the preparing session.
const SESSION_END_WITHIN: Duration = Duration::from_secs(10);

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
        let session: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()").fetch_one(&mut *conn).await?;
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
        self.session_ended(session).await?;
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
            // A branch the server still lists is held by a session that has
            // not ended yet: not done; answered as a failure, so retried.
            Err(e) if is_unknown_xid(&e) && self.prepared().await?.iter().any(|(g, _)| g == gid) => Err(e),
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
