//! `tandem-brokers` against the real brokers: NATS JetStream on
//! 127.0.0.1:4222 and RabbitMQ on 127.0.0.1:5672 (guest/guest), and a
//! private nats-server that is killed and restarted. Every test uses its own
//! subject, stream and queue names, and deletes them at the end. Also the
//! read-back helpers the outbox tests use.

use crate::nats_server::NatsServer;
use crate::support::eventually;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;
use std::time::{Duration, Instant};
use tandem_brokers::{Brokers, Destination, Outgoing, PublishError};

/// The shared NATS server (JetStream enabled).
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// The shared RabbitMQ broker.
pub const RABBIT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Every publish's bound in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of polls for messages to arrive.
pub const WAIT: Duration = Duration::from_secs(30);

/// A name no other test uses: `prefix` and 12 hex digits.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A JetStream stream of one test and its subject.
pub struct TestStream {
    /// The server.
    pub url: String,
    /// The stream's name.
    pub stream: String,
    /// The one subject it captures.
    pub subject: String,
}

impl TestStream {
    /// Names for a new stream on `url` (created by the first publish).
    pub fn new(url: &str) -> TestStream {
        TestStream { url: url.to_owned(), stream: unique("TANDEM_T_"), subject: unique("tandem.test.") }
    }

    /// `NAME=nats://...?subject=..&stream=..`
    pub fn destination(&self, name: &str) -> Destination {
        format!("{name}={}?subject={}&stream={}", self.url, self.subject, self.stream).parse().unwrap()
    }

    async fn context(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.url.as_str()).await.unwrap())
    }

    /// How many messages the stream holds (0 if it does not exist yet).
    pub async fn count(&self) -> u64 {
        match self.context().await.get_stream(&self.stream).await {
            Ok(mut s) => s.info().await.unwrap().state.messages,
            Err(_) => 0,
        }
    }

    /// Waits until the stream holds `n` messages, then reads them all back
    /// in stream order through an ephemeral pull consumer.
    pub async fn read(&self, n: usize) -> Vec<async_nats::Message> {
        eventually(&format!("{n} messages in stream {}", self.stream), WAIT, || async {
            (self.count().await >= n as u64).then_some(())
        })
        .await;
        let stream = self.context().await.get_stream(&self.stream).await.unwrap();
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config { ack_policy: consumer::AckPolicy::None, ..Default::default() })
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut batch = consumer.batch().max_messages(n).expires(Duration::from_secs(5)).messages().await.unwrap();
        while let Some(m) = batch.next().await {
            out.push(m.unwrap().message);
        }
        assert_eq!(out.len(), n, "the consumer reads every stored message");
        out
    }

    /// Deletes the stream.
    pub async fn delete(&self) {
        let _ = self.context().await.delete_stream(&self.stream).await;
    }
}

/// A header's value.
pub fn nats_header(m: &async_nats::Message, name: &str) -> Option<String> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned())
}

/// A durable RabbitMQ queue of one test, on the default exchange.
pub struct TestQueue {
    /// Its name (also the routing key on the default exchange).
    pub name: String,
}

impl TestQueue {
    /// A new name; the queue is declared by the first publish.
    pub fn new() -> TestQueue {
        TestQueue { name: unique("tandem-test-") }
    }

    /// `NAME=amqp://...?exchange=&routing_key=Q&queue=Q`.
    pub fn destination(&self, name: &str) -> Destination {
        format!("{name}={RABBIT_URL}?exchange=&routing_key={q}&queue={q}", q = self.name).parse().unwrap()
    }

    async fn channel() -> (lapin::Connection, lapin::Channel) {
        let conn = lapin::Connection::connect(RABBIT_URL, lapin::ConnectionProperties::default()).await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        (conn, channel)
    }

    /// Takes `n` messages off the queue (waiting for them to arrive), in
    /// queue order.
    pub async fn take(&self, n: usize) -> Vec<lapin::message::Delivery> {
        let (_conn, channel) = Self::channel().await;
        let mut out = Vec::new();
        let deadline = Instant::now() + WAIT;
        while out.len() < n {
            match channel.basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: true }).await {
                Ok(Some(m)) => out.push(m.delivery),
                // Empty, or not declared yet: poll.
                Ok(None) | Err(_) => {
                    assert!(Instant::now() < deadline, "{} of {n} messages arrived in {}", out.len(), self.name);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        out
    }

    /// Deletes the queue.
    pub async fn delete(&self) {
        let (_conn, channel) = Self::channel().await;
        let _ = channel.queue_delete(self.name.as_str().into(), QueueDeleteOptions::default()).await;
    }
}

/// A header of a RabbitMQ message, as text.
pub fn amqp_header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    let table = d.properties.headers().as_ref()?;
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("header {name} is not a long string: {other:?}"),
    }
}

fn msg<'a>(id: &'a str, payload: &'a [u8], headers: &'a [(&'a str, &'a str)]) -> Outgoing<'a> {
    Outgoing { message_id: id, payload, headers }
}

#[tokio::test]
async fn a_jetstream_publish_is_stored_with_its_id_and_headers() {
    let s = TestStream::new(NATS_URL);
    let brokers = Brokers::new(vec![s.destination("orders")], TIMEOUT).unwrap();
    brokers.publish("orders", &msg("m-1", br#"{"order":1}"#, &[("Tandem-Key", "k1"), ("X-Two", "2")])).await.unwrap();
    brokers.publish("orders", &msg("m-2", br#"{"order":2}"#, &[])).await.unwrap();
    let got = s.read(2).await;
    assert_eq!(&got[0].payload[..], br#"{"order":1}"#);
    assert_eq!(nats_header(&got[0], "Nats-Msg-Id").as_deref(), Some("m-1"));
    assert_eq!(nats_header(&got[0], "Tandem-Key").as_deref(), Some("k1"));
    assert_eq!(nats_header(&got[0], "X-Two").as_deref(), Some("2"));
    assert_eq!(got[0].subject.as_str(), s.subject);
    assert_eq!(&got[1].payload[..], br#"{"order":2}"#);
    assert_eq!(nats_header(&got[1], "Nats-Msg-Id").as_deref(), Some("m-2"));
    s.delete().await;
}

#[tokio::test]
async fn jetstream_stores_a_message_id_published_twice_once() {
    let s = TestStream::new(NATS_URL);
    let brokers = Brokers::new(vec![s.destination("orders")], TIMEOUT).unwrap();
    for _ in 0..3 {
        brokers.publish("orders", &msg("same-id", b"once", &[])).await.unwrap();
    }
    brokers.publish("orders", &msg("other-id", b"twice", &[])).await.unwrap();
    assert_eq!(s.count().await, 2, "the repeats of same-id are dropped by the stream");
    let got = s.read(2).await;
    assert_eq!(&got[0].payload[..], b"once");
    assert_eq!(&got[1].payload[..], b"twice");
    s.delete().await;
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_refused() {
    let subject = unique("tandem.nostream.");
    let d: Destination = format!("lost={NATS_URL}?subject={subject}").parse().unwrap();
    let brokers = Brokers::new(vec![d], TIMEOUT).unwrap();
    let e = brokers.publish("lost", &msg("x", b"x", &[])).await.unwrap_err();
    assert!(matches!(e, PublishError::Refused(_)), "{e}");
}

#[tokio::test]
async fn a_stream_that_does_not_capture_the_subject_is_refused() {
    // Two destinations on one server: the second names the first's stream
    // with a subject that stream does not capture.
    let s = TestStream::new(NATS_URL);
    let other: Destination =
        format!("other={NATS_URL}?subject={}&stream={}", unique("tandem.elsewhere."), s.stream).parse().unwrap();
    let brokers = Brokers::new(vec![s.destination("orders"), other], TIMEOUT).unwrap();
    brokers.publish("orders", &msg("a", b"a", &[])).await.unwrap();
    let e = brokers.publish("other", &msg("b", b"b", &[])).await.unwrap_err();
    assert!(matches!(e, PublishError::Refused(_)), "{e}");
    assert_eq!(s.count().await, 1);
    s.delete().await;
}

#[tokio::test]
async fn a_rabbit_publish_is_confirmed_persistent_with_its_id_and_headers() {
    let q = TestQueue::new();
    let brokers = Brokers::new(vec![q.destination("billing")], TIMEOUT).unwrap();
    brokers.publish("billing", &msg("r-1", br#"{"bill":1}"#, &[("Tandem-Key", "k1")])).await.unwrap();
    brokers.publish("billing", &msg("r-2", br#"{"bill":2}"#, &[])).await.unwrap();
    let got = q.take(2).await;
    assert_eq!(got[0].data, br#"{"bill":1}"#);
    assert_eq!(got[0].properties.message_id().as_ref().map(|s| s.as_str()), Some("r-1"));
    assert_eq!(amqp_header(&got[0], "tandem-message-id").as_deref(), Some("r-1"));
    assert_eq!(amqp_header(&got[0], "Tandem-Key").as_deref(), Some("k1"));
    assert_eq!(*got[0].properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(got[1].data, br#"{"bill":2}"#);
    assert_eq!(amqp_header(&got[1], "tandem-message-id").as_deref(), Some("r-2"));
    q.delete().await;
}

#[tokio::test]
async fn a_rabbit_destination_on_an_exchange_declares_and_binds_its_queue() {
    let queue = unique("tandem-test-");
    let key = unique("rk.");
    let d: Destination =
        format!("direct={RABBIT_URL}?exchange=amq.direct&routing_key={key}&queue={queue}").parse().unwrap();
    let brokers = Brokers::new(vec![d], TIMEOUT).unwrap();
    brokers.publish("direct", &msg("d-1", b"through amq.direct", &[])).await.unwrap();
    let q = TestQueue { name: queue };
    let got = q.take(1).await;
    assert_eq!(got[0].data, b"through amq.direct");
    assert_eq!(got[0].exchange.as_str(), "amq.direct");
    q.delete().await;
}

#[tokio::test]
async fn an_unroutable_rabbit_publish_is_refused_and_the_connection_still_serves() {
    let q = TestQueue::new();
    let nowhere: Destination =
        format!("nowhere={RABBIT_URL}?exchange=amq.direct&routing_key={}", unique("unbound.")).parse().unwrap();
    let missing: Destination =
        format!("missing={RABBIT_URL}?exchange={}&routing_key=k", unique("no-such-exchange-")).parse().unwrap();
    // All three share one connection (one URL).
    let brokers = Brokers::new(vec![nowhere, missing, q.destination("ok")], TIMEOUT).unwrap();
    let e = brokers.publish("nowhere", &msg("u-1", b"x", &[])).await.unwrap_err();
    assert!(matches!(&e, PublishError::Refused(t) if t.contains("unroutable")), "{e}");
    // An unknown exchange: the broker closes the channel (404).
    let e = brokers.publish("missing", &msg("u-2", b"x", &[])).await.unwrap_err();
    assert!(matches!(e, PublishError::Refused(_)), "{e}");
    // The next publish opens a new channel and goes through.
    brokers.publish("ok", &msg("u-3", b"fine", &[])).await.unwrap();
    assert_eq!(q.take(1).await[0].data, b"fine");
    q.delete().await;
}

#[tokio::test]
async fn an_unknown_destination_is_refused_as_such() {
    let brokers = Brokers::new(vec![TestQueue::new().destination("known")], TIMEOUT).unwrap();
    let e = brokers.publish("unknown", &msg("x", b"x", &[])).await.unwrap_err();
    assert_eq!(e, PublishError::UnknownDestination("unknown".into()));
    assert!(e.is_unknown_destination());
    assert!(brokers.contains("known") && !brokers.contains("unknown"));
    assert_eq!(brokers.names(), vec!["known"]);
    let e = Brokers::empty().publish("known", &msg("x", b"x", &[])).await.unwrap_err();
    assert!(e.is_unknown_destination());
}

#[tokio::test]
async fn duplicate_names_are_refused() {
    let q = TestQueue::new();
    let e =
        Brokers::new(vec![q.destination("same"), TestStream::new(NATS_URL).destination("same")], TIMEOUT).unwrap_err();
    assert_eq!(e, tandem_brokers::DestinationError::Duplicate("same".into()));
}

#[tokio::test]
async fn brokers_nobody_listens_on_are_unavailable_within_the_timeout() {
    let port = crate::support::free_port().await;
    let timeout = Duration::from_millis(1_500);
    let nats: Destination = format!("n=nats://127.0.0.1:{port}?subject=a&stream=A").parse().unwrap();
    let rabbit: Destination = format!("r=amqp://guest:guest@127.0.0.1:{port}/%2f?routing_key=q").parse().unwrap();
    let brokers = Brokers::new(vec![nats, rabbit], timeout).unwrap();
    for name in ["n", "r"] {
        let started = Instant::now();
        let e = brokers.publish(name, &msg("x", b"x", &[])).await.unwrap_err();
        assert!(matches!(e, PublishError::Unavailable(_)), "{name}: {e}");
        assert!(started.elapsed() < timeout + Duration::from_millis(500), "{name}: {:?}", started.elapsed());
        assert!(!e.to_string().contains("guest:guest"), "no credentials in errors: {e}");
    }
}

#[tokio::test]
async fn a_stopped_nats_server_is_unavailable_and_publishes_resume_after_its_restart() {
    let mut server = NatsServer::start().await;
    let s = TestStream::new(&server.url());
    let timeout = Duration::from_millis(1_500);
    let brokers = Brokers::new(vec![s.destination("events")], timeout).unwrap();
    brokers.publish("events", &msg("before", b"before", &[])).await.unwrap();

    server.stop().await;
    let started = Instant::now();
    let e = brokers.publish("events", &msg("during", b"during", &[])).await.unwrap_err();
    assert!(matches!(e, PublishError::Unavailable(_)), "{e}");
    assert!(started.elapsed() < timeout + Duration::from_millis(500), "bounded: {:?}", started.elapsed());

    server.restart().await;
    // The client reconnects by itself; a publish goes through once it has.
    eventually("a publish after the restart", WAIT, || async {
        brokers.publish("events", &msg("after", b"after", &[])).await.ok()
    })
    .await;
    // The file store kept the message from before the outage. (The one
    // published during it may have been sent on reconnect: at least once.)
    let n = s.count().await as usize;
    let ids: Vec<String> = s.read(n).await.iter().filter_map(|m| nats_header(m, "Nats-Msg-Id")).collect();
    assert_eq!(ids.first().map(String::as_str), Some("before"), "{ids:?}");
    assert!(ids.iter().any(|i| i == "after"), "{ids:?}");
    let mut unique_ids = ids.clone();
    unique_ids.sort();
    unique_ids.dedup();
    assert_eq!(unique_ids.len(), ids.len(), "each id stored once: {ids:?}");
}
