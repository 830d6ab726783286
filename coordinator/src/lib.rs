//! Tandem coordinator: tracks global transactions in PostgreSQL and drives
//! their branches to a consistent end.
//!
//! Module map:
//! - [`config`]: typed settings (flags and environment).
//! - [`startup`]: builds the process (store, HTTP server, recovery worker) and shuts it down gracefully.
//! - [`api`]: HTTP routes, middleware, problem+json errors, OpenAPI.
//! - [`auth`]: bearer tokens with roles, the access rules of every route,
//!   rate limits, the console's sessions.
//! - [`tls`]: HTTPS for the server (rustls); [`server`]: the connections
//!   (hyper, with a header-read timeout), graceful shutdown.
//! - [`console`]: the web console at `/console` (server-rendered, compiled in).
//! - [`transaction`]: the concept itself: pure state machine ([`transaction::state`]),
//!   status sets ([`transaction::statuses`]) and the operations ([`transaction::service`]).
//! - [`modes`]: one module per mode: its policy and pure steps behind [`modes::Protocol`].
//! - [`driver`]: the one driver: performs a leased transaction's steps (the
//!   phases before a decision, phase 2) with I/O.
//! - [`callbacks`]: the HTTP client that talks to participants (Tandem's
//!   callbacks, and DTM's way of calling branches).
//! - [`dtm`]: DTM's HTTP protocol (`/api/dtmsvr`) on the same engine.
//! - [`events`]: the event log: callback attempts, takeovers and ends,
//!   recorded off the hot path for the console's timeline and overview.
//! - [`recovery`]: background worker for timeouts and interrupted phase 2.
//! - [`store`]: all SQL; durable and relaxed commit pools.
//! - [`metrics`]: Prometheus registry.
//! - [`error`]: the service layer's error enum.
//! - [`cli`]: the `tandem` command line (the binary is a thin wrapper).

pub mod api;
pub mod auth;
pub mod callbacks;
pub mod cli;
pub mod config;
pub mod console;
pub mod driver;
pub mod dtm;
pub mod error;
pub mod events;
pub mod locks;
pub mod metrics;
pub mod modes;
pub mod recovery;
pub mod server;
pub mod startup;
pub mod store;
pub mod tls;
pub mod transaction;

pub use config::Settings;
pub use startup::{Application, RunningCoordinator};
pub use transaction::service::Coordinator;
