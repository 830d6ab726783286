//! Tandem coordinator: tracks global transactions in PostgreSQL and drives
//! their branches to a consistent end.
//!
//! Module map:
//! - [`config`]: typed settings (flags and environment).
//! - [`startup`]: builds the process (store, HTTP server, recovery worker) and shuts it down gracefully.
//! - [`api`]: HTTP routes, middleware, problem+json errors, OpenAPI.
//! - [`transaction`]: the concept itself: pure state machine ([`transaction::state`]),
//!   per-mode policy ([`transaction::mode`]) and the operations ([`transaction::service`]).
//! - [`phase2`]: delivers a recorded decision to the branches under a lease.
//! - [`three_phase`]: the 3PC phases (CanCommit, PreCommit) before a decision.
//! - [`callbacks`]: the HTTP client that talks to participants.
//! - [`recovery`]: background worker for timeouts and interrupted phase 2.
//! - [`store`]: all SQL; durable and relaxed commit pools.
//! - [`metrics`]: Prometheus registry.
//! - [`error`]: the service layer's error enum.
//! - [`cli`]: the `tandem` command line (the binary is a thin wrapper).

pub mod api;
pub mod callbacks;
pub mod cli;
pub mod config;
pub mod error;
pub mod metrics;
pub mod phase2;
pub mod recovery;
pub mod startup;
pub mod store;
pub mod three_phase;
pub mod transaction;

pub use config::Settings;
pub use startup::{Application, RunningCoordinator};
pub use transaction::service::Coordinator;
