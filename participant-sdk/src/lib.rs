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
//! - [`migrations`]: the participants' tables, as the SQL files shipped in
//!   `participant-sdk/migrations/`.
//! - `callback`: the callback contract every participant answers by: the
//!   request read, the work in its own task, the reply and the problems.
//! - [`at`]: AT mode: INSERT / UPDATE / DELETE imaged into an undo log, global
//!   row locks at the coordinator, automatic compensation on rollback
//!   (PostgreSQL and MySQL/MariaDB).
//! - [`saga`]: Saga mode: the participant's steps (action, compensation) in
//!   its own sqlx transaction behind the branch barrier (`saga::barrier`:
//!   each at most once, empty compensations, late actions refused;
//!   PostgreSQL and MySQL/MariaDB), their callback routes, the client's saga
//!   definition (`saga::Saga`) and the step-by-step usage.
//! - [`msg`]: two-phase messages: the producer (`submit_in`: prepare, the
//!   local transaction with a barrier row, submit; the back-check endpoint)
//!   and the consumer (a delivery's work and its dedupe row in one local
//!   transaction), on PostgreSQL and MySQL/MariaDB.
//! - [`three_phase`]: the 3PC participant: CanCommit vote, PreCommit as a
//!   real PostgreSQL prepare, DoCommit / abort, and the timers that abort a
//!   vote or commit a pre-committed branch when the coordinator goes quiet.
//! - [`xa`]: XA branches on real database prepares (PostgreSQL, MySQL/MariaDB):
//!   phase 1 with a verified PREPARE, the phase-2 callback, and
//!   participant-side recovery.
//!
//! Every participant is built the same way: `Participant::builder(database,
//! client, …, public_base_url)` (the SDK appends its mode's callback path;
//! a saga participant takes none: only `run_step` calls the coordinator),
//! options, `.build()`; then `install()` creates its tables (XA has none),
//! and `router()` serves its callbacks.
//!
//! Wire types are re-exported from `tandem-wire` as [`wire`].

pub mod at;
mod callback;
pub mod client;
pub mod global;
pub mod locks;
pub mod migrations;
pub mod msg;
/// The outbox (local message table): messages enqueued in the business
/// transaction, published by the service's own relay with per-key order.
pub mod outbox;
pub mod propagation;
pub mod saga;
pub mod tcc;
pub mod three_phase;
pub mod verify;
pub mod xa;

pub use client::{ClientError, Decided, LockAcquire, TandemClient};
pub use global::{in_transaction, GlobalError};
pub use propagation::{current_xid, with_xid, GlobalXid, RequestBuilderExt};
pub use tandem_wire as wire;
pub use verify::Verifier;

/// The error of application code the SDK runs: a TCC step's cause, XA
/// business statements, 3PC votes and work, a saga step's cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
