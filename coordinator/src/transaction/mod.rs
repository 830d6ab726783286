//! The global transaction as a concept: its state machine ([`state`]), the
//! status sets its statements select on ([`statuses`]), and the operations
//! the API exposes ([`service`]: begin, register, report, decide; [`operator`]:
//! timeline, overview, retry, stop).

pub mod operator;
pub mod service;
pub mod state;
pub mod statuses;
