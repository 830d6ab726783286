//! The outbox (the local message table): messages written in the
//! business transaction, published afterwards by a relay in the service
//! itself. No coordinator is involved. Reference: `docs/outbox.md`.
//!
//! - [`Outbox::enqueue`] inserts a message into `tandem_outbox` through the
//!   business code's own sqlx transaction: the message commits or rolls back
//!   with the business rows.
//! - A [`Relay`] (one or more per database, in any processes) publishes
//!   committed messages: to an HTTP endpoint (POST, 2xx) or to a broker
//!   destination of its [`tandem_brokers::Brokers`] (confirmed by the
//!   broker), and marks each sent in the transaction that claimed it.
//!   A publish that fails is retried with backoff, forever.
//!
//! Guarantees: **at least once** (a relay that dies between the broker's
//! confirmation and its commit publishes again: every message carries the
//! same id on every attempt, for consumers and JetStream to dedupe), and
//! **per-key order**: messages of one [`OutboxMessage::key`] are published
//! one after another in the order their transactions committed, each only
//! once the one before was confirmed; a message that keeps failing holds
//! its key's later messages back (and no other key's).
//!
//! PostgreSQL and MySQL/MariaDB alike ([`OutboxDb`]): `Outbox` for
//! PostgreSQL, `Outbox<sqlx::MySql>` for MySQL 8 and MariaDB 10.6+.
//!
//! ```no_run
//! use serde_json::json;
//! use std::time::Duration;
//! use tandem_sdk::outbox::{Outbox, OutboxMessage, OutboxTarget, RelayOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let outbox = Outbox::new(pool.clone());
//! outbox.install().await?; // tandem_outbox, if absent
//!
//! // The relay, in the service's process: destinations as configured.
//! let orders = "orders=nats://127.0.0.1:4222?subject=orders.placed&stream=ORDERS".parse()?;
//! let brokers = tandem_brokers::Brokers::new(vec![orders], Duration::from_secs(5))?;
//! let cancel = CancellationToken::new();
//! let relay = outbox.relay(brokers, RelayOptions::default())?.spawn(cancel.clone());
//!
//! // The business transaction.
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
//! let placed = json!({"order": 42, "event": "placed"});
//! outbox.enqueue(&mut *tx, &OutboxMessage::new("order-42", OutboxTarget::destination("orders"), placed)).await?;
//! outbox.enqueue(&mut *tx, &OutboxMessage::new("order-42", OutboxTarget::http("http://billing:8080/orders"), json!({"order": 42}))).await?;
//! tx.commit().await?;
//! outbox.wake(); // the relay looks now rather than at its next poll
//!
//! // At shutdown:
//! cancel.cancel();
//! relay.await?;
//! # Ok(()) }
//! ```

mod db;
mod relay;

pub use db::OutboxDb;
pub use relay::{PassReport, Relay, RelayOptions};

use sqlx::{Pool, Postgres};
use std::sync::Arc;
use tokio::sync::Notify;

/// Longest ordering key, in characters.
pub const MAX_KEY_CHARS: usize = 255;
/// Longest HTTP target URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Most headers a message carries.
pub const MAX_HEADERS: usize = 32;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 128;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// The header (HTTP, NATS, AMQP) carrying the message id.
pub const MESSAGE_ID_HEADER: &str = tandem_wire::MESSAGE_ID_HEADER;
/// The header carrying the message's ordering key.
pub const KEY_HEADER: &str = "Tandem-Outbox-Key";
/// The header carrying the message's sequence number within its key
/// (1, 2, ...; it starts again at 1 for a key unused for the retention).
pub const SEQ_HEADER: &str = "Tandem-Outbox-Seq";

/// Headers the relay sets itself, which a message may not carry.
const RESERVED_HEADERS: &[&str] = &[
    MESSAGE_ID_HEADER,
    KEY_HEADER,
    SEQ_HEADER,
    "Content-Type",
    "Content-Length",
    "Host",
    "Transfer-Encoding",
    "Nats-Msg-Id",
    tandem_brokers::MESSAGE_ID_HEADER,
];

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxTarget {
    /// POSTed as JSON to `url`; any 2xx answer is done, anything else (or
    /// no answer) is retried.
    Http {
        /// `http://` or `https://`.
        url: String,
    },
    /// Published to the broker destination `name` configured in the
    /// relay's [`tandem_brokers::Brokers`], done once the broker confirmed
    /// it. A name the relay does not know fails (and is retried) like an
    /// unreachable broker.
    Destination {
        /// A [`tandem_brokers::DestinationName`].
        name: String,
    },
}

impl OutboxTarget {
    /// An HTTP endpoint.
    pub fn http(url: impl Into<String>) -> OutboxTarget {
        OutboxTarget::Http { url: url.into() }
    }

    /// A broker destination of the relay.
    pub fn destination(name: impl Into<String>) -> OutboxTarget {
        OutboxTarget::Destination { name: name.into() }
    }

    fn kind(&self) -> &'static str {
        match self {
            OutboxTarget::Http { .. } => "http",
            OutboxTarget::Destination { .. } => "destination",
        }
    }

    fn text(&self) -> &str {
        match self {
            OutboxTarget::Http { url } => url,
            OutboxTarget::Destination { name } => name,
        }
    }
}

/// One message to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The ordering key (1 to 255 characters of printable ASCII): messages
    /// of one key are published in commit order, one at a time. Usually the
    /// id of the business entity the message is about.
    pub key: String,
    /// Where it goes.
    pub target: OutboxTarget,
    /// The body (sent as JSON).
    pub payload: serde_json::Value,
    /// Headers sent with it (HTTP headers, NATS headers, AMQP header-table
    /// entries): names are HTTP header names, values printable ASCII.
    pub headers: Vec<(String, String)>,
}

impl OutboxMessage {
    /// A message of `key` to `target`, without headers.
    pub fn new(key: impl Into<String>, target: OutboxTarget, payload: serde_json::Value) -> OutboxMessage {
        OutboxMessage { key: key.into(), target, payload, headers: Vec::new() }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> OutboxMessage {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Checks everything the relay and the brokers will need, so that a
    /// message that could never be published is refused at enqueue, in the
    /// business transaction, rather than blocking its key later.
    fn check(&self) -> Result<(), OutboxError> {
        let invalid = |why: String| Err(OutboxError::Invalid(why));
        if self.key.is_empty() || self.key.chars().count() > MAX_KEY_CHARS {
            return invalid(format!("the key has 1 to {MAX_KEY_CHARS} characters"));
        }
        if !self.key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return invalid("the key is printable ASCII (it is sent as a header)".into());
        }
        match &self.target {
            OutboxTarget::Http { url } => {
                if url.len() > MAX_URL_BYTES {
                    return invalid(format!("the URL is longer than {MAX_URL_BYTES} bytes"));
                }
                match reqwest::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                    Ok(_) => return invalid("an HTTP target is an http:// or https:// URL with a host".into()),
                    Err(e) => return invalid(format!("the URL does not parse: {e}")),
                }
            }
            OutboxTarget::Destination { name } => {
                tandem_brokers::DestinationName::parse(name).map_err(|e| OutboxError::Invalid(e.to_string()))?;
            }
        }
        if self.headers.len() > MAX_HEADERS {
            return invalid(format!("at most {MAX_HEADERS} headers"));
        }
        for (name, value) in &self.headers {
            if name.len() > MAX_HEADER_NAME_BYTES || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return invalid(format!("header name {name:?} is not an HTTP header name of at most 128 bytes"));
            }
            if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
                return invalid(format!("header {name:?} is set by the relay"));
            }
            if value.len() > MAX_HEADER_VALUE_BYTES || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return invalid(format!("the value of header {name:?} is printable ASCII, at most 4096 bytes"));
            }
        }
        Ok(())
    }
}

/// A message as enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// Its id, sent with every attempt (a UUID).
    pub message_id: String,
    /// Its sequence number within its key.
    pub seq: i64,
}

/// A message as the relay found it in the table.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) id: i64,
    pub(crate) message_id: String,
    pub(crate) key: String,
    pub(crate) seq: i64,
    pub(crate) target: OutboxTarget,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) attempts: i32,
}

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The message cannot be published as written; nothing was inserted.
    #[error("invalid outbox message: {0}")]
    Invalid(String),
    /// The database failed. From [`Outbox::enqueue`], the business
    /// transaction should be rolled back (on MySQL/MariaDB a deadlock
    /// between enqueues of the same keys in opposite orders lands here too:
    /// run the transaction again).
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// The relay's HTTP client could not be built.
    #[error("outbox relay HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The outbox of one database: [`Outbox::enqueue`] for the business code,
/// [`Outbox::relay`] for the relay of this process. Cheap to clone.
pub struct Outbox<DB: OutboxDb = Postgres> {
    /// The service's database.
    pool: Pool<DB>,
    /// Shared with the relays made by [`Outbox::relay`]: [`Outbox::wake`]
    /// has them look at once.
    wake: Arc<Notify>,
}

impl<DB: OutboxDb> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Outbox { pool: self.pool.clone(), wake: self.wake.clone() }
    }
}

impl<DB: OutboxDb> std::fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl<DB: OutboxDb> Outbox<DB> {
    /// The outbox in the database of `pool`.
    pub fn new(pool: Pool<DB>) -> Outbox<DB> {
        Outbox { pool, wake: Arc::new(Notify::new()) }
    }

    /// Creates the outbox tables if absent (the migration file of this
    /// database, `participant-sdk/migrations/*/…_tandem_outbox.sql`).
    pub async fn install(&self) -> Result<(), sqlx::Error> {
        DB::install(&self.pool).await
    }

    /// Inserts `message` through `conn`, the business code's transaction
    /// (`&mut *tx`): it is published only if that transaction commits.
    /// Refuses a message that could never be published
    /// ([`OutboxError::Invalid`]) without writing anything.
    ///
    /// Enqueue locks the key's row of `tandem_outbox_key` until the
    /// transaction ends, so that messages of a key get their order in
    /// commit order: transactions enqueueing the same key wait for each
    /// other (as they would on the business row the key names). Enqueue
    /// several keys in one consistent order, as with any locks.
    pub async fn enqueue(&self, conn: &mut DB::Connection, message: &OutboxMessage) -> Result<Enqueued, OutboxError> {
        message.check()?;
        let payload = serde_json::to_vec(&message.payload).map_err(|e| OutboxError::Invalid(e.to_string()))?;
        let headers = serde_json::to_string(&message.headers).map_err(|e| OutboxError::Invalid(e.to_string()))?;
        // Time-ordered, so that ids sort as messages were made.
        let message_id = uuid::Uuid::now_v7().to_string();
        let row = db::NewRow {
            message_id: &message_id,
            key: &message.key,
            target_kind: message.target.kind(),
            target: message.target.text(),
            payload: &payload,
            headers: &headers,
        };
        let seq = DB::insert(conn, &row).await?;
        Ok(Enqueued { message_id, seq })
    }

    /// Has this process's relays (those made by [`Outbox::relay`]) look for
    /// messages now instead of at their next poll. Call it after committing
    /// a transaction that enqueued; without it, the messages go at the
    /// relay's next poll (and other processes' relays find them by polling
    /// in any case).
    pub fn wake(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// A relay on this outbox's database, woken by [`Outbox::wake`].
    pub fn relay(&self, brokers: tandem_brokers::Brokers, options: RelayOptions) -> Result<Relay<DB>, OutboxError> {
        Relay::with_wake(self.pool.clone(), brokers, options, self.wake.clone())
    }

    /// The database.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(key: &str, target: OutboxTarget) -> OutboxMessage {
        OutboxMessage::new(key, target, json!({"a": 1}))
    }

    #[test]
    fn good_messages_pass_the_check() {
        assert!(msg("order-42", OutboxTarget::http("http://billing:8080/orders")).check().is_ok());
        assert!(msg("k", OutboxTarget::destination("orders.v2")).header("X-Trace", "abc").check().is_ok());
        assert!(msg(&"k".repeat(MAX_KEY_CHARS), OutboxTarget::destination("o")).check().is_ok());
    }

    #[test]
    fn messages_that_could_never_be_published_are_refused() {
        let bad = [
            msg("", OutboxTarget::destination("o")),
            msg(&"k".repeat(MAX_KEY_CHARS + 1), OutboxTarget::destination("o")),
            msg("clé", OutboxTarget::destination("o")),
            msg("k\n", OutboxTarget::destination("o")),
            msg("k", OutboxTarget::http("ftp://h/x")),
            msg("k", OutboxTarget::http("not a url")),
            msg("k", OutboxTarget::destination("no spaces")),
            msg("k", OutboxTarget::destination("o")).header("Bad Name", "v"),
            msg("k", OutboxTarget::destination("o")).header("X-Ok", "line\nbreak"),
            msg("k", OutboxTarget::destination("o")).header("tandem-message-id", "mine"),
            msg("k", OutboxTarget::destination("o")).header("nats-msg-id", "mine"),
        ];
        for m in bad {
            assert!(matches!(m.check(), Err(OutboxError::Invalid(_))), "{m:?}");
        }
    }
}
