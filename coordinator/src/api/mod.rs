//! The HTTP API: routes, middleware, and the mapping of errors to problem+json.

pub mod error;
pub mod extract;
pub mod locks;
pub mod messages;
pub mod named_locks;
pub mod openapi;
pub mod operator;
pub mod ops;
pub mod sagas;
pub mod transactions;

use crate::auth::Auth;
use crate::Coordinator;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::{Extension, Router};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Every route, each documented by its handler's `#[utoipa::path]`: the
/// router and the OpenAPI document are built from this one list.
fn routes() -> OpenApiRouter<Coordinator> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(transactions::begin, transactions::list))
        .routes(routes!(transactions::get))
        .routes(routes!(transactions::register))
        .routes(routes!(transactions::report))
        .routes(routes!(transactions::commit))
        .routes(routes!(transactions::rollback))
        .routes(routes!(sagas::submit))
        .routes(routes!(messages::prepare))
        .routes(routes!(messages::submit))
        .routes(routes!(messages::abort))
        .routes(routes!(locks::check))
        .routes(routes!(named_locks::acquire))
        .routes(routes!(named_locks::renew))
        .routes(routes!(named_locks::release))
        .routes(routes!(named_locks::list))
        .routes(routes!(operator::timeline))
        .routes(routes!(operator::retry))
        .routes(routes!(operator::stop))
        .routes(routes!(operator::overview))
        .routes(routes!(operator::locks))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .merge(dtm_routes())
}

/// DTM's protocol (`crate::dtm`), served on the main listener and on the
/// DTM listener.
fn dtm_routes() -> OpenApiRouter<Coordinator> {
    use crate::dtm::api as dtm;
    OpenApiRouter::new()
        .routes(routes!(dtm::new_gid))
        .routes(routes!(dtm::version))
        .routes(routes!(dtm::prepare))
        .routes(routes!(dtm::submit))
        .routes(routes!(dtm::abort))
        .routes(routes!(dtm::force_stop))
        .routes(routes!(dtm::register_branch))
        .routes(routes!(dtm::register_tcc_branch))
        .routes(routes!(dtm::register_xa_branch))
        .routes(routes!(dtm::query))
        .routes(routes!(dtm::all))
        .routes(routes!(dtm::ping, dtm::ping_post))
}

/// How the router serves.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Longest request.
    pub request_timeout: Duration,
    /// Whether the console's cookies are `Secure` (served over TLS).
    pub secure_cookies: bool,
}

/// Builds the router with its middleware. Every API route passes the
/// authorization layer ([`crate::auth::middleware::authorize`]); the
/// console checks its own sessions.
pub fn router(coordinator: Coordinator, auth: Arc<Auth>, serving: Serving) -> Router {
    let (routes, doc) = routes().split_for_parts();
    let doc = openapi::document(doc, &openapi::Limits::of(&coordinator));
    // Serialized once: every request for it gets the same bytes.
    let doc = ops::OpenApiDocument(Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()));
    let routes = routes
        .route_layer(axum::middleware::from_fn_with_state(auth.clone(), crate::auth::middleware::authorize))
        .layer(Extension(doc))
        .with_state(coordinator.clone());
    // Not in the OpenAPI document: the console's pages are HTML, and so are its errors.
    let console = crate::console::router()
        .layer(Extension(crate::console::Access::new(auth, serving.secure_cookies)))
        .with_state(coordinator);
    let routes = routes.merge(console);
    with_layers(routes, serving)
}

/// The DTM listener's router (`--dtm-listen`): DTM's routes only, through
/// the same authorization, with `auth`'s grant for requests without a token.
pub fn dtm_router(coordinator: Coordinator, auth: Arc<Auth>, serving: Serving) -> Router {
    let (routes, _) = dtm_routes().split_for_parts();
    let routes = routes
        .route_layer(axum::middleware::from_fn_with_state(auth, crate::auth::middleware::authorize))
        .with_state(coordinator);
    with_layers(routes, serving)
}

/// The middleware every listener's routes pass: body limit, request ids,
/// tracing, problem+json for bare errors, the request timeout.
fn with_layers(routes: Router, serving: Serving) -> Router {
    routes.layer(DefaultBodyLimit::max(serving.max_body_bytes)).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                tracing::debug_span!("request", method = %req.method(), uri = %req.uri(), request_id)
            }))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(axum::middleware::from_fn(error::problem_for_bare_errors))
            .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, serving.request_timeout)),
    )
}
