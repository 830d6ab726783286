//! Global transaction ids of prepared branches: the one audited place where a
//! value is spliced into SQL text (`PREPARE TRANSACTION` takes a literal, not
//! a bind parameter).

use tandem_wire::{BranchId, Xid};

/// Prefix of every gid this SDK prepares; recovery lists prepared
/// transactions by it and leaves everything else alone.
pub const GID_PREFIX: &str = "tandem|";

/// PostgreSQL's limit is 200 bytes including the terminator.
const MAX_GID_LEN: usize = 199;

/// A validated gid: `tandem|<xid>|<branch_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gid(String);

/// Why a string is not a gid of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Tandem gid: {0:?}")]
pub struct BadGid(pub String);

impl Gid {
    /// The gid of a branch. Xids and branch ids are validated identifiers
    /// (ASCII letters, digits, `-_.:`, at most 64 bytes), so the result is a
    /// safe SQL literal; `|` cannot occur inside them, so it parses back.
    pub fn new(xid: &Xid, branch: &BranchId) -> Gid {
        Gid(format!("{GID_PREFIX}{xid}|{branch}"))
    }

    /// Parses a gid read back from the database.
    pub fn parse(s: &str) -> Result<(Xid, BranchId), BadGid> {
        let bad = || BadGid(s.to_owned());
        let rest = s.strip_prefix(GID_PREFIX).ok_or_else(bad)?;
        let (x, b) = rest.split_once('|').ok_or_else(bad)?;
        Ok((Xid::parse(x).map_err(|_| bad())?, BranchId::parse(b).map_err(|_| bad())?))
    }

    /// The gid text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<verb> '<gid>'`: the only constructor of XA statement text. Checks
    /// again, independently of how the gid was built, that the literal is safe.
    pub fn statement(&self, verb: &str) -> String {
        let safe = self.0.len() <= MAX_GID_LEN
            && self.0.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'|'));
        assert!(safe, "gid {:?} failed its audit", self.0);
        assert!(
            matches!(verb, "PREPARE TRANSACTION" | "COMMIT PREPARED" | "ROLLBACK PREPARED"),
            "unexpected XA verb {verb:?}"
        );
        format!("{verb} '{}'", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip_and_stay_short() {
        let (x, b) = (Xid::generate(), BranchId::generate());
        let g = Gid::new(&x, &b);
        assert_eq!(Gid::parse(g.as_str()), Ok((x.clone(), b.clone())));
        assert!(g.as_str().len() < 200);
        let long = Gid::new(&Xid::parse("x".repeat(64)).expect("id"), &BranchId::parse("b".repeat(64)).expect("id"));
        assert!(long.as_str().len() <= MAX_GID_LEN);
        assert_eq!(g.statement("COMMIT PREPARED"), format!("COMMIT PREPARED '{}'", g.as_str()));
    }

    #[test]
    fn foreign_gids_are_not_ours() {
        assert!(Gid::parse("other-app-gid").is_err());
        assert!(Gid::parse("tandem|only-one-part").is_err());
        assert!(Gid::parse("tandem|a'b|c").is_err());
    }
}
