//! The branch barrier (DTM's, the TCC fence generalized): every SQL
//! statement on `tandem_barrier`, run inside the participant's local
//! transaction together with a step's business action or compensation. The
//! table is [`crate::migrations::SAGA_BARRIER_POSTGRES`] /
//! [`crate::migrations::SAGA_BARRIER_MYSQL`].
//!
//! A row is keyed `(xid, branch_id, op)`, `op` the callback it stands for
//! ([`Op`]), and records in `origin` which callback's transaction inserted
//! it. Rows are only inserted, never updated, so the only locks the barrier
//! takes are those of inserting a key and of finding it taken:
//!
//! - **Action** ([`enter_action`]): insert `(action, origin action)`.
//!   Inserted: run the business action in the same transaction. Taken: read
//!   the row's origin: `action`, the action committed before (a repeated
//!   delivery: [`ActionGate::AlreadyDone`]); `compensate`, the compensation
//!   came first and took the row ([`ActionGate::Refused`]: anti-suspension).
//! - **Compensation** ([`enter_compensation`]): insert `(compensate, origin
//!   compensate)`; taken: a repeated delivery ([`CompensationGate::AlreadyDone`]).
//!   Then insert `(action, origin compensate)`; inserted: no action committed,
//!   and none can any more ([`CompensationGate::Empty`]: commit, nothing to
//!   undo); taken: the action committed ([`CompensationGate::Run`]).
//!
//! An action and a compensation of one branch racing each other meet on the
//! action's key: the second insert of it waits for the transaction holding
//! the first, and then finds it taken (that transaction committed) or
//! inserts it (it rolled back). So either the action commits first and the
//! compensation undoes it, or the compensation commits first and the action
//! is refused: never both an applied action and an empty compensation.
//!
//! **MySQL / MariaDB.** Seata's fence deadlocked under REPEATABLE READ: it
//! read absent rows with `SELECT ... FOR UPDATE`, which takes a gap lock;
//! gap locks do not conflict with each other, so two transactions both
//! took one, then both inserted into the gap and waited on each other's.
//! The barrier reads no absent row with a locking read: it writes with
//! `INSERT IGNORE` on the primary key alone, whose duplicate check takes a
//! record lock on the existing row, not a gap lock, at every isolation
//! level; the only read (an action's origin) is a plain consistent read of
//! a row the insert just found committed. So the session's isolation is
//! left as it is (REPEATABLE READ by default): READ COMMITTED would change
//! nothing for the barrier's locks, and would change the business code's.
//! One deadlock remains possible on both InnoDB and nowhere else: when the
//! transaction holding a new key rolls back while two others wait to insert
//! that same key (a failing action with both a repeated delivery and the
//! compensation queued behind it), InnoDB hands both waiters a gap lock on
//! the vacated key, and their inserts deadlock. InnoDB rolls one back; the
//! participant runs that callback again at once ([`is_conflict`]), which
//! then finds the key as the survivor left it.
//!
//! **PostgreSQL.** `INSERT ... ON CONFLICT DO NOTHING`: an insert racing an
//! uncommitted insert of the same key waits for it, and retries its own
//! insert if that one rolled back, with no deadlock. Under REPEATABLE READ
//! or SERIALIZABLE (not the default), finding a key taken by a transaction
//! that committed after the snapshot is a serialization failure, also
//! answered by running the callback again ([`is_conflict`]).

use super::StepContext;
use async_trait::async_trait;
use sqlx::{MySql, MySqlConnection, PgConnection, Pool, Postgres};
use std::time::Duration;

/// The callback a barrier row stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensate,
}

impl Op {
    /// The text in the table (`action`, `compensate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Action => "action",
            Op::Compensate => "compensate",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        match s {
            "action" => Some(Op::Action),
            "compensate" => Some(Op::Compensate),
            _ => None,
        }
    }
}

/// What the barrier lets an action do ([`enter_action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionGate {
    /// First delivery: run the business action in this transaction, then
    /// commit (the barrier row commits with it).
    Run,
    /// The action committed before: do nothing, answer success.
    AlreadyDone,
    /// The compensation came first (the action never ran and never may):
    /// do nothing, refuse the action permanently.
    Refused,
}

/// What the barrier lets a compensation do ([`enter_compensation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompensationGate {
    /// The action committed: run the business compensation in this
    /// transaction, then commit.
    Run,
    /// The compensation committed before: do nothing, answer success.
    AlreadyDone,
    /// No action committed (it failed, never arrived, or is still in
    /// flight): commit the barrier rows without business code. A late
    /// action is refused.
    Empty,
}

mod sealed {
    /// Only the SDK's databases implement [`super::BarrierDb`].
    pub trait Sealed {}
    impl Sealed for sqlx::Postgres {}
    impl Sealed for sqlx::MySql {}
}

/// A database the barrier runs on: [`sqlx::Postgres`] or [`sqlx::MySql`]
/// (MySQL and MariaDB). Sealed: the SQL is the SDK's.
#[async_trait]
pub trait BarrierDb: sqlx::Database + sealed::Sealed {
    /// Statements creating `tandem_barrier` (idempotent): the file of
    /// `participant-sdk/migrations/` for this database.
    const DDL: &'static str;

    /// Runs [`BarrierDb::DDL`] on `pool` (on PostgreSQL serialized with every
    /// other SDK install on the server).
    async fn install(pool: &Pool<Self>) -> Result<(), sqlx::Error>;

    /// Inserts the row `(step's branch, op)` written by `origin` unless the
    /// key is taken; `true` if inserted. Waits for an uncommitted insert of
    /// the same key by another transaction.
    async fn insert(conn: &mut Self::Connection, step: &StepContext, op: Op, origin: Op) -> Result<bool, sqlx::Error>;

    /// The origin of the row `(step's branch, op)`, if there is one.
    async fn origin(conn: &mut Self::Connection, step: &StepContext, op: Op) -> Result<Option<Op>, sqlx::Error>;

    /// Deletes rows older than `older_than`; returns how many.
    async fn purge(pool: &Pool<Self>, older_than: Duration) -> Result<u64, sqlx::Error>;
}

#[async_trait]
impl BarrierDb for Postgres {
    const DDL: &'static str = crate::migrations::SAGA_BARRIER_POSTGRES;

    async fn install(pool: &Pool<Postgres>) -> Result<(), sqlx::Error> {
        crate::migrations::install_postgres(pool, Self::DDL).await
    }

    async fn insert(conn: &mut PgConnection, step: &StepContext, op: Op, origin: Op) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "INSERT INTO tandem_barrier (xid, branch_id, op, origin, resource) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (xid, branch_id, op) DO NOTHING",
        )
        .bind(step.xid.as_str())
        .bind(step.branch_id.as_str())
        .bind(op.as_str())
        .bind(origin.as_str())
        .bind(&step.resource)
        .execute(conn)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn origin(conn: &mut PgConnection, step: &StepContext, op: Op) -> Result<Option<Op>, sqlx::Error> {
        let s: Option<String> =
            sqlx::query_scalar("SELECT origin FROM tandem_barrier WHERE xid = $1 AND branch_id = $2 AND op = $3")
                .bind(step.xid.as_str())
                .bind(step.branch_id.as_str())
                .bind(op.as_str())
                .fetch_optional(conn)
                .await?;
        s.map(|s| parse_origin(&s)).transpose()
    }

    async fn purge(pool: &Pool<Postgres>, older_than: Duration) -> Result<u64, sqlx::Error> {
        let r = sqlx::query("DELETE FROM tandem_barrier WHERE created_at < now() - $1 * interval '1 millisecond'")
            .bind(older_than.as_secs_f64() * 1000.0)
            .execute(pool)
            .await?;
        Ok(r.rows_affected())
    }
}

#[async_trait]
impl BarrierDb for MySql {
    const DDL: &'static str = crate::migrations::SAGA_BARRIER_MYSQL;

    async fn install(pool: &Pool<MySql>) -> Result<(), sqlx::Error> {
        // Over the text protocol: a migration file is a script, not one
        // prepared statement. CREATE TABLE IF NOT EXISTS is atomic on InnoDB
        // (a racing install finds the table), so no install lock is needed.
        sqlx::raw_sql(Self::DDL).execute(pool).await.map(|_| ())
    }

    async fn insert(conn: &mut MySqlConnection, step: &StepContext, op: Op, origin: Op) -> Result<bool, sqlx::Error> {
        // IGNORE on the primary key only (see the module docs). It would
        // also turn a too long value into a warning, but every column but
        // `resource` holds values bounded by their types (ids of at most 64
        // ASCII bytes, the two ops), and `resource` holds as many characters
        // as the contract allows a resource.
        let r = sqlx::query(
            "INSERT IGNORE INTO tandem_barrier (xid, branch_id, op, origin, resource) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(step.xid.as_str())
        .bind(step.branch_id.as_str())
        .bind(op.as_str())
        .bind(origin.as_str())
        .bind(&step.resource)
        .execute(conn)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn origin(conn: &mut MySqlConnection, step: &StepContext, op: Op) -> Result<Option<Op>, sqlx::Error> {
        // A consistent read: it comes right after an insert that found the
        // row committed, so even under REPEATABLE READ its snapshot (taken
        // now, at the transaction's first read) holds the row.
        let s: Option<String> = sqlx::query_scalar(
            "SELECT CAST(origin AS CHAR) FROM tandem_barrier WHERE xid = ? AND branch_id = ? AND op = ?",
        )
        .bind(step.xid.as_str())
        .bind(step.branch_id.as_str())
        .bind(op.as_str())
        .fetch_optional(conn)
        .await?;
        s.map(|s| parse_origin(&s)).transpose()
    }

    async fn purge(pool: &Pool<MySql>, older_than: Duration) -> Result<u64, sqlx::Error> {
        let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
        let r = sqlx::query("DELETE FROM tandem_barrier WHERE created_at < NOW(6) - INTERVAL ? MICROSECOND")
            .bind(micros)
            .execute(pool)
            .await?;
        Ok(r.rows_affected())
    }
}

fn parse_origin(s: &str) -> Result<Op, sqlx::Error> {
    Op::parse(s).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "origin".into(),
        source: format!("unknown barrier origin {s:?}").into(),
    })
}

/// The barrier of an action, inside the local transaction `conn` is in
/// (see the module docs). On [`ActionGate::Run`] the barrier row is written
/// but not committed: run the business action on `conn` and commit, or roll
/// back (the row goes with the business writes, so a later delivery runs
/// the action again). On the other gates nothing was written.
pub async fn enter_action<DB: BarrierDb>(
    conn: &mut DB::Connection,
    step: &StepContext,
) -> Result<ActionGate, sqlx::Error> {
    if DB::insert(conn, step, Op::Action, Op::Action).await? {
        return Ok(ActionGate::Run);
    }
    match DB::origin(conn, step, Op::Action).await? {
        Some(Op::Action) => Ok(ActionGate::AlreadyDone),
        Some(Op::Compensate) => Ok(ActionGate::Refused),
        // The insert found the key taken, and rows are deleted only by purge.
        None => Err(sqlx::Error::Protocol("barrier row of the action vanished (purged?)".into())),
    }
}

/// The barrier of a compensation, inside the local transaction `conn` is
/// in (see the module docs). Commit after [`CompensationGate::Run`] (once
/// the business compensation ran on `conn`) and after
/// [`CompensationGate::Empty`] (which wrote the rows refusing a late action).
pub async fn enter_compensation<DB: BarrierDb>(
    conn: &mut DB::Connection,
    step: &StepContext,
) -> Result<CompensationGate, sqlx::Error> {
    if !DB::insert(conn, step, Op::Compensate, Op::Compensate).await? {
        return Ok(CompensationGate::AlreadyDone);
    }
    // The compensation's own row first, the action's second: a repeated
    // compensation then waits on the first row and never holds the
    // action's key while another holds it too.
    if DB::insert(conn, step, Op::Action, Op::Compensate).await? {
        Ok(CompensationGate::Empty)
    } else {
        Ok(CompensationGate::Run)
    }
}

/// Deletes barrier rows older than `older_than`; returns how many. Keep it
/// far above the longest a saga can take, with its redeliveries: once its
/// rows are gone, a late action of a compensated step runs again, and a
/// repeated delivery is no longer recognised.
pub async fn purge<DB: BarrierDb>(pool: &Pool<DB>, older_than: Duration) -> Result<u64, sqlx::Error> {
    DB::purge(pool, older_than).await
}

/// Whether `e` rolled the local transaction back as a conflict with a
/// concurrent one, so that running the callback again at once is right: a
/// deadlock (MySQL 1213 and PostgreSQL 40P01), a serialization failure
/// (SQLSTATE 40001, which MySQL also gives a deadlock).
pub fn is_conflict(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "40001" || c == "40P01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_read_back_what_they_write() {
        for op in [Op::Action, Op::Compensate] {
            assert_eq!(Op::parse(op.as_str()), Some(op));
        }
        assert!(parse_origin("tried").is_err());
    }
}
