//! Crash recovery: a coordinator killed with SIGKILL during a rollback.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_killed_during_rollback_finishes_it_after_restart() {
    let coord_db = TestDb::new("at_kill").await;
    let mut first = Process::spawn(&coord_db.url, FAST_FLAGS).await;
    let d = PgBusiness::new("at_kill_p").await;
    stock(&d).await;
    let p = participant::<Pg>(d.pool(), &first.url, "inventory", LockRetry::default()).await;
    let original = d.snapshot("stock", STOCK_COLS, "id").await;

    let req = BeginRequest { mode: Mode::At, name: None, timeout_ms: Some(60_000), three_phase: None };
    let xid = first.client.begin(&req).await.unwrap().xid;
    let mut t = p.at.begin(&xid).await.unwrap();
    t.sql("UPDATE stock SET qty = 0 WHERE id <= $1").bind(2i64).execute().await.unwrap();
    t.sql("INSERT INTO stock (id, sku, qty) VALUES ($1, 'z', 1)").bind(9i64).execute().await.unwrap();
    t.commit().await.unwrap().expect("branch");

    // The rollback callback reaches the participant and is held there; the
    // coordinator dies mid-rollback.
    p.gate.hold();
    first.client.rollback(&xid, Some(Duration::ZERO)).await.unwrap();
    eventually("rollback callback arrived", WAIT, || async {
        (p.gate.arrived.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    first.kill9().await;
    p.gate.release();

    // The held callback may have completed after the kill, or not; either way
    // a restarted coordinator finishes the rollback (idempotent at the SDK).
    let second = Process::spawn(&coord_db.url, FAST_FLAGS).await;
    let tx = wait_status(&second.client, &xid, "rolled_back", WAIT).await;
    assert_eq!(tx.branches[0].status, BranchStatus::RolledBack);
    assert_eq!(d.snapshot("stock", STOCK_COLS, "id").await, original);
    assert_eq!(d.undo_rows(&xid).await[0].1, 1);
}
