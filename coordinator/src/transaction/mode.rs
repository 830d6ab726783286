//! Per-mode policy: which modes this coordinator serves, the order of phase 2,
//! and what phase 1 must have reported before commit.

use super::state::Decision;
use tandem_wire::Mode;

/// Whether this coordinator drives transactions of `mode` (others answer 422).
pub fn is_supported(mode: Mode) -> bool {
    matches!(mode, Mode::Tcc | Mode::Xa | Mode::At | Mode::ThreePc)
}

/// Whether a commit request of `mode` runs CanCommit and PreCommit before
/// deciding (3PC). Such modes skip the one-statement commit decision.
pub fn three_phase(mode: Mode) -> bool {
    matches!(mode, Mode::ThreePc)
}

/// Whether branches of `mode` take the global locks named by their `lock_keys`
/// when they register (AT). Other modes store the keys for operators only.
pub fn takes_global_locks(mode: Mode) -> bool {
    matches!(mode, Mode::At)
}

/// Whether commit requires every branch to have reported `prepared` in
/// phase 1 (XA). 3PC branches are prepared by PreCommit, after the request.
pub fn requires_prepared(mode: Mode) -> bool {
    matches!(mode, Mode::Xa)
}

/// Phase-2 order for `mode`: `true` walks branches newest first.
///
/// TCC runs phase 2 in reverse registration order (a later branch may depend
/// on an earlier one's reservation, as in Seata). AT rolls back newest first:
/// two branches of one transaction may have written the same row, and each
/// undo image is only valid once the later branches are undone. XA and the
/// others run in registration order.
pub fn reverse_order(mode: Mode, decision: Decision) -> bool {
    match mode {
        Mode::Tcc => true,
        Mode::At => decision == Decision::Rollback,
        _ => false,
    }
}

/// Whether phase 2 of `mode` goes to every branch at once, each branch's
/// outcome independent of the others' (3PC: an unreachable branch must not
/// hold back the abort of a pre-committed one, which would commit on its own
/// timeout). Other modes go one branch at a time, in [`phase2_order`], and a
/// branch whose outcome is unknown ends the pass.
pub fn concurrent_phase2(mode: Mode) -> bool {
    matches!(mode, Mode::ThreePc)
}

/// Orders items (given in registration order) for phase 2.
pub fn phase2_order<T>(mode: Mode, decision: Decision, mut items: Vec<T>) -> Vec<T> {
    if reverse_order(mode, decision) {
        items.reverse();
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcc_is_reversed_both_ways() {
        assert_eq!(phase2_order(Mode::Tcc, Decision::Commit, vec![1, 2, 3]), vec![3, 2, 1]);
        assert_eq!(phase2_order(Mode::Tcc, Decision::Rollback, vec![1, 2, 3]), vec![3, 2, 1]);
        assert_eq!(phase2_order(Mode::Xa, Decision::Commit, vec![1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(phase2_order(Mode::At, Decision::Rollback, vec![1, 2, 3]), vec![3, 2, 1]);
        assert_eq!(phase2_order(Mode::At, Decision::Commit, vec![1, 2, 3]), vec![1, 2, 3]);
    }

    #[test]
    fn served_modes() {
        assert!(is_supported(Mode::Tcc));
        assert!(is_supported(Mode::Xa));
        assert!(is_supported(Mode::At));
        assert!(is_supported(Mode::ThreePc));
        assert!(!is_supported(Mode::Saga));
        assert!(three_phase(Mode::ThreePc));
        assert!(!requires_prepared(Mode::ThreePc));
        assert!(takes_global_locks(Mode::At));
        assert!(!takes_global_locks(Mode::Tcc));
        assert!(requires_prepared(Mode::Xa));
        assert!(!requires_prepared(Mode::Tcc));
    }
}
