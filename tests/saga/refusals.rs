//! Bad saga definitions: refused with a clear problem, nothing stored.

use crate::engine::{saga, Steps};
use crate::support::{fast_settings, spawn_coordinator, TestDb};
use tandem_sdk::wire::{SagaRequest, MAX_SAGA_STEPS};

async fn stored(pool: &sqlx::PgPool) -> (i64, i64) {
    let t: i64 = sqlx::query_scalar("SELECT count(*) FROM global_transactions").fetch_one(pool).await.unwrap();
    let b: i64 = sqlx::query_scalar("SELECT count(*) FROM branches").fetch_one(pool).await.unwrap();
    (t, b)
}

#[tokio::test]
async fn bad_definitions_are_refused_and_nothing_is_stored() {
    let db = TestDb::new("saga_refusals").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let pool = db.pool().await;
    let p = Steps::start().await;
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{}/v1/sagas", c.url);
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let problem: serde_json::Value = r.json().await.unwrap_or_default();
            (status, problem["code"].as_str().unwrap_or_default().to_owned(), problem["detail"].to_string())
        }
    };
    let cycle = {
        let mut s = saga(vec![p.step("a"), p.step("b"), p.step("c")]);
        s.steps[0].after = Some(vec![2]);
        s.steps[1].after = Some(vec![0]);
        s.steps[2].after = Some(vec![1]);
        s
    };
    let unknown = {
        let mut s = saga(vec![p.step("a"), p.step("b")]);
        s.steps[1].after = Some(vec![7]);
        s
    };
    let own = {
        let mut s = saga(vec![p.step("a")]);
        s.steps[0].after = Some(vec![0]);
        s
    };
    let many = saga((0..=MAX_SAGA_STEPS).map(|i| p.step(&format!("s{i}"))).collect());
    let mut bad_url = saga(vec![p.step("a")]);
    bad_url.steps[0].action_url = "ftp://127.0.0.1/x".into();
    let mut bad_limit = saga(vec![p.step("a")]);
    bad_limit.retry_limit = Some(1_000_000);
    let cases: Vec<(&str, SagaRequest, &str)> = vec![
        ("a dependency cycle", cycle, "cycle"),
        ("an unknown step", unknown, "does not exist"),
        ("a step after itself", own, "cycle"),
        ("no steps", saga(vec![]), "at least one step"),
        ("too many steps", many, "at most"),
        ("a bad action URL", bad_url, "action_url"),
        ("a huge retry_limit", bad_limit, "retry_limit"),
    ];
    for (what, req, says) in cases {
        let (status, code, detail) = post(serde_json::to_value(&req).unwrap()).await;
        assert_eq!((status, code.as_str()), (422, "validation_failed"), "{what}: {detail}");
        assert!(detail.contains(says), "{what}: {detail}");
        assert_eq!(stored(&pool).await, (0, 0), "{what}: nothing stored");
    }
    // Not JSON, a body over the limit, a wrong type.
    let raw = |body: Vec<u8>| {
        let http = http.clone();
        let url = format!("{}/v1/sagas", c.url);
        async move {
            http.post(url).header("content-type", "application/json").body(body).send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(raw(b"{\"steps\": [".to_vec()).await, 400);
    assert_eq!(raw(b"[]".to_vec()).await, 422, "JSON, but not an object");
    let huge = format!("{{\"steps\":[{{\"action_url\":\"http://127.0.0.1:1/{}\"}}]}}", "x".repeat(4 << 20));
    assert_eq!(raw(huge.into_bytes()).await, 413);
    assert_eq!(stored(&pool).await, (0, 0));
    // And a good one is stored.
    let t = crate::engine::run(&client, &saga(vec![p.step("ok")])).await;
    assert_eq!(t.status.as_str(), "committed");
    assert_eq!(stored(&pool).await, (1, 1));
}
