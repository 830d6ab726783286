//! The relay: claims committed messages (see [`super::db`] for how several
//! relays share a table without overlapping or reordering), publishes them,
//! and marks them sent in the transaction that claimed them.
//!
//! A pass, in one database transaction: lock up to `batch_size` heads (the
//! first unsent message of each key that is due), read the next messages of
//! those keys within the batch's budget, publish each key's run in order
//! (keys concurrently, `concurrency` at once), stopping a key's run at its
//! first failure, then mark the published messages sent and the failed one
//! of each key failed (attempt counted, error kept, due again after a
//! backoff), and commit. A relay that dies before committing leaves the
//! messages unsent: they are published again (at least once).

use super::db::Row;
use super::{OutboxDb, OutboxError, OutboxTarget, Stored, KEY_HEADER, MESSAGE_ID_HEADER, SEQ_HEADER};
use futures::StreamExt;
use sqlx::{Pool, Postgres};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_brokers::{Brokers, Outgoing};
use tandem_wire::backoff::retry_delay;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How much of a failure's text is kept in `last_error`.
const MAX_ERROR_CHARS: usize = 2000;
/// How much of an HTTP endpoint's refusal body goes into the error.
const MAX_BODY_CHARS: usize = 500;
/// Most purge statements one purge runs (each deletes up to `purge_batch`
/// rows): a large backlog is worked off over several purges rather than
/// holding the relay from publishing.
const PURGE_ROUNDS: u32 = 50;

/// How a relay works. `RelayOptions::default()` suits most services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOptions {
    /// Most keys claimed in one pass, and the most messages one pass
    /// publishes (a key with a backlog gets the rest of the budget).
    /// Default 100.
    pub batch_size: u32,
    /// Keys published at once within a pass. Default 16.
    pub concurrency: usize,
    /// How long a relay that found nothing to do waits before it looks
    /// again, unless woken ([`super::Outbox::wake`]). Default 500 ms.
    pub poll_interval: Duration,
    /// First delay before a failed message is tried again; it doubles (with
    /// jitter) per failed attempt. Default 500 ms.
    pub retry_base: Duration,
    /// Longest delay between attempts of a failed message. Default 60 s.
    pub retry_max: Duration,
    /// Bound of one HTTP delivery (connect included). Broker publishes are
    /// bounded by the timeout their [`Brokers`] was built with. Default 10 s.
    pub http_timeout: Duration,
    /// How long sent messages are kept before the purge deletes them.
    /// Default 7 days.
    pub retention: Duration,
    /// How often the relay purges. Default 10 minutes.
    pub purge_interval: Duration,
    /// Rows one purge statement deletes (small: each is its own
    /// transaction, and holds locks only that long). Default 1000.
    pub purge_batch: u32,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch_size: 100,
            concurrency: 16,
            poll_interval: Duration::from_millis(500),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            http_timeout: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            purge_interval: Duration::from_secs(600),
            purge_batch: 1000,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Messages claimed (heads and the messages after them).
    pub claimed: usize,
    /// Messages confirmed and marked sent.
    pub published: usize,
    /// Messages whose attempt failed (at most one per key).
    pub failed: usize,
}

/// Publishes an outbox's committed messages. Any number of relays, in any
/// processes, may serve one database; see the module docs.
pub struct Relay<DB: OutboxDb = Postgres> {
    /// The service's database.
    pool: Pool<DB>,
    /// The broker destinations messages may name.
    brokers: Brokers,
    /// The client of HTTP targets.
    http: reqwest::Client,
    /// How it works.
    options: RelayOptions,
    /// Woken by [`super::Outbox::wake`] of the outbox that made it.
    wake: Arc<Notify>,
}

impl<DB: OutboxDb> std::fmt::Debug for Relay<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("brokers", &self.brokers).field("options", &self.options).finish()
    }
}

/// The messages of one key a pass publishes, in order; an entry that is not
/// a publishable message stops the run there.
type Run = Vec<Result<Stored, (i64, String)>>;

/// What became of a run.
#[derive(Default)]
struct RunOutcome {
    /// Confirmed, in order.
    sent: Vec<i64>,
    /// The message that failed (its id, attempts before this one, why);
    /// the run's later messages were not tried.
    failed: Option<(i64, i32, String)>,
}

impl<DB: OutboxDb> Relay<DB> {
    /// A relay on `pool` publishing to `brokers`. Woken only by its polls;
    /// [`super::Outbox::relay`] makes one that [`super::Outbox::wake`] wakes.
    pub fn new(pool: Pool<DB>, brokers: Brokers, options: RelayOptions) -> Result<Relay<DB>, OutboxError> {
        Relay::with_wake(pool, brokers, options, Arc::new(Notify::new()))
    }

    pub(crate) fn with_wake(
        pool: Pool<DB>,
        brokers: Brokers,
        options: RelayOptions,
        wake: Arc<Notify>,
    ) -> Result<Relay<DB>, OutboxError> {
        let http = reqwest::Client::builder()
            .timeout(options.http_timeout)
            .connect_timeout(options.http_timeout)
            // A target that redirects is a wrong target, not a new one.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Relay { pool, brokers, http, options, wake })
    }

    /// Runs the relay in a task of its own until `cancel`.
    pub fn spawn(self, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(cancel))
    }

    /// Runs passes until `cancel`: at once again after a pass that
    /// published (there may be more), else after the poll interval or a
    /// wake-up; purges every `purge_interval`. A pass in progress when
    /// `cancel` comes is finished (not cut between its publishes and its
    /// commit, which would publish its messages twice).
    pub async fn run(self, cancel: CancellationToken) {
        let mut next_purge = Instant::now();
        // Passes failed in a row (the database is down): the relay waits
        // longer after each, from the poll interval up to `retry_max`.
        let mut failures: u32 = 0;
        while !cancel.is_cancelled() {
            let mut wait = self.options.poll_interval;
            let again = match self.pass().await {
                Ok(r) => {
                    failures = 0;
                    r.published > 0 || r.claimed >= self.options.batch_size as usize
                }
                Err(error) => {
                    tracing::warn!(%error, failures, "outbox relay: pass failed");
                    wait = retry_delay(self.options.poll_interval, self.options.retry_max, failures);
                    failures = failures.saturating_add(1);
                    false
                }
            };
            if Instant::now() >= next_purge {
                match self.purge().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(purged = n, "outbox relay: sent messages purged"),
                    Err(error) => tracing::warn!(%error, "outbox relay: purge failed"),
                }
                next_purge = Instant::now() + self.options.purge_interval;
            }
            if !again {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    /// One pass (see the module docs).
    pub async fn pass(&self) -> Result<PassReport, OutboxError> {
        let budget = self.options.batch_size.max(1) as usize;
        let mut tx = DB::begin_relay(&self.pool).await?;
        let heads = DB::claim_heads(&mut *tx, budget as i64).await?;
        if heads.is_empty() {
            tx.commit().await?;
            return Ok(PassReport::default());
        }
        // The rest of the budget, shared by the claimed keys.
        let per_key = (budget.saturating_sub(heads.len()) / heads.len()) as i64;
        let followers = if per_key > 0 {
            let keys: Vec<(String, i64)> = heads.iter().map(|h| (h.key().to_owned(), h.seq())).collect();
            DB::followers(&mut *tx, &keys, per_key).await?
        } else {
            Vec::new()
        };
        let runs = runs(heads, followers);
        let claimed = runs.iter().map(Vec::len).sum();
        let outcomes: Vec<RunOutcome> = futures::stream::iter(runs)
            .map(|run| self.publish_run(run))
            .buffer_unordered(self.options.concurrency.max(1))
            .collect()
            .await;
        let sent: Vec<i64> = outcomes.iter().flat_map(|o| o.sent.iter().copied()).collect();
        DB::mark_sent(&mut *tx, &sent).await?;
        let mut failed = 0;
        for (id, attempts, error) in outcomes.into_iter().filter_map(|o| o.failed) {
            let delay =
                retry_delay(self.options.retry_base, self.options.retry_max, u32::try_from(attempts).unwrap_or(0));
            DB::mark_failed(&mut *tx, id, &truncate(&error, MAX_ERROR_CHARS), delay).await?;
            failed += 1;
        }
        tx.commit().await?;
        Ok(PassReport { claimed, published: sent.len(), failed })
    }

    /// Deletes sent messages older than the retention, and the key rows left
    /// without messages that long, in statements of `purge_batch` rows;
    /// returns how many messages it deleted. Unsent messages are never
    /// purged, however old.
    pub async fn purge(&self) -> Result<u64, OutboxError> {
        let batch = self.options.purge_batch.max(1);
        let mut purged = 0;
        for _ in 0..PURGE_ROUNDS {
            let n = DB::purge_sent(&self.pool, self.options.retention, batch.into()).await?;
            purged += n;
            if n < u64::from(batch) {
                break;
            }
        }
        for _ in 0..PURGE_ROUNDS {
            if DB::purge_keys(&self.pool, self.options.retention, batch.into()).await? < u64::from(batch) {
                break;
            }
        }
        Ok(purged)
    }

    /// Publishes a key's run in order, stopping at its first failure.
    async fn publish_run(&self, run: Run) -> RunOutcome {
        let mut outcome = RunOutcome::default();
        for entry in run {
            match entry {
                Ok(m) => match self.publish(&m).await {
                    Ok(()) => outcome.sent.push(m.id),
                    Err(error) => {
                        tracing::warn!(message_id = %m.message_id, key = %m.key, seq = m.seq,
                            attempts = m.attempts + 1, %error, "outbox relay: publish failed; will retry");
                        outcome.failed = Some((m.id, m.attempts, error));
                        break;
                    }
                },
                Err((id, error)) => {
                    tracing::error!(id, %error, "outbox relay: unreadable outbox row blocks its key");
                    outcome.failed = Some((id, 0, error));
                    break;
                }
            }
        }
        outcome
    }

    /// One attempt: done only on a 2xx answer or the broker's confirmation.
    async fn publish(&self, m: &Stored) -> Result<(), String> {
        let seq = m.seq.to_string();
        match &m.target {
            OutboxTarget::Http { url } => {
                let mut request = self
                    .http
                    .post(url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(MESSAGE_ID_HEADER, &m.message_id)
                    .header(KEY_HEADER, &m.key)
                    .header(SEQ_HEADER, &seq);
                for (name, value) in &m.headers {
                    request = request.header(name, value);
                }
                let response = request
                    .body(m.payload.clone())
                    .send()
                    .await
                    .map_err(|e| format!("POST {url}: {}", e.without_url()))?;
                let status = response.status();
                if status.is_success() {
                    return Ok(());
                }
                let body = response.text().await.unwrap_or_default();
                Err(format!("POST {url}: HTTP {status}: {}", truncate(&body, MAX_BODY_CHARS)))
            }
            OutboxTarget::Destination { name } => {
                let mut headers: Vec<(&str, &str)> = m.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                headers.push((KEY_HEADER, &m.key));
                headers.push((SEQ_HEADER, &seq));
                let outgoing = Outgoing { message_id: &m.message_id, payload: &m.payload, headers: &headers };
                self.brokers.publish(name, &outgoing).await.map_err(|e| format!("publish to {name}: {e}"))
            }
        }
    }
}

/// The claimed rows as runs: each head with its key's followers after it,
/// by seq, in the heads' order.
fn runs(heads: Vec<Row>, followers: Vec<Row>) -> Vec<Run> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut runs: Vec<Vec<Row>> = Vec::with_capacity(heads.len());
    for head in heads {
        index.insert(head.key().to_owned(), runs.len());
        runs.push(vec![head]);
    }
    for f in followers {
        // Followers are read for the claimed keys only.
        if let Some(&i) = index.get(f.key()) {
            runs[i].push(f);
        }
    }
    runs.into_iter()
        .map(|mut run| {
            run[1..].sort_by_key(Row::seq);
            run.into_iter().map(Row::into_stored).collect()
        })
        .collect()
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_truncated_on_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
