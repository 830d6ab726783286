//! Saga mode: the participant's steps behind the branch barrier, and the
//! client's saga definition (reference: `docs/saga.md`).
//!
//! A service implements [`SagaSteps`] for each step it serves: the step's
//! business action and its compensation. [`SagaParticipant`] serves them
//! over HTTP ([`SagaParticipant::router`]) and runs each inside the
//! participant's own sqlx transaction with its [`barrier`] rows, which makes
//! - an action run at most once, however often it is delivered,
//! - a compensation run at most once,
//! - a compensation of an action that never committed an empty
//!   compensation (success, no business code),
//! - an action that arrives after its compensation refused (409), with no
//!   effect (anti-suspension).
//!
//! The coordinator finds the steps by URL: [`SagaParticipant::action_url`]
//! and [`SagaParticipant::compensate_url`] are what a saga definition
//! ([`Saga`], in [`builder`]) names, `{public_base_url}/tandem/saga/{step}/action`
//! and `.../compensate`. A client running its steps itself, Seata style,
//! uses [`step_by_step`] and [`SagaParticipant::run_step`] instead.
//!
//! PostgreSQL and MySQL/MariaDB alike: the participant is generic over the
//! database ([`BarrierDb`]: [`sqlx::Postgres`], the default, or
//! [`sqlx::MySql`]), and a step receives that database's connection.
//!
//! An action's effects must all be written through the connection it is
//! given: if it fails, its local transaction rolls back with the barrier
//! row, and the compensation that follows is rightly empty. A compensation
//! must be able to undo every action that committed (the barrier only tells
//! it that one did).
//!
//! ```no_run
//! use async_trait::async_trait;
//! use serde_json::{json, Value};
//! use sqlx::PgConnection;
//! use tandem_sdk::saga::{Saga, SagaParticipant, SagaSteps, StepContext, StepError};
//!
//! struct Reserve;
//!
//! #[async_trait]
//! impl SagaSteps for Reserve {
//!     fn name(&self) -> &str {
//!         "reserve"
//!     }
//!
//!     async fn action(&self, db: &mut PgConnection, step: &StepContext, p: &Value) -> Result<(), StepError> {
//!         let qty = p["qty"].as_i64().unwrap_or(1);
//!         let taken = sqlx::query("UPDATE stock SET qty = qty - $1 WHERE sku = $2 AND qty >= $1")
//!             .bind(qty)
//!             .bind(p["sku"].as_str())
//!             .execute(&mut *db)
//!             .await?
//!             .rows_affected();
//!         if taken == 0 {
//!             return Err(StepError::reject("insufficient stock")); // 409: the saga compensates
//!         }
//!         sqlx::query("INSERT INTO reservations (xid, branch_id, sku, qty) VALUES ($1, $2, $3, $4)")
//!             .bind(step.xid.as_str())
//!             .bind(step.branch_id.as_str())
//!             .bind(p["sku"].as_str())
//!             .bind(qty)
//!             .execute(&mut *db)
//!             .await?;
//!         Ok(())
//!     }
//!
//!     async fn compensate(&self, db: &mut PgConnection, step: &StepContext, _: &Value) -> Result<(), StepError> {
//!         // Undo what the action committed, as it committed it.
//!         sqlx::query(
//!             "WITH r AS (DELETE FROM reservations WHERE xid = $1 AND branch_id = $2 RETURNING sku, qty) \
//!              UPDATE stock SET qty = stock.qty + r.qty FROM r WHERE stock.sku = r.sku",
//!         )
//!         .bind(step.xid.as_str())
//!         .bind(step.branch_id.as_str())
//!         .execute(&mut *db)
//!         .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run(pool: sqlx::PgPool, client: tandem_sdk::TandemClient) -> Result<(), Box<dyn std::error::Error>> {
//! let inventory = SagaParticipant::builder(pool, "http://inventory:8080").step(Reserve).build()?;
//! inventory.install().await?;
//! let app = axum::Router::new().merge(inventory.router());
//! // ... serve `app`; a client then defines and submits a saga:
//! let order = json!({"sku": "A-1", "qty": 2});
//! let saga = Saga::new("place-order")
//!     .step(inventory.action_url("reserve")?, inventory.compensate_url("reserve")?, order.clone())
//!     .step("http://payment:8080/tandem/saga/charge/action", "http://payment:8080/tandem/saga/charge/compensate", order)
//!     .timeout(std::time::Duration::from_secs(30));
//! let tx = saga.submit(&client).await?; // 202: the coordinator runs it
//! println!("saga {} submitted", tx.xid);
//! # Ok(()) }
//! ```

pub mod barrier;
pub mod builder;
mod router;
pub mod step_by_step;

pub use crate::tcc::StepError;
pub use barrier::{ActionGate, BarrierDb, CompensationGate, Op};
pub use builder::{Saga, StepIndex};
pub use router::CALLBACK_PATH;

use crate::client::{ClientError, TandemClient};
use crate::verify::Verifier;
use async_trait::async_trait;
use sqlx::{Pool, Postgres};
use std::collections::HashMap;
use std::sync::Arc;
use tandem_wire::{BranchId, CallbackOutcome, RegisterBranchRequest, Xid};

/// Most times one callback's local transaction runs when a concurrent one
/// rolls it back as a conflict ([`barrier::is_conflict`]) before the
/// conflict is answered as a transient failure (and retried by the
/// coordinator).
const CONFLICT_ATTEMPTS: u32 = 5;

/// Longest step name, the contract's limit on a resource.
const MAX_STEP_NAME_CHARS: usize = tandem_wire::limits::MAX_RESOURCE_CHARS;

/// Identity of the branch a step runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepContext {
    /// Global transaction.
    pub xid: Xid,
    /// This branch (one step of one saga).
    pub branch_id: BranchId,
    /// The step's name in this participant ([`SagaSteps::name`]), from the
    /// URL the callback came to.
    pub step: String,
    /// The branch's resource as the coordinator knows it (a submitted
    /// saga's step name, `step-N` by default).
    pub resource: String,
}

/// What the service provides for one saga step: its name and its two
/// business operations. Each receives the connection of the local
/// transaction that also writes the step's barrier rows; generic over the
/// database (`SagaSteps` for PostgreSQL, `SagaSteps<sqlx::MySql>` for MySQL
/// and MariaDB).
#[async_trait]
pub trait SagaSteps<DB: BarrierDb = Postgres>: Send + Sync + 'static {
    /// The step's name: the path segment of its URLs, so one of
    /// `A-Z a-z 0-9 _ . -`, at most 128 characters.
    fn name(&self) -> &str;
    /// Do the step. [`StepError::Permanent`] (for example "insufficient
    /// stock") fails the saga, which is then compensated;
    /// [`StepError::Retry`] has the action delivered again. Either way
    /// nothing it wrote through `db` stays.
    async fn action(
        &self,
        db: &mut DB::Connection,
        step: &StepContext,
        payload: &serde_json::Value,
    ) -> Result<(), StepError>;
    /// Undo a committed action. [`StepError::Permanent`] leaves the step
    /// `rollback_failed` for an operator; [`StepError::Retry`] has the
    /// compensation delivered again.
    async fn compensate(
        &self,
        db: &mut DB::Connection,
        step: &StepContext,
        payload: &serde_json::Value,
    ) -> Result<(), StepError>;
}

/// Errors of the saga participant.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The action arrived after the step's compensation (which was empty):
    /// it did nothing, and never will. Answered 409.
    #[error("action refused: step {step:?} of branch {branch_id} was compensated before its action ran")]
    Compensated {
        /// The step.
        step: String,
        /// Its branch.
        branch_id: BranchId,
    },
    /// The business action or compensation failed; nothing it wrote stays.
    #[error("{} failed: {error}", .op.as_str())]
    StepFailed {
        /// Which of the two.
        op: Op,
        /// The step's error.
        error: StepError,
    },
    /// No step of that name in this participant.
    #[error("unknown saga step {0:?}")]
    UnknownStep(String),
    /// A callback that does not belong at the URL it came to (another
    /// action, another mode). Answered 409: a wrong saga definition never
    /// becomes right.
    #[error("misrouted callback: {0}")]
    Misrouted(String),
    /// A step the builder cannot serve (a bad or repeated name).
    #[error("invalid saga step: {0}")]
    InvalidStep(String),
    /// Talking to the coordinator failed ([`SagaParticipant::run_step`]).
    #[error(transparent)]
    Coordinator(#[from] ClientError),
    /// The participant's database failed.
    #[error("participant database: {0}")]
    Database(#[from] sqlx::Error),
}

impl SagaError {
    /// Whether a concurrent transaction rolled this callback's transaction
    /// back (a deadlock or serialization failure, in the barrier or in the
    /// business code), so that running it again at once is right.
    fn is_conflict(&self) -> bool {
        match self {
            SagaError::Database(e) => barrier::is_conflict(e),
            SagaError::StepFailed { error: StepError::Retry(e), .. } => {
                e.downcast_ref::<sqlx::Error>().is_some_and(barrier::is_conflict)
            }
            _ => false,
        }
    }
}

/// The participant: serves the action and compensation of its steps,
/// behind the barrier. Cheap to clone.
pub struct SagaParticipant<DB: BarrierDb = Postgres> {
    inner: Arc<Inner<DB>>,
}

impl<DB: BarrierDb> Clone for SagaParticipant<DB> {
    fn clone(&self) -> Self {
        SagaParticipant { inner: self.inner.clone() }
    }
}

impl<DB: BarrierDb> std::fmt::Debug for SagaParticipant<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut steps: Vec<&String> = self.inner.steps.keys().collect();
        steps.sort();
        f.debug_struct("SagaParticipant").field("base_url", &self.inner.base_url).field("steps", &steps).finish()
    }
}

struct Inner<DB: BarrierDb> {
    /// The participant's own database (business tables and barrier).
    pool: Pool<DB>,
    /// `{public_base_url}`[`CALLBACK_PATH`]: the steps' URLs start with it.
    base_url: String,
    /// The steps, by name.
    steps: HashMap<String, Arc<dyn SagaSteps<DB>>>,
    /// How the coordinator's calls are verified.
    verifier: Verifier,
}

/// Builder of [`SagaParticipant`] ([`SagaParticipant::builder`]).
pub struct SagaParticipantBuilder<DB: BarrierDb = Postgres> {
    /// The participant's database.
    pool: Pool<DB>,
    /// `{public_base_url}`[`CALLBACK_PATH`].
    base_url: String,
    /// The steps added, in order.
    steps: Vec<Arc<dyn SagaSteps<DB>>>,
    /// How the coordinator's calls are verified.
    verifier: Verifier,
}

impl<DB: BarrierDb> std::fmt::Debug for SagaParticipantBuilder<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<&str> = self.steps.iter().map(|s| s.name()).collect();
        f.debug_struct("SagaParticipantBuilder").field("base_url", &self.base_url).field("steps", &steps).finish()
    }
}

impl<DB: BarrierDb> SagaParticipantBuilder<DB> {
    /// Adds a step, served under [`SagaSteps::name`].
    pub fn step(mut self, step: impl SagaSteps<DB>) -> Self {
        self.steps.push(Arc::new(step));
        self
    }

    /// Verifies the coordinator's calls with `verifier` (the client's:
    /// [`crate::TandemClient::verifier`]).
    pub fn verify_with(mut self, verifier: Verifier) -> Self {
        self.verifier = verifier;
        self
    }

    /// The participant; refused if a step's name cannot be a URL path
    /// segment (see [`SagaSteps::name`]) or two steps share one.
    pub fn build(self) -> Result<SagaParticipant<DB>, SagaError> {
        let mut steps = HashMap::new();
        for step in self.steps {
            let name = step.name().to_owned();
            check_step_name(&name)?;
            if steps.insert(name.clone(), step).is_some() {
                return Err(SagaError::InvalidStep(format!("two steps are named {name:?}")));
            }
        }
        Ok(SagaParticipant {
            inner: Arc::new(Inner { pool: self.pool, base_url: self.base_url, steps, verifier: self.verifier }),
        })
    }
}

/// A step name is a path segment of its URLs, taken as it is: the
/// characters of an id but `:` (which axum reads as a parameter), and
/// neither `.` nor `..`.
fn check_step_name(name: &str) -> Result<(), SagaError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.is_empty() || name.len() > MAX_STEP_NAME_CHARS || !name.chars().all(allowed) || name == "." || name == ".."
    {
        return Err(SagaError::InvalidStep(format!(
            "{name:?}: a step name is 1 to {MAX_STEP_NAME_CHARS} of A-Z a-z 0-9 _ . - (and not . or ..)"
        )));
    }
    Ok(())
}

impl<DB: BarrierDb> SagaParticipant<DB> {
    /// A builder of a participant on `pool` (PostgreSQL or MySQL/MariaDB).
    /// `public_base_url` is how the coordinator reaches this service (for
    /// example `http://inventory:8080`); a step's callbacks go to
    /// `{public_base_url}`[`CALLBACK_PATH`]`/{step}/action` and
    /// `.../compensate`. Add the steps with [`SagaParticipantBuilder::step`].
    pub fn builder(pool: Pool<DB>, public_base_url: &str) -> SagaParticipantBuilder<DB> {
        SagaParticipantBuilder {
            pool,
            base_url: format!("{}{}", public_base_url.trim_end_matches('/'), CALLBACK_PATH),
            steps: Vec::new(),
            verifier: Verifier::default(),
        }
    }

    /// Creates the barrier table (`tandem_barrier`,
    /// [`crate::migrations::SAGA_BARRIER_POSTGRES`] /
    /// [`crate::migrations::SAGA_BARRIER_MYSQL`]) if it is missing.
    pub async fn install(&self) -> Result<(), sqlx::Error> {
        DB::install(&self.inner.pool).await
    }

    /// Deletes barrier rows older than `older_than` ([`barrier::purge`]:
    /// keep it far above the longest a saga can take).
    pub async fn purge(&self, older_than: std::time::Duration) -> Result<u64, sqlx::Error> {
        barrier::purge(&self.inner.pool, older_than).await
    }

    /// The participant's database pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.inner.pool
    }

    /// The names of the steps served, sorted.
    pub fn steps(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.inner.steps.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Where the coordinator POSTs `step`'s action: the `action_url` of a
    /// saga definition.
    pub fn action_url(&self, step: &str) -> Result<String, SagaError> {
        self.url(step, Op::Action)
    }

    /// Where the coordinator POSTs `step`'s compensation: the
    /// `compensate_url` of a saga definition, the `callback_url` of a step
    /// registered step by step.
    pub fn compensate_url(&self, step: &str) -> Result<String, SagaError> {
        self.url(step, Op::Compensate)
    }

    fn url(&self, step: &str, op: Op) -> Result<String, SagaError> {
        self.step(step)?;
        Ok(format!("{}/{step}/{}", self.inner.base_url, op.as_str()))
    }

    fn step(&self, name: &str) -> Result<Arc<dyn SagaSteps<DB>>, SagaError> {
        self.inner.steps.get(name).cloned().ok_or_else(|| SagaError::UnknownStep(name.to_owned()))
    }

    /// Runs `ctx.step`'s action behind the barrier: once; refused after the
    /// step's compensation. What the action endpoint does.
    #[tracing::instrument(skip_all, fields(xid = %ctx.xid, branch_id = %ctx.branch_id, step = %ctx.step))]
    pub async fn action(&self, ctx: &StepContext, payload: &serde_json::Value) -> Result<CallbackOutcome, SagaError> {
        let step = self.step(&ctx.step)?;
        let mut attempt = 1;
        loop {
            match self.action_once(step.as_ref(), ctx, payload).await {
                Err(e) if attempt < CONFLICT_ATTEMPTS && e.is_conflict() => {
                    tracing::info!(attempt, error = %e, "action rolled back by a concurrent transaction; running it again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs `ctx.step`'s compensation behind the barrier: once; empty when
    /// no action committed. What the compensation endpoint does.
    #[tracing::instrument(skip_all, fields(xid = %ctx.xid, branch_id = %ctx.branch_id, step = %ctx.step))]
    pub async fn compensate(
        &self,
        ctx: &StepContext,
        payload: &serde_json::Value,
    ) -> Result<CallbackOutcome, SagaError> {
        let step = self.step(&ctx.step)?;
        let mut attempt = 1;
        loop {
            match self.compensate_once(step.as_ref(), ctx, payload).await {
                Err(e) if attempt < CONFLICT_ATTEMPTS && e.is_conflict() => {
                    tracing::info!(attempt, error = %e, "compensation rolled back by a concurrent transaction; running it again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn action_once(
        &self,
        step: &dyn SagaSteps<DB>,
        ctx: &StepContext,
        payload: &serde_json::Value,
    ) -> Result<CallbackOutcome, SagaError> {
        let mut tx = self.inner.pool.begin().await?;
        match barrier::enter_action::<DB>(&mut tx, ctx).await? {
            ActionGate::AlreadyDone => {
                tx.rollback().await?;
                Ok(CallbackOutcome::AlreadyDone)
            }
            ActionGate::Refused => {
                tx.rollback().await?;
                tracing::info!("action after its compensation: refused");
                Err(SagaError::Compensated { step: ctx.step.clone(), branch_id: ctx.branch_id.clone() })
            }
            ActionGate::Run => {
                if let Err(error) = step.action(&mut tx, ctx, payload).await {
                    rollback_after_failure(tx).await;
                    return Err(SagaError::StepFailed { op: Op::Action, error });
                }
                tx.commit().await?;
                Ok(CallbackOutcome::Applied)
            }
        }
    }

    async fn compensate_once(
        &self,
        step: &dyn SagaSteps<DB>,
        ctx: &StepContext,
        payload: &serde_json::Value,
    ) -> Result<CallbackOutcome, SagaError> {
        let mut tx = self.inner.pool.begin().await?;
        match barrier::enter_compensation::<DB>(&mut tx, ctx).await? {
            CompensationGate::AlreadyDone => {
                tx.rollback().await?;
                Ok(CallbackOutcome::AlreadyDone)
            }
            CompensationGate::Empty => {
                tx.commit().await?;
                tracing::info!("empty compensation: no action committed; a late action will be refused");
                Ok(CallbackOutcome::EmptyRollback)
            }
            CompensationGate::Run => {
                if let Err(error) = step.compensate(&mut tx, ctx, payload).await {
                    rollback_after_failure(tx).await;
                    return Err(SagaError::StepFailed { op: Op::Compensate, error });
                }
                tx.commit().await?;
                Ok(CallbackOutcome::Applied)
            }
        }
    }

    /// A step run by the client's own code (Seata style, see
    /// [`step_by_step`]): registers a branch of `xid` for `step`, whose
    /// compensation the coordinator sends to [`Self::compensate_url`] if the
    /// saga is rolled back, then runs the step's action here, behind the
    /// barrier. Registering first means that a crash after the action still
    /// leaves it compensable. On an error the caller rolls the saga back (a
    /// failed action left nothing, so its compensation will be empty).
    pub async fn run_step(
        &self,
        client: &TandemClient,
        xid: &Xid,
        step: &str,
        payload: serde_json::Value,
    ) -> Result<StepContext, SagaError> {
        let callback_url = self.compensate_url(step)?;
        let branch = client
            .register(
                xid,
                &RegisterBranchRequest {
                    resource: step.to_owned(),
                    callback_url,
                    payload: Some(payload.clone()),
                    lock_keys: None,
                },
            )
            .await?;
        let ctx = StepContext {
            xid: xid.clone(),
            branch_id: branch.branch_id,
            step: step.to_owned(),
            resource: step.to_owned(),
        };
        self.action(&ctx, &payload).await?;
        Ok(ctx)
    }
}

/// Rolls back a local transaction whose business step failed. A failed
/// rollback is only logged: the step's error is the answer, and dropping a
/// transaction that did not end rolls it back anyway (or the server does,
/// when the connection closes).
async fn rollback_after_failure<DB: BarrierDb>(tx: sqlx::Transaction<'static, DB>) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "rollback after a failed step failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_path_segments() {
        for good in ["reserve", "pay-2", "a.b_c", "A"] {
            assert!(check_step_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_STEP_NAME_CHARS + 1);
        for bad in ["", ".", "..", "a/b", "a:b", "{x}", "a b", "é", long.as_str()] {
            assert!(check_step_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_conflicts_run_again() {
        let not_db = SagaError::StepFailed { op: Op::Action, error: StepError::reject("insufficient stock") };
        assert!(!not_db.is_conflict());
        let io = SagaError::Database(sqlx::Error::PoolTimedOut);
        assert!(!io.is_conflict());
    }
}
