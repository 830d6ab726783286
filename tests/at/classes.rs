//! AT rollback exactness, class by class: each test is written from a class
//! of failure (session settings, rows an INSERT really stored, referential
//! actions, inheritance, triggers, lock keys, restore order, deferrable
//! constraints, array types, identifier rules, limits) and checks what can
//! be observed: the rows after the rollback, the branch's status and
//! `last_error`, the lock keys, and that refused statements changed nothing.

use super::*;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use tandem_sdk::wire::Transaction;

/// A PostgreSQL pool whose sessions run `settings` (`SET ...; SET ...`) first.
fn pg_session(url: &str, settings: &'static str) -> PgPool {
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    PgPoolOptions::new()
        .max_connections(4)
        .after_connect(move |conn, _| {
            Box::pin(async move { sqlx::Executor::execute(conn, settings).await.map(|_| ()) })
        })
        .connect_lazy_with(opts)
}

/// A MariaDB pool whose sessions run `settings` (one `SET a = x, b = y`) first.
fn maria_session(url: &str, settings: &'static str) -> MySqlPool {
    let opts: sqlx::mysql::MySqlConnectOptions = url.parse().unwrap();
    MySqlPoolOptions::new()
        .max_connections(4)
        .after_connect(move |conn, _| {
            Box::pin(async move { sqlx::Executor::execute(conn, settings).await.map(|_| ()) })
        })
        .connect_lazy_with(opts)
}

/// Runs `statements` (split on `;`) on one MariaDB session, after `setup`.
async fn maria_exec_in(d: &MariaBusiness, setup: &str, statements: &str) {
    let mut conn = d.pool.acquire().await.unwrap();
    sqlx::Executor::execute(&mut *conn, setup).await.unwrap();
    for s in statements.split(';').filter(|s| !s.trim().is_empty()) {
        sqlx::Executor::execute(&mut *conn, s).await.unwrap();
    }
    sqlx::Executor::execute(&mut *conn, "SET SESSION sql_mode = DEFAULT, SESSION time_zone = DEFAULT").await.unwrap();
}

/// The MariaDB database of `d`.
async fn maria_db_name(d: &MariaBusiness) -> String {
    sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)").fetch_one(&d.pool).await.unwrap()
}

/// Rolls `xid` back and waits until it ends, which must be as `status`.
async fn roll_back(c: &Coordinator, xid: &Xid, status: &str) -> Transaction {
    c.client().rollback(xid, None).await.unwrap();
    let tx = eventually("the rollback ends", WAIT, || async {
        let t = c.client().get(xid).await.ok()?;
        matches!(t.status, GlobalStatus::RolledBack | GlobalStatus::RollbackFailed).then_some(t)
    })
    .await;
    let errors: Vec<_> = tx.branches.iter().map(|b| &b.last_error).collect();
    assert_eq!(tx.status.as_str(), status, "{errors:?}");
    tx
}

/// The refusal message of `r`, which must be a refusal.
fn refusal<T: std::fmt::Debug>(r: Result<T, AtError>) -> String {
    match r {
        Err(AtError::Unsupported(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ----------------------------------------------------------- 1. settings

/// Phase 1 in one session, rollback in another, every setting that changes
/// text forms different between them; domains, arrays of dates and of a
/// domain, composites, ranges, floats, intervals, bytea.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_ignore_every_session_setting_on_postgres() {
    let c = Coordinator::start("at_c1").await;
    let d = PgBusiness::new("at_c1_p").await;
    d.exec(
        "CREATE DOMAIN dd AS date CHECK (VALUE > '1900-01-01'); \
         CREATE TYPE pair AS (n int, d date); \
         CREATE TABLE ev (id int PRIMARY KEY, d dd, ds date[], dds dd[], f float8, r real, iv interval, b bytea, \
                          tza timestamptz[], tsa timestamp[], p pair, span daterange, m numeric(12,4), note text); \
         INSERT INTO ev VALUES \
           (1, '2024-04-05', '{2024-04-05,2024-12-31}', '{2024-04-05}', 0.30000000000000004, 0.1, \
            '1 day 02:03:04.5', '\\x0102ff', '{\"2024-03-05 12:34:56.5+02\"}', '{\"2024-03-05 12:34:56.5\"}', \
            '(1,2024-04-05)', '[2024-04-05,2024-05-01)', 1.5, 'a'), \
           (2, '2024-01-02', '{2024-01-02}', '{2024-01-02}', 1e-7, 3.25, '-3 mons +2 days', '\\x00', \
            '{\"1999-12-31 23:59:59.999999+00\"}', '{\"2000-02-29 00:00:00\"}', '(2,2000-02-29)', 'empty', 0, 'b'), \
           (3, '2031-07-08', NULL, '{}', 'Infinity', -0.5, '00:00:00.000001', '\\x', '{}', NULL, NULL, \
            '(,2024-01-01)', -2.0001, 'c')",
    )
    .await;
    let cols = ["id", "d", "ds", "dds", "f", "r", "iv", "b", "tza", "tsa", "p", "span", "m", "note"];
    let original = d.snapshot("ev", &cols, "id").await;
    let writer_settings =
        "SET datestyle = 'SQL, DMY'; SET intervalstyle = 'sql_standard'; SET timezone = 'Asia/Tokyo'; \
                           SET extra_float_digits = 0; SET bytea_output = 'escape'";
    let rollback_settings = "SET datestyle = 'SQL, MDY'; SET intervalstyle = 'postgres_verbose'; \
                             SET timezone = 'America/New_York'; SET extra_float_digits = 1; SET bytea_output = 'hex'";
    let rollbacker =
        participant::<Pg>(pg_session(d.url(), rollback_settings), &c.c.url, "events", LockRetry::default()).await;
    let client = TandemClient::new(&c.c.url).unwrap();
    let writer =
        AtParticipant::<Pg>::builder(pg_session(d.url(), writer_settings), client, "events", &rollbacker.url).build();

    let xid = c.begin().await;
    let mut t = writer.begin(&xid).await.unwrap();
    // A statement that leaves the dates and floats alone must leave them exactly as they were.
    t.sql("UPDATE ev SET note = 'x' WHERE id = $1").bind(1i32).execute().await.unwrap();
    t.sql(
        "UPDATE ev SET d = d + 1, ds = ds || '2025-01-01'::date, f = f * 2, iv = iv * 2, b = b || '\\x00'::bytea, \
         tza = tza || now(), span = '[2024-01-01,2024-02-01)' WHERE id = $1",
    )
    .bind(2i32)
    .execute()
    .await
    .unwrap();
    t.sql("DELETE FROM ev WHERE id = $1").bind(3i32).execute().await.unwrap();
    t.sql("INSERT INTO ev (id, d, ds, f, tza) VALUES ($1, '2024-04-05', '{2024-04-05}', 0.1, '{\"2024-01-01 00:00+00\"}')")
        .bind(4i32)
        .execute()
        .await
        .unwrap();
    t.commit().await.unwrap().expect("branch");
    assert_ne!(d.snapshot("ev", &cols, "id").await, original);
    let tx = roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack, "{:?}", tx.branches[0].last_error);
    assert_eq!(d.snapshot("ev", &cols, "id").await, original);
}

/// MariaDB: phase 1 with `PAD_CHAR_TO_FULL_LENGTH`, invalid dates allowed
/// and one time zone; the rollback from a strict session in another zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_ignore_sql_mode_and_time_zone_on_mariadb() {
    let c = Coordinator::start("at_c1m").await;
    let d = MariaBusiness::new("at_c1_m").await;
    d.exec(
        "CREATE TABLE ev (id int PRIMARY KEY, c char(5), ts timestamp(6) NULL, dt datetime(6), d date, note varchar(10)); \
         CREATE TABLE z (id int AUTO_INCREMENT PRIMARY KEY, v int)",
    )
    .await;
    maria_exec_in(
        &d,
        "SET SESSION sql_mode = 'ALLOW_INVALID_DATES,NO_AUTO_VALUE_ON_ZERO', SESSION time_zone = '+00:00'",
        "INSERT INTO ev VALUES (1, 'ab', '2024-03-31 01:30:00.5', '2024-03-05 12:34:56.5', '2024-04-05', 'a'), \
                               (2, 'xyz', '2024-10-27 00:30:00', '2000-02-29 00:00:00', '2024-02-28', 'b'), \
                               (3, 'q', NULL, '1999-12-31 23:59:59.999999', '2024-02-30', 'c'); \
         INSERT INTO z VALUES (0, 0), (1, 1)",
    )
    .await;
    let cols = ["id", "c", "ts", "dt", "d", "note"];
    let original = (d.snapshot("ev", &cols, "id").await, d.snapshot("z", &["id", "v"], "id").await);
    let rollbacker = participant::<MySqlDb>(
        maria_session(
            d.url(),
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE', SESSION time_zone = '-05:00'",
        ),
        &c.c.url,
        "events",
        LockRetry::default(),
    )
    .await;
    let writer = AtParticipant::<MySqlDb>::builder(
        maria_session(
            d.url(),
            "SET SESSION sql_mode = 'PAD_CHAR_TO_FULL_LENGTH,ALLOW_INVALID_DATES,NO_AUTO_VALUE_ON_ZERO', SESSION time_zone = '+09:00'",
        ),
        TandemClient::new(&c.c.url).unwrap(),
        "events",
        &rollbacker.url,
    )
    .build();
    let xid = c.begin().await;
    let mut t = writer.begin(&xid).await.unwrap();
    t.sql("UPDATE ev SET note = 'x' WHERE id = ?").bind(1i32).execute().await.unwrap();
    t.sql("UPDATE ev SET ts = ts + INTERVAL 1 HOUR, c = 'new', d = '2024-02-29' WHERE id = ?")
        .bind(2i32)
        .execute()
        .await
        .unwrap();
    t.sql("DELETE FROM ev WHERE id = ?").bind(3i32).execute().await.unwrap();
    t.sql("DELETE FROM z WHERE id = ?").bind(0i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    let tx = roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack, "{:?}", tx.branches[0].last_error);
    let now = (d.snapshot("ev", &cols, "id").await, d.snapshot("z", &["id", "v"], "id").await);
    assert_eq!(now, original, "the invalid date and the key 0 came back as they were");
}

// ----------------------------------------------------- 2. inserted rows

/// MariaDB: the rows an INSERT stored, not the keys the statement wrote:
/// 0 and NULL into an AUTO_INCREMENT key, and a BEFORE INSERT trigger that
/// changes the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserted_rows_are_imaged_as_stored_on_mariadb() {
    let c = Coordinator::start("at_c2").await;
    let d = MariaBusiness::new("at_c2_m").await;
    d.exec(
        "CREATE TABLE ai (id int AUTO_INCREMENT PRIMARY KEY, v varchar(10)); \
         CREATE TABLE tk (id int PRIMARY KEY, v int); \
         CREATE TRIGGER tk_shift BEFORE INSERT ON tk FOR EACH ROW SET NEW.id = NEW.id + 100",
    )
    .await;
    maria_exec_in(&d, "SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'", "INSERT INTO ai VALUES (0, 'none')").await;
    let original = d.snapshot("ai", &["id", "v"], "id").await;
    let db = maria_db_name(&d).await;

    // Undeclared, the trigger refuses the statement before it runs.
    let p = participant::<MySqlDb>(d.pool(), &c.c.url, "shop", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let m = refusal(t.sql("INSERT INTO tk VALUES (?, ?)").bind(1i32).bind(1i32).execute().await);
    assert!(m.contains("trigger tk_shift (BEFORE INSERT)"), "{m}");
    drop(t);
    assert!(d.snapshot("tk", &["id"], "id").await.is_empty(), "nothing ran");

    let p =
        participant_with::<MySqlDb>(d.pool(), &c.c.url, "shop", |b| b.allow_trigger(&format!("{db}.tk"), "tk_shift"))
            .await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("INSERT INTO ai (id, v) VALUES (0, 'new')").execute().await.unwrap();
    t.sql("INSERT INTO ai (id, v) VALUES (?, ?)").bind(0i32).bind("param").execute().await.unwrap();
    t.sql("INSERT INTO ai VALUES (NULL, 'null')").execute().await.unwrap();
    t.sql("INSERT INTO tk VALUES (?, ?)").bind(1i32).bind(1i32).execute().await.unwrap();
    let keys: Vec<String> = t.lock_keys().map(str::to_owned).collect();
    assert_eq!(
        keys,
        [format!("{db}.ai:1"), format!("{db}.ai:2"), format!("{db}.ai:3"), format!("{db}.tk:101")],
        "the keys stored, not the ones written"
    );
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("ai", &["id", "v"], "id").await, ["0|none", "1|new", "2|param", "3|null"]);
    roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(d.snapshot("ai", &["id", "v"], "id").await, original, "row 0 kept, the new rows deleted");
    assert!(d.snapshot("tk", &["id"], "id").await.is_empty());
}

// ------------------------------------------------ 3. referential actions

const REFERENTIAL: &str = "CREATE TABLE parent (id int PRIMARY KEY, code varchar(5) NOT NULL UNIQUE, v int); \
     CREATE TABLE child_c (id int PRIMARY KEY, pid int REFERENCES parent(id) ON DELETE CASCADE, v int); \
     CREATE TABLE grand (id int PRIMARY KEY, cid int NOT NULL REFERENCES child_c(id) ON DELETE CASCADE); \
     CREATE TABLE child_n (id int PRIMARY KEY, pid int REFERENCES parent(id) ON DELETE SET NULL, v int); \
     CREATE TABLE child_u (id int PRIMARY KEY, pcode varchar(5) REFERENCES parent(code) ON UPDATE CASCADE); \
     INSERT INTO parent VALUES (1, 'A', 0), (2, 'B', 0); \
     INSERT INTO child_c VALUES (10, 1, 0), (11, 1, 0), (12, 2, 0); \
     INSERT INTO grand VALUES (100, 10), (101, 12); \
     INSERT INTO child_n VALUES (20, 1, 0), (21, 2, 0); \
     INSERT INTO child_u VALUES (30, 'B'), (31, 'B')";

async fn referential_snapshot<D: Business>(d: &D) -> Vec<Vec<String>> {
    vec![
        d.snapshot("parent", &["id", "code", "v"], "id").await,
        d.snapshot("child_c", &["id", "pid", "v"], "id").await,
        d.snapshot("grand", &["id", "cid"], "id").await,
        d.snapshot("child_n", &["id", "pid", "v"], "id").await,
        d.snapshot("child_u", &["id", "pcode"], "id").await,
    ]
}

/// ON DELETE CASCADE (two levels), ON DELETE SET NULL and ON UPDATE CASCADE:
/// the rows the database changed are imaged, locked and restored; a row
/// someone else made reference a row the rollback deletes is not touched.
async fn referential_actions_roll_back<D: Business>(d: &D, c: &Coordinator, schema: &str)
where
    i32: AtParam<<D::B as AtBackend>::Db>,
    &'static str: AtParam<<D::B as AtBackend>::Db>,
{
    d.exec(REFERENTIAL).await;
    let original = referential_snapshot(d).await;
    let quick = LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(100) };
    let p = participant::<D::B>(d.pool(), &c.c.url, "shop", quick).await;

    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    assert_eq!(t.sql(&d.q("DELETE FROM parent WHERE id = ?")).bind(1i32).execute().await.unwrap(), 1);
    let keys: Vec<String> = t.lock_keys().map(str::to_owned).collect();
    for k in ["parent:1", "child_c:10", "child_c:11", "grand:100", "child_n:20"] {
        assert!(keys.contains(&format!("{schema}.{k}")), "{k} locked: {keys:?}");
    }
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("child_c", &["id"], "id").await, ["12"], "cascaded");
    assert_eq!(d.snapshot("child_n", &["id", "pid"], "id").await, ["20|∅", "21|2"], "set null");

    // Another global transaction cannot write a row the cascade changed.
    let other = c.begin().await;
    let mut o = p.at.begin(&other).await.unwrap();
    o.sql(&d.q("UPDATE child_n SET v = ? WHERE id = ?")).bind(5i32).bind(20i32).execute().await.unwrap();
    assert!(matches!(o.commit().await, Err(AtError::LockConflict { .. })), "the SET NULL row is locked");

    roll_back(c, &xid, "rolled_back").await;
    assert_eq!(referential_snapshot(d).await, original, "parent, children and grandchild restored");

    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql(&d.q("UPDATE parent SET code = ? WHERE id = ?")).bind("Z").bind(2i32).execute().await.unwrap();
    assert!(t.lock_keys().any(|k| k == format!("{schema}.child_u:30")), "the ON UPDATE CASCADE rows are locked");
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("child_u", &["pcode"], "id").await, ["Z", "Z"]);
    roll_back(c, &xid, "rolled_back").await;
    assert_eq!(referential_snapshot(d).await, original);

    // A row the branch inserted, referenced since by a row written outside it.
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql(&d.q("INSERT INTO parent VALUES (?, 'C', 0)")).bind(3i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    d.exec("INSERT INTO child_c VALUES (13, 3, 0)").await;
    let tx = roll_back(c, &xid, "rollback_failed").await;
    let error = tx.branches[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("child_c") && error.contains("outside the branch"), "{error}");
    assert_eq!(d.snapshot("child_c", &["id"], "id").await, ["10", "11", "12", "13"], "no cascade ran");
    assert_eq!(d.snapshot("parent", &["id"], "id").await, ["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referential_actions_roll_back_on_postgres() {
    let c = Coordinator::start("at_c3").await;
    let d = PgBusiness::new("at_c3_p").await;
    referential_actions_roll_back(&d, &c, "public").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referential_actions_roll_back_on_mariadb() {
    let c = Coordinator::start("at_c3m").await;
    let d = MariaBusiness::new("at_c3_m").await;
    let db = maria_db_name(&d).await;
    referential_actions_roll_back(&d, &c, &db).await;
}

// --------------------------------------------------------- 4. inheritance

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_inheriting_tables_are_never_reached_on_postgres() {
    let c = Coordinator::start("at_c4").await;
    let d = PgBusiness::new("at_c4_p").await;
    d.exec(
        "CREATE TABLE vehicle (id int PRIMARY KEY, name text NOT NULL); \
         CREATE TABLE car (doors int NOT NULL, PRIMARY KEY (id)) INHERITS (vehicle); \
         INSERT INTO vehicle VALUES (1, 'bike'); INSERT INTO car VALUES (2, 'mini', 3)",
    )
    .await;
    let snap = || async {
        (
            d.snapshot("ONLY vehicle", &["id", "name"], "id").await,
            d.snapshot("car", &["id", "name", "doors"], "id").await,
        )
    };
    let original = snap().await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "fleet", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    for sql in [
        "DELETE FROM vehicle WHERE id = 2",
        "UPDATE vehicle SET name = 'x'",
        "SELECT * FROM vehicle WHERE id = 2 FOR UPDATE",
    ] {
        let m = refusal(t.sql(sql).execute().await);
        assert!(m.contains("inheriting tables (public.car)") && m.contains("ONLY"), "{sql}: {m}");
    }
    assert_eq!(snap().await, original, "refused before anything ran");
    assert_eq!(t.sql("DELETE FROM ONLY vehicle WHERE id = $1").bind(1i32).execute().await.unwrap(), 1);
    assert_eq!(t.sql("UPDATE ONLY vehicle SET name = 'none' WHERE id = $1").bind(2i32).execute().await.unwrap(), 0);
    t.sql("UPDATE car SET doors = 5, name = 'maxi' WHERE id = $1").bind(2i32).execute().await.unwrap();
    t.sql("INSERT INTO vehicle VALUES ($1, 'van')").bind(3i32).execute().await.unwrap();
    let rows = t.sql("SELECT name FROM ONLY vehicle WHERE id = $1 FOR UPDATE").bind(3i32).fetch_all().await.unwrap();
    assert_eq!(rows.len(), 1);
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("car", &["doors"], "id").await, ["5"]);
    roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(snap().await, original, "the car kept its doors; the bike is back in vehicle");
}

// ------------------------------------------------------------ 5. triggers

/// A BEFORE UPDATE trigger: refused until declared; declared and honouring
/// `tandem.at_restore`, rolled back exactly; declared but firing again on
/// the restore, caught by the read-back: `rollback_failed`, nothing restored.
async fn triggers_are_refused_declared_or_caught<D: Business>(d: &D, c: &Coordinator, ddl: &str, schema: &str)
where
    i32: AtParam<<D::B as AtBackend>::Db>,
{
    d.exec(ddl).await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "docs", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let m = refusal(t.sql(&d.q("UPDATE doc SET body = 'x' WHERE id = ?")).bind(1i32).execute().await);
    assert!(m.contains("trigger doc_bump (BEFORE UPDATE)") && m.contains("allow_trigger"), "{m}");
    drop(t);
    assert_eq!(d.snapshot("doc", &["body", "version"], "id").await, ["a|0"]);

    let p = participant_with::<D::B>(d.pool(), &c.c.url, "docs", |b| {
        b.allow_trigger(&format!("{schema}.doc"), "doc_bump").allow_trigger(&format!("{schema}.raw"), "raw_bump")
    })
    .await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql(&d.q("UPDATE doc SET body = 'x' WHERE id = ?")).bind(1i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("doc", &["body", "version"], "id").await, ["x|1"], "the trigger ran in phase 1");
    roll_back(c, &xid, "rolled_back").await;
    assert_eq!(d.snapshot("doc", &["body", "version"], "id").await, ["a|0"], "restored, the trigger skipped");

    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql(&d.q("UPDATE raw SET body = 'x' WHERE id = ?")).bind(1i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    let tx = roll_back(c, &xid, "rollback_failed").await;
    let error = tx.branches[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("restore mismatch") && error.contains("\"version\""), "{error}");
    assert_eq!(d.snapshot("raw", &["body", "version"], "id").await, ["x|1"], "the wrong restore was undone");
    assert_eq!(d.undo_rows(&xid).await.len(), 1, "the images stay for the operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_are_refused_declared_or_caught_on_postgres() {
    let c = Coordinator::start("at_c5").await;
    let d = PgBusiness::new("at_c5_p").await;
    let ddl = "CREATE TABLE doc (id int PRIMARY KEY, body text, version int NOT NULL DEFAULT 0); \
               CREATE TABLE raw (id int PRIMARY KEY, body text, version int NOT NULL DEFAULT 0); \
               CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF current_setting('tandem.at_restore', true) IS DISTINCT FROM 'on' THEN NEW.version := OLD.version + 1; END IF; \
                 RETURN NEW; END $$; \
               CREATE FUNCTION bump_always() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 NEW.version := OLD.version + 1; RETURN NEW; END $$; \
               CREATE TRIGGER doc_bump BEFORE UPDATE ON doc FOR EACH ROW EXECUTE FUNCTION bump(); \
               CREATE TRIGGER raw_bump BEFORE UPDATE ON raw FOR EACH ROW EXECUTE FUNCTION bump_always(); \
               INSERT INTO doc VALUES (1, 'a', 0); INSERT INTO raw VALUES (1, 'a', 0)";
    triggers_are_refused_declared_or_caught(&d, &c, ddl, "public").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_are_refused_declared_or_caught_on_mariadb() {
    let c = Coordinator::start("at_c5m").await;
    let d = MariaBusiness::new("at_c5_m").await;
    let db = maria_db_name(&d).await;
    let ddl = "CREATE TABLE doc (id int PRIMARY KEY, body text, version int NOT NULL DEFAULT 0); \
               CREATE TABLE raw (id int PRIMARY KEY, body text, version int NOT NULL DEFAULT 0); \
               CREATE TRIGGER doc_bump BEFORE UPDATE ON doc FOR EACH ROW \
                 SET NEW.version = IF(@tandem_at_restore IS NULL, OLD.version + 1, NEW.version); \
               CREATE TRIGGER raw_bump BEFORE UPDATE ON raw FOR EACH ROW SET NEW.version = OLD.version + 1; \
               INSERT INTO doc VALUES (1, 'a', 0); INSERT INTO raw VALUES (1, 'a', 0)";
    triggers_are_refused_declared_or_caught(&d, &c, ddl, &db).await;
}

// ----------------------------------------------------------- 6. lock keys

/// A bytea key has one lock key whatever the session's bytea_output: two
/// global transactions from differently set sessions conflict, and the
/// rollback from the other session finds no false dirty write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_keys_do_not_depend_on_the_session_on_postgres() {
    let c = Coordinator::start("at_c6").await;
    let d = PgBusiness::new("at_c6_p").await;
    d.exec("CREATE TABLE bk (k bytea PRIMARY KEY, v int); INSERT INTO bk VALUES ('\\x0102', 0)").await;
    let hex =
        participant::<Pg>(pg_session(d.url(), "SET bytea_output = 'hex'"), &c.c.url, "keys", LockRetry::default())
            .await;
    let escape = AtParticipant::<Pg>::builder(
        pg_session(d.url(), "SET bytea_output = 'escape'"),
        TandemClient::new(&c.c.url).unwrap(),
        "keys",
        &hex.url,
    )
    .lock_retry(LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(100) })
    .build();
    let a = c.begin().await;
    let mut t = escape.begin(&a).await.unwrap();
    t.sql("UPDATE bk SET v = 1 WHERE k = '\\x0102'").execute().await.unwrap();
    assert_eq!(t.lock_keys().collect::<Vec<_>>(), ["public.bk:0102"]);
    t.commit().await.unwrap().expect("branch a");
    let b = c.begin().await;
    let mut t = hex.at.begin(&b).await.unwrap();
    t.sql("UPDATE bk SET v = 2 WHERE k = '\\x0102'").execute().await.unwrap();
    match t.commit().await {
        Err(AtError::LockConflict { holder, .. }) => assert_eq!(holder.xid, a),
        other => panic!("the same row must conflict: {other:?}"),
    }
    roll_back(&c, &a, "rolled_back").await;
    assert_eq!(d.snapshot("bk", &["v"], "k").await, ["0"]);
}

/// MariaDB: a CHAR key read under `PAD_CHAR_TO_FULL_LENGTH` and a TIMESTAMP
/// key read in another time zone have the same lock keys as anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_keys_do_not_depend_on_the_session_on_mariadb() {
    let c = Coordinator::start("at_c6m").await;
    let d = MariaBusiness::new("at_c6_m").await;
    d.exec(
        "CREATE TABLE ck (k char(5) PRIMARY KEY, v int); INSERT INTO ck VALUES ('ab', 0); \
         CREATE TABLE tk (t timestamp(3) NOT NULL PRIMARY KEY, v int)",
    )
    .await;
    maria_exec_in(&d, "SET SESSION time_zone = '+00:00'", "INSERT INTO tk VALUES ('2024-03-05 12:00:00.250', 0)").await;
    let plain = participant::<MySqlDb>(
        maria_session(d.url(), "SET SESSION sql_mode = DEFAULT, SESSION time_zone = '+00:00'"),
        &c.c.url,
        "keys",
        LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(100) },
    )
    .await;
    let padded = AtParticipant::<MySqlDb>::builder(
        maria_session(d.url(), "SET SESSION sql_mode = 'PAD_CHAR_TO_FULL_LENGTH', SESSION time_zone = '+09:00'"),
        TandemClient::new(&c.c.url).unwrap(),
        "keys",
        &plain.url,
    )
    .build();
    let a = c.begin().await;
    let mut t = padded.begin(&a).await.unwrap();
    t.sql("UPDATE ck SET v = 1 WHERE k = 'ab'").execute().await.unwrap();
    t.sql("UPDATE tk SET v = 1").execute().await.unwrap();
    let keys: Vec<String> = t.lock_keys().map(str::to_owned).collect();
    t.commit().await.unwrap().expect("branch a");
    for sql in ["UPDATE ck SET v = 2 WHERE k = 'ab'", "UPDATE tk SET v = 2"] {
        let b = c.begin().await;
        let mut t = plain.at.begin(&b).await.unwrap();
        t.sql(sql).execute().await.unwrap();
        assert!(t.lock_keys().all(|k| keys.iter().any(|x| x == k)), "{keys:?}");
        match t.commit().await {
            Err(AtError::LockConflict { holder, .. }) => assert_eq!(holder.xid, a, "{sql}"),
            other => panic!("{sql}: the same row must conflict: {other:?}"),
        }
    }
    let tx = roll_back(&c, &a, "rolled_back").await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack, "{:?}", tx.branches[0].last_error);
    assert_eq!(d.snapshot("ck", &["k", "v"], "k").await, ["ab|0"]);
    assert_eq!(d.snapshot("tk", &["v"], "t").await, ["0"]);
}

/// Schema `a.b` with table `c`, schema `a` with table `b.c`: different rows,
/// different lock keys (they used to share `a.b.c:1`).
async fn dotted_names_do_not_share_lock_keys<D: Business>(d: &D, c: &Coordinator, first: &str, second: &str)
where
    i32: AtParam<<D::B as AtBackend>::Db>,
{
    let quick = LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(100) };
    let p = participant::<D::B>(d.pool(), &c.c.url, "dots", quick).await;
    let mut xids = Vec::new();
    let mut keys = Vec::new();
    for table in [first, second] {
        let xid = c.begin().await;
        let mut t = p.at.begin(&xid).await.unwrap();
        t.sql(&d.q(&format!("UPDATE {table} SET v = v + 1 WHERE id = ?"))).bind(1i32).execute().await.unwrap();
        keys.extend(t.lock_keys().map(str::to_owned));
        t.commit().await.expect("the other table's row is not locked").expect("branch");
        xids.push(xid);
    }
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1], "{keys:?}");
    for xid in &xids {
        roll_back(c, xid, "rolled_back").await;
    }
    assert_eq!(d.snapshot(first, &["v"], "id").await, ["0"]);
    assert_eq!(d.snapshot(second, &["v"], "id").await, ["0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotted_names_do_not_share_lock_keys_on_postgres() {
    let c = Coordinator::start("at_c7").await;
    let d = PgBusiness::new("at_c7_p").await;
    d.exec(
        "CREATE SCHEMA \"a.b\"; CREATE TABLE \"a.b\".c (id int PRIMARY KEY, v int); INSERT INTO \"a.b\".c VALUES (1, 0); \
         CREATE SCHEMA a; CREATE TABLE a.\"b.c\" (id int PRIMARY KEY, v int); INSERT INTO a.\"b.c\" VALUES (1, 0)",
    )
    .await;
    dotted_names_do_not_share_lock_keys(&d, &c, "\"a.b\".c", "a.\"b.c\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotted_names_do_not_share_lock_keys_on_mariadb() {
    let c = Coordinator::start("at_c7m").await;
    let d = MariaBusiness::new("at_c7_m").await;
    let db = maria_db_name(&d).await;
    // Database `<db>.b` with table `c`, and database `<db>` with table `b.c`.
    d.exec(&format!(
        "CREATE DATABASE `{db}.b`; CREATE TABLE `{db}.b`.c (id int PRIMARY KEY, v int); INSERT INTO `{db}.b`.c VALUES (1, 0); \
         CREATE TABLE `b.c` (id int PRIMARY KEY, v int); INSERT INTO `b.c` VALUES (1, 0)"
    ))
    .await;
    dotted_names_do_not_share_lock_keys(&d, &c, &format!("`{db}.b`.c"), &format!("`{db}`.`b.c`")).await;
    d.exec(&format!("DROP DATABASE `{db}.b`")).await;
}

// ------------------------------------------------------- 8. restore order

/// A self-referencing key: rows are restored in an order the key allows,
/// not in the text order of their keys ("10" < "2").
async fn self_references_restore_in_a_valid_order<D: Business>(d: &D, c: &Coordinator)
where
    i32: AtParam<<D::B as AtBackend>::Db>,
{
    d.exec(
        "CREATE TABLE node (id int PRIMARY KEY, parent int REFERENCES node(id), v varchar(5)); \
         INSERT INTO node VALUES (1, NULL, 'root')",
    )
    .await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "tree", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("INSERT INTO node VALUES (10, 1, 'p'), (2, 10, 'c')").execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    let tx = roll_back(c, &xid, "rolled_back").await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack, "{:?}", tx.branches[0].last_error);
    assert_eq!(d.snapshot("node", &["id"], "id").await, ["1"]);

    d.exec("INSERT INTO node VALUES (10, 1, 'p'); INSERT INTO node VALUES (2, 10, 'c'); INSERT INTO node VALUES (3, 2, 'g')")
        .await;
    let original = d.snapshot("node", &["id", "parent", "v"], "id").await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql(&d.q("DELETE FROM node WHERE id = ?")).bind(3i32).execute().await.unwrap();
    t.sql("DELETE FROM node WHERE id IN (2, 10)").execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    roll_back(c, &xid, "rolled_back").await;
    assert_eq!(d.snapshot("node", &["id", "parent", "v"], "id").await, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_references_restore_in_a_valid_order_on_postgres() {
    let c = Coordinator::start("at_c8").await;
    let d = PgBusiness::new("at_c8_p").await;
    self_references_restore_in_a_valid_order(&d, &c).await;
    // Two rows that reference each other can only come back together.
    d.exec("INSERT INTO node VALUES (20, NULL, 'x'), (21, 20, 'y'); UPDATE node SET parent = 21 WHERE id = 20").await;
    let original = d.snapshot("node", &["id", "parent", "v"], "id").await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "tree", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    assert_eq!(t.sql("DELETE FROM node WHERE id IN (20, 21)").execute().await.unwrap(), 2);
    t.commit().await.unwrap().expect("branch");
    let tx = roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack, "{:?}", tx.branches[0].last_error);
    assert_eq!(d.snapshot("node", &["id", "parent", "v"], "id").await, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_references_restore_in_a_valid_order_on_mariadb() {
    let c = Coordinator::start("at_c8m").await;
    let d = MariaBusiness::new("at_c8_m").await;
    self_references_restore_in_a_valid_order(&d, &c).await;
    // MySQL checks keys row by row: a cascade through a cycle could not be
    // inserted back, so it is refused before it runs.
    d.exec(
        "CREATE TABLE cyc (id int PRIMARY KEY, parent int, FOREIGN KEY (parent) REFERENCES cyc(id) ON DELETE CASCADE); \
         INSERT INTO cyc VALUES (20, NULL); INSERT INTO cyc VALUES (21, 20); UPDATE cyc SET parent = 21 WHERE id = 20",
    )
    .await;
    let p = participant::<MySqlDb>(d.pool(), &c.c.url, "tree", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let m = refusal(t.sql("DELETE FROM cyc WHERE id = ?").bind(20i32).execute().await);
    assert!(m.contains("cycle"), "{m}");
    drop(t);
    assert_eq!(d.snapshot("cyc", &["id"], "id").await, ["20", "21"], "nothing ran");
}

// -------------------------------------------- 9. deferrable constraints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_under_a_deferrable_unique_key_rolls_back_on_postgres() {
    let c = Coordinator::start("at_c9").await;
    let d = PgBusiness::new("at_c9_p").await;
    d.exec(
        "CREATE TABLE uqd (id int PRIMARY KEY, code text, CONSTRAINT uqd_code UNIQUE (code) DEFERRABLE INITIALLY IMMEDIATE); \
         INSERT INTO uqd VALUES (1, 'A'), (2, 'B'), (3, 'C')",
    )
    .await;
    let original = d.snapshot("uqd", &["id", "code"], "id").await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "codes", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let n = t.sql("UPDATE uqd SET code = CASE id WHEN 1 THEN 'B' WHEN 2 THEN 'C' ELSE 'A' END").execute().await;
    assert_eq!(n.unwrap(), 3);
    t.commit().await.unwrap().expect("branch");
    let tx = roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack, "{:?}", tx.branches[0].last_error);
    assert_eq!(d.snapshot("uqd", &["id", "code"], "id").await, original);
}

// --------------------------------------------------- 10. array columns

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_array_columns_roll_back_on_postgres() {
    let c = Coordinator::start("at_c10").await;
    let d = PgBusiness::new("at_c10_p").await;
    d.exec(
        "CREATE TABLE ta (id int PRIMARY KEY, a timestamp[], z timestamptz[], i interval[]); \
         INSERT INTO ta VALUES (1, '{\"2024-01-01 10:00\"}', '{\"2024-01-01 10:00+02\", infinity}', '{1 day}'), \
                               (2, NULL, '{}', NULL)",
    )
    .await;
    let cols = ["id", "a", "z", "i"];
    let original = d.snapshot("ta", &cols, "id").await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "arrays", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("UPDATE ta SET a = a || now()::timestamp, z = z || now() WHERE id = $1").bind(1i32).execute().await.unwrap();
    t.sql("DELETE FROM ta WHERE id = $1").bind(2i32).execute().await.unwrap();
    t.sql("INSERT INTO ta VALUES ($1, '{\"2030-05-06 07:08:09\"}', '{}', '{}')").bind(3i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(d.snapshot("ta", &cols, "id").await, original);
}

// ---------------------------------------------------- 11, 12. identifiers

/// MariaDB: columns match without regard to case; table names as the
/// server's `lower_case_table_names` says (here 0: `stock` and `Stock` are
/// two tables, each imaged as itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_match_as_mariadb_matches_them() {
    let c = Coordinator::start("at_c11").await;
    let d = MariaBusiness::new("at_c11_m").await;
    d.exec(
        "CREATE TABLE stock (id bigint PRIMARY KEY, qty int); INSERT INTO stock VALUES (1, 10); \
         CREATE TABLE Stock (ID bigint PRIMARY KEY, QTY int, extra int); INSERT INTO Stock VALUES (1, 5, 0)",
    )
    .await;
    let original =
        (d.snapshot("stock", &["id", "qty"], "id").await, d.snapshot("Stock", &["ID", "QTY", "extra"], "ID").await);
    let p = participant::<MySqlDb>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    assert_eq!(t.sql("UPDATE stock SET QTY = QTY + 1 WHERE ID = ?").bind(1i64).execute().await.unwrap(), 1);
    t.sql("INSERT INTO stock (Id, Qty) VALUES (?, ?)").bind(2i64).bind(1i32).execute().await.unwrap();
    t.sql("UPDATE Stock SET Extra = 1 WHERE id = ?").bind(1i64).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("Stock", &["extra"], "ID").await, ["1"]);
    roll_back(&c, &xid, "rolled_back").await;
    let now =
        (d.snapshot("stock", &["id", "qty"], "id").await, d.snapshot("Stock", &["ID", "QTY", "extra"], "ID").await);
    assert_eq!(now, original);
}

/// PostgreSQL folds only ASCII letters of unquoted names: `ÜBER` is "Über".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unquoted_names_fold_as_postgres_folds_them() {
    let c = Coordinator::start("at_c12").await;
    let d = PgBusiness::new("at_c12_p").await;
    d.exec("CREATE TABLE ÜBER (id int PRIMARY KEY, Wert int); INSERT INTO ÜBER VALUES (1, 1)").await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "umlaut", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    assert_eq!(t.sql("UPDATE ÜBER SET Wert = 2 WHERE ID = $1").bind(1i32).execute().await.unwrap(), 1);
    let m = refusal(t.sql("UPDATE \"über\" SET wert = 3").execute().await);
    assert!(m.contains("no table über"), "{m}");
    assert_eq!(t.lock_keys().collect::<Vec<_>>(), ["public.Über:1"]);
    t.commit().await.unwrap().expect("branch");
    roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(d.snapshot("\"Über\"", &["wert"], "id").await, ["1"]);
}

// ------------------------------------------------ 13. limits and messages

/// Limits are checked before a statement changes anything; refusals say
/// what the statement is; keys of any length work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_refusals_come_before_anything_runs_on_postgres() {
    let c = Coordinator::start("at_c13").await;
    let d = PgBusiness::new("at_c13_p").await;
    d.exec(
        "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL); INSERT INTO big SELECT g, 0 FROM generate_series(1, 10001) g; \
         CREATE TABLE long_key (k text PRIMARY KEY, v int); \
         CREATE TABLE dflt (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v int DEFAULT 7); \
         CREATE VIEW big_view AS SELECT * FROM big",
    )
    .await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "limits", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    for sql in ["UPDATE big SET v = v + 1", "DELETE FROM big", "UPDATE big AS b SET v = 1 WHERE b.id > 0"] {
        let m = refusal(t.sql(sql).execute().await);
        assert!(m.contains("limit of 10000 rows"), "{sql}: {m}");
    }
    let refused = [
        ("WITH x AS (SELECT 1) UPDATE big SET v = 1 WHERE id = 1", "WITH ... UPDATE"),
        ("WITH d AS (DELETE FROM big WHERE id = 1 RETURNING *) SELECT * FROM d", "data-modifying WITH clause (DELETE"),
        ("UPDATE big_view SET v = 1 WHERE id = 1", "public.big_view is a view"),
        ("DELETE FROM ONLY big_view WHERE id = 1", "is a view"),
    ];
    for (sql, expect) in refused {
        let m = refusal(t.sql(sql).execute().await);
        assert!(m.contains(expect), "{sql}: {m}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM big WHERE v <> 0").fetch_one(&d.pool).await.unwrap();
    assert_eq!(n, 0, "nothing changed");
    // A key far over 512 bytes gets a digested lock key, within the limit.
    let long = "k".repeat(2000);
    t.sql("INSERT INTO long_key VALUES ($1, 1)").bind(long.clone()).execute().await.unwrap();
    t.sql("INSERT INTO dflt DEFAULT VALUES").execute().await.unwrap();
    assert!(t.lock_keys().all(|k| k.len() <= 512), "{:?}", t.lock_keys().map(str::len).collect::<Vec<_>>());
    t.sql("UPDATE big SET v = 1 WHERE id <= $1").bind(3i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    roll_back(&c, &xid, "rolled_back").await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM big WHERE v <> 0").fetch_one(&d.pool).await.unwrap();
    assert_eq!(n, 0);
    assert!(d.snapshot("long_key", &["v"], "k").await.is_empty());
    assert!(d.snapshot("dflt", &["v"], "id").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_refusals_come_before_anything_runs_on_mariadb() {
    let c = Coordinator::start("at_c13m").await;
    let d = MariaBusiness::new("at_c13_m").await;
    d.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t VALUES (1,0),(2,0),(3,0),(4,0),(5,0),(6,0); \
         CREATE TABLE dflt (id int AUTO_INCREMENT PRIMARY KEY, v int DEFAULT 7); \
         CREATE VIEW tv AS SELECT * FROM t",
    )
    .await;
    let p = participant_with::<MySqlDb>(d.pool(), &c.c.url, "limits", |b| b.max_rows_per_branch(5)).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let m = refusal(t.sql("UPDATE t SET v = 1").execute().await);
    assert!(m.contains("limit of 5 rows"), "{m}");
    let m = refusal(t.sql("INSERT INTO t VALUES (7,0),(8,0),(9,0),(10,0),(11,0),(12,0)").execute().await);
    assert!(m.contains("limit of 5 rows"), "{m}");
    let m = refusal(t.sql("UPDATE tv SET v = 1 WHERE id = 1").execute().await);
    assert!(m.contains("is a view"), "{m}");
    assert_eq!(t.sql("UPDATE t SET v = 1 WHERE id <= 3").execute().await.unwrap(), 3);
    let m = refusal(t.sql("DELETE FROM t WHERE id > 3").execute().await);
    assert!(m.contains("limit of 5 rows"), "3 + 3 rows: {m}");
    t.sql("INSERT INTO dflt () VALUES ()").execute().await.unwrap();
    assert_eq!(t.sql("DELETE FROM t WHERE id >= 6 ORDER BY id DESC").execute().await.unwrap(), 1);
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("dflt", &["v"], "id").await, ["7"]);
    roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(d.snapshot("t", &["id", "v"], "id").await, ["1|0", "2|0", "3|0", "4|0", "5|0", "6|0"]);
    assert!(d.snapshot("dflt", &["v"], "id").await.is_empty());
}

// ------------------------------------------------- the coordinator's side

/// Lock rows keyed by an older coordinator (`resource^^^key`) are rekeyed by
/// the migration, and two (resource, key) pairs that shared a row no longer do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_rows_are_rekeyed_injectively_by_the_migration() {
    let c = Coordinator::start("at_rk").await;
    let pool = c._db.pool().await;
    let a = c.begin().await;
    let register = |resource: &str, key: &str| RegisterBranchRequest {
        resource: resource.into(),
        callback_url: "http://127.0.0.1:9/cb".into(),
        payload: None,
        lock_keys: Some(vec![key.into()]),
    };
    c.client().register(&a, &register("r^^^x", "k")).await.unwrap();
    let b = c.begin().await;
    c.client().register(&b, &register("r", "x^^^k")).await.expect("no longer the same lock row");
    // As an older coordinator left them.
    sqlx::query("UPDATE global_locks SET row_key = resource || '^^^' || lock_key WHERE xid = $1")
        .bind(a.as_str())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM global_locks WHERE xid = $1").bind(b.as_str()).execute(&pool).await.unwrap();
    let migration = tandem_coordinator::store::MIGRATOR
        .iter()
        .find(|m| m.description.contains("lock row keys"))
        .expect("the migration");
    sqlx::raw_sql(&migration.sql).execute(&pool).await.unwrap();
    let key: String = sqlx::query_scalar("SELECT row_key FROM global_locks WHERE xid = $1")
        .bind(a.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(key, "5:r^^^xk");
    let check = LockCheckRequest { resource: "r^^^x".into(), lock_keys: vec!["k".into()], xid: None };
    assert!(!c.client().check_locks(&check).await.unwrap().free, "the rekeyed lock still holds");
}

// ------------------------------------- findings of the review, by class

/// Class 1/6 of the scope: an unqualified table name is the table the
/// session resolves it to (a tenant's schema), not the one another session
/// saw first; the undo table is found wherever the session's path points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unqualified_names_resolve_in_the_sessions_search_path_on_postgres() {
    let c = Coordinator::start("at_sp").await;
    let d = PgBusiness::new("at_sp_p").await;
    d.exec(
        "CREATE SCHEMA tenant_a; CREATE TABLE tenant_a.orders (id int PRIMARY KEY, v int); INSERT INTO tenant_a.orders VALUES (1, 0); \
         CREATE SCHEMA tenant_b; CREATE TABLE tenant_b.orders (id int PRIMARY KEY, v int, note text); \
         INSERT INTO tenant_b.orders VALUES (1, 0, 'b')",
    )
    .await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "tenants", LockRetry::default()).await;
    let mut xids = Vec::new();
    for (tenant, v) in [("tenant_a", 1), ("tenant_b", 2)] {
        let xid = c.begin().await;
        let mut t = p.at.begin(&xid).await.unwrap();
        sqlx::Executor::execute(&mut *t.connection(), format!("SET LOCAL search_path = {tenant}").as_str())
            .await
            .unwrap();
        t.sql("UPDATE orders SET v = $1 WHERE id = 1").bind(v).execute().await.unwrap();
        assert_eq!(t.lock_keys().collect::<Vec<_>>(), [format!("{tenant}.orders:1")]);
        t.commit().await.unwrap().expect("branch");
        xids.push(xid);
    }
    assert_eq!(d.snapshot("tenant_a.orders", &["v"], "id").await, ["1"]);
    assert_eq!(d.snapshot("tenant_b.orders", &["v"], "id").await, ["2"], "tenant b's table, not a's");
    for xid in &xids {
        roll_back(&c, xid, "rolled_back").await;
    }
    assert_eq!(d.snapshot("tenant_a.orders", &["v"], "id").await, ["0"]);
    assert_eq!(d.snapshot("tenant_b.orders", &["v"], "id").await, ["0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unqualified_names_resolve_in_the_sessions_database_on_mariadb() {
    let c = Coordinator::start("at_spm").await;
    let d = MariaBusiness::new("at_sp_m").await;
    let db = maria_db_name(&d).await;
    d.exec(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, v int); INSERT INTO orders VALUES (1, 0); \
         CREATE DATABASE `{db}_b`; CREATE TABLE `{db}_b`.orders (id int PRIMARY KEY, v int, note text); \
         INSERT INTO `{db}_b`.orders VALUES (1, 0, 'b')"
    ))
    .await;
    // One connection: the second transaction reuses the session (and the
    // prepared statements) of the first, which is what a USE must survive.
    let pool = MySqlPoolOptions::new().max_connections(1).connect(d.url()).await.unwrap();
    let p = participant::<MySqlDb>(pool, &c.c.url, "tenants", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("UPDATE orders SET v = 1 WHERE id = 1").execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    let other = c.begin().await;
    let mut t = p.at.begin(&other).await.unwrap();
    sqlx::raw_sql(&format!("USE `{db}_b`")).execute(&mut *t.connection()).await.unwrap();
    let now = sqlx::raw_sql("SELECT CAST(DATABASE() AS CHAR)").fetch_one(&mut *t.connection()).await.unwrap();
    assert_eq!(sqlx::Row::get::<String, _>(&now, 0), format!("{db}_b"));
    t.sql("UPDATE orders SET v = 2 WHERE id = 1").execute().await.unwrap();
    assert_eq!(t.lock_keys().collect::<Vec<_>>(), [format!("{db}_b.orders:1")]);
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot(&format!("`{db}_b`.orders"), &["v"], "id").await, ["2"]);
    for xid in [&xid, &other] {
        roll_back(&c, xid, "rolled_back").await;
    }
    assert_eq!(d.snapshot("orders", &["v"], "id").await, ["0"]);
    assert_eq!(d.snapshot(&format!("`{db}_b`.orders"), &["v"], "id").await, ["0"]);
    d.exec(&format!("DROP DATABASE `{db}_b`")).await;
}

/// Class 3, the harder shapes: a key referencing a partition (refused), a
/// referenced column a declared trigger changes, one row reached by two
/// keys, an action that would change a child's primary key (refused), a
/// self-referencing ON UPDATE CASCADE, a deferrable cascading key, rows of
/// two tables that reference each other, and a referencing table with
/// row-level security (refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harder_referential_shapes_on_postgres() {
    let c = Coordinator::start("at_c3x").await;
    let d = PgBusiness::new("at_c3x_p").await;
    d.exec(
        "CREATE TABLE root (id int PRIMARY KEY, v int) PARTITION BY RANGE (id); \
         CREATE TABLE root_lo PARTITION OF root FOR VALUES FROM (0) TO (100); \
         CREATE TABLE root_hi PARTITION OF root FOR VALUES FROM (100) TO (200); \
         CREATE TABLE to_part (id int PRIMARY KEY, rid int REFERENCES root_lo(id) ON DELETE CASCADE); \
         INSERT INTO root VALUES (1, 0), (150, 0); INSERT INTO to_part VALUES (1, 1); \
         CREATE TABLE up (id int PRIMARY KEY, code text NOT NULL UNIQUE, note text); \
         CREATE FUNCTION upcase() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF current_setting('tandem.at_restore', true) IS DISTINCT FROM 'on' THEN NEW.code := upper(NEW.code) || NEW.note; END IF; \
           RETURN NEW; END $$; \
         CREATE TRIGGER up_case BEFORE UPDATE ON up FOR EACH ROW EXECUTE FUNCTION upcase(); \
         CREATE TABLE up_child (id int PRIMARY KEY, ucode text REFERENCES up(code) ON UPDATE CASCADE); \
         INSERT INTO up VALUES (1, 'a', ''); INSERT INTO up_child VALUES (10, 'a'); \
         CREATE TABLE p2 (id int PRIMARY KEY); \
         CREATE TABLE c2 (id int PRIMARY KEY, a int REFERENCES p2(id) ON DELETE SET NULL, \
                          b int UNIQUE REFERENCES p2(id) ON DELETE SET NULL); \
         CREATE TABLE g2 (id int PRIMARY KEY, cb int REFERENCES c2(b) ON UPDATE CASCADE); \
         INSERT INTO p2 VALUES (1); INSERT INTO c2 VALUES (5, 1, 1); INSERT INTO g2 VALUES (50, 1); \
         CREATE TABLE kp (code text PRIMARY KEY); CREATE TABLE kc (code text REFERENCES kp(code) ON UPDATE CASCADE, n int, \
                          PRIMARY KEY (code, n)); INSERT INTO kp VALUES ('x'); INSERT INTO kc VALUES ('x', 1); \
         CREATE TABLE sn (id int PRIMARY KEY, code text UNIQUE, pcode text REFERENCES sn(code) ON UPDATE CASCADE); \
         INSERT INTO sn VALUES (1, 'a', NULL); INSERT INTO sn VALUES (2, 'b', 'a'); \
         CREATE TABLE dp (id int PRIMARY KEY); \
         CREATE TABLE dc (id int PRIMARY KEY, pid int REFERENCES dp(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED); \
         CREATE TABLE ca (id int PRIMARY KEY, bid int); CREATE TABLE cb (id int PRIMARY KEY, aid int REFERENCES ca(id) ON DELETE CASCADE); \
         ALTER TABLE ca ADD FOREIGN KEY (bid) REFERENCES cb(id) ON DELETE CASCADE; \
         INSERT INTO ca VALUES (1, NULL); INSERT INTO cb VALUES (1, 1); UPDATE ca SET bid = 1 WHERE id = 1; \
         CREATE TABLE rp (id int PRIMARY KEY); CREATE TABLE rc (id int PRIMARY KEY, pid int REFERENCES rp(id) ON DELETE CASCADE); \
         ALTER TABLE rc ENABLE ROW LEVEL SECURITY",
    )
    .await;
    let snap = || async {
        let mut v = Vec::new();
        for (t, c) in [
            ("root", &["id", "v"][..]),
            ("to_part", &["id", "rid"]),
            ("up", &["id", "code", "note"]),
            ("up_child", &["id", "ucode"]),
            ("c2", &["id", "a", "b"]),
            ("g2", &["id", "cb"]),
            ("kc", &["code", "n"]),
            ("sn", &["id", "code", "pcode"]),
            ("dp", &["id"]),
            ("dc", &["id", "pid"]),
            ("ca", &["id", "bid"]),
            ("cb", &["id", "aid"]),
        ] {
            v.push(d.snapshot(t, c, "1").await);
        }
        v
    };
    let original = snap().await;
    let p = participant_with::<Pg>(d.pool(), &c.c.url, "shapes", |b| b.allow_trigger("public.up", "up_case")).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let m = refusal(t.sql("DELETE FROM root WHERE id = $1").bind(1i32).execute().await);
    assert!(m.contains("partition public.root_lo"), "{m}");
    let m = refusal(t.sql("UPDATE kp SET code = 'y'").execute().await);
    assert!(m.contains("UPDATE of primary-key") || m.contains("primary-key column code of public.kc"), "{m}");
    let m = refusal(t.sql("DELETE FROM rp WHERE id = $1").bind(1i32).execute().await);
    assert!(m.contains("row-level security"), "{m}");
    assert_eq!(snap().await, original, "refusals ran nothing");
    // The trigger changes `code` although the statement only sets `note`.
    t.sql("UPDATE up SET note = 'z' WHERE id = $1").bind(1i32).execute().await.unwrap();
    assert!(t.lock_keys().any(|k| k == "public.up_child:10"), "the cascaded child is locked");
    // c2 row 5 is reached through `a` and through `b`; g2 follows `b`.
    t.sql("DELETE FROM p2 WHERE id = $1").bind(1i32).execute().await.unwrap();
    assert!(t.lock_keys().any(|k| k == "public.g2:50"), "{:?}", t.lock_keys().collect::<Vec<_>>());
    t.sql("UPDATE sn SET code = code || 'x' WHERE id IN (1, 2)").execute().await.unwrap();
    t.sql("INSERT INTO dc VALUES (1, 10)").execute().await.unwrap();
    t.sql("INSERT INTO dp VALUES (10)").execute().await.unwrap();
    t.sql("DELETE FROM ca WHERE id = $1").bind(1i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("up_child", &["ucode"], "id").await, ["Az"]);
    assert_eq!(d.snapshot("g2", &["cb"], "id").await, ["∅"]);
    assert_eq!(d.snapshot("sn", &["code", "pcode"], "id").await, ["ax|∅", "bx|ax"]);
    assert!(d.snapshot("cb", &["id"], "id").await.is_empty(), "the cycle cascaded");
    let tx = roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack, "{:?}", tx.branches[0].last_error);
    assert_eq!(snap().await, original);
}

/// MariaDB: rows of two tables that reference each other through cascades
/// could not be inserted back one at a time: refused; one row reached by two
/// keys is followed for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harder_referential_shapes_on_mariadb() {
    let c = Coordinator::start("at_c3xm").await;
    let d = MariaBusiness::new("at_c3x_m").await;
    d.exec(
        "CREATE TABLE ca (id int PRIMARY KEY, bid int); CREATE TABLE cb (id int PRIMARY KEY, aid int, \
                          FOREIGN KEY (aid) REFERENCES ca(id) ON DELETE CASCADE); \
         ALTER TABLE ca ADD FOREIGN KEY (bid) REFERENCES cb(id) ON DELETE CASCADE; \
         INSERT INTO ca VALUES (1, NULL); INSERT INTO cb VALUES (1, 1); UPDATE ca SET bid = 1 WHERE id = 1; \
         CREATE TABLE p2 (id int PRIMARY KEY); \
         CREATE TABLE c2 (id int PRIMARY KEY, a int, b int UNIQUE, FOREIGN KEY (a) REFERENCES p2(id) ON DELETE SET NULL, \
                          FOREIGN KEY (b) REFERENCES p2(id) ON DELETE SET NULL); \
         CREATE TABLE g2 (id int PRIMARY KEY, cb int, FOREIGN KEY (cb) REFERENCES c2(b) ON UPDATE CASCADE); \
         INSERT INTO p2 VALUES (1); INSERT INTO c2 VALUES (5, 1, 1); INSERT INTO g2 VALUES (50, 1)",
    )
    .await;
    let p = participant::<MySqlDb>(d.pool(), &c.c.url, "shapes", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let m = refusal(t.sql("DELETE FROM ca WHERE id = ?").bind(1i32).execute().await);
    assert!(m.contains("cycle"), "{m}");
    assert_eq!(d.snapshot("cb", &["id"], "id").await, ["1"], "nothing ran");
    t.sql("DELETE FROM p2 WHERE id = ?").bind(1i32).execute().await.unwrap();
    let db = maria_db_name(&d).await;
    assert!(t.lock_keys().any(|k| k == format!("{db}.g2:50")), "{:?}", t.lock_keys().collect::<Vec<_>>());
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("g2", &["cb"], "id").await, ["∅"]);
    roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(d.snapshot("c2", &["id", "a", "b"], "id").await, ["5|1|1"]);
    assert_eq!(d.snapshot("g2", &["id", "cb"], "id").await, ["50|1"]);
}

/// Class 5's safety net, for what runs at commit: a deferred constraint
/// trigger that changes a restored row is run before the read-back, which
/// catches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_constraint_trigger_is_caught_by_the_read_back_on_postgres() {
    let c = Coordinator::start("at_ct").await;
    let d = PgBusiness::new("at_ct_p").await;
    d.exec(
        "CREATE TABLE doc (id int PRIMARY KEY, body text, touched int NOT NULL DEFAULT 0); \
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.body IS DISTINCT FROM OLD.body AND current_setting('tandem.at_restore', true) = 'on' THEN \
             UPDATE doc SET touched = touched + 1 WHERE id = NEW.id; END IF; \
           RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER doc_touch AFTER UPDATE ON doc DEFERRABLE INITIALLY DEFERRED \
           FOR EACH ROW EXECUTE FUNCTION touch(); \
         INSERT INTO doc VALUES (1, 'a', 0)",
    )
    .await;
    let p = participant_with::<Pg>(d.pool(), &c.c.url, "docs", |b| b.allow_trigger("public.doc", "doc_touch")).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("UPDATE doc SET body = 'x' WHERE id = $1").bind(1i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("doc", &["body", "touched"], "id").await, ["x|0"]);
    let tx = roll_back(&c, &xid, "rollback_failed").await;
    let error = tx.branches[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("restore mismatch") && error.contains("touched"), "{error}");
    assert_eq!(d.snapshot("doc", &["body", "touched"], "id").await, ["x|0"], "nothing restored");
}

/// Lock keys follow the key's own equality: `1.0` and `1.00` are one
/// numeric key, `1 day` and `24 hours` one interval, 'bob' and 'Bob ' one
/// key under MariaDB's default collation; a case-insensitive key type is
/// refused where it cannot be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_keys_share_a_lock_key_on_postgres() {
    let c = Coordinator::start("at_eq").await;
    let d = PgBusiness::new("at_eq_p").await;
    d.exec(
        "CREATE TABLE nk (k numeric PRIMARY KEY, v int); INSERT INTO nk VALUES (1.0, 0); \
         CREATE TABLE ik (k interval PRIMARY KEY, v int); INSERT INTO ik VALUES ('1 day', 0); \
         CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
         CREATE TABLE ck (k text COLLATE ci PRIMARY KEY, v int)",
    )
    .await;
    let quick = LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(100) };
    let p = participant::<Pg>(d.pool(), &c.c.url, "eq", quick).await;
    let a = c.begin().await;
    let mut t = p.at.begin(&a).await.unwrap();
    t.sql("DELETE FROM nk").execute().await.unwrap();
    t.sql("DELETE FROM ik").execute().await.unwrap();
    t.commit().await.unwrap().expect("branch a");
    for sql in ["INSERT INTO nk VALUES (1.00, 1)", "INSERT INTO ik VALUES ('24 hours', 1)"] {
        let b = c.begin().await;
        let mut t = p.at.begin(&b).await.unwrap();
        t.sql(sql).execute().await.unwrap();
        assert!(matches!(t.commit().await, Err(AtError::LockConflict { .. })), "{sql}: the same key is locked");
    }
    let m = refusal(p.at.begin(&a).await.unwrap().sql("INSERT INTO ck VALUES ('x', 1)").execute().await);
    assert!(m.contains("nondeterministic collation"), "{m}");
    roll_back(&c, &a, "rolled_back").await;
    assert_eq!(d.snapshot("nk", &["k", "v"], "k").await, ["1.0|0"]);
    assert_eq!(d.snapshot("ik", &["k", "v"], "k").await, ["1 day|0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_keys_share_a_lock_key_on_mariadb() {
    let c = Coordinator::start("at_eqm").await;
    let d = MariaBusiness::new("at_eq_m").await;
    d.exec(
        "CREATE TABLE users (name varchar(20) PRIMARY KEY, v int); INSERT INTO users VALUES ('bob', 0); \
         CREATE TABLE g (id int PRIMARY KEY, p point, gg geometry); \
         INSERT INTO g VALUES (1, ST_GeomFromText('POINT(1 2)', 4326), ST_GeomFromText('LINESTRING(0 0,1 1)'))",
    )
    .await;
    let quick = LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(100) };
    let p = participant::<MySqlDb>(d.pool(), &c.c.url, "eq", quick).await;
    let a = c.begin().await;
    let mut t = p.at.begin(&a).await.unwrap();
    t.sql("DELETE FROM users WHERE name = 'bob'").execute().await.unwrap();
    // Spatial values are imaged exactly too.
    t.sql("UPDATE g SET p = ST_GeomFromText('POINT(3 4)', 4326), gg = NULL WHERE id = 1").execute().await.unwrap();
    t.commit().await.unwrap().expect("branch a");
    let b = c.begin().await;
    let mut t = p.at.begin(&b).await.unwrap();
    t.sql("INSERT INTO users VALUES ('Bob ', 1)").execute().await.unwrap();
    assert!(matches!(t.commit().await, Err(AtError::LockConflict { .. })), "'Bob ' is 'bob' to the key");
    roll_back(&c, &a, "rolled_back").await;
    assert_eq!(d.snapshot("users", &["name", "v"], "name").await, ["bob|0"]);
    let g = d
        .snapshot(
            "(SELECT id, ST_AsText(p) AS p, ST_SRID(p) AS s, ST_AsText(gg) AS gg FROM g) x",
            &["p", "s", "gg"],
            "id",
        )
        .await;
    assert_eq!(g, ["POINT(1 2)|4326|LINESTRING(0 0,1 1)"]);
}

/// A column whose type changed since phase 1 (here only its length) is not
/// restored by guess: the branch ends `rollback_failed`, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_changed_since_phase_one_is_reported_on_postgres() {
    let c = Coordinator::start("at_ty").await;
    let d = PgBusiness::new("at_ty_p").await;
    d.exec("CREATE TABLE t (id int PRIMARY KEY, v varchar(10)); INSERT INTO t VALUES (1, 'abcdefgh')").await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "types", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("UPDATE t SET v = 'x' WHERE id = $1").bind(1i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    d.exec("ALTER TABLE t ALTER COLUMN v TYPE varchar(5)").await;
    let tx = roll_back(&c, &xid, "rollback_failed").await;
    let error = tx.branches[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("changed type"), "{error}");
    assert_eq!(d.snapshot("t", &["v"], "id").await, ["x"]);
}

// ------------------------------------ findings of the second review

/// MariaDB string keys of the default (case-insensitive) collation: a
/// foreign key still orders the restore and reveals cycles; a `_bin`
/// collation still ignores trailing spaces; a key on a prefix is refused; a
/// collation changed since phase 1 is reported, not guessed at; an UPDATE of
/// rows that reference each other is no cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_keys_of_any_collation_on_mariadb() {
    let c = Coordinator::start("at_sk").await;
    let d = MariaBusiness::new("at_sk_m").await;
    d.exec(
        "CREATE TABLE parent (k varchar(10) PRIMARY KEY); \
         CREATE TABLE child (id int PRIMARY KEY, ref varchar(10), v int, FOREIGN KEY (ref) REFERENCES parent(k)); \
         INSERT INTO parent VALUES ('a'), ('b'); INSERT INTO child VALUES (1, 'a', 0); \
         CREATE TABLE node (k varchar(10) PRIMARY KEY, parent varchar(10), FOREIGN KEY (parent) REFERENCES node(k) ON DELETE CASCADE); \
         INSERT INTO node VALUES ('a', NULL); INSERT INTO node VALUES ('b', 'a'); UPDATE node SET parent = 'b' WHERE k = 'a'; \
         CREATE TABLE ring (id int PRIMARY KEY, next int, v varchar(5), FOREIGN KEY (next) REFERENCES ring(id)); \
         INSERT INTO ring VALUES (1, NULL, ''); INSERT INTO ring VALUES (2, 1, ''); UPDATE ring SET next = 2 WHERE id = 1; \
         CREATE TABLE bin (k varchar(10) COLLATE utf8mb4_bin PRIMARY KEY); INSERT INTO bin VALUES ('a'); \
         CREATE TABLE pre (k varchar(40), PRIMARY KEY (k(4))); \
         CREATE TABLE users (name varchar(20) PRIMARY KEY)",
    )
    .await;
    let quick = LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(100) };
    let p = participant::<MySqlDb>(d.pool(), &c.c.url, "keys", quick).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let m = refusal(t.sql("DELETE FROM node WHERE k = 'a'").execute().await);
    assert!(m.contains("cycle"), "{m}");
    let m = refusal(t.sql("INSERT INTO pre VALUES ('abcdef')").execute().await);
    assert!(m.contains("first 4 characters"), "{m}");
    assert_eq!(t.sql("UPDATE ring SET v = 'x' WHERE id IN (1, 2)").execute().await.unwrap(), 2, "no cycle to restore");
    t.sql("UPDATE child SET ref = 'B' WHERE id = 1").execute().await.unwrap();
    t.sql("DELETE FROM parent WHERE k = 'a'").execute().await.unwrap();
    t.sql("UPDATE child SET v = 1 WHERE id = 1").execute().await.unwrap();
    t.sql("DELETE FROM bin WHERE k = 'a'").execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    let other = c.begin().await;
    let mut o = p.at.begin(&other).await.unwrap();
    o.sql("INSERT INTO bin VALUES ('a ')").execute().await.unwrap();
    assert!(matches!(o.commit().await, Err(AtError::LockConflict { .. })), "'a ' is 'a' to a PAD SPACE _bin key");
    roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(d.snapshot("parent", &["k"], "k").await, ["a", "b"]);
    assert_eq!(d.snapshot("child", &["ref", "v"], "id").await, ["a|0"], "the parent came back first");
    assert_eq!(d.snapshot("ring", &["v"], "id").await, ["", ""]);
    assert_eq!(d.snapshot("bin", &["k"], "k").await, ["a"]);

    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("INSERT INTO users VALUES ('bob')").execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    d.exec("ALTER TABLE users MODIFY name varchar(20) COLLATE utf8mb4_bin").await;
    let tx = roll_back(&c, &xid, "rollback_failed").await;
    let error = tx.branches[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("changed type"), "{error}");
    assert_eq!(d.snapshot("users", &["name"], "name").await, ["bob"]);
}

/// PostgreSQL: a self-referencing partitioned table written through a
/// partition; a session's temporary table shadowing a cached one; a pool of
/// one connection; keys of types AT cannot compare are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_temporary_tables_and_small_pools_on_postgres() {
    let c = Coordinator::start("at_pt").await;
    let d = PgBusiness::new("at_pt_p").await;
    d.exec(
        "CREATE TABLE node (id int PRIMARY KEY, parent int) PARTITION BY RANGE (id); \
         CREATE TABLE node_p1 PARTITION OF node FOR VALUES FROM (0) TO (100); \
         ALTER TABLE node ADD FOREIGN KEY (parent) REFERENCES node(id) ON DELETE SET NULL; \
         INSERT INTO node VALUES (1, NULL), (2, 1), (3, 2); \
         CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0); \
         CREATE TABLE jk (k jsonb PRIMARY KEY); CREATE TABLE ak (k int[] PRIMARY KEY)",
    )
    .await;
    let original = d.snapshot("node", &["id", "parent"], "id").await;
    let pool = PgPoolOptions::new().max_connections(1).connect(d.url()).await.unwrap();
    let p = participant::<Pg>(pool, &c.c.url, "parts", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    assert_eq!(t.sql("DELETE FROM node_p1 WHERE id IN (1, 2)").execute().await.unwrap(), 2);
    t.sql("UPDATE t SET v = 1 WHERE id = 1").execute().await.unwrap();
    for (sql, what) in
        [("INSERT INTO jk VALUES ('{\"a\": 1.0}')", "jsonb"), ("INSERT INTO ak VALUES ('{1}')", "integer[]")]
    {
        let m = refusal(t.sql(sql).execute().await);
        assert!(m.contains(what) && m.contains("lock keys"), "{m}");
    }
    t.commit().await.unwrap().expect("branch, on a pool of one connection");
    assert_eq!(d.snapshot("node", &["id", "parent"], "id").await, ["3|∅"]);
    roll_back(&c, &xid, "rolled_back").await;
    assert_eq!(d.snapshot("node", &["id", "parent"], "id").await, original);

    // The same session, `t` cached; now a temporary `t` shadows it.
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    sqlx::raw_sql("CREATE TEMPORARY TABLE t (id int PRIMARY KEY, v int) ON COMMIT DROP; INSERT INTO t VALUES (1, 5)")
        .execute(&mut *t.connection())
        .await
        .unwrap();
    let m = refusal(t.sql("UPDATE t SET v = 6 WHERE id = 1").execute().await);
    assert!(m.contains("temporary table"), "{m}");
}

/// MariaDB: a temporary table shadowing a base table is refused (MariaDB
/// lists no temporary tables, so the session is asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_table_is_refused_on_mariadb() {
    let c = Coordinator::start("at_tm").await;
    let d = MariaBusiness::new("at_tm_m").await;
    d.exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)").await;
    let p = participant::<MySqlDb>(d.pool(), &c.c.url, "temp", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    sqlx::raw_sql("CREATE TEMPORARY TABLE t (id int PRIMARY KEY, v int)").execute(&mut *t.connection()).await.unwrap();
    let m = refusal(t.sql("INSERT INTO t VALUES (2, 0)").execute().await);
    assert!(m.contains("temporary table"), "{m}");
    drop(t);
    assert_eq!(d.snapshot("t", &["id"], "id").await, ["1"]);
}
