//! The coordinator's core against a real PostgreSQL: the one-statement
//! decision agrees with the pure state machine, the live partial indexes
//! match the Rust status sets, and the in-flight gauge names every status.

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::time::Duration;
use support::TestDb;
use tandem_coordinator::metrics::Metrics;
use tandem_coordinator::modes::{self, PROTOCOLS};
use tandem_coordinator::store::{NewBranch, NewTransaction, ReportResult, Store, StoreConfig};
use tandem_coordinator::transaction::state::{self, Decision, DecisionInput, DecisionOutcome};
use tandem_coordinator::transaction::statuses::{IN_FLIGHT, LEASED, UNDECIDED};
use tandem_sdk::wire::{BranchId, GlobalStatus, ReportStatus, ThreePhaseTimeouts, Xid};

async fn store(db: &TestDb) -> Store {
    let cfg = StoreConfig {
        database_url: db.url.clone(),
        max_connections: 4,
        relaxed_connections: 4,
        acquire_timeout: Duration::from_secs(10),
    };
    let store = Store::connect(&cfg, Metrics::new().expect("metrics")).expect("store");
    store.migrate().await.expect("migrate");
    store
}

/// One random transaction: its mode, the phase-1 report of each branch
/// (none, prepared, failed), whether its deadline has passed, a status to
/// force it into (else it stays active), and the request.
#[derive(Debug, Clone)]
struct Case {
    mode: usize,
    reports: Vec<Option<ReportStatus>>,
    expired: bool,
    forced: Option<GlobalStatus>,
    requested: Decision,
}

fn case() -> impl Strategy<Value = Case> {
    let report = prop_oneof![Just(None), Just(Some(ReportStatus::Prepared)), Just(Some(ReportStatus::Phase1Failed))];
    let forced = prop_oneof![
        3 => Just(None),
        1 => proptest::sample::select(GlobalStatus::ALL.to_vec()).prop_map(Some),
    ];
    (
        0..PROTOCOLS.len(),
        proptest::collection::vec(report, 0..5),
        any::<bool>(),
        forced,
        prop_oneof![Just(Decision::Commit), Just(Decision::Rollback)],
    )
        .prop_map(|(mode, reports, expired, forced, requested)| Case { mode, reports, expired, forced, requested })
}

/// Builds the case through the store's own registration and report paths
/// (which keep the counters the one-statement decision reads), then asks
/// both the statement and the pure rule.
async fn check(store: &Store, db: &sqlx::PgPool, case: &Case) -> Result<(), TestCaseError> {
    let protocol = PROTOCOLS[case.mode];
    let mode = protocol.mode();
    let xid = Xid::generate();
    let new = NewTransaction {
        xid: xid.clone(),
        mode,
        name: None,
        timeout_ms: 600_000,
        idempotency_key: None,
        three_phase: (mode == tandem_sdk::wire::Mode::ThreePc).then(ThreePhaseTimeouts::default),
    };
    store.insert_transaction(&new).await.map_err(fail)?.ok_or_else(|| fail("inserted"))?;
    for report in &case.reports {
        let b = NewBranch {
            branch_id: BranchId::generate(),
            resource: "r".into(),
            callback_url: "http://127.0.0.1:1/cb".into(),
            payload: None,
            lock_keys: vec![],
        };
        store.insert_branch(&xid, &b).await.map_err(fail)?.ok_or_else(|| fail("registered"))?;
        if let Some(r) = report {
            let applied = store
                .report_branch(&xid, &b.branch_id, None, |g, s| state::apply_report(g, s, *r))
                .await
                .map_err(fail)?;
            prop_assert!(matches!(applied, ReportResult::Applied(_)));
        }
    }
    if case.expired {
        sqlx::query("UPDATE global_transactions SET deadline = now() - interval '1 second' WHERE xid = $1")
            .bind(xid.as_str())
            .execute(db)
            .await
            .map_err(fail)?;
    }
    if let Some(s) = case.forced {
        sqlx::query("UPDATE global_transactions SET status = $2 WHERE xid = $1")
            .bind(xid.as_str())
            .bind(s.as_str())
            .execute(db)
            .await
            .map_err(fail)?;
    }

    // The pure rule, on the state as read.
    let (tx, branches) = store.transaction_with_branches(&xid).await.map_err(fail)?.ok_or_else(|| fail("read"))?;
    let statuses = branches.iter().map(|b| b.status);
    let pure = state::decide(case.requested, DecisionInput::new(tx.status, tx.expired, statuses, protocol));

    // The statement.
    let fast = state::fast_decision(case.requested);
    let written = store.decide_expected(&xid, fast, "prop", Duration::from_secs(60)).await.map_err(fail)?;
    let agrees = pure
        == DecisionOutcome::Decide {
            decision: case.requested,
            status: fast.transition.to(),
            reason: fast.reason,
            overridden: false,
        };
    match written {
        Some((row, read)) => {
            prop_assert!(agrees, "the statement decided where decide() answers {pure:?}");
            prop_assert_eq!(row.status, fast.transition.to());
            prop_assert_eq!(row.rollback_reason, fast.reason);
            prop_assert_eq!(read.len(), branches.len());
        }
        None => {
            prop_assert!(!agrees, "decide() answers {pure:?} but the statement did not write it");
            let (after, _) = store.transaction_with_branches(&xid).await.map_err(fail)?.ok_or_else(|| fail("read"))?;
            prop_assert_eq!(after.status, tx.status, "a statement that did not decide changed the status");
        }
    }
    Ok(())
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

#[test]
fn the_one_statement_decision_agrees_with_decide() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (db, store, pool) = rt.block_on(async {
        let db = TestDb::new("decide_prop").await;
        let store = store(&db).await;
        let pool = db.pool().await;
        (db, store, pool)
    });
    let cases = std::env::var("TANDEM_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&case(), |case| rt.block_on(check(&store, &pool, &case)));
    rt.block_on(async { store.close().await });
    drop(db);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The predicate of a live index, as the statuses it names.
async fn predicate(pool: &sqlx::PgPool, index: &str) -> Vec<String> {
    let def: String =
        sqlx::query_scalar("SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indexrelid = $1::regclass")
            .bind(index)
            .fetch_one(pool)
            .await
            .expect("index predicate");
    let mut names: Vec<String> = def.split('\'').skip(1).step_by(2).map(str::to_owned).collect();
    names.sort();
    names
}

fn sorted(set: &[GlobalStatus]) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|s| s.as_str().to_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn live_partial_indexes_match_the_status_sets_and_recovery_uses_them() {
    let db = TestDb::new("status_sets").await;
    let _store = store(&db).await;
    let pool = db.pool().await;
    assert_eq!(predicate(&pool, "global_transactions_due").await, sorted(&LEASED));
    assert_eq!(predicate(&pool, "global_transactions_deadline_active").await, sorted(UNDECIDED));
    // Every served mode's leased statuses are in the set recovery scans.
    for p in PROTOCOLS {
        for s in p.pre_decision_statuses() {
            assert!(LEASED.contains(s), "{s} of {} is not leased", p.mode());
        }
    }
    assert!(modes::protocol(tandem_sdk::wire::Mode::Saga).is_none());
}

#[tokio::test]
async fn the_in_flight_gauge_reports_every_non_terminal_status() {
    let db = TestDb::new("gauge").await;
    let (app, _) = support::spawn_coordinator(support::fast_settings(&db.url)).await;
    let body = reqwest::get(format!("{}/metrics", app.url)).await.expect("metrics").text().await.expect("body");
    for s in IN_FLIGHT.iter() {
        let line = format!("tandem_transactions_in_flight{{status=\"{}\"}} 0", s.as_str());
        assert!(body.contains(&line), "missing {line:?} in\n{body}");
    }
    app.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_locks_read_the_same_from_every_endpoint() {
    use tandem_sdk::wire::{BeginRequest, Mode, RegisterBranchRequest, ReportRequest};
    let db = TestDb::new("global_locks").await;
    let (app, client) = support::spawn_coordinator(support::fast_settings(&db.url)).await;
    let client = &client;
    // (mode, lock keys, whether its branch holds global locks)
    let cases = [
        (Mode::At, vec!["stock:1".to_owned()], true),
        (Mode::At, vec![], false),
        (Mode::Tcc, vec!["stock:1".to_owned()], false),
        (Mode::Xa, vec![], false),
    ];
    for (mode, keys, holds) in cases {
        let tx =
            client.begin(&BeginRequest { mode, name: None, timeout_ms: None, three_phase: None }).await.expect("begin");
        let req = RegisterBranchRequest {
            resource: format!("r-{mode}-{}", keys.len()),
            callback_url: support::ok_participant().await,
            payload: None,
            lock_keys: Some(keys.clone()),
        };
        let registered = client.register(&tx.xid, &req).await.expect("register");
        let reported = client
            .report(&tx.xid, &registered.branch_id, &ReportRequest { status: ReportStatus::Prepared, detail: None })
            .await
            .expect("report");
        let read = client.get(&tx.xid).await.expect("get");
        let listed = client
            .list(&tandem_sdk::client::ListQuery { mode: Some(mode), ..Default::default() })
            .await
            .expect("list")
            .transactions
            .into_iter()
            .find(|t| t.xid == tx.xid)
            .expect("listed");
        let answers = [
            registered.global_locks,
            reported.global_locks,
            read.branches[0].global_locks,
            listed.branches[0].global_locks,
        ];
        assert_eq!(answers, [Some(holds); 4], "{mode} with {keys:?}");
        // Phase 2 completed: the locks are gone, and every endpoint says so.
        client.commit(&tx.xid, Some(Duration::from_secs(10))).await.expect("commit");
        let done = support::wait_status(client, &tx.xid, "committed", Duration::from_secs(30)).await;
        assert_eq!(done.branches[0].global_locks, Some(false));
    }
    app.stop().await.expect("coordinator stops");
}
