//! Verifying the coordinator's callbacks (`tandem_wire::signature`).
//!
//! A participant given the coordinator's callback key (with
//! [`crate::TandemClient::with_callback_key`], or the saga and consumer
//! builders' `callback_key`) refuses, before its handler runs, every
//! callback that is unsigned, signed with another key, about another xid or
//! body than it carries, signed more than five minutes from this clock, or
//! an exact replay of one it accepted: 401 `invalid_signature`, which the
//! coordinator retries (so a key rotated on one side only shows up in the
//! branch's `last_error`, and heals when the keys agree). Without a key the
//! participant accepts callbacks as they come, and says so once when its
//! router is built.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tandem_wire::signature::{Signature, SignatureError, SigningKey, SIGNATURE_HEADER, TOLERANCE_SECS};
use tandem_wire::{ErrorCode, Problem, PROBLEM_CONTENT_TYPE, XID_HEADER};

/// Largest callback body read for verification (the coordinator's own
/// request bodies are far smaller).
const MAX_BODY: usize = 4 << 20;

/// The callback keys a participant accepts, and the signatures it has
/// already accepted (for replays). Cheap to clone; clones share the replay
/// memory.
#[derive(Clone, Default)]
pub struct Verifier {
    /// The keys (several while one is rotated); none: callbacks unverified.
    keys: Arc<Vec<SigningKey>>,
    /// Hashes of the signatures accepted within the tolerance window.
    seen: Arc<Mutex<Seen>>,
    /// Whether the absence of keys was logged.
    announced: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier accepting callbacks signed with any of `keys`.
    pub fn new(keys: Vec<SigningKey>) -> Verifier {
        Verifier { keys: Arc::new(keys), ..Verifier::default() }
    }

    /// Whether callbacks are verified.
    pub fn is_on(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks one callback's signature header, xid and body at `now`; an
    /// accepted one is remembered, so the same one again is a replay.
    pub fn check(&self, header: Option<&str>, xid: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let sig = Signature::parse(header)?;
        sig.verify(&self.keys, now, xid, body)?;
        let id: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            // A panic elsewhere while holding it leaves a map still valid.
            Err(poisoned) => poisoned.into_inner(),
        };
        if !seen.insert(id, now) {
            return Err(SignatureError::Replayed);
        }
        Ok(())
    }

    /// Logs, once per verifier, that callbacks are not verified.
    pub(crate) fn announce(&self, what: &str) {
        if !self.is_on() && !self.announced.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                participant = what,
                "no callback key configured: callbacks are accepted unverified (see TandemClient::with_callback_key)"
            );
        }
    }
}

/// The signatures accepted lately: a set for lookups, and the same
/// entries in the order accepted, so that expiring the old ones costs
/// nothing per callback beyond the ones it removes.
#[derive(Default)]
struct Seen {
    /// Accepted signature hashes.
    set: HashSet<[u8; 32]>,
    /// The same, with when each was accepted, oldest first.
    order: VecDeque<(i64, [u8; 32])>,
}

impl Seen {
    /// Forgets what was accepted more than the tolerance before `now`, then
    /// records `id`; `false` if it was there already (a replay).
    fn insert(&mut self, id: [u8; 32], now: i64) -> bool {
        while let Some((at, old)) = self.order.front().copied() {
            // Twice the tolerance: a signature accepted at `at` may carry a
            // time up to the tolerance after it, and stays valid that long.
            if now.saturating_sub(at) <= 2 * TOLERANCE_SECS {
                break;
            }
            self.order.pop_front();
            self.set.remove(&old);
        }
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        true
    }
}

/// The middleware of every participant router: verifies, then passes the
/// request on with its body intact.
pub(crate) async fn verify(State(v): State<Verifier>, req: Request, next: Next) -> Response {
    if !v.is_on() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the callback body is too large or unreadable"),
    };
    let header = parts.headers.get(SIGNATURE_HEADER).and_then(|h| h.to_str().ok());
    let xid = parts.headers.get(XID_HEADER).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if let Err(e) = v.check(header, xid, &bytes, chrono::Utc::now().timestamp()) {
        tracing::warn!(%xid, error = %e, "callback refused: bad signature");
        return refuse(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn refuse(status: StatusCode, detail: &str) -> Response {
    let code =
        if status == StatusCode::UNAUTHORIZED { ErrorCode::InvalidSignature } else { ErrorCode::PayloadTooLarge };
    let problem = Problem::new(status.as_u16(), code, status.canonical_reason().unwrap_or("Error"), detail);
    (status, [(axum::http::header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)], axum::Json(problem)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_stale_and_replayed_callbacks_are_refused() {
        let key = SigningKey::from_bytes(&[7; 32]).expect("key");
        let other = SigningKey::from_bytes(&[8; 32]).expect("key");
        let v = Verifier::new(vec![key.clone()]);
        let body = br#"{"xid":"x-1"}"#;
        let good = key.sign(1_000, "x-1", body);
        assert_eq!(v.check(None, "x-1", body, 1_000), Err(SignatureError::Missing));
        assert_eq!(v.check(Some(&other.sign(1_000, "x-1", body)), "x-1", body, 1_000), Err(SignatureError::Mismatch));
        assert_eq!(v.check(Some(&good), "x-2", body, 1_000), Err(SignatureError::Mismatch));
        assert_eq!(v.check(Some(&good), "x-1", body, 2_000), Err(SignatureError::Stale(1_000)));
        assert_eq!(v.check(Some(&good), "x-1", body, 1_001), Ok(()));
        assert_eq!(v.check(Some(&good), "x-1", body, 1_002), Err(SignatureError::Replayed));
        // A retry is signed anew: accepted.
        assert_eq!(v.check(Some(&key.sign(1_003, "x-1", body)), "x-1", body, 1_003), Ok(()));
        // What was accepted long ago is forgotten (and its time refuses it anyway).
        let late = 1_003 + 2 * TOLERANCE_SECS + 1;
        assert_eq!(v.check(Some(&key.sign(late, "x-1", body)), "x-1", body, late), Ok(()));
        let seen = v.seen.lock().expect("lock");
        assert_eq!((seen.set.len(), seen.order.len()), (1, 1), "the two old ones expired");
    }
}
