//! TCC (Try-Confirm-Cancel): the participant's Try is phase 1, its Confirm
//! or Cancel is phase 2.

use super::{Delivery, Order, Protocol};
use crate::transaction::state::Decision;
use tandem_wire::Mode;

/// The TCC protocol.
#[derive(Debug, Clone, Copy)]
pub struct Tcc;

impl Protocol for Tcc {
    fn mode(&self) -> Mode {
        Mode::Tcc
    }

    /// Phase 2 runs in reverse registration order, for commit and rollback
    /// alike: a later branch may depend on an earlier one's reservation, as
    /// in Seata.
    fn delivery(&self, _decision: Decision) -> Delivery {
        Delivery::OneAtATime(Order::Reverse)
    }
}
