//! Phase 1 of an AT branch: imaging statements in a local transaction, then
//! the registration with the global locks (the undo row is written
//! meanwhile) and the local commit.

use super::backend::{AtBackend, AtParam, Param};
use super::image::{lock_key, pick, Row, StatementKind, TableMeta, UndoLog, UndoStatement};
use super::sql::{analyze, bind_plan, is_constant, with_returning, Analyzed, Change, SqlDialect};
use super::{AtError, AtResource};
use crate::client::ClientError;
use backon::{ConstantBuilder, Retryable};
use sqlparser::ast::{BinaryOperator, Expr, Statement};
use sqlx::Database;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use tandem_wire::{BranchId, ErrorCode, GlobalStatus, LockCheckRequest, RegisterBranchRequest, ReportRequest, Xid};

/// Rows per generated `WHERE pk = ... OR ...` query.
const PK_CHUNK: usize = 500;

/// One branch's local transaction in AT mode. Dropping it without
/// [`commit`](AtTransaction::commit) rolls the local transaction back.
pub struct AtTransaction<B: AtBackend> {
    /// The resource (pool, coordinator, metadata cache).
    resource: AtResource<B>,
    /// The global transaction.
    xid: Xid,
    /// The local transaction.
    tx: sqlx::Transaction<'static, B::Db>,
    /// Images of every statement so far, in order.
    statements: Vec<UndoStatement>,
    /// Global lock keys of every row written.
    lock_keys: BTreeSet<String>,
    /// Set when a statement failed after it may have run: the branch can
    /// only be rolled back.
    poisoned: Option<String>,
}

impl<B: AtBackend> std::fmt::Debug for AtTransaction<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtTransaction")
            .field("xid", &self.xid)
            .field("statements", &self.statements.len())
            .field("lock_keys", &self.lock_keys.len())
            .finish()
    }
}

/// A statement with its parameters, built by [`AtTransaction::sql`].
pub struct AtQuery<'a, B: AtBackend> {
    /// The branch it runs in.
    txn: &'a mut AtTransaction<B>,
    /// The statement as the caller wrote it.
    sql: &'a str,
    /// Its parameters, in order.
    params: Vec<Param<B::Db>>,
}

impl<B: AtBackend> std::fmt::Debug for AtQuery<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtQuery").field("sql", &self.sql).field("params", &self.params.len()).finish()
    }
}

impl<'a, B: AtBackend> AtQuery<'a, B> {
    /// Binds the next parameter (`$n` in order on PostgreSQL, `?` on MySQL).
    pub fn bind<T: AtParam<B::Db> + 'static>(mut self, value: T) -> Self {
        self.params.push(Arc::new(value));
        self
    }

    /// Runs the statement; returns the number of rows it affected (or read, for `SELECT ... FOR UPDATE`).
    pub async fn execute(self) -> Result<u64, AtError> {
        Ok(self.run(false).await?.0)
    }

    /// Runs the statement and returns its rows (`RETURNING`, or `SELECT ... FOR UPDATE`).
    /// A RETURNING row carries AT's image columns after the ones asked for.
    pub async fn fetch_all(self) -> Result<Vec<<B::Db as Database>::Row>, AtError> {
        Ok(self.run(true).await?.1)
    }

    async fn run(self, want_rows: bool) -> Result<(u64, Vec<<B::Db as Database>::Row>), AtError> {
        let r = self.txn.run(self.sql, self.params, want_rows).await;
        if let Err(e) = &r {
            // A refusal happens before anything ran; any other error may come
            // after the statement changed rows that were not imaged.
            if !matches!(e, AtError::Unsupported(_)) {
                self.txn.poisoned.get_or_insert_with(|| e.to_string());
            }
        }
        r
    }
}

/// One statement being run: what it is, its table, and how it was called.
struct Stmt<'s, DB: Database> {
    /// The analysed statement.
    a: &'s Analyzed,
    /// Its table.
    meta: &'s TableMeta,
    /// Indexes of the table's primary-key columns.
    pk: &'s [usize],
    /// The caller's parameters.
    params: &'s [Param<DB>],
    /// Whether the caller wants the statement's rows.
    want_rows: bool,
}

// Manual impls: a derive would require `DB: Copy`.
impl<DB: Database> Clone for Stmt<'_, DB> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<DB: Database> Copy for Stmt<'_, DB> {}

/// Builds AT-generated SQL with numbered parameters after the user's.
struct Gen<B: AtBackend> {
    /// The parameter list: the caller's, then AT's own.
    params: Vec<Param<B::Db>>,
}

impl<B: AtBackend> Gen<B> {
    fn new(user: &[Param<B::Db>]) -> Self {
        Gen { params: user.to_vec() }
    }

    /// Adds a text parameter; returns its placeholder.
    fn text(&mut self, v: Option<String>) -> String {
        self.params.push(B::text(v));
        B::DIALECT.param(self.params.len())
    }

    /// `(pk1 = v AND pk2 = w) OR ...` for `keys` (pk values in key order).
    fn pk_filter(&mut self, meta: &TableMeta, pk: &[usize], keys: &[Row]) -> String {
        let mut out = String::new();
        for (r, key) in keys.iter().enumerate() {
            out.push_str(if r == 0 { "(" } else { " OR (" });
            for (j, (&c, v)) in pk.iter().zip(key).enumerate() {
                if j > 0 {
                    out.push_str(" AND ");
                }
                let col = &meta.columns[c];
                let p = self.text(v.clone());
                out.push_str(&format!("{} = {}", B::DIALECT.quote(&col.name), B::value_expr(col, &p)));
            }
            out.push(')');
        }
        out
    }
}

/// Most parameters one generated statement may carry (PostgreSQL's limit
/// is 65,535; MySQL's prepared statements allow as many).
const MAX_PARAMS: usize = 60_000;

/// A rewritten statement and its parameters.
type Restricted<DB> = (Statement, Vec<Param<DB>>);

/// The UPDATE or DELETE `s` with `AND (<key> = <imaged key> OR ...)` added to
/// its WHERE clause, and its parameters (the caller's, then the keys').
fn restrict<B: AtBackend>(s: Stmt<'_, B::Db>, keys: &[Row]) -> Result<Restricted<B::Db>, AtError> {
    if s.params.len() + keys.len() * s.pk.len() > MAX_PARAMS {
        return Err(AtError::Unsupported(format!(
            "the statement matches {} rows; AT images at most {} keys' worth of parameters per statement",
            keys.len(),
            MAX_PARAMS
        )));
    }
    let mut g = Gen::<B>::new(s.params);
    let filter = g.pk_filter(s.meta, s.pk, keys);
    let filter = super::sql::parse_expr(&filter, B::DIALECT)?;
    let mut statement = s.a.statement.clone();
    let selection = match &mut statement {
        Statement::Update { selection, .. } => selection,
        Statement::Delete(d) => &mut d.selection,
        _ => return Err(AtError::Internal("only UPDATE and DELETE are restricted".into())),
    };
    *selection = Some(match selection.take() {
        Some(w) => Expr::BinaryOp {
            left: Box::new(Expr::Nested(Box::new(w))),
            op: BinaryOperator::And,
            right: Box::new(Expr::Nested(Box::new(filter))),
        },
        None => filter,
    });
    Ok((statement, g.params))
}

/// `schema.table`, quoted.
pub(super) fn qualified(d: SqlDialect, meta: &TableMeta) -> String {
    format!("{}.{}", d.quote(&meta.schema), d.quote(&meta.name))
}

/// The select list reading every column of `meta` as text.
pub(super) fn text_columns<B: AtBackend>(meta: &TableMeta, columns: &[usize]) -> String {
    columns.iter().map(|&i| B::text_expr(&meta.columns[i])).collect::<Vec<_>>().join(", ")
}

/// Reads rows by primary key, as text, locking them.
pub(super) async fn rows_by_pk<B: AtBackend>(
    conn: &mut super::backend::Conn<B>,
    meta: &TableMeta,
    columns: &[usize],
    pk: &[usize],
    keys: &[Row],
) -> Result<Vec<Row>, AtError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(PK_CHUNK) {
        let mut g = Gen::<B>::new(&[]);
        let filter = g.pk_filter(meta, pk, chunk);
        let sql = format!(
            "SELECT {} FROM {} WHERE {filter} FOR UPDATE",
            text_columns::<B>(meta, columns),
            qualified(B::DIALECT, meta)
        );
        let (sql, plan) = bind_plan(&sql, B::DIALECT)?;
        out.extend(B::fetch_text(conn, &sql, &g.params, &plan).await?);
    }
    Ok(out)
}

impl<B: AtBackend> AtTransaction<B> {
    pub(super) fn new(resource: AtResource<B>, xid: Xid, tx: sqlx::Transaction<'static, B::Db>) -> Self {
        AtTransaction { resource, xid, tx, statements: Vec::new(), lock_keys: BTreeSet::new(), poisoned: None }
    }

    /// The global transaction.
    pub fn xid(&self) -> &Xid {
        &self.xid
    }

    /// The local connection, for plain reads. Writes through it bypass AT
    /// (they would be neither imaged nor locked).
    pub fn connection(&mut self) -> &mut <B::Db as Database>::Connection {
        &mut self.tx
    }

    /// Global lock keys taken so far.
    pub fn lock_keys(&self) -> impl Iterator<Item = &str> {
        self.lock_keys.iter().map(String::as_str)
    }

    /// A statement to run in AT mode: bind its parameters, then `execute` or `fetch_all`.
    pub fn sql<'a>(&'a mut self, sql: &'a str) -> AtQuery<'a, B> {
        AtQuery { txn: self, sql, params: Vec::new() }
    }

    async fn run(
        &mut self,
        sql: &str,
        params: Vec<Param<B::Db>>,
        want_rows: bool,
    ) -> Result<(u64, Vec<<B::Db as Database>::Row>), AtError> {
        let a = analyze(sql, B::DIALECT)?;
        if want_rows && !a.returning && a.change != Change::SelectForUpdate {
            return Err(AtError::Unsupported(
                "fetch_all returns rows only for SELECT ... FOR UPDATE or, on PostgreSQL, a statement with \
                 RETURNING; use execute"
                    .into(),
            ));
        }
        if a.params != params.len() {
            return Err(AtError::Unsupported(format!(
                "the statement uses {} parameter(s) but {} were bound",
                a.params,
                params.len()
            )));
        }
        let meta = self.resource.meta(&mut self.tx, &a.table).await?;
        let pk = meta.pk();
        if pk.is_empty() {
            return Err(AtError::Unsupported(format!(
                "table {} has no primary key; AT mode cannot image it",
                meta.qualified()
            )));
        }
        let s = Stmt { a: &a, meta: &meta, pk: &pk, params: &params, want_rows };
        match &a.change {
            Change::SelectForUpdate => self.select_for_update(s).await,
            Change::Insert { .. } => self.insert(s).await,
            Change::Update { .. } | Change::Delete => self.update_or_delete(s).await,
        }
    }

    /// `FROM t [AS alias] [WHERE ...]` of the statement.
    fn from_where(a: &Analyzed, meta: &TableMeta) -> String {
        let d = B::DIALECT;
        let mut s = qualified(d, meta);
        if let Some(alias) = &a.alias {
            s.push_str(&format!(" AS {}", d.quote(alias)));
        }
        if let Some(w) = &a.selection {
            s.push_str(&format!(" WHERE {w}"));
        }
        s
    }

    /// Runs the caller's statement as written, with all its parameters.
    async fn run_original(
        &mut self,
        sql: &str,
        params: &[Param<B::Db>],
        want_rows: bool,
    ) -> Result<(u64, Vec<<B::Db as Database>::Row>), AtError> {
        let plan: Vec<usize> = (0..params.len()).collect();
        if want_rows {
            let rows = B::fetch_rows(&mut self.tx, sql, params, &plan).await?;
            Ok((rows.len() as u64, rows))
        } else {
            Ok((B::execute(&mut self.tx, sql, params, &plan).await?, Vec::new()))
        }
    }

    /// Runs a rewritten statement (numbered parameters over `params`).
    async fn run_statement(
        &mut self,
        statement: &Statement,
        params: &[Param<B::Db>],
        want_rows: bool,
    ) -> Result<(u64, Vec<<B::Db as Database>::Row>), AtError> {
        let (sql, plan) = bind_plan(&statement.to_string(), B::DIALECT)?;
        if want_rows {
            let rows = B::fetch_rows(&mut self.tx, &sql, params, &plan).await?;
            Ok((rows.len() as u64, rows))
        } else {
            Ok((B::execute(&mut self.tx, &sql, params, &plan).await?, Vec::new()))
        }
    }

    async fn update_or_delete(&mut self, s: Stmt<'_, B::Db>) -> Result<(u64, Vec<<B::Db as Database>::Row>), AtError> {
        let Stmt { a, meta, pk, params, want_rows, .. } = s;
        let kind = match &a.change {
            Change::Update { columns } => {
                for c in columns {
                    match meta.index_of(c) {
                        None => return Err(AtError::Unsupported(format!("no column {c} in {}", meta.qualified()))),
                        Some(i) if pk.contains(&i) => {
                            return Err(AtError::Unsupported(format!(
                                "UPDATE of primary-key column {c} is not supported (the row could not be found again)"
                            )))
                        }
                        Some(_) => {}
                    }
                }
                StatementKind::Update
            }
            _ => StatementKind::Delete,
        };
        let all: Vec<usize> = (0..meta.columns.len()).collect();
        if kind == StatementKind::Update && B::DIALECT == SqlDialect::Postgres && !want_rows && !a.returning {
            return self.update_in_one_statement(s).await.map(|n| (n, Vec::new()));
        }
        let sql_before =
            format!("SELECT {} FROM {} FOR UPDATE", text_columns::<B>(meta, &all), Self::from_where(a, meta));
        let (sql_before, plan) = bind_plan(&sql_before, B::DIALECT)?;
        let before = B::fetch_text(&mut self.tx, &sql_before, params, &plan).await?;
        let keys: Vec<Row> = before.iter().map(|r| pick(r, pk)).collect();
        if keys.is_empty() {
            return Ok((0, Vec::new())); // nothing matched, so nothing may change
        }
        // The statement runs restricted to the imaged rows: a row that began
        // to match since (a phantom under READ COMMITTED) is left alone.
        let (stmt, all_params) = restrict::<B>(s, &keys)?;
        let (out, after) = match (kind, B::DIALECT) {
            // The after image comes back with the UPDATE itself.
            (StatementKind::Update, SqlDialect::Postgres) => self.run_returning(s, &stmt, &all_params, &all).await?,
            (StatementKind::Update, SqlDialect::MySql) => {
                let out = self.run_statement(&stmt, &all_params, want_rows).await?;
                (out, rows_by_pk::<B>(&mut self.tx, meta, &all, pk, &keys).await?)
            }
            _ => (self.run_statement(&stmt, &all_params, want_rows).await?, Vec::new()),
        };
        // An imaged row that no longer matches was not changed: the images
        // would not describe what happened. Refuse; the transaction must roll back.
        if out.0 != before.len() as u64 {
            return Err(AtError::Concurrent(format!(
                "the statement changed {} row(s) but {} were imaged; retry the local transaction",
                out.0,
                before.len()
            )));
        }
        self.record(meta, pk, kind, before, after, &keys);
        Ok(out)
    }

    /// PostgreSQL, UPDATE without RETURNING: both images and the change in
    /// one statement. The before image locks the rows (`FOR UPDATE` in a CTE)
    /// and the UPDATE changes exactly those rows (joined by `ctid`), so no
    /// phantom can slip in between; its RETURNING is the after image.
    async fn update_in_one_statement(&mut self, s: Stmt<'_, B::Db>) -> Result<u64, AtError> {
        let Stmt { a, meta, pk, params, .. } = s;
        let d = B::DIALECT;
        let Statement::Update { assignments, .. } = &a.statement else {
            return Err(AtError::Internal("not an update".into()));
        };
        let n = meta.columns.len();
        let image = |i: usize| format!("{} AS __tandem_{i}", B::text_expr(&meta.columns[i]));
        let images: Vec<String> = (0..n).map(image).collect();
        let names: Vec<String> = (0..n).map(|i| format!("__tandem_{i}")).collect();
        let target = match &a.alias {
            Some(alias) => format!("{} AS {}", qualified(d, meta), d.quote(alias)),
            None => qualified(d, meta),
        };
        let target_ref = a.alias.as_ref().map_or_else(|| qualified(d, meta), |alias| d.quote(alias));
        let sets: Vec<String> = assignments.iter().map(ToString::to_string).collect();
        let sql = format!(
            "WITH __tandem_b AS (SELECT {images}, tableoid AS __tandem_rel, ctid AS __tandem_ctid \
                                 FROM {from_where} FOR UPDATE), \
                  __tandem_a AS (UPDATE {target} SET {sets} FROM __tandem_b \
                                 WHERE {target_ref}.tableoid = __tandem_b.__tandem_rel \
                                   AND {target_ref}.ctid = __tandem_b.__tandem_ctid RETURNING {images}) \
             SELECT 'b', {names} FROM __tandem_b UNION ALL SELECT 'a', {names} FROM __tandem_a",
            images = images.join(", "),
            from_where = Self::from_where(a, meta),
            sets = sets.join(", "),
            names = names.join(", "),
        );
        let (sql, plan) = bind_plan(&sql, d)?;
        let mut before = Vec::new();
        let mut after = Vec::new();
        for mut row in B::fetch_text(&mut self.tx, &sql, params, &plan).await? {
            let which = row.remove(0);
            match which.as_deref() {
                Some("b") => before.push(row),
                _ => after.push(row),
            }
        }
        if after.len() != before.len() {
            // A locked row whose newest version the statement's snapshot
            // cannot see (changed and committed concurrently): not updated.
            return Err(AtError::Concurrent(format!(
                "the statement changed {} of the {} row(s) it imaged; retry the local transaction",
                after.len(),
                before.len()
            )));
        }
        let keys: Vec<Row> = before.iter().map(|r| pick(r, pk)).collect();
        let n = after.len() as u64;
        self.record(meta, pk, StatementKind::Update, before, after, &keys);
        Ok(n)
    }

    /// PostgreSQL: runs the INSERT or UPDATE with AT's text columns
    /// `columns` appended to its RETURNING list; returns the caller's result
    /// and those columns of every row.
    async fn run_returning(
        &mut self,
        s: Stmt<'_, B::Db>,
        statement: &Statement,
        params: &[Param<B::Db>],
        columns: &[usize],
    ) -> Result<((u64, Vec<<B::Db as Database>::Row>), Vec<Row>), AtError> {
        let Stmt { meta, want_rows, .. } = s;
        let extra: Vec<(String, String)> = columns
            .iter()
            .enumerate()
            .map(|(j, &c)| (B::text_expr(&meta.columns[c]), format!("__tandem_{j}")))
            .collect();
        let stmt = with_returning(statement, extra)?;
        let (sql, plan) = bind_plan(&stmt.to_string(), B::DIALECT)?;
        let rows = B::fetch_rows(&mut self.tx, &sql, params, &plan).await?;
        let mut images = Vec::with_capacity(rows.len());
        for r in &rows {
            let width = sqlx::Row::len(r);
            let first = width
                .checked_sub(columns.len())
                .ok_or_else(|| AtError::Internal("RETURNING row is too short".into()))?;
            images.push((first..width).map(|i| B::text_at(r, i)).collect::<Result<Row, _>>()?);
        }
        let n = rows.len() as u64;
        Ok(((n, if want_rows { rows } else { Vec::new() }), images))
    }

    async fn insert(&mut self, s: Stmt<'_, B::Db>) -> Result<(u64, Vec<<B::Db as Database>::Row>), AtError> {
        let Stmt { a, meta, pk, .. } = s;
        let Change::Insert { columns, rows } = &a.change else {
            return Err(AtError::Internal("not an insert".into()));
        };
        let all: Vec<usize> = (0..meta.columns.len()).collect();
        for c in columns {
            if meta.index_of(c).is_none() {
                return Err(AtError::Unsupported(format!("no column {c} in {}", meta.qualified())));
            }
        }
        let (out, after) = match B::DIALECT {
            // The inserted rows come back from RETURNING, after the caller's own columns.
            SqlDialect::Postgres => self.run_returning(s, &a.statement, s.params, &all).await?,
            SqlDialect::MySql => {
                let (out, keys) = self.insert_mysql(s, columns, rows).await?;
                (out, rows_by_pk::<B>(&mut self.tx, meta, &all, pk, &keys).await?)
            }
        };
        if after.len() as u64 != out.0 {
            return Err(AtError::Internal(format!(
                "inserted {} row(s) but found {} again by primary key",
                out.0,
                after.len()
            )));
        }
        let keys: Vec<Row> = after.iter().map(|r| pick(r, pk)).collect();
        self.record(meta, pk, StatementKind::Insert, Vec::new(), after, &keys);
        Ok(out)
    }

    /// MySQL has no RETURNING: the keys are the statement's own key values
    /// (literals or parameters), or the AUTO_INCREMENT values it generated.
    async fn insert_mysql(
        &mut self,
        s: Stmt<'_, B::Db>,
        columns: &[String],
        rows: &[Vec<sqlparser::ast::Expr>],
    ) -> Result<((u64, Vec<<B::Db as Database>::Row>), Vec<Row>), AtError> {
        let Stmt { a, meta, pk, params, want_rows, .. } = s;
        // Position of each key column among the inserted values.
        let positions: Vec<Option<usize>> = pk
            .iter()
            .map(
                |&c| {
                    if columns.is_empty() {
                        Some(c)
                    } else {
                        columns.iter().position(|n| *n == meta.columns[c].name)
                    }
                },
            )
            .collect();
        if let Some(positions) = positions.iter().copied().collect::<Option<Vec<usize>>>() {
            let mut filter = Vec::with_capacity(rows.len());
            for row in rows {
                let mut conj = Vec::with_capacity(pk.len());
                for (&c, &p) in pk.iter().zip(&positions) {
                    let e = row.get(p).ok_or_else(|| AtError::Unsupported("VALUES row is too short".into()))?;
                    if !is_constant(e) {
                        return Err(AtError::Unsupported(format!(
                            "the value of key column {} must be a literal or a parameter",
                            meta.columns[c].name
                        )));
                    }
                    conj.push(format!("{} = {e}", B::DIALECT.quote(&meta.columns[c].name)));
                }
                filter.push(format!("({})", conj.join(" AND ")));
            }
            let out = self.run_original(&a.sql, params, want_rows).await?;
            // Read back the keys as text, by the statement's own key expressions.
            let mut keys = Vec::with_capacity(rows.len());
            for chunk in filter.chunks(PK_CHUNK) {
                let sql = format!(
                    "SELECT {} FROM {} WHERE {}",
                    text_columns::<B>(meta, pk),
                    qualified(B::DIALECT, meta),
                    chunk.join(" OR ")
                );
                let (sql, plan) = bind_plan(&sql, B::DIALECT)?;
                keys.extend(B::fetch_text(&mut self.tx, &sql, params, &plan).await?);
            }
            return Ok((out, keys));
        }
        match pk {
            [c] if meta.columns[*c].auto_increment => {
                if rows.len() > 1 {
                    // Only lock modes 0 and 1 give one multi-row INSERT consecutive
                    // values; under 2 (MySQL 8's default) the computed keys could
                    // name other sessions' rows.
                    let mode = B::fetch_text(&mut self.tx, "SELECT CAST(@@innodb_autoinc_lock_mode AS CHAR)", &[], &[])
                        .await?;
                    if mode.first().and_then(|r| r.first()).cloned().flatten().as_deref() == Some("2") {
                        return Err(AtError::Unsupported(
                            "a multi-row INSERT with generated AUTO_INCREMENT keys needs innodb_autoinc_lock_mode \
                             0 or 1; insert one row per statement or give the keys"
                                .into(),
                        ));
                    }
                }
                let out = self.run_original(&a.sql, params, want_rows).await?;
                let (first, step) = B::last_insert_ids(&mut self.tx).await?;
                // Consecutive for one INSERT (checked above for several rows).
                let keys = (0..out.0).map(|i| vec![Some((first + i * step.max(1)).to_string())]).collect();
                Ok((out, keys))
            }
            _ => Err(AtError::Unsupported(
                "INSERT must give every primary-key column (or use one AUTO_INCREMENT key)".into(),
            )),
        }
    }

    async fn select_for_update(&mut self, s: Stmt<'_, B::Db>) -> Result<(u64, Vec<<B::Db as Database>::Row>), AtError> {
        let Stmt { a, meta, pk, params, want_rows, .. } = s;
        // Lock the rows locally first, then make sure no other global
        // transaction holds them: the read is then read-committed.
        let sql_keys = format!("SELECT {} FROM {} FOR UPDATE", text_columns::<B>(meta, pk), Self::from_where(a, meta));
        let (sql_keys, plan) = bind_plan(&sql_keys, B::DIALECT)?;
        let keys = B::fetch_text(&mut self.tx, &sql_keys, params, &plan).await?;
        let table = meta.qualified();
        let lock_keys: Vec<String> = keys.iter().map(|k| lock_key(&table, k)).collect();
        if !lock_keys.is_empty() {
            let req = LockCheckRequest {
                resource: self.resource.resource().to_owned(),
                lock_keys,
                xid: Some(self.xid.clone()),
            };
            let started = Instant::now();
            let check = {
                let (client, req) = (self.resource.client().clone(), Arc::new(req));
                move || {
                    let (client, req) = (client.clone(), req.clone());
                    async move {
                        let r = client.check_locks(&req).await?;
                        match r.holder {
                            Some(holder) if !r.free => {
                                Err(AtError::LockConflict { holder: Box::new(holder), waited: started.elapsed() })
                            }
                            _ => Ok(()),
                        }
                    }
                }
            };
            with_lock_retry(self.resource.inner.lock_retry, check).await?;
        }
        self.run_original(&a.sql, params, want_rows).await
    }

    fn record(
        &mut self,
        meta: &TableMeta,
        pk: &[usize],
        kind: StatementKind,
        before: Vec<Row>,
        after: Vec<Row>,
        keys: &[Row],
    ) {
        if keys.is_empty() {
            return;
        }
        let table = meta.qualified();
        self.lock_keys.extend(keys.iter().map(|k| lock_key(&table, k)));
        self.statements.push(UndoStatement {
            schema: meta.schema.clone(),
            table: meta.name.clone(),
            kind,
            columns: meta.columns.iter().map(|c| c.name.clone()).collect(),
            pk: pk.iter().map(|&i| meta.columns[i].name.clone()).collect(),
            before,
            after,
        });
    }

    /// Ends phase 1: registers the branch with its global locks (retrying a
    /// conflict as configured), writes the undo row, commits locally. After a
    /// statement of this transaction failed (other than a refusal), it rolls
    /// back instead and answers [`AtError::Poisoned`].
    /// Returns the branch id, or `None` when nothing was written (no branch
    /// is registered then). On any error the local transaction is rolled back.
    pub async fn commit(self) -> Result<Option<BranchId>, AtError> {
        let AtTransaction { resource, xid, mut tx, statements, lock_keys, poisoned } = self;
        if let Some(cause) = poisoned {
            tx.rollback().await?;
            return Err(AtError::Poisoned(cause));
        }
        if statements.is_empty() {
            tx.commit().await?;
            return Ok(None);
        }
        // The undo row is written while the registration is in flight; the
        // local commit waits for both.
        let key = BranchId::generate();
        let req = RegisterBranchRequest {
            resource: resource.resource().to_owned(),
            callback_url: resource.inner.callback_url.clone(),
            payload: Some(serde_json::json!({ super::UNDO_KEY: key.as_str() })),
            lock_keys: Some(lock_keys.into_iter().collect()),
        };
        let info =
            serde_json::to_string(&UndoLog { version: 1, statements }).map_err(|e| AtError::Internal(e.to_string()))?;
        let client = resource.client().clone();
        let started = Instant::now();
        // Each attempt owns its inputs: a future that borrows across the
        // retry loop would not be `Send` for every lifetime (spawned callers).
        let register = {
            let (client, xid, req) = (client.clone(), xid.clone(), Arc::new(req));
            move || {
                let (client, xid, req) = (client.clone(), xid.clone(), req.clone());
                async move {
                    client.register(&xid, &req).await.map_err(|e| match e {
                        ClientError::Problem(p) if p.code == ErrorCode::LockConflict => match p.lock_holder.clone() {
                            Some(holder) => {
                                AtError::LockConflict { holder: Box::new(holder), waited: started.elapsed() }
                            }
                            None => AtError::Coordinator(ClientError::Problem(p)),
                        },
                        other => AtError::Coordinator(other),
                    })
                }
            }
        };
        let registering = with_lock_retry(resource.inner.lock_retry, register);
        let (registered, undo) = tokio::join!(registering, super::undo::insert::<B>(&mut tx, &xid, &key, info));
        let branch = registered?;
        let branch_id = branch.branch_id;
        let finish = async {
            if branch.global_locks != Some(true) {
                // A TCC or XA transaction: its coordinator would not protect these rows.
                return Err(AtError::Unsupported(format!(
                    "transaction {xid} took no global locks for this branch: AT branches must join AT transactions"
                )));
            }
            match undo {
                // Only a rollback of this very key leaves such a row: refuse phase 1.
                Err(AtError::Database(e)) if B::is_unique_violation(&e) => {
                    return Err(AtError::Suspended { xid: xid.clone(), branch_id: branch_id.clone() })
                }
                other => other?,
            }
            tx.commit().await?;
            Ok::<(), AtError>(())
        };
        if let Err(e) = finish.await {
            // The coordinator must not commit a branch whose phase 1 did not.
            let report = ReportRequest {
                status: tandem_wire::ReportStatus::Phase1Failed,
                detail: Some(e.to_string().chars().take(1000).collect()),
            };
            if let Err(r) = client.report(&xid, &branch_id, &report).await {
                tracing::warn!(%xid, %branch_id, error = %r, "could not report the failed AT phase 1");
            }
            return Err(e);
        }
        Ok(Some(branch_id))
    }

    /// Rolls the local transaction back (no branch was registered).
    pub async fn rollback(self) -> Result<(), AtError> {
        Ok(self.tx.rollback().await?)
    }
}

/// Runs `attempt` until it succeeds, fails otherwise than on a lock that is
/// worth waiting for, or the retry budget is spent.
async fn with_lock_retry<T, F, Fut>(r: super::LockRetry, attempt: F) -> Result<T, AtError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AtError>>,
{
    let times = (r.timeout.as_millis() / r.interval.as_millis().max(1)) as usize;
    let backoff = ConstantBuilder::default().with_delay(r.interval).with_max_times(times);
    attempt.retry(backoff).sleep(tokio::time::sleep).when(retryable_lock).await
}

/// A lock conflict is worth waiting for, unless its holder is rolling back
/// (its rollback may need a person; Seata fails fast there too). So is a
/// coordinator that answered 503 (its database busy or briefly away): a
/// registration repeated after a lost answer only adds a branch with the same
/// undo key and locks, whose phase 2 is idempotent.
fn retryable_lock(e: &AtError) -> bool {
    match e {
        AtError::LockConflict { holder, .. } => holder.status != GlobalStatus::RollingBack,
        AtError::Coordinator(c) => c.status() == Some(503),
        _ => false,
    }
}
