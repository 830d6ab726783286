//! Publishing to message brokers with the broker's confirmation: NATS
//! JetStream (the stream's publish ack) and RabbitMQ (publisher confirms).
//! Used by the coordinator for a message's broker deliveries and by the
//! SDK's outbox relay; both name destinations, configured once as
//! `NAME=URL` ([`Destination`]), and publish through [`Brokers`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tandem_brokers::{Brokers, Destination, Outgoing};
//!
//! let orders: Destination = "orders=nats://127.0.0.1:4222?subject=orders.placed&stream=ORDERS".parse()?;
//! let brokers = Brokers::new(vec![orders], Duration::from_secs(5))?;
//! let msg = Outgoing { message_id: "order-42-placed", payload: br#"{"order":42}"#, headers: &[("Tandem-Key", "42")] };
//! brokers.publish("orders", &msg).await?; // returns once JetStream stored it
//! # Ok(()) }
//! ```
//!
//! Delivery is at least once: a publish whose confirmation was lost (a
//! timeout, a connection broken after the broker stored the message) is an
//! error, and the caller publishing again sends the message twice. The
//! message id is what makes that harmless: JetStream drops a repeat of a
//! `Nats-Msg-Id` within the stream's duplicate window (two minutes by
//! default), and RabbitMQ consumers deduplicate on the `message_id`
//! property or the `tandem-message-id` header.

mod destination;
mod nats;
mod rabbit;

pub use destination::{Destination, DestinationError, DestinationName, Target, MAX_NAME_CHARS};
pub use rabbit::MESSAGE_ID_HEADER;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One message to publish.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The message's id, the same on every attempt: `Nats-Msg-Id` on NATS,
    /// the `message_id` property and the `tandem-message-id` header on
    /// RabbitMQ.
    pub message_id: &'a str,
    /// The body, as is.
    pub payload: &'a [u8],
    /// Headers added to the message (NATS headers; AMQP header table
    /// entries, as long strings).
    pub headers: &'a [(&'a str, &'a str)],
}

/// Why a publish did not end confirmed. Every variant but
/// [`PublishError::UnknownDestination`] may succeed if tried again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No destination of that name is configured.
    #[error("unknown destination {0:?}")]
    UnknownDestination(String),
    /// The broker could not be reached or did not confirm in time (connect
    /// failed, broker down, connection lost, timeout): retry later. The
    /// message may have been stored all the same.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered and did not take the message: nacked, unroutable
    /// (RabbitMQ returned it), no stream captures the subject, no such
    /// exchange, an invalid header. Callers retry it later too (a stream or
    /// a binding may be added), but it says so: it needs someone's attention.
    #[error("refused by the broker: {0}")]
    Refused(String),
}

impl PublishError {
    /// Whether the destination is not configured (a retry cannot help
    /// until the configuration changes).
    pub fn is_unknown_destination(&self) -> bool {
        matches!(self, PublishError::UnknownDestination(_))
    }
}

/// Publishers for a set of named destinations. Cheap to clone (an `Arc`
/// inside). Connects lazily, per broker URL, on the first publish that
/// needs it, and again after a failure; destinations with the same URL
/// share one connection (one channel on RabbitMQ). Every publish, connect
/// included, is bounded by the timeout given to [`Brokers::new`].
#[derive(Clone)]
pub struct Brokers {
    inner: Arc<Inner>,
}

/// What every clone of a [`Brokers`] shares.
struct Inner {
    /// The destinations, in configuration order (for [`Brokers::names`]).
    routes: Vec<Route>,
    /// Index into `routes` by name.
    by_name: HashMap<String, usize>,
    /// Bound of every publish, connect included.
    timeout: Duration,
}

/// A destination with the link to its broker.
struct Route {
    /// The destination as configured.
    destination: Destination,
    /// Its broker's connection, shared with the other destinations of the URL.
    link: Link,
}

/// The connection to one broker URL.
#[derive(Clone)]
enum Link {
    Nats(Arc<nats::NatsLink>),
    Rabbit(Arc<rabbit::RabbitLink>),
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Brokers")
            .field("destinations", &self.inner.routes.iter().map(|r| &r.destination).collect::<Vec<_>>())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Brokers {
    /// Publishers for `destinations` (names must differ), each publish
    /// bounded by `timeout`. Connects to nothing yet.
    pub fn new(destinations: Vec<Destination>, timeout: Duration) -> Result<Brokers, DestinationError> {
        let mut links: HashMap<String, Link> = HashMap::new();
        let mut by_name = HashMap::new();
        let mut routes = Vec::with_capacity(destinations.len());
        for destination in destinations {
            let name = destination.name.as_str().to_owned();
            if by_name.contains_key(&name) {
                return Err(DestinationError::Duplicate(name));
            }
            let url = destination.target.url().to_owned();
            let link = match (links.get(&url), &destination.target) {
                (Some(link), _) => link.clone(),
                (None, Target::Nats { .. }) => Link::Nats(Arc::new(nats::NatsLink::new(&url))),
                (None, Target::Rabbit { .. }) => {
                    let link = rabbit::RabbitLink::new(&url)
                        .map_err(|reason| DestinationError::Url { name: name.clone(), reason })?;
                    Link::Rabbit(Arc::new(link))
                }
            };
            links.insert(url, link.clone());
            by_name.insert(name, routes.len());
            routes.push(Route { destination, link });
        }
        Ok(Brokers { inner: Arc::new(Inner { routes, by_name, timeout }) })
    }

    /// No destinations: every publish is [`PublishError::UnknownDestination`].
    pub fn empty() -> Brokers {
        Brokers { inner: Arc::new(Inner { routes: Vec::new(), by_name: HashMap::new(), timeout: Duration::ZERO }) }
    }

    /// Whether a destination of that name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.by_name.contains_key(name)
    }

    /// The configured destinations' names, in configuration order.
    pub fn names(&self) -> Vec<&str> {
        self.inner.routes.iter().map(|r| r.destination.name.as_str()).collect()
    }

    /// The configured destination of that name.
    pub fn get(&self, name: &str) -> Option<&Destination> {
        self.inner.by_name.get(name).map(|&i| &self.inner.routes[i].destination)
    }

    /// Publishes `msg` to the destination `name` and returns only once the
    /// broker confirmed it (JetStream ack, RabbitMQ confirm Ack), within the
    /// timeout, connecting first if needed.
    pub async fn publish(&self, name: &str, msg: &Outgoing<'_>) -> Result<(), PublishError> {
        let route = self
            .inner
            .by_name
            .get(name)
            .map(|&i| &self.inner.routes[i])
            .ok_or_else(|| PublishError::UnknownDestination(name.to_owned()))?;
        let timeout = self.inner.timeout;
        let publish = async {
            match (&route.link, &route.destination.target) {
                (Link::Nats(link), Target::Nats { subject, stream, .. }) => {
                    let r = nats::Route { subject, stream: stream.as_deref() };
                    link.publish(&r, msg, timeout).await
                }
                (Link::Rabbit(link), Target::Rabbit { exchange, routing_key, queue, .. }) => {
                    let r = rabbit::Route { exchange, routing_key, queue: queue.as_deref() };
                    link.publish(&r, msg).await
                }
                // `new` makes the link of the target's kind.
                _ => Err(PublishError::Refused(format!("destination {name}: link and target disagree"))),
            }
        };
        match tokio::time::timeout(timeout, publish).await {
            Ok(result) => result,
            Err(_) => {
                if let Link::Rabbit(link) = &route.link {
                    link.reset();
                }
                Err(PublishError::Unavailable(format!("no confirmation within {} ms", timeout.as_millis())))
            }
        }
    }
}
