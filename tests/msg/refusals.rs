//! Bad messages get a clear problem and store nothing.

use crate::engine::{http, message, Endpoint};
use crate::support::{fast_settings, spawn_coordinator, TestDb};
use tandem_sdk::wire::{DeliveryRequest, ErrorCode, MAX_DELIVERIES};

#[tokio::test]
async fn bad_messages_are_refused_and_nothing_is_stored() {
    let db = TestDb::new("msg_refuse").await;
    let mut settings = fast_settings(&db.url);
    settings.max_body_bytes = 64 * 1024;
    let (c, client) = spawn_coordinator(settings).await;
    let e = Endpoint::start().await;
    let ok = || http("a", e.url("a"), serde_json::json!({}));
    let cases: Vec<(&str, tandem_sdk::wire::MessageRequest, &str)> = vec![
        ("no deliveries", message(e.check_url(), vec![]), "deliveries must hold 1 to"),
        ("too many", message(e.check_url(), (0..=MAX_DELIVERIES).map(|_| ok()).collect()), "deliveries must hold 1 to"),
        (
            "unknown destination",
            message(
                e.check_url(),
                vec![DeliveryRequest { name: None, url: None, destination: Some("orders".into()), payload: None }],
            ),
            "is not a configured destination (none is configured)",
        ),
        (
            "both url and destination",
            message(
                e.check_url(),
                vec![DeliveryRequest {
                    name: None,
                    url: Some(e.url("a")),
                    destination: Some("orders".into()),
                    payload: None,
                }],
            ),
            "exactly one of url and destination",
        ),
        (
            "neither",
            message(e.check_url(), vec![DeliveryRequest { name: None, url: None, destination: None, payload: None }]),
            "exactly one of url and destination",
        ),
        ("a check_url that is no URL", message("ftp://x".into(), vec![ok()]), "check_url"),
        (
            "a delivery url that is no URL",
            message(e.check_url(), vec![http("a", "nope".into(), serde_json::json!(1))]),
            "url",
        ),
        ("an empty name", message(e.check_url(), vec![http("", e.url("a"), serde_json::json!(1))]), "name"),
    ];
    for (what, req, says) in cases {
        let err = client.prepare_message(&req, None).await.expect_err(what);
        assert_eq!(err.code(), Some(ErrorCode::ValidationFailed), "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
    }
    let mut zero = message(e.check_url(), vec![ok()]);
    zero.timeout_ms = Some(0);
    assert_eq!(client.prepare_message(&zero, None).await.unwrap_err().code(), Some(ErrorCode::ValidationFailed));

    let raw = reqwest::Client::new();
    let url = format!("{}/v1/messages", c.url);
    // A huge payload: over the body limit.
    let big = message(e.check_url(), vec![http("a", e.url("a"), serde_json::json!("x".repeat(100 * 1024)))]);
    let r = raw.post(&url).json(&big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    // Malformed JSON, an unknown order, a wrong type.
    for (body, status) in [
        ("{\"check_url\": ", 400),
        (
            r#"{"check_url": "http://127.0.0.1:9/c", "deliveries": [{"url": "http://127.0.0.1:9/d"}], "order": "sideways"}"#,
            422,
        ),
        (r#"{"check_url": "http://127.0.0.1:9/c", "deliveries": {"url": "x"}}"#, 422),
    ] {
        let r = raw.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(r.status(), status, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    // Unknown ids.
    let r = raw.post(format!("{}/v1/messages/nope/submit", c.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let pool = db.pool().await;
    let (txs, branches): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM global_transactions), (SELECT count(*) FROM branches)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((txs, branches), (0, 0), "nothing stored");
    assert!(e.checks.lock().unwrap().is_empty() && e.count() == 0);
}
