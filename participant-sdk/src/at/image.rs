//! Row images, the undo log's content and the global lock key of a row.
//! Pure: no database here.
//!
//! A row image is the list of the row's column values in a canonical text
//! form (`NULL` as JSON null), aligned with the statement's column list: on
//! PostgreSQL the type's binary form shown per [`super::meta::PgCodec`], on
//! MySQL a text expression per [`super::meta::MySqlRepr`]. Either is
//! independent of the session's settings, compares without type knowledge,
//! and restores exactly. The undo log is plain JSON of these values: nothing
//! in it names a type to instantiate.

use super::meta::TableName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One row's values, aligned with [`UndoStatement::columns`].
pub type Row = Vec<Option<String>>;

/// The undo log format this SDK writes and reads.
pub const UNDO_VERSION: u32 = 3;

/// Kind of an imaged statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    /// Rows that did not exist before.
    Insert,
    /// Rows changed in place (primary key unchanged).
    Update,
    /// Rows that no longer exist.
    Delete,
}

/// The images of one statement, or of the rows a referential action of the
/// database changed with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndoStatement {
    /// Schema (or database) of the table.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// What the statement did.
    pub kind: StatementKind,
    /// Column names, in the order of every row below.
    pub columns: Vec<String>,
    /// Each column's type identity (PostgreSQL type OID, MySQL `DATA_TYPE`):
    /// a rollback refuses images of a column whose type changed since.
    pub types: Vec<String>,
    /// Primary-key column names, in key order.
    pub pk: Vec<String>,
    /// Rows before the statement (empty for an insert), in the order the
    /// statement wrote them.
    pub before: Vec<Row>,
    /// Rows after it (empty for a delete); for an update, `after[i]` is
    /// `before[i]` changed.
    pub after: Vec<Row>,
}

impl UndoStatement {
    /// The table.
    pub fn table_name(&self) -> TableName {
        TableName { schema: self.schema.clone(), name: self.table.clone() }
    }
}

/// The `rollback_info` of one branch: its statements in execution order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndoLog {
    /// Format version ([`UNDO_VERSION`]).
    pub version: u32,
    /// Statements in the order they ran.
    pub statements: Vec<UndoStatement>,
}

/// A row that a rollback found other than it may be, reported in the
/// callback's answer (and so in the branch's `last_error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// `schema.table`.
    pub table: String,
    /// Primary-key values.
    pub pk: Vec<Option<String>>,
    /// What should be there (null: no row).
    pub expected: Option<serde_json::Map<String, serde_json::Value>>,
    /// What is there now (null: no row).
    pub found: Option<serde_json::Map<String, serde_json::Value>>,
    /// Why the row is reported, when it is not plain "changed by someone else".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Values of `row` at `indexes`.
pub fn pick(row: &Row, indexes: &[usize]) -> Row {
    indexes.iter().map(|&i| row.get(i).cloned().flatten()).collect()
}

/// Longest value shown in a report; the undo row keeps the whole image.
const REPORT_VALUE_CHARS: usize = 256;

/// A row as a JSON object (for reports), long values shortened.
pub fn as_object(columns: &[String], row: &Row) -> serde_json::Map<String, serde_json::Value> {
    columns
        .iter()
        .zip(row)
        .map(|(c, v)| {
            let v = match v {
                None => serde_json::Value::Null,
                Some(s) if s.chars().count() > REPORT_VALUE_CHARS => {
                    serde_json::Value::String(format!("{}…", s.chars().take(REPORT_VALUE_CHARS).collect::<String>()))
                }
                Some(s) => serde_json::Value::String(s.clone()),
            };
            (c.clone(), v)
        })
        .collect()
}

/// Longest lock key the coordinator accepts, in bytes.
pub const MAX_LOCK_KEY_BYTES: usize = 512;

/// Appends `s` with `%` and every character of `special` percent-escaped.
fn escape_into(out: &mut String, s: &str, special: &[char]) {
    for ch in s.chars() {
        if ch == '%' || special.contains(&ch) {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(ch);
        }
    }
}

/// The global lock key of a row: `schema.table:v1_v2`. Injective: `.` and
/// `:` in names and `_`, `:`, `,` in values are percent-escaped (and `%`
/// and `~` everywhere), so the first `:` ends the table, the one `.` before
/// it ends the schema, and `_` separates values. A key longer than
/// [`MAX_LOCK_KEY_BYTES`] keeps its table and carries the SHA-256 of its
/// values instead (`schema.table:~<hex>`), or, if even that is too long, is
/// `~<hex>` of the whole key; `~` starts no name or value.
pub fn lock_key(table: &TableName, pk_values: &[Option<String>]) -> String {
    let mut names = String::with_capacity(table.schema.len() + table.name.len() + 2);
    escape_into(&mut names, &table.schema, &['.', ':', '~']);
    names.push('.');
    escape_into(&mut names, &table.name, &['.', ':', '~']);
    let mut values = String::new();
    for (i, v) in pk_values.iter().enumerate() {
        if i > 0 {
            values.push('_');
        }
        escape_into(&mut values, v.as_deref().unwrap_or(""), &['_', ':', ',', '~']);
    }
    if names.len() + 1 + values.len() <= MAX_LOCK_KEY_BYTES {
        return format!("{names}:{values}");
    }
    let digest = |s: &str| Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let short = format!("{names}:~{}", digest(&values));
    if short.len() <= MAX_LOCK_KEY_BYTES {
        return short;
    }
    format!("~{}", digest(&format!("{names}:{values}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(schema: &str, name: &str) -> TableName {
        TableName { schema: schema.into(), name: name.into() }
    }

    #[test]
    fn lock_keys_are_readable_and_escape_separators() {
        assert_eq!(lock_key(&t("public", "t"), &[Some("1".into())]), "public.t:1");
        assert_eq!(
            lock_key(&t("public", "order_items"), &[Some("a_b".into()), Some("c".into())]),
            "public.order_items:a%5Fb_c"
        );
        // The reproductions of the issue: a dotted schema or table name.
        assert_ne!(lock_key(&t("a.b", "c"), &[Some("1".into())]), lock_key(&t("a", "b.c"), &[Some("1".into())]));
        assert_ne!(
            lock_key(&t("s", "t"), &[Some("a_b".into()), Some("c".into())]),
            lock_key(&t("s", "t"), &[Some("a".into()), Some("b_c".into())])
        );
    }

    #[test]
    fn long_keys_are_digested_within_the_limit() {
        let long = "x".repeat(600);
        let k = lock_key(&t("public", "t"), &[Some(long.clone())]);
        assert!(k.starts_with("public.t:~") && k.len() <= MAX_LOCK_KEY_BYTES, "{k}");
        let other = lock_key(&t("public", "t"), &[Some(format!("{long}y"))]);
        assert_ne!(k, other);
        let huge_name = "é".repeat(200);
        let k = lock_key(&t(&huge_name, &huge_name), &[Some("1".into())]);
        assert!(k.starts_with('~') && k.len() <= MAX_LOCK_KEY_BYTES, "{k}");
    }

    /// Texts made of the characters that matter to the encoding.
    fn adversarial() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('.'),
                Just(':'),
                Just('_'),
                Just(','),
                Just('%'),
                Just('~'),
                Just('2'),
                Just('E'),
                Just('a'),
                Just('é'),
                Just(' ')
            ],
            0..8,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    fn row_ref() -> impl Strategy<Value = (TableName, Vec<Option<String>>)> {
        (adversarial(), adversarial(), proptest::collection::vec(adversarial().prop_map(Some), 1..4))
            .prop_map(|(s, n, k)| (TableName { schema: s, name: n }, k))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]
        /// Distinct rows (table, key) never share a lock key, and one row always has one.
        #[test]
        fn lock_keys_are_injective(a in row_ref(), b in row_ref()) {
            let (ka, kb) = (lock_key(&a.0, &a.1), lock_key(&b.0, &b.1));
            prop_assert_eq!(a == b, ka == kb, "{:?} -> {}, {:?} -> {}", a, ka, b, kb);
        }

        /// The same with long values, which are digested.
        #[test]
        fn digested_keys_are_injective(a in row_ref(), b in row_ref(), pad in 500usize..700) {
            let long = |(t, k): &(TableName, Vec<Option<String>>)| {
                let mut k = k.clone();
                k[0] = k[0].as_ref().map(|v| format!("{v}{}", "z".repeat(pad)));
                (t.clone(), k)
            };
            let (a, b) = (long(&a), long(&b));
            let (ka, kb) = (lock_key(&a.0, &a.1), lock_key(&b.0, &b.1));
            prop_assert!(ka.len() <= MAX_LOCK_KEY_BYTES);
            prop_assert_eq!(a == b, ka == kb);
        }
    }

    #[test]
    fn undo_log_is_plain_json() {
        let log = UndoLog {
            version: UNDO_VERSION,
            statements: vec![UndoStatement {
                schema: "public".into(),
                table: "t".into(),
                kind: StatementKind::Update,
                columns: vec!["id".into(), "v".into()],
                types: vec!["23".into(), "25".into()],
                pk: vec!["id".into()],
                before: vec![vec![Some("1".into()), None]],
                after: vec![vec![Some("1".into()), Some("x".into())]],
            }],
        };
        let json = serde_json::to_string(&log).unwrap();
        assert_eq!(
            json,
            r#"{"version":3,"statements":[{"schema":"public","table":"t","kind":"update","columns":["id","v"],"types":["23","25"],"pk":["id"],"before":[["1",null]],"after":[["1","x"]]}]}"#
        );
        assert_eq!(serde_json::from_str::<UndoLog>(&json).unwrap(), log);
    }

    #[test]
    fn reports_shorten_long_values() {
        let o = as_object(&["v".into()], &vec![Some("y".repeat(1000))]);
        assert_eq!(o["v"].as_str().unwrap().chars().count(), REPORT_VALUE_CHARS + 1);
    }
}
