//! Destinations as configuration writes them, `NAME=URL`, checked whole when
//! the configuration is read, so that a publish never meets a malformed one
//! and a typo is reported at startup rather than at the first message.
//!
//! ```text
//! orders=nats://127.0.0.1:4222?subject=orders.placed&stream=ORDERS
//! billing=amqp://guest:guest@127.0.0.1:5672/%2f?exchange=&routing_key=billing&queue=billing
//! ```
//!
//! The query parameters that say where to publish (`subject`, `stream`;
//! `exchange`, `routing_key`, `queue`) are taken out of the URL; what is left
//! is the broker's address, the key under which destinations share one
//! connection. The URL may hold credentials, so nothing here prints it as
//! written: `Display` and `Debug` replace the userinfo with `***`, and errors
//! name the destination and the parameter, never the URL.

use std::fmt;
use std::str::FromStr;
use url::Url;

/// Longest destination name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Longest AMQP short string (exchange, routing key, queue name), in bytes.
const AMQP_SHORT_STRING_BYTES: usize = 255;

/// Longest NATS subject or stream name this crate accepts, in bytes (the
/// server's own limits are larger; nobody needs longer ones).
const NATS_NAME_BYTES: usize = 255;

/// The query parameters of a NATS destination.
const NATS_PARAMETERS: &str = "subject, stream";

/// The query parameters of a RabbitMQ destination: ours, then lapin's
/// connection settings, which stay in the broker URL.
const RABBIT_PARAMETERS: &str =
    "exchange, routing_key, queue, and the connection's heartbeat, connection_timeout, channel_max, frame_max, auth_mechanism";

/// lapin's connection parameters, passed through in the broker URL.
const AMQP_CONNECTION_PARAMETERS: &[&str] =
    &["heartbeat", "connection_timeout", "channel_max", "frame_max", "auth_mechanism"];

/// A destination's name as configuration and clients write it: 1 to 64
/// characters of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestinationName(String);

impl DestinationName {
    /// Checks `s` against the name's rules.
    pub fn parse(s: &str) -> Result<DestinationName, DestinationError> {
        let refuse = |reason: &'static str| DestinationError::Name { name: s.chars().take(80).collect(), reason };
        if s.is_empty() {
            return Err(refuse("a destination name is not empty"));
        }
        if s.chars().count() > MAX_NAME_CHARS {
            return Err(refuse("a destination name has at most 64 characters"));
        }
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(refuse("a destination name has only the characters A-Z a-z 0-9 . _ -"));
        }
        Ok(DestinationName(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DestinationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DestinationName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for DestinationName {
    type Err = DestinationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DestinationName::parse(s)
    }
}

/// Where a named destination publishes.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// NATS JetStream: publish to `subject` and wait for the stream's ack;
    /// the stream deduplicates on the `Nats-Msg-Id` header. `stream`: if
    /// set, the stream is created (if absent) on first use capturing
    /// `subject`, and a publish is refused unless that stream stores it;
    /// else a stream capturing `subject` must exist.
    Nats {
        /// The server's URL (`nats://` or `tls://`, credentials included),
        /// without this crate's parameters.
        url: String,
        /// The subject published to.
        subject: String,
        /// The stream to create if absent and to expect.
        stream: Option<String>,
    },
    /// RabbitMQ: publish persistent (delivery mode 2), mandatory, to
    /// `exchange` with `routing_key`, waiting for the publisher confirm; an
    /// unroutable message (returned) is an error. `queue`: if set, a durable
    /// queue of that name is declared on first use (and bound to the
    /// exchange with the routing key when the exchange is not the default
    /// `""`).
    Rabbit {
        /// The broker's URL (`amqp://` or `amqps://`, credentials, vhost and
        /// lapin's connection parameters included), without this crate's
        /// parameters.
        url: String,
        /// The exchange (`""`: the default exchange, which routes by queue
        /// name). It must exist: its type is the broker's business.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The durable queue to declare (and bind).
        queue: Option<String>,
    },
}

impl Target {
    /// The broker's URL, credentials included: destinations with the same
    /// one share a connection.
    pub fn url(&self) -> &str {
        match self {
            Target::Nats { url, .. } | Target::Rabbit { url, .. } => url,
        }
    }

    /// The broker's URL with its userinfo (user, password, token) replaced
    /// by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact(self.url())
    }
}

impl fmt::Display for Target {
    /// The spec's URL with the userinfo redacted, parameters in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = match Url::parse(self.url()) {
            Ok(u) => u,
            // Only a Target built by hand can hold an unparsable URL; print
            // nothing of it rather than risk a credential.
            Err(_) => return f.write_str("<unparsable broker URL>"),
        };
        redact_userinfo(&mut url);
        {
            let mut q = url.query_pairs_mut();
            match self {
                Target::Nats { subject, stream, .. } => {
                    q.append_pair("subject", subject);
                    if let Some(s) = stream {
                        q.append_pair("stream", s);
                    }
                }
                Target::Rabbit { exchange, routing_key, queue, .. } => {
                    q.append_pair("exchange", exchange);
                    q.append_pair("routing_key", routing_key);
                    if let Some(q_name) = queue {
                        q.append_pair("queue", q_name);
                    }
                }
            }
        }
        f.write_str(url.as_str())
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({self})")
    }
}

/// A named destination: what a client names, and where it publishes.
#[derive(Clone, PartialEq, Eq)]
pub struct Destination {
    /// The name clients use.
    pub name: DestinationName,
    /// Where it publishes.
    pub target: Target,
}

impl fmt::Display for Destination {
    /// `NAME=URL` as configured, the userinfo redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.target)
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Destination({self})")
    }
}

impl FromStr for Destination {
    type Err = DestinationError;

    /// Parses `NAME=URL`: `NAME=nats://HOST:PORT?subject=S[&stream=NAME]` or
    /// `NAME=amqp://USER:PASS@HOST:PORT/VHOST?exchange=E&routing_key=K[&queue=Q]`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (name, url) = spec.trim().split_once('=').ok_or(DestinationError::NotNameEqualsUrl)?;
        let name = DestinationName::parse(name)?;
        let url =
            Url::parse(url).map_err(|e| DestinationError::Url { name: name.to_string(), reason: e.to_string() })?;
        let target = match url.scheme() {
            "nats" | "tls" => nats_target(&name, url)?,
            "amqp" | "amqps" => rabbit_target(&name, url)?,
            other => return Err(DestinationError::Scheme { name: name.to_string(), scheme: other.to_owned() }),
        };
        Ok(Destination { name, target })
    }
}

/// Why a destination's configuration was refused. No variant holds the URL:
/// it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The spec has no `=`.
    #[error("a destination is written NAME=URL (no '=' found)")]
    NotNameEqualsUrl,
    /// The name breaks [`DestinationName`]'s rules.
    #[error("destination name {name:?}: {reason}")]
    Name {
        /// The name as written (at most 80 characters of it).
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The URL does not parse, or lacks a part it needs.
    #[error("destination {name}: bad URL: {reason}")]
    Url {
        /// The destination.
        name: String,
        /// What is wrong (never the URL itself).
        reason: String,
    },
    /// The scheme is none this crate publishes to.
    #[error("destination {name}: scheme {scheme:?} is not one of nats, tls (NATS JetStream), amqp, amqps (RabbitMQ)")]
    Scheme {
        /// The destination.
        name: String,
        /// The scheme as written.
        scheme: String,
    },
    /// A required query parameter is absent.
    #[error("destination {name}: parameter {parameter} is required: {what}")]
    MissingParameter {
        /// The destination.
        name: String,
        /// The parameter.
        parameter: &'static str,
        /// What it is for.
        what: &'static str,
    },
    /// A query parameter's value is not acceptable, or it is given twice.
    #[error("destination {name}: parameter {parameter}: {reason}")]
    Parameter {
        /// The destination.
        name: String,
        /// The parameter.
        parameter: String,
        /// What is wrong.
        reason: String,
    },
    /// A query parameter this kind of destination does not know.
    #[error("destination {name}: unknown parameter {parameter:?} (known: {known})")]
    UnknownParameter {
        /// The destination.
        name: String,
        /// The parameter as written.
        parameter: String,
        /// The parameters it knows.
        known: &'static str,
    },
    /// Two destinations have the same name ([`crate::Brokers::new`]).
    #[error("destination {0} is configured twice")]
    Duplicate(String),
}

/// The URL with its userinfo replaced by `***`, or a placeholder if it does
/// not parse.
pub(crate) fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            redact_userinfo(&mut u);
            u.into()
        }
        Err(_) => "<unparsable broker URL>".to_owned(),
    }
}

fn redact_userinfo(url: &mut Url) {
    if !url.username().is_empty() || url.password().is_some() {
        // Both only fail for URLs that cannot have userinfo, which then has none.
        let _ = url.set_password(None);
        let _ = url.set_username("***");
    }
}

/// The query parameters, each at most once, with the ones named in `ours`
/// taken out; the rest in order, for the caller to judge.
struct Query {
    ours: Vec<(&'static str, String)>,
    rest: Vec<(String, String)>,
}

impl Query {
    fn split(name: &DestinationName, url: &Url, ours: &[&'static str]) -> Result<Query, DestinationError> {
        let mut q = Query { ours: Vec::new(), rest: Vec::new() };
        for (k, v) in url.query_pairs() {
            let seen = q.ours.iter().any(|(o, _)| *o == k) || q.rest.iter().any(|(r, _)| *r == k);
            if seen {
                return Err(DestinationError::Parameter {
                    name: name.to_string(),
                    parameter: k.into_owned(),
                    reason: "given twice".into(),
                });
            }
            match ours.iter().find(|o| **o == k) {
                Some(o) => q.ours.push((o, v.into_owned())),
                None => q.rest.push((k.into_owned(), v.into_owned())),
            }
        }
        Ok(q)
    }

    fn get(&self, parameter: &str) -> Option<&str> {
        self.ours.iter().find(|(k, _)| *k == parameter).map(|(_, v)| v.as_str())
    }
}

fn bad(name: &DestinationName, parameter: &str, reason: impl Into<String>) -> DestinationError {
    DestinationError::Parameter { name: name.to_string(), parameter: parameter.to_owned(), reason: reason.into() }
}

fn url_error(name: &DestinationName, reason: impl Into<String>) -> DestinationError {
    DestinationError::Url { name: name.to_string(), reason: reason.into() }
}

/// What both kinds require of the broker's URL: a host, no fragment.
fn check_common(name: &DestinationName, url: &Url) -> Result<(), DestinationError> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(url_error(name, "no host"));
    }
    if url.fragment().is_some() {
        return Err(url_error(name, "a broker URL has no #fragment"));
    }
    Ok(())
}

fn nats_target(name: &DestinationName, mut url: Url) -> Result<Target, DestinationError> {
    check_common(name, &url)?;
    if !matches!(url.path(), "" | "/") {
        return Err(url_error(name, "a NATS URL has no path"));
    }
    let query = Query::split(name, &url, &["subject", "stream"])?;
    if let Some((k, _)) = query.rest.first() {
        return Err(DestinationError::UnknownParameter {
            name: name.to_string(),
            parameter: k.clone(),
            known: NATS_PARAMETERS,
        });
    }
    let subject = query.get("subject").ok_or(DestinationError::MissingParameter {
        name: name.to_string(),
        parameter: "subject",
        what: "the JetStream subject to publish to",
    })?;
    check_nats_subject(subject).map_err(|r| bad(name, "subject", r))?;
    let stream = query.get("stream").map(|s| check_stream_name(s).map(|()| s.to_owned())).transpose();
    let stream = stream.map_err(|r| bad(name, "stream", r))?;
    url.set_query(None);
    let url: String = url.into();
    // async-nats must read the address as we do (scheme, host, port, userinfo).
    url.parse::<async_nats::ServerAddr>().map_err(|e| url_error(name, format!("not a NATS server address: {e}")))?;
    Ok(Target::Nats { url, subject: subject.to_owned(), stream })
}

/// A subject one can publish to: dot-separated non-empty tokens, no
/// whitespace, no wildcard token (`*`, `>`).
fn check_nats_subject(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > NATS_NAME_BYTES {
        return Err("longer than 255 bytes");
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a subject has no whitespace or control characters");
    }
    if s.split('.').any(str::is_empty) {
        return Err("a subject is dot-separated non-empty tokens");
    }
    if s.split('.').any(|t| t == "*" || t == ">") {
        return Err("one publishes to a subject without wildcards (* and >)");
    }
    Ok(())
}

/// A JetStream stream name: `A-Z a-z 0-9 _ -`, which every server accepts
/// and which is safe in API subjects and file names.
fn check_stream_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty (leave it out to use an existing stream)");
    }
    if s.len() > NATS_NAME_BYTES {
        return Err("longer than 255 bytes");
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
        return Err("a stream name has only the characters A-Z a-z 0-9 _ -");
    }
    Ok(())
}

fn rabbit_target(name: &DestinationName, mut url: Url) -> Result<Target, DestinationError> {
    check_common(name, &url)?;
    let query = Query::split(name, &url, &["exchange", "routing_key", "queue"])?;
    if let Some((k, _)) = query.rest.iter().find(|(k, _)| !AMQP_CONNECTION_PARAMETERS.contains(&k.as_str())) {
        return Err(DestinationError::UnknownParameter {
            name: name.to_string(),
            parameter: k.clone(),
            known: RABBIT_PARAMETERS,
        });
    }
    let exchange = query.get("exchange").unwrap_or("");
    check_amqp_name(exchange).map_err(|r| bad(name, "exchange", r))?;
    let routing_key = query.get("routing_key").ok_or(DestinationError::MissingParameter {
        name: name.to_string(),
        parameter: "routing_key",
        what: "the routing key to publish with (with the default exchange, the queue's name)",
    })?;
    if routing_key.len() > AMQP_SHORT_STRING_BYTES {
        return Err(bad(name, "routing_key", "longer than 255 bytes"));
    }
    let queue = query.get("queue");
    if let Some(q) = queue {
        if q.is_empty() {
            return Err(bad(name, "queue", "empty (leave it out to declare no queue)"));
        }
        if q.len() > AMQP_SHORT_STRING_BYTES {
            return Err(bad(name, "queue", "longer than 255 bytes"));
        }
        if q.starts_with("amq.") {
            return Err(bad(name, "queue", "names starting with amq. are the broker's"));
        }
    }
    if exchange.is_empty() {
        if routing_key.is_empty() {
            return Err(bad(name, "routing_key", "the default exchange routes by queue name: name the queue"));
        }
        if queue.is_some_and(|q| q != routing_key) {
            return Err(bad(
                name,
                "queue",
                "the default exchange routes to the queue the routing key names: queue must equal routing_key",
            ));
        }
    }
    // What is left is the broker URL as lapin reads it.
    if query.rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(&query.rest);
    }
    let url: String = url.into();
    crate::rabbit::parse_uri(&url).map_err(|reason| url_error(name, reason))?;
    Ok(Target::Rabbit {
        url,
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        queue: queue.map(str::to_owned),
    })
}

/// An exchange name as RabbitMQ accepts it: letters, digits, `- _ . :`, at
/// most 255 bytes (empty: the default exchange).
fn check_amqp_name(s: &str) -> Result<(), &'static str> {
    if s.len() > AMQP_SHORT_STRING_BYTES {
        return Err("longer than 255 bytes");
    }
    if !s.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
        return Err("an exchange name has only letters, digits and - _ . :");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<Destination, DestinationError> {
        spec.parse()
    }

    #[test]
    fn a_nats_destination_parses() {
        let d = parse("orders=nats://127.0.0.1:4222?subject=orders.placed&stream=ORDERS").unwrap();
        assert_eq!(d.name.as_str(), "orders");
        assert_eq!(
            d.target,
            Target::Nats {
                url: "nats://127.0.0.1:4222".into(),
                subject: "orders.placed".into(),
                stream: Some("ORDERS".into())
            }
        );
        assert_eq!(d.to_string(), "orders=nats://127.0.0.1:4222?subject=orders.placed&stream=ORDERS");
        let d = parse("o=tls://nats.example:4443?subject=a").unwrap();
        assert_eq!(d.target, Target::Nats { url: "tls://nats.example:4443".into(), subject: "a".into(), stream: None });
    }

    #[test]
    fn a_rabbit_destination_parses() {
        let d =
            parse("billing=amqp://guest:guest@127.0.0.1:5672/%2f?exchange=&routing_key=billing&queue=billing").unwrap();
        assert_eq!(
            d.target,
            Target::Rabbit {
                url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                exchange: "".into(),
                routing_key: "billing".into(),
                queue: Some("billing".into()),
            }
        );
        let d = parse("e=amqp://127.0.0.1/?exchange=events&routing_key=orders.*").unwrap();
        assert_eq!(
            d.target,
            Target::Rabbit {
                url: "amqp://127.0.0.1/".into(),
                exchange: "events".into(),
                routing_key: "orders.*".into(),
                queue: None
            }
        );
    }

    #[test]
    fn lapins_connection_parameters_stay_in_the_broker_url() {
        let d = parse("b=amqp://u:p@h:5672/v?heartbeat=10&exchange=x&routing_key=k&connection_timeout=500").unwrap();
        assert_eq!(d.target.url(), "amqp://u:p@h:5672/v?heartbeat=10&connection_timeout=500");
        let e = parse("b=amqp://h/?routing_key=k&exchange=x&heartbeat=ten").unwrap_err();
        assert!(matches!(e, DestinationError::Url { .. }), "{e}");
    }

    #[test]
    fn display_and_debug_redact_the_userinfo() {
        let d = parse("billing=amqp://guest:s3cret@127.0.0.1:5672/%2f?exchange=&routing_key=billing").unwrap();
        for shown in [d.to_string(), format!("{d:?}"), d.target.redacted_url(), format!("{:?}", d.target)] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(!shown.contains("guest"), "{shown}");
            assert!(shown.contains("***@127.0.0.1:5672"), "{shown}");
        }
        assert_eq!(d.to_string(), "billing=amqp://***@127.0.0.1:5672/%2f?exchange=&routing_key=billing");
        // A NATS token is the userinfo's user.
        let d = parse("o=nats://t0ken@127.0.0.1:4222?subject=s").unwrap();
        assert_eq!(d.to_string(), "o=nats://***@127.0.0.1:4222?subject=s");
        assert_eq!(d.target.url(), "nats://t0ken@127.0.0.1:4222");
        let d = parse("o=nats://127.0.0.1:4222?subject=s").unwrap();
        assert_eq!(d.target.redacted_url(), "nats://127.0.0.1:4222");
    }

    #[test]
    fn errors_never_show_the_password() {
        let specs = [
            "b=amqp://guest:s3cret@127.0.0.1:5672/%2f?exchange=&routing_key=",
            "b=amqp://guest:s3cret@127.0.0.1:5672/%2f?nope=1&routing_key=k",
            "b=ftp://guest:s3cret@127.0.0.1",
            "b=nats://guest:s3cret@127.0.0.1?subject=a b",
            "bad name=amqp://guest:s3cret@h?routing_key=k",
        ];
        for spec in specs {
            let e = parse(spec).unwrap_err().to_string();
            assert!(!e.contains("s3cret"), "{spec}: {e}");
        }
    }

    #[test]
    fn bad_specs_are_refused_naming_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("orders", "NAME=URL"),
            ("=nats://h?subject=s", "not empty"),
            ("a/b=nats://h?subject=s", "A-Z a-z 0-9 . _ -"),
            (&format!("{}=nats://h?subject=s", "n".repeat(65)), "at most 64"),
            ("o=not a url", "bad URL"),
            ("o=http://h/?subject=s", "scheme \"http\""),
            ("o=nats://h:4222", "parameter subject is required"),
            ("o=nats://h?subject=", "subject: empty"),
            ("o=nats://h?subject=a..b", "non-empty tokens"),
            ("o=nats://h?subject=orders.*", "without wildcards"),
            ("o=nats://h?subject=orders.>", "without wildcards"),
            ("o=nats://h?subject=a&stream=A.B", "stream name"),
            ("o=nats://h?subject=a&stream=", "stream: empty"),
            ("o=nats://h?subject=a&subject=b", "given twice"),
            ("o=nats://h?subject=a&queue=q", "unknown parameter \"queue\""),
            ("o=nats://h/path?subject=a", "no path"),
            ("o=nats://h?subject=a#frag", "fragment"),
            ("o=amqp://h/%2f?exchange=x", "parameter routing_key is required"),
            ("o=amqp://h/%2f?exchange=&routing_key=", "name the queue"),
            ("o=amqp://h/%2f?routing_key=a&queue=b", "queue must equal routing_key"),
            ("o=amqp://h/%2f?exchange=x&routing_key=a&queue=", "queue: empty"),
            ("o=amqp://h/%2f?exchange=x&routing_key=a&queue=amq.q", "the broker's"),
            ("o=amqp://h/%2f?exchange=a%20b&routing_key=a", "exchange name"),
            ("o=amqp://h/%2f?exchange=x&routing_key=a&subject=s", "unknown parameter \"subject\""),
            (&format!("o=amqp://h/%2f?exchange=x&routing_key={}", "k".repeat(256)), "longer than 255"),
            ("o=amqp:///%2f?exchange=x&routing_key=a", "no host"),
        ];
        for (spec, expected) in cases {
            let e = parse(spec).expect_err(spec).to_string();
            assert!(e.contains(expected), "{spec}: {e:?} should say {expected:?}");
        }
    }

    #[test]
    fn names_follow_their_rules() {
        assert!(DestinationName::parse("Orders.placed_v2-x").is_ok());
        assert!(DestinationName::parse(&"n".repeat(64)).is_ok());
        assert!(DestinationName::parse(&"n".repeat(65)).is_err());
        assert!(DestinationName::parse("").is_err());
        assert!(DestinationName::parse("é").is_err());
        assert_eq!(DestinationName::parse("a").unwrap().to_string(), "a");
    }
}
