//! Saga: the definition a client submits, and what the transaction object
//! shows of each step (extension of the contract, `docs/saga.md`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most steps in one saga.
pub const MAX_SAGA_STEPS: usize = 256;
/// Largest `retry_limit`.
pub const MAX_RETRY_LIMIT: u32 = 1_000;

/// `POST /v1/sagas`: submit a whole saga. Extension.
///
/// Without `after` on any step the steps run one after another in list
/// order (DTM's ordinary saga). With `after` on at least one step, only the
/// dependencies listed count: a step runs once every step it names has
/// succeeded, and steps without a path between them run concurrently (a step
/// without `after` then depends on nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SagaRequest {
    /// Free-form name for operators (for example `place-order`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Time after which a saga whose actions have not all succeeded is
    /// compensated. Default 60000.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::de::opt_u64")]
    pub timeout_ms: Option<u64>,
    /// How many times one action's transient failure (5xx, timeout,
    /// connection error) is retried before the saga is compensated. Absent:
    /// retried until the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::de::opt_u64")]
    pub retry_limit: Option<u64>,
    /// The steps, in definition order (indexes from 0).
    pub steps: Vec<SagaStepRequest>,
}

/// One step of a [`SagaRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SagaStepRequest {
    /// Name of the step (the branch's `resource`). Default `step-N` (N from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the coordinator POSTs the step's action (`action: "action"`).
    pub action_url: String,
    /// Where the coordinator POSTs the step's compensation (`action: "compensate"`).
    pub compensate_url: String,
    /// Opaque JSON handed to the action and the compensation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// Indexes of the steps whose actions must succeed before this one runs.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::de::opt_index_list")]
    pub after: Option<Vec<u32>>,
}

use crate::{ActionStatus, CompensationStatus};

/// The action of a saga step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActionSide {
    /// Its status.
    pub status: ActionStatus,
    /// Calls made so far.
    pub attempts: u32,
    /// The last call's error, if it failed.
    pub last_error: Option<String>,
}

/// The compensation of a saga step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CompensationSide {
    /// Its status.
    pub status: CompensationStatus,
    /// Calls made so far.
    pub attempts: u32,
    /// The last call's error, if it failed.
    pub last_error: Option<String>,
}

/// What a saga branch shows of its step. Extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SagaStep {
    /// The step's action URL; absent for a step registered step by step
    /// (its action ran in the client's own code before it registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_url: Option<String>,
    /// Indexes of the steps it runs after.
    pub after: Vec<u32>,
    /// The action.
    pub action: ActionSide,
    /// The compensation (sent to the branch's `callback_url`).
    pub compensation: CompensationSide,
}
