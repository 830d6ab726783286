//! Building and running the coordinator process: database, migrations, HTTP
//! server, recovery worker, graceful shutdown. [`Application::spawn`] runs
//! one inside the caller's process (tests, examples, the benchmark).

use crate::auth::tokens::{Entry, TokenConfigError};
use crate::auth::{Auth, AuthStartError, NoAuth, Tokens};
use crate::callbacks::allow::AllowList;
use crate::callbacks::{CallbackClient, CallbackConfig};
use crate::config::Settings;
use crate::events::{EventLog, EventWriter};
use crate::metrics::Metrics;
use crate::store::{Store, StoreConfig, StoreError};
use crate::{api, recovery, Coordinator};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tandem_brokers::Brokers;
use tandem_wire::signature::SigningKey;
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
    /// The API tokens' configuration.
    #[error(transparent)]
    Tokens(#[from] TokenConfigError),
    /// A configuration that would serve unauthenticated or sign nothing.
    #[error(transparent)]
    Auth(#[from] AuthStartError),
    /// The callback signing key or CA file.
    #[error("{0}")]
    Callbacks(String),
    /// The server's certificate or key.
    #[error("--tls-cert-file/--tls-key-file: {0}")]
    Tls(#[from] crate::tls::TlsError),
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
    /// The server's TLS configuration (none: plain HTTP).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The DTM listener (`--dtm-listen`) and its routes.
    dtm: Option<(TcpListener, axum::Router)>,
}

/// A coordinator serving in a task of the caller's process
/// ([`Application::spawn`]).
pub struct RunningCoordinator {
    /// Its base URL (`http://127.0.0.1:port`, `https://…` with TLS).
    pub url: String,
    /// The bound address.
    addr: SocketAddr,
    /// The DTM listener's base URL (`http://127.0.0.1:port`), if it serves one.
    pub dtm_url: Option<String>,
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
                max_branches: settings.bounds().max_branches,
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
        let auth = Arc::new(Auth::new(tokens(settings)?));
        let signing = signing_key(settings)?;
        let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
            _ => None,
        };
        let listener = TcpListener::bind(settings.listen).await?;
        let addr = listener.local_addr()?;
        let no_auth = if settings.insecure_no_auth { NoAuth::Allowed } else { NoAuth::LoopbackOnly };
        auth.check_listen(addr, no_auth, signing.is_some())?;
        let signed = signing.is_some();
        if signing.is_none() {
            tracing::warn!("no callback signing key: callbacks go out unsigned");
        }
        // Bound now: its port is the coordinator's own too, never a callback's.
        let dtm_listener = match settings.dtm_listen {
            Some(at) => Some(TcpListener::bind(at).await?),
            None => None,
        };
        let mut allow = AllowList::new(settings.callback_allow.clone()).with_own_port(addr.port());
        if let Some(l) = &dtm_listener {
            allow = allow.with_own_port(l.local_addr()?.port());
        }
        let config =
            CallbackConfig { timeout: timing.callback_timeout, allow, signing, roots: callback_roots(settings)? };
        tracing::info!(allow = %config.allow.describe(), "callback allow-list");
        let callbacks = CallbackClient::new(config, metrics.clone(), brokers, log.clone())?;
        let coordinator = Coordinator::new(store, metrics, callbacks, log, timing, settings.bounds(), instance_id);
        let serving = api::Serving {
            max_body_bytes: settings.max_body_bytes,
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            secure_cookies: tls.is_some(),
        };
        let router = api::router(coordinator.clone(), auth, serving);
        let dtm = match dtm_listener {
            Some(listener) => {
                let bound = listener.local_addr()?;
                let grant = settings.dtm_grant.as_deref().map(|g| Entry::grant(g, DTM_GRANT_NAME)).transpose()?;
                let dtm_auth = Auth::with_grant(tokens(settings)?, grant);
                dtm_auth.check_listen(bound, no_auth, signed)?;
                if let Some(g) = dtm_auth.grant().filter(|_| !dtm_auth.is_open()) {
                    tracing::warn!(addr = %bound, roles = %g.roles.names(),
                        "DTM listener: requests without a token act with these roles; only your services should reach it");
                }
                Some((listener, api::dtm_router(coordinator.clone(), Arc::new(dtm_auth), serving)))
            }
            None => None,
        };
        Ok(Application { listener, coordinator, router, events, tls, dtm })
    }

    /// Builds a coordinator with `settings` (port 0 picks a free port) and
    /// serves it in a task of this process until [`RunningCoordinator::stop`].
    pub async fn spawn(settings: &Settings) -> Result<RunningCoordinator, StartupError> {
        let app = Application::build(settings).await?;
        let addr = app.local_addr()?;
        let scheme = if app.tls.is_some() { "https" } else { "http" };
        let coordinator = app.coordinator.clone();
        let dtm_url = match &app.dtm {
            Some((l, _)) => Some(format!("{scheme}://{}", l.local_addr()?)),
            None => None,
        };
        let task = tokio::spawn(app.run());
        Ok(RunningCoordinator { url: format!("{scheme}://{addr}"), addr, dtm_url, coordinator, task })
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
        let Application { listener, coordinator, router, events, tls, dtm } = self;
        let shutdown = coordinator.shutdown_token().clone();
        // Stopped after the drivers: their last attempts are written too.
        let events_stop = CancellationToken::new();
        let writer = tokio::spawn(events.run(coordinator.store().clone(), events_stop.clone()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %tokio::net::TcpListener::local_addr(&listener)?, scheme, instance = coordinator.instance_id(), "coordinator listening");
        let worker = tokio::spawn(recovery::run(coordinator.clone()));
        let locks = tokio::spawn(crate::locks::run(
            coordinator.named_locks().clone(),
            coordinator.metrics().clone(),
            shutdown.clone(),
        ));
        let dtm = dtm.map(|(listener, router)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, scheme, "DTM protocol listening (/api/dtmsvr)");
            }
            tokio::spawn(serve_on(listener, router, tls.clone(), shutdown.clone()))
        });
        serve_on(listener, router, tls, shutdown.clone()).await?;
        if let Some(task) = dtm {
            if let Ok(Err(e)) = task.await {
                tracing::warn!(error = %e, "the DTM listener stopped with an error");
            }
        }
        shutdown.cancel();
        let tasks = coordinator.tasks();
        tasks.close();
        if tokio::time::timeout(coordinator.timing().shutdown_grace, tasks.wait()).await.is_err() {
            tracing::warn!("phase-2 work still running at the end of the grace period; leases will expire");
        }
        // The worker ends at its next select on the cancelled token.
        let _ = worker.await;
        let _ = locks.await;
        events_stop.cancel();
        let _ = writer.await;
        coordinator.store().close().await;
        tracing::info!("coordinator stopped");
        Ok(())
    }
}

/// The name transactions begun through the DTM listener's grant carry.
const DTM_GRANT_NAME: &str = "dtm-listener";

/// Serves `router` on `listener` (with TLS if configured) until `shutdown`.
async fn serve_on(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> Result<(), StartupError> {
    let stop = shutdown.cancelled_owned();
    match tls {
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener, config)?;
            crate::server::serve(listener, router, stop).await;
        }
        None => {
            // Request/response traffic: never let Nagle hold a small answer back.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
            });
            crate::server::serve(listener, router, stop).await;
        }
    }
    Ok(())
}

/// The API tokens of the file and the environment together.
fn tokens(settings: &Settings) -> Result<Tokens, StartupError> {
    let mut tokens = Tokens::default();
    if let Some(path) = &settings.tokens_file {
        tokens.extend(Tokens::read_file(path)?)?;
    }
    if let Some(text) = &settings.tokens {
        tokens.extend(Tokens::parse(text)?)?;
    }
    Ok(tokens)
}

/// The callback signing key, from `--callback-key` or its file.
fn signing_key(settings: &Settings) -> Result<Option<SigningKey>, StartupError> {
    let text = match (&settings.callback_key, &settings.callback_key_file) {
        (Some(_), Some(_)) => {
            return Err(StartupError::Callbacks("give --callback-key or --callback-key-file, not both".into()))
        }
        (Some(k), None) => k.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| StartupError::Callbacks(format!("--callback-key-file {path}: {e}")))?,
        (None, None) => return Ok(None),
    };
    SigningKey::from_hex(&text).map(Some).map_err(|e| StartupError::Callbacks(format!("callback key: {e}")))
}

/// The extra roots of `https` callbacks.
fn callback_roots(settings: &Settings) -> Result<Vec<reqwest::Certificate>, StartupError> {
    let Some(path) = &settings.callback_ca_file else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path).map_err(|e| StartupError::Callbacks(format!("--callback-ca-file {path}: {e}")))?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| StartupError::Callbacks(format!("--callback-ca-file {path}: {e}")))
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
