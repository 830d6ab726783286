//! The console in a real headless Chromium (Debian's `chromium`, driven by
//! `chromedriver` over WebDriver with fantoccini), against a coordinator
//! and participants over real HTTP: the list shows a committed and a
//! failed transaction, filters narrow it, the transaction page shows its
//! branches and timeline, retry and stop work through their confirmations
//! and are seen in the API, a cross-site POST is refused. A screenshot of
//! each page goes to `$CARGO_TARGET_TMPDIR/console/`.

#[path = "../support/mod.rs"]
mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::{answering as participant, committed_to, eventually, TestDb};
use tandem_coordinator::auth::tokens::{generate, Role, Roles};
use tandem_sdk::wire::{EventKind, GlobalStatus, STUCK_ATTEMPTS};

/// chromedriver on a free port, and a headless Chromium session through it.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: PathBuf,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let port = support::free_port().await;
        let driver = tokio::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (scripts/ensure-chromium.sh installs it)");
        let profile = std::env::temp_dir().join(format!("tandem-console-{}", uuid::Uuid::new_v4().simple()));
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,900", format!("--user-data-dir={}", profile.display()), "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            }
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("an object"),
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually("chromedriver answers", Duration::from_secs(30), || {
            let (caps, url) = (caps.clone(), url.clone());
            async move {
                let http = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(http).capabilities(caps).connect(&url).await.ok()
            }
        })
        .await;
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
        std::fs::create_dir_all(&shots).expect("screenshot directory");
        Browser { client, _driver: driver, _profile: profile, shots }
    }

    async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    /// Clicks `css` and waits until the page it leads to, whose path ends
    /// with `url_part` or whose query contains it, is the one shown (a click returns before its
    /// navigation ends).
    async fn click_to(&self, css: &str, url_part: &str) {
        self.client.find(Locator::Css(css)).await.expect(css).click().await.expect("click");
        eventually(&format!("the page after clicking {css}"), Duration::from_secs(10), || async {
            let url = self.client.current_url().await.ok()?;
            let ready = self.client.execute("return document.readyState", vec![]).await.ok()?;
            let arrived = url.path().ends_with(url_part) || url.query().is_some_and(|q| q.contains(url_part));
            (arrived && ready == "complete").then_some(())
        })
        .await;
    }

    async fn text(&self, css: &str) -> String {
        self.client.find(Locator::Css(css)).await.expect(css).text().await.expect("text")
    }

    async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.client.find_all(Locator::Css(css)).await.expect(css) {
            out.push(e.text().await.expect("text"));
        }
        out
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.shots.join(format!("console-{name}.png")), png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_shows_and_acts_in_a_real_browser() {
    let db = TestDb::new("console").await;
    // Authentication on, as in production: the console needs an admin's login.
    let (token, entry) = generate(Roles::of(&[Role::Admin]), "ops");
    let mut settings = support::fast_settings(&db.url);
    settings.tokens = Some(entry);
    settings.callback_key = Some("5a".repeat(32));
    let (app, client) = support::spawn_coordinator(settings).await;
    let client = client.with_token(&token);
    let base = app.url.clone();
    let (ok, _) = participant(200).await;
    let (refusing, _) = participant(409).await;
    let (failing, failing_calls) = participant(500).await;
    let good = committed_to(&client, "shop.order.ok", &ok).await;
    support::wait_status(&client, &good, "committed", Duration::from_secs(10)).await;
    let refused = committed_to(&client, "shop.order.refused", &refusing).await;
    support::wait_status(&client, &refused, "commit_failed", Duration::from_secs(10)).await;
    let stuck = committed_to(&client, "shop.order.stuck", &failing).await;
    eventually("the stuck transaction retried often", Duration::from_secs(30), || async {
        let t = client.get(&stuck).await.ok()?;
        (t.branches[0].attempts >= STUCK_ATTEMPTS as u32).then_some(())
    })
    .await;
    let b = Browser::start().await;

    // Any page sends a visitor without a session to the login page.
    b.open(&format!("{base}/console")).await;
    assert_eq!(b.client.title().await.expect("title"), "Log in · Tandem");
    b.shot("login").await;
    b.client.find(Locator::Css("#token")).await.expect("token field").send_keys(&token).await.expect("type");
    b.click_to("form.login button", "/console").await;
    assert_eq!(b.client.title().await.expect("title"), "Overview · Tandem");

    // The overview: counts, charts, and the stuck transactions under "needs attention".
    eventually("ended transactions in the overview's counts", Duration::from_secs(10), || async {
        let o = client.overview().await.ok()?;
        (o.ended_last_24h.iter().map(|c| c.count).sum::<i64>() >= 2).then_some(())
    })
    .await;
    b.open(&format!("{base}/console")).await;
    assert_eq!(b.client.title().await.expect("title"), "Overview · Tandem");
    assert_eq!(b.client.find_all(Locator::Css("figure.chart svg")).await.expect("charts").len(), 2);
    let attention = b.text("#attention + p + table").await;
    assert!(attention.contains(refused.as_str()) && attention.contains(stuck.as_str()), "{attention}");
    assert!(!attention.contains(good.as_str()));
    b.shot("overview").await;

    // The list shows the committed and the failed; the status filter narrows it.
    b.open(&format!("{base}/console/transactions")).await;
    let rows = b.texts("table.list tbody tr").await;
    assert!(rows.iter().any(|r| r.contains(good.as_str()) && r.contains("committed")), "{rows:?}");
    assert!(rows.iter().any(|r| r.contains(refused.as_str()) && r.contains("commit_failed")), "{rows:?}");
    b.shot("list").await;
    let select = b.client.find(Locator::Css("select[name=status]")).await.expect("status select");
    select.select_by_value("commit_failed").await.expect("choose a status");
    b.click_to("form.filters button", "status=commit_failed").await;
    let rows = b.texts("table.list tbody tr").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains(refused.as_str()));
    assert!(b.client.current_url().await.expect("url").as_str().contains("status=commit_failed"));
    b.open(&format!("{base}/console/transactions?name=shop.order.s")).await;
    let rows = b.texts("table.list tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].contains(stuck.as_str()));
    b.open(&format!("{base}/console/transactions?created_after=someday")).await;
    assert!(b.text("#filter-error").await.contains("not a time"));

    // The committed transaction: branches, the timeline picture and its events.
    b.open(&format!("{base}/console/transactions/{good}")).await;
    assert!(b.text("#status").await.contains("committed"));
    let branches = b.texts("#branches tbody tr").await;
    assert_eq!(branches.len(), 1);
    assert!(branches[0].contains("payment") && branches[0].contains("committed"));
    assert_eq!(b.client.find_all(Locator::Css("svg.timeline rect.m-done")).await.expect("marks").len(), 1);
    let events = b.texts("#events tbody tr").await;
    let kinds: Vec<&str> = events.iter().map(|r| r.split_whitespace().nth(2).unwrap_or("")).collect();
    assert_eq!(kinds, ["begun", "registered", "decided", "attempt", "finished"], "{events:?}");
    assert!(events[3].contains("commit") && events[3].contains("done") && events[3].contains("200"));
    assert!(b.client.find_all(Locator::Css("#retry")).await.expect("find").is_empty(), "no actions on a committed one");
    b.shot("transaction").await;

    // The stuck one: why, and retry through its confirmation.
    b.open(&format!("{base}/console/transactions/{stuck}")).await;
    let why = b.text("section.why").await;
    assert!(why.contains("answered 500"), "{why}");
    b.shot("stuck").await;
    b.click_to("#retry", "/retry").await;
    assert!(b.text(".consequence").await.contains("due now"));
    b.shot("confirm").await;
    let before = failing_calls.load(Ordering::SeqCst);
    b.click_to("#confirm", "done=").await;
    assert!(b.text("#flash").await.contains("Retry requested"));
    let timeline = client.timeline(&stuck).await.expect("timeline");
    assert!(timeline.events.iter().any(|e| e.kind == EventKind::OperatorRetry));
    eventually("the retry called the participant", Duration::from_secs(10), || async {
        (failing_calls.load(Ordering::SeqCst) > before).then_some(())
    })
    .await;

    // Stop with a note, through its confirmation.
    b.open(&format!("{base}/console/transactions/{stuck}")).await;
    b.click_to("#stop", "/stop").await;
    assert!(b.text(".consequence").await.contains("commit_failed"));
    let note = b.client.find(Locator::Css("textarea[name=note]")).await.expect("note");
    note.send_keys("payment retired; charged by hand (OPS-7)").await.expect("type");
    b.click_to("#confirm", "done=").await;
    assert!(b.text("#flash").await.contains("Stopped"));
    assert!(b.text("#status").await.contains("commit_failed"));
    let t = client.get(&stuck).await.expect("get");
    assert_eq!(t.status, GlobalStatus::CommitFailed);
    let timeline = client.timeline(&stuck).await.expect("timeline");
    let stop = timeline.events.iter().find(|e| e.kind == EventKind::OperatorStop).expect("stop event");
    assert!(stop.detail.as_deref().unwrap_or("").contains("OPS-7"));
    assert!(b.texts("#events tbody tr").await.iter().any(|r| r.contains("operator_stop") && r.contains("OPS-7")));

    // Locks page, with a named lock held and waited for, and a 404 page for an unknown xid.
    use tandem_sdk::wire::{AcquireLockRequest, LockName, LockOwner};
    let lock = LockName::parse("console:order-1").expect("name");
    let acquire = |owner: &str, wait_ms: u64| AcquireLockRequest {
        owner: LockOwner::parse(owner).expect("owner"),
        ttl_ms: 60_000,
        wait_ms,
    };
    client.acquire_lock(&lock, &acquire("console-holder", 0)).await.expect("acquire");
    let waiter = {
        let (client, lock, req) = (client.clone(), lock.clone(), acquire("console-waiter", 15_000));
        tokio::spawn(async move { client.acquire_lock(&lock, &req).await })
    };
    eventually("the waiter queued", Duration::from_secs(10), || async {
        let l = client.named_locks(None).await.ok()?;
        l.locks.iter().find(|l| l.name == lock).filter(|l| l.waiters.len() == 1).map(|_| ())
    })
    .await;
    b.open(&format!("{base}/console/locks")).await;
    assert!(b.text("#lock-total").await.starts_with("0 held"));
    assert!(b.text("#named-lock-total").await.starts_with("1 held or waited for"));
    let rows = b.texts("#named-locks tbody tr").await;
    assert!(
        rows.iter()
            .any(|r| r.contains("console:order-1") && r.contains("console-holder") && r.contains("console-waiter")),
        "{rows:?}"
    );
    b.shot("locks").await;
    waiter.abort();
    b.open(&format!("{base}/console/transactions/nope")).await;
    assert!(b.text("main").await.contains("No transaction nope"));

    // A cross-site POST is refused and changes nothing.
    let again = committed_to(&client, "shop.order.again", &failing).await;
    support::wait_status(&client, &again, "committing", Duration::from_secs(10)).await;
    // With the operator's own session cookie, as a forged form would carry it
    // were it not SameSite=Strict.
    let session = b.client.get_named_cookie("tandem_session").await.expect("the session cookie");
    let cookie = format!("tandem_session={}", session.value());
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/console/transactions/{again}/stop"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .form(&[("note", "csrf")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{base}/console/transactions/{again}/retry"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    assert_eq!(client.get(&again).await.expect("get").status, GlobalStatus::Committing);
    let r = http.get(format!("{base}/console")).header("cookie", &cookie).send().await.expect("get");
    assert!(r.headers()["content-security-policy"].to_str().unwrap_or("").contains("default-src 'self'"));

    // Logging out ends the session: the next page asks for the token again.
    b.open(&format!("{base}/console")).await;
    b.click_to("form.logout button", "/console/login").await;
    b.open(&format!("{base}/console/locks")).await;
    assert_eq!(b.client.title().await.expect("title"), "Log in · Tandem");
    let r = http.get(format!("{base}/console")).header("cookie", &cookie).send().await.expect("get");
    assert!(r.url().path().ends_with("/console/login"), "the old cookie opens nothing: {}", r.url());

    b.client.clone().close().await.expect("close the browser");
    app.stop().await.expect("coordinator stops");
}
