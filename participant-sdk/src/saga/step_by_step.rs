//! A saga the client runs itself, step by step (Seata's usage): begin a
//! global transaction in mode `saga`, run each step's action where it
//! belongs, registering the step as a branch whose `callback_url` is its
//! compensation, then commit (every action succeeded: nothing more to do)
//! or roll back (the coordinator calls the registered compensations, in
//! reverse order, until each succeeds).
//!
//! A step served by a [`SagaParticipant`](super::SagaParticipant) does both
//! with [`run_step`](super::SagaParticipant::run_step): it registers the
//! branch first (so that a crash after the action still leaves it
//! compensable), then runs the action behind the barrier, so that the
//! compensation is empty if the action did not commit, and a compensation
//! that overtakes the action refuses it.
//!
//! ```no_run
//! # use tandem_sdk::saga::{SagaParticipant, SagaError};
//! # async fn example(
//! #     client: &tandem_sdk::TandemClient,
//! #     inventory: &SagaParticipant,
//! #     payment: &SagaParticipant,
//! # ) -> Result<(), SagaError> {
//! use serde_json::json;
//! use std::time::Duration;
//! use tandem_sdk::saga::step_by_step;
//!
//! let tx = step_by_step::begin(client, "place-order", Duration::from_secs(30)).await?;
//! let order = json!({"order": 42, "sku": "A-1", "qty": 2});
//! let steps = async {
//!     inventory.run_step(client, &tx.xid, "reserve", order.clone()).await?;
//!     payment.run_step(client, &tx.xid, "charge", order.clone()).await?;
//!     Ok::<_, SagaError>(())
//! };
//! match steps.await {
//!     Ok(()) => {
//!         client.commit(&tx.xid, Some(Duration::from_secs(5))).await?;
//!     }
//!     Err(e) => {
//!         // Compensates what ran: a step that failed left nothing, and its
//!         // compensation is empty.
//!         client.rollback(&tx.xid, Some(Duration::from_secs(5))).await?;
//!         return Err(e);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! A step of another service (not an SDK participant) is registered with
//! [`TandemClient::register`] and a `RegisterBranchRequest` whose
//! `callback_url` is the step's compensation URL; that service then answers
//! compensations by the callback contract, barrier or not.

use crate::client::{ClientError, TandemClient};
use std::time::Duration;
use tandem_wire::{BeginRequest, Mode, Transaction};

/// Begins a step-by-step saga named `name`: rolled back (compensated) if it
/// is not committed within `timeout`.
pub async fn begin(client: &TandemClient, name: &str, timeout: Duration) -> Result<Transaction, ClientError> {
    client
        .begin(&BeginRequest {
            mode: Mode::Saga,
            name: Some(name.to_owned()),
            timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            three_phase: None,
        })
        .await
}
