//! The quick-start demo: a TCC money transfer between two services.
//!
//! Creates three databases on the given PostgreSQL server (the coordinator's
//! and one per bank), starts the coordinator and two bank services on
//! loopback (each a real HTTP server with its own database), then:
//! 1. transfers 300 from alice (bank A) to bob (bank B): both legs try,
//!    the coordinator confirms both;
//! 2. tries to transfer 5,000 (more than alice has): the debit's try is
//!    refused, the transaction rolls back, the credit's try is cancelled.
//!
//! Balances are printed before and after each. `--serve` keeps everything
//! running afterwards, for exploring the API (`GET /v1/transactions`).

use anyhow::{bail, Context};
use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tandem_examples::{finish, start_coordinator, AfterDemo};
use tandem_sdk::wire::{BeginRequest, Mode, Xid};
use tandem_sdk::{in_transaction, GlobalError, RequestBuilderExt, TandemClient};

#[derive(Debug, Parser)]
#[command(name = "transfer-demo", about = "A TCC transfer between two bank services, coordinated by Tandem")]
struct Args {
    /// PostgreSQL server (no database name); the demo creates its databases there.
    #[arg(long, env = "TANDEM_DEMO_PG", default_value = "postgres://postgres@127.0.0.1:5432")]
    pg: String,
    /// Where the coordinator listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// Keep the coordinator and the banks running after the demo (Ctrl-C stops).
    #[arg(long)]
    serve: bool,
}

async fn database(server: &str, name: &str) -> anyhow::Result<PgPool> {
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .with_context(|| format!("connecting to {server}/postgres"))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        // `name` is one of the demo's constants, not input.
        sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
    }
    Ok(PgPoolOptions::new().max_connections(8).connect(&format!("{server}/{name}")).await?)
}

struct Bank {
    url: String,
    pool: PgPool,
}

async fn start_bank(server: &str, db: &str, coordinator: &str, account: &str, balance: i64) -> anyhow::Result<Bank> {
    let pool = database(server, db).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let participant = tandem_example_bank::participant(pool.clone(), TandemClient::new(coordinator)?, &url);
    tandem_example_bank::setup(&participant).await?;
    tandem_example_bank::open_account(&pool, account, balance).await?;
    let app = tandem_example_bank::router(participant);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Bank { url, pool })
}

async fn show(a: &Bank, b: &Bank, when: &str) -> anyhow::Result<()> {
    let alice = tandem_example_bank::balance(&a.pool, "alice").await?.context("alice")?;
    let bob = tandem_example_bank::balance(&b.pool, "bob").await?.context("bob")?;
    println!(
        "  {when:<28} alice (bank A): {:>5} (frozen {})   bob (bank B): {:>5} (incoming {})",
        alice.balance, alice.frozen, bob.balance, bob.incoming
    );
    Ok(())
}

/// One transfer as a global transaction: the two legs run in the banks,
/// each registering its branch and running its try; commit on success.
async fn transfer(client: &TandemClient, a: &Bank, b: &Bank, amount: i64) -> Result<Xid, GlobalError<anyhow::Error>> {
    let http = reqwest::Client::new();
    let begin =
        BeginRequest { mode: Mode::Tcc, name: Some("transfer".into()), timeout_ms: Some(30_000), three_phase: None };
    let (xid, tx) = in_transaction(client, begin, |xid| async move {
        for (bank, account, direction) in [(b, "bob", "credit"), (a, "alice", "debit")] {
            let r = http
                .post(format!("{}/legs", bank.url))
                .propagate_xid()
                .json(&serde_json::json!({"account": account, "amount": amount, "direction": direction}))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("{direction} of {account} refused: {}", r.text().await.unwrap_or_default());
            }
        }
        Ok(xid)
    })
    .await?;
    println!("  transaction {} is {}", tx.xid, tx.status);
    Ok(xid)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tandem_coordinator::cli::init_tracing(tandem_coordinator::cli::LogFormat::Text);
    let server = args.pg.trim_end_matches('/');

    database(server, "tandem_demo").await?.close().await;
    let demo = start_coordinator(format!("{server}/tandem_demo"), args.listen).await?;
    let coordinator = demo.url.clone();
    println!("coordinator: {coordinator} (OpenAPI at {coordinator}/openapi.json)");

    let a = start_bank(server, "tandem_demo_bank_a", &coordinator, "alice", 1_000).await?;
    let b = start_bank(server, "tandem_demo_bank_b", &coordinator, "bob", 0).await?;
    println!("bank A: {}   bank B: {}", a.url, b.url);
    let client = TandemClient::new(&coordinator)?;

    println!("\n1. transfer 300 from alice to bob");
    show(&a, &b, "before").await?;
    transfer(&client, &a, &b, 300).await.context("the first transfer should commit")?;
    show(&a, &b, "after commit").await?;

    println!("\n2. transfer 5000 from alice to bob (more than she has)");
    show(&a, &b, "before").await?;
    match transfer(&client, &a, &b, 5_000).await {
        Err(GlobalError::Aborted(e)) => println!("  rolled back: {e}"),
        Err(e) => return Err(e.into()),
        Ok(xid) => bail!("transaction {xid} committed although alice lacked the funds"),
    }
    show(&a, &b, "after rollback").await?;

    let list = client.list(&Default::default()).await?;
    println!("\nlatest transactions at the coordinator:");
    for t in list.transactions.iter().take(4) {
        let branches: Vec<String> = t.branches.iter().map(|b| format!("{}={}", b.resource, b.status)).collect();
        println!("  {} {:<11} {}", t.xid, t.status.as_str(), branches.join(" "));
    }

    finish(demo, if args.serve { AfterDemo::Serve } else { AfterDemo::Stop }).await
}
