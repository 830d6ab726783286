//! RabbitMQ through lapin: one connection per broker URL with one channel in
//! confirm mode, shared by every destination on that broker. A publish is
//! persistent and mandatory and done only once the broker confirmed it; a
//! returned (unroutable) message is refused.

use crate::Outgoing;
use crate::PublishError;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The header carrying the message id, besides the `message_id` property
/// (which some consumers' frameworks do not surface).
pub const MESSAGE_ID_HEADER: &str = "tandem-message-id";

/// AMQP delivery mode of a persistent message.
const PERSISTENT: u8 = 2;

/// Parses a broker URL as lapin will connect to it. lapin's own parser
/// reads only a domain as the host (an IP address would become its default,
/// `localhost`, which may resolve to an address the broker does not listen
/// on), so the host is set here from the URL as written.
pub(crate) fn parse_uri(url: &str) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    uri.authority.host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err("no host".into()),
    };
    Ok(uri)
}

/// A queue declared (and bound) on this broker: `(queue, exchange, routing key)`.
type Declared = (String, String, String);

/// The publisher of one RabbitMQ broker URL.
pub(crate) struct RabbitLink {
    /// Where to connect (parsed once, at configuration).
    uri: AMQPUri,
    /// The URL with its userinfo redacted, for logs.
    label: String,
    /// The open connection and its confirm channel, made on first use and
    /// again once either is no longer open. Behind an async mutex so that
    /// concurrent publishes after a failure make one connection, not many.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Queues declared on this broker. Durable queues outlive connections,
    /// so this survives reconnects; a returned message forgets its
    /// destination's queue, which is then declared again (it may have been
    /// deleted).
    declared: Mutex<HashSet<Declared>>,
}

/// An open connection and its channel in confirm mode.
struct Session {
    /// Kept open while a session uses it; closed once the last one is dropped.
    connection: Arc<Connection>,
    /// The channel every publish of this broker goes through.
    channel: Channel,
}

/// Where one destination publishes on the broker.
pub(crate) struct Route<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) queue: Option<&'a str>,
}

impl RabbitLink {
    /// A link to the broker at `url` (checked by [`parse_uri`] already); no
    /// connection yet.
    pub(crate) fn new(url: &str) -> Result<RabbitLink, String> {
        Ok(RabbitLink {
            uri: parse_uri(url)?,
            label: crate::destination::redact(url),
            session: tokio::sync::Mutex::new(None),
            declared: Mutex::new(HashSet::new()),
        })
    }

    /// Publishes `msg` and waits for the confirm. The caller bounds the time.
    pub(crate) async fn publish(&self, route: &Route<'_>, msg: &Outgoing<'_>) -> Result<(), PublishError> {
        let properties = properties(msg)?;
        let exchange = short(route.exchange, "exchange")?;
        let routing_key = short(route.routing_key, "routing key")?;
        let session = self.session().await?;
        self.declare(&session, route).await?;
        let options = BasicPublishOptions { mandatory: true, immediate: false };
        let confirm = session
            .channel
            .basic_publish(exchange, routing_key, options, msg.payload, properties)
            .await
            .map_err(|e| classify("publish", &e))?;
        match confirm.await.map_err(|e| classify("publisher confirm", &e))? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => {
                self.forget(route);
                Err(PublishError::Refused(format!(
                    "unroutable: the broker returned the message ({} {}) from exchange {:?} with routing key {:?}",
                    returned.reply_code, returned.reply_text, route.exchange, route.routing_key
                )))
            }
            Confirmation::Nack(_) => Err(PublishError::Refused("the broker nacked the message".into())),
            // The channel is put in confirm mode before any publish.
            Confirmation::NotRequested => {
                Err(PublishError::Refused("no publisher confirm: the channel is not in confirm mode".into()))
            }
        }
    }

    /// Called when a publish did not finish in time: the connection may be
    /// wedged (a broker that stopped answering without closing the socket is
    /// otherwise noticed only by a missed heartbeat), so the next publish
    /// connects anew. Publishes in flight on it fail and are retried.
    pub(crate) fn reset(&self) {
        if let Ok(mut s) = self.session.try_lock() {
            if s.take().is_some() {
                tracing::info!(broker = %self.label, "publish timed out; reconnecting on next use");
            }
        }
    }

    /// The open session, or a new one.
    async fn session(&self) -> Result<Arc<Session>, PublishError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            if s.connection.status().connected() && s.channel.status().connected() {
                return Ok(s.clone());
            }
        }
        // The broker closed the channel (a soft error: unknown exchange,
        // mismatched queue) but the connection is fine: a new channel will do.
        let reusable = slot.take().filter(|s| s.connection.status().connected());
        let session = match reusable {
            Some(old) => {
                let s =
                    Session::open_channel(old.connection.clone()).await.map_err(|e| classify("open a channel", &e))?;
                drop(old);
                s
            }
            None => {
                let props = ConnectionProperties::default().with_connection_name(LongString::from("tandem-brokers"));
                let connection = Connection::connect_uri(self.uri.clone(), props)
                    .await
                    .map_err(|e| PublishError::Unavailable(format!("connect to {}: {e}", self.label)))?;
                let connection = Arc::new(connection);
                tracing::debug!(broker = %self.label, "connected");
                Session::open_channel(connection).await.map_err(|e| classify("open a channel", &e))?
            }
        };
        let session = Arc::new(session);
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Declares the route's queue (and binds it) once.
    async fn declare(&self, session: &Session, route: &Route<'_>) -> Result<(), PublishError> {
        let Some(queue) = route.queue else { return Ok(()) };
        let key: Declared = (queue.to_owned(), route.exchange.to_owned(), route.routing_key.to_owned());
        if self.declared.lock().map(|d| d.contains(&key)).unwrap_or(false) {
            return Ok(());
        }
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        session
            .channel
            .queue_declare(short(queue, "queue")?, durable, FieldTable::default())
            .await
            .map_err(|e| classify("declare the queue", &e))?;
        if !route.exchange.is_empty() {
            session
                .channel
                .queue_bind(
                    short(queue, "queue")?,
                    short(route.exchange, "exchange")?,
                    short(route.routing_key, "routing key")?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| classify("bind the queue", &e))?;
        }
        if let Ok(mut d) = self.declared.lock() {
            d.insert(key);
        }
        Ok(())
    }

    fn forget(&self, route: &Route<'_>) {
        if let (Some(queue), Ok(mut d)) = (route.queue, self.declared.lock()) {
            d.remove(&(queue.to_owned(), route.exchange.to_owned(), route.routing_key.to_owned()));
        }
    }
}

impl Session {
    async fn open_channel(connection: Arc<Connection>) -> lapin::Result<Session> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Session { connection, channel })
    }
}

/// The message's properties: persistent, its id as `message_id` and in the
/// `tandem-message-id` header, the caller's headers.
fn properties(msg: &Outgoing<'_>) -> Result<BasicProperties, PublishError> {
    let mut headers = FieldTable::default();
    for (name, value) in msg.headers {
        headers.insert(short(name, "header name")?, AMQPValue::LongString(LongString::from(*value)));
    }
    headers.insert(short(MESSAGE_ID_HEADER, "header name")?, AMQPValue::LongString(LongString::from(msg.message_id)));
    Ok(BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short(msg.message_id, "message id")?)
        .with_headers(headers))
}

/// An AMQP short string (at most 255 bytes).
fn short(s: &str, what: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(s).map_err(|e| PublishError::Refused(format!("{what} {s:?}: {e}")))
}

/// A channel-level (soft) error is the broker refusing this publish (no such
/// exchange, a queue declared otherwise, access refused): `Refused`.
/// Anything else (I/O, a closed connection, a connection-level error) says
/// the broker cannot be reached now: `Unavailable`.
fn classify(during: &str, e: &lapin::Error) -> PublishError {
    if e.is_amqp_soft_error() {
        PublishError::Refused(format!("{during}: {e}"))
    } else {
        PublishError::Unavailable(format!("{during}: {e}"))
    }
}
