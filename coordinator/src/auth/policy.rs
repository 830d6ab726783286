//! Who may call what: the one table of the API's access rules, pure (no
//! I/O), applied by [`super::middleware`] to every matched route. A route
//! the table does not name needs `admin`: a new endpoint is closed until
//! someone decides otherwise (a test holds every route of the OpenAPI
//! document to an explicit rule).

use super::tokens::{Role, Roles};
use axum::http::Method;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a token (probes, the API document).
    Public,
    /// A token holding one of these roles.
    Roles(Roles),
}

/// Whether a client may act on any transaction or only those it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The route does not name a transaction, or every role it admits may
    /// act on any.
    Any,
    /// A `client` (without `participant` or `admin`) acts only on
    /// transactions its token began; on any other it is answered 404, as if
    /// the transaction did not exist (its existence is not disclosed).
    OwnedByClient,
}

const CLIENT: Role = Role::Client;
const PARTICIPANT: Role = Role::Participant;
const ADMIN: Role = Role::Admin;

/// The rule of `method` on the route template `route` (as axum matched it,
/// e.g. `/v1/transactions/{xid}`).
pub fn access(method: &Method, route: &str) -> (Access, Scope) {
    use Scope::{Any, OwnedByClient};
    let roles = |r: &[Role]| Access::Roles(Roles::of(r));
    match (method.as_str(), route) {
        // Public for every method, so that a wrong one is answered 405, not 401.
        (_, "/healthz" | "/readyz" | "/openapi.json") => (Access::Public, Any),
        // Clients begin and submit; what they begin is theirs.
        ("POST", "/v1/transactions" | "/v1/sagas" | "/v1/messages") => (roles(&[CLIENT, ADMIN]), Any),
        // A client's listing holds only its own transactions (the handler filters).
        ("GET", "/v1/transactions") => (roles(&[CLIENT, ADMIN]), Any),
        // Participants read outcomes in their recovery (XA, AT), of any transaction.
        ("GET", "/v1/transactions/{xid}") => (roles(&[CLIENT, PARTICIPANT, ADMIN]), OwnedByClient),
        (
            "POST",
            "/v1/transactions/{xid}/commit"
            | "/v1/transactions/{xid}/rollback"
            | "/v1/messages/{xid}/submit"
            | "/v1/messages/{xid}/abort",
        ) => (roles(&[CLIENT, ADMIN]), OwnedByClient),
        ("GET", "/v1/transactions/{xid}/timeline") => (roles(&[CLIENT, ADMIN]), OwnedByClient),
        ("POST", "/v1/transactions/{xid}/branches" | "/v1/transactions/{xid}/branches/{branch_id}/report") => {
            (roles(&[PARTICIPANT, ADMIN]), Any)
        }
        ("POST", "/v1/locks/check") => (roles(&[PARTICIPANT, ADMIN]), Any),
        // Named locks: any service with a token (clients and participants
        // alike); the owner check protects one holder from another.
        (
            "POST",
            "/v1/named-locks/{name}/acquire" | "/v1/named-locks/{name}/renew" | "/v1/named-locks/{name}/release",
        ) => (roles(&[CLIENT, PARTICIPANT, ADMIN]), Any),
        // DTM's protocol (`crate::dtm`): the same roles as their /v1 counterparts.
        (_, "/api/ping") => (Access::Public, Any),
        ("GET", "/api/dtmsvr/newGid" | "/api/dtmsvr/version") => (roles(&[CLIENT, PARTICIPANT, ADMIN]), Any),
        ("POST", "/api/dtmsvr/prepare" | "/api/dtmsvr/submit" | "/api/dtmsvr/abort") => {
            (roles(&[CLIENT, ADMIN]), OwnedByClient)
        }
        // A TCC client registers its own branches; so do participants (nested, XA).
        ("POST", "/api/dtmsvr/registerBranch" | "/api/dtmsvr/registerTccBranch" | "/api/dtmsvr/registerXaBranch") => {
            (roles(&[CLIENT, PARTICIPANT, ADMIN]), OwnedByClient)
        }
        ("GET", "/api/dtmsvr/query") => (roles(&[CLIENT, PARTICIPANT, ADMIN]), OwnedByClient),
        // A client's listing holds only its own.
        ("GET", "/api/dtmsvr/all") => (roles(&[CLIENT, ADMIN]), OwnedByClient),
        // Everything else: operators' actions and views, metrics, and any
        // route added without a rule.
        _ => (roles(&[ADMIN]), Any),
    }
}

/// Whether `held` must be limited to its own transactions on a route of
/// `scope`: a client that is not also a participant or an admin.
pub fn limited_to_own(held: Roles, scope: Scope) -> bool {
    scope == Scope::OwnedByClient && held.has(CLIENT) && !held.has(PARTICIPANT) && !held.has(ADMIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unnamed_route_needs_admin() {
        let (rule, _) = access(&Method::DELETE, "/v1/transactions/{xid}");
        assert_eq!(rule, Access::Roles(Roles::of(&[ADMIN])));
        let (rule, _) = access(&Method::GET, "/v1/something-new");
        assert_eq!(rule, Access::Roles(Roles::of(&[ADMIN])));
    }

    #[test]
    fn only_a_pure_client_is_limited_to_its_own() {
        let scope = Scope::OwnedByClient;
        assert!(limited_to_own(Roles::of(&[CLIENT]), scope));
        assert!(!limited_to_own(Roles::of(&[CLIENT, PARTICIPANT]), scope));
        assert!(!limited_to_own(Roles::of(&[ADMIN]), scope));
        assert!(!limited_to_own(Roles::of(&[CLIENT]), Scope::Any));
    }
}
