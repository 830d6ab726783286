//! The rollback property on a schema with everything that used to go wrong:
//! a declared trigger, foreign keys with referential actions, partitions
//! and inheritance (PostgreSQL), a deferrable unique key, domain and array
//! columns, CHAR padding and TIMESTAMP zones (MariaDB). Phase 1 and the
//! rollback run in sessions whose settings are drawn at random per case.
//! Whatever the statements do, the tables must afterwards be exactly as
//! seeded: rolled back globally, or (when a statement failed) never committed.

use super::*;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use std::collections::BTreeSet;

/// Phase-1 settings (`SET LOCAL`, inside the branch's transaction).
const PG_WRITER: &[&str] = &[
    "SET LOCAL datestyle = 'ISO, MDY'; SET LOCAL timezone = 'UTC'",
    "SET LOCAL datestyle = 'SQL, DMY'; SET LOCAL intervalstyle = 'sql_standard'; SET LOCAL timezone = 'Asia/Kathmandu'; \
     SET LOCAL extra_float_digits = 0; SET LOCAL bytea_output = 'escape'",
    "SET LOCAL datestyle = 'German, DMY'; SET LOCAL intervalstyle = 'iso_8601'; SET LOCAL timezone = 'America/St_Johns'; \
     SET LOCAL extra_float_digits = -5",
    "SET LOCAL datestyle = 'Postgres, MDY'; SET LOCAL intervalstyle = 'postgres_verbose'; \
     SET LOCAL timezone = 'Pacific/Chatham'; SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'",
];

/// Rollback settings (`SET`, on the session that serves the callback).
const PG_ROLLBACK: &[&str] = &[
    "SET datestyle = 'ISO, YMD'; SET intervalstyle = 'postgres'; SET timezone = 'UTC'; SET extra_float_digits = 1; \
     SET bytea_output = 'hex'",
    "SET datestyle = 'SQL, MDY'; SET intervalstyle = 'postgres_verbose'; SET timezone = 'America/New_York'; \
     SET extra_float_digits = 0; SET bytea_output = 'escape'",
    "SET datestyle = 'German, DMY'; SET intervalstyle = 'sql_standard'; SET timezone = 'Asia/Tokyo'; \
     SET extra_float_digits = 2; SET bytea_output = 'hex'",
];

const MY_WRITER: &[&str] = &[
    "SET SESSION sql_mode = DEFAULT, SESSION time_zone = '+00:00'",
    "SET SESSION sql_mode = 'PAD_CHAR_TO_FULL_LENGTH', SESSION time_zone = '+09:00'",
    "SET SESSION sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES,STRICT_ALL_TABLES', SESSION time_zone = '-05:00'",
    "SET SESSION sql_mode = 'PAD_CHAR_TO_FULL_LENGTH,ALLOW_INVALID_DATES', SESSION time_zone = '+05:45'",
];

const MY_ROLLBACK: &[&str] = &[
    "SET SESSION sql_mode = DEFAULT, SESSION time_zone = '+00:00'",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,PAD_CHAR_TO_FULL_LENGTH', SESSION time_zone = '-03:30'",
    "SET SESSION sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES', SESSION time_zone = '+13:00'",
];

const PG_SCHEMA: &str = "CREATE DOMAIN amount AS numeric(12,2) CHECK (VALUE > -1000000); \
    CREATE DOMAIN day AS date; \
    CREATE TABLE acct (id int PRIMARY KEY, code text NOT NULL UNIQUE, \
        slot int NOT NULL, CONSTRAINT acct_slot UNIQUE (slot) DEFERRABLE INITIALLY IMMEDIATE, \
        bal amount, opened day, days day[], tags text[], f float8, iv interval, b bytea, version int NOT NULL DEFAULT 0); \
    CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
        IF current_setting('tandem.at_restore', true) IS DISTINCT FROM 'on' THEN NEW.version := OLD.version + 1; END IF; \
        RETURN NEW; END $$; \
    CREATE TRIGGER acct_bump BEFORE UPDATE ON acct FOR EACH ROW EXECUTE FUNCTION bump(); \
    CREATE TABLE line (id int PRIMARY KEY, acct int REFERENCES acct(id) ON DELETE CASCADE, \
        acode text REFERENCES acct(code) ON UPDATE CASCADE ON DELETE SET NULL, amt amount, at timestamptz); \
    CREATE TABLE ev (region text, id int, v int, d date, ts timestamp[], PRIMARY KEY (region, id)) PARTITION BY LIST (region); \
    CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu'); CREATE TABLE ev_us PARTITION OF ev FOR VALUES IN ('us'); \
    CREATE TABLE base (id int PRIMARY KEY, v int); \
    CREATE TABLE sub (extra text, PRIMARY KEY (id)) INHERITS (base)";

const MY_SCHEMA: &str = "CREATE TABLE acct (id int PRIMARY KEY, code varchar(12) NOT NULL UNIQUE, slot int NOT NULL, \
        bal decimal(12,2), opened date, c char(6), ts timestamp(6) NULL, f float, b blob, version int NOT NULL DEFAULT 0); \
    CREATE TRIGGER acct_bump BEFORE UPDATE ON acct FOR EACH ROW \
        SET NEW.version = IF(@tandem_at_restore IS NULL, OLD.version + 1, NEW.version); \
    CREATE TABLE line (id int PRIMARY KEY, acct int, acode varchar(12), amt decimal(12,2), \
        FOREIGN KEY (acct) REFERENCES acct(id) ON DELETE CASCADE, \
        FOREIGN KEY (acode) REFERENCES acct(code) ON UPDATE CASCADE ON DELETE SET NULL); \
    CREATE TABLE ai (id int AUTO_INCREMENT PRIMARY KEY, v int)";

/// Tables and columns compared before and after.
fn tables(pg: bool) -> Vec<(&'static str, &'static [&'static str], &'static str)> {
    if pg {
        vec![
            ("acct", &["id", "code", "slot", "bal", "opened", "days", "tags", "f", "iv", "b", "version"], "id"),
            ("line", &["id", "acct", "acode", "amt", "at"], "id"),
            ("ev", &["region", "id", "v", "d", "ts"], "region, id"),
            ("ONLY base", &["id", "v"], "id"),
            ("sub", &["id", "v", "extra"], "id"),
        ]
    } else {
        vec![
            ("acct", &["id", "code", "slot", "bal", "opened", "c", "ts", "f", "b", "version"], "id"),
            ("line", &["id", "acct", "acode", "amt"], "id"),
            ("ai", &["id", "v"], "id"),
        ]
    }
}

/// One statement of a case.
#[derive(Debug, Clone)]
enum Op {
    InsertAcct(i32, i32),
    UpdateAcct(i32, i32, usize, i32),
    RenameAcct(i32, i32, i32),
    SwapSlots(i32, i32),
    DeleteAcct(i32, i32),
    InsertLine(i32, i32, i32),
    UpdateLine(i32, i32, i32),
    DeleteLine(i32, i32),
    /// PostgreSQL: the partitioned table; MariaDB: AUTO_INCREMENT inserts.
    Ev(u8, i32, i32),
    /// PostgreSQL: `ONLY base` and `sub`.
    Inherit(u8, i32, i32),
}

fn op() -> impl Strategy<Value = Op> {
    let id = || 1..9i32;
    prop_oneof![
        (id(), 0..1000i32).prop_map(|(a, n)| Op::InsertAcct(a, n)),
        (id(), 0..4i32, 0..6usize, 0..1000i32).prop_map(|(a, w, c, n)| Op::UpdateAcct(a, a + w, c, n)),
        (id(), 0..3i32, 0..1000i32).prop_map(|(a, w, n)| Op::RenameAcct(a, a + w, n)),
        (id(), id()).prop_map(|(a, b)| Op::SwapSlots(a, b)),
        (id(), 0..3i32).prop_map(|(a, w)| Op::DeleteAcct(a, a + w)),
        (10..30i32, id(), 0..1000i32).prop_map(|(l, a, n)| Op::InsertLine(l, a, n)),
        (10..30i32, 0..6i32, 0..1000i32).prop_map(|(l, w, n)| Op::UpdateLine(l, l + w, n)),
        (10..30i32, 0..6i32).prop_map(|(l, w)| Op::DeleteLine(l, l + w)),
        (0..3u8, 0..6i32, 0..1000i32).prop_map(|(k, i, n)| Op::Ev(k, i, n)),
        (0..4u8, 0..6i32, 0..1000i32).prop_map(|(k, i, n)| Op::Inherit(k, i, n)),
    ]
}

/// A case: seeded accounts and lines, statements, and the sessions' settings.
type Case = (BTreeSet<i32>, Vec<(i32, i32)>, Vec<Op>, usize, usize);

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::btree_set(1..9i32, 0..6),
        proptest::collection::vec((10..30i32, 1..9i32), 0..6),
        proptest::collection::vec(op(), 1..8),
        0..4usize,
        0..3usize,
    )
}

/// Columns an UpdateAcct may set, and the expression for value `n`.
fn acct_set(pg: bool, column: usize) -> (&'static str, &'static str) {
    match (pg, column) {
        (true, 0) => ("bal", "CAST(CAST($1 AS int) AS numeric) / 7"),
        (true, 1) => ("opened", "opened + CAST($1 AS int)"),
        (true, 2) => ("days", "days || CAST(CAST('2024-04-05' AS date) + CAST($1 AS int) AS day)"),
        (true, 3) => ("f", "f * CAST($1 AS int) / 3"),
        (true, 4) => ("iv", "iv + CAST($1 AS int) * interval '1 minute 1.5 seconds'"),
        (true, _) => ("b", "b || int4send(CAST($1 AS int))"),
        (false, 0) => ("bal", "CAST(? AS SIGNED) / 7"),
        (false, 1) => ("opened", "opened + INTERVAL CAST(? AS SIGNED) DAY"),
        (false, 2) => ("c", "LEFT(CONCAT('x', CAST(? AS CHAR)), 4)"),
        (false, 3) => ("f", "f * CAST(? AS SIGNED) / 3"),
        (false, 4) => ("ts", "ts + INTERVAL CAST(? AS SIGNED) SECOND"),
        (false, _) => ("b", "CONCAT(b, UNHEX(HEX(CAST(? AS SIGNED))))"),
    }
}

async fn seed<D: Business>(d: &D, pg: bool, accts: &BTreeSet<i32>, lines: &[(i32, i32)]) {
    if pg {
        d.exec("DELETE FROM line; DELETE FROM acct; DELETE FROM ev; DELETE FROM base").await;
    } else {
        d.exec("DELETE FROM line; DELETE FROM acct; DELETE FROM ai").await;
    }
    let mut sql = String::new();
    for a in accts {
        if pg {
            sql.push_str(&format!(
                "INSERT INTO acct VALUES ({a}, 'c{a}', {a}, {a}.5, '2024-0{m}-0{m}', '{{2024-01-0{m}}}', '{{x,y}}', \
                 0.1 * {a}, '{a} days 01:02:03', '\\x0{a}', 0); ",
                m = a % 9 + 1
            ));
        } else {
            sql.push_str(&format!(
                "INSERT INTO acct VALUES ({a}, 'c{a}', {a}, {a}.5, '2024-0{m}-0{m}', 'ab', '2024-03-31 0{m}:30:00.25', \
                 0.1 * {a}, UNHEX('0{a}'), 0); ",
                m = a % 9 + 1
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (l, a) in lines {
        if accts.contains(a) && seen.insert(*l) {
            let at = if pg { ", '2024-03-05 12:34:56.5+02'" } else { "" };
            sql.push_str(&format!("INSERT INTO line VALUES ({l}, {a}, 'c{a}', {l}.25{at}); "));
        }
    }
    if pg {
        sql.push_str(
            "INSERT INTO ev VALUES ('eu', 1, 1, '2024-01-01', '{\"2024-01-01 10:00\"}'), ('us', 1, 2, '2024-02-02', NULL); \
             INSERT INTO base VALUES (1, 1); INSERT INTO sub VALUES (1, 10, 'x'), (2, 20, 'y'); ",
        );
    } else {
        sql.push_str("INSERT INTO ai VALUES (1, 1), (2, 2); ");
    }
    d.exec(&sql).await;
}

/// Keys a case has used, so that its inserts never collide with a key
/// (a collision would only poison the branch, which proves less).
#[derive(Default)]
struct Used {
    acct: BTreeSet<i32>,
    line: BTreeSet<i32>,
    ev: BTreeSet<i32>,
    base: BTreeSet<i32>,
}

/// Runs one op in the branch; returns whether it ran (a failure poisons the branch).
async fn run_op<D: Business>(
    t: &mut tandem_sdk::at::AtTransaction<D::B>,
    d: &D,
    pg: bool,
    op: &Op,
    used: &mut Used,
) -> bool
where
    i32: AtParam<<D::B as AtBackend>::Db>,
{
    let fresh = match op {
        Op::InsertAcct(a, _) => used.acct.insert(*a),
        Op::InsertLine(l, _, _) => used.line.insert(*l),
        Op::Ev(0, i, _) if pg => used.ev.insert(*i),
        Op::Inherit(3, i, _) => used.base.insert(*i),
        _ => true,
    };
    if !fresh {
        return true;
    }
    let r = match op {
        Op::InsertAcct(a, n) => {
            let sql = if pg {
                "INSERT INTO acct (id, code, slot, bal, opened, days, f, iv, b) VALUES ($1, 'c' || $1, $1 + 100, $2, \
                 '2024-04-05', '{2024-04-05}', 0.30000000000000004, '1 day', '\\x00')"
            } else {
                "INSERT INTO acct (id, code, slot, bal, opened, c, ts, f, b) VALUES (?, CONCAT('c', ?), ? + 100, ?, \
                 '2024-04-05', 'z', '2024-10-27 01:30:00', 0.1, UNHEX('00'))"
            };
            let q = t.sql(sql).bind(*a);
            if pg { q.bind(*n) } else { q.bind(*a).bind(*a).bind(*n) }.execute().await
        }
        Op::UpdateAcct(a, b, c, n) => {
            let (col, expr) = acct_set(pg, *c);
            t.sql(&d.q(&format!("UPDATE acct SET {col} = {} WHERE id BETWEEN ? AND ?", expr.replace("$1", "?"))))
                .bind(*n)
                .bind(*a)
                .bind(*b)
                .execute()
                .await
        }
        Op::RenameAcct(a, b, n) => {
            let sql = if pg {
                "UPDATE acct SET code = 'k' || id || '_' || $1 WHERE id BETWEEN $2 AND $3"
            } else {
                "UPDATE acct SET code = CONCAT('k', id, '_', ?) WHERE id BETWEEN ? AND ?"
            };
            t.sql(sql).bind(*n).bind(*a).bind(*b).execute().await
        }
        Op::SwapSlots(a, b) => {
            if !pg || a == b {
                return true; // MySQL checks unique keys row by row: no swaps there
            }
            t.sql(
                "UPDATE acct SET slot = CASE id WHEN $1 THEN (SELECT slot FROM acct WHERE id = $2) \
                                                ELSE (SELECT slot FROM acct WHERE id = $1) END \
                 WHERE id IN ($1, $2)",
            )
            .bind(*a)
            .bind(*b)
            .execute()
            .await
        }
        Op::DeleteAcct(a, b) => t.sql(&d.q("DELETE FROM acct WHERE id BETWEEN ? AND ?")).bind(*a).bind(*b).execute().await,
        Op::InsertLine(l, a, n) => {
            // The first account from `a` on, if any (NULL references nothing).
            let sql = if pg {
                "INSERT INTO line VALUES ($1, (SELECT min(id) FROM acct WHERE id >= $2), \
                 (SELECT code FROM acct WHERE id = (SELECT min(id) FROM acct WHERE id >= $2)), $3, now())"
            } else {
                "INSERT INTO line VALUES (?, (SELECT MIN(id) FROM acct WHERE id >= ?), \
                 (SELECT code FROM acct WHERE id = (SELECT MIN(id) FROM acct WHERE id >= ?)), ?)"
            };
            let q = t.sql(sql).bind(*l).bind(*a);
            if pg { q.bind(*n) } else { q.bind(*a).bind(*n) }.execute().await
        }
        Op::UpdateLine(l, m, n) => {
            t.sql(&d.q("UPDATE line SET amt = amt + ? WHERE id BETWEEN ? AND ?")).bind(*n).bind(*l).bind(*m).execute().await
        }
        Op::DeleteLine(l, m) => t.sql(&d.q("DELETE FROM line WHERE id BETWEEN ? AND ?")).bind(*l).bind(*m).execute().await,
        Op::Ev(k, i, n) => match (pg, k) {
            (true, 0) => {
                t.sql("INSERT INTO ev VALUES (CASE WHEN $1 % 2 = 0 THEN 'eu' ELSE 'us' END, $1 + 10, $2, '2024-05-06', '{}')")
                    .bind(*i)
                    .bind(*n)
                    .execute()
                    .await
            }
            (true, 1) => t.sql("UPDATE ev SET v = v + $1, ts = ts || now()::timestamp WHERE id <= $2").bind(*n).bind(*i).execute().await,
            (true, _) => t.sql("DELETE FROM ev_eu WHERE id <= $1").bind(*i).execute().await,
            (false, 0) => t.sql("INSERT INTO ai (v) VALUES (?), (?)").bind(*n).bind(*i).execute().await,
            (false, 1) => t.sql("INSERT INTO ai VALUES (0, ?)").bind(*n).execute().await,
            (false, _) => t.sql("DELETE FROM ai WHERE id <= ?").bind(*i).execute().await,
        },
        Op::Inherit(k, i, n) => {
            if !pg {
                return true;
            }
            match k {
                0 => t.sql("UPDATE ONLY base SET v = v + $1 WHERE id <= $2").bind(*n).bind(*i).execute().await,
                1 => t.sql("UPDATE sub SET v = $1, extra = extra || 'z' WHERE id <= $2").bind(*n).bind(*i).execute().await,
                2 => t.sql("DELETE FROM sub WHERE id = $1").bind(*i).execute().await,
                _ => t.sql("INSERT INTO base VALUES ($1 + 10, $2)").bind(*i).bind(*n).execute().await,
            }
        }
    };
    r.is_ok()
}

/// Counts of how cases ended, for the report and the floor check.
#[derive(Default, Debug)]
struct Outcomes {
    /// Cases whose branch registered and was rolled back globally.
    rolled_back: usize,
    /// Cases a statement failed in (nothing committed).
    poisoned: usize,
}

#[allow(clippy::too_many_arguments)]
async fn prop_case<D: SessionPool>(
    d: &D,
    c: &Coordinator,
    p: &Participant<D::B>,
    pg: bool,
    rollback_state: &Mutex<&'static str>,
    (accts, lines, ops, writer, rollbacker): &Case,
    outcomes: &Mutex<Outcomes>,
) -> Result<(), TestCaseError>
where
    i32: AtParam<<D::B as AtBackend>::Db>,
{
    seed(d, pg, accts, lines).await;
    let before: Vec<Vec<String>> = {
        let mut v = Vec::new();
        for (t, cols, order) in tables(pg) {
            v.push(d.snapshot(t, cols, order).await);
        }
        v
    };
    *rollback_state.lock().unwrap() = if pg { PG_ROLLBACK[*rollbacker] } else { MY_ROLLBACK[*rollbacker] };
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let setting = if pg { PG_WRITER[*writer] } else { MY_WRITER[*writer] };
    d.set_session(&mut t, setting).await;
    let mut used = Used { acct: accts.clone(), line: lines.iter().map(|l| l.0).collect(), ..Used::default() };
    let mut ran_all = true;
    for op in ops {
        ran_all &= run_op(&mut t, d, pg, op, &mut used).await;
    }
    let committed = t.commit().await;
    c.client().rollback(&xid, None).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    match committed {
        Ok(branch) => {
            prop_assert!(ran_all, "a branch committed although a statement failed");
            if branch.is_some() {
                let tx = eventually("the rollback ends", WAIT, || async {
                    let t = c.client().get(&xid).await.ok()?;
                    matches!(t.status, GlobalStatus::RolledBack | GlobalStatus::RollbackFailed).then_some(t)
                })
                .await;
                if tx.status != GlobalStatus::RolledBack {
                    eprintln!(
                        "case {ops:?} (writer {writer}, rollback {rollbacker}) ended {}: {:?}",
                        tx.status, tx.branches[0].last_error
                    );
                }
                prop_assert!(
                    tx.branches.iter().all(|b| b.status == BranchStatus::RolledBack),
                    "{:?}",
                    tx.branches.iter().map(|b| &b.last_error).collect::<Vec<_>>()
                );
            }
            outcomes.lock().unwrap().rolled_back += 1;
        }
        Err(AtError::Poisoned(_)) => outcomes.lock().unwrap().poisoned += 1,
        Err(e) => return Err(TestCaseError::fail(format!("commit: {e}"))),
    }
    let mut after = Vec::new();
    for (t, cols, order) in tables(pg) {
        after.push(d.snapshot(t, cols, order).await);
    }
    prop_assert_eq!(after, before);
    Ok(())
}

fn rich_property<D: SessionPool + 'static>(
    new: fn(&'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = D>>>,
    pg: bool,
) where
    i32: AtParam<<D::B as AtBackend>::Db>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let state: Arc<Mutex<&'static str>> = Arc::new(Mutex::new(""));
    let (d, c, p) = rt.block_on(async {
        let c = Coordinator::start(if pg { "at_rich" } else { "at_richm" }).await;
        let d = new("at_rich_b").await;
        d.exec(if pg { PG_SCHEMA } else { MY_SCHEMA }).await;
        let schema: String = if pg {
            "public".into()
        } else {
            sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)").fetch_one(&d.mysql_pool()).await.unwrap()
        };
        let p = participant_with::<D::B>(d.session_pool(state.clone()), &c.c.url, "rich", |b| {
            b.allow_trigger(&format!("{schema}.acct"), "acct_bump")
        })
        .await;
        (d, c, p)
    });
    let cases = std::env::var("TANDEM_AT_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let outcomes = Mutex::new(Outcomes::default());
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&case(), |case| rt.block_on(prop_case(&d, &c, &p, pg, &state, &case, &outcomes)));
    if let Err(e) = result {
        panic!("{e}");
    }
    let o = outcomes.into_inner().unwrap();
    eprintln!("{o:?}");
    assert!(o.rolled_back * 2 >= o.rolled_back + o.poisoned, "most cases must run every statement: {o:?}");
}

/// A pool for the participant whose sessions take the rollback settings of
/// the current case when acquired.
trait SessionPool: Business {
    fn session_pool(&self, state: Arc<Mutex<&'static str>>) -> sqlx::Pool<<Self::B as AtBackend>::Db>;
    /// Runs `settings` on the branch's connection.
    async fn set_session(&self, t: &mut tandem_sdk::at::AtTransaction<Self::B>, settings: &str);
    fn mysql_pool(&self) -> MySqlPool {
        unreachable!("MariaDB only")
    }
}

impl SessionPool for PgBusiness {
    fn session_pool(&self, state: Arc<Mutex<&'static str>>) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .before_acquire(move |conn, _| {
                let settings = *state.lock().unwrap();
                Box::pin(async move {
                    // Reset first: a writer's SET LOCAL ended with its transaction.
                    sqlx::Executor::execute(&mut *conn, "RESET ALL").await?;
                    if !settings.is_empty() {
                        sqlx::Executor::execute(&mut *conn, settings).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(self._db.url.parse().unwrap())
    }
    async fn set_session(&self, t: &mut tandem_sdk::at::AtTransaction<Pg>, settings: &str) {
        sqlx::Executor::execute(&mut *t.connection(), settings).await.unwrap();
    }
}

impl SessionPool for MariaBusiness {
    fn session_pool(&self, state: Arc<Mutex<&'static str>>) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(4)
            .before_acquire(move |conn, _| {
                let settings = *state.lock().unwrap();
                Box::pin(async move {
                    if !settings.is_empty() {
                        sqlx::Executor::execute(&mut *conn, settings).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(self._db.url.parse().unwrap())
    }
    fn mysql_pool(&self) -> MySqlPool {
        self.pool.clone()
    }
    async fn set_session(&self, t: &mut tandem_sdk::at::AtTransaction<MySqlDb>, settings: &str) {
        sqlx::Executor::execute(&mut *t.connection(), settings).await.unwrap();
    }
}

#[test]
fn random_statements_on_a_rich_schema_in_random_sessions_roll_back_exactly_on_postgres() {
    rich_property::<PgBusiness>(|tag| Box::pin(PgBusiness::new(tag)), true);
}

#[test]
fn random_statements_on_a_rich_schema_in_random_sessions_roll_back_exactly_on_mariadb() {
    rich_property::<MariaBusiness>(|tag| Box::pin(MariaBusiness::new(tag)), false);
}
