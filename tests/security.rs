//! Part of the `coordinator` suite: authentication, roles, rate limits,
//! the callback allow-list, callback signatures, TLS, and the refusal to
//! serve unauthenticated off loopback. Every API operation is taken from
//! the served OpenAPI document and called without a token (401), with a
//! token of none of its roles (403) and with one of its roles (neither).

use crate::support::{self, eventually, TestDb};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tandem_coordinator::auth::tokens::{generate, Role, Roles};
use tandem_coordinator::Settings;
use tandem_sdk::wire::signature::SigningKey;
use tandem_sdk::wire::{
    BeginRequest, ErrorCode, GlobalStatus, Mode, RegisterBranchRequest, ReportRequest, ReportStatus,
};
use tandem_sdk::TandemClient;

/// The tokens of one test coordinator.
struct Tokens {
    client: String,
    other_client: String,
    participant: String,
    admin: String,
    limited: String,
    /// The configuration entries (TANDEM_TOKENS form).
    entries: String,
    /// The callback signing key, hex.
    key: String,
}

impl Tokens {
    fn new() -> Tokens {
        let mut entries = Vec::new();
        let mut make = |roles: &[Role], name: &str, extra: &str| {
            let (token, entry) = generate(Roles::of(roles), name);
            entries.push(format!("{entry}{extra}"));
            token
        };
        let client = make(&[Role::Client], "shop", "");
        let other_client = make(&[Role::Client], "other-shop", "");
        let participant = make(&[Role::Participant], "inventory", "");
        let admin = make(&[Role::Admin], "ops", "");
        let limited = make(&[Role::Client], "slow", " rate=3");
        Tokens { client, other_client, participant, admin, limited, entries: entries.join(";"), key: "ab".repeat(32) }
    }

    fn settings(&self, db: &str) -> Settings {
        let mut s = support::fast_settings(db);
        s.tokens = Some(self.entries.clone());
        s.callback_key = Some(self.key.clone());
        s
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_hex(&self.key).expect("key")
    }
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut req = http.request(method.parse().expect("method"), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    } else if method == "POST" {
        req = req.json(&json!({}));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_needs_its_role_and_a_client_sees_only_its_own() {
    let db = TestDb::new("auth_roles").await;
    let t = Tokens::new();
    let (app, _) = support::spawn_coordinator(t.settings(&db.url)).await;
    let base = app.url.clone();
    let client = TandemClient::new(&base).expect("client").with_token(&t.client);
    let other = TandemClient::new(&base).expect("client").with_token(&t.other_client);
    let admin = TandemClient::new(&base).expect("client").with_token(&t.admin);
    let begin =
        BeginRequest { mode: Mode::Tcc, name: Some("auth".into()), timeout_ms: Some(60_000), three_phase: None };
    let mine = client.begin(&begin).await.expect("a client begins");
    // The operations below are called for real (an admin's commit commits):
    // on a transaction of their own.
    let probe = client.begin(&begin).await.expect("a client begins");

    // Every operation of the document, with its rule.
    let (status, doc) = call("GET", &format!("{base}/openapi.json"), None, None).await;
    assert_eq!(status, 200, "the document is public");
    assert!(doc.pointer("/components/securitySchemes/bearer").is_some());
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            let method = method.to_uppercase();
            let url = format!(
                "{base}{}",
                path.replace("{xid}", probe.xid.as_str()).replace("{branch_id}", "b-0000000000000000")
            );
            let public = op["security"].as_array().is_some_and(|s| s.is_empty());
            let (status, body) = call(&method, &url, None, None).await;
            if public {
                assert_ne!(status, 401, "{method} {path} is public");
                continue;
            }
            assert_eq!(status, 401, "{method} {path} without a token: {body}");
            assert_eq!(body["code"], "unauthorized", "{method} {path}");
            let (status, _) = call(&method, &url, Some("tdm_not-a-token"), None).await;
            assert_eq!(status, 401, "{method} {path} with an unknown token");
            let roles: Vec<&str> =
                op["x-tandem-roles"].as_array().expect("roles").iter().filter_map(Value::as_str).collect();
            let token_of = |role: &str| match role {
                "client" => &t.client,
                "participant" => &t.participant,
                _ => &t.admin,
            };
            for role in ["client", "participant", "admin"] {
                let (status, body) = call(&method, &url, Some(token_of(role)), None).await;
                if roles.contains(&role) {
                    assert!(!matches!(status, 401 | 403), "{method} {path} as {role}: {status} {body}");
                } else {
                    assert_eq!(status, 403, "{method} {path} as {role}: {body}");
                    assert_eq!(body["code"], "forbidden");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 17, "every protected operation was tried ({checked})");

    // A client reads, lists and decides only its own transactions.
    let theirs = other.get(&mine.xid).await.expect_err("not theirs");
    assert_eq!(theirs.status(), Some(404));
    assert_eq!(other.commit(&mine.xid, None).await.expect_err("not theirs").status(), Some(404));
    let listed = other.list(&Default::default()).await.expect("list");
    assert!(listed.transactions.iter().all(|x| x.xid != mine.xid));
    let listed = client.list(&Default::default()).await.expect("list");
    assert!(listed.transactions.iter().any(|x| x.xid == mine.xid));
    assert!(admin.list(&Default::default()).await.expect("list").transactions.iter().any(|x| x.xid == mine.xid));
    // The same idempotency key from two clients begins two transactions.
    let a = client.begin_idempotent(&begin, "same-key").await.expect("begin");
    let b = other.begin_idempotent(&begin, "same-key").await.expect("begin");
    assert_ne!(a.xid, b.xid);
    assert_eq!(client.begin_idempotent(&begin, "same-key").await.expect("again").xid, a.xid);
    // The coordinator's own API is no callback, even on loopback (allowed by default).
    let participant = TandemClient::new(&base).expect("client").with_token(&t.participant);
    let own = format!("http://127.0.0.1:{}/v1/transactions", app.local_addr().port());
    let register = RegisterBranchRequest { resource: "r".into(), callback_url: own, payload: None, lock_keys: None };
    let err = participant.register(&mine.xid, &register).await.expect_err("itself");
    assert_eq!(err.code(), Some(ErrorCode::CallbackNotAllowed), "{err}");
    let decided = client.rollback(&mine.xid, None).await.expect("its own");
    assert_eq!(decided.transaction.status, GlobalStatus::RolledBack);

    // A token over its rate: 429 with Retry-After.
    let mut limited = None;
    for _ in 0..10 {
        let r = reqwest::Client::new()
            .get(format!("{base}/v1/transactions"))
            .bearer_auth(&t.limited)
            .send()
            .await
            .expect("request");
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the fourth request in a burst of three per second is refused");
    let wait: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!(wait >= 1);
    let body: Value = r.json().await.expect("problem");
    assert_eq!(body["code"], "rate_limited");
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_go_only_where_allowed_and_a_refusal_stores_nothing() {
    let db = TestDb::new("auth_allow").await;
    let mut settings = support::fast_settings(&db.url);
    // Names of this machine resolve to loopback; a name rule does not make
    // loopback reachable (DNS rebinding).
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_owned();
    settings.callback_allow = vec![format!("http://{host}:*").parse().expect("rule")];
    let (app, client) = support::spawn_coordinator(settings).await;
    let own_port = app.local_addr().port();
    let begin = BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: Some(60_000), three_phase: None };
    let tx = client.begin(&begin).await.expect("begin");
    let register =
        |url: String| RegisterBranchRequest { resource: "r".into(), callback_url: url, payload: None, lock_keys: None };
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[fd00:ec2::254]/".to_owned(),
        "http://10.0.0.7:8080/cb".to_owned(),
        "https://example.com/cb".to_owned(),
        format!("http://127.0.0.1:{own_port}/v1/transactions"),
    ] {
        let err = client.register(&tx.xid, &register(url.clone())).await.expect_err(&url);
        assert_eq!(err.code(), Some(ErrorCode::CallbackNotAllowed), "{url}: {err}");
        assert_eq!(err.status(), Some(422));
    }
    assert!(client.get(&tx.xid).await.expect("get").branches.is_empty(), "nothing stored");
    let saga =
        json!({ "steps": [{ "action_url": "http://169.254.169.254/a", "compensate_url": "http://127.0.0.1:9/c" }] });
    let (status, body) = call("POST", &format!("{}/v1/sagas?wait_ms=0", app.url), None, Some(saga)).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("callback_not_allowed")));
    let listed = client.list(&Default::default()).await.expect("list");
    assert_eq!(listed.transactions.len(), 1, "no saga was stored");

    // The name matches its rule, but resolves to loopback: the call is not made.
    let resolves_to_loopback = tokio::net::lookup_host((host.as_str(), 80))
        .await
        .map(|mut a| a.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    if host.is_empty() || !resolves_to_loopback {
        eprintln!("skipped the rebinding check: this machine's name {host:?} does not resolve to loopback");
    } else {
        let (url, calls) = support::answering(200).await;
        let port = url.rsplit(':').next().and_then(|p| p.split('/').next()).expect("port").to_owned();
        let named = format!("http://{host}:{port}/cb");
        let b = client.register(&tx.xid, &register(named)).await.expect("the name is allowed");
        let report = ReportRequest { status: ReportStatus::Prepared, detail: None };
        client.report(&tx.xid, &b.branch_id, &report).await.expect("report");
        client.commit(&tx.xid, Some(Duration::ZERO)).await.expect("commit");
        let t = eventually("the refused call recorded", Duration::from_secs(10), || async {
            let t = client.get(&tx.xid).await.ok()?;
            t.branches[0].last_error.clone().filter(|e| e.contains("loopback")).map(|_| t)
        })
        .await;
        assert_eq!(t.status, GlobalStatus::Committing);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no request reached the participant");
    }
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_signed_and_the_sdk_refuses_forged_ones() {
    let db = TestDb::new("auth_sign").await;
    let bank_db = TestDb::new("auth_sign_bank").await;
    let t = Tokens::new();
    let (app, _) = support::spawn_coordinator(t.settings(&db.url)).await;
    let client = TandemClient::new(&app.url).expect("client").with_token(&t.client);

    // A bank whose participant knows the coordinator's key and token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let bank_url = format!("http://{}", listener.local_addr().expect("addr"));
    let pool = bank_db.pool().await;
    let coordinator =
        TandemClient::new(&app.url).expect("client").with_token(&t.participant).with_callback_key(t.signing_key());
    let participant = tandem_example_bank::participant(pool.clone(), coordinator, &bank_url);
    tandem_example_bank::setup(&participant).await.expect("schema");
    tandem_example_bank::open_account(&pool, "alice", 100).await.expect("account");
    let forged = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let _ = axum::serve(listener, tandem_example_bank::router(participant)).await;
    });

    // Signed end to end: a leg confirmed once.
    let tx = client.begin(&BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: None, three_phase: None }).await;
    let tx = tx.expect("begin");
    let leg = json!({ "account": "alice", "amount": 30, "direction": "debit" });
    let r = reqwest::Client::new()
        .post(format!("{bank_url}/legs"))
        .header("Tandem-Xid", tx.xid.as_str())
        .json(&leg)
        .send()
        .await
        .expect("leg");
    assert_eq!(r.status(), 200);
    let branch: Value = r.json().await.expect("branch");
    let branch_id = branch["branch_id"].as_str().expect("id").to_owned();
    let done = client.commit(&tx.xid, None).await.expect("commit");
    assert_eq!(done.transaction.status, GlobalStatus::Committed);
    assert_eq!(tandem_example_bank::step_count(&pool, &branch_id, "confirm").await.expect("steps"), 1);

    // Forged, unsigned, stale and replayed callbacks are refused before any step runs.
    let callback = format!("{bank_url}{}", tandem_sdk::tcc::CALLBACK_PATH);
    let body = serde_json::to_vec(&json!({
        "xid": tx.xid, "branch_id": branch_id, "mode": "tcc", "action": "rollback", "resource": "account",
        "payload": leg,
    }))
    .expect("body");
    let send = |sig: Option<String>| {
        let (callback, body, xid, forged) = (callback.clone(), body.clone(), tx.xid.to_string(), forged.clone());
        async move {
            forged.fetch_add(1, Ordering::SeqCst);
            let mut req = reqwest::Client::new()
                .post(&callback)
                .header("Tandem-Xid", xid)
                .header("content-type", "application/json")
                .body(body);
            if let Some(s) = sig {
                req = req.header("Tandem-Signature", s);
            }
            let r = req.send().await.expect("callback");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let now = chrono::Utc::now().timestamp();
    let wrong = SigningKey::from_hex(&"cd".repeat(32)).expect("key");
    for (what, sig) in [
        ("unsigned", None),
        ("forged", Some(wrong.sign(now, tx.xid.as_str(), &body))),
        ("stale", Some(t.signing_key().sign(now - 3_600, tx.xid.as_str(), &body))),
        ("about another body", Some(t.signing_key().sign(now, tx.xid.as_str(), b"{}"))),
    ] {
        let (status, problem) = send(sig).await;
        assert_eq!(status, 401, "{what}: {problem}");
        assert_eq!(problem["code"], "invalid_signature", "{what}");
    }
    let good = t.signing_key().sign(now, tx.xid.as_str(), &body);
    let (status, _) = send(Some(good.clone())).await;
    assert_eq!(status, 409, "a genuine rollback of a committed branch is refused by the branch itself");
    let (status, problem) = send(Some(good)).await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("invalid_signature")), "a replay: {problem}");
    assert_eq!(tandem_example_bank::step_count(&pool, &branch_id, "cancel").await.expect("steps"), 0);
    assert_eq!(forged.load(Ordering::SeqCst), 6);
    let alice = tandem_example_bank::balance(&pool, "alice").await.expect("read").expect("alice");
    assert_eq!((alice.balance, alice.frozen), (70, 0));
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_with_an_admin_token_and_out() {
    let db = TestDb::new("auth_console").await;
    let t = Tokens::new();
    let (app, _) = support::spawn_coordinator(t.settings(&db.url)).await;
    let base = app.url.clone();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("http");
    let r = http.get(format!("{base}/console")).send().await.expect("get");
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().ok()), (303, Some("/console/login")));
    let login = |token: &str, origin: &str| {
        http.post(format!("{base}/console/login")).header("origin", origin).form(&[("token", token)]).send()
    };
    let own = base.clone();
    assert_eq!(login(&t.client, &own).await.expect("post").status(), 403, "a client token is not an admin's");
    assert_eq!(login("tdm_nope", &own).await.expect("post").status(), 401);
    assert_eq!(login(&t.admin, "http://evil.example").await.expect("post").status(), 403, "cross-site");
    let r = login(&t.admin, &own).await.expect("post");
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().expect("cookie").to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/console"));
    let session = cookie.split(';').next().expect("pair").to_owned();
    let r = http.get(format!("{base}/console")).header("cookie", &session).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM console_sessions").fetch_one(&db.pool().await).await.expect("count");
    assert_eq!(rows, 1);
    let r = http
        .post(format!("{base}/console/logout"))
        .header("cookie", &session)
        .header("origin", &own)
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"].to_str().expect("cookie").contains("Max-Age=0"));
    let r = http.get(format!("{base}/console")).header("cookie", &session).send().await.expect("get");
    assert_eq!(r.status(), 303, "the session ended");
    app.stop().await.expect("stop");
}

/// `tandem serve` as a process: its exit code and what it printed.
async fn serve(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("serve").args(args).env("RUST_LOG", "info").kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    match tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("output");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.code(), text)
        }
        Err(_) => (None, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_means_loopback_only_and_tokens_need_a_callback_key() {
    let db = TestDb::new("auth_start").await;
    let port = support::free_port().await.to_string();
    let open = format!("0.0.0.0:{port}");
    let (code, text) = serve(&["--listen", &open, "--database-url", &db.url], &[]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--insecure-no-auth") && text.contains("not a loopback address"), "{text}");
    let t = Tokens::new();
    let (code, text) =
        serve(&["--listen", "127.0.0.1:0", "--database-url", &db.url], &[("TANDEM_TOKENS", &t.entries)]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no callback signing key"), "{text}");

    // With --insecure-no-auth it serves, and says so.
    let mut p = support::Process::spawn(&db.url, &["--insecure-no-auth"]).await;
    assert_eq!(reqwest::get(format!("{}/readyz", p.url)).await.expect("ready").status(), 200);
    p.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_tls_and_calls_https_participants() {
    let db = TestDb::new("auth_tls").await;
    let dir = std::env::temp_dir().join(format!("tandem-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).expect("cert");
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, &cert_pem).expect("write");
    std::fs::write(&key_file, &key_pem).expect("write");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();

    let mut settings = support::fast_settings(&db.url);
    settings.tls_cert_file = Some(path(&cert_file));
    settings.tls_key_file = Some(path(&key_file));
    settings.callback_ca_file = Some(path(&cert_file));
    let app = tandem_coordinator::Application::spawn(&settings).await.expect("start");
    assert!(app.url.starts_with("https://"), "{}", app.url);
    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("root");
    let http = reqwest::Client::builder().add_root_certificate(root).build().expect("http");
    let client = TandemClient::with_http(&app.url, http).expect("client");
    let plain = app.url.replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err(), "no plain HTTP on the TLS port");

    // An https participant, trusted through --callback-ca-file.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app_router = axum::Router::new().route(
        "/cb",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({ "outcome": "done" }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = tandem_coordinator::tls::server_config(&path(&cert_file), &path(&key_file)).expect("tls");
    let tls = tandem_coordinator::tls::TlsListener::new(listener, config).expect("listener");
    tokio::spawn(async move {
        let _ = axum::serve(tls, app_router).await;
    });
    let xid = support::committed_to(&client, "tls", &format!("https://127.0.0.1:{}/cb", addr.port())).await;
    let t = support::wait_status(&client, &xid, "committed", Duration::from_secs(10)).await;
    assert_eq!(t.status, GlobalStatus::Committed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    app.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_and_payloads_are_bounded() {
    let db = TestDb::new("auth_bounds").await;
    let mut settings = support::fast_settings(&db.url);
    settings.max_branches = 2;
    settings.max_payload_bytes = 100;
    let (app, client) = support::spawn_coordinator(settings).await;
    let (url, _) = support::answering(200).await;
    let tx = client.begin(&BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: None, three_phase: None }).await;
    let tx = tx.expect("begin");
    let branch = |payload: Option<Value>| RegisterBranchRequest {
        resource: "r".into(),
        callback_url: url.clone(),
        payload,
        lock_keys: None,
    };
    let big = json!({ "note": "x".repeat(200) });
    let err = client.register(&tx.xid, &branch(Some(big))).await.expect_err("too large");
    assert_eq!((err.status(), err.code()), (Some(413), Some(ErrorCode::PayloadTooLarge)), "{err}");
    client.register(&tx.xid, &branch(Some(json!({ "n": 1 })))).await.expect("first");
    client.register(&tx.xid, &branch(None)).await.expect("second");
    let err = client.register(&tx.xid, &branch(None)).await.expect_err("third");
    assert_eq!((err.status(), err.code()), (Some(409), Some(ErrorCode::LimitExceeded)), "{err}");
    assert_eq!(client.get(&tx.xid).await.expect("get").branches.len(), 2, "nothing more stored");
    let saga =
        json!({ "steps": [{ "action_url": url, "compensate_url": url, "payload": { "note": "y".repeat(200) } }] });
    let (status, body) = call("POST", &format!("{}/v1/sagas?wait_ms=0", app.url), None, Some(saga)).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")));
    app.stop().await.expect("stop");
}
