//! What the demos share: a coordinator started in the demo's process on its
//! own database ([`tandem_coordinator::Application::spawn`]), and its orderly
//! shutdown.

use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;
use tandem_coordinator::{Application, RunningCoordinator, Settings};

/// What a demo does once its steps ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDemo {
    /// Stop the coordinator and exit.
    Stop,
    /// Keep everything running until Ctrl-C, for exploring the API.
    Serve,
}

/// Starts a coordinator on `database_url` (migrated at start), listening on `listen`.
pub async fn start_coordinator(database_url: String, listen: SocketAddr) -> anyhow::Result<RunningCoordinator> {
    let mut settings = Settings::new(database_url);
    settings.listen = listen;
    Application::spawn(&settings).await.context("starting the coordinator")
}

/// Waits for Ctrl-C first if `after` says so; then stops the coordinator.
pub async fn finish(coordinator: RunningCoordinator, after: AfterDemo) -> anyhow::Result<()> {
    if after == AfterDemo::Serve {
        println!("\nserving; Ctrl-C to stop");
        tandem_coordinator::startup::shutdown_signal().await;
    }
    // The grace period of phase-2 work is 10 s; a little more for the pools.
    tokio::time::timeout(Duration::from_secs(15), coordinator.stop()).await.context("stopping the coordinator")??;
    Ok(())
}
