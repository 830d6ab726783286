//! What operators read and do: the event log's rows and their retention, the
//! overview's counts, the attention list, the held global locks, and the two
//! operator actions (retry now, stop with a note).

use super::rows::{parsed, tx_cols, TxRow};
use super::sql::in_list;
use super::{Store, StoreError};
use crate::transaction::statuses::{self, DECIDED, LEASED, NEEDS_ATTENTION, UNDECIDED};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::sync::LazyLock;
use tandem_wire::{BranchStatus, GlobalStatus, LockInfo, Mode, TimelineEvent, Xid, STUCK_ATTEMPTS};

/// One `tx_events` row: events of one transaction written together.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// The transaction.
    pub xid: Xid,
    /// Its first event's time.
    pub at: DateTime<Utc>,
    /// The coordinator that recorded them.
    pub coordinator: String,
    /// The events, in the order recorded.
    pub events: Vec<TimelineEvent>,
}

/// Transactions of `mode` that ended `outcome` in `minute` (to add).
#[derive(Debug, Clone)]
pub struct MinuteRow {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// The mode.
    pub mode: Mode,
    /// The terminal status.
    pub outcome: GlobalStatus,
    /// How many.
    pub n: i64,
}

/// A filter of the transaction list (all optional; together: all must hold).
#[derive(Debug, Clone, Default)]
pub struct TxFilter<'a> {
    /// Only this status.
    pub status: Option<GlobalStatus>,
    /// Only this mode.
    pub mode: Option<Mode>,
    /// Only names starting with this.
    pub name_prefix: Option<&'a str>,
    /// Only xids containing this.
    pub xid_contains: Option<&'a str>,
    /// Only created at or after this.
    pub created_after: Option<DateTime<Utc>>,
    /// Only created before this.
    pub created_before: Option<DateTime<Utc>>,
    /// Only begun by this token's name.
    pub began_by: Option<&'a str>,
}

static DECIDED_TEXT: LazyLock<Vec<&'static str>> = LazyLock::new(|| statuses::texts(DECIDED));
static FINAL_BRANCH_TEXT: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| statuses::texts(&BranchStatus::ALL.iter().copied().filter(|b| b.is_final()).collect::<Vec<_>>()));

/// Filters of the list; `$1` status, `$2` mode, `$3` name prefix, `$4` xid
/// part, `$5` created after, `$6` created before, `$7` limit, `$8` began by
/// (`$9` cursor).
macro_rules! list_filters {
    () => {
        "($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR mode = $2) \
         AND ($3::text IS NULL OR starts_with(name, $3)) AND ($4::text IS NULL OR strpos(xid, $4) > 0) \
         AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6) \
         AND ($8::text IS NULL OR began_by = $8)"
    };
}

static IN_FLIGHT_BY_MODE: LazyLock<String> = LazyLock::new(|| {
    // Each half matches one partial index exactly.
    format!(
        "SELECT status, mode, count(*) AS n FROM global_transactions WHERE status IN ({}) GROUP BY status, mode \
         UNION ALL SELECT status, mode, count(*) FROM global_transactions WHERE status IN ({}) GROUP BY status, mode",
        in_list(UNDECIDED),
        in_list(&LEASED)
    )
});

static OLDEST_UNFINISHED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM (SELECT {cols} FROM global_transactions WHERE status IN ({}) \
         UNION ALL SELECT {cols} FROM global_transactions WHERE status IN ({})) t \
         ORDER BY created_at LIMIT $1",
        in_list(UNDECIDED),
        in_list(&LEASED),
        cols = tx_cols!()
    )
});

static NEEDING_ATTENTION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM (SELECT {cols} FROM global_transactions WHERE status IN ({}) \
         UNION ALL SELECT {cols} FROM global_transactions WHERE status IN ({}) AND attempts >= $2) t \
         ORDER BY xid DESC LIMIT $1",
        in_list(NEEDS_ATTENTION),
        in_list(&LEASED),
        cols = tx_cols!()
    )
});

impl Store {
    /// Writes event rows (one multi-row statement). Relaxed: a diagnostic.
    pub async fn insert_events(&self, rows: &[EventRow]) -> Result<(), StoreError> {
        let mut xids = Vec::with_capacity(rows.len());
        let mut ats = Vec::with_capacity(rows.len());
        let mut coordinators = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for r in rows {
            xids.push(r.xid.as_str());
            ats.push(r.at);
            coordinators.push(r.coordinator.as_str());
            events.push(serde_json::to_string(&r.events).map_err(|e| StoreError::Internal(e.to_string()))?);
        }
        self.timed(
            "insert_events",
            sqlx::query(
                "INSERT INTO tx_events (xid, at, coordinator, events) \
                 SELECT x, a, c, e::json FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[]) AS u(x, a, c, e)",
            )
            .bind(&xids)
            .bind(&ats)
            .bind(&coordinators)
            .bind(&events)
            .execute(&self.relaxed),
        )
        .await?;
        Ok(())
    }

    /// Adds ended-transaction counts of `coordinator` (one upsert).
    pub async fn add_minute_counts(&self, coordinator: &str, rows: &[MinuteRow]) -> Result<(), StoreError> {
        let minutes: Vec<DateTime<Utc>> = rows.iter().map(|r| r.minute).collect();
        let modes: Vec<&str> = rows.iter().map(|r| r.mode.as_str()).collect();
        let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
        let ns: Vec<i64> = rows.iter().map(|r| r.n).collect();
        self.timed(
            "add_minute_counts",
            sqlx::query(
                "INSERT INTO tx_minutes (minute, mode, outcome, coordinator, n) \
                 SELECT u.minute, u.mode, u.outcome, $5, u.n \
                 FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::bigint[]) AS u(minute, mode, outcome, n) \
                 ON CONFLICT (minute, mode, outcome, coordinator) DO UPDATE SET n = tx_minutes.n + excluded.n",
            )
            .bind(&minutes)
            .bind(&modes)
            .bind(&outcomes)
            .bind(&ns)
            .bind(coordinator)
            .execute(&self.relaxed),
        )
        .await?;
        Ok(())
    }

    /// Deletes up to `limit` event rows older than `before`; how many went.
    pub async fn delete_events_before(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        let done = self
            .timed(
                "delete_events_before",
                sqlx::query(
                    "DELETE FROM tx_events WHERE ctid = ANY(ARRAY(\
                     SELECT ctid FROM tx_events WHERE at < $1 LIMIT $2))",
                )
                .bind(before)
                .bind(limit)
                .execute(&self.relaxed),
            )
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes per-minute counts older than `before`.
    pub async fn delete_minutes_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = self
            .timed(
                "delete_minutes_before",
                sqlx::query("DELETE FROM tx_minutes WHERE minute < $1").bind(before).execute(&self.relaxed),
            )
            .await?;
        Ok(done.rows_affected())
    }

    /// The recorded events of `xid` (attempts, takeovers, operator actions)
    /// and its branches' registration times, each oldest first. A row that
    /// does not parse is left out (logged): the rest of the timeline still reads.
    pub async fn events_of(&self, xid: &Xid) -> Result<(Vec<TimelineEvent>, Vec<(String, DateTime<Utc>)>), StoreError> {
        let rows = self
            .timed(
                "events_of",
                sqlx::query("SELECT coordinator, events::text AS events FROM tx_events WHERE xid = $1 ORDER BY at")
                    .bind(xid.as_str())
                    .fetch_all(&self.relaxed),
            )
            .await?;
        let mut events = Vec::new();
        for r in &rows {
            let text: String = r.try_get("events")?;
            let coordinator: String = r.try_get("coordinator")?;
            match serde_json::from_str::<Vec<TimelineEvent>>(&text) {
                Ok(e) => events.extend(e.into_iter().map(|mut e| {
                    e.coordinator.get_or_insert_with(|| coordinator.clone());
                    e
                })),
                Err(e) => tracing::warn!(%xid, error = %e, "an event row does not parse; left out of the timeline"),
            }
        }
        let registered = self
            .timed(
                "branch_registrations",
                sqlx::query("SELECT branch_id, created_at FROM branches WHERE xid = $1 ORDER BY seq")
                    .bind(xid.as_str())
                    .fetch_all(&self.relaxed),
            )
            .await?;
        let mut regs = Vec::with_capacity(registered.len());
        for r in &registered {
            regs.push((r.try_get("branch_id")?, r.try_get("created_at")?));
        }
        Ok((events, regs))
    }

    /// A page of transactions matching `filter`, newest first, strictly
    /// older than `after`. The cursor is an index bound.
    pub async fn list_filtered(
        &self,
        filter: &TxFilter<'_>,
        limit: i64,
        after: Option<&Xid>,
    ) -> Result<Vec<TxRow>, StoreError> {
        let q = match after {
            Some(_) => sqlx::query_as::<_, TxRow>(concat!(
                "SELECT ",
                tx_cols!(),
                " FROM global_transactions WHERE xid < $9 AND ",
                list_filters!(),
                " ORDER BY xid DESC LIMIT $7"
            )),
            None => sqlx::query_as::<_, TxRow>(concat!(
                "SELECT ",
                tx_cols!(),
                " FROM global_transactions WHERE ",
                list_filters!(),
                " ORDER BY xid DESC LIMIT $7"
            )),
        };
        let q = q
            .bind(filter.status.map(GlobalStatus::as_str))
            .bind(filter.mode.map(Mode::as_str))
            .bind(filter.name_prefix)
            .bind(filter.xid_contains)
            .bind(filter.created_after)
            .bind(filter.created_before)
            .bind(limit)
            .bind(filter.began_by);
        let q = match after {
            Some(after) => q.bind(after.as_str()),
            None => q,
        };
        self.timed("list_filtered", q.fetch_all(&self.relaxed)).await
    }

    /// Unfinished transactions by status and mode.
    pub async fn in_flight_by_mode(&self) -> Result<Vec<(GlobalStatus, Mode, i64)>, StoreError> {
        let rows =
            self.timed("in_flight_by_mode", sqlx::query(IN_FLIGHT_BY_MODE.as_str()).fetch_all(&self.relaxed)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((parsed(r, "status")?, parsed(r, "mode")?, r.try_get("n")?));
        }
        Ok(out)
    }

    /// Ended transactions since `since`, by terminal status and mode.
    pub async fn ended_since(&self, since: DateTime<Utc>) -> Result<Vec<(GlobalStatus, Mode, i64)>, StoreError> {
        let rows = self
            .timed(
                "ended_since",
                sqlx::query(
                    "SELECT outcome, mode, sum(n)::bigint AS n FROM tx_minutes WHERE minute >= $1 \
                     GROUP BY outcome, mode ORDER BY outcome, mode",
                )
                .bind(since)
                .fetch_all(&self.relaxed),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((parsed(r, "outcome")?, parsed(r, "mode")?, r.try_get("n")?));
        }
        Ok(out)
    }

    /// Ended transactions per minute since `since`, by terminal status (all modes).
    pub async fn ended_per_minute(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, GlobalStatus, i64)>, StoreError> {
        let rows = self
            .timed(
                "ended_per_minute",
                sqlx::query(
                    "SELECT minute, outcome, sum(n)::bigint AS n FROM tx_minutes WHERE minute >= $1 \
                     GROUP BY minute, outcome ORDER BY minute",
                )
                .bind(since)
                .fetch_all(&self.relaxed),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((r.try_get("minute")?, parsed(r, "outcome")?, r.try_get("n")?));
        }
        Ok(out)
    }

    /// The oldest unfinished transactions.
    pub async fn oldest_unfinished(&self, limit: i64) -> Result<Vec<TxRow>, StoreError> {
        self.timed(
            "oldest_unfinished",
            sqlx::query_as::<_, TxRow>(OLDEST_UNFINISHED.as_str()).bind(limit).fetch_all(&self.relaxed),
        )
        .await
    }

    /// Transactions that need a person, newest first: ended in a status of
    /// [`NEEDS_ATTENTION`], or leased and retried [`STUCK_ATTEMPTS`] times or more.
    pub async fn needing_attention(&self, limit: i64) -> Result<Vec<TxRow>, StoreError> {
        self.timed(
            "needing_attention",
            sqlx::query_as::<_, TxRow>(NEEDING_ATTENTION.as_str())
                .bind(limit)
                .bind(STUCK_ATTEMPTS)
                .fetch_all(&self.relaxed),
        )
        .await
    }

    /// Global locks held, oldest first, and how many in all.
    pub async fn held_locks(&self, limit: i64) -> Result<(Vec<LockInfo>, i64), StoreError> {
        let rows = self
            .timed(
                "held_locks",
                sqlx::query(
                    "SELECT resource, lock_key, xid, branch_id, created_at FROM global_locks \
                     ORDER BY created_at, row_key LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.relaxed),
            )
            .await?;
        let mut locks = Vec::with_capacity(rows.len());
        for r in &rows {
            locks.push(LockInfo {
                resource: r.try_get("resource")?,
                lock_key: r.try_get("lock_key")?,
                xid: r.try_get("xid")?,
                branch_id: r.try_get("branch_id")?,
                since: r.try_get("created_at")?,
            });
        }
        let total: i64 = self
            .timed("count_locks", sqlx::query_scalar("SELECT count(*) FROM global_locks").fetch_one(&self.relaxed))
            .await?;
        Ok((locks, total))
    }

    /// Makes a decided, unfinished transaction due now with its backoff
    /// reset, unless a coordinator is driving it at this moment (its lease
    /// is live); records the operator's retry. `None`: not retried.
    pub async fn retry_now(&self, xid: &Xid, event: &TimelineEvent) -> Result<Option<TxRow>, StoreError> {
        let events = serde_json::to_string(&[event]).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.timed(
            "retry_now",
            sqlx::query_as::<_, TxRow>(concat!(
                "WITH t AS (UPDATE global_transactions SET next_attempt_at = now(), attempts = 0, owner = NULL \
                   WHERE xid = $1 AND status = ANY($2) AND (owner IS NULL OR next_attempt_at <= now()) \
                   RETURNING ",
                tx_cols!(),
                "), e AS (INSERT INTO tx_events (xid, at, coordinator, events) \
                   SELECT xid, now(), $3, $4::json FROM t) SELECT * FROM t"
            ))
            .bind(xid.as_str())
            .bind(&*DECIDED_TEXT)
            .bind(event.coordinator.as_deref().unwrap_or_default())
            .bind(events)
            .fetch_optional(&self.durable),
        )
        .await
    }

    /// Stops a decided, unfinished transaction: it ends `commit_failed`
    /// (decided commit) or `rollback_failed` (decided rollback), its
    /// unfinished branches too with `error` as their last error, whoever
    /// holds its lease (a driver's later writes are conditional on the
    /// status it saw, and change nothing). Global locks stay held, as for
    /// any failed branch. The operator's event is written by the same
    /// statement: durable. `None`: no such transaction, or not decided and
    /// unfinished.
    pub async fn stop(&self, xid: &Xid, error: &str, event: &TimelineEvent) -> Result<Option<TxRow>, StoreError> {
        let moves: Vec<(GlobalStatus, GlobalStatus)> = DECIDED
            .iter()
            .map(|&s| match s {
                GlobalStatus::RollingBack => (s, GlobalStatus::RollbackFailed),
                _ => (s, GlobalStatus::CommitFailed),
            })
            .collect();
        self.stop_moving(xid, &moves, error, event).await
    }

    /// [`Store::stop`] from any status of `moves` to its pair (the caller's
    /// policy: which statuses may be stopped and what each becomes).
    pub async fn stop_moving(
        &self,
        xid: &Xid,
        moves: &[(GlobalStatus, GlobalStatus)],
        error: &str,
        event: &TimelineEvent,
    ) -> Result<Option<TxRow>, StoreError> {
        let events = serde_json::to_string(&[event]).map_err(|e| StoreError::Internal(e.to_string()))?;
        let from: Vec<&str> = moves.iter().map(|(f, _)| f.as_str()).collect();
        let to: Vec<&str> = moves.iter().map(|(_, t)| t.as_str()).collect();
        self.timed(
            "stop",
            sqlx::query_as::<_, TxRow>(concat!(
                "WITH t AS (UPDATE global_transactions \
                       SET status = ($3::text[])[array_position($2::text[], status)], finished_at = now(), \
                           owner = NULL, next_attempt_at = NULL \
                       WHERE xid = $1 AND status = ANY($2) RETURNING ",
                tx_cols!(),
                "), b AS (UPDATE branches SET status = t.status, last_error = $4 FROM t \
                       WHERE branches.xid = t.xid AND branches.status <> ALL($5)), \
                     e AS (INSERT INTO tx_events (xid, at, coordinator, events) \
                       SELECT xid, now(), $6, $7::json FROM t) SELECT * FROM t"
            ))
            .bind(xid.as_str())
            .bind(&from)
            .bind(&to)
            .bind(error)
            .bind(&*FINAL_BRANCH_TEXT)
            .bind(event.coordinator.as_deref().unwrap_or_default())
            .bind(events)
            .fetch_optional(&self.durable),
        )
        .await
    }
}
