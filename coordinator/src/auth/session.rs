//! The console's sessions: an operator logs in with an admin token once,
//! and the browser then carries a cookie naming the session.
//!
//! The cookie holds 256 random bits; the database holds only their
//! SHA-256, the token's name and the expiry ([`SESSION_TTL`]), so any
//! coordinator process serving the same database knows the session, and a
//! copy of the table logs nobody in. The cookie is `HttpOnly` (no script
//! reads it), `SameSite=Strict` (no other site's page sends it, which with
//! the console's same-origin check on every POST is its CSRF defence),
//! `Path=/console`, and `Secure` when the coordinator serves TLS.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The cookie's name.
pub const COOKIE: &str = "tandem_session";
/// How long a session lasts after its login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// A new session id (hex of 32 random bytes) and its hash for the database.
pub fn new_id() -> (String, Vec<u8>) {
    let id = super::tokens::random_hex();
    let hash = id_hash(&id);
    (id, hash)
}

/// The hash the database keeps of a session id.
pub fn id_hash(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// The session id the request's cookies carry, if any (only one of the
/// right shape: 64 hex digits).
pub fn from_cookies(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|(_, value)| value.to_owned())
}

/// Whether cookies are marked `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP (loopback, or TLS ended in front of the coordinator).
    Plain,
    /// The coordinator serves TLS itself.
    Tls,
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(id: &str, transport: Transport) -> String {
    let secure = if transport == Transport::Tls { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}", SESSION_TTL.as_secs())
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie(transport: Transport) -> String {
    let secure = if transport == Transport::Tls { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_cookie_is_found_among_others_and_only_in_its_shape() {
        let (id, hash) = new_id();
        assert_eq!(hash, id_hash(&id));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_str(&format!("a=1; {COOKIE}={id}; b=2")).expect("header"));
        assert_eq!(from_cookies(&h), Some(id.clone()));
        let mut bad = HeaderMap::new();
        bad.append(header::COOKIE, HeaderValue::from_static("tandem_session=not-hex"));
        assert_eq!(from_cookies(&bad), None);
        assert!(set_cookie(&id, Transport::Tls).ends_with("; Secure"));
        assert!(set_cookie(&id, Transport::Plain).contains("HttpOnly; SameSite=Strict"));
        assert!(clear_cookie(Transport::Plain).contains("Max-Age=0"));
    }
}
