//! The demo's databases: created fresh at each run, seeded, and read back
//! into a [`Snapshot`] before and after each scenario.

use anyhow::Context;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, MySqlConnection, MySqlPool, PgConnection, PgPool};
use std::time::Duration;

/// The stock at the start of every mode: (sku, qty).
pub const STOCK: [(&str, i32); 2] = [("gadget", 5), ("widget", 10)];
/// The balances at the start of every mode: (customer, balance).
pub const ACCOUNTS: [(&str, i64); 2] = [("alice", 500), ("bob", 100)];

/// Schema of the orders database (PostgreSQL).
pub const ORDERS_SCHEMA: &str = "CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid text NOT NULL UNIQUE, customer text NOT NULL, sku text NOT NULL,
    qty int NOT NULL, amount bigint NOT NULL, status text NOT NULL)";

/// Schema of the shipping database (PostgreSQL).
pub const SHIPPING_SCHEMA: &str = "CREATE TABLE shipments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_xid text NOT NULL UNIQUE, customer text NOT NULL, sku text NOT NULL,
    qty int NOT NULL, status text NOT NULL)";

fn inventory_schema() -> String {
    let rows: Vec<String> = STOCK.iter().map(|(s, q)| format!("('{s}', {q})")).collect();
    format!(
        "CREATE TABLE stock (sku text PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0),
            reserved int NOT NULL DEFAULT 0 CHECK (reserved >= 0));
         CREATE TABLE stock_moves (xid text NOT NULL, branch_id text NOT NULL, sku text NOT NULL,
            qty int NOT NULL, PRIMARY KEY (xid, branch_id));
         INSERT INTO stock (sku, qty) VALUES {}",
        rows.join(", ")
    )
}

fn seed_accounts() -> String {
    let rows: Vec<String> = ACCOUNTS.iter().map(|(c, b)| format!("('{c}', {b})")).collect();
    format!("INSERT INTO accounts (customer, balance) VALUES {}", rows.join(", "))
}

fn payment_schema_pg() -> String {
    format!(
        "CREATE TABLE accounts (customer text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0),
            frozen bigint NOT NULL DEFAULT 0 CHECK (frozen >= 0));
         CREATE TABLE charges (xid text NOT NULL, branch_id text NOT NULL, customer text NOT NULL,
            amount bigint NOT NULL, PRIMARY KEY (xid, branch_id));
         {}",
        seed_accounts()
    )
}

fn payment_schema_my() -> [String; 3] {
    [
        "CREATE TABLE accounts (customer VARCHAR(32) PRIMARY KEY, balance BIGINT NOT NULL,
            frozen BIGINT NOT NULL DEFAULT 0, CHECK (balance >= 0), CHECK (frozen >= 0)) ENGINE=InnoDB"
            .to_owned(),
        "CREATE TABLE charges (xid VARCHAR(64) NOT NULL, branch_id VARCHAR(64) NOT NULL,
            customer VARCHAR(32) NOT NULL, amount BIGINT NOT NULL, PRIMARY KEY (xid, branch_id)) ENGINE=InnoDB"
            .to_owned(),
        seed_accounts(),
    ]
}

/// Quotes a PostgreSQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// (Re)creates the PostgreSQL database `name` on `server` (no database in
/// the URL) and runs `schema` in it; returns its URL. Prepared
/// transactions a crashed earlier run left in it are rolled back first
/// (they would keep it from being dropped).
pub async fn fresh_pg(server: &str, name: &str, schema: &str) -> anyhow::Result<String> {
    let url = format!("{server}/{name}");
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .with_context(|| format!("connecting to {server}/postgres"))?;
    let gids: Vec<String> = sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts WHERE database = $1")
        .bind(name)
        .fetch_all(&mut admin)
        .await?;
    if !gids.is_empty() {
        let mut db = PgConnection::connect(&url).await?;
        for gid in gids {
            sqlx::raw_sql(&format!("ROLLBACK PREPARED {}", literal(&gid))).execute(&mut db).await?;
        }
    }
    // `name` is the validated prefix plus constants.
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
    let mut attempt = 0;
    loop {
        match sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await {
            Ok(_) => break,
            // template1 busy with a concurrent CREATE DATABASE elsewhere: try again.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("creating database {name}")),
        }
    }
    if !schema.is_empty() {
        let mut db = PgConnection::connect(&url).await?;
        sqlx::raw_sql(schema).execute(&mut db).await.with_context(|| format!("schema of {name}"))?;
    }
    Ok(url)
}

/// (Re)creates the MariaDB database `name` on `server`; returns its URL.
pub async fn fresh_my(server: &str, name: &str, statements: &[String]) -> anyhow::Result<String> {
    let mut admin = MySqlConnection::connect(server).await.with_context(|| format!("connecting to {server}"))?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await?;
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
    let url = format!("{server}/{name}");
    let mut db = MySqlConnection::connect(&url).await?;
    for s in statements {
        sqlx::raw_sql(s).execute(&mut db).await.with_context(|| format!("schema of {name}"))?;
    }
    Ok(url)
}

/// The inventory database.
pub async fn inventory(server: &str, name: &str) -> anyhow::Result<String> {
    fresh_pg(server, name, &inventory_schema()).await
}

/// The payment database on PostgreSQL.
pub async fn payment_pg(server: &str, name: &str) -> anyhow::Result<String> {
    fresh_pg(server, name, &payment_schema_pg()).await
}

/// The payment database on MariaDB.
pub async fn payment_my(server: &str, name: &str) -> anyhow::Result<String> {
    fresh_my(server, name, &payment_schema_my()).await
}

/// A pool of the demo's own reads.
pub async fn pg_pool(url: &str) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new().max_connections(2).connect(url).await?)
}

/// A pool of the demo's own reads (MariaDB).
pub async fn my_pool(url: &str) -> anyhow::Result<MySqlPool> {
    Ok(MySqlPoolOptions::new().max_connections(2).connect(url).await?)
}

/// Where payment's balances are.
#[derive(Debug, Clone)]
pub enum PaymentDb {
    /// PostgreSQL.
    Pg(PgPool),
    /// MariaDB.
    My(MySqlPool),
}

/// The demo's read access to one mode's databases.
#[derive(Debug, Clone)]
pub struct Dbs {
    /// Orders.
    pub orders: PgPool,
    /// Stock.
    pub inventory: PgPool,
    /// Balances.
    pub payment: PaymentDb,
    /// Shipments (message mode).
    pub shipping: Option<PgPool>,
}

/// A stock row: (sku, qty, reserved).
pub type StockRow = (String, i32, i32);
/// An account row: (customer, balance, frozen).
pub type AccountRow = (String, i64, i64);

/// An order or a shipment as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its id in its database.
    pub id: i64,
    /// The global transaction that wrote it.
    pub xid: String,
    /// Who.
    pub customer: String,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: i32,
    /// Its status.
    pub status: String,
}

/// Everything the table shows, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Stock per sku.
    pub stock: Vec<StockRow>,
    /// Balance per customer.
    pub accounts: Vec<AccountRow>,
    /// Orders.
    pub orders: Vec<Row>,
    /// Shipments, in message mode.
    pub shipments: Option<Vec<Row>>,
}

impl Dbs {
    /// Reads every table.
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let stock =
            sqlx::query_as("SELECT sku, qty, reserved FROM stock ORDER BY sku").fetch_all(&self.inventory).await?;
        let accounts = match &self.payment {
            PaymentDb::Pg(p) => {
                sqlx::query_as("SELECT customer, balance, frozen FROM accounts ORDER BY customer").fetch_all(p).await?
            }
            PaymentDb::My(p) => {
                sqlx::query_as("SELECT customer, balance, frozen FROM accounts ORDER BY customer").fetch_all(p).await?
            }
        };
        let orders = rows(&self.orders, "SELECT id, xid, customer, sku, qty, status FROM orders ORDER BY id").await?;
        let shipments = match &self.shipping {
            Some(p) => {
                Some(rows(p, "SELECT id, order_xid, customer, sku, qty, status FROM shipments ORDER BY id").await?)
            }
            None => None,
        };
        Ok(Snapshot { stock, accounts, orders, shipments })
    }
}

async fn rows(pool: &PgPool, sql: &str) -> anyhow::Result<Vec<Row>> {
    let raw: Vec<(i64, String, String, String, i32, String)> = sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(raw
        .into_iter()
        .map(|(id, xid, customer, sku, qty, status)| Row { id, xid, customer, sku, qty, status })
        .collect())
}
