//! The consumer: a delivery's work and its dedupe row in one local transaction.

use super::MsgError;
use crate::callback::{self, Callbacks, Refusal};
use crate::saga::barrier::{self, ActionGate, BarrierDb};
use crate::saga::StepContext;
use crate::tcc::StepError;
use crate::verify::Verifier;
use async_trait::async_trait;
use axum::Router;
use sqlx::{Pool, Postgres};
use std::sync::Arc;
use tandem_wire::{
    parse_message_id, BranchId, CallbackAction, CallbackOutcome, CallbackReply, CallbackRequest, ErrorCode, Xid,
};

/// The branch id of an outbox message's dedupe row.
const OUTBOX_BRANCH: &str = "outbox";

/// Most times one delivery's local transaction runs when a concurrent one
/// (a redelivery racing it) rolls it back as a conflict.
const CONFLICT_ATTEMPTS: u32 = 5;

/// One delivery as the consumer's work sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message.
    pub xid: Xid,
    /// This delivery of it.
    pub branch_id: BranchId,
    /// The delivery's name (its branch's resource), where known.
    pub resource: String,
}

impl Delivery {
    /// The message id, `{xid}/{branch_id}`: the dedupe key.
    pub fn message_id(&self) -> String {
        tandem_wire::message_id(&self.xid, &self.branch_id)
    }
}

/// What the consumer did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The work ran and committed now.
    Applied,
    /// It had run before (a redelivery): nothing was done.
    AlreadyDone,
}

/// A consumer's work for one delivery, run in its local transaction.
#[async_trait]
pub trait DeliveryHandler<DB: BarrierDb = Postgres>: Send + Sync + 'static {
    /// Does the work on `db` (inside the transaction that also writes the
    /// dedupe row; commit and rollback are the consumer's). An error rolls
    /// both back: [`StepError::Retry`] has the delivery come again,
    /// [`StepError::Permanent`] refuses it for good (the coordinator ends the
    /// message `commit_failed` for an operator).
    async fn handle(
        &self,
        db: &mut DB::Connection,
        delivery: &Delivery,
        payload: &serde_json::Value,
    ) -> Result<(), StepError>;
}

/// Runs a [`DeliveryHandler`] at most once per delivery (see the module docs
/// of [`crate::msg`]). Cheap to clone.
pub struct Consumer<DB: BarrierDb = Postgres> {
    /// The service's database.
    pool: Pool<DB>,
    /// The work.
    handler: Arc<dyn DeliveryHandler<DB>>,
    /// How its callbacks are verified.
    verifier: Verifier,
}

impl<DB: BarrierDb> Clone for Consumer<DB> {
    fn clone(&self) -> Self {
        Consumer { pool: self.pool.clone(), handler: self.handler.clone(), verifier: self.verifier.clone() }
    }
}

impl<DB: BarrierDb> std::fmt::Debug for Consumer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

impl<DB: BarrierDb> Consumer<DB> {
    /// A consumer running `handler` on `pool`.
    pub fn new(pool: Pool<DB>, handler: impl DeliveryHandler<DB>) -> Consumer<DB> {
        Consumer { pool, handler: Arc::new(handler), verifier: Verifier::default() }
    }

    /// Verifies the coordinator's `deliver` callbacks with `verifier` (as
    /// [`crate::TandemClient::verifier`] does for the participants that hold a client).
    pub fn verify_with(mut self, verifier: Verifier) -> Consumer<DB> {
        self.verifier = verifier;
        self
    }

    /// Creates the dedupe table (`tandem_barrier`) if it does not exist.
    pub async fn install(&self) -> Result<(), sqlx::Error> {
        DB::install(&self.pool).await
    }

    /// A router serving POST `path`: the coordinator's `deliver` callbacks.
    pub fn router(&self, path: &'static str) -> Router {
        callback::router(path, self.clone(), &self.verifier)
    }

    /// Handles a message read from a broker or an outbox relay, by its
    /// message id (the `Tandem-Message-Id` header, or the AMQP `message_id` /
    /// JetStream `Nats-Msg-Id`): runs the work unless this id ran before. A
    /// two-phase message's id is `{xid}/{branch_id}`; any other id that is a
    /// valid identifier (an outbox message's UUID) is keyed as
    /// `({id}, "outbox")`.
    pub async fn receive(&self, message_id: &str, payload: &serde_json::Value) -> Result<Delivered, ConsumeError> {
        let bad = || ConsumeError::BadMessageId(message_id.to_owned());
        let (xid, branch_id) = match parse_message_id(message_id) {
            Some(ids) => ids,
            None => (Xid::parse(message_id).map_err(|_| bad())?, BranchId::parse(OUTBOX_BRANCH).map_err(|_| bad())?),
        };
        let delivery = Delivery { xid, branch_id, resource: String::new() };
        self.run(&delivery, payload).await
    }

    /// Runs the work for `delivery` unless it ran before.
    pub async fn run(&self, delivery: &Delivery, payload: &serde_json::Value) -> Result<Delivered, ConsumeError> {
        let mut attempt = 1;
        loop {
            match self.run_once(delivery, payload).await {
                Err(ConsumeError::Database(e)) if attempt < CONFLICT_ATTEMPTS && barrier::is_conflict(&e) => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn run_once(&self, delivery: &Delivery, payload: &serde_json::Value) -> Result<Delivered, ConsumeError> {
        let ctx = StepContext {
            xid: delivery.xid.clone(),
            branch_id: delivery.branch_id.clone(),
            step: "deliver".to_owned(),
            resource: delivery.resource.clone(),
        };
        let mut tx = self.pool.begin().await?;
        match barrier::enter_action::<DB>(&mut tx, &ctx).await? {
            ActionGate::Run => {}
            // Refused cannot happen (nothing compensates a delivery): treat
            // as done, as the key is taken.
            ActionGate::AlreadyDone | ActionGate::Refused => {
                tx.rollback().await?;
                return Ok(Delivered::AlreadyDone);
            }
        }
        if let Err(e) = self.handler.handle(&mut tx, delivery, payload).await {
            if let Err(rb) = tx.rollback().await {
                tracing::warn!(error = %rb, "rollback after a failed delivery failed");
            }
            return Err(ConsumeError::Handler(e));
        }
        tx.commit().await?;
        Ok(Delivered::Applied)
    }
}

/// Why a delivery was not consumed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The work failed (rolled back with the dedupe row).
    #[error("delivery handler: {0}")]
    Handler(StepError),
    /// The local database failed (rolled back).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Neither `{xid}/{branch_id}` nor an identifier.
    #[error("not a Tandem message id: {0:?}")]
    BadMessageId(String),
}

impl From<ConsumeError> for MsgError {
    fn from(e: ConsumeError) -> MsgError {
        match e {
            ConsumeError::Database(e) => MsgError::Database(e),
            other => MsgError::Business(Box::new(other)),
        }
    }
}

impl<DB: BarrierDb> Callbacks for Consumer<DB> {
    const MODE: &'static str = "msg";

    async fn answer(self, req: CallbackRequest) -> Result<CallbackReply, Refusal> {
        if req.action != CallbackAction::Deliver {
            return Err(Refusal::permanent(
                ErrorCode::InvalidState,
                format!("a message consumer takes deliver callbacks, not {}", req.action.as_str()),
            ));
        }
        let delivery = Delivery { xid: req.xid, branch_id: req.branch_id, resource: req.resource };
        let payload = req.payload.unwrap_or(serde_json::Value::Null);
        match self.run(&delivery, &payload).await {
            Ok(Delivered::Applied) => Ok(CallbackReply::new(CallbackOutcome::Applied)),
            Ok(Delivered::AlreadyDone) => Ok(CallbackReply::new(CallbackOutcome::AlreadyDone)),
            Err(ConsumeError::Handler(StepError::Permanent(e))) => {
                Err(Refusal::permanent(ErrorCode::InvalidState, e.to_string()))
            }
            Err(e) => Err(Refusal::retry(e.to_string())),
        }
    }
}
