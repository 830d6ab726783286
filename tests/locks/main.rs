//! Distributed locks against real servers: the coordinator's lock service
//! on real PostgreSQL (coordinators in this process and as `tandem serve`
//! processes), the Redis backend on the machine's Redis, and RedLock over
//! Redis servers this suite starts on free ports. Holders that are
//! SIGKILLed or SIGSTOPped are this test binary re-executed
//! ([`holder`]). One test binary (target `locks`); modules by topic.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

/// The SDK's `Locks` on the coordinator backend: exclusion, leases,
/// renewal, failover, fencing, single-flight, with real processes killed.
mod coordinator_backend;
/// A lock holder in its own process (this binary re-executed).
mod holder;
/// The Redis and RedLock backends.
mod redis_backend;
/// Redis servers of the suite's own, started, stopped and paused.
mod servers;
/// The coordinator's lock service over HTTP.
mod service;
