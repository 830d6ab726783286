//! XA: every branch is a prepared database transaction; the coordinator
//! commits only when every branch has reported `prepared`.

use super::{CommitRequires, Protocol};
use tandem_wire::Mode;

/// The XA protocol.
#[derive(Debug, Clone, Copy)]
pub struct Xa;

impl Protocol for Xa {
    fn mode(&self) -> Mode {
        Mode::Xa
    }

    fn commit_requires(&self) -> CommitRequires {
        CommitRequires::EveryBranchPrepared
    }
}
