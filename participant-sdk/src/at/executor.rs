//! Phase 1 of an AT branch: imaging statements in a local transaction, then
//! the registration with the global locks (the undo row is written
//! meanwhile) and the local commit.
//!
//! Everything that can refuse a statement (its SQL, its table, the tables
//! its foreign keys' actions reach, the branch's limits) is checked before
//! the statement changes anything. Rows are imaged in the order the
//! statement writes them: PostgreSQL returns them in that order from
//! `RETURNING`; on MySQL AT imposes it (`ORDER BY` the key).

use super::backend::{AtBackend, Param};
use super::gen::{cols, image_list, qualified, rows_by_pk, rows_where, target, Gen, KEY_CHUNK, MAX_PARAMS};
use super::image::{lock_key, pick, Row, StatementKind, UndoLog, UndoStatement, UNDO_VERSION};
use super::meta::{RefAction, TableMeta};
use super::plan;
use super::sql::{
    analyze, bind_plan, is_constant, parse_expr, set_target, with_returning, Analyzed, Change, SqlDialect, TableRef,
};
use super::{AtError, AtParticipant};
use crate::client::ClientError;
use backon::{ConstantBuilder, Retryable};
use sqlparser::ast::{BinaryOperator, Expr, OrderByExpr, OrderByOptions, Statement};
use sqlx::Database;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tandem_wire::{BranchId, ErrorCode, GlobalStatus, LockCheckRequest, RegisterBranchRequest, ReportRequest, Xid};

/// One branch's local transaction in AT mode. Dropping it without
/// [`commit`](AtTransaction::commit) rolls the local transaction back.
pub struct AtTransaction<B: AtBackend> {
    /// The participant (pool, coordinator, metadata cache).
    participant: AtParticipant<B>,
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
    /// What unqualified table names resolve in for this session, once read.
    scope: Option<String>,
    /// Tables found not to be temporary in this transaction.
    checked: std::collections::HashSet<super::meta::TableName>,
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

/// Whether the caller wants a statement's rows back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Only the number of rows (`execute`).
    Count,
    /// The rows (`fetch_all`).
    Rows,
}

/// What a statement answers: the number of rows, and its rows if asked for.
type Answer<DB> = (u64, Vec<<DB as Database>::Row>);

impl<'a, B: AtBackend> AtQuery<'a, B> {
    /// Binds the next parameter (`$n` in order on PostgreSQL, `?` on MySQL).
    pub fn bind<T: super::AtParam<B::Db> + 'static>(mut self, value: T) -> Self {
        self.params.push(Arc::new(value));
        self
    }

    /// Runs the statement; returns the number of rows it affected (or read, for `SELECT ... FOR UPDATE`).
    pub async fn execute(self) -> Result<u64, AtError> {
        Ok(self.run(Want::Count).await?.0)
    }

    /// Runs the statement and returns its rows (`RETURNING`, or `SELECT ... FOR UPDATE`).
    /// A RETURNING row carries AT's image columns after the ones asked for.
    pub async fn fetch_all(self) -> Result<Vec<<B::Db as Database>::Row>, AtError> {
        Ok(self.run(Want::Rows).await?.1)
    }

    async fn run(self, want: Want) -> Result<Answer<B::Db>, AtError> {
        let r = self.txn.run(self.sql, self.params, want).await;
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
    meta: &'s Arc<TableMeta>,
    /// Indexes of the table's primary-key columns.
    pk: &'s [usize],
    /// The caller's parameters.
    params: &'s [Param<DB>],
    /// What the caller wants back.
    want: Want,
}

// Manual impls: a derive would require `DB: Copy`.
impl<DB: Database> Clone for Stmt<'_, DB> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<DB: Database> Copy for Stmt<'_, DB> {}

/// What a write does to the rows of a table, for the foreign keys that
/// reference it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    /// The rows go away.
    Delete,
    /// These columns of the rows change.
    Update(Vec<String>),
}

/// Rows that a referential action of the database will change along with a
/// statement, imaged before it runs.
struct Cascaded {
    /// Their table.
    meta: Arc<TableMeta>,
    /// What the action does to them.
    kind: StatementKind,
    /// Their images before.
    before: Vec<Row>,
}

/// A rewritten statement and its parameters.
type Restricted<DB> = (Statement, Vec<Param<DB>>);

/// The UPDATE or DELETE with `AND (<key> = <imaged key> OR ...)` added to
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
    let key_cols = cols(s.meta, s.pk);
    let filter = g.filter(&key_cols, &key_cols, keys)?;
    let filter = parse_expr(&filter, B::DIALECT)?;
    let mut statement = s.a.statement.clone();
    set_target(&mut statement, &target(B::DIALECT, s.meta))?;
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

/// The `SELECT ... FOR UPDATE` with `AND (<key> = <checked key> OR ...)`
/// added to its WHERE clause, and its parameters.
fn restrict_query<B: AtBackend>(s: Stmt<'_, B::Db>, keys: &[Row]) -> Result<Restricted<B::Db>, AtError> {
    if s.params.len() + keys.len() * s.pk.len() > MAX_PARAMS {
        return Err(AtError::Unsupported(format!(
            "the statement matches {} rows; AT checks at most {} keys' worth of parameters per statement",
            keys.len(),
            MAX_PARAMS
        )));
    }
    let mut g = Gen::<B>::new(s.params);
    let key_cols = cols(s.meta, s.pk);
    let filter = parse_expr(&g.filter(&key_cols, &key_cols, keys)?, B::DIALECT)?;
    let mut statement = s.a.statement.clone();
    set_target(&mut statement, &target(B::DIALECT, s.meta))?;
    let Statement::Query(q) = &mut statement else {
        return Err(AtError::Internal("not a query".into()));
    };
    let sqlparser::ast::SetExpr::Select(sel) = q.body.as_mut() else {
        return Err(AtError::Internal("not a plain SELECT".into()));
    };
    sel.selection = Some(match sel.selection.take() {
        Some(w) => Expr::BinaryOp {
            left: Box::new(Expr::Nested(Box::new(w))),
            op: BinaryOperator::And,
            right: Box::new(Expr::Nested(Box::new(filter))),
        },
        None => filter,
    });
    Ok((statement, g.params))
}

/// `ORDER BY` the key, as MySQL then writes the rows (after the caller's
/// own order of a DELETE).
fn key_order(d: SqlDialect, meta: &TableMeta, pk: &[usize], user: &[String]) -> String {
    let mut items: Vec<String> = user.to_vec();
    items.extend(pk.iter().map(|&i| d.quote(&meta.columns[i].name)));
    items.join(", ")
}

impl<B: AtBackend> AtTransaction<B> {
    pub(super) fn new(participant: AtParticipant<B>, xid: Xid, tx: sqlx::Transaction<'static, B::Db>) -> Self {
        AtTransaction {
            participant,
            xid,
            tx,
            statements: Vec::new(),
            lock_keys: BTreeSet::new(),
            poisoned: None,
            scope: None,
            checked: Default::default(),
        }
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

    /// Table metadata, refused if AT cannot write to the table. An
    /// unqualified name is looked up in the scope this transaction's session
    /// resolves it in (read once per transaction), never in another session's.
    async fn writable(&mut self, table: &TableRef) -> Result<Arc<TableMeta>, AtError> {
        if table.schema.is_none() && self.scope.is_none() {
            self.scope = Some(B::scope(&mut self.tx).await?);
        }
        let scope = if table.schema.is_none() { self.scope.clone() } else { None };
        let meta = self.participant.meta(&mut self.tx, table, scope.as_deref()).await?;
        if let Some(why) = meta.refusal(&|t| self.participant.trigger_allowed(&meta, t)) {
            return Err(AtError::Unsupported(why));
        }
        // A session's temporary table can shadow the table the catalog
        // describes (MySQL lists no temporary tables): checked once per
        // table and transaction.
        if !self.checked.contains(&meta.table_name()) {
            if B::is_temporary(&mut self.tx, &meta).await? {
                return Err(AtError::Unsupported(format!(
                    "{} is a temporary table of this session; the session that rolls back cannot see it",
                    meta.qualified()
                )));
            }
            self.checked.insert(meta.table_name());
        }
        Ok(meta)
    }

    async fn run(&mut self, sql: &str, params: Vec<Param<B::Db>>, want: Want) -> Result<Answer<B::Db>, AtError> {
        let a = analyze(sql, B::DIALECT)?;
        if want == Want::Rows && !a.returning && a.change != Change::SelectForUpdate {
            return Err(AtError::Unsupported(
                "fetch_all returns rows only for SELECT ... FOR UPDATE or a statement with RETURNING; use execute"
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
        let server = self.participant.server(&mut self.tx).await?;
        if a.returning && B::DIALECT == SqlDialect::MySql {
            let ok = match a.change {
                Change::Insert { .. } => server.insert_returning,
                Change::Delete => server.delete_returning,
                _ => false,
            };
            if !ok {
                return Err(AtError::Unsupported(
                    "RETURNING is supported on PostgreSQL, and on MariaDB for INSERT (10.5 and later) and DELETE"
                        .into(),
                ));
            }
        }
        let meta = self.writable(&a.table).await?;
        let pk = meta.pk();
        // An INSERT writes into the named table only; the others reach inheriting tables' rows.
        if meta.needs_only() && !a.only && !matches!(a.change, Change::Insert { .. }) {
            return Err(AtError::Unsupported(format!(
                "table {} has inheriting tables ({}), whose rows the statement would reach and AT cannot image; \
                 write UPDATE ONLY / DELETE FROM ONLY / FROM ONLY, or to the inheriting table itself",
                meta.qualified(),
                meta.inheritance_children.join(", ")
            )));
        }
        if a.only && meta.kind == super::meta::RelationKind::Partitioned {
            return Err(AtError::Unsupported(format!(
                "ONLY on the partitioned table {} is not supported",
                meta.qualified()
            )));
        }
        let s = Stmt { a: &a, meta: &meta, pk: &pk, params: &params, want };
        match &a.change {
            Change::SelectForUpdate => self.select_for_update(s).await,
            Change::Insert { .. } => self.insert(s, server.insert_returning).await,
            Change::Update { .. } | Change::Delete => self.update_or_delete(s).await,
        }
    }

    /// Refuses a statement that would take the branch over its row limit.
    fn check_rows(&self, new_rows: usize) -> Result<(), AtError> {
        let limit = self.participant.inner.max_rows;
        if self.lock_keys.len() + new_rows > limit {
            return Err(AtError::Unsupported(format!(
                "the statement would bring the branch to {} rows, over its limit of {limit} rows (the global \
                 locks one branch may take); split the work into several global transactions",
                self.lock_keys.len() + new_rows
            )));
        }
        Ok(())
    }

    /// `FROM t [AS alias] [WHERE ...]` of the statement.
    fn from_where(a: &Analyzed, meta: &TableMeta) -> String {
        let d = B::DIALECT;
        let mut s = target(d, meta);
        if let Some(alias) = &a.alias {
            s.push_str(&format!(" AS {}", d.quote(alias)));
        }
        if let Some(w) = &a.selection {
            s.push_str(&format!(" WHERE {w}"));
        }
        s
    }

    /// Runs the caller's statement as written, with all its parameters.
    async fn run_original(&mut self, sql: &str, params: &[Param<B::Db>], want: Want) -> Result<Answer<B::Db>, AtError> {
        let plan: Vec<usize> = (0..params.len()).collect();
        self.run_sql(sql, params, &plan, want).await
    }

    async fn run_sql(
        &mut self,
        sql: &str,
        params: &[Param<B::Db>],
        plan: &[usize],
        want: Want,
    ) -> Result<Answer<B::Db>, AtError> {
        match want {
            Want::Rows => {
                let rows = B::fetch_rows(&mut self.tx, sql, params, plan).await?;
                Ok((rows.len() as u64, rows))
            }
            Want::Count => Ok((B::execute(&mut self.tx, sql, params, plan).await?, Vec::new())),
        }
    }

    /// Runs a rewritten statement (numbered parameters over `params`).
    async fn run_statement(
        &mut self,
        statement: &Statement,
        params: &[Param<B::Db>],
        want: Want,
    ) -> Result<Answer<B::Db>, AtError> {
        let (sql, plan) = bind_plan(&statement.to_string(), B::DIALECT)?;
        self.run_sql(&sql, params, &plan, want).await
    }

    /// What the statement does to its table's rows, for foreign keys.
    fn effect(a: &Analyzed) -> Effect {
        match &a.change {
            Change::Update { columns } => Effect::Update(columns.clone()),
            _ => Effect::Delete,
        }
    }

    /// The action a foreign key `fk` referencing a table takes when `effect` happens to its rows.
    fn action(fk: &super::meta::ForeignKey, effect: &Effect, meta: &TableMeta) -> RefAction {
        match effect {
            Effect::Delete => fk.on_delete,
            Effect::Update(columns) => {
                // A referenced column changes when it is assigned, when it is
                // generated from others, or when a (declared) BEFORE UPDATE
                // trigger may change it.
                let trigger =
                    meta.triggers.iter().any(|t| t.timing.starts_with("BEFORE") && t.timing.contains("UPDATE"));
                let changed: Vec<Option<usize>> = columns.iter().map(|c| meta.index_of(c)).collect();
                let touched = fk.parent_columns.iter().any(|p| {
                    meta.index_of(p).is_some_and(|i| trigger || meta.columns[i].generated || changed.contains(&Some(i)))
                });
                if touched {
                    fk.on_update
                } else {
                    RefAction::NoAction
                }
            }
        }
    }

    async fn update_or_delete(&mut self, s: Stmt<'_, B::Db>) -> Result<Answer<B::Db>, AtError> {
        let Stmt { a, meta, pk, params, want } = s;
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
        let effect = Self::effect(a);
        let cascades = meta.referenced_by.iter().any(|fk| Self::action(fk, &effect, meta).writes());
        if B::DIALECT == SqlDialect::Postgres && want == Want::Count && !a.returning && !cascades {
            return self.pg_in_one_statement(s, kind).await.map(|n| (n, Vec::new()));
        }
        let all: Vec<usize> = (0..meta.columns.len()).collect();
        let images = cols(meta, &all);
        let order = match B::DIALECT {
            SqlDialect::MySql => format!(" ORDER BY {}", key_order(B::DIALECT, meta, pk, &a.order_by)),
            SqlDialect::Postgres => String::new(),
        };
        let sql_before =
            format!("SELECT {} FROM {}{order} FOR UPDATE", image_list::<B>(meta, &all), Self::from_where(a, meta));
        let (sql_before, plan) = bind_plan(&sql_before, B::DIALECT)?;
        let mut before = B::fetch_images(&mut self.tx, &sql_before, params, &plan, &images).await?;
        if before.is_empty() {
            return Ok((0, Vec::new())); // nothing matched, so nothing may change
        }
        let keys: Vec<Row> = before.iter().map(|r| pick(r, pk)).collect();
        // Rows the database's referential actions will change with these,
        // imaged and locked before anything changes.
        let cascaded = self.image_cascades(meta, effect, &before).await?;
        self.check_rows(keys.len() + cascaded.iter().map(|c| c.before.len()).sum::<usize>())?;
        // The statement runs restricted to the imaged rows: a row that began
        // to match since (a phantom under READ COMMITTED) is left alone.
        let (mut stmt, all_params) = restrict::<B>(s, &keys)?;
        let (out, after) = match (kind, B::DIALECT) {
            // PostgreSQL returns the after images (an update) or the keys (a
            // delete) in the order it wrote the rows.
            (StatementKind::Update, SqlDialect::Postgres) => {
                let (out, after) = self.run_returning(s, &stmt, &all_params, &all).await?;
                let order: Vec<Row> = after.iter().map(|r| pick(r, pk)).collect();
                before = reorder(before, pk, &order)?;
                // RETURNING comes before the referential actions, which may
                // come back to these very rows: read them as they ended.
                let after = if !cascades {
                    after
                } else {
                    reorder(rows_by_pk::<B>(&mut self.tx, meta, &all, pk, &order).await?, pk, &order)?
                };
                (out, after)
            }
            (_, SqlDialect::Postgres) => {
                let (out, order) = self.run_returning(s, &stmt, &all_params, pk).await?;
                before = reorder(before, pk, &order)?;
                (out, Vec::new())
            }
            (StatementKind::Update, SqlDialect::MySql) => {
                // sqlparser cannot carry ORDER BY on an UPDATE; it goes last.
                let (sql, plan) = bind_plan(&format!("{stmt}{order}"), B::DIALECT)?;
                let out = self.run_sql(&sql, &all_params, &plan, want).await?;
                let after = rows_by_pk::<B>(&mut self.tx, meta, &all, pk, &keys).await?;
                let after = reorder(after, pk, &keys)?;
                (out, after)
            }
            (_, SqlDialect::MySql) => {
                if let Statement::Delete(d) = &mut stmt {
                    d.order_by.extend(pk.iter().map(|&i| OrderByExpr {
                        expr: Expr::Identifier(sqlparser::ast::Ident::with_quote('`', meta.columns[i].name.clone())),
                        options: OrderByOptions { asc: None, nulls_first: None },
                        with_fill: None,
                    }));
                }
                (self.run_statement(&stmt, &all_params, want).await?, Vec::new())
            }
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
        let mut records = Vec::with_capacity(cascaded.len());
        for c in cascaded.iter().rev() {
            let cpk = c.meta.pk();
            let ckeys: Vec<Row> = c.before.iter().map(|r| pick(r, &cpk)).collect();
            let all_c: Vec<usize> = (0..c.meta.columns.len()).collect();
            let now = rows_by_pk::<B>(&mut self.tx, &c.meta, &all_c, &cpk, &ckeys).await?;
            let after = match c.kind {
                StatementKind::Delete if now.is_empty() => Vec::new(),
                StatementKind::Update if now.len() == ckeys.len() => reorder(now, &cpk, &ckeys)?,
                _ => {
                    return Err(AtError::Concurrent(format!(
                        "the referential actions of {} left {} of the {} imaged rows of {} in place",
                        meta.qualified(),
                        now.len(),
                        ckeys.len(),
                        c.meta.qualified()
                    )))
                }
            };
            records.push((c.meta.clone(), c.kind, c.before.clone(), after));
        }
        for (m, k, b, af) in records {
            let mpk = m.pk();
            self.record(&m, &mpk, k, b, af)?;
        }
        self.record(meta, pk, kind, before, after)?;
        Ok(out)
    }

    /// Images the rows that foreign keys' actions (`ON DELETE CASCADE`,
    /// `SET NULL`, `SET DEFAULT`, and their `ON UPDATE` forms) will change when
    /// `effect` happens to `rows` of `meta`, transitively, locking them.
    /// A row reached again through another key is followed again for what
    /// that key changes of it. Returned per table in the order found.
    async fn image_cascades(
        &mut self,
        meta: &Arc<TableMeta>,
        effect: Effect,
        rows: &[Row],
    ) -> Result<Vec<Cascaded>, AtError> {
        /// What the statement and its actions do to one row reached.
        struct Reached {
            /// Its image before.
            image: Row,
            /// It is deleted.
            deleted: bool,
            /// The columns changed (followed to the keys referencing them).
            changed: Vec<String>,
        }
        /// A table reached, its rows, and where each key is among them.
        type Rows = (Arc<TableMeta>, Vec<Reached>, HashMap<Row, usize>);
        let mut tables: Vec<Rows> = Vec::new();
        let root_pk = meta.pk();
        let root_deletes = effect == Effect::Delete;
        let root_rows: Vec<Reached> = rows
            .iter()
            .map(|r| Reached {
                image: r.clone(),
                deleted: effect == Effect::Delete,
                changed: match &effect {
                    Effect::Update(c) => c.clone(),
                    Effect::Delete => Vec::new(),
                },
            })
            .collect();
        let index = rows.iter().enumerate().map(|(i, r)| (pick(r, &root_pk), i)).collect();
        tables.push((meta.clone(), root_rows, index));
        let mut queue: VecDeque<(usize, Vec<usize>, Effect)> = VecDeque::new();
        queue.push_back((0, (0..rows.len()).collect(), effect));
        let mut cascaded_rows = 0usize;
        while let Some((t, members, effect)) = queue.pop_front() {
            let parent = tables[t].0.clone();
            let images: Vec<Row> = members.iter().map(|&i| tables[t].1[i].image.clone()).collect();
            for fk in parent.referenced_by.clone() {
                let action = Self::action(&fk, &effect, &parent);
                if !action.writes() {
                    continue;
                }
                let event = if effect == Effect::Delete { "DELETE" } else { "UPDATE" };
                let via = |why: String| {
                    AtError::Unsupported(format!(
                        "the statement on {} changes rows of {} through ON {event} {} of {}: {why}",
                        meta.qualified(),
                        fk.child,
                        action.as_sql(),
                        fk.name
                    ))
                };
                if fk.to_partition {
                    return Err(via(format!(
                        "the key references the partition {} of {}, and AT cannot tell which rows of the \
                         partitioned table it reaches",
                        fk.parent,
                        parent.qualified()
                    )));
                }
                let child_ref = TableRef { schema: Some(fk.child.schema.clone()), name: fk.child.name.clone() };
                let child = self.writable(&child_ref).await.map_err(|e| match e {
                    AtError::Unsupported(why) => via(why),
                    other => other,
                })?;
                let next = match (&effect, action) {
                    (Effect::Delete, RefAction::Cascade) => Effect::Delete,
                    (Effect::Delete, _) => Effect::Update(fk.delete_set_columns().to_vec()),
                    (Effect::Update(_), _) => Effect::Update(fk.child_columns.clone()),
                };
                let cpk = child.pk();
                if let Effect::Update(changed) = &next {
                    if let Some(c) = changed.iter().find(|c| child.index_of(c).is_some_and(|i| cpk.contains(&i))) {
                        return Err(via(format!(
                            "the action changes the primary-key column {c} of {}, whose rows AT could not find again",
                            child.qualified()
                        )));
                    }
                }
                let pcols: Option<Vec<usize>> = fk.parent_columns.iter().map(|c| parent.index_of(c)).collect();
                let ccols: Option<Vec<usize>> = fk.child_columns.iter().map(|c| child.index_of(c)).collect();
                let (Some(pcols), Some(ccols)) = (pcols, ccols) else {
                    return Err(AtError::Internal(format!(
                        "the columns of foreign key {} are not in the catalog",
                        fk.name
                    )));
                };
                let mut values: Vec<Row> =
                    images.iter().map(|r| pick(r, &pcols)).filter(|v| v.iter().all(Option::is_some)).collect();
                values.sort();
                values.dedup();
                if values.is_empty() {
                    continue;
                }
                let all: Vec<usize> = (0..child.columns.len()).collect();
                let found =
                    rows_where::<B>(&mut self.tx, &child, &all, &cols(&child, &ccols), &cols(&parent, &pcols), &values)
                        .await?;
                // A partition's rows and its root's are one set (keys by name,
                // in key order, whatever the column order of each).
                let ct = match tables.iter().position(|(m, _, _)| m.lock_table == child.lock_table) {
                    Some(ct) => ct,
                    None => {
                        tables.push((child.clone(), Vec::new(), HashMap::new()));
                        tables.len() - 1
                    }
                };
                // What is new for each row: its deletion, or columns not yet followed.
                let mut next_members = Vec::new();
                for r in found {
                    let k = pick(&r, &cpk);
                    let (_, reached, index) = &mut tables[ct];
                    let i = match index.get(&k) {
                        Some(&i) => i,
                        None => {
                            reached.push(Reached { image: r, deleted: false, changed: Vec::new() });
                            index.insert(k, reached.len() - 1);
                            cascaded_rows += 1;
                            reached.len() - 1
                        }
                    };
                    let row = &mut reached[i];
                    let new = match &next {
                        _ if row.deleted => false,
                        Effect::Delete => {
                            row.deleted = true;
                            true
                        }
                        Effect::Update(cols) => {
                            let fresh: Vec<String> =
                                cols.iter().filter(|c| !row.changed.contains(c)).cloned().collect();
                            row.changed.extend(fresh.iter().cloned());
                            !fresh.is_empty()
                        }
                    };
                    if new {
                        next_members.push(i);
                    }
                }
                self.check_rows(rows.len() + cascaded_rows)?;
                if !next_members.is_empty() {
                    queue.push_back((ct, next_members, next));
                }
            }
        }
        // The root's own rows are the statement's; the rest, by table.
        let mut out = Vec::new();
        for (t, (m, reached, _)) in tables.into_iter().enumerate() {
            let (mut deleted, mut updated) = (Vec::new(), Vec::new());
            for r in reached.into_iter().skip(if t == 0 { rows.len() } else { 0 }) {
                if r.deleted {
                    deleted.push(r.image);
                } else {
                    updated.push(r.image);
                }
            }
            if !deleted.is_empty() {
                out.push(Cascaded { meta: m.clone(), kind: StatementKind::Delete, before: deleted });
            }
            if !updated.is_empty() {
                out.push(Cascaded { meta: m, kind: StatementKind::Update, before: updated });
            }
        }
        // Only deleted rows come back by INSERT, which MySQL checks row by row.
        if B::DIALECT == SqlDialect::MySql && root_deletes {
            refuse_cycles::<B>(meta, rows, &out)?;
        }
        Ok(out)
    }

    /// PostgreSQL, UPDATE or DELETE without RETURNING: both images and the
    /// change in one statement. The before image locks the rows (`FOR
    /// UPDATE` in a CTE) and the statement changes exactly those rows (joined
    /// by `tableoid, ctid`), so no phantom can slip in between; its RETURNING
    /// gives the after images (an update) or the before images (a delete) in
    /// the order it wrote the rows. A statement over the branch's row limit
    /// changes nothing.
    async fn pg_in_one_statement(&mut self, s: Stmt<'_, B::Db>, kind: StatementKind) -> Result<u64, AtError> {
        let Stmt { a, meta, pk, params, .. } = s;
        let d = B::DIALECT;
        let n = meta.columns.len();
        let all: Vec<usize> = (0..n).collect();
        let images = cols(meta, &all);
        let image = |i: usize| format!("{} AS __tandem_{i}", B::image_expr(&meta.columns[i]));
        let returned: Vec<String> = (0..n).map(image).collect();
        let names: Vec<String> = (0..n).map(|i| format!("__tandem_{i}")).collect();
        let nulls: Vec<String> = (0..n).map(|_| "NULL::bytea".to_owned()).collect();
        let (alias, target_ref) = match &a.alias {
            Some(alias) => (format!(" AS {}", d.quote(alias)), d.quote(alias)),
            None => (String::new(), qualified(d, meta)),
        };
        let mut g = Gen::<B>::new(params);
        let remaining = self.participant.inner.max_rows.saturating_sub(self.lock_keys.len());
        let limit = g.text(Some(remaining.to_string()));
        let join = format!(
            "{target_ref}.tableoid = __tandem_b.__tandem_rel AND {target_ref}.ctid = __tandem_b.__tandem_ctid \
             AND (SELECT count(*) FROM __tandem_b) <= CAST({limit} AS bigint)"
        );
        let write = match (kind, &a.statement) {
            (StatementKind::Update, Statement::Update { assignments, .. }) => {
                let sets: Vec<String> = assignments.iter().map(ToString::to_string).collect();
                format!(
                    "UPDATE {}{alias} SET {} FROM __tandem_b WHERE {join} RETURNING {}",
                    target(d, meta),
                    sets.join(", "),
                    returned.join(", ")
                )
            }
            (StatementKind::Delete, _) => {
                format!(
                    "DELETE FROM {}{alias} USING __tandem_b WHERE {join} RETURNING {}",
                    target(d, meta),
                    returned.join(", ")
                )
            }
            _ => return Err(AtError::Internal("not an update or a delete".into())),
        };
        let (b_images, b_names) = match kind {
            StatementKind::Update => {
                (format!("{}, ", (0..n).map(image).collect::<Vec<_>>().join(", ")), names.join(", "))
            }
            _ => (String::new(), nulls.join(", ")),
        };
        let sql = format!(
            "WITH __tandem_b AS (SELECT {b_images}tableoid AS __tandem_rel, ctid AS __tandem_ctid \
                                 FROM {from_where} FOR UPDATE), \
                  __tandem_w AS ({write}) \
             SELECT 0::int8 AS __tandem_kind, {b_names} FROM __tandem_b \
             UNION ALL SELECT 1::int8, {names} FROM __tandem_w",
            from_where = Self::from_where(a, meta),
            names = names.join(", "),
        );
        let (sql, plan) = bind_plan(&sql, d)?;
        let rows = B::fetch_rows(&mut self.tx, &sql, &g.params, &plan).await?;
        let mut before = Vec::new();
        let mut written = Vec::new();
        let mut matched = 0usize;
        for row in &rows {
            let image = B::images_at(row, 1, &images)?;
            if B::int_at(row, 0)? == 0 {
                matched += 1;
                if kind == StatementKind::Update {
                    before.push(image);
                }
            } else {
                written.push(image);
            }
        }
        if matched > remaining {
            self.check_rows(matched)?;
        }
        if written.len() != matched {
            // A locked row whose newest version the statement's snapshot
            // cannot see (changed and committed concurrently): not written.
            return Err(AtError::Concurrent(format!(
                "the statement changed {} of the {matched} row(s) it imaged; retry the local transaction",
                written.len()
            )));
        }
        let count = written.len() as u64;
        match kind {
            StatementKind::Update => {
                let order: Vec<Row> = written.iter().map(|r| pick(r, pk)).collect();
                let before = reorder(before, pk, &order)?;
                self.record(meta, pk, kind, before, written)?;
            }
            _ => self.record(meta, pk, kind, written, Vec::new())?,
        }
        Ok(count)
    }

    /// Runs the INSERT, UPDATE or DELETE (its target already AT's) with AT's
    /// image columns `columns` appended to its RETURNING list; returns the caller's result and those
    /// columns of every row, in the order the statement wrote them.
    async fn run_returning(
        &mut self,
        s: Stmt<'_, B::Db>,
        statement: &Statement,
        params: &[Param<B::Db>],
        columns: &[usize],
    ) -> Result<(Answer<B::Db>, Vec<Row>), AtError> {
        let Stmt { meta, want, .. } = s;
        let extra: Vec<(String, String)> = columns
            .iter()
            .enumerate()
            .map(|(j, &c)| (B::image_expr(&meta.columns[c]), format!("__tandem_{j}")))
            .collect();
        let stmt = with_returning(statement, extra, B::DIALECT)?;
        let (sql, plan) = bind_plan(&stmt.to_string(), B::DIALECT)?;
        let rows = B::fetch_rows(&mut self.tx, &sql, params, &plan).await?;
        let image_cols = cols(meta, columns);
        let mut images = Vec::with_capacity(rows.len());
        for r in &rows {
            let width = sqlx::Row::len(r);
            let first = width
                .checked_sub(columns.len())
                .ok_or_else(|| AtError::Internal("RETURNING row is too short".into()))?;
            images.push(B::images_at(r, first, &image_cols)?);
        }
        let n = rows.len() as u64;
        Ok(((n, if want == Want::Rows { rows } else { Vec::new() }), images))
    }

    async fn insert(&mut self, s: Stmt<'_, B::Db>, returning: bool) -> Result<Answer<B::Db>, AtError> {
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
        self.check_rows(rows.len())?;
        let (out, after) = if returning {
            // The rows come back as stored (defaults, sequences, triggers
            // applied), after the caller's own columns.
            let mut stmt = a.statement.clone();
            set_target(&mut stmt, &qualified(B::DIALECT, meta))?;
            self.run_returning(s, &stmt, s.params, &all).await?
        } else {
            let (out, keys) = self.insert_without_returning(s, columns, rows).await?;
            let after = rows_by_pk::<B>(&mut self.tx, meta, &all, pk, &keys).await?;
            (out, reorder(after, pk, &keys)?)
        };
        if after.len() as u64 != out.0 {
            return Err(AtError::Internal(format!(
                "inserted {} row(s) but found {} again by primary key",
                out.0,
                after.len()
            )));
        }
        self.record(meta, pk, StatementKind::Insert, Vec::new(), after)?;
        Ok(out)
    }

    /// MySQL without `INSERT ... RETURNING`: the keys are the statement's own
    /// key values (literals or parameters, stored as given), or the
    /// AUTO_INCREMENT values it generated. Anything that could store another
    /// key (an AUTO_INCREMENT key given as a value, which 0 or NULL turns
    /// into a generated one) is refused before it runs.
    async fn insert_without_returning(
        &mut self,
        s: Stmt<'_, B::Db>,
        columns: &[String],
        rows: &[Vec<Expr>],
    ) -> Result<(Answer<B::Db>, Vec<Row>), AtError> {
        let Stmt { a, meta, pk, params, want } = s;
        let source = insert_keys(meta, pk, columns, rows)?;
        match source {
            KeySource::Given(positions) => {
                let key_cols = cols(meta, pk);
                let mut filter = Vec::with_capacity(rows.len());
                for row in rows {
                    let conj: Vec<String> = key_cols
                        .iter()
                        .zip(&positions)
                        .map(|(c, &p)| format!("{} = {}", B::DIALECT.quote(&c.name), row[p]))
                        .collect();
                    filter.push(format!("({})", conj.join(" AND ")));
                }
                let out = self.run_original(&a.sql, params, want).await?;
                // Read back the keys, by the statement's own key expressions.
                let mut keys = Vec::with_capacity(rows.len());
                for chunk in filter.chunks(KEY_CHUNK) {
                    let sql = format!(
                        "SELECT {} FROM {} WHERE {}",
                        image_list::<B>(meta, pk),
                        qualified(B::DIALECT, meta),
                        chunk.join(" OR ")
                    );
                    let (sql, plan) = bind_plan(&sql, B::DIALECT)?;
                    keys.extend(B::fetch_images(&mut self.tx, &sql, params, &plan, &key_cols).await?);
                }
                Ok((out, keys))
            }
            KeySource::AutoIncrement => {
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
                let out = self.run_original(&a.sql, params, want).await?;
                let (first, step) = B::last_insert_ids(&mut self.tx).await?;
                // Consecutive for one INSERT (checked above for several rows).
                let keys = (0..out.0).map(|i| vec![Some((first + i * step.max(1)).to_string())]).collect();
                Ok((out, keys))
            }
        }
    }

    async fn select_for_update(&mut self, s: Stmt<'_, B::Db>) -> Result<Answer<B::Db>, AtError> {
        let Stmt { a, meta, pk, params, want } = s;
        // Lock the rows locally first, then make sure no other global
        // transaction holds them: the read is then read-committed.
        let sql_keys = format!("SELECT {} FROM {} FOR UPDATE", image_list::<B>(meta, pk), Self::from_where(a, meta));
        let (sql_keys, plan) = bind_plan(&sql_keys, B::DIALECT)?;
        let keys = B::fetch_images(&mut self.tx, &sql_keys, params, &plan, &cols(meta, pk)).await?;
        let lock_keys = keys.iter().map(|k| lock_key_of::<B>(meta, pk, k)).collect::<Result<Vec<String>, _>>()?;
        if !lock_keys.is_empty() {
            let req = LockCheckRequest {
                resource: self.participant.resource().to_owned(),
                lock_keys,
                xid: Some(self.xid.clone()),
            };
            let started = Instant::now();
            let check = {
                let (client, req) = (self.participant.client().clone(), Arc::new(req));
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
            with_lock_retry(self.participant.inner.lock_retry, check).await?;
        }
        if keys.is_empty() {
            return Ok((0, Vec::new()));
        }
        // The read returns only the rows whose global locks were checked: a
        // row that began to match since is left out, not read unchecked.
        let (statement, all_params) = restrict_query::<B>(s, &keys)?;
        self.run_statement(&statement, &all_params, want).await
    }

    /// Adds one statement's images (rows in the order it wrote them) and
    /// their lock keys to the branch.
    fn record(
        &mut self,
        meta: &TableMeta,
        pk: &[usize],
        kind: StatementKind,
        before: Vec<Row>,
        after: Vec<Row>,
    ) -> Result<(), AtError> {
        let keys: Vec<Row> = before.iter().chain(&after).map(|r| pick(r, pk)).collect();
        if keys.is_empty() {
            return Ok(());
        }
        for k in &keys {
            self.lock_keys.insert(lock_key_of::<B>(meta, pk, k)?);
        }
        // A partition's rows are recorded under its root partitioned table
        // (which routes a restore to the right partition), so that a row
        // written through both names is one row to the rollback.
        self.statements.push(UndoStatement {
            schema: meta.lock_table.schema.clone(),
            table: meta.lock_table.name.clone(),
            kind,
            columns: meta.columns.iter().map(|c| c.name.clone()).collect(),
            types: meta.columns.iter().map(|c| c.type_id.clone()).collect(),
            pk: pk.iter().map(|&i| meta.columns[i].name.clone()).collect(),
            before,
            after,
        });
        Ok(())
    }

    /// Ends phase 1: registers the branch with its global locks (retrying a
    /// conflict as configured), writes the undo row, commits locally. After a
    /// statement of this transaction failed (other than a refusal), it rolls
    /// back instead and answers [`AtError::Poisoned`].
    /// Returns the branch id, or `None` when nothing was written (no branch
    /// is registered then). On any error the local transaction is rolled back.
    pub async fn commit(self) -> Result<Option<BranchId>, AtError> {
        let AtTransaction { participant, xid, mut tx, statements, lock_keys, poisoned, .. } = self;
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
            resource: participant.resource().to_owned(),
            callback_url: participant.inner.callback_url.clone(),
            payload: Some(serde_json::json!({ super::UNDO_KEY: key.as_str() })),
            lock_keys: Some(lock_keys.into_iter().collect()),
        };
        let info = serde_json::to_string(&UndoLog { version: UNDO_VERSION, statements })
            .map_err(|e| AtError::Internal(e.to_string()))?;
        let client = participant.client().clone();
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
        let registering = with_lock_retry(participant.inner.lock_retry, register);
        let undo_table = participant.undo_table().await?;
        let (registered, undo) =
            tokio::join!(registering, super::undo::insert::<B>(&mut tx, &undo_table, &xid, &key, info));
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

/// The global lock key of the row of `meta` with key images `key`: lock
/// values (canonical under the key's own equality), under the lock table.
fn lock_key_of<B: AtBackend>(meta: &TableMeta, pk: &[usize], key: &Row) -> Result<String, AtError> {
    let values = pk
        .iter()
        .zip(key)
        .map(|(&c, v)| B::lock_value(&meta.columns[c], v.as_deref()))
        .collect::<Result<Row, AtError>>()?;
    Ok(lock_key(&meta.lock_table, &values))
}

/// `rows` reordered to follow `order` (keys), each row exactly once.
fn reorder(rows: Vec<Row>, pk: &[usize], order: &[Row]) -> Result<Vec<Row>, AtError> {
    let mut by_key: std::collections::HashMap<Row, Row> = rows.into_iter().map(|r| (pick(&r, pk), r)).collect();
    let out: Vec<Row> = order.iter().filter_map(|k| by_key.remove(k)).collect();
    if out.len() != order.len() || !by_key.is_empty() {
        return Err(AtError::Concurrent(format!(
            "the rows written ({}) are not the rows imaged; retry the local transaction",
            order.len()
        )));
    }
    Ok(out)
}

/// Where an INSERT's keys come from on MySQL without `RETURNING`.
#[derive(Debug, PartialEq, Eq)]
enum KeySource {
    /// Given in the statement, at these positions of each VALUES row.
    Given(Vec<usize>),
    /// One AUTO_INCREMENT key, left out: read with `LAST_INSERT_ID()`.
    AutoIncrement,
}

/// Decides [`KeySource`] for an INSERT, or refuses it (pure).
fn insert_keys(meta: &TableMeta, pk: &[usize], columns: &[String], rows: &[Vec<Expr>]) -> Result<KeySource, AtError> {
    if meta.triggers.iter().any(|t| t.timing.starts_with("BEFORE") && t.timing.contains("INSERT")) {
        return Err(AtError::Unsupported(format!(
            "table {} has a BEFORE INSERT trigger, which may change the key the row is stored under; on MySQL, \
             which has no INSERT ... RETURNING, AT cannot find such rows again (MariaDB 10.5 and later can)",
            meta.qualified()
        )));
    }
    let defaults_only = columns.is_empty() && rows.iter().all(Vec::is_empty);
    // Without a column list the values follow the visible columns.
    let visible: Vec<usize> = (0..meta.columns.len()).filter(|&i| !meta.columns[i].invisible).collect();
    let positions: Vec<Option<usize>> = pk
        .iter()
        .map(|&c| match (defaults_only, columns.is_empty()) {
            (true, _) => None,
            (false, true) => visible.iter().position(|&v| v == c),
            (false, false) => columns.iter().position(|n| meta.index_of(n) == Some(c)),
        })
        .collect();
    if let Some(positions) = positions.iter().copied().collect::<Option<Vec<usize>>>() {
        for row in rows {
            for (&c, &p) in pk.iter().zip(&positions) {
                let col = &meta.columns[c];
                let e = row.get(p).ok_or_else(|| {
                    AtError::Unsupported(format!("a VALUES row gives no value for the key column {}", col.name))
                })?;
                if col.auto_increment && !nonzero_integer(e) {
                    return Err(AtError::Unsupported(format!(
                        "the AUTO_INCREMENT key {} is given as {e}, which may store a generated key instead (0 and \
                         NULL do); on MySQL, which has no INSERT ... RETURNING, leave the key out or give it as a \
                         nonzero literal (MariaDB 10.5 and later have no such limit)",
                        col.name
                    )));
                }
                if !is_constant(e) {
                    return Err(AtError::Unsupported(format!(
                        "the value of key column {} must be a literal or a parameter",
                        col.name
                    )));
                }
            }
        }
        return Ok(KeySource::Given(positions));
    }
    match pk {
        [c] if meta.columns[*c].auto_increment => Ok(KeySource::AutoIncrement),
        _ => Err(AtError::Unsupported(
            "INSERT must give every primary-key column (or leave out one AUTO_INCREMENT key)".into(),
        )),
    }
}

/// Whether `e` is an integer literal other than 0.
fn nonzero_integer(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::Number(n, _) => n.parse::<i128>().is_ok_and(|n| n != 0),
            _ => false,
        },
        Expr::Nested(e) => nonzero_integer(e),
        _ => false,
    }
}

/// MySQL checks foreign keys row by row, so rows that reference each other
/// in a cycle cannot be inserted back one at a time: refuse a delete that
/// would leave such a set to restore (pure).
fn refuse_cycles<B: AtBackend>(meta: &Arc<TableMeta>, rows: &[Row], cascaded: &[Cascaded]) -> Result<(), AtError> {
    let mut fks = meta.references.clone();
    let mut statements = Vec::with_capacity(cascaded.len() + 1);
    let image = |m: &TableMeta, kind: StatementKind, before: &[Row]| UndoStatement {
        schema: m.lock_table.schema.clone(),
        table: m.lock_table.name.clone(),
        kind,
        columns: m.columns.iter().map(|c| c.name.clone()).collect(),
        types: m.columns.iter().map(|c| c.type_id.clone()).collect(),
        pk: m.pk().iter().map(|&i| m.columns[i].name.clone()).collect(),
        before: before.to_vec(),
        after: Vec::new(),
    };
    for c in cascaded.iter().filter(|c| c.kind == StatementKind::Delete) {
        fks.extend(c.meta.references.iter().cloned());
        statements.push(image(&c.meta, StatementKind::Delete, &c.before));
    }
    statements.push(image(meta, StatementKind::Delete, rows));
    let tables = plan::histories(&statements).map_err(AtError::Internal)?;
    let ops: Vec<plan::RowOp> = tables
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| t.rows.iter().filter_map(move |h| plan::restore_op(ti, h, None)))
        .collect();
    // Images are aligned with each table's catalog columns (built from them above).
    let metas: Vec<&TableMeta> = tables
        .iter()
        .map(|t| {
            std::iter::once(meta.as_ref())
                .chain(cascaded.iter().map(|c| c.meta.as_ref()))
                .find(|m| m.lock_table == t.table)
                .unwrap_or(meta.as_ref())
        })
        .collect();
    let canon = |t: usize, c: usize, v: &str| -> String {
        metas[t]
            .columns
            .get(c)
            .and_then(|col| B::lock_value(col, Some(v)).ok().flatten())
            .unwrap_or_else(|| v.to_owned())
    };
    let steps = plan::order(ops, &plan::edges(&tables, &fks, false), &canon);
    if let Some(step) = steps.iter().find(|s| s.ops.len() > 1) {
        return Err(AtError::Unsupported(format!(
            "the rows deleted include {} rows of {} that reference each other in a cycle; MySQL checks foreign keys \
             row by row, so a rollback could not insert them back",
            step.ops.len(),
            tables[step.ops[0].table].table
        )));
    }
    Ok(())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::at::meta::{Column, MySqlRepr, RelationKind, Repr, TableName};
    use crate::at::sql::analyze;

    fn table(auto_increment: bool) -> TableMeta {
        let col = |name: &str, pk: Option<usize>, ai: bool| Column {
            name: name.into(),
            sql_type: "int".into(),
            type_id: "int".into(),
            type_oid: 0,
            type_name: String::new(),
            key_refusal: None,
            invisible: false,
            key_form: crate::at::meta::KeyForm::Image,
            send_fn: String::new(),
            receivable: true,
            repr: Repr::MySql(MySqlRepr::Plain),
            pk_position: pk,
            generated: false,
            identity_always: false,
            auto_increment: ai,
        };
        TableMeta {
            schema: "db".into(),
            name: "ai".into(),
            kind: RelationKind::Table,
            lock_table: TableName { schema: "db".into(), name: "ai".into() },
            temporary: false,
            inheritance_children: vec![],
            triggers: vec![],
            rules: vec![],
            referenced_by: vec![],
            references: vec![],
            columns: vec![col("id", Some(1), auto_increment), col("v", None, false)],
            case_insensitive_columns: true,
        }
    }

    fn keys(meta: &TableMeta, sql: &str) -> Result<KeySource, AtError> {
        let a = analyze(sql, SqlDialect::MySql).unwrap();
        let Change::Insert { columns, rows } = a.change else { panic!() };
        insert_keys(meta, &meta.pk(), &columns, &rows)
    }

    #[test]
    fn mysql_inserts_whose_keys_cannot_be_known_are_refused() {
        let ai = table(true);
        assert_eq!(keys(&ai, "INSERT INTO ai (v) VALUES (1), (2)").unwrap(), KeySource::AutoIncrement);
        assert_eq!(keys(&ai, "INSERT INTO ai () VALUES ()").unwrap(), KeySource::AutoIncrement, "all defaults");
        assert_eq!(keys(&ai, "INSERT INTO ai (ID, v) VALUES (7, 1)").unwrap(), KeySource::Given(vec![0]));
        for sql in [
            "INSERT INTO ai (id, v) VALUES (0, 'new')",
            "INSERT INTO ai (id, v) VALUES (?, ?)",
            "INSERT INTO ai VALUES (NULL, 1)",
        ] {
            let m = keys(&ai, sql).unwrap_err().to_string();
            assert!(m.contains("AUTO_INCREMENT key id"), "{sql}: {m}");
        }
        let plain = table(false);
        assert_eq!(keys(&plain, "INSERT INTO ai (id, v) VALUES (?, ?)").unwrap(), KeySource::Given(vec![0]));
        assert!(keys(&plain, "INSERT INTO ai (v) VALUES (1)").unwrap_err().to_string().contains("every primary-key"));
        let mut trig = table(false);
        trig.triggers.push(crate::at::meta::Trigger {
            table: trig.table_name(),
            name: "t".into(),
            timing: "BEFORE INSERT".into(),
        });
        assert!(keys(&trig, "INSERT INTO ai (id, v) VALUES (1, 1)").unwrap_err().to_string().contains("BEFORE INSERT"));
    }
}
