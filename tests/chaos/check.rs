//! The invariants, checked on the rows the databases hold once everything
//! is healed, and the run's figures.
//!
//! First three polls with deadlines: every transaction terminal (within
//! the transactions' timeout plus 30 s: an undecided one is rolled back
//! at its deadline, a decided one is driven by whichever coordinator
//! holds or takes its lease), no prepared transaction of the run left at
//! the XA banks (phase 2 or the participants' recovery finishes each), no
//! global lock left. Then the reads and the comparisons; each failure is
//! one violation, named with the xid it concerns.

use crate::faults::FaultStats;
use crate::schema::BANKS;
use crate::suite::World;
use crate::workload::{Intent, LegResult, Told, Transfer};
use crate::{Config, Mode, OPENING_BALANCE};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};
use tandem_example_bank::Direction;

/// How many violations of each kind are listed (all are counted).
const LISTED: usize = 20;

/// Terminal statuses a transfer may end in.
const GOOD_END: [&str; 2] = ["committed", "rolled_back"];

/// Figures of one mode.
#[derive(Debug, Default, Clone)]
pub struct ModeFigures {
    /// Transfers begun.
    pub attempted: u64,
    /// Commit asked and answered committed.
    pub committed: u64,
    /// A bank refused a leg for insufficient funds.
    pub refused_funds: u64,
    /// A bank refused a leg otherwise (a lock it could not get, a suspension).
    pub refused_other: u64,
    /// Rolled back on purpose (both legs held).
    pub rolled_back_on_purpose: u64,
    /// A leg failed (no answer: a bank down or partitioned, its coordinator down).
    pub leg_failed: u64,
    /// The decision's answer never came.
    pub unknown: u64,
    /// 404 to the decision: the begin was lost with the database's unwritten WAL.
    pub begin_lost: u64,
    /// Final statuses at the coordinator.
    pub final_committed: u64,
    /// Final statuses at the coordinator.
    pub final_rolled_back: u64,
}

/// The result of the checks.
#[derive(Debug, Default)]
pub struct Report {
    /// How many violations there were.
    pub violation_count: usize,
    /// The violations (the first [`LISTED`] of each kind).
    pub violations: Vec<String>,
    /// Per mode.
    pub modes: BTreeMap<Mode, ModeFigures>,
    /// The faults.
    pub faults: FaultStats,
    /// Coordinator restarts, participant restarts (spawns after the first).
    pub restarts: (u32, u32),
    /// Exits nobody caused, after answering ready.
    pub unexpected_exits: Vec<String>,
    /// Coordinators that exited before answering ready (started while the database was down).
    pub failed_starts: u32,
    /// Transactions at the coordinator.
    pub transactions: u64,
    /// How long after the end of the faults everything was up again.
    pub healed_in: Duration,
    /// ... and the clients had finished.
    pub clients_in: Duration,
    /// ... and every transaction was terminal.
    pub terminal_in: Duration,
    /// Whether partitions were possible.
    pub partitions_possible: bool,
    /// Legs that failed, by cause.
    pub leg_failures: BTreeMap<String, u64>,
    /// How the coordinators authenticated and signed.
    pub security: &'static str,
}

/// Counts violations by kind, listing the first few of each.
#[derive(Default)]
struct Violations {
    list: Vec<String>,
    by_kind: HashMap<&'static str, usize>,
}

impl Violations {
    fn add(&mut self, kind: &'static str, detail: String) {
        let n = self.by_kind.entry(kind).or_default();
        *n += 1;
        if *n <= LISTED {
            self.list.push(format!("{kind}: {detail}"));
        } else if *n == LISTED + 1 {
            self.list.push(format!("{kind}: (more not listed)"));
        }
    }

    fn total(&self) -> usize {
        self.by_kind.values().sum()
    }
}

/// Polls `probe` every 100 ms until it answers `Ok(None)` ("nothing left"),
/// or returns what is left at the deadline.
async fn poll<F, Fut>(within: Duration, mut probe: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>, String>>,
{
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let left = match probe().await {
            Ok(None) => return Ok(start.elapsed()),
            Ok(Some(left)) => left,
            Err(e) => e,
        };
        if start.elapsed() > within {
            return Err(left);
        }
    }
}

async fn coordinator_pool(world: &World) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new().max_connections(2).connect(&world.coordinator_db).await
}

/// Every xid the coordinators know.
pub async fn run_xids(world: &World) -> Result<HashSet<String>, sqlx::Error> {
    let pool = coordinator_pool(world).await?;
    let xids: Vec<String> = sqlx::query_scalar("SELECT xid FROM global_transactions").fetch_all(&pool).await?;
    Ok(xids.into_iter().collect())
}

/// Checks every invariant; figures and violations in the report.
pub async fn run(
    world: &World,
    cfg: &Config,
    transfers: &[Transfer],
    faults: &FaultStats,
    healed_in: Duration,
    clients_in: Duration,
) -> Report {
    let mut v = Violations::default();
    let mut report = Report {
        faults: faults.clone(),
        healed_in,
        clients_in,
        partitions_possible: world.netns.is_some(),
        security: if world.client_token.is_some() {
            "API tokens (client, participant) and signed callbacks, verified by every bank"
        } else {
            "no authentication (this coordinator has none)"
        },
        ..Report::default()
    };
    for p in world.coordinators.iter() {
        report.restarts.0 += p.stats.spawns.saturating_sub(1 + p.stats.failed_starts);
        report.failed_starts += p.stats.failed_starts;
    }
    for p in world.participants.iter() {
        report.restarts.1 += p.stats.spawns.saturating_sub(1 + p.stats.failed_starts);
    }
    for p in world.coordinators.iter().chain(world.participants.iter()) {
        if p.stats.unexpected_exits > 0 {
            report.unexpected_exits.push(format!(
                "{} ×{} (log {})",
                p.name,
                p.stats.unexpected_exits,
                p.log().display()
            ));
        }
    }
    if let Err(e) = check(world, cfg, transfers, &mut report, &mut v).await {
        v.add("the checks could not run", e);
    }
    report.violation_count = v.total();
    report.violations = v.list;
    report
}

async fn check(
    world: &World,
    cfg: &Config,
    transfers: &[Transfer],
    report: &mut Report,
    v: &mut Violations,
) -> Result<(), String> {
    let pool = coordinator_pool(world).await.map_err(|e| format!("the coordinators' database: {e}"))?;

    // 1. Every transaction terminal within the bound.
    let bound = cfg.tx_timeout + Duration::from_secs(30);
    let terminal = poll(bound, || async {
        let open: Vec<(String, String)> = sqlx::query_as(
            "SELECT xid, status FROM global_transactions \
             WHERE status NOT IN ('committed', 'rolled_back', 'commit_failed', 'rollback_failed', 'heuristic_mixed') \
             ORDER BY xid LIMIT 5",
        )
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?;
        Ok((!open.is_empty()).then(|| format!("{open:?}")))
    })
    .await;
    match terminal {
        Ok(t) => report.terminal_in = t,
        Err(left) => v.add("not terminal within the bound", format!("{bound:?} after healing, still open: {left}")),
    }

    let txs: Vec<(String, String, String)> = sqlx::query_as("SELECT xid, mode, status FROM global_transactions")
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?;
    let branches: Vec<(String, String, String)> = sqlx::query_as("SELECT xid, branch_id, status FROM branches")
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?;
    report.transactions = txs.len() as u64;
    let status: HashMap<&str, &str> = txs.iter().map(|(x, _, s)| (x.as_str(), s.as_str())).collect();
    let ours: HashSet<&str> = status.keys().copied().collect();

    // 2. No prepared transaction of the run left, no global lock left.
    for bank in world.banks.iter().filter(|b| b.mode == Mode::Xa) {
        let left = poll(Duration::from_secs(30), || async {
            let gids = bank.prepared().await.map_err(|e| e.to_string())?;
            let mine: Vec<String> =
                gids.iter().filter(|g| ours.contains(g.xid().as_str())).map(|g| g.as_postgres()).collect();
            Ok((!mine.is_empty()).then(|| mine.join(", ")))
        })
        .await;
        if let Err(left) = left {
            v.add("prepared transaction left", format!("{}: {left}", bank.name()));
        }
    }
    if let Some(start) = world.stranded_at_start {
        for bank in world.banks.iter().filter(|b| b.mode == Mode::Xa) {
            let more = poll(Duration::from_secs(10), || async {
                let now = bank.stranded().await.map_err(|e| format!("{e:#}"))?;
                Ok(now.filter(|n| *n > start).map(|n| format!("{} now, {start} at the start", n)))
            })
            .await;
            if let Err(more) = more {
                v.add("prepared transaction stranded (held by InnoDB, not listed by XA RECOVER)", more);
            }
        }
    }
    let locks = poll(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM global_locks")
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok((n > 0).then(|| format!("{n} global locks")))
    })
    .await;
    if let Err(left) = locks {
        v.add("global lock left", left);
    }

    // 3. Terminal, and committed or rolled back, branches alike.
    let mut branches_of: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for (x, b, s) in &branches {
        branches_of.entry(x.as_str()).or_default().push((b.as_str(), s.as_str()));
    }
    for (xid, mode, s) in &txs {
        if !GOOD_END.contains(&s.as_str()) {
            v.add("transaction not committed or rolled back", format!("{xid} ({mode}) is {s}"));
            continue;
        }
        let want = if s == "committed" { "committed" } else { "rolled_back" };
        for (b, bs) in branches_of.get(xid.as_str()).into_iter().flatten() {
            if *bs != want {
                v.add("branch at odds with its transaction", format!("{xid} ({mode}) is {s}, branch {b} is {bs}"));
            }
        }
    }

    // 4. What every client was told is the final status; a committed
    //    transaction is a transfer whose client asked commit with both legs held.
    let by_xid: HashMap<&str, &Transfer> = transfers.iter().map(|t| (t.xid.as_str(), t)).collect();
    for t in transfers {
        report.modes.entry(t.mode).or_default().attempted += 1;
        let refused = t.legs.iter().find_map(|l| match l.result {
            LegResult::Refused { funds } => Some(funds),
            _ => None,
        });
        for l in &t.legs {
            if let LegResult::Failed(why) = &l.result {
                *report.leg_failures.entry(cause(why)).or_default() += 1;
            }
        }
        let fig = report.modes.entry(t.mode).or_default();
        match refused {
            Some(true) => fig.refused_funds += 1,
            Some(false) => fig.refused_other += 1,
            None if t.legs.iter().any(|l| matches!(l.result, LegResult::Failed(_))) => fig.leg_failed += 1,
            None => {}
        }
        if t.intent == Intent::Rollback && t.legs_held() {
            fig.rolled_back_on_purpose += 1;
        }
        let fin = status.get(t.xid.as_str()).copied();
        match (&t.told, fin) {
            (Told::Committed, Some("committed")) => fig.committed += 1,
            (Told::RolledBack, Some("rolled_back")) => {}
            (Told::NotFound, None) => fig.begin_lost += 1,
            (Told::Unknown(_), _) => fig.unknown += 1,
            (Told::Odd(answer), _) => v.add("an answer outside the contract", format!("{}: {answer}", t.xid)),
            (told, fin) => v.add(
                "told one outcome, ended another",
                format!("{} ({}): told {told:?}, final {fin:?}", t.xid, t.mode.as_str()),
            ),
        }
        if t.told == Told::Committed && !t.asked_commit {
            v.add("committed without a commit", format!("{} ({}): {:?}", t.xid, t.mode.as_str(), t.legs));
        }
    }
    for (xid, mode, s) in &txs {
        if let Some(fig) = Mode::parse(mode).map(|m| report.modes.entry(m).or_default()) {
            match s.as_str() {
                "committed" => fig.final_committed += 1,
                "rolled_back" => fig.final_rolled_back += 1,
                _ => {}
            }
        }
        if s == "committed" && !by_xid.get(xid.as_str()).is_some_and(|t| t.asked_commit && t.legs_held()) {
            v.add("committed without its client's commit", format!("{xid} ({mode})"));
        }
    }

    // 5. Balances: the opening balance plus the committed legs, nothing frozen.
    let mut expected: HashMap<(Mode, usize, String), i64> = HashMap::new();
    for t in transfers.iter().filter(|t| status.get(t.xid.as_str()) == Some(&"committed")) {
        for l in &t.legs {
            let delta = match l.direction {
                Direction::Debit => -l.amount,
                Direction::Credit => l.amount,
            };
            *expected.entry((t.mode, l.bank, l.account.clone())).or_insert(0) += delta;
        }
    }
    for bank in &world.banks {
        let rows = bank.accounts().await.map_err(|e| format!("{}: {e:#}", bank.name()))?;
        if rows.len() != cfg.accounts {
            v.add("accounts missing", format!("{} has {} of {}", bank.name(), rows.len(), cfg.accounts));
        }
        for (id, balance, frozen, incoming) in rows {
            let want = OPENING_BALANCE + expected.get(&(bank.mode, bank.bank, id.clone())).copied().unwrap_or(0);
            if balance != want {
                v.add(
                    "balance is not the opening balance plus the committed legs",
                    format!("{} {id}: {balance}, expected {want}", bank.name()),
                );
            }
            if balance < 0 {
                v.add("negative balance", format!("{} {id}: {balance}", bank.name()));
            }
            if frozen != 0 || incoming != 0 {
                v.add("left frozen", format!("{} {id}: frozen {frozen}, incoming {incoming}", bank.name()));
            }
        }
    }
    for &mode in &cfg.modes {
        let mut total = 0i64;
        for bank in world.banks.iter().filter(|b| b.mode == mode) {
            total += bank.accounts().await.map_err(|e| e.to_string())?.iter().map(|r| r.1).sum::<i64>();
        }
        let opening = OPENING_BALANCE * (cfg.accounts * BANKS.len()) as i64;
        if total != opening {
            v.add("total changed", format!("{}: {total}, opened with {opening}", mode.as_str()));
        }
    }

    // 6. TCC: every branch's steps, from the step log.
    if cfg.modes.contains(&Mode::Tcc) {
        let mut steps: HashMap<String, (String, [u32; 3])> = HashMap::new();
        for bank in world.banks.iter().filter(|b| b.mode == Mode::Tcc) {
            for (xid, branch, step) in bank.steps().await.map_err(|e| format!("{}: {e:#}", bank.name()))? {
                let e = steps.entry(branch).or_insert_with(|| (xid.clone(), [0; 3]));
                match step.as_str() {
                    "try" => e.1[0] += 1,
                    "confirm" => e.1[1] += 1,
                    "cancel" => e.1[2] += 1,
                    other => v.add("unknown step", format!("{xid}: {other}")),
                }
            }
        }
        let tcc_xids: HashSet<&str> = txs.iter().filter(|(_, m, _)| m == "tcc").map(|(x, _, _)| x.as_str()).collect();
        let tcc_branches: HashSet<(&str, &str)> = branches
            .iter()
            .filter(|(x, _, _)| tcc_xids.contains(x.as_str()))
            .map(|(x, b, _)| (x.as_str(), b.as_str()))
            .collect();
        for (branch, (xid, _)) in &steps {
            if !tcc_branches.contains(&(xid.as_str(), branch.as_str())) {
                v.add("a step of a branch the coordinator does not know", format!("{xid} {branch}"));
            }
        }
        for (xid, branch) in &tcc_branches {
            let [tried, confirmed, cancelled] = steps.get(*branch).map(|s| s.1).unwrap_or([0; 3]);
            let ok = match status.get(xid).copied() {
                Some("committed") => tried == 1 && confirmed == 1 && cancelled == 0,
                Some("rolled_back") => confirmed == 0 && tried <= 1 && cancelled <= tried,
                _ => true, // already a violation above
            };
            if !ok {
                v.add(
                    "steps at odds with the outcome",
                    format!(
                        "{xid} {branch} ({}): try ×{tried}, confirm ×{confirmed}, cancel ×{cancelled}",
                        status.get(xid).copied().unwrap_or("unknown")
                    ),
                );
            }
        }
    }

    // 7. XA and AT: one leg row per leg of a committed transfer, none otherwise.
    for mode in cfg.modes.iter().copied().filter(|m| *m != Mode::Tcc) {
        let mut rows: HashMap<String, (String, u32)> = HashMap::new();
        for bank in world.banks.iter().filter(|b| b.mode == mode) {
            for (xid, leg) in bank.legs().await.map_err(|e| format!("{}: {e:#}", bank.name()))? {
                rows.entry(leg).or_insert_with(|| (xid, 0)).1 += 1;
            }
        }
        for (leg, (xid, n)) in &rows {
            if status.get(xid.as_str()) != Some(&"committed") {
                v.add(
                    "a leg's row of a transaction that did not commit",
                    format!("{} {xid} leg {leg} ×{n} ({:?})", mode.as_str(), status.get(xid.as_str())),
                );
            } else if *n != 1 {
                v.add("a leg applied more than once", format!("{} {xid} leg {leg} ×{n}", mode.as_str()));
            }
        }
        for t in transfers.iter().filter(|t| t.mode == mode && status.get(t.xid.as_str()) == Some(&"committed")) {
            for l in &t.legs {
                if !rows.contains_key(&l.leg_id) {
                    v.add("a committed leg without its row", format!("{} {} leg {}", mode.as_str(), t.xid, l.leg_id));
                }
            }
        }
    }
    Ok(())
}

/// A leg failure's cause, in a few words: the status and the start of the
/// bank's answer with ids left out, or what kept the answer from coming.
fn cause(why: &str) -> String {
    let status = why.split(':').next().unwrap_or_default();
    if status.len() >= 3 && status.as_bytes()[0].is_ascii_digit() {
        let words: Vec<&str> = why
            .split_whitespace()
            .filter(|w| !w.chars().any(|c| c.is_ascii_digit()) || w.len() <= 4)
            .take(12)
            .collect();
        words.join(" ")
    } else if why.contains("timed out") {
        "no answer in time".into()
    } else {
        "no connection".into()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "chaos: figures")?;
        writeln!(
            f,
            "  {:<5} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} {:>8} {:>10} | {:>9} {:>11}",
            "mode",
            "attempted",
            "committed",
            "refused",
            "(funds)",
            "rolled back",
            "leg failed",
            "unknown",
            "begin lost",
            "final:com",
            "final:rb"
        )?;
        let mut sum = ModeFigures::default();
        for (mode, m) in &self.modes {
            writeln!(
                f,
                "  {:<5} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} {:>8} {:>10} | {:>9} {:>11}",
                mode.as_str(),
                m.attempted,
                m.committed,
                m.refused_funds + m.refused_other,
                m.refused_funds,
                m.rolled_back_on_purpose,
                m.leg_failed,
                m.unknown,
                m.begin_lost,
                m.final_committed,
                m.final_rolled_back
            )?;
            sum.attempted += m.attempted;
            sum.committed += m.committed;
            sum.refused_funds += m.refused_funds;
            sum.refused_other += m.refused_other;
            sum.rolled_back_on_purpose += m.rolled_back_on_purpose;
            sum.leg_failed += m.leg_failed;
            sum.unknown += m.unknown;
            sum.begin_lost += m.begin_lost;
            sum.final_committed += m.final_committed;
            sum.final_rolled_back += m.final_rolled_back;
        }
        writeln!(
            f,
            "  {:<5} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} {:>8} {:>10} | {:>9} {:>11}",
            "all",
            sum.attempted,
            sum.committed,
            sum.refused_funds + sum.refused_other,
            sum.refused_funds,
            sum.rolled_back_on_purpose,
            sum.leg_failed,
            sum.unknown,
            sum.begin_lost,
            sum.final_committed,
            sum.final_rolled_back
        )?;
        let fs = &self.faults;
        let known: Vec<i64> = fs.unwritten_wal.iter().flatten().copied().collect();
        let lost = known.iter().filter(|b| **b > 0).count();
        let wal = if fs.unwritten_wal.len() <= 10 {
            let each: Vec<String> =
                fs.unwritten_wal.iter().map(|w| w.map(|b| b.to_string()).unwrap_or_else(|| "?".into())).collect();
            format!("bytes at each: [{}]", each.join(", "))
        } else {
            let (total, max) = (known.iter().sum::<i64>(), known.iter().max().copied().unwrap_or(0));
            format!("{total} bytes in all, at most {max} at one stop")
        };
        writeln!(
            f,
            "  faults over {:.1?}: coordinator kills {}, participant kills {}, database crashes {} \
             (unwritten WAL {wal}; {lost} stops lost some), partitions {}{}",
            fs.duration,
            fs.coordinator_kills,
            fs.participant_kills,
            fs.database_crashes,
            fs.partitions,
            if self.partitions_possible { "" } else { " (skipped: no network namespace)" }
        )?;
        writeln!(f, "  security: {}", self.security)?;
        let causes: Vec<String> = self.leg_failures.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
        writeln!(f, "  failed legs by cause: {}", if causes.is_empty() { "none".into() } else { causes.join(", ") })?;
        writeln!(
            f,
            "  restarts: coordinators {}, participants {}; coordinator starts that failed (database down) {}; \
             unexpected exits: {}",
            self.restarts.0,
            self.restarts.1,
            self.failed_starts,
            if self.unexpected_exits.is_empty() { "none".to_string() } else { self.unexpected_exits.join("; ") }
        )?;
        writeln!(
            f,
            "  after the faults: everything up in {:.1?}, clients done in {:.1?}, all {} transactions terminal {:.1?} later",
            self.healed_in, self.clients_in, self.transactions, self.terminal_in
        )?;
        write!(f, "  violations: {}", self.violation_count)?;
        for line in &self.violations {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}
