//! MySQL and MariaDB (InnoDB): columns are imaged by text expressions
//! chosen per type so that the session's `time_zone` and `sql_mode` change
//! no image; a rollback fixes both for its own session while it writes.

use super::{at_backend, expect_repr, AtBackend, Param, ServerInfo};
use crate::at::image::Row;
use crate::at::meta::{
    Column, ForeignKey, KeyForm, MySqlRepr, RefAction, RelationKind, Repr, TableMeta, TableName, Trigger,
};
use crate::at::sql::{SqlDialect, TableRef};
use crate::at::AtError;
use async_trait::async_trait;
use sqlx::{MySql, MySqlConnection, MySqlPool, Row as _};
use std::sync::Arc;

/// MySQL and MariaDB (InnoDB).
#[derive(Debug, Clone, Copy)]
pub struct MySqlDb;

/// How a column of MySQL type `data_type` is imaged.
fn repr(data_type: &str) -> MySqlRepr {
    match data_type {
        // Spatial values cannot be cast to text; their stored form (SRID and
        // WKB) round-trips through HEX / UNHEX exactly.
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry" | "point"
        | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon" | "geometrycollection" => {
            MySqlRepr::Hex
        }
        "timestamp" => MySqlRepr::UnixTime,
        "bit" => MySqlRepr::Bit,
        "float" => MySqlRepr::Float,
        "char" => MySqlRepr::Char,
        _ => MySqlRepr::Plain,
    }
}

fn my_repr(col: &Column) -> Result<MySqlRepr, AtError> {
    expect_repr(col, |r| match r {
        Repr::MySql(m) => Some(m),
        Repr::PgBinary(_) => None,
    })
}

fn action(rule: &str) -> RefAction {
    match rule {
        "CASCADE" => RefAction::Cascade,
        "SET NULL" => RefAction::SetNull,
        "SET DEFAULT" => RefAction::SetDefault,
        "RESTRICT" => RefAction::Restrict,
        _ => RefAction::NoAction,
    }
}

/// `(major, minor)` of a MariaDB version string, `None` for MySQL.
fn mariadb_version(version: &str) -> Option<(u32, u32)> {
    if !version.contains("MariaDB") {
        return None;
    }
    // Replication-compatible servers may prefix "5.5.5-".
    let v = version.strip_prefix("5.5.5-").unwrap_or(version);
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The condition matching `column` to the name `value` (an expression) the
/// way the server matches table and database names
/// (`lower_case_table_names`), not by the case- and accent-insensitive
/// collation of `information_schema`.
fn name_match(column: &str, value: &str, lower_case_table_names: u8) -> String {
    if lower_case_table_names == 0 {
        format!("CAST({column} AS BINARY) = CAST({value} AS BINARY)")
    } else {
        format!("CAST(LOWER({column}) AS BINARY) = CAST(LOWER({value}) AS BINARY)")
    }
}

/// The value part of an image (a weighted key's image starts with its weight).
fn value_of<'v>(col: &Column, image: &'v str) -> &'v str {
    match col.key_form {
        KeyForm::MySqlWeight { .. } => image.split_once(':').map_or(image, |(_, v)| v),
        _ => image,
    }
}

impl MySqlDb {
    /// The text expression of `col` (quoted as `c`), without a key's weight.
    fn value_image_expr(col: &Column, c: &str) -> String {
        match my_repr(col).unwrap_or(MySqlRepr::Plain) {
            MySqlRepr::Hex => format!("HEX({c})"),
            // Seconds since the epoch: independent of the session's time_zone.
            MySqlRepr::UnixTime => format!("CAST(UNIX_TIMESTAMP({c}) AS CHAR)"),
            MySqlRepr::Bit => format!("CAST({c} + 0 AS CHAR)"),
            // A FLOAT as text has six digits; as a double it is exact.
            MySqlRepr::Float => format!("CAST({c} + 0e0 AS CHAR)"),
            // PAD_CHAR_TO_FULL_LENGTH pads CHAR values; stored ones never end in spaces.
            MySqlRepr::Char => format!("CAST(TRIM(TRAILING ' ' FROM {c}) AS CHAR)"),
            MySqlRepr::Plain => format!("CAST({c} AS CHAR)"),
        }
    }
}

/// One foreign-key column: constraint, child schema, child table, child
/// column, parent schema, parent table, parent column, delete rule, update rule.
type KeyColumnRow = (String, String, String, String, String, String, String, String, String);

at_backend!(MySqlDb, MySql, MySqlConnection, sqlx::mysql::MySqlRow, {
    const DIALECT: SqlDialect = SqlDialect::MySql;
    const UNDO_DDL: &'static str = crate::migrations::AT_UNDO_LOG_MYSQL;

    async fn install(pool: &MySqlPool) -> Result<(), sqlx::Error> {
        // Over the text protocol: a migration file is a script, not one prepared statement.
        sqlx::raw_sql(Self::UNDO_DDL).execute(pool).await.map(|_| ())
    }

    async fn server_info(conn: &mut MySqlConnection) -> Result<ServerInfo, sqlx::Error> {
        let (version, lcn): (String, i64) =
            sqlx::query_as("SELECT CAST(VERSION() AS CHAR), CAST(@@lower_case_table_names AS SIGNED)")
                .fetch_one(&mut *conn)
                .await?;
        let maria = mariadb_version(&version);
        Ok(ServerInfo {
            insert_returning: maria.is_some_and(|v| v >= (10, 5)),
            delete_returning: maria.is_some(),
            lower_case_table_names: u8::try_from(lcn).unwrap_or(0),
        })
    }

    async fn locate_undo(conn: &mut MySqlConnection) -> Result<Option<String>, sqlx::Error> {
        let db: Option<String> = sqlx::query_scalar(
            "SELECT CAST(TABLE_SCHEMA AS CHAR) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'tandem_undo_log'",
        )
        .fetch_optional(&mut *conn)
        .await?;
        Ok(db.map(|d| format!("{}.{}", SqlDialect::MySql.quote(&d), SqlDialect::MySql.quote("tandem_undo_log"))))
    }

    async fn is_temporary(conn: &mut MySqlConnection, meta: &TableMeta) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "SHOW CREATE TABLE {}.{}",
            SqlDialect::MySql.quote(&meta.schema),
            SqlDialect::MySql.quote(&meta.name)
        );
        let row: Option<(String, String)> = sqlx::query_as(&sql).fetch_optional(&mut *conn).await?;
        let create = row.map(|(_, create)| create);
        Ok(create.is_some_and(|c| c.starts_with("CREATE TEMPORARY TABLE")))
    }

    async fn scope(conn: &mut MySqlConnection) -> Result<String, sqlx::Error> {
        // Over the text protocol: a prepared statement stays bound to the
        // database it was prepared in, and would report that one after a USE.
        // A plain &str runs over the text protocol (COM_QUERY), unprepared.
        let row = sqlx::Executor::fetch_one(&mut *conn, "SELECT CAST(DATABASE() AS CHAR)").await?;
        let db: Option<String> = row.try_get(0)?;
        Ok(db.unwrap_or_default())
    }

    async fn table_meta(
        conn: &mut MySqlConnection,
        table: &TableRef,
        server: &ServerInfo,
        scope: Option<&str>,
    ) -> Result<Option<TableMeta>, sqlx::Error> {
        let lcn = server.lower_case_table_names;
        let sql = format!(
            "SELECT CAST(TABLE_SCHEMA AS CHAR), CAST(TABLE_NAME AS CHAR), CAST(TABLE_TYPE AS CHAR) \
             FROM information_schema.TABLES WHERE {} AND {}",
            name_match("TABLE_SCHEMA", "COALESCE(?, ?)", lcn),
            name_match("TABLE_NAME", "?", lcn)
        );
        // The session's database as the scope read it, not DATABASE(): this
        // statement is prepared, and a prepared statement keeps its database.
        let found: Option<(String, String, String)> = sqlx::query_as(&sql)
            .bind(table.schema.as_deref())
            .bind(scope)
            .bind(&table.name)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((schema, name, table_type)) = found else {
            return Ok(None);
        };
        let kind = match table_type.as_str() {
            "BASE TABLE" => RelationKind::Table,
            "VIEW" | "SYSTEM VIEW" => RelationKind::View,
            "SYSTEM VERSIONED" => RelationKind::SystemVersioned,
            "SEQUENCE" => RelationKind::Sequence,
            _ => RelationKind::Other,
        };
        // From here on the catalog's exact names, compared exactly.
        let columns: Vec<(String, String, String, String, i64, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT CAST(c.COLUMN_NAME AS CHAR), CAST(LOWER(c.DATA_TYPE) AS CHAR), CAST(LOWER(c.COLUMN_TYPE) AS CHAR), \
                    CAST(LOWER(c.EXTRA) AS CHAR), CAST(COALESCE(k.ORDINAL_POSITION, 0) AS SIGNED), \
                    CAST(c.COLLATION_NAME AS CHAR), \
                    (SELECT CAST(MAX(st.SUB_PART) AS SIGNED) FROM information_schema.STATISTICS st \
                     WHERE st.TABLE_SCHEMA = c.TABLE_SCHEMA AND st.TABLE_NAME = c.TABLE_NAME \
                       AND st.COLUMN_NAME = c.COLUMN_NAME AND st.INDEX_NAME = 'PRIMARY') \
             FROM information_schema.COLUMNS c \
             LEFT JOIN information_schema.KEY_COLUMN_USAGE k ON k.CONSTRAINT_SCHEMA = c.TABLE_SCHEMA \
                  AND k.TABLE_NAME = c.TABLE_NAME AND k.COLUMN_NAME = c.COLUMN_NAME AND k.CONSTRAINT_NAME = 'PRIMARY' \
             WHERE CAST(c.TABLE_SCHEMA AS BINARY) = CAST(? AS BINARY) \
               AND CAST(c.TABLE_NAME AS BINARY) = CAST(? AS BINARY) \
             ORDER BY c.ORDINAL_POSITION",
        )
        .bind(&schema)
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        // Key forms are set once the foreign keys are known (below).
        let mut weights: Vec<Option<KeyForm>> = Vec::with_capacity(columns.len());
        let mut columns: Vec<Column> = columns
            .into_iter()
            .map(|(col, ty, column_type, extra, pk, collation, sub_part)| {
                let pk_position = usize::try_from(pk).ok().filter(|p| *p > 0);
                // A string of a non-binary character set: equal keys ('bob',
                // 'Bob', 'bob ') can differ in their text; they share a
                // weight. NO PAD collations (MariaDB's *_nopad_*, MySQL 8's
                // *_0900_*) count trailing spaces; CHAR values never keep them.
                let string =
                    matches!(ty.as_str(), "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext");
                let no_pad = collation.as_deref().is_some_and(|c| c.contains("nopad") || c.contains("_0900_"));
                let weight = (string && collation.as_deref().is_some_and(|c| c != "binary"))
                    .then_some(KeyForm::MySqlWeight { trim: ty == "char" || !no_pad });
                weights.push(weight);
                let key_refusal = sub_part.map(|n| format!("is a key on its first {n} characters only"));
                Column {
                    name: col,
                    repr: Repr::MySql(repr(&ty)),
                    // What a restore must find again: the type, and how its
                    // values compare (a collation change changes key images).
                    type_id: format!("{column_type}/{}", collation.as_deref().unwrap_or("-")),
                    sql_type: ty,
                    type_oid: 0,
                    type_name: String::new(),
                    key_refusal,
                    invisible: extra.contains("invisible"),
                    key_form: KeyForm::Image,
                    send_fn: String::new(),
                    receivable: true,
                    pk_position,
                    // MySQL 8 marks expression defaults DEFAULT_GENERATED: those are
                    // ordinary columns; only virtual / stored columns are computed.
                    generated: extra.contains("virtual generated")
                        || extra.contains("stored generated")
                        || matches!(extra.trim(), "persistent" | "virtual"),
                    identity_always: false,
                    auto_increment: extra.contains("auto_increment"),
                }
            })
            .collect();
        let triggers: Vec<(String, String)> = sqlx::query_as(
            "SELECT CAST(TRIGGER_NAME AS CHAR), CAST(CONCAT(ACTION_TIMING, ' ', EVENT_MANIPULATION) AS CHAR) \
             FROM information_schema.TRIGGERS \
             WHERE CAST(EVENT_OBJECT_SCHEMA AS BINARY) = CAST(? AS BINARY) \
               AND CAST(EVENT_OBJECT_TABLE AS BINARY) = CAST(? AS BINARY) ORDER BY 1",
        )
        .bind(&schema)
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        let me = TableName { schema: schema.clone(), name: name.clone() };
        let triggers = triggers.into_iter().map(|(n, timing)| Trigger { table: me.clone(), name: n, timing }).collect();
        let keys: Vec<KeyColumnRow> = sqlx::query_as(
            "SELECT CAST(rc.CONSTRAINT_NAME AS CHAR), CAST(k.TABLE_SCHEMA AS CHAR), CAST(k.TABLE_NAME AS CHAR), \
                    CAST(k.COLUMN_NAME AS CHAR), CAST(k.REFERENCED_TABLE_SCHEMA AS CHAR), \
                    CAST(k.REFERENCED_TABLE_NAME AS CHAR), CAST(k.REFERENCED_COLUMN_NAME AS CHAR), \
                    CAST(rc.DELETE_RULE AS CHAR), CAST(rc.UPDATE_RULE AS CHAR) \
             FROM information_schema.REFERENTIAL_CONSTRAINTS rc \
             JOIN information_schema.KEY_COLUMN_USAGE k ON k.CONSTRAINT_SCHEMA = rc.CONSTRAINT_SCHEMA \
                  AND k.CONSTRAINT_NAME = rc.CONSTRAINT_NAME AND k.TABLE_NAME = rc.TABLE_NAME \
             WHERE (CAST(k.TABLE_SCHEMA AS BINARY) = CAST(? AS BINARY) AND CAST(k.TABLE_NAME AS BINARY) = CAST(? AS BINARY)) \
                OR (CAST(k.REFERENCED_TABLE_SCHEMA AS BINARY) = CAST(? AS BINARY) \
                    AND CAST(k.REFERENCED_TABLE_NAME AS BINARY) = CAST(? AS BINARY)) \
             ORDER BY k.TABLE_SCHEMA, k.TABLE_NAME, rc.CONSTRAINT_NAME, k.ORDINAL_POSITION",
        )
        .bind(&schema)
        .bind(&name)
        .bind(&schema)
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        let mut fks: Vec<ForeignKey> = Vec::new();
        for (constraint, cs, ct, cc, ps, pt, pc, del, upd) in keys {
            let child = TableName { schema: cs, name: ct };
            match fks.last_mut() {
                Some(fk) if fk.name == constraint && fk.child == child => {
                    fk.child_columns.push(cc);
                    fk.parent_columns.push(pc);
                }
                _ => fks.push(ForeignKey {
                    name: constraint,
                    child,
                    child_columns: vec![cc],
                    parent: TableName { schema: ps, name: pt },
                    parent_columns: vec![pc],
                    on_delete: action(&del),
                    on_delete_columns: Vec::new(),
                    on_update: action(&upd),
                    deferrable: false,
                    to_partition: false,
                    child_row_security: false,
                }),
            }
        }
        let referenced_by: Vec<ForeignKey> = fks.iter().filter(|f| f.parent == me).cloned().collect();
        let references: Vec<ForeignKey> = fks.iter().filter(|f| f.child == me).cloned().collect();
        // Key columns, and the columns foreign keys match (referencing and
        // referenced), are imaged with their weight: keys compare, lock and
        // order restores by it.
        let in_keys: Vec<&String> = references
            .iter()
            .flat_map(|f| &f.child_columns)
            .chain(referenced_by.iter().flat_map(|f| &f.parent_columns))
            .collect();
        for (c, weight) in columns.iter_mut().zip(weights) {
            let keyed = c.pk_position.is_some() || in_keys.iter().any(|k| k.eq_ignore_ascii_case(&c.name));
            if let (Some(form), true) = (weight, keyed) {
                c.key_form = form;
                c.type_id.push_str("/weighted");
            }
        }
        Ok(Some(TableMeta {
            lock_table: me,
            schema,
            name,
            kind,
            temporary: false,
            inheritance_children: Vec::new(),
            triggers,
            rules: Vec::new(),
            referenced_by,
            references,
            columns,
            case_insensitive_columns: true,
        }))
    }

    fn images_at(row: &sqlx::mysql::MySqlRow, first: usize, columns: &[&Column]) -> Result<Row, AtError> {
        (0..columns.len()).map(|j| Ok(row.try_get::<Option<String>, _>(first + j)?)).collect()
    }

    fn image_expr(col: &Column) -> String {
        let c = SqlDialect::MySql.quote(&col.name);
        let value = Self::value_image_expr(col, &c);
        match col.key_form {
            KeyForm::MySqlWeight { trim: true } => {
                format!("CONCAT(HEX(WEIGHT_STRING(TRIM(TRAILING ' ' FROM {c}))), ':', {value})")
            }
            KeyForm::MySqlWeight { trim: false } => format!("CONCAT(HEX(WEIGHT_STRING({c})), ':', {value})"),
            _ => value,
        }
    }

    fn lock_value(col: &Column, image: Option<&str>) -> Result<Option<String>, AtError> {
        Ok(image.map(|v| match col.key_form {
            KeyForm::MySqlWeight { .. } => v.split_once(':').map_or(v, |(w, _)| w).to_owned(),
            _ => v.to_owned(),
        }))
    }

    fn image_param(col: &Column, value: Option<&str>) -> Result<Param<MySql>, AtError> {
        my_repr(col)?;
        Ok(Arc::new(value.map(|v| value_of(col, v).to_owned())))
    }

    fn value_expr(col: &Column, placeholder: &str) -> String {
        match my_repr(col).unwrap_or(MySqlRepr::Plain) {
            MySqlRepr::Hex => format!("UNHEX({placeholder})"),
            MySqlRepr::UnixTime => format!("FROM_UNIXTIME({placeholder})"),
            MySqlRepr::Bit => format!("CAST({placeholder} AS UNSIGNED)"),
            _ => placeholder.to_owned(),
        }
    }

    async fn render(_conn: &mut MySqlConnection, columns: &[&Column], row: &Row) -> Result<Row, AtError> {
        // Images are text already; a weighted key shows its value.
        Ok(columns.iter().zip(row).map(|(c, v)| v.as_deref().map(|v| value_of(c, v).to_owned())).collect())
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

    async fn begin_restore(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        // The writer's session may have allowed values a strict mode refuses
        // (zero or invalid dates), or stored 0 in an AUTO_INCREMENT key; a
        // named time zone makes FROM_UNIXTIME ambiguous in a DST fold. The
        // read-back after the restore catches anything the mode still changes.
        sqlx::query(
            "SET @tandem_sql_mode = @@SESSION.sql_mode, @tandem_time_zone = @@SESSION.time_zone, \
                 SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO,ALLOW_INVALID_DATES,NO_ENGINE_SUBSTITUTION', \
                 SESSION time_zone = '+00:00', @tandem_at_restore = 1",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn check_constraints(_conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        Ok(()) // nothing is deferred on MySQL
    }

    async fn end_restore(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        sqlx::query(
            "SET SESSION sql_mode = @tandem_sql_mode, SESSION time_zone = @tandem_time_zone, @tandem_at_restore = NULL",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_tell_mariadb_apart() {
        assert_eq!(mariadb_version("10.11.19-MariaDB-0+deb12u1"), Some((10, 11)));
        assert_eq!(mariadb_version("5.5.5-10.4.2-MariaDB"), Some((10, 4)));
        assert_eq!(mariadb_version("8.0.36"), None);
    }

    #[test]
    fn names_match_as_the_server_does() {
        assert_eq!(name_match("T", "?", 0), "CAST(T AS BINARY) = CAST(? AS BINARY)");
        assert_eq!(name_match("T", "?", 1), "CAST(LOWER(T) AS BINARY) = CAST(LOWER(?) AS BINARY)");
    }
}
