//! `shop`: one order across three services with their own databases, in
//! every transaction mode Tandem serves.
//!
//! ```text
//! cargo run -p tandem-examples --bin shop -- --mode tcc|xa|at|saga|msg|3pc|all [--serve] [-v]
//! ```
//!
//! The services are separate OS processes (this binary re-executed with the
//! hidden subcommand `shop service orders|inventory|payment|shipping`):
//! **orders** and **inventory** on PostgreSQL, **payment** on MariaDB (a
//! heterogeneous system; on PostgreSQL where MariaDB is not reachable, and
//! in TCC and 3PC, whose SDK participants are PostgreSQL-only), and in
//! message mode a **shipping** consumer. The coordinator runs inside this
//! process on its own PostgreSQL database, with short retry delays so that
//! recovery shows within a second. For each mode the demo creates the
//! databases afresh (`<prefix>_<mode>_<service>`), starts the services, and
//! runs three scenarios, each a global transaction named
//! `shop.<mode>.<scenario>`:
//!
//! 1. `ok`: alice orders 2 widgets; everything commits;
//! 2. `declined`: bob orders a gadget he cannot pay; payment declines and
//!    every service ends as before (compensated or rolled back);
//! 3. `crash`: alice orders a gadget and one service is killed with SIGKILL
//!    at a point where only the coordinator's recovery can finish the
//!    order (payment when phase 2 reaches it, or as its saga action
//!    answers; in message mode the producer between its local commit and
//!    its submit), then restarted; the demo polls until the transaction
//!    ends.
//!
//! Each prints the stock, balances, orders (and shipments) before and
//! after, the xid and final status, and a ✓ or ✗ verdict; the exit status
//! is 0 only if every scenario ended as expected. XA and 3PC need a
//! PostgreSQL with `max_prepared_transactions > 0`: `--pg` if it has it,
//! else `--xa-pg` (started with `scripts/xa-postgres.sh` if it does not
//! answer), else those modes are skipped with the reason. `--serve` keeps
//! everything running afterwards for the console.

mod db;
mod model;
mod procs;
mod service;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use db::{Dbs, PaymentDb, Row, Snapshot};
use model::{DiePoint, Kind, MsgOrder, MsgPlaced, OrderLine, ShopMode};
use procs::Service;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tandem_coordinator::{Application, Settings};
use tandem_examples::{finish, AfterDemo};
use tandem_sdk::client::ListQuery;
use tandem_sdk::saga::Saga;
use tandem_sdk::wire::{BeginRequest, GlobalStatus, Mode, Transaction, Xid, XID_HEADER};
use tandem_sdk::TandemClient;

#[derive(Debug, Parser)]
#[command(
    name = "shop",
    about = "An order across orders, inventory and payment services (separate processes and databases), in every Tandem mode",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one of the shop's services (started by the demo itself).
    #[command(hide = true)]
    Service(service::ServiceArgs),
}

/// Which modes to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Tcc,
    Xa,
    At,
    Saga,
    Msg,
    #[value(name = "3pc")]
    ThreePc,
    All,
}

#[derive(Debug, Clone, clap::Args)]
struct DemoArgs {
    /// The mode to show, or all of them.
    #[arg(long, value_enum, default_value = "all")]
    mode: ModeArg,
    /// PostgreSQL server (no database name): the coordinator's, orders', inventory's databases.
    #[arg(long, env = "TANDEM_DEMO_PG", default_value = "postgres://postgres@127.0.0.1:5432")]
    pg: String,
    /// MariaDB server (no database name): payment's database.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mariadb: String,
    /// PostgreSQL server with max_prepared_transactions > 0, for XA and 3PC when `--pg` has none.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5433")]
    xa_pg: String,
    /// Where the coordinator listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Prefix of every database the demo creates (and of its log folder).
    #[arg(long, default_value = "shop", value_parser = parse_prefix)]
    db_prefix: String,
    /// Show the services' and the coordinator's logs in the terminal.
    #[arg(short, long)]
    verbose: bool,
    /// Keep the coordinator and the services running afterwards (Ctrl-C stops).
    #[arg(long)]
    serve: bool,
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("lowercase letters, digits and _, starting with a letter, at most 40".into())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Service(args)) => {
            tracing_subscriber::fmt()
                .with_env_filter(env_filter())
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .init();
            match service::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shop service: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        None => match demo(cli.demo).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("shop: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
}

/// Settings of the demo's coordinator: retries and recovery within a
/// fraction of a second, so that the crash scenarios finish quickly.
fn settings(database_url: String, listen: SocketAddr) -> Settings {
    let mut s = Settings::new(database_url);
    s.listen = listen;
    s.retry_base_ms = 50;
    s.retry_max_ms = 400;
    s.recovery_interval_ms = 100;
    s.callback_timeout_ms = 2_000;
    s.lease_ms = 4_000;
    s.db_max_connections = 12;
    s.db_relaxed_connections = 6;
    s.shutdown_grace_ms = 2_000;
    s
}

/// The scenarios, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Ok,
    Declined,
    Crash,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Ok, Scenario::Declined, Scenario::Crash];

    fn as_str(self) -> &'static str {
        match self {
            Scenario::Ok => "ok",
            Scenario::Declined => "declined",
            Scenario::Crash => "crash",
        }
    }

    fn line(self) -> OrderLine {
        let (customer, sku, qty, price) = match self {
            Scenario::Ok => ("alice", "widget", 2, 20),
            Scenario::Declined => ("bob", "gadget", 1, 150),
            Scenario::Crash => ("alice", "gadget", 1, 150),
        };
        OrderLine { customer: customer.into(), sku: sku.into(), qty, amount: i64::from(qty) * price }
    }

    /// What the scenario does, in one line.
    fn story(self, mode: ShopMode) -> String {
        let l = self.line();
        let order = format!("{} orders {} × {} ({})", l.customer, l.qty, l.sku, l.amount);
        let how = match (self, mode) {
            (Scenario::Ok, _) => "should commit everywhere",
            (Scenario::Declined, ShopMode::Msg) => {
                "payment declines (balance 100) inside orders' local transaction: no message goes out"
            }
            (Scenario::Declined, ShopMode::Saga) => "payment's action declines (balance 100): the saga compensates",
            (Scenario::Declined, ShopMode::ThreePc) => "payment votes no at CanCommit (balance 100): abort",
            (Scenario::Declined, _) => "payment declines (balance 100): rolled back everywhere",
            (Scenario::Crash, ShopMode::Msg) => {
                "orders is SIGKILLed after its local commit, before its submit; the back-check settles it"
            }
            (Scenario::Crash, ShopMode::Saga) => {
                "payment is SIGKILLed after its action committed, before answering; the coordinator retries"
            }
            (Scenario::Crash, _) => "payment is SIGKILLed when phase 2 reaches it; the coordinator retries",
        };
        format!("{order}: {how}")
    }
}

/// Where each mode's databases live.
struct Servers {
    /// `--pg`.
    pg: String,
    /// A server that can prepare transactions, or why there is none.
    xa: Result<String, String>,
    /// MariaDB, or why not.
    mariadb: Result<String, String>,
}

/// One mode's running services and its databases.
struct ModeRun {
    mode: ShopMode,
    services: BTreeMap<Kind, Service>,
    dbs: Dbs,
    /// Where its databases are, to print under the mode's header.
    notes: Vec<String>,
}

impl ModeRun {
    fn service(&mut self, kind: Kind) -> anyhow::Result<&mut Service> {
        self.services.get_mut(&kind).ok_or_else(|| anyhow!("no {} service in this mode", kind.as_str()))
    }
    fn url(&self, kind: Kind) -> String {
        self.services.get(&kind).map(|s| s.url.clone()).unwrap_or_default()
    }
}

/// Everything a scenario needs.
struct Ctx {
    client: TandemClient,
    http: reqwest::Client,
}

fn log_dir(prefix: &str) -> PathBuf {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    target.canonicalize().unwrap_or(target).join("shop-logs").join(prefix)
}

async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let logs = log_dir(&args.db_prefix);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    if args.verbose {
        tracing_subscriber::fmt().with_env_filter(env_filter()).with_writer(std::io::stderr).init();
    } else {
        let file = std::fs::File::create(logs.join("coordinator.log"))?;
        tracing_subscriber::fmt()
            .with_env_filter(env_filter())
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
    }
    let modes: Vec<ShopMode> = match args.mode {
        ModeArg::All => ShopMode::ALL.to_vec(),
        ModeArg::Tcc => vec![ShopMode::Tcc],
        ModeArg::Xa => vec![ShopMode::Xa],
        ModeArg::At => vec![ShopMode::At],
        ModeArg::Saga => vec![ShopMode::Saga],
        ModeArg::Msg => vec![ShopMode::Msg],
        ModeArg::ThreePc => vec![ShopMode::ThreePc],
    };
    let explicit = args.mode != ModeArg::All;
    let prefix = &args.db_prefix;
    let pg = args.pg.trim_end_matches('/').to_owned();

    println!("shop: one order across orders, inventory and payment, each its own OS process and database");
    if args.verbose {
        println!("logs: here (-v)");
    } else {
        println!("logs: {} (-v to show them here)", logs.display());
    }
    let coordinator_db = db::fresh_pg(&pg, &format!("{prefix}_coordinator"), "").await?;
    let coordinator =
        Application::spawn(&settings(coordinator_db, args.listen)).await.context("starting the coordinator")?;
    let url = coordinator.url.clone();
    println!("coordinator: {url} (in this process; retries every 50-400 ms, recovery scan every 100 ms)");

    let mariadb = mariadb_reachable(args.mariadb.trim_end_matches('/')).await;
    match &mariadb {
        Ok(m) => {
            println!("payment: MariaDB at {m} (PostgreSQL in TCC and 3PC: their SDK participants are PostgreSQL-only)")
        }
        Err(e) => println!("payment: MariaDB not reachable ({e}); payment runs on PostgreSQL in every mode"),
    }
    let xa = if modes.iter().any(|m| matches!(m, ShopMode::Xa | ShopMode::ThreePc)) {
        let xa = xa_server(&pg, args.xa_pg.trim_end_matches('/')).await;
        match &xa {
            Ok((_, note)) => println!("prepared transactions (XA, 3PC): {note}"),
            Err(e) => println!("prepared transactions (XA, 3PC): none available: {e}"),
        }
        xa.map(|(server, _)| server)
    } else {
        Err("not needed".into())
    };
    let servers = Servers { pg, xa, mariadb };
    let ctx = Ctx {
        client: TandemClient::new(&url)?,
        http: reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?,
    };

    let (mut expected, mut total, mut failed_explicit) = (0usize, 0usize, false);
    let mut skipped = Vec::new();
    let mut runs = Vec::new();
    // Every mode's databases and services at once: most of it is waiting.
    let log_to = (!args.verbose).then_some(logs.as_path());
    let setups = futures::future::join_all(modes.iter().map(|&mode| {
        let (servers, ctx, url) = (&servers, &ctx, url.as_str());
        async move {
            let prepared = matches!(mode, ShopMode::Xa | ShopMode::ThreePc);
            match &servers.xa {
                Err(why) if prepared => Err(format!(
                    "skipped: {} needs a PostgreSQL with max_prepared_transactions > 0 ({why})",
                    mode.as_str()
                )),
                _ => setup(mode, servers, prefix, url, ctx, log_to)
                    .await
                    .map_err(|e| format!("✗ could not start the {} services: {e:#}", mode.as_str())),
            }
        }
    }))
    .await;
    for (mode, setup) in modes.into_iter().zip(setups) {
        header(mode);
        let mut run = match setup {
            Ok(r) => r,
            Err(why) if why.starts_with("skipped") => {
                println!("  {why}");
                skipped.push(mode.as_str());
                failed_explicit |= explicit;
                continue;
            }
            Err(why) => {
                println!("  {why}");
                total += Scenario::ALL.len();
                continue;
            }
        };
        for note in &run.notes {
            println!("{note}");
        }
        for (i, scenario) in Scenario::ALL.into_iter().enumerate() {
            total += 1;
            let name = format!("shop.{}.{}", mode.as_str(), scenario.as_str());
            println!("\n  {}. {name}: {}", i + 1, scenario.story(mode));
            match run_scenario(&mut run, scenario, &name, &ctx).await {
                Ok(true) => expected += 1,
                Ok(false) => {}
                Err(e) => println!("  ✗ {name}: {e:#}"),
            }
        }
        runs.push(run);
    }

    let skip_note =
        if skipped.is_empty() { String::new() } else { format!("; skipped: {} (see above)", skipped.join(", ")) };
    println!(
        "\nshop: {expected} of {total} scenarios as expected{skip_note} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let ok = expected == total && !failed_explicit;
    if args.serve {
        println!("console: {url}/console/transactions?name=shop.");
        for run in &runs {
            let list: Vec<String> = run.services.values().map(|s| format!("{} {}", s.kind.as_str(), s.url)).collect();
            println!("  {:<5} {}", run.mode.as_str(), list.join("  "));
        }
    }
    finish(coordinator, if args.serve { AfterDemo::Serve } else { AfterDemo::Stop }).await?;
    for mut run in runs {
        for s in run.services.values_mut() {
            s.kill().await;
        }
    }
    Ok(ok)
}

fn header(mode: ShopMode) {
    let what = match mode {
        ShopMode::Tcc => "TCC: try reserves (reserved stock, frozen funds), confirm takes, cancel releases",
        ShopMode::Xa => "XA: plain SQL in prepared database transactions, committed or rolled back by the coordinator",
        ShopMode::At => "AT: plain SQL through the AT executor; a rollback restores the undo images",
        ShopMode::Saga => "Saga: the coordinator calls actions, and compensations in reverse on a failure",
        ShopMode::Msg => "msg: \"order placed\" as a two-phase message to inventory, payment and shipping",
        ShopMode::ThreePc => "3PC: CanCommit votes, PreCommit prepares, DoCommit commits",
    };
    let title = format!("━━ {} ━━ {what} ", mode.as_str());
    let pad = 100usize.saturating_sub(title.chars().count());
    println!("\n{title}{}", "━".repeat(pad));
}

async fn mariadb_reachable(server: &str) -> Result<String, String> {
    let connect = sqlx::MySqlConnection::connect(server);
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(c)) => {
            let _ = c.close().await;
            Ok(server.to_owned())
        }
        Ok(Err(e)) => Err(format!("{server}: {e}")),
        Err(_) => Err(format!("{server}: no answer within 3 s")),
    }
}

async fn max_prepared(server: &str) -> Result<i64, String> {
    let connect = sqlx::PgConnection::connect(&format!("{server}/postgres"));
    let mut c = match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("{server}: {e}")),
        Err(_) => return Err(format!("{server}: no answer within 3 s")),
    };
    let v: String =
        sqlx::query_scalar("SHOW max_prepared_transactions").fetch_one(&mut c).await.map_err(|e| e.to_string())?;
    v.parse().map_err(|_| format!("max_prepared_transactions = {v:?}"))
}

/// A PostgreSQL server that can prepare transactions: `pg`, else `xa_pg`,
/// else `xa_pg` after `scripts/xa-postgres.sh` started it. With a note.
async fn xa_server(pg: &str, xa_pg: &str) -> Result<(String, String), String> {
    let first = match max_prepared(pg).await {
        Ok(n) if n > 0 => return Ok((pg.to_owned(), format!("{pg} (max_prepared_transactions = {n})"))),
        Ok(n) => format!("{pg} has max_prepared_transactions = {n}"),
        Err(e) => e,
    };
    match max_prepared(xa_pg).await {
        Ok(n) if n > 0 => return Ok((xa_pg.to_owned(), format!("{first}; using {xa_pg} (= {n})"))),
        Ok(n) => return Err(format!("{first}; {xa_pg} has {n} too")),
        Err(_) => {}
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/xa-postgres.sh");
    let script = script.canonicalize().unwrap_or(script);
    let port = url::Url::parse(xa_pg).ok().and_then(|u| u.port()).unwrap_or(5433);
    println!("prepared transactions: {first}; {xa_pg} does not answer: running {} once", script.display());
    let run = tokio::process::Command::new("bash")
        .arg(&script)
        .env("TANDEM_XA_PG_PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .output();
    match tokio::time::timeout(Duration::from_secs(90), run).await {
        Ok(Ok(out)) if out.status.success() => {}
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let err: Vec<&str> = err.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            return Err(format!("{first}; {} failed: {}", script.display(), err.join(" / ")));
        }
        Ok(Err(e)) => return Err(format!("{first}; could not run {}: {e}", script.display())),
        Err(_) => return Err(format!("{first}; {} took over 90 s", script.display())),
    }
    match max_prepared(xa_pg).await {
        Ok(n) if n > 0 => {
            Ok((xa_pg.to_owned(), format!("{first}; started {xa_pg} with scripts/xa-postgres.sh (= {n})")))
        }
        Ok(n) => Err(format!("{first}; {xa_pg} has {n} even after the script")),
        Err(e) => Err(format!("{first}; still not reachable after the script: {e}")),
    }
}

/// Creates one mode's databases and starts its services.
async fn setup(
    mode: ShopMode,
    servers: &Servers,
    prefix: &str,
    coordinator: &str,
    ctx: &Ctx,
    logs: Option<&std::path::Path>,
) -> anyhow::Result<ModeRun> {
    let prepared = matches!(mode, ShopMode::Xa | ShopMode::ThreePc);
    let pg = if prepared { servers.xa.clone().map_err(|e| anyhow!(e))? } else { servers.pg.clone() };
    let name = |k: Kind| format!("{prefix}_{}_{}", mode.as_str(), k.as_str());
    let maria = match (&servers.mariadb, mode) {
        (Ok(m), ShopMode::Xa | ShopMode::At | ShopMode::Saga | ShopMode::Msg) => Some(m.clone()),
        _ => None,
    };
    let (orders_db, inventory_db) = (name(Kind::Orders), name(Kind::Inventory));
    let orders = db::fresh_pg(&pg, &orders_db, db::ORDERS_SCHEMA);
    let inventory = db::inventory(&pg, &inventory_db);
    let payment = async {
        match &maria {
            Some(m) => db::payment_my(m, &name(Kind::Payment)).await,
            None => db::payment_pg(&pg, &name(Kind::Payment)).await,
        }
    };
    let shipping = async {
        match mode {
            ShopMode::Msg => db::fresh_pg(&pg, &name(Kind::Shipping), db::SHIPPING_SCHEMA).await.map(Some),
            _ => Ok(None),
        }
    };
    let (orders, inventory, payment, shipping) = tokio::try_join!(orders, inventory, payment, shipping)?;
    let where_ = |url: &str| url.rsplit_once('@').map(|(_, h)| h.to_owned()).unwrap_or_else(|| url.to_owned());
    let mut line = format!("  orders: PostgreSQL {}   inventory: PostgreSQL {}", where_(&orders), where_(&inventory));
    line.push_str(&format!(
        "   payment: {} {}",
        if maria.is_some() { "MariaDB" } else { "PostgreSQL" },
        where_(&payment)
    ));
    if let Some(s) = &shipping {
        line.push_str(&format!("   shipping: PostgreSQL {}", where_(s)));
    }
    let mut notes = vec![line];
    match mode {
        ShopMode::Tcc => notes.push("  (payment on PostgreSQL: the SDK's TCC participant is PostgreSQL-only)".into()),
        ShopMode::ThreePc => {
            notes.push("  (payment on PostgreSQL: 3PC branches are PostgreSQL-only in this SDK)".into())
        }
        _ => {}
    }

    let mut services = BTreeMap::new();
    let mut peers = Vec::new();
    for (kind, url) in [(Kind::Inventory, &inventory), (Kind::Payment, &payment)] {
        let s = Service::start(kind, mode, coordinator, url, &[], logs)?;
        peers.push(format!("{}={}", kind.as_str(), s.url));
        services.insert(kind, s);
    }
    if let Some(url) = &shipping {
        let s = Service::start(Kind::Shipping, mode, coordinator, url, &[], logs)?;
        peers.push(format!("shipping={}", s.url));
        services.insert(Kind::Shipping, s);
    }
    let s = Service::start(Kind::Orders, mode, coordinator, &orders, &peers, logs)?;
    services.insert(Kind::Orders, s);
    let http = &ctx.http;
    futures::future::try_join_all(services.values_mut().map(|s| s.ready(http))).await?;

    let payment = if maria.is_some() {
        PaymentDb::My(db::my_pool(&payment).await?)
    } else {
        PaymentDb::Pg(db::pg_pool(&payment).await?)
    };
    let shipping = match &shipping {
        Some(u) => Some(db::pg_pool(u).await?),
        None => None,
    };
    let dbs = Dbs { orders: db::pg_pool(&orders).await?, inventory: db::pg_pool(&inventory).await?, payment, shipping };
    Ok(ModeRun { mode, services, dbs, notes })
}

/// Prints one event of a scenario.
fn say(s: impl AsRef<str>) {
    println!("     · {}", s.as_ref());
}

fn wire_mode(mode: ShopMode) -> Mode {
    match mode {
        ShopMode::Tcc => Mode::Tcc,
        ShopMode::Xa => Mode::Xa,
        ShopMode::At => Mode::At,
        ShopMode::Saga => Mode::Saga,
        ShopMode::Msg => Mode::Msg,
        ShopMode::ThreePc => Mode::ThreePc,
    }
}

/// Polls the transaction until it is terminal (deadline 20 s).
async fn wait_terminal(client: &TandemClient, xid: &Xid) -> anyhow::Result<Transaction> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tx = client.get(xid).await?;
        if tx.status.is_terminal() {
            return Ok(tx);
        }
        if Instant::now() > deadline {
            bail!("transaction {xid} still {} after 20 s", tx.status);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The killed service's end, told.
fn killed(kind: Kind, pid: u32, status: std::process::ExitStatus, when: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match status.signal() {
        Some(9) => "killed by SIGKILL".to_owned(),
        Some(n) => format!("killed by signal {n}"),
        None => format!("exited ({status})"),
    };
    format!("{} (pid {pid}) {how} {when}", kind.as_str())
}

/// The transaction's state at the coordinator while `kind` is down.
async fn meanwhile(ctx: &Ctx, xid: &Xid, resource: &str) -> anyhow::Result<()> {
    let tx = ctx.client.get(xid).await?;
    let branch = tx.branches.iter().find(|b| b.resource.contains(resource));
    match branch {
        Some(b) => say(format!(
            "at the coordinator: {} is {}, its {} branch {} (attempts so far: {})",
            tx.xid, tx.status, b.resource, b.status, b.attempts
        )),
        None => say(format!("at the coordinator: {} is {}", tx.xid, tx.status)),
    }
    Ok(())
}

async fn restarted(run: &mut ModeRun, ctx: &Ctx, kind: Kind, then: &str) -> anyhow::Result<()> {
    let svc = run.service(kind)?;
    svc.restart(&ctx.http).await?;
    say(format!("{} restarted (pid {}) on the same port; {then}", kind.as_str(), svc.pid()));
    Ok(())
}

/// TCC, XA, AT, 3PC: the client begins, calls the three services, commits
/// (or rolls back on a refusal).
async fn drive_global(run: &mut ModeRun, scenario: Scenario, name: &str, ctx: &Ctx) -> anyhow::Result<Xid> {
    let line = scenario.line();
    let begin = BeginRequest {
        mode: wire_mode(run.mode),
        name: Some(name.to_owned()),
        timeout_ms: Some(30_000),
        three_phase: None,
    };
    let xid = ctx.client.begin(&begin).await?.xid;
    let crash = scenario == Scenario::Crash;
    if crash {
        run.service(Kind::Payment)?.arm(&ctx.http, DiePoint::Commit).await?;
    }
    let mut refused = None;
    for kind in [Kind::Orders, Kind::Inventory, Kind::Payment] {
        let r = ctx
            .http
            .post(format!("{}/place", run.url(kind)))
            .header(XID_HEADER, xid.as_str())
            .json(&line)
            .send()
            .await?;
        if !r.status().is_success() {
            refused = Some(r.text().await.unwrap_or_default());
            break;
        }
    }
    let phase1 = match run.mode {
        ShopMode::Tcc => "tried (reserved, frozen, order pending)",
        ShopMode::ThreePc => "joined (nothing runs before CanCommit)",
        ShopMode::Xa => "prepared",
        _ => "done locally, undo images logged",
    };
    if let Some(why) = refused {
        say(format!("{why} → the client rolls back"));
        if let Err(e) = ctx.client.rollback(&xid, Some(Duration::from_secs(5))).await {
            say(format!("rollback answered: {e}"));
        }
        return Ok(xid);
    }
    if !crash {
        say(format!("orders, inventory, payment {phase1} → the client commits"));
        if let Err(e) = ctx.client.commit(&xid, Some(Duration::from_secs(5))).await {
            say(format!("commit answered: {e}"));
        }
        return Ok(xid);
    }
    say(format!("orders, inventory, payment {phase1} → the client commits; payment is armed to die"));
    let commit = ctx.client.commit(&xid, Some(Duration::from_millis(300))).await;
    let svc = run.service(Kind::Payment)?;
    let pid = svc.pid();
    let status = svc.exited(Duration::from_secs(10)).await?;
    let what = match run.mode {
        ShopMode::Tcc => "when the coordinator's confirm reached it",
        ShopMode::ThreePc => "when the coordinator's DoCommit reached it (its work prepared)",
        ShopMode::Xa => "when the coordinator's commit reached it (its XA branch prepared in its database)",
        _ => "when the coordinator's commit reached it",
    };
    say(killed(Kind::Payment, pid, status, what));
    if let Err(e) = commit {
        say(format!("commit answered: {e}"));
    }
    meanwhile(ctx, &xid, "payment").await?;
    restarted(run, ctx, Kind::Payment, "the coordinator's retries reach it").await?;
    Ok(xid)
}

fn saga_urls(base: &str, step: &str) -> (String, String) {
    let p = tandem_sdk::saga::CALLBACK_PATH;
    (format!("{base}{p}/{step}/action"), format!("{base}{p}/{step}/compensate"))
}

/// Saga: the client submits the whole saga; the coordinator runs it.
async fn drive_saga(run: &mut ModeRun, scenario: Scenario, name: &str, ctx: &Ctx) -> anyhow::Result<Xid> {
    let payload = serde_json::to_value(scenario.line())?;
    let mut saga = Saga::new(name).timeout(Duration::from_secs(30));
    for (kind, step) in [
        (Kind::Orders, "create-order"),
        (Kind::Inventory, "reserve-stock"),
        (Kind::Payment, "charge"),
        (Kind::Orders, "confirm-order"),
    ] {
        let (action, compensate) = saga_urls(&run.url(kind), step);
        saga = saga.step(action, compensate, payload.clone()).named(step);
    }
    let crash = scenario == Scenario::Crash;
    if crash {
        run.service(Kind::Payment)?.arm(&ctx.http, DiePoint::ActionAnswered).await?;
    }
    let tx = saga.submit(&ctx.client).await?;
    say("submitted: create-order → reserve-stock → charge → confirm-order");
    if crash {
        let svc = run.service(Kind::Payment)?;
        let pid = svc.pid();
        let status = svc.exited(Duration::from_secs(10)).await?;
        say(killed(Kind::Payment, pid, status, "after its charge committed, before answering"));
        meanwhile(ctx, &tx.xid, "charge").await?;
        restarted(run, ctx, Kind::Payment, "the retried action finds its barrier row: already done, charged once")
            .await?;
    }
    Ok(tx.xid)
}

/// msg: the client asks orders to place the order; orders is the producer.
async fn drive_msg(run: &mut ModeRun, scenario: Scenario, name: &str, ctx: &Ctx) -> anyhow::Result<Xid> {
    let crash = scenario == Scenario::Crash;
    let body =
        MsgOrder { name: name.to_owned(), timeout_ms: if crash { 1_000 } else { 10_000 }, line: scenario.line() };
    if crash {
        run.service(Kind::Orders)?.arm(&ctx.http, DiePoint::BeforeSubmit).await?;
    }
    let sent = ctx.http.post(format!("{}/place-msg", run.url(Kind::Orders))).json(&body).send().await;
    if !crash {
        let placed: MsgPlaced = sent?.json().await?;
        match &placed.error {
            Some(e) => say(format!("orders' local transaction failed ({e}) → rolled back, message aborted")),
            None => say("orders prepared the message, committed the order with its barrier row, submitted"),
        }
        return Xid::parse(&placed.xid).map_err(|e| anyhow!("bad xid {:?}: {e}", placed.xid));
    }
    let svc = run.service(Kind::Orders)?;
    let pid = svc.pid();
    let status = svc.exited(Duration::from_secs(10)).await?;
    say(killed(Kind::Orders, pid, status, "after preparing the message and committing the order, before its submit"));
    let list = ctx.client.list(&ListQuery { mode: Some(Mode::Msg), limit: Some(50), ..Default::default() }).await?;
    let tx = list
        .transactions
        .into_iter()
        .find(|t| t.name.as_deref() == Some(name))
        .ok_or_else(|| anyhow!("no message named {name} at the coordinator"))?;
    say(format!("at the coordinator: {} is {} (its 1 s timeout then starts back-checks)", tx.xid, tx.status));
    restarted(run, ctx, Kind::Orders, "the back-check finds the order's barrier row: committed → delivered").await?;
    Ok(tx.xid)
}

async fn run_scenario(run: &mut ModeRun, scenario: Scenario, name: &str, ctx: &Ctx) -> anyhow::Result<bool> {
    let before = run.dbs.snapshot().await?;
    let t0 = Instant::now();
    let xid = match run.mode {
        ShopMode::Saga => drive_saga(run, scenario, name, ctx).await?,
        ShopMode::Msg => drive_msg(run, scenario, name, ctx).await?,
        _ => drive_global(run, scenario, name, ctx).await?,
    };
    let tx = wait_terminal(&ctx.client, &xid).await?;
    let after = run.dbs.snapshot().await?;
    println!();
    table(&before, &after);
    println!("     xid {} → {} ({:.2} s)", tx.xid, tx.status, t0.elapsed().as_secs_f64());
    let (ok, verdict) = judge(run.mode, scenario, &tx, &before, &after);
    println!("  {} {name}: {verdict}", if ok { "✓" } else { "✗" });
    Ok(ok)
}

// ---------------------------------------------------------------- the table

fn describe(r: &Row) -> String {
    format!("{} {}×{} {}", r.customer, r.qty, r.sku, r.status)
}

fn rows_table(label: &str, before: &[Row], after: &[Row], out: &mut Vec<[String; 4]>) {
    let mut ids: Vec<i64> = before.iter().chain(after).map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        out.push([label.into(), "(none)".into(), String::new(), String::new()]);
    }
    for (i, id) in ids.into_iter().enumerate() {
        let cell = |rows: &[Row]| rows.iter().find(|r| r.id == id).map(describe).unwrap_or_else(|| "—".into());
        out.push([if i == 0 { label.into() } else { String::new() }, format!("#{id}"), cell(before), cell(after)]);
    }
}

/// Prints before and after, side by side.
fn table(before: &Snapshot, after: &Snapshot) {
    let mut rows: Vec<[String; 4]> = Vec::new();
    for (i, (sku, qty, reserved)) in before.stock.iter().enumerate() {
        let a = after.stock.iter().find(|s| &s.0 == sku);
        let cell = |q: i32, r: i32| format!("{q:>4}   reserved {r}");
        rows.push([
            if i == 0 { "stock".into() } else { String::new() },
            sku.clone(),
            cell(*qty, *reserved),
            a.map(|a| cell(a.1, a.2)).unwrap_or_else(|| "—".into()),
        ]);
    }
    for (i, (customer, balance, frozen)) in before.accounts.iter().enumerate() {
        let a = after.accounts.iter().find(|s| &s.0 == customer);
        let cell = |b: i64, f: i64| format!("{b:>4}   frozen {f}");
        rows.push([
            if i == 0 { "balance".into() } else { String::new() },
            customer.clone(),
            cell(*balance, *frozen),
            a.map(|a| cell(a.1, a.2)).unwrap_or_else(|| "—".into()),
        ]);
    }
    rows_table("orders", &before.orders, &after.orders, &mut rows);
    if let (Some(b), Some(a)) = (&before.shipments, &after.shipments) {
        rows_table("shipments", b, a, &mut rows);
    }
    println!("     {:<19} {:<26} after", "", "before");
    println!("     {}", "─".repeat(76));
    for [a, b, c, d] in rows {
        let mark = if c != d { "  ◀" } else { "" };
        let row = format!("     {a:<10} {b:<8} {c:<26} {d:<26}{mark}");
        println!("{}", row.trim_end());
    }
}

// ---------------------------------------------------------------- the verdict

fn stock_of(s: &Snapshot, sku: &str) -> (i32, i32) {
    s.stock.iter().find(|r| r.0 == sku).map(|r| (r.1, r.2)).unwrap_or((-1, -1))
}

fn balance_of(s: &Snapshot, customer: &str) -> (i64, i64) {
    s.accounts.iter().find(|r| r.0 == customer).map(|r| (r.1, r.2)).unwrap_or((-1, -1))
}

/// Whether the scenario ended as it must, and the verdict line.
fn judge(mode: ShopMode, scenario: Scenario, tx: &Transaction, before: &Snapshot, after: &Snapshot) -> (bool, String) {
    let l = scenario.line();
    let success = scenario != Scenario::Declined;
    let want_status = match (success, mode) {
        (true, ShopMode::Msg) => GlobalStatus::Delivered,
        (true, _) => GlobalStatus::Committed,
        (false, _) => GlobalStatus::RolledBack,
    };
    let (q0, _) = stock_of(before, &l.sku);
    let (b0, _) = balance_of(before, &l.customer);
    let (q1, r1) = stock_of(after, &l.sku);
    let (b1, f1) = balance_of(after, &l.customer);
    let (want_q, want_b) = if success { (q0 - l.qty, b0 - l.amount) } else { (q0, b0) };
    // Other rows must not move.
    let others_same = before.stock.iter().filter(|r| r.0 != l.sku).all(|r| after.stock.contains(r))
        && before.accounts.iter().filter(|r| r.0 != l.customer).all(|r| after.accounts.contains(r));
    let new_orders: Vec<&Row> = after.orders.iter().filter(|r| !before.orders.contains(r)).collect();
    let old_kept = before.orders.iter().all(|r| after.orders.contains(r));
    let want_order = match (success, mode) {
        (true, ShopMode::Msg) => Some("placed"),
        (true, _) => Some("paid"),
        (false, ShopMode::Tcc | ShopMode::Saga) => Some("cancelled"),
        (false, _) => None,
    };
    let order_ok = match (want_order, new_orders.as_slice()) {
        (None, []) => true,
        (Some(st), [o]) => {
            o.status == st && o.xid == tx.xid.as_str() && o.customer == l.customer && o.sku == l.sku && o.qty == l.qty
        }
        _ => false,
    };
    let shipments_ok = match (&before.shipments, &after.shipments) {
        (Some(b), Some(a)) => {
            let new: Vec<&Row> = a.iter().filter(|r| !b.contains(r)).collect();
            match (success, new.as_slice()) {
                (false, []) => true,
                (true, [s]) => s.xid == tx.xid.as_str() && s.status == "scheduled",
                _ => false,
            }
        }
        _ => true,
    };
    let ok = tx.status == want_status
        && (q1, r1) == (want_q, 0)
        && (b1, f1) == (want_b, 0)
        && others_same
        && old_kept
        && order_ok
        && shipments_ok;
    let order = match (new_orders.first(), want_order) {
        (Some(o), _) => format!("order #{} {}", o.id, o.status),
        (None, None) => "no order kept".to_owned(),
        (None, Some(_)) => "no order".to_owned(),
    };
    let mut text = format!(
        "{}: stock {} {q0}→{q1}{}, balance {} {b0}→{b1}{}, {order}",
        tx.status.as_str().replace('_', " "),
        l.sku,
        if r1 != 0 { format!(" (reserved {r1})") } else { String::new() },
        l.customer,
        if f1 != 0 { format!(" (frozen {f1})") } else { String::new() },
    );
    if let Some(a) = &after.shipments {
        let b = before.shipments.as_deref().unwrap_or(&[]);
        match a.iter().find(|r| !b.contains(r)) {
            Some(s) => text.push_str(&format!(", shipment #{} {}", s.id, s.status)),
            None => text.push_str(", no shipment"),
        }
    }
    if !ok {
        let want_order = want_order.map(|s| format!("order {s}")).unwrap_or_else(|| "no order".into());
        let want_ship = if after.shipments.is_some() {
            if success {
                ", a shipment"
            } else {
                ", no shipment"
            }
        } else {
            ""
        };
        text.push_str(&format!(
            " — expected {}: stock {} {want_q} (reserved 0), balance {} {want_b} (frozen 0), {want_order}{want_ship}",
            want_status, l.sku, l.customer
        ));
    }
    (ok, text)
}
