//! Operational endpoints: liveness, readiness, metrics, OpenAPI.

use super::error::ApiError;
use crate::transaction::statuses::IN_FLIGHT;
use crate::Coordinator;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Extension;
use tandem_wire::{ErrorCode, Problem};

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers and migrations are applied.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", content_type = "text/plain"),
        (status = 503, description = "`unavailable`: the database is unreachable or not migrated", body = Problem,
            content_type = "application/problem+json")))]
pub async fn readyz(State(c): State<Coordinator>) -> Result<&'static str, ApiError> {
    match c.store().ready().await {
        Ok(true) => Ok("ready"),
        Ok(false) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "migrations not applied"))
        }
        Err(e) => {
            // Handled (and logged) here; callers get no database internals.
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "database unreachable"))
        }
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(c): State<Coordinator>) -> impl IntoResponse {
    let m = c.metrics();
    match c.store().in_flight_counts().await {
        Ok(counts) => {
            m.in_flight.reset();
            // Every in-flight status is reported, 0 when none is in it.
            for s in IN_FLIGHT.iter() {
                m.in_flight.with_label_values(&[s.as_str()]).set(0);
            }
            for (status, n) in counts {
                m.in_flight.with_label_values(&[status.as_str()]).set(n);
            }
        }
        // Handled here: the gauge keeps its last value, the rest still renders.
        Err(e) => tracing::warn!(error = %e, "could not count in-flight transactions"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}

/// The document `/openapi.json` serves, built and serialized once when the
/// router is.
#[derive(Debug, Clone)]
pub struct OpenApiDocument(pub axum::body::Bytes);

/// This API as OpenAPI 3.1.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
pub async fn openapi(Extension(doc): Extension<OpenApiDocument>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}
