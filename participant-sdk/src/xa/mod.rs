//! XA branches on PostgreSQL prepared transactions.
//!
//! Phase 1 ([`XaParticipant::run`]): register the branch, `BEGIN` on a pooled
//! connection, run the business statements, `PREPARE TRANSACTION` under the
//! branch's gid, verify the prepare in `pg_prepared_xacts` (inside an aborted
//! block, PREPARE answers ROLLBACK without an error), report `prepared`.
//! The connection is free again once prepared; the prepared transaction
//! keeps its row locks until phase 2.
//!
//! Phase 2 (the callback router): `COMMIT PREPARED` / `ROLLBACK PREPARED` on
//! any pooled connection. An unknown gid (SQLSTATE 42704) means the branch is
//! already finished (or, for a rollback, never prepared): answered 200.
//!
//! Recovery ([`XaParticipant::recover`]): lists this database's prepared
//! transactions with the Tandem prefix, asks the coordinator how each ended,
//! and finishes them; one the coordinator has no record of is rolled back once
//! older than the transaction timeout (presumed abort).

pub mod gid;

pub use gid::{Gid, GID_PREFIX};

use crate::client::{ClientError, TandemClient};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tandem_wire::{
    CallbackAction, CallbackRequest, ErrorCode, GlobalStatus, Problem, RegisterBranchRequest, ReportRequest,
    ReportStatus, Xid,
};

/// Path of the XA callback endpoint.
pub const CALLBACK_PATH: &str = "/tandem/xa/callback";

/// Boxed error of the business statements.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the XA participant.
#[derive(Debug, thiserror::Error)]
pub enum XaError {
    /// Talking to the coordinator failed.
    #[error(transparent)]
    Coordinator(#[from] ClientError),
    /// The participant's database failed.
    #[error("participant database: {0}")]
    Database(#[from] sqlx::Error),
    /// The server cannot prepare transactions.
    #[error(
        "PostgreSQL has max_prepared_transactions = 0, so XA branches cannot be prepared: \
         set max_prepared_transactions (for example to 64) in postgresql.conf and restart the server"
    )]
    PreparedTransactionsDisabled,
    /// The business statements failed; the branch was rolled back and reported `phase1_failed`.
    #[error("phase 1 failed: {0}")]
    Phase1(BoxError),
    /// PREPARE answered, but nothing was prepared (the block had aborted); reported `phase1_failed`.
    #[error("PREPARE TRANSACTION {0} did not prepare (the transaction block had aborted)")]
    PrepareLost(String),
    /// The coordinator refused the `prepared` report (the transaction was
    /// already decided, rolled back); the prepared branch was rolled back.
    #[error("the global transaction was already decided: {0}")]
    Decided(ClientError),
}

/// What a phase-2 callback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase2Result {
    /// `COMMIT PREPARED` / `ROLLBACK PREPARED` ran now.
    Applied,
    /// The gid was unknown: already finished (or never prepared).
    AlreadyDone,
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

fn is_unknown_gid(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42704"))
}

/// An XA participant for one resource on one PostgreSQL database. Cheap to clone.
#[derive(Clone)]
pub struct XaParticipant {
    inner: Arc<Inner>,
}

struct Inner {
    /// The participant's database.
    pool: PgPool,
    /// Coordinator client.
    client: TandemClient,
    /// Resource name registered with each branch.
    resource: String,
    /// Where the coordinator reaches [`XaParticipant::router`].
    callback_url: String,
}

impl XaParticipant {
    /// `public_base_url` is how the coordinator reaches this service; callbacks
    /// go to `{public_base_url}`[`CALLBACK_PATH`].
    pub fn new(pool: PgPool, client: TandemClient, resource: &str, public_base_url: &str) -> XaParticipant {
        XaParticipant {
            inner: Arc::new(Inner {
                pool,
                client,
                resource: resource.to_owned(),
                callback_url: format!("{}{}", public_base_url.trim_end_matches('/'), CALLBACK_PATH),
            }),
        }
    }

    /// Startup check: fails with [`XaError::PreparedTransactionsDisabled`]
    /// (naming the setting) when the server cannot prepare transactions.
    pub async fn check(&self) -> Result<(), XaError> {
        let n: String = sqlx::query_scalar("SHOW max_prepared_transactions").fetch_one(&self.inner.pool).await?;
        if n.trim() == "0" {
            return Err(XaError::PreparedTransactionsDisabled);
        }
        Ok(())
    }

    /// The participant's pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Phase 1 of a branch of `xid`: `f` runs the business statements inside
    /// the branch's database transaction, which is then prepared. Returns
    /// `f`'s value once the branch is prepared and reported.
    pub async fn run<T, F>(&self, xid: &Xid, f: F) -> Result<T, XaError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, BoxError>>,
    {
        let client = &self.inner.client;
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

        let mut conn = self.inner.pool.acquire().await?;
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        let value = match f(&mut conn).await {
            Ok(v) => v,
            Err(e) => {
                if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                    // Unknown state: never hand this connection back to the pool.
                    conn.detach();
                }
                report_failed(e.to_string()).await;
                return Err(XaError::Phase1(e));
            }
        };
        if let Err(e) = sqlx::raw_sql(&gid.statement("PREPARE TRANSACTION")).execute(&mut *conn).await {
            conn.detach();
            report_failed(e.to_string()).await;
            return Err(XaError::Database(e));
        }
        let prepared: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = $1)")
            .bind(gid.as_str())
            .fetch_one(&mut *conn)
            .await?;
        drop(conn);
        if !prepared {
            report_failed("PREPARE TRANSACTION did not prepare (aborted transaction block)".into()).await;
            return Err(XaError::PrepareLost(gid.as_str().to_owned()));
        }
        let report = ReportRequest { status: ReportStatus::Prepared, detail: None };
        match client.report(xid, &branch.branch_id, &report).await {
            Ok(_) => Ok(value),
            Err(e) if e.status() == Some(409) => {
                // Decided without us (rolled back, e.g. on timeout): undo now.
                self.finish(&gid, CallbackAction::Rollback).await?;
                Err(XaError::Decided(e))
            }
            // Unknown outcome: the branch stays prepared; phase 2 or recovery settles it.
            Err(e) => Err(XaError::Coordinator(e)),
        }
    }

    /// `COMMIT PREPARED` or `ROLLBACK PREPARED` of one gid.
    async fn finish(&self, gid: &Gid, action: CallbackAction) -> Result<Phase2Result, XaError> {
        let verb = match action {
            CallbackAction::Commit => "COMMIT PREPARED",
            CallbackAction::Rollback => "ROLLBACK PREPARED",
        };
        match sqlx::raw_sql(&gid.statement(verb)).execute(&self.inner.pool).await {
            Ok(_) => Ok(Phase2Result::Applied),
            Err(e) if is_unknown_gid(&e) => Ok(Phase2Result::AlreadyDone),
            Err(e) => Err(XaError::Database(e)),
        }
    }

    /// Handles one coordinator callback.
    pub async fn handle_callback(&self, req: &CallbackRequest) -> Result<Phase2Result, XaError> {
        self.finish(&Gid::new(&req.xid, &req.branch_id), req.action).await
    }

    /// One recovery pass over this database's prepared Tandem branches.
    /// A branch the coordinator has no record of is rolled back once it has
    /// been prepared for longer than `presume_abort_after` (use the
    /// transaction timeout).
    pub async fn recover(&self, presume_abort_after: Duration) -> Result<Recovered, XaError> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT gid, prepared FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1)",
        )
        .bind(GID_PREFIX)
        .fetch_all(&self.inner.pool)
        .await?;
        let mut out = Recovered::default();
        for (text, prepared_at) in rows {
            let Ok((xid, branch)) = Gid::parse(&text) else { continue };
            let gid = Gid::new(&xid, &branch);
            let action = match self.inner.client.get(&xid).await {
                Ok(t) => match t.status {
                    GlobalStatus::Committing | GlobalStatus::Committed | GlobalStatus::CommitFailed => {
                        Some(CallbackAction::Commit)
                    }
                    GlobalStatus::RollingBack | GlobalStatus::RolledBack | GlobalStatus::RollbackFailed => {
                        Some(CallbackAction::Rollback)
                    }
                    GlobalStatus::Active => None,
                },
                Err(e) if e.code() == Some(ErrorCode::TransactionNotFound) => {
                    let age = Utc::now().signed_duration_since(prepared_at).to_std().unwrap_or_default();
                    (age > presume_abort_after).then_some(CallbackAction::Rollback)
                }
                Err(e) => {
                    tracing::warn!(%xid, error = %e, "recovery could not ask the coordinator; will retry");
                    None
                }
            };
            match action {
                Some(a) => {
                    self.finish(&gid, a).await?;
                    tracing::info!(%xid, branch_id = %branch, action = a.as_str(), "recovered prepared branch");
                    match a {
                        CallbackAction::Commit => out.committed += 1,
                        CallbackAction::Rollback => out.rolled_back += 1,
                    }
                }
                None => out.pending += 1,
            }
        }
        Ok(out)
    }

    /// Runs [`XaParticipant::recover`] now and then every `interval`, until the task is dropped.
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
        Router::new().route(CALLBACK_PATH, post(callback)).with_state(self.clone())
    }
}

async fn callback(State(p): State<XaParticipant>, Json(req): Json<CallbackRequest>) -> Response {
    match p.handle_callback(&req).await {
        Ok(r) => {
            let outcome = match r {
                Phase2Result::Applied => "applied",
                Phase2Result::AlreadyDone => "already_done",
            };
            (StatusCode::OK, Json(serde_json::json!({ "outcome": outcome }))).into_response()
        }
        Err(e) => {
            tracing::warn!(xid = %req.xid, branch_id = %req.branch_id, error = %e, "XA callback failed");
            let p = Problem::new(503, ErrorCode::Unavailable, "Service Unavailable", e.to_string());
            (StatusCode::SERVICE_UNAVAILABLE, Json(p)).into_response()
        }
    }
}
