//! The global transaction as a concept: its state machine ([`state`]), the
//! status sets its statements select on ([`statuses`]), and the operations
//! the API exposes ([`service`]: begin, register, report, decide).

pub mod service;
pub mod state;
pub mod statuses;
