//! `redis-server` processes of the suite's own, on free loopback ports,
//! that a test can kill, restart (empty: nothing is kept on disk), pause
//! (SIGSTOP) and resume (SIGCONT). Each lives in its own temporary
//! directory and dies with its [`RedisServer`].
// Not every module of the suite uses every method.
#![allow(dead_code)]

use crate::support::free_port;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The server binary (Redis 7 on the test machines).
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// How long a started server may take to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A running (or killed, or paused) `redis-server`.
pub struct RedisServer {
    /// Its port on 127.0.0.1, kept across restarts.
    port: u16,
    /// Its working directory, removed on drop.
    dir: PathBuf,
    /// The process; `None` once killed.
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        let dir = std::env::temp_dir().join(format!("tandem-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis temp dir");
        // A free port can be taken by someone else before the server binds it: try another.
        for _ in 0..5 {
            let port = free_port().await;
            if let Some(child) = spawn(port, &dir).await {
                return RedisServer { port, dir, child: Some(child) };
            }
        }
        panic!("could not start {REDIS_SERVER} on a free port");
    }

    /// Starts `n` servers.
    pub async fn start_many(n: usize) -> Vec<RedisServer> {
        futures::future::join_all((0..n).map(|_| RedisServer::start())).await
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new connection of the test's own, to check or change keys.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to suite redis")
    }

    /// SIGKILL, and reap. The data is gone (nothing is saved).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL redis-server");
        }
    }

    /// Kills the server if it runs, and starts an empty one on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = spawn(self.port, &self.dir).await;
        self.child = Some(child.unwrap_or_else(|| panic!("redis-server did not come back on port {}", self.port)));
    }

    /// SIGSTOP: the server keeps its connections but answers nothing.
    pub fn pause(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP redis-server");
    }

    /// SIGCONT: the server answers again (what it was sent meanwhile, too).
    pub fn resume(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT redis-server");
    }

    fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("redis-server is running");
        Pid::from_raw(child.id().expect("redis-server not reaped") as i32)
    }
}

/// Spawns `redis-server` on `port` in `dir` and waits until it answers; `None` if
/// it exited first (the port was taken).
async fn spawn(port: u16, dir: &Path) -> Option<Child> {
    let mut child = Command::new(REDIS_SERVER)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--dir"])
        .arg(dir)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn redis-server");
    let deadline = Instant::now() + READY_WITHIN;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("redis url");
    loop {
        if child.try_wait().expect("redis-server status").is_some() {
            return None;
        }
        // The answer must come from this child, not from a server of
        // another test that got the same port first.
        let info = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("INFO").arg("server").query_async::<String>(&mut conn).await
        };
        if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_millis(500), info).await {
            let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).and_then(|p| p.trim().parse().ok());
            if pid.is_some() && pid == child.id() {
                return Some(child);
            }
        }
        assert!(Instant::now() < deadline, "redis-server on port {port} did not answer PING");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // kill_on_drop sends SIGKILL (which also ends a stopped process).
        self.child.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
