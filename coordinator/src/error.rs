//! Errors of the coordinator's service layer. `api::error` maps them to HTTP
//! in one place.

use crate::modes::OptionError;
use crate::store::StoreError;
use tandem_wire::{LockHolder, Mode, Transaction};

/// What a coordinator operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The request is well-formed JSON but invalid.
    #[error("{0}")]
    Validation(String),
    /// A field outside the limits the OpenAPI document declares.
    #[error(transparent)]
    Limit(#[from] tandem_wire::limits::LimitError),
    /// A begin option refused by the mode's protocol.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// A mode this coordinator does not drive yet.
    #[error("mode {0} is not supported by this coordinator yet")]
    ModeNotSupported(Mode),
    /// An `Idempotency-Key` reused with a different request.
    #[error("Idempotency-Key was already used for a different request (transaction {0})")]
    IdempotencyKeyReused(String),
    /// Unknown xid.
    #[error("no transaction with xid {0:?}")]
    TransactionNotFound(String),
    /// Unknown branch.
    #[error("no branch {branch_id:?} in transaction {xid:?}")]
    BranchNotFound {
        /// The transaction.
        xid: String,
        /// The unknown branch id.
        branch_id: String,
    },
    /// The transaction or branch is in a state that forbids the operation.
    #[error("{detail}")]
    InvalidState {
        /// What is wrong.
        detail: String,
        /// The transaction as it now stands, when useful to the caller.
        transaction: Option<Box<Transaction>>,
    },
    /// A global lock (AT) is held by another transaction.
    #[error("lock {:?} is held by transaction {} ({})", .0.lock_key, .0.xid, .0.status)]
    LockConflict(Box<LockHolder>),
    /// A callback address outside the allow-list.
    #[error("{field}: {reason}")]
    CallbackNotAllowed {
        /// The field holding it.
        field: &'static str,
        /// Why it is refused.
        reason: crate::callbacks::allow::Refused,
    },
    /// A payload larger than the configured bound.
    #[error("{field} is {size} bytes of JSON; at most {max} are accepted (--max-payload-bytes)")]
    PayloadTooLarge {
        /// The field.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// A configured bound on a transaction reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
