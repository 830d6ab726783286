//! Building and running the coordinator process: database, migrations, HTTP
//! server, recovery worker, graceful shutdown. [`Application::spawn`] runs
//! one inside the caller's process (tests, examples, the benchmark).

use crate::callbacks::CallbackClient;
use crate::config::Settings;
use crate::events::{EventLog, EventWriter};
use crate::metrics::Metrics;
use crate::store::{Store, StoreConfig, StoreError};
use crate::{api, recovery, Coordinator};
use std::net::SocketAddr;
use std::time::Duration;
use tandem_brokers::Brokers;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the coordinator could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Metrics registry.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// HTTP client for callbacks.
    #[error("callback client: {0}")]
    Http(#[from] reqwest::Error),
    /// Database or migrations.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Listening socket or server.
    #[error("listen/serve: {0}")]
    Io(#[from] std::io::Error),
    /// The broker destinations' configuration.
    #[error("--destination: {0}")]
    Destinations(#[from] tandem_brokers::DestinationError),
}

/// A built coordinator, listening, not yet serving.
pub struct Application {
    /// The bound socket, accepting once [`Application::run`] serves.
    listener: TcpListener,
    /// The operations behind the API, shared with the recovery worker.
    coordinator: Coordinator,
    /// The HTTP routes.
    router: axum::Router,
    /// The event log's writer, run by [`Application::run`].
    events: EventWriter,
}

/// A coordinator serving in a task of the caller's process
/// ([`Application::spawn`]).
pub struct RunningCoordinator {
    /// Its base URL (`http://127.0.0.1:port`).
    pub url: String,
    /// The bound address.
    addr: SocketAddr,
    /// The running coordinator (metrics, shutdown token).
    coordinator: Coordinator,
    /// The task serving it; ends after a graceful shutdown.
    task: JoinHandle<Result<(), StartupError>>,
}

impl std::fmt::Debug for RunningCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningCoordinator").field("url", &self.url).finish_non_exhaustive()
    }
}

impl RunningCoordinator {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The coordinator (its metrics, its shutdown token).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// Shuts it down gracefully (as on SIGTERM, see [`Application::run`]) and
    /// waits until it stopped.
    pub async fn stop(self) -> Result<(), StartupError> {
        self.coordinator.shutdown_token().cancel();
        match self.task.await {
            Ok(served) => served,
            // The task panicked or was aborted: re-raise the panic here.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StartupError::Io(std::io::Error::other(e))),
        }
    }
}

impl Application {
    /// Connects, migrates and binds. Port 0 picks a free port (tests, benchmark).
    pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
        let metrics = Metrics::new()?;
        let timing = settings.timing();
        let store = Store::connect(
            &StoreConfig {
                database_url: settings.database_url.clone(),
                max_connections: settings.db_max_connections.max(2),
                relaxed_connections: settings.db_relaxed_connections.max(1),
                acquire_timeout: Duration::from_secs(5),
            },
            metrics.clone(),
        )?;
        store.migrate().await?;
        let brokers = Brokers::new(settings.destinations.clone(), timing.callback_timeout)?;
        if !settings.destinations.is_empty() {
            tracing::info!(destinations = ?brokers.names(), "broker destinations configured");
        }
        let instance_id = settings.instance_id.clone().unwrap_or_else(default_instance_id);
        let retention = Duration::from_millis(settings.events_retention_ms);
        let (log, events) = EventLog::new(&instance_id, metrics.clone(), retention);
        let callbacks = CallbackClient::new(timing.callback_timeout, metrics.clone(), brokers, log.clone())?;
        let coordinator = Coordinator::new(store, metrics, callbacks, log, timing, instance_id);
        let router = api::router(
            coordinator.clone(),
            settings.max_body_bytes,
            Duration::from_millis(settings.request_timeout_ms),
        );
        let listener = TcpListener::bind(settings.listen).await?;
        Ok(Application { listener, coordinator, router, events })
    }

    /// Builds a coordinator with `settings` (port 0 picks a free port) and
    /// serves it in a task of this process until [`RunningCoordinator::stop`].
    pub async fn spawn(settings: &Settings) -> Result<RunningCoordinator, StartupError> {
        let app = Application::build(settings).await?;
        let addr = app.local_addr()?;
        let coordinator = app.coordinator.clone();
        let task = tokio::spawn(app.run());
        Ok(RunningCoordinator { url: format!("http://{addr}"), addr, coordinator, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    /// Cancel this to shut the coordinator down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.coordinator.shutdown_token().clone()
    }

    /// The coordinator (for embedding).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// Serves until the shutdown token is cancelled, then stops accepting,
    /// finishes in-flight requests, lets phase-2 passes end (releasing their
    /// leases) within the grace period, and closes the pools.
    pub async fn run(self) -> Result<(), StartupError> {
        let Application { listener, coordinator, router, events } = self;
        let shutdown = coordinator.shutdown_token().clone();
        // Stopped after the drivers: their last attempts are written too.
        let events_stop = CancellationToken::new();
        let writer = tokio::spawn(events.run(coordinator.store().clone(), events_stop.clone()));
        tracing::info!(addr = %tokio::net::TcpListener::local_addr(&listener)?, instance = coordinator.instance_id(), "coordinator listening");
        let worker = tokio::spawn(recovery::run(coordinator.clone()));
        // Request/response traffic: never let Nagle hold a small answer back.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let served = axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned()).await;
        shutdown.cancel();
        let tasks = coordinator.tasks();
        tasks.close();
        if tokio::time::timeout(coordinator.timing().shutdown_grace, tasks.wait()).await.is_err() {
            tracing::warn!("phase-2 work still running at the end of the grace period; leases will expire");
        }
        // The worker ends at its next select on the cancelled token.
        let _ = worker.await;
        events_stop.cancel();
        let _ = writer.await;
        coordinator.store().close().await;
        tracing::info!("coordinator stopped");
        Ok(served?)
    }
}

fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "tandem".into());
    format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
