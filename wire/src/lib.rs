//! Wire types of the Tandem coordinator's HTTP contract (v1, `docs/http-api.md`).
//!
//! Everything that crosses the network between a client, the coordinator and a
//! participant is defined here once: identifiers, statuses, request and response
//! bodies, callbacks and problem details. The coordinator serves these types
//! (and derives its OpenAPI document from them); the SDK sends and receives them.

pub mod backoff;
pub mod de;
mod ids;
pub mod limits;
mod msg;
mod named_locks;
mod operator;
mod problem;
mod saga;
pub mod signature;
mod status;
mod three_phase;

pub use ids::{BranchId, IdError, Xid, ID_PATTERN, MAX_ID_LEN};
pub use msg::{
    message_id, parse_message_id, CheckOutcome, CheckReply, CheckRequest, DeliveryOrder, DeliveryRequest, MessageInfo,
    MessageRequest, MAX_DELIVERIES, MESSAGE_ID_HEADER,
};
pub use named_locks::{
    AcquireLockRequest, LockGrant, LockName, LockNameError, LockOwner, LockReleased, LockWaiterInfo, LockWaiting,
    NamedLockInfo, NamedLockList, ReleaseLockRequest, RenewLockRequest, LOCK_NAME_PATTERN, MAX_LOCK_NAME_LEN,
    MAX_LOCK_POLL_MS, MAX_LOCK_TTL_MS, MAX_LOCK_WAIT_MS, MIN_LOCK_TTL_MS,
};
pub use operator::{
    AttemptOutcome, EventKind, LockInfo, LockList, MinuteCount, Overview, StatusCount, StopRequest, Timeline,
    TimelineEvent, MAX_EVENT_ERROR_BYTES, MAX_NOTE_CHARS, STUCK_ATTEMPTS,
};
pub use problem::{ErrorCode, LockHolder, Problem, PROBLEM_CONTENT_TYPE};
pub use saga::{ActionSide, CompensationSide, SagaRequest, SagaStep, SagaStepRequest, MAX_RETRY_LIMIT, MAX_SAGA_STEPS};
pub use status::{
    ActionStatus, BranchStatus, CompensationStatus, GlobalStatus, Mode, ReportStatus, RollbackReason,
    TransactionOutcome, UnknownValue,
};
pub use three_phase::{ThreePhaseOptions, ThreePhaseTimeouts, TimeoutError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The HTTP header that carries the xid between services.
pub const XID_HEADER: &str = "Tandem-Xid";

/// Default transaction timeout when `timeout_ms` is not given (contract: 60000).
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// `POST /v1/transactions`: begin a global transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BeginRequest {
    /// Transaction mode; decides how branches are driven in phase 2.
    pub mode: Mode,
    /// Free-form name for operators (for example `place-order`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Time after which an undecided transaction is rolled back. Default 60000.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_u64")]
    pub timeout_ms: Option<u64>,
    /// Phase timeouts of a `3pc` transaction; each defaults when absent.
    /// Refused for other modes. Extension.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_object")]
    pub three_phase: Option<ThreePhaseOptions>,
}

/// `POST /v1/transactions/{xid}/branches`: register a branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterBranchRequest {
    /// Name of the participant's resource (for example `inventory`).
    pub resource: String,
    /// Where the coordinator POSTs phase-2 callbacks for this branch.
    pub callback_url: String,
    /// Opaque JSON handed back in every callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// Global lock keys (AT mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_keys: Option<Vec<String>>,
}

/// `POST /v1/transactions/{xid}/branches/{branch_id}/report`: phase-1 result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportRequest {
    /// `prepared` or `phase1_failed`.
    pub status: ReportStatus,
    /// Human-readable detail, kept as the branch's `last_error` on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A branch of a global transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Branch {
    /// Identifier chosen by the coordinator.
    pub branch_id: BranchId,
    /// Participant resource name.
    pub resource: String,
    /// Callback endpoint of the participant.
    pub callback_url: String,
    /// Branch status.
    pub status: BranchStatus,
    /// Payload as registered.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// Global lock keys held by this branch (AT mode).
    pub lock_keys: Vec<String>,
    /// Whether the coordinator holds `lock_keys` as global locks for this
    /// branch: true in AT mode until the branch's phase 2 completes. Absent
    /// where the coordinator does not know the mode (phase-1 report answers).
    /// Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_locks: Option<bool>,
    /// Callback attempts made so far (saga: of the compensation).
    pub attempts: u32,
    /// Last callback error, if any (saga: of the compensation).
    pub last_error: Option<String>,
    /// Saga: the step's action and compensation. Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<SagaStep>,
    /// Message: the broker destination this delivery publishes to (its
    /// `callback_url` is then empty). Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// A global transaction with its branches in registration order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Transaction {
    /// Global transaction id.
    pub xid: Xid,
    /// Mode.
    pub mode: Mode,
    /// Optional name given at begin.
    pub name: Option<String>,
    /// Global status.
    pub status: GlobalStatus,
    /// Why it rolled back, once a rollback is decided.
    pub rollback_reason: Option<RollbackReason>,
    /// Timeout in milliseconds.
    pub timeout_ms: u64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// `created_at + timeout_ms`.
    pub deadline: DateTime<Utc>,
    /// When commit or rollback was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// When phase 2 finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Phase timeouts, for a `3pc` transaction. Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub three_phase: Option<ThreePhaseTimeouts>,
    /// Message: its back-check and delivery order. Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageInfo>,
    /// Branches in registration order.
    pub branches: Vec<Branch>,
}

/// `GET /v1/transactions`: one page, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionList {
    /// The page.
    pub transactions: Vec<Transaction>,
    /// Cursor for the next page (`after=`), or null at the end.
    pub next: Option<String>,
}

/// Phase-2 (and, for 3PC, phase-1) actions sent to participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallbackAction {
    /// Make the branch's effects final (TCC confirm, XA commit, 3PC DoCommit).
    Commit,
    /// Undo the branch (TCC cancel, XA rollback); may arrive for a branch whose phase 1 never ran.
    Rollback,
    /// 3PC phase 1: can the branch take the transaction? 2xx votes yes, 409 no.
    CanCommit,
    /// 3PC phase 2: execute and prepare, then acknowledge with 2xx.
    PreCommit,
    /// Saga: run the step's action (2xx done, 409 failed: the saga compensates).
    Action,
    /// Saga: undo the step's action; may arrive for an action that never
    /// committed (an empty compensation) or before it (refuse it afterwards).
    Compensate,
    /// Message: one delivery (2xx acknowledges it; it may come again).
    Deliver,
    /// Message: the back-check of a prepared message ([`CheckRequest`]).
    Check,
}

impl CallbackAction {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackAction::Commit => "commit",
            CallbackAction::Rollback => "rollback",
            CallbackAction::CanCommit => "can_commit",
            CallbackAction::PreCommit => "pre_commit",
            CallbackAction::Action => "action",
            CallbackAction::Compensate => "compensate",
            CallbackAction::Deliver => "deliver",
            CallbackAction::Check => "check",
        }
    }
}

/// Body of `POST {callback_url}` from the coordinator to a participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallbackRequest {
    /// Global transaction id.
    pub xid: Xid,
    /// Branch being driven.
    pub branch_id: BranchId,
    /// Mode of the global transaction.
    pub mode: Mode,
    /// What to do.
    pub action: CallbackAction,
    /// Resource the branch registered.
    pub resource: String,
    /// Payload as registered.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// The transaction's phase timeouts (3PC): they set the participant's
    /// timers. Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub three_phase: Option<ThreePhaseTimeouts>,
}

/// What a participant did with a callback, in its 2xx answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallbackOutcome {
    /// The action took effect now.
    Applied,
    /// It had taken effect before (a repeated delivery): nothing was done.
    AlreadyDone,
    /// A rollback of a branch whose phase 1 never ran here: nothing to undo,
    /// and a marker refuses a phase 1 that arrives late (suspension).
    EmptyRollback,
    /// Done, without telling whether now or before: an AT commit, which
    /// only schedules the delete of its undo row.
    Done,
}

/// Body of a participant's 2xx answer to a callback. The coordinator reads
/// only the status (2xx: done); the body tells a person what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CallbackReply {
    /// What the participant did.
    pub outcome: CallbackOutcome,
    /// 3PC: where the branch stands at the participant afterwards (`voted`,
    /// `pre_committed`, `committed`, `aborted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl CallbackReply {
    /// A reply with `outcome` alone.
    pub fn new(outcome: CallbackOutcome) -> CallbackReply {
        CallbackReply { outcome, state: None }
    }
}

/// `POST /v1/locks/check`: are these global locks free for `xid`? (AT mode,
/// `SELECT ... FOR UPDATE` through the SDK.) Extension of the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LockCheckRequest {
    /// Resource the keys belong to (as the branches register it).
    pub resource: String,
    /// Lock keys, as in `RegisterBranchRequest::lock_keys`.
    pub lock_keys: Vec<String>,
    /// The asking transaction: locks it holds itself count as free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<Xid>,
}

/// Answer of `POST /v1/locks/check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LockCheckResponse {
    /// `true` when no other transaction holds any of the keys.
    pub free: bool,
    /// One holder of a key, when not free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<LockHolder>,
}
