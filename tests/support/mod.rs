//! Test support: fresh databases, coordinators (in-process, through
//! `Application::spawn`, and as real processes that can be SIGKILLed), bank
//! participants with fault injection, and polling with a deadline.
#![allow(dead_code)]

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_coordinator::{Application, RunningCoordinator, Settings};
use tandem_sdk::tcc::{TccParticipant, CALLBACK_PATH};
use tandem_sdk::wire::{BeginRequest, Mode, Transaction, Xid};
use tandem_sdk::{RequestBuilderExt, TandemClient};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Server URL (no database) of the PostgreSQL the tests use.
pub fn pg_server() -> String {
    std::env::var("TANDEM_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Server URL of the PostgreSQL with prepared transactions enabled (scripts/xa-postgres.sh).
pub fn xa_pg_server() -> String {
    std::env::var("TANDEM_TEST_XA_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433".into())
}

/// A database created for one test and dropped after it.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    name: String,
    server: String,
}

impl TestDb {
    /// Creates `tandem_t_<tag>_<random>` on the default server.
    pub async fn new(tag: &str) -> TestDb {
        TestDb::new_on(&pg_server(), tag).await
    }

    /// Creates `tandem_t_<tag>_<random>` on `server`.
    pub async fn new_on(server: &str, tag: &str) -> TestDb {
        let name = format!("tandem_t_{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let mut admin = PgConnection::connect(&format!("{server}/postgres")).await.expect("connect admin");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
        TestDb { url: format!("{server}/{name}"), name, server: server.to_owned() }
    }

    /// A small pool on it.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new().max_connections(8).connect(&self.url).await.expect("pool")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = format!("{}/postgres", self.server);
        let url = self.url.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    // A failed XA test may leave prepared transactions, which block DROP DATABASE.
                    if let Ok(mut c) = PgConnection::connect(&url).await {
                        let gids: Vec<String> =
                            sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
                                .fetch_all(&mut c)
                                .await
                                .unwrap_or_default();
                        for g in gids {
                            let _ = sqlx::raw_sql(&format!("ROLLBACK PREPARED '{}'", g.replace('\'', "''")))
                                .execute(&mut c)
                                .await;
                        }
                    }
                    if let Ok(mut c) = PgConnection::connect(&admin).await {
                        let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut c)
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Server URL (no database) of the MariaDB the tests use.
pub fn mariadb_server() -> String {
    std::env::var("TANDEM_TEST_MARIADB").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A MariaDB database created for one test and dropped after it.
pub struct TestMariaDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl TestMariaDb {
    /// Creates `tandem_t_<tag>_<random>`.
    pub async fn new(tag: &str) -> TestMariaDb {
        use sqlx::MySqlConnection;
        let name = format!("tandem_t_{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let mut admin = MySqlConnection::connect(&mariadb_server()).await.expect("connect mariadb");
        sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str()).await.expect("create");
        TestMariaDb { url: format!("{}/{name}", mariadb_server()), name }
    }

    /// A small pool on it.
    pub async fn pool(&self) -> sqlx::MySqlPool {
        sqlx::mysql::MySqlPoolOptions::new().max_connections(8).connect(&self.url).await.expect("mariadb pool")
    }
}

impl Drop for TestMariaDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::MySqlConnection::connect(&mariadb_server()).await {
                        let _ =
                            sqlx::Executor::execute(&mut c, format!("DROP DATABASE IF EXISTS {name}").as_str()).await;
                    }
                });
            }
        })
        .join();
    }
}

/// Settings for fast tests: short recovery period, backoff, lease.
pub fn fast_settings(db_url: &str) -> Settings {
    let mut s = Settings::new(db_url);
    s.recovery_interval_ms = 50;
    s.retry_base_ms = 20;
    s.retry_max_ms = 200;
    s.callback_timeout_ms = 2_000;
    s.lease_ms = 4_000;
    s.db_max_connections = 8;
    s.db_relaxed_connections = 4;
    s
}

/// Process-level flags: quick recovery and a short lease so takeovers happen within seconds.
pub const FAST_FLAGS: &[&str] = &[
    "--recovery-interval-ms",
    "100",
    "--lease-ms",
    "2000",
    "--callback-timeout-ms",
    "1000",
    "--retry-base-ms",
    "50",
    "--retry-max-ms",
    "500",
];

/// Starts a coordinator inside the test process with `settings` (port 0),
/// and the SDK's client of it.
pub async fn spawn_coordinator(settings: Settings) -> (RunningCoordinator, TandemClient) {
    let c = Application::spawn(&settings).await.expect("start coordinator");
    let client = TandemClient::new(&c.url).expect("client");
    (c, client)
}

/// A free loopback port (bound and released).
pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

/// A `tandem serve` child process.
pub struct Process {
    /// Base URL.
    pub url: String,
    /// Client.
    pub client: TandemClient,
    child: tokio::process::Child,
}

impl Process {
    /// Spawns the real binary on a free port and waits for `/readyz`.
    pub async fn spawn(db_url: &str, extra: &[&str]) -> Process {
        let port = free_port().await;
        let addr = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["serve", "--listen", &addr, "--database-url", db_url])
            .args(extra)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tandem");
        let url = format!("http://{addr}");
        let p = Process { client: TandemClient::new(&url).expect("client"), url, child };
        let http = reqwest::Client::new();
        let ready = format!("{}/readyz", p.url);
        eventually("coordinator process ready", Duration::from_secs(30), || {
            let http = http.clone();
            let ready = ready.clone();
            async move { http.get(&ready).send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        p
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) {
        self.child.kill().await.expect("SIGKILL coordinator");
    }

    /// SIGTERM; returns the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s")
            .expect("wait")
    }
}

/// Polls `f` every 20 ms until it yields `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the coordinator until the transaction has `status`.
pub async fn wait_status(client: &TandemClient, xid: &Xid, status: &str, timeout: Duration) -> Transaction {
    eventually(&format!("transaction {xid} {status}"), timeout, || async {
        client.get(xid).await.ok().filter(|t| t.status.as_str() == status)
    })
    .await
}

/// One callback as a bank saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCallback {
    /// Which bank.
    pub bank: String,
    /// `commit` / `rollback`.
    pub action: String,
    /// Branch.
    pub branch_id: String,
}

/// Fault injection and observation on a bank's callback endpoint.
#[derive(Default)]
pub struct Faults {
    /// Answer 503 to this many more callbacks.
    pub fail_next: AtomicUsize,
    /// When set, callbacks wait for a permit here before they run.
    pub hold: Mutex<Option<Arc<Semaphore>>>,
    /// Callbacks that arrived (before faults apply).
    pub arrived: AtomicUsize,
}

impl Faults {
    /// Holds every callback until [`Faults::release`].
    pub fn hold_callbacks(&self) {
        *self.hold.lock().expect("lock") = Some(Arc::new(Semaphore::new(0)));
    }
    /// Lets held and future callbacks through.
    pub fn release(&self) {
        if let Some(s) = self.hold.lock().expect("lock").take() {
            s.add_permits(1_000);
        }
    }
}

/// Arrival order of callbacks across banks.
pub type CallLog = Arc<Mutex<Vec<SeenCallback>>>;

#[derive(Clone)]
struct FaultState {
    bank: String,
    faults: Arc<Faults>,
    log: CallLog,
}

async fn fault_layer(State(s): State<FaultState>, req: Request, next: Next) -> Response {
    if req.uri().path() != CALLBACK_PATH {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    if let Ok(cb) = serde_json::from_slice::<tandem_sdk::wire::CallbackRequest>(&bytes) {
        s.log.lock().expect("lock").push(SeenCallback {
            bank: s.bank.clone(),
            action: cb.action.as_str().into(),
            branch_id: cb.branch_id.to_string(),
        });
    }
    s.faults.arrived.fetch_add(1, Ordering::SeqCst);
    if s.faults.fail_next.load(Ordering::SeqCst) > 0 {
        s.faults.fail_next.fetch_sub(1, Ordering::SeqCst);
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "injected 503").into_response();
    }
    let gate = s.faults.hold.lock().expect("lock").clone();
    if let Some(gate) = gate {
        let _ = gate.acquire().await;
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

/// A bank participant service on loopback.
pub struct Bank {
    /// Name (for the call log).
    pub name: String,
    /// Base URL.
    pub url: String,
    /// Its database.
    pub pool: PgPool,
    /// The SDK participant.
    pub participant: TccParticipant,
    /// Fault injection.
    pub faults: Arc<Faults>,
    addr: SocketAddr,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    log: CallLog,
    coordinator_url: String,
}

impl Bank {
    /// Starts a bank on `db` (schema created) talking to `coordinator_url`.
    pub async fn start(name: &str, db: &TestDb, coordinator_url: &str, log: CallLog) -> Bank {
        let pool = db.pool().await;
        let bank = Bank::serve(name, pool, coordinator_url, log, Arc::new(Faults::default()), "127.0.0.1:0").await;
        tandem_example_bank::setup(&bank.participant).await.expect("bank schema");
        bank
    }

    async fn serve(
        name: &str,
        pool: PgPool,
        coordinator_url: &str,
        log: CallLog,
        faults: Arc<Faults>,
        bind: &str,
    ) -> Bank {
        let listener = TcpListener::bind(bind).await.expect("bind bank");
        let addr = listener.local_addr().expect("addr");
        let url = format!("http://{addr}");
        let client = TandemClient::new(coordinator_url).expect("client");
        let participant = tandem_example_bank::participant(pool.clone(), client, &url);
        let state = FaultState { bank: name.into(), faults: faults.clone(), log: log.clone() };
        let app = tandem_example_bank::router(participant.clone())
            .layer(axum::middleware::from_fn_with_state(state, fault_layer));
        let token = CancellationToken::new();
        let t = token.clone();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(t.cancelled_owned()).await;
        });
        Bank {
            name: name.into(),
            url,
            pool,
            participant,
            faults,
            addr,
            token,
            handle,
            log,
            coordinator_url: coordinator_url.into(),
        }
    }

    /// Stops serving (connections are refused until [`Bank::restart`]).
    pub async fn stop(&self) {
        self.token.cancel();
    }

    /// Serves again on the same port, database and faults.
    pub async fn restart(self) -> Bank {
        self.token.cancel();
        let _ = self.handle.await;
        let bind = self.addr.to_string();
        Bank::serve(&self.name, self.pool, &self.coordinator_url, self.log, self.faults, &bind).await
    }

    /// Posts a transfer leg inside `xid`; returns the branch id or the error status.
    pub async fn leg(&self, xid: &Xid, account: &str, amount: i64, direction: &str) -> Result<String, u16> {
        let r = reqwest::Client::new()
            .post(format!("{}/legs", self.url))
            .xid(xid)
            .json(&serde_json::json!({"account": account, "amount": amount, "direction": direction}))
            .send()
            .await
            .expect("leg request");
        if r.status() != 200 {
            return Err(r.status().as_u16());
        }
        let v: serde_json::Value = r.json().await.expect("leg json");
        Ok(v["branch_id"].as_str().expect("branch_id").to_owned())
    }

    /// `(balance, frozen, incoming)` of an account.
    pub async fn balance(&self, account: &str) -> (i64, i64, i64) {
        let b = tandem_example_bank::balance(&self.pool, account).await.expect("balance").expect("account exists");
        (b.balance, b.frozen, b.incoming)
    }

    /// How many times `step` ran for a branch.
    pub async fn steps(&self, branch_id: &str, step: &str) -> i64 {
        tandem_example_bank::step_count(&self.pool, branch_id, step).await.expect("step count")
    }
}

/// A coordinator and two banks (alice at A with `alice` cents, bob at B with 0).
pub struct World {
    /// Coordinator database.
    pub db: TestDb,
    /// Bank A's database.
    pub db_a: TestDb,
    /// Bank B's database.
    pub db_b: TestDb,
    /// Callback arrival order across both banks.
    pub log: CallLog,
}

impl World {
    /// Creates the three databases.
    pub async fn new(tag: &str) -> World {
        World {
            db: TestDb::new(tag).await,
            db_a: TestDb::new(&format!("{tag}_a")).await,
            db_b: TestDb::new(&format!("{tag}_b")).await,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts both banks against `coordinator_url` and opens the accounts.
    pub async fn banks(&self, coordinator_url: &str, alice: i64) -> (Bank, Bank) {
        let a = Bank::start("a", &self.db_a, coordinator_url, self.log.clone()).await;
        let b = Bank::start("b", &self.db_b, coordinator_url, self.log.clone()).await;
        tandem_example_bank::open_account(&a.pool, "alice", alice).await.expect("open alice");
        tandem_example_bank::open_account(&b.pool, "bob", 0).await.expect("open bob");
        (a, b)
    }
}

/// Begins a TCC transaction and runs both legs (debit alice at A, credit bob at B).
pub async fn begin_transfer(client: &TandemClient, a: &Bank, b: &Bank, amount: i64) -> (Xid, String, String) {
    let tx = client
        .begin(&BeginRequest { mode: Mode::Tcc, name: Some("transfer".into()), timeout_ms: None, three_phase: None })
        .await
        .expect("begin");
    let branch_a = a.leg(&tx.xid, "alice", amount, "debit").await.expect("debit leg");
    let branch_b = b.leg(&tx.xid, "bob", amount, "credit").await.expect("credit leg");
    (tx.xid, branch_a, branch_b)
}

/// A participant that answers 200 to every callback; returns its callback URL.
pub async fn ok_participant() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/cb", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route("/cb", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// A participant that answers 200 and records the branch id of every callback.
pub async fn recording_participant() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/cb", listener.local_addr().expect("addr"));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move |axum::Json(cb): axum::Json<tandem_sdk::wire::CallbackRequest>| {
            let s = s.clone();
            async move {
                s.lock().expect("lock").push(cb.branch_id.to_string());
                "ok"
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

/// A participant answering every callback with `status` (its body says
/// which); counts the calls.
pub async fn answering(status: u16) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/cb", listener.local_addr().expect("addr"));
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                let code = axum::http::StatusCode::from_u16(status).expect("status");
                (code, format!("answered {status}"))
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, calls)
}

/// A TCC transaction named `name` with one prepared branch at `url`, commit requested.
pub async fn committed_to(client: &TandemClient, name: &str, url: &str) -> Xid {
    let begin = BeginRequest { mode: Mode::Tcc, name: Some(name.into()), timeout_ms: Some(60_000), three_phase: None };
    let tx = client.begin(&begin).await.expect("begin");
    let reg = tandem_sdk::wire::RegisterBranchRequest {
        resource: "payment".into(),
        callback_url: url.into(),
        payload: None,
        lock_keys: None,
    };
    let b = client.register(&tx.xid, &reg).await.expect("register");
    client
        .report(
            &tx.xid,
            &b.branch_id,
            &tandem_sdk::wire::ReportRequest { status: tandem_sdk::wire::ReportStatus::Prepared, detail: None },
        )
        .await
        .expect("report");
    let _ = client.commit(&tx.xid, Some(Duration::from_millis(0))).await.expect("commit");
    tx.xid
}
