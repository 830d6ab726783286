//! The SDK's outbox and its relay on PostgreSQL and on MariaDB: business
//! transactions that commit or roll back, messages read back from an HTTP
//! consumer on 127.0.0.1, NATS JetStream and RabbitMQ; two relays on one
//! database; a consumer that refuses for a while; the purge.

use crate::brokers::{amqp_header, nats_header, TestQueue, TestStream, NATS_URL, TIMEOUT, WAIT};
use crate::support::{eventually, TestDb, TestMariaDb};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use sqlx::{MySql, MySqlPool, PgPool, Postgres};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_brokers::Brokers;
use tandem_sdk::outbox::{
    Enqueued, Outbox, OutboxMessage, OutboxTarget, PassReport, Relay, RelayOptions, KEY_HEADER, MESSAGE_ID_HEADER,
    SEQ_HEADER,
};
use tokio_util::sync::CancellationToken;

/// Relay settings for tests: quick polls and retries.
fn fast() -> RelayOptions {
    RelayOptions {
        poll_interval: Duration::from_millis(50),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        http_timeout: Duration::from_secs(5),
        ..RelayOptions::default()
    }
}

/// How a business transaction ends.
#[derive(Debug, Clone, Copy)]
enum End {
    Commit,
    Rollback,
}

/// A test database of either kind with the outbox installed and a business
/// table `orders (id)`.
enum Db {
    Pg { db: TestDb, pool: PgPool, outbox: Outbox<Postgres> },
    Maria { db: TestMariaDb, pool: MySqlPool, outbox: Outbox<MySql> },
}

/// A relay on either kind.
enum AnyRelay {
    Pg(Relay<Postgres>),
    Maria(Relay<MySql>),
}

impl Db {
    async fn pg(tag: &str) -> Db {
        let db = TestDb::new(tag).await;
        let pool = db.pool().await;
        let outbox = Outbox::new(pool.clone());
        outbox.install().await.unwrap();
        outbox.install().await.unwrap(); // idempotent
        sqlx::query("CREATE TABLE orders (id text PRIMARY KEY)").execute(&pool).await.unwrap();
        Db::Pg { db, pool, outbox }
    }

    async fn maria(tag: &str) -> Db {
        let db = TestMariaDb::new(tag).await;
        let pool = db.pool().await;
        let outbox = Outbox::<MySql>::new(pool.clone());
        outbox.install().await.unwrap();
        outbox.install().await.unwrap();
        sqlx::query("CREATE TABLE orders (id varchar(64) PRIMARY KEY) ENGINE = InnoDB").execute(&pool).await.unwrap();
        Db::Maria { db, pool, outbox }
    }

    /// A business transaction: inserts order `order`, enqueues `messages`,
    /// ends as told.
    async fn business(&self, order: &str, messages: &[OutboxMessage], end: End) -> Vec<Enqueued> {
        let mut out = Vec::new();
        match self {
            Db::Pg { pool, outbox, .. } => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(order).execute(&mut *tx).await.unwrap();
                for m in messages {
                    out.push(outbox.enqueue(&mut tx, m).await.unwrap());
                }
                match end {
                    End::Commit => tx.commit().await.unwrap(),
                    End::Rollback => tx.rollback().await.unwrap(),
                }
            }
            Db::Maria { pool, outbox, .. } => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO orders (id) VALUES (?)").bind(order).execute(&mut *tx).await.unwrap();
                for m in messages {
                    out.push(outbox.enqueue(&mut tx, m).await.unwrap());
                }
                match end {
                    End::Commit => tx.commit().await.unwrap(),
                    End::Rollback => tx.rollback().await.unwrap(),
                }
            }
        }
        self.wake();
        out
    }

    fn wake(&self) {
        match self {
            Db::Pg { outbox, .. } => outbox.wake(),
            Db::Maria { outbox, .. } => outbox.wake(),
        }
    }

    /// The relay of this process (woken by the outbox).
    fn relay(&self, brokers: Brokers, options: RelayOptions) -> AnyRelay {
        match self {
            Db::Pg { outbox, .. } => AnyRelay::Pg(outbox.relay(brokers, options).unwrap()),
            Db::Maria { outbox, .. } => AnyRelay::Maria(outbox.relay(brokers, options).unwrap()),
        }
    }

    /// A relay as another process would run it: its own pool, no wake-ups.
    async fn other_relay(&self, brokers: Brokers, options: RelayOptions) -> AnyRelay {
        match self {
            Db::Pg { db, .. } => AnyRelay::Pg(Relay::new(db.pool().await, brokers, options).unwrap()),
            Db::Maria { db, .. } => AnyRelay::Maria(Relay::new(db.pool().await, brokers, options).unwrap()),
        }
    }

    /// Runs `pg` or `mysql`, the same statement in each dialect.
    async fn exec(&self, pg: &str, mysql: &str) -> u64 {
        match self {
            Db::Pg { pool, .. } => sqlx::query(pg).execute(pool).await.unwrap().rows_affected(),
            Db::Maria { pool, .. } => sqlx::query(mysql).execute(pool).await.unwrap().rows_affected(),
        }
    }

    /// One integer (a count, a sum) by the same query in both dialects.
    async fn number(&self, sql: &str) -> i64 {
        match self {
            Db::Pg { pool, .. } => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap(),
            Db::Maria { pool, .. } => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap(),
        }
    }

    /// `(attempts, last_error, sent)` of a message.
    async fn row(&self, message_id: &str) -> (i32, Option<String>, bool) {
        match self {
            Db::Pg { pool, .. } => sqlx::query_as(
                "SELECT attempts, last_error, sent_at IS NOT NULL FROM tandem_outbox WHERE message_id = $1",
            )
            .bind(message_id)
            .fetch_one(pool)
            .await
            .unwrap(),
            Db::Maria { pool, .. } => {
                let (a, e, s): (i32, Option<String>, i64) = sqlx::query_as(
                    "SELECT attempts, last_error, sent_at IS NOT NULL FROM tandem_outbox WHERE message_id = ?",
                )
                .bind(message_id)
                .fetch_one(pool)
                .await
                .unwrap();
                (a, e, s == 1)
            }
        }
    }
}

impl AnyRelay {
    async fn pass(&self) -> PassReport {
        match self {
            AnyRelay::Pg(r) => r.pass().await.unwrap(),
            AnyRelay::Maria(r) => r.pass().await.unwrap(),
        }
    }

    async fn purge(&self) -> u64 {
        match self {
            AnyRelay::Pg(r) => r.purge().await.unwrap(),
            AnyRelay::Maria(r) => r.purge().await.unwrap(),
        }
    }

    fn spawn(self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        match self {
            AnyRelay::Pg(r) => r.spawn(cancel),
            AnyRelay::Maria(r) => r.spawn(cancel),
        }
    }
}

/// One POST the consumer received.
#[derive(Debug, Clone)]
struct Call {
    message_id: String,
    key: String,
    seq: i64,
    payload: Value,
    extra: Option<String>,
    content_type: Option<String>,
    status: u16,
}

/// An HTTP consumer on 127.0.0.1 recording every call; answers 503 to the
/// keys in `refusing`, 200 to the rest.
#[derive(Clone, Default)]
struct Consumer {
    calls: Arc<Mutex<Vec<Call>>>,
    refusing: Arc<Mutex<HashSet<String>>>,
}

impl Consumer {
    /// Serves it; returns it and its URL.
    async fn start() -> (Consumer, String) {
        let consumer = Consumer::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let app = axum::Router::new().route("/events", axum::routing::post(receive)).with_state(consumer.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (consumer, url)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls answered 200.
    fn delivered(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.status == 200).collect()
    }

    /// Waits until `n` calls were answered 200.
    async fn wait_delivered(&self, n: usize) -> Vec<Call> {
        eventually(&format!("{n} messages delivered over HTTP"), WAIT, || async {
            let d = self.delivered();
            (d.len() >= n).then_some(d)
        })
        .await
    }
}

async fn receive(State(c): State<Consumer>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let key = header(KEY_HEADER).unwrap_or_default();
    let status =
        if c.refusing.lock().unwrap().contains(&key) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    c.calls.lock().unwrap().push(Call {
        message_id: header(MESSAGE_ID_HEADER).unwrap_or_default(),
        key,
        seq: header(SEQ_HEADER).and_then(|s| s.parse().ok()).unwrap_or(-1),
        payload: serde_json::from_slice(&body).unwrap_or(Value::Null),
        extra: header("X-Extra"),
        content_type: header("content-type"),
        status: status.as_u16(),
    });
    status
}

// ---------------------------------------------------------------------------
// A committed transaction's messages go out; a rolled-back one's never do.
// ---------------------------------------------------------------------------

async fn committed_messages_are_published(db: Db) {
    let (consumer, url) = Consumer::start().await;
    let stream = TestStream::new(NATS_URL);
    let queue = TestQueue::new();
    let brokers = Brokers::new(vec![stream.destination("events"), queue.destination("billing")], TIMEOUT).unwrap();
    let cancel = CancellationToken::new();
    let relay = db.relay(brokers, fast()).spawn(cancel.clone());

    let messages = [
        OutboxMessage::new("order-1", OutboxTarget::http(&url), json!({"order": 1, "to": "http"}))
            .header("X-Extra", "e"),
        OutboxMessage::new("order-1", OutboxTarget::destination("events"), json!({"order": 1, "to": "nats"}))
            .header("X-Extra", "n"),
        OutboxMessage::new("order-1", OutboxTarget::destination("billing"), json!({"order": 1, "to": "rabbit"})),
    ];
    let enqueued = db.business("order-1", &messages, End::Commit).await;
    assert_eq!(enqueued.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);

    let http = consumer.wait_delivered(1).await;
    assert_eq!(http.len(), 1);
    assert_eq!(http[0].message_id, enqueued[0].message_id);
    assert_eq!((http[0].key.as_str(), http[0].seq), ("order-1", 1));
    assert_eq!(http[0].payload, json!({"order": 1, "to": "http"}));
    assert_eq!(http[0].extra.as_deref(), Some("e"));
    assert_eq!(http[0].content_type.as_deref(), Some("application/json"));

    let nats = stream.read(1).await;
    assert_eq!(serde_json::from_slice::<Value>(&nats[0].payload).unwrap(), json!({"order": 1, "to": "nats"}));
    assert_eq!(nats_header(&nats[0], "Nats-Msg-Id"), Some(enqueued[1].message_id.clone()));
    assert_eq!(nats_header(&nats[0], KEY_HEADER).as_deref(), Some("order-1"));
    assert_eq!(nats_header(&nats[0], SEQ_HEADER).as_deref(), Some("2"));
    assert_eq!(nats_header(&nats[0], "X-Extra").as_deref(), Some("n"));

    let rabbit = queue.take(1).await;
    assert_eq!(serde_json::from_slice::<Value>(&rabbit[0].data).unwrap(), json!({"order": 1, "to": "rabbit"}));
    assert_eq!(rabbit[0].properties.message_id().as_ref().map(|s| s.to_string()), Some(enqueued[2].message_id.clone()));
    assert_eq!(amqp_header(&rabbit[0], SEQ_HEADER).as_deref(), Some("3"));

    // Marked sent, one attempt each; kept until the purge.
    for e in &enqueued {
        let id = e.message_id.clone();
        eventually("marked sent", WAIT, || async { db.row(&id).await.2.then_some(()) }).await;
        assert_eq!(db.row(&id).await, (1, None, true));
    }
    assert_eq!(db.number("SELECT count(*) FROM orders").await, 1);
    cancel.cancel();
    relay.await.unwrap();
    stream.delete().await;
    queue.delete().await;
}

async fn rolled_back_messages_are_never_published(db: Db) {
    let (consumer, url) = Consumer::start().await;
    let cancel = CancellationToken::new();
    let relay = db.relay(Brokers::empty(), fast()).spawn(cancel.clone());
    let lost = OutboxMessage::new("k", OutboxTarget::http(&url), json!({"n": "rolled back"}));
    db.business("rolled-back", &[lost], End::Rollback).await;
    let kept = OutboxMessage::new("k", OutboxTarget::http(&url), json!({"n": "committed"}));
    let kept = db.business("committed", &[kept], End::Commit).await;
    // Once the later message went out, the earlier one had its chance.
    let calls = consumer.wait_delivered(1).await;
    cancel.cancel();
    relay.await.unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].payload, json!({"n": "committed"}));
    assert_eq!(calls[0].message_id, kept[0].message_id);
    // The rolled-back enqueue took no seq either: the key's first message is 1.
    assert_eq!(calls[0].seq, 1);
    assert_eq!(consumer.calls().len(), 1);
    assert_eq!(db.number("SELECT count(*) FROM tandem_outbox").await, 1);
    assert_eq!(db.number("SELECT count(*) FROM orders").await, 1);
}

#[tokio::test]
async fn postgres_committed_messages_are_published_to_http_nats_and_rabbit() {
    committed_messages_are_published(Db::pg("outbox_commit").await).await;
}

#[tokio::test]
async fn mariadb_committed_messages_are_published_to_http_nats_and_rabbit() {
    committed_messages_are_published(Db::maria("outbox_commit").await).await;
}

#[tokio::test]
async fn postgres_rolled_back_messages_are_never_published() {
    rolled_back_messages_are_never_published(Db::pg("outbox_rollback").await).await;
}

#[tokio::test]
async fn mariadb_rolled_back_messages_are_never_published() {
    rolled_back_messages_are_never_published(Db::maria("outbox_rollback").await).await;
}

// ---------------------------------------------------------------------------
// Two relays on one database.
// ---------------------------------------------------------------------------

const KEYS: usize = 8;
const PER_KEY: usize = 30;

async fn two_relays_publish_every_message_once_in_key_order(db: Db) {
    let db = Arc::new(db);
    let (consumer, url) = Consumer::start().await;
    // Small batches, so that the two relays take turns.
    let options = RelayOptions { batch_size: 4, concurrency: 4, ..fast() };
    let relays = [db.relay(Brokers::empty(), options.clone()), db.other_relay(Brokers::empty(), options).await];
    let cancel = CancellationToken::new();
    let published: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut tasks = Vec::new();
    for (i, relay) in relays.into_iter().enumerate() {
        let (cancel, published) = (cancel.clone(), published.clone());
        tasks.push(tokio::spawn(async move {
            while !cancel.is_cancelled() {
                let r = relay.pass().await;
                published[i].fetch_add(r.published, Ordering::SeqCst);
                if r.claimed == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    // The keys' producers run at once, while the relays run; each key's
    // messages are enqueued one transaction after another.
    let producers: Vec<_> = (0..KEYS)
        .map(|k| {
            let (db, url) = (db.clone(), url.clone());
            tokio::spawn(async move {
                for n in 1..=PER_KEY {
                    let m = OutboxMessage::new(format!("key-{k}"), OutboxTarget::http(&url), json!({"k": k, "n": n}));
                    db.business(&format!("order-{k}-{n}"), &[m], End::Commit).await;
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    let calls = consumer.wait_delivered(KEYS * PER_KEY).await;
    cancel.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    // Exactly one call per message (the consumer always answered 200).
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for c in &calls {
        *per_id.entry(&c.message_id).or_default() += 1;
    }
    assert_eq!(per_id.len(), KEYS * PER_KEY, "every message arrived");
    assert!(per_id.values().all(|&n| n == 1), "none published twice");
    assert_eq!(consumer.calls().len(), KEYS * PER_KEY);
    // Per key, in the order enqueued, as received.
    let mut by_key: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for c in &calls {
        by_key.entry(&c.key).or_default().push((c.seq, c.payload["n"].as_i64().unwrap()));
    }
    assert_eq!(by_key.len(), KEYS);
    let expected: Vec<(i64, i64)> = (1..=PER_KEY as i64).map(|n| (n, n)).collect();
    for (key, got) in by_key {
        assert_eq!(got, expected, "{key}: seq and payload in order");
    }
    let [a, b] = [published[0].load(Ordering::SeqCst), published[1].load(Ordering::SeqCst)];
    assert_eq!(a + b, KEYS * PER_KEY);
    println!("relay A published {a}, relay B {b}");
    assert_eq!(db.number("SELECT count(*) FROM tandem_outbox WHERE sent_at IS NULL").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_relays_publish_every_message_once_in_key_order() {
    two_relays_publish_every_message_once_in_key_order(Db::pg("outbox_two").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_two_relays_publish_every_message_once_in_key_order() {
    two_relays_publish_every_message_once_in_key_order(Db::maria("outbox_two").await).await;
}

// ---------------------------------------------------------------------------
// A consumer refusing one key: retried, that key waits, the others go on.
// ---------------------------------------------------------------------------

async fn a_refused_message_is_retried_and_holds_back_only_its_key(db: Db) {
    let (consumer, url) = Consumer::start().await;
    consumer.refusing.lock().unwrap().insert("slow".into());
    let cancel = CancellationToken::new();
    let relay = db.relay(Brokers::empty(), fast()).spawn(cancel.clone());
    let m = |key: &str, n: i64| OutboxMessage::new(key, OutboxTarget::http(&url), json!({"n": n}));
    let slow = db.business("o1", &[m("slow", 1), m("slow", 2)], End::Commit).await;
    db.business("o2", &[m("fast", 1), m("fast", 2)], End::Commit).await;

    // The other key is delivered while the slow one is refused, retried.
    let first = slow[0].message_id.clone();
    eventually("the refused message retried a few times", WAIT, || async {
        (db.row(&first).await.0 >= 3).then_some(())
    })
    .await;
    let (attempts, last_error, sent) = db.row(&first).await;
    assert!(!sent && attempts >= 3);
    assert!(last_error.as_deref().unwrap_or_default().contains("503"), "{last_error:?}");
    let delivered = consumer.delivered();
    assert_eq!(delivered.iter().map(|c| (c.key.as_str(), c.seq)).collect::<Vec<_>>(), vec![("fast", 1), ("fast", 2)]);
    // The key's later message waits: never tried while the first is unsent.
    assert!(consumer.calls().iter().filter(|c| c.key == "slow").all(|c| c.seq == 1));
    assert_eq!(db.row(&slow[1].message_id).await, (0, None, false));

    consumer.refusing.lock().unwrap().clear();
    let delivered = consumer.wait_delivered(4).await;
    cancel.cancel();
    relay.await.unwrap();
    let slow_delivered: Vec<i64> = delivered.iter().filter(|c| c.key == "slow").map(|c| c.seq).collect();
    assert_eq!(slow_delivered, vec![1, 2]);
    let (attempts_after, last_error, sent) = db.row(&first).await;
    assert!(sent && attempts_after > attempts);
    assert_eq!(last_error, None);
    // The second was published once, after the first.
    assert_eq!(db.row(&slow[1].message_id).await, (1, None, true));
}

#[tokio::test]
async fn postgres_a_refused_message_is_retried_and_holds_back_only_its_key() {
    a_refused_message_is_retried_and_holds_back_only_its_key(Db::pg("outbox_refused").await).await;
}

#[tokio::test]
async fn mariadb_a_refused_message_is_retried_and_holds_back_only_its_key() {
    a_refused_message_is_retried_and_holds_back_only_its_key(Db::maria("outbox_refused").await).await;
}

// ---------------------------------------------------------------------------
// The purge.
// ---------------------------------------------------------------------------

async fn the_purge_removes_old_sent_messages_only(db: Db) {
    let (consumer, url) = Consumer::start().await;
    let relay = db.relay(Brokers::empty(), fast());
    let m = |key: &str| OutboxMessage::new(key, OutboxTarget::http(&url), json!({}));
    let old = db.business("o1", &[m("old"), m("old")], End::Commit).await;
    let recent = db.business("o2", &[m("recent")], End::Commit).await;
    while relay.pass().await.claimed > 0 {}
    assert_eq!(consumer.delivered().len(), 3);
    // Unsent and old: to a destination this relay does not have.
    let stuck = OutboxMessage::new("stuck", OutboxTarget::destination("nowhere"), json!({}));
    let stuck = db.business("o3", &[stuck], End::Commit).await;
    assert_eq!(relay.pass().await, PassReport { claimed: 1, published: 0, failed: 1 });

    // Age everything by eight days (the default retention is seven).
    db.exec(
        "UPDATE tandem_outbox SET created_at = created_at - interval '8 days', sent_at = sent_at - interval '8 days' \
         WHERE ordering_key IN ('old', 'stuck')",
        "UPDATE tandem_outbox SET created_at = created_at - INTERVAL 8 DAY, sent_at = sent_at - INTERVAL 8 DAY \
         WHERE ordering_key IN ('old', 'stuck')",
    )
    .await;
    db.exec(
        "UPDATE tandem_outbox_key SET updated_at = updated_at - interval '8 days' WHERE ordering_key IN ('old', 'stuck')",
        "UPDATE tandem_outbox_key SET updated_at = updated_at - INTERVAL 8 DAY WHERE ordering_key IN ('old', 'stuck')",
    )
    .await;
    assert_eq!(relay.purge().await, 2, "the two old sent messages");
    assert_eq!(relay.purge().await, 0);
    let left = db.number("SELECT count(*) FROM tandem_outbox").await;
    assert_eq!(left, 2, "the recent sent message and the old unsent one stay");
    assert!(db.row(&recent[0].message_id).await.2);
    let (_, error, sent) = db.row(&stuck[0].message_id).await;
    assert!(!sent && error.unwrap().contains("unknown destination"));
    for o in &old {
        let n = db.number(&format!("SELECT count(*) FROM tandem_outbox WHERE message_id = '{}'", o.message_id)).await;
        assert_eq!(n, 0);
    }
    // The key with no message left goes too; the others stay.
    let keys = db.number("SELECT count(*) FROM tandem_outbox_key").await;
    assert_eq!(keys, 2, "recent and stuck");
    // A key used again after its purge starts at 1.
    let again = db.business("o4", &[m("old")], End::Commit).await;
    assert_eq!(again[0].seq, 1);
}

#[tokio::test]
async fn postgres_the_purge_removes_old_sent_messages_only() {
    the_purge_removes_old_sent_messages_only(Db::pg("outbox_purge").await).await;
}

#[tokio::test]
async fn mariadb_the_purge_removes_old_sent_messages_only() {
    the_purge_removes_old_sent_messages_only(Db::maria("outbox_purge").await).await;
}
