//! The API's gate: every matched route passes through [`authorize`], which
//! reads the bearer token, finds it, takes one request from its rate limit,
//! checks the route's rule ([`super::policy`]) and hands the handlers the
//! [`Caller`]. Its refusals are problems: 401 `unauthorized` (with
//! `WWW-Authenticate: Bearer`), 403 `forbidden`, 429 `rate_limited` (with
//! `Retry-After`).

use super::policy::{self, Access};
use super::{Auth, Caller};
use crate::api::error::ApiError;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tandem_wire::ErrorCode;

/// The bearer token of a request, if it sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

fn unauthorized(detail: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, detail).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tandem\""));
    resp
}

/// Authenticates and authorizes one request of the API (see the module doc).
pub async fn authorize(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let route = route.as_deref().unwrap_or_else(|| req.uri().path());
    let (access, scope) = policy::access(req.method(), route);
    let required = match access {
        Access::Public => {
            req.extensions_mut().insert(Caller::Anyone);
            return next.run(req).await;
        }
        Access::Roles(roles) => roles,
    };
    if auth.is_open() {
        req.extensions_mut().insert(Caller::Anyone);
        return next.run(req).await;
    }
    let entry = match (bearer(req.headers()), auth.grant()) {
        (Some(token), _) => match auth.tokens().find(token) {
            Some(entry) => entry,
            None => return unauthorized("the bearer token is not one this coordinator knows"),
        },
        // A listener that grants requests without a token (the DTM listener).
        (None, Some(grant)) => grant,
        (None, None) => return unauthorized("this endpoint needs a bearer token (Authorization: Bearer …)"),
    };
    if let Err(wait) = entry.admit() {
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!("the token {:?} is over its request rate; retry after the Retry-After seconds", &*entry.name),
        )
        .into_response();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return resp;
    }
    if !entry.roles.intersects(required) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "the token {:?} has the role {}; {} {route} needs {}",
                &*entry.name,
                entry.roles.names(),
                req.method(),
                required.names().replace(',', " or ")
            ),
        )
        .into_response();
    }
    let caller = Caller::Token {
        roles: entry.roles,
        name: entry.name.clone(),
        own_only: policy::limited_to_own(entry.roles, scope),
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Caller, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            // Every API route passes through `authorize`; a handler without
            // it is a bug of the router, not of the request.
            tracing::error!(uri = %parts.uri, "a handler ran without the authorization layer");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_authorization_only() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer tdm_abc"));
        assert_eq!(bearer(&h), Some("tdm_abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  tdm_abc "));
        assert_eq!(bearer(&h), Some("tdm_abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
