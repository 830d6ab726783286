//! AT: participants image their SQL and take global row locks at
//! registration; phase 2 deletes the images (commit) or restores the rows
//! (rollback).

use super::{Delivery, Locking, Order, Protocol};
use crate::transaction::state::Decision;
use tandem_wire::Mode;

/// The AT protocol.
#[derive(Debug, Clone, Copy)]
pub struct At;

impl Protocol for At {
    fn mode(&self) -> Mode {
        Mode::At
    }

    fn locking(&self) -> Locking {
        Locking::RowLocks
    }

    /// A rollback goes newest first: two branches of one transaction may
    /// have written the same row, and each branch's images are only valid
    /// once the later branches are undone. A commit goes in registration order.
    fn delivery(&self, decision: Decision) -> Delivery {
        match decision {
            Decision::Rollback => Delivery::OneAtATime(Order::Reverse),
            Decision::Commit => Delivery::OneAtATime(Order::Registration),
        }
    }
}
