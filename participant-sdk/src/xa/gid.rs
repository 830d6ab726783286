//! Global transaction ids of prepared branches: the one audited place where
//! values are spliced into SQL text (XA statements take literals, not bind
//! parameters).

use tandem_wire::{BranchId, Xid};

/// Prefix of every PostgreSQL gid this SDK prepares; recovery lists prepared
/// transactions by it and leaves everything else alone.
pub const GID_PREFIX: &str = "tandem|";

/// Prefix of the PostgreSQL gids of pre-committed 3PC branches
/// (`tandem3|<commit_at_ms>|<xid>|<branch_id>`): the time at which the branch
/// commits on its own travels with the prepared transaction, so a restarted
/// participant re-arms its timer from the database alone. XA recovery, which
/// lists [`GID_PREFIX`], leaves them alone.
pub const THREE_PHASE_GID_PREFIX: &str = "tandem3|";

/// MySQL/MariaDB `formatID` of Tandem branches ("TDM"), the equivalent of the prefix.
pub const MYSQL_FORMAT_ID: i64 = 0x54_44_4D;

/// PostgreSQL's limit is 200 bytes including the terminator.
const MAX_GID_LEN: usize = 199;

/// The XA identity of a branch: its xid and branch id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gid {
    xid: Xid,
    branch: BranchId,
    /// 3PC only: when the pre-committed branch commits on its own (Unix ms).
    commit_at_ms: Option<i64>,
}

/// Why a string is not a gid of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Tandem gid: {0:?}")]
pub struct BadGid(pub String);

/// Characters that may appear inside an XA literal. Xids and branch ids are
/// validated identifiers (ASCII letters, digits, `-_.:`, at most 64 bytes), so
/// this holds by construction; [`Gid`] checks it again before every use.
fn safe(s: &str) -> bool {
    s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

impl Gid {
    /// The gid of a branch.
    pub fn new(xid: &Xid, branch: &BranchId) -> Gid {
        Gid { xid: xid.clone(), branch: branch.clone(), commit_at_ms: None }
    }

    /// The gid of a pre-committed 3PC branch that commits on its own at
    /// `commit_at_ms` (Unix milliseconds) unless told otherwise.
    pub fn three_phase(xid: &Xid, branch: &BranchId, commit_at_ms: i64) -> Gid {
        Gid { xid: xid.clone(), branch: branch.clone(), commit_at_ms: Some(commit_at_ms.max(0)) }
    }

    /// 3PC: when the branch commits on its own (Unix ms).
    pub fn commit_at_ms(&self) -> Option<i64> {
        self.commit_at_ms
    }

    /// The transaction.
    pub fn xid(&self) -> &Xid {
        &self.xid
    }

    /// The branch.
    pub fn branch(&self) -> &BranchId {
        &self.branch
    }

    /// PostgreSQL form: `tandem|<xid>|<branch_id>` (`|` cannot occur inside
    /// the ids, so it parses back).
    pub fn as_postgres(&self) -> String {
        match self.commit_at_ms {
            None => format!("{GID_PREFIX}{}|{}", self.xid, self.branch),
            Some(at) => format!("{THREE_PHASE_GID_PREFIX}{at}|{}|{}", self.xid, self.branch),
        }
    }

    /// Parses a PostgreSQL gid read back from `pg_prepared_xacts`.
    pub fn parse_postgres(s: &str) -> Result<Gid, BadGid> {
        let bad = || BadGid(s.to_owned());
        let (rest, commit_at_ms) = match s.strip_prefix(THREE_PHASE_GID_PREFIX) {
            Some(rest) => {
                let (at, rest) = rest.split_once('|').ok_or_else(bad)?;
                let at: i64 = at.parse().map_err(|_| bad())?;
                (rest, Some(at))
            }
            None => (s.strip_prefix(GID_PREFIX).ok_or_else(bad)?, None),
        };
        let (x, b) = rest.split_once('|').ok_or_else(bad)?;
        Ok(Gid { xid: Xid::parse(x).map_err(|_| bad())?, branch: BranchId::parse(b).map_err(|_| bad())?, commit_at_ms })
    }

    /// Parses a row of MySQL's `XA RECOVER` (`formatID`, `gtrid_length`, `data`).
    pub fn parse_mysql(format_id: i64, gtrid_len: usize, data: &str) -> Result<Gid, BadGid> {
        let bad = || BadGid(data.to_owned());
        if format_id != MYSQL_FORMAT_ID || gtrid_len > data.len() || !data.is_char_boundary(gtrid_len) {
            return Err(bad());
        }
        let (x, b) = data.split_at(gtrid_len);
        Ok(Gid {
            xid: Xid::parse(x).map_err(|_| bad())?,
            branch: BranchId::parse(b).map_err(|_| bad())?,
            commit_at_ms: None,
        })
    }

    fn audit(&self) {
        let pg = self.as_postgres();
        assert!(
            pg.len() <= MAX_GID_LEN && safe(self.xid.as_str()) && safe(self.branch.as_str()),
            "gid {pg:?} failed its audit"
        );
    }

    /// PostgreSQL statement `<verb> '<gid>'`: the only constructor of its XA text.
    pub fn statement(&self, verb: &str) -> String {
        self.audit();
        assert!(
            matches!(verb, "PREPARE TRANSACTION" | "COMMIT PREPARED" | "ROLLBACK PREPARED"),
            "unexpected XA verb {verb:?}"
        );
        format!("{verb} '{}'", self.as_postgres())
    }

    /// MySQL/MariaDB statement `XA <verb> 'gtrid','bqual',formatID` (gtrid and
    /// bqual at most 64 bytes each): the only constructor of its XA text.
    pub fn mysql_statement(&self, verb: &str) -> String {
        self.audit();
        assert!(matches!(verb, "START" | "END" | "PREPARE" | "COMMIT" | "ROLLBACK"), "unexpected XA verb {verb:?}");
        format!("XA {verb} '{}','{}',{MYSQL_FORMAT_ID}", self.xid, self.branch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip_and_stay_short() {
        let (x, b) = (Xid::generate(), BranchId::generate());
        let g = Gid::new(&x, &b);
        assert_eq!(Gid::parse_postgres(&g.as_postgres()), Ok(g.clone()));
        let data = format!("{x}{b}");
        assert_eq!(Gid::parse_mysql(MYSQL_FORMAT_ID, x.as_str().len(), &data), Ok(g.clone()));
        assert!(g.as_postgres().len() < 200);
        let t = Gid::three_phase(&x, &b, 1_795_000_000_000);
        assert_eq!(t.as_postgres(), format!("tandem3|1795000000000|{x}|{b}"));
        assert_eq!(Gid::parse_postgres(&t.as_postgres()), Ok(t.clone()));
        assert_eq!(t.commit_at_ms(), Some(1_795_000_000_000));
        assert!(Gid::parse_postgres("tandem3|soon|a|b").is_err());
        let long = Gid::new(&Xid::parse("x".repeat(64)).expect("id"), &BranchId::parse("b".repeat(64)).expect("id"));
        assert!(long.as_postgres().len() <= MAX_GID_LEN);
        let long3 = Gid::three_phase(long.xid(), long.branch(), i64::MAX);
        assert!(long3.as_postgres().len() <= MAX_GID_LEN);
        assert_eq!(g.statement("COMMIT PREPARED"), format!("COMMIT PREPARED '{}'", g.as_postgres()));
        assert_eq!(g.mysql_statement("PREPARE"), format!("XA PREPARE '{x}','{b}',{MYSQL_FORMAT_ID}"));
    }

    #[test]
    fn foreign_gids_are_not_ours() {
        assert!(Gid::parse_postgres("other-app-gid").is_err());
        assert!(Gid::parse_postgres("tandem|only-one-part").is_err());
        assert!(Gid::parse_postgres("tandem|a'b|c").is_err());
        assert!(Gid::parse_mysql(1, 3, "abcdef").is_err());
        assert!(Gid::parse_mysql(MYSQL_FORMAT_ID, 9, "abc").is_err());
    }
}
