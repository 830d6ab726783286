//! A private `nats-server` with JetStream, on a free loopback port with its
//! own store directory, that a test can kill (-9) and restart on the same
//! port and store: what a broker outage looks like to a publisher.

use crate::support::{eventually, free_port};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The server binary (Debian's `nats-server` package).
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) nats-server of one test.
pub struct NatsServer {
    /// Its client port on 127.0.0.1, kept across restarts.
    port: u16,
    /// Its JetStream store, kept across restarts, removed on drop.
    store: PathBuf,
    /// The process while it runs; killed on drop.
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server (`-js -a 127.0.0.1 -p PORT -sd STORE`) and waits until
    /// it accepts connections.
    pub async fn start() -> NatsServer {
        let port = free_port().await;
        let store = std::env::temp_dir().join(format!("tandem-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&store).expect("create the store directory");
        let mut server = NatsServer { port, store, child: None };
        server.spawn().await;
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and reaps it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL nats-server");
        }
    }

    /// Starts it again on the same port with the same store, and waits until
    /// it accepts connections.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let child = Command::new(NATS_SERVER)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually("nats-server accepts connections", START_TIMEOUT, || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) }
        })
        .await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // kill_on_drop sends SIGKILL; the store goes with the test.
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
