//! The participant role: this test binary, re-executed with
//! [`ROLE_ENV`] holding a [`Spec`], serves one bank of one mode until it
//! is killed.
//!
//! Every bank answers `POST /legs` (a [`LegRequest`] inside the global
//! transaction named by `Tandem-Xid`; 200 once the leg's phase 1 holds,
//! 409 when the bank refuses it: insufficient funds, a lock it could not
//! get, a branch already rolled back; anything else when it failed),
//! `GET /healthz`, and its mode's callback:
//!
//! - TCC on PostgreSQL: `examples/bank` as it is (its router, its steps,
//!   the SDK's [`tandem_sdk::tcc::TccParticipant`]);
//! - TCC on MariaDB: [`crate::mysql_tcc`];
//! - XA: the SDK's [`XaParticipant`] (PostgreSQL, or MariaDB: the SDK's
//!   `MySqlXa`, see [`crate::mariadb_xa`]), the leg's debit or
//!   credit and its `leg_log` row as plain SQL in the branch, and the SDK's
//!   participant-side recovery every second;
//! - AT: the SDK's [`AtParticipant`], the same statements through its executor.
//!
//! Every session waits at most 3 s for a row lock (`lock_timeout`,
//! `innodb_lock_wait_timeout`): prepared XA branches hold their locks until
//! phase 2, and a leg waiting behind one of a partitioned or dead
//! coordinator's must fail (and roll back) rather than hang.

use crate::mysql_tcc::{MyTccBank, TryError};
use crate::Mode;
use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, MySqlConnection, MySqlPool, PgConnection, PgPool};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tandem_example_bank::{Direction, Leg};
use tandem_sdk::at::{AtBackend, AtError, AtParam, AtParticipant, MySqlDb, Pg};
use tandem_sdk::wire::signature::SigningKey;
use tandem_sdk::wire::Xid;
use tandem_sdk::xa::{MySqlXa, PgXa, XaBackend, XaError, XaParticipant};
use tandem_sdk::{BoxError, GlobalXid, TandemClient};

/// The environment variable that makes this binary a participant.
pub const ROLE_ENV: &str = "CHAOS_PARTICIPANT";

/// What a participant process serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// Its name in logs (`tcc-a`).
    pub name: String,
    /// The mode it serves.
    pub mode: Mode,
    /// Its database (`postgres://` or `mysql://`).
    pub db_url: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// How the coordinators reach it.
    pub public_url: String,
    /// The coordinator it registers its branches with.
    pub coordinator_url: String,
    /// XA recovery: a prepared branch the coordinator does not know is
    /// rolled back once this old (presumed abort).
    pub presume_abort_ms: u64,
    /// Its `participant` API token, when the coordinators authenticate.
    pub token: Option<String>,
    /// The key the coordinators sign callbacks with (hex): callbacks are
    /// verified with it.
    pub callback_key: Option<String>,
}

/// The body of `POST /legs`: a leg of `examples/bank` with the client's id for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegRequest {
    /// Account id.
    pub account: String,
    /// Amount in cents.
    pub amount: i64,
    /// Debit or credit.
    pub direction: Direction,
    /// The client's id of this leg (XA and AT log it).
    pub leg_id: String,
}

/// Runs the participant; returns only if it cannot start.
pub fn main(spec: &str) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let spec: Spec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("participant: bad {ROLE_ENV}: {e}");
            return ExitCode::from(2);
        }
    };
    watch_parent();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("participant {}: tokio runtime: {e}", spec.name);
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(&spec)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("participant {}: {e:#}", spec.name);
            ExitCode::FAILURE
        }
    }
}

/// Exits when the suite that started this process is gone (its pid as our
/// parent changes), so that a killed suite leaves no participant behind.
fn watch_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(3);
        }
    });
}

/// Retries a connection for a while: the database is up, but a fresh
/// process may race the server's connection limit or a slow start.
async fn connect<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "connecting to {what}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {what}")),
        }
    }
}

async fn pg_pool(url: &str) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::from_str(url)?.options([("lock_timeout", "3000")]);
    connect(url, || PgPoolOptions::new().max_connections(8).connect_with(opts.clone())).await
}

async fn my_pool(url: &str) -> anyhow::Result<MySqlPool> {
    connect(url, || {
        MySqlPoolOptions::new()
            .max_connections(8)
            .after_connect(|c, _| {
                Box::pin(async move {
                    c.execute("SET SESSION innodb_lock_wait_timeout = 3").await?;
                    Ok(())
                })
            })
            .connect(url)
    })
    .await
}

async fn serve(spec: &Spec) -> anyhow::Result<()> {
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).connect_timeout(Duration::from_secs(1)).build()?;
    let mut client = TandemClient::with_http(&spec.coordinator_url, http)?;
    if let Some(token) = &spec.token {
        client = client.with_token(token.clone());
    }
    if let Some(key) = &spec.callback_key {
        client = client.with_callback_key(SigningKey::from_hex(key).context("the callback key")?);
    }
    let base = spec.public_url.as_str();
    let mysql = spec.db_url.starts_with("mysql:");
    let presume = Duration::from_millis(spec.presume_abort_ms);
    let app = match (spec.mode, mysql) {
        (Mode::Tcc, false) => {
            let p = tandem_example_bank::participant(pg_pool(&spec.db_url).await?, client, base);
            tandem_example_bank::router(p)
        }
        (Mode::Tcc, true) => {
            let bank = MyTccBank::new(my_pool(&spec.db_url).await?, client, base);
            Router::new().route("/legs", post(tcc_my_leg)).with_state(bank.clone()).merge(bank.router())
        }
        (Mode::Xa, false) => {
            let xa = XaParticipant::builder(PgXa::new(pg_pool(&spec.db_url).await?), client, "bank", base).build();
            xa.check().await?;
            xa.spawn_recovery(Duration::from_secs(1), presume);
            Router::new().route("/legs", post(xa_leg::<PgXa>)).with_state(xa.clone()).merge(xa.router())
        }
        (Mode::Xa, true) => {
            let xa = XaParticipant::builder(MySqlXa::new(my_pool(&spec.db_url).await?), client, "bank", base).build();
            xa.check().await?;
            xa.spawn_recovery(Duration::from_secs(1), presume);
            Router::new().route("/legs", post(xa_leg::<MySqlXa>)).with_state(xa.clone()).merge(xa.router())
        }
        (Mode::At, false) => {
            let at = AtParticipant::<Pg>::builder(pg_pool(&spec.db_url).await?, client, "bank", base).build();
            Router::new().route("/legs", post(at_leg::<Pg>)).with_state(at.clone()).merge(at.router())
        }
        (Mode::At, true) => {
            let at = AtParticipant::<MySqlDb>::builder(my_pool(&spec.db_url).await?, client, "bank", base).build();
            Router::new().route("/legs", post(at_leg::<MySqlDb>)).with_state(at.clone()).merge(at.router())
        }
    };
    let app = app.route("/healthz", get(|| async { "ok" }));
    let listener =
        tokio::net::TcpListener::bind(spec.listen).await.with_context(|| format!("binding {}", spec.listen))?;
    tracing::info!(name = %spec.name, listen = %spec.listen, "serving");
    axum::serve(listener, app).await?;
    Ok(())
}

/// A refusal: 409 with the reason.
fn refused(why: impl std::fmt::Display) -> Response {
    (StatusCode::CONFLICT, why.to_string()).into_response()
}

/// A failure that is not a refusal: 503, logged.
fn failed(why: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %why, "leg failed");
    (StatusCode::SERVICE_UNAVAILABLE, why.to_string()).into_response()
}

fn accepted(branch_id: Option<String>) -> Response {
    (StatusCode::OK, Json(serde_json::json!({ "branch_id": branch_id }))).into_response()
}

fn no_xid() -> Response {
    (StatusCode::BAD_REQUEST, "a leg runs inside a global transaction (Tandem-Xid)").into_response()
}

fn insufficient(account: &str) -> String {
    format!("insufficient funds or no account {account:?}")
}

async fn tcc_my_leg(State(bank): State<MyTccBank>, GlobalXid(xid): GlobalXid, Json(l): Json<LegRequest>) -> Response {
    let Some(xid) = xid else { return no_xid() };
    let leg = Leg { account: l.account, amount: l.amount, direction: l.direction };
    match bank.try_leg(&xid, &leg).await {
        Ok(branch) => accepted(Some(branch.to_string())),
        Err(e @ (TryError::Refused(_) | TryError::Suspended(_))) => refused(e),
        Err(e @ TryError::Coordinator(_)) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        Err(e @ TryError::Database(_)) => failed(e),
    }
}

/// The statement of a leg's debit or credit, bound to (amount, account);
/// on MySQL a debit binds the amount a second time (positional `?`, where
/// PostgreSQL reuses `$1`).
fn leg_sql(direction: Direction, mysql: bool) -> &'static str {
    match (direction, mysql) {
        (Direction::Debit, false) => "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1",
        (Direction::Credit, false) => "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
        (Direction::Debit, true) => "UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?",
        (Direction::Credit, true) => "UPDATE accounts SET balance = balance + ? WHERE id = ?",
    }
}

async fn xa_pg_work(c: &mut PgConnection, xid: String, l: LegRequest) -> Result<(), BoxError> {
    let n = sqlx::query(leg_sql(l.direction, false)).bind(l.amount).bind(&l.account).execute(&mut *c).await?;
    if n.rows_affected() == 0 {
        return Err(insufficient(&l.account).into());
    }
    sqlx::query("INSERT INTO leg_log (id, xid, leg_id) VALUES ($1, $2, $3)")
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(xid)
        .bind(&l.leg_id)
        .execute(c)
        .await?;
    Ok(())
}

async fn xa_my_work(c: &mut MySqlConnection, xid: String, l: LegRequest) -> Result<(), BoxError> {
    let mut q = sqlx::query(leg_sql(l.direction, true)).bind(l.amount).bind(&l.account);
    if l.direction == Direction::Debit {
        q = q.bind(l.amount);
    }
    if q.execute(&mut *c).await?.rows_affected() == 0 {
        return Err(insufficient(&l.account).into());
    }
    sqlx::query("INSERT INTO leg_log (id, xid, leg_id) VALUES (?, ?, ?)")
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(xid)
        .bind(&l.leg_id)
        .execute(c)
        .await?;
    Ok(())
}

fn xa_answer(r: Result<(), XaError>) -> Response {
    match r {
        Ok(()) => accepted(None),
        Err(XaError::Phase1(e)) => refused(e),
        Err(e) => failed(e),
    }
}

/// A backend whose connection runs a leg's plain SQL.
trait XaLeg: XaBackend {
    /// The leg's debit or credit and its `leg_log` row, on the branch's connection.
    fn work(c: &mut Self::Conn, xid: String, l: LegRequest) -> BoxFuture<'_, Result<(), BoxError>>;
}

impl XaLeg for PgXa {
    fn work(c: &mut PgConnection, xid: String, l: LegRequest) -> BoxFuture<'_, Result<(), BoxError>> {
        xa_pg_work(c, xid, l).boxed()
    }
}

impl XaLeg for MySqlXa {
    fn work(c: &mut MySqlConnection, xid: String, l: LegRequest) -> BoxFuture<'_, Result<(), BoxError>> {
        xa_my_work(c, xid, l).boxed()
    }
}

async fn xa_leg<B: XaLeg>(
    State(xa): State<XaParticipant<B>>,
    GlobalXid(xid): GlobalXid,
    Json(l): Json<LegRequest>,
) -> Response {
    let Some(xid) = xid else { return no_xid() };
    let key = xid.to_string();
    // Its own task, so that a client giving up on the leg (its request
    // dropped) cannot cut phase 1 short between XA PREPARE and the SDK
    // closing the session: MariaDB keeps a session bound to the branch it
    // prepared, and that connection, back in the pool, would fail every
    // XA START after it (1399 XAER_RMFAIL).
    let phase1 = tokio::spawn(async move { xa.run(&xid, move |c| B::work(c, key, l)).await });
    xa_answer(phase1.await.unwrap_or_else(|e| Err(XaError::Phase1(e.into()))))
}

/// How many times an AT leg runs again after [`AtError::Concurrent`]: its
/// statement met a row changed between its image and its write (another
/// leg's local transaction on the same account committed meanwhile), and
/// the SDK asks for the local transaction to be run again.
const AT_ATTEMPTS: usize = 5;

/// What an AT leg's local transaction came to.
enum AtLeg {
    /// Committed locally and registered (the branch, if anything was written).
    Held(Option<String>),
    /// The debit found too little: nothing written, no branch.
    Insufficient,
}

fn at_answer(r: Result<AtLeg, AtError>, account: &str) -> Response {
    match r {
        Ok(AtLeg::Held(branch)) => accepted(branch),
        Ok(AtLeg::Insufficient) => refused(insufficient(account)),
        Err(e @ (AtError::LockConflict { .. } | AtError::Suspended { .. })) => refused(e),
        Err(e) => failed(e),
    }
}

/// One run of an AT leg's local transaction (PostgreSQL or MySQL, whose
/// placeholders differ).
async fn at_once<B: AtBackend>(at: &AtParticipant<B>, xid: &Xid, l: &LegRequest) -> Result<AtLeg, AtError>
where
    i64: AtParam<B::Db>,
    String: AtParam<B::Db>,
{
    let mysql = <B::Db as sqlx::Database>::NAME == <sqlx::MySql as sqlx::Database>::NAME;
    let mut tx = at.begin(xid).await?;
    let mut q = tx.sql(leg_sql(l.direction, mysql)).bind(l.amount).bind(l.account.clone());
    if mysql && l.direction == Direction::Debit {
        q = q.bind(l.amount);
    }
    if q.execute().await? == 0 {
        // Nothing imaged: dropping the transaction registers no branch.
        return Ok(AtLeg::Insufficient);
    }
    let log = if mysql {
        "INSERT INTO leg_log (id, xid, leg_id) VALUES (?, ?, ?)"
    } else {
        "INSERT INTO leg_log (id, xid, leg_id) VALUES ($1, $2, $3)"
    };
    tx.sql(log).bind(uuid::Uuid::new_v4().to_string()).bind(xid.to_string()).bind(l.leg_id.clone()).execute().await?;
    Ok(AtLeg::Held(tx.commit().await?.map(|b| b.to_string())))
}

async fn at_leg<B: AtBackend>(
    State(at): State<AtParticipant<B>>,
    GlobalXid(xid): GlobalXid,
    Json(l): Json<LegRequest>,
) -> Response
where
    i64: AtParam<B::Db>,
    String: AtParam<B::Db>,
{
    let Some(xid) = xid else { return no_xid() };
    let mut attempt = 1;
    loop {
        match at_once(&at, &xid, &l).await {
            Err(AtError::Concurrent(_)) if attempt < AT_ATTEMPTS => attempt += 1,
            r => return at_answer(r, &l.account),
        }
    }
}
