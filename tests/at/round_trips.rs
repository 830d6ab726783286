//! Round trips: changes committed locally in phase 1, then rolled back (or
//! committed) globally; the rows come back exactly, the undo rows go away.

use super::*;

/// Update, insert and delete, each in its own global transaction, each
/// rolled back to exactly the original rows; the undo row becomes a marker.
async fn each_change_rolls_back_exactly<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
    i32: AtParam<<D::B as AtBackend>::Db>,
    &'static str: AtParam<<D::B as AtBackend>::Db>,
{
    stock(d).await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let original = d.snapshot("stock", STOCK_COLS, "id").await;
    for case in ["update", "insert", "delete", "all three"] {
        let xid = c.begin().await;
        let mut t = p.at.begin(&xid).await.unwrap();
        if case == "update" || case == "all three" {
            let sql = d.q("UPDATE stock AS s SET qty = s.qty - ?, note = ? WHERE s.id IN (?, ?)");
            let n = t.sql(&sql).bind(5i32).bind("held").bind(1i64).bind(2i64).execute().await.unwrap();
            assert_eq!(n, 2, "{case}");
        }
        if case == "insert" || case == "all three" {
            let sql = d.q("INSERT INTO stock (id, sku, qty) VALUES (?, ?, ?), (?, ?, 7)");
            let n = t.sql(&sql).bind(10i64).bind("new").bind(1i32).bind(11i64).bind("new2").execute().await.unwrap();
            assert_eq!(n, 2, "{case}");
        }
        if case == "delete" || case == "all three" {
            let n = t.sql(&d.q("DELETE FROM stock WHERE qty >= ?")).bind(20i32).execute().await.unwrap();
            assert!(n >= 1, "{case}");
        }
        let branch = t.commit().await.unwrap().expect("a branch was registered");
        assert_ne!(d.snapshot("stock", STOCK_COLS, "id").await, original, "{case}: phase 1 committed locally");
        let key = undo_key(c, &xid).await;
        assert_ne!(key, branch.to_string(), "the SDK's own key, registered as the payload");
        assert_eq!(d.undo_rows(&xid).await, vec![(key.clone(), 0)]);

        c.client().rollback(&xid, None).await.unwrap();
        let t = wait_status(c.client(), &xid, "rolled_back", WAIT).await;
        assert_eq!(t.branches[0].status, BranchStatus::RolledBack);
        assert_eq!(d.snapshot("stock", STOCK_COLS, "id").await, original, "{case}: rolled back exactly");
        assert_eq!(d.undo_rows(&xid).await, vec![(key, 1)], "{case}: undo row became a marker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_insert_and_delete_roll_back_exactly_on_postgres() {
    let c = Coordinator::start("at_rt").await;
    let d = PgBusiness::new("at_rt_p").await;
    each_change_rolls_back_exactly(&d, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_insert_and_delete_roll_back_exactly_on_mariadb() {
    let c = Coordinator::start("at_rtm").await;
    let d = MariaBusiness::new("at_rt_m").await;
    each_change_rolls_back_exactly(&d, &c).await;
}

/// Commit keeps the data, releases the locks, and deletes the undo rows (asynchronously).
async fn commit_removes_undo_rows<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
    i32: AtParam<<D::B as AtBackend>::Db>,
{
    stock(d).await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let mut xids = Vec::new();
    for i in 0..5 {
        let xid = c.begin().await;
        let mut t = p.at.begin(&xid).await.unwrap();
        t.sql(&d.q("UPDATE stock SET qty = qty + ? WHERE id = ?")).bind(1i32).bind(1i64).execute().await.unwrap();
        let keys: Vec<String> = t.lock_keys().map(str::to_owned).collect();
        assert_eq!(keys.len(), 1);
        t.commit().await.unwrap().expect("branch");
        let done = c.client().commit(&xid, None).await.unwrap();
        assert_eq!(done.transaction.status, GlobalStatus::Committed, "commit {i}");
        let free = c
            .client()
            .check_locks(&LockCheckRequest { resource: "inventory".into(), lock_keys: keys, xid: None })
            .await
            .unwrap();
        assert!(free.free, "locks released on commit");
        xids.push(xid);
    }
    assert_eq!(qty(d, 1).await, vec!["15"]);
    for xid in &xids {
        eventually("undo rows deleted after commit", WAIT, || async {
            d.undo_rows(xid).await.is_empty().then_some(())
        })
        .await;
    }
}

/// `purge` deletes old markers and old rows of committed transactions, and
/// keeps everything a rollback may still need.
async fn purge_keeps_what_a_rollback_needs<D: Business>(d: &D, c: &Coordinator, backdate: &str)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
{
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let run = |id: i64| {
        let p = &p;
        async move {
            let xid = c.begin().await;
            let mut t = p.at.begin(&xid).await.unwrap();
            t.sql(&d.q("UPDATE stock SET qty = qty + 1 WHERE id = ?")).bind(id).execute().await.unwrap();
            t.commit().await.unwrap().expect("branch");
            xid
        }
    };
    let committed = run(1).await;
    c.client().commit(&committed, None).await.unwrap();
    let rolled_back = run(2).await;
    c.client().rollback(&rolled_back, None).await.unwrap();
    let open = run(3).await;
    let recent = run(1).await;
    c.client().rollback(&recent, None).await.unwrap();
    wait_status(c.client(), &rolled_back, "rolled_back", WAIT).await;
    wait_status(c.client(), &recent, "rolled_back", WAIT).await;
    eventually("committed undo row deleted", WAIT, || async { d.undo_rows(&committed).await.is_empty().then_some(()) })
        .await;
    // As if the batched delete had been lost: the committed branch's row is back.
    let key = undo_key(c, &committed).await;
    d.exec(&format!(
        "INSERT INTO tandem_undo_log (xid, branch_key, state, rollback_info) VALUES ('{committed}', '{key}', 0, '{{}}')"
    ))
    .await;
    for xid in [&committed, &rolled_back, &open] {
        d.exec(&backdate.replace("XID", xid.as_str())).await;
    }
    let purged = p.at.purge(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(purged, tandem_sdk::at::Purged { markers: 1, committed: 1 });
    assert!(d.undo_rows(&committed).await.is_empty());
    assert!(d.undo_rows(&rolled_back).await.is_empty(), "old marker gone");
    assert_eq!(d.undo_rows(&open).await.len(), 1, "the undecided transaction keeps its images");
    assert_eq!(d.undo_rows(&recent).await.len(), 1, "a recent marker stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_removes_the_undo_rows_on_postgres() {
    let c = Coordinator::start("at_cm").await;
    let d = PgBusiness::new("at_cm_p").await;
    commit_removes_undo_rows(&d, &c).await;
    let backdate = "UPDATE tandem_undo_log SET created_at = created_at - interval '2 hours' WHERE xid = 'XID'";
    purge_keeps_what_a_rollback_needs(&d, &c, backdate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_removes_the_undo_rows_on_mariadb() {
    let c = Coordinator::start("at_cmm").await;
    let d = MariaBusiness::new("at_cm_m").await;
    commit_removes_undo_rows(&d, &c).await;
    let backdate = "UPDATE tandem_undo_log SET created_at = created_at - INTERVAL 2 HOUR WHERE xid = 'XID'";
    purge_keeps_what_a_rollback_needs(&d, &c, backdate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_and_generated_keys_on_postgres() {
    let c = Coordinator::start("at_ret").await;
    let d = PgBusiness::new("at_ret_p").await;
    d.exec(
        "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL, \
         total numeric(10,2) NOT NULL, doubled numeric GENERATED ALWAYS AS (total * 2) STORED); \
         INSERT INTO orders (item, total) VALUES ('seed', 1.50)",
    )
    .await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "orders", LockRetry::default()).await;
    let cols = ["id", "item", "total", "doubled"];
    let original = d.snapshot("orders", &cols, "id").await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let rows = t
        .sql("INSERT INTO orders (item, total) VALUES ($1, 9.99), ('two', 2) RETURNING id, item")
        .bind("one")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let first: i64 = sqlx::Row::get(&rows[0], "id");
    assert_eq!(sqlx::Row::get::<String, _>(&rows[0], 1), "one", "the caller's columns keep their positions");
    let rows =
        t.sql("UPDATE orders SET total = total + 1 WHERE id <= $1 RETURNING total").bind(first).fetch_all().await;
    assert_eq!(rows.unwrap().len(), 2);
    let rows = t.sql("DELETE FROM orders WHERE item = $1 RETURNING id").bind("seed").fetch_all().await.unwrap();
    assert_eq!(rows.len(), 1);
    t.commit().await.unwrap().expect("branch");
    c.client().rollback(&xid, None).await.unwrap();
    wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    assert_eq!(d.snapshot("orders", &cols, "id").await, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_increment_keys_roll_back_on_mariadb() {
    let c = Coordinator::start("at_ai").await;
    let d = MariaBusiness::new("at_ai_m").await;
    d.exec("CREATE TABLE orders (id bigint AUTO_INCREMENT PRIMARY KEY, item varchar(20) NOT NULL); INSERT INTO orders (item) VALUES ('seed')")
        .await;
    let p = participant::<MySqlDb>(d.pool(), &c.c.url, "orders", LockRetry::default()).await;
    let original = d.snapshot("orders", &["id", "item"], "id").await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let n = t.sql("INSERT INTO orders (item) VALUES (?), (?)").bind("one").bind("two").execute().await.unwrap();
    assert_eq!(n, 2);
    let keys: Vec<String> = t.lock_keys().map(str::to_owned).collect();
    assert_eq!(keys.len(), 2, "both generated keys are locked: {keys:?}");
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("orders", &["item"], "id").await, vec!["seed", "one", "two"]);
    c.client().rollback(&xid, None).await.unwrap();
    wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    assert_eq!(d.snapshot("orders", &["id", "item"], "id").await, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_rollback_leaves_a_marker_that_refuses_a_late_phase_one() {
    let c = Coordinator::start("at_empty").await;
    let d = PgBusiness::new("at_empty_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let xid = c.begin().await;
    let branch = tandem_sdk::wire::BranchId::generate();
    let cb = tandem_sdk::wire::CallbackRequest {
        xid: xid.clone(),
        branch_id: branch.clone(),
        mode: Mode::At,
        action: tandem_sdk::wire::CallbackAction::Rollback,
        resource: "inventory".into(),
        payload: None,
        three_phase: None,
    };
    p.at.handle_callback(&cb).await.unwrap();
    p.at.handle_callback(&cb).await.unwrap(); // at-least-once: idempotent
    assert_eq!(d.undo_rows(&xid).await, vec![(branch.to_string(), 1)]);
    // A late phase 1 of that branch writes its undo row in its own local
    // transaction: the marker's key refuses it, so its changes cannot commit.
    let late =
        sqlx::query("INSERT INTO tandem_undo_log (xid, branch_key, state, rollback_info) VALUES ($1, $2, 0, '{}')")
            .bind(xid.as_str())
            .bind(branch.as_str())
            .execute(&d.pool)
            .await;
    let code = late.unwrap_err().as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("23505"));

    // And a branch whose transaction was rolled back before it registered
    // fails its phase 1 with nothing committed.
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("UPDATE stock SET qty = 0 WHERE id = $1").bind(3i64).execute().await.unwrap();
    c.client().rollback(&xid, None).await.unwrap();
    let r = t.commit().await;
    assert!(matches!(r, Err(AtError::Coordinator(_))), "{r:?}");
    assert_eq!(qty(&d, 3).await, vec!["30"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_and_identity_tables_roll_back_on_postgres() {
    let c = Coordinator::start("at_part").await;
    let d = PgBusiness::new("at_part_p").await;
    d.exec(
        "CREATE TABLE ev (region text, id int, v int NOT NULL, PRIMARY KEY (region, id)) PARTITION BY LIST (region); \
         CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu'); \
         CREATE TABLE ev_us PARTITION OF ev FOR VALUES IN ('us'); \
         INSERT INTO ev VALUES ('eu', 1, 10), ('us', 1, 20); \
         CREATE TABLE tick (id int PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY, v int NOT NULL); \
         INSERT INTO tick (id, v) VALUES (1, 5), (2, 6)",
    )
    .await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "events", LockRetry::default()).await;
    let ev = ["region", "id", "v"];
    let tick = ["id", "n", "v"];
    let (ev0, tick0) = (d.snapshot("ev", &ev, "region, id").await, d.snapshot("tick", &tick, "id").await);
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    // The two partitions' first rows share a ctid: only the eu row may change.
    let n = t.sql("UPDATE ev SET v = v + 1 WHERE region = $1 AND id = $2").bind("eu").bind(1i32).execute().await;
    assert_eq!(n.unwrap(), 1);
    assert_eq!(d.snapshot("ev", &["v"], "region, id").await, vec!["10", "20"], "not yet committed");
    t.sql("UPDATE tick SET v = 0 WHERE id = $1").bind(1i32).execute().await.unwrap();
    t.sql("DELETE FROM tick WHERE id = $1").bind(2i32).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    assert_eq!(d.snapshot("ev", &["v"], "region, id").await, vec!["11", "20"]);
    c.client().rollback(&xid, None).await.unwrap();
    wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    assert_eq!(d.snapshot("ev", &ev, "region, id").await, ev0);
    assert_eq!(d.snapshot("tick", &tick, "id").await, tick0, "identity values restored too");
}

/// Phase 1 in a session with one DateStyle and TimeZone, the rollback in a
/// session with others: the images still compare and restore exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_do_not_depend_on_the_sessions_date_style_or_time_zone() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr;
    let c = Coordinator::start("at_ds").await;
    let d = PgBusiness::new("at_ds_p").await;
    d.exec(
        "CREATE TABLE ev (id int PRIMARY KEY, d date, ts timestamp(6), tz timestamptz); \
         INSERT INTO ev VALUES (1, '2024-03-05', '2024-03-05 12:34:56.5', '2024-03-05 12:34:56.5+02')",
    )
    .await;
    // sqlx opens sessions with ISO / UTC; a service may SET others.
    let session = |style: &'static str, zone: &'static str| {
        let opts = PgConnectOptions::from_str(&d._db.url).unwrap();
        PgPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    let set = format!("SET datestyle = '{style}'; SET timezone = '{zone}'");
                    sqlx::Executor::execute(conn, set.as_str()).await.map(|_| ())
                })
            })
            .connect_lazy_with(opts)
    };
    // The participant that serves the callbacks reads in MDY / New York...
    let rollbacker =
        participant::<Pg>(session("SQL, MDY", "America/New_York"), &c.c.url, "events", LockRetry::default()).await;
    // ...the one that runs phase 1 in DMY / Tokyo, under the same resource name.
    let client = TandemClient::new(&c.c.url).unwrap();
    let writer =
        AtParticipant::<Pg>::builder(session("SQL, DMY", "Asia/Tokyo"), client, "events", &rollbacker.url).build();
    let cols = ["d", "ts", "tz"];
    let original = d.snapshot("ev", &cols, "id").await;
    let xid = c.begin().await;
    let mut t = writer.begin(&xid).await.unwrap();
    t.sql("UPDATE ev SET d = d + 1, ts = ts + interval '1 day', tz = tz + interval '1 day' WHERE id = $1")
        .bind(1i32)
        .execute()
        .await
        .unwrap();
    t.commit().await.unwrap().expect("branch");
    assert_ne!(d.snapshot("ev", &cols, "id").await, original);
    c.client().rollback(&xid, None).await.unwrap();
    let tx = wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack, "{:?}", tx.branches[0].last_error);
    assert_eq!(d.snapshot("ev", &cols, "id").await, original);
}
