//! XA mode end to end: branches prepared with real `PREPARE TRANSACTION` on a
//! PostgreSQL with prepared transactions enabled (scripts/xa-postgres.sh), the
//! coordinator on the ordinary one. Every test ends by asserting that no
//! prepared transaction is left in its databases.

mod support;

use futures::FutureExt;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, MySqlConnection, MySqlPool, PgPool};
use std::time::Duration;
use support::*;
use tandem_sdk::wire::{BeginRequest, BranchStatus, ErrorCode, GlobalStatus, Mode, Xid};
use tandem_sdk::xa::{MySqlXa, PgXa, XaError, XaParticipant, CALLBACK_PATH, MYSQL_FORMAT_ID};
use tandem_sdk::TandemClient;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(20);

fn xa() -> BeginRequest {
    BeginRequest { mode: Mode::Xa, name: None, timeout_ms: None, three_phase: None }
}

/// A participant service: a database on the XA server with an `items` table,
/// the SDK participant, and its callback endpoint on loopback.
struct Service {
    db: TestDb,
    pool: PgPool,
    participant: XaParticipant,
    url: String,
}

impl Service {
    async fn start(tag: &str, coordinator: &str) -> Service {
        let db = TestDb::new_on(&xa_pg_server(), tag).await;
        let pool = db.pool().await;
        sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL)")
            .execute(&pool)
            .await
            .expect("schema");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let participant =
            XaParticipant::builder(PgXa::new(pool.clone()), TandemClient::new(coordinator).expect("client"), tag, &url)
                .build();
        participant.check().await.expect("XA available");
        let app = participant.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Service { db, pool, participant, url }
    }

    /// Phase 1: insert an item inside the branch.
    async fn insert(&self, xid: &Xid, id: i32, qty: i32) -> Result<(), XaError> {
        self.participant
            .run(xid, move |c| {
                async move {
                    sqlx::query("INSERT INTO items VALUES ($1, $2)").bind(id).bind(qty).execute(&mut *c).await?;
                    Ok(())
                }
                .boxed()
            })
            .await
    }

    async fn qty(&self, id: i32) -> Option<i32> {
        sqlx::query_scalar("SELECT qty FROM items WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .expect("qty")
    }

    async fn prepared(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
            .fetch_one(&self.pool)
            .await
            .expect("count prepared")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_across_two_postgres_databases() {
    let db = TestDb::new("xa_commit").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (s1, s2) = (Service::start("xa_a", &c.url).await, Service::start("xa_b", &c.url).await);

    let tx = client.begin(&xa()).await.expect("begin");
    s1.insert(&tx.xid, 1, 10).await.expect("prepare 1");
    s2.insert(&tx.xid, 2, 20).await.expect("prepare 2");
    assert_eq!((s1.prepared().await, s2.prepared().await), (1, 1), "both prepared, holding their changes");
    assert_eq!(s1.qty(1).await, None, "prepared, not yet visible");
    let t = client.get(&tx.xid).await.expect("get");
    assert!(t.branches.iter().all(|b| b.status == BranchStatus::Prepared));

    let done = client.commit(&tx.xid, None).await.expect("commit");
    assert_eq!(done.transaction.status, GlobalStatus::Committed);
    assert_eq!((s1.qty(1).await, s2.qty(2).await), (Some(10), Some(20)));
    assert_eq!((s1.prepared().await, s2.prepared().await), (0, 0));
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prepare_rolls_every_branch_back() {
    let db = TestDb::new("xa_fail").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (s1, s2) = (Service::start("xa_f1", &c.url).await, Service::start("xa_f2", &c.url).await);

    let tx = client.begin(&xa()).await.expect("begin");
    s1.insert(&tx.xid, 1, 10).await.expect("prepare 1");
    // The second branch's statement fails (duplicate key in the same branch).
    let r = s2
        .participant
        .run(&tx.xid, |c| {
            async move {
                sqlx::query("INSERT INTO items VALUES (7, 1)").execute(&mut *c).await?;
                sqlx::query("INSERT INTO items VALUES (7, 2)").execute(&mut *c).await?;
                Ok(())
            }
            .boxed()
        })
        .await;
    assert!(matches!(r, Err(XaError::Phase1(_))), "{r:?}");

    let err = client.commit(&tx.xid, None).await.expect_err("commit refused");
    assert_eq!((err.status(), err.code()), (Some(409), Some(ErrorCode::InvalidState)));
    let t = wait_status(&client, &tx.xid, "rolled_back", WAIT).await;
    assert!(t.branches.iter().all(|b| b.status == BranchStatus::RolledBack));
    assert_eq!((s1.qty(1).await, s2.qty(7).await), (None, None));
    assert_eq!((s1.prepared().await, s2.prepared().await), (0, 0));
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_inside_an_aborted_block_is_caught() {
    let db = TestDb::new("xa_aborted").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let s = Service::start("xa_ab", &c.url).await;
    let tx = client.begin(&xa()).await.expect("begin");
    // A statement fails but the business code swallows the error: the block is aborted,
    // and PREPARE TRANSACTION then answers ROLLBACK without an error.
    let r = s
        .participant
        .run(&tx.xid, |c| {
            async move {
                let _ = sqlx::query("INSERT INTO nowhere VALUES (1)").execute(&mut *c).await;
                Ok(())
            }
            .boxed()
        })
        .await;
    assert!(matches!(r, Err(XaError::PrepareLost(_))), "{r:?}");
    let t = client.get(&tx.xid).await.expect("get");
    assert_eq!(t.branches[0].status, BranchStatus::Phase1Failed);
    assert_eq!(s.prepared().await, 0);
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_2_delivered_twice_is_harmless() {
    let db = TestDb::new("xa_twice").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let s = Service::start("xa_tw", &c.url).await;
    let tx = client.begin(&xa()).await.expect("begin");
    s.insert(&tx.xid, 1, 5).await.expect("prepare");
    let t = client.commit(&tx.xid, None).await.expect("commit").transaction;
    let branch = &t.branches[0];
    for _ in 0..2 {
        let body = serde_json::json!({"xid": tx.xid, "branch_id": branch.branch_id, "mode": "xa",
            "action": "commit", "resource": branch.resource, "payload": null});
        let r =
            reqwest::Client::new().post(format!("{}{CALLBACK_PATH}", s.url)).json(&body).send().await.expect("post");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["outcome"], "already_done");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM items").fetch_one(&s.pool).await.expect("count");
    assert_eq!(rows, 1);
    assert_eq!(s.prepared().await, 0);
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_blocked_by_an_in_doubt_branch_proceeds_once_it_is_resolved() {
    let db = TestDb::new("xa_block").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let s = Service::start("xa_bl", &c.url).await;
    sqlx::query("INSERT INTO items VALUES (1, 10)").execute(&s.pool).await.expect("seed");

    let tx = client.begin(&xa()).await.expect("begin");
    s.participant
        .run(&tx.xid, |c| {
            async move {
                sqlx::query("UPDATE items SET qty = qty - 1 WHERE id = 1").execute(&mut *c).await?;
                Ok(())
            }
            .boxed()
        })
        .await
        .expect("prepared, holding the row lock");

    let writer_pool = s.pool.clone();
    let writer = tokio::spawn(async move {
        sqlx::query("UPDATE items SET qty = qty + 100 WHERE id = 1").execute(&writer_pool).await
    });
    eventually("the writer waits on the prepared branch's lock", WAIT, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'UPDATE items SET qty = qty + 100%'",
        )
        .fetch_one(&s.pool)
        .await
        .ok()?;
        (waiting == 1).then_some(())
    })
    .await;
    assert!(!writer.is_finished());

    client.commit(&tx.xid, None).await.expect("commit");
    tokio::time::timeout(WAIT, writer).await.expect("writer proceeds").expect("join").expect("update");
    assert_eq!(s.qty(1).await, Some(109));
    assert_eq!(s.prepared().await, 0);
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_settles_prepared_branches_with_the_coordinator() {
    let db = TestDb::new("xa_recover").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let s = Service::start("xa_rc", &c.url).await;

    // A branch prepared and reported; then its service is unreachable for phase 2.
    let down = format!("http://127.0.0.1:{}", free_port().await);
    let offline =
        XaParticipant::builder(PgXa::new(s.pool.clone()), TandemClient::new(&c.url).expect("client"), "xa_rc", &down)
            .build();
    let tx = client.begin(&xa()).await.expect("begin");
    offline
        .run(&tx.xid, |c| {
            async move {
                sqlx::query("INSERT INTO items VALUES (3, 30)").execute(&mut *c).await?;
                Ok(())
            }
            .boxed()
        })
        .await
        .expect("prepare");
    let decided = client.commit(&tx.xid, Some(Duration::from_millis(300))).await.expect("commit decided");
    assert_eq!(decided.transaction.status, GlobalStatus::Committing, "phase 2 cannot reach the service");
    assert_eq!(s.prepared().await, 1, "the prepared branch survives its service");

    // A prepared branch the coordinator never heard of (its registration was lost).
    let orphan = tandem_sdk::xa::Gid::new(&Xid::generate(), &tandem_sdk::wire::BranchId::generate());
    let mut conn = s.pool.acquire().await.expect("conn");
    sqlx::raw_sql("BEGIN; INSERT INTO items VALUES (4, 40);").execute(&mut *conn).await.expect("begin");
    sqlx::raw_sql(&orphan.statement("PREPARE TRANSACTION")).execute(&mut *conn).await.expect("prepare orphan");
    drop(conn);
    assert_eq!(s.prepared().await, 2);

    // The service "restarts": its recovery asks the coordinator about each prepared branch.
    let restarted =
        XaParticipant::builder(PgXa::new(s.pool.clone()), TandemClient::new(&c.url).expect("client"), "xa_rc", &s.url)
            .build();
    let young = restarted.recover(Duration::from_secs(3600)).await.expect("recover");
    assert_eq!((young.committed, young.rolled_back, young.pending), (1, 0, 1), "orphan kept while young");
    let old = restarted.recover(Duration::ZERO).await.expect("recover");
    assert_eq!((old.committed, old.rolled_back, old.pending), (0, 1, 0), "orphan presumed aborted");
    assert_eq!((s.qty(3).await, s.qty(4).await), (Some(30), None));
    assert_eq!(s.prepared().await, 0);
    c.stop().await.expect("coordinator stops");
    drop(s.db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_check_names_the_setting_to_change() {
    // The ordinary server runs with max_prepared_transactions = 0.
    let db = TestDb::new("xa_check").await;
    let pool = db.pool().await;
    let enabled: String = sqlx::query_scalar("SHOW max_prepared_transactions").fetch_one(&pool).await.expect("show");
    if enabled != "0" {
        // Someone enabled it on this server: nothing to check here.
        return;
    }
    let p = XaParticipant::builder(
        PgXa::new(pool),
        TandemClient::new("http://127.0.0.1:9").expect("client"),
        "r",
        "http://x",
    )
    .build();
    let err = p.check().await.expect_err("XA unavailable");
    assert!(matches!(err, XaError::Unavailable(_)));
    assert!(err.to_string().contains("max_prepared_transactions"), "{err}");
}

/// Server URL of the MariaDB the tests use.
fn mariadb_server() -> String {
    std::env::var("TANDEM_TEST_MARIADB").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A MariaDB database for one test: an InnoDB `items` table, an XA
/// participant on it, and its callback endpoint. Dropped at the end.
struct MariaService {
    name: String,
    pool: MySqlPool,
    participant: XaParticipant<MySqlXa>,
}

impl MariaService {
    async fn start(tag: &str, coordinator: &str) -> MariaService {
        let name = format!("tandem_t_{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let mut admin = MySqlConnection::connect(&mariadb_server()).await.expect("connect mariadb");
        sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str()).await.expect("create");
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .connect(&format!("{}/{name}", mariadb_server()))
            .await
            .expect("pool");
        sqlx::Executor::execute(&pool, "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL) ENGINE=InnoDB")
            .await
            .expect("schema");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let participant = XaParticipant::builder(
            MySqlXa::new(pool.clone()),
            TandemClient::new(coordinator).expect("client"),
            tag,
            &url,
        )
        .build();
        participant.check().await.expect("XA available");
        let app = participant.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MariaService { name, pool, participant }
    }

    async fn insert(&self, xid: &Xid, id: i32, qty: i32) -> Result<(), XaError> {
        self.participant
            .run(xid, move |c| {
                async move {
                    sqlx::query("INSERT INTO items VALUES (?, ?)").bind(id).bind(qty).execute(&mut *c).await?;
                    Ok(())
                }
                .boxed()
            })
            .await
    }

    async fn qty(&self, id: i32) -> Option<i32> {
        sqlx::query_scalar("SELECT qty FROM items WHERE id = ?").bind(id).fetch_optional(&self.pool).await.expect("qty")
    }

    /// Prepared Tandem branches on the server whose xid is `xid`.
    async fn prepared(&self, xid: &Xid) -> usize {
        let rows = sqlx::Executor::fetch_all(&self.pool, "XA RECOVER").await.expect("xa recover");
        rows.iter()
            .filter(|r| {
                use sqlx::Row;
                let fid: i64 = r.try_get(0).unwrap_or_default();
                let data: String = r
                    .try_get::<String, _>(3)
                    .or_else(|_| r.try_get::<Vec<u8>, _>(3).map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .unwrap_or_default();
                fid == MYSQL_FORMAT_ID && data.starts_with(xid.as_str())
            })
            .count()
    }

    async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(mut admin) = MySqlConnection::connect(&mariadb_server()).await {
            let _ =
                sqlx::Executor::execute(&mut admin, format!("DROP DATABASE IF EXISTS {}", self.name).as_str()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_across_two_postgres_databases_and_one_mariadb_database() {
    let db = TestDb::new("xa_three").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let (p1, p2) = (Service::start("xa_p1", &c.url).await, Service::start("xa_p2", &c.url).await);
    let m = MariaService::start("xa_m", &c.url).await;

    let tx = client.begin(&xa()).await.expect("begin");
    p1.insert(&tx.xid, 1, 10).await.expect("prepare pg 1");
    p2.insert(&tx.xid, 2, 20).await.expect("prepare pg 2");
    m.insert(&tx.xid, 3, 30).await.expect("prepare mariadb");
    assert_eq!(m.prepared(&tx.xid).await, 1, "MariaDB holds the prepared branch");
    assert_eq!(m.qty(3).await, None, "not visible before commit");

    let done = client.commit(&tx.xid, None).await.expect("commit").transaction;
    assert_eq!(done.status, GlobalStatus::Committed);
    assert_eq!(done.branches.len(), 3);
    assert_eq!((p1.qty(1).await, p2.qty(2).await, m.qty(3).await), (Some(10), Some(20), Some(30)));
    assert_eq!((p1.prepared().await, p2.prepared().await, m.prepared(&tx.xid).await), (0, 0, 0));
    c.stop().await.expect("coordinator stops");
    m.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_mariadb_branch_rolls_back_the_postgres_one() {
    let db = TestDb::new("xa_mfail").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let p = Service::start("xa_mf", &c.url).await;
    let m = MariaService::start("xa_mf", &c.url).await;

    let tx = client.begin(&xa()).await.expect("begin");
    p.insert(&tx.xid, 1, 10).await.expect("prepare pg");
    // A duplicate key inside the MariaDB branch: phase 1 fails, the branch is rolled back.
    let r = m
        .participant
        .run(&tx.xid, |c| {
            async move {
                sqlx::query("INSERT INTO items VALUES (5, 1)").execute(&mut *c).await?;
                sqlx::query("INSERT INTO items VALUES (5, 2)").execute(&mut *c).await?;
                Ok(())
            }
            .boxed()
        })
        .await;
    assert!(matches!(r, Err(XaError::Phase1(_))), "{r:?}");
    let err = client.commit(&tx.xid, None).await.expect_err("commit refused");
    assert_eq!(err.status(), Some(409));
    wait_status(&client, &tx.xid, "rolled_back", WAIT).await;
    assert_eq!((p.qty(1).await, m.qty(5).await), (None, None));
    assert_eq!((p.prepared().await, m.prepared(&tx.xid).await), (0, 0));
    c.stop().await.expect("coordinator stops");
    m.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_recovery_settles_prepared_branches_with_the_coordinator() {
    let db = TestDb::new("xa_mrec").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let m = MariaService::start("xa_mr", &c.url).await;

    // Prepared and reported, but phase 2 cannot reach the service.
    let down = format!("http://127.0.0.1:{}", free_port().await);
    let offline = XaParticipant::builder(
        MySqlXa::new(m.pool.clone()),
        TandemClient::new(&c.url).expect("client"),
        "xa_mr",
        &down,
    )
    .build();
    let tx = client.begin(&xa()).await.expect("begin");
    offline
        .run(&tx.xid, |c| {
            async move {
                sqlx::query("INSERT INTO items VALUES (8, 80)").execute(&mut *c).await?;
                Ok(())
            }
            .boxed()
        })
        .await
        .expect("prepare");
    let decided = client.commit(&tx.xid, Some(Duration::from_millis(300))).await.expect("decided");
    assert_eq!(decided.transaction.status, GlobalStatus::Committing);
    assert_eq!(m.prepared(&tx.xid).await, 1);

    let restarted = XaParticipant::builder(
        MySqlXa::new(m.pool.clone()),
        TandemClient::new(&c.url).expect("client"),
        "xa_mr",
        &down,
    )
    .build();
    let r = restarted.recover(Duration::from_secs(3600)).await.expect("recover");
    assert!(r.committed >= 1, "{r:?}");
    assert_eq!(m.qty(8).await, Some(80));
    assert_eq!(m.prepared(&tx.xid).await, 0);
    c.stop().await.expect("coordinator stops");
    m.drop_db().await;
}

/// The participant process of `a_participant_killed_after_prepare_...`: run by
/// that test as a child process (this test binary, filtered to this entry
/// point), never on its own (hence `ignore`). It serves the XA callback on the
/// given port, prepares one branch, says so on stdout, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_participant_killed_after_prepare_is_committed_after_it_restarts"]
async fn xa_participant_child_process() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set: this runs as a child process"));
    let (coordinator, db_url, xid, port) =
        (var("CHILD_COORDINATOR"), var("CHILD_DB"), var("CHILD_XID"), var("CHILD_PORT"));
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&db_url).await.expect("pool");
    let url = format!("http://127.0.0.1:{port}");
    let p = XaParticipant::builder(PgXa::new(pool), TandemClient::new(&coordinator).expect("client"), "child", &url)
        .build();
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind");
    let app = p.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let xid = Xid::parse(xid).expect("xid");
    p.run(&xid, |c| {
        async move {
            sqlx::query("INSERT INTO items VALUES (9, 90)").execute(&mut *c).await?;
            Ok(())
        }
        .boxed()
    })
    .await
    .expect("prepare");
    println!("PREPARED");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_after_prepare_is_committed_after_it_restarts() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let db = TestDb::new("xa_pkill").await;
    let (c, client) = spawn_coordinator(fast_settings(&db.url)).await;
    let pdb = TestDb::new_on(&xa_pg_server(), "xa_pkill_p").await;
    let pool = pdb.pool().await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL)").execute(&pool).await.expect("schema");
    let port = free_port().await;
    let tx = client.begin(&xa()).await.expect("begin");

    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["xa_participant_child_process", "--exact", "--ignored", "--nocapture"])
        .env("CHILD_COORDINATOR", &c.url)
        .env("CHILD_DB", &pdb.url)
        .env("CHILD_XID", tx.xid.as_str())
        .env("CHILD_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn participant process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.contains("PREPARED") {
                return;
            }
        }
        panic!("the participant process ended before preparing");
    })
    .await
    .expect("the participant prepares");
    child.kill().await.expect("SIGKILL the participant");

    let prepared = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
            .fetch_one(&pool)
            .await
            .expect("count")
    };
    assert_eq!(prepared().await, 1, "the prepared branch survives its process");
    let decided = client.commit(&tx.xid, Some(Duration::from_millis(200))).await.expect("commit decided");
    assert_eq!(decided.transaction.status, GlobalStatus::Committing, "the participant is down");

    // The participant restarts on the same address; its recovery runs at start.
    let url = format!("http://127.0.0.1:{port}");
    let p = XaParticipant::builder(PgXa::new(pool.clone()), TandemClient::new(&c.url).expect("client"), "child", &url)
        .build();
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("rebind");
    let app = p.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = p.recover(Duration::from_secs(3600)).await.expect("recover");
    assert_eq!(r.committed, 1, "{r:?}");

    let t = wait_status(&client, &tx.xid, "committed", WAIT).await;
    assert_eq!(t.branches[0].status, BranchStatus::Committed);
    let qty: Option<i32> =
        sqlx::query_scalar("SELECT qty FROM items WHERE id = 9").fetch_optional(&pool).await.expect("qty");
    assert_eq!(qty, Some(90));
    assert_eq!(prepared().await, 0);
    c.stop().await.expect("coordinator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_after_an_xa_decision_is_finished_by_its_restart() {
    let db = TestDb::new("xa_ckill").await;
    let mut p = Process::spawn(&db.url, FAST_FLAGS).await;
    // The services are down while the first coordinator runs phase 2.
    let pdb = TestDb::new_on(&xa_pg_server(), "xa_ckill_p").await;
    let pool = pdb.pool().await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL)").execute(&pool).await.expect("schema");
    let port = free_port().await;
    let url = format!("http://127.0.0.1:{port}");
    let part = XaParticipant::builder(PgXa::new(pool.clone()), TandemClient::new(&p.url).expect("client"), "svc", &url)
        .build();

    let tx = p.client.begin(&xa()).await.expect("begin");
    for id in [1, 2] {
        part.run(&tx.xid, move |c| {
            async move {
                sqlx::query("INSERT INTO items VALUES ($1, 1)").bind(id).execute(&mut *c).await?;
                Ok(())
            }
            .boxed()
        })
        .await
        .expect("prepare");
    }
    p.client.commit(&tx.xid, Some(Duration::ZERO)).await.expect("commit decided");
    eventually("phase 2 attempted", WAIT, || async {
        let t = p.client.get(&tx.xid).await.ok()?;
        (t.branches.iter().any(|b| b.attempts >= 1)).then_some(())
    })
    .await;
    p.kill9().await;

    // The service comes up; a new coordinator process on the same database finishes phase 2.
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind");
    let app = part.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let restarted = Process::spawn(&db.url, FAST_FLAGS).await;
    let t = wait_status(&restarted.client, &tx.xid, "committed", WAIT).await;
    assert!(t.branches.iter().all(|b| b.status == BranchStatus::Committed));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items").fetch_one(&pool).await.expect("count");
    assert_eq!(n, 2);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 0);
}
