//! SQL written once and shared by several statements, and the one function
//! that puts values (status sets) into statement text.

use crate::transaction::statuses::StatusText;
use std::time::Duration;

/// The branch bookkeeping of a status write, as two CTEs that follow a CTE
/// `t` returning the `xid` of each transaction the statement moved: applies
/// each branch update (`$1` xid, `$2` branch id, `$3` status or NULL to keep
/// it, `$4` attempts to add, `$5` error or NULL to keep the last) only to
/// transactions `t` moved, so that a driver whose lease was taken over
/// overwrites nothing of the new owner's; and releases the global locks of
/// the branches whose new status is in `$6` (AT: a branch's locks go when
/// its phase 2 completes).
macro_rules! branch_progress {
    () => {
        "b AS (UPDATE branches SET status = COALESCE(u.status, branches.status), \
                attempts = branches.attempts + u.attempts, \
                last_error = COALESCE(u.last_error, branches.last_error) \
                FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[]) \
                     AS u(xid, branch_id, status, attempts, last_error), t \
                WHERE t.xid = u.xid AND branches.xid = u.xid AND branches.branch_id = u.branch_id), \
         l AS (DELETE FROM global_locks gl \
                USING unnest($1::text[], $2::text[], $3::text[]) AS u(xid, branch_id, status), t \
                WHERE t.xid = u.xid AND gl.xid = u.xid AND gl.branch_id = u.branch_id AND u.status = ANY($6))"
    };
}
pub(crate) use branch_progress;

/// `set` as an SQL list of string literals (`'a', 'b'`), for statements whose
/// predicate must be literal so that a generic plan can use the partial
/// index it matches. The only function that writes values into SQL text: a
/// status's text form is a fixed identifier, checked here.
pub(super) fn in_list<S: StatusText>(set: &[S]) -> String {
    let texts: Vec<String> = set
        .iter()
        .map(|s| {
            let t = s.text();
            assert!(
                !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "status text {t:?} is not a plain identifier"
            );
            format!("'{t}'")
        })
        .collect();
    texts.join(", ")
}

/// A duration as fractional milliseconds, bound as `$n * interval '1 millisecond'`.
pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_wire::GlobalStatus;

    #[test]
    fn lists_are_quoted_identifiers() {
        assert_eq!(in_list(&[GlobalStatus::Committing, GlobalStatus::CanCommit]), "'committing', 'can_commit'");
    }
}
