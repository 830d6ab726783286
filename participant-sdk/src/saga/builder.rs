//! The client's saga definition: steps (an action URL, a compensation URL,
//! a payload), their order, the saga's timeout and retry limit, submitted
//! whole to the coordinator (`POST /v1/sagas`), which runs it.
//!
//! ```no_run
//! # async fn example(client: &tandem_sdk::TandemClient) -> Result<(), tandem_sdk::ClientError> {
//! use serde_json::json;
//! use std::time::Duration;
//! use tandem_sdk::saga::Saga;
//!
//! let order = json!({"order": 42, "sku": "A-1", "qty": 2});
//! let step = |service: &str, name: &str| {
//!     let base = format!("http://{service}:8080/tandem/saga/{name}");
//!     (format!("{base}/action"), format!("{base}/compensate"))
//! };
//! let ((reserve, unreserve), (charge, refund)) = (step("inventory", "reserve"), step("payment", "charge"));
//! let ((ship, unship), (notify, retract)) = (step("shipping", "ship"), step("mail", "notify"));
//! let outcome = Saga::new("place-order")
//!     .step(reserve, unreserve, order.clone())
//!     .step(charge, refund, order.clone())
//!     // Both of these wait for the two steps above, and run concurrently.
//!     .step(ship, unship, order.clone())
//!     .after([0, 1])
//!     .step(notify, retract, order)
//!     .after([0, 1])
//!     .timeout(Duration::from_secs(30))
//!     .retry_limit(5)
//!     .submit_and_wait(client, Duration::from_secs(10))
//!     .await?;
//! assert!(outcome.finished);
//! # Ok(()) }
//! ```
//!
//! Without [`Saga::after`] anywhere the steps run one after another in the
//! order added; once any step has `after`, only the listed dependencies
//! count (a step without `after` then depends on nothing).

use crate::client::{ClientError, Decided, TandemClient};
use std::time::Duration;
use tandem_wire::{SagaRequest, SagaStepRequest, Transaction};

/// A step's index in its saga: the order [`Saga::step`] added it, from 0.
pub type StepIndex = u32;

/// A saga definition, built step by step ([`Saga::new`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    /// The definition as it will be sent.
    request: SagaRequest,
    /// The `Idempotency-Key` of the submission, if any.
    idempotency_key: Option<String>,
}

impl Saga {
    /// An empty saga named `name` (for operators, for example `place-order`).
    pub fn new(name: impl Into<String>) -> Saga {
        Saga {
            request: SagaRequest { name: Some(name.into()), timeout_ms: None, retry_limit: None, steps: Vec::new() },
            idempotency_key: None,
        }
    }

    /// Adds a step: the coordinator POSTs its action to `action_url` and,
    /// if the saga fails after the action ran (or may have), its
    /// compensation to `compensate_url`, both with `payload` (`null`: none).
    /// Its index is the number of steps added before it.
    pub fn step(
        mut self,
        action_url: impl Into<String>,
        compensate_url: impl Into<String>,
        payload: serde_json::Value,
    ) -> Saga {
        self.request.steps.push(SagaStepRequest {
            name: None,
            action_url: action_url.into(),
            compensate_url: compensate_url.into(),
            payload: (!payload.is_null()).then_some(payload),
            after: None,
        });
        self
    }

    /// Names the last step added (the branch's resource; by default
    /// `step-N`, N its index from 1). Does nothing before the first step.
    pub fn named(mut self, name: impl Into<String>) -> Saga {
        if let Some(step) = self.request.steps.last_mut() {
            step.name = Some(name.into());
        }
        self
    }

    /// The last step added runs once the steps at `indexes` have succeeded
    /// (added to those it already waits for). Does nothing before the first
    /// step. The coordinator refuses an index that is not an earlier step's.
    pub fn after(mut self, indexes: impl IntoIterator<Item = StepIndex>) -> Saga {
        if let Some(step) = self.request.steps.last_mut() {
            let after = step.after.get_or_insert_with(Vec::new);
            for i in indexes {
                if !after.contains(&i) {
                    after.push(i);
                }
            }
        }
        self
    }

    /// The index of the last step added, for a later [`Saga::after`].
    pub fn last_step(&self) -> Option<StepIndex> {
        self.request.steps.len().checked_sub(1).and_then(|i| StepIndex::try_from(i).ok())
    }

    /// After `timeout` a saga whose actions have not all succeeded is
    /// compensated (the coordinator's default: 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Saga {
        self.request.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// How many times one action's transient failure is retried before the
    /// saga is compensated (the default: until the timeout).
    pub fn retry_limit(mut self, retries: u64) -> Saga {
        self.request.retry_limit = Some(retries);
        self
    }

    /// Submits with this `Idempotency-Key`: submitting again with the same
    /// key and definition returns the saga submitted first.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Saga {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The definition, as `POST /v1/sagas` takes it.
    pub fn build(&self) -> SagaRequest {
        self.request.clone()
    }

    /// Submits the saga and returns at once (202): the coordinator runs it;
    /// follow it with [`TandemClient::get`].
    pub async fn submit(&self, client: &TandemClient) -> Result<Transaction, ClientError> {
        let decided = client.submit_saga(&self.request, Some(Duration::ZERO), self.idempotency_key.as_deref()).await?;
        Ok(decided.transaction)
    }

    /// Submits the saga and waits up to `wait` for its end: `finished`
    /// (200) once every action succeeded; 202 while it still runs. A saga
    /// that ended compensated is an `invalid_state` problem carrying the
    /// transaction ([`TandemClient::submit_saga`]).
    pub async fn submit_and_wait(&self, client: &TandemClient, wait: Duration) -> Result<Decided, ClientError> {
        client.submit_saga(&self.request, Some(wait), self.idempotency_key.as_deref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_chain_and_after_applies_to_the_last() {
        let saga = Saga::new("x")
            .step("http://a/act", "http://a/comp", json!({"n": 1}))
            .named("reserve")
            .step("http://b/act", "http://b/comp", serde_json::Value::Null)
            .after([0])
            .after([0, 0])
            .timeout(Duration::from_millis(1500))
            .retry_limit(3);
        assert_eq!(saga.last_step(), Some(1));
        let body = serde_json::to_value(saga.build()).expect("JSON");
        assert_eq!(
            body,
            json!({
                "name": "x",
                "timeout_ms": 1500,
                "retry_limit": 3,
                "steps": [
                    {"name": "reserve", "action_url": "http://a/act", "compensate_url": "http://a/comp", "payload": {"n": 1}},
                    {"action_url": "http://b/act", "compensate_url": "http://b/comp", "after": [0]}
                ]
            })
        );
    }

    #[test]
    fn step_options_before_any_step_do_nothing() {
        let saga = Saga::new("x").after([3]).named("nothing");
        assert_eq!(saga.last_step(), None);
        assert!(saga.build().steps.is_empty());
    }
}
