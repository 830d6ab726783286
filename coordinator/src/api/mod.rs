//! The HTTP API: routes, middleware, and the mapping of errors to problem+json.

pub mod error;
pub mod extract;
pub mod locks;
pub mod openapi;
pub mod ops;
pub mod transactions;

use crate::Coordinator;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::{get, post};
use axum::Router;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Builds the router with its middleware.
pub fn router(coordinator: Coordinator, max_body_bytes: usize, request_timeout: Duration) -> Router {
    let routes = Router::new()
        .route("/v1/transactions", post(transactions::begin).get(transactions::list))
        .route("/v1/transactions/{xid}", get(transactions::get))
        .route("/v1/transactions/{xid}/branches", post(transactions::register))
        .route("/v1/transactions/{xid}/branches/{branch_id}/report", post(transactions::report))
        .route("/v1/transactions/{xid}/commit", post(transactions::commit))
        .route("/v1/transactions/{xid}/rollback", post(transactions::rollback))
        .route("/v1/locks/check", post(locks::check))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .with_state(coordinator);
    routes.layer(DefaultBodyLimit::max(max_body_bytes)).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                tracing::debug_span!("request", method = %req.method(), uri = %req.uri(), request_id)
            }))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(axum::middleware::from_fn(error::problem_for_bare_errors))
            .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, request_timeout)),
    )
}
