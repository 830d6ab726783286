//! The suite's child processes: how a coordinator is started (one function,
//! [`coordinator_command`]), and [`Managed`], a process the suite wants up
//! or down, SIGKILLs, and starts again with the same command line (so on
//! the same address: the participants' callback URLs and the
//! coordinators' URLs stay valid across restarts).

use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// A port free on `host` now (bound and released; the process that gets
/// it binds it again, with `SO_REUSEADDR`, at every start).
pub fn free_port(host: &str) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((host, 0)).with_context(|| format!("binding {host}:0"))?;
    Ok(l.local_addr()?.port())
}

/// How a process is started.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to its environment.
    pub env: Vec<(String, String)>,
    /// The network namespace to run it in (through `ip netns exec`, which
    /// execs the program in place: the child's pid is the program's).
    pub netns: Option<String>,
}

/// The `tandem` binary: the one cargo built with this suite, or
/// `CHAOS_TANDEM_BIN` (the long run copies both binaries aside, so that a
/// build during the run cannot swap the coordinator under it).
pub fn tandem_bin() -> PathBuf {
    std::env::var_os("CHAOS_TANDEM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tandem")))
}

/// What the `tandem` binary being tested offers, read once from `tandem
/// serve --help`: authentication and the callback allow-list arrived in
/// the coordinator while this suite was written, and the suite uses what
/// is there.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoordinatorCaps {
    /// `--tokens` and `--callback-key`: API tokens and signed callbacks.
    pub tokens: bool,
    /// `--insecure-no-auth`: needed to serve without tokens off loopback.
    pub insecure_no_auth: bool,
    /// `--callback-allow`: needed for callbacks to a non-loopback participant.
    pub callback_allow: bool,
}

/// The run's credentials, made by the binary itself (`tandem token new`,
/// `tandem token key`): a `client` token for the clients, a `participant`
/// token for the banks, and the key the coordinators sign callbacks with
/// and the banks verify them by. The coordinators get only the tokens'
/// hashed entries.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The clients' token.
    pub client_token: String,
    /// The banks' token.
    pub participant_token: String,
    /// The configuration entries of both (`ROLES NAME sha256:HEX`).
    pub entries: Vec<String>,
    /// The callback signing key, hex.
    pub callback_key: String,
}

async fn tandem_output(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(tandem_bin()).args(args).stdin(Stdio::null()).output().await?;
    anyhow::ensure!(out.status.success(), "tandem {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Credentials {
    /// New ones for this run.
    pub async fn generate() -> anyhow::Result<Credentials> {
        let mut tokens = Vec::new();
        let mut entries = Vec::new();
        for (role, name) in [("client", "chaos-clients"), ("participant", "chaos-banks")] {
            let out = tandem_output(&["token", "new", "--role", role, "--name", name]).await?;
            let line = |prefix: &str| {
                out.lines().find_map(|l| l.strip_prefix(prefix)).map(str::to_owned).context("tandem token new's output")
            };
            tokens.push(line("token: ")?);
            entries.push(line("entry: ")?);
        }
        let callback_key = tandem_output(&["token", "key"]).await?.trim().to_owned();
        let participant_token = tokens.pop().context("two tokens")?;
        let client_token = tokens.pop().context("two tokens")?;
        Ok(Credentials { client_token, participant_token, entries, callback_key })
    }
}

impl CoordinatorCaps {
    /// Reads the binary's `serve --help`.
    pub async fn probe() -> anyhow::Result<CoordinatorCaps> {
        let out = tokio::process::Command::new(tandem_bin())
            .args(["serve", "--help"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running tandem serve --help")?;
        let help = String::from_utf8_lossy(&out.stdout);
        Ok(CoordinatorCaps {
            tokens: help.contains("--tokens") && help.contains("--callback-key"),
            insecure_no_auth: help.contains("--insecure-no-auth"),
            callback_allow: help.contains("--callback-allow"),
        })
    }
}

/// Where the coordinators listen and whom they may call back.
#[derive(Debug, Clone)]
pub struct CoordinatorNet {
    /// The address they listen on: loopback, or the host end of the veth
    /// pair when a participant runs in the namespace.
    pub listen_ip: IpAddr,
    /// The namespace's /24, whose participants they call back.
    pub partitioned_subnet: Option<String>,
}

/// Timing of the coordinators: recovery within a fraction of a second and
/// a short lease, so that takeovers after a kill happen within the run.
const TIMING: &[(&str, &str)] = &[
    ("--recovery-interval-ms", "100"),
    ("--lease-ms", "2000"),
    ("--callback-timeout-ms", "1000"),
    ("--retry-base-ms", "50"),
    ("--retry-max-ms", "500"),
    ("--db-max-connections", "8"),
    ("--db-relaxed-connections", "4"),
    ("--shutdown-grace-ms", "1000"),
];

/// The command line and environment of coordinator `listen` on
/// `database_url`: the one place that knows how the suite starts one.
///
/// With `creds` (the binary has authentication) it serves with the run's
/// API tokens (`TANDEM_TOKENS`, hashed entries only) and signs every
/// callback (`TANDEM_CALLBACK_KEY`), as a deployment must; without, off
/// loopback it needs `--insecure-no-auth`. Callbacks to the namespace's /24
/// must be allowed (`--callback-allow http://NET:*`, with loopback's rule,
/// which is the default only while no rule is given).
pub fn coordinator_command(
    listen: SocketAddr,
    database_url: &str,
    net: &CoordinatorNet,
    caps: CoordinatorCaps,
    creds: Option<&Credentials>,
) -> Launch {
    let mut args: Vec<String> = vec!["serve".into(), "--listen".into(), listen.to_string()];
    args.extend(["--database-url".into(), database_url.to_owned()]);
    for (flag, value) in TIMING {
        args.extend([flag.to_string(), value.to_string()]);
    }
    let mut env = vec![("RUST_LOG".to_owned(), "warn".to_owned()), ("TANDEM_LOG_FORMAT".to_owned(), "text".to_owned())];
    match creds {
        Some(c) => {
            env.push(("TANDEM_TOKENS".into(), c.entries.join(";")));
            env.push(("TANDEM_CALLBACK_KEY".into(), c.callback_key.clone()));
        }
        None if !listen.ip().is_loopback() && caps.insecure_no_auth => args.push("--insecure-no-auth".into()),
        None => {}
    }
    if let (Some(subnet), true) = (&net.partitioned_subnet, caps.callback_allow) {
        // A rule replaces the loopback default: the loopback banks are listed too.
        for rule in ["http://127.0.0.0/8:*".to_owned(), format!("http://{subnet}:*")] {
            args.extend(["--callback-allow".into(), rule]);
        }
    }
    Launch { program: tandem_bin(), args, env, netns: None }
}

/// Lifetime counts of one managed process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// Times started.
    pub spawns: u32,
    /// SIGKILLs sent by the suite.
    pub kills: u32,
    /// Exits the suite did not cause, after the process had answered ready.
    pub unexpected_exits: u32,
    /// Exits before it ever answered ready (a coordinator started while
    /// its database is down exits: it migrates first).
    pub failed_starts: u32,
}

/// A child process kept up (or down) by the suite.
pub struct Managed {
    /// Its name in logs and figures.
    pub name: String,
    launch: Launch,
    /// The URL answering 200 once it is ready.
    health: String,
    /// Where its output goes (appended across restarts).
    log: PathBuf,
    child: Option<Child>,
    /// Whether it should be running.
    pub want_up: bool,
    /// Whether this incarnation answered ready.
    ready: bool,
    /// Not started again before this.
    spawn_at: Instant,
    /// Lifetime counts.
    pub stats: ProcStats,
}

impl Managed {
    /// A process to be started by [`Managed::reconcile`].
    pub fn new(name: &str, launch: Launch, health: String, log: &Path) -> Managed {
        Managed {
            name: name.to_owned(),
            launch,
            health,
            log: log.to_owned(),
            child: None,
            want_up: true,
            ready: false,
            spawn_at: Instant::now(),
            stats: ProcStats::default(),
        }
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = match &self.launch.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.launch.program);
                c
            }
            None => tokio::process::Command::new(&self.launch.program),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        cmd.args(&self.launch.args)
            .envs(self.launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().with_context(|| format!("starting {}", self.name))?);
        self.ready = false;
        self.stats.spawns += 1;
        Ok(())
    }

    /// SIGKILL (and reap); it stays down until [`Managed::start_at`].
    /// `false` if it was not running.
    pub async fn kill(&mut self) -> bool {
        self.want_up = false;
        self.ready = false;
        let Some(mut child) = self.child.take() else { return false };
        if let Err(e) = child.kill().await {
            eprintln!("chaos: killing {}: {e}", self.name);
        }
        self.stats.kills += 1;
        true
    }

    /// Wants it up again from `at` on.
    pub fn start_at(&mut self, at: Instant) {
        self.want_up = true;
        self.spawn_at = at;
    }

    /// Whether a process is running (ready or not).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it is running and answered ready.
    pub fn is_ready(&self) -> bool {
        self.child.is_some() && self.ready
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Moves it towards what the suite wants: notices an exit, starts it
    /// when it should run and may, and asks a started one whether it is
    /// ready.
    pub async fn reconcile(&mut self, http: &reqwest::Client) {
        let now = Instant::now();
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    if self.ready {
                        self.stats.unexpected_exits += 1;
                        eprintln!("chaos: {} exited on its own ({status}); see {}", self.name, self.log.display());
                    } else {
                        self.stats.failed_starts += 1;
                    }
                    self.child = None;
                    self.ready = false;
                    self.spawn_at = now + Duration::from_millis(300);
                }
                Err(e) => eprintln!("chaos: waiting for {}: {e}", self.name),
            }
        }
        if self.want_up && self.child.is_none() && now >= self.spawn_at {
            if let Err(e) = self.spawn() {
                eprintln!("chaos: {e:#}");
                self.spawn_at = now + Duration::from_secs(1);
            }
        }
        if self.child.is_some() && !self.ready {
            let probe = http.get(&self.health).timeout(Duration::from_millis(500)).send().await;
            self.ready = matches!(probe, Ok(r) if r.status().is_success());
        }
    }
}
