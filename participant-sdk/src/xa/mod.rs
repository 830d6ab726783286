//! XA branches on real database prepares: PostgreSQL (`PREPARE TRANSACTION`)
//! and MySQL/MariaDB (`XA START … XA PREPARE`), behind one [`XaBackend`] trait.
//!
//! Phase 1 ([`XaParticipant::run`]): register the branch, open the branch's
//! database transaction on a pooled connection, run the business statements,
//! prepare it under the branch's gid, verify that it really is prepared
//! (PostgreSQL: inside an aborted block PREPARE answers ROLLBACK without an
//! error), report `prepared`. The connection is free again once prepared;
//! the prepared transaction keeps its row locks until phase 2.
//!
//! Phase 2 (the callback router): commit or roll back the prepared
//! transaction on any pooled connection. An unknown gid means the branch is
//! already finished (or, for a rollback, never prepared): answered 200.
//!
//! Recovery ([`XaParticipant::recover`]): lists this database's prepared
//! Tandem branches, asks the coordinator how each ended, and finishes them;
//! one the coordinator has no record of is rolled back once older than the
//! transaction timeout (presumed abort).
//!
//! XA needs no table of its own, so unlike the other participants this one
//! has no `install`: a branch's state is the database's prepared
//! transaction, named by its gid.
//!
//! ```ignore
//! let xa = XaParticipant::builder(PgXa::new(pool), client, "orders", "http://orders:8080").build();
//! xa.check().await?; // the server can prepare transactions
//! let app = business_routes.merge(xa.router());
//! ```

pub mod gid;
mod mysql;
pub(crate) mod postgres;

pub use gid::{Gid, GID_PREFIX, MYSQL_FORMAT_ID, THREE_PHASE_GID_PREFIX};
pub use mysql::MySqlXa;
pub use postgres::PgXa;

pub use crate::BoxError;

use crate::callback::{self, Callbacks, Refusal};
use crate::client::{ClientError, TandemClient};
use async_trait::async_trait;
use axum::Router;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_wire::{
    CallbackAction, CallbackOutcome, CallbackReply, CallbackRequest, ErrorCode, RegisterBranchRequest, ReportRequest,
    ReportStatus, TransactionOutcome, Xid,
};

/// Path of the XA callback endpoint.
pub const CALLBACK_PATH: &str = "/tandem/xa/callback";

/// Errors of the XA participant.
#[derive(Debug, thiserror::Error)]
pub enum XaError {
    /// Talking to the coordinator failed.
    #[error(transparent)]
    Coordinator(#[from] ClientError),
    /// The participant's database failed.
    #[error("participant database: {0}")]
    Database(#[from] sqlx::Error),
    /// The server cannot prepare transactions; the message names the setting to change.
    #[error("{0}")]
    Unavailable(&'static str),
    /// The business statements failed; the branch was rolled back and reported `phase1_failed`.
    #[error("phase 1 failed: {0}")]
    Phase1(BoxError),
    /// PREPARE answered, but nothing was prepared (the block had aborted); reported `phase1_failed`.
    #[error("branch {0} did not prepare (its transaction had aborted)")]
    PrepareLost(String),
    /// The coordinator refused the `prepared` report (the transaction was
    /// already decided, rolled back); the prepared branch was rolled back.
    #[error("the global transaction was already decided: {0}")]
    Decided(ClientError),
    /// The callback's action is not an XA phase-2 action (a 3PC action sent to
    /// an XA branch): answered 409.
    #[error("an XA branch does not take the action {0}")]
    WrongAction(&'static str),
}

/// What one recovery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Prepared branches committed (the coordinator decided commit).
    pub committed: usize,
    /// Prepared branches rolled back (decided rollback, or presumed abort).
    pub rolled_back: usize,
    /// Left for later (undecided, or unknown but younger than the timeout).
    pub pending: usize,
}

/// A database that can hold a branch in the prepared state.
#[async_trait]
pub trait XaBackend: Send + Sync + 'static {
    /// The connection the business statements run on.
    type Conn: Send;
    /// A pooled connection.
    type Pooled: std::ops::DerefMut<Target = Self::Conn> + Send;

    /// Startup check: [`XaError::Unavailable`], naming the setting, when the
    /// server cannot prepare transactions.
    async fn check(&self) -> Result<(), XaError>;
    /// Opens the branch's transaction on a pooled connection.
    async fn begin(&self, gid: &Gid) -> Result<Self::Pooled, sqlx::Error>;
    /// Rolls back a branch that has not been prepared (its connection is
    /// dropped from the pool if that fails).
    async fn abort(&self, conn: Self::Pooled, gid: &Gid);
    /// Prepares the branch; `Ok(false)` if the server answered but nothing is prepared.
    async fn prepare(&self, conn: Self::Pooled, gid: &Gid) -> Result<bool, sqlx::Error>;
    /// Commits or rolls back a prepared branch from any connection:
    /// [`CallbackOutcome::Applied`] if it ran now,
    /// [`CallbackOutcome::AlreadyDone`] if the gid was unknown (already
    /// finished, or never prepared).
    async fn finish(&self, gid: &Gid, action: CallbackAction) -> Result<CallbackOutcome, sqlx::Error>;
    /// This database's prepared Tandem branches, with the time they were
    /// prepared where the server records it.
    async fn prepared(&self) -> Result<Vec<(Gid, Option<DateTime<Utc>>)>, sqlx::Error>;
}

/// An XA participant for one resource on one database. Cheap to clone.
pub struct XaParticipant<B: XaBackend = PgXa> {
    inner: Arc<Inner<B>>,
}

impl<B: XaBackend> Clone for XaParticipant<B> {
    fn clone(&self) -> Self {
        XaParticipant { inner: self.inner.clone() }
    }
}

struct Inner<B> {
    /// The participant's database.
    backend: B,
    /// Coordinator client.
    client: TandemClient,
    /// Resource name registered with each branch.
    resource: String,
    /// Where the coordinator reaches [`XaParticipant::router`].
    callback_url: String,
    /// When recovery first saw each prepared branch, for servers that do not
    /// record the prepare time (MySQL): presumed abort counts from here.
    first_seen: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// Builder of [`XaParticipant`] ([`XaParticipant::builder`]).
pub struct XaParticipantBuilder<B: XaBackend> {
    /// The participant's database.
    backend: B,
    /// Coordinator client.
    client: TandemClient,
    /// Resource name registered with each branch.
    resource: String,
    /// Where the coordinator reaches the callback router.
    callback_url: String,
}

impl<B: XaBackend> XaParticipantBuilder<B> {
    /// Finishes.
    pub fn build(self) -> XaParticipant<B> {
        XaParticipant {
            inner: Arc::new(Inner {
                backend: self.backend,
                client: self.client,
                resource: self.resource,
                callback_url: self.callback_url,
                first_seen: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<B: XaBackend> XaParticipant<B> {
    /// A builder of a participant for `resource` on `backend`: [`PgXa`]
    /// (PostgreSQL with `max_prepared_transactions > 0`) or [`MySqlXa`]
    /// (MySQL or MariaDB, InnoDB tables). `public_base_url` is how the
    /// coordinator reaches this service; callbacks go to
    /// `{public_base_url}`[`CALLBACK_PATH`].
    pub fn builder(backend: B, client: TandemClient, resource: &str, public_base_url: &str) -> XaParticipantBuilder<B> {
        XaParticipantBuilder {
            backend,
            client,
            resource: resource.to_owned(),
            callback_url: format!("{}{}", public_base_url.trim_end_matches('/'), CALLBACK_PATH),
        }
    }

    /// The resource name registered with each branch.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// The callback URL registered with each branch.
    pub fn callback_url(&self) -> &str {
        &self.inner.callback_url
    }

    /// Startup check (see [`XaBackend::check`]).
    pub async fn check(&self) -> Result<(), XaError> {
        self.inner.backend.check().await
    }

    /// Phase 1 of a branch of `xid`: `f` runs the business statements inside
    /// the branch's database transaction, which is then prepared. Returns
    /// `f`'s value once the branch is prepared and reported.
    pub async fn run<T, F>(&self, xid: &Xid, f: F) -> Result<T, XaError>
    where
        F: for<'c> FnOnce(&'c mut B::Conn) -> BoxFuture<'c, Result<T, BoxError>>,
    {
        let client = &self.inner.client;
        let backend = &self.inner.backend;
        let branch = client
            .register(
                xid,
                &RegisterBranchRequest {
                    resource: self.inner.resource.clone(),
                    callback_url: self.inner.callback_url.clone(),
                    payload: None,
                    lock_keys: None,
                },
            )
            .await?;
        let gid = Gid::new(xid, &branch.branch_id);
        let branch_id = &branch.branch_id;
        let report_failed = |detail: String| async move {
            let r = ReportRequest { status: ReportStatus::Phase1Failed, detail: Some(detail) };
            if let Err(e) = client.report(xid, branch_id, &r).await {
                // The coordinator rolls the transaction back on timeout anyway.
                tracing::warn!(%xid, error = %e, "could not report phase1_failed");
            }
        };

        let mut conn = backend.begin(&gid).await?;
        let value = match f(&mut conn).await {
            Ok(v) => v,
            Err(e) => {
                backend.abort(conn, &gid).await;
                report_failed(e.to_string()).await;
                return Err(XaError::Phase1(e));
            }
        };
        match backend.prepare(conn, &gid).await {
            Ok(true) => {}
            Ok(false) => {
                report_failed("the branch did not prepare (its transaction had aborted)".into()).await;
                return Err(XaError::PrepareLost(gid.as_postgres()));
            }
            Err(e) => {
                report_failed(e.to_string()).await;
                return Err(XaError::Database(e));
            }
        }
        let report = ReportRequest { status: ReportStatus::Prepared, detail: None };
        match client.report(xid, branch_id, &report).await {
            Ok(_) => Ok(value),
            Err(e) if e.status() == Some(409) => {
                // Decided without us (rolled back, e.g. on timeout): undo now.
                backend.finish(&gid, CallbackAction::Rollback).await?;
                Err(XaError::Decided(e))
            }
            // Unknown outcome: the branch stays prepared; phase 2 or recovery settles it.
            Err(e) => Err(XaError::Coordinator(e)),
        }
    }

    /// Handles one coordinator callback.
    pub async fn handle_callback(&self, req: &CallbackRequest) -> Result<CallbackOutcome, XaError> {
        if !matches!(req.action, CallbackAction::Commit | CallbackAction::Rollback) {
            return Err(XaError::WrongAction(req.action.as_str()));
        }
        Ok(self.inner.backend.finish(&Gid::new(&req.xid, &req.branch_id), req.action).await?)
    }

    /// One recovery pass over this database's prepared Tandem branches.
    /// A branch the coordinator has no record of is rolled back once it has
    /// been prepared (or, where the server does not record that, first seen
    /// by this process) for longer than `presume_abort_after` (use the
    /// transaction timeout).
    pub async fn recover(&self, presume_abort_after: Duration) -> Result<Recovered, XaError> {
        let prepared = self.inner.backend.prepared().await?;
        let now = Utc::now();
        let since: Vec<DateTime<Utc>> = {
            let mut seen = self.inner.first_seen.lock().unwrap_or_else(|p| p.into_inner());
            let live: std::collections::HashSet<String> = prepared.iter().map(|(g, _)| g.as_postgres()).collect();
            seen.retain(|k, _| live.contains(k));
            prepared.iter().map(|(g, at)| at.unwrap_or_else(|| *seen.entry(g.as_postgres()).or_insert(now))).collect()
        };
        let mut out = Recovered::default();
        for ((gid, _), since) in prepared.into_iter().zip(since) {
            let xid = gid.xid();
            let action = match self.inner.client.get(xid).await {
                Ok(t) => match t.status.outcome() {
                    TransactionOutcome::Committed => Some(CallbackAction::Commit),
                    TransactionOutcome::RolledBack => Some(CallbackAction::Rollback),
                    TransactionOutcome::Undecided => None,
                },
                Err(e) if e.code() == Some(ErrorCode::TransactionNotFound) => {
                    let age = now.signed_duration_since(since).to_std().unwrap_or_default();
                    (age >= presume_abort_after).then_some(CallbackAction::Rollback)
                }
                Err(e) => {
                    tracing::warn!(%xid, error = %e, "recovery could not ask the coordinator; will retry");
                    None
                }
            };
            match action {
                Some(a) => {
                    self.inner.backend.finish(&gid, a).await?;
                    tracing::info!(%xid, branch_id = %gid.branch(), action = a.as_str(), "recovered prepared branch");
                    match a {
                        CallbackAction::Commit => out.committed += 1,
                        _ => out.rolled_back += 1,
                    }
                }
                None => out.pending += 1,
            }
        }
        Ok(out)
    }

    /// Runs [`XaParticipant::recover`] now and then every `interval`, until the task is aborted.
    pub fn spawn_recovery(&self, interval: Duration, presume_abort_after: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.recover(presume_abort_after).await {
                    // Handled here: the next pass retries.
                    tracing::warn!(error = %e, "XA recovery pass failed");
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// A router serving [`CALLBACK_PATH`]; merge it into the service's router.
    pub fn router(&self) -> Router {
        callback::router(CALLBACK_PATH, self.clone(), self.inner.client.verifier())
    }
}

impl<B: XaBackend> Callbacks for XaParticipant<B> {
    const MODE: &'static str = "XA";

    async fn answer(self, req: CallbackRequest) -> Result<CallbackReply, Refusal> {
        match self.handle_callback(&req).await {
            Ok(outcome) => Ok(CallbackReply::new(outcome)),
            Err(e @ XaError::WrongAction(_)) => Err(Refusal::permanent(ErrorCode::InvalidState, e.to_string())),
            Err(e) => Err(Refusal::retry(e.to_string())),
        }
    }
}
