//! The clients: tasks that run transfers one after the other until told
//! to stop, and record every answer they got.
//!
//! A transfer begins at a random coordinator, sends its two legs (a debit
//! and a credit, in a random order) to the banks, and then asks a random
//! coordinator, again, for the decision: rollback if a leg did not hold or
//! if the transfer is one of those rolled back on purpose, commit
//! otherwise. A decision whose answer is lost (a coordinator killed, its
//! database down) is asked again elsewhere, as a client would, until an
//! answer comes or a deadline passes; the answer it got is what the client
//! was told, and the checks hold the coordinator to it.

use crate::participant::LegRequest;
use crate::{Mode, OPENING_BALANCE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_example_bank::Direction;
use tandem_sdk::wire::{BeginRequest, GlobalStatus, Xid};
use tandem_sdk::{ClientError, RequestBuilderExt, TandemClient};
use tokio_util::sync::CancellationToken;

/// How long a commit or rollback waits for phase 2 before answering 202.
const DECIDE_WAIT: Duration = Duration::from_secs(2);
/// How long a client keeps asking for its decision.
const DECIDE_DEADLINE: Duration = Duration::from_secs(20);
/// How long a leg may take.
const LEG_TIMEOUT: Duration = Duration::from_secs(5);
/// Share of transfers rolled back on purpose.
const ROLLBACK_SHARE: f64 = 0.10;
/// Share of transfers asking for more than the whole bank holds.
const OVERDRAFT_SHARE: f64 = 0.05;

/// What the clients of one mode talk to.
pub struct Targets {
    /// The mode.
    pub mode: Mode,
    /// The banks' base URLs, by index.
    pub banks: Vec<String>,
    /// Accounts per bank.
    pub accounts: usize,
}

/// What every client shares.
pub struct Shared {
    /// One client per coordinator process.
    pub coordinators: Vec<TandemClient>,
    /// For the legs.
    pub http: reqwest::Client,
    /// Transfers begun so far, all modes.
    pub begun: AtomicU64,
    /// The transactions' timeout.
    pub tx_timeout: Duration,
}

/// Whether a transfer was meant to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Commit when both legs hold.
    Commit,
    /// Roll back on purpose.
    Rollback,
}

/// How a leg ended, as its client saw it.
#[derive(Debug, Clone)]
pub enum LegResult {
    /// Phase 1 holds.
    Held,
    /// The bank refused it (409); `funds` when for insufficient funds.
    Refused {
        /// Insufficient funds (else a lock, a suspension).
        funds: bool,
    },
    /// No answer, or one that is neither.
    Failed(String),
}

/// One leg.
#[derive(Debug, Clone)]
pub struct LegRec {
    /// Bank index.
    pub bank: usize,
    /// Account id.
    pub account: String,
    /// Amount.
    pub amount: i64,
    /// Debit or credit.
    pub direction: Direction,
    /// The client's id for it (XA and AT log it).
    pub leg_id: String,
    /// What came of it.
    pub result: LegResult,
}

/// What a client was told about its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// Commit decided (200 committed, 202 committing, or a repeated commit).
    Committed,
    /// Rolled back (rollback answered, or commit answered 409 with the
    /// transaction rolling back).
    RolledBack,
    /// 404: the coordinator does not know the transaction (its begin was
    /// lost with the database's unwritten WAL: nothing can have joined it).
    NotFound,
    /// No answer before the deadline.
    Unknown(String),
    /// An answer the contract does not give here.
    Odd(String),
}

/// One transfer, as its client saw it.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Its mode.
    pub mode: Mode,
    /// Its transaction.
    pub xid: Xid,
    /// Meant to commit or not.
    pub intent: Intent,
    /// The legs sent, in order (none after the first that did not hold).
    pub legs: Vec<LegRec>,
    /// Whether commit was asked (else rollback).
    pub asked_commit: bool,
    /// The answer.
    pub told: Told,
}

impl Transfer {
    /// Whether every leg held.
    pub fn legs_held(&self) -> bool {
        self.legs.len() == 2 && self.legs.iter().all(|l| matches!(l.result, LegResult::Held))
    }
}

/// What a client is doing now, for the report of one that does not finish.
pub type Doing = Arc<std::sync::Mutex<String>>;

fn doing(d: &Doing, what: impl FnOnce() -> String) {
    if let Ok(mut g) = d.lock() {
        *g = what();
    }
}

/// Runs transfers until `stop`; returns them. `seed` makes its choices;
/// `now` says what it is doing.
pub async fn client(
    targets: Arc<Targets>,
    shared: Arc<Shared>,
    seed: u64,
    stop: CancellationToken,
    now: Doing,
) -> Vec<Transfer> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut done = Vec::new();
    while !stop.is_cancelled() {
        if let Some(t) = transfer(&targets, &shared, &mut rng, &stop, &now).await {
            done.push(t);
        }
    }
    doing(&now, || "done".into());
    done
}

fn coordinator<'a>(shared: &'a Shared, rng: &mut StdRng) -> &'a TandemClient {
    &shared.coordinators[rng.gen_range(0..shared.coordinators.len())]
}

/// Waits a little before asking again: a client's backoff, not a synchronisation.
async fn backoff(rng: &mut StdRng) {
    tokio::time::sleep(Duration::from_millis(rng.gen_range(20..120))).await;
}

async fn transfer(
    targets: &Targets,
    shared: &Shared,
    rng: &mut StdRng,
    stop: &CancellationToken,
    now: &Doing,
) -> Option<Transfer> {
    let begin = BeginRequest {
        mode: targets.mode.wire(),
        name: Some(format!("chaos.{}", targets.mode.as_str())),
        timeout_ms: Some(u64::try_from(shared.tx_timeout.as_millis()).unwrap_or(u64::MAX)),
        three_phase: None,
    };
    let xid = loop {
        if stop.is_cancelled() {
            return None;
        }
        let c = rng.gen_range(0..shared.coordinators.len());
        doing(now, || format!("{}: begin at coordinator-{c}", targets.mode.as_str()));
        match shared.coordinators[c].begin(&begin).await {
            Ok(t) => break t.xid,
            // Down, or its database is: ask another.
            Err(_) => backoff(rng).await,
        }
    };
    shared.begun.fetch_add(1, Ordering::Relaxed);

    let intent = if rng.gen_bool(ROLLBACK_SHARE) { Intent::Rollback } else { Intent::Commit };
    let n = targets.banks.len();
    let from_bank = rng.gen_range(0..n);
    let to_bank = if rng.gen_bool(0.8) { (from_bank + rng.gen_range(1..n)) % n } else { from_bank };
    let from = rng.gen_range(0..targets.accounts);
    let mut to = rng.gen_range(0..targets.accounts);
    if to_bank == from_bank && to == from {
        to = (to + 1) % targets.accounts;
    }
    let amount = if rng.gen_bool(OVERDRAFT_SHARE) {
        // More than every account of every bank together.
        OPENING_BALANCE * (targets.accounts as i64) * (n as i64) * 10
    } else {
        rng.gen_range(1..=2_000)
    };
    let mut legs = vec![(from_bank, from, Direction::Debit), (to_bank, to, Direction::Credit)];
    if rng.gen_bool(0.5) {
        legs.reverse();
    }
    let mut recs = Vec::with_capacity(2);
    for (i, (bank, account, direction)) in legs.into_iter().enumerate() {
        doing(now, || format!("{xid}: leg {i} at {}", targets.banks[bank]));
        let rec = leg(targets, shared, &xid, i, bank, account, amount, direction).await;
        let held = matches!(rec.result, LegResult::Held);
        recs.push(rec);
        if !held {
            break;
        }
    }
    let held = recs.len() == 2 && recs.iter().all(|l| matches!(l.result, LegResult::Held));
    let asked_commit = held && intent == Intent::Commit;
    doing(now, || format!("{xid}: {}", if asked_commit { "commit" } else { "rollback" }));
    let told = decide(shared, rng, &xid, asked_commit).await;
    Some(Transfer { mode: targets.mode, xid, intent, legs: recs, asked_commit, told })
}

#[allow(clippy::too_many_arguments)]
async fn leg(
    targets: &Targets,
    shared: &Shared,
    xid: &Xid,
    i: usize,
    bank: usize,
    account: usize,
    amount: i64,
    direction: Direction,
) -> LegRec {
    let body = LegRequest { account: crate::schema::account(account), amount, direction, leg_id: format!("{xid}.{i}") };
    let sent = shared
        .http
        .post(format!("{}/legs", targets.banks[bank]))
        .xid(xid)
        .json(&body)
        .timeout(LEG_TIMEOUT)
        .send()
        .await;
    let result = match sent {
        Ok(r) if r.status().is_success() => LegResult::Held,
        Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
            let text = r.text().await.unwrap_or_default();
            LegResult::Refused { funds: text.contains("insufficient funds") }
        }
        Ok(r) => {
            let status = r.status();
            LegResult::Failed(format!("{status}: {}", r.text().await.unwrap_or_default()))
        }
        Err(e) => LegResult::Failed(e.to_string()),
    };
    LegRec { bank, account: body.account, amount, direction, leg_id: body.leg_id, result }
}

fn told_of(status: GlobalStatus) -> Told {
    match status {
        GlobalStatus::Committing | GlobalStatus::Committed => Told::Committed,
        GlobalStatus::RollingBack | GlobalStatus::RolledBack => Told::RolledBack,
        other => Told::Odd(format!("answered with status {other}")),
    }
}

/// Asks for the decision until an answer comes (any coordinator will do).
async fn decide(shared: &Shared, rng: &mut StdRng, xid: &Xid, commit: bool) -> Told {
    let deadline = Instant::now() + DECIDE_DEADLINE;
    loop {
        let c = coordinator(shared, rng);
        let answer =
            if commit { c.commit(xid, Some(DECIDE_WAIT)).await } else { c.rollback(xid, Some(DECIDE_WAIT)).await };
        let last = match answer {
            Ok(d) => return told_of(d.transaction.status),
            Err(ClientError::Problem(p)) if p.status == 409 => {
                return match p.transaction {
                    Some(t) => told_of(t.status),
                    None => Told::Odd(format!("409 without the transaction: {}", p.detail)),
                }
            }
            Err(ClientError::Problem(p)) if p.status == 404 => return Told::NotFound,
            // Unavailable, timed out, or no answer at all: ask again.
            Err(e) if matches!(e, ClientError::Http(_)) || e.status().is_some_and(|s| s == 408 || s >= 500) => {
                e.to_string()
            }
            Err(e) => return Told::Odd(e.to_string()),
        };
        if Instant::now() > deadline {
            return Told::Unknown(last);
        }
        backoff(rng).await;
    }
}
