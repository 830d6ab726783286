//! Two-phase messages (mode `msg`, DTM's `msg`): a message prepared before
//! the producer's local transaction, delivered after it.
//!
//! `POST /v1/messages` stores the message `prepared` with its deliveries as
//! branches (durable before the answer: the producer's local transaction
//! runs after it). Submit moves it to `delivering` (durable: the decision),
//! abort to `rolling_back`. `prepared` is leased like a phase before a
//! decision, with its first lease ending at the deadline and nobody holding
//! it: a message neither submitted nor aborted by then is taken by the
//! recovery worker, which back-checks the producer ([`Step::Check`]):
//! `committed` → `delivering`, `rolled_back` → `rolling_back` (reason
//! `back_check`), `unknown` or no answer → asked again after the backoff. A
//! submit may still come during or after that (the producer's transaction
//! committed late): it wins if it is first, as the back-check would have
//! answered `committed` too.
//!
//! `delivering` is phase 2 of a commit: every delivery (an HTTP callback
//! `deliver`, or a publish to a configured broker destination, acknowledged
//! by the broker's confirmation) is retried until acknowledged, all at once
//! or one after another as the message says; the end is `delivered`. A
//! delivery refused permanently (an HTTP 409) ends the message
//! `commit_failed` for an operator: a message cannot be taken back.
//! `rolling_back` has nothing to call: the deliveries are `skipped` and the
//! message ends `rolled_back`.

use super::{phase2_step, Begin, Delivery, OptionError, OptionLimits, Order, Protocol, Step, View};
use crate::transaction::state::Decision;
use tandem_wire::{
    BeginRequest, BranchStatus, CallbackAction, CheckOutcome, DeliveryOrder, GlobalStatus, Mode, RollbackReason,
};

/// The message protocol.
#[derive(Debug, Clone, Copy)]
pub struct Msg;

impl Protocol for Msg {
    fn mode(&self) -> Mode {
        Mode::Msg
    }

    fn begin(&self) -> Begin {
        // The deliveries are part of the prepare: there is nothing to register later.
        Begin::Elsewhere("POST /v1/messages")
    }

    fn begin_options(&self, _req: &BeginRequest, _limits: OptionLimits) -> Result<super::ModeOptions, OptionError> {
        let endpoint = match self.begin() {
            Begin::Elsewhere(endpoint) => endpoint,
            Begin::Transactions => "POST /v1/transactions",
        };
        Err(OptionError::BegunElsewhere { mode: Mode::Msg, endpoint })
    }

    fn commit_status(&self) -> GlobalStatus {
        GlobalStatus::Delivering
    }

    fn pre_decision_statuses(&self) -> &'static [GlobalStatus] {
        &[GlobalStatus::Prepared]
    }

    fn expiry(&self) -> super::Expiry {
        super::Expiry::BackCheck
    }

    fn end_status_of_untouched(&self, terminal: GlobalStatus) -> Option<BranchStatus> {
        (terminal == GlobalStatus::RolledBack).then_some(BranchStatus::Skipped)
    }

    fn commit_refused_because(&self, reason: Option<RollbackReason>) -> &'static str {
        match reason {
            Some(RollbackReason::BackCheck) => {
                "the back-check found that the producer's local transaction had not committed"
            }
            _ => "it was aborted",
        }
    }

    fn next_step(&self, view: &View<'_>) -> Step {
        match view.status {
            // Leased while prepared only by the recovery worker once the
            // deadline passed, or after a back-check that did not decide.
            GlobalStatus::Prepared => Step::Check,
            GlobalStatus::Delivering => {
                let delivery = match view.order.unwrap_or_default() {
                    DeliveryOrder::Concurrent => Delivery::AllAtOnce,
                    DeliveryOrder::InOrder => Delivery::OneAtATime(Order::Registration),
                };
                match phase2_step(Some((Decision::Commit, delivery)), view) {
                    Step::Send(mut send) => {
                        send.action = CallbackAction::Deliver;
                        Step::Send(send)
                    }
                    Step::Finish(GlobalStatus::Committed) => Step::Finish(GlobalStatus::Delivered),
                    other => other,
                }
            }
            GlobalStatus::RollingBack => Step::Finish(GlobalStatus::RolledBack),
            _ => Step::Stop,
        }
    }
}

/// Where a back-check's answer takes a prepared message: the new status
/// (and why, for a rollback), or `None` to ask again later.
pub fn after_check(outcome: CheckOutcome) -> Option<(GlobalStatus, Option<RollbackReason>)> {
    match outcome {
        CheckOutcome::Committed => Some((GlobalStatus::Delivering, None)),
        CheckOutcome::RolledBack => Some((GlobalStatus::RollingBack, Some(RollbackReason::BackCheck))),
        CheckOutcome::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::{Resumed, Then};
    use tandem_wire::BranchStatus as B;

    fn view<'a>(status: GlobalStatus, branches: &'a [BranchStatus], order: DeliveryOrder) -> View<'a> {
        View {
            status,
            branches,
            resumed: Resumed::Fresh,
            three_phase: None,
            steps: &[],
            expired: false,
            order: Some(order),
        }
    }

    #[test]
    fn deliveries_go_at_once_or_in_order_until_acknowledged() {
        let three = [B::Registered, B::Registered, B::Registered];
        let Step::Send(s) = Msg.next_step(&view(GlobalStatus::Delivering, &three, DeliveryOrder::Concurrent)) else {
            panic!("a send");
        };
        assert_eq!(s.action, CallbackAction::Deliver);
        assert_eq!(s.rounds, vec![vec![0, 1, 2]]);
        assert_eq!(s.then, Then::Record(Decision::Commit));
        let Step::Send(s) = Msg.next_step(&view(GlobalStatus::Delivering, &three, DeliveryOrder::InOrder)) else {
            panic!("a send");
        };
        assert_eq!(s.rounds, vec![vec![0], vec![1], vec![2]]);
        let partly = [B::Committed, B::Registered];
        let Step::Send(s) = Msg.next_step(&view(GlobalStatus::Delivering, &partly, DeliveryOrder::InOrder)) else {
            panic!("a send");
        };
        assert_eq!(s.rounds, vec![vec![1]], "an acknowledged delivery is not sent again");
        let done = [B::Committed, B::Committed];
        assert_eq!(
            Msg.next_step(&view(GlobalStatus::Delivering, &done, DeliveryOrder::Concurrent)),
            Step::Finish(GlobalStatus::Delivered)
        );
        let refused = [B::Committed, B::CommitFailed];
        assert_eq!(
            Msg.next_step(&view(GlobalStatus::Delivering, &refused, DeliveryOrder::Concurrent)),
            Step::Finish(GlobalStatus::CommitFailed)
        );
    }

    #[test]
    fn prepared_is_back_checked_and_abort_has_nothing_to_call() {
        let two = [B::Registered, B::Registered];
        assert_eq!(Msg.next_step(&view(GlobalStatus::Prepared, &two, DeliveryOrder::Concurrent)), Step::Check);
        assert_eq!(
            Msg.next_step(&view(GlobalStatus::RollingBack, &two, DeliveryOrder::Concurrent)),
            Step::Finish(GlobalStatus::RolledBack)
        );
        assert_eq!(Msg.end_status_of_untouched(GlobalStatus::RolledBack), Some(B::Skipped));
        assert_eq!(Msg.end_status_of_untouched(GlobalStatus::Delivered), None);
        assert_eq!(after_check(CheckOutcome::Committed), Some((GlobalStatus::Delivering, None)));
        assert_eq!(
            after_check(CheckOutcome::RolledBack),
            Some((GlobalStatus::RollingBack, Some(RollbackReason::BackCheck)))
        );
        assert_eq!(after_check(CheckOutcome::Unknown), None);
    }
}
