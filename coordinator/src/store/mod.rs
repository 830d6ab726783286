//! Persistence: every SQL statement of the coordinator lives in this module.
//!
//! Two pools reach the same database. `durable` commits synchronously (the
//! commit waits for the WAL flush) and carries every write that something
//! outside the coordinator will act on: branch registrations, reports and
//! decisions. `relaxed` commits with `synchronous_commit = off` and carries the
//! writes whose loss after a PostgreSQL crash is harmless: a begin that no
//! durable row depends on yet (a later durable commit flushes the WAL up to and
//! past it), phase-2 bookkeeping (lost → phase 2 is re-driven, callbacks are
//! idempotent), leases and retry schedules.
//!
//! Every call is timed into `tandem_db_query_duration_seconds{query}`.

mod auth;
mod batch;
mod decision;
mod dtm;
mod locks;
mod msg;
mod named_locks;
mod operator;
mod phase2;
mod reads;
mod recovery;
mod registration;
mod rows;
mod saga;
mod sql;

pub use decision::DecideResult;
pub use dtm::{DtmRegistration, NewDtmBranch};
pub use locks::LockedRegistration;
pub use msg::{NewDelivery, NewMessage};
pub use named_locks::{ActiveLock, Claimed, GrantRow, LockTx, QueuedWaiter, LOCK_CHANNEL};
pub use operator::{EventRow, MinuteRow, TxFilter};
pub use phase2::{BranchUpdate, PhaseStep};
pub use registration::{NewBranch, NewTransaction, ReportResult};
pub use rows::{holds_global_locks, BranchRow, BranchWithMode, TxRow};
pub use saga::{Durability, LeaseAfter, NewSaga, NewStep, SagaWrite, StepMark};

use crate::metrics::Metrics;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Errors of the persistence layer, classified by SQLSTATE and error kind.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the pool is exhausted; retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A serialization failure or deadlock (SQLSTATE 40001 / 40P01); retry the operation.
    #[error("transient database conflict: {0}")]
    Transient(#[source] sqlx::Error),
    /// A unique constraint was violated (SQLSTATE 23505).
    #[error("unique violation on {constraint}")]
    UniqueViolation {
        /// Name of the violated constraint.
        constraint: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A batched write failed; the error of its statement (shared).
    #[error("{0}")]
    Batch(std::sync::Arc<StoreError>),
    /// A global lock is held by another transaction (SQLSTATE TD409, raised by
    /// `tandem_take_locks`); the statement changed nothing.
    #[error("global lock held by another transaction")]
    LockConflict,
    /// An optimistic write lost to concurrent changes too many times in a row.
    #[error("transaction changed concurrently too often; retry")]
    Contended,
    /// A bug: a batch worker panicked or answered the wrong number of items,
    /// or a statement was asked for something no writer may do. Not retried.
    #[error("internal error: {0}")]
    Internal(String),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Worth retrying: the database is unreachable or a conflict aborted the statement.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Transient(_) | StoreError::Contended => true,
            StoreError::Batch(inner) => inner.is_transient(),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                match code.as_ref() {
                    "40001" | "40P01" => StoreError::Transient(e),
                    "TD409" => StoreError::LockConflict,
                    "23505" => {
                        StoreError::UniqueViolation { constraint: db.constraint().unwrap_or_default().to_owned() }
                    }
                    // Class 08: connection exception; 57P01..03: shutdown / cannot connect now.
                    c if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03") => StoreError::Unavailable(e),
                    _ => StoreError::Database(e),
                }
            }
            _ => StoreError::Database(e),
        }
    }
}

/// Database connection settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Connections of the durable (synchronous-commit) pool.
    pub max_connections: u32,
    /// Connections of the relaxed (asynchronous-commit) pool.
    pub relaxed_connections: u32,
    /// How long a request waits for a free connection.
    pub acquire_timeout: Duration,
    /// Most branches a registration may bring a transaction to (checked in
    /// the registering statement, so concurrent registrations cannot pass it).
    pub max_branches: u32,
}

/// The coordinator's persistence handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Synchronous-commit pool: writes that must survive a PostgreSQL crash.
    durable: PgPool,
    /// `synchronous_commit = off` pool: writes whose loss is repaired by recovery.
    relaxed: PgPool,
    /// Where query timings go.
    metrics: Metrics,
    /// [`StoreConfig::max_branches`].
    max_branches: i32,
    /// Batched inserts of new transactions (relaxed).
    begins: batch::Batcher<NewTransaction, Option<TxRow>>,
    /// Batched branch registrations (durable).
    registrations: batch::Batcher<(tandem_wire::Xid, NewBranch), Option<BranchWithMode>>,
    /// Batched phase-2 completions (relaxed).
    finishes: batch::Batcher<phase2::Finish, Option<chrono::DateTime<chrono::Utc>>>,
}

/// Largest batch of one batched statement.
const BATCH_MAX: usize = 128;

/// The migrations of `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

impl Store {
    /// Opens both pools (lazily: no connection is made until first use).
    pub fn connect(cfg: &StoreConfig, metrics: Metrics) -> Result<Store, StoreError> {
        // Generic plans, made with sequential scans ruled out: no planning per
        // execution, and plans that stay right as the tables grow (a plan
        // cached while a table is empty would otherwise scan it forever after).
        // Every statement here is meant to be served by an index. Hot
        // statements also bind their statuses instead of using literals, so
        // that no generic plan prefers a partial index (whose dead entries grow
        // between vacuums) over the primary key.
        let opts = PgConnectOptions::from_str(&cfg.database_url)
            .map_err(StoreError::Database)?
            .options([("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off")]);
        // Explicit on both: a server, database or role default must not weaken the durable pool.
        let relaxed_opts = opts.clone().options([("synchronous_commit", "off")]);
        let opts = opts.options([("synchronous_commit", "on")]);
        // No ping on acquire: it is a round trip per statement. A dead
        // connection fails its statement with `Unavailable` instead, which
        // every caller handles (503 to clients, retry in workers).
        let durable = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(cfg.max_connections)
            .acquire_timeout(cfg.acquire_timeout)
            .connect_lazy_with(opts);
        let relaxed = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(cfg.relaxed_connections)
            .acquire_timeout(cfg.acquire_timeout)
            .connect_lazy_with(relaxed_opts);
        let max_branches = i32::try_from(cfg.max_branches).unwrap_or(i32::MAX);
        let begins = {
            let (pool, metrics) = (relaxed.clone(), metrics.clone());
            batch::Batcher::start(BATCH_MAX, move |items| {
                registration::insert_transactions(pool.clone(), metrics.clone(), items)
            })
        };
        let finishes = {
            let (pool, metrics) = (relaxed.clone(), metrics.clone());
            batch::Batcher::start(BATCH_MAX, move |items| phase2::finish_many(pool.clone(), metrics.clone(), items))
        };
        let registrations = {
            let (pool, metrics) = (durable.clone(), metrics.clone());
            batch::Batcher::start(BATCH_MAX, move |items| {
                registration::insert_branches(pool.clone(), metrics.clone(), max_branches, items)
            })
        };
        Ok(Store { durable, relaxed, metrics, max_branches, begins, registrations, finishes })
    }

    /// Applies pending migrations (serialized across processes by sqlx's advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = MIGRATOR.run(&self.durable).await;
        self.observe("migrate", started);
        Ok(r?)
    }

    /// Readiness: the database answers and every embedded migration is applied.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> = self
            .timed(
                "ready",
                sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(&self.durable),
            )
            .await?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.durable.close().await;
        self.relaxed.close().await;
    }

    fn observe(&self, query: &'static str, started: Instant) {
        self.metrics.db_seconds.with_label_values(&[query]).observe(started.elapsed().as_secs_f64());
    }

    /// Runs one database call, timing it under `query`.
    async fn timed<T>(
        &self,
        query: &'static str,
        f: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = f.await;
        self.observe(query, started);
        Ok(r?)
    }
}

/// Runs one database call outside a `Store` (batch workers), timing it under `query`.
async fn timed_with<T>(
    metrics: &Metrics,
    query: &'static str,
    f: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let r = f.await;
    metrics.db_seconds.with_label_values(&[query]).observe(started.elapsed().as_secs_f64());
    Ok(r?)
}
