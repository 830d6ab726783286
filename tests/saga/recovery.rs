//! Coordinators SIGKILLed while a saga's actions, then its compensations,
//! run: a restarted coordinator, or a second one on the same database,
//! finishes it the right way.

use crate::engine::{saga, Steps, WAIT};
use crate::support::{wait_status, Process, TestDb, FAST_FLAGS};
use std::time::Duration;
use tandem_sdk::wire::{CompensationStatus, GlobalStatus};

/// Who finishes the saga after the kill.
#[derive(Clone, Copy)]
enum Successor {
    /// The same coordinator, restarted.
    Restarted,
    /// A second coordinator that was running on the same database all along.
    Second,
}

/// The coordinator to kill, and the second one if `successor` asks for it.
async fn coordinators(db_url: &str, successor: Successor) -> (Process, Option<Process>) {
    let first = Process::spawn(db_url, FAST_FLAGS).await;
    let second = match successor {
        Successor::Second => Some(Process::spawn(db_url, FAST_FLAGS).await),
        Successor::Restarted => None,
    };
    (first, second)
}

/// The coordinator that finishes: the second one, or a restarted one.
async fn take_over(second: Option<Process>, db_url: &str) -> Process {
    match second {
        Some(second) => second,
        None => Process::spawn(db_url, FAST_FLAGS).await,
    }
}

async fn killed_while_actions_run(successor: Successor) {
    let db = TestDb::new("saga_kill_act").await;
    let (mut first, second) = coordinators(&db.url, successor).await;
    let p = Steps::start().await;
    p.set(|s| {
        s.hold.insert("s1/action".into());
    });
    let d = first
        .client
        .submit_saga(&saga(vec![p.step("s0"), p.step("s1"), p.step("s2")]), Some(Duration::ZERO), None)
        .await
        .unwrap();
    let xid = d.transaction.xid.clone();
    p.arrived_at("s1/action").await;
    first.kill9().await;
    p.set(|s| {
        s.hold.clear();
    });
    let next = take_over(second, &db.url).await;
    let t = wait_status(&next.client, &xid, "committed", WAIT).await;
    assert_eq!(t.status, GlobalStatus::Committed);
    for key in ["s0/action", "s1/action", "s2/action"] {
        assert_eq!(p.effects_of(key), 1, "{key} applied once");
    }
    let arrivals = p.arrived.lock().unwrap().iter().filter(|k| *k == "s1/action").count();
    assert!(arrivals >= 2, "the successor called the action in flight again");
    assert!(p.done().iter().all(|k| k.ends_with("/action")), "nothing compensated");
}

async fn killed_while_compensations_run(successor: Successor) {
    let db = TestDb::new("saga_kill_comp").await;
    let (mut first, second) = coordinators(&db.url, successor).await;
    let p = Steps::start().await;
    p.set(|s| {
        s.refuse.insert("s2/action".into());
        s.hold.insert("s1/compensate".into());
    });
    let d = first
        .client
        .submit_saga(&saga(vec![p.step("s0"), p.step("s1"), p.step("s2"), p.step("s3")]), Some(Duration::ZERO), None)
        .await
        .unwrap();
    let xid = d.transaction.xid.clone();
    p.arrived_at("s1/compensate").await;
    first.kill9().await;
    p.set(|s| {
        s.hold.clear();
    });
    let next = take_over(second, &db.url).await;
    let t = wait_status(&next.client, &xid, "rolled_back", WAIT).await;
    let comps: Vec<_> = t.branches.iter().map(|b| b.saga.as_ref().unwrap().compensation.status).collect();
    use CompensationStatus::*;
    assert_eq!(comps, [Compensated, Compensated, Compensated, Skipped]);
    assert_eq!(p.effects_of("s3/action"), 0, "no action after the failure");
    for key in ["s2/compensate", "s1/compensate", "s0/compensate"] {
        assert_eq!(p.effects_of(key), 1, "{key} applied once");
    }
    // s0's compensation came after every delivery of s1's.
    let c0 = &p.calls_of("s0/compensate")[0];
    assert!(p.calls_of("s1/compensate").iter().all(|c| c.end <= c0.start), "reverse order kept across the kill");
}

#[tokio::test]
async fn coordinator_killed_while_actions_run_restarted() {
    killed_while_actions_run(Successor::Restarted).await;
}

#[tokio::test]
async fn coordinator_killed_while_actions_run_second_coordinator() {
    killed_while_actions_run(Successor::Second).await;
}

#[tokio::test]
async fn coordinator_killed_while_compensations_run_restarted() {
    killed_while_compensations_run(Successor::Restarted).await;
}

#[tokio::test]
async fn coordinator_killed_while_compensations_run_second_coordinator() {
    killed_while_compensations_run(Successor::Second).await;
}
