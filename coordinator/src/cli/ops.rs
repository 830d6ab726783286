//! The operator's subcommands of `tandem` (`tx list|show|retry|stop`,
//! `locks list`): a client of a running coordinator's HTTP API, with
//! readable tables, or `--json` for scripts (the API's own JSON, unchanged).
//!
//! Exit status: 0 done; 1 the coordinator refused (its problem's detail is
//! printed) or could not be reached.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use comfy_table::{presets, ContentArrangement, Table};
use serde::de::DeserializeOwned;
use std::time::Duration;
use tandem_wire::{
    GlobalStatus, LockList, Mode, NamedLockList, Problem, StopRequest, Timeline, TimelineEvent, Transaction,
    TransactionList,
};

/// Where the coordinator is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The coordinator's base URL.
    #[arg(long, env = "TANDEM_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// An admin API token (needed once the coordinator has tokens configured).
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `tandem tx …`.
#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// List transactions, newest first.
    List {
        /// Only this status (e.g. committing, commit_failed).
        #[arg(long)]
        status: Option<GlobalStatus>,
        /// Only this mode (tcc, xa, at, saga, msg, 3pc).
        #[arg(long)]
        mode: Option<Mode>,
        /// Only names starting with this.
        #[arg(long)]
        name: Option<String>,
        /// Only transactions begun within this long (e.g. 90s, 15m, 2h, 1d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// How many (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Show one transaction: its branches and its timeline.
    Show {
        /// The transaction's xid.
        xid: String,
        #[command(flatten)]
        target: Target,
    },
    /// Retry a decided, unfinished transaction now.
    Retry {
        /// The transaction's xid.
        xid: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stop retrying a decided transaction; it ends commit_failed or rollback_failed.
    Stop {
        /// The transaction's xid.
        xid: String,
        /// Why (kept in the transaction's timeline).
        #[arg(long)]
        note: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `tandem locks …`.
#[derive(Debug, Subcommand)]
pub enum LocksCommand {
    /// List the global locks (AT) held, oldest first.
    List {
        /// How many (1 to 500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
    /// List the named locks (`/v1/named-locks`) held or waited for, by
    /// name: holder, holds, token, lease end and the queue in order.
    Named {
        /// How many (1 to 500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The coordinator could not be reached or answered something unreadable.
    #[error("{url}: {source}")]
    Http {
        /// What was asked.
        url: String,
        /// Why it failed.
        #[source]
        source: reqwest::Error,
    },
    /// The coordinator answered with a problem.
    #[error("{status} {code}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's code.
        code: String,
        /// The problem's detail.
        detail: String,
    },
    /// An argument the API would refuse.
    #[error("{0}")]
    Usage(String),
}

/// A client of one coordinator.
struct Api {
    /// Keep-alive client with a timeout.
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    /// The bearer token, if any.
    token: Option<String>,
}

impl Api {
    fn new(target: &Target) -> Result<Api, OpsError> {
        let url = &target.url;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| OpsError::Http { url: url.to_owned(), source })?;
        Ok(Api { http, base: url.trim_end_matches('/').to_owned(), token: target.token.clone() })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder, path: &str) -> Result<T, OpsError> {
        let url = format!("{}{path}", self.base);
        let http = |source| OpsError::Http { url: url.clone(), source };
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        if status.is_success() {
            return resp.json::<T>().await.map_err(http);
        }
        let text = resp.text().await.map_err(http)?;
        Err(match serde_json::from_str::<Problem>(&text) {
            Ok(p) => OpsError::Refused {
                status: status.as_u16(),
                code: p.code.as_str().to_owned(),
                detail: if p.detail.is_empty() { p.title } else { p.detail },
            },
            Err(_) => OpsError::Refused { status: status.as_u16(), code: "unexpected".into(), detail: text },
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T, OpsError> {
        self.send(self.http.get(format!("{}{path}", self.base)).query(query), path).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Option<&StopRequest>) -> Result<T, OpsError> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req, path).await
    }
}

/// An xid as a path segment: checked first, so that a typo cannot change the path.
fn segment(xid: &str) -> Result<String, OpsError> {
    tandem_wire::Xid::parse(xid).map(|x| x.to_string()).map_err(|e| OpsError::Usage(format!("{xid:?}: {e}")))
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("could not print JSON: {e}"),
    }
}

/// Runs `tandem tx …`.
pub async fn tx(cmd: TxCommand) -> Result<(), OpsError> {
    match cmd {
        TxCommand::List { status, mode, name, since, limit, target } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(s) = status {
                query.push(("status", s.as_str().to_owned()));
            }
            if let Some(m) = mode {
                query.push(("mode", m.as_str().to_owned()));
            }
            if let Some(n) = name {
                query.push(("name", n));
            }
            if let Some(d) = since {
                let d = chrono::Duration::from_std(d).map_err(|e| OpsError::Usage(format!("--since: {e}")))?;
                let after =
                    Utc::now().checked_sub_signed(d).ok_or_else(|| OpsError::Usage("--since: too long".into()))?;
                query.push(("created_after", after.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
            }
            let list: TransactionList = Api::new(&target)?.get("/v1/transactions", &query).await?;
            if target.json {
                print_json(&list);
            } else {
                println!("{}", transactions_table(&list.transactions));
                if list.next.is_some() {
                    println!("(more: raise --limit, or narrow with --status, --mode, --name, --since)");
                }
            }
        }
        TxCommand::Show { xid, target } => {
            let path = format!("/v1/transactions/{}/timeline", segment(&xid)?);
            let timeline: Timeline = Api::new(&target)?.get(&path, &[]).await?;
            if target.json {
                print_json(&timeline);
            } else {
                print!("{}", show(&timeline));
            }
        }
        TxCommand::Retry { xid, target } => {
            let path = format!("/v1/transactions/{}/retry", segment(&xid)?);
            let tx: Transaction = Api::new(&target)?.post(&path, None).await?;
            if target.json {
                print_json(&tx);
            } else {
                println!("{}: {}, retrying now", tx.xid, tx.status);
            }
        }
        TxCommand::Stop { xid, note, target } => {
            let path = format!("/v1/transactions/{}/stop", segment(&xid)?);
            let tx: Transaction = Api::new(&target)?.post(&path, Some(&StopRequest { note })).await?;
            if target.json {
                print_json(&tx);
            } else {
                println!("{}: stopped, now {}", tx.xid, tx.status);
            }
        }
    }
    Ok(())
}

/// Runs `tandem locks …`.
pub async fn locks(cmd: LocksCommand) -> Result<(), OpsError> {
    let (limit, target) = match cmd {
        LocksCommand::List { limit, target } => (limit, target),
        LocksCommand::Named { limit, target } => return named_locks(limit, target).await,
    };
    let list: LockList = Api::new(&target)?.get("/v1/locks", &[("limit", limit.to_string())]).await?;
    if target.json {
        print_json(&list);
        return Ok(());
    }
    let mut t = table(&["RESOURCE", "LOCK KEY", "XID", "BRANCH", "SINCE"]);
    for l in &list.locks {
        t.add_row(vec![l.resource.clone(), l.lock_key.clone(), l.xid.clone(), l.branch_id.clone(), time(l.since)]);
    }
    println!("{t}");
    println!("{} of {} locks held", list.locks.len(), list.total);
    Ok(())
}

/// Prints the named locks held or waited for (`tandem locks named`).
async fn named_locks(limit: u32, target: Target) -> Result<(), OpsError> {
    let named: NamedLockList = Api::new(&target)?.get("/v1/named-locks", &[("limit", limit.to_string())]).await?;
    if target.json {
        print_json(&named);
        return Ok(());
    }
    let mut t = table(&["NAME", "OWNER", "HOLDS", "TOKEN", "EXPIRES", "WAITERS"]);
    for l in &named.locks {
        let owner = l.owner.as_ref().map(|o| o.to_string()).unwrap_or_else(|| "-".into());
        let expires = l.expires_at.map(time).unwrap_or_else(|| "-".into());
        let waiters = l.waiters.iter().map(|w| w.owner.to_string()).collect::<Vec<_>>().join(" ");
        t.add_row(vec![l.name.to_string(), owner, l.holds.to_string(), l.token.to_string(), expires, waiters]);
    }
    println!("{t}");
    println!("{} of {} named locks held or waited for", named.locks.len(), named.total);
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled).set_header(header.to_vec());
    t
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// The list as a table.
pub fn transactions_table(txs: &[Transaction]) -> Table {
    let mut t = table(&["XID", "MODE", "STATUS", "NAME", "BRANCHES", "CREATED", "FINISHED"]);
    for tx in txs {
        t.add_row(vec![
            tx.xid.to_string(),
            tx.mode.as_str().to_owned(),
            tx.status.as_str().to_owned(),
            tx.name.clone().unwrap_or_default(),
            tx.branches.len().to_string(),
            time(tx.created_at),
            tx.finished_at.map(time).unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

/// `tx show` as text: the transaction, its branches, its timeline.
pub fn show(tl: &Timeline) -> String {
    let tx = &tl.transaction;
    let mut out = String::new();
    let reason = tx.rollback_reason.map(|r| format!(" ({})", r.as_str())).unwrap_or_default();
    out.push_str(&format!("transaction {}\n", tx.xid));
    out.push_str(&format!("  mode     {}\n  status   {}{reason}\n", tx.mode.as_str(), tx.status));
    if let Some(n) = &tx.name {
        out.push_str(&format!("  name     {n}\n"));
    }
    out.push_str(&format!("  created  {}\n", time(tx.created_at)));
    if let Some(d) = tx.decided_at {
        out.push_str(&format!("  decided  {}\n", time(d)));
    }
    if let Some(f) = tx.finished_at {
        out.push_str(&format!("  finished {}\n", time(f)));
    }
    out.push_str("\nbranches\n");
    let mut b = table(&["BRANCH", "RESOURCE", "STATUS", "ATTEMPTS", "LAST ERROR"]);
    for br in &tx.branches {
        let err = br.last_error.as_deref().unwrap_or("").lines().next().unwrap_or("").chars().take(80).collect();
        b.add_row(vec![
            br.branch_id.to_string(),
            br.resource.clone(),
            br.status.as_str().to_owned(),
            br.attempts.to_string(),
            err,
        ]);
    }
    out.push_str(&format!("{b}\n\ntimeline\n"));
    let mut t = table(&["AT", "+MS", "EVENT", "BRANCH", "ACTION", "OUTCOME", "HTTP", "LATENCY", "DETAIL"]);
    for e in &tl.events {
        t.add_row(event_row(tx.created_at, e));
    }
    out.push_str(&format!("{t}\n"));
    out
}

fn event_row(start: DateTime<Utc>, e: &TimelineEvent) -> Vec<String> {
    let offset = (e.at - start).num_microseconds().map(|us| format!("{:.1}", us as f64 / 1000.0)).unwrap_or_default();
    let what = match (e.status, e.reason) {
        (Some(s), Some(r)) => format!("{} → {s} ({})", e.kind.as_str(), r.as_str()),
        (Some(s), None) => format!("{} → {s}", e.kind.as_str()),
        _ => e.kind.as_str().to_owned(),
    };
    vec![
        e.at.format("%H:%M:%S%.3f").to_string(),
        offset,
        what,
        e.branch_id.clone().unwrap_or_default(),
        e.action.map(|a| a.as_str().to_owned()).unwrap_or_default(),
        e.outcome.map(|o| o.as_str().to_owned()).unwrap_or_default(),
        e.http_status.map(|s| s.to_string()).unwrap_or_default(),
        e.latency_us.map(|us| format!("{:.1} ms", us as f64 / 1000.0)).unwrap_or_default(),
        e.detail.as_deref().unwrap_or("").lines().next().unwrap_or("").chars().take(60).collect(),
    ]
}
