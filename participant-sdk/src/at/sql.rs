//! What AT mode understands of a statement, from `sqlparser`: the table, the
//! kind of change, the WHERE clause, and where its parameters are. Pure: no
//! database here.
//!
//! Parameters are numbered once, at parse time: PostgreSQL's `$n` already are;
//! MySQL's `?` become `?1`, `?2`, ... in textual order. Every statement AT
//! generates is written with numbered parameters over one list (the user's
//! parameters first, then AT's own) and turned into the driver's form by
//! [`bind_plan`], the one audited function for AT-generated SQL.

use super::AtError;
use sqlparser::ast::{
    AssignmentTarget, Expr, FromTable, Ident, ObjectName, ObjectNamePart, Query, SelectItem, SetExpr, Statement,
    TableFactor, TableObject, TableWithJoins, Value,
};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    /// PostgreSQL: `$n` parameters, `"ident"`.
    Postgres,
    /// MySQL / MariaDB: `?` parameters, `` `ident` ``.
    MySql,
}

impl SqlDialect {
    fn parser_dialect(self) -> Box<dyn Dialect> {
        match self {
            SqlDialect::Postgres => Box::new(PostgreSqlDialect {}),
            SqlDialect::MySql => Box::new(MySqlDialect {}),
        }
    }

    /// The numbered placeholder for parameter `n` (1-based), as [`bind_plan`] reads it.
    pub fn param(self, n: usize) -> String {
        match self {
            SqlDialect::Postgres => format!("${n}"),
            SqlDialect::MySql => format!("?{n}"),
        }
    }

    /// A quoted identifier.
    pub fn quote(self, ident: &str) -> String {
        match self {
            SqlDialect::Postgres => format!("\"{}\"", ident.replace('"', "\"\"")),
            SqlDialect::MySql => format!("`{}`", ident.replace('`', "``")),
        }
    }
}

/// A table as the statement names it, identifiers unquoted (and folded to
/// lower case where PostgreSQL folds them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    /// Schema (PostgreSQL) or database (MySQL), if given.
    pub schema: Option<String>,
    /// Table name.
    pub name: String,
}

/// The change a statement makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `INSERT INTO t (cols) VALUES (...), ...`.
    Insert {
        /// Column list as written (empty: all columns in table order).
        columns: Vec<String>,
        /// The VALUES rows, with numbered placeholders.
        rows: Vec<Vec<Expr>>,
    },
    /// `UPDATE t SET ... WHERE ...`.
    Update {
        /// Assigned columns.
        columns: Vec<String>,
    },
    /// `DELETE FROM t WHERE ...`.
    Delete,
    /// `SELECT ... FROM t WHERE ... FOR UPDATE`.
    SelectForUpdate,
}

/// A statement AT mode can image.
#[derive(Debug, Clone)]
pub struct Analyzed {
    /// The statement as the caller wrote it.
    pub sql: String,
    /// The parsed statement (numbered placeholders; PostgreSQL's `ONLY`
    /// taken out, see `only`).
    pub statement: Statement,
    /// The one table it changes or locks.
    pub table: TableRef,
    /// Its alias, if any (`UPDATE stock s ...`), so that the WHERE clause still resolves.
    pub alias: Option<String>,
    /// What it does.
    pub change: Change,
    /// The WHERE clause (numbered placeholders).
    pub selection: Option<Expr>,
    /// Whether it has a `RETURNING` clause.
    pub returning: bool,
    /// How many parameters the statement uses (highest number).
    pub params: usize,
    /// PostgreSQL `UPDATE ONLY t` / `DELETE FROM ONLY t` / `FROM ONLY t`:
    /// the rows of tables inheriting from `t` are left out.
    pub only: bool,
    /// MySQL `DELETE ... ORDER BY`: the order the rows are deleted in, as written.
    pub order_by: Vec<String>,
}

fn refuse(reason: impl Into<String>) -> AtError {
    AtError::Unsupported(reason.into())
}

/// Whether `t` is the keyword `k` (not a quoted identifier).
fn is_keyword(t: &Token, k: Keyword) -> bool {
    matches!(t, Token::Word(w) if w.keyword == k && w.quote_style.is_none())
}

/// Takes PostgreSQL's `ONLY` out of the target position (`UPDATE ONLY`,
/// `DELETE FROM ONLY`, the outermost `FROM ONLY` of a SELECT), which
/// sqlparser would read as a table named "only"; says whether there was one.
fn take_only(tokens: &mut Vec<Token>) -> bool {
    let significant: Vec<usize> =
        tokens.iter().enumerate().filter(|(_, t)| !matches!(t, Token::Whitespace(_))).map(|(i, _)| i).collect();
    let at = |k: usize| significant.get(k).map(|&i| &tokens[i]);
    let position = match at(0) {
        Some(t) if is_keyword(t, Keyword::UPDATE) => Some(1),
        Some(t) if is_keyword(t, Keyword::DELETE) && at(1).is_some_and(|t| is_keyword(t, Keyword::FROM)) => Some(2),
        Some(t) if is_keyword(t, Keyword::SELECT) => {
            let mut depth = 0i32;
            let mut found = None;
            for (k, &i) in significant.iter().enumerate() {
                match &tokens[i] {
                    Token::LParen => depth += 1,
                    Token::RParen => depth -= 1,
                    t if depth == 0 && is_keyword(t, Keyword::FROM) => {
                        found = Some(k + 1);
                        break;
                    }
                    _ => {}
                }
            }
            found
        }
        _ => None,
    };
    match position.and_then(|k| significant.get(k).copied()) {
        Some(i) if is_keyword(&tokens[i], Keyword::ONLY) => {
            tokens.remove(i);
            true
        }
        _ => false,
    }
}

/// What a statement that parses as a query but writes is, for refusals.
fn writing_query(q: &Query) -> Option<String> {
    let kind = |b: &SetExpr| match b {
        SetExpr::Insert(_) => Some("INSERT"),
        SetExpr::Update(_) => Some("UPDATE"),
        SetExpr::Delete(_) => Some("DELETE"),
        _ => None,
    };
    if let Some(k) = kind(&q.body) {
        return Some(format!(
            "WITH ... {k} (a statement with a WITH clause) is not supported: AT images one plain statement \
             at a time; write the WITH query as a subquery"
        ));
    }
    let ctes = q.with.iter().flat_map(|w| &w.cte_tables);
    for cte in ctes {
        if let Some(k) = kind(&cte.query.body) {
            return Some(format!(
                "a data-modifying WITH clause ({k} inside WITH {}) is not supported: AT cannot image writes made \
                 inside a query; run the {k} as its own statement",
                cte.alias.name
            ));
        }
    }
    None
}

/// Parses one statement and checks that AT mode can image it.
pub fn analyze(sql: &str, dialect: SqlDialect) -> Result<Analyzed, AtError> {
    let d = dialect.parser_dialect();
    // Literals stay as written (no unescaping): re-rendered parts of the
    // statement (its WHERE clause, VALUES) then carry them verbatim, backslash
    // escapes and doubled quotes included.
    let mut tokens = Tokenizer::new(d.as_ref(), sql)
        .with_unescape(false)
        .tokenize()
        .map_err(|e| refuse(format!("cannot tokenize the statement: {e}")))?;
    let mut params = 0usize;
    for t in &mut tokens {
        if let Token::Placeholder(p) = t {
            match dialect {
                SqlDialect::MySql if p == "?" => {
                    params += 1;
                    *p = format!("?{params}");
                }
                SqlDialect::Postgres => match p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) if n > 0 => params = params.max(n),
                    _ => return Err(refuse(format!("unsupported placeholder {p}; use $1, $2, ..."))),
                },
                SqlDialect::MySql => return Err(refuse(format!("unsupported placeholder {p}; use ?"))),
            }
        }
    }
    let only = dialect == SqlDialect::Postgres && take_only(&mut tokens);
    let mut statements = Parser::new(d.as_ref())
        .with_tokens(tokens)
        .parse_statements()
        .map_err(|e| refuse(format!("cannot parse the statement: {e}")))?;
    if statements.len() != 1 {
        return Err(refuse(format!("expected exactly one statement, found {}", statements.len())));
    }
    let statement = statements.remove(0);
    let mut order_by = Vec::new();
    let (table, alias, change, selection, returning) = match &statement {
        Statement::Insert(ins) => {
            if ins.on.is_some() {
                return Err(refuse("INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE is not supported"));
            }
            if ins.ignore || ins.replace_into || !ins.assignments.is_empty() || ins.table_alias.is_some() {
                return Err(refuse("only plain INSERT INTO t (columns) VALUES (...) is supported"));
            }
            let TableObject::TableName(name) = &ins.table else {
                return Err(refuse("INSERT into a table function is not supported"));
            };
            let rows = match ins.source.as_deref() {
                Some(q) if q.with.is_some() => {
                    return Err(refuse("INSERT with a WITH clause is not supported; use INSERT ... VALUES"))
                }
                Some(q) => match q.body.as_ref() {
                    SetExpr::Values(v) => v.rows.clone(),
                    _ => return Err(refuse("INSERT ... SELECT is not supported; use INSERT ... VALUES")),
                },
                // PostgreSQL's INSERT INTO t DEFAULT VALUES: one row of defaults.
                None => vec![Vec::new()],
            };
            let columns = ins.columns.iter().map(|c| ident(c, dialect)).collect::<Vec<_>>();
            if !columns.is_empty() && rows.iter().any(|r| r.len() != columns.len()) {
                return Err(refuse("each VALUES row must have one value per listed column"));
            }
            (table_ref(name, dialect)?, None, Change::Insert { columns, rows }, None, ins.returning.is_some())
        }
        Statement::Update { table, assignments, from, selection, returning, or, limit } => {
            if from.is_some() || or.is_some() || limit.is_some() {
                return Err(refuse("UPDATE with FROM, OR or LIMIT is not supported"));
            }
            let (t, alias) = single_table(table, dialect)?;
            let mut columns = Vec::new();
            for a in assignments {
                match &a.target {
                    AssignmentTarget::ColumnName(n) => columns.push(last_ident(n, dialect)?),
                    AssignmentTarget::Tuple(_) => return Err(refuse("UPDATE ... SET (a, b) = ... is not supported")),
                }
            }
            (t, alias, Change::Update { columns }, selection.clone(), returning.is_some())
        }
        Statement::Delete(del) => {
            if !del.tables.is_empty() || del.using.is_some() || del.limit.is_some() {
                return Err(refuse("DELETE with several tables, USING or LIMIT is not supported"));
            }
            if !del.order_by.is_empty() && dialect == SqlDialect::Postgres {
                return Err(refuse("DELETE ... ORDER BY is not supported"));
            }
            order_by = del.order_by.iter().map(ToString::to_string).collect();
            let from = match &del.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
            };
            let [twj] = from.as_slice() else {
                return Err(refuse("DELETE from several tables is not supported"));
            };
            let (t, alias) = single_table(twj, dialect)?;
            (t, alias, Change::Delete, del.selection.clone(), del.returning.is_some())
        }
        Statement::Query(q) => {
            if let Some(why) = writing_query(q) {
                return Err(refuse(why));
            }
            let for_update = q.locks.iter().any(|l| matches!(l.lock_type, sqlparser::ast::LockType::Update));
            if !for_update {
                return Err(refuse("a plain SELECT needs no AT handling; only SELECT ... FOR UPDATE is intercepted"));
            }
            if q.with.is_some() || q.limit_clause.is_some() || q.fetch.is_some() || q.locks.len() != 1 {
                return Err(refuse(
                    "SELECT ... FOR UPDATE with WITH, LIMIT, FETCH or several lock clauses is not supported",
                ));
            }
            let SetExpr::Select(sel) = q.body.as_ref() else {
                return Err(refuse("SELECT ... FOR UPDATE over a set operation is not supported"));
            };
            let [twj] = sel.from.as_slice() else {
                return Err(refuse("SELECT ... FOR UPDATE must read exactly one table"));
            };
            if sel.group_by != sqlparser::ast::GroupByExpr::Expressions(vec![], vec![]) || sel.having.is_some() {
                return Err(refuse("SELECT ... FOR UPDATE with GROUP BY or HAVING is not supported"));
            }
            let (t, alias) = single_table(twj, dialect)?;
            (t, alias, Change::SelectForUpdate, sel.selection.clone(), false)
        }
        other => {
            let kind = other.to_string().split_whitespace().next().unwrap_or_default().to_uppercase();
            return Err(refuse(format!(
                "{kind} statements are not supported in AT mode (only INSERT, UPDATE, DELETE and SELECT ... FOR UPDATE)"
            )));
        }
    };
    if only && matches!(change, Change::Insert { .. }) {
        return Err(AtError::Internal("ONLY taken from an INSERT".into()));
    }
    Ok(Analyzed { sql: sql.to_owned(), statement, table, alias, change, selection, returning, params, only, order_by })
}

/// Points the statement's target at `target` (AT's own rendering of the
/// table: qualified, quoted, with `ONLY` where the table has inheriting
/// tables), so that the statement AT runs names exactly the imaged table.
pub fn set_target(statement: &mut Statement, target: &str) -> Result<(), AtError> {
    let name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(target))]);
    let relation = |t: &mut TableWithJoins| match &mut t.relation {
        TableFactor::Table { name: n, .. } => {
            *n = name.clone();
            Ok(())
        }
        _ => Err(AtError::Internal("the statement's target is not a table".into())),
    };
    match statement {
        Statement::Insert(ins) => {
            ins.table = TableObject::TableName(name.clone());
            Ok(())
        }
        Statement::Update { table, .. } => relation(table),
        Statement::Delete(d) => match &mut d.from {
            FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => match f.first_mut() {
                Some(t) => relation(t),
                None => Err(AtError::Internal("DELETE without a table".into())),
            },
        },
        Statement::Query(q) => match q.body.as_mut() {
            SetExpr::Select(sel) => match sel.from.first_mut() {
                Some(t) => relation(t),
                None => Err(AtError::Internal("SELECT without a table".into())),
            },
            _ => Err(AtError::Internal("not a plain SELECT".into())),
        },
        _ => Err(AtError::Internal("only INSERT, UPDATE, DELETE and SELECT have a target".into())),
    }
}

fn ident(i: &Ident, dialect: SqlDialect) -> String {
    // PostgreSQL folds unquoted identifiers to lower case, ASCII letters
    // only (downcase_identifier in a multibyte encoding); MySQL keeps them.
    match (dialect, i.quote_style) {
        (SqlDialect::Postgres, None) => i.value.to_ascii_lowercase(),
        _ => i.value.clone(),
    }
}

fn last_ident(n: &ObjectName, dialect: SqlDialect) -> Result<String, AtError> {
    match n.0.last() {
        Some(ObjectNamePart::Identifier(i)) => Ok(ident(i, dialect)),
        _ => Err(refuse(format!("cannot read column name {n}"))),
    }
}

fn table_ref(n: &ObjectName, dialect: SqlDialect) -> Result<TableRef, AtError> {
    let parts =
        n.0.iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => Ok(ident(i, dialect)),
                ObjectNamePart::Function(_) => Err(refuse(format!("cannot read table name {n}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
    match parts.as_slice() {
        [name] => Ok(TableRef { schema: None, name: name.clone() }),
        [schema, name] => Ok(TableRef { schema: Some(schema.clone()), name: name.clone() }),
        _ => Err(refuse(format!("table name {n} must be table or schema.table"))),
    }
}

fn single_table(t: &TableWithJoins, dialect: SqlDialect) -> Result<(TableRef, Option<String>), AtError> {
    if !t.joins.is_empty() {
        return Err(refuse("statements over joined tables are not supported"));
    }
    match &t.relation {
        TableFactor::Table { name, alias, args: None, .. } => {
            if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
                return Err(refuse("table aliases with column lists are not supported"));
            }
            Ok((table_ref(name, dialect)?, alias.as_ref().map(|a| ident(&a.name, dialect))))
        }
        _ => Err(refuse("only plain tables are supported (no subqueries or table functions)")),
    }
}

/// Whether `e` is a value known before the statement runs: a literal or a
/// parameter (AT can find an inserted row again by such a key).
pub fn is_constant(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => !matches!(v.value, Value::Null),
        Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => is_constant(expr),
        Expr::Cast { expr, .. } => is_constant(expr),
        _ => false,
    }
}

/// The INSERT, UPDATE or DELETE with `RETURNING` extended by `extra`
/// (AT's image expressions and their aliases, last, so that the caller's
/// own columns keep their positions).
pub fn with_returning(
    statement: &Statement,
    extra: Vec<(String, String)>,
    dialect: SqlDialect,
) -> Result<Statement, AtError> {
    let mut s = statement.clone();
    let returning = match &mut s {
        Statement::Insert(ins) => &mut ins.returning,
        Statement::Update { returning, .. } => returning,
        Statement::Delete(d) => &mut d.returning,
        _ => return Err(AtError::Internal("RETURNING can only be added to INSERT, UPDATE or DELETE".into())),
    };
    let quote = match dialect {
        SqlDialect::Postgres => '"',
        SqlDialect::MySql => '`',
    };
    let items = returning.get_or_insert_with(Vec::new);
    for (expr_sql, alias) in extra {
        let expr = parse_expr(&expr_sql, dialect)?;
        items.push(SelectItem::ExprWithAlias { expr, alias: Ident::with_quote(quote, alias) });
    }
    Ok(s)
}

/// Parses an expression AT generated (numbered placeholders) in `dialect`.
pub fn parse_expr(sql: &str, dialect: SqlDialect) -> Result<Expr, AtError> {
    let d = dialect.parser_dialect();
    Parser::new(d.as_ref())
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| AtError::Internal(format!("generated expression {sql:?} does not parse: {e}")))
}

/// Turns SQL written with numbered parameters (`$n` on PostgreSQL, `?n` on
/// MySQL) into the driver's form, and says which parameter (0-based index
/// into the statement's parameter list) to bind at each position.
///
/// The one audited function for AT-generated SQL: every identifier in such
/// SQL has been quoted by [`SqlDialect::quote`] and every value is a
/// parameter; this function only rewrites placeholders, found by the
/// dialect's own tokenizer (never inside string literals or comments).
pub fn bind_plan(sql: &str, dialect: SqlDialect) -> Result<(String, Vec<usize>), AtError> {
    let d = dialect.parser_dialect();
    let tokens = Tokenizer::new(d.as_ref(), sql)
        .tokenize_with_location()
        .map_err(|e| AtError::Internal(format!("generated SQL does not tokenize: {e}")))?;
    let line_starts: Vec<usize> =
        std::iter::once(0).chain(sql.char_indices().filter(|(_, c)| *c == '\n').map(|(i, _)| i + 1)).collect();
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let col = usize::try_from(column).ok()?.checked_sub(1)?;
        sql[start..].char_indices().nth(col).map(|(i, _)| start + i)
    };
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::new();
    let mut seen: Vec<usize> = Vec::new();
    let mut copied = 0;
    for t in tokens {
        let Token::Placeholder(p) = &t.token else { continue };
        let n: usize = p[1..].parse().map_err(|_| AtError::Internal(format!("unnumbered placeholder {p:?}")))?;
        if n == 0 {
            return Err(AtError::Internal("placeholder 0".into()));
        }
        let at = offset(t.span.start.line, t.span.start.column)
            .ok_or_else(|| AtError::Internal("placeholder position out of range".into()))?;
        out.push_str(&sql[copied..at]);
        copied = at + p.len();
        match dialect {
            SqlDialect::MySql => {
                out.push('?');
                order.push(n - 1);
            }
            SqlDialect::Postgres => {
                let k = match seen.iter().position(|&s| s == n) {
                    Some(k) => k,
                    None => {
                        seen.push(n);
                        order.push(n - 1);
                        seen.len() - 1
                    }
                };
                out.push_str(&format!("${}", k + 1));
            }
        }
    }
    out.push_str(&sql[copied..]);
    Ok((out, order))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn update_with_alias_and_params() {
        let a = analyze("UPDATE Stock s SET qty = qty - $1 WHERE s.id = $2", SqlDialect::Postgres).unwrap();
        assert_eq!(a.table, TableRef { schema: None, name: "stock".into() });
        assert_eq!(a.alias.as_deref(), Some("s"));
        assert_eq!(a.change, Change::Update { columns: vec!["qty".into()] });
        assert_eq!(a.selection.unwrap().to_string(), "s.id = $2");
        assert_eq!(a.params, 2);
    }

    #[test]
    fn mysql_placeholders_are_numbered_in_text_order() {
        let a = analyze("UPDATE `inv`.`Stock` SET qty = ? WHERE id = ? AND sku = ?", SqlDialect::MySql).unwrap();
        assert_eq!(a.table, TableRef { schema: Some("inv".into()), name: "Stock".into() });
        assert_eq!(a.selection.unwrap().to_string(), "id = ?2 AND sku = ?3");
        assert_eq!(a.params, 3);
    }

    #[test]
    fn insert_rows_and_columns() {
        let a = analyze("INSERT INTO t (a, b) VALUES ($1, 'x'), ($2, 'y') RETURNING a", SqlDialect::Postgres).unwrap();
        let Change::Insert { columns, rows } = a.change else { panic!() };
        assert_eq!(columns, vec!["a", "b"]);
        assert_eq!(rows.len(), 2);
        assert!(a.returning);
        assert!(is_constant(&rows[0][0]) && is_constant(&rows[1][1]));
    }

    #[test]
    fn refusals_are_specific() {
        let cases = [
            ("CREATE TABLE t (id int)", "CREATE"),
            ("DROP TABLE t", "DROP"),
            ("UPDATE a SET x = 1 FROM b WHERE a.id = b.id", "FROM"),
            ("DELETE FROM a USING b WHERE a.id = b.id", "USING"),
            ("INSERT INTO t SELECT * FROM u", "INSERT ... SELECT"),
            ("INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING", "ON CONFLICT"),
            ("UPDATE t SET x = 1; DELETE FROM t", "exactly one statement"),
            ("SELECT * FROM t WHERE id = 1", "only SELECT ... FOR UPDATE"),
            ("UPDAT t SET x = 1", "cannot parse"),
        ];
        for (sql, expect) in cases {
            match analyze(sql, SqlDialect::Postgres) {
                Err(AtError::Unsupported(m)) => assert!(m.contains(expect), "{sql}: {m}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
        // MariaDB has DELETE ... RETURNING: whether the server does is decided when it runs.
        assert!(analyze("DELETE FROM t WHERE id = ? RETURNING id", SqlDialect::MySql).unwrap().returning);
    }

    #[test]
    fn literals_are_re_rendered_verbatim() {
        let sql = r"DELETE FROM t WHERE path = 'C:\\tmp\\' AND name = 'it''s' AND x = ?";
        let a = analyze(sql, SqlDialect::MySql).unwrap();
        assert_eq!(a.selection.unwrap().to_string(), r"path = 'C:\\tmp\\' AND name = 'it''s' AND x = ?1");
        let a = analyze(r"UPDATE t SET v = 1 WHERE s = 'a''b' AND e = E'x\\y'", SqlDialect::Postgres).unwrap();
        assert_eq!(a.selection.unwrap().to_string(), r"s = 'a''b' AND e = E'x\\y'");
    }

    #[test]
    fn bind_plan_renumbers_and_skips_literals() {
        let (sql, order) =
            bind_plan("SELECT '$9', \"a\" FROM t WHERE x = $4 AND y = $2 OR z = $4", SqlDialect::Postgres).unwrap();
        assert_eq!(sql, "SELECT '$9', \"a\" FROM t WHERE x = $1 AND y = $2 OR z = $1");
        assert_eq!(order, vec![3, 1]);
        let (sql, order) =
            bind_plan("SELECT '?1' FROM t\nWHERE x = ?3 AND y = ?1 AND z = ?3", SqlDialect::MySql).unwrap();
        assert_eq!(sql, "SELECT '?1' FROM t\nWHERE x = ? AND y = ? AND z = ?");
        assert_eq!(order, vec![2, 0, 2]);
    }
}
