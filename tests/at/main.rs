//! AT mode against real PostgreSQL and MariaDB: a coordinator (in process, or
//! a real `tandem` process that is SIGKILLed), participants serving the SDK's
//! AT callback over HTTP on 127.0.0.1, business tables in fresh databases.
//! One test binary (target `at`); modules by topic.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

/// One test per class of rollback exactness (issue: "AT rollback restores
/// exactly what was there, or the statement is refused before it runs").
mod classes;
/// What every test uses: coordinator, participants, business databases.
mod fixtures;
/// Global row locks.
mod locks;
/// The rollback property on a schema with triggers, referential actions,
/// partitions, inheritance and domains, in randomly set sessions.
mod property;
/// Random statements on a plain table, rolled back exactly.
mod random;
/// A coordinator killed during a rollback.
mod recovery;
/// What AT refuses, with nothing changed.
mod refusals;
/// Changes rolled back (and committed) exactly.
mod round_trips;

// What the modules share, through their `use super::*`.
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use fixtures::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sqlx::{MySqlPool, PgPool};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{eventually, fast_settings, spawn_coordinator, wait_status, Process, TestDb, TestMariaDb, FAST_FLAGS};
use tandem_coordinator::RunningCoordinator;
use tandem_sdk::at::{AtBackend, AtError, AtParam, AtParticipant, AtParticipantBuilder, LockRetry, MySqlDb, Pg};
use tandem_sdk::wire::{BeginRequest, BranchStatus, GlobalStatus, LockCheckRequest, Mode, RegisterBranchRequest, Xid};
use tandem_sdk::TandemClient;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(20);
