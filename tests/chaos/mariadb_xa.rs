//! What the suite checks of MariaDB's XA beyond `XA RECOVER`.
//!
//! The suite found (docs/reliability.md) that an `XA COMMIT` racing the
//! disconnect of the session that prepared the branch answers `XAER_NOTA`
//! ("unknown XID"), which the SDK's `MySqlXa` used to read as "already
//! finished": the coordinator then recorded a branch committed while it was
//! still prepared, and MariaDB 10.11 sometimes lost the branch from `XA
//! RECOVER` altogether (InnoDB keeps it prepared, with its locks). The SDK
//! now waits, after a prepare, until the server has ended the preparing
//! session, and takes "unknown XID" for done only when `XA RECOVER` does not
//! list the branch. [`stranded`] counts the branches lost that way, so a
//! regression shows as a violation.

use sqlx::{Executor, MySqlPool, Row};

/// Prepared transactions InnoDB holds that `XA RECOVER` does not list, on
/// the whole server: branches MariaDB lost track of (see the module docs).
pub async fn stranded(pool: &MySqlPool) -> Result<i64, sqlx::Error> {
    let status = pool.fetch_one("SHOW ENGINE INNODB STATUS").await?;
    let text: String = status.try_get(2)?;
    let innodb = text.matches("ACTIVE (PREPARED)").count() as i64;
    let listed = pool.fetch_all("XA RECOVER").await?.len() as i64;
    Ok(innodb - listed)
}
