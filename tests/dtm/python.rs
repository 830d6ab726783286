//! The unmodified `dtmcli` from PyPI (pinned in
//! tests/dtm/python/requirements.txt, installed by scripts/ensure-dtmcli.sh)
//! drives sagas, TCC and messages against Tandem's DTM listener; the
//! business services are Python too (tests/dtm/python/busi.py), each
//! branch inside dtmcli's own barrier on MariaDB. The effects are checked
//! in the databases: balances, frozen amounts, barrier rows.

use crate::support::{eventually, fast_settings, free_port, mariadb_server, spawn_coordinator, TestDb, TestMariaDb};
use serde_json::Value;
use sqlx::MySqlPool;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tandem_coordinator::RunningCoordinator;

const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let p = repo().join("target/dtmcli-venv/bin/python");
    assert!(p.exists(), "no dtmcli environment at {}: run scripts/ensure-dtmcli.sh", p.display());
    p
}

/// MariaDB's address as the Python side's MYSQL_* variables.
fn mysql_env(db: &str) -> Vec<(String, String)> {
    let u = url::Url::parse(&mariadb_server()).expect("TANDEM_TEST_MARIADB is a URL");
    vec![
        ("MYSQL_HOST".into(), u.host_str().unwrap_or("127.0.0.1").into()),
        ("MYSQL_PORT".into(), u.port().unwrap_or(3306).to_string()),
        ("MYSQL_USER".into(), u.username().to_owned()),
        ("MYSQL_PASSWORD".into(), u.password().unwrap_or_default().to_owned()),
        ("MYSQL_DB".into(), db.to_owned()),
    ]
}

/// A coordinator with its DTM listener, the Python business services and
/// their MariaDB database.
struct World {
    coordinator: RunningCoordinator,
    dtm: String,
    busi: String,
    busi_process: Child,
    mysql: MySqlPool,
    db_name: String,
    _pg: TestDb,
    _maria: TestMariaDb,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.busi_process.kill();
        let _ = self.busi_process.wait();
    }
}

impl World {
    async fn start(tag: &str) -> World {
        let pg = TestDb::new(tag).await;
        let maria = TestMariaDb::new(tag).await;
        let mysql = maria.pool().await;
        sqlx::query(
            "CREATE TABLE account (user_id int PRIMARY KEY, balance int NOT NULL, trading_balance int NOT NULL DEFAULT 0)",
        )
        .execute(&mysql)
        .await
        .unwrap();
        let db_name = maria.url.rsplit('/').next().unwrap().to_owned();
        let mut settings = fast_settings(&pg.url);
        settings.dtm_listen = Some("127.0.0.1:0".parse().unwrap());
        let (coordinator, _) = spawn_coordinator(settings).await;
        let dtm = format!("{}/api/dtmsvr", coordinator.dtm_url.clone().unwrap());
        let port = free_port().await;
        let mut busi_process = Command::new(python())
            .arg(repo().join("tests/dtm/python/busi.py"))
            .arg(port.to_string())
            .envs(mysql_env(&db_name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start busi.py");
        let stdout = busi_process.stdout.take().unwrap();
        let first = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        assert!(first.starts_with("listening"), "busi.py did not start: {first:?}");
        World {
            coordinator,
            dtm,
            busi: format!("http://127.0.0.1:{port}"),
            busi_process,
            mysql,
            db_name,
            _pg: pg,
            _maria: maria,
        }
    }

    /// Two accounts of 100 each for one scenario.
    async fn accounts(&self, out: i32, into: i32) {
        for user in [out, into] {
            sqlx::query("INSERT INTO account (user_id, balance) VALUES (?, 100)")
                .bind(user)
                .execute(&self.mysql)
                .await
                .unwrap();
        }
    }

    /// Runs one scenario of scenarios.py; its JSON line and how it exited.
    async fn run(&self, scenario: &str, out: i32, into: i32) -> (Value, std::process::ExitStatus) {
        let mut cmd = Command::new(python());
        cmd.arg(repo().join("tests/dtm/python/scenarios.py"))
            .args([&self.dtm, &self.busi, scenario, &out.to_string(), &into.to_string()])
            .envs(mysql_env(&self.db_name));
        let output = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run scenarios.py");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| {
            panic!("{scenario}: no result line; stdout {stdout}; stderr {}", String::from_utf8_lossy(&output.stderr))
        });
        (serde_json::from_str(line).unwrap(), output.status)
    }

    async fn gid_of(&self, scenario: &str, out: i32, into: i32) -> String {
        let (v, status) = self.run(scenario, out, into).await;
        assert!(status.success(), "{scenario} exited {status}");
        v["gid"].as_str().unwrap().to_owned()
    }

    /// Waits until the transaction's DTM status is `status`.
    async fn until(&self, gid: &str, status: &str) -> Value {
        let http = reqwest::Client::new();
        eventually(&format!("{gid} {status}"), WAIT, || async {
            let v: Value = http.get(format!("{}/query?gid={gid}", self.dtm)).send().await.ok()?.json().await.ok()?;
            (v["transaction"]["status"] == status).then_some(v)
        })
        .await
    }

    async fn balance(&self, user: i32) -> (i32, i32) {
        sqlx::query_as("SELECT balance, trading_balance FROM account WHERE user_id = ?")
            .bind(user)
            .fetch_one(&self.mysql)
            .await
            .unwrap()
    }

    /// Barrier rows dtmcli wrote for `gid`, as `branch_id op reason`.
    async fn barrier(&self, gid: &str) -> Vec<String> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT branch_id, op, reason FROM dtm_barrier.barrier WHERE gid = ? ORDER BY branch_id, op, barrier_id",
        )
        .bind(gid)
        .fetch_all(&self.mysql)
        .await
        .unwrap();
        rows.into_iter().map(|(b, o, r)| format!("{b} {o} {r}")).collect()
    }

    /// The transaction as `/v1` shows it: an ordinary Tandem transaction.
    async fn v1(&self, gid: &str) -> Value {
        reqwest::get(format!("{}/v1/transactions/{gid}", self.coordinator.url)).await.unwrap().json().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_succeed_or_compensate() {
    let w = World::start("dtmpy_saga").await;
    w.accounts(1, 2).await;
    let gid = w.gid_of("saga", 1, 2).await;
    w.until(&gid, "succeed").await;
    assert_eq!((w.balance(1).await, w.balance(2).await), ((70, 0), (130, 0)));
    assert_eq!(w.barrier(&gid).await, ["01 action action", "02 action action"]);
    let v1 = w.v1(&gid).await;
    assert_eq!((v1["mode"].as_str(), v1["status"].as_str()), (Some("saga"), Some("committed")));

    // The second step is declined: the first is compensated, the second's
    // compensation is empty (dtmcli's barrier: its action never committed).
    w.accounts(3, 4).await;
    let gid = w.gid_of("saga-fail", 3, 4).await;
    w.until(&gid, "failed").await;
    assert_eq!((w.balance(3).await, w.balance(4).await), ((100, 0), (100, 0)));
    assert_eq!(
        w.barrier(&gid).await,
        ["01 action action", "01 compensate compensate", "02 action compensate", "02 compensate compensate"]
    );
    assert_eq!(w.v1(&gid).await["status"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_commits_or_cancels() {
    let w = World::start("dtmpy_tcc").await;
    w.accounts(1, 2).await;
    let (v, status) = w.run("tcc", 1, 2).await;
    assert!(status.success());
    assert_eq!(v["committed"], true);
    let gid = v["gid"].as_str().unwrap();
    w.until(gid, "succeed").await;
    assert_eq!((w.balance(1).await, w.balance(2).await), ((70, 0), (130, 0)));
    assert_eq!(w.barrier(gid).await, ["01 confirm confirm", "01 try try", "02 confirm confirm", "02 try try"]);

    // The second try is declined: dtmcli aborts; the first try's freeze is
    // released, the second's cancel is empty.
    w.accounts(3, 4).await;
    let (v, status) = w.run("tcc-abort", 3, 4).await;
    assert!(status.success());
    assert_eq!(v["committed"], false);
    let gid = v["gid"].as_str().unwrap();
    w.until(gid, "failed").await;
    assert_eq!((w.balance(3).await, w.balance(4).await), ((100, 0), (100, 0)));
    assert_eq!(w.barrier(gid).await, ["01 cancel cancel", "01 try try", "02 cancel cancel", "02 try cancel"]);
    assert_eq!(w.v1(gid).await["status"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_delivered_or_settled_by_their_back_check() {
    let w = World::start("dtmpy_msg").await;
    w.accounts(1, 2).await;
    let gid = w.gid_of("msg", 1, 2).await;
    w.until(&gid, "succeed").await;
    assert_eq!((w.balance(1).await, w.balance(2).await), ((70, 0), (130, 0)));
    assert_eq!(w.barrier(&gid).await, ["00 msg msg", "01 action action"]);

    // The producer commits its local transaction and is SIGKILLed before
    // it submits: the back-check finds its barrier row; delivered.
    w.accounts(3, 4).await;
    let (v, status) = w.run("msg-die-after-commit", 3, 4).await;
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "the producer was killed");
    let gid = v["gid"].as_str().unwrap();
    w.until(gid, "succeed").await;
    assert_eq!((w.balance(3).await, w.balance(4).await), ((70, 0), (130, 0)));
    assert_eq!(w.barrier(gid).await, ["00 msg msg", "01 action action"]);
    let v1 = w.v1(gid).await;
    assert_eq!((v1["mode"].as_str(), v1["status"].as_str()), (Some("msg"), Some("delivered")));

    // Killed before its local transaction committed: the back-check
    // inserts the rollback row first; the message fails, nothing delivered.
    w.accounts(5, 6).await;
    let (v, status) = w.run("msg-die-before-commit", 5, 6).await;
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    let gid = v["gid"].as_str().unwrap();
    w.until(gid, "failed").await;
    assert_eq!((w.balance(5).await, w.balance(6).await), ((100, 0), (100, 0)));
    assert_eq!(w.barrier(gid).await, ["00 msg rollback"]);
    assert_eq!(w.v1(gid).await["status"], "rolled_back");
}
