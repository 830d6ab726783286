//! The banks' databases: created fresh for the run on the machine's
//! servers (so that parallel runs never meet), their tables, the opening
//! balances, and the reads the checks make.
//!
//! Every bank has the accounts of `examples/bank` (`balance`, `frozen`,
//! `incoming`). TCC banks log every step in `step_log` (per branch: `try`,
//! `confirm`, `cancel`); XA and AT banks write one `leg_log` row inside
//! each leg's branch, keyed by a leg id the client chose, so that the row
//! exists exactly when the branch committed.

use crate::support::{mariadb_server, pg_server, xa_pg_server, TestDb};
use crate::{Mode, OPENING_BALANCE};
use anyhow::Context;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, MySqlPool, PgPool, Row};
use tandem_sdk::at::{AtParticipant, MySqlDb, Pg};
use tandem_sdk::xa::Gid;
use tandem_sdk::TandemClient;

/// Bank names, by index: A and B on PostgreSQL, C on MariaDB.
pub const BANKS: [&str; 3] = ["a", "b", "c"];

/// The bank that runs on MariaDB and, when namespaces are permitted, in the namespace.
pub const PARTITIONED_BANK: usize = 2;

/// Account `i`'s id.
pub fn account(i: usize) -> String {
    format!("acct-{i:03}")
}

const MY_ACCOUNTS: &str = "CREATE TABLE IF NOT EXISTS accounts (
    id       varchar(64) NOT NULL PRIMARY KEY,
    balance  bigint NOT NULL,
    frozen   bigint NOT NULL DEFAULT 0,
    incoming bigint NOT NULL DEFAULT 0,
    CONSTRAINT accounts_not_negative CHECK (balance >= 0 AND frozen >= 0 AND incoming >= 0)
) ENGINE = InnoDB";

const MY_STEP_LOG: &str = "CREATE TABLE IF NOT EXISTS step_log (
    id        bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    xid       varchar(64) NOT NULL,
    branch_id varchar(64) NOT NULL,
    step      varchar(16) NOT NULL,
    at        datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY step_log_branch (branch_id)
) ENGINE = InnoDB";

const MY_LEG_LOG: &str = "CREATE TABLE IF NOT EXISTS leg_log (
    id     varchar(64) NOT NULL PRIMARY KEY,
    xid    varchar(64) NOT NULL,
    leg_id varchar(128) NOT NULL
) ENGINE = InnoDB";

const PG_PLAIN: &str = "CREATE TABLE IF NOT EXISTS accounts (
        id text PRIMARY KEY,
        balance bigint NOT NULL CHECK (balance >= 0),
        frozen bigint NOT NULL DEFAULT 0 CHECK (frozen >= 0),
        incoming bigint NOT NULL DEFAULT 0 CHECK (incoming >= 0));
    CREATE TABLE IF NOT EXISTS leg_log (id text PRIMARY KEY, xid text NOT NULL, leg_id text NOT NULL);";

/// A bank's database handle, dropped with the run.
enum Holder {
    Pg(TestDb, PgPool),
    My(MariaDb, MySqlPool),
}

/// A MariaDB database made for the run, dropped after it. Not the support
/// module's `TestMariaDb`: its drop waits as long as MariaDB lets it, and
/// a prepared transaction MariaDB lost track of (see `mariadb_xa`) holds
/// the tables' locks until the server restarts.
struct MariaDb {
    name: String,
    url: String,
}

impl MariaDb {
    async fn new(tag: &str) -> anyhow::Result<MariaDb> {
        use sqlx::Connection;
        let name = format!("tandem_t_{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let mut admin = sqlx::MySqlConnection::connect(&mariadb_server()).await.context("MariaDB")?;
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await?;
        Ok(MariaDb { url: format!("{}/{name}", mariadb_server()), name })
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the suite's runtime: a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                use sqlx::Connection;
                let Ok(mut c) = sqlx::MySqlConnection::connect(&mariadb_server()).await else { return };
                let dropped = async {
                    c.execute("SET SESSION lock_wait_timeout = 10").await?;
                    c.execute(format!("DROP DATABASE IF EXISTS {name}").as_str()).await
                };
                if let Err(e) = dropped.await {
                    eprintln!("chaos: left database {name} in MariaDB ({e}); prepared transactions hold it");
                }
            });
        })
        .join();
    }
}

/// One bank of one mode: its database.
pub struct BankDb {
    /// The mode its participant serves.
    pub mode: Mode,
    /// Index in [`BANKS`].
    pub bank: usize,
    /// Its URL over TCP (what the suite and loopback participants use).
    pub url: String,
    holder: Holder,
}

impl BankDb {
    /// Creates bank `bank`'s database for `mode`: A and B on PostgreSQL
    /// (the prepared-transaction cluster for XA), C on MariaDB.
    pub async fn create(mode: Mode, bank: usize) -> anyhow::Result<BankDb> {
        let tag = format!("chaos_{}_{}", mode.as_str(), BANKS[bank]);
        let holder = if bank == PARTITIONED_BANK {
            let db = MariaDb::new(&tag).await?;
            let pool = MySqlPoolOptions::new().max_connections(4).connect(&db.url).await.context("bank pool")?;
            Holder::My(db, pool)
        } else {
            let server = if mode == Mode::Xa { xa_pg_server() } else { pg_server() };
            let db = TestDb::new_on(&server, &tag).await;
            let pool = PgPoolOptions::new().max_connections(4).connect(&db.url).await.context("bank pool")?;
            Holder::Pg(db, pool)
        };
        let url = match &holder {
            Holder::Pg(db, _) => db.url.clone(),
            Holder::My(db, _) => db.url.clone(),
        };
        Ok(BankDb { mode, bank, url, holder })
    }

    /// Its name in figures and logs (`tcc-a`).
    pub fn name(&self) -> String {
        format!("{}-{}", self.mode.as_str(), BANKS[self.bank])
    }

    /// The database's name.
    fn db_name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or_default()
    }

    /// The URL over MariaDB's Unix socket `socket`, for a participant in
    /// the namespace (which has no route to 127.0.0.1 of the host).
    pub fn socket_url(&self, socket: &str) -> String {
        let user = mariadb_server()
            .strip_prefix("mysql://")
            .and_then(|rest| rest.split('@').next().map(str::to_owned))
            .unwrap_or_else(|| "root".into());
        format!("mysql://{user}@localhost/{}?socket={socket}", self.db_name())
    }

    /// Creates the mode's tables (and the SDK's, through its own
    /// `install`) and opens `accounts` accounts with the opening balance.
    pub async fn setup(&self, accounts: usize) -> anyhow::Result<()> {
        // The SDK's setup calls need a client; they never call it.
        let idle = TandemClient::new("http://127.0.0.1:9")?;
        match (&self.holder, self.mode) {
            (Holder::Pg(_, pool), Mode::Tcc) => {
                let p = tandem_example_bank::participant(pool.clone(), idle, "http://127.0.0.1:9");
                tandem_example_bank::setup(&p).await?;
                for i in 0..accounts {
                    tandem_example_bank::open_account(pool, &account(i), OPENING_BALANCE).await?;
                }
                return Ok(());
            }
            (Holder::Pg(_, pool), mode) => {
                sqlx::raw_sql(PG_PLAIN).execute(pool).await?;
                if mode == Mode::At {
                    AtParticipant::<Pg>::builder(pool.clone(), idle, "bank", "http://127.0.0.1:9")
                        .build()
                        .install()
                        .await?;
                }
                for i in 0..accounts {
                    sqlx::query("INSERT INTO accounts (id, balance) VALUES ($1, $2)")
                        .bind(account(i))
                        .bind(OPENING_BALANCE)
                        .execute(pool)
                        .await?;
                }
            }
            (Holder::My(_, pool), mode) => {
                sqlx::raw_sql(MY_ACCOUNTS).execute(pool).await?;
                match mode {
                    Mode::Tcc => {
                        sqlx::raw_sql(MY_STEP_LOG).execute(pool).await?;
                        sqlx::raw_sql(crate::mysql_tcc::FENCE_DDL).execute(pool).await?;
                    }
                    Mode::Xa => {
                        sqlx::raw_sql(MY_LEG_LOG).execute(pool).await?;
                    }
                    Mode::At => {
                        sqlx::raw_sql(MY_LEG_LOG).execute(pool).await?;
                        AtParticipant::<MySqlDb>::builder(pool.clone(), idle, "bank", "http://127.0.0.1:9")
                            .build()
                            .install()
                            .await?;
                    }
                }
                for i in 0..accounts {
                    sqlx::query("INSERT INTO accounts (id, balance) VALUES (?, ?)")
                        .bind(account(i))
                        .bind(OPENING_BALANCE)
                        .execute(pool)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Every account: `(id, balance, frozen, incoming)`.
    pub async fn accounts(&self) -> anyhow::Result<Vec<(String, i64, i64, i64)>> {
        const SQL: &str = "SELECT id, balance, frozen, incoming FROM accounts ORDER BY id";
        Ok(match &self.holder {
            Holder::Pg(_, pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
            Holder::My(_, pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
        })
    }

    /// TCC: every step that ran, `(xid, branch_id, step)`.
    pub async fn steps(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        const SQL: &str = "SELECT xid, branch_id, step FROM step_log";
        Ok(match &self.holder {
            Holder::Pg(_, pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
            Holder::My(_, pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
        })
    }

    /// XA and AT: every leg row, `(xid, leg_id)`.
    pub async fn legs(&self) -> anyhow::Result<Vec<(String, String)>> {
        const SQL: &str = "SELECT xid, leg_id FROM leg_log";
        Ok(match &self.holder {
            Holder::Pg(_, pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
            Holder::My(_, pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
        })
    }

    /// The prepared Tandem transactions this bank's server holds: of this
    /// database on PostgreSQL; on MariaDB `XA RECOVER` lists the whole
    /// server's, so the caller keeps those of its own xids.
    pub async fn prepared(&self) -> anyhow::Result<Vec<Gid>> {
        Ok(match &self.holder {
            Holder::Pg(_, pool) => {
                let gids: Vec<String> =
                    sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
                        .fetch_all(pool)
                        .await?;
                gids.iter().filter_map(|g| Gid::parse_postgres(g).ok()).collect()
            }
            Holder::My(_, pool) => {
                // XA statements go as plain text: they cannot be server-side prepared.
                let rows = pool.fetch_all("XA RECOVER").await?;
                rows.iter()
                    .filter_map(|r| {
                        let format_id: i64 = r.try_get(0).ok()?;
                        let gtrid: i64 = r.try_get(1).ok()?;
                        let data = r
                            .try_get::<String, _>(3)
                            .or_else(|_| r.try_get::<Vec<u8>, _>(3).map(|b| String::from_utf8_lossy(&b).into_owned()))
                            .ok()?;
                        Gid::parse_mysql(format_id, usize::try_from(gtrid).ok()?, &data).ok()
                    })
                    .collect()
            }
        })
    }

    /// On MariaDB: the server's prepared transactions that `XA RECOVER`
    /// does not list ([`crate::mariadb_xa::stranded`]); `None` elsewhere.
    pub async fn stranded(&self) -> anyhow::Result<Option<i64>> {
        match &self.holder {
            Holder::My(_, pool) => Ok(Some(crate::mariadb_xa::stranded(pool).await?)),
            Holder::Pg(..) => Ok(None),
        }
    }

    /// Rolls back the prepared transactions `gids` (a failed run's, so that
    /// the database can be dropped; MariaDB would wait on their locks).
    pub async fn rollback_prepared(&self, gids: &[Gid]) {
        for g in gids {
            let r = match &self.holder {
                Holder::Pg(_, pool) => sqlx::raw_sql(&g.statement("ROLLBACK PREPARED")).execute(pool).await.map(|_| ()),
                Holder::My(_, pool) => sqlx::raw_sql(&g.mysql_statement("XA ROLLBACK")).execute(pool).await.map(|_| ()),
            };
            if let Err(e) = r {
                eprintln!("chaos: rolling back {g:?} at {}: {e}", self.name());
            }
        }
    }
}
