//! A lock holder in its own process, to be SIGKILLed or SIGSTOPped: this
//! test binary re-executed with [`HOLDER_ENV`] set to a [`Spec`]. It
//! acquires one lock, prints `GRANTED <token>`, then either holds it
//! (renewing) or writes to a fenced PostgreSQL table every 50 ms, printing
//! `WROTE <token>` or, once the fence refuses it, `REFUSED <token> <seen>`
//! and exits. It ignores the loss signal on purpose: the fence alone must
//! stop its late writes.

use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::time::Duration;
use tandem_sdk::locks::coordinator::CoordinatorLocks;
use tandem_sdk::locks::fencing::{Fence, FenceCheck};
use tandem_sdk::locks::{LockBackend, LockName, LockOptions, LockOwner, Locks};
use tandem_sdk::TandemClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// The variable that makes this binary a holder.
pub const HOLDER_ENV: &str = "TANDEM_LOCKS_HOLDER";

/// What the holder does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// Coordinator URLs (the coordinator backend), or empty.
    pub coordinators: Vec<String>,
    /// A Redis URL (the Redis backend), if not a coordinator.
    pub redis: Option<String>,
    /// The lock.
    pub name: String,
    /// Its lease.
    pub ttl_ms: u64,
    /// Renewal period (long: no renewal within the test).
    pub renew_every_ms: Option<u64>,
    /// Write to this database's `fenced_writes` behind the fence of `name`, if set.
    pub write_db: Option<String>,
}

/// The fenced table the holders and the tests write.
pub const FENCED_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS fenced_writes (id bigserial PRIMARY KEY, token bigint NOT NULL, writer text NOT NULL)";

/// One fenced write: the fence check and the row in one transaction.
pub async fn fenced_write(pool: &sqlx::PgPool, resource: &str, token: u64, writer: &str) -> FenceCheck {
    let fence = Fence::new(pool.clone());
    let mut tx = pool.begin().await.expect("begin");
    let check = fence.check(&mut tx, resource, tandem_sdk::locks::FencingToken(token)).await.expect("fence check");
    if check == FenceCheck::Accepted {
        sqlx::query("INSERT INTO fenced_writes (token, writer) VALUES ($1, $2)")
            .bind(token as i64)
            .bind(writer)
            .execute(&mut *tx)
            .await
            .expect("write");
        tx.commit().await.expect("commit");
    }
    check
}

#[test]
fn holder_process() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else { return };
    let spec: Spec = serde_json::from_str(&spec).expect("holder spec");
    tokio::runtime::Runtime::new().unwrap().block_on(run(spec));
}

async fn run(spec: Spec) {
    let backend: std::sync::Arc<dyn LockBackend> = match &spec.redis {
        Some(url) => std::sync::Arc::new(tandem_sdk::locks::redis::RedisLocks::connect(url).await.expect("redis")),
        None => std::sync::Arc::new(
            CoordinatorLocks::with_failover(spec.coordinators.iter().map(|u| TandemClient::new(u).unwrap()).collect())
                .expect("coordinators"),
        ),
    };
    let locks = Locks::with_backend(backend);
    let name = LockName::parse(spec.name.clone()).unwrap();
    let mut opts = LockOptions::ttl(Duration::from_millis(spec.ttl_ms)).wait(Duration::from_secs(10));
    opts.renew_every = spec.renew_every_ms.map(Duration::from_millis);
    let guard = locks.lock_as(&LockOwner::random("holder"), &name, &opts).await.expect("acquire");
    let token = guard.token().0;
    println!("GRANTED {token}");
    let Some(db) = spec.write_db else {
        std::future::pending::<()>().await;
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&db).await.expect("db");
    loop {
        match fenced_write(&pool, &spec.name, token, "holder").await {
            FenceCheck::Accepted => println!("WROTE {token}"),
            FenceCheck::Stale { seen } => {
                println!("REFUSED {token} {seen}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A holder process and its output lines.
pub struct Holder {
    /// The process.
    pub child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Holder {
    /// Starts a holder with `spec`.
    pub fn spawn(spec: &Spec) -> Holder {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["holder::holder_process", "--exact", "--nocapture", "--test-threads=1"])
            .env(HOLDER_ENV, serde_json::to_string(spec).unwrap())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn holder");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Holder { child, lines }
    }

    /// The next line holding `prefix` (others skipped), from `prefix` on,
    /// within `timeout` (libtest's own `test … ` may start the line).
    pub async fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) if l.contains(prefix) => return l[l.find(prefix).unwrap_or(0)..].to_owned(),
                Ok(Some(_)) => continue,
                Ok(None) => panic!("holder exited before printing {prefix}"),
                Err(_) => panic!("holder printed no {prefix} within {timeout:?}"),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id().expect("running") as i32)
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal holder");
    }
}
