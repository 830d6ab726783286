//! The README's Rust code, compiled: the `rust` blocks of README.md are, in
//! order, the regions between `// README {` and `// README }` below (a test
//! of this package checks that they are equal), with what they need around
//! them. Not meant to be run.

#![allow(dead_code, unused_variables)]

use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use tandem_sdk::propagation::GlobalXid;
use tandem_sdk::tcc::TccParticipant;

/// The README's "Using the SDK": the caller.
async fn caller(http: reqwest::Client, bank_a: &str, bank_b: &str) -> anyhow::Result<()> {
    let debit = serde_json::json!({ "account": "alice", "amount": -10 });
    let credit = serde_json::json!({ "account": "bob", "amount": 10 });
    // README {
    use tandem_sdk::wire::{BeginRequest, Mode};
    use tandem_sdk::{in_transaction, RequestBuilderExt, TandemClient};

    // The caller (transaction manager): begin, call the services, commit on Ok, roll back on Err.
    let client = TandemClient::new("http://127.0.0.1:7070")?;
    let begin = BeginRequest { mode: Mode::Tcc, name: Some("transfer".into()), timeout_ms: None, three_phase: None };
    let (_, tx) = in_transaction(&client, begin, |_xid| async move {
        // propagate_xid() sets Tandem-Xid from the task's current global transaction.
        http.post(format!("{bank_a}/legs")).propagate_xid().json(&debit).send().await?.error_for_status()?;
        http.post(format!("{bank_b}/legs")).propagate_xid().json(&credit).send().await?.error_for_status()?;
        Ok::<_, anyhow::Error>(())
    })
    .await?;
    // README }
    println!("{} ended {}", tx.xid, tx.status);
    Ok(())
}

/// The README's "Using the SDK": a TCC participant.
async fn tcc_participant(
    pool: sqlx::PgPool,
    client: tandem_sdk::TandemClient,
    business_routes: Router,
) -> anyhow::Result<Router> {
    let steps = tandem_example_bank::AccountSteps;
    // README {
    // Once, at startup: the participant, its fence table, its callback route.
    let participant = TccParticipant::builder(pool, client, "http://bank-a:8080").resource(steps).build();
    participant.install().await?; // CREATE TABLE IF NOT EXISTS tandem_tcc_fence
    let app = business_routes.merge(participant.router());
    // README }
    Ok(app)
}

/// A business handler of the TCC participant above.
async fn leg(State(participant): State<TccParticipant>, GlobalXid(xid): GlobalXid) -> StatusCode {
    let Some(xid) = xid else { return StatusCode::BAD_REQUEST };
    let payload = serde_json::json!({ "account": "alice", "amount": -10 });
    // In a handler, with the incoming xid (GlobalXid extractor): register the branch, run the try.
    match participant.try_branch(&xid, "accounts", payload).await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::CONFLICT,
    }
}

/// The README's "AT mode".
async fn at_participant(
    pool: sqlx::PgPool,
    client: tandem_sdk::TandemClient,
    business_routes: Router,
    xid: tandem_sdk::wire::Xid,
) -> anyhow::Result<()> {
    let (n, sku, id) = (2i32, "sku-1".to_owned(), 7i64);
    // README {
    use tandem_sdk::at::{AtParticipant, Pg}; // or MySqlDb for MySQL / MariaDB

    // Once, at startup: the service's pool, the coordinator, a resource name shared by every
    // service writing to this database, and the URL where the coordinator reaches this service
    // (the SDK serves its callback under /tandem/at/callback).
    let at = AtParticipant::<Pg>::builder(pool, client, "inventory-db", "http://inventory:8080").build();
    at.install().await?; // CREATE TABLE IF NOT EXISTS tandem_undo_log
    let app = business_routes.merge(at.router());

    // In a handler, with the incoming xid (GlobalXid extractor):
    let mut tx = at.begin(&xid).await?;
    tx.sql("UPDATE stock SET qty = qty - $1 WHERE sku = $2").bind(n).bind(sku.clone()).execute().await?;
    tx.sql("INSERT INTO reservations (id, sku, qty) VALUES ($1, $2, $3)").bind(id).bind(sku).bind(n).execute().await?;
    tx.commit().await?; // register + global locks, undo row, local COMMIT
                        // README }
    Ok(())
}

/// The README's distributed lock with a fencing token.
async fn lock_and_fence(client: tandem_sdk::TandemClient, pool: sqlx::PgPool) -> anyhow::Result<()> {
    use std::time::Duration;
    // README {
    use tandem_sdk::locks::coordinator::CoordinatorLocks; // or redis::RedisLocks, redlock::RedLock
    use tandem_sdk::locks::fencing::{Fence, FenceCheck};
    use tandem_sdk::locks::{LockName, LockOptions, Locks};

    let locks = Locks::new(CoordinatorLocks::new(client));
    let name = LockName::parse("inventory:sku-1")?;
    let guard = locks.lock(&name, &LockOptions::ttl(Duration::from_secs(10))).await?;

    let mut tx = pool.begin().await?;
    if Fence::new(pool.clone()).check(&mut tx, name.as_str(), guard.token()).await? == FenceCheck::Accepted {
        tokio::select! {
            _ = guard.lost() => anyhow::bail!("lock lost: stop, the writes are no longer protected"),
            r = sqlx::query("UPDATE stock SET qty = qty - 1 WHERE sku = 'sku-1'").execute(&mut *tx) => { r?; }
        }
        tx.commit().await?;
    }
    guard.release().await?;
    // README }
    Ok(())
}

fn main() {
    // Compiled, not run: the functions above need a coordinator and databases.
    // `cargo run -p tandem-examples --bin transfer-demo` / `--bin order-demo` run the real thing.
}
