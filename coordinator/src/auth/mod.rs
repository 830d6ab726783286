//! Authentication and authorization of the API and the console.
//!
//! - [`tokens`]: bearer tokens with roles, configured hashed, found in
//!   constant time, each with its rate limit.
//! - [`policy`]: the one table of which role may call which route (pure).
//! - [`middleware`]: applies both to every request of the API, and puts the
//!   [`Caller`] into the request for the handlers that scope by owner.
//! - [`session`]: the console's login with an admin token (a cookie naming a
//!   session stored, hashed, in the database, so that any coordinator
//!   process behind a load balancer knows it; logout deletes it).
//!
//! **With no token configured nothing authenticates, and then the
//! coordinator serves only on a loopback address** (or on any with
//! `--insecure-no-auth`, logged at every start): see [`Auth::check_listen`].

pub mod middleware;
pub mod policy;
pub mod session;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
pub use tokens::{Role, Roles, Tokens};

/// How the coordinator authenticates.
#[derive(Debug)]
pub struct Auth {
    /// The configured tokens; empty: authentication is off.
    tokens: Tokens,
    /// Who a request without a token is on this listener (the DTM
    /// listener's `--dtm-grant`); none: it needs a token.
    grant: Option<Arc<tokens::Entry>>,
}

/// Why the coordinator refuses to serve with this configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthStartError {
    /// No token and a non-loopback address, without `--insecure-no-auth`.
    #[error(
        "no API token is configured (--tokens-file, TANDEM_TOKENS) and {0} is not a loopback address: anyone who \
         can reach it could begin, decide and read every transaction. Configure tokens (`tandem token new`), listen \
         on 127.0.0.1, or pass --insecure-no-auth if a network boundary you trust does the job"
    )]
    OpenOnNetwork(SocketAddr),
    /// Tokens configured, but callbacks would go out unsigned.
    #[error(
        "API tokens are configured but no callback signing key (--callback-key-file, TANDEM_CALLBACK_KEY): \
         participants could not tell the coordinator's callbacks from anyone else's. Make one with \
         `tandem token key`"
    )]
    UnsignedCallbacks,
}

/// Whether a deployment without tokens was explicitly allowed off loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAuth {
    /// Only on loopback (the default).
    LoopbackOnly,
    /// `--insecure-no-auth`: anywhere.
    Allowed,
}

impl Auth {
    /// Authentication with `tokens` (none: off).
    pub fn new(tokens: Tokens) -> Auth {
        Auth { tokens, grant: None }
    }

    /// The same tokens, on a listener that grants `grant` to requests without one.
    pub fn with_grant(tokens: Tokens, grant: Option<tokens::Entry>) -> Auth {
        Auth { tokens, grant: grant.map(Arc::new) }
    }

    /// The identity of requests without a token, if this listener grants one.
    pub fn grant(&self) -> Option<&tokens::Entry> {
        self.grant.as_deref()
    }

    /// Whether requests are served without a token (none configured).
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The configured tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Refuses a configuration that would expose an unauthenticated API,
    /// or send unsigned callbacks from an authenticated one; logs what it
    /// serves with.
    pub fn check_listen(&self, addr: SocketAddr, no_auth: NoAuth, signing: bool) -> Result<(), AuthStartError> {
        if !self.is_open() {
            if !signing {
                return Err(AuthStartError::UnsignedCallbacks);
            }
            tracing::info!(tokens = self.tokens.len(), "API authentication on");
            return Ok(());
        }
        if addr.ip().is_loopback() {
            tracing::warn!(%addr, "no API token configured: serving WITHOUT authentication, on loopback only");
            return Ok(());
        }
        match no_auth {
            NoAuth::Allowed => {
                tracing::warn!(%addr, "--insecure-no-auth: serving WITHOUT authentication on a network address");
                Ok(())
            }
            NoAuth::LoopbackOnly => Err(AuthStartError::OpenOnNetwork(addr)),
        }
    }
}

/// Who made a request, as the handlers see it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off: anyone may do anything.
    Anyone,
    /// A configured token.
    Token {
        /// Its roles.
        roles: Roles,
        /// Its holder's name.
        name: Arc<str>,
        /// Whether this route limits it to the transactions it began.
        own_only: bool,
    },
}

impl Caller {
    /// The name recorded as `began_by` on what this caller begins.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Anyone => None,
            Caller::Token { name, .. } => Some(name),
        }
    }

    /// When the caller may act only on the transactions it began: the name
    /// they must carry.
    pub fn only_own(&self) -> Option<&str> {
        match self {
            Caller::Token { name, own_only: true, .. } => Some(name),
            _ => None,
        }
    }

    /// Whether the caller may see every transaction in a listing.
    pub fn lists_all(&self) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token { roles, .. } => roles.has(Role::Admin),
        }
    }
}
