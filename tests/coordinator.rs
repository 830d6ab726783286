//! The coordinator's core against a real PostgreSQL: the one-statement
//! decision agrees with the pure state machine, the live partial indexes
//! match the Rust status sets, and the in-flight gauge names every status.

mod operator;
mod security;
mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::time::Duration;
use support::TestDb;
use tandem_coordinator::metrics::Metrics;
use tandem_coordinator::modes::PROTOCOLS;
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
        max_branches: 1_000,
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
        began_by: None,
        dtm: None,
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
    // `prepared` is open for a decision, but only a message is ever in it.
    let forced = case.forced.filter(|s| *s != GlobalStatus::Prepared || mode == tandem_sdk::wire::Mode::Msg);
    if let Some(s) = forced {
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
    // The statement covers the common case, from `active` (a prepared
    // message is decided by the general path).
    let agrees = tx.status == fast.transition.from()
        && pure
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
    assert!(LEASED.contains(&tandem_sdk::wire::GlobalStatus::Running), "a running saga is leased");
    assert!(LEASED.contains(&tandem_sdk::wire::GlobalStatus::Prepared), "a prepared message is back-checked");
    assert!(LEASED.contains(&tandem_sdk::wire::GlobalStatus::Delivering), "a submitted message is delivered");
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

/// POSTs `body` as JSON and returns the status and the problem's `code`, if any.
async fn post_json(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> (u16, Option<String>) {
    let resp = http.post(url).json(body).send().await.expect("request");
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
}

/// The document is built from the router: every path it lists is served,
/// and every operation documents the problems it can answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_with_its_problems() {
    let db = TestDb::new("openapi_routes").await;
    let (app, _client) = support::spawn_coordinator(support::fast_settings(&db.url)).await;
    let http = reqwest::Client::new();
    let doc: serde_json::Value =
        http.get(format!("{}/openapi.json", app.url)).send().await.expect("get").json().await.expect("json");
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            operations.push(format!("{} {path}", method.to_uppercase()));
            let documented: Vec<&str> =
                op["responses"].as_object().expect("responses").keys().map(|k| k.as_str()).collect();
            let mut required = vec![];
            // DTM's protocol answers its errors in its own JSON (`{"message"}`).
            let dtm = path.starts_with("/api/");
            if path.starts_with("/v1/") {
                required.extend(["408", "500", "503"]);
            }
            if dtm && op.get("requestBody").is_some() {
                for status in ["400", "413", "422", "500", "503"] {
                    let content = &op["responses"][status]["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(content, "#/components/schemas/DtmMessage", "{method} {path} {status}");
                }
            } else if op.get("requestBody").is_some() {
                required.extend(["400", "413", "415", "422"]);
            }
            let queried =
                op.get("parameters").and_then(|p| p.as_array()).is_some_and(|p| p.iter().any(|p| p["in"] == "query"));
            if queried && !dtm {
                required.push("400");
            }
            for status in required {
                assert!(documented.contains(&status), "{method} {path} does not document {status}: {documented:?}");
                let content = &op["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"];
                assert_eq!(content, "#/components/schemas/Problem", "{method} {path} {status}");
            }
            // Served: whatever it answers, it is not the router's "no such route".
            let url = format!("{}{}", app.url, path.replace("{xid}", "nope").replace("{branch_id}", "nope"));
            let resp = http.request(method.to_uppercase().parse().expect("method"), &url).send().await.expect("send");
            let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            assert_ne!(v.get("code").and_then(|c| c.as_str()), Some("not_found"), "{method} {path} is not routed");
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "GET /api/dtmsvr/all",
            "GET /api/dtmsvr/newGid",
            "GET /api/dtmsvr/query",
            "GET /api/dtmsvr/version",
            "GET /api/ping",
            "GET /healthz",
            "GET /metrics",
            "GET /openapi.json",
            "GET /readyz",
            "GET /v1/locks",
            "GET /v1/named-locks",
            "GET /v1/overview",
            "GET /v1/transactions",
            "GET /v1/transactions/{xid}",
            "GET /v1/transactions/{xid}/timeline",
            "POST /api/dtmsvr/abort",
            "POST /api/dtmsvr/forceStop",
            "POST /api/dtmsvr/prepare",
            "POST /api/dtmsvr/registerBranch",
            "POST /api/dtmsvr/registerTccBranch",
            "POST /api/dtmsvr/registerXaBranch",
            "POST /api/dtmsvr/submit",
            "POST /api/ping",
            "POST /v1/locks/check",
            "POST /v1/messages",
            "POST /v1/messages/{xid}/abort",
            "POST /v1/messages/{xid}/submit",
            "POST /v1/named-locks/{name}/acquire",
            "POST /v1/named-locks/{name}/release",
            "POST /v1/named-locks/{name}/renew",
            "POST /v1/sagas",
            "POST /v1/transactions",
            "POST /v1/transactions/{xid}/branches",
            "POST /v1/transactions/{xid}/branches/{branch_id}/report",
            "POST /v1/transactions/{xid}/commit",
            "POST /v1/transactions/{xid}/retry",
            "POST /v1/transactions/{xid}/rollback",
            "POST /v1/transactions/{xid}/stop",
        ]
    );
    // Every status of the contract's enums is in the document, the 3PC branch statuses included.
    let branch_statuses = doc["components"]["schemas"]["BranchStatus"]["enum"].as_array().expect("enum").clone();
    for s in tandem_sdk::wire::BranchStatus::ALL {
        assert!(branch_statuses.contains(&serde_json::json!(s.as_str())), "{s}");
    }
    app.stop().await.expect("coordinator stops");
}

/// Each limit the document declares is the one the server enforces: a
/// value at the limit is accepted, one past it refused, and the limits that
/// come from the configuration are the configured ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_limits_are_the_enforced_ones() {
    use serde_json::json;
    use tandem_sdk::wire::limits;
    let db = TestDb::new("openapi_limits").await;
    let mut settings = support::fast_settings(&db.url);
    settings.request_timeout_ms = 9_000;
    settings.max_timeout_ms = 120_000;
    let (app, _client) = support::spawn_coordinator(settings).await;
    let http = reqwest::Client::new();
    let doc: serde_json::Value =
        http.get(format!("{}/openapi.json", app.url)).send().await.expect("get").json().await.expect("json");
    let schemas = &doc["components"]["schemas"];
    let begin = format!("{}/v1/transactions", app.url);

    // Configured limits: timeout_ms and wait_ms.
    assert_eq!(schemas["BeginRequest"]["properties"]["timeout_ms"]["maximum"], 120_000);
    let wait = doc["paths"]["/v1/transactions/{xid}/commit"]["post"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "wait_ms")
        .expect("wait_ms")["schema"]
        .clone();
    assert_eq!(wait["maximum"], 3_000, "the request timeout minus 6 s");
    assert_eq!(post_json(&http, &begin, &json!({"mode": "tcc", "timeout_ms": 120_000})).await.0, 201);
    assert_eq!(post_json(&http, &begin, &json!({"mode": "tcc", "timeout_ms": 120_001})).await.0, 422);
    assert_eq!(post_json(&http, &begin, &json!({"mode": "tcc", "timeout_ms": 0})).await.0, 422);
    // 5.0 is the integer 5, as JSON Schema says; 5.5 is not an integer.
    assert_eq!(post_json(&http, &begin, &json!({"mode": "tcc", "timeout_ms": 5000.0})).await.0, 201);
    assert_eq!(post_json(&http, &begin, &json!({"mode": "tcc", "timeout_ms": 5000.5})).await.0, 422);
    let created: serde_json::Value =
        http.post(&begin).json(&json!({"mode": "tcc"})).send().await.expect("begin").json().await.expect("json");
    let xid = created["xid"].as_str().expect("xid").to_owned();
    let commit = |ms: u64| format!("{}/v1/transactions/{xid}/commit?wait_ms={ms}", app.url);
    let status = http.post(commit(3_001)).send().await.expect("commit").status().as_u16();
    assert_eq!(status, 400, "wait_ms past its maximum");
    let status = http.post(commit(3_000)).send().await.expect("commit").status().as_u16();
    assert_eq!(status, 200, "wait_ms at its maximum");

    // The served modes only; options only for their mode; objects only.
    let modes = schemas["BeginRequest"]["properties"]["mode"]["enum"].as_array().expect("enum").clone();
    assert_eq!(modes, [json!("tcc"), json!("xa"), json!("at"), json!("3pc"), json!("saga")], "msg begins elsewhere");
    assert_eq!(post_json(&http, &begin, &json!({"mode": "nope"})).await.0, 422);
    // Saga definitions: the declared bounds are the enforced ones.
    let saga = &schemas["SagaRequest"]["properties"];
    assert_eq!(saga["steps"]["maxItems"], json!(tandem_sdk::wire::MAX_SAGA_STEPS));
    assert_eq!(saga["steps"]["minItems"], json!(1));
    assert_eq!(saga["retry_limit"]["maximum"], json!(tandem_sdk::wire::MAX_RETRY_LIMIT));
    let sagas = format!("{}/v1/sagas?wait_ms=0", app.url);
    let step = |after: serde_json::Value| json!({"action_url": "http://127.0.0.1:9/a", "compensate_url": "http://127.0.0.1:9/c", "after": after});
    let two = |after: serde_json::Value| json!({"steps": [step(json!([])), step(after)], "timeout_ms": 1000});
    assert_eq!(post_json(&http, &sagas, &two(json!([0.0]))).await.0, 202, "0.0 is the integer 0");
    assert_eq!(post_json(&http, &sagas, &two(json!([0.5]))).await.0, 422);
    assert_eq!(post_json(&http, &sagas, &json!({"steps": []})).await.0, 422);
    let retry = json!({"steps": [step(json!(null))], "retry_limit": tandem_sdk::wire::MAX_RETRY_LIMIT + 1});
    assert_eq!(post_json(&http, &sagas, &retry).await.0, 422);
    assert_eq!(post_json(&http, &begin, &json!({"mode": "tcc", "three_phase": {}})).await.0, 422);
    assert_eq!(post_json(&http, &begin, &json!({"mode": "3pc", "three_phase": {}})).await.0, 201);
    assert_eq!(post_json(&http, &begin, &json!({"mode": "3pc", "three_phase": [null, null, null]})).await.0, 422);
    assert_eq!(post_json(&http, &begin, &json!(["tcc"])).await.0, 422, "a body is an object");

    // Text fields count characters, refuse U+0000, and say so in the schema.
    let name = &schemas["BeginRequest"]["properties"]["name"];
    assert_eq!(name["maxLength"], limits::MAX_NAME_CHARS);
    assert_eq!(name["pattern"], limits::NO_NUL_PATTERN);
    let at_limit = "é".repeat(limits::MAX_NAME_CHARS);
    assert_eq!(post_json(&http, &begin, &json!({"mode": "tcc", "name": at_limit})).await.0, 201);
    assert_eq!(post_json(&http, &begin, &json!({"mode": "tcc", "name": format!("{at_limit}a")})).await.0, 422);
    assert_eq!(post_json(&http, &begin, &json!({"mode": "tcc", "name": "a\u{0}b"})).await.0, 422);

    // Registration: resource, callback_url, lock keys, payload.
    let register = format!("{}/v1/transactions/{}/branches", app.url, {
        let t = http.post(&begin).json(&json!({"mode": "at"})).send().await.expect("begin");
        t.json::<serde_json::Value>().await.expect("json")["xid"].as_str().expect("xid").to_owned()
    });
    let reg = schemas["RegisterBranchRequest"]["properties"].clone();
    assert_eq!(reg["resource"]["maxLength"], limits::MAX_RESOURCE_CHARS);
    assert_eq!(reg["callback_url"]["pattern"], limits::callback_url_pattern());
    assert_eq!(reg["lock_keys"]["maxItems"], limits::MAX_LOCK_KEYS);
    let branch = |resource: String, url: &str, keys: serde_json::Value, payload: serde_json::Value| json!({"resource": resource, "callback_url": url, "lock_keys": keys, "payload": payload});
    let url = "http://127.0.0.1:9/cb";
    let cases = [
        (branch("r".repeat(limits::MAX_RESOURCE_CHARS), url, json!(["k1"]), json!(null)), 201),
        (branch("r".repeat(limits::MAX_RESOURCE_CHARS + 1), url, json!(["k2"]), json!(null)), 422),
        (branch(String::new(), url, json!(["k3"]), json!(null)), 422),
        (branch("r".into(), "ftp://127.0.0.1/cb", json!(["k4"]), json!(null)), 422),
        (branch("r".into(), "http://127.0.0.1:9/cb#fragment", json!(["k5"]), json!(null)), 422),
        (branch("r".into(), "http://[::1]:9/cb", json!(["k6"]), json!([1, "two"])), 201),
        (branch("r".into(), url, json!(["k".repeat(limits::MAX_LOCK_KEY_CHARS)]), json!(null)), 201),
        (branch("r".into(), url, json!(["k".repeat(limits::MAX_LOCK_KEY_CHARS + 1)]), json!(null)), 422),
        (branch("r".into(), url, json!([""]), json!(null)), 422),
        (branch("r".into(), url, json!(["k7"]), json!({"n": 1e308})), 201),
        (branch("r".into(), url, json!(["k8"]), json!({"n": 1.7976931348623157e308})), 422),
        (branch("r".into(), url, json!(["k9"]), json!({"s": "a\u{0}"})), 422),
    ];
    for (body, expected) in cases {
        assert_eq!(post_json(&http, &register, &body).await.0, expected, "{body}");
    }
    // A stored payload reads back (the largest number jsonb prints in full included).
    let read = http.get(register.trim_end_matches("/branches")).send().await.expect("get");
    assert_eq!(read.status().as_u16(), 200);

    // The page size.
    let page = |limit: u32| format!("{}/v1/transactions?limit={limit}", app.url);
    assert_eq!(http.get(page(limits::MAX_PAGE)).send().await.expect("list").status().as_u16(), 200);
    assert_eq!(http.get(page(limits::MAX_PAGE + 1)).send().await.expect("list").status().as_u16(), 400);
    assert_eq!(http.get(page(0)).send().await.expect("list").status().as_u16(), 400);
    app.stop().await.expect("coordinator stops");
}

/// Every URL of the shape the schema declares for `callback_url` is one
/// the callback client can parse: a URL the schema allows is never refused
/// later, and the server's check (the pattern, then parsing) agrees.
#[test]
fn every_callback_url_of_the_declared_shape_parses() {
    let shape = proptest::string::string_regex(tandem_sdk::wire::limits::callback_url_shape()).expect("regex");
    let mut runner = TestRunner::new(Config { cases: 3_000, ..Config::default() });
    runner
        .run(&shape, |url| {
            let parsed = reqwest::Url::parse(&url).map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
            prop_assert!(parsed.has_host(), "{url} has no host");
            prop_assert!(tandem_sdk::wire::limits::check_callback_url(&url).is_ok() || url.chars().count() > 2048);
            Ok(())
        })
        .expect("every URL of the shape parses");
}
