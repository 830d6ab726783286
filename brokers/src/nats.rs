//! NATS JetStream through async-nats: one client per server URL, shared by
//! every destination on that server. A publish carries its message id in
//! `Nats-Msg-Id` (the stream drops a repeat within its duplicate window)
//! and is done only once the stream acknowledged it.

use crate::{Outgoing, PublishError};
use async_nats::connection::State;
use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_EXPECTED_STREAM, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{CreateStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The client of one NATS server URL.
pub(crate) struct NatsLink {
    /// The server's URL, credentials included.
    url: String,
    /// The URL with its userinfo redacted, for logs and errors.
    label: String,
    /// The client and its JetStream context, made on the first publish that
    /// succeeds in connecting (a failed connect leaves it empty for the
    /// next). Made once: async-nats reconnects a client by itself, forever,
    /// after the server goes away.
    client: OnceCell<(async_nats::Client, jetstream::Context)>,
    /// Streams found or created on this server. A publish finding no stream
    /// forgets them, so that a stream deleted (or a server whose store was
    /// lost) is created again.
    streams: Mutex<HashSet<String>>,
}

/// Where one destination publishes on the server.
pub(crate) struct Route<'a> {
    pub(crate) subject: &'a str,
    pub(crate) stream: Option<&'a str>,
}

impl NatsLink {
    /// A link to the server at `url` (checked at configuration); no
    /// connection yet.
    pub(crate) fn new(url: &str) -> NatsLink {
        NatsLink {
            url: url.to_owned(),
            label: crate::destination::redact(url),
            client: OnceCell::new(),
            streams: Mutex::new(HashSet::new()),
        }
    }

    /// Publishes `msg` and waits for the stream's ack. `timeout` bounds the
    /// connect and each JetStream request; the caller bounds the whole.
    pub(crate) async fn publish(
        &self,
        route: &Route<'_>,
        msg: &Outgoing<'_>,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let headers = headers(msg, route.stream)?;
        let (client, js) = self.client(timeout).await?;
        // A client that lost its server buffers what it is given until it is
        // back: refusing now frees the caller instead of holding it until
        // the timeout (and leaves nothing queued to surprise it later).
        if client.connection_state() != State::Connected {
            return Err(PublishError::Unavailable(format!("{}: disconnected, reconnecting", self.label)));
        }
        if let Some(name) = route.stream {
            self.ensure_stream(js, name, route.subject).await?;
        }
        let publish = PublishMessage::build().payload(Bytes::copy_from_slice(msg.payload)).headers(headers);
        let ack = js.send_publish(route.subject.to_owned(), publish).await.map_err(|e| self.publish_error(&e))?;
        match ack.await {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.kind() == PublishErrorKind::StreamNotFound {
                    self.forget_streams();
                }
                Err(self.publish_error(&e))
            }
        }
    }

    async fn client(&self, timeout: Duration) -> Result<&(async_nats::Client, jetstream::Context), PublishError> {
        self.client
            .get_or_try_init(|| async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(timeout)
                    .request_timeout(Some(timeout))
                    .name("tandem-brokers")
                    .connect(self.url.as_str())
                    .await
                    .map_err(|e| PublishError::Unavailable(format!("connect to {}: {e}", self.label)))?;
                tracing::debug!(server = %self.label, "connected");
                let js = jetstream::ContextBuilder::new().timeout(timeout).build(client.clone());
                Ok((client, js))
            })
            .await
    }

    /// Creates the stream capturing `subject` unless it exists. A stream of
    /// that name that exists is left as it is: if it does not capture the
    /// subject, the publish (which expects this stream) is refused.
    async fn ensure_stream(&self, js: &jetstream::Context, name: &str, subject: &str) -> Result<(), PublishError> {
        if self.streams.lock().map(|s| s.contains(name)).unwrap_or(false) {
            return Ok(());
        }
        let config = stream::Config { name: name.to_owned(), subjects: vec![subject.to_owned()], ..Default::default() };
        js.get_or_create_stream(config).await.map_err(|e| {
            let text = format!("create stream {name} on {}: {e}", self.label);
            match e.kind() {
                CreateStreamErrorKind::TimedOut => PublishError::Unavailable(text),
                _ => PublishError::Refused(text),
            }
        })?;
        if let Ok(mut s) = self.streams.lock() {
            s.insert(name.to_owned());
        }
        Ok(())
    }

    fn forget_streams(&self) {
        if let Ok(mut s) = self.streams.lock() {
            s.clear();
        }
    }

    /// No answer (timed out, connection broken) is `Unavailable`; the
    /// server's answer against the message (no stream, wrong stream, too
    /// large) is `Refused`.
    fn publish_error(&self, e: &async_nats::jetstream::context::PublishError) -> PublishError {
        let text = format!("{}: {e}", self.label);
        match e.kind() {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
                PublishError::Unavailable(text)
            }
            _ => PublishError::Refused(text),
        }
    }
}

/// The message's headers: the caller's, then the message id (which wins
/// over a caller's `Nats-Msg-Id`) and, with a configured stream, the stream
/// expected to store it. Checked here: async-nats panics on an invalid name
/// or value given as `&str`.
fn headers(msg: &Outgoing<'_>, stream: Option<&str>) -> Result<HeaderMap, PublishError> {
    let value =
        |v: &str, what: &str| v.parse::<HeaderValue>().map_err(|e| PublishError::Refused(format!("{what} {v:?}: {e}")));
    let mut headers = HeaderMap::new();
    for (name, v) in msg.headers {
        let name: HeaderName = name.parse().map_err(|e| PublishError::Refused(format!("header name {name:?}: {e}")))?;
        headers.append(name, value(v, "header value")?);
    }
    headers.insert(NATS_MESSAGE_ID, value(msg.message_id, "message id")?);
    if let Some(s) = stream {
        headers.insert(NATS_EXPECTED_STREAM, value(s, "stream")?);
    }
    Ok(headers)
}
