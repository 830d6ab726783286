//! Two-phase messages (mode `msg`): the producer's side and the consumer's
//! (reference: `docs/messages.md`).
//!
//! **Producer.** [`Producer::submit_in`] makes a local transaction and a
//! message commit together: it prepares the message at the coordinator
//! (durable before anything else), runs the business code in a local sqlx
//! transaction together with a barrier row for the message, commits, and
//! submits. An error in the business code rolls back and aborts. If the
//! producer dies between its commit and the submit, the coordinator asks
//! it once the message's timeout passed ([`Producer::router`] serves that
//! back-check): the answer comes from the barrier row — present, the local
//! transaction committed; absent, the check inserts it as "rolled back"
//! first, so that a local transaction still running fails on the barrier's
//! key when it commits instead of committing a message already dropped.
//!
//! **Consumer.** [`Consumer`] runs a delivery's work and a dedupe row in
//! one local transaction keyed by the message's id (`{xid}/{branch_id}`):
//! a redelivery (the coordinator retries until it gets a 2xx, and brokers
//! deliver at least once) has no second effect. It serves the coordinator's
//! HTTP deliveries ([`Consumer::router`]) and messages read from a broker
//! ([`Consumer::receive`], with the `Tandem-Message-Id` header).
//!
//! Both use the branch barrier table of the saga participant
//! (`tandem_barrier`, [`crate::saga::barrier`]), on PostgreSQL and
//! MySQL/MariaDB: a message's producer row is `(xid, "msg", action)`, with
//! origin `action` when the local transaction committed it and `compensate`
//! when a back-check took the key first; a consumer's row is
//! `(xid, branch_id, action)`.
//!
//! ```no_run
//! use serde_json::json;
//! use tandem_sdk::msg::{Message, Producer};
//!
//! # async fn run(pool: sqlx::PgPool, client: tandem_sdk::TandemClient) -> Result<(), Box<dyn std::error::Error>> {
//! let producer = Producer::new(pool, client, "http://orders:8080")?;
//! producer.install().await?;
//! let app = axum::Router::new().merge(producer.router()); // the back-check endpoint
//! // ... serve `app`; then, for each order:
//! let msg = Message::new("order-placed")
//!     .deliver("http://shipping:8080/orders/placed", json!({"order": 42}))
//!     .publish("orders", json!({"order": 42})); // a destination configured at the coordinator
//! let (order_id, _submitted) = producer
//!     .submit_in(&msg, |tx| {
//!         Box::pin(async move {
//!             sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
//!             Ok(42)
//!         })
//!     })
//!     .await?;
//! # let _ = (app, order_id); Ok(()) }
//! ```

mod consumer;
mod producer;

pub use consumer::{ConsumeError, Consumer, Delivered, Delivery, DeliveryHandler};
pub use producer::{Producer, CHECK_PATH};

use crate::client::ClientError;
use crate::BoxError;
use std::time::Duration;
use tandem_wire::{DeliveryOrder, DeliveryRequest, MessageRequest};

/// The branch id of a producer's barrier row (one per message).
pub const PRODUCER_BRANCH: &str = "msg";

/// A message to prepare: its deliveries, their order, and its timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Name for operators.
    name: Option<String>,
    /// The deliveries in list order.
    deliveries: Vec<DeliveryRequest>,
    /// All at once, or in list order.
    order: DeliveryOrder,
    /// How long it may stay prepared before the back-check.
    timeout: Option<Duration>,
}

impl Message {
    /// An empty message named `name` (operators see the name).
    pub fn new(name: impl Into<String>) -> Message {
        Message { name: Some(name.into()), deliveries: Vec::new(), order: DeliveryOrder::Concurrent, timeout: None }
    }

    /// Adds an HTTP delivery: the coordinator POSTs a `deliver` callback
    /// with `payload` to `url` until it answers 2xx.
    pub fn deliver(mut self, url: impl Into<String>, payload: serde_json::Value) -> Message {
        self.deliveries.push(DeliveryRequest {
            name: None,
            url: Some(url.into()),
            destination: None,
            payload: Some(payload),
        });
        self
    }

    /// Adds a broker delivery to `destination`, a name configured at the
    /// coordinator (`--destination`): `payload` is published there until the
    /// broker confirms it.
    pub fn publish(mut self, destination: impl Into<String>, payload: serde_json::Value) -> Message {
        self.deliveries.push(DeliveryRequest {
            name: None,
            url: None,
            destination: Some(destination.into()),
            payload: Some(payload),
        });
        self
    }

    /// Names the last delivery added (its branch's `resource`).
    pub fn named(mut self, name: impl Into<String>) -> Message {
        if let Some(d) = self.deliveries.last_mut() {
            d.name = Some(name.into());
        }
        self
    }

    /// Delivers one after another in the order added, each once the one
    /// before was acknowledged (default: all at once).
    pub fn in_order(mut self) -> Message {
        self.order = DeliveryOrder::InOrder;
        self
    }

    /// How long the message may stay prepared before the coordinator
    /// back-checks it (default: the coordinator's default timeout). Longer
    /// than the producer's local transaction usually takes.
    pub fn timeout(mut self, timeout: Duration) -> Message {
        self.timeout = Some(timeout);
        self
    }

    /// The request that prepares it, with `check_url` as its back-check.
    pub fn request(&self, check_url: &str) -> MessageRequest {
        MessageRequest {
            name: self.name.clone(),
            timeout_ms: self.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            check_url: check_url.to_owned(),
            order: (self.order != DeliveryOrder::Concurrent).then_some(self.order),
            deliveries: self.deliveries.clone(),
        }
    }
}

/// A producer's or consumer's failure.
#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    /// The coordinator refused or could not be reached before anything
    /// committed locally (the prepare, or an abort after a local rollback).
    #[error("coordinator: {0}")]
    Coordinator(#[from] ClientError),
    /// The business code failed: the local transaction rolled back and the
    /// message was aborted (or, if the abort failed, will be dropped by the
    /// back-check).
    #[error("business transaction failed, message aborted: {0}")]
    Business(BoxError),
    /// The local database failed; nothing committed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A back-check dropped the message before the local transaction could
    /// commit (it ran longer than the message's timeout): it rolled back.
    #[error("the message was dropped by a back-check before the local transaction committed; it rolled back")]
    Dropped,
    /// The local transaction committed but the submit failed: the
    /// coordinator delivers the message after its back-check (the message
    /// is not lost; this is only later).
    #[error("committed locally; submit failed ({0}); the back-check will deliver the message")]
    SubmitPending(ClientError),
    /// The base URL is not an absolute http(s) URL.
    #[error("invalid public base URL {0:?}")]
    InvalidUrl(String),
}
