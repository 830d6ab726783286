//! Fault injection: a bank of accounts spread over three participant
//! databases (two PostgreSQL, one MariaDB), transfers between them in TCC,
//! XA and AT mode, and crashes everywhere while they run: coordinator
//! processes and participant processes SIGKILLed and restarted, the
//! coordinators' PostgreSQL stopped with `pg_ctl stop -m immediate` and
//! restarted, and the network between the coordinators and one participant
//! cut and healed. Then everything is healed and the suite checks, on the
//! rows it reads back, that no money appeared or vanished and that every
//! transaction ended the way its client was told.
//!
//! # What runs
//!
//! - **One PostgreSQL cluster owned by the suite** ([`pgcluster`]): initdb
//!   into a temporary directory with the machine's
//!   `/usr/lib/postgresql/*/bin` tools, on a free loopback port. It holds
//!   the coordinators' one database, and it is the only server the suite
//!   ever stops: the machine's clusters (5432, 5433) and MariaDB serve
//!   other tests in parallel and are only given fresh databases.
//! - **Several `tandem serve` processes** (the real binary,
//!   `CARGO_BIN_EXE_tandem`, or `CHAOS_TANDEM_BIN`) on that database,
//!   deployed as they should be: API tokens of the run (`tandem token
//!   new`: a `client` one for the clients, a `participant` one for the
//!   banks; the coordinators get only the hashed entries), callbacks
//!   signed with a key of the run (`tandem token key`) that every bank
//!   verifies, and a callback allow-list. Their command line and
//!   environment are built by one function, [`procs::coordinator_command`].
//! - **Per mode, three participant processes**, each serving one bank on
//!   its own database: bank A and bank B on PostgreSQL (the machine's
//!   5432 for TCC and AT; the prepared-transaction cluster on 5433 for XA),
//!   bank C on MariaDB. A participant is this very test binary re-executed
//!   with [`participant::ROLE_ENV`] set to its JSON spec ([`participant`]):
//!   the simplest way to have a real OS process (SIGKILL and restart) with
//!   the suite's own code and no extra crate, which is also why the target
//!   has `harness = false` (its `main` decides the role). TCC on
//!   PostgreSQL is `examples/bank` itself; the SDK's TCC fence is
//!   PostgreSQL-only, so TCC on MariaDB is [`mysql_tcc`], the same fence
//!   and steps written for InnoDB (see its docs). XA and AT are the SDK's
//!   participants with the bank's accounts written as plain SQL; XA on
//!   MariaDB goes through [`mariadb_xa`], which closes a race the suite
//!   found in the SDK's backend.
//! - **Bank C of every mode in a network namespace** ([`netns`]) joined to
//!   the host by a veth pair with addresses in a random private /24; the
//!   coordinators listen on the host end. A partition is `ip link set DEV
//!   down` on the namespace's end: the participant's packets find no route,
//!   the coordinators' callbacks and the clients' requests go unanswered,
//!   and the host end keeps its address (the coordinators stay reachable
//!   from the host). The participant reaches its database through
//!   MariaDB's Unix socket, which no namespace cuts: the partition is
//!   between the coordinators and the participant only. Without the
//!   permission to create namespaces the partition fault is skipped with
//!   the reason printed, and bank C runs on loopback.
//! - **Clients** ([`workload`]): a pool of tasks per mode, each running
//!   transfers one after the other: begin at a random coordinator, a debit
//!   leg and a credit leg at two accounts (usually in two banks), then
//!   commit or, for about one in ten on purpose, rollback, at a random
//!   coordinator again (any process serves any transaction). About one in
//!   twenty asks for more than any account holds, so a participant
//!   refuses it; others are refused when the money is frozen or locked.
//!   Every answer is recorded.
//! - **Faults** ([`faults`]): a seeded schedule (one fault of each kind
//!   first, in random order, then weighted random ones) at random
//!   intervals; each process killed is restarted after a random delay on
//!   the same address, the database after a random downtime, the link
//!   after a random cut.
//!
//! # What is checked ([`check`])
//!
//! After the clients stop and every fault is healed, with polls that have
//! deadlines (nothing waits by sleeping):
//!
//! - every transaction is terminal within a bound, and committed or
//!   rolled back (never `commit_failed` / `rollback_failed`), its branches
//!   likewise; no global lock is left;
//! - every answer a client was given is the final status (commit answered
//!   committed or committing: committed; rollback answered: rolled back;
//!   a commit answered 409 with the transaction rolled back: rolled back);
//! - every account's balance is its opening balance plus the legs of the
//!   committed transfers and nothing else, so the total is unchanged; no
//!   balance is negative; nothing is frozen or incoming;
//! - TCC, from the step log: every branch of a committed transfer tried
//!   and confirmed exactly once and never cancelled; of a rolled-back one
//!   never confirmed, cancelled at most once and only after a try;
//! - XA and AT, from the leg log each leg writes in its branch: one row
//!   per leg of a committed transfer, none of a rolled-back one; XA: no
//!   prepared transaction of the run left (`pg_prepared_xacts`, `XA
//!   RECOVER`), and none that MariaDB holds without listing it; AT: the
//!   dirty-write check never fired (no branch `rollback_failed`, which is
//!   where it ends).
//!
//! The coordinator writes its phase-2 bookkeeping with `synchronous_commit
//! = off`; an immediate stop loses what was not yet written, and the suite
//! prints how many bytes of WAL were unwritten at each stop, and how many
//! begins were lost with them (a client's decision answered 404): losing
//! them must change none of the above.
//!
//! # Running
//!
//! `cargo test --workspace` runs the short version (30 s of faults,
//! about 35 s in all on two cores). `scripts/chaos-long.sh` runs the same
//! code for longer; everything is set by the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `CHAOS_SEED` | random | the seed of every random choice (printed; replays the schedule of faults and the clients' choices, not the exact interleaving) |
//! | `CHAOS_SECONDS` | 30 | how long the faults run at most |
//! | `CHAOS_TRANSFERS` | none | stop the faults once this many transfers began |
//! | `CHAOS_MODES` | `tcc,xa,at` | the modes run side by side |
//! | `CHAOS_CLIENTS` | 4 | client tasks per mode |
//! | `CHAOS_COORDINATORS` | 3 | coordinator processes |
//! | `CHAOS_ACCOUNTS` | 32 | accounts per bank |
//! | `CHAOS_FAULT_MS` | `300-1200` | pause between two faults, drawn in this range |
//! | `CHAOS_TX_TIMEOUT_MS` | 5000 | the transactions' timeout |
//! | `CHAOS_KEEP` | unset | keep the logs and the cluster's directory after a passing run |
//! | `CHAOS_TANDEM_BIN` | cargo's | the coordinator binary (`scripts/chaos-long.sh` runs a copy) |
//!
//! Logs of every process go to `target/tmp/chaos-<run>/`; they are kept
//! when the run fails.

mod check;
mod faults;
mod mariadb_xa;
mod mysql_tcc;
mod netns;
mod participant;
mod pgcluster;
mod procs;
mod schema;
mod suite;
mod workload;

#[path = "../support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

/// The name under which `--list` shows the suite.
const TEST_NAME: &str = "chaos";

/// The modes a run can exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Try-Confirm-Cancel.
    Tcc,
    /// XA: prepared database transactions.
    Xa,
    /// AT: imaged plain SQL, undone from its undo log.
    At,
}

impl Mode {
    /// Its name in the environment, the logs and the figures.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tcc => "tcc",
            Mode::Xa => "xa",
            Mode::At => "at",
        }
    }

    /// The coordinator's mode.
    pub fn wire(self) -> tandem_sdk::wire::Mode {
        match self {
            Mode::Tcc => tandem_sdk::wire::Mode::Tcc,
            Mode::Xa => tandem_sdk::wire::Mode::Xa,
            Mode::At => tandem_sdk::wire::Mode::At,
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        match s.trim() {
            "tcc" => Some(Mode::Tcc),
            "xa" => Some(Mode::Xa),
            "at" => Some(Mode::At),
            _ => None,
        }
    }
}

/// The run's settings, from the environment (table in the module docs).
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of every random choice.
    pub seed: u64,
    /// Longest time faults are injected.
    pub duration: Duration,
    /// Stop injecting once this many transfers began.
    pub transfers: Option<u64>,
    /// Modes run side by side.
    pub modes: Vec<Mode>,
    /// Client tasks per mode.
    pub clients: usize,
    /// Coordinator processes.
    pub coordinators: usize,
    /// Accounts per bank.
    pub accounts: usize,
    /// Pause between faults: lower and upper bound.
    pub fault_pause: (Duration, Duration),
    /// Timeout of every transaction.
    pub tx_timeout: Duration,
    /// Keep logs and data after a passing run.
    pub keep: bool,
}

/// Opening balance of every account, in cents.
pub const OPENING_BALANCE: i64 = 100_000;

fn env_u64(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => {
            let v = v.trim().replace('_', "");
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.map(Some).map_err(|e| format!("{name}={v:?}: {e}"))
        }
    }
}

impl Config {
    /// Reads the environment.
    pub fn from_env() -> Result<Config, String> {
        let seed = env_u64("CHAOS_SEED")?.unwrap_or_else(rand::random);
        let modes = match std::env::var("CHAOS_MODES") {
            Ok(s) if !s.trim().is_empty() => {
                let mut modes = Vec::new();
                for m in s.split(',') {
                    let mode = Mode::parse(m).ok_or_else(|| format!("CHAOS_MODES: unknown mode {m:?}"))?;
                    if !modes.contains(&mode) {
                        modes.push(mode);
                    }
                }
                modes
            }
            _ => vec![Mode::Tcc, Mode::Xa, Mode::At],
        };
        let fault_pause = match std::env::var("CHAOS_FAULT_MS") {
            Ok(s) if !s.trim().is_empty() => {
                let (lo, hi) = s.split_once('-').ok_or_else(|| format!("CHAOS_FAULT_MS={s:?}: expected MIN-MAX"))?;
                let lo: u64 = lo.trim().parse().map_err(|e| format!("CHAOS_FAULT_MS: {e}"))?;
                let hi: u64 = hi.trim().parse().map_err(|e| format!("CHAOS_FAULT_MS: {e}"))?;
                if lo > hi || hi == 0 {
                    return Err(format!("CHAOS_FAULT_MS={s:?}: MIN must be at most MAX, MAX above 0"));
                }
                (Duration::from_millis(lo), Duration::from_millis(hi))
            }
            _ => (Duration::from_millis(300), Duration::from_millis(1_200)),
        };
        let at_least_one = |name: &str, default: u64| -> Result<usize, String> {
            let v = env_u64(name)?.unwrap_or(default);
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
            usize::try_from(v).map_err(|e| format!("{name}: {e}"))
        };
        let accounts = at_least_one("CHAOS_ACCOUNTS", 32)?;
        if accounts < 2 {
            return Err("CHAOS_ACCOUNTS must be at least 2".into());
        }
        Ok(Config {
            seed,
            duration: Duration::from_secs(env_u64("CHAOS_SECONDS")?.unwrap_or(30)),
            transfers: env_u64("CHAOS_TRANSFERS")?,
            modes,
            clients: at_least_one("CHAOS_CLIENTS", 4)?,
            coordinators: at_least_one("CHAOS_COORDINATORS", 3)?,
            accounts,
            fault_pause,
            tx_timeout: Duration::from_millis(env_u64("CHAOS_TX_TIMEOUT_MS")?.unwrap_or(5_000).max(500)),
            keep: std::env::var_os("CHAOS_KEEP").is_some(),
        })
    }
}

/// What libtest-style arguments ask of this harness-less binary: cargo and
/// other runners pass them to every test target.
enum Invocation {
    /// `--list`: name the one test.
    List,
    /// A filter that does not match, or `--ignored` (this test is not).
    Skip,
    /// Run the suite.
    Run,
}

fn invocation(args: &[String]) -> Invocation {
    // Options of libtest that take a value, which is then not a filter.
    const WITH_VALUE: &[&str] =
        &["--test-threads", "--logfile", "--color", "--format", "--skip", "-Z", "--shuffle-seed"];
    let mut filters = Vec::new();
    let (mut list, mut ignored_only, mut exact) = (false, false, false);
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "--list" => list = true,
            "--ignored" => ignored_only = true,
            "--exact" => exact = true,
            _ if WITH_VALUE.contains(&a) => i += 1,
            _ if a.starts_with('-') => {}
            _ => filters.push(a),
        }
        i += 1;
    }
    let matches =
        filters.is_empty() || filters.iter().any(|f| if exact { *f == TEST_NAME } else { TEST_NAME.contains(f) });
    match (matches && !ignored_only, list) {
        (true, true) => Invocation::List,
        (false, _) => Invocation::Skip,
        (true, false) => Invocation::Run,
    }
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(participant::ROLE_ENV) {
        return participant::main(&spec);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match invocation(&args) {
        Invocation::List => {
            println!("{TEST_NAME}: test");
            return ExitCode::SUCCESS;
        }
        Invocation::Skip => {
            println!("{TEST_NAME}: filtered out");
            return ExitCode::SUCCESS;
        }
        Invocation::Run => {}
    }
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(suite::run(cfg));
    // Child processes and databases are gone with the world (dropped in
    // run); the runtime's remaining tasks are only the clients' pools.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(()) => {
            println!("test {TEST_NAME} ... ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("test {TEST_NAME} ... FAILED\nchaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}
