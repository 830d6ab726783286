//! RFC 9457 problem details with the contract's stable error codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Media type of every error response.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Stable, snake_case error codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or fails validation (400/422).
    ValidationFailed,
    /// Unknown xid (404).
    TransactionNotFound,
    /// Unknown branch id (404).
    BranchNotFound,
    /// The transaction is not in a state that allows the operation (409).
    InvalidState,
    /// A global lock is held by another transaction (409, AT mode).
    LockConflict,
    /// The body is larger than the configured limit (413).
    PayloadTooLarge,
    /// Missing or wrong credentials (401).
    Unauthorized,
    /// The same `Idempotency-Key` was used for a different request (422). Extension.
    IdempotencyKeyReused,
    /// The mode is valid but not served by this coordinator yet (422). Extension.
    ModeNotSupported,
    /// No route for this path (404). Extension.
    NotFound,
    /// The method is not allowed on this path (405). Extension.
    MethodNotAllowed,
    /// The body is not JSON (415). Extension.
    UnsupportedMediaType,
    /// The request took longer than the server's request timeout (408). Extension.
    RequestTimeout,
    /// The coordinator could not complete the request; safe to retry (503). Extension.
    Unavailable,
    /// An unexpected server error (500). Extension.
    Internal,
    /// A 3PC participant refuses a rollback because it already committed on
    /// its own timeout (409, participant → coordinator). Extension.
    HeuristicCommit,
    /// The credentials are valid but their role may not do this (403). Extension.
    Forbidden,
    /// Too many requests with this token; retry after `Retry-After` seconds (429). Extension.
    RateLimited,
    /// A callback address outside the coordinator's allow-list (422). Extension.
    CallbackNotAllowed,
    /// A configured bound on a transaction is reached, such as its number of
    /// branches (422). Extension.
    LimitExceeded,
    /// A callback without a valid signature, refused by a participant (401,
    /// participant → coordinator). Extension.
    InvalidSignature,
    /// A named lock is held by another owner and the wait asked for ended
    /// (409). Extension.
    LockHeld,
    /// A renew or release by an owner that does not hold the named lock
    /// (never did, released it, or its lease ended) (409). Extension.
    LockNotHeld,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::TransactionNotFound => "transaction_not_found",
            ErrorCode::BranchNotFound => "branch_not_found",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::LockConflict => "lock_conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::ModeNotSupported => "mode_not_supported",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::HeuristicCommit => "heuristic_commit",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::CallbackNotAllowed => "callback_not_allowed",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::LockHeld => "lock_held",
            ErrorCode::LockNotHeld => "lock_not_held",
        }
    }
}

/// An `application/problem+json` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// URI reference naming the problem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// For `invalid_state` answers to commit/rollback: the transaction as it now stands. Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub transaction: Option<Box<crate::Transaction>>,
    /// For `lock_conflict`: who holds the lock. Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_holder: Option<LockHolder>,
}

/// The holder of a global lock (AT mode), named in `lock_conflict` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockHolder {
    /// The contested lock key.
    pub lock_key: String,
    /// Transaction holding it.
    #[schema(value_type = String)]
    pub xid: crate::Xid,
    /// Branch holding it.
    #[schema(value_type = String)]
    pub branch_id: crate::BranchId,
    /// The holder's global status: `rolling_back` means it will not be free
    /// until its rollback finishes, so the SDK fails fast instead of retrying.
    pub status: crate::GlobalStatus,
}

impl Problem {
    /// A problem with `type` derived from the code.
    pub fn new(status: u16, code: ErrorCode, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_: format!("https://tandem.dev/problems/{}", code.as_str()),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            code,
            transaction: None,
            lock_holder: None,
        }
    }
}
