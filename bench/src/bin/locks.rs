//! `tandem-bench-locks`: acquire + release per second, and the latency of
//! one pair, for every lock backend side by side in one run.
//!
//! Backends: the coordinator's lock service (an in-process coordinator on
//! `--database-url`, over HTTP on loopback, through the SDK's
//! `CoordinatorLocks`), the SDK's Redis backend on `--redis`, RedLock over
//! three `redis-server` processes this binary starts on free ports, and a
//! raw baseline on the same Redis as the Redis backend: `SET key value NX
//! PX` then `DEL` (no owner check, no token, no script). Every backend but
//! the baseline goes through the SDK's `Locks::lock_as` and
//! `LockGuard::release` (watchdog included), as a user would.
//!
//! Workloads: `uncontended` (one client, its own lock) and `contended`
//! (`--contenders` clients, each pair on one of `--locks` locks picked at
//! random, waiting for it). A waiter of the coordinator backend is woken by
//! the release (FIFO hand-over); the Redis backends and the baseline retry
//! (the SDK's backoff; the baseline every 1 ms).
//!
//! The last line printed is one JSON object with every figure.

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use rand::Rng;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_coordinator::{Application, Settings};
use tandem_sdk::locks::coordinator::CoordinatorLocks;
use tandem_sdk::locks::redis::RedisLocks;
use tandem_sdk::locks::redlock::RedLock;
use tandem_sdk::locks::{LockBackend, LockName, LockOptions, LockOwner, Locks};
use tandem_sdk::TandemClient;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tandem-bench-locks", about = "Benchmark the lock backends side by side")]
struct Args {
    /// PostgreSQL URL of the coordinator's database (migrated at start).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The Redis of the Redis backend and of the raw baseline.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// The `redis-server` binary RedLock's three servers run.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Seconds measured per backend and workload.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unmeasured warm-up before each.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Clients of the contended workload.
    #[arg(long, default_value_t = 32)]
    contenders: usize,
    /// Locks they share.
    #[arg(long, default_value_t = 8)]
    locks: usize,
    /// Only these backends (comma-separated: coordinator, redis, redlock, raw).
    #[arg(long, default_value = "coordinator,redis,redlock,raw")]
    backends: String,
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
struct Figure {
    backend: &'static str,
    workload: &'static str,
    clients: usize,
    locks: usize,
    pairs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// What one pair runs on.
#[derive(Clone)]
enum Target {
    /// The SDK's client over a backend.
    Sdk(Locks),
    /// `SET NX PX` / `DEL` on a connection.
    Raw(redis::aio::ConnectionManager),
}

impl Target {
    /// One acquire + release of `name`, waiting for it.
    async fn pair(&self, name: &LockName, owner: &LockOwner) -> anyhow::Result<()> {
        match self {
            Target::Sdk(locks) => {
                let opts = LockOptions::ttl(Duration::from_secs(10)).wait(Duration::from_secs(30));
                let g = locks.lock_as(owner, name, &opts).await?;
                g.release().await?;
                Ok(())
            }
            Target::Raw(conn) => {
                let mut c = conn.clone();
                let key = format!("bench:raw:{name}");
                loop {
                    let ok: Option<String> = redis::cmd("SET")
                        .arg(&key)
                        .arg(owner.as_str())
                        .arg("NX")
                        .arg("PX")
                        .arg(10_000)
                        .query_async(&mut c)
                        .await?;
                    if ok.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut c).await?;
                Ok(())
            }
        }
    }
}

async fn measure(
    target: &Target,
    backend: &'static str,
    workload: &'static str,
    clients: usize,
    locks: usize,
    warmup: Duration,
    duration: Duration,
) -> Figure {
    let run = format!("{:08x}", rand::thread_rng().gen::<u32>());
    let names: Arc<Vec<LockName>> = Arc::new(
        (0..locks).map(|i| LockName::parse(format!("bench:{backend}:{workload}:{run}:{i}")).expect("name")).collect(),
    );
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (target, names) = (target.clone(), names.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut errors = 0u64;
            let owner = LockOwner::random(&format!("bench-{c}"));
            while Instant::now() < end {
                let name =
                    if names.len() == 1 { &names[0] } else { &names[rand::thread_rng().gen_range(0..names.len())] };
                let t = Instant::now();
                let r = target.pair(name, &owner).await;
                if t >= measure_from && Instant::now() <= end {
                    match r {
                        Ok(()) => {
                            let _ = h.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX).max(1));
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
            (h, errors)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0;
    for t in tasks {
        if let Ok((h, e)) = t.await {
            let _ = all.add(&h);
            errors += e;
        }
    }
    Figure {
        backend,
        workload,
        clients,
        locks,
        pairs_per_sec: all.len() as f64 / duration.as_secs_f64(),
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    }
}

/// A `redis-server` of this run, killed on drop.
struct Server {
    url: String,
    _child: tokio::process::Child,
    _dir: std::path::PathBuf,
}

async fn start_redis(bin: &str) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("tandem-bench-redis-{port}"));
    std::fs::create_dir_all(&dir)?;
    let child = tokio::process::Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "redis-server on {port} did not answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Server { url, _child: child, _dir: dir })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let wanted: Vec<&str> = args.backends.split(',').map(str::trim).collect();
    let warmup = Duration::from_secs(args.warmup_secs);
    let duration = Duration::from_secs(args.duration_secs);
    let mut targets: Vec<(&'static str, Target)> = Vec::new();
    let mut _keep = Vec::new();
    let mut coordinator = None;
    if wanted.contains(&"coordinator") {
        let mut s = Settings::new(&args.database_url);
        s.db_max_connections = 32;
        s.db_relaxed_connections = 8;
        let c = Application::spawn(&s).await.context("starting the coordinator")?;
        let backend = CoordinatorLocks::new(TandemClient::new(&c.url)?);
        targets.push(("coordinator", Target::Sdk(Locks::new(backend))));
        coordinator = Some(c);
    }
    if wanted.contains(&"redis") {
        targets.push(("redis", Target::Sdk(Locks::new(RedisLocks::connect(&args.redis).await?))));
    }
    if wanted.contains(&"redlock") {
        let mut urls = Vec::new();
        for _ in 0..3 {
            let s = start_redis(&args.redis_server).await?;
            urls.push(s.url.clone());
            _keep.push(s);
        }
        let backend: Arc<dyn LockBackend> = Arc::new(RedLock::connect(&urls).await?);
        targets.push(("redlock-3", Target::Sdk(Locks::with_backend(backend))));
    }
    if wanted.contains(&"raw") {
        let client = redis::Client::open(args.redis.as_str())?;
        targets.push(("raw-set-nx", Target::Raw(redis::aio::ConnectionManager::new(client).await?)));
    }
    let mut figures = Vec::new();
    for (name, target) in &targets {
        for (workload, clients, locks) in [("uncontended", 1, 1), ("contended", args.contenders, args.locks)] {
            let f = measure(target, name, workload, clients, locks, warmup, duration).await;
            eprintln!(
                "{:<12} {:<12} {:>3} clients {:>2} locks  {:>9.0} pairs/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
                f.backend, f.workload, f.clients, f.locks, f.pairs_per_sec, f.p50_ms, f.p99_ms, f.errors
            );
            figures.push(f);
        }
    }
    println!("{}", serde_json::json!({ "figures": figures }));
    if let Some(c) = coordinator {
        c.stop().await.ok();
    }
    Ok(())
}
