//! Every endpoint of `/api/dtmsvr` from Rust: DTM's answer shapes, the
//! aliases, tolerated fields, how branches are called (query parameters,
//! body, headers, order), refusals that store nothing, and the DTM
//! listener's grant.

use crate::recorder::Recorder;
use crate::support::{eventually, fast_settings, spawn_coordinator, TestDb};
use serde_json::{json, Value};
use std::time::Duration;
use tandem_coordinator::RunningCoordinator;

const WAIT: Duration = Duration::from_secs(20);

/// A coordinator and an HTTP client of its DTM API.
struct Dtm {
    c: RunningCoordinator,
    base: String,
    http: reqwest::Client,
    _db: TestDb,
}

impl Dtm {
    async fn start(tag: &str) -> Dtm {
        let db = TestDb::new(tag).await;
        let (c, _) = spawn_coordinator(fast_settings(&db.url)).await;
        let base = format!("{}/api/dtmsvr", c.url);
        Dtm { c, base, http: reqwest::Client::new(), _db: db }
    }

    async fn post(&self, op: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}/{op}", self.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, op_and_query: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}/{op_and_query}", self.base)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn new_gid(&self) -> String {
        let (s, v) = self.get("newGid").await;
        assert_eq!(s, 200);
        v["gid"].as_str().unwrap().to_owned()
    }

    async fn query(&self, gid: &str) -> Value {
        let (s, v) = self.get(&format!("query?gid={gid}")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Polls `query` until the transaction's DTM status is `status`.
    async fn until(&self, gid: &str, status: &str) -> Value {
        eventually(&format!("{gid} {status}"), WAIT, || async {
            let v = self.query(gid).await;
            (v["transaction"]["status"] == status).then_some(v)
        })
        .await
    }

    /// The transaction as `/v1` shows it.
    async fn v1(&self, gid: &str) -> Value {
        self.http.get(format!("{}/v1/transactions/{gid}", self.c.url)).send().await.unwrap().json().await.unwrap()
    }
}

fn success() -> Value {
    json!({"dtm_result": "SUCCESS"})
}

fn saga(gid: &str, r: &Recorder, steps: &[(&str, &str)], payloads: &[&str]) -> Value {
    let steps: Vec<Value> = steps.iter().map(|(a, c)| json!({"action": r.url(a), "compensate": r.url(c)})).collect();
    json!({"gid": gid, "trans_type": "saga", "steps": steps, "payloads": payloads})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_version_and_new_gid() {
    let d = Dtm::start("dtm_ping").await;
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let r = d.http.request(method, format!("{}/api/ping", d.c.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"msg": "pong"}));
    }
    let (s, v) = d.get("version").await;
    assert_eq!(s, 200);
    assert!(v["version"].as_str().unwrap().starts_with("tandem-"), "{v}");
    let (s, v) = d.get("newGid").await;
    assert_eq!((s, v["dtm_result"].as_str()), (200, Some("SUCCESS")));
    let gid = v["gid"].as_str().unwrap();
    assert!(tandem_sdk::wire::Xid::parse(gid).is_ok(), "{gid}");
    assert_ne!(d.new_gid().await, gid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_calls_its_actions_as_dtm_does_and_is_an_ordinary_transaction() {
    let d = Dtm::start("dtm_saga").await;
    let r = Recorder::start().await;
    let gid = d.new_gid().await;
    let mut body = saga(&gid, &r, &[("/a1", "/c1"), ("/a2", "/c2")], &[r#"{"amount": 30}"#, r#"{"amount":  5}"#]);
    // What the Python client sends besides: nulls and fields DTM dropped.
    body["custom_data"] = Value::Null;
    body["query_prepared"] = Value::Null;
    body["protocol"] = Value::Null;
    body["passthrough_headers"] = json!([]);
    body["wait_result"] = json!(true);
    body["branch_headers"] = json!({"X-Tenant": "shop"});
    body["request_timeout"] = json!(8);
    assert_eq!(d.post("submit", body).await, (200, success()));
    let calls = r.of(&gid);
    assert_eq!(calls.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(), ["/a1", "/a2"]);
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(c.method, reqwest::Method::POST);
        assert_eq!((c.q("trans_type"), c.q("op")), ("saga", "action"));
        assert_eq!(c.q("branch_id"), format!("0{}", i + 1));
        assert_eq!(c.headers.get("x-tenant").and_then(|v| v.to_str().ok()), Some("shop"));
    }
    // The payload exactly as it came (spaces included), not re-serialized.
    assert_eq!(calls[1].body, r#"{"amount":  5}"#);
    let q = d.query(&gid).await;
    assert_eq!(q["transaction"]["status"], "succeed");
    assert_eq!(q["transaction"]["trans_type"], "saga");
    assert_eq!(q["transaction"]["steps"][1]["action"], r.url("/a2"));
    let ops: Vec<(&str, &str, &str)> = q["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["branch_id"].as_str().unwrap(), b["op"].as_str().unwrap(), b["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [
            ("01", "compensate", "prepared"),
            ("01", "action", "succeed"),
            ("02", "compensate", "prepared"),
            ("02", "action", "succeed")
        ]
    );
    // bin_data is base64 of the payload.
    assert_eq!(q["branches"][0]["bin_data"], "eyJhbW91bnQiOiAzMH0=");
    let v1 = d.v1(&gid).await;
    assert_eq!((v1["mode"].as_str(), v1["status"].as_str()), (Some("saga"), Some("committed")));
    // Submitting it again: DTM answers a finished saga FAILURE.
    let again = saga(&gid, &r, &[("/a1", "/c1")], &["{}"]);
    let (s, v) = d.post("submit", again).await;
    assert_eq!((s, v["dtm_result"].as_str()), (409, Some("FAILURE")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_compensates_every_called_step_in_reverse() {
    let d = Dtm::start("dtm_saga_fail").await;
    let r = Recorder::start().await;
    r.answer("/a2", 200, r#"{"dtm_result":"FAILURE","message":"insufficient balance"}"#);
    let gid = d.new_gid().await;
    let mut body = saga(&gid, &r, &[("/a1", "/c1"), ("/a2", "/c2"), ("/a3", "/c3")], &["{}", "{}", "{}"]);
    body["wait_result"] = json!(true);
    let (s, v) = d.post("submit", body).await;
    assert_eq!((s, v["dtm_result"].as_str()), (409, Some("FAILURE")), "{v}");
    d.until(&gid, "failed").await;
    let paths: Vec<String> = r.of(&gid).into_iter().map(|c| format!("{} {}", c.path, c.q("op"))).collect();
    // DTM compensates the failed step too; the step never called is not.
    assert_eq!(paths, ["/a1 action", "/a2 action", "/c2 compensate", "/c1 compensate"]);
    let v1 = d.v1(&gid).await;
    assert_eq!(v1["status"], "rolled_back");
    assert_eq!(v1["rollback_reason"], "branch_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_saga_follows_its_orders() {
    let d = Dtm::start("dtm_saga_conc").await;
    let r = Recorder::start().await;
    let gid = d.new_gid().await;
    let mut body = saga(&gid, &r, &[("/a1", "/c1"), ("/a2", "/c2"), ("/a3", "/c3")], &["{}", "{}", "{}"]);
    body["custom_data"] = json!(r#"{"concurrent":true,"orders":{"2":[0,1]}}"#);
    assert_eq!(d.post("submit", body).await, (200, success()));
    d.until(&gid, "succeed").await;
    let paths: Vec<String> = r.of(&gid).into_iter().map(|c| c.path).collect();
    assert_eq!(paths.len(), 3);
    assert_eq!(paths[2], "/a3", "step 2 runs after steps 0 and 1: {paths:?}");
    // A cycle is refused and nothing is stored.
    let gid2 = d.new_gid().await;
    let mut body = saga(&gid2, &r, &[("/a1", "/c1"), ("/a2", "/c2")], &["{}", "{}"]);
    body["custom_data"] = json!(r#"{"concurrent":true,"orders":{"0":[1],"1":[0]}}"#);
    let (s, v) = d.post("submit", body).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("cycle"), "{v}");
    assert_eq!(d.query(&gid2).await, json!({"transaction": null, "branches": []}));
}

fn tcc_branch(gid: &str, id: &str, r: &Recorder, data: &str) -> Value {
    json!({"gid": gid, "branch_id": id, "trans_type": "tcc", "status": "prepared", "data": data,
        "confirm": r.url(&format!("/confirm{id}")), "cancel": r.url(&format!("/cancel{id}"))})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_confirms_in_reverse_and_cancels_through_every_alias() {
    let d = Dtm::start("dtm_tcc").await;
    let r = Recorder::start().await;
    let gid = d.new_gid().await;
    let tx = json!({"gid": gid, "trans_type": "tcc"});
    assert_eq!(d.post("prepare", tx.clone()).await, (200, success()));
    // Preparing a prepared gid again is fine.
    assert_eq!(d.post("prepare", tx.clone()).await, (200, success()));
    assert_eq!(d.post("registerBranch", tcc_branch(&gid, "01", &r, r#"{"a":1}"#)).await, (200, success()));
    assert_eq!(d.post("registerTccBranch", tcc_branch(&gid, "02", &r, "")).await, (200, success()));
    // A client's retry of a registration: success, no second branch.
    assert_eq!(d.post("registerBranch", tcc_branch(&gid, "01", &r, r#"{"a":1}"#)).await, (200, success()));
    assert_eq!(d.post("submit", tx.clone()).await, (200, success()));
    d.until(&gid, "succeed").await;
    let calls = r.of(&gid);
    let seen: Vec<String> = calls.iter().map(|c| format!("{} {} {}", c.method, c.path, c.q("op"))).collect();
    // Reverse registration order; no payload → GET, with one → POST of it.
    assert_eq!(seen, ["GET /confirm02 confirm", "POST /confirm01 confirm"]);
    assert_eq!(calls[1].body, r#"{"a":1}"#);
    let q = d.query(&gid).await;
    assert_eq!(q["branches"].as_array().unwrap().len(), 4, "two rows per branch: {q}");
    // Registering on a finished transaction: DTM's FAILURE.
    let (s, v) = d.post("registerBranch", tcc_branch(&gid, "03", &r, "")).await;
    assert_eq!((s, v["dtm_result"].as_str()), (409, Some("FAILURE")));
    assert!(v["message"].as_str().unwrap().contains("no trans with gid"), "{v}");
    let (s, _) = d.post("prepare", tx).await;
    assert_eq!(s, 409, "a finished gid cannot be prepared again");

    // Aborted: the cancels, in reverse.
    let gid = d.new_gid().await;
    let tx = json!({"gid": gid, "trans_type": "tcc"});
    assert_eq!(d.post("prepare", tx.clone()).await, (200, success()));
    assert_eq!(d.post("registerBranch", tcc_branch(&gid, "01", &r, "{}")).await, (200, success()));
    assert_eq!(d.post("registerBranch", tcc_branch(&gid, "02", &r, "{}")).await, (200, success()));
    assert_eq!(d.post("abort", tx.clone()).await, (200, success()));
    d.until(&gid, "failed").await;
    let seen: Vec<String> = r.of(&gid).iter().map(|c| format!("{} {}", c.path, c.q("op"))).collect();
    assert_eq!(seen, ["/cancel02 cancel", "/cancel01 cancel"]);
    assert_eq!(d.v1(&gid).await["status"], "rolled_back");
    // A confirm answering FAILURE: Tandem ends it commit_failed for an operator.
    let gid = d.new_gid().await;
    let tx = json!({"gid": gid, "trans_type": "tcc"});
    r.answer("/confirm09", 409, "{}");
    assert_eq!(d.post("prepare", tx.clone()).await, (200, success()));
    assert_eq!(d.post("registerBranch", tcc_branch(&gid, "09", &r, "")).await, (200, success()));
    assert_eq!(d.post("submit", tx).await, (200, success()));
    let q = d.until(&gid, "failed").await;
    assert_eq!(q["transaction"]["tandem_status"], "commit_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xa_phase_two_posts_commit_and_rollback() {
    let d = Dtm::start("dtm_xa").await;
    let r = Recorder::start().await;
    for (end, op) in [("submit", "commit"), ("abort", "rollback")] {
        let gid = d.new_gid().await;
        let tx = json!({"gid": gid, "trans_type": "xa"});
        assert_eq!(d.post("prepare", tx.clone()).await, (200, success()));
        for id in ["01", "02"] {
            let b = json!({"gid": gid, "branch_id": id, "trans_type": "xa", "url": r.url("/xa")});
            assert_eq!(d.post("registerXaBranch", b).await, (200, success()));
        }
        assert_eq!(d.post(end, tx).await, (200, success()));
        d.until(&gid, if end == "submit" { "succeed" } else { "failed" }).await;
        let calls = r.of(&gid);
        let seen: Vec<String> = calls
            .iter()
            .map(|c| format!("{} {} {} {}", c.method, c.q("trans_type"), c.q("branch_id"), c.q("op")))
            .collect();
        // XA: always POST, in registration order.
        assert_eq!(seen, [format!("POST xa 01 {op}"), format!("POST xa 02 {op}")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_is_delivered_after_submit_or_after_its_back_check() {
    let d = Dtm::start("dtm_msg").await;
    let r = Recorder::start().await;
    let msg = |gid: &str, check: &str| {
        json!({"gid": gid, "trans_type": "msg", "steps": [{"action": r.url("/deliver")}], "payloads": [r#"{"order":7}"#],
            "query_prepared": r.url(check), "timeout_to_fail": 1})
    };
    // Prepared, submitted: delivered.
    let gid = d.new_gid().await;
    assert_eq!(d.post("prepare", msg(&gid, "/check")).await, (200, success()));
    assert_eq!(d.post("submit", msg(&gid, "/check")).await, (200, success()));
    d.until(&gid, "succeed").await;
    let calls = r.of(&gid);
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].path.as_str(), calls[0].q("branch_id"), calls[0].q("op")), ("/deliver", "01", "action"));
    assert_eq!(calls[0].body, r#"{"order":7}"#);

    // Never submitted: back-checked after timeout_to_fail; 200 → delivered.
    let gid = d.new_gid().await;
    assert_eq!(d.post("prepare", msg(&gid, "/check")).await, (200, success()));
    d.until(&gid, "succeed").await;
    let seen: Vec<String> =
        r.of(&gid).iter().map(|c| format!("{} {} {} {}", c.method, c.path, c.q("branch_id"), c.q("op"))).collect();
    assert_eq!(seen, ["GET /check 00 msg", "POST /deliver 01 action"]);

    // The back-check answers FAILURE: failed, nothing delivered.
    r.answer("/check-no", 409, r#"{"dtm_result":"FAILURE"}"#);
    let gid = d.new_gid().await;
    assert_eq!(d.post("prepare", msg(&gid, "/check-no")).await, (200, success()));
    d.until(&gid, "failed").await;
    assert!(r.of(&gid).iter().all(|c| c.path == "/check-no"));

    // Aborted while prepared.
    let gid = d.new_gid().await;
    assert_eq!(d.post("prepare", msg(&gid, "/check")).await, (200, success()));
    assert_eq!(d.post("abort", json!({"gid": gid, "trans_type": "msg"})).await, (200, success()));
    d.until(&gid, "failed").await;
    assert!(r.of(&gid).is_empty());

    // Submitted without a prepare: delivered, never back-checked.
    let gid = d.new_gid().await;
    let mut m = msg(&gid, "/check");
    m["query_prepared"] = Value::Null;
    assert_eq!(d.post("submit", m).await, (200, success()));
    d.until(&gid, "succeed").await;
    assert_eq!(r.of(&gid).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_force_stop_answer_in_dtms_shapes() {
    let d = Dtm::start("dtm_stop").await;
    let r = Recorder::start().await;
    // A saga cannot be aborted.
    r.answer("/slow", 503, "later");
    let gid = d.new_gid().await;
    assert_eq!(d.post("submit", saga(&gid, &r, &[("/slow", "/c")], &["{}"])).await, (200, success()));
    let (s, v) = d.post("abort", json!({"gid": gid, "trans_type": "saga"})).await;
    assert_eq!((s, v["dtm_result"].as_str()), (409, Some("FAILURE")), "{v}");
    // forceStop ends it without calling anything more, and says it is not clean.
    assert_eq!(d.post("forceStop", json!({"gid": gid})).await, (200, success()));
    let q = d.query(&gid).await;
    assert_eq!(q["transaction"]["status"], "failed");
    assert_eq!(q["transaction"]["tandem_status"], "rollback_failed");
    let (s, v) = d.post("forceStop", json!({"gid": gid})).await;
    assert_eq!((s, v["dtm_result"].as_str()), (409, Some("FAILURE")));
    // Unknown gids.
    let (s, v) = d.post("abort", json!({"gid": "no-such-gid", "trans_type": "tcc"})).await;
    assert_eq!(s, 404, "{v}");
    let (s, _) = d.post("forceStop", json!({"gid": "no-such-gid"})).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_store_nothing() {
    let d = Dtm::start("dtm_bad").await;
    let r = Recorder::start().await;
    let raw = d.http.post(format!("{}/submit", d.base)).body("{not json").send().await.unwrap();
    assert_eq!(raw.status(), 400);
    assert!(raw.json::<Value>().await.unwrap()["message"].as_str().unwrap().contains("not JSON"));
    let cases = [
        json!({"gid": "has/slash", "trans_type": "saga", "steps": [{"action": r.url("/a"), "compensate": ""}], "payloads": ["{}"]}),
        json!({"gid": "g-unknown-type", "trans_type": "workflow"}),
        json!({"gid": "g-no-type"}),
        json!({"gid": "g-no-steps", "trans_type": "saga", "steps": []}),
        json!({"gid": "g-metadata", "trans_type": "saga", "steps": [{"action": "http://169.254.169.254/x", "compensate": ""}]}),
        json!({"gid": "g-bad-timeout", "trans_type": "tcc", "timeout_to_fail": "soon"}),
        json!({"gid": "g-bad-header", "trans_type": "tcc", "branch_headers": {"bad header": "x"}}),
        json!(["not", "an", "object"]),
    ];
    for body in cases {
        let (s, v) = d.post("submit", body.clone()).await;
        assert_eq!(s, 422, "{body} → {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        if let Some(gid) = body["gid"].as_str().filter(|g| !g.contains('/')) {
            assert_eq!(d.query(gid).await["transaction"], Value::Null, "{gid} stored");
        }
    }
    let (s, v) = d.post("prepare", json!({"gid": "g-saga-prepared", "trans_type": "saga"})).await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = d
        .post("prepare", json!({"gid": "g-msg-no-check", "trans_type": "msg", "steps": [{"action": r.url("/d")}]}))
        .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = d.post("registerBranch", json!({"gid": "nobody", "branch_id": "01", "trans_type": "tcc"})).await;
    assert_eq!((s, v["dtm_result"].as_str()), (409, Some("FAILURE")), "{v}");
    let (s, _) = d.post("registerBranch", json!({"gid": "nobody", "branch_id": "a b", "trans_type": "tcc"})).await;
    assert_eq!(s, 422);
    let (s, v) = d.get("query").await;
    assert_eq!(s, 422, "{v}");
    let (s, _) = d.get("all?limit=0").await;
    assert_eq!(s, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_all_page_in_dtms_shapes() {
    let d = Dtm::start("dtm_all").await;
    let r = Recorder::start().await;
    assert_eq!(d.query("never-begun").await, json!({"transaction": null, "branches": []}));
    let mut gids = Vec::new();
    for _ in 0..3 {
        let gid = d.new_gid().await;
        assert_eq!(d.post("prepare", json!({"gid": gid, "trans_type": "tcc"})).await, (200, success()));
        gids.push(gid);
    }
    assert_eq!(d.post("submit", saga(&d.new_gid().await, &r, &[("/a", "/c")], &["{}"])).await.0, 200);
    let (s, page) = d.get("all?limit=2").await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["transactions"].as_array().unwrap().len(), 2);
    let next = page["next_position"].as_str().unwrap();
    assert!(!next.is_empty());
    let (_, rest) = d.get(&format!("all?limit=3&position={next}")).await;
    // Fewer than the limit came back: the end (DTM's rule).
    assert_eq!(rest["transactions"].as_array().unwrap().len(), 2);
    assert_eq!(rest["next_position"], "");
    let (_, prepared) = d.get("all?status=prepared").await;
    let listed: Vec<&str> =
        prepared["transactions"].as_array().unwrap().iter().map(|t| t["gid"].as_str().unwrap()).collect();
    for gid in &gids {
        assert!(listed.contains(&gid.as_str()), "{gid} in {listed:?}");
    }
    assert_eq!(listed.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dtm_listener_grants_its_roles_to_requests_without_a_token() {
    let db = TestDb::new("dtm_grant").await;
    let (_, entry) = tandem_coordinator::auth::tokens::generate_for("admin", "ops").unwrap();
    let mut settings = fast_settings(&db.url);
    settings.tokens = Some(entry);
    settings.callback_key = Some("ab".repeat(32));
    settings.dtm_listen = Some("127.0.0.1:0".parse().unwrap());
    settings.dtm_grant = Some("client,participant".into());
    let (c, _) = spawn_coordinator(settings).await;
    let dtm = c.dtm_url.clone().expect("a DTM listener");
    let http = reqwest::Client::new();
    let r = Recorder::start().await;
    let gid = tandem_sdk::wire::Xid::generate().to_string();
    let body = saga(&gid, &r, &[("/a", "/c")], &["{}"]);
    // The main listener wants a token for the DTM API as for /v1.
    let main = http.post(format!("{}/api/dtmsvr/submit", c.url)).json(&body).send().await.unwrap();
    assert_eq!(main.status(), 401);
    // The DTM listener grants client and participant…
    let ok = http.post(format!("{dtm}/api/dtmsvr/submit")).json(&body).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    eventually("the saga's action", WAIT, || async { (!r.of(&gid).is_empty()).then_some(()) }).await;
    // …and nothing more: forceStop needs an admin.
    let stop = http.post(format!("{dtm}/api/dtmsvr/forceStop")).json(&json!({"gid": gid})).send().await.unwrap();
    assert_eq!(stop.status(), 403);
    // Its transactions carry the grant's name.
    let pool = db.pool().await;
    let began_by: Option<String> = sqlx::query_scalar("SELECT began_by FROM global_transactions WHERE xid = $1")
        .bind(&gid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(began_by.as_deref(), Some("dtm-listener"));
    // The DTM listener is the coordinator itself: never a callback.
    let gid2 = tandem_sdk::wire::Xid::generate().to_string();
    let own = json!({"gid": gid2, "trans_type": "saga", "payloads": ["{}"],
        "steps": [{"action": format!("{dtm}/api/dtmsvr/submit"), "compensate": ""}]});
    let refused = http.post(format!("{dtm}/api/dtmsvr/submit")).json(&own).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    // Only the DTM routes are served there.
    let v1 = http.get(format!("{dtm}/v1/transactions")).send().await.unwrap();
    assert_eq!(v1.status(), 404);
    c.stop().await.unwrap();

    // Without a grant, the DTM listener needs tokens too.
    let (_, entry) = tandem_coordinator::auth::tokens::generate_for("admin", "ops").unwrap();
    let mut settings = fast_settings(&db.url);
    settings.tokens = Some(entry);
    settings.callback_key = Some("ab".repeat(32));
    settings.dtm_listen = Some("127.0.0.1:0".parse().unwrap());
    let (c, _) = spawn_coordinator(settings).await;
    let dtm = c.dtm_url.clone().unwrap();
    let refused = http.get(format!("{dtm}/api/dtmsvr/newGid")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    c.stop().await.unwrap();
}
