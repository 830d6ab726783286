//! `tandem-bench`: throughput and latency of whole global transactions.
//!
//! Starts the coordinator (the same server code as `tandem serve`) on a
//! loopback port and `--branches` no-op participants, each its own HTTP server.
//! `--concurrency` clients then run, for `--duration-secs`, complete global
//! transactions over real HTTP: begin, register every branch, commit (which
//! returns only once phase 2 delivered every callback). The last line printed
//! is one JSON object with the figures.
//!
//! `--mode saga` submits `--branches`-step sequential sagas instead (one
//! `POST /v1/sagas` that answers once every action succeeded). `--mode
//! dtmrs-saga` starts no coordinator: it runs the same sagas, with the same
//! clients and no-op participants, against a DTM-compatible coordinator at
//! `--dtm-url` (dtmrs, `scripts/bench-dtmrs.sh`).

use anyhow::{bail, Context};
use clap::Parser;
use futures::FutureExt;
use hdrhistogram::Histogram;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_coordinator::{Application, RunningCoordinator, Settings};
use tandem_sdk::at::{AtParticipant, Pg};
use tandem_sdk::three_phase::{ThreePhaseParticipant, ThreePhaseWork};
use tandem_sdk::wire::{
    BeginRequest, DeliveryRequest, GlobalStatus, MessageRequest, Mode, RegisterBranchRequest, SagaRequest,
    SagaStepRequest,
};
use tandem_sdk::xa::{PgXa, XaParticipant};
use tandem_sdk::{BoxError, TandemClient};
use tokio::sync::oneshot;

/// The same allocator as the `tandem` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tandem-bench", about = "Benchmark whole global transactions against a real coordinator")]
struct Args {
    /// `tcc` (no-op participants), `xa` (PostgreSQL participants that PREPARE
    /// one UPDATE each), `local` (the same UPDATEs in one local transaction,
    /// no coordinator: the baseline of `xa`), `at` (one AT branch running one
    /// one-row UPDATE: images, undo row, global lock), or `local1` (that one
    /// UPDATE in a plain local transaction: the baseline of `at`), or `3pc`
    /// (three-phase commit: each participant votes with a SELECT, then
    /// pre-commits the same UPDATE as `xa` under PREPARE TRANSACTION), or
    /// `saga` (a sequential saga of `--branches` steps, each step's action and
    /// compensation on its own no-op participant), or `dtmrs-saga` (the same
    /// saga submitted to the DTM-compatible coordinator at `--dtm-url`;
    /// Tandem is not started), or `msg` (two-phase messages: prepare, then
    /// submit answered once `--branches` no-op HTTP consumers acknowledged),
    /// `msg-nats` (one delivery each, to NATS JetStream at `--nats`), or
    /// `dtmrs-msg` (the `msg` workload against `--dtm-url`).
    #[arg(long, value_enum, default_value_t = BenchMode::Tcc)]
    mode: BenchMode,
    /// PostgreSQL server (no database name) for the `xa` and `local` participants'
    /// databases; needs max_prepared_transactions > 0 for `xa`.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5433")]
    participant_pg: String,
    /// Branches per global transaction, or steps per saga (one no-op
    /// participant each).
    #[arg(long, default_value_t = 2)]
    branches: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured duration.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Connections of the coordinator's synchronous-commit pool.
    #[arg(long, default_value_t = 32)]
    db_connections: u32,
    /// Connections of its asynchronous-commit pool.
    #[arg(long, default_value_t = 16)]
    db_relaxed_connections: u32,
    /// Tokio worker threads of the benchmark process (coordinator, clients and
    /// participants share them); 0 means one per core.
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Print committed transactions per second while running (to stderr).
    #[arg(long)]
    progress: bool,
    /// PostgreSQL URL of the coordinator's database (migrated at start).
    /// Required by every mode but `dtmrs-saga`.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// `dtmrs-saga`: base URL of the DTM HTTP API (`/api/dtmsvr/...`), for
    /// example `http://127.0.0.1:36789`.
    #[arg(long)]
    dtm_url: Option<String>,
    /// `msg-nats`: the NATS server (with JetStream) the messages go to; the
    /// stream `TANDEM_BENCH` (subject `tandem.bench`) is created if absent.
    #[arg(long, default_value = "127.0.0.1:4222")]
    nats: String,
    /// `dtmrs-saga`: pause between two `GET /api/dtmsvr/query` polls of a
    /// saga whose last action has been called but that is not `succeed` yet.
    #[arg(long, default_value_t = 1)]
    dtm_poll_ms: u64,
}

/// What `--mode` measures (see [`Args::mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchMode {
    /// TCC with no-op participants.
    Tcc,
    /// XA: PostgreSQL participants that PREPARE one UPDATE each.
    Xa,
    /// The baseline of `xa`: the same UPDATEs in one local transaction.
    Local,
    /// One AT branch running a one-row UPDATE.
    At,
    /// The baseline of `at`: that UPDATE in a local transaction.
    Local1,
    /// Three-phase commit.
    #[value(name = "3pc")]
    ThreePc,
    /// A sequential saga through `POST /v1/sagas`, no-op participants.
    Saga,
    /// The same saga against a DTM HTTP API (dtmrs), no-op participants.
    DtmrsSaga,
    /// The same DTM saga, the same client, against Tandem's own DTM API
    /// (`/api/dtmsvr` of a coordinator this benchmark starts).
    DtmSaga,
    /// Two-phase messages: prepare, submit, every delivery acknowledged by
    /// a no-op HTTP consumer (`--branches` deliveries).
    Msg,
    /// The same messages, each delivered to NATS JetStream (`--nats`),
    /// confirmed by the stream.
    MsgNats,
    /// The same messages against a DTM HTTP API (dtmrs): prepare, submit,
    /// delivered to the no-op consumers.
    DtmrsMsg,
    /// The SDK's outbox, no coordinator: a local transaction enqueues one
    /// message, and the iteration ends when the relay delivered it to an
    /// HTTP consumer.
    Outbox,
}

impl BenchMode {
    /// Its name on the command line and in the JSON result.
    fn as_str(self) -> &'static str {
        match self {
            BenchMode::Tcc => "tcc",
            BenchMode::Xa => "xa",
            BenchMode::Local => "local",
            BenchMode::At => "at",
            BenchMode::Local1 => "local1",
            BenchMode::ThreePc => "3pc",
            BenchMode::Saga => "saga",
            BenchMode::DtmrsSaga => "dtmrs-saga",
            BenchMode::DtmSaga => "dtm-saga",
            BenchMode::Msg => "msg",
            BenchMode::MsgNats => "msg-nats",
            BenchMode::DtmrsMsg => "dtmrs-msg",
            BenchMode::Outbox => "outbox",
        }
    }

    /// Whether `--branches` applies.
    fn has_branches(self) -> bool {
        matches!(
            self,
            BenchMode::Tcc
                | BenchMode::Xa
                | BenchMode::Local
                | BenchMode::ThreePc
                | BenchMode::Saga
                | BenchMode::DtmrsSaga
                | BenchMode::DtmSaga
                | BenchMode::Msg
                | BenchMode::DtmrsMsg
        )
    }

    /// What one iteration is, in the summary line.
    fn unit(self, branches: usize) -> String {
        match self {
            BenchMode::Saga | BenchMode::DtmrsSaga | BenchMode::DtmSaga => format!("finished {branches}-step sagas"),
            BenchMode::Msg | BenchMode::DtmrsMsg => format!("delivered {branches}-delivery messages"),
            BenchMode::MsgNats => "messages delivered to NATS".to_owned(),
            BenchMode::Outbox => "outbox messages relayed to HTTP".to_owned(),
            _ => format!("committed {branches}-branch transactions"),
        }
    }

    /// Whether it runs against a DTM HTTP API instead of Tandem.
    fn is_dtm(self) -> bool {
        matches!(self, BenchMode::DtmrsSaga | BenchMode::DtmrsMsg | BenchMode::DtmSaga)
    }
}

/// Starts a participant that answers 200 to every callback; returns its callback URL.
async fn noop_participant(calls: Arc<AtomicU64>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/callback", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::post(move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// The answer of a saga participant's no-op action and compensation.
const APPLIED: &str = r#"{"outcome":"applied"}"#;

/// Sagas whose last action the no-op participants are to announce: gid →
/// the client waiting for it (`dtmrs-saga`, `dtmrs-msg`; see [`Dtm::run`]).
type LastActionWaiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// Starts a saga participant: `POST /action` and `POST /compensate` answer
/// 200 [`APPLIED`] to any body and any query string (DTM adds `gid`,
/// `trans_type`, `branch_id` and `op`). Returns its base URL.
///
/// With `waiters`, an action call whose `branch_id` is `last_branch` also
/// wakes the client waiting for that gid, if any: a hint that the saga is
/// about to finish, so that the client polls the coordinator only then.
async fn saga_participant(
    calls: Arc<AtomicU64>,
    waiters: Option<(LastActionWaiters, String)>,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let json = || [(axum::http::header::CONTENT_TYPE, "application/json")];
    let compensate_calls = calls.clone();
    let app = axum::Router::new()
        .route(
            "/action",
            axum::routing::post(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
                let calls = calls.clone();
                let waiters = waiters.clone();
                async move {
                    calls.fetch_add(1, Ordering::Relaxed);
                    if let (Some((waiters, last)), Some(query)) = (waiters, query) {
                        let param =
                            |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
                        if param("op") == Some("action") && param("branch_id") == Some(last.as_str()) {
                            if let Some(gid) = param("gid") {
                                let waiter = waiters.lock().ok().and_then(|mut w| w.remove(gid));
                                if let Some(waiter) = waiter {
                                    let _ = waiter.send(());
                                }
                            }
                        }
                    }
                    (json(), APPLIED)
                }
            }),
        )
        .route(
            "/compensate",
            axum::routing::post(move || {
                let calls = compensate_calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::Relaxed);
                    (json(), APPLIED)
                }
            }),
        );
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// The saga of `saga` and `dtmrs-saga`: one step per participant base URL,
/// run in list order, each with the payload `{}`.
fn saga_steps(participants: &[String]) -> Vec<(String, String)> {
    participants.iter().map(|p| (format!("{p}/action"), format!("{p}/compensate"))).collect()
}

/// What a [`Dtm`] workload submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DtmKind {
    /// A saga: one `submit` with the steps.
    Saga,
    /// A two-phase message: `prepare` with the actions, then `submit`.
    Msg,
}

/// `dtmrs-saga`, `dtmrs-msg`: sagas or messages submitted to a DTM HTTP API.
struct Dtm {
    /// Saga or message.
    kind: DtmKind,
    /// Base URL of the coordinator (`http://host:port`).
    base: String,
    /// Keep-alive connections to it (as many as clients, reused).
    http: reqwest::Client,
    /// Each step's action and compensation URL.
    steps: Vec<(String, String)>,
    /// Clients waiting for their saga's last action (see [`saga_participant`]).
    waiters: LastActionWaiters,
    /// Pause between two status polls.
    poll: Duration,
    /// Prefix of the gids: unique to this run.
    gid_prefix: String,
    /// `GET /api/dtmsvr/query` calls made, in total.
    polls: AtomicU64,
}

impl Dtm {
    /// Longest a saga may take, from its submission to `succeed`.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// Runs one saga: `POST /api/dtmsvr/submit`, then waits until `GET
    /// /api/dtmsvr/query` says `succeed`.
    ///
    /// dtmrs 0.13 answers the submit once the saga is stored and drives it in
    /// the background (it has no `wait_result`; the field is sent for DTM and
    /// ignored). So the client waits for the hint that the last step's action
    /// was called, then asks for the saga's status every `poll` (the first
    /// time `poll` after the hint) until it is `succeed`, which dtmrs records
    /// after that action's answer: the saga counts only once the coordinator
    /// reports it finished, and the coordinator is asked one to three times
    /// per saga rather than all along.
    async fn run(&self, gid: String) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().map_err(|_| anyhow::anyhow!("waiters poisoned"))?.insert(gid.clone(), tx);
        let r = self.submit_and_wait(&gid, rx).await;
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(&gid);
        }
        r
    }

    /// `POST /api/dtmsvr/{op}` with `body`; anything but 200 `SUCCESS` is an error.
    async fn call(&self, op: &str, body: &serde_json::Value) -> anyhow::Result<()> {
        let answer = self.http.post(format!("{}/api/dtmsvr/{op}", self.base)).json(body).send().await?;
        let status = answer.status();
        let answer: serde_json::Value =
            answer.json().await.with_context(|| format!("{op} answered {status} without JSON"))?;
        if status != reqwest::StatusCode::OK || answer.get("dtm_result").and_then(|r| r.as_str()) != Some("SUCCESS") {
            bail!("{op} answered {status}: {answer}");
        }
        Ok(())
    }

    async fn submit_and_wait(&self, gid: &str, last: oneshot::Receiver<()>) -> anyhow::Result<()> {
        let deadline = Instant::now() + Self::DEADLINE;
        let steps: Vec<_> = self
            .steps
            .iter()
            .map(|(action, compensate)| serde_json::json!({ "action": action, "compensate": compensate, "payload": "{}" }))
            .collect();
        let payloads: Vec<&str> = self.steps.iter().map(|_| "{}").collect();
        match self.kind {
            DtmKind::Saga => {
                let body = serde_json::json!({
                    "gid": gid, "trans_type": "saga", "steps": steps, "payloads": payloads, "wait_result": true,
                });
                self.call("submit", &body).await?;
            }
            DtmKind::Msg => {
                let actions: Vec<&str> = self.steps.iter().map(|(action, _)| action.as_str()).collect();
                // The back-check is never reached: every message is submitted at once.
                let check = self.steps.first().map(|(_, c)| c.as_str()).unwrap_or_default();
                let body = serde_json::json!({
                    "gid": gid, "trans_type": "msg", "actions": actions, "payloads": payloads,
                    "query_prepared": check,
                });
                self.call("prepare", &body).await?;
                self.call("submit", &serde_json::json!({ "gid": gid, "trans_type": "msg" })).await?;
            }
        }
        // The hint may never come (an action retried, the saga failing): the
        // polls below decide in any case.
        let _ = tokio::time::timeout_at(deadline.into(), last).await;
        let query = format!("{}/api/dtmsvr/query", self.base);
        loop {
            // The hint comes with the last action's call: its answer and the
            // saga's end are still to be recorded.
            tokio::time::sleep(self.poll).await;
            self.polls.fetch_add(1, Ordering::Relaxed);
            let answer = self.http.get(&query).query(&[("gid", gid)]).send().await?;
            let status = answer.status();
            let answer: serde_json::Value =
                answer.json().await.with_context(|| format!("query answered {status} without JSON"))?;
            if status != reqwest::StatusCode::OK {
                bail!("query answered {status}: {answer}");
            }
            // DTM answers `{"transaction": {"status"…}, "branches"}` (Tandem
            // too); dtmrs 0.13 answers the transaction's fields flat.
            let tx = answer.get("transaction").filter(|t| t.is_object()).unwrap_or(&answer);
            match tx.get("status").and_then(|s| s.as_str()) {
                Some("succeed") => return Ok(()),
                Some("failed") => bail!("saga {gid} failed: {}", tx["rollback_reason"]),
                other => {
                    if Instant::now() >= deadline {
                        bail!("saga {gid} still {other:?} after {:?}", Self::DEADLINE);
                    }
                }
            }
        }
    }
}

/// `outbox`: one service's outbox and relay, and an HTTP consumer that
/// tells each waiting client its message arrived.
struct OutboxBench {
    /// The service's database.
    pool: PgPool,
    /// Its outbox.
    outbox: tandem_sdk::outbox::Outbox,
    /// The consumer's URL.
    url: String,
    /// Clients waiting for their message, by message id.
    waiters: LastActionWaiters,
    /// Stops the relay (at the end of the process).
    _relay: tokio_util::sync::DropGuard,
}

impl OutboxBench {
    async fn start(database_url: &str, connections: u32, calls: Arc<AtomicU64>) -> anyhow::Result<OutboxBench> {
        let pool = PgPoolOptions::new().max_connections(connections).connect(database_url).await?;
        let outbox = tandem_sdk::outbox::Outbox::new(pool.clone());
        outbox.install().await?;
        let waiters = LastActionWaiters::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/outbox", listener.local_addr()?);
        let w = waiters.clone();
        let app = axum::Router::new().route(
            "/outbox",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let (w, calls) = (w.clone(), calls.clone());
                async move {
                    calls.fetch_add(1, Ordering::Relaxed);
                    let id = headers.get(tandem_sdk::wire::MESSAGE_ID_HEADER).and_then(|v| v.to_str().ok());
                    if let Some(waiter) = id.and_then(|id| w.lock().ok()?.remove(id)) {
                        let _ = waiter.send(());
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        serve(listener, app);
        let cancel = tokio_util::sync::CancellationToken::new();
        outbox.relay(tandem_brokers::Brokers::empty(), Default::default())?.spawn(cancel.clone());
        Ok(OutboxBench { pool, outbox, url, waiters, _relay: cancel.drop_guard() })
    }

    /// One message: enqueued with its business row in a local transaction
    /// (client `row`'s key), committed, then delivered by the relay.
    async fn run(&self, row: i32) -> anyhow::Result<()> {
        use tandem_sdk::outbox::{OutboxMessage, OutboxTarget};
        let mut tx = self.pool.begin().await?;
        let msg = OutboxMessage::new(format!("client-{row}"), OutboxTarget::http(&self.url), serde_json::json!({}));
        let enqueued = self.outbox.enqueue(&mut tx, &msg).await?;
        let (done, arrived) = oneshot::channel();
        self.waiters.lock().map_err(|_| anyhow::anyhow!("waiters poisoned"))?.insert(enqueued.message_id.clone(), done);
        tx.commit().await?;
        self.outbox.wake();
        let r = tokio::time::timeout(Duration::from_secs(10), arrived).await;
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(&enqueued.message_id);
        }
        r.context("not delivered within 10 s")?.context("waiter dropped")?;
        Ok(())
    }
}

/// The per-client state of one load-generating client.
struct Client {
    /// Its own row (`xa`, `at`, `local`...).
    row: i32,
    /// Iterations started (`dtmrs-saga`: part of the gid).
    seq: u64,
}

/// What each client does, once per iteration.
enum Workload {
    /// TCC: register no-op branches (callback URLs), commit.
    Tcc(Vec<String>),
    /// XA: one prepared UPDATE per participant database, commit.
    Xa(Vec<XaParticipant>),
    /// The same UPDATEs in one local transaction on the first participant database.
    Local(PgPool),
    /// AT: one branch, one one-row UPDATE through the SDK, commit.
    At(AtParticipant<Pg>),
    /// The one UPDATE in a plain local transaction.
    Local1(PgPool),
    /// 3PC: join every participant with the row in the payload, commit.
    ThreePc(Vec<ThreePhaseParticipant>),
    /// Saga: submit the saga, wait for `committed`.
    Saga(SagaRequest),
    /// The same saga, or messages, against a DTM HTTP API.
    Dtm(Dtm),
    /// Messages: prepare, submit, wait for `delivered`.
    Msg(MessageRequest),
    /// The outbox: enqueue in a local transaction, wait for the relay's delivery.
    Outbox(OutboxBench),
}

/// The 3PC participant's work: vote yes if the account exists; PreCommit runs [`UPDATE`].
struct Accounts;

#[async_trait::async_trait]
impl ThreePhaseWork for Accounts {
    async fn can_commit(&self, pool: &PgPool, payload: &serde_json::Value) -> Result<bool, BoxError> {
        let row = payload.get("row").and_then(|r| r.as_i64()).ok_or("payload without row")?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)")
            .bind(i32::try_from(row)?)
            .fetch_one(pool)
            .await?;
        Ok(exists)
    }

    async fn execute(&self, conn: &mut PgConnection, payload: &serde_json::Value) -> Result<(), BoxError> {
        let row = payload.get("row").and_then(|r| r.as_i64()).ok_or("payload without row")?;
        sqlx::query(UPDATE).bind(i32::try_from(row)?).execute(conn).await?;
        Ok(())
    }
}

/// The statement of every branch: client `row` owns its own row (no lock waits between clients).
const UPDATE: &str = "UPDATE accounts SET balance = balance + 1 WHERE id = $1";

/// Creates (afresh) a participant database with one account row per client.
async fn participant_db(server: &str, name: &str, rows: usize) -> anyhow::Result<PgPool> {
    let mut admin = PgConnection::connect(&format!("{server}/postgres")).await?;
    // `name` is one of this program's constants.
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
    let pool = PgPoolOptions::new().max_connections(24).connect(&format!("{server}/{name}")).await?;
    sqlx::raw_sql("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)").execute(&pool).await?;
    sqlx::query("INSERT INTO accounts SELECT g, 0 FROM generate_series(0, $1) g")
        .bind(rows as i32)
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// Participant `i`'s database (`tandem_bench_p{i}`), a loopback listener for
/// its callbacks, and that listener's base URL.
async fn participant_endpoint(args: &Args, i: usize) -> anyhow::Result<(PgPool, tokio::net::TcpListener, String)> {
    let pool = participant_db(&args.participant_pg, &format!("tandem_bench_p{i}"), args.concurrency).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((pool, listener, url))
}

/// Serves a participant's callback router in the background.
fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// One complete iteration: a global transaction, or the local baseline.
/// Returns how long the branch's own part took, where that is separate (AT:
/// from the local BEGIN to the local COMMIT after the locks were granted).
async fn one(client: Option<&TandemClient>, work: &Workload, c: &mut Client) -> anyhow::Result<Option<Duration>> {
    let row = c.row;
    c.seq += 1;
    let mode = match work {
        Workload::Dtm(dtm) => {
            dtm.run(format!("{}-{row}-{}", dtm.gid_prefix, c.seq)).await?;
            return Ok(None);
        }
        Workload::Outbox(o) => {
            o.run(c.row).await?;
            return Ok(None);
        }
        Workload::Msg(req) => {
            let client = client.context("no coordinator")?;
            let prepared = client.prepare_message(req, None).await?;
            let done = client.submit_message(&prepared.xid, None).await?;
            if !done.finished || done.transaction.status != GlobalStatus::Delivered {
                bail!("message ended {} (finished: {})", done.transaction.status, done.finished);
            }
            return Ok(None);
        }
        Workload::Saga(req) => {
            let client = client.context("no coordinator")?;
            let done = client.submit_saga(req, None, None).await?;
            if !done.finished || done.transaction.status != GlobalStatus::Committed {
                bail!("saga ended {} (finished: {})", done.transaction.status, done.finished);
            }
            return Ok(None);
        }
        Workload::Local(pool) | Workload::Local1(pool) => {
            let n = if matches!(work, Workload::Local(_)) { 2 } else { 1 };
            let mut tx = pool.begin().await?;
            for _ in 0..n {
                sqlx::query(UPDATE).bind(row).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            return Ok(None);
        }
        Workload::Tcc(_) => Mode::Tcc,
        Workload::Xa(_) => Mode::Xa,
        Workload::At(_) => Mode::At,
        Workload::ThreePc(_) => Mode::ThreePc,
    };
    let client = client.context("no coordinator")?;
    let mut branch_time = None;
    let tx = client.begin(&BeginRequest { mode, name: None, timeout_ms: None, three_phase: None }).await?;
    match work {
        Workload::Tcc(callbacks) => {
            for (i, url) in callbacks.iter().enumerate() {
                let req = RegisterBranchRequest {
                    resource: format!("noop-{i}"),
                    callback_url: url.clone(),
                    payload: Some(serde_json::json!({ "i": i })),
                    lock_keys: None,
                };
                client.register(&tx.xid, &req).await?;
            }
        }
        Workload::Xa(participants) => {
            for p in participants {
                p.run(&tx.xid, move |c| {
                    async move {
                        sqlx::query(UPDATE).bind(row).execute(&mut *c).await?;
                        Ok(())
                    }
                    .boxed()
                })
                .await?;
            }
        }
        Workload::At(at) => {
            let t0 = Instant::now();
            let mut local = at.begin(&tx.xid).await?;
            local.sql(UPDATE).bind(row).execute().await?;
            local.commit().await?;
            branch_time = Some(t0.elapsed());
        }
        Workload::ThreePc(participants) => {
            for p in participants {
                p.join(&tx.xid, serde_json::json!({ "row": row })).await?;
            }
        }
        Workload::Local(_)
        | Workload::Local1(_)
        | Workload::Saga(_)
        | Workload::Dtm(_)
        | Workload::Msg(_)
        | Workload::Outbox(_) => {}
    }
    let done = client.commit(&tx.xid, None).await?;
    if !done.finished || done.transaction.status != GlobalStatus::Committed {
        bail!("commit ended {} (finished: {})", done.transaction.status, done.finished);
    }
    Ok(branch_time)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        rt.worker_threads(args.worker_threads);
    }
    rt.enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let calls = Arc::new(AtomicU64::new(0));
    if args.mode.is_dtm() {
        // dtm-saga: Tandem's DTM API, on a coordinator started here as for every Tandem mode.
        let tandem = match args.mode {
            BenchMode::DtmSaga => {
                let database_url =
                    args.database_url.as_deref().context("--database-url (or DATABASE_URL) is required")?;
                let mut settings = Settings::new(database_url);
                settings.db_max_connections = args.db_connections;
                settings.db_relaxed_connections = args.db_relaxed_connections;
                Some(Application::spawn(&settings).await.context("start coordinator")?)
            }
            _ => None,
        };
        let url = match &tandem {
            Some(c) => c.url.clone(),
            None => args.dtm_url.clone().context("--mode dtmrs-saga and dtmrs-msg need --dtm-url")?,
        };
        let waiters = LastActionWaiters::default();
        let last = format!("{:02}", args.branches); // DTM's branch id of the last step
        let mut participants = Vec::new();
        for _ in 0..args.branches {
            participants.push(saga_participant(calls.clone(), Some((waiters.clone(), last.clone()))).await?);
        }
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
        let kind = if args.mode == BenchMode::DtmrsMsg { DtmKind::Msg } else { DtmKind::Saga };
        let work = Workload::Dtm(Dtm {
            kind,
            base: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(args.concurrency).build()?,
            steps: saga_steps(&participants),
            waiters,
            poll: Duration::from_millis(args.dtm_poll_ms),
            gid_prefix: format!("bench-{started}"),
            polls: AtomicU64::new(0),
        });
        return bench(args, None, work, calls, tandem).await;
    }

    let database_url = args.database_url.as_deref().context("--database-url (or DATABASE_URL) is required")?;
    if args.mode == BenchMode::Outbox {
        let work = Workload::Outbox(OutboxBench::start(database_url, args.db_connections, calls.clone()).await?);
        return bench(args, None, work, calls, None).await;
    }
    let mut settings = Settings::new(database_url);
    if args.mode == BenchMode::MsgNats {
        let spec = format!(
            "bench=nats://{}?subject=tandem.bench&stream=TANDEM_BENCH",
            args.nats.trim_start_matches("nats://")
        );
        settings.destinations.push(spec.parse().map_err(|e| anyhow::anyhow!("--nats {}: {e}", args.nats))?);
    }
    settings.db_max_connections = args.db_connections;
    settings.db_relaxed_connections = args.db_relaxed_connections;
    let coordinator = Application::spawn(&settings).await.context("start coordinator")?;

    let client = TandemClient::new(&coordinator.url)?;
    let work = match args.mode {
        BenchMode::Saga => {
            let mut participants = Vec::new();
            for _ in 0..args.branches {
                participants.push(saga_participant(calls.clone(), None).await?);
            }
            let steps = saga_steps(&participants)
                .into_iter()
                .enumerate()
                .map(|(i, (action_url, compensate_url))| SagaStepRequest {
                    name: Some(format!("s{}", i + 1)),
                    action_url,
                    compensate_url,
                    payload: Some(serde_json::json!({})),
                    after: None,
                })
                .collect();
            Workload::Saga(SagaRequest { name: None, timeout_ms: None, retry_limit: None, steps })
        }
        BenchMode::DtmrsSaga | BenchMode::DtmrsMsg | BenchMode::DtmSaga | BenchMode::Outbox => {
            bail!("{} starts no coordinator", args.mode.as_str())
        }
        BenchMode::Msg | BenchMode::MsgNats => {
            let mut deliveries = Vec::new();
            if args.mode == BenchMode::MsgNats {
                deliveries.push(DeliveryRequest {
                    name: None,
                    url: None,
                    destination: Some("bench".into()),
                    payload: Some(serde_json::json!({})),
                });
            } else {
                for _ in 0..args.branches {
                    let p = saga_participant(calls.clone(), None).await?;
                    deliveries.push(DeliveryRequest {
                        name: None,
                        url: Some(format!("{p}/action")),
                        destination: None,
                        payload: Some(serde_json::json!({})),
                    });
                }
            }
            let check = saga_participant(calls.clone(), None).await?;
            Workload::Msg(MessageRequest {
                name: None,
                timeout_ms: None,
                check_url: format!("{check}/compensate"),
                order: None,
                deliveries,
            })
        }
        BenchMode::Tcc => {
            let mut callbacks = Vec::new();
            for _ in 0..args.branches {
                callbacks.push(noop_participant(calls.clone()).await?);
            }
            Workload::Tcc(callbacks)
        }
        BenchMode::Local => {
            Workload::Local(participant_db(&args.participant_pg, "tandem_bench_p0", args.concurrency).await?)
        }
        BenchMode::Local1 => {
            Workload::Local1(participant_db(&args.participant_pg, "tandem_bench_p0", args.concurrency).await?)
        }
        BenchMode::At => {
            let (pool, listener, url) = participant_endpoint(&args, 0).await?;
            let at = AtParticipant::<Pg>::builder(pool, client.clone(), "bench", &url).build();
            at.install().await?;
            serve(listener, at.router());
            Workload::At(at)
        }
        BenchMode::ThreePc => {
            let mut participants = Vec::new();
            for i in 0..args.branches {
                let (pool, listener, url) = participant_endpoint(&args, i).await?;
                let p = ThreePhaseParticipant::builder(pool, client.clone(), &format!("p{i}"), &url, Accounts).build();
                p.check().await?;
                p.install().await?;
                serve(listener, p.router());
                participants.push(p);
            }
            Workload::ThreePc(participants)
        }
        BenchMode::Xa => {
            let mut participants = Vec::new();
            for i in 0..args.branches {
                let (pool, listener, url) = participant_endpoint(&args, i).await?;
                let p = XaParticipant::builder(PgXa::new(pool), client.clone(), &format!("p{i}"), &url).build();
                p.check().await?;
                serve(listener, p.router());
                participants.push(p);
            }
            Workload::Xa(participants)
        }
    };
    bench(args, Some(client), work, calls, Some(coordinator)).await
}

/// Runs the clients for the warm-up and the measured duration, then prints
/// the figures (`coordinator`: Tandem, stopped at the end; `None` for
/// `dtmrs-saga`).
async fn bench(
    args: Args,
    client: Option<TandemClient>,
    work: Workload,
    calls: Arc<AtomicU64>,
    coordinator: Option<RunningCoordinator>,
) -> anyhow::Result<()> {
    let work = Arc::new(work);

    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.duration_secs);
    let done = Arc::new(AtomicU64::new(0));
    if args.progress {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            for second in 1.. {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                eprintln!("t={second:>3}s {:>6} tx/s", now - last);
                last = now;
            }
        });
    }
    let mut workers = Vec::new();
    for row in 0..args.concurrency {
        let client = client.clone();
        let work = work.clone();
        let done = done.clone();
        let mut state = Client { row: row as i32, seq: 0 };
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut branch_hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut errors = 0u64;
            let mut last_error = None;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = one(client.as_ref(), &work, &mut state).await;
                if r.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                if t0 < measure_from {
                    continue;
                }
                match r {
                    Ok(branch) => {
                        let _ = hist.record(t0.elapsed().as_micros() as u64);
                        if let Some(b) = branch {
                            let _ = branch_hist.record(b.as_micros() as u64);
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        last_error = Some(e.to_string());
                    }
                }
            }
            (hist, branch_hist, errors, last_error)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut branch_hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for w in workers {
        let (h, b, e, last) = w.await?;
        hist.add(&h)?;
        branch_hist.add(&b)?;
        errors += e;
        if let Some(last) = last {
            eprintln!("error (one of {e} in a client): {last}");
        }
    }
    if let Some(coordinator) = coordinator {
        let metrics = coordinator.coordinator().metrics().clone();
        coordinator.stop().await?;

        // Where the time went: every database call of the coordinator, by statement.
        eprintln!("database calls (count, mean ms):");
        for (query, count, sum) in metrics.db_summary() {
            eprintln!("  {query:<28} {count:>8} {:>8.3}", if count > 0 { sum * 1000.0 / count as f64 } else { 0.0 });
        }
    }
    let tx = hist.len();
    let secs = args.duration_secs as f64;
    let mut result = serde_json::json!({
        "mode": args.mode.as_str(),
        "branches": if args.mode.has_branches() { args.branches } else { 1 },
        "concurrency": args.concurrency,
        "tx": tx,
        "tx_per_sec": (tx as f64 / secs * 10.0).round() / 10.0,
        "p50_ms": hist.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "errors": errors,
        // Iterations that succeeded, warm-up included (to divide server counters by).
        "tx_total": done.load(Ordering::Relaxed),
    });
    if let Workload::Dtm(dtm) = &*work {
        // Includes the warm-up, like the callbacks count.
        let started = done.load(Ordering::Relaxed).max(1);
        result["query_polls_per_saga"] =
            serde_json::json!((dtm.polls.load(Ordering::Relaxed) as f64 / started as f64 * 100.0).round() / 100.0);
    }
    if !branch_hist.is_empty() {
        result["branch_p50_ms"] = serde_json::json!(branch_hist.value_at_quantile(0.50) as f64 / 1000.0);
        result["branch_p99_ms"] = serde_json::json!(branch_hist.value_at_quantile(0.99) as f64 / 1000.0);
    }
    println!(
        "{} {} in {}s with {} clients ({} callbacks delivered in total)",
        tx,
        args.mode.unit(args.branches),
        args.duration_secs,
        args.concurrency,
        calls.load(Ordering::Relaxed)
    );
    println!("{result}");
    Ok(())
}
