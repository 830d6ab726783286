//! The services as child processes of the demo: this binary re-executed
//! with the hidden `service` subcommand, logs appended to a file per
//! service (or the terminal with `-v`), started, waited for, killed and
//! restarted on the same port.

use crate::model::{DiePoint, Kind, ShopMode};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a service may take to answer `/healthz` after its start.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// One service process (restartable).
#[derive(Debug)]
pub struct Service {
    /// Which.
    pub kind: Kind,
    /// Its base URL.
    pub url: String,
    /// The arguments after `shop`.
    args: Vec<String>,
    /// Its log file, unless `-v`.
    log: Option<PathBuf>,
    /// The running process.
    child: Child,
}

/// A free loopback port (the service binds it again, and again after a restart).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn spawn(args: &[String], log: Option<&Path>) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("finding the shop binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    if let Some(log) = log {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdout(file.try_clone()?).stderr(file);
    }
    cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    Ok(cmd.spawn()?)
}

impl Service {
    /// Starts `kind` for `mode` on `db`; `peers` are `KIND=URL` pairs.
    /// Returns without waiting for it to answer ([`Service::ready`]).
    pub fn start(
        kind: Kind,
        mode: ShopMode,
        coordinator: &str,
        db: &str,
        peers: &[String],
        log_dir: Option<&Path>,
    ) -> anyhow::Result<Service> {
        let port = free_port()?;
        let mut args: Vec<String> = ["service", kind.as_str(), "--mode", mode.as_str()].map(String::from).to_vec();
        args.extend(["--port".into(), port.to_string(), "--coordinator".into(), coordinator.into()]);
        args.extend(["--db".into(), db.into()]);
        for p in peers {
            args.extend(["--peer".into(), p.clone()]);
        }
        let log = log_dir.map(|d| d.join(format!("{}-{}.log", mode.as_str(), kind.as_str())));
        if let Some(log) = &log {
            // Fresh at each run; a restart appends to it.
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        }
        let child = spawn(&args, log.as_deref())?;
        Ok(Service { kind, url: format!("http://127.0.0.1:{port}"), args, log, child })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Waits until the service answers `/healthz`; fails if it exited.
    pub async fn ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited at start ({status}); see {}", self.kind.as_str(), self.log_hint());
            }
            if let Ok(r) = http.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{} did not answer within {START_DEADLINE:?}; see {}", self.kind.as_str(), self.log_hint());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Where its output goes.
    pub fn log_hint(&self) -> String {
        self.log.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the terminal".into())
    }

    /// Arms the service's die point.
    pub async fn arm(&self, http: &reqwest::Client, point: DiePoint) -> anyhow::Result<()> {
        let r = http.post(format!("{}/_shop/die-at", self.url)).json(&point).send().await?;
        if !r.status().is_success() {
            bail!("arming {} failed: {}", self.kind.as_str(), r.status());
        }
        Ok(())
    }

    /// Waits (up to `within`) for the process to end; returns how it ended.
    pub async fn exited(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} (pid {}) is still running after {within:?}", self.kind.as_str(), self.pid());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the process again, same arguments, same port.
    pub async fn restart(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        self.child = spawn(&self.args, self.log.as_deref())?;
        self.ready(http).await
    }

    /// Kills it (SIGKILL) and reaps it.
    pub async fn kill(&mut self) {
        if let Err(e) = self.child.kill().await {
            tracing::warn!(error = %e, "killing {}", self.kind.as_str());
        }
    }
}
