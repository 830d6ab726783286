//! DTM's HTTP protocol (`/api/dtmsvr`) against real PostgreSQL (the
//! coordinator's store) and participants over HTTP on 127.0.0.1: every
//! endpoint and answer shape from Rust, and the unmodified `dtmcli` from
//! PyPI with business services in Python on MariaDB. One test binary
//! (target `dtm`); modules by topic.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

/// Every endpoint, answer shape, alias and tolerated field, from Rust.
mod endpoints;
/// The unmodified Python `dtmcli` with its barrier on MariaDB.
mod python;
/// A participant that records how it was called.
mod recorder;
