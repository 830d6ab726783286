//! The producer: a local transaction and its message commit together.

use super::{Message, MsgError, PRODUCER_BRANCH};
use crate::callback::{rejected, Refusal};
use crate::client::{Decided, TandemClient};
use crate::saga::barrier::{self, ActionGate, BarrierDb, Op};
use crate::saga::StepContext;
use crate::BoxError;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::future::BoxFuture;
use sqlx::{Pool, Postgres};
use std::sync::Arc;
use tandem_wire::{BranchId, CheckOutcome, CheckReply, CheckRequest, Mode, Xid};

/// Where the back-check endpoint lives, under the producer's public base URL.
pub const CHECK_PATH: &str = "/tandem/msg/check";

/// A service that sends two-phase messages from its local transactions
/// (see the module docs of [`crate::msg`]). Cheap to clone.
pub struct Producer<DB: BarrierDb = Postgres> {
    inner: Arc<Inner<DB>>,
}

struct Inner<DB: BarrierDb> {
    /// The service's database (its business tables and `tandem_barrier`).
    pool: Pool<DB>,
    /// The coordinator.
    client: TandemClient,
    /// `{public_base_url}{CHECK_PATH}`: what every message names as its back-check.
    check_url: String,
}

impl<DB: BarrierDb> Clone for Producer<DB> {
    fn clone(&self) -> Self {
        Producer { inner: self.inner.clone() }
    }
}

impl<DB: BarrierDb> std::fmt::Debug for Producer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("check_url", &self.inner.check_url).finish_non_exhaustive()
    }
}

impl<DB: BarrierDb> Producer<DB> {
    /// A producer on `pool`, talking to the coordinator through `client`,
    /// reachable by the coordinator at `public_base_url` (its back-check
    /// endpoint is [`CHECK_PATH`] there).
    pub fn new(pool: Pool<DB>, client: TandemClient, public_base_url: &str) -> Result<Producer<DB>, MsgError> {
        let base = public_base_url.trim_end_matches('/');
        match reqwest::Url::parse(base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            _ => return Err(MsgError::InvalidUrl(public_base_url.to_owned())),
        }
        let check_url = format!("{base}{CHECK_PATH}");
        Ok(Producer { inner: Arc::new(Inner { pool, client, check_url }) })
    }

    /// Creates the barrier table (`tandem_barrier`) if it does not exist.
    pub async fn install(&self) -> Result<(), sqlx::Error> {
        DB::install(&self.inner.pool).await
    }

    /// The back-check URL every message of this producer names.
    pub fn check_url(&self) -> &str {
        &self.inner.check_url
    }

    /// Prepares `msg`, runs `business` in a local transaction with the
    /// message's barrier row, commits, and submits. Returns what `business`
    /// returned and the submit's answer (waited for up to the coordinator's
    /// default `wait_ms`: `finished` once every delivery was acknowledged).
    ///
    /// An error from `business` rolls the local transaction back and aborts
    /// the message ([`MsgError::Business`]). A commit that fails (the
    /// database, or a back-check that dropped the message first) aborts it
    /// too. A submit that fails after the commit is [`MsgError::SubmitPending`]:
    /// the message is delivered after the back-check.
    pub async fn submit_in<T, F>(&self, msg: &Message, business: F) -> Result<(T, Decided), MsgError>
    where
        T: Send,
        F: for<'c> FnOnce(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, BoxError>> + Send,
    {
        let xid = self.prepare(msg).await?;
        self.commit_and_submit(&xid, msg, business).await
    }

    /// The first half of [`Producer::submit_in`]: prepares `msg` (durable
    /// when this returns) and returns its xid.
    pub async fn prepare(&self, msg: &Message) -> Result<Xid, MsgError> {
        Ok(self.inner.client.prepare_message(&msg.request(&self.inner.check_url), None).await?.xid)
    }

    /// The second half of [`Producer::submit_in`], for the message `xid`
    /// prepared from `msg`: the local transaction, then the submit (or the
    /// abort).
    pub async fn commit_and_submit<T, F>(&self, xid: &Xid, msg: &Message, business: F) -> Result<(T, Decided), MsgError>
    where
        T: Send,
        F: for<'c> FnOnce(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, BoxError>> + Send,
    {
        let client = &self.inner.client;
        let value = match self.commit_local(xid, msg, business).await {
            Ok(value) => value,
            Err(e) => {
                if let Err(abort) = client.abort_message(xid, None).await {
                    // Handled: the back-check finds no barrier row and drops it.
                    tracing::warn!(%xid, error = %abort, "abort failed; the back-check will drop the message");
                }
                return Err(e);
            }
        };
        match client.submit_message(xid, None).await {
            Ok(decided) => Ok((value, decided)),
            Err(e) => Err(MsgError::SubmitPending(e)),
        }
    }

    /// The local transaction of the message `xid` (prepared from `msg`),
    /// without the submit or abort that [`Producer::commit_and_submit`] adds:
    /// the barrier row first (a back-check arriving meanwhile waits on its
    /// key until this commits or rolls back), then `business`, then the
    /// commit. [`MsgError::Dropped`] if a back-check took the key first.
    pub async fn commit_local<T, F>(&self, xid: &Xid, msg: &Message, business: F) -> Result<T, MsgError>
    where
        F: for<'c> FnOnce(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, BoxError>>,
    {
        let ctx = context(xid, msg.name.clone());
        let mut tx = self.inner.pool.begin().await?;
        match barrier::enter_action::<DB>(&mut tx, &ctx).await? {
            ActionGate::Run => {}
            // Dropped by a back-check already (or, for AlreadyDone, a bug: an
            // xid is never prepared twice).
            ActionGate::Refused | ActionGate::AlreadyDone => {
                tx.rollback().await?;
                return Err(MsgError::Dropped);
            }
        }
        let value = match business(&mut tx).await {
            Ok(v) => v,
            Err(e) => {
                if let Err(rb) = tx.rollback().await {
                    // The connection is gone; the transaction dies with it.
                    tracing::warn!(%xid, error = %rb, "rollback after a business error failed");
                }
                return Err(MsgError::Business(e));
            }
        };
        tx.commit()
            .await
            .map_err(|e| if barrier::is_conflict(&e) { MsgError::Dropped } else { MsgError::Database(e) })?;
        Ok(value)
    }

    /// Answers a back-check of `xid` from its barrier row, inserting it as
    /// "rolled back" when absent (see the module docs).
    pub async fn check(&self, xid: &Xid) -> Result<CheckOutcome, sqlx::Error> {
        let ctx = context(xid, None);
        let mut tx = self.inner.pool.begin().await?;
        // Waits for a local transaction holding the key.
        if DB::insert(&mut tx, &ctx, Op::Action, Op::Compensate).await? {
            tx.commit().await?;
            tracing::info!(%xid, "back-check: no local commit; the message is dropped");
            return Ok(CheckOutcome::RolledBack);
        }
        let origin = DB::origin(&mut tx, &ctx, Op::Action).await?;
        tx.rollback().await?;
        match origin {
            Some(Op::Action) => Ok(CheckOutcome::Committed),
            Some(Op::Compensate) => Ok(CheckOutcome::RolledBack),
            None => Err(sqlx::Error::Protocol("the message's barrier row vanished (purged?)".into())),
        }
    }

    /// A router serving POST [`CHECK_PATH`]: the coordinator's back-check.
    pub fn router(&self) -> Router {
        let verifier = self.inner.client.verifier().clone();
        verifier.announce("message producer");
        Router::new()
            .route(CHECK_PATH, post(check_endpoint::<DB>))
            .with_state(self.clone())
            .layer(axum::middleware::from_fn_with_state(verifier, crate::verify::verify))
    }
}

/// The barrier key of a message's producer row.
fn context(xid: &Xid, name: Option<String>) -> StepContext {
    StepContext {
        xid: xid.clone(),
        // A valid id: letters only.
        branch_id: BranchId::parse(PRODUCER_BRANCH).unwrap_or_else(|_| BranchId::generate()),
        step: PRODUCER_BRANCH.to_owned(),
        resource: name.unwrap_or_else(|| PRODUCER_BRANCH.to_owned()),
    }
}

async fn check_endpoint<DB: BarrierDb>(
    State(p): State<Producer<DB>>,
    body: Result<Json<CheckRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(req)) => req,
        Err(rejection) => return rejected(&rejection).into_response(),
    };
    if req.mode != Mode::Msg {
        return Refusal::unknown_resource(format!("a back-check is for mode msg, not {}", req.mode)).into_response();
    }
    let xid = req.xid;
    // In its own task, as every callback: dropped by a coordinator that
    // stopped waiting, the check still ends (and commits its row) or rolls back.
    let answer = tokio::spawn(async move { p.check(&xid).await }).await;
    match answer {
        Ok(Ok(outcome)) => (StatusCode::OK, Json(CheckReply { outcome })).into_response(),
        Ok(Err(e)) => Refusal::retry(format!("back-check failed on the database: {e}")).into_response(),
        Err(e) => Refusal::retry(format!("back-check task failed: {e}")).into_response(),
    }
}
