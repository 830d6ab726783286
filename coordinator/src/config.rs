//! Typed configuration: every knob is a flag and an environment variable.

use crate::callbacks::allow::Rule;
use std::net::SocketAddr;
use std::time::Duration;
use tandem_brokers::Destination;

/// The default of every setting, written once: the flags' defaults and
/// [`Settings::new`] both read them (and a test holds the README's
/// configuration table to the flags).
pub mod defaults {
    /// `--listen`.
    pub const LISTEN: &str = "127.0.0.1:7070";
    /// `--db-max-connections`.
    pub const DB_MAX_CONNECTIONS: u32 = 32;
    /// `--db-relaxed-connections`.
    pub const DB_RELAXED_CONNECTIONS: u32 = 16;
    /// `--callback-timeout-ms`.
    pub const CALLBACK_TIMEOUT_MS: u64 = 5_000;
    /// `--retry-base-ms`.
    pub const RETRY_BASE_MS: u64 = 200;
    /// `--retry-max-ms`.
    pub const RETRY_MAX_MS: u64 = 30_000;
    /// `--recovery-interval-ms`.
    pub const RECOVERY_INTERVAL_MS: u64 = 1_000;
    /// `--lease-ms`.
    pub const LEASE_MS: u64 = 15_000;
    /// `--default-timeout-ms`.
    pub const DEFAULT_TIMEOUT_MS: u64 = tandem_wire::DEFAULT_TIMEOUT_MS;
    /// `--max-timeout-ms`.
    pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
    /// `--max-body-bytes`.
    pub const MAX_BODY_BYTES: usize = 1 << 20;
    /// `--request-timeout-ms`.
    pub const REQUEST_TIMEOUT_MS: u64 = 60_000;
    /// `--shutdown-grace-ms`.
    pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
    /// How long callback attempts and other timeline events are kept (7 days).
    pub const EVENTS_RETENTION_MS: u64 = 7 * 24 * 3_600_000;
    /// `--max-branches`.
    pub const MAX_BRANCHES: u32 = 1_000;
    /// `--max-payload-bytes`.
    pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
    /// `--dtm-listen` given without an address: DTM's own port, on loopback.
    pub const DTM_LISTEN: &str = "127.0.0.1:36789";
}

/// Settings of `tandem serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = defaults::LISTEN)]
    pub listen: SocketAddr,
    /// PostgreSQL URL of the coordinator's own database.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Connections in the synchronous-commit pool.
    #[arg(long, env = "TANDEM_DB_MAX_CONNECTIONS", default_value_t = defaults::DB_MAX_CONNECTIONS)]
    pub db_max_connections: u32,
    /// Connections in the asynchronous-commit pool (bookkeeping writes).
    #[arg(long, env = "TANDEM_DB_RELAXED_CONNECTIONS", default_value_t = defaults::DB_RELAXED_CONNECTIONS)]
    pub db_relaxed_connections: u32,
    /// How long a callback to a participant may take before its outcome counts as unknown.
    #[arg(long, env = "TANDEM_CALLBACK_TIMEOUT_MS", default_value_t = defaults::CALLBACK_TIMEOUT_MS)]
    pub callback_timeout_ms: u64,
    /// First retry delay after a callback with an unknown outcome (doubles, with jitter).
    #[arg(long, env = "TANDEM_RETRY_BASE_MS", default_value_t = defaults::RETRY_BASE_MS)]
    pub retry_base_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = "TANDEM_RETRY_MAX_MS", default_value_t = defaults::RETRY_MAX_MS)]
    pub retry_max_ms: u64,
    /// How often the recovery worker looks for expired and stalled transactions.
    #[arg(long, env = "TANDEM_RECOVERY_INTERVAL_MS", default_value_t = defaults::RECOVERY_INTERVAL_MS)]
    pub recovery_interval_ms: u64,
    /// Phase-2 lease: a coordinator that dies while driving a transaction has
    /// its work taken over at most this long after its last renewal.
    #[arg(long, env = "TANDEM_LEASE_MS", default_value_t = defaults::LEASE_MS)]
    pub lease_ms: u64,
    /// Timeout of a transaction begun without `timeout_ms`.
    #[arg(long, env = "TANDEM_DEFAULT_TIMEOUT_MS", default_value_t = defaults::DEFAULT_TIMEOUT_MS)]
    pub default_timeout_ms: u64,
    /// Largest `timeout_ms` a client may ask for.
    #[arg(long, env = "TANDEM_MAX_TIMEOUT_MS", default_value_t = defaults::MAX_TIMEOUT_MS)]
    pub max_timeout_ms: u64,
    /// Largest request body accepted (larger: 413).
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES", default_value_t = defaults::MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Server-side limit on one request (commit's `wait_ms` is capped 6 s below it).
    #[arg(long, env = "TANDEM_REQUEST_TIMEOUT_MS", default_value_t = defaults::REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight phase-2 work before giving up its leases.
    #[arg(long, env = "TANDEM_SHUTDOWN_GRACE_MS", default_value_t = defaults::SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,
    /// Name of this process in leases (default: host-pid-random).
    #[arg(long, env = "TANDEM_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// How long the timeline's recorded events (callback attempts, takeovers,
    /// operator actions) are kept; older ones are deleted in small batches.
    #[arg(long, env = "TANDEM_EVENTS_RETENTION_MS", default_value_t = defaults::EVENTS_RETENTION_MS)]
    pub events_retention_ms: u64,
    /// A broker destination that message deliveries may name, as
    /// `NAME=nats://HOST:PORT?subject=SUBJECT[&stream=STREAM]` or
    /// `NAME=amqp://USER:PASS@HOST:PORT/VHOST?exchange=EXCHANGE&routing_key=KEY[&queue=QUEUE]`.
    /// Repeat the flag for several; in the environment, separate them with
    /// spaces. Clients name destinations, never broker addresses.
    #[arg(long = "destination", env = "TANDEM_DESTINATIONS", value_delimiter = ' ', value_parser = parse_destination)]
    pub destinations: Vec<Destination>,
    /// A file of API tokens, one `ROLES NAME sha256:HEX [rate=N]` per line
    /// (`tandem token new` makes one). Without any token, the coordinator
    /// serves only on loopback.
    #[arg(long, env = "TANDEM_TOKENS_FILE")]
    pub tokens_file: Option<String>,
    /// API tokens as entries separated by `;` (same form as the file's lines).
    #[arg(long, env = "TANDEM_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// Serve without authentication on a non-loopback address (behind a
    /// network boundary you trust). Logged at every start.
    #[arg(long, env = "TANDEM_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Where callbacks may go, as `SCHEME://HOST[:PORT]` (HOST an address,
    /// a CIDR, a name or `*.name`; SCHEME http, https or *; PORT a number or
    /// *). Repeat for several; in the environment, separate with spaces.
    /// Default: loopback only.
    #[arg(long = "callback-allow", env = "TANDEM_CALLBACK_ALLOW", value_delimiter = ' ', value_parser = parse_rule)]
    pub callback_allow: Vec<Rule>,
    /// The key callbacks are signed with, 64 or more hex digits (`tandem
    /// token key` makes one). Required when tokens are configured.
    #[arg(long, env = "TANDEM_CALLBACK_KEY", hide_env_values = true)]
    pub callback_key: Option<String>,
    /// A file holding the callback signing key (instead of `--callback-key`).
    #[arg(long, env = "TANDEM_CALLBACK_KEY_FILE")]
    pub callback_key_file: Option<String>,
    /// A PEM file of certificate authorities trusted for `https` callbacks,
    /// besides the public roots.
    #[arg(long, env = "TANDEM_CALLBACK_CA_FILE")]
    pub callback_ca_file: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key-file`).
    #[arg(long, env = "TANDEM_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<String>,
    /// The PEM private key of `--tls-cert-file`.
    #[arg(long, env = "TANDEM_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<String>,
    /// Most branches one transaction may register (beyond: 409 `limit_exceeded`).
    #[arg(long, env = "TANDEM_MAX_BRANCHES", default_value_t = defaults::MAX_BRANCHES)]
    pub max_branches: u32,
    /// Largest `payload` of a branch, a saga step or a delivery, in bytes of
    /// JSON (larger: 413).
    #[arg(long, env = "TANDEM_MAX_PAYLOAD_BYTES", default_value_t = defaults::MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,
    /// Also serve DTM's HTTP protocol (`/api/dtmsvr`, `/api/ping`) on this
    /// address, for DTM clients pointed at it; given without an address,
    /// 127.0.0.1:36789 (DTM's port). The main listener serves it too.
    #[arg(long, env = "TANDEM_DTM_LISTEN", num_args = 0..=1, default_missing_value = defaults::DTM_LISTEN)]
    pub dtm_listen: Option<SocketAddr>,
    /// What a request without a token may do on the DTM listener (DTM's
    /// clients send none): `ROLES [rate=N]`, e.g. `client,participant`.
    /// Without it, the DTM listener needs tokens as the main one does. Bind
    /// that listener to an address only your services reach.
    #[arg(long, env = "TANDEM_DTM_GRANT")]
    pub dtm_grant: Option<String>,
}

fn parse_rule(spec: &str) -> Result<Rule, String> {
    spec.parse::<Rule>()
}

fn parse_destination(spec: &str) -> Result<Destination, String> {
    spec.parse::<Destination>().map_err(|e| e.to_string())
}

impl Settings {
    /// The defaults, for everything but the database URL (tests, benchmark,
    /// examples), listening on a free loopback port instead of
    /// [`defaults::LISTEN`].
    pub fn new(database_url: impl Into<String>) -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            db_max_connections: defaults::DB_MAX_CONNECTIONS,
            db_relaxed_connections: defaults::DB_RELAXED_CONNECTIONS,
            callback_timeout_ms: defaults::CALLBACK_TIMEOUT_MS,
            retry_base_ms: defaults::RETRY_BASE_MS,
            retry_max_ms: defaults::RETRY_MAX_MS,
            recovery_interval_ms: defaults::RECOVERY_INTERVAL_MS,
            lease_ms: defaults::LEASE_MS,
            default_timeout_ms: defaults::DEFAULT_TIMEOUT_MS,
            max_timeout_ms: defaults::MAX_TIMEOUT_MS,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            request_timeout_ms: defaults::REQUEST_TIMEOUT_MS,
            shutdown_grace_ms: defaults::SHUTDOWN_GRACE_MS,
            instance_id: None,
            events_retention_ms: defaults::EVENTS_RETENTION_MS,
            destinations: Vec::new(),
            tokens_file: None,
            tokens: None,
            insecure_no_auth: false,
            callback_allow: Vec::new(),
            callback_key: None,
            callback_key_file: None,
            callback_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            max_branches: defaults::MAX_BRANCHES,
            max_payload_bytes: defaults::MAX_PAYLOAD_BYTES,
            dtm_listen: None,
            dtm_grant: None,
        }
    }

    /// The timing knobs as durations.
    pub fn timing(&self) -> Timing {
        let ms = Duration::from_millis;
        Timing {
            callback_timeout: ms(self.callback_timeout_ms),
            retry_base: ms(self.retry_base_ms.max(1)),
            retry_max: ms(self.retry_max_ms.max(self.retry_base_ms).max(1)),
            recovery_interval: ms(self.recovery_interval_ms.max(10)),
            // A lease shorter than one callback would let a live driver lose it mid-call.
            lease: ms(self.lease_ms.max(self.callback_timeout_ms * 2)),
            default_timeout: ms(self.default_timeout_ms),
            max_timeout: ms(self.max_timeout_ms),
            // Room below the request timeout for a slow pool acquire (5 s) and
            // the decision itself, so that a long wait answers 202, never 408.
            max_wait: ms(self.request_timeout_ms.saturating_sub(6_000).max(100)),
            shutdown_grace: ms(self.shutdown_grace_ms),
        }
    }
}

/// Bounds on what one transaction may hold.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most branches of one transaction.
    pub max_branches: u32,
    /// Largest payload, in bytes of JSON.
    pub max_payload_bytes: usize,
}

impl Settings {
    /// The bounds on one transaction.
    pub fn bounds(&self) -> Bounds {
        Bounds { max_branches: self.max_branches.max(1), max_payload_bytes: self.max_payload_bytes }
    }
}

/// Durations derived from [`Settings`].
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Per-callback timeout.
    pub callback_timeout: Duration,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Recovery scan period.
    pub recovery_interval: Duration,
    /// Phase-2 lease (at least two callback timeouts).
    pub lease: Duration,
    /// Default transaction timeout.
    pub default_timeout: Duration,
    /// Largest transaction timeout.
    pub max_timeout: Duration,
    /// Largest commit/rollback `wait_ms`.
    pub max_wait: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
}
