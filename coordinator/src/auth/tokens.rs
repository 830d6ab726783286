//! Bearer tokens: how they are configured, stored (hashed) and recognised
//! (in constant time).
//!
//! A token is `tdm_` and 64 hex digits of randomness (`tandem token new`).
//! The coordinator never holds a token itself, only its SHA-256: an entry of
//! the configuration is one line
//!
//! ```text
//! ROLES NAME sha256:HEX [rate=N]
//! ```
//!
//! where `ROLES` is one or more of `client`, `participant`, `admin` joined by
//! commas, `NAME` names the holder (it is recorded as `began_by` on the
//! transactions the token begins; a client reads only those), and `rate` is
//! the token's request rate limit per second (default
//! [`DEFAULT_RATE_PER_SECOND`]). Blank lines and lines starting with `#` are
//! ignored. SHA-256 (not a slow password hash) is enough for a token: it
//! carries 256 bits of randomness, there is nothing to guess.

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Requests per second a token may make unless its entry says otherwise.
pub const DEFAULT_RATE_PER_SECOND: u32 = 2_000;
/// The prefix of every token `tandem token new` makes (so that secret
/// scanners can recognise one).
pub const TOKEN_PREFIX: &str = "tdm_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Begins, commits and rolls back transactions, and reads those it began.
    Client,
    /// Registers and reports branches; reads any transaction (a participant's
    /// recovery asks for outcomes); checks AT locks.
    Participant,
    /// Everything: listings of all transactions, the operator's actions, the
    /// console, metrics.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Client, Role::Participant, Role::Admin];

    /// The role's name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Participant => "participant",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A set of roles (a token may hold several: a service that begins
/// transactions and is also a participant in them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    /// The set of `roles`.
    pub fn of(roles: &[Role]) -> Roles {
        Roles(roles.iter().fold(0, |bits, r| bits | Roles::bit(*r)))
    }

    fn bit(role: Role) -> u8 {
        match role {
            Role::Client => 1,
            Role::Participant => 2,
            Role::Admin => 4,
        }
    }

    /// Whether `role` is in the set.
    pub fn has(self, role: Role) -> bool {
        self.0 & Roles::bit(role) != 0
    }

    /// Whether the set shares a role with `other`.
    pub fn intersects(self, other: Roles) -> bool {
        self.0 & other.0 != 0
    }

    /// The roles, in order, joined by commas.
    pub fn names(self) -> String {
        Role::ALL.into_iter().filter(|r| self.has(*r)).map(Role::as_str).collect::<Vec<_>>().join(",")
    }
}

/// Why the token configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    /// A line that is not an entry.
    #[error("token entry {line}: {reason} (expected `ROLES NAME sha256:HEX [rate=N]`)")]
    Entry {
        /// 1-based line (or `;`-separated item) number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The same hash twice: two names for one token.
    #[error("token entries {0} and {1} have the same hash")]
    Duplicate(usize, usize),
    /// The file could not be read.
    #[error("--tokens-file {path}: {source}")]
    File {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The SHA-256 of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 32 bytes from the operating system's generator, as hex: every secret
/// the coordinator makes (tokens, session ids, signing keys).
pub fn random_hex() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new random token and its configuration entry for `roles` and `name`.
pub fn generate(roles: Roles, name: &str) -> (String, String) {
    let token = format!("{TOKEN_PREFIX}{}", random_hex());
    let entry = format!("{} {name} sha256:{}", roles.names(), hex::encode(hash(&token)));
    (token, entry)
}

/// [`generate`] for roles and a name as typed on the command line; the
/// entry is checked as the server will read it.
pub fn generate_for(roles: &str, name: &str) -> Result<(String, String), TokenConfigError> {
    let mut set = Vec::new();
    for r in roles.split(',') {
        set.push(Role::parse(r.trim()).ok_or_else(|| TokenConfigError::Entry {
            line: 1,
            reason: format!("unknown role {r:?} (client, participant, admin)"),
        })?);
    }
    let (token, entry) = generate(Roles::of(&set), name);
    parse_entry(&entry).map_err(|reason| TokenConfigError::Entry { line: 1, reason })?;
    Ok((token, entry))
}

/// One configured token.
pub struct Entry {
    /// What it may do.
    pub roles: Roles,
    /// Its holder's name.
    pub name: Arc<str>,
    /// SHA-256 of the token.
    hash: [u8; 32],
    /// Its rate limit.
    limiter: RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("roles", &self.roles.names()).field("name", &self.name).finish_non_exhaustive()
    }
}

impl Entry {
    /// The identity a listener grants requests without a token (the DTM
    /// listener's `--dtm-grant`): `spec` is `ROLES [rate=N]`, the holder's
    /// name `name`. It matches no token.
    pub fn grant(spec: &str, name: &str) -> Result<Entry, TokenConfigError> {
        let mut parts = spec.split_whitespace();
        let roles = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        let line = format!("{roles} {name} sha256:{} {}", "0".repeat(64), rest.join(" "));
        parse_entry(&line).map_err(|reason| TokenConfigError::Entry { line: 1, reason })
    }

    /// Takes one request from the token's budget, or says how long to wait.
    pub fn admit(&self) -> Result<(), Duration> {
        self.limiter.check().map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The configured tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    /// Every entry; looked up by comparing hashes in constant time.
    entries: Vec<Entry>,
}

impl Tokens {
    /// Parses entries from text: lines, or items separated by `;` (the
    /// environment variable's form).
    pub fn parse(text: &str) -> Result<Tokens, TokenConfigError> {
        let mut entries: Vec<(usize, Entry)> = Vec::new();
        for (i, raw) in text.split(['\n', ';']).enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = parse_entry(line).map_err(|reason| TokenConfigError::Entry { line: i + 1, reason })?;
            if let Some((j, _)) = entries.iter().find(|(_, e)| e.hash == entry.hash) {
                return Err(TokenConfigError::Duplicate(*j, i + 1));
            }
            entries.push((i + 1, entry));
        }
        Ok(Tokens { entries: entries.into_iter().map(|(_, e)| e).collect() })
    }

    /// Reads and parses a tokens file.
    pub fn read_file(path: &str) -> Result<Tokens, TokenConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenConfigError::File { path: path.to_owned(), source })?;
        Tokens::parse(&text)
    }

    /// Adds the entries of `other`.
    pub fn extend(&mut self, other: Tokens) -> Result<(), TokenConfigError> {
        for e in other.entries {
            if let Some(i) = self.entries.iter().position(|mine| mine.hash == e.hash) {
                return Err(TokenConfigError::Duplicate(i + 1, self.entries.len() + 1));
            }
            self.entries.push(e);
        }
        Ok(())
    }

    /// Whether no token is configured (then nothing authenticates).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry of `token`, if it is configured. Every entry's hash is
    /// compared, whatever matched, so the time taken says nothing about
    /// which (or whether one) did.
    pub fn find(&self, token: &str) -> Option<&Entry> {
        let presented = hash(token);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        found
    }
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let mut parts = line.split_whitespace();
    let (Some(roles), Some(name), Some(hash_text)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("too few fields".into());
    };
    let mut set = Vec::new();
    for r in roles.split(',') {
        set.push(Role::parse(r).ok_or_else(|| format!("unknown role {r:?} (client, participant, admin)"))?);
    }
    if name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(format!("name {name:?}: 1 to 128 of A-Z a-z 0-9 - _ . @"));
    }
    let hex_text = hash_text.strip_prefix("sha256:").ok_or("the hash must start with sha256:")?;
    let bytes = hex::decode(hex_text).map_err(|_| "the hash is not hex".to_owned())?;
    let hash: [u8; 32] = bytes.try_into().map_err(|_| "the hash is not 32 bytes".to_owned())?;
    let mut rate = DEFAULT_RATE_PER_SECOND;
    for extra in parts {
        match extra.split_once('=') {
            Some(("rate", n)) => rate = n.parse().map_err(|_| format!("rate {n:?} is not a number"))?,
            _ => return Err(format!("unknown field {extra:?}")),
        }
    }
    let rate = NonZeroU32::new(rate).ok_or("rate must be at least 1")?;
    // A burst of one second's worth: a client that was idle may catch up.
    let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(rate));
    Ok(Entry { roles: Roles::of(&set), name: Arc::from(name), hash, limiter })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_found_by_its_entry_and_no_other_is() {
        let (token, entry) = generate(Roles::of(&[Role::Client, Role::Participant]), "shop");
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == 4 + 64);
        let tokens = Tokens::parse(&format!("# ops\n\n{entry} rate=5\n")).expect("parse");
        let found = tokens.find(&token).expect("found");
        assert_eq!(&*found.name, "shop");
        assert!(found.roles.has(Role::Client) && found.roles.has(Role::Participant) && !found.roles.has(Role::Admin));
        assert!(tokens.find("tdm_wrong").is_none());
        assert!(tokens.find(&token.to_uppercase()).is_none());
    }

    #[test]
    fn the_rate_limit_refuses_past_the_burst_and_says_how_long_to_wait() {
        let (token, entry) = generate(Roles::of(&[Role::Client]), "c");
        let tokens = Tokens::parse(&format!("{entry} rate=3")).expect("parse");
        let e = tokens.find(&token).expect("found");
        assert!((0..3).all(|_| e.admit().is_ok()));
        let wait = e.admit().expect_err("limited");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(334), "{wait:?}");
    }

    #[test]
    fn bad_entries_are_refused_with_their_line() {
        let (_, entry) = generate(Roles::of(&[Role::Admin]), "ops");
        for (text, needle) in [
            ("admin ops", "too few"),
            ("root ops sha256:00", "unknown role"),
            ("admin o/ps sha256:00", "name"),
            ("admin ops md5:00", "sha256:"),
            ("admin ops sha256:00", "32 bytes"),
            (&format!("{entry} rate=0"), "at least 1"),
            (&format!("{entry} colour=red"), "unknown field"),
        ] {
            let err = Tokens::parse(&format!("\n{text}")).expect_err(text).to_string();
            assert!(err.contains("entry 2") && err.contains(needle), "{text}: {err}");
        }
        assert!(matches!(Tokens::parse(&format!("{entry};{entry}")), Err(TokenConfigError::Duplicate(1, 2))));
    }
}
