//! The participants' own tables, as the SQL shipped in
//! `participant-sdk/migrations/` (one folder per database, named as sqlx
//! migrations). Each participant's `install` runs its file; a service that
//! manages its schema with migrations copies the files of the modes it uses
//! instead. XA keeps no table: its state is the database's prepared
//! transactions.

use sqlx::PgPool;

/// The TCC fence (`tandem_tcc_fence`), PostgreSQL.
pub const TCC_FENCE: &str = include_str!("../migrations/postgres/20261122000001_tandem_tcc_fence.sql");
/// The AT undo log (`tandem_undo_log`), PostgreSQL.
pub const AT_UNDO_LOG_POSTGRES: &str = include_str!("../migrations/postgres/20261215000002_tandem_undo_log.sql");
/// The AT undo log (`tandem_undo_log`), MySQL and MariaDB.
pub const AT_UNDO_LOG_MYSQL: &str = include_str!("../migrations/mysql/20261215000001_tandem_undo_log.sql");
/// The 3PC participant's votes (`tandem_three_phase`), PostgreSQL.
pub const THREE_PHASE: &str = include_str!("../migrations/postgres/20261215000003_tandem_three_phase.sql");
/// The saga branch barrier (`tandem_barrier`), PostgreSQL.
pub const SAGA_BARRIER_POSTGRES: &str = include_str!("../migrations/postgres/20261216000004_tandem_barrier.sql");
/// The saga branch barrier (`tandem_barrier`), MySQL and MariaDB.
pub const SAGA_BARRIER_MYSQL: &str = include_str!("../migrations/mysql/20261216000002_tandem_barrier.sql");
/// The outbox (`tandem_outbox`, `tandem_outbox_key`), PostgreSQL.
pub const OUTBOX_POSTGRES: &str = include_str!("../migrations/postgres/20261217000005_tandem_outbox.sql");
/// The outbox (`tandem_outbox`, `tandem_outbox_key`), MySQL and MariaDB.
pub const OUTBOX_MYSQL: &str = include_str!("../migrations/mysql/20261217000003_tandem_outbox.sql");

/// The fencing-token table of resources behind a lock (`tandem_lock_fence`), PostgreSQL.
pub const LOCK_FENCE: &str = include_str!("../migrations/postgres/20261218000006_tandem_lock_fence.sql");

/// Every migration file, by its path under `participant-sdk/migrations/`.
pub const ALL: &[(&str, &str)] = &[
    ("postgres/20261122000001_tandem_tcc_fence.sql", TCC_FENCE),
    ("postgres/20261215000002_tandem_undo_log.sql", AT_UNDO_LOG_POSTGRES),
    ("postgres/20261215000003_tandem_three_phase.sql", THREE_PHASE),
    ("postgres/20261216000004_tandem_barrier.sql", SAGA_BARRIER_POSTGRES),
    ("postgres/20261217000005_tandem_outbox.sql", OUTBOX_POSTGRES),
    ("postgres/20261218000006_tandem_lock_fence.sql", LOCK_FENCE),
    ("mysql/20261215000001_tandem_undo_log.sql", AT_UNDO_LOG_MYSQL),
    ("mysql/20261216000002_tandem_barrier.sql", SAGA_BARRIER_MYSQL),
    ("mysql/20261217000003_tandem_outbox.sql", OUTBOX_MYSQL),
];

/// The advisory lock every SDK install on PostgreSQL takes: two processes
/// running `CREATE TABLE IF NOT EXISTS` at once can both miss the table and
/// one then fails on the catalog's unique index.
const INSTALL_LOCK: i64 = 7_419_253_001;

/// Runs `ddl` (idempotent statements) in one transaction, serialized with
/// every other SDK install on the server.
pub(crate) async fn install_postgres(pool: &PgPool, ddl: &str) -> Result<(), sqlx::Error> {
    // One simple query: its statements run as one implicit transaction, and
    // the transaction-level lock is held until it ends.
    let script = format!("SELECT pg_advisory_xact_lock({INSTALL_LOCK});\n{ddl}");
    sqlx::raw_sql(&script).execute(pool).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// The folder as it is on disk: relative path → contents.
    fn on_disk() -> BTreeMap<String, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files = BTreeMap::new();
        for db in std::fs::read_dir(&root).expect("migrations folder") {
            let db = db.expect("entry").path();
            assert!(db.is_dir(), "{}: migrations are grouped by database, in folders", db.display());
            for f in std::fs::read_dir(&db).expect("database folder") {
                let f = f.expect("entry").path();
                let rel = f.strip_prefix(&root).expect("under the root").to_string_lossy().replace('\\', "/");
                files.insert(rel, std::fs::read_to_string(&f).expect("readable"));
            }
        }
        files
    }

    #[test]
    fn the_constants_and_the_shipped_files_say_the_same() {
        let shipped: BTreeMap<String, String> =
            ALL.iter().map(|(p, sql)| ((*p).to_owned(), (*sql).to_owned())).collect();
        assert_eq!(on_disk(), shipped, "every file in migrations/ is a constant of this module, and the same SQL");
    }

    #[test]
    fn the_at_backends_install_these_files() {
        use crate::at::AtBackend;
        assert_eq!(crate::at::Pg::UNDO_DDL, AT_UNDO_LOG_POSTGRES);
        assert_eq!(crate::at::MySqlDb::UNDO_DDL, AT_UNDO_LOG_MYSQL);
    }

    #[test]
    fn the_saga_barrier_installs_these_files() {
        use crate::saga::barrier::BarrierDb;
        assert_eq!(<sqlx::Postgres as BarrierDb>::DDL, SAGA_BARRIER_POSTGRES);
        assert_eq!(<sqlx::MySql as BarrierDb>::DDL, SAGA_BARRIER_MYSQL);
    }

    #[test]
    fn the_outbox_installs_these_files() {
        use crate::outbox::OutboxDb;
        assert_eq!(<sqlx::Postgres as OutboxDb>::DDL, OUTBOX_POSTGRES);
        assert_eq!(<sqlx::MySql as OutboxDb>::DDL, OUTBOX_MYSQL);
    }
}
