//! The rollback of a branch, planned from its undo log and the rows as they
//! are now. Pure: the caller reads the rows and applies the plan.
//!
//! Every row the branch wrote (its statements', and those a referential
//! action of the database changed with them) is decided once, over the whole
//! branch: it must return to the image it had before the branch first wrote
//! it. If it is as the branch last left it, it is restored; if it is already
//! as it was, nothing is done; otherwise someone else wrote it, a dirty
//! write, and nothing at all is restored.
//!
//! The restores then run in an order the foreign keys allow: a row comes
//! back after the row it references, and goes away before the row it
//! referenced; otherwise in exact reverse order of the branch's writes (which
//! is what unique keys checked row by row need). Rows that reference each
//! other in a cycle form one step, restored by one statement where the
//! database checks foreign keys at the end of a statement (PostgreSQL).

use super::image::{pick, Row, StatementKind, UndoStatement};
use super::meta::{ForeignKey, RefAction, TableName};
use std::collections::{BinaryHeap, HashMap};

/// The images of one table across the branch.
#[derive(Debug, Clone, PartialEq)]
pub struct TableImages {
    /// The table.
    pub table: TableName,
    /// Column names of every image.
    pub columns: Vec<String>,
    /// Type identities of the columns, as phase 1 recorded them.
    pub types: Vec<String>,
    /// Indexes of the key columns in `columns`.
    pub pk: Vec<usize>,
    /// Each row the branch wrote, in order of its first write.
    pub rows: Vec<RowHistory>,
}

/// What the branch did to one row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowHistory {
    /// Primary-key values.
    pub key: Row,
    /// The row before the branch first wrote it (none: the branch created it).
    pub first_before: Option<Row>,
    /// The row as the branch last left it (none: the branch deleted it).
    pub last_after: Option<Row>,
    /// Position of the branch's last write of it, over all statements.
    pub last_write: usize,
}

/// Groups a branch's statements by table and row.
pub fn histories(statements: &[UndoStatement]) -> Result<Vec<TableImages>, String> {
    let mut tables: Vec<TableImages> = Vec::new();
    let mut index: HashMap<(TableName, Row), (usize, usize)> = HashMap::new();
    let mut position = 0usize;
    for s in statements {
        let name = s.table_name();
        // Statements on one table may list its columns in another order (a
        // partition's own, its root's): images are aligned by column name.
        let mut align: Option<Vec<usize>> = None;
        let t = match tables.iter().position(|t| t.table == name) {
            Some(t) => {
                if tables[t].columns != s.columns {
                    let map: Option<Vec<usize>> =
                        tables[t].columns.iter().map(|c| s.columns.iter().position(|x| x == c)).collect();
                    match map {
                        Some(m)
                            if s.columns.len() == m.len()
                                && m.iter().map(|&i| &s.types[i]).eq(tables[t].types.iter()) =>
                        {
                            align = Some(m)
                        }
                        _ => return Err(format!("the images of {name} do not all have the same columns")),
                    }
                } else if tables[t].types != s.types {
                    return Err(format!("the images of {name} do not all have the same column types"));
                }
                t
            }
            None => {
                let pk =
                    s.pk.iter()
                        .map(|p| s.columns.iter().position(|c| c == p))
                        .collect::<Option<Vec<usize>>>()
                        .ok_or_else(|| format!("a key column of {name} is missing from its images"))?;
                if s.types.len() != s.columns.len() {
                    return Err(format!(
                        "the images of {name} name {} types for {} columns",
                        s.types.len(),
                        s.columns.len()
                    ));
                }
                tables.push(TableImages {
                    table: name.clone(),
                    columns: s.columns.clone(),
                    types: s.types.clone(),
                    pk,
                    rows: Vec::new(),
                });
                tables.len() - 1
            }
        };
        let width = s.columns.len();
        let events: Vec<(Option<&Row>, Option<&Row>)> = match s.kind {
            StatementKind::Insert => s.after.iter().map(|a| (None, Some(a))).collect(),
            StatementKind::Delete => s.before.iter().map(|b| (Some(b), None)).collect(),
            StatementKind::Update => {
                if s.before.len() != s.after.len() {
                    return Err(format!("the update images of {name} do not pair up"));
                }
                s.before.iter().zip(&s.after).map(|(b, a)| (Some(b), Some(a))).collect()
            }
        };
        for (before, after) in events {
            if before.is_some_and(|r| r.len() != width) || after.is_some_and(|r| r.len() != width) {
                return Err(format!("an image of {name} has the wrong number of values"));
            }
            let aligned = |r: Option<&Row>| r.map(|r| align.as_ref().map_or_else(|| r.clone(), |m| pick(r, m)));
            let (before, after) = (aligned(before), aligned(after));
            let (before, after) = (before.as_ref(), after.as_ref());
            let Some(image) = before.or(after) else { continue };
            let key = pick(image, &tables[t].pk);
            if let Some(a) = after {
                if pick(a, &tables[t].pk) != key {
                    return Err(format!("an image of {name} changes the key {key:?}"));
                }
            }
            match index.get(&(name.clone(), key.clone())) {
                Some(&(ti, ri)) => {
                    tables[ti].rows[ri].last_after = after.cloned();
                    tables[ti].rows[ri].last_write = position;
                }
                None => {
                    tables[t].rows.push(RowHistory {
                        key: key.clone(),
                        first_before: before.cloned(),
                        last_after: after.cloned(),
                        last_write: position,
                    });
                    index.insert((name.clone(), key), (t, tables[t].rows.len() - 1));
                }
            }
            position += 1;
        }
    }
    Ok(tables)
}

/// What one row's rollback takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowUndo {
    /// As the branch left it: restore it.
    Restore,
    /// Already as it was before the branch: nothing to do.
    Nothing,
    /// Someone else wrote it since: a dirty write.
    Dirty,
}

/// Decides one row from its history and its current value (`None`: absent).
pub fn row_undo(h: &RowHistory, current: Option<&Row>) -> RowUndo {
    if current == h.last_after.as_ref() {
        if h.first_before == h.last_after {
            RowUndo::Nothing
        } else {
            RowUndo::Restore
        }
    } else if current == h.first_before.as_ref() {
        RowUndo::Nothing
    } else {
        RowUndo::Dirty
    }
}

/// The write that restores one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The row exists and must become this image.
    Update(Row),
    /// The row is gone and must be inserted with this image.
    Insert(Row),
    /// The branch created the row: delete it.
    Delete,
}

/// One row to restore: which table (index into the histories), which row,
/// what it is now and what to write.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOp {
    /// Index into the tables given to [`order`].
    pub table: usize,
    /// Primary-key values.
    pub key: Row,
    /// The row now.
    pub current: Option<Row>,
    /// The write.
    pub op: Op,
    /// Position of the branch's last write of the row: restores run in
    /// reverse order of these, where foreign keys leave a choice.
    pub last_write: usize,
}

impl RowOp {
    /// The row as it must be once restored.
    pub fn target(&self) -> Option<&Row> {
        match &self.op {
            Op::Update(r) | Op::Insert(r) => Some(r),
            Op::Delete => None,
        }
    }
}

/// The restore of a row, from its history and its value now (`None` when
/// nothing is to be done). Call only for rows [`row_undo`] says to restore.
pub fn restore_op(table: usize, h: &RowHistory, current: Option<Row>) -> Option<RowOp> {
    let op = match (&h.first_before, &current) {
        (Some(b), Some(_)) => Op::Update(b.clone()),
        (Some(b), None) => Op::Insert(b.clone()),
        (None, Some(_)) => Op::Delete,
        (None, None) => return None,
    };
    Some(RowOp { table, key: h.key.clone(), current, op, last_write: h.last_write })
}

/// A foreign key between two of the tables, with columns resolved to
/// indexes into their images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Index of the referencing table.
    pub child: usize,
    /// Its referencing columns.
    pub child_columns: Vec<usize>,
    /// Index of the referenced table.
    pub parent: usize,
    /// The referenced columns.
    pub parent_columns: Vec<usize>,
    /// `ON DELETE`.
    pub on_delete: RefAction,
    /// `ON UPDATE`.
    pub on_update: RefAction,
    /// Whether the key's check waits for the end of the transaction (a
    /// deferrable key while the rollback defers them); its actions never do.
    pub deferred: bool,
}

/// Resolves `fks` to edges between `tables` (foreign keys whose tables or
/// columns are not all among the images impose no order); `deferred`: the
/// rollback defers deferrable constraints.
pub fn edges(tables: &[TableImages], fks: &[ForeignKey], deferred: bool) -> Vec<Edge> {
    let find = |t: &TableName| tables.iter().position(|x| &x.table == t);
    let cols = |t: &TableImages, names: &[String]| -> Option<Vec<usize>> {
        names.iter().map(|n| t.columns.iter().position(|c| c == n)).collect()
    };
    fks.iter()
        .filter_map(|f| {
            let (child, parent) = (find(&f.child)?, find(&f.parent)?);
            Some(Edge {
                child,
                child_columns: cols(&tables[child], &f.child_columns)?,
                parent,
                parent_columns: cols(&tables[parent], &f.parent_columns)?,
                on_delete: f.on_delete,
                on_update: f.on_update,
                deferred: deferred && f.deferrable,
            })
        })
        .collect()
}

/// How a value of column `column` (an index into its images) of table
/// `table` (an index into the histories) compares to the values of the
/// columns a foreign key pairs it with: its lock value (a MySQL string's
/// weight, a numeric without its scale).
pub type Canon<'c> = &'c dyn Fn(usize, usize, &str) -> String;

/// The canonical form: values compare as they are.
pub fn as_is(_table: usize, _column: usize, v: &str) -> String {
    v.to_owned()
}

/// Values of `row` at `cols` of `table`, compared as `canon` says, if none
/// is NULL (a NULL references nothing).
fn refs(row: Option<&Row>, table: usize, cols: &[usize], canon: Canon<'_>) -> Option<Row> {
    let row = row?;
    cols.iter().map(|&c| row.get(c).cloned().flatten().map(|v| canon(table, c, &v))).map(|v| v.map(Some)).collect()
}

/// One step of the restore: a row, or rows that reference each other in a
/// cycle (of one table or several), which only one statement can write
/// (PostgreSQL checks foreign keys at the end of a statement; MySQL cannot).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The rows, in the order to write them.
    pub ops: Vec<RowOp>,
}

impl Step {
    /// Whether the step's rows reference each other in a cycle.
    pub fn is_cycle(&self) -> bool {
        self.ops.len() > 1
    }
}

/// Orders the restores (see the module docs); `canon` says how values that
/// a foreign key pairs compare.
pub fn order(ops: Vec<RowOp>, edges: &[Edge], canon: Canon<'_>) -> Vec<Step> {
    let n = ops.len();
    // `after[i]` lists the ops that must come after op i.
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in edges {
        // Parent rows by their referenced values, as they will be and as they are.
        let mut created: HashMap<Row, Vec<usize>> = HashMap::new();
        let mut removed: HashMap<Row, Vec<usize>> = HashMap::new();
        for (i, o) in ops.iter().enumerate().filter(|(_, o)| o.table == e.parent) {
            let (now, then) = (
                refs(o.current.as_ref(), e.parent, &e.parent_columns, canon),
                refs(o.target(), e.parent, &e.parent_columns, canon),
            );
            if now != then {
                // A referenced value the restore brings back: the check that
                // a child's value exists waits for commit if deferred.
                if let (Some(v), false) = (then, e.deferred) {
                    created.entry(v).or_default().push(i);
                }
                // A referenced value the restore takes away. An update's is
                // followed by the database itself when the key's action
                // writes (the referencing rows move with it); a delete's
                // action must not run (it would reach rows the restore writes
                // itself), so the children go first; a deferred NO ACTION
                // check waits for commit. Actions are never deferred.
                let action = if matches!(o.op, Op::Delete) { e.on_delete } else { e.on_update };
                let needs_child_first = match (&o.op, action) {
                    (Op::Update(_), a) if a.writes() => false,
                    (_, RefAction::NoAction) => !e.deferred,
                    _ => true,
                };
                if let (Some(v), true) = (now, needs_child_first) {
                    removed.entry(v).or_default().push(i);
                }
            }
        }
        for (j, o) in ops.iter().enumerate().filter(|(_, o)| o.table == e.child) {
            let (now, then) = (
                refs(o.current.as_ref(), e.child, &e.child_columns, canon),
                refs(o.target(), e.child, &e.child_columns, canon),
            );
            if now == then {
                continue;
            }
            // The child will reference a parent that the restore brings back: parent first.
            if let Some(ps) = then.and_then(|v| created.get(&v)) {
                for &p in ps.iter().filter(|&&p| p != j) {
                    after[p].push(j);
                }
            }
            // The child references a parent that the restore takes away: child first.
            if let Some(ps) = now.and_then(|v| removed.get(&v)) {
                for &p in ps.iter().filter(|&&p| p != j) {
                    after[j].push(p);
                }
            }
        }
    }
    let comps = strongly_connected(&after);
    // Order the components (a DAG) by Kahn's algorithm, latest first write first.
    let mut comp_of = vec![0usize; n];
    for (c, members) in comps.iter().enumerate() {
        for &m in members {
            comp_of[m] = c;
        }
    }
    let mut indegree = vec![0usize; comps.len()];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); comps.len()];
    for (i, next) in after.iter().enumerate() {
        for &j in next {
            let (a, b) = (comp_of[i], comp_of[j]);
            if a != b {
                succ[a].push(b);
                indegree[b] += 1;
            }
        }
    }
    let priorities: Vec<usize> =
        comps.iter().map(|members| members.iter().map(|&m| ops[m].last_write).max().unwrap_or(0)).collect();
    let priority = |c: usize| priorities[c];
    let mut ready: BinaryHeap<(usize, usize)> =
        (0..comps.len()).filter(|&c| indegree[c] == 0).map(|c| (priority(c), c)).collect();
    let mut slots: Vec<Option<RowOp>> = ops.into_iter().map(Some).collect();
    let mut steps = Vec::with_capacity(n);
    while let Some((_, c)) = ready.pop() {
        let mut members = comps[c].clone();
        members.sort_by_key(|&m| std::cmp::Reverse(slots[m].as_ref().map_or(0, |o| o.last_write)));
        let taken: Vec<RowOp> = members.iter().filter_map(|&m| slots[m].take()).collect();
        steps.push(Step { ops: taken });
        for &s in &succ[c] {
            indegree[s] -= 1;
            if indegree[s] == 0 {
                ready.push((priority(s), s));
            }
        }
    }
    steps
}

/// Strongly connected components of a graph given by successor lists
/// (Tarjan's algorithm, iterative).
fn strongly_connected(succ: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = succ.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut comps = Vec::new();
    let mut next = 0usize;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(&(v, i)) = work.last() {
            if i == 0 {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = succ[v].get(i) {
                if let Some(top) = work.last_mut() {
                    top.1 += 1;
                }
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(u, _)) = work.last() {
                low[u] = low[u].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                comps.push(comp);
            }
        }
    }
    comps
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(v: &[&str]) -> Row {
        v.iter().map(|s| if *s == "∅" { None } else { Some((*s).to_owned()) }).collect()
    }

    fn stmt(kind: StatementKind, before: Vec<Row>, after: Vec<Row>) -> UndoStatement {
        UndoStatement {
            schema: "public".into(),
            table: "node".into(),
            kind,
            columns: vec!["id".into(), "parent".into(), "v".into()],
            types: vec!["23".into(), "23".into(), "25".into()],
            pk: vec!["id".into()],
            before,
            after,
        }
    }

    fn node_fk() -> ForeignKey {
        let node = TableName { schema: "public".into(), name: "node".into() };
        ForeignKey {
            name: "node_parent_fkey".into(),
            child: node.clone(),
            child_columns: vec!["parent".into()],
            parent: node,
            parent_columns: vec!["id".into()],
            on_delete: RefAction::NoAction,
            on_delete_columns: vec![],
            on_update: RefAction::NoAction,
            deferrable: false,
            to_partition: false,
            child_row_security: false,
        }
    }

    /// Decides every row against `current` (by key) and orders the restores.
    fn plan(statements: &[UndoStatement], current: &[Row], fks: &[ForeignKey]) -> Result<Vec<Vec<Row>>, Vec<Row>> {
        let tables = histories(statements).unwrap();
        let mut ops = Vec::new();
        let mut dirty = Vec::new();
        for (ti, t) in tables.iter().enumerate() {
            for h in &t.rows {
                let now = current.iter().find(|c| pick(c, &t.pk) == h.key).cloned();
                match row_undo(h, now.as_ref()) {
                    RowUndo::Restore => ops.extend(restore_op(ti, h, now)),
                    RowUndo::Nothing => {}
                    RowUndo::Dirty => dirty.push(h.key.clone()),
                }
            }
        }
        if !dirty.is_empty() {
            return Err(dirty);
        }
        Ok(order(ops, &edges(&tables, fks, true), &as_is)
            .into_iter()
            .map(|s| s.ops.into_iter().map(|o| o.key).collect())
            .collect())
    }

    #[test]
    fn rows_are_decided_over_the_whole_branch() {
        let (b, a1, a2) = (r(&["1", "∅", "x"]), r(&["1", "∅", "y"]), r(&["1", "∅", "z"]));
        let s = [
            stmt(StatementKind::Update, vec![b.clone()], vec![a1.clone()]),
            stmt(StatementKind::Update, vec![a1.clone()], vec![a2.clone()]),
        ];
        assert_eq!(
            plan(&s, std::slice::from_ref(&a2), &[]),
            Ok(vec![vec![r(&["1"])]]),
            "restored once, to the first image"
        );
        assert_eq!(plan(&s, std::slice::from_ref(&b), &[]), Ok(vec![]), "already as before");
        assert_eq!(
            plan(&s, std::slice::from_ref(&a1), &[]),
            Err(vec![r(&["1"])]),
            "the intermediate image is not the branch's last"
        );
        // Inserted then deleted by the branch: nothing to do, unless someone inserted it again.
        let s = [
            stmt(StatementKind::Insert, vec![], vec![a1.clone()]),
            stmt(StatementKind::Delete, vec![a1.clone()], vec![]),
        ];
        assert_eq!(plan(&s, &[], &[]), Ok(vec![]));
        assert_eq!(plan(&s, &[a2], &[]), Err(vec![r(&["1"])]));
    }

    #[test]
    fn inserted_children_go_first_whatever_their_keys_sort_as() {
        // INSERT INTO node VALUES (10, 1, 'p'), (2, 10, 'c'): "10" < "2" as text.
        let s = [stmt(StatementKind::Insert, vec![], vec![r(&["10", "1", "p"]), r(&["2", "10", "c"])])];
        let now = [r(&["10", "1", "p"]), r(&["2", "10", "c"])];
        assert_eq!(plan(&s, &now, &[node_fk()]), Ok(vec![vec![r(&["2"])], vec![r(&["10"])]]));
        // The same rows inserted child-first in the other order by a deferred check.
        let s = [stmt(StatementKind::Insert, vec![], vec![r(&["2", "10", "c"]), r(&["10", "1", "p"])])];
        assert_eq!(
            plan(&s, &now, &[node_fk()]),
            Ok(vec![vec![r(&["2"])], vec![r(&["10"])]]),
            "the key order wins over write order"
        );
    }

    #[test]
    fn deleted_parents_come_back_first() {
        // DELETE FROM node WHERE id IN (10, 2), processed parent first (legal where FKs are checked per statement).
        let s = [stmt(StatementKind::Delete, vec![r(&["10", "∅", "p"]), r(&["2", "10", "c"])], vec![])];
        assert_eq!(plan(&s, &[], &[node_fk()]), Ok(vec![vec![r(&["10"])], vec![r(&["2"])]]));
        // Without a foreign key, exact reverse order of the writes.
        assert_eq!(plan(&s, &[], &[]), Ok(vec![vec![r(&["2"])], vec![r(&["10"])]]));
    }

    #[test]
    fn a_reference_cycle_is_one_step() {
        // 1 -> 2 -> 1, both deleted: they can only come back together.
        let s = [stmt(StatementKind::Delete, vec![r(&["1", "2", "a"]), r(&["2", "1", "b"])], vec![])];
        let steps = plan(&s, &[], &[node_fk()]).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].len(), 2);
    }

    #[test]
    fn a_cascade_restores_parents_before_children() {
        let parent = UndoStatement {
            table: "parent".into(),
            columns: vec!["id".into()],
            types: vec!["23".into()],
            ..stmt(StatementKind::Delete, vec![r(&["1"])], vec![])
        };
        let child = UndoStatement {
            table: "child".into(),
            columns: vec!["id".into(), "pid".into()],
            types: vec!["23".into(), "23".into()],
            ..stmt(StatementKind::Delete, vec![r(&["7", "1"]), r(&["8", "1"])], vec![])
        };
        let fk = ForeignKey {
            child: TableName { schema: "public".into(), name: "child".into() },
            child_columns: vec!["pid".into()],
            parent: TableName { schema: "public".into(), name: "parent".into() },
            parent_columns: vec!["id".into()],
            on_delete: RefAction::Cascade,
            ..node_fk()
        };
        // The undo log records the cascaded children before the parent.
        let tables = histories(&[child, parent]).unwrap();
        let ops: Vec<RowOp> = tables
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| t.rows.iter().map(move |h| restore_op(ti, h, None).unwrap()))
            .collect();
        let steps = order(ops, &edges(&tables, &[fk], true), &as_is);
        let names: Vec<&str> = steps.iter().map(|s| tables[s.ops[0].table].table.name.as_str()).collect();
        assert_eq!(names, ["parent", "child", "child"]);
    }

    #[test]
    fn a_key_that_follows_updates_restores_the_parent_first() {
        // UPDATE parent SET code = 'Z' cascaded to the child: restoring the
        // parent's code moves the child back too; the child must come after.
        let parent = UndoStatement {
            table: "parent".into(),
            columns: vec!["id".into(), "code".into()],
            types: vec!["23".into(), "25".into()],
            ..stmt(StatementKind::Update, vec![r(&["1", "A"])], vec![r(&["1", "Z"])])
        };
        let child = UndoStatement {
            table: "child".into(),
            columns: vec!["id".into(), "pcode".into()],
            types: vec!["23".into(), "25".into()],
            ..stmt(StatementKind::Update, vec![r(&["7", "A"])], vec![r(&["7", "Z"])])
        };
        let fk = ForeignKey {
            child: TableName { schema: "public".into(), name: "child".into() },
            child_columns: vec!["pcode".into()],
            parent: TableName { schema: "public".into(), name: "parent".into() },
            parent_columns: vec!["code".into()],
            on_update: RefAction::Cascade,
            ..node_fk()
        };
        let tables = histories(&[child, parent]).unwrap();
        let ops: Vec<RowOp> = tables
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| t.rows.iter().map(move |h| restore_op(ti, h, h.last_after.clone()).unwrap()))
            .collect();
        let steps = order(ops.clone(), &edges(&tables, std::slice::from_ref(&fk), false), &as_is);
        let names: Vec<&str> = steps.iter().map(|s| tables[s.ops[0].table].table.name.as_str()).collect();
        assert_eq!(names, ["parent", "child"]);
        // With NO ACTION the two rows need each other: one step, which only
        // a statement checking keys at its end can write.
        let fk = ForeignKey { on_update: RefAction::NoAction, ..fk };
        let steps = order(ops, &edges(&tables, &[fk], false), &as_is);
        assert_eq!(steps.len(), 1);
        assert!(steps[0].is_cycle());
    }

    #[test]
    fn rows_come_back_in_reverse_order_of_their_last_writes() {
        // Unique k: (1,'a'), (2,'b'). SET k='x' WHERE id=1; SET k='y' WHERE id=2; SET k='b' WHERE id=1.
        // Row 2 cannot take 'b' back before row 1 gives it up.
        let s = [
            stmt(StatementKind::Update, vec![r(&["1", "∅", "a"])], vec![r(&["1", "∅", "x"])]),
            stmt(StatementKind::Update, vec![r(&["2", "∅", "b"])], vec![r(&["2", "∅", "y"])]),
            stmt(StatementKind::Update, vec![r(&["1", "∅", "x"])], vec![r(&["1", "∅", "b"])]),
        ];
        let now = [r(&["1", "∅", "b"]), r(&["2", "∅", "y"])];
        assert_eq!(plan(&s, &now, &[]), Ok(vec![vec![r(&["1"])], vec![r(&["2"])]]));
    }

    #[test]
    fn a_deferrable_key_still_orders_what_its_action_would_reach() {
        // The branch inserted child 1 (pid 10), then parent 10; the key cascades
        // on delete and is deferrable. Deleting the parent first would cascade.
        let child = UndoStatement {
            table: "cc".into(),
            columns: vec!["id".into(), "pid".into()],
            types: vec!["23".into(), "23".into()],
            ..stmt(StatementKind::Insert, vec![], vec![r(&["1", "10"])])
        };
        let parent = UndoStatement {
            table: "pp".into(),
            columns: vec!["id".into()],
            types: vec!["23".into()],
            ..stmt(StatementKind::Insert, vec![], vec![r(&["10"])])
        };
        let fk = ForeignKey {
            child: TableName { schema: "public".into(), name: "cc".into() },
            child_columns: vec!["pid".into()],
            parent: TableName { schema: "public".into(), name: "pp".into() },
            parent_columns: vec!["id".into()],
            on_delete: RefAction::Cascade,
            deferrable: true,
            ..node_fk()
        };
        let tables = histories(&[child, parent]).unwrap();
        let ops: Vec<RowOp> = tables
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| t.rows.iter().map(move |h| restore_op(ti, h, h.last_after.clone()).unwrap()))
            .collect();
        let steps = order(ops, &edges(&tables, &[fk], true), &as_is);
        let names: Vec<&str> = steps.iter().map(|s| tables[s.ops[0].table].table.name.as_str()).collect();
        assert_eq!(names, ["cc", "pp"]);
    }

    #[test]
    fn deferrable_keys_impose_no_order_when_deferred() {
        let s = [stmt(StatementKind::Delete, vec![r(&["10", "∅", "p"]), r(&["2", "10", "c"])], vec![])];
        let fk = ForeignKey { deferrable: true, ..node_fk() };
        assert_eq!(plan(&s, &[], &[fk]), Ok(vec![vec![r(&["2"])], vec![r(&["10"])]]));
    }

    #[test]
    fn malformed_images_are_refused() {
        let mut s = stmt(StatementKind::Update, vec![r(&["1", "∅", "x"])], vec![]);
        assert!(histories(&[s.clone()]).unwrap_err().contains("pair up"));
        s.after = vec![r(&["2", "∅", "x"])];
        assert!(histories(&[s.clone()]).unwrap_err().contains("changes the key"));
        s.after = vec![r(&["1", "x"])];
        assert!(histories(&[s]).unwrap_err().contains("wrong number"));
    }
}
