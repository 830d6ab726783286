//! Saga (mode `saga`): forward actions called by the coordinator, and on a
//! failure or the timeout, compensations in reverse dependency order.
//!
//! A submitted saga is stored `running` with its steps (the definition is
//! durable before the first action is called, and so is every action's
//! start: the compensations to run are exactly those of the steps whose
//! action was called). While `running`, [`Step::Forward`] names the steps
//! whose dependencies have all succeeded; the driver calls them, and asks
//! again after every answer. An action answering 409, or failing transiently
//! more than `retry_limit` times, fails the saga: no new action starts, the
//! driver waits for those in flight, and the saga moves to `rolling_back`
//! with the steps never called marked `skipped`. So does the deadline. Every
//! action succeeded → `committed`.
//!
//! `rolling_back` runs compensations by rounds: a step's compensation after
//! those of every step that depends on it; one round's at once. They are
//! phase 2 of a rollback: retried with backoff until they answer, 409 is
//! `rollback_failed` for an operator.
//!
//! Step by step (Seata's usage): a saga begun with `POST /v1/transactions`
//! registers a branch per step after the client ran its action itself
//! (`callback_url`: the compensation). Commit has nothing left to do;
//! rollback compensates in reverse registration order (each step depends on
//! the one registered before it).

use super::{Advance, Protocol, Step, View};
use crate::transaction::state::{self, CallbackResult, Decision};
use std::collections::BTreeSet;
use tandem_wire::{
    ActionStatus, BranchStatus, CallbackAction, GlobalStatus, Mode, RollbackReason, SagaStepRequest, MAX_SAGA_STEPS,
};

/// The saga protocol.
#[derive(Debug, Clone, Copy)]
pub struct Saga;

/// A saga step as the protocol sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepView<'a> {
    /// The action's status (`None`: the client ran it, step by step).
    pub action: Option<ActionStatus>,
    /// Indexes of the steps it runs after (`None`: the step before it).
    pub after: Option<&'a [i32]>,
}

impl StepView<'_> {
    fn succeeded(&self) -> bool {
        matches!(self.action, None | Some(ActionStatus::Succeeded))
    }
}

/// The steps step `i` runs after.
fn after(steps: &[StepView<'_>], i: usize) -> Vec<usize> {
    match steps[i].after {
        Some(list) => list.iter().filter_map(|&j| usize::try_from(j).ok()).filter(|&j| j < steps.len()).collect(),
        None if i > 0 => vec![i - 1],
        None => vec![],
    }
}

/// Steps whose action may be called now: not succeeded or failed, and every
/// step they run after succeeded. Includes those already called whose
/// outcome is unknown (`running`): the driver leaves out the ones in flight.
pub fn ready(steps: &[StepView<'_>]) -> Vec<usize> {
    (0..steps.len())
        .filter(|&i| matches!(steps[i].action, Some(ActionStatus::Pending | ActionStatus::Running)))
        .filter(|&i| after(steps, i).iter().all(|&j| steps[j].succeeded()))
        .collect()
}

/// `pending` by compensation rounds: a step's round comes after the rounds
/// of every step that (transitively) depends on it.
pub fn compensation_rounds(steps: &[StepView<'_>], pending: &[usize]) -> Vec<Vec<usize>> {
    // depth(i): the longest chain of dependents below i (0: nothing depends on it).
    let n = steps.len();
    let mut depth = vec![0usize; n];
    for _ in 0..n {
        let mut changed = false;
        for j in 0..n {
            for i in after(steps, j) {
                if depth[i] < depth[j] + 1 && depth[j] < n {
                    depth[i] = depth[j] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut levels: Vec<usize> = pending.iter().map(|&i| depth[i]).collect::<BTreeSet<_>>().into_iter().collect();
    levels.sort_unstable();
    for level in levels {
        rounds.push(pending.iter().copied().filter(|&i| depth[i] == level).collect());
    }
    rounds
}

/// What an action's answer makes of its step: its new status (`running`:
/// still unknown, retry later) and, for a failure, why the saga rolls back.
/// `attempts` counts the calls made, this one included.
pub fn action_verdict(
    result: &CallbackResult,
    attempts: u32,
    retry_limit: Option<u32>,
) -> (ActionStatus, Option<RollbackReason>) {
    match result {
        CallbackResult::Done => (ActionStatus::Succeeded, None),
        CallbackResult::Refused(_) | CallbackResult::HeuristicCommit(_) => {
            (ActionStatus::Failed, Some(RollbackReason::BranchFailed))
        }
        // `retry_limit` retries after the first call.
        CallbackResult::Unknown(_) if retry_limit.is_some_and(|limit| attempts > limit) => {
            (ActionStatus::Failed, Some(RollbackReason::RetryLimit))
        }
        CallbackResult::Unknown(_) => (ActionStatus::Running, None),
    }
}

/// The move into `rolling_back`: the steps never called are `skipped`
/// (nothing to compensate); the others wait for their compensation.
fn compensate(view: &View<'_>, reason: RollbackReason) -> Step {
    let marks = (0..view.steps.len())
        .filter(|&i| view.steps[i].action == Some(ActionStatus::Pending) && !view.branches[i].is_final())
        .map(|i| (i, BranchStatus::Skipped, None))
        .collect();
    Step::Advance(Advance { to: GlobalStatus::RollingBack, reason: Some(reason), marks })
}

impl Protocol for Saga {
    fn mode(&self) -> Mode {
        Mode::Saga
    }

    fn pre_decision_statuses(&self) -> &'static [GlobalStatus] {
        &[GlobalStatus::Running]
    }

    fn end_status_of_untouched(&self, terminal: GlobalStatus) -> Option<BranchStatus> {
        (terminal == GlobalStatus::Committed).then_some(BranchStatus::Committed)
    }

    fn commit_refused_because(&self, reason: Option<RollbackReason>) -> &'static str {
        match reason {
            Some(RollbackReason::Timeout) => "its actions had not all succeeded by its deadline",
            Some(RollbackReason::RetryLimit) => "an action kept failing transiently past the saga's retry_limit",
            Some(RollbackReason::Requested) => "a rollback was requested",
            _ => "an action failed (409)",
        }
    }

    fn next_step(&self, view: &View<'_>) -> Step {
        match view.status {
            GlobalStatus::Running => {
                if view.steps.iter().any(|s| s.action == Some(ActionStatus::Failed)) {
                    compensate(view, RollbackReason::BranchFailed)
                } else if view.expired {
                    compensate(view, RollbackReason::Timeout)
                } else if view.steps.iter().all(StepView::succeeded) {
                    Step::Finish(GlobalStatus::Committed)
                } else {
                    Step::Forward(ready(view.steps))
                }
            }
            // Step by step: every action ran in the client's code.
            GlobalStatus::Committing => Step::Finish(GlobalStatus::Committed),
            GlobalStatus::RollingBack => {
                let pending: Vec<usize> = (0..view.branches.len()).filter(|&i| !view.branches[i].is_final()).collect();
                if pending.is_empty() {
                    return match state::phase2_outcome(Decision::Rollback, view.branches) {
                        Some(terminal) => Step::Finish(terminal),
                        None => Step::Stop,
                    };
                }
                Step::Send(super::Send {
                    action: CallbackAction::Compensate,
                    rounds: compensation_rounds(view.steps, &pending),
                    wait: None,
                    then: super::Then::Record(Decision::Rollback),
                })
            }
            _ => Step::Stop,
        }
    }
}

/// A saga definition refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// No steps.
    #[error("a saga needs at least one step")]
    NoSteps,
    /// More steps than a saga may have.
    #[error("a saga has at most {max} steps, not {got}", max = MAX_SAGA_STEPS)]
    TooManySteps {
        /// Steps given.
        got: usize,
    },
    /// `after` names a step that does not exist.
    #[error("step {step} runs after step {after}, which does not exist (steps are 0 to {last})")]
    UnknownStep {
        /// The step (index).
        step: usize,
        /// The index it named.
        after: u32,
        /// The last index.
        last: usize,
    },
    /// The dependencies have a cycle (a step after itself, directly or not).
    #[error("the steps' dependencies have a cycle through steps {0:?}")]
    Cycle(Vec<usize>),
}

/// The dependencies of each step of a definition: without `after` anywhere,
/// each step after the one before it; else exactly the steps listed.
/// Refuses unknown steps and cycles.
pub fn dependencies(steps: &[SagaStepRequest]) -> Result<Vec<Vec<u32>>, DefinitionError> {
    let n = steps.len();
    if n == 0 {
        return Err(DefinitionError::NoSteps);
    }
    if n > MAX_SAGA_STEPS {
        return Err(DefinitionError::TooManySteps { got: n });
    }
    if steps.iter().all(|s| s.after.is_none()) {
        return Ok((0..n).map(|i| if i == 0 { vec![] } else { vec![i as u32 - 1] }).collect());
    }
    let mut deps = Vec::with_capacity(n);
    for (i, s) in steps.iter().enumerate() {
        let mut list: Vec<u32> = Vec::new();
        for &j in s.after.iter().flatten() {
            if j as usize >= n {
                return Err(DefinitionError::UnknownStep { step: i, after: j, last: n - 1 });
            }
            if !list.contains(&j) {
                list.push(j);
            }
        }
        deps.push(list);
    }
    // Kahn: what cannot be ordered is on (or behind) a cycle.
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut done = vec![false; n];
    let mut queue: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    while let Some(i) = queue.pop() {
        done[i] = true;
        for (j, d) in deps.iter().enumerate() {
            if d.contains(&(i as u32)) {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    queue.push(j);
                }
            }
        }
    }
    let stuck: Vec<usize> = (0..n).filter(|&i| !done[i]).collect();
    if !stuck.is_empty() {
        return Err(DefinitionError::Cycle(stuck));
    }
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::Resumed;
    use tandem_wire::ActionStatus as A;

    fn step(after: Option<Vec<u32>>) -> SagaStepRequest {
        SagaStepRequest {
            name: None,
            action_url: "http://127.0.0.1:1/a".into(),
            compensate_url: "http://127.0.0.1:1/c".into(),
            payload: None,
            after,
        }
    }

    #[test]
    fn definitions() {
        assert_eq!(dependencies(&[]), Err(DefinitionError::NoSteps));
        assert_eq!(dependencies(&[step(None), step(None), step(None)]), Ok(vec![vec![], vec![0], vec![1]]));
        assert_eq!(
            dependencies(&[step(Some(vec![])), step(Some(vec![])), step(Some(vec![0, 1, 0]))]),
            Ok(vec![vec![], vec![], vec![0, 1]])
        );
        assert_eq!(
            dependencies(&[step(None), step(Some(vec![5]))]),
            Err(DefinitionError::UnknownStep { step: 1, after: 5, last: 1 })
        );
        assert_eq!(dependencies(&[step(Some(vec![0]))]), Err(DefinitionError::Cycle(vec![0])));
        assert_eq!(
            dependencies(&[step(Some(vec![2])), step(Some(vec![0])), step(Some(vec![1])), step(None)]),
            Err(DefinitionError::Cycle(vec![0, 1, 2]))
        );
        let many: Vec<_> = (0..=MAX_SAGA_STEPS).map(|_| step(None)).collect();
        assert_eq!(dependencies(&many), Err(DefinitionError::TooManySteps { got: MAX_SAGA_STEPS + 1 }));
    }

    fn views<'a>(actions: &[A], after: &'a [Vec<i32>]) -> Vec<StepView<'a>> {
        actions.iter().zip(after).map(|(a, d)| StepView { action: Some(*a), after: Some(d.as_slice()) }).collect()
    }

    #[test]
    fn ready_follows_dependencies() {
        // 0 → 2, 1 → 2, 2 → 3
        let deps = vec![vec![], vec![], vec![0, 1], vec![2]];
        assert_eq!(ready(&views(&[A::Pending, A::Pending, A::Pending, A::Pending], &deps)), vec![0, 1]);
        assert_eq!(ready(&views(&[A::Succeeded, A::Running, A::Pending, A::Pending], &deps)), vec![1]);
        assert_eq!(ready(&views(&[A::Succeeded, A::Succeeded, A::Pending, A::Pending], &deps)), vec![2]);
        assert_eq!(ready(&views(&[A::Succeeded, A::Failed, A::Pending, A::Pending], &deps)), Vec::<usize>::new());
    }

    #[test]
    fn compensations_in_reverse_dependency_order() {
        let deps = vec![vec![], vec![], vec![0, 1], vec![2]];
        let v = views(&[A::Succeeded; 4], &deps);
        assert_eq!(compensation_rounds(&v, &[0, 1, 2, 3]), vec![vec![3], vec![2], vec![0, 1]]);
        assert_eq!(compensation_rounds(&v, &[0, 1]), vec![vec![0, 1]]);
        // Step by step: a chain in registration order, reversed.
        let chain: Vec<StepView<'_>> = (0..3).map(|_| StepView { action: None, after: None }).collect();
        assert_eq!(compensation_rounds(&chain, &[0, 1, 2]), vec![vec![2], vec![1], vec![0]]);
    }

    #[test]
    fn verdicts() {
        let unknown = CallbackResult::Unknown("503".into());
        assert_eq!(action_verdict(&CallbackResult::Done, 1, None), (A::Succeeded, None));
        assert_eq!(
            action_verdict(&CallbackResult::Refused("409".into()), 1, Some(3)),
            (A::Failed, Some(RollbackReason::BranchFailed))
        );
        assert_eq!(action_verdict(&unknown, 3, Some(2)), (A::Failed, Some(RollbackReason::RetryLimit)));
        assert_eq!(action_verdict(&unknown, 3, Some(3)), (A::Running, None));
        assert_eq!(action_verdict(&unknown, 1, Some(0)), (A::Failed, Some(RollbackReason::RetryLimit)));
        assert_eq!(action_verdict(&unknown, 1000, None), (A::Running, None));
    }

    #[test]
    fn steps_of_a_running_saga() {
        let deps = vec![vec![], vec![0]];
        let branches = [BranchStatus::Registered, BranchStatus::Registered];
        let at = |actions: &[A], expired: bool| {
            let steps = views(actions, &deps);
            let view = View {
                status: GlobalStatus::Running,
                branches: &branches,
                resumed: Resumed::Fresh,
                three_phase: None,
                steps: &steps,
                expired,
                order: None,
            };
            Saga.next_step(&view)
        };
        assert_eq!(at(&[A::Running, A::Pending], false), Step::Forward(vec![0]));
        assert_eq!(at(&[A::Succeeded, A::Succeeded], false), Step::Finish(GlobalStatus::Committed));
        let failed = Step::Advance(Advance {
            to: GlobalStatus::RollingBack,
            reason: Some(RollbackReason::BranchFailed),
            marks: vec![(1, BranchStatus::Skipped, None)],
        });
        assert_eq!(at(&[A::Failed, A::Pending], false), failed);
        let Step::Advance(timeout) = at(&[A::Succeeded, A::Running], true) else { panic!("advance") };
        assert_eq!((timeout.reason, timeout.marks), (Some(RollbackReason::Timeout), vec![]));
    }
}
