//! PostgreSQL: columns are imaged through their type's binary send function
//! and written back as binary parameters of the column's own type, so that
//! no session setting (DateStyle, IntervalStyle, TimeZone,
//! extra_float_digits, bytea_output, lc_monetary, search_path) can change
//! an image, for every type: domains, arrays, composites, ranges included.

use super::{at_backend, expect_repr, AtBackend, Param, ServerInfo};
use crate::at::image::Row;
use crate::at::meta::{
    Column, ForeignKey, KeyForm, PgCodec, RefAction, RelationKind, Repr, TableMeta, TableName, Trigger,
};
use crate::at::sql::{SqlDialect, TableRef};
use crate::at::AtError;
use async_trait::async_trait;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo};
use sqlx::{Encode, PgConnection, PgPool, Postgres, Row as _, Type};
use std::sync::Arc;

/// PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct Pg;

/// A value in a type's binary form, bound with that type's OID.
#[derive(Debug, Clone)]
pub struct PgBinary {
    /// The type (a domain, an array, a composite: any type with binary I/O).
    oid: u32,
    /// The binary form; `None` is NULL.
    bytes: Option<Vec<u8>>,
}

impl Type<Postgres> for PgBinary {
    fn type_info() -> PgTypeInfo {
        // Replaced per value by `produces`.
        PgTypeInfo::with_name("bytea")
    }
}

impl Encode<'_, Postgres> for PgBinary {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        match &self.bytes {
            Some(b) => {
                buf.extend_from_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn produces(&self) -> Option<PgTypeInfo> {
        Some(PgTypeInfo::with_oid(Oid(self.oid)))
    }
}

/// The codec that shows values of the base type `oid`.
fn codec(base_oid: u32) -> PgCodec {
    match base_oid {
        16 => PgCodec::Bool,
        20 => PgCodec::Int(8),
        21 => PgCodec::Int(2),
        23 => PgCodec::Int(4),
        26 => PgCodec::Oid,
        19 | 25 | 114 | 1042 | 1043 => PgCodec::Utf8,
        3802 => PgCodec::Jsonb,
        2950 => PgCodec::Uuid,
        _ => PgCodec::Hex,
    }
}

/// How keys of the base type `oid` are compared, for lock values.
fn key_form(base_oid: u32) -> KeyForm {
    match base_oid {
        1700 => KeyForm::PgNumeric,
        700 => KeyForm::PgFloat(4),
        701 => KeyForm::PgFloat(8),
        1186 => KeyForm::PgInterval,
        1042 => KeyForm::PgBpchar,
        _ => KeyForm::Image,
    }
}

/// The lock value of a key image in form `form` (its hex binary image for
/// the forms other than `Image`): equal under the type's equality, equal here.
pub(crate) fn canonical_key(form: KeyForm, image: &str) -> Result<String, String> {
    let bytes = || unhex(image).ok_or_else(|| format!("{image:?} is not a hex image"));
    Ok(match form {
        KeyForm::Image | KeyForm::MySqlWeight { .. } => image.to_owned(),
        // Trailing spaces of a character(n) value do not count.
        KeyForm::PgBpchar => image.trim_end_matches(' ').to_owned(),
        KeyForm::PgNumeric => {
            // ndigits, weight, sign, dscale, digits: the display scale is not part of the value.
            let mut b = bytes()?;
            if b.len() < 8 {
                return Err("a numeric shorter than its header".into());
            }
            b[6] = 0;
            b[7] = 0;
            hex(&b)
        }
        KeyForm::PgFloat(n) => {
            let b = bytes()?;
            match (n, b.as_slice()) {
                (4, [a, b2, c, d]) => {
                    let f = f32::from_be_bytes([*a, *b2, *c, *d]);
                    let f = if f.is_nan() {
                        f32::NAN
                    } else if f == 0.0 {
                        0.0
                    } else {
                        f
                    };
                    hex(&f.to_be_bytes())
                }
                (8, b8) if b8.len() == 8 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b8);
                    let f = f64::from_be_bytes(a);
                    let f = if f.is_nan() {
                        f64::NAN
                    } else if f == 0.0 {
                        0.0
                    } else {
                        f
                    };
                    hex(&f.to_be_bytes())
                }
                _ => return Err("a float of the wrong width".into()),
            }
        }
        KeyForm::PgInterval => {
            // time (µs, i64), day (i32), month (i32), compared as one length.
            let b = bytes()?;
            if b.len() != 16 {
                return Err("an interval is not 16 bytes".into());
            }
            let time = i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            let day = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
            let month = i32::from_be_bytes([b[12], b[13], b[14], b[15]]);
            let day_us: i128 = 86_400_000_000;
            (i128::from(time) + i128::from(day) * day_us + i128::from(month) * 30 * day_us).to_string()
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Shows a binary value as its image.
pub(crate) fn decode(codec: PgCodec, b: &[u8]) -> Result<String, String> {
    let int = |n: usize| -> Result<[u8; 8], String> {
        if b.len() != n {
            return Err(format!("a {n}-byte integer has {} bytes", b.len()));
        }
        let mut out = [0u8; 8];
        out[8 - n..].copy_from_slice(b);
        Ok(out)
    };
    Ok(match codec {
        PgCodec::Int(2) => {
            let v = int(2)?;
            i16::from_be_bytes([v[6], v[7]]).to_string()
        }
        PgCodec::Int(4) => {
            let v = int(4)?;
            i32::from_be_bytes([v[4], v[5], v[6], v[7]]).to_string()
        }
        PgCodec::Int(_) => i64::from_be_bytes(int(8)?).to_string(),
        PgCodec::Oid => {
            let v = int(4)?;
            u32::from_be_bytes([v[4], v[5], v[6], v[7]]).to_string()
        }
        PgCodec::Bool => match b {
            [0] => "f".into(),
            [1] => "t".into(),
            _ => return Err("a boolean is not one byte 0 or 1".into()),
        },
        PgCodec::Utf8 => String::from_utf8(b.to_vec()).map_err(|_| "text is not UTF-8".to_owned())?,
        PgCodec::Jsonb => match b.split_first() {
            Some((1, text)) => String::from_utf8(text.to_vec()).map_err(|_| "jsonb is not UTF-8".to_owned())?,
            _ => return Err("jsonb of an unknown binary version".into()),
        },
        PgCodec::Uuid => {
            if b.len() != 16 {
                return Err("a uuid is not 16 bytes".into());
            }
            let h = hex(b);
            format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
        }
        PgCodec::Hex => hex(b),
    })
}

/// The binary value an image shows (the inverse of [`decode`]).
pub(crate) fn encode(codec: PgCodec, s: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("{s:?} is not a {codec:?} image");
    Ok(match codec {
        PgCodec::Int(2) => s.parse::<i16>().map_err(|_| bad())?.to_be_bytes().to_vec(),
        PgCodec::Int(4) => s.parse::<i32>().map_err(|_| bad())?.to_be_bytes().to_vec(),
        PgCodec::Int(_) => s.parse::<i64>().map_err(|_| bad())?.to_be_bytes().to_vec(),
        PgCodec::Oid => s.parse::<u32>().map_err(|_| bad())?.to_be_bytes().to_vec(),
        PgCodec::Bool => match s {
            "f" => vec![0],
            "t" => vec![1],
            _ => return Err(bad()),
        },
        PgCodec::Utf8 => s.as_bytes().to_vec(),
        PgCodec::Jsonb => {
            let mut v = Vec::with_capacity(s.len() + 1);
            v.push(1);
            v.extend_from_slice(s.as_bytes());
            v
        }
        PgCodec::Uuid => {
            let h: String = s.chars().filter(|c| *c != '-').collect();
            match unhex(&h) {
                Some(b) if b.len() == 16 && s.len() == 36 => b,
                _ => return Err(bad()),
            }
        }
        PgCodec::Hex => unhex(s).ok_or_else(bad)?,
    })
}

fn pg_codec(col: &Column) -> Result<PgCodec, AtError> {
    expect_repr(col, |r| match r {
        Repr::PgBinary(c) => Some(c),
        Repr::MySql(_) => None,
    })
}

fn action(code: &str) -> RefAction {
    match code {
        "r" => RefAction::Restrict,
        "c" => RefAction::Cascade,
        "n" => RefAction::SetNull,
        "d" => RefAction::SetDefault,
        _ => RefAction::NoAction,
    }
}

/// A relation as `pg_class` describes it.
type RelationRow = (i64, String, String, String, String, bool, Option<String>, Option<String>);
/// A column: name, type, type OID, typmod, type name, send function,
/// receivable, base type OID, name and kind (typtype and typcategory),
/// nondeterministic collation, key position, generated, identity always.
type ColumnRow = (
    String,
    String,
    i64,
    i32,
    String,
    String,
    bool,
    Option<i64>,
    Option<String>,
    Option<String>,
    bool,
    Option<i32>,
    bool,
    bool,
);
/// A foreign key touching the table.
type ForeignKeyRow = (
    String,
    String,
    String,
    Vec<String>,
    String,
    String,
    Vec<String>,
    String,
    String,
    bool,
    Vec<String>,
    bool,
    bool,
    bool,
    bool,
);

at_backend!(Pg, Postgres, PgConnection, sqlx::postgres::PgRow, {
    const DIALECT: SqlDialect = SqlDialect::Postgres;
    const UNDO_DDL: &'static str = crate::migrations::AT_UNDO_LOG_POSTGRES;

    async fn install(pool: &PgPool) -> Result<(), sqlx::Error> {
        crate::migrations::install_postgres(pool, Self::UNDO_DDL).await
    }

    async fn server_info(conn: &mut PgConnection) -> Result<ServerInfo, sqlx::Error> {
        let version: i32 =
            sqlx::query_scalar("SELECT current_setting('server_version_num')::int").fetch_one(&mut *conn).await?;
        // 13: partitions' copies of triggers are visible in pg_trigger.
        if version < 130_000 {
            return Err(sqlx::Error::Protocol(format!(
                "AT mode needs PostgreSQL 13 or later (server_version_num {version})"
            )));
        }
        Ok(ServerInfo { insert_returning: true, delete_returning: true, lower_case_table_names: 0 })
    }

    async fn locate_undo(conn: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass('tandem_undo_log')",
        )
        .fetch_optional(&mut *conn)
        .await
    }

    async fn is_temporary(_conn: &mut PgConnection, meta: &TableMeta) -> Result<bool, sqlx::Error> {
        // The scope names the session's temporary tables: one that shadows a
        // name gives another cache entry, read with its persistence.
        Ok(meta.temporary)
    }

    async fn scope(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT current_schemas(true)::text || COALESCE(' temp:' || (SELECT string_agg(relname::text, ',' ORDER BY relname) \
                    FROM pg_class WHERE relnamespace = pg_my_temp_schema()), '')",
        )
        .fetch_one(&mut *conn)
        .await
    }

    async fn table_meta(
        conn: &mut PgConnection,
        table: &TableRef,
        _server: &ServerInfo,
        _scope: Option<&str>,
    ) -> Result<Option<TableMeta>, sqlx::Error> {
        let relation: Option<RelationRow> = sqlx::query_as(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text, \
                    c.relispartition, rn.nspname::text, rc.relname::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_class rc ON rc.oid = CASE WHEN c.relispartition THEN pg_partition_root(c.oid) ELSE c.oid END \
             LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
             WHERE c.oid = to_regclass(CASE WHEN $1::text IS NULL THEN quote_ident($2) \
                                            ELSE quote_ident($1) || '.' || quote_ident($2) END)",
        )
        .bind(table.schema.as_deref())
        .bind(&table.name)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((oid, schema, name, relkind, persistence, _, root_schema, root_name)) = relation else {
            return Ok(None);
        };
        let kind = match relkind.as_str() {
            "r" => RelationKind::Table,
            "p" => RelationKind::Partitioned,
            "v" => RelationKind::View,
            "m" => RelationKind::MaterializedView,
            "f" => RelationKind::Foreign,
            _ => RelationKind::Other,
        };
        let columns: Vec<ColumnRow> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid::int8, a.atttypmod, \
                    quote_ident(tn.nspname) || '.' || quote_ident(t.typname), \
                    COALESCE(quote_ident(sn.nspname) || '.' || quote_ident(sp.proname), ''), t.typreceive <> 0, \
                    bt.oid::int8, bt.typname::text, bt.typtype::text || bt.typcategory::text, \
                    COALESCE(NOT coll.collisdeterministic, false), \
                    array_position(i.indkey::int2[], a.attnum), a.attgenerated <> '', a.attidentity = 'a' \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace \
             LEFT JOIN LATERAL (WITH RECURSIVE b(oid, base) AS (SELECT t.oid, t.typbasetype \
                                                                UNION ALL SELECT bt.oid, bt.typbasetype \
                                                                FROM b JOIN pg_type bt ON bt.oid = b.base) \
                                SELECT b.oid FROM b WHERE b.base = 0 LIMIT 1) base ON true \
             LEFT JOIN pg_type bt ON bt.oid = base.oid \
             LEFT JOIN pg_proc sp ON sp.oid = t.typsend LEFT JOIN pg_namespace sn ON sn.oid = sp.pronamespace \
             LEFT JOIN pg_collation coll ON coll.oid = a.attcollation \
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
             WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await?;
        let columns = columns
            .into_iter()
            .map(|row| {
                let (
                    name,
                    sql_type,
                    type_oid,
                    typmod,
                    type_name,
                    send_fn,
                    receivable,
                    base,
                    base_name,
                    kind,
                    nondet,
                    pk,
                    generated,
                    identity_always,
                ) = row;
                let type_oid = u32::try_from(type_oid).unwrap_or_default();
                let base = base.and_then(|b| u32::try_from(b).ok()).unwrap_or(type_oid);
                // Keys whose equal values can differ in their bytes in ways a
                // lock value cannot undo: refused as keys.
                let kind = kind.unwrap_or_default();
                let key_refusal = if base_name.as_deref() == Some("citext") {
                    Some("has the case-insensitive type citext".to_owned())
                } else if base == 3802 || kind.ends_with('A') || kind.starts_with(['c', 'r', 'm']) {
                    Some(format!(
                        "has the type {sql_type}, whose equal values (say 1.0 and 1.00 inside) can differ in their bytes"
                    ))
                } else if nondet {
                    Some("has a nondeterministic collation (equal texts can differ in their bytes)".to_owned())
                } else {
                    None
                };
                Column {
                    name,
                    sql_type,
                    // A narrower typmod (varchar(10) to varchar(5)) is another type to a restore.
                    type_id: format!("{type_oid}:{typmod}"),
                    type_oid,
                    type_name,
                    key_refusal,
                    invisible: false,
                    key_form: key_form(base),
                    send_fn,
                    receivable,
                    repr: Repr::PgBinary(codec(base)),
                    pk_position: pk.and_then(|p| usize::try_from(p).ok()),
                    generated,
                    identity_always,
                    auto_increment: false,
                }
            })
            .collect();
        let inheritance_children: Vec<String> = if kind == RelationKind::Table {
            sqlx::query_scalar(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE i.inhparent = $1::oid ORDER BY 1",
            )
            .bind(oid)
            .fetch_all(&mut *conn)
            .await?
        } else {
            Vec::new()
        };
        // A partitioned table's rows fire the triggers of the partition they live in, too.
        let triggers: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, t.tgname::text, \
                    CASE WHEN t.tgtype & 2 <> 0 THEN 'BEFORE' WHEN t.tgtype & 64 <> 0 THEN 'INSTEAD OF' ELSE 'AFTER' END \
                    || ' ' || concat_ws(' OR ', CASE WHEN t.tgtype & 4 <> 0 THEN 'INSERT' END, \
                                        CASE WHEN t.tgtype & 16 <> 0 THEN 'UPDATE' END, \
                                        CASE WHEN t.tgtype & 8 <> 0 THEN 'DELETE' END) \
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.tgrelid IN (SELECT relid FROM pg_partition_tree($1::oid) UNION SELECT $1::oid) \
               AND NOT t.tgisinternal AND t.tgenabled <> 'D' AND t.tgtype & 28 <> 0 \
             ORDER BY 1, 2, 3",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await?;
        let triggers = triggers
            .into_iter()
            .map(|(schema, table, name, timing)| Trigger { table: TableName { schema, name: table }, name, timing })
            .collect();
        let rules: Vec<String> = sqlx::query_scalar(
            "SELECT rulename::text FROM pg_rewrite WHERE ev_class = $1::oid AND rulename <> '_RETURN' ORDER BY 1",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await?;
        // Keys defined on this table or an ancestor partitioned table, and
        // those referencing either (a partition's rows are its root's).
        let fks: Vec<ForeignKeyRow> = sqlx::query_as(
            "WITH me AS (SELECT relid FROM pg_partition_ancestors($1::oid) UNION SELECT $1::oid), \
                  parts AS (SELECT relid FROM pg_partition_tree($1::oid) WHERE relid <> $1::oid) \
             SELECT con.conname::text, cn.nspname::text, cc.relname::text, \
                    ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, i) \
                          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i), \
                    pn.nspname::text, pc.relname::text, \
                    ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, i) \
                          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i), \
                    con.confdeltype::text, con.confupdtype::text, con.condeferrable, \
                    ARRAY(SELECT a.attname::text \
                          FROM jsonb_array_elements_text(CASE jsonb_typeof(to_jsonb(con) -> 'confdelsetcols') \
                                                         WHEN 'array' THEN to_jsonb(con) -> 'confdelsetcols' \
                                                         ELSE '[]' END) \
                               WITH ORDINALITY k(n, i) \
                          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n::int2 ORDER BY k.i), \
                    con.confrelid IN (SELECT relid FROM me), con.conrelid IN (SELECT relid FROM me), \
                    con.confrelid IN (SELECT relid FROM parts), cc.relrowsecurity \
             FROM pg_constraint con \
             JOIN pg_class cc ON cc.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace \
             JOIN pg_class pc ON pc.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace \
             WHERE con.contype = 'f' AND con.conparentid = 0 \
               AND (con.confrelid IN (SELECT relid FROM me UNION SELECT relid FROM parts) \
                    OR con.conrelid IN (SELECT relid FROM me)) \
             ORDER BY 1, 2, 3",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await?;
        let mut referenced_by = Vec::new();
        let mut references = Vec::new();
        for (name, cs, ct, ccols, ps, pt, pcols, del, upd, deferrable, delcols, to_me, from_me, to_part, rls) in fks {
            let fk = ForeignKey {
                name,
                child: TableName { schema: cs, name: ct },
                child_columns: ccols,
                parent: TableName { schema: ps, name: pt },
                parent_columns: pcols,
                on_delete: action(&del),
                on_delete_columns: delcols,
                on_update: action(&upd),
                deferrable,
                to_partition: to_part,
                child_row_security: rls,
            };
            if from_me {
                references.push(fk.clone());
            }
            if to_me || to_part {
                referenced_by.push(fk);
            }
        }
        let lock_table = match (root_schema, root_name) {
            (Some(schema), Some(name)) => TableName { schema, name },
            _ => TableName { schema: schema.clone(), name: name.clone() },
        };
        Ok(Some(TableMeta {
            schema,
            name,
            kind,
            lock_table,
            temporary: persistence == "t",
            inheritance_children,
            triggers,
            rules,
            referenced_by,
            references,
            columns,
            case_insensitive_columns: false,
        }))
    }

    fn images_at(row: &sqlx::postgres::PgRow, first: usize, columns: &[&Column]) -> Result<Row, AtError> {
        columns
            .iter()
            .enumerate()
            .map(|(j, col)| {
                let bytes: Option<Vec<u8>> = row.try_get(first + j)?;
                match bytes {
                    None => Ok(None),
                    Some(b) => decode(pg_codec(col)?, &b)
                        .map(Some)
                        .map_err(|e| AtError::Internal(format!("column {}: {e}", col.name))),
                }
            })
            .collect()
    }

    fn image_expr(col: &Column) -> String {
        format!("{}({})", col.send_fn, SqlDialect::Postgres.quote(&col.name))
    }

    fn image_param(col: &Column, value: Option<&str>) -> Result<Param<Postgres>, AtError> {
        let bytes = match value {
            None => None,
            Some(v) => {
                Some(encode(pg_codec(col)?, v).map_err(|e| AtError::CorruptUndo(format!("column {}: {e}", col.name)))?)
            }
        };
        Ok(Arc::new(PgBinary { oid: col.type_oid, bytes }))
    }

    fn value_expr(col: &Column, placeholder: &str) -> String {
        // The parameter already has the column's type; the cast names it in
        // the SQL, so that sqlx's statement cache (by SQL text) never binds
        // values of another type to the statement.
        format!("CAST({placeholder} AS {})", col.type_name)
    }

    fn lock_value(col: &Column, image: Option<&str>) -> Result<Option<String>, AtError> {
        image
            .map(|v| {
                canonical_key(col.key_form, v).map_err(|e| AtError::Internal(format!("key column {}: {e}", col.name)))
            })
            .transpose()
    }

    async fn render(conn: &mut PgConnection, columns: &[&Column], row: &Row) -> Result<Row, AtError> {
        if columns.iter().all(|c| !matches!(c.repr, Repr::PgBinary(PgCodec::Hex))) {
            return Ok(row.clone()); // every image is already its text
        }
        render_as_text(conn, columns, row).await
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

    async fn begin_restore(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        // Images are binary and need none of these; they make what the
        // rollback reports, and what declared triggers see, independent of
        // the session too. Deferrable constraints are checked at commit, so
        // that a swap of unique values can be restored row by row.
        sqlx::query(
            "SELECT set_config('datestyle', 'ISO, YMD', true), set_config('intervalstyle', 'postgres', true), \
                    set_config('timezone', 'UTC', true), set_config('extra_float_digits', '3', true), \
                    set_config('bytea_output', 'hex', true), set_config('xmloption', 'content', true), \
                    set_config('tandem.at_restore', 'on', true)",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("SET CONSTRAINTS ALL DEFERRED").execute(&mut *conn).await?;
        Ok(())
    }

    async fn check_constraints(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SET CONSTRAINTS ALL IMMEDIATE").execute(&mut *conn).await?;
        Ok(())
    }

    async fn end_restore(_conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        Ok(()) // SET LOCAL ended with the transaction
    }
});

/// Renders binary images as PostgreSQL's own text (in the rollback's fixed
/// settings), for reports: `SELECT $1::text, ...` over typed parameters.
async fn render_as_text(conn: &mut PgConnection, columns: &[&Column], row: &Row) -> Result<Row, AtError> {
    let mut params: Vec<Param<Postgres>> = Vec::with_capacity(columns.len());
    let mut exprs = Vec::with_capacity(columns.len());
    for (i, (col, v)) in columns.iter().zip(row).enumerate() {
        params.push(Pg::image_param(col, v.as_deref())?);
        exprs.push(format!("{}::text", Pg::value_expr(col, &format!("${}", i + 1))));
    }
    if exprs.is_empty() {
        return Ok(Vec::new());
    }
    let plan: Vec<usize> = (0..params.len()).collect();
    let sql = format!("SELECT {}", exprs.join(", "));
    Ok(Pg::fetch_text(conn, &sql, &params, &plan).await?.into_iter().next().unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip() {
        let cases: &[(PgCodec, &[u8], &str)] = &[
            (PgCodec::Int(2), &[0xff, 0xfe], "-2"),
            (PgCodec::Int(4), &[0, 0, 0, 42], "42"),
            (PgCodec::Int(8), &[0x80, 0, 0, 0, 0, 0, 0, 0], "-9223372036854775808"),
            (PgCodec::Oid, &[0xff, 0xff, 0xff, 0xff], "4294967295"),
            (PgCodec::Bool, &[1], "t"),
            (PgCodec::Utf8, "Über ✓".as_bytes(), "Über ✓"),
            (PgCodec::Jsonb, b"\x01{\"a\": 1}", "{\"a\": 1}"),
            (PgCodec::Hex, &[0, 0, 0x22, 0x9d], "0000229d"),
        ];
        for (c, b, s) in cases {
            assert_eq!(decode(*c, b).unwrap(), *s, "{c:?}");
            assert_eq!(encode(*c, s).unwrap(), *b, "{c:?}");
        }
        let u = [0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8];
        let s = decode(PgCodec::Uuid, &u).unwrap();
        assert_eq!(s, "12345678-9abc-def0-0102-030405060708");
        assert_eq!(encode(PgCodec::Uuid, &s).unwrap(), u);
        assert!(encode(PgCodec::Int(4), "99999999999").is_err());
        assert!(encode(PgCodec::Hex, "abc").is_err());
        assert!(decode(PgCodec::Int(4), &[1]).is_err());
        assert!(decode(PgCodec::Jsonb, b"\x02{}").is_err());
    }
}
