//! AT mode: plain SQL made compensable.
//!
//! Inside a global transaction the business code runs `INSERT`, `UPDATE`,
//! `DELETE` and `SELECT ... FOR UPDATE` through an [`AtTransaction`]. Each
//! change is imaged: the rows before (`SELECT ... FOR UPDATE` with the
//! statement's own WHERE clause and parameters), the statement, the rows after
//! (by primary key). At [`AtTransaction::commit`] the branch registers with
//! the global lock keys of every touched row, one `tandem_undo_log` row with
//! the images goes into the same local transaction, and the local commit
//! follows, only once the coordinator has granted the locks.
//!
//! Phase 2 arrives at [`CALLBACK_PATH`]: commit queues the undo row for a
//! batched, asynchronous delete; rollback, in one local transaction, restores
//! every row that is still as AT left it, and refuses (409, branch
//! `rollback_failed`) if any row was changed by someone else since: a dirty
//! write that a person must look at. A rollback that finds no undo row leaves
//! a marker, so that a late phase 1 fails on the undo log's primary key.
//!
//! - [`sql`]: what AT understands of a statement (sqlparser), and the one
//!   function that writes AT-generated SQL's placeholders.
//! - [`meta`]: what the catalog says of a table, and which tables AT refuses.
//! - [`image`]: row images, the undo log's JSON, lock keys.
//! - [`plan`]: the rollback of a branch, decided and ordered (pure).
//! - `gen`: the SQL AT generates for both phases.
//! - [`backend`]: PostgreSQL ([`Pg`]) and MySQL/MariaDB ([`MySqlDb`]).

pub mod backend;
mod executor;
mod gen;
pub mod image;
pub mod meta;
pub mod plan;
pub mod sql;
mod undo;

pub use backend::{AtBackend, AtParam, MySqlDb, Param, Pg, ServerInfo};
pub use executor::{AtQuery, AtTransaction};
pub use image::Conflict;

use crate::callback::{self, Callbacks, Refusal};
use crate::client::{ClientError, TandemClient};
use axum::Router;
use meta::{TableMeta, Trigger};
use sql::TableRef;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_wire::{
    BranchId, CallbackAction, CallbackOutcome, CallbackReply, CallbackRequest, ErrorCode, LockHolder, Xid,
};
use tokio::sync::{mpsc, OnceCell};

/// Path of the AT callback endpoint.
pub const CALLBACK_PATH: &str = "/tandem/at/callback";

/// Errors of AT mode.
#[derive(Debug, thiserror::Error)]
pub enum AtError {
    /// The statement cannot be imaged safely; nothing was executed.
    #[error("AT mode cannot run this statement: {0}")]
    Unsupported(String),
    /// The local database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The coordinator refused or could not be reached.
    #[error("coordinator: {0}")]
    Coordinator(#[from] ClientError),
    /// Another global transaction holds a lock this one needs (after the
    /// configured retries, or at once when the holder is rolling back).
    #[error("global lock {:?} is held by transaction {} ({}); gave up after {waited:?}", .holder.lock_key, .holder.xid, .holder.status)]
    LockConflict {
        /// Who holds it.
        holder: Box<LockHolder>,
        /// How long this transaction retried.
        waited: Duration,
    },
    /// The branch was rolled back before its phase 1 could commit (the
    /// rollback left its marker first): the local transaction was rolled back.
    #[error("branch {branch_id} of {xid} was already rolled back; its phase 1 was refused")]
    Suspended {
        /// The transaction.
        xid: Xid,
        /// The branch.
        branch_id: BranchId,
    },
    /// Rollback found rows changed by someone else; nothing was restored.
    #[error("dirty write: {} row(s) changed outside the global transaction; nothing was rolled back", .0.len())]
    DirtyWrite(Vec<Conflict>),
    /// Rows changed under the statement between its images; the local
    /// transaction must be rolled back (drop it) and may be retried.
    #[error("concurrent change: {0}")]
    Concurrent(String),
    /// An earlier statement of this local transaction failed after it may
    /// have run, so it cannot commit: it was rolled back instead.
    #[error("an earlier statement of this branch failed ({0}); the local transaction was rolled back")]
    Poisoned(String),
    /// Rollback could not write a before image back: a constraint refused it
    /// (for example a row with the same unique key was inserted since).
    #[error("rollback refused by the database: {0}")]
    RestoreRefused(String),
    /// The restored rows, read back, are not their before images (a trigger,
    /// a rule or a referential action changed them); nothing was restored.
    #[error("restore mismatch: {} row(s) differ from their before images after the restore; nothing was rolled back", .0.len())]
    RestoreMismatch(Vec<Conflict>),
    /// The participant is not set up (its undo table is missing).
    #[error("AT participant not set up: {0}")]
    Setup(String),
    /// The undo log row cannot be read back.
    #[error("undo log of this branch is unreadable: {0}")]
    CorruptUndo(String),
    /// A bug or an unexpected database answer.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How long a branch waits for a global lock held by another transaction.
#[derive(Debug, Clone, Copy)]
pub struct LockRetry {
    /// Pause between attempts (Seata: 10 ms).
    pub interval: Duration,
    /// Total time to keep trying (Seata: 30 attempts, 300 ms).
    pub timeout: Duration,
}

impl Default for LockRetry {
    fn default() -> Self {
        LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(300) }
    }
}

/// What [`AtParticipant::purge`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Markers of rolled-back branches and empty rollbacks.
    pub markers: u64,
    /// Phase-1 rows of committed transactions.
    pub committed: u64,
}

/// Largest batch of undo rows deleted by one statement after commits.
const CLEANUP_BATCH: usize = 256;
/// Queued commit cleanups; beyond this the commit callback deletes inline.
const CLEANUP_QUEUE: usize = 65_536;
/// Rows one branch may write by default: the coordinator's limit on the
/// global locks of one registration.
pub const MAX_ROWS_PER_BRANCH: usize = 10_000;

/// The metadata cache's key: the scope an unqualified name resolved in, and the name.
type MetaKey = (Option<String>, TableRef);

/// An AT participant: one resource on one database. Cheap to clone.
pub struct AtParticipant<B: AtBackend> {
    inner: Arc<Inner<B>>,
}

impl<B: AtBackend> Clone for AtParticipant<B> {
    fn clone(&self) -> Self {
        AtParticipant { inner: self.inner.clone() }
    }
}

impl<B: AtBackend> std::fmt::Debug for AtParticipant<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtParticipant").field("resource", &self.inner.resource).finish_non_exhaustive()
    }
}

struct Inner<B: AtBackend> {
    /// The business database (also holds `tandem_undo_log`).
    pool: sqlx::Pool<B::Db>,
    /// The coordinator.
    client: TandemClient,
    /// Resource name: branches register under it and lock keys are scoped by
    /// it, so every service writing to this database must use the same name.
    resource: String,
    /// Where the coordinator reaches this participant's [`CALLBACK_PATH`].
    callback_url: String,
    /// Global lock retry policy.
    lock_retry: LockRetry,
    /// Triggers the service declared safe, as (`schema.table`, trigger name).
    allowed_triggers: Vec<(String, String)>,
    /// Most rows one branch may write.
    max_rows: usize,
    /// What the server can do, read on first use.
    server: OnceCell<ServerInfo>,
    /// The undo table's qualified name, read on first use (see `undo::resolve_undo`).
    undo: Arc<OnceCell<String>>,
    /// Catalog metadata by table as named in statements (with the scope an
    /// unqualified name resolved in).
    meta: Mutex<HashMap<MetaKey, Arc<TableMeta>>>,
    /// Committed branches whose undo rows await the batched delete.
    cleanup: mpsc::Sender<(Xid, BranchId)>,
}

/// Builds an [`AtParticipant`] with options ([`AtParticipant::builder`]).
pub struct AtParticipantBuilder<B: AtBackend> {
    /// The business database.
    pool: sqlx::Pool<B::Db>,
    /// The coordinator.
    client: TandemClient,
    /// Resource name.
    resource: String,
    /// Where the coordinator reaches this participant's [`CALLBACK_PATH`].
    callback_url: String,
    /// Global lock retry policy.
    lock_retry: LockRetry,
    /// Declared triggers.
    allowed_triggers: Vec<(String, String)>,
    /// Row limit per branch.
    max_rows: usize,
}

impl<B: AtBackend> std::fmt::Debug for AtParticipantBuilder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtParticipantBuilder").field("resource", &self.resource).finish_non_exhaustive()
    }
}

impl<B: AtBackend> AtParticipantBuilder<B> {
    /// How long a branch waits for a global lock held by another transaction.
    pub fn lock_retry(mut self, retry: LockRetry) -> Self {
        self.lock_retry = retry;
        self
    }

    /// Declares the trigger `trigger` of `table` (`schema.table` as the
    /// catalog names it; on MySQL `database.table`) safe for AT, which
    /// otherwise refuses statements on tables with triggers. Declare only a
    /// trigger that changes nothing but the row it fires for (its effect is
    /// then in the images) and that does nothing while the rollback restores
    /// rows: PostgreSQL `current_setting('tandem.at_restore', true) = 'on'`,
    /// MySQL `@tandem_at_restore = 1`. A rollback reads every restored row
    /// back; a trigger that changed one makes the branch `rollback_failed`.
    /// A trigger of a partitioned table covers its partitions' copies.
    pub fn allow_trigger(mut self, table: &str, trigger: &str) -> Self {
        self.allowed_triggers.push((table.to_owned(), trigger.to_owned()));
        self
    }

    /// Most rows one branch may write (default [`MAX_ROWS_PER_BRANCH`], the
    /// coordinator's limit on one branch's global locks).
    pub fn max_rows_per_branch(mut self, rows: usize) -> Self {
        self.max_rows = rows;
        self
    }

    /// The participant. Starts the background task that deletes committed
    /// undo rows; call it inside a tokio runtime.
    pub fn build(self) -> AtParticipant<B> {
        let (tx, rx) = mpsc::channel(CLEANUP_QUEUE);
        let inner = Arc::new(Inner {
            pool: self.pool,
            client: self.client,
            resource: self.resource,
            callback_url: self.callback_url,
            lock_retry: self.lock_retry,
            allowed_triggers: self.allowed_triggers,
            max_rows: self.max_rows,
            server: OnceCell::new(),
            undo: Arc::new(OnceCell::new()),
            meta: Mutex::new(HashMap::new()),
            cleanup: tx,
        });
        tokio::spawn(undo::cleaner::<B>(inner.pool.clone(), inner.undo.clone(), rx));
        AtParticipant { inner }
    }
}

impl<B: AtBackend> AtParticipant<B> {
    /// A builder of a participant on `pool` ([`Pg`] or [`MySqlDb`]),
    /// registering branches as `resource`. `public_base_url` is how the
    /// coordinator reaches this service; callbacks go to
    /// `{public_base_url}`[`CALLBACK_PATH`]. Options: lock retries, declared
    /// triggers, the row limit.
    pub fn builder(
        pool: sqlx::Pool<B::Db>,
        client: TandemClient,
        resource: &str,
        public_base_url: &str,
    ) -> AtParticipantBuilder<B> {
        AtParticipantBuilder {
            pool,
            client,
            resource: resource.to_owned(),
            callback_url: format!("{}{}", public_base_url.trim_end_matches('/'), CALLBACK_PATH),
            lock_retry: LockRetry::default(),
            allowed_triggers: Vec::new(),
            max_rows: MAX_ROWS_PER_BRANCH,
        }
    }

    /// Creates `tandem_undo_log` ([`AtBackend::UNDO_DDL`]: the file of
    /// `participant-sdk/migrations/` for this database) if it does not exist.
    pub async fn install(&self) -> Result<(), sqlx::Error> {
        B::install(&self.inner.pool).await
    }

    /// Deletes undo rows no rollback can need any more, older than `age`:
    /// markers of rolled-back branches, and phase-1 rows whose transaction the
    /// coordinator reports committed (their batched delete was lost, say to a
    /// restart). Rows of undecided or unknown transactions stay. Run it now
    /// and then (Seata keeps undo rows 7 days).
    pub async fn purge(&self, age: std::time::Duration) -> Result<Purged, AtError> {
        let table = self.undo_table().await?;
        undo::purge::<B>(&self.inner.pool, &table, &self.inner.client, age).await
    }

    /// The undo table's qualified name.
    async fn undo_table(&self) -> Result<String, AtError> {
        undo::resolve_undo::<B>(&self.inner.pool, &self.inner.undo).await
    }

    /// The resource name.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// The coordinator client.
    pub fn client(&self) -> &TandemClient {
        &self.inner.client
    }

    /// The callback URL registered with each branch.
    pub fn callback_url(&self) -> &str {
        &self.inner.callback_url
    }

    /// Starts this service's branch of global transaction `xid`: a local
    /// transaction whose statements are imaged.
    pub async fn begin(&self, xid: &Xid) -> Result<AtTransaction<B>, AtError> {
        // Resolved before the transaction takes its connection: resolving
        // needs one of the pool's own.
        self.undo_table().await?;
        let tx = self.inner.pool.begin().await?;
        Ok(AtTransaction::new(self.clone(), xid.clone(), tx))
    }

    /// Applies a phase-2 callback. A commit answers [`CallbackOutcome::Done`]:
    /// it only queues the delete of the undo row, whether or not that already
    /// happened.
    pub async fn handle_callback(&self, req: &CallbackRequest) -> Result<CallbackOutcome, AtError> {
        let key = undo_key(req);
        match req.action {
            CallbackAction::Commit => {
                let item = (req.xid.clone(), key);
                if let Err(mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item)) =
                    self.inner.cleanup.try_send(item)
                {
                    undo::delete_batch::<B>(&self.inner.pool, &self.undo_table().await?, &[item]).await?;
                }
                Ok(CallbackOutcome::Done)
            }
            CallbackAction::Rollback => undo::rollback::<B>(&self.inner.pool, self, &req.xid, &key).await,
            other => Err(AtError::Unsupported(format!("an AT branch does not take the action {}", other.as_str()))),
        }
    }

    /// A router serving [`CALLBACK_PATH`]; merge it into the service's router.
    pub fn router(&self) -> Router {
        callback::router(CALLBACK_PATH, self.clone(), self.inner.client.verifier())
    }

    /// What the server can do, read once.
    async fn server(&self, conn: &mut backend::Conn<B>) -> Result<ServerInfo, AtError> {
        Ok(*self.inner.server.get_or_try_init(|| B::server_info(conn)).await?)
    }

    /// Table metadata, cached per table name and, for an unqualified name,
    /// the `scope` it resolves in (the session's schemas or database):
    /// schema changes need a restart of phase-1 processes; rollbacks read it
    /// afresh.
    async fn meta(
        &self,
        conn: &mut backend::Conn<B>,
        table: &TableRef,
        scope: Option<&str>,
    ) -> Result<Arc<TableMeta>, AtError> {
        let key = (scope.map(str::to_owned), table.clone());
        if let Some(m) = self.inner.meta.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        self.load_meta(conn, table, scope).await
    }

    /// Table metadata of a qualified name read from the catalog now.
    async fn fresh_meta(&self, conn: &mut backend::Conn<B>, table: &TableRef) -> Result<Arc<TableMeta>, AtError> {
        self.load_meta(conn, table, None).await
    }

    /// Reads and caches table metadata.
    async fn load_meta(
        &self,
        conn: &mut backend::Conn<B>,
        table: &TableRef,
        scope: Option<&str>,
    ) -> Result<Arc<TableMeta>, AtError> {
        let server = self.server(conn).await?;
        let Some(meta) = B::table_meta(conn, table, &server, scope).await? else {
            let name = match &table.schema {
                Some(s) => format!("{s}.{}", table.name),
                None => table.name.clone(),
            };
            return Err(AtError::Unsupported(format!("no table {name}")));
        };
        let meta = Arc::new(meta);
        let key = (scope.map(str::to_owned), table.clone());
        self.inner.meta.lock().unwrap_or_else(|p| p.into_inner()).insert(key, meta.clone());
        Ok(meta)
    }

    /// Whether the service declared `trigger`, which fires for rows of
    /// `meta`, safe (by its own table, or by the partitioned table whose
    /// trigger it is a copy of).
    fn trigger_allowed(&self, meta: &TableMeta, trigger: &Trigger) -> bool {
        let own = trigger.table.to_string();
        let root = meta.lock_table.to_string();
        self.inner.allowed_triggers.iter().any(|(t, n)| n == &trigger.name && (t == &own || t == &root))
    }
}

/// The key of a branch's undo row: the `undo_key` of its payload (the SDK
/// registers one), else the branch id (a branch registered without one, whose
/// empty rollback still leaves a marker).
fn undo_key(req: &CallbackRequest) -> BranchId {
    req.payload
        .as_ref()
        .and_then(|p| p.get(UNDO_KEY))
        .and_then(|k| k.as_str())
        .and_then(|k| BranchId::parse(k).ok())
        .unwrap_or_else(|| req.branch_id.clone())
}

/// Payload field carrying a branch's undo-row key.
const UNDO_KEY: &str = "undo_key";

impl<B: AtBackend> Callbacks for AtParticipant<B> {
    const MODE: &'static str = "AT";

    async fn answer(self, req: CallbackRequest) -> Result<CallbackReply, Refusal> {
        if req.resource != self.inner.resource {
            let detail = format!("this participant serves resource {:?}, not {:?}", self.inner.resource, req.resource);
            return Err(Refusal::unknown_resource(detail));
        }
        // A refusal that lists rows puts them under `conflicts` (the
        // coordinator keeps the body as the branch's `last_error`).
        match self.handle_callback(&req).await {
            Ok(outcome) => Ok(CallbackReply::new(outcome)),
            Err(AtError::DirtyWrite(conflicts)) => {
                tracing::error!(xid = %req.xid, branch_id = %req.branch_id, rows = conflicts.len(),
                    "AT rollback found dirty writes; branch needs manual repair");
                let detail = format!("dirty write: {} row(s) changed outside the global transaction", conflicts.len());
                Err(Refusal::permanent(ErrorCode::InvalidState, detail).with("conflicts", conflicts))
            }
            Err(AtError::RestoreMismatch(conflicts)) => {
                tracing::error!(xid = %req.xid, branch_id = %req.branch_id, rows = conflicts.len(),
                    "AT rollback could not restore rows to their before images; branch needs manual repair");
                let detail = format!(
                    "restore mismatch: {} row(s) differ from their before images once restored (a trigger, rule or \
                     referential action changed them); nothing was rolled back",
                    conflicts.len()
                );
                Err(Refusal::permanent(ErrorCode::InvalidState, detail).with("conflicts", conflicts))
            }
            Err(e @ AtError::Unsupported(_)) => Err(Refusal::permanent(ErrorCode::InvalidState, e.to_string())),
            Err(e @ (AtError::CorruptUndo(_) | AtError::RestoreRefused(_))) => {
                tracing::error!(xid = %req.xid, branch_id = %req.branch_id, error = %e,
                    "AT rollback cannot complete; branch needs manual repair");
                Err(Refusal::permanent(ErrorCode::InvalidState, e.to_string()))
            }
            Err(e) => Err(Refusal::retry(e.to_string())),
        }
    }
}
