//! Callback signatures: how a participant knows a callback comes from its
//! coordinator, is about the transaction it names, and is fresh.
//!
//! Every request the coordinator sends to a participant (a branch's
//! commit or rollback, a 3PC phase, a saga action, a message's delivery or
//! back-check) carries the header
//!
//! ```text
//! Tandem-Signature: t=1733300000,v1=5d41402abc4b2a76b9719d911017c592...
//! ```
//!
//! where `t` is the time of signing (Unix seconds) and `v1` the lowercase hex
//! HMAC-SHA256, under a key both sides share, of
//!
//! ```text
//! "tandem-v1" LF t LF xid LF body
//! ```
//!
//! with `xid` the value of the `Tandem-Xid` header and `body` the request's
//! exact bytes. A participant recomputes it, compares in constant time,
//! refuses a `t` further than [`TOLERANCE_SECS`] from its clock, and remembers
//! the signatures it accepted for that long to refuse an exact replay (each
//! attempt of the coordinator is signed anew, so a retry is never a replay).
//! Several `v1=` entries may be present while keys are rotated; one valid
//! entry suffices. Any language can verify it with its HMAC library
//! (docs/security.md shows Python).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Tandem-Signature";
/// How far the signing time may be from the verifier's clock, either way.
pub const TOLERANCE_SECS: i64 = 300;
/// The shortest key accepted (256 bits).
pub const MIN_KEY_BYTES: usize = 32;

/// A shared signing key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

/// Why a key or a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key text is not hex of at least [`MIN_KEY_BYTES`] bytes.
    #[error("a callback key is hex of at least {MIN_KEY_BYTES} bytes (64 hex digits)")]
    BadKey,
    /// No `Tandem-Signature` header.
    #[error("the callback is not signed (no Tandem-Signature header)")]
    Missing,
    /// The header is not `t=…,v1=…`.
    #[error("the Tandem-Signature header is malformed")]
    Malformed,
    /// Signed too long ago or in the future.
    #[error("the callback was signed {0} s away from this participant's clock (at most {TOLERANCE_SECS} s)")]
    Stale(i64),
    /// No entry matches the body under any key.
    #[error("the callback's signature does not match its body")]
    Mismatch,
    /// Seen already.
    #[error("the callback is a replay of one already accepted")]
    Replayed,
}

impl SigningKey {
    /// A key from its hex text (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<SigningKey, SignatureError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SignatureError::BadKey)?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(SignatureError::BadKey);
        }
        Ok(SigningKey(bytes))
    }

    /// A key from raw bytes (at least [`MIN_KEY_BYTES`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<SigningKey, SignatureError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(SignatureError::BadKey);
        }
        Ok(SigningKey(bytes.to_vec()))
    }

    fn mac(&self, t: i64, xid: &str, body: &[u8]) -> Hmac<Sha256> {
        // Keys of any length are valid for HMAC; `new_from_slice` cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        mac.update(b"tandem-v1\n");
        mac.update(t.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(xid.as_bytes());
        mac.update(b"\n");
        mac.update(body);
        mac
    }

    /// The header value for a request about `xid` with `body`, signed at `t`.
    pub fn sign(&self, t: i64, xid: &str, body: &[u8]) -> String {
        let tag = self.mac(t, xid, body).finalize().into_bytes();
        format!("t={t},v1={}", hex::encode(tag))
    }
}

/// HMAC accepts keys of every length; this cannot be reached.
#[cold]
fn unreachable_hmac() -> ! {
    panic!("HMAC-SHA256 refused a key, which it never does")
}

/// A parsed `Tandem-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Signing time, Unix seconds.
    pub t: i64,
    /// The `v1` tags, decoded.
    tags: Vec<Vec<u8>>,
}

impl Signature {
    /// Parses the header's value.
    pub fn parse(value: &str) -> Result<Signature, SignatureError> {
        let mut t = None;
        let mut tags = Vec::new();
        for part in value.split(',') {
            let (k, v) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
            match k {
                "t" => t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
                "v1" => tags.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
                // Later schemes may add entries; a v1 verifier ignores them.
                _ => {}
            }
        }
        match t {
            Some(t) if !tags.is_empty() => Ok(Signature { t, tags }),
            _ => Err(SignatureError::Malformed),
        }
    }

    /// Checks the signature against `keys` for `xid` and `body` at `now`
    /// (Unix seconds); replays are the caller's to track.
    pub fn verify(&self, keys: &[SigningKey], now: i64, xid: &str, body: &[u8]) -> Result<(), SignatureError> {
        let skew = now.saturating_sub(self.t);
        if skew.abs() > TOLERANCE_SECS {
            return Err(SignatureError::Stale(skew));
        }
        let mut ok = subtle::Choice::from(0);
        for key in keys {
            let expected = key.mac(self.t, xid, body).finalize().into_bytes();
            for tag in &self.tags {
                ok |= expected.as_slice().ct_eq(tag.as_slice());
            }
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32]).expect("key")
    }

    #[test]
    fn a_signature_verifies_under_its_key_only() {
        let header = key(1).sign(1_000, "x-1", b"{\"a\":1}");
        let sig = Signature::parse(&header).expect("parse");
        assert_eq!(sig.verify(&[key(1)], 1_010, "x-1", b"{\"a\":1}"), Ok(()));
        assert_eq!(sig.verify(&[key(2)], 1_010, "x-1", b"{\"a\":1}"), Err(SignatureError::Mismatch));
        // Rotation: the old key beside the new one.
        assert_eq!(sig.verify(&[key(2), key(1)], 1_010, "x-1", b"{\"a\":1}"), Ok(()));
    }

    #[test]
    fn the_body_the_xid_and_the_time_are_all_signed() {
        let sig = Signature::parse(&key(1).sign(1_000, "x-1", b"{}")).expect("parse");
        assert_eq!(sig.verify(&[key(1)], 1_000, "x-1", b"{ }"), Err(SignatureError::Mismatch));
        assert_eq!(sig.verify(&[key(1)], 1_000, "x-2", b"{}"), Err(SignatureError::Mismatch));
        let moved = Signature { t: 1_001, ..sig.clone() };
        assert_eq!(moved.verify(&[key(1)], 1_000, "x-1", b"{}"), Err(SignatureError::Mismatch));
        assert_eq!(sig.verify(&[key(1)], 1_000 + TOLERANCE_SECS + 1, "x-1", b"{}"), Err(SignatureError::Stale(301)));
    }

    #[test]
    fn malformed_headers_and_short_keys_are_refused() {
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(Signature::parse(bad), Err(SignatureError::Malformed), "{bad:?}");
        }
        assert_eq!(SigningKey::from_hex("abcd").err(), Some(SignatureError::BadKey));
        assert!(SigningKey::from_hex(&"ab".repeat(32)).is_ok());
    }
}
