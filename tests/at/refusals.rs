//! What AT refuses: a rollback over rows changed outside the global
//! transaction (dirty writes), statements it cannot image, branches that
//! cannot commit, and transactions that take no locks. Each refusal changes
//! nothing.

use super::*;

async fn dirty_write_is_reported<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
{
    stock(d).await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql(&d.q("UPDATE stock SET qty = qty - 1 WHERE id = ?")).bind(1i64).execute().await.unwrap();
    t.sql(&d.q("UPDATE stock SET qty = qty - 1 WHERE id = ?")).bind(2i64).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");
    // Someone writes the row outside the global transaction.
    d.exec("UPDATE stock SET qty = 42 WHERE id = 1").await;

    c.client().rollback(&xid, None).await.unwrap();
    let tx = wait_status(c.client(), &xid, "rollback_failed", WAIT).await;
    let branch = &tx.branches[0];
    assert_eq!(branch.status, BranchStatus::RollbackFailed);
    let report = branch.last_error.as_deref().expect("the conflict is reported");
    let body: serde_json::Value = serde_json::from_str(report.trim_start_matches("409: ")).expect("JSON report");
    let conflict = &body["conflicts"][0];
    assert_eq!(conflict["table"].as_str().unwrap().rsplit('.').next(), Some("stock"));
    assert_eq!(conflict["pk"], serde_json::json!(["1"]));
    assert_eq!(conflict["expected"]["qty"], "9");
    assert_eq!(conflict["found"]["qty"], "42");
    assert_eq!(body["conflicts"].as_array().unwrap().len(), 1, "only the dirty row");
    // Nothing was overwritten, not even the clean row of the same branch.
    assert_eq!(d.snapshot("stock", &["qty"], "id").await, vec!["42", "19", "30"]);
    assert_eq!(d.undo_rows(&xid).await.len(), 1, "the undo row stays for the operator");
    // The lock stays held: nobody else may write over rows a person must repair.
    let keys = vec![branch.lock_keys[0].clone()];
    let check = LockCheckRequest { resource: "inventory".into(), lock_keys: keys, xid: None };
    assert!(!c.client().check_locks(&check).await.unwrap().free);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_write_is_detected_and_reported_and_nothing_overwritten_on_postgres() {
    let c = Coordinator::start("at_dirty").await;
    let d = PgBusiness::new("at_dirty_p").await;
    dirty_write_is_reported(&d, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_write_is_detected_and_reported_and_nothing_overwritten_on_mariadb() {
    let c = Coordinator::start("at_dirtym").await;
    let d = MariaBusiness::new("at_dirty_m").await;
    dirty_write_is_reported(&d, &c).await;
}

async fn unsupported_sql_is_refused<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
{
    poisoned_transactions_do_not_commit(d, c).await;
    stock(d).await;
    d.exec("CREATE TABLE nokey (a int, b int); INSERT INTO nokey VALUES (1, 1)").await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let original = d.snapshot("stock", STOCK_COLS, "id").await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    let refused = [
        ("UPDATE nokey SET b = 2 WHERE a = 1", "no primary key"),
        ("DROP TABLE stock", "DROP"),
        ("ALTER TABLE stock ADD COLUMN x int", "ALTER"),
        ("UPDATE stock SET id = 7 WHERE id = 1", "primary-key column"),
        ("INSERT INTO stock SELECT * FROM stock", "INSERT ... SELECT"),
        ("UPDATE stock SET qty = 1; DELETE FROM stock", "exactly one statement"),
        ("DELETE FROM stock s USING nokey n WHERE s.id = n.a", "USING"),
        ("UPDATE missing_table SET x = 1", "no table"),
        ("TRUNCATE stock", "TRUNCATE"),
        ("UPDAT stock SET qty = 1", "cannot parse"),
    ];
    for (sql, expect) in refused {
        match t.sql(sql).execute().await {
            Err(AtError::Unsupported(m)) => assert!(m.contains(expect), "{sql}: {m}"),
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    let r = t.sql(&d.q("UPDATE stock SET qty = 1 WHERE id = ?")).execute().await;
    assert!(matches!(r, Err(AtError::Unsupported(ref m)) if m.contains("parameter")), "{r:?}");
    // Rows come back only from SELECT ... FOR UPDATE or RETURNING.
    let r = t.sql(&d.q("INSERT INTO stock (id, sku, qty) VALUES (?, 'q', 1)")).bind(77i64).fetch_all().await;
    assert!(matches!(r, Err(AtError::Unsupported(ref m)) if m.contains("fetch_all")), "{:?}", r.err());
    assert_eq!(t.commit().await.unwrap(), None, "nothing imaged, no branch");
    assert!(c.client().get(&xid).await.unwrap().branches.is_empty());
    assert_eq!(d.snapshot("stock", STOCK_COLS, "id").await, original, "nothing changed");
    assert_eq!(d.snapshot("nokey", &["a", "b"], "a").await, vec!["1|1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_sql_is_refused_with_nothing_changed_on_postgres() {
    let c = Coordinator::start("at_ref").await;
    let d = PgBusiness::new("at_ref_p").await;
    unsupported_sql_is_refused(&d, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_sql_is_refused_with_nothing_changed_on_mariadb() {
    let c = Coordinator::start("at_refm").await;
    let d = MariaBusiness::new("at_ref_m").await;
    unsupported_sql_is_refused(&d, &c).await;
}

/// A statement that fails after it ran leaves the branch unable to commit:
/// commit rolls everything back, registers nothing.
async fn poisoned_transactions_do_not_commit<D: Business>(d: &D, c: &Coordinator)
where
    i64: AtParam<<D::B as AtBackend>::Db>,
{
    d.exec("CREATE TABLE poison (id bigint PRIMARY KEY, v int NOT NULL); INSERT INTO poison VALUES (1, 1)").await;
    let p = participant::<D::B>(d.pool(), &c.c.url, "poison", LockRetry::default()).await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql(&d.q("UPDATE poison SET v = 2 WHERE id = ?")).bind(1i64).execute().await.unwrap();
    // NOT NULL violated: the database refuses after AT imaged the row.
    let r = t.sql(&d.q("UPDATE poison SET v = NULL WHERE id = ?")).bind(1i64).execute().await;
    assert!(matches!(r, Err(AtError::Database(_))), "{r:?}");
    let r = t.commit().await;
    assert!(matches!(r, Err(AtError::Poisoned(_))), "{r:?}");
    assert_eq!(d.snapshot("poison", &["v"], "id").await, vec!["1"], "nothing committed");
    assert!(c.client().get(&xid).await.unwrap().branches.is_empty(), "no branch registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_branch_refuses_to_join_a_transaction_that_takes_no_locks() {
    let c = Coordinator::start("at_mode").await;
    let d = PgBusiness::new("at_mode_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &c.c.url, "inventory", LockRetry::default()).await;
    let tcc = c
        .client()
        .begin(&BeginRequest { mode: Mode::Tcc, name: None, timeout_ms: None, three_phase: None })
        .await
        .unwrap();
    let mut t = p.at.begin(&tcc.xid).await.unwrap();
    t.sql("UPDATE stock SET qty = 0 WHERE id = $1").bind(1i64).execute().await.unwrap();
    let r = t.commit().await;
    assert!(matches!(r, Err(AtError::Unsupported(ref m)) if m.contains("AT transactions")), "{r:?}");
    assert_eq!(qty(&d, 1).await, vec!["10"], "nothing committed");
    let tx = c.client().get(&tcc.xid).await.unwrap();
    assert_eq!(tx.branches[0].status, BranchStatus::Phase1Failed, "the registered branch reported its failure");
    assert_eq!(tx.branches[0].global_locks, Some(false));
}
