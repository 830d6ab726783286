//! The SDK's producer (`submit_in`, the back-check from its barrier row)
//! and consumer (dedupe), on PostgreSQL and MariaDB, with a real
//! coordinator and real HTTP; the producer SIGKILLed as a real process
//! between its prepare and its submit.

use crate::engine::WAIT;
use crate::support::{eventually, fast_settings, free_port, spawn_coordinator, wait_status, TestDb, TestMariaDb};
use async_trait::async_trait;
use sqlx::{MySql, MySqlConnection, PgConnection, PgPool, Postgres};
use std::io::BufRead;
use std::time::Duration;
use tandem_sdk::msg::{Consumer, Delivery, DeliveryHandler, Message, MsgError, Producer};
use tandem_sdk::saga::StepError;
use tandem_sdk::wire::{CallbackAction, CallbackRequest, GlobalStatus, Mode, RollbackReason};
use tandem_sdk::TandemClient;
use tokio::net::TcpListener;

const CONSUMER_PATH: &str = "/shipping/order-placed";

/// Serves `router` on `listener` in a task.
fn serve(listener: TcpListener, router: axum::Router) {
    tokio::spawn(async move { axum::serve(listener, router).await });
}

/// The shipping service's work: one shipment row per order (PostgreSQL).
struct Ship;

#[async_trait]
impl DeliveryHandler<Postgres> for Ship {
    async fn handle(&self, db: &mut PgConnection, d: &Delivery, payload: &serde_json::Value) -> Result<(), StepError> {
        sqlx::query("INSERT INTO shipments (message_id, order_id) VALUES ($1, $2)")
            .bind(d.message_id())
            .bind(payload["order"].as_i64())
            .execute(db)
            .await?;
        Ok(())
    }
}

/// The same on MariaDB.
struct ShipMy;

#[async_trait]
impl DeliveryHandler<MySql> for ShipMy {
    async fn handle(
        &self,
        db: &mut MySqlConnection,
        d: &Delivery,
        payload: &serde_json::Value,
    ) -> Result<(), StepError> {
        sqlx::query("INSERT INTO shipments (message_id, order_id) VALUES (?, ?)")
            .bind(d.message_id())
            .bind(payload["order"].as_i64())
            .execute(db)
            .await?;
        Ok(())
    }
}

/// An orders service (producer) and a shipping service (consumer) on
/// PostgreSQL, and a coordinator.
struct PgWorld {
    orders: PgPool,
    shipping: PgPool,
    producer: Producer<Postgres>,
    consumer_url: String,
    client: TandemClient,
    _c: tandem_coordinator::RunningCoordinator,
    _dbs: (TestDb, TestDb, TestDb),
}

async fn pg_world(tag: &str) -> PgWorld {
    let (cdb, odb, sdb) = (TestDb::new(tag).await, TestDb::new(tag).await, TestDb::new(tag).await);
    let (c, client) = spawn_coordinator(fast_settings(&cdb.url)).await;
    let (orders, shipping) = (odb.pool().await, sdb.pool().await);
    sqlx::query("CREATE TABLE orders (id bigint PRIMARY KEY)").execute(&orders).await.unwrap();
    sqlx::query("CREATE TABLE shipments (message_id text PRIMARY KEY, order_id bigint)")
        .execute(&shipping)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let producer = Producer::new(orders.clone(), client.clone(), &base).unwrap();
    producer.install().await.unwrap();
    serve(listener, producer.router());
    let consumer = Consumer::new(shipping.clone(), Ship);
    consumer.install().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let consumer_url = format!("http://{}{CONSUMER_PATH}", listener.local_addr().unwrap());
    serve(listener, consumer.router(CONSUMER_PATH));
    PgWorld { orders, shipping, producer, consumer_url, client, _c: c, _dbs: (cdb, odb, sdb) }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn place(
    order: i64,
) -> impl for<'c> FnOnce(&'c mut PgConnection) -> futures::future::BoxFuture<'c, Result<i64, tandem_sdk::BoxError>> {
    move |tx| {
        Box::pin(async move {
            sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(order).execute(&mut *tx).await?;
            Ok(order)
        })
    }
}

#[tokio::test]
async fn submit_in_commits_the_order_and_delivers_the_message_once_postgres() {
    let w = pg_world("msg_prod_pg").await;
    let msg = Message::new("order-placed").deliver(&w.consumer_url, serde_json::json!({"order": 1}));
    let (order, done) = w.producer.submit_in(&msg, place(1)).await.unwrap();
    assert_eq!(order, 1);
    assert_eq!(done.transaction.status, GlobalStatus::Delivered, "{:?}", done.transaction);
    assert_eq!(count(&w.orders, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(count(&w.shipping, "SELECT count(*) FROM shipments WHERE order_id = 1").await, 1);
    // The barrier row of the message committed with the order.
    let origin: String = sqlx::query_scalar("SELECT origin FROM tandem_barrier WHERE xid = $1 AND branch_id = 'msg'")
        .bind(done.transaction.xid.as_str())
        .fetch_one(&w.orders)
        .await
        .unwrap();
    assert_eq!(origin, "action");
    // A redelivery (the coordinator retries until it gets a 2xx) has no second effect.
    let b = &done.transaction.branches[0];
    let again = CallbackRequest {
        xid: done.transaction.xid.clone(),
        branch_id: b.branch_id.clone(),
        mode: Mode::Msg,
        action: CallbackAction::Deliver,
        resource: b.resource.clone(),
        payload: b.payload.clone(),
        three_phase: None,
    };
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http.post(&w.consumer_url).json(&again).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["outcome"], "already_done");
    }
    assert_eq!(count(&w.shipping, "SELECT count(*) FROM shipments").await, 1);
}

#[tokio::test]
async fn a_failing_business_transaction_rolls_back_and_delivers_nothing_postgres() {
    let w = pg_world("msg_prod_fail").await;
    let msg = Message::new("order-placed").deliver(&w.consumer_url, serde_json::json!({"order": 2}));
    let err = w
        .producer
        .submit_in(&msg, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (id) VALUES (2)").execute(&mut *tx).await?;
                Err::<(), tandem_sdk::BoxError>("out of stock".into())
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MsgError::Business(_)), "{err}");
    assert_eq!(count(&w.orders, "SELECT count(*) FROM orders").await, 0);
    let list = w.client.list(&Default::default()).await.unwrap();
    assert_eq!(list.transactions.len(), 1);
    let t = &list.transactions[0];
    assert_eq!((t.status, t.rollback_reason), (GlobalStatus::RolledBack, Some(RollbackReason::Requested)));
    assert_eq!(count(&w.shipping, "SELECT count(*) FROM shipments").await, 0);
}

#[tokio::test]
async fn a_local_commit_after_the_back_check_dropped_the_message_fails_postgres() {
    let w = pg_world("msg_prod_late").await;
    let msg = Message::new("order-placed")
        .deliver(&w.consumer_url, serde_json::json!({"order": 3}))
        .timeout(Duration::from_millis(100));
    let xid = w.producer.prepare(&msg).await.unwrap();
    // The producer stalls before its local transaction; the back-check finds no row.
    let t = wait_status(&w.client, &xid, "rolled_back", WAIT).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::BackCheck));
    let err = w.producer.commit_and_submit(&xid, &msg, place(3)).await.unwrap_err();
    assert!(matches!(err, MsgError::Dropped), "{err}");
    assert_eq!(count(&w.orders, "SELECT count(*) FROM orders").await, 0, "the late local transaction rolled back");
    assert_eq!(count(&w.shipping, "SELECT count(*) FROM shipments").await, 0);
}

#[tokio::test]
async fn a_back_check_during_the_local_transaction_waits_for_its_commit_postgres() {
    let w = pg_world("msg_prod_wait").await;
    let msg = Message::new("order-placed")
        .deliver(&w.consumer_url, serde_json::json!({"order": 4}))
        .timeout(Duration::from_millis(100));
    let xid = w.producer.prepare(&msg).await.unwrap();
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let producer = w.producer.clone();
    let (xid2, msg2) = (xid.clone(), msg.clone());
    let local = tokio::spawn(async move {
        producer
            .commit_local(&xid2, &msg2, |tx| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO orders (id) VALUES (4)").execute(&mut *tx).await?;
                    let _ = wait.await;
                    Ok(())
                })
            })
            .await
    });
    // The back-check's insert waits on the barrier key the local transaction holds.
    let orders = w.orders.clone();
    eventually("a back-check waiting on the barrier's key", WAIT, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&orders)
        .await
        .ok()?;
        (waiting > 0).then_some(())
    })
    .await;
    go.send(()).unwrap();
    local.await.unwrap().unwrap();
    // The back-check then finds the commit and the coordinator delivers (no submit was sent).
    wait_status(&w.client, &xid, "delivered", WAIT).await;
    assert_eq!(count(&w.orders, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(count(&w.shipping, "SELECT count(*) FROM shipments WHERE order_id = 4").await, 1);
}

#[tokio::test]
async fn submit_in_and_dedupe_on_mariadb() {
    let (cdb, odb, sdb) =
        (TestDb::new("msg_prod_my").await, TestMariaDb::new("msg_o").await, TestMariaDb::new("msg_s").await);
    let (_c, client) = spawn_coordinator(fast_settings(&cdb.url)).await;
    let (orders, shipping) = (odb.pool().await, sdb.pool().await);
    sqlx::query("CREATE TABLE orders (id bigint PRIMARY KEY)").execute(&orders).await.unwrap();
    sqlx::query("CREATE TABLE shipments (message_id varchar(200) PRIMARY KEY, order_id bigint)")
        .execute(&shipping)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let producer = Producer::<MySql>::new(orders.clone(), client.clone(), &base).unwrap();
    producer.install().await.unwrap();
    serve(listener, producer.router());
    let consumer = Consumer::<MySql>::new(shipping.clone(), ShipMy);
    consumer.install().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let consumer_url = format!("http://{}{CONSUMER_PATH}", listener.local_addr().unwrap());
    serve(listener, consumer.router(CONSUMER_PATH));
    let my_count = |sql: &'static str, pool: sqlx::MySqlPool| async move {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap()
    };

    // Committed → delivered once.
    let msg = Message::new("order-placed").deliver(&consumer_url, serde_json::json!({"order": 10}));
    let (_, done) = producer
        .submit_in(&msg, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (id) VALUES (10)").execute(&mut *tx).await?;
                Ok(())
            })
        })
        .await
        .unwrap();
    assert_eq!(done.transaction.status, GlobalStatus::Delivered);
    assert_eq!(my_count("SELECT count(*) FROM shipments WHERE order_id = 10", shipping.clone()).await, 1);
    let id = tandem_sdk::wire::message_id(&done.transaction.xid, &done.transaction.branches[0].branch_id);
    // A broker-style redelivery by message id: no second effect.
    assert_eq!(
        consumer.receive(&id, &serde_json::json!({"order": 10})).await.unwrap(),
        tandem_sdk::msg::Delivered::AlreadyDone
    );
    assert!(consumer.receive("not an id", &serde_json::json!({})).await.is_err());
    assert_eq!(my_count("SELECT count(*) FROM shipments", shipping.clone()).await, 1);
    // An outbox message's id (a UUID): once, however often it comes.
    let outbox_id = uuid::Uuid::now_v7().to_string();
    for expected in [tandem_sdk::msg::Delivered::Applied, tandem_sdk::msg::Delivered::AlreadyDone] {
        assert_eq!(consumer.receive(&outbox_id, &serde_json::json!({"order": 13})).await.unwrap(), expected);
    }
    assert_eq!(my_count("SELECT count(*) FROM shipments WHERE order_id = 13", shipping.clone()).await, 1);

    // Rolled back → nothing.
    let msg = Message::new("order-placed").deliver(&consumer_url, serde_json::json!({"order": 11}));
    let err = producer
        .submit_in(&msg, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (id) VALUES (11)").execute(&mut *tx).await?;
                Err::<(), tandem_sdk::BoxError>("declined".into())
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MsgError::Business(_)));
    assert_eq!(my_count("SELECT count(*) FROM orders", orders.clone()).await, 1);

    // Dropped by the back-check before the local commit → the commit fails.
    let msg = Message::new("order-placed")
        .deliver(&consumer_url, serde_json::json!({"order": 12}))
        .timeout(Duration::from_millis(100));
    let xid = producer.prepare(&msg).await.unwrap();
    wait_status(&client, &xid, "rolled_back", WAIT).await;
    let err = producer
        .commit_and_submit(&xid, &msg, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (id) VALUES (12)").execute(&mut *tx).await?;
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MsgError::Dropped), "{err}");
    assert_eq!(my_count("SELECT count(*) FROM orders", orders.clone()).await, 1);
    assert_eq!(my_count("SELECT count(*) FROM shipments WHERE order_id = 12", shipping.clone()).await, 0);
}

/// Environment of [`producer_child`].
const CHILD_ENV: &str = "TANDEM_MSG_PRODUCER_CHILD";

/// The producer as a process of its own (run by the tests below through
/// this test binary): prepares a message, runs its local transaction up to
/// the point named by `TANDEM_MSG_PRODUCER_CHILD` (`committed`: the local
/// commit done, no submit; `open`: the order inserted, not committed),
/// prints `READY <xid>`, and waits to be killed.
#[tokio::test]
#[ignore = "run as a child process by the SIGKILL tests"]
async fn producer_child() {
    let Ok(point) = std::env::var(CHILD_ENV) else { return };
    let var = |k: &str| std::env::var(k).unwrap();
    let orders = PgPool::connect(&var("CHILD_ORDERS_DB")).await.unwrap();
    let client = TandemClient::new(&var("CHILD_COORDINATOR")).unwrap();
    let producer = Producer::new(orders, client, &var("CHILD_BASE")).unwrap();
    let msg = Message::new("order-placed")
        .deliver(var("CHILD_CONSUMER"), serde_json::json!({"order": 20}))
        .timeout(Duration::from_millis(300));
    let xid = producer.prepare(&msg).await.unwrap();
    match point.as_str() {
        "committed" => {
            producer.commit_local(&xid, &msg, place(20)).await.unwrap();
            println!("READY {xid}");
        }
        _ => {
            let shown = xid.to_string();
            let _ = producer
                .commit_local(&xid, &msg, move |tx| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO orders (id) VALUES (20)").execute(&mut *tx).await?;
                        println!("READY {shown}");
                        std::future::pending::<()>().await;
                        Ok(())
                    })
                })
                .await;
        }
    }
    std::future::pending::<()>().await;
}

/// Runs [`producer_child`] to `point`, SIGKILLs it, restarts the producer
/// (its back-check endpoint) on the same address, and returns the world and
/// the message's xid.
async fn kill_producer_at(point: &str) -> (PgWorld, tandem_sdk::wire::Xid) {
    let w = pg_world(&format!("msg_kill_{point}")).await;
    let port = free_port().await;
    let base = format!("http://127.0.0.1:{port}");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "producer::producer_child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, point)
        .env("CHILD_ORDERS_DB", w._dbs.1.url.clone())
        .env("CHILD_COORDINATOR", w._c.url.clone())
        .env("CHILD_BASE", &base)
        .env("CHILD_CONSUMER", &w.consumer_url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let read = tokio::task::spawn_blocking(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            // libtest writes `test producer::producer_child ... ` before it, on the same line.
            let line = line.unwrap();
            if let Some((_, xid)) = line.split_once("READY ") {
                return xid.trim().to_owned();
            }
        }
        panic!("the producer child ended without READY");
    });
    let xid = tokio::time::timeout(WAIT, read).await.expect("the producer child is READY in time").unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let xid = tandem_sdk::wire::Xid::parse(xid).unwrap();
    // The producer restarts: its back-check endpoint is up again.
    let producer = Producer::new(w.orders.clone(), w.client.clone(), &base).unwrap();
    serve(TcpListener::bind(("127.0.0.1", port)).await.unwrap(), producer.router());
    (w, xid)
}

#[tokio::test]
async fn a_producer_killed_after_its_local_commit_has_its_message_delivered() {
    let (w, xid) = kill_producer_at("committed").await;
    wait_status(&w.client, &xid, "delivered", WAIT).await;
    assert_eq!(count(&w.orders, "SELECT count(*) FROM orders WHERE id = 20").await, 1);
    assert_eq!(count(&w.shipping, "SELECT count(*) FROM shipments WHERE order_id = 20").await, 1);
}

#[tokio::test]
async fn a_producer_killed_inside_its_local_transaction_has_its_message_dropped() {
    let (w, xid) = kill_producer_at("open").await;
    let t = wait_status(&w.client, &xid, "rolled_back", WAIT).await;
    assert_eq!(t.rollback_reason, Some(RollbackReason::BackCheck));
    assert_eq!(count(&w.orders, "SELECT count(*) FROM orders").await, 0);
    assert_eq!(count(&w.shipping, "SELECT count(*) FROM shipments").await, 0);
}
