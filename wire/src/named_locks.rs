//! Named locks (`/v1/named-locks`, extension): leases with fencing tokens,
//! owner-checked renewal and release, re-entrancy and FIFO waiting.

use crate::ids::validated_text;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest lock name or owner accepted.
pub const MAX_LOCK_NAME_LEN: usize = 200;

/// The shape of a lock name or owner as a JSON Schema `pattern`.
pub const LOCK_NAME_PATTERN: &str = "^[A-Za-z0-9_.:@-]{1,200}$";

/// Shortest lease a lock may be given.
pub const MIN_LOCK_TTL_MS: u64 = 10;

/// Longest lease a lock may be given (one day: a holder renews, it does
/// not take a lease for the length of its work).
pub const MAX_LOCK_TTL_MS: u64 = 86_400_000;

/// Longest wait one acquire may ask for (ten minutes; the coordinator
/// answers a long wait in polls of at most [`MAX_LOCK_POLL_MS`], each of
/// which keeps the waiter's place).
pub const MAX_LOCK_WAIT_MS: u64 = 600_000;

/// Longest one acquire request is held open while its caller waits.
pub const MAX_LOCK_POLL_MS: u64 = 20_000;

/// Why a string is not a lock name or owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockNameError {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_LOCK_NAME_LEN`].
    #[error("is longer than {MAX_LOCK_NAME_LEN} bytes")]
    TooLong,
    /// A character outside `[A-Za-z0-9_.:@-]`.
    #[error("contains {0:?}; only ASCII letters, digits, '-', '_', '.', ':' and '@' are allowed")]
    BadChar(char),
}

fn validate(s: &str) -> Result<(), LockNameError> {
    if s.is_empty() {
        return Err(LockNameError::Empty);
    }
    if s.len() > MAX_LOCK_NAME_LEN {
        return Err(LockNameError::TooLong);
    }
    match s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))) {
        Some(c) => Err(LockNameError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! lock_id {
    ($(#[$doc:meta])* $name:ident, $example:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, pattern = "^[A-Za-z0-9_.:@-]{1,200}$", example = $example)]
        pub struct $name(String);

        validated_text!($name, LockNameError, validate, |e| format!("{} {e}", stringify!($name)));
    };
}

lock_id!(
    /// The name of a lock: what is being locked (`order:42`).
    LockName,
    "inventory:sku-42"
);
lock_id!(
    /// Who holds or wants a lock: the same owner acquiring again re-enters
    /// (its hold count grows); only the owner renews and releases. The SDK
    /// makes a random one per acquisition unless told to use, say, the xid
    /// of a global transaction (which makes the lock re-entrant across the
    /// services of that transaction).
    LockOwner,
    "orders-7f3a9c2e"
);

impl LockOwner {
    /// A fresh random owner, `prefix` then a UUIDv4 (`prefix` is cut to
    /// keep the result within [`MAX_LOCK_NAME_LEN`]; characters outside the
    /// owner alphabet become `-`).
    pub fn random(prefix: &str) -> LockOwner {
        let clean: String = prefix
            .chars()
            .take(MAX_LOCK_NAME_LEN - 40)
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@') { c } else { '-' })
            .collect();
        let id = uuid::Uuid::new_v4().simple().to_string();
        LockOwner(if clean.is_empty() { id } else { format!("{clean}-{id}") })
    }
}

/// `POST /v1/named-locks/{name}/acquire`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AcquireLockRequest {
    /// Who acquires. The owner that holds the lock acquiring again re-enters.
    pub owner: LockOwner,
    /// The lease: the lock is free this long after the grant (or the last
    /// renewal) unless renewed. 10 to 86400000.
    #[serde(deserialize_with = "crate::de::integer")]
    #[schema(minimum = 10, maximum = 86400000)]
    pub ttl_ms: u64,
    /// How long the caller is prepared to wait in all, 0 to 600000 (0: do
    /// not queue; answer `lock_held` at once). A request is held open at
    /// most 20000 ms; a longer wait is answered 202 (still waiting, place
    /// kept) and the caller asks again with what remains of its wait.
    #[serde(default, deserialize_with = "crate::de::integer")]
    #[schema(minimum = 0, maximum = 600000)]
    pub wait_ms: u64,
}

/// `POST /v1/named-locks/{name}/renew`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RenewLockRequest {
    /// The holder.
    pub owner: LockOwner,
    /// The new lease from now, 10 to 86400000.
    #[serde(deserialize_with = "crate::de::integer")]
    #[schema(minimum = 10, maximum = 86400000)]
    pub ttl_ms: u64,
}

/// `POST /v1/named-locks/{name}/release`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseLockRequest {
    /// The holder.
    pub owner: LockOwner,
}

/// A lock held: the answer to an acquire that got it (200) and to a renew.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LockGrant {
    /// The lock.
    pub name: LockName,
    /// Its holder.
    pub owner: LockOwner,
    /// The fencing token of this grant: strictly greater than every token
    /// any earlier grant of this name carried. A re-entry keeps the token.
    /// A resource protected by the lock refuses writes that carry a token
    /// lower than the highest it has seen.
    pub token: u64,
    /// How many times the owner holds it (re-entries).
    pub holds: u32,
    /// The lease as granted or renewed, in milliseconds from the grant.
    pub ttl_ms: u64,
    /// When the lease ends unless renewed (the coordinator's database clock).
    pub expires_at: DateTime<Utc>,
    /// What was left of the lease when the coordinator answered, in
    /// milliseconds, measured on the database's clock from a moment after
    /// the request was sent: the time the client sent its request plus
    /// this is, on the client's own clock, a moment the lease surely
    /// lasts until (barring clock drift). A grant handed over while the
    /// client was between two requests has less than `ttl_ms` left.
    pub remaining_ms: u64,
}

/// 202 to an acquire: not granted yet, the caller keeps its place in the
/// queue if it asks again within `keep_place_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LockWaiting {
    /// The lock.
    pub name: LockName,
    /// The waiter.
    pub owner: LockOwner,
    /// Its place in the queue (1: next).
    pub position: u32,
    /// How long the place is kept without a new acquire from this owner.
    pub keep_place_ms: u64,
}

/// The answer to a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LockReleased {
    /// The lock.
    pub name: LockName,
    /// Holds the owner still has (0: the lock is free or granted to the next waiter).
    pub holds: u32,
}

/// A waiter in [`NamedLockInfo::waiters`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LockWaiterInfo {
    /// Who waits.
    pub owner: LockOwner,
    /// The lease it asked for.
    pub ttl_ms: u64,
    /// When it joined the queue.
    pub since: DateTime<Utc>,
    /// Until when its place is kept (it asks again before).
    pub keep_until: DateTime<Utc>,
}

/// A named lock held or waited for, for operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NamedLockInfo {
    /// The lock.
    pub name: LockName,
    /// Its holder, if it is held (an expired lease counts as not held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<LockOwner>,
    /// The holder's hold count.
    pub holds: u32,
    /// The current or last grant's fencing token (0: never granted).
    pub token: u64,
    /// When the current grant was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<DateTime<Utc>>,
    /// When the holder's lease ends unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The queue, first to be granted first.
    pub waiters: Vec<LockWaiterInfo>,
}

/// `GET /v1/named-locks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NamedLockList {
    /// Locks held or waited for, by name.
    pub locks: Vec<NamedLockInfo>,
    /// How many locks are held or waited for in all.
    pub total: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_owners_are_validated() {
        assert!(LockName::parse("order:42").is_ok());
        assert!(LockName::parse("a@b.c-d_e").is_ok());
        assert_eq!(LockName::parse(""), Err(LockNameError::Empty));
        assert_eq!(LockName::parse("a/b"), Err(LockNameError::BadChar('/')));
        assert_eq!(LockName::parse("x".repeat(201)), Err(LockNameError::TooLong));
        assert!(serde_json::from_str::<LockOwner>("\"has space\"").is_err());
    }

    #[test]
    fn random_owners_are_valid_and_distinct() {
        let a = LockOwner::random("svc/1 x");
        let b = LockOwner::random("svc/1 x");
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("svc-1-x-"));
        assert!(LockOwner::parse(a.as_str()).is_ok());
        assert!(LockOwner::parse(LockOwner::random(&"p".repeat(500)).as_str()).is_ok());
    }
}
