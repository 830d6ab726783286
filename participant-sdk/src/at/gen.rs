//! SQL that AT generates, shared by phase 1 and rollback: table references,
//! image select lists, key filters, reads by key. Every identifier is quoted
//! by [`SqlDialect::quote`], every value is a parameter, and the text goes
//! through [`bind_plan`] before it runs.

use super::backend::{AtBackend, Conn, Param};
use super::image::Row;
use super::meta::{Column, TableMeta};
use super::sql::{bind_plan, SqlDialect};
use super::AtError;

/// Rows per generated `WHERE key = ... OR ...` query.
pub(super) const KEY_CHUNK: usize = 500;

/// Most parameters one generated statement may carry (PostgreSQL's limit
/// is 65,535; MySQL's prepared statements allow as many).
pub(super) const MAX_PARAMS: usize = 60_000;

/// `schema.table`, quoted: the name an INSERT writes into.
pub(super) fn qualified(d: SqlDialect, meta: &TableMeta) -> String {
    format!("{}.{}", d.quote(&meta.schema), d.quote(&meta.name))
}

/// The table as UPDATE, DELETE and FROM name it: with `ONLY` on a
/// PostgreSQL table that others inherit from, so that their rows (which AT
/// does not image) are never reached.
pub(super) fn target(d: SqlDialect, meta: &TableMeta) -> String {
    if meta.needs_only() {
        format!("ONLY {}", qualified(d, meta))
    } else {
        qualified(d, meta)
    }
}

/// The select list reading `columns` of `meta` as images.
pub(super) fn image_list<B: AtBackend>(meta: &TableMeta, columns: &[usize]) -> String {
    columns.iter().map(|&i| B::image_expr(&meta.columns[i])).collect::<Vec<_>>().join(", ")
}

/// The columns of `meta` at `indexes`.
pub(super) fn cols<'m>(meta: &'m TableMeta, indexes: &[usize]) -> Vec<&'m Column> {
    indexes.iter().map(|&i| &meta.columns[i]).collect()
}

/// Builds AT-generated SQL with numbered parameters after the user's.
pub(super) struct Gen<B: AtBackend> {
    /// The parameter list: the caller's, then AT's own.
    pub params: Vec<Param<B::Db>>,
}

impl<B: AtBackend> Gen<B> {
    /// A builder whose first parameters are `user`'s.
    pub fn new(user: &[Param<B::Db>]) -> Self {
        Gen { params: user.to_vec() }
    }

    /// Adds the image `v` of a value of `col`; returns the expression for it.
    pub fn value(&mut self, col: &Column, v: Option<&str>) -> Result<String, AtError> {
        self.params.push(B::image_param(col, v)?);
        Ok(B::value_expr(col, &B::DIALECT.param(self.params.len())))
    }

    /// Adds a text parameter; returns its placeholder.
    pub fn text(&mut self, v: Option<String>) -> String {
        self.params.push(B::text(v));
        B::DIALECT.param(self.params.len())
    }

    /// `(c1 = v AND c2 = w) OR ...`: the columns `on` equal to each of
    /// `values`, whose images are of the columns `typed` (the same columns,
    /// or the referenced ones of a foreign key).
    pub fn filter(&mut self, on: &[&Column], typed: &[&Column], values: &[Row]) -> Result<String, AtError> {
        let mut out = String::new();
        for (r, row) in values.iter().enumerate() {
            out.push_str(if r == 0 { "(" } else { " OR (" });
            for (j, ((c, t), v)) in on.iter().zip(typed).zip(row).enumerate() {
                if j > 0 {
                    out.push_str(" AND ");
                }
                let e = self.value(t, v.as_deref())?;
                out.push_str(&format!("{} = {e}", B::DIALECT.quote(&c.name)));
            }
            out.push(')');
        }
        Ok(out)
    }
}

/// Reads rows of `meta` by key, as images of `columns`, locking them.
/// Rows come back in no particular order.
pub(super) async fn rows_by_pk<B: AtBackend>(
    conn: &mut Conn<B>,
    meta: &TableMeta,
    columns: &[usize],
    pk: &[usize],
    keys: &[Row],
) -> Result<Vec<Row>, AtError> {
    let key_cols = cols(meta, pk);
    rows_where::<B>(conn, meta, columns, &key_cols, &key_cols, keys).await
}

/// Reads rows of `meta` whose columns `on` equal any of `values` (images of
/// the columns `typed`), as images of `columns`, locking them.
pub(super) async fn rows_where<B: AtBackend>(
    conn: &mut Conn<B>,
    meta: &TableMeta,
    columns: &[usize],
    on: &[&Column],
    typed: &[&Column],
    values: &[Row],
) -> Result<Vec<Row>, AtError> {
    let mut out = Vec::with_capacity(values.len());
    let images = cols(meta, columns);
    for chunk in values.chunks(KEY_CHUNK) {
        let mut g = Gen::<B>::new(&[]);
        let filter = g.filter(on, typed, chunk)?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {filter} FOR UPDATE",
            image_list::<B>(meta, columns),
            target(B::DIALECT, meta)
        );
        let (sql, plan) = bind_plan(&sql, B::DIALECT)?;
        out.extend(B::fetch_images(conn, &sql, &g.params, &plan, &images).await?);
    }
    Ok(out)
}
