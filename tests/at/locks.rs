//! Global locks: transactions on the same rows serialized by the
//! coordinator, bounded retries, fast failure behind a rollback, and the
//! coordinator's lock API itself.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_global_transactions_on_one_row_are_serialized_by_the_global_lock() {
    let c = Coordinator::start("at_lock").await;
    let d = PgBusiness::new("at_lock_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", patient()).await;

    let a = c.begin().await;
    let mut ta = p.at.begin(&a).await.unwrap();
    ta.sql("UPDATE stock SET qty = qty - 1 WHERE id = $1").bind(1i64).execute().await.unwrap();
    ta.commit().await.unwrap().expect("branch a");

    // B changes the same row: its local update goes through (A committed
    // locally), but its branch cannot register while A holds the global lock.
    let b = c.begin().await;
    let at = p.at.clone();
    let b2 = b.clone();
    let task = tokio::spawn(async move {
        let mut tb = at.begin(&b2).await.unwrap();
        tb.sql("UPDATE stock SET qty = qty * 10 WHERE id = $1").bind(1i64).execute().await.unwrap();
        tb.commit().await
    });
    let metrics = format!("{}/metrics", c.c.url);
    eventually("B hits A's lock", WAIT, || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        text.lines().any(|l| l.starts_with("tandem_lock_conflicts_total") && !l.ends_with(" 0")).then_some(())
    })
    .await;
    assert!(!task.is_finished(), "B waits for the global lock");
    assert_eq!(c.client().get(&b).await.unwrap().branches.len(), 0);

    c.client().commit(&a, None).await.unwrap();
    let branch_b = task.await.unwrap().expect("B registers once A released").expect("branch b");
    let tb = c.client().get(&b).await.unwrap();
    assert_eq!(tb.branches[0].branch_id, branch_b);
    assert_eq!(qty(&d, 1).await, vec!["90"], "A's write, then B's on top");

    // Rolling B back restores A's committed value, not the original.
    c.client().rollback(&b, None).await.unwrap();
    wait_status(c.client(), &b, "rolled_back", WAIT).await;
    assert_eq!(qty(&d, 1).await, vec!["9"]);
}

/// Many global transactions moving money between six hot rows, half of
/// them rolled back, some failing on a lock: the total never changes, every
/// transaction ends, and no lock or undo row is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_on_hot_rows_keep_the_total() {
    let c = Coordinator::start("at_hot").await;
    let d = PgBusiness::new("at_hot_p").await;
    d.exec("CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL); INSERT INTO acct SELECT g, 1000 FROM generate_series(0, 5) g")
        .await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "bank", LockRetry::default()).await;
    let client = c.client().clone();
    let mut tasks = Vec::new();
    for w in 0..4i32 {
        let (at, client) = (p.at.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut xids = Vec::new();
            for i in 0..12i32 {
                let (from, to) = ((w + i) % 6, (w * 2 + i + 1) % 6);
                if from == to {
                    continue;
                }
                let req = BeginRequest { mode: Mode::At, name: None, timeout_ms: Some(60_000), three_phase: None };
                let xid = client.begin(&req).await.unwrap().xid;
                let mut t = at.begin(&xid).await.unwrap();
                let moved = async {
                    t.sql("UPDATE acct SET bal = bal - $1 WHERE id = $2").bind(7i64).bind(from).execute().await?;
                    t.sql("UPDATE acct SET bal = bal + $1 WHERE id = $2").bind(7i64).bind(to).execute().await?;
                    Ok::<_, AtError>(())
                }
                .await;
                let registered = match moved {
                    Ok(()) => t.commit().await.is_ok(),
                    Err(_) => false,
                };
                if registered && i % 2 == 0 {
                    client.commit(&xid, None).await.unwrap();
                } else {
                    client.rollback(&xid, None).await.unwrap();
                }
                xids.push(xid);
            }
            xids
        }));
    }
    let mut xids = Vec::new();
    for t in tasks {
        xids.extend(t.await.unwrap());
    }
    for xid in &xids {
        eventually("every transaction ends", WAIT, || async {
            let t = client.get(xid).await.ok()?;
            matches!(t.status, GlobalStatus::Committed | GlobalStatus::RolledBack).then_some(())
        })
        .await;
    }
    let mut committed = 0;
    for xid in &xids {
        committed += usize::from(client.get(xid).await.unwrap().status == GlobalStatus::Committed);
    }
    let metrics = reqwest::get(format!("{}/metrics", c.c.url)).await.unwrap().text().await.unwrap();
    let conflicts = metrics.lines().find(|l| l.starts_with("tandem_lock_conflicts_total")).unwrap_or_default();
    eprintln!("{committed} of {} committed; {conflicts}", xids.len());
    assert!(committed > 0, "some transfers commit");
    let total: i64 = sqlx::query_scalar("SELECT sum(bal)::bigint FROM acct").fetch_one(&d.pool).await.unwrap();
    assert_eq!(total, 6000, "money is neither made nor lost");
    let locks = LockCheckRequest {
        resource: "bank".into(),
        lock_keys: (0..6).map(|i| format!("public.acct:{i}")).collect(),
        xid: None,
    };
    assert!(client.check_locks(&locks).await.unwrap().free, "no lock left behind");
    eventually("undo rows of committed branches deleted", WAIT, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tandem_undo_log WHERE state = 0").fetch_one(&d.pool).await.ok()?;
        (n == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_conflict_fails_the_local_transaction_after_bounded_retries() {
    let c = Coordinator::start("at_lockf").await;
    let d = PgBusiness::new("at_lockf_p").await;
    stock(&d).await;
    let quick = LockRetry { interval: Duration::from_millis(10), timeout: Duration::from_millis(200) };
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", quick).await;

    let a = c.begin().await;
    let mut ta = p.at.begin(&a).await.unwrap();
    ta.sql("UPDATE stock SET qty = 11 WHERE id = $1").bind(1i64).execute().await.unwrap();
    ta.commit().await.unwrap().expect("branch a");

    let b = c.begin().await;
    let mut tb = p.at.begin(&b).await.unwrap();
    tb.sql("UPDATE stock SET qty = 99 WHERE id IN ($1, $2)").bind(1i64).bind(2i64).execute().await.unwrap();
    let started = Instant::now();
    match tb.commit().await {
        Err(AtError::LockConflict { holder, waited }) => {
            assert_eq!(holder.xid, a);
            assert_eq!(holder.status, GlobalStatus::Active);
            assert_eq!(holder.lock_key, "public.stock:1");
            assert!(waited >= Duration::from_millis(150), "retried for the configured time: {waited:?}");
        }
        other => panic!("expected a lock conflict, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(d.snapshot("stock", &["qty"], "id").await, vec!["11", "20", "30"], "B's local transaction rolled back");
    assert!(c.client().get(&b).await.unwrap().branches.is_empty(), "B registered nothing");

    // SELECT ... FOR UPDATE checks the global lock too.
    let mut tb = p.at.begin(&b).await.unwrap();
    let r = tb.sql("SELECT qty FROM stock WHERE id = $1 FOR UPDATE").bind(1i64).fetch_all().await;
    assert!(matches!(r, Err(AtError::LockConflict { .. })), "{r:?}");
    drop(tb);
    c.client().commit(&a, None).await.unwrap();
    let mut tb = p.at.begin(&b).await.unwrap();
    let rows = tb.sql("SELECT qty FROM stock WHERE id = $1 FOR UPDATE").bind(1i64).fetch_all().await.unwrap();
    assert_eq!(sqlx::Row::get::<i32, _>(&rows[0], 0), 11, "read-committed once A committed");
    assert_eq!(tb.commit().await.unwrap(), None, "a read registers no branch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_a_rolling_back_transaction_fails_fast() {
    let c = Coordinator::start("at_lockr").await;
    let d = PgBusiness::new("at_lockr_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", patient()).await;

    let a = c.begin().await;
    let mut ta = p.at.begin(&a).await.unwrap();
    ta.sql("UPDATE stock SET qty = 12 WHERE id = $1").bind(1i64).execute().await.unwrap();
    ta.commit().await.unwrap().expect("branch a");
    // A's rollback cannot reach the participant: A stays rolling_back, holding its lock.
    p.gate.hold();
    c.client().rollback(&a, Some(Duration::ZERO)).await.unwrap();
    wait_status(c.client(), &a, "rolling_back", WAIT).await;

    let b = c.begin().await;
    let mut tb = p.at.begin(&b).await.unwrap();
    tb.sql("UPDATE stock SET qty = 13 WHERE id = $1").bind(1i64).execute().await.unwrap();
    let started = Instant::now();
    match tb.commit().await {
        Err(AtError::LockConflict { holder, .. }) => assert_eq!(holder.status, GlobalStatus::RollingBack),
        other => panic!("expected a lock conflict, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "failed fast, not after the 30 s retry budget");
    p.gate.release();
    wait_status(c.client(), &a, "rolled_back", WAIT).await;
    assert_eq!(qty(&d, 1).await, vec!["10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_takes_locks_atomically_with_registration() {
    let c = Coordinator::start("at_api").await;
    let reg = |keys: &[&str]| RegisterBranchRequest {
        resource: "db1".into(),
        callback_url: "http://127.0.0.1:9/cb".into(),
        payload: None,
        lock_keys: Some(keys.iter().map(|k| (*k).to_owned()).collect()),
    };
    let a = c.begin().await;
    let b = c.begin().await;
    c.client().register(&a, &reg(&["t:1", "t:2"])).await.unwrap();
    // The same transaction may take its own keys again.
    c.client().register(&a, &reg(&["t:2", "t:3"])).await.unwrap();
    let err = c.client().register(&b, &reg(&["t:9", "t:3"])).await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    let tandem_sdk::ClientError::Problem(p) = err else { panic!("problem expected") };
    assert_eq!(p.code, tandem_sdk::wire::ErrorCode::LockConflict);
    let holder = p.lock_holder.expect("holder named");
    assert_eq!((holder.xid, holder.lock_key.as_str()), (a.clone(), "t:3"));
    // Nothing of B's refused registration stayed: no branch, and t:9 is free.
    assert!(c.client().get(&b).await.unwrap().branches.is_empty());
    let check = |keys: &[&str], xid: Option<Xid>| LockCheckRequest {
        resource: "db1".into(),
        lock_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        xid,
    };
    assert!(c.client().check_locks(&check(&["t:9"], None)).await.unwrap().free);
    assert!(!c.client().check_locks(&check(&["t:1"], Some(b.clone()))).await.unwrap().free);
    assert!(c.client().check_locks(&check(&["t:1"], Some(a.clone()))).await.unwrap().free, "own locks are free");
    // Other resources and other modes are not affected.
    let mut other = reg(&["t:1"]);
    other.resource = "db2".into();
    c.client().register(&b, &other).await.unwrap();
    let tcc = c
        .client()
        .begin(&BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: None, three_phase: None })
        .await
        .unwrap();
    c.client().register(&tcc.xid, &reg(&["t:1"])).await.unwrap();
    // Bad keys change nothing.
    let err = c.client().register(&b, &reg(&[""])).await.unwrap_err();
    assert_eq!(err.status(), Some(422));
}
