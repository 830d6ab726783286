//! What the demos share: a coordinator started in the demo's process on its
//! own database, and its orderly shutdown.

use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;
use tandem_coordinator::startup::StartupError;
use tandem_coordinator::{Application, Settings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running coordinator of a demo.
#[derive(Debug)]
pub struct DemoCoordinator {
    /// Its base URL.
    pub url: String,
    /// Cancels it.
    shutdown: CancellationToken,
    /// Its server task.
    task: JoinHandle<Result<(), StartupError>>,
}

impl DemoCoordinator {
    /// Starts a coordinator on `database_url` (migrated at start), listening on `listen`.
    pub async fn start(database_url: String, listen: SocketAddr) -> anyhow::Result<DemoCoordinator> {
        let mut settings = Settings::new(database_url);
        settings.listen = listen;
        let app = Application::build(&settings).await.context("starting the coordinator")?;
        let url = format!("http://{}", app.local_addr()?);
        let shutdown = app.shutdown_token();
        let task = tokio::spawn(app.run());
        Ok(DemoCoordinator { url, shutdown, task })
    }

    /// With `serve`, waits for Ctrl-C first; then stops the coordinator.
    pub async fn finish(self, serve: bool) -> anyhow::Result<()> {
        if serve {
            println!("\nserving; Ctrl-C to stop");
            tandem_coordinator::startup::shutdown_signal().await;
        }
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task).await???;
        Ok(())
    }
}
