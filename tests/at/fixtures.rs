//! What every AT test uses: a coordinator in this process, participant
//! services over HTTP, the business databases of both kinds, the stock table.

use super::*;

/// Holds callbacks at a participant until released; counts arrivals.
#[derive(Default)]
pub(crate) struct Gate {
    pub(crate) hold: Mutex<Option<Arc<Semaphore>>>,
    pub(crate) arrived: AtomicUsize,
}

impl Gate {
    pub(crate) fn hold(&self) {
        *self.hold.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    }
    pub(crate) fn release(&self) {
        if let Some(s) = self.hold.lock().unwrap().take() {
            s.add_permits(1_000);
        }
    }
}

pub(crate) async fn gate_layer(State(g): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    g.arrived.fetch_add(1, Ordering::SeqCst);
    let held = g.hold.lock().unwrap().clone();
    if let Some(s) = held {
        let _ = s.acquire().await;
    }
    next.run(req).await
}

/// An AT participant service: the SDK's callback router on a loopback port.
pub(crate) struct Participant<B: AtBackend> {
    pub(crate) at: AtParticipant<B>,
    pub(crate) gate: Arc<Gate>,
    /// Its base URL (the SDK appends the callback path).
    pub(crate) url: String,
}

pub(crate) async fn participant<B: AtBackend>(
    pool: sqlx::Pool<B::Db>,
    coordinator: &str,
    resource: &str,
    retry: LockRetry,
) -> Participant<B> {
    participant_with(pool, coordinator, resource, |b| b.lock_retry(retry)).await
}

/// [`participant`] with the resource's options set by `configure`.
pub(crate) async fn participant_with<B: AtBackend>(
    pool: sqlx::Pool<B::Db>,
    coordinator: &str,
    resource: &str,
    configure: impl FnOnce(AtParticipantBuilder<B>) -> AtParticipantBuilder<B>,
) -> Participant<B> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let at =
        configure(AtParticipant::<B>::builder(pool, TandemClient::new(coordinator).unwrap(), resource, &url)).build();
    let callback = url.clone();
    at.install().await.unwrap();
    let gate = Arc::new(Gate::default());
    let app = at.router().layer(axum::middleware::from_fn_with_state(gate.clone(), gate_layer));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Participant { at, gate, url: callback }
}

pub(crate) fn patient() -> LockRetry {
    LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_secs(30) }
}

/// A coordinator in this process on a fresh database.
pub(crate) struct Coordinator {
    pub(crate) c: RunningCoordinator,
    pub(crate) client: TandemClient,
    pub(crate) _db: TestDb,
}

impl Coordinator {
    pub(crate) async fn start(tag: &str) -> Coordinator {
        let db = TestDb::new(tag).await;
        let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
        Coordinator { c, client, _db: db }
    }
    pub(crate) fn client(&self) -> &TandemClient {
        &self.client
    }
    pub(crate) async fn begin(&self) -> Xid {
        let req =
            BeginRequest { mode: Mode::At, name: Some("at-test".into()), timeout_ms: Some(60_000), three_phase: None };
        self.client().begin(&req).await.unwrap().xid
    }
}

/// A business database of one kind.
pub(crate) trait Business {
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

pub(crate) struct PgBusiness {
    pub(crate) _db: TestDb,
    pub(crate) pool: PgPool,
}

impl PgBusiness {
    pub(crate) async fn new(tag: &str) -> PgBusiness {
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

pub(crate) struct MariaBusiness {
    pub(crate) _db: TestMariaDb,
    pub(crate) pool: MySqlPool,
}

impl MariaBusiness {
    pub(crate) async fn new(tag: &str) -> MariaBusiness {
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

pub(crate) const STOCK_COLS: &[&str] = &["id", "sku", "qty", "note"];

pub(crate) async fn stock<D: Business>(d: &D) {
    d.exec(
        "CREATE TABLE stock (id bigint PRIMARY KEY, sku varchar(20) NOT NULL, qty int NOT NULL, note text); \
         INSERT INTO stock VALUES (1, 'a', 10, NULL), (2, 'b', 20, 'x'), (3, 'c', 30, NULL)",
    )
    .await;
}

/// The undo-row key the SDK registered as the (only) branch's payload.
pub(crate) async fn undo_key(c: &Coordinator, xid: &Xid) -> String {
    let tx = c.client().get(xid).await.unwrap();
    tx.branches[0].payload.as_ref().and_then(|p| p["undo_key"].as_str()).expect("undo_key in the payload").to_owned()
}

pub(crate) async fn qty<D: Business>(d: &D, id: i64) -> Vec<String> {
    d.snapshot(&format!("stock WHERE id = {id}"), &["qty"], "id").await
}
