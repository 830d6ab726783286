//! Transactional messages against real PostgreSQL, MariaDB, NATS JetStream
//! and RabbitMQ: the coordinator's two-phase messages (mode `msg`), the
//! SDK's producer, consumer and outbox, participants over HTTP on
//! 127.0.0.1. One test binary (target `msg`); modules by topic.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

/// The broker publishers (NATS JetStream, RabbitMQ), read back from the brokers.
mod brokers;
/// The coordinator's two-phase messages: deliveries, order, retries, back-checks.
mod engine;
/// A private nats-server that a test can stop and restart.
mod nats_server;
/// The SDK's outbox and its relay.
mod outbox;
/// The SDK's producer and consumer on PostgreSQL and MariaDB; producers SIGKILLed.
mod producer;
/// Coordinators SIGKILLed during delivery; deliveries to brokers end to end.
mod recovery;
/// Bad messages refused, nothing stored.
mod refusals;
