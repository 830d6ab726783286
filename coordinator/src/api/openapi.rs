//! The OpenAPI document, generated from the handlers and wire types.

use std::sync::OnceLock;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Tandem coordinator", version = "1",
        description = "Distributed transaction coordinator. Contract v1: shared/contract/http-api.md. \
            Participants receive `CallbackRequest` bodies at their `callback_url` and answer 2xx (done), \
            409 (permanent refusal) or anything else (retried)."),
    paths(
        super::transactions::begin, super::transactions::get, super::transactions::list,
        super::transactions::register, super::transactions::report,
        super::transactions::commit, super::transactions::rollback, super::locks::check,
        super::ops::healthz, super::ops::readyz, super::ops::metrics, super::ops::openapi,
    ),
    components(schemas(
        tandem_wire::CallbackRequest, tandem_wire::CallbackAction, tandem_wire::ErrorCode,
        tandem_wire::LockHolder, tandem_wire::RollbackReason, tandem_wire::BranchStatus, tandem_wire::GlobalStatus, tandem_wire::Mode,
        tandem_wire::ThreePhaseOptions, tandem_wire::ThreePhaseTimeouts,
    )),
    tags(
        (name = "transactions", description = "Global transactions"),
        (name = "branches", description = "Branches of a global transaction"),
        (name = "locks", description = "Global row locks of AT mode"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}
