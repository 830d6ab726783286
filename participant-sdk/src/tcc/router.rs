//! The callback endpoint the coordinator calls.

use super::{StepError, TccError, TccParticipant};
use crate::callback::{self, Callbacks, Refusal};
use axum::Router;
use tandem_wire::{CallbackReply, CallbackRequest, ErrorCode};

/// Path of the TCC callback endpoint.
pub const CALLBACK_PATH: &str = "/tandem/tcc/callback";

impl TccParticipant {
    /// A router serving [`CALLBACK_PATH`]; merge it into the service's router.
    pub fn router(&self) -> Router {
        callback::router(CALLBACK_PATH, self.clone(), self.inner.client.verifier())
    }
}

impl Callbacks for TccParticipant {
    const MODE: &'static str = "TCC";

    async fn answer(self, req: CallbackRequest) -> Result<CallbackReply, Refusal> {
        match self.handle_callback(&req).await {
            Ok(outcome) => Ok(CallbackReply::new(outcome)),
            // The contract: 409 is permanent, anything else is retried.
            Err(e @ (TccError::Conflict(_) | TccError::StepFailed { error: StepError::Permanent(_), .. })) => {
                Err(Refusal::permanent(ErrorCode::InvalidState, e.to_string()))
            }
            Err(e @ TccError::UnknownResource(_)) => Err(Refusal::unknown_resource(e.to_string())),
            Err(e) => Err(Refusal::retry(e.to_string())),
        }
    }
}
