//! The undo log: written in phase 1, replayed by rollback, deleted in batches
//! after commit.
//!
//! A row's key is `(xid, branch_key)`, where the SDK chooses `branch_key`
//! and registers it as the branch's payload (`{"undo_key": ...}`), which every
//! callback carries back. The undo row can then be written while the
//! registration is still in flight, instead of after it.

use super::backend::{AtBackend, Conn};
use super::gen::{cols, qualified, rows_by_pk, rows_where, target, Gen};
use super::image::{as_object, pick, Conflict, Row, UndoLog, UNDO_VERSION};
use super::meta::{RelationKind, TableMeta};
use super::plan::{self, Op, RowOp, RowUndo, Step, TableImages};
use super::sql::{bind_plan, SqlDialect, TableRef};
use super::{AtError, AtParticipant, CLEANUP_BATCH};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tandem_wire::{BranchId, CallbackOutcome, TransactionOutcome, Xid};
use tokio::sync::mpsc;
use tokio::sync::OnceCell;

/// `state` of an undo row holding phase-1 images.
const STATE_NORMAL: i16 = 0;
/// `state` of a branch rolled back, or of the marker an empty rollback
/// leaves: a late phase 1 then fails on the primary key.
const STATE_ROLLED_BACK: i16 = 1;

/// Writes the branch's undo row in its local transaction.
pub(super) async fn insert<B: AtBackend>(
    conn: &mut Conn<B>,
    undo: &str,
    xid: &Xid,
    key: &BranchId,
    info: String,
) -> Result<(), AtError> {
    let d = B::DIALECT;
    let sql = format!(
        "INSERT INTO {undo} (xid, branch_key, state, rollback_info) VALUES ({}, {}, {STATE_NORMAL}, {})",
        d.param(1),
        d.param(2),
        d.param(3)
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    let params = [B::text(Some(xid.to_string())), B::text(Some(key.to_string())), B::text(Some(info))];
    B::execute(conn, &sql, &params, &plan).await?;
    Ok(())
}

/// Rolls a branch back in one local transaction (see the module docs of
/// `at` and of `plan`), on a connection whose settings the rollback fixes
/// for its duration.
pub(super) async fn rollback<B: AtBackend>(
    pool: &sqlx::Pool<B::Db>,
    participant: &AtParticipant<B>,
    xid: &Xid,
    branch_key: &BranchId,
) -> Result<CallbackOutcome, AtError> {
    let undo = participant.undo_table().await?;
    let mut conn = pool.acquire().await?;
    let result = rollback_on::<B>(&mut conn, participant, &undo, xid, branch_key).await;
    if let Err(e) = B::end_restore(&mut conn).await {
        // Do not hand a session with the rollback's settings to the pool.
        tracing::warn!(error = %e, "could not reset the session after an AT rollback; closing it");
        conn.close_on_drop();
    }
    result
}

async fn rollback_on<B: AtBackend>(
    conn: &mut sqlx::pool::PoolConnection<B::Db>,
    participant: &AtParticipant<B>,
    undo: &str,
    xid: &Xid,
    branch_key: &BranchId,
) -> Result<CallbackOutcome, AtError> {
    let d = B::DIALECT;
    let key = [B::text(Some(xid.to_string())), B::text(Some(branch_key.to_string()))];
    let mut tx = sqlx::Connection::begin(&mut **conn).await?;
    B::begin_restore(&mut tx).await?;
    let sql = format!(
        "SELECT CAST(state AS CHAR(1)), rollback_info FROM {undo} WHERE xid = {} AND branch_key = {} FOR UPDATE",
        d.param(1),
        d.param(2)
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    let found = B::fetch_text(&mut tx, &sql, &key, &plan).await?;
    let Some(row) = found.into_iter().next() else {
        // Empty rollback: phase 1 never committed here. The marker makes a
        // phase 1 still in flight fail on the primary key.
        let sql = format!(
            "INSERT INTO {undo} (xid, branch_key, state) VALUES ({}, {}, {STATE_ROLLED_BACK})",
            d.param(1),
            d.param(2)
        );
        let (sql, plan) = bind_plan(&sql, d)?;
        match B::execute(&mut tx, &sql, &key, &plan).await {
            Ok(_) => {}
            // A phase 1 committed its undo row meanwhile: the next attempt undoes it.
            Err(e) if B::is_unique_violation(&e) => {
                return Err(AtError::Internal("phase 1 of this branch committed concurrently; retry".into()))
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        tracing::info!(%xid, %branch_key, "AT empty rollback: marker left");
        return Ok(CallbackOutcome::EmptyRollback);
    };
    if row.first().cloned().flatten().as_deref() == Some("1") {
        return Ok(CallbackOutcome::AlreadyDone);
    }
    let info = row.get(1).cloned().flatten().ok_or_else(|| AtError::CorruptUndo("rollback_info is NULL".into()))?;
    let log: UndoLog = serde_json::from_str(&info).map_err(|e| AtError::CorruptUndo(e.to_string()))?;
    if log.version != UNDO_VERSION {
        return Err(AtError::CorruptUndo(format!(
            "the undo log has format version {}, this SDK reads version {UNDO_VERSION}; roll it back with the SDK \
             version that wrote it",
            log.version
        )));
    }
    let restored = restore::<B>(&mut tx, participant, &log).await?;
    let sql = format!(
        "UPDATE {undo} SET state = {STATE_ROLLED_BACK}, rollback_info = NULL WHERE xid = {} AND branch_key = {}",
        d.param(1),
        d.param(2)
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    B::execute(&mut tx, &sql, &key, &plan).await?;
    // Deferred constraints are checked here: one that fails cannot succeed on a retry.
    tx.commit().await.map_err(|e| {
        if B::is_permanent(&e) {
            AtError::RestoreRefused(format!("a deferred constraint refused the restored rows: {e}"))
        } else {
            e.into()
        }
    })?;
    tracing::info!(%xid, %branch_key, statements = log.statements.len(), rows = restored, "AT branch rolled back");
    Ok(CallbackOutcome::Applied)
}

/// Most rows listed in a report (the coordinator keeps 8 KiB of the answer).
const REPORT_ROWS: usize = 10;

/// One imaged table as it is now: its catalog description, and where each
/// image column is in it.
struct Now {
    /// Fresh catalog metadata.
    meta: Arc<TableMeta>,
    /// Index in `meta.columns` of each image column.
    columns: Vec<usize>,
    /// Index in `meta.columns` of each key column.
    pk: Vec<usize>,
}

/// Restores every row of the log, or changes nothing and says why. Returns
/// the number of rows written.
async fn restore<B: AtBackend>(
    conn: &mut Conn<B>,
    participant: &AtParticipant<B>,
    log: &UndoLog,
) -> Result<usize, AtError> {
    let tables = plan::histories(&log.statements).map_err(AtError::CorruptUndo)?;
    let mut now = Vec::with_capacity(tables.len());
    let mut current: Vec<HashMap<Row, Row>> = Vec::with_capacity(tables.len());
    for t in &tables {
        let n = table_now::<B>(conn, participant, t).await?;
        let keys: Vec<Row> = t.rows.iter().map(|r| r.key.clone()).collect();
        let rows = rows_by_pk::<B>(conn, &n.meta, &n.columns, &n.pk, &keys).await?;
        current.push(rows.into_iter().map(|r| (pick(&r, &t.pk), r)).collect());
        now.push(n);
    }
    // Decide every row first: a dirty write anywhere restores nothing.
    let mut ops = Vec::new();
    let mut conflicts = Vec::new();
    for (ti, t) in tables.iter().enumerate() {
        for h in &t.rows {
            let c = current[ti].get(&h.key);
            match plan::row_undo(h, c) {
                RowUndo::Nothing => {}
                RowUndo::Restore => ops.extend(plan::restore_op(ti, h, c.cloned())),
                RowUndo::Dirty => {
                    conflicts.push(Finding::of(&now[ti], h.key.clone(), h.last_after.clone(), c.cloned(), None))
                }
            }
        }
    }
    if conflicts.is_empty() {
        conflicts = referencing_rows::<B>(conn, participant, &tables, &now, &ops).await?;
    }
    if !conflicts.is_empty() {
        return Err(AtError::DirtyWrite(report::<B>(conn, conflicts).await?));
    }
    let mut fks = Vec::new();
    for n in &now {
        fks.extend(n.meta.references.iter().cloned());
    }
    let edges = plan::edges(&tables, &fks, B::DIALECT == SqlDialect::Postgres);
    let written = ops.len();
    // Values a foreign key pairs compare by their lock values (a MySQL
    // string's weight, a numeric without its scale).
    let canon = |t: usize, c: usize, v: &str| -> String {
        let col = &now[t].meta.columns[now[t].columns[c]];
        B::lock_value(col, Some(v)).ok().flatten().unwrap_or_else(|| v.to_owned())
    };
    for step in plan::order(ops, &edges, &canon) {
        apply::<B>(conn, &tables, &now, &step).await?;
    }
    // Deferred constraints and constraint triggers run now, so that the
    // read-back sees what they did (a failed check is final).
    B::check_constraints(conn).await.map_err(|e| {
        if B::is_permanent(&e) {
            AtError::RestoreRefused(format!("a deferred constraint refused the restored rows: {e}"))
        } else {
            e.into()
        }
    })?;
    // Read everything back: each row must be exactly its before image (or
    // gone), whatever a trigger, a rule or a referential action did.
    let mut mismatches = Vec::new();
    for (ti, t) in tables.iter().enumerate() {
        let n = &now[ti];
        let keys: Vec<Row> = t.rows.iter().map(|r| r.key.clone()).collect();
        let rows = rows_by_pk::<B>(conn, &n.meta, &n.columns, &n.pk, &keys).await?;
        let rows: HashMap<Row, Row> = rows.into_iter().map(|r| (pick(&r, &t.pk), r)).collect();
        for h in &t.rows {
            let found = rows.get(&h.key);
            if found != h.first_before.as_ref() {
                let why = "after the restore the row is not its before image (a trigger, rule or referential \
                           action changed it)"
                    .to_owned();
                mismatches.push(Finding::of(n, h.key.clone(), h.first_before.clone(), found.cloned(), Some(why)));
            }
        }
    }
    if !mismatches.is_empty() {
        return Err(AtError::RestoreMismatch(report::<B>(conn, mismatches).await?));
    }
    Ok(written)
}

/// The imaged table `t` as the catalog describes it now (never the cached
/// description: the table may have changed since phase 1).
async fn table_now<B: AtBackend>(
    conn: &mut Conn<B>,
    participant: &AtParticipant<B>,
    t: &TableImages,
) -> Result<Now, AtError> {
    let table = TableRef { schema: Some(t.table.schema.clone()), name: t.table.name.clone() };
    // A table that is gone cannot be restored (a person must look); a
    // database error reading the catalog is retried like any other.
    let meta = participant.fresh_meta(conn, &table).await.map_err(|e| match e {
        AtError::Unsupported(m) => AtError::CorruptUndo(m),
        other => other,
    })?;
    if !matches!(meta.kind, RelationKind::Table | RelationKind::Partitioned) {
        return Err(AtError::CorruptUndo(format!("{} is no longer a table", meta.qualified())));
    }
    let mut columns = Vec::with_capacity(t.columns.len());
    for (name, ty) in t.columns.iter().zip(&t.types) {
        let i = meta.columns.iter().position(|c| &c.name == name).ok_or_else(|| {
            AtError::CorruptUndo(format!("column {name} of the undo log is not in {} any more", meta.qualified()))
        })?;
        if &meta.columns[i].type_id != ty {
            return Err(AtError::CorruptUndo(format!(
                "column {name} of {} changed type since phase 1 ({} now)",
                meta.qualified(),
                meta.columns[i].sql_type
            )));
        }
        columns.push(i);
    }
    let pk = t.pk.iter().map(|&i| columns[i]).collect();
    Ok(Now { meta, columns, pk })
}

/// Rows outside the branch that the restore would change through a
/// referential action: a row the branch created and the rollback deletes,
/// referenced since by a row of someone else's with `ON DELETE CASCADE` /
/// `SET NULL` / `SET DEFAULT` (and the same for a restored key an
/// `ON UPDATE` action follows). They are reported like dirty writes, and
/// nothing is restored.
async fn referencing_rows<B: AtBackend>(
    conn: &mut Conn<B>,
    participant: &AtParticipant<B>,
    tables: &[TableImages],
    now: &[Now],
    ops: &[RowOp],
) -> Result<Vec<Finding>, AtError> {
    let mut out = Vec::new();
    for (ti, n) in now.iter().enumerate() {
        for fk in &n.meta.referenced_by {
            let Some(pcols) = fk.parent_columns.iter().map(|c| n.meta.index_of(c)).collect::<Option<Vec<usize>>>()
            else {
                continue;
            };
            // Referenced values the restore takes away, by an action that follows them.
            let in_images: Option<Vec<usize>> = pcols.iter().map(|c| n.columns.iter().position(|x| x == c)).collect();
            let Some(in_images) = in_images else { continue };
            let mut values: Vec<Row> = ops
                .iter()
                .filter(|o| o.table == ti)
                .filter_map(|o| {
                    let now_v = o.current.as_ref().map(|r| pick(r, &in_images))?;
                    let then_v = o.target().map(|r| pick(r, &in_images));
                    let action = if o.op == Op::Delete { fk.on_delete } else { fk.on_update };
                    (action.writes() && then_v.as_ref() != Some(&now_v) && now_v.iter().all(Option::is_some))
                        .then_some(now_v)
                })
                .collect();
            values.sort();
            values.dedup();
            if values.is_empty() {
                continue;
            }
            let child_ref = TableRef { schema: Some(fk.child.schema.clone()), name: fk.child.name.clone() };
            let child = participant.fresh_meta(conn, &child_ref).await?;
            let Some(ccols) = fk.child_columns.iter().map(|c| child.index_of(c)).collect::<Option<Vec<usize>>>() else {
                continue;
            };
            let cpk = child.pk();
            let all: Vec<usize> = (0..child.columns.len()).collect();
            let pcols_meta: Vec<&super::meta::Column> = pcols.iter().map(|&i| &n.meta.columns[i]).collect();
            let found = rows_where::<B>(conn, &child, &all, &cols(&child, &ccols), &pcols_meta, &values).await?;
            // The branch's own rows of the child are restored first (they no
            // longer reference these values once restored): not outsiders.
            let own = tables.iter().position(|t| t.table == child.table_name());
            for r in found {
                let k = pick(&r, &cpk);
                let handled = own.is_some_and(|c| {
                    tables[c].rows.iter().any(|h| {
                        h.key == k
                            && h.first_before.as_ref().map(|b| pick(b, &ccols)).is_none_or(|v| !values.contains(&v))
                    })
                });
                if !handled {
                    let (event, action) = match ops.iter().any(|o| o.table == ti && o.op == Op::Delete) {
                        true => ("DELETE", fk.on_delete),
                        false => ("UPDATE", fk.on_update),
                    };
                    let why = format!(
                        "this row, written outside the branch, references {} through {} (ON {event} {}); \
                         restoring {} would change it too",
                        n.meta.qualified(),
                        fk.name,
                        action.as_sql(),
                        n.meta.qualified()
                    );
                    let child_now = Now { meta: child.clone(), columns: all.clone(), pk: cpk.clone() };
                    out.push(Finding::of(&child_now, k, None, Some(r), Some(why)));
                }
            }
        }
    }
    Ok(out)
}

/// A row a rollback reports.
struct Finding {
    /// Its table now.
    meta: Arc<TableMeta>,
    /// Index in `meta.columns` of each value of the rows below.
    columns: Vec<usize>,
    /// Primary-key values.
    key: Row,
    /// What should be there (none: no row).
    expected: Option<Row>,
    /// What is there (none: no row).
    found: Option<Row>,
    /// Why, when not "changed by someone else".
    reason: Option<String>,
}

impl Finding {
    fn of(n: &Now, key: Row, expected: Option<Row>, found: Option<Row>, reason: Option<String>) -> Finding {
        Finding { meta: n.meta.clone(), columns: n.columns.clone(), key, expected, found, reason }
    }
}

/// The first [`REPORT_ROWS`] findings as conflicts, their values in the
/// database's own text where the image is binary.
async fn report<B: AtBackend>(conn: &mut Conn<B>, findings: Vec<Finding>) -> Result<Vec<Conflict>, AtError> {
    let total = findings.len();
    let mut out = Vec::with_capacity(total.min(REPORT_ROWS));
    for f in findings.into_iter().take(REPORT_ROWS) {
        let columns = cols(&f.meta, &f.columns);
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let expected = match &f.expected {
            None => None,
            Some(r) => Some(as_object(&names, &B::render(conn, &columns, r).await?)),
        };
        let found = match &f.found {
            None => None,
            Some(r) => Some(as_object(&names, &B::render(conn, &columns, r).await?)),
        };
        let key_cols = cols(&f.meta, &f.meta.pk());
        let pk = B::render(conn, &key_cols, &f.key).await?;
        out.push(Conflict { table: f.meta.qualified(), pk, expected, found, reason: f.reason });
    }
    if total > REPORT_ROWS {
        tracing::warn!(total, listed = REPORT_ROWS, "AT rollback: more rows to report than listed");
    }
    Ok(out)
}

/// Writes one step of the restore: one row, or the rows of a reference
/// cycle. PostgreSQL writes a cycle in one statement (it checks foreign
/// keys at the end of a statement); MySQL checks them row by row, so a
/// cycle (which phase 1 refuses there) is tried row by row and refused by
/// the database.
async fn apply<B: AtBackend>(
    conn: &mut Conn<B>,
    tables: &[TableImages],
    now: &[Now],
    step: &Step,
) -> Result<(), AtError> {
    let what = || {
        let rows: Vec<String> = step.ops.iter().map(|o| format!("{} key {:?}", tables[o.table].table, o.key)).collect();
        rows.join(", ")
    };
    let refused = |e: sqlx::Error| {
        if B::is_permanent(&e) {
            AtError::RestoreRefused(format!("{}: {e}", what()))
        } else {
            e.into()
        }
    };
    if step.is_cycle() && B::DIALECT == SqlDialect::Postgres {
        let mut g = Gen::<B>::new(&[]);
        let mut ctes = Vec::new();
        let mut expected = 0usize;
        for group in groups(&step.ops) {
            if let Some(sql) = op_sql::<B>(&mut g, &now[group[0].table], &group)? {
                ctes.push(format!("__tandem_w{} AS ({sql} RETURNING 1)", ctes.len()));
                expected += group.len();
            }
        }
        if g.params.len() > super::gen::MAX_PARAMS {
            return Err(AtError::RestoreRefused(format!(
                "{} rows that reference each other in a cycle need one statement of {} parameters to be restored, \
                 more than PostgreSQL takes",
                step.ops.len(),
                g.params.len()
            )));
        }
        let counts: Vec<String> = (0..ctes.len()).map(|i| format!("(SELECT count(*) FROM __tandem_w{i})")).collect();
        let sql = format!("WITH {} SELECT CAST({} AS bigint)", ctes.join(", "), counts.join(" + "));
        let (sql, plan) = bind_plan(&sql, B::DIALECT)?;
        let rows = B::fetch_rows(conn, &sql, &g.params, &plan).await.map_err(refused)?;
        let written = rows.first().map(|r| B::int_at(r, 0)).transpose()?.unwrap_or(0);
        if written != expected as i64 {
            return Err(AtError::RestoreRefused(format!("restoring {} changed {written} rows", what())));
        }
        return Ok(());
    }
    for op in &step.ops {
        let mut g = Gen::<B>::new(&[]);
        let one = std::slice::from_ref(op);
        let Some(sql) = op_sql::<B>(&mut g, &now[op.table], one)? else { continue };
        let (sql, plan) = bind_plan(&sql, B::DIALECT)?;
        let written = B::execute(conn, &sql, &g.params, &plan).await.map_err(refused)?;
        if written != 1 {
            return Err(AtError::RestoreRefused(format!(
                "restoring {} key {:?} changed {written} rows",
                tables[op.table].table, op.key
            )));
        }
    }
    Ok(())
}

/// The ops of a step grouped into what one statement writes: the inserts
/// of one table, the deletes of one table, each update alone.
fn groups(ops: &[RowOp]) -> Vec<Vec<RowOp>> {
    let mut out: Vec<Vec<RowOp>> = Vec::new();
    for o in ops {
        let joins = |g: &Vec<RowOp>| {
            g[0].table == o.table
                && !matches!(o.op, Op::Update(_))
                && std::mem::discriminant(&g[0].op) == std::mem::discriminant(&o.op)
        };
        match out.iter_mut().find(|g| joins(g)) {
            Some(g) => g.push(o.clone()),
            None => out.push(vec![o.clone()]),
        }
    }
    out
}

/// The statement writing `ops` (all of one table and one kind; an update
/// alone) into `n`'s table, or `None` when there is nothing to write (an
/// update of a row whose only columns are its key and generated ones).
fn op_sql<B: AtBackend>(g: &mut Gen<B>, n: &Now, ops: &[RowOp]) -> Result<Option<String>, AtError> {
    let Some(first) = ops.first() else { return Ok(None) };
    let meta = &n.meta;
    let d = B::DIALECT;
    let key_cols = cols(meta, &n.pk);
    // Generated columns are compared, never written.
    let writable: Vec<usize> = (0..n.columns.len()).filter(|&j| !meta.columns[n.columns[j]].generated).collect();
    Ok(Some(match &first.op {
        Op::Delete => {
            let keys: Vec<Row> = ops.iter().map(|o| o.key.clone()).collect();
            format!("DELETE FROM {} WHERE {}", target(d, meta), g.filter(&key_cols, &key_cols, &keys)?)
        }
        Op::Insert(_) => {
            let names: Vec<String> = writable.iter().map(|&j| d.quote(&meta.columns[n.columns[j]].name)).collect();
            let mut rows = Vec::with_capacity(ops.len());
            for o in ops {
                let Op::Insert(image) = &o.op else {
                    return Err(AtError::Internal("a restore statement mixes inserts with other writes".into()));
                };
                let mut values = Vec::with_capacity(writable.len());
                for &j in &writable {
                    values.push(g.value(&meta.columns[n.columns[j]], image[j].as_deref())?);
                }
                rows.push(format!("({})", values.join(", ")));
            }
            let overriding = if d == SqlDialect::Postgres { " OVERRIDING SYSTEM VALUE" } else { "" };
            format!("INSERT INTO {} ({}){overriding} VALUES {}", qualified(d, meta), names.join(", "), rows.join(", "))
        }
        Op::Update(image) => {
            let mut sets = Vec::new();
            for &j in &writable {
                let col = &meta.columns[n.columns[j]];
                if n.pk.contains(&n.columns[j]) || col.identity_always {
                    continue;
                }
                sets.push(format!("{} = {}", d.quote(&col.name), g.value(col, image[j].as_deref())?));
            }
            if sets.is_empty() {
                return Ok(None);
            }
            let filter = g.filter(&key_cols, &key_cols, std::slice::from_ref(&first.key))?;
            format!("UPDATE {} SET {} WHERE {filter}", target(d, meta), sets.join(", "))
        }
    }))
}

/// Deletes the undo rows of committed branches (by `(xid, branch_key)`).
pub(super) async fn delete_batch<B: AtBackend>(
    pool: &sqlx::Pool<B::Db>,
    undo: &str,
    items: &[(Xid, BranchId)],
) -> Result<(), AtError> {
    let d = B::DIALECT;
    let mut params = Vec::with_capacity(items.len() * 2);
    let mut tuples = Vec::with_capacity(items.len());
    for (xid, branch) in items {
        params.push(B::text(Some(xid.to_string())));
        params.push(B::text(Some(branch.to_string())));
        tuples.push(format!("({}, {})", d.param(params.len() - 1), d.param(params.len())));
    }
    let sql =
        format!("DELETE FROM {undo} WHERE state = {STATE_NORMAL} AND (xid, branch_key) IN ({})", tuples.join(", "));
    let (sql, plan) = bind_plan(&sql, d)?;
    let mut conn = pool.acquire().await?;
    B::execute(&mut conn, &sql, &params, &plan).await?;
    Ok(())
}

/// Background task: deletes committed branches' undo rows in batches.
/// Whatever is queued when the process dies stays in the table; the rows
/// are inert (their transactions are committed) and can be purged by age.
pub(super) async fn cleaner<B: AtBackend>(
    pool: sqlx::Pool<B::Db>,
    undo: Arc<OnceCell<String>>,
    mut rx: mpsc::Receiver<(Xid, BranchId)>,
) {
    let mut batch = Vec::with_capacity(CLEANUP_BATCH);
    while rx.recv_many(&mut batch, CLEANUP_BATCH).await > 0 {
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=5 {
            let deleted = match resolve_undo::<B>(&pool, &undo).await {
                Ok(table) => delete_batch::<B>(&pool, &table, &batch).await,
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, rows = batch.len(), attempt, "deleting committed undo rows failed");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        batch.clear();
    }
}

/// The quoted, qualified name of the undo table, as the pool's own sessions
/// resolve `tandem_undo_log` (where `install` created it), read once: a
/// business session with another `search_path` or database still writes
/// and reads that table.
pub(super) async fn resolve_undo<B: AtBackend>(
    pool: &sqlx::Pool<B::Db>,
    cell: &OnceCell<String>,
) -> Result<String, AtError> {
    let name = cell
        .get_or_try_init(|| async {
            let mut conn = pool.acquire().await?;
            match B::locate_undo(&mut conn).await? {
                Some(name) => Ok(name),
                None => Err(AtError::Setup("tandem_undo_log does not exist: call AtParticipant::install".into())),
            }
        })
        .await?;
    Ok(name.clone())
}

/// Transactions whose old phase-1 rows one purge looks at.
const PURGE_XIDS: usize = 500;

/// See [`AtParticipant::purge`].
pub(super) async fn purge<B: AtBackend>(
    pool: &sqlx::Pool<B::Db>,
    undo: &str,
    client: &crate::client::TandemClient,
    age: Duration,
) -> Result<super::Purged, AtError> {
    let d = B::DIALECT;
    let ms = [B::text(Some(age.as_millis().to_string()))];
    let mut conn = pool.acquire().await?;
    let sql = format!("DELETE FROM {undo} WHERE state = {STATE_ROLLED_BACK} AND created_at < {}", B::ago(&d.param(1)));
    let (sql, plan) = bind_plan(&sql, d)?;
    let markers = B::execute(&mut conn, &sql, &ms, &plan).await?;
    let sql = format!(
        "SELECT DISTINCT xid FROM {undo} WHERE state = {STATE_NORMAL} AND created_at < {} LIMIT {PURGE_XIDS}",
        B::ago(&d.param(1))
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    let old = B::fetch_text(&mut conn, &sql, &ms, &plan).await?;
    let mut committed = 0;
    for xid in old.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
        let Ok(xid) = Xid::parse(xid) else { continue };
        match client.get(&xid).await {
            // Terminal too: until phase 2 ended, the commit callback deletes the row itself.
            Ok(t) if t.status.is_terminal() && t.status.outcome() == TransactionOutcome::Committed => {
                let sql = format!("DELETE FROM {undo} WHERE state = {STATE_NORMAL} AND xid = {}", d.param(1));
                let (sql, plan) = bind_plan(&sql, d)?;
                committed += B::execute(&mut conn, &sql, &[B::text(Some(xid.to_string()))], &plan).await?;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%xid, error = %e, "purge: could not learn how this transaction ended; its undo rows stay")
            }
        }
    }
    Ok(super::Purged { markers, committed })
}
