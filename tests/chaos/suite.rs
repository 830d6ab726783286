//! One run: the world built, the clients and the faults let loose, every
//! fault healed, the checks, the figures.

use crate::check::{self, Report};
use crate::faults;
use crate::netns::Netns;
use crate::participant::{self, Spec};
use crate::pgcluster::PgCluster;
use crate::procs::{coordinator_command, free_port, CoordinatorCaps, CoordinatorNet, Credentials, Launch, Managed};
use crate::schema::{BankDb, BANKS, PARTITIONED_BANK};
use crate::support::mariadb_server;
use crate::workload::{self, Shared, Targets, Transfer};
use crate::{Config, Mode};
use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sqlx::Connection;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_sdk::TandemClient;
use tokio_util::sync::CancellationToken;

/// How long processes may take to answer ready, at the start and after healing.
const READY_WITHIN: Duration = Duration::from_secs(90);
/// How long the clients may take to finish their last transfer once told to stop.
const CLIENTS_WITHIN: Duration = Duration::from_secs(120);

/// A participant process and what it serves.
pub struct ParticipantProc {
    /// Its mode.
    pub mode: Mode,
    /// Its bank's index.
    pub bank: usize,
    /// The URL clients send legs to.
    pub url: String,
}

/// Everything the run started. Fields drop in order: the processes first
/// (SIGKILLed), then the namespace (no process left to send to its
/// addresses), the cluster, the banks' databases.
pub struct World {
    /// The coordinator processes.
    pub coordinators: Vec<Managed>,
    /// Their base URLs, by index.
    pub coordinator_urls: Vec<String>,
    /// The clients' API token, when the coordinators authenticate.
    pub client_token: Option<String>,
    /// The participant processes.
    pub participants: Vec<Managed>,
    /// What each participant serves, by index.
    pub participant_info: Vec<ParticipantProc>,
    /// The namespace of the partitioned banks, when permitted.
    pub netns: Option<Netns>,
    /// The coordinators' database server.
    pub cluster: PgCluster,
    /// The coordinators' database.
    pub coordinator_db: String,
    /// The banks' databases.
    pub banks: Vec<BankDb>,
    /// Prepared transactions MariaDB held but did not list when the run
    /// began (left by earlier runs or other tests): the end may not have more.
    pub stranded_at_start: Option<i64>,
}

/// The MariaDB server's Unix socket, if this machine has it (the
/// namespace's participants reach their database through it).
async fn mariadb_socket() -> Result<String, String> {
    let mut c = sqlx::MySqlConnection::connect(&mariadb_server()).await.map_err(|e| format!("MariaDB: {e}"))?;
    let socket: Option<String> =
        sqlx::query_scalar("SELECT @@socket").fetch_one(&mut c).await.map_err(|e| format!("MariaDB @@socket: {e}"))?;
    let _ = c.close().await;
    match socket {
        Some(s) if Path::new(&s).exists() => Ok(s),
        other => Err(format!("MariaDB's Unix socket {other:?} is not on this machine")),
    }
}

impl World {
    /// Builds everything and waits until every process answers ready.
    pub async fn build(cfg: &Config, run_id: &str, rng: &mut StdRng, logs: &Path) -> anyhow::Result<World> {
        std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
        let cluster = PgCluster::create(&std::env::temp_dir().join(format!("tandem-chaos-{run_id}")))
            .await
            .context("the coordinators' PostgreSQL")?;
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", cluster.server_url())).await?;
        sqlx::raw_sql("CREATE DATABASE tandem").execute(&mut admin).await?;
        let _ = admin.close().await;
        let coordinator_db = format!("{}/tandem", cluster.server_url());

        let mut netns = match Netns::create(run_id, rng).await {
            Ok(ns) => Some(ns),
            Err(why) => {
                println!("chaos: the partition fault is skipped: {why}");
                None
            }
        };
        let socket = match netns {
            Some(_) => match mariadb_socket().await {
                Ok(s) => Some(s),
                Err(why) => {
                    println!("chaos: the partition fault is skipped: {why}");
                    netns = None;
                    None
                }
            },
            None => None,
        };

        let caps = CoordinatorCaps::probe().await?;
        let creds = match caps.tokens {
            true => Some(Credentials::generate().await.context("the run's tokens")?),
            false => None,
        };
        let net = CoordinatorNet {
            listen_ip: netns.as_ref().map(|ns| IpAddr::V4(ns.host_ip)).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            partitioned_subnet: netns.as_ref().map(Netns::subnet),
        };
        let mut coordinators = Vec::new();
        let mut coordinator_urls = Vec::new();
        for i in 0..cfg.coordinators {
            let addr = SocketAddr::new(net.listen_ip, free_port(&net.listen_ip.to_string())?);
            let url = format!("http://{addr}");
            let launch = coordinator_command(addr, &coordinator_db, &net, caps, creds.as_ref());
            let log = logs.join(format!("coordinator-{i}.log"));
            coordinators.push(Managed::new(&format!("coordinator-{i}"), launch, format!("{url}/readyz"), &log));
            coordinator_urls.push(url);
        }

        let mut banks = Vec::new();
        for &mode in &cfg.modes {
            for bank in 0..BANKS.len() {
                let db = BankDb::create(mode, bank).await?;
                db.setup(cfg.accounts).await.with_context(|| format!("setting up {}", db.name()))?;
                banks.push(db);
            }
        }

        let mut stranded_at_start = None;
        if let Some(db) = banks.iter().find(|b| b.mode == Mode::Xa && b.bank == PARTITIONED_BANK) {
            stranded_at_start = db.stranded().await?;
            if let Some(n) = stranded_at_start.filter(|n| *n > 0) {
                println!("chaos: MariaDB holds {n} prepared transaction(s) XA RECOVER does not list (not this run's)");
            }
        }
        let exe = std::env::current_exe().context("finding this test binary")?;
        let mut participants = Vec::new();
        let mut participant_info = Vec::new();
        for (i, db) in banks.iter().enumerate() {
            let inside = netns.as_ref().filter(|_| db.bank == PARTITIONED_BANK);
            let (listen, db_url) = match (inside, &socket) {
                (Some(ns), Some(socket)) => {
                    (SocketAddr::new(IpAddr::V4(ns.ns_ip), free_port("127.0.0.1")?), db.socket_url(socket))
                }
                _ => (SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port("127.0.0.1")?), db.url.clone()),
            };
            let url = format!("http://{listen}");
            let spec = Spec {
                name: db.name(),
                mode: db.mode,
                db_url,
                listen,
                public_url: url.clone(),
                coordinator_url: coordinator_urls[i % coordinator_urls.len()].clone(),
                presume_abort_ms: u64::try_from(cfg.tx_timeout.as_millis() * 2).unwrap_or(u64::MAX),
                token: creds.as_ref().map(|c| c.participant_token.clone()),
                callback_key: creds.as_ref().map(|c| c.callback_key.clone()),
            };
            let launch = Launch {
                program: exe.clone(),
                args: Vec::new(),
                env: vec![
                    (participant::ROLE_ENV.into(), serde_json::to_string(&spec)?),
                    ("RUST_LOG".into(), "warn".into()),
                ],
                netns: inside.map(|ns| ns.name.clone()),
            };
            let log = logs.join(format!("{}.log", db.name()));
            participants.push(Managed::new(&db.name(), launch, format!("{url}/healthz"), &log));
            participant_info.push(ParticipantProc { mode: db.mode, bank: db.bank, url });
        }

        let mut world = World {
            coordinators,
            coordinator_urls,
            client_token: creds.as_ref().map(|c| c.client_token.clone()),
            participants,
            participant_info,
            netns,
            cluster,
            coordinator_db,
            banks,
            stranded_at_start,
        };
        world.ready(READY_WITHIN).await?;
        Ok(world)
    }

    /// Every managed process.
    pub fn processes_mut(&mut self) -> impl Iterator<Item = &mut Managed> {
        self.coordinators.iter_mut().chain(self.participants.iter_mut())
    }

    /// Brings every process one step towards what is wanted of it (all at
    /// once: a probe of a partitioned participant waits for its timeout).
    pub async fn reconcile(&mut self, http: &reqwest::Client) {
        futures::future::join_all(self.processes_mut().map(|p| p.reconcile(http))).await;
    }

    /// Waits (polling) until every process answers ready.
    pub async fn ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            self.reconcile(&http).await;
            let waiting: Vec<String> = self
                .processes_mut()
                .filter(|p| !p.is_ready())
                .map(|p| format!("{} (log {})", p.name, p.log().display()))
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not ready within {within:?}: {}", waiting.join(", "));
            }
        }
    }

    /// The banks' URLs of `mode`, by bank index.
    pub fn bank_urls(&self, mode: Mode) -> Vec<String> {
        let mut urls: Vec<(usize, String)> =
            self.participant_info.iter().filter(|p| p.mode == mode).map(|p| (p.bank, p.url.clone())).collect();
        urls.sort();
        urls.into_iter().map(|(_, u)| u).collect()
    }
}

/// Runs the suite with `cfg`; `Err` if anything failed or any invariant was violated.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let modes: Vec<&str> = cfg.modes.iter().map(|m| m.as_str()).collect();
    println!(
        "chaos: seed {} (replay with CHAOS_SEED={}); run {run_id}; modes {}; {} coordinators; {} clients per mode; \
         {} accounts per bank; faults for {:?}{}",
        cfg.seed,
        cfg.seed,
        modes.join(","),
        cfg.coordinators,
        cfg.clients,
        cfg.accounts,
        cfg.duration,
        cfg.transfers.map(|n| format!(" or until {n} transfers began")).unwrap_or_default(),
    );
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{run_id}"));
    let started = Instant::now();
    let mut world = World::build(&cfg, &run_id, &mut rng, &logs).await?;
    let setup = started.elapsed();
    let partitioned = world.netns.as_ref().map(|ns| format!(" (namespace {}, {})", ns.name, ns.subnet()));
    println!("chaos: ready in {setup:.1?}{}; logs in {}", partitioned.unwrap_or_default(), logs.display());

    let outcome = exercise(&cfg, &mut world, &mut rng).await;
    let passed = matches!(&outcome, Ok(r) if r.violation_count == 0);
    if !passed {
        leave_nothing_prepared(&world).await;
    }
    match outcome {
        Ok(report) => {
            println!("{report}");
            println!("chaos: {:.1?} in all", started.elapsed());
            if passed && !cfg.keep {
                let _ = std::fs::remove_dir_all(&logs);
            } else {
                world.cluster.keep();
                println!("chaos: logs kept in {}, the cluster in {}", logs.display(), world.cluster.dir().display());
            }
            // The assertion of the suite: every invariant held.
            if report.violation_count == 0 {
                Ok(())
            } else {
                bail!("{} invariant violation(s); seed {}", report.violation_count, cfg.seed)
            }
        }
        Err(e) => {
            world.cluster.keep();
            println!("chaos: logs kept in {}, the cluster in {}", logs.display(), world.cluster.dir().display());
            Err(e.context(format!("seed {}", cfg.seed)))
        }
    }
}

/// The clients and the faults, then healing, then the checks.
async fn exercise(cfg: &Config, world: &mut World, rng: &mut StdRng) -> anyhow::Result<Report> {
    // Every request bounded: a leg has its own, shorter timeout.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(64)
        .build()?;
    let coordinators = world
        .coordinator_urls
        .iter()
        .map(|u| {
            let c = TandemClient::with_http(u, http.clone())?;
            Ok(match &world.client_token {
                Some(t) => c.with_token(t.clone()),
                None => c,
            })
        })
        .collect::<Result<Vec<_>, tandem_sdk::ClientError>>()?;
    let shared = Arc::new(Shared { coordinators, http, begun: AtomicU64::new(0), tx_timeout: cfg.tx_timeout });
    let stop = CancellationToken::new();
    let mut clients = Vec::new();
    let mut doings: Vec<workload::Doing> = Vec::new();
    for (m, &mode) in cfg.modes.iter().enumerate() {
        let targets = Arc::new(Targets { mode, banks: world.bank_urls(mode), accounts: cfg.accounts });
        for c in 0..cfg.clients {
            let seed = cfg.seed.wrapping_add(((m * 1_000 + c + 1) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let now = workload::Doing::default();
            doings.push(now.clone());
            clients.push(tokio::spawn(workload::client(targets.clone(), shared.clone(), seed, stop.clone(), now)));
        }
    }

    let faults = faults::inject(world, cfg, rng, &shared.begun).await;
    stop.cancel();
    let healing = Instant::now();
    faults::heal(world, READY_WITHIN).await.context("healing")?;
    let healed_in = healing.elapsed();

    let mut transfers: Vec<Transfer> = Vec::new();
    let joined = match tokio::time::timeout(CLIENTS_WITHIN, futures::future::join_all(clients)).await {
        Ok(j) => j,
        Err(_) => {
            let stuck: Vec<String> =
                doings.iter().filter_map(|d| d.lock().ok().map(|g| g.clone())).filter(|d| d != "done").collect();
            bail!("clients still busy {CLIENTS_WITHIN:?} after the faults: {}", stuck.join("; "));
        }
    };
    for j in joined {
        transfers.extend(j.context("a client task failed")?);
    }
    let clients_in = healing.elapsed();
    Ok(check::run(world, cfg, &transfers, &faults, healed_in, clients_in).await)
}

/// After a failed run: rolls back the run's prepared transactions, which
/// would otherwise outlive it (and hold MariaDB's DROP DATABASE).
async fn leave_nothing_prepared(world: &World) {
    let ours = check::run_xids(world).await.unwrap_or_default();
    for bank in world.banks.iter().filter(|b| b.mode == Mode::Xa) {
        if let Ok(gids) = bank.prepared().await {
            let mine: Vec<_> = gids.into_iter().filter(|g| ours.contains(g.xid().as_str())).collect();
            bank.rollback_prepared(&mine).await;
        }
    }
}
