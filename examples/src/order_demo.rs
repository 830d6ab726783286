//! AT mode demo: an order service and an inventory service, each writing
//! plain SQL to its own PostgreSQL database through the SDK's AT executor.
//!
//! Creates three databases on the given server (the coordinator's, the
//! orders', the inventory's), starts the coordinator and both services on
//! loopback, then:
//! 1. orders 2 widgets: the order row is inserted and the stock decremented,
//!    each as an AT branch; the coordinator commits, the undo rows go away;
//! 2. orders 50 widgets: the order row is inserted, the inventory refuses
//!    (not enough stock), the transaction rolls back and AT deletes the order
//!    row again from its undo log: no compensation code was written.
//!
//! `--serve` keeps everything running afterwards.

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tandem_examples::{finish, start_coordinator, AfterDemo};
use tandem_sdk::at::{AtError, AtParticipant, AtTransaction, Pg};
use tandem_sdk::wire::{BeginRequest, Mode, Xid};
use tandem_sdk::{in_transaction, GlobalError, GlobalXid, RequestBuilderExt, TandemClient};

#[derive(Debug, Parser)]
#[command(name = "order-demo", about = "An AT order across an order service and an inventory service")]
struct Args {
    /// PostgreSQL server (no database name); the demo creates its databases there.
    #[arg(long, env = "TANDEM_DEMO_PG", default_value = "postgres://postgres@127.0.0.1:5432")]
    pg: String,
    /// Where the coordinator listens.
    #[arg(long, default_value = "127.0.0.1:7071")]
    listen: std::net::SocketAddr,
    /// Keep the coordinator and the services running after the demo (Ctrl-C stops).
    #[arg(long)]
    serve: bool,
}

/// Creates (afresh) a database of the demo and runs `schema` in it.
async fn database(server: &str, name: &str, schema: &str) -> anyhow::Result<PgPool> {
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .with_context(|| format!("connecting to {server}/postgres"))?;
    // `name` is one of the demo's constants, not input.
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
    let pool = PgPoolOptions::new().max_connections(8).connect(&format!("{server}/{name}")).await?;
    sqlx::raw_sql(schema).execute(&pool).await?;
    Ok(pool)
}

/// One AT service: its business route and the SDK's callback route.
async fn service(pool: PgPool, coordinator: &str, resource: &str, route: &str) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let at = AtParticipant::<Pg>::builder(pool, TandemClient::new(coordinator)?, resource, &url).build();
    at.install().await?;
    let business = match route {
        "/orders" => Router::new().route(route, post(place_order)),
        _ => Router::new().route(route, post(reserve)),
    };
    let app = business.with_state(at.clone()).merge(at.router());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[derive(Debug, Deserialize)]
struct Line {
    sku: String,
    qty: i32,
}

/// An error answer of a business route.
type Refusal = (StatusCode, String);

fn refused(status: StatusCode, e: impl std::fmt::Display) -> Refusal {
    (status, e.to_string())
}

/// AT errors are the SDK's or the database's: the caller may retry.
fn unavailable(e: AtError) -> Refusal {
    refused(StatusCode::SERVICE_UNAVAILABLE, e)
}

/// The local transaction of this request's branch of its global transaction.
async fn branch(at: &AtParticipant<Pg>, xid: Option<Xid>) -> Result<AtTransaction<Pg>, Refusal> {
    let xid = xid.ok_or_else(|| refused(StatusCode::BAD_REQUEST, "no Tandem-Xid"))?;
    at.begin(&xid).await.map_err(unavailable)
}

/// `POST /orders` (order service): inserts the order row in AT mode.
async fn place_order(
    State(at): State<AtParticipant<Pg>>,
    GlobalXid(xid): GlobalXid,
    Json(l): Json<Line>,
) -> Result<String, Refusal> {
    let mut tx = branch(&at, xid).await?;
    let insert = tx.sql("INSERT INTO orders (sku, qty) VALUES ($1, $2)").bind(l.sku).bind(l.qty);
    insert.execute().await.map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    Ok("ordered".into())
}

/// `POST /reserve` (inventory service): takes the stock in AT mode, or refuses.
async fn reserve(
    State(at): State<AtParticipant<Pg>>,
    GlobalXid(xid): GlobalXid,
    Json(l): Json<Line>,
) -> Result<String, Refusal> {
    let mut tx = branch(&at, xid).await?;
    let update = tx.sql("UPDATE stock SET qty = qty - $1 WHERE sku = $2 AND qty >= $1").bind(l.qty).bind(l.sku.clone());
    if update.execute().await.map_err(unavailable)? == 0 {
        // Nothing was imaged: dropping the transaction registers no branch.
        return Err(refused(StatusCode::CONFLICT, format!("not enough {} in stock", l.sku)));
    }
    tx.commit().await.map_err(unavailable)?;
    Ok("reserved".into())
}

async fn show(orders: &PgPool, inventory: &PgPool, when: &str) -> anyhow::Result<()> {
    let stock: i32 = sqlx::query_scalar("SELECT qty FROM stock WHERE sku = 'widget'").fetch_one(inventory).await?;
    let placed: Vec<(i64, i32)> = sqlx::query_as("SELECT id, qty FROM orders ORDER BY id").fetch_all(orders).await?;
    let undo: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tandem_undo_log WHERE state = 0").fetch_one(orders).await?;
    println!("  {when:<16} widgets in stock: {stock:>3}   orders (id, qty): {placed:?}   order undo rows: {undo}");
    Ok(())
}

/// One order as a global transaction: the order row, then the stock.
async fn order(
    client: &TandemClient,
    orders: &str,
    inventory: &str,
    qty: i32,
) -> Result<(), GlobalError<anyhow::Error>> {
    let http = reqwest::Client::new();
    let begin =
        BeginRequest { mode: Mode::At, name: Some("place-order".into()), timeout_ms: Some(30_000), three_phase: None };
    let line = serde_json::json!({"sku": "widget", "qty": qty});
    let (_, tx) = in_transaction(client, begin, |_| async move {
        for url in [format!("{orders}/orders"), format!("{inventory}/reserve")] {
            let r = http.post(&url).propagate_xid().json(&line).send().await?;
            if !r.status().is_success() {
                bail!("{url} refused: {}", r.text().await.unwrap_or_default());
            }
        }
        Ok(())
    })
    .await?;
    println!("  transaction {} is {}", tx.xid, tx.status);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tandem_coordinator::cli::init_tracing(tandem_coordinator::cli::LogFormat::Text);
    let server = args.pg.trim_end_matches('/');

    database(server, "tandem_demo_at", "").await?.close().await;
    let demo = start_coordinator(format!("{server}/tandem_demo_at"), args.listen).await?;
    let coordinator = demo.url.clone();
    println!("coordinator: {coordinator}");

    let orders_db = database(
        server,
        "tandem_demo_orders",
        "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sku text NOT NULL, qty int NOT NULL)",
    )
    .await?;
    let inventory_db = database(
        server,
        "tandem_demo_inventory",
        "CREATE TABLE stock (sku text PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0)); \
         INSERT INTO stock VALUES ('widget', 10)",
    )
    .await?;
    let orders = service(orders_db.clone(), &coordinator, "orders-db", "/orders").await?;
    let inventory = service(inventory_db.clone(), &coordinator, "inventory-db", "/reserve").await?;
    println!("order service: {orders}   inventory service: {inventory}");
    let client = TandemClient::new(&coordinator)?;

    println!("\n1. order 2 widgets");
    show(&orders_db, &inventory_db, "before").await?;
    order(&client, &orders, &inventory, 2).await.context("the first order should commit")?;
    // The committed branches' undo rows are deleted in the background, in batches.
    for _ in 0..100 {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tandem_undo_log WHERE state = 0").fetch_one(&orders_db).await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    show(&orders_db, &inventory_db, "after commit").await?;

    println!("\n2. order 50 widgets (more than in stock)");
    match order(&client, &orders, &inventory, 50).await {
        Err(GlobalError::Aborted(e)) => println!("  rolled back: {e}"),
        Err(e) => return Err(e.into()),
        Ok(()) => bail!("the order of 50 committed although only 8 widgets were left"),
    }
    show(&orders_db, &inventory_db, "after rollback").await?;

    finish(demo, if args.serve { AfterDemo::Serve } else { AfterDemo::Stop }).await
}
