//! What differs between PostgreSQL and MySQL/MariaDB in AT mode: the catalog
//! query, how a column becomes text and text becomes a column value again,
//! and running statements with a list of parameters.

use super::image::{Column, Row, TableMeta};
use super::sql::{SqlDialect, TableRef};
use async_trait::async_trait;
use sqlx::error::BoxDynError;
use sqlx::{Arguments, Database, Encode, MySql, MySqlConnection, PgConnection, Postgres, Row as _, Type};
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

/// A database AT mode runs on.
#[async_trait]
pub trait AtBackend: Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database;
    /// Its SQL dialect.
    const DIALECT: SqlDialect;
    /// Statements creating the undo log table (idempotent).
    const UNDO_DDL: &'static str;

    /// Columns and primary key of `table`, or `None` if there is no such table.
    async fn table_meta(conn: &mut Conn<Self>, table: &TableRef) -> Result<Option<TableMeta>, sqlx::Error>;
    /// Runs a query whose every column is text (or NULL).
    async fn fetch_text(
        conn: &mut Conn<Self>,
        sql: &str,
        params: &[Param<Self::Db>],
        plan: &[usize],
    ) -> Result<Vec<Row>, sqlx::Error>;
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
    /// Column `index` of a driver row, as text.
    fn text_at(row: &<Self::Db as Database>::Row, index: usize) -> Result<Option<String>, sqlx::Error>;
    /// A text parameter.
    fn text(value: Option<String>) -> Param<Self::Db>;
    /// The expression that reads `col` as exact text.
    fn text_expr(col: &Column) -> String;
    /// The expression that turns the text parameter `placeholder` into a value of `col`.
    fn value_expr(col: &Column, placeholder: &str) -> String;
    /// Whether `e` is a unique-key violation (by SQLSTATE / error number).
    fn is_unique_violation(e: &sqlx::Error) -> bool;
    /// Whether `e` is an integrity constraint violation (SQLSTATE class 23 on
    /// both): retrying the same write cannot succeed.
    fn is_integrity_violation(e: &sqlx::Error) -> bool {
        e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c.starts_with("23"))
    }
    /// MySQL: the first `AUTO_INCREMENT` value of the last INSERT and the step.
    async fn last_insert_ids(conn: &mut Conn<Self>) -> Result<(u64, u64), sqlx::Error>;
    /// The database's time `placeholder` milliseconds (a text parameter) ago.
    fn ago(placeholder: &str) -> String;
}

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

/// Implements [`AtBackend`] for `$backend` on sqlx's `$db`: the methods that
/// run statements are the same for every driver; the rest is given.
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
                let rows = sqlx::query_with(sql, args(params, plan)?).fetch_all(&mut *conn).await?;
                text_rows(&rows)
            }

            async fn fetch_rows(
                conn: &mut $conn,
                sql: &str,
                params: &[Param<$db>],
                plan: &[usize],
            ) -> Result<Vec<$row>, sqlx::Error> {
                sqlx::query_with(sql, args(params, plan)?).fetch_all(&mut *conn).await
            }

            async fn execute(
                conn: &mut $conn,
                sql: &str,
                params: &[Param<$db>],
                plan: &[usize],
            ) -> Result<u64, sqlx::Error> {
                Ok(sqlx::query_with(sql, args(params, plan)?).execute(&mut *conn).await?.rows_affected())
            }

            fn text_at(row: &$row, index: usize) -> Result<Option<String>, sqlx::Error> {
                row.try_get(index)
            }

            fn text(value: Option<String>) -> Param<$db> {
                Arc::new(value)
            }
        }
    };
}

/// PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct Pg;

at_backend!(Pg, Postgres, PgConnection, sqlx::postgres::PgRow, {
    const DIALECT: SqlDialect = SqlDialect::Postgres;
    const UNDO_DDL: &'static str = "CREATE TABLE IF NOT EXISTS tandem_undo_log (
        xid           text        NOT NULL,
        branch_key    text        NOT NULL,  -- chosen by the SDK, sent as the branch payload's undo_key
        state         smallint    NOT NULL,  -- 0: phase-1 images; 1: rolled back, or empty-rollback marker
        rollback_info text,                  -- UndoLog as plain JSON
        created_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (xid, branch_key))";

    async fn table_meta(conn: &mut PgConnection, table: &TableRef) -> Result<Option<TableMeta>, sqlx::Error> {
        let rows: Vec<(String, String, String, String, Option<i32>, bool, bool)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    array_position(i.indkey::int2[], a.attnum), a.attgenerated <> '', a.attidentity = 'a' \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
             WHERE c.oid = to_regclass(CASE WHEN $1::text IS NULL THEN quote_ident($2) \
                                            ELSE quote_ident($1) || '.' || quote_ident($2) END) \
               AND c.relkind IN ('r', 'p') \
             ORDER BY a.attnum",
        )
        .bind(table.schema.as_deref())
        .bind(&table.name)
        .fetch_all(&mut *conn)
        .await?;
        Ok(TableMeta::from_catalog(rows.into_iter().map(|(schema, table, col, ty, pk, generated, identity_always)| {
            let column = Column {
                name: col,
                sql_type: ty,
                pk_position: pk.and_then(|p| usize::try_from(p).ok()),
                generated,
                identity_always,
                auto_increment: false,
            };
            (schema, table, column)
        })))
    }

    fn text_expr(col: &Column) -> String {
        let c = SqlDialect::Postgres.quote(&col.name);
        let t = col.sql_type.as_str();
        // Dates and timestamps print per the session's DateStyle (and
        // timestamptz per its TimeZone): write them in one fixed ISO form, UTC
        // for timestamptz, so that sessions with other settings read the same
        // images and parse them back unambiguously. Infinities and BC dates
        // keep their own text.
        let iso = |value: &str, format: &str, suffix: &str| {
            format!(
                "CASE WHEN isfinite({c}) AND {c} >= '0001-01-01' \
                 THEN to_char({value}, '{format}'){suffix} ELSE {c}::text END"
            )
        };
        if t.starts_with("timestamp") && t.ends_with("with time zone") && !t.ends_with("without time zone") {
            iso(&format!("{c} AT TIME ZONE 'UTC'"), "YYYY-MM-DD HH24:MI:SS.US", " || '+00'")
        } else if t.starts_with("timestamp") {
            iso(&c, "YYYY-MM-DD HH24:MI:SS.US", "")
        } else if t == "date" {
            iso(&c, "YYYY-MM-DD", "")
        } else {
            format!("{c}::text")
        }
    }

    fn value_expr(col: &Column, placeholder: &str) -> String {
        // `sql_type` comes from format_type(): already a valid, quoted type name.
        format!("CAST({placeholder} AS {})", col.sql_type)
    }

    fn is_unique_violation(e: &sqlx::Error) -> bool {
        e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "23505")
    }

    fn ago(placeholder: &str) -> String {
        format!("now() - CAST({placeholder} AS bigint) * interval '1 millisecond'")
    }

    async fn last_insert_ids(_conn: &mut PgConnection) -> Result<(u64, u64), sqlx::Error> {
        Err(sqlx::Error::Protocol("LAST_INSERT_ID is MySQL's".into()))
    }
});

/// MySQL and MariaDB (InnoDB).
#[derive(Debug, Clone, Copy)]
pub struct MySqlDb;

/// MySQL types imaged as hex.
fn mysql_binary(t: &str) -> bool {
    matches!(t, "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob")
}

at_backend!(MySqlDb, MySql, MySqlConnection, sqlx::mysql::MySqlRow, {
    const DIALECT: SqlDialect = SqlDialect::MySql;
    const UNDO_DDL: &'static str = "CREATE TABLE IF NOT EXISTS tandem_undo_log (
        xid           varchar(64)  NOT NULL,
        branch_key    varchar(64)  NOT NULL,
        state         smallint     NOT NULL,
        rollback_info longtext,
        created_at    datetime(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (xid, branch_key)) ENGINE = InnoDB";

    async fn table_meta(conn: &mut MySqlConnection, table: &TableRef) -> Result<Option<TableMeta>, sqlx::Error> {
        let rows: Vec<(String, String, String, String, String, i64)> = sqlx::query_as(
            "SELECT CAST(c.TABLE_SCHEMA AS CHAR), CAST(c.TABLE_NAME AS CHAR), CAST(c.COLUMN_NAME AS CHAR), \
                    CAST(LOWER(c.DATA_TYPE) AS CHAR), CAST(LOWER(c.EXTRA) AS CHAR), \
                    CAST(COALESCE(k.ORDINAL_POSITION, 0) AS SIGNED) \
             FROM information_schema.COLUMNS c \
             LEFT JOIN information_schema.KEY_COLUMN_USAGE k ON k.CONSTRAINT_SCHEMA = c.TABLE_SCHEMA \
                  AND k.TABLE_NAME = c.TABLE_NAME AND k.COLUMN_NAME = c.COLUMN_NAME AND k.CONSTRAINT_NAME = 'PRIMARY' \
             WHERE c.TABLE_SCHEMA = COALESCE(?, DATABASE()) AND c.TABLE_NAME = ? \
             ORDER BY c.ORDINAL_POSITION",
        )
        .bind(table.schema.as_deref())
        .bind(&table.name)
        .fetch_all(&mut *conn)
        .await?;
        Ok(TableMeta::from_catalog(rows.into_iter().map(|(schema, table, col, ty, extra, pk)| {
            let column = Column {
                name: col,
                sql_type: ty,
                pk_position: usize::try_from(pk).ok().filter(|p| *p > 0),
                // MySQL 8 marks expression defaults DEFAULT_GENERATED: those are
                // ordinary columns; only virtual / stored columns are computed.
                generated: extra.contains("virtual generated")
                    || extra.contains("stored generated")
                    || matches!(extra.trim(), "persistent" | "virtual"),
                identity_always: false,
                auto_increment: extra.contains("auto_increment"),
            };
            (schema, table, column)
        })))
    }

    fn text_expr(col: &Column) -> String {
        let c = SqlDialect::MySql.quote(&col.name);
        match col.sql_type.as_str() {
            t if mysql_binary(t) => format!("HEX({c})"),
            // Seconds since the epoch: independent of the session's time_zone.
            "timestamp" => format!("CAST(UNIX_TIMESTAMP({c}) AS CHAR)"),
            "bit" => format!("CAST({c} + 0 AS CHAR)"),
            // A FLOAT as text has six digits; as a double it is exact.
            "float" => format!("CAST({c} + 0e0 AS CHAR)"),
            _ => format!("CAST({c} AS CHAR)"),
        }
    }

    fn value_expr(col: &Column, placeholder: &str) -> String {
        match col.sql_type.as_str() {
            t if mysql_binary(t) => format!("UNHEX({placeholder})"),
            "timestamp" => format!("FROM_UNIXTIME({placeholder})"),
            "bit" => format!("CAST({placeholder} AS UNSIGNED)"),
            _ => placeholder.to_owned(),
        }
    }

    fn is_unique_violation(e: &sqlx::Error) -> bool {
        // ER_DUP_ENTRY (1062) carries SQLSTATE 23000, shared with other integrity errors.
        e.as_database_error()
            .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .is_some_and(|d| d.number() == 1062)
    }

    fn ago(placeholder: &str) -> String {
        format!("NOW(6) - INTERVAL (CAST({placeholder} AS SIGNED) * 1000) MICROSECOND")
    }

    async fn last_insert_ids(conn: &mut MySqlConnection) -> Result<(u64, u64), sqlx::Error> {
        let (first, step): (u64, u64) = sqlx::query_as(
            "SELECT CAST(LAST_INSERT_ID() AS UNSIGNED), CAST(@@SESSION.auto_increment_increment AS UNSIGNED)",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok((first, step))
    }
});
