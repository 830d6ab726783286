//! Saga mode against real PostgreSQL and MariaDB: a coordinator (in process,
//! or a real `tandem` process that is SIGKILLed), participants over HTTP on
//! 127.0.0.1. One test binary (target `saga`); modules by topic.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

/// The SDK's saga participant and its barrier, on PostgreSQL and MariaDB.
mod barrier;
/// The coordinator's engine: order, concurrency, failures, retries, timeouts.
mod engine;
/// Coordinators SIGKILLed while actions and compensations run.
mod recovery;
/// Bad definitions refused, nothing stored.
mod refusals;
