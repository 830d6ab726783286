//! Typed configuration: every knob is a flag and an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of `tandem serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// PostgreSQL URL of the coordinator's own database.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Connections in the synchronous-commit pool.
    #[arg(long, env = "TANDEM_DB_MAX_CONNECTIONS", default_value_t = 32)]
    pub db_max_connections: u32,
    /// Connections in the asynchronous-commit pool (bookkeeping writes).
    #[arg(long, env = "TANDEM_DB_RELAXED_CONNECTIONS", default_value_t = 16)]
    pub db_relaxed_connections: u32,
    /// How long a callback to a participant may take before its outcome counts as unknown.
    #[arg(long, env = "TANDEM_CALLBACK_TIMEOUT_MS", default_value_t = 5_000)]
    pub callback_timeout_ms: u64,
    /// First retry delay after a callback with an unknown outcome (doubles, with jitter).
    #[arg(long, env = "TANDEM_RETRY_BASE_MS", default_value_t = 200)]
    pub retry_base_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = "TANDEM_RETRY_MAX_MS", default_value_t = 30_000)]
    pub retry_max_ms: u64,
    /// How often the recovery worker looks for expired and stalled transactions.
    #[arg(long, env = "TANDEM_RECOVERY_INTERVAL_MS", default_value_t = 1_000)]
    pub recovery_interval_ms: u64,
    /// Phase-2 lease: a coordinator that dies while driving a transaction has
    /// its work taken over at most this long after its last renewal.
    #[arg(long, env = "TANDEM_LEASE_MS", default_value_t = 15_000)]
    pub lease_ms: u64,
    /// Timeout of a transaction begun without `timeout_ms`.
    #[arg(long, env = "TANDEM_DEFAULT_TIMEOUT_MS", default_value_t = tandem_wire::DEFAULT_TIMEOUT_MS)]
    pub default_timeout_ms: u64,
    /// Largest `timeout_ms` a client may ask for.
    #[arg(long, env = "TANDEM_MAX_TIMEOUT_MS", default_value_t = 86_400_000)]
    pub max_timeout_ms: u64,
    /// Largest request body accepted (larger: 413).
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Server-side limit on one request (commit's `wait_ms` is capped 6 s below it).
    #[arg(long, env = "TANDEM_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight phase-2 work before giving up its leases.
    #[arg(long, env = "TANDEM_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// Name of this process in leases (default: host-pid-random).
    #[arg(long, env = "TANDEM_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

impl Settings {
    /// Defaults for everything but the database URL (tests, benchmark, examples).
    pub fn new(database_url: impl Into<String>) -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            db_max_connections: 32,
            db_relaxed_connections: 16,
            callback_timeout_ms: 5_000,
            retry_base_ms: 200,
            retry_max_ms: 30_000,
            recovery_interval_ms: 1_000,
            lease_ms: 15_000,
            default_timeout_ms: tandem_wire::DEFAULT_TIMEOUT_MS,
            max_timeout_ms: 86_400_000,
            max_body_bytes: 1 << 20,
            request_timeout_ms: 60_000,
            shutdown_grace_ms: 10_000,
            instance_id: None,
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
