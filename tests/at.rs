//! AT mode against real PostgreSQL and MariaDB: a coordinator (in process, or
//! a real `tandem` process that is SIGKILLed), participants serving the SDK's
//! AT callback over HTTP on 127.0.0.1, business tables in fresh databases.
#![allow(clippy::unwrap_used)]

mod support;

/// One test per class of rollback exactness (issue: "AT rollback restores
/// exactly what was there, or the statement is refused before it runs").
#[path = "at/classes.rs"]
mod classes;
/// The rollback property on a schema with triggers, referential actions,
/// partitions, inheritance and domains, in randomly set sessions.
#[path = "at/property.rs"]
mod property;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sqlx::{MySqlPool, PgPool};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{eventually, fast_settings, spawn_coordinator, wait_status, Process, TestDb, TestMariaDb, FAST_FLAGS};
use tandem_coordinator::RunningCoordinator;
use tandem_sdk::at::{
    AtBackend, AtError, AtParam, AtResource, AtResourceBuilder, LockRetry, MySqlDb, Pg, CALLBACK_PATH,
};
use tandem_sdk::wire::{BeginRequest, BranchStatus, GlobalStatus, LockCheckRequest, Mode, RegisterBranchRequest, Xid};
use tandem_sdk::TandemClient;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- fixtures

/// Holds callbacks at a participant until released; counts arrivals.
#[derive(Default)]
struct Gate {
    hold: Mutex<Option<Arc<Semaphore>>>,
    arrived: AtomicUsize,
}

impl Gate {
    fn hold(&self) {
        *self.hold.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    }
    fn release(&self) {
        if let Some(s) = self.hold.lock().unwrap().take() {
            s.add_permits(1_000);
        }
    }
}

async fn gate_layer(State(g): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    g.arrived.fetch_add(1, Ordering::SeqCst);
    let held = g.hold.lock().unwrap().clone();
    if let Some(s) = held {
        let _ = s.acquire().await;
    }
    next.run(req).await
}

/// An AT participant service: the SDK's callback router on a loopback port.
struct Participant<B: AtBackend> {
    at: AtResource<B>,
    gate: Arc<Gate>,
    /// Its callback URL.
    url: String,
}

async fn participant<B: AtBackend>(
    pool: sqlx::Pool<B::Db>,
    coordinator: &str,
    resource: &str,
    retry: LockRetry,
) -> Participant<B> {
    participant_with(pool, coordinator, resource, |b| b.lock_retry(retry)).await
}

/// [`participant`] with the resource's options set by `configure`.
async fn participant_with<B: AtBackend>(
    pool: sqlx::Pool<B::Db>,
    coordinator: &str,
    resource: &str,
    configure: impl FnOnce(AtResourceBuilder<B>) -> AtResourceBuilder<B>,
) -> Participant<B> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{CALLBACK_PATH}", listener.local_addr().unwrap());
    let at = configure(AtResource::<B>::builder(pool, TandemClient::new(coordinator).unwrap(), resource, &url)).build();
    let callback = url.clone();
    at.install().await.unwrap();
    let gate = Arc::new(Gate::default());
    let app = at.router().layer(axum::middleware::from_fn_with_state(gate.clone(), gate_layer));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Participant { at, gate, url: callback }
}

fn patient() -> LockRetry {
    LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_secs(30) }
}

/// A coordinator in this process on a fresh database.
struct Coordinator {
    c: RunningCoordinator,
    client: TandemClient,
    _db: TestDb,
}

impl Coordinator {
    async fn start(tag: &str) -> Coordinator {
        let db = TestDb::new(tag).await;
        let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
        Coordinator { c, client, _db: db }
    }
    fn client(&self) -> &TandemClient {
        &self.client
    }
    async fn begin(&self) -> Xid {
        let req =
            BeginRequest { mode: Mode::At, name: Some("at-test".into()), timeout_ms: Some(60_000), three_phase: None };
        self.client().begin(&req).await.unwrap().xid
    }
}

/// A business database of one kind.
trait Business {
    type B: AtBackend;
    fn pool(&self) -> sqlx::Pool<<Self::B as AtBackend>::Db>;
    /// The database's URL.
    fn url(&self) -> &str;
    /// Runs DDL/DML outside AT.
    async fn exec(&self, sql: &str);
    /// Every row of `table` as text, ordered by its key, `|`-separated, NULL as `∅`.
    async fn snapshot(&self, table: &str, columns: &[&str], order: &str) -> Vec<String>;
    /// The statement with `?` placeholders in this dialect.
    fn q(&self, sql: &str) -> String;
    /// Undo rows of `xid` as (branch_id, state).
    async fn undo_rows(&self, xid: &Xid) -> Vec<(String, i32)>;
}

struct PgBusiness {
    _db: TestDb,
    pool: PgPool,
}

impl PgBusiness {
    async fn new(tag: &str) -> PgBusiness {
        let db = TestDb::new(tag).await;
        let pool = db.pool().await;
        PgBusiness { _db: db, pool }
    }
}

impl Business for PgBusiness {
    type B = Pg;
    fn pool(&self) -> PgPool {
        self.pool.clone()
    }
    fn url(&self) -> &str {
        &self._db.url
    }
    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.pool).await.unwrap();
    }
    async fn snapshot(&self, table: &str, columns: &[&str], order: &str) -> Vec<String> {
        let cols: Vec<String> = columns.iter().map(|c| format!("coalesce({c}::text, '∅')")).collect();
        let sql = format!("SELECT concat_ws('|', {}) FROM {table} ORDER BY {order}", cols.join(", "));
        sqlx::query_scalar(&sql).fetch_all(&self.pool).await.unwrap()
    }
    fn q(&self, sql: &str) -> String {
        let mut out = String::new();
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(ch);
            }
        }
        out
    }
    async fn undo_rows(&self, xid: &Xid) -> Vec<(String, i32)> {
        sqlx::query_as("SELECT branch_key, state::int FROM tandem_undo_log WHERE xid = $1 ORDER BY branch_key")
            .bind(xid.as_str())
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

struct MariaBusiness {
    _db: TestMariaDb,
    pool: MySqlPool,
}

impl MariaBusiness {
    async fn new(tag: &str) -> MariaBusiness {
        let db = TestMariaDb::new(tag).await;
        let pool = db.pool().await;
        MariaBusiness { _db: db, pool }
    }
}

impl Business for MariaBusiness {
    type B = MySqlDb;
    fn pool(&self) -> MySqlPool {
        self.pool.clone()
    }
    fn url(&self) -> &str {
        &self._db.url
    }
    async fn exec(&self, sql: &str) {
        for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
            sqlx::Executor::execute(&self.pool, stmt).await.unwrap();
        }
    }
    async fn snapshot(&self, table: &str, columns: &[&str], order: &str) -> Vec<String> {
        // The property table's blob column `b` as hex (its bytes need not be
        // UTF-8), and its FLOAT `f4` exactly (as text a FLOAT has six digits).
        let text = |c: &str| match c {
            "b" => format!("HEX({c})"),
            "f4" => format!("CAST({c} + 0e0 AS CHAR)"),
            _ => format!("CAST({c} AS CHAR)"),
        };
        let cols: Vec<String> = columns.iter().map(|c| format!("IFNULL({}, '∅')", text(c))).collect();
        let sql = format!("SELECT CONCAT_WS('|', {}) FROM {table} ORDER BY {order}", cols.join(", "));
        sqlx::query_scalar(&sql).fetch_all(&self.pool).await.unwrap()
    }
    fn q(&self, sql: &str) -> String {
        sql.to_owned()
    }
    async fn undo_rows(&self, xid: &Xid) -> Vec<(String, i32)> {
        sqlx::query_as(
            "SELECT branch_key, CAST(state AS SIGNED INTEGER) FROM tandem_undo_log WHERE xid = ? ORDER BY branch_key",
        )
        .bind(xid.as_str())
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(b, s): (String, i64)| (b, s as i32))
        .collect()
    }
}

const STOCK_COLS: &[&str] = &["id", "sku", "qty", "note"];

async fn stock<D: Business>(d: &D) {
    d.exec(
        "CREATE TABLE stock (id bigint PRIMARY KEY, sku varchar(20) NOT NULL, qty int NOT NULL, note text); \
         INSERT INTO stock VALUES (1, 'a', 10, NULL), (2, 'b', 20, 'x'), (3, 'c', 30, NULL)",
    )
    .await;
}

/// The undo-row key the SDK registered as the (only) branch's payload.
async fn undo_key(c: &Coordinator, xid: &Xid) -> String {
    let tx = c.client().get(xid).await.unwrap();
    tx.branches[0].payload.as_ref().and_then(|p| p["undo_key"].as_str()).expect("undo_key in the payload").to_owned()
}

async fn qty<D: Business>(d: &D, id: i64) -> Vec<String> {
    d.snapshot(&format!("stock WHERE id = {id}"), &["qty"], "id").await
}

// ------------------------------------------------------------ round trips

/// Update, insert and delete, each in its own global transaction, each
/// rolled back to exactly the original rows; the undo row becomes a marker.
async fn each_change_rolls_back_exactly<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
    i32: AtParam<<D::B as AtBackend>::Db>,
    &'static str: AtParam<<D::B as AtBackend>::Db>,
{
    stock(d).await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let original = d.snapshot("stock", STOCK_COLS, "id").await;
    for case in ["update", "insert", "delete", "all three"] {
        let xid = c.begin().await;
        let mut t = p.at.begin(&xid).await.unwrap();
        if case == "update" || case == "all three" {
            let sql = d.q("UPDATE stock AS s SET qty = s.qty - ?, note = ? WHERE s.id IN (?, ?)");
            let n = t.sql(&sql).bind(5i32).bind("held").bind(1i64).bind(2i64).execute().await.unwrap();
            assert_eq!(n, 2, "{case}");
        }
        if case == "insert" || case == "all three" {
            let sql = d.q("INSERT INTO stock (id, sku, qty) VALUES (?, ?, ?), (?, ?, 7)");
            let n = t.sql(&sql).bind(10i64).bind("new").bind(1i32).bind(11i64).bind("new2").execute().await.unwrap();
            assert_eq!(n, 2, "{case}");
        }
        if case == "delete" || case == "all three" {
            let n = t.sql(&d.q("DELETE FROM stock WHERE qty >= ?")).bind(20i32).execute().await.unwrap();
            assert!(n >= 1, "{case}");
        }
        let branch = t.commit().await.unwrap().expect("a branch was registered");
        assert_ne!(d.snapshot("stock", STOCK_COLS, "id").await, original, "{case}: phase 1 committed locally");
        let key = undo_key(c, &xid).await;
        assert_ne!(key, branch.to_string(), "the SDK's own key, registered as the payload");
        assert_eq!(d.undo_rows(&xid).await, vec![(key.clone(), 0)]);

        c.client().rollback(&xid, None).await.unwrap();
        let t = wait_status(c.client(), &xid, "rolled_back", WAIT).await;
        assert_eq!(t.branches[0].status, BranchStatus::RolledBack);
        assert_eq!(d.snapshot("stock", STOCK_COLS, "id").await, original, "{case}: rolled back exactly");
        assert_eq!(d.undo_rows(&xid).await, vec![(key, 1)], "{case}: undo row became a marker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_insert_and_delete_roll_back_exactly_on_postgres() {
    let c = Coordinator::start("at_rt").await;
    let d = PgBusiness::new("at_rt_p").await;
    each_change_rolls_back_exactly(&d, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_insert_and_delete_roll_back_exactly_on_mariadb() {
    let c = Coordinator::start("at_rtm").await;
    let d = MariaBusiness::new("at_rt_m").await;
    each_change_rolls_back_exactly(&d, &c).await;
}

/// Commit keeps the data, releases the locks, and deletes the undo rows (asynchronously).
async fn commit_removes_undo_rows<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
    i32: AtParam<<D::B as AtBackend>::Db>,
{
    stock(d).await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let mut xids = Vec::new();
    for i in 0..5 {
        let xid = c.begin().await;
        let mut t = p.at.begin(&xid).await.unwrap();
        t.sql(&d.q("UPDATE stock SET qty = qty + ? WHERE id = ?")).bind(1i32).bind(1i64).execute().await.unwrap();
        let keys: Vec<String> = t.lock_keys().map(str::to_owned).collect();
        assert_eq!(keys.len(), 1);
        t.commit().await.unwrap().expect("branch");
        let done = c.client().commit(&xid, None).await.unwrap();
        assert_eq!(done.transaction.status, GlobalStatus::Committed, "commit {i}");
        let free = c
            .client()
            .check_locks(&LockCheckRequest { resource: "inventory".into(), lock_keys: keys, xid: None })
            .await
            .unwrap();
        assert!(free.free, "locks released on commit");
        xids.push(xid);
    }
    assert_eq!(qty(d, 1).await, vec!["15"]);
    for xid in &xids {
        eventually("undo rows deleted after commit", WAIT, || async {
            d.undo_rows(xid).await.is_empty().then_some(())
        })
        .await;
    }
}

/// `purge` deletes old markers and old rows of committed transactions, and
/// keeps everything a rollback may still need.
async fn purge_keeps_what_a_rollback_needs<D: Business>(d: &D, c: &Coordinator, backdate: &str)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
{
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let run = |id: i64| {
        let p = &p;
        async move {
            let xid = c.begin().await;
            let mut t = p.at.begin(&xid).await.unwrap();
            t.sql(&d.q("UPDATE stock SET qty = qty + 1 WHERE id = ?")).bind(id).execute().await.unwrap();
            t.commit().await.unwrap().expect("branch");
            xid
        }
    };
    let committed = run(1).await;
    c.client().commit(&committed, None).await.unwrap();
    let rolled_back = run(2).await;
    c.client().rollback(&rolled_back, None).await.unwrap();
    let open = run(3).await;
    let recent = run(1).await;
    c.client().rollback(&recent, None).await.unwrap();
    wait_status(c.client(), &rolled_back, "rolled_back", WAIT).await;
    wait_status(c.client(), &recent, "rolled_back", WAIT).await;
    eventually("committed undo row deleted", WAIT, || async { d.undo_rows(&committed).await.is_empty().then_some(()) })
        .await;
    // As if the batched delete had been lost: the committed branch's row is back.
    let key = undo_key(c, &committed).await;
    d.exec(&format!(
        "INSERT INTO tandem_undo_log (xid, branch_key, state, rollback_info) VALUES ('{committed}', '{key}', 0, '{{}}')"
    ))
    .await;
    for xid in [&committed, &rolled_back, &open] {
        d.exec(&backdate.replace("XID", xid.as_str())).await;
    }
    let purged = p.at.purge(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(purged, tandem_sdk::at::Purged { markers: 1, committed: 1 });
    assert!(d.undo_rows(&committed).await.is_empty());
    assert!(d.undo_rows(&rolled_back).await.is_empty(), "old marker gone");
    assert_eq!(d.undo_rows(&open).await.len(), 1, "the undecided transaction keeps its images");
    assert_eq!(d.undo_rows(&recent).await.len(), 1, "a recent marker stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_removes_the_undo_rows_on_postgres() {
    let c = Coordinator::start("at_cm").await;
    let d = PgBusiness::new("at_cm_p").await;
    commit_removes_undo_rows(&d, &c).await;
    let backdate = "UPDATE tandem_undo_log SET created_at = created_at - interval '2 hours' WHERE xid = 'XID'";
    purge_keeps_what_a_rollback_needs(&d, &c, backdate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_removes_the_undo_rows_on_mariadb() {
    let c = Coordinator::start("at_cmm").await;
    let d = MariaBusiness::new("at_cm_m").await;
    commit_removes_undo_rows(&d, &c).await;
    let backdate = "UPDATE tandem_undo_log SET created_at = created_at - INTERVAL 2 HOUR WHERE xid = 'XID'";
    purge_keeps_what_a_rollback_needs(&d, &c, backdate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_and_generated_keys_on_postgres() {
    let c = Coordinator::start("at_ret").await;
    let d = PgBusiness::new("at_ret_p").await;
    d.exec(
        "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL, \
         total numeric(10,2) NOT NULL, doubled numeric GENERATED ALWAYS AS (total * 2) STORED); \
         INSERT INTO orders (item, total) VALUES ('seed', 1.50)",
    )
    .await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "orders", LockRetry::default()).await;
    let cols = ["id", "item", "total", "doubled"];
    let original = d.snapshot("orders", &cols, "id").await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let rows = t
        .sql("INSERT INTO orders (item, total) VALUES ($1, 9.99), ('two', 2) RETURNING id, item")
        .bind("one")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let first: i64 = sqlx::Row::get(&rows[0], "id");
    assert_eq!(sqlx::Row::get::<String, _>(&rows[0], 1), "one", "the caller's columns keep their positions");
    let rows =
        t.sql("UPDATE orders SET total = total + 1 WHERE id <= $1 RETURNING total").bind(first).fetch_all().await;
    assert_eq!(rows.unwrap().len(), 2);
    let rows = t.sql("DELETE FROM orders WHERE item = $1 RETURNING id").bind("seed").fetch_all().await.unwrap();
    assert_eq!(rows.len(), 1);
    t.commit().await.unwrap().expect("branch");
    c.client().rollback(&xid, None).await.unwrap();
    wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    assert_eq!(d.snapshot("orders", &cols, "id").await, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_increment_keys_roll_back_on_mariadb() {
    let c = Coordinator::start("at_ai").await;
    let d = MariaBusiness::new("at_ai_m").await;
    d.exec("CREATE TABLE orders (id bigint AUTO_INCREMENT PRIMARY KEY, item varchar(20) NOT NULL); INSERT INTO orders (item) VALUES ('seed')")
        .await;
    let p = participant::<MySqlDb>(d.pool(), &c.c.url, "orders", LockRetry::default()).await;
    let original = d.snapshot("orders", &["id", "item"], "id").await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let n = t.sql("INSERT INTO orders (item) VALUES (?), (?)").bind("one").bind("two").execute().await.unwrap();
    assert_eq!(n, 2);
    let keys: Vec<String> = t.lock_keys().map(str::to_owned).collect();
    assert_eq!(keys.len(), 2, "both generated keys are locked: {keys:?}");
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("orders", &["item"], "id").await, vec!["seed", "one", "two"]);
    c.client().rollback(&xid, None).await.unwrap();
    wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    assert_eq!(d.snapshot("orders", &["id", "item"], "id").await, original);
}

// ------------------------------------------------------------ property test

/// Column types of the property table: name, PostgreSQL type, MariaDB type.
const TYPES: &[(&str, &str, &str)] = &[
    ("i16", "smallint", "smallint"),
    ("i64", "bigint", "bigint"),
    ("num", "numeric(12,3)", "decimal(12,3)"),
    ("txt", "text", "text"),
    ("vc", "varchar(20)", "varchar(20)"),
    ("flag", "boolean", "boolean"),
    ("ts", "timestamp(6)", "datetime(6)"),
    ("tstz", "timestamptz", "timestamp(6) NULL"),
    ("d", "date", "date"),
    ("j", "json", "json"),
    ("jb", "jsonb", "longtext"),
    ("b", "bytea", "blob"),
    ("u", "uuid", "uuid"),
    ("f", "double precision", "double"),
    ("f4", "real", "float"),
    ("tm", "time(6)", "time(6)"),
    ("arr", "int[]", "varchar(64)"),
];

fn value(col: usize) -> BoxedStrategy<Option<String>> {
    let some = match TYPES[col].0 {
        "i16" => any::<i16>().prop_map(|v| v.to_string()).boxed(),
        "i64" => any::<i64>().prop_map(|v| v.to_string()).boxed(),
        "num" => (-999_999_999i64..999_999_999, 0u32..1000).prop_map(|(i, f)| format!("{i}.{f:03}")).boxed(),
        "txt" => "[a-zA-Z0-9 _'%\\\\é\u{1F600}]{0,24}".boxed(),
        "vc" => "[a-z'\" ]{0,20}".boxed(),
        "flag" => prop_oneof![Just("1".to_owned()), Just("0".to_owned())].boxed(),
        "ts" | "tstz" => (2000i32..2030, 1u32..13, 1u32..29, 0u32..24, 0u32..60, 0u32..1_000_000)
            .prop_map(|(y, mo, d, h, mi, us)| format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:07.{us:06}"))
            .boxed(),
        "d" => (1990i32..2100, 1u32..13, 1u32..29).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")).boxed(),
        "j" | "jb" => (any::<i32>(), "[a-z]{0,6}", any::<bool>())
            .prop_map(|(n, s, b)| format!(r#"{{"n": {n}, "s": "{s}", "b": {b}, "a": [1, 2.5, null]}}"#))
            .boxed(),
        "b" => proptest::collection::vec(any::<u8>(), 0..16)
            .prop_map(|v| v.iter().map(|b| format!("{b:02x}")).collect())
            .boxed(),
        "u" => any::<[u8; 16]>().prop_map(|b| uuid::Builder::from_random_bytes(b).into_uuid().to_string()).boxed(),
        "f" => (-1.0e12f64..1.0e12).prop_map(|v| v.to_string()).boxed(),
        "f4" => (-1.0e6f32..1.0e6).prop_map(|v| v.to_string()).boxed(),
        "tm" => (0u32..24, 0u32..60, 0u32..60, 0u32..1_000_000)
            .prop_map(|(h, m, s, us)| format!("{h:02}:{m:02}:{s:02}.{us:06}"))
            .boxed(),
        "arr" => proptest::collection::vec(proptest::option::of(-1000i32..1000), 0..5)
            .prop_map(|v| {
                let items: Vec<String> = v.iter().map(|x| x.map_or("NULL".into(), |x| x.to_string())).collect();
                format!("{{{}}}", items.join(","))
            })
            .boxed(),
        other => unreachable!("{other}"),
    };
    prop_oneof![1 => Just(None), 4 => some.prop_map(Some)].boxed()
}

fn full_row() -> impl Strategy<Value = Vec<Option<String>>> {
    (0..TYPES.len()).map(value).collect::<Vec<_>>()
}

#[derive(Debug, Clone)]
enum Filter {
    Key(i32, &'static str),
    Range(i32, i32),
}

#[derive(Debug, Clone)]
enum Op {
    Insert(i32, &'static str, Vec<Option<String>>),
    Update(Filter, Vec<(usize, Option<String>)>),
    Delete(Filter),
}

fn key() -> impl Strategy<Value = (i32, &'static str)> {
    (0..6i32, prop_oneof![Just("a"), Just("b")])
}

fn filter() -> impl Strategy<Value = Filter> {
    prop_oneof![
        key().prop_map(|(k, s)| Filter::Key(k, s)),
        (0..6i32, 0..4i32).prop_map(|(a, w)| Filter::Range(a, a + w))
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let set = proptest::collection::vec((0..TYPES.len()).prop_flat_map(|c| value(c).prop_map(move |v| (c, v))), 1..4);
    prop_oneof![
        (key(), full_row()).prop_map(|((k, s), r)| Op::Insert(k, s, r)),
        (filter(), set).prop_map(|(f, s)| Op::Update(f, s)),
        filter().prop_map(Op::Delete),
    ]
}

/// Initial rows of a case: key and values.
type Seed = Vec<((i32, &'static str), Vec<Option<String>>)>;

/// A case: initial rows, then statements in one branch.
fn case() -> impl Strategy<Value = (Seed, Vec<Op>)> {
    (proptest::collection::vec((key(), full_row()), 0..6), proptest::collection::vec(op(), 1..7))
}

/// How each dialect writes a text parameter into a column of each type.
fn cast(pg: bool, col: usize, p: &str) -> String {
    let (name, pg_type, _) = TYPES[col];
    match (pg, name) {
        (true, "b") => format!("decode({p}, 'hex')"),
        (true, _) => format!("CAST({p} AS {pg_type})"),
        (false, "b") => format!("UNHEX({p})"),
        (false, _) => p.to_owned(),
    }
}

fn prop_columns() -> Vec<&'static str> {
    let mut c = vec!["k1", "k2"];
    c.extend(TYPES.iter().map(|t| t.0));
    c
}

async fn prop_table<D: Business>(d: &D, pg: bool) {
    let cols: Vec<String> = TYPES.iter().map(|(n, p, m)| format!("{n} {}", if pg { p } else { m })).collect();
    d.exec(&format!(
        "CREATE TABLE prop (k1 int NOT NULL, k2 varchar(4) NOT NULL, {}, PRIMARY KEY (k1, k2))",
        cols.join(", ")
    ))
    .await;
}

fn insert_sql(pg: bool) -> String {
    let values: Vec<String> = (0..TYPES.len()).map(|c| cast(pg, c, "?")).collect();
    format!("INSERT INTO prop ({}) VALUES (CAST(? AS int), ?, {})", prop_columns().join(", "), values.join(", "))
}

fn filter_sql(f: &Filter) -> (&'static str, Vec<String>) {
    match f {
        Filter::Key(k, s) => ("k1 = CAST(? AS int) AND k2 = ?", vec![k.to_string(), (*s).to_owned()]),
        Filter::Range(a, b) => ("k1 BETWEEN CAST(? AS int) AND CAST(? AS int)", vec![a.to_string(), b.to_string()]),
    }
}

/// Runs one case: seed, statements in AT, commit the branch, roll the global
/// transaction back; the table must be exactly as seeded.
async fn prop_case<D: Business>(
    d: &D,
    c: &Coordinator,
    p: &Participant<D::B>,
    pg: bool,
    seed: &Seed,
    ops: &[Op],
) -> Result<(), TestCaseError>
where
    Option<String>: AtParam<<D::B as AtBackend>::Db>,
{
    d.exec("DELETE FROM prop").await;
    let mut keys = std::collections::HashSet::new();
    for ((k, s), row) in seed {
        if !keys.insert((*k, *s)) {
            continue;
        }
        insert_plain(d, pg, *k, s, row).await;
    }
    let cols = prop_columns();
    let original = d.snapshot("prop", &cols, "k1, k2").await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    for op in ops {
        match op {
            Op::Insert(k, s, row) => {
                if !keys.insert((*k, *s)) {
                    continue; // would violate the key and abort the local transaction
                }
                let sql = d.q(&insert_sql(pg));
                let mut q = t.sql(&sql).bind(Some(k.to_string())).bind(Some((*s).to_owned()));
                for v in row {
                    q = q.bind(v.clone());
                }
                q.execute().await.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
            }
            Op::Update(f, set) => {
                let mut seen = std::collections::HashSet::new();
                let set: Vec<_> = set.iter().filter(|(c, _)| seen.insert(*c)).collect();
                let assignments: Vec<String> =
                    set.iter().map(|(c, _)| format!("{} = {}", TYPES[*c].0, cast(pg, *c, "?"))).collect();
                let (w, wp) = filter_sql(f);
                let sql = d.q(&format!("UPDATE prop SET {} WHERE {w}", assignments.join(", ")));
                let mut q = t.sql(&sql);
                for (_, v) in &set {
                    q = q.bind(v.clone());
                }
                for v in wp {
                    q = q.bind(Some(v));
                }
                q.execute().await.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
            }
            Op::Delete(f) => {
                let (w, wp) = filter_sql(f);
                let sql = d.q(&format!("DELETE FROM prop WHERE {w}"));
                let mut q = t.sql(&sql);
                for v in wp {
                    q = q.bind(Some(v));
                }
                let n = q.execute().await.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                if n > 0 {
                    keys.retain(|(k, s)| match f {
                        Filter::Key(fk, fs) => !(k == fk && s == fs),
                        Filter::Range(a, b) => !(a <= k && k <= b),
                    });
                }
            }
        }
    }
    t.commit().await.map_err(|e| TestCaseError::fail(format!("commit: {e}")))?;
    c.client().rollback(&xid, None).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let tx = wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    prop_assert!(tx.branches.iter().all(|b| b.status == BranchStatus::RolledBack));
    let now = d.snapshot("prop", &cols, "k1, k2").await;
    prop_assert_eq!(now, original);
    Ok(())
}

async fn insert_plain<D: Business>(d: &D, pg: bool, k: i32, s: &str, row: &[Option<String>]) {
    // PostgreSQL strings are standard-conforming; MariaDB's take backslash escapes.
    let lit = |v: &Option<String>| match v {
        None => "NULL".to_owned(),
        Some(v) if pg => format!("'{}'", v.replace('\'', "''")),
        Some(v) => format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''")),
    };
    let values: Vec<String> = row
        .iter()
        .enumerate()
        .map(|(c, v)| if v.is_none() { "NULL".to_owned() } else { cast(pg, c, &lit(v)) })
        .collect();
    d.exec(&format!("INSERT INTO prop ({}) VALUES ({k}, '{s}', {})", prop_columns().join(", "), values.join(", ")))
        .await;
}

fn property_test<D: Business + 'static>(
    new: fn(&'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = D>>>,
    pg: bool,
) where
    Option<String>: AtParam<<D::B as AtBackend>::Db>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (d, c, p) = rt.block_on(async {
        let c = Coordinator::start(if pg { "at_prop" } else { "at_propm" }).await;
        let d = new("at_prop_b").await;
        prop_table(&d, pg).await;
        let p = participant::<D::B>(d.pool(), &c.c.url, "prop", LockRetry::default()).await;
        (d, c, p)
    });
    let cases = std::env::var("TANDEM_AT_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&case(), |(seed, ops)| rt.block_on(prop_case(&d, &c, &p, pg, &seed, &ops)));
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn random_statements_then_rollback_leave_the_table_as_it_was_on_postgres() {
    property_test::<PgBusiness>(|tag| Box::pin(PgBusiness::new(tag)), true);
}

#[test]
fn random_statements_then_rollback_leave_the_table_as_it_was_on_mariadb() {
    property_test::<MariaBusiness>(|tag| Box::pin(MariaBusiness::new(tag)), false);
}

// ------------------------------------------------------------ global locks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_global_transactions_on_one_row_are_serialized_by_the_global_lock() {
    let c = Coordinator::start("at_lock").await;
    let d = PgBusiness::new("at_lock_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", patient()).await;

    let a = c.begin().await;
    let mut ta = p.at.begin(&a).await.unwrap();
    ta.sql("UPDATE stock SET qty = qty - 1 WHERE id = $1").bind(1i64).execute().await.unwrap();
    ta.commit().await.unwrap().expect("branch a");

    // B changes the same row: its local update goes through (A committed
    // locally), but its branch cannot register while A holds the global lock.
    let b = c.begin().await;
    let at = p.at.clone();
    let b2 = b.clone();
    let task = tokio::spawn(async move {
        let mut tb = at.begin(&b2).await.unwrap();
        tb.sql("UPDATE stock SET qty = qty * 10 WHERE id = $1").bind(1i64).execute().await.unwrap();
        tb.commit().await
    });
    let metrics = format!("{}/metrics", c.c.url);
    eventually("B hits A's lock", WAIT, || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        text.lines().any(|l| l.starts_with("tandem_lock_conflicts_total") && !l.ends_with(" 0")).then_some(())
    })
    .await;
    assert!(!task.is_finished(), "B waits for the global lock");
    assert_eq!(c.client().get(&b).await.unwrap().branches.len(), 0);

    c.client().commit(&a, None).await.unwrap();
    let branch_b = task.await.unwrap().expect("B registers once A released").expect("branch b");
    let tb = c.client().get(&b).await.unwrap();
    assert_eq!(tb.branches[0].branch_id, branch_b);
    assert_eq!(qty(&d, 1).await, vec!["90"], "A's write, then B's on top");

    // Rolling B back restores A's committed value, not the original.
    c.client().rollback(&b, None).await.unwrap();
    wait_status(c.client(), &b, "rolled_back", WAIT).await;
    assert_eq!(qty(&d, 1).await, vec!["9"]);
}

/// Many global transactions moving money between six hot rows, half of
/// them rolled back, some failing on a lock: the total never changes, every
/// transaction ends, and no lock or undo row is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_on_hot_rows_keep_the_total() {
    let c = Coordinator::start("at_hot").await;
    let d = PgBusiness::new("at_hot_p").await;
    d.exec("CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL); INSERT INTO acct SELECT g, 1000 FROM generate_series(0, 5) g")
        .await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "bank", LockRetry::default()).await;
    let client = c.client().clone();
    let mut tasks = Vec::new();
    for w in 0..4i32 {
        let (at, client) = (p.at.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut xids = Vec::new();
            for i in 0..12i32 {
                let (from, to) = ((w + i) % 6, (w * 2 + i + 1) % 6);
                if from == to {
                    continue;
                }
                let req = BeginRequest { mode: Mode::At, name: None, timeout_ms: Some(60_000), three_phase: None };
                let xid = client.begin(&req).await.unwrap().xid;
                let mut t = at.begin(&xid).await.unwrap();
                let moved = async {
                    t.sql("UPDATE acct SET bal = bal - $1 WHERE id = $2").bind(7i64).bind(from).execute().await?;
                    t.sql("UPDATE acct SET bal = bal + $1 WHERE id = $2").bind(7i64).bind(to).execute().await?;
                    Ok::<_, AtError>(())
                }
                .await;
                let registered = match moved {
                    Ok(()) => t.commit().await.is_ok(),
                    Err(_) => false,
                };
                if registered && i % 2 == 0 {
                    client.commit(&xid, None).await.unwrap();
                } else {
                    client.rollback(&xid, None).await.unwrap();
                }
                xids.push(xid);
            }
            xids
        }));
    }
    let mut xids = Vec::new();
    for t in tasks {
        xids.extend(t.await.unwrap());
    }
    for xid in &xids {
        eventually("every transaction ends", WAIT, || async {
            let t = client.get(xid).await.ok()?;
            matches!(t.status, GlobalStatus::Committed | GlobalStatus::RolledBack).then_some(())
        })
        .await;
    }
    let mut committed = 0;
    for xid in &xids {
        committed += usize::from(client.get(xid).await.unwrap().status == GlobalStatus::Committed);
    }
    let metrics = reqwest::get(format!("{}/metrics", c.c.url)).await.unwrap().text().await.unwrap();
    let conflicts = metrics.lines().find(|l| l.starts_with("tandem_lock_conflicts_total")).unwrap_or_default();
    eprintln!("{committed} of {} committed; {conflicts}", xids.len());
    assert!(committed > 0, "some transfers commit");
    let total: i64 = sqlx::query_scalar("SELECT sum(bal)::bigint FROM acct").fetch_one(&d.pool).await.unwrap();
    assert_eq!(total, 6000, "money is neither made nor lost");
    let locks = LockCheckRequest {
        resource: "bank".into(),
        lock_keys: (0..6).map(|i| format!("public.acct:{i}")).collect(),
        xid: None,
    };
    assert!(client.check_locks(&locks).await.unwrap().free, "no lock left behind");
    eventually("undo rows of committed branches deleted", WAIT, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tandem_undo_log WHERE state = 0").fetch_one(&d.pool).await.ok()?;
        (n == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_conflict_fails_the_local_transaction_after_bounded_retries() {
    let c = Coordinator::start("at_lockf").await;
    let d = PgBusiness::new("at_lockf_p").await;
    stock(&d).await;
    let quick = LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(200) };
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", quick).await;

    let a = c.begin().await;
    let mut ta = p.at.begin(&a).await.unwrap();
    ta.sql("UPDATE stock SET qty = 11 WHERE id = $1").bind(1i64).execute().await.unwrap();
    ta.commit().await.unwrap().expect("branch a");

    let b = c.begin().await;
    let mut tb = p.at.begin(&b).await.unwrap();
    tb.sql("UPDATE stock SET qty = 99 WHERE id IN ($1, $2)").bind(1i64).bind(2i64).execute().await.unwrap();
    let started = Instant::now();
    match tb.commit().await {
        Err(AtError::LockConflict { holder, waited }) => {
            assert_eq!(holder.xid, a);
            assert_eq!(holder.status, GlobalStatus::Active);
            assert_eq!(holder.lock_key, "public.stock:1");
            assert!(waited >= Duration::from_millis(150), "retried for the configured time: {waited:?}");
        }
        other => panic!("expected a lock conflict, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(d.snapshot("stock", &["qty"], "id").await, vec!["11", "20", "30"], "B's local transaction rolled back");
    assert!(c.client().get(&b).await.unwrap().branches.is_empty(), "B registered nothing");

    // SELECT ... FOR UPDATE checks the global lock too.
    let mut tb = p.at.begin(&b).await.unwrap();
    let r = tb.sql("SELECT qty FROM stock WHERE id = $1 FOR UPDATE").bind(1i64).fetch_all().await;
    assert!(matches!(r, Err(AtError::LockConflict { .. })), "{r:?}");
    drop(tb);
    c.client().commit(&a, None).await.unwrap();
    let mut tb = p.at.begin(&b).await.unwrap();
    let rows = tb.sql("SELECT qty FROM stock WHERE id = $1 FOR UPDATE").bind(1i64).fetch_all().await.unwrap();
    assert_eq!(sqlx::Row::get::<i32, _>(&rows[0], 0), 11, "read-committed once A committed");
    assert_eq!(tb.commit().await.unwrap(), None, "a read registers no branch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_a_rolling_back_transaction_fails_fast() {
    let c = Coordinator::start("at_lockr").await;
    let d = PgBusiness::new("at_lockr_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", patient()).await;

    let a = c.begin().await;
    let mut ta = p.at.begin(&a).await.unwrap();
    ta.sql("UPDATE stock SET qty = 12 WHERE id = $1").bind(1i64).execute().await.unwrap();
    ta.commit().await.unwrap().expect("branch a");
    // A's rollback cannot reach the participant: A stays rolling_back, holding its lock.
    p.gate.hold();
    c.client().rollback(&a, Some(Duration::ZERO)).await.unwrap();
    wait_status(c.client(), &a, "rolling_back", WAIT).await;

    let b = c.begin().await;
    let mut tb = p.at.begin(&b).await.unwrap();
    tb.sql("UPDATE stock SET qty = 13 WHERE id = $1").bind(1i64).execute().await.unwrap();
    let started = Instant::now();
    match tb.commit().await {
        Err(AtError::LockConflict { holder, .. }) => assert_eq!(holder.status, GlobalStatus::RollingBack),
        other => panic!("expected a lock conflict, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "failed fast, not after the 30 s retry budget");
    p.gate.release();
    wait_status(c.client(), &a, "rolled_back", WAIT).await;
    assert_eq!(qty(&d, 1).await, vec!["10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_takes_locks_atomically_with_registration() {
    let c = Coordinator::start("at_api").await;
    let reg = |keys: &[&str]| RegisterBranchRequest {
        resource: "db1".into(),
        callback_url: "http://127.0.0.1:9/cb".into(),
        payload: None,
        lock_keys: Some(keys.iter().map(|k| (*k).to_owned()).collect()),
    };
    let a = c.begin().await;
    let b = c.begin().await;
    c.client().register(&a, &reg(&["t:1", "t:2"])).await.unwrap();
    // The same transaction may take its own keys again.
    c.client().register(&a, &reg(&["t:2", "t:3"])).await.unwrap();
    let err = c.client().register(&b, &reg(&["t:9", "t:3"])).await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    let tandem_sdk::ClientError::Problem(p) = err else { panic!("problem expected") };
    assert_eq!(p.code, tandem_sdk::wire::ErrorCode::LockConflict);
    let holder = p.lock_holder.expect("holder named");
    assert_eq!((holder.xid, holder.lock_key.as_str()), (a.clone(), "t:3"));
    // Nothing of B's refused registration stayed: no branch, and t:9 is free.
    assert!(c.client().get(&b).await.unwrap().branches.is_empty());
    let check = |keys: &[&str], xid: Option<Xid>| LockCheckRequest {
        resource: "db1".into(),
        lock_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        xid,
    };
    assert!(c.client().check_locks(&check(&["t:9"], None)).await.unwrap().free);
    assert!(!c.client().check_locks(&check(&["t:1"], Some(b.clone()))).await.unwrap().free);
    assert!(c.client().check_locks(&check(&["t:1"], Some(a.clone()))).await.unwrap().free, "own locks are free");
    // Other resources and other modes are not affected.
    let mut other = reg(&["t:1"]);
    other.resource = "db2".into();
    c.client().register(&b, &other).await.unwrap();
    let tcc = c
        .client()
        .begin(&BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: None, three_phase: None })
        .await
        .unwrap();
    c.client().register(&tcc.xid, &reg(&["t:1"])).await.unwrap();
    // Bad keys change nothing.
    let err = c.client().register(&b, &reg(&[""])).await.unwrap_err();
    assert_eq!(err.status(), Some(422));
}

// ------------------------------------------------------------ dirty writes

async fn dirty_write_is_reported<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
{
    stock(d).await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql(&d.q("UPDATE stock SET qty = qty - 1 WHERE id = ?")).bind(1i64).execute().await.unwrap();
    t.sql(&d.q("UPDATE stock SET qty = qty - 1 WHERE id = ?")).bind(2i64).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    // Someone writes the row outside the global transaction.
    d.exec("UPDATE stock SET qty = 42 WHERE id = 1").await;

    c.client().rollback(&xid, None).await.unwrap();
    let tx = wait_status(c.client(), &xid, "rollback_failed", WAIT).await;
    let branch = &tx.branches[0];
    assert_eq!(branch.status, BranchStatus::RollbackFailed);
    let report = branch.last_error.as_deref().expect("the conflict is reported");
    let body: serde_json::Value = serde_json::from_str(report.trim_start_matches("409: ")).expect("JSON report");
    let conflict = &body["conflicts"][0];
    assert_eq!(conflict["table"].as_str().unwrap().rsplit('.').next(), Some("stock"));
    assert_eq!(conflict["pk"], serde_json::json!(["1"]));
    assert_eq!(conflict["expected"]["qty"], "9");
    assert_eq!(conflict["found"]["qty"], "42");
    assert_eq!(body["conflicts"].as_array().unwrap().len(), 1, "only the dirty row");
    // Nothing was overwritten, not even the clean row of the same branch.
    assert_eq!(d.snapshot("stock", &["qty"], "id").await, vec!["42", "19", "30"]);
    assert_eq!(d.undo_rows(&xid).await.len(), 1, "the undo row stays for the operator");
    // The lock stays held: nobody else may write over rows a person must repair.
    let keys = vec![branch.lock_keys[0].clone()];
    let check = LockCheckRequest { resource: "inventory".into(), lock_keys: keys, xid: None };
    assert!(!c.client().check_locks(&check).await.unwrap().free);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_write_is_detected_and_reported_and_nothing_overwritten_on_postgres() {
    let c = Coordinator::start("at_dirty").await;
    let d = PgBusiness::new("at_dirty_p").await;
    dirty_write_is_reported(&d, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_write_is_detected_and_reported_and_nothing_overwritten_on_mariadb() {
    let c = Coordinator::start("at_dirtym").await;
    let d = MariaBusiness::new("at_dirty_m").await;
    dirty_write_is_reported(&d, &c).await;
}

// ------------------------------------------------------------ empty rollback

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_rollback_leaves_a_marker_that_refuses_a_late_phase_one() {
    let c = Coordinator::start("at_empty").await;
    let d = PgBusiness::new("at_empty_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let xid = c.begin().await;
    let branch = tandem_sdk::wire::BranchId::generate();
    let cb = tandem_sdk::wire::CallbackRequest {
        xid: xid.clone(),
        branch_id: branch.clone(),
        mode: Mode::At,
        action: tandem_sdk::wire::CallbackAction::Rollback,
        resource: "inventory".into(),
        payload: None,
        three_phase: None,
    };
    p.at.handle_callback(&cb).await.unwrap();
    p.at.handle_callback(&cb).await.unwrap(); // at-least-once: idempotent
    assert_eq!(d.undo_rows(&xid).await, vec![(branch.to_string(), 1)]);
    // A late phase 1 of that branch writes its undo row in its own local
    // transaction: the marker's key refuses it, so its changes cannot commit.
    let late =
        sqlx::query("INSERT INTO tandem_undo_log (xid, branch_key, state, rollback_info) VALUES ($1, $2, 0, '{}')")
            .bind(xid.as_str())
            .bind(branch.as_str())
            .execute(&d.pool)
            .await;
    let code = late.unwrap_err().as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("23505"));

    // And a branch whose transaction was rolled back before it registered
    // fails its phase 1 with nothing committed.
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("UPDATE stock SET qty = 0 WHERE id = $1").bind(3i64).execute().await.unwrap();
    c.client().rollback(&xid, None).await.unwrap();
    let r = t.commit().await;
    assert!(matches!(r, Err(AtError::Coordinator(_))), "{r:?}");
    assert_eq!(qty(&d, 3).await, vec!["30"]);
}

// ------------------------------------------------------------ refusals

async fn unsupported_sql_is_refused<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
{
    poisoned_transactions_do_not_commit(d, c).await;
    stock(d).await;
    d.exec("CREATE TABLE nokey (a int, b int); INSERT INTO nokey VALUES (1, 1)").await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let original = d.snapshot("stock", STOCK_COLS, "id").await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let refused = [
        ("UPDATE nokey SET b = 2 WHERE a = 1", "no primary key"),
        ("DROP TABLE stock", "DROP"),
        ("ALTER TABLE stock ADD COLUMN x int", "ALTER"),
        ("UPDATE stock SET id = 7 WHERE id = 1", "primary-key column"),
        ("INSERT INTO stock SELECT * FROM stock", "INSERT ... SELECT"),
        ("UPDATE stock SET qty = 1; DELETE FROM stock", "exactly one statement"),
        ("DELETE FROM stock s USING nokey n WHERE s.id = n.a", "USING"),
        ("UPDATE missing_table SET x = 1", "no table"),
        ("TRUNCATE stock", "TRUNCATE"),
        ("UPDAT stock SET qty = 1", "cannot parse"),
    ];
    for (sql, expect) in refused {
        match t.sql(sql).execute().await {
            Err(AtError::Unsupported(m)) => assert!(m.contains(expect), "{sql}: {m}"),
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    let r = t.sql(&d.q("UPDATE stock SET qty = 1 WHERE id = ?")).execute().await;
    assert!(matches!(r, Err(AtError::Unsupported(ref m)) if m.contains("parameter")), "{r:?}");
    // Rows come back only from SELECT ... FOR UPDATE or RETURNING.
    let r = t.sql(&d.q("INSERT INTO stock (id, sku, qty) VALUES (?, 'q', 1)")).bind(77i64).fetch_all().await;
    assert!(matches!(r, Err(AtError::Unsupported(ref m)) if m.contains("fetch_all")), "{:?}", r.err());
    assert_eq!(t.commit().await.unwrap(), None, "nothing imaged, no branch");
    assert!(c.client().get(&xid).await.unwrap().branches.is_empty());
    assert_eq!(d.snapshot("stock", STOCK_COLS, "id").await, original, "nothing changed");
    assert_eq!(d.snapshot("nokey", &["a", "b"], "a").await, vec!["1|1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_sql_is_refused_with_nothing_changed_on_postgres() {
    let c = Coordinator::start("at_ref").await;
    let d = PgBusiness::new("at_ref_p").await;
    unsupported_sql_is_refused(&d, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_sql_is_refused_with_nothing_changed_on_mariadb() {
    let c = Coordinator::start("at_refm").await;
    let d = MariaBusiness::new("at_ref_m").await;
    unsupported_sql_is_refused(&d, &c).await;
}

/// A statement that fails after it ran leaves the branch unable to commit:
/// commit rolls everything back, registers nothing.
async fn poisoned_transactions_do_not_commit<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
{
    d.exec("CREATE TABLE poison (id bigint PRIMARY KEY, v int NOT NULL); INSERT INTO poison VALUES (1, 1)").await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "poison", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql(&d.q("UPDATE poison SET v = 2 WHERE id = ?")).bind(1i64).execute().await.unwrap();
    // NOT NULL violated: the database refuses after AT imaged the row.
    let r = t.sql(&d.q("UPDATE poison SET v = NULL WHERE id = ?")).bind(1i64).execute().await;
    assert!(matches!(r, Err(AtError::Database(_))), "{r:?}");
    let r = t.commit().await;
    assert!(matches!(r, Err(AtError::Poisoned(_))), "{r:?}");
    assert_eq!(d.snapshot("poison", &["v"], "id").await, vec!["1"], "nothing committed");
    assert!(c.client().get(&xid).await.unwrap().branches.is_empty(), "no branch registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_and_identity_tables_roll_back_on_postgres() {
    let c = Coordinator::start("at_part").await;
    let d = PgBusiness::new("at_part_p").await;
    d.exec(
        "CREATE TABLE ev (region text, id int, v int NOT NULL, PRIMARY KEY (region, id)) PARTITION BY LIST (region); \
         CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu'); \
         CREATE TABLE ev_us PARTITION OF ev FOR VALUES IN ('us'); \
         INSERT INTO ev VALUES ('eu', 1, 10), ('us', 1, 20); \
         CREATE TABLE tick (id int PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY, v int NOT NULL); \
         INSERT INTO tick (id, v) VALUES (1, 5), (2, 6)",
    )
    .await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "events", LockRetry::default()).await;
    let ev = ["region", "id", "v"];
    let tick = ["id", "n", "v"];
    let (ev0, tick0) = (d.snapshot("ev", &ev, "region, id").await, d.snapshot("tick", &tick, "id").await);
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    // The two partitions' first rows share a ctid: only the eu row may change.
    let n = t.sql("UPDATE ev SET v = v + 1 WHERE region = $1 AND id = $2").bind("eu").bind(1i32).execute().await;
    assert_eq!(n.unwrap(), 1);
    assert_eq!(d.snapshot("ev", &["v"], "region, id").await, vec!["10", "20"], "not yet committed");
    t.sql("UPDATE tick SET v = 0 WHERE id = $1").bind(1i32).execute().await.unwrap();
    t.sql("DELETE FROM tick WHERE id = $1").bind(2i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("ev", &["v"], "region, id").await, vec!["11", "20"]);
    c.client().rollback(&xid, None).await.unwrap();
    wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    assert_eq!(d.snapshot("ev", &ev, "region, id").await, ev0);
    assert_eq!(d.snapshot("tick", &tick, "id").await, tick0, "identity values restored too");
}

/// Phase 1 in a session with one DateStyle and TimeZone, the rollback in a
/// session with others: the images still compare and restore exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_do_not_depend_on_the_sessions_date_style_or_time_zone() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr;
    let c = Coordinator::start("at_ds").await;
    let d = PgBusiness::new("at_ds_p").await;
    d.exec(
        "CREATE TABLE ev (id int PRIMARY KEY, d date, ts timestamp(6), tz timestamptz); \
         INSERT INTO ev VALUES (1, '2024-03-05', '2024-03-05 12:34:56.5', '2024-03-05 12:34:56.5+02')",
    )
    .await;
    // sqlx opens sessions with ISO / UTC; a service may SET others.
    let session = |style: &'static str, zone: &'static str| {
        let opts = PgConnectOptions::from_str(&d._db.url).unwrap();
        PgPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    let set = format!("SET datestyle = '{style}'; SET timezone = '{zone}'");
                    sqlx::Executor::execute(conn, set.as_str()).await.map(|_| ())
                })
            })
            .connect_lazy_with(opts)
    };
    // The participant that serves the callbacks reads in MDY / New York...
    let rollbacker =
        participant::<Pg>(session("SQL, MDY", "America/New_York"), &c.c.url, "events", LockRetry::default()).await;
    // ...the one that runs phase 1 in DMY / Tokyo, under the same resource name.
    let client = TandemClient::new(&c.c.url).unwrap();
    let writer = AtResource::<Pg>::new(session("SQL, DMY", "Asia/Tokyo"), client, "events", &rollbacker.url);
    let cols = ["d", "ts", "tz"];
    let original = d.snapshot("ev", &cols, "id").await;
    let xid = c.begin().await;
    let mut t = writer.begin(&xid).await.unwrap();
    t.sql("UPDATE ev SET d = d + 1, ts = ts + interval '1 day', tz = tz + interval '1 day' WHERE id = $1")
        .bind(1i32)
        .execute()
        .await
        .unwrap();
    t.commit().await.unwrap().expect("branch");
    assert_ne!(d.snapshot("ev", &cols, "id").await, original);
    c.client().rollback(&xid, None).await.unwrap();
    let tx = wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack, "{:?}", tx.branches[0].last_error);
    assert_eq!(d.snapshot("ev", &cols, "id").await, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_branch_refuses_to_join_a_transaction_that_takes_no_locks() {
    let c = Coordinator::start("at_mode").await;
    let d = PgBusiness::new("at_mode_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let tcc = c
        .client()
        .begin(&BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: None, three_phase: None })
        .await
        .unwrap();
    let mut t = p.at.begin(&tcc.xid).await.unwrap();
    t.sql("UPDATE stock SET qty = 0 WHERE id = $1").bind(1i64).execute().await.unwrap();
    let r = t.commit().await;
    assert!(matches!(r, Err(AtError::Unsupported(ref m)) if m.contains("AT transactions")), "{r:?}");
    assert_eq!(qty(&d, 1).await, vec!["10"], "nothing committed");
    let tx = c.client().get(&tcc.xid).await.unwrap();
    assert_eq!(tx.branches[0].status, BranchStatus::Phase1Failed, "the registered branch reported its failure");
    assert_eq!(tx.branches[0].global_locks, Some(false));
}

// ------------------------------------------------------------ crash recovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_killed_during_rollback_finishes_it_after_restart() {
    let coord_db = TestDb::new("at_kill").await;
    let mut first = Process::spawn(&coord_db.url, FAST_FLAGS).await;
    let d = PgBusiness::new("at_kill_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &first.url, "inventory", LockRetry::default()).await;
    let original = d.snapshot("stock", STOCK_COLS, "id").await;

    let req = BeginRequest { mode: Mode::At, name: None, timeout_ms: Some(60_000), three_phase: None };
    let xid = first.client.begin(&req).await.unwrap().xid;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("UPDATE stock SET qty = 0 WHERE id <= $1").bind(2i64).execute().await.unwrap();
    t.sql("INSERT INTO stock (id, sku, qty) VALUES ($1, 'z', 1)").bind(9i64).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");

    // The rollback callback reaches the participant and is held there; the
    // coordinator dies mid-rollback.
    p.gate.hold();
    first.client.rollback(&xid, Some(Duration::ZERO)).await.unwrap();
    eventually("rollback callback arrived", WAIT, || async {
        (p.gate.arrived.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    first.kill9().await;
    p.gate.release();

    // The held callback may have completed after the kill, or not; either way
    // a restarted coordinator finishes the rollback (idempotent at the SDK).
    let second = Process::spawn(&coord_db.url, FAST_FLAGS).await;
    let tx = wait_status(&second.client, &xid, "rolled_back", WAIT).await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack);
    assert_eq!(d.snapshot("stock", STOCK_COLS, "id").await, original);
    assert_eq!(d.undo_rows(&xid).await[0].1, 1);
}
