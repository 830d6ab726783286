//! Tandem participant and client SDK.
//!
//! Module map:
//! - [`client`]: typed HTTP client for the coordinator's contract.
//! - [`propagation`]: the `Tandem-Xid` header: an axum middleware and extractor
//!   for incoming requests, a task-local current xid, and a reqwest helper for
//!   outgoing ones.
//! - [`global`]: run an async closure inside a global transaction (commit on
//!   `Ok`, rollback on `Err`).
//! - [`tcc`]: the TCC participant: try / confirm / cancel in the participant's
//!   own sqlx transaction, guarded by the fence table, and the callback router.
//! - [`at`]: AT mode: INSERT / UPDATE / DELETE imaged into an undo log, global
//!   row locks at the coordinator, automatic compensation on rollback
//!   (PostgreSQL and MySQL/MariaDB).
//! - [`three_phase`]: the 3PC participant: CanCommit vote, PreCommit as a
//!   real PostgreSQL prepare, DoCommit / abort, and the timers that abort a
//!   vote or commit a pre-committed branch when the coordinator goes quiet.
//! - [`xa`]: XA branches on PostgreSQL prepared transactions: phase 1 with a
//!   verified PREPARE, the phase-2 callback, and participant-side recovery.
//!
//! Wire types are re-exported from `tandem-wire` as [`wire`].

pub mod at;
pub mod client;
pub mod global;
pub mod propagation;
pub mod tcc;
pub mod three_phase;
pub mod xa;

pub use client::{ClientError, Decided, TandemClient};
pub use global::{in_transaction, GlobalError};
pub use propagation::{current_xid, with_xid, GlobalXid, RequestBuilderExt};
pub use tandem_wire as wire;
