//! The endpoints the coordinator calls: one action and one compensation per
//! step, on the shared callback contract (`crate::callback`).

use super::{BarrierDb, Op, SagaError, SagaParticipant, StepContext, StepError};
use crate::callback::{self, Callbacks, Refusal};
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tandem_wire::{CallbackAction, CallbackReply, CallbackRequest, ErrorCode, Mode};

/// Where the saga endpoints live: a step's are
/// `{CALLBACK_PATH}/{step}/action` and `{CALLBACK_PATH}/{step}/compensate`.
pub const CALLBACK_PATH: &str = "/tandem/saga";

impl<DB: BarrierDb> SagaParticipant<DB> {
    /// A router serving POST `{CALLBACK_PATH}/{step}/action` and
    /// `{CALLBACK_PATH}/{step}/compensate` for every step (and a 404 problem
    /// for any other step under [`CALLBACK_PATH`]); merge it into the
    /// service's router.
    pub fn router(&self) -> Router {
        let mut router = Router::new().route(&format!("{CALLBACK_PATH}/{{step}}/{{op}}"), post(unknown_step));
        for step in self.inner.steps.keys() {
            let endpoint = |op| Endpoint { participant: self.clone(), step: step.clone(), op };
            let v = &self.inner.verifier;
            let step_router = callback::router("/action", endpoint(Op::Action), v).merge(callback::router(
                "/compensate",
                endpoint(Op::Compensate),
                v,
            ));
            // Step names are checked path segments (`check_step_name`).
            router = router.nest(&format!("{CALLBACK_PATH}/{step}"), step_router);
        }
        router
    }
}

/// A step name this participant does not serve (or an operation that is
/// not one): a misrouted callback, answered 404 as the contract says (the
/// coordinator retries it, as any answer but 2xx and 409).
async fn unknown_step(Path((step, op)): Path<(String, String)>) -> Response {
    Refusal::unknown_resource(format!("no saga endpoint {step:?}/{op:?} here")).into_response()
}

/// One step's action or compensation endpoint.
struct Endpoint<DB: BarrierDb> {
    /// The participant.
    participant: SagaParticipant<DB>,
    /// The step's name.
    step: String,
    /// Which of its two endpoints.
    op: Op,
}

impl<DB: BarrierDb> Clone for Endpoint<DB> {
    fn clone(&self) -> Self {
        Endpoint { participant: self.participant.clone(), step: self.step.clone(), op: self.op }
    }
}

impl<DB: BarrierDb> Callbacks for Endpoint<DB> {
    const MODE: &'static str = "saga";

    async fn answer(self, req: CallbackRequest) -> Result<CallbackReply, Refusal> {
        let expected = match self.op {
            Op::Action => CallbackAction::Action,
            Op::Compensate => CallbackAction::Compensate,
        };
        // The URL decides what runs: a compensation delivered to an action
        // URL (a definition with its URLs swapped) must not run as an action.
        if req.mode != Mode::Saga || req.action != expected {
            let detail = format!(
                "the {} endpoint of step {:?} takes saga {} callbacks, not {} {}",
                self.op.as_str(),
                self.step,
                expected.as_str(),
                req.mode.as_str(),
                req.action.as_str()
            );
            return Err(refusal(SagaError::Misrouted(detail)));
        }
        let ctx = StepContext { xid: req.xid, branch_id: req.branch_id, step: self.step, resource: req.resource };
        let payload = req.payload.unwrap_or(serde_json::Value::Null);
        let result = match self.op {
            Op::Action => self.participant.action(&ctx, &payload).await,
            Op::Compensate => self.participant.compensate(&ctx, &payload).await,
        };
        result.map(CallbackReply::new).map_err(refusal)
    }
}

/// The contract's answer to an error: 409 is permanent, anything else is
/// retried.
fn refusal(e: SagaError) -> Refusal {
    match e {
        e @ (SagaError::Compensated { .. }
        | SagaError::Misrouted(_)
        | SagaError::InvalidStep(_)
        | SagaError::StepFailed { error: StepError::Permanent(_), .. }) => {
            Refusal::permanent(ErrorCode::InvalidState, e.to_string())
        }
        e @ SagaError::UnknownStep(_) => Refusal::unknown_resource(e.to_string()),
        e @ (SagaError::StepFailed { error: StepError::Retry(_), .. }
        | SagaError::Coordinator(_)
        | SagaError::Database(_)) => Refusal::retry(e.to_string()),
    }
}
