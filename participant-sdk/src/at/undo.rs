//! The undo log: written in phase 1, replayed by rollback, deleted in batches
//! after commit.
//!
//! A row's key is `(xid, branch_key)`, where the SDK chooses `branch_key`
//! and registers it as the branch's payload (`{"undo_key": ...}`), which every
//! callback carries back. The undo row can then be written while the
//! registration is still in flight, instead of after it.

use super::backend::{AtBackend, Conn};
use super::executor::{qualified, rows_by_pk};
use super::image::{
    as_object, pick, row_undo, Conflict, Row, RowUndo, StatementKind, TableMeta, UndoLog, UndoStatement,
};
use super::sql::{bind_plan, TableRef};
use super::{AtError, AtResource, CLEANUP_BATCH};
use std::collections::HashMap;
use std::time::Duration;
use tandem_wire::{BranchId, Xid};
use tokio::sync::mpsc;

/// `state` of an undo row holding phase-1 images.
const STATE_NORMAL: i16 = 0;
/// `state` of a branch rolled back, or of the marker an empty rollback
/// leaves: a late phase 1 then fails on the primary key.
const STATE_ROLLED_BACK: i16 = 1;

/// Writes the branch's undo row in its local transaction.
pub(super) async fn insert<B: AtBackend>(
    conn: &mut Conn<B>,
    xid: &Xid,
    key: &BranchId,
    info: String,
) -> Result<(), AtError> {
    let d = B::DIALECT;
    let sql = format!(
        "INSERT INTO tandem_undo_log (xid, branch_key, state, rollback_info) VALUES ({}, {}, {STATE_NORMAL}, {})",
        d.param(1),
        d.param(2),
        d.param(3)
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    let params = [B::text(Some(xid.to_string())), B::text(Some(key.to_string())), B::text(Some(info))];
    B::execute(conn, &sql, &params, &plan).await?;
    Ok(())
}

/// Rolls a branch back in one local transaction (see the module docs of `at`).
pub(super) async fn rollback<B: AtBackend>(
    pool: &sqlx::Pool<B::Db>,
    resource: &AtResource<B>,
    xid: &Xid,
    branch_key: &BranchId,
) -> Result<(), AtError> {
    let d = B::DIALECT;
    let key = [B::text(Some(xid.to_string())), B::text(Some(branch_key.to_string()))];
    let mut tx = pool.begin().await?;
    let sql = format!(
        "SELECT CAST(state AS CHAR(1)), rollback_info FROM tandem_undo_log WHERE xid = {} AND branch_key = {} FOR UPDATE",
        d.param(1),
        d.param(2)
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    let found = B::fetch_text(&mut tx, &sql, &key, &plan).await?;
    let Some(row) = found.into_iter().next() else {
        // Empty rollback: phase 1 never committed here. The marker makes a
        // phase 1 still in flight fail on the primary key.
        let sql = format!(
            "INSERT INTO tandem_undo_log (xid, branch_key, state) VALUES ({}, {}, {STATE_ROLLED_BACK})",
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
        return Ok(());
    };
    if row.first().cloned().flatten().as_deref() == Some("1") {
        return Ok(()); // already rolled back
    }
    let info = row.get(1).cloned().flatten().ok_or_else(|| AtError::CorruptUndo("rollback_info is NULL".into()))?;
    let log: UndoLog = serde_json::from_str(&info).map_err(|e| AtError::CorruptUndo(e.to_string()))?;
    for stmt in log.statements.iter().rev() {
        let conflicts = undo_statement::<B>(&mut tx, resource, stmt).await?;
        if !conflicts.is_empty() {
            tx.rollback().await?;
            return Err(AtError::DirtyWrite(conflicts));
        }
    }
    let sql = format!(
        "UPDATE tandem_undo_log SET state = {STATE_ROLLED_BACK}, rollback_info = NULL WHERE xid = {} AND branch_key = {}",
        d.param(1),
        d.param(2)
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    B::execute(&mut tx, &sql, &key, &plan).await?;
    tx.commit().await?;
    tracing::info!(%xid, %branch_key, statements = log.statements.len(), "AT branch rolled back");
    Ok(())
}

/// Undoes one statement: checks every row against its images, then restores.
/// Returns the dirty rows (and changes nothing) if there are any.
async fn undo_statement<B: AtBackend>(
    conn: &mut Conn<B>,
    resource: &AtResource<B>,
    stmt: &UndoStatement,
) -> Result<Vec<Conflict>, AtError> {
    let table = TableRef { schema: Some(stmt.schema.clone()), name: stmt.table.clone() };
    // A table that is gone cannot be restored (a person must look); a
    // database error reading the catalog is retried like any other.
    let meta = resource.meta(conn, &table).await.map_err(|e| match e {
        AtError::Unsupported(m) => AtError::CorruptUndo(m),
        other => other,
    })?;
    let index = |name: &String| {
        meta.index_of(name).ok_or_else(|| {
            AtError::CorruptUndo(format!("column {name} of the undo log is not in {} any more", meta.qualified()))
        })
    };
    let columns = stmt.columns.iter().map(index).collect::<Result<Vec<usize>, _>>()?;
    let pk_in_row = stmt
        .pk
        .iter()
        .map(|p| stmt.columns.iter().position(|c| c == p))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| AtError::CorruptUndo("a key column is missing from the images".into()))?;
    let pk_in_table: Vec<usize> = pk_in_row.iter().map(|&i| columns[i]).collect();

    let by_key =
        |rows: &[Row]| -> HashMap<Row, Row> { rows.iter().map(|r| (pick(r, &pk_in_row), r.clone())).collect() };
    let before = by_key(&stmt.before);
    let after = by_key(&stmt.after);
    let mut keys: Vec<Row> = stmt.before.iter().chain(&stmt.after).map(|r| pick(r, &pk_in_row)).collect();
    keys.sort();
    keys.dedup();
    let current = by_key(&rows_by_pk::<B>(conn, &meta, &columns, &pk_in_table, &keys).await?);

    let mut plan = Vec::new();
    let mut conflicts = Vec::new();
    for key in &keys {
        let (b, a, c) = (before.get(key), after.get(key), current.get(key));
        if stmt.kind == StatementKind::Update && (b.is_none() || a.is_none()) {
            return Err(AtError::CorruptUndo(format!("the update images of {key:?} do not pair up")));
        }
        match row_undo(b, a, c) {
            RowUndo::Nothing => {}
            RowUndo::Restore => plan.push((key, b)),
            RowUndo::Dirty => conflicts.push(Conflict {
                table: format!("{}.{}", stmt.schema, stmt.table),
                pk: key.clone(),
                expected: a.map(|r| as_object(&stmt.columns, r)),
                found: c.map(|r| as_object(&stmt.columns, r)),
            }),
        }
    }
    if !conflicts.is_empty() {
        return Ok(conflicts);
    }
    for (key, before_row) in plan {
        restore_row::<B>(conn, &meta, &columns, &pk_in_table, key, before_row, current.contains_key(key)).await?;
    }
    Ok(Vec::new())
}

/// Writes one row back to its before image: update it, insert it again, or
/// delete it (when it did not exist before).
async fn restore_row<B: AtBackend>(
    conn: &mut Conn<B>,
    meta: &TableMeta,
    columns: &[usize],
    pk: &[usize],
    key: &Row,
    before: Option<&Row>,
    exists: bool,
) -> Result<(), AtError> {
    let d = B::DIALECT;
    let table = qualified(d, meta);
    let mut params = Vec::new();
    let mut param = |v: Option<String>| {
        params.push(B::text(v));
        d.param(params.len())
    };
    let mut pk_filter = Vec::new();
    for (&c, v) in pk.iter().zip(key) {
        let col = &meta.columns[c];
        let p = param(v.clone());
        pk_filter.push(format!("{} = {}", d.quote(&col.name), B::value_expr(col, &p)));
    }
    let pk_filter = pk_filter.join(" AND ");
    // Generated columns are compared, never written.
    let writable: Vec<(usize, &Option<String>)> = match before {
        Some(row) => {
            columns.iter().zip(row).filter(|(c, _)| !meta.columns[**c].generated).map(|(c, v)| (*c, v)).collect()
        }
        None => Vec::new(),
    };
    let sql = match (before, exists) {
        (None, _) => format!("DELETE FROM {table} WHERE {pk_filter}"),
        (Some(_), true) => {
            let sets: Vec<String> = writable
                .iter()
                .filter(|(c, _)| !pk.contains(c) && !meta.columns[*c].identity_always)
                .map(|(c, v)| {
                    let col = &meta.columns[*c];
                    format!("{} = {}", d.quote(&col.name), B::value_expr(col, &param((*v).clone())))
                })
                .collect();
            if sets.is_empty() {
                return Ok(());
            }
            format!("UPDATE {table} SET {} WHERE {pk_filter}", sets.join(", "))
        }
        (Some(_), false) => {
            let names: Vec<String> = writable.iter().map(|(c, _)| d.quote(&meta.columns[*c].name)).collect();
            let values: Vec<String> =
                writable.iter().map(|(c, v)| B::value_expr(&meta.columns[*c], &param((*v).clone()))).collect();
            // The key filter's parameters are not used by an INSERT.
            let overriding = if d == super::sql::SqlDialect::Postgres { " OVERRIDING SYSTEM VALUE" } else { "" };
            format!("INSERT INTO {table} ({}){overriding} VALUES ({})", names.join(", "), values.join(", "))
        }
    };
    let (sql, plan) = bind_plan(&sql, d)?;
    let what = || format!("{} key {:?}", meta.qualified(), key);
    let n = B::execute(conn, &sql, &params, &plan).await.map_err(|e| {
        if B::is_integrity_violation(&e) {
            AtError::RestoreRefused(format!("{}: {e}", what()))
        } else {
            e.into()
        }
    })?;
    if n != 1 {
        return Err(AtError::RestoreRefused(format!("restoring {} changed {n} rows", what())));
    }
    Ok(())
}

/// Deletes the undo rows of committed branches (by `(xid, branch_key)`).
pub(super) async fn delete_batch<B: AtBackend>(
    pool: &sqlx::Pool<B::Db>,
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
    let sql = format!(
        "DELETE FROM tandem_undo_log WHERE state = {STATE_NORMAL} AND (xid, branch_key) IN ({})",
        tuples.join(", ")
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    let mut conn = pool.acquire().await?;
    B::execute(&mut conn, &sql, &params, &plan).await?;
    Ok(())
}

/// Background task: deletes committed branches' undo rows in batches.
/// Whatever is queued when the process dies stays in the table; the rows
/// are inert (their transactions are committed) and can be purged by age.
pub(super) async fn cleaner<B: AtBackend>(pool: sqlx::Pool<B::Db>, mut rx: mpsc::Receiver<(Xid, BranchId)>) {
    let mut batch = Vec::with_capacity(CLEANUP_BATCH);
    while rx.recv_many(&mut batch, CLEANUP_BATCH).await > 0 {
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=5 {
            match delete_batch::<B>(&pool, &batch).await {
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

/// Transactions whose old phase-1 rows one purge looks at.
const PURGE_XIDS: usize = 500;

/// See [`AtResource::purge`].
pub(super) async fn purge<B: AtBackend>(
    pool: &sqlx::Pool<B::Db>,
    client: &crate::client::TandemClient,
    age: Duration,
) -> Result<super::Purged, AtError> {
    let d = B::DIALECT;
    let ms = [B::text(Some(age.as_millis().to_string()))];
    let mut conn = pool.acquire().await?;
    let sql = format!(
        "DELETE FROM tandem_undo_log WHERE state = {STATE_ROLLED_BACK} AND created_at < {}",
        B::ago(&d.param(1))
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    let markers = B::execute(&mut conn, &sql, &ms, &plan).await?;
    let sql = format!(
        "SELECT DISTINCT xid FROM tandem_undo_log WHERE state = {STATE_NORMAL} AND created_at < {} LIMIT {PURGE_XIDS}",
        B::ago(&d.param(1))
    );
    let (sql, plan) = bind_plan(&sql, d)?;
    let old = B::fetch_text(&mut conn, &sql, &ms, &plan).await?;
    let mut committed = 0;
    for xid in old.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
        let Ok(xid) = Xid::parse(xid) else { continue };
        match client.get(&xid).await {
            Ok(t)
                if matches!(
                    t.status,
                    tandem_wire::GlobalStatus::Committed | tandem_wire::GlobalStatus::CommitFailed
                ) =>
            {
                let sql = format!("DELETE FROM tandem_undo_log WHERE state = {STATE_NORMAL} AND xid = {}", d.param(1));
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
