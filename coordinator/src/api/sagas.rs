//! `/v1/sagas`: submit a whole saga (extension, `docs/saga.md`).

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::openapi::{BodyProblems, ServerProblems};
use super::transactions::{decided, idempotency_key, wait_of, WaitParams};
use crate::Coordinator;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use tandem_wire::{Problem, SagaRequest, Transaction};

/// Submit a saga: its steps' actions are called by the coordinator (in
/// dependency order, independent steps at once); a failure or the timeout
/// compensates, in reverse dependency order, every step whose action was
/// called.
#[utoipa::path(post, path = "/v1/sagas", tag = "sagas",
    request_body = SagaRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same key → same saga (answered with its state, with `Idempotent-Replayed: true`)"),
        WaitParams),
    responses(
        (status = 200, description = "Every action succeeded: `committed`", body = Transaction),
        (status = 202, description = "Stored durably; actions or compensations still running", body = Transaction),
        BodyProblems,
        (status = 409, description = "`invalid_state`: the saga was compensated (an action failed, the retry \
            limit or the timeout was reached); the problem's `transaction` shows each step", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad definition (no steps, too many, a dependency on \
            an unknown step, a dependency cycle, a field outside its limits); nothing stored. \
            `idempotency_key_reused`: the key submitted a different saga", body = Problem,
            content_type = "application/problem+json"),
        ServerProblems,
    ))]
pub async fn submit(
    State(c): State<Coordinator>,
    caller: crate::auth::Caller,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<WaitParams>,
    ApiJson(req): ApiJson<SagaRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let wait = wait_of(&c, &p)?;
    let (reply, created) = c.submit_saga(req, key, caller.name(), wait).await?;
    let mut resp = decided(reply);
    if !created {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}
