//! What differs between PostgreSQL and MySQL/MariaDB in AT mode: the
//! catalog, how a column is imaged and how an image is written back, how a
//! rollback fixes its session, and running statements with a list of
//! parameters (written once, in the `at_backend!` macro).

mod mysql;
mod postgres;

pub use mysql::MySqlDb;
pub use postgres::Pg;

use super::image::Row;
use super::meta::{Column, Repr, TableMeta};
use super::sql::{SqlDialect, TableRef};
use super::AtError;
use async_trait::async_trait;
use sqlx::error::BoxDynError;
use sqlx::{Arguments, Database, Encode, Type};
use std::sync::Arc;

/// A statement parameter that can be bound again and again (to the image
/// queries and to the statement itself). Any value sqlx can encode is one.
pub trait AtParam<DB: Database>: Send + Sync {
    /// Appends this value to `args`.
    fn add_to<'q>(&'q self, args: &mut <DB as Database>::Arguments<'q>) -> Result<(), BoxDynError>;
}

impl<DB: Database, T> AtParam<DB> for T
where
    T: for<'q> Encode<'q, DB> + Type<DB> + Send + Sync + 'static,
{
    fn add_to<'q>(&'q self, args: &mut <DB as Database>::Arguments<'q>) -> Result<(), BoxDynError> {
        args.add(self)
    }
}

/// A shared parameter.
pub type Param<DB> = Arc<dyn AtParam<DB>>;

/// The connection type of a backend.
pub type Conn<B> = <<B as AtBackend>::Db as Database>::Connection;

/// What the server can do, read once per resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerInfo {
    /// `INSERT ... RETURNING` (PostgreSQL; MariaDB 10.5 and later).
    pub insert_returning: bool,
    /// `DELETE ... RETURNING` (PostgreSQL; MariaDB 10.0 and later).
    pub delete_returning: bool,
    /// MySQL `lower_case_table_names` (0: names as stored, compared exactly;
    /// 1 or 2: compared in lower case). 0 on PostgreSQL.
    pub lower_case_table_names: u8,
}

/// A database AT mode runs on.
#[async_trait]
pub trait AtBackend: Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database;
    /// Its SQL dialect.
    const DIALECT: SqlDialect;
    /// Statements creating the undo log table (idempotent): the file of
    /// `participant-sdk/migrations/` for this database.
    const UNDO_DDL: &'static str;

    /// Runs [`AtBackend::UNDO_DDL`] on `pool`.
    async fn install(pool: &sqlx::Pool<Self::Db>) -> Result<(), sqlx::Error>;

    /// What the server can do.
    async fn server_info(conn: &mut Conn<Self>) -> Result<ServerInfo, sqlx::Error>;
    /// The quoted, qualified name of `tandem_undo_log` as this session
    /// resolves it, if it exists.
    async fn locate_undo(conn: &mut Conn<Self>) -> Result<Option<String>, sqlx::Error>;
    /// Whether `meta`'s name is, in this session, a temporary table.
    async fn is_temporary(conn: &mut Conn<Self>, meta: &TableMeta) -> Result<bool, sqlx::Error>;
    /// What an unqualified table name resolves in, in this session: the
    /// schemas of PostgreSQL's `search_path`, MySQL's current database.
    async fn scope(conn: &mut Conn<Self>) -> Result<String, sqlx::Error>;
    /// The catalog's description of `table`, or `None` if there is no such
    /// relation; an unqualified name is looked up in `scope` where the
    /// backend needs it (MySQL: the session's database, read by
    /// [`AtBackend::scope`]; PostgreSQL resolves it by the session's path).
    async fn table_meta(
        conn: &mut Conn<Self>,
        table: &TableRef,
        server: &ServerInfo,
        scope: Option<&str>,
    ) -> Result<Option<TableMeta>, sqlx::Error>;
    /// Runs a query whose every column is text (or NULL).
    async fn fetch_text(
        conn: &mut Conn<Self>,
        sql: &str,
        params: &[Param<Self::Db>],
        plan: &[usize],
    ) -> Result<Vec<Row>, sqlx::Error>;
    /// Runs a query whose every column is an [`AtBackend::image_expr`] of
    /// `columns` (in order); returns the images.
    async fn fetch_images(
        conn: &mut Conn<Self>,
        sql: &str,
        params: &[Param<Self::Db>],
        plan: &[usize],
        columns: &[&Column],
    ) -> Result<Vec<Row>, AtError>;
    /// Runs a query and returns its rows as the driver gives them.
    async fn fetch_rows(
        conn: &mut Conn<Self>,
        sql: &str,
        params: &[Param<Self::Db>],
        plan: &[usize],
    ) -> Result<Vec<<Self::Db as Database>::Row>, sqlx::Error>;
    /// Runs a statement; returns the number of rows affected.
    async fn execute(
        conn: &mut Conn<Self>,
        sql: &str,
        params: &[Param<Self::Db>],
        plan: &[usize],
    ) -> Result<u64, sqlx::Error>;
    /// Column `index` of a driver row, an integer.
    fn int_at(row: &<Self::Db as Database>::Row, index: usize) -> Result<i64, sqlx::Error>;
    /// The images in columns `first..` of a driver row, one per entry of `columns`.
    fn images_at(row: &<Self::Db as Database>::Row, first: usize, columns: &[&Column]) -> Result<Row, AtError>;
    /// A text parameter (for AT's own tables).
    fn text(value: Option<String>) -> Param<Self::Db>;
    /// The expression that reads `col` as its image.
    fn image_expr(col: &Column) -> String;
    /// A parameter holding the image `value` of `col`, to be placed where
    /// [`AtBackend::value_expr`] says.
    fn image_param(col: &Column, value: Option<&str>) -> Result<Param<Self::Db>, AtError>;
    /// The lock value of a key column's image: equal keys (under the
    /// column's own equality) have equal lock values.
    fn lock_value(col: &Column, image: Option<&str>) -> Result<Option<String>, AtError>;
    /// The expression that turns the parameter `placeholder` (from
    /// [`AtBackend::image_param`]) into a value of `col`.
    fn value_expr(col: &Column, placeholder: &str) -> String;
    /// `row` (images of `columns`) in the database's own text, for reports:
    /// a binary image shown as the type prints it (in the rollback's fixed
    /// settings).
    async fn render(conn: &mut Conn<Self>, columns: &[&Column], row: &Row) -> Result<Row, AtError>;
    /// Whether `e` is a unique-key violation (by SQLSTATE / error number).
    fn is_unique_violation(e: &sqlx::Error) -> bool;
    /// Whether `e` says the same write can never succeed: an integrity
    /// constraint violation (SQLSTATE class 23) or a data exception (class
    /// 22: a value too long, out of range, invalid), on both databases.
    fn is_permanent(e: &sqlx::Error) -> bool {
        e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c.starts_with("23") || c.starts_with("22"))
    }
    /// MySQL: the first `AUTO_INCREMENT` value of the last INSERT and the step.
    async fn last_insert_ids(conn: &mut Conn<Self>) -> Result<(u64, u64), sqlx::Error>;
    /// The database's time `placeholder` milliseconds (a text parameter) ago.
    fn ago(placeholder: &str) -> String;
    /// Fixes the settings a rollback runs with, in its local transaction:
    /// those that change how values are read or written (dates, time zones,
    /// SQL modes), deferred constraints where the database has them, and the
    /// `tandem.at_restore` flag that declared triggers test.
    async fn begin_restore(conn: &mut Conn<Self>) -> Result<(), sqlx::Error>;
    /// Runs the checks and constraint triggers the rollback deferred, before
    /// it reads the restored rows back.
    async fn check_constraints(conn: &mut Conn<Self>) -> Result<(), sqlx::Error>;
    /// Undoes [`AtBackend::begin_restore`] once the transaction ended (MySQL's
    /// settings belong to the session, not the transaction).
    async fn end_restore(conn: &mut Conn<Self>) -> Result<(), sqlx::Error>;
}

/// The arguments of one statement: `params` in the order `plan` gives.
fn args<'q, DB: Database>(
    params: &'q [Param<DB>],
    plan: &[usize],
) -> Result<<DB as Database>::Arguments<'q>, sqlx::Error> {
    let mut a = <DB as Database>::Arguments::default();
    for &i in plan {
        let p = params
            .get(i)
            .ok_or_else(|| sqlx::Error::Protocol(format!("statement uses parameter {} of {}", i + 1, params.len())))?;
        p.add_to(&mut a).map_err(sqlx::Error::Encode)?;
    }
    Ok(a)
}

fn text_rows<R: sqlx::Row>(rows: &[R]) -> Result<Vec<Row>, sqlx::Error>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    rows.iter().map(|r| (0..r.len()).map(|i| r.try_get::<Option<String>, _>(i)).collect()).collect()
}

/// Whether every column of `columns` is imaged through `repr`'s family (a
/// metadata bug otherwise: a PostgreSQL column reaching the MySQL backend).
fn wrong_backend(col: &Column) -> AtError {
    AtError::Internal(format!(
        "column {} carries the image representation {:?} of another database",
        col.name, col.repr
    ))
}

/// Implements the methods of [`AtBackend`] that run statements, the same
/// for every driver; the rest is given.
macro_rules! at_backend {
    ($backend:ty, $db:ty, $conn:ty, $row:ty, { $($rest:tt)* }) => {
        #[async_trait]
        impl AtBackend for $backend {
            type Db = $db;
            $($rest)*

            async fn fetch_text(
                conn: &mut $conn,
                sql: &str,
                params: &[Param<$db>],
                plan: &[usize],
            ) -> Result<Vec<Row>, sqlx::Error> {
                let rows = sqlx::query_with(sql, super::args(params, plan)?).fetch_all(&mut *conn).await?;
                super::text_rows(&rows)
            }

            async fn fetch_images(
                conn: &mut $conn,
                sql: &str,
                params: &[Param<$db>],
                plan: &[usize],
                columns: &[&Column],
            ) -> Result<Vec<Row>, AtError> {
                let rows = sqlx::query_with(sql, super::args(params, plan)?).fetch_all(&mut *conn).await?;
                rows.iter().map(|r| Self::images_at(r, 0, columns)).collect()
            }

            async fn fetch_rows(
                conn: &mut $conn,
                sql: &str,
                params: &[Param<$db>],
                plan: &[usize],
            ) -> Result<Vec<$row>, sqlx::Error> {
                sqlx::query_with(sql, super::args(params, plan)?).fetch_all(&mut *conn).await
            }

            async fn execute(
                conn: &mut $conn,
                sql: &str,
                params: &[Param<$db>],
                plan: &[usize],
            ) -> Result<u64, sqlx::Error> {
                Ok(sqlx::query_with(sql, super::args(params, plan)?).execute(&mut *conn).await?.rows_affected())
            }

            fn int_at(row: &$row, index: usize) -> Result<i64, sqlx::Error> {
                sqlx::Row::try_get(row, index)
            }

            fn text(value: Option<String>) -> Param<$db> {
                Arc::new(value)
            }
        }
    };
}
use at_backend;

/// The `Repr` of a column is the backend's own; anything else is a bug.
fn expect_repr<T>(col: &Column, pick: impl FnOnce(Repr) -> Option<T>) -> Result<T, AtError> {
    pick(col.repr).ok_or_else(|| wrong_backend(col))
}
