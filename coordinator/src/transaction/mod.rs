//! The global transaction as a concept: its state machine ([`state`]), the
//! per-mode policies ([`mode`]), and the operations the API exposes
//! ([`service`]: begin, register, report, decide).

pub mod mode;
pub mod service;
pub mod state;
