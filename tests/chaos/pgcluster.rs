//! The PostgreSQL cluster the suite owns: the coordinators' database lives
//! here because the suite crashes this server (`pg_ctl stop -m immediate`)
//! and starts it again, which it must never do to the machine's clusters.
//!
//! Made as `scripts/xa-postgres.sh` makes the 5433 cluster: the newest
//! `/usr/lib/postgresql/*/bin` (or `TANDEM_PG_BIN`), `initdb` with trust
//! authentication, run as the `postgres` user when the suite runs as root
//! (PostgreSQL refuses root). It listens on a free loopback port and keeps
//! its socket in its own directory. `fsync = off`: the fault is a crash of
//! the database's processes, not of the machine, so what was written to
//! the kernel survives either way; what a crash loses is what PostgreSQL
//! had not written yet, among it the `synchronous_commit = off` commits
//! still in its WAL buffers ([`PgCluster::unwritten_wal`] measures them).
//! Dropped, it is stopped and its directory removed.

use anyhow::{bail, Context};
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// A running (or stopped) cluster of the suite's own.
pub struct PgCluster {
    /// PostgreSQL's programs.
    bin: PathBuf,
    /// Holds `data/` and `sock/`.
    dir: PathBuf,
    /// Its loopback port.
    pub port: u16,
    /// Whether the suite runs as root (then the tools run as `postgres`).
    as_postgres: bool,
    /// Whether it is running, as far as the suite knows.
    running: bool,
    /// Remove the directory when dropped.
    remove: bool,
}

/// The newest PostgreSQL bin directory of the machine.
fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Some(b) = std::env::var_os("TANDEM_PG_BIN") {
        return Ok(PathBuf::from(b));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("listing /usr/lib/postgresql (set TANDEM_PG_BIN)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).context("no /usr/lib/postgresql/*/bin/initdb (set TANDEM_PG_BIN)")
}

fn is_root() -> bool {
    // The effective user of this process; std has no getuid, /proc does.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        .unwrap_or(false)
}

impl PgCluster {
    /// Creates a cluster under `dir` (which must not exist) and starts it.
    pub async fn create(dir: &Path) -> anyhow::Result<PgCluster> {
        let bin = pg_bin()?;
        let as_postgres = is_root();
        std::fs::create_dir_all(dir.join("sock")).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = PgCluster { bin, dir: dir.to_owned(), port: 0, as_postgres, running: false, remove: true };
        if as_postgres {
            cluster.run("chown", &["-R".into(), "postgres:postgres".into(), dir.display().to_string()], false).await?;
        }
        let initdb = cluster.bin.join("initdb").display().to_string();
        let data = cluster.data().display().to_string();
        let args = ["-D", &data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"];
        cluster.run(&initdb, &args.map(String::from), true).await.context("initdb")?;
        cluster.port = super::procs::free_port("127.0.0.1").context("a port for the cluster")?;
        cluster.start().await?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs a program (as `postgres` when root and `as_pg`), failing on a non-zero exit.
    async fn run(&self, program: &str, args: &[String], as_pg: bool) -> anyhow::Result<()> {
        let mut cmd = if as_pg && self.as_postgres {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            tokio::process::Command::new(program)
        };
        let out = cmd.args(args).stdin(Stdio::null()).output().await.with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    async fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let mut all: Vec<String> = vec!["-D".into(), self.data().display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        self.run(&pg_ctl, &all, true).await
    }

    /// Starts the server and waits until it accepts connections (crash
    /// recovery first, after an immediate stop).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = self.dir.join("server.log").display().to_string();
        let sock = self.dir.join("sock").display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sock} -c fsync=off \
             -c max_connections=200 -c shared_buffers=64MB",
            self.port
        );
        self.pg_ctl(&["-l", &log, "-w", "-t", "120", "-o", &opts, "start"]).await.context("pg_ctl start")?;
        self.running = true;
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once,
    /// without a checkpoint and without writing its WAL buffers.
    pub async fn crash(&mut self) -> anyhow::Result<()> {
        self.running = false;
        self.pg_ctl(&["-m", "immediate", "-w", "-t", "60", "stop"]).await.context("pg_ctl stop -m immediate")
    }

    /// Whether the suite last started it (and did not stop it since).
    pub fn running(&self) -> bool {
        self.running
    }

    /// Server URL without a database.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Bytes of WAL inserted but not yet written by the server: what an
    /// immediate stop right now would lose (commits with
    /// `synchronous_commit = off` among them). `None` if it cannot be read.
    pub async fn unwritten_wal(&self) -> Option<i64> {
        let mut c = sqlx::PgConnection::connect(&format!("{}/postgres", self.server_url())).await.ok()?;
        let v: Option<i64> =
            sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), pg_current_wal_lsn())::bigint")
                .fetch_one(&mut c)
                .await
                .ok()?;
        let _ = c.close().await;
        v
    }

    /// Keep the directory (logs, data) when dropped.
    pub fn keep(&mut self) {
        self.remove = false;
    }

    /// Where its directory is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Synchronous: this runs while the suite unwinds, too.
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
