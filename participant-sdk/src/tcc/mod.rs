//! The TCC participant.
//!
//! The service implements [`TccSteps`]: a resource's three business steps.
//! [`TccParticipant`] runs each inside the participant's own sqlx
//! transaction together with its fence row (see [`fence`]), which makes
//! - confirm and cancel idempotent (a repeat finds `committed` / `rolled_back`
//!   and does nothing),
//! - a cancel without a try an empty rollback (it writes `suspended` and skips
//!   the business cancel),
//! - a try after its cancel refused (it finds `suspended`: anti-suspension).
//!
//! A try's effects must all be written through the connection it is given: if
//! the try fails, its local transaction rolls back with the fence row, and the
//! cancel that follows is rightly an empty rollback.

pub mod fence;
mod router;

pub use crate::BoxError;
pub use fence::FenceStatus;
pub use router::CALLBACK_PATH;

use crate::client::{ClientError, TandemClient};
use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::Arc;
use tandem_wire::{
    BranchId, CallbackAction, CallbackOutcome, CallbackRequest, RegisterBranchRequest, ReportRequest, ReportStatus, Xid,
};

/// Identity of the branch a step runs for.
#[derive(Debug, Clone)]
pub struct BranchContext {
    /// Global transaction.
    pub xid: Xid,
    /// This branch.
    pub branch_id: BranchId,
    /// Resource name.
    pub resource: String,
}

/// How a business step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Transient (database down, deadlock): phase 2 is retried by the coordinator.
    #[error("{0}")]
    Retry(BoxError),
    /// Will never succeed: a failed try; in phase 2 the coordinator marks the
    /// branch `commit_failed` / `rollback_failed` for an operator.
    #[error("{0}")]
    Permanent(BoxError),
}

impl StepError {
    /// A permanent failure with a message (for example "insufficient funds").
    pub fn reject(msg: impl Into<String>) -> StepError {
        StepError::Permanent(msg.into().into())
    }
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> StepError {
        StepError::Retry(Box::new(e))
    }
}

/// What the service provides for one TCC resource: its name and its three
/// business steps. Each step receives the connection of the local
/// transaction that also writes the fence row.
#[async_trait]
pub trait TccSteps: Send + Sync + 'static {
    /// Resource name, as registered with the coordinator.
    fn name(&self) -> &str;
    /// Reserve (check and hold) what the business operation needs.
    async fn try_(
        &self,
        db: &mut PgConnection,
        branch: &BranchContext,
        payload: &serde_json::Value,
    ) -> Result<(), StepError>;
    /// Make the reservation final.
    async fn confirm(
        &self,
        db: &mut PgConnection,
        branch: &BranchContext,
        payload: &serde_json::Value,
    ) -> Result<(), StepError>;
    /// Release the reservation.
    async fn cancel(
        &self,
        db: &mut PgConnection,
        branch: &BranchContext,
        payload: &serde_json::Value,
    ) -> Result<(), StepError>;
}

/// Errors of the participant side.
#[derive(Debug, thiserror::Error)]
pub enum TccError {
    /// Talking to the coordinator failed.
    #[error(transparent)]
    Coordinator(#[from] ClientError),
    /// The try arrived after its cancel (suspension); it did nothing.
    #[error("try refused: branch {0} was already rolled back")]
    Suspended(BranchId),
    /// The business try failed; nothing was written; reported `phase1_failed`.
    #[error("try failed: {0}")]
    TryFailed(StepError),
    /// A business confirm or cancel failed.
    #[error("{action} failed: {error}")]
    StepFailed {
        /// `commit` or `rollback`.
        action: &'static str,
        /// The step's error.
        error: StepError,
    },
    /// Phase 2 contradicts the fence (confirm after cancel, cancel after confirm,
    /// confirm without try): never retried.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Confirm found no committed try: the try may still be committing (its
    /// fence row is not visible yet). Answered 503, so the coordinator retries.
    #[error("no committed try for this branch yet; retry")]
    TryNotCommitted,
    /// No resource of that name in this participant.
    #[error("unknown resource {0:?}")]
    UnknownResource(String),
    /// The participant's database failed.
    #[error("participant database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The participant: registers branches, runs tries, serves callbacks. Cheap to clone.
#[derive(Clone)]
pub struct TccParticipant {
    inner: Arc<Inner>,
}

struct Inner {
    /// The participant's own database (business tables and fence).
    pool: PgPool,
    /// Coordinator client.
    client: TandemClient,
    /// Where the coordinator reaches [`TccParticipant::router`].
    callback_url: String,
    /// The steps of each resource, by resource name.
    resources: HashMap<String, Arc<dyn TccSteps>>,
}

/// Builder of [`TccParticipant`] ([`TccParticipant::builder`]).
pub struct TccParticipantBuilder {
    /// The participant's database.
    pool: PgPool,
    /// Coordinator client.
    client: TandemClient,
    /// Where the coordinator reaches the callback router.
    callback_url: String,
    /// The steps of each resource, by resource name.
    resources: HashMap<String, Arc<dyn TccSteps>>,
}

impl TccParticipantBuilder {
    /// Adds a resource: `steps` under the name [`TccSteps::name`] gives.
    pub fn resource(mut self, r: impl TccSteps) -> Self {
        self.resources.insert(r.name().to_owned(), Arc::new(r));
        self
    }
    /// Finishes.
    pub fn build(self) -> TccParticipant {
        TccParticipant {
            inner: Arc::new(Inner {
                pool: self.pool,
                client: self.client,
                callback_url: self.callback_url,
                resources: self.resources,
            }),
        }
    }
}

impl TccParticipant {
    /// A builder of a participant on `pool`. `public_base_url` is how the
    /// coordinator reaches this service (for example `http://inventory:8080`);
    /// callbacks go to `{public_base_url}`[`CALLBACK_PATH`]. Add its
    /// resources with [`TccParticipantBuilder::resource`].
    pub fn builder(pool: PgPool, client: TandemClient, public_base_url: &str) -> TccParticipantBuilder {
        TccParticipantBuilder {
            pool,
            client,
            callback_url: format!("{}{}", public_base_url.trim_end_matches('/'), CALLBACK_PATH),
            resources: HashMap::new(),
        }
    }

    /// Creates the fence table (`tandem_tcc_fence`,
    /// [`crate::migrations::TCC_FENCE`]) if it is missing; serialized across
    /// processes.
    pub async fn install(&self) -> Result<(), sqlx::Error> {
        crate::migrations::install_postgres(&self.inner.pool, crate::migrations::TCC_FENCE).await
    }

    /// The participant's database pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The callback URL registered with each branch.
    pub fn callback_url(&self) -> &str {
        &self.inner.callback_url
    }

    fn resource(&self, name: &str) -> Result<Arc<dyn TccSteps>, TccError> {
        self.inner.resources.get(name).cloned().ok_or_else(|| TccError::UnknownResource(name.to_owned()))
    }

    /// Phase 1 in one call: registers a branch of `resource` on `xid`, then runs the try.
    pub async fn try_branch(
        &self,
        xid: &Xid,
        resource: &str,
        payload: serde_json::Value,
    ) -> Result<BranchContext, TccError> {
        let ctx = self.register(xid, resource, &payload).await?;
        self.execute_try(&ctx, &payload).await?;
        Ok(ctx)
    }

    /// Registers a branch (before its try runs, so that a crash after the try
    /// still leaves the coordinator able to cancel it).
    pub async fn register(
        &self,
        xid: &Xid,
        resource: &str,
        payload: &serde_json::Value,
    ) -> Result<BranchContext, TccError> {
        self.resource(resource)?;
        let branch = self
            .inner
            .client
            .register(
                xid,
                &RegisterBranchRequest {
                    resource: resource.to_owned(),
                    callback_url: self.inner.callback_url.clone(),
                    payload: Some(payload.clone()),
                    lock_keys: None,
                },
            )
            .await?;
        Ok(BranchContext { xid: xid.clone(), branch_id: branch.branch_id, resource: resource.to_owned() })
    }

    /// Runs the try of a registered branch inside one local transaction with
    /// its fence row. Refused if the branch was already cancelled; a repeated
    /// try of a tried branch does nothing.
    #[tracing::instrument(skip_all, fields(xid = %ctx.xid, branch_id = %ctx.branch_id))]
    pub async fn execute_try(&self, ctx: &BranchContext, payload: &serde_json::Value) -> Result<(), TccError> {
        let resource = self.resource(&ctx.resource)?;
        let mut tx = self.inner.pool.begin().await?;
        if !fence::insert(&mut tx, &ctx.xid, &ctx.branch_id, &ctx.resource, FenceStatus::Tried).await? {
            let status = fence::lock(&mut tx, &ctx.xid, &ctx.branch_id).await?;
            tx.rollback().await?;
            return match status {
                Some(FenceStatus::Tried | FenceStatus::Committed) => Ok(()),
                _ => Err(TccError::Suspended(ctx.branch_id.clone())),
            };
        }
        if let Err(e) = resource.try_(&mut tx, ctx, payload).await {
            tx.rollback().await?;
            let report = ReportRequest { status: ReportStatus::Phase1Failed, detail: Some(e.to_string()) };
            if let Err(re) = self.inner.client.report(&ctx.xid, &ctx.branch_id, &report).await {
                // The caller's rollback (or the timeout) still cancels the branch.
                tracing::warn!(error = %re, "could not report phase1_failed");
            }
            return Err(TccError::TryFailed(e));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Handles one coordinator callback (confirm or cancel).
    #[tracing::instrument(skip_all, fields(xid = %req.xid, branch_id = %req.branch_id, action = req.action.as_str()))]
    pub async fn handle_callback(&self, req: &CallbackRequest) -> Result<CallbackOutcome, TccError> {
        let resource = self.resource(&req.resource)?;
        let ctx =
            BranchContext { xid: req.xid.clone(), branch_id: req.branch_id.clone(), resource: req.resource.clone() };
        let payload = req.payload.clone().unwrap_or(serde_json::Value::Null);
        match req.action {
            CallbackAction::Commit => self.confirm(resource.as_ref(), &ctx, &payload).await,
            CallbackAction::Rollback => self.cancel(resource.as_ref(), &ctx, &payload).await,
            other => Err(TccError::Conflict(format!("a TCC branch does not take the action {}", other.as_str()))),
        }
    }

    async fn confirm(
        &self,
        resource: &dyn TccSteps,
        ctx: &BranchContext,
        payload: &serde_json::Value,
    ) -> Result<CallbackOutcome, TccError> {
        let mut tx = self.inner.pool.begin().await?;
        match fence::lock(&mut tx, &ctx.xid, &ctx.branch_id).await? {
            Some(FenceStatus::Committed) => Ok(CallbackOutcome::AlreadyDone),
            Some(FenceStatus::Tried) => {
                resource
                    .confirm(&mut tx, ctx, payload)
                    .await
                    .map_err(|error| TccError::StepFailed { action: "commit", error })?;
                fence::set(&mut tx, &ctx.xid, &ctx.branch_id, FenceStatus::Committed).await?;
                tx.commit().await?;
                Ok(CallbackOutcome::Applied)
            }
            Some(FenceStatus::RolledBack | FenceStatus::Suspended) => {
                Err(TccError::Conflict("confirm for a branch that was rolled back".into()))
            }
            // A try still in flight holds an uncommitted fence row that this read
            // cannot see; when it commits, the retried confirm applies it.
            None => Err(TccError::TryNotCommitted),
        }
    }

    async fn cancel(
        &self,
        resource: &dyn TccSteps,
        ctx: &BranchContext,
        payload: &serde_json::Value,
    ) -> Result<CallbackOutcome, TccError> {
        let mut tx = self.inner.pool.begin().await?;
        if fence::insert(&mut tx, &ctx.xid, &ctx.branch_id, &ctx.resource, FenceStatus::Suspended).await? {
            tx.commit().await?;
            tracing::info!("empty rollback: cancel before try; a late try will be refused");
            return Ok(CallbackOutcome::EmptyRollback);
        }
        match fence::lock(&mut tx, &ctx.xid, &ctx.branch_id).await? {
            Some(FenceStatus::RolledBack | FenceStatus::Suspended) => Ok(CallbackOutcome::AlreadyDone),
            Some(FenceStatus::Tried) => {
                resource
                    .cancel(&mut tx, ctx, payload)
                    .await
                    .map_err(|error| TccError::StepFailed { action: "rollback", error })?;
                fence::set(&mut tx, &ctx.xid, &ctx.branch_id, FenceStatus::RolledBack).await?;
                tx.commit().await?;
                Ok(CallbackOutcome::Applied)
            }
            Some(FenceStatus::Committed) => Err(TccError::Conflict("cancel for a branch that was confirmed".into())),
            // The row existed at insert time and rows are only deleted by purge.
            None => Err(TccError::Conflict("fence row vanished during cancel".into())),
        }
    }
}
