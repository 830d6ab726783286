//! The sets of statuses the coordinator's statements select on, defined once.
//!
//! The store binds them as parameters, or (where a partial index must match a
//! statement's literal predicate under a generic plan) writes them into the
//! statement text through one function, `store::sql::in_list`. The migrations'
//! index predicates are literal copies; a test below holds every status
//! literal left in SQL and migrations to these sets, so that a copy that
//! drifts fails a test, not a gauge in production.

use crate::modes::PROTOCOLS;
use std::sync::LazyLock;
use tandem_wire::{BranchStatus, GlobalStatus};

/// Undecided: branches may register, and recovery rolls it back once its
/// deadline has passed (index `global_transactions_deadline_active`).
pub const UNDECIDED: &[GlobalStatus] = &[GlobalStatus::Active];

/// Decided and unfinished: phase 2 runs. Leased in every mode.
pub const DECIDED: &[GlobalStatus] = &[GlobalStatus::Committing, GlobalStatus::RollingBack, GlobalStatus::Delivering];

/// Statuses in which a driver holds the transaction under a lease, and in
/// which recovery takes it over when the lease expires (index
/// `global_transactions_due`): [`DECIDED`] and every protocol's statuses
/// before its decision (3PC's `can_commit`, `pre_committed`).
pub static LEASED: LazyLock<Vec<GlobalStatus>> = LazyLock::new(|| {
    let mut set = DECIDED.to_vec();
    for p in PROTOCOLS {
        for s in p.pre_decision_statuses() {
            if !set.contains(s) {
                set.push(*s);
            }
        }
    }
    set
});

/// Terminal and needing a person: a participant refused phase 2 for good, or
/// a 3PC partition split the outcome (index `global_transactions_attention`).
pub const NEEDS_ATTENTION: &[GlobalStatus] =
    &[GlobalStatus::CommitFailed, GlobalStatus::RollbackFailed, GlobalStatus::HeuristicMixed];

/// Not terminal: [`UNDECIDED`] and [`LEASED`] (the in-flight gauge).
pub static IN_FLIGHT: LazyLock<Vec<GlobalStatus>> =
    LazyLock::new(|| UNDECIDED.iter().chain(LEASED.iter()).copied().collect());

/// Branch statuses that release the branch's global locks: its phase 2
/// completed. A `rollback_failed` branch keeps them, so that nobody writes
/// over rows an operator must repair.
pub const RELEASING: &[BranchStatus] = &[BranchStatus::Committed, BranchStatus::RolledBack];

/// A status with a stable text form.
pub trait StatusText: Copy {
    /// The text form.
    fn text(self) -> &'static str;
}

impl StatusText for GlobalStatus {
    fn text(self) -> &'static str {
        self.as_str()
    }
}

impl StatusText for BranchStatus {
    fn text(self) -> &'static str {
        self.as_str()
    }
}

/// The text forms of `set`, to bind as a `text[]`.
pub fn texts<S: StatusText>(set: &[S]) -> Vec<&'static str> {
    set.iter().map(|s| s.text()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_flight_is_exactly_the_non_terminal_statuses() {
        let expected: BTreeSet<&str> =
            GlobalStatus::ALL.iter().filter(|s| !s.is_terminal()).map(|s| s.as_str()).collect();
        let got: BTreeSet<&str> = IN_FLIGHT.iter().map(|s| s.as_str()).collect();
        assert_eq!(got, expected, "a status that is neither undecided, leased nor terminal is driven by no one");
        assert_eq!(IN_FLIGHT.len(), got.len(), "the sets overlap");
    }

    /// Every quoted word of `sql` outside `--` comments.
    fn literals(sql: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in sql.lines() {
            let code = line.split("--").next().unwrap_or("");
            let mut parts = code.split('\'');
            parts.next();
            while let (Some(lit), _) = (parts.next(), parts.next()) {
                out.push(lit.to_owned());
            }
        }
        out
    }

    fn is_status(lit: &str) -> bool {
        GlobalStatus::ALL.iter().any(|s| s.as_str() == lit) || BranchStatus::ALL.iter().any(|s| s.as_str() == lit)
    }

    /// The statuses (by text) a predicate names.
    fn status_set(pred: &str) -> BTreeSet<String> {
        literals(pred).into_iter().filter(|l| is_status(l)).collect()
    }

    fn set_of(statuses: &[GlobalStatus]) -> BTreeSet<String> {
        statuses.iter().map(|s| s.as_str().to_owned()).collect()
    }

    /// Migrations in order, as `(file name, text)`.
    fn migrations() -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("migrations directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                (name, std::fs::read_to_string(&p).expect("readable migration"))
            })
            .collect()
    }

    /// SQL statements of a migration (split on `;` outside dollar-quoted bodies).
    fn statements(sql: &str) -> Vec<String> {
        let code: String = sql.lines().map(|l| l.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
        let mut out = Vec::new();
        let mut current = String::new();
        let mut in_body = false;
        for (i, part) in code.split("$$").enumerate() {
            if i > 0 {
                current.push_str("$$");
                in_body = !in_body;
            }
            if in_body {
                current.push_str(part);
                continue;
            }
            let mut pieces = part.split(';');
            if let Some(first) = pieces.next() {
                current.push_str(first);
            }
            for piece in pieces {
                out.push(std::mem::take(&mut current));
                current.push_str(piece);
            }
        }
        out.push(current);
        out.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
    }

    #[test]
    fn index_predicates_in_migrations_match_the_sets() {
        // The partial indexes on status, and the set each must cover exactly.
        let named: [(&str, BTreeSet<String>); 3] = [
            ("global_transactions_deadline_active", set_of(UNDECIDED)),
            ("global_transactions_due", set_of(&LEASED)),
            ("global_transactions_attention", set_of(NEEDS_ATTENTION)),
        ];
        let mut latest: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        for (file, sql) in migrations() {
            for stmt in statements(&sql) {
                let lits = status_set(&stmt);
                if lits.is_empty() {
                    continue;
                }
                let lower = stmt.to_lowercase();
                let index = lower
                    .strip_prefix("create index ")
                    .or_else(|| lower.strip_prefix("create unique index "))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned);
                let Some(index) = index else {
                    panic!("{file}: a status literal outside an index predicate: {stmt}");
                };
                latest.insert(index, lits);
            }
        }
        for (index, set) in &named {
            assert_eq!(latest.get(*index), Some(set), "index {index}: its predicate and the Rust set differ");
        }
        for index in latest.keys() {
            assert!(named.iter().any(|(n, _)| n == index), "index {index} names statuses but matches no set");
        }
    }

    #[test]
    fn no_status_literal_is_left_in_the_store() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
        for entry in std::fs::read_dir(&dir).expect("store directory") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("source");
            // Only the statements: Rust comments and tests may name statuses.
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for lit in literals(&code) {
                assert!(!is_status(&lit), "{}: status literal '{lit}' in SQL; bind a set instead", path.display());
            }
        }
    }
}
