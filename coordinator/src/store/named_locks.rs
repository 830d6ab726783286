//! Statements on `named_locks` and `named_lock_waiters` (the lock service,
//! `crate::locks`). No policy here: [`LockTx`] reads a lock and its queue
//! under the lock's row lock and performs the writes the service chose.
//! Every operation on one name takes that row lock first, so they are
//! serialized across coordinator processes. All on the durable pool: a
//! grant a client was told about survives a PostgreSQL crash, and so does
//! the token sequence behind it.

use super::{Store, StoreError};
use crate::locks::policy::{LockState, Waiter};
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row};
use tandem_wire::{LockName, LockOwner};

/// The channel grants to waiters are announced on; the payload is
/// `"{name} {owner}"` (neither contains a space).
pub const LOCK_CHANNEL: &str = "tandem_named_locks";

/// Longest queue read under one lock's row lock.
const MAX_QUEUE_READ: i64 = 10_000;

/// A grant as written: what the holder is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// The grant's fencing token.
    pub token: u64,
    /// The holder's holds.
    pub holds: u32,
    /// The lease asked for.
    pub ttl_ms: u64,
    /// End of the lease.
    pub expires_at: DateTime<Utc>,
    /// What is left of the lease at the statement's `now()`.
    pub remaining_ms: u64,
}

/// What every statement that answers a grant returns.
macro_rules! grant_cols {
    () => {
        "token, holds, ttl_ms, expires_at, \
         greatest(0, floor(extract(epoch FROM expires_at - now()) * 1000))::bigint AS remaining_ms"
    };
}

fn grant_row(r: &sqlx::postgres::PgRow) -> Result<GrantRow, StoreError> {
    Ok(GrantRow {
        token: u64::try_from(r.try_get::<i64, _>("token")?).unwrap_or(0),
        holds: u32::try_from(r.try_get::<i32, _>("holds")?).unwrap_or(0),
        ttl_ms: u64::try_from(r.try_get::<i64, _>("ttl_ms")?).unwrap_or(0),
        expires_at: r.try_get("expires_at")?,
        remaining_ms: u64::try_from(r.try_get::<i64, _>("remaining_ms")?).unwrap_or(0),
    })
}

fn owner_of(r: &sqlx::postgres::PgRow, col: &str) -> Result<Option<LockOwner>, StoreError> {
    match r.try_get::<Option<String>, _>(col)? {
        Some(s) => LockOwner::parse(s)
            .map(Some)
            .map_err(|e| StoreError::Internal(format!("stored lock owner is invalid: {e}"))),
        None => Ok(None),
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A held or waited-for lock, for operators.
#[derive(Debug, Clone)]
pub struct ActiveLock {
    /// The lock.
    pub name: LockName,
    /// Its holder with a running lease.
    pub owner: Option<LockOwner>,
    /// Its holds.
    pub holds: u32,
    /// The current or last grant's token.
    pub token: u64,
    /// When the current grant was made.
    pub granted_at: Option<DateTime<Utc>>,
    /// When the lease ends.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A waiter, for operators.
#[derive(Debug, Clone)]
pub struct QueuedWaiter {
    /// The lock.
    pub name: LockName,
    /// Who waits.
    pub owner: LockOwner,
    /// The lease asked for.
    pub ttl_ms: u64,
    /// When it joined.
    pub since: DateTime<Utc>,
    /// Until when its place is kept.
    pub keep_until: DateTime<Utc>,
}

impl Store {
    /// The one-statement acquire: a new grant of a free lock nobody waits
    /// for (or whose lease ended), or a re-entry by its holder; `None` when
    /// neither applies (the service takes the queued path). The conditions
    /// read only the row itself, which the upsert has locked, so they see
    /// every committed change to it.
    pub async fn lock_fast(
        &self,
        name: &LockName,
        owner: &LockOwner,
        ttl_ms: u64,
    ) -> Result<Option<GrantRow>, StoreError> {
        let r = self
            .timed(
                "lock_fast",
                sqlx::query(concat!(
                    "INSERT INTO named_locks AS l (name, owner, holds, token, granted_at, expires_at, ttl_ms, claimed, waiting) \
                     VALUES ($1, $2, 1, nextval('named_lock_tokens'), now(), now() + $3 * interval '1 millisecond', $3, true, 0) \
                     ON CONFLICT (name) DO UPDATE SET \
                       holds = CASE WHEN l.owner = $2 AND l.expires_at > now() THEN l.holds + 1 ELSE 1 END, \
                       token = CASE WHEN l.owner = $2 AND l.expires_at > now() THEN l.token \
                                    ELSE nextval('named_lock_tokens') END, \
                       granted_at = CASE WHEN l.owner = $2 AND l.expires_at > now() THEN l.granted_at ELSE now() END, \
                       expires_at = CASE WHEN l.owner = $2 AND l.expires_at > now() \
                                         THEN greatest(l.expires_at, excluded.expires_at) ELSE excluded.expires_at END, \
                       ttl_ms = excluded.ttl_ms, owner = $2, claimed = true \
                     WHERE (l.owner = $2 AND l.expires_at > now() AND l.claimed) \
                        OR ((l.owner IS NULL OR l.expires_at <= now()) AND l.waiting = 0) \
                     RETURNING ",
                    grant_cols!()
                ))
                .bind(name.as_str())
                .bind(owner.as_str())
                .bind(ms(ttl_ms))
                .fetch_optional(&self.durable),
            )
            .await?;
        r.as_ref().map(grant_row).transpose()
    }

    /// Extends `owner`'s running lease of `name` to `ttl_ms` from now; `None`
    /// if it does not hold it (an ended lease is not renewed: the holder
    /// must know it was unprotected).
    pub async fn lock_renew(
        &self,
        name: &LockName,
        owner: &LockOwner,
        ttl_ms: u64,
    ) -> Result<Option<GrantRow>, StoreError> {
        let r = self
            .timed(
                "lock_renew",
                sqlx::query(concat!(
                    "UPDATE named_locks SET ttl_ms = $3, \
                       expires_at = greatest(expires_at, now() + $3 * interval '1 millisecond') \
                     WHERE name = $1 AND owner = $2 AND expires_at > now() AND claimed \
                     RETURNING ",
                    grant_cols!()
                ))
                .bind(name.as_str())
                .bind(owner.as_str())
                .bind(ms(ttl_ms))
                .fetch_optional(&self.durable),
            )
            .await?;
        r.as_ref().map(grant_row).transpose()
    }

    /// Starts a transaction on `name` and takes its row lock; `None` if the
    /// lock has no row (never used, or deleted as idle).
    pub async fn lock_tx(&self, name: &LockName) -> Result<Option<(LockTx, LockState)>, StoreError> {
        let mut tx = self.timed("lock_begin", self.durable.begin()).await?;
        let row = self
            .timed(
                "lock_state",
                sqlx::query(
                    "SELECT owner, holds, claimed, expires_at > now() AS live, \
                            greatest(0, ceil(extract(epoch FROM expires_at - now()) * 1000))::bigint AS left_ms \
                     FROM named_locks WHERE name = $1 FOR UPDATE",
                )
                .bind(name.as_str())
                .fetch_optional(&mut *tx),
            )
            .await?;
        let Some(r) = row else { return Ok(None) };
        let state = LockState {
            owner: owner_of(&r, "owner")?,
            holds: u32::try_from(r.try_get::<i32, _>("holds")?).unwrap_or(0),
            live: r.try_get("live")?,
            claimed: r.try_get("claimed")?,
            left_ms: u64::try_from(r.try_get::<i64, _>("left_ms")?).unwrap_or(0),
        };
        Ok(Some((LockTx { store: self.clone(), tx, name: name.clone() }, state)))
    }

    /// Names of locks with a queue whose holder's lease ended (or that are
    /// free): the reaper settles them.
    pub async fn locks_to_settle(&self, limit: i64) -> Result<Vec<LockName>, StoreError> {
        let names: Vec<String> = self
            .timed(
                "locks_to_settle",
                sqlx::query_scalar(
                    "SELECT name FROM named_locks WHERE waiting > 0 AND expires_at <= now() \
                     ORDER BY expires_at LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.durable),
            )
            .await?;
        Ok(names.into_iter().filter_map(|n| LockName::parse(n).ok()).collect())
    }

    /// Deletes up to `limit` lock rows that have been idle (free, or with an
    /// ended lease, and nobody waiting) for `idle_ms`. Safe: tokens come
    /// from one sequence, so a name's next grant still gets a higher one.
    pub async fn delete_idle_locks(&self, idle_ms: u64, limit: i64) -> Result<u64, StoreError> {
        let r = self
            .timed(
                "delete_idle_locks",
                sqlx::query(
                    "DELETE FROM named_locks WHERE name IN (SELECT name FROM named_locks \
                       WHERE waiting = 0 AND expires_at < now() - $1 * interval '1 millisecond' \
                       ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                )
                .bind(ms(idle_ms))
                .bind(limit)
                .execute(&self.durable),
            )
            .await?;
        Ok(r.rows_affected())
    }

    /// Locks held (with a running lease) or waited for, by name, and their
    /// number in all; with the queues of those listed, in order.
    pub async fn active_locks(&self, limit: i64) -> Result<(Vec<ActiveLock>, Vec<QueuedWaiter>, i64), StoreError> {
        let rows = self
            .timed(
                "active_locks",
                sqlx::query(
                    "SELECT name, CASE WHEN expires_at > now() THEN owner END AS owner, \
                            CASE WHEN expires_at > now() THEN holds ELSE 0 END AS holds, token, \
                            CASE WHEN expires_at > now() AND owner IS NOT NULL THEN granted_at END AS granted_at, \
                            CASE WHEN expires_at > now() AND owner IS NOT NULL THEN expires_at END AS expires_at \
                     FROM named_locks WHERE (owner IS NOT NULL OR waiting > 0) \
                       AND (expires_at > now() OR waiting > 0) ORDER BY name LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.durable),
            )
            .await?;
        let total: i64 = self
            .timed(
                "active_locks_count",
                sqlx::query_scalar(
                    "SELECT count(*) FROM named_locks WHERE (owner IS NOT NULL OR waiting > 0) \
                       AND (expires_at > now() OR waiting > 0)",
                )
                .fetch_one(&self.durable),
            )
            .await?;
        let mut locks = Vec::with_capacity(rows.len());
        for r in &rows {
            let name: String = r.try_get("name")?;
            locks.push(ActiveLock {
                name: LockName::parse(name).map_err(|e| StoreError::Internal(format!("stored lock name: {e}")))?,
                owner: owner_of(r, "owner")?,
                holds: u32::try_from(r.try_get::<i32, _>("holds")?).unwrap_or(0),
                token: u64::try_from(r.try_get::<i64, _>("token")?).unwrap_or(0),
                granted_at: r.try_get("granted_at")?,
                expires_at: r.try_get("expires_at")?,
            });
        }
        let names: Vec<&str> = locks.iter().map(|l| l.name.as_str()).collect();
        let rows = self
            .timed(
                "active_lock_waiters",
                sqlx::query(
                    "SELECT name, owner, ttl_ms, enqueued_at, alive_until FROM named_lock_waiters \
                     WHERE name = ANY($1) AND alive_until > now() ORDER BY name, id",
                )
                .bind(&names)
                .fetch_all(&self.durable),
            )
            .await?;
        let mut waiters = Vec::with_capacity(rows.len());
        for r in &rows {
            let name: String = r.try_get("name")?;
            waiters.push(QueuedWaiter {
                name: LockName::parse(name).map_err(|e| StoreError::Internal(format!("stored lock name: {e}")))?,
                owner: owner_of(r, "owner")?.ok_or_else(|| StoreError::Internal("waiter without owner".into()))?,
                ttl_ms: u64::try_from(r.try_get::<i64, _>("ttl_ms")?).unwrap_or(0),
                since: r.try_get("enqueued_at")?,
                keep_until: r.try_get("alive_until")?,
            });
        }
        Ok((locks, waiters, total))
    }
}

/// A database transaction holding one lock's row lock: reads its queue and
/// performs the service's writes, then commits (or rolls back on drop).
pub struct LockTx {
    /// For timings.
    store: Store,
    /// The transaction, holding the row lock.
    tx: sqlx::Transaction<'static, Postgres>,
    /// The lock.
    name: LockName,
}

impl LockTx {
    /// The queue, first in first, with whether each waiter's place is still kept.
    pub async fn queue(&mut self) -> Result<Vec<Waiter>, StoreError> {
        let rows = self
            .store
            .timed(
                "lock_queue",
                sqlx::query(
                    "SELECT id, owner, ttl_ms, alive_until > now() AS alive FROM named_lock_waiters \
                     WHERE name = $1 ORDER BY id LIMIT $2",
                )
                .bind(self.name.as_str())
                .bind(MAX_QUEUE_READ)
                .fetch_all(&mut *self.tx),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Waiter {
                    id: r.try_get("id")?,
                    owner: owner_of(r, "owner")?.ok_or_else(|| StoreError::Internal("waiter without owner".into()))?,
                    ttl_ms: u64::try_from(r.try_get::<i64, _>("ttl_ms")?).unwrap_or(0),
                    alive: r.try_get("alive")?,
                })
            })
            .collect()
    }

    /// Deletes the queue rows `ids` and keeps the lock's waiter count.
    pub async fn delete_waiters(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.store
            .timed(
                "lock_delete_waiters",
                sqlx::query(
                    "WITH d AS (DELETE FROM named_lock_waiters WHERE name = $1 AND id = ANY($2) RETURNING 1) \
                     UPDATE named_locks SET waiting = waiting - (SELECT count(*) FROM d) WHERE name = $1",
                )
                .bind(self.name.as_str())
                .bind(ids)
                .execute(&mut *self.tx),
            )
            .await?;
        Ok(())
    }

    /// Deletes `owner`'s queue row, if it has one.
    pub async fn leave_queue(&mut self, owner: &LockOwner) -> Result<(), StoreError> {
        self.store
            .timed(
                "lock_leave_queue",
                sqlx::query(
                    "WITH d AS (DELETE FROM named_lock_waiters WHERE name = $1 AND owner = $2 RETURNING 1) \
                     UPDATE named_locks SET waiting = waiting - (SELECT count(*) FROM d) WHERE name = $1",
                )
                .bind(self.name.as_str())
                .bind(owner.as_str())
                .execute(&mut *self.tx),
            )
            .await?;
        Ok(())
    }

    /// Queues `owner` (or keeps its place), its place kept for `keep_ms`.
    pub async fn join_queue(&mut self, owner: &LockOwner, ttl_ms: u64, keep_ms: u64) -> Result<(), StoreError> {
        self.store
            .timed(
                "lock_join_queue",
                sqlx::query(
                    "WITH w AS (INSERT INTO named_lock_waiters (name, owner, ttl_ms, alive_until) \
                                VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') \
                                ON CONFLICT (name, owner) DO UPDATE \
                                  SET alive_until = excluded.alive_until, ttl_ms = excluded.ttl_ms \
                                RETURNING (xmax = 0) AS inserted) \
                     UPDATE named_locks SET waiting = waiting + (SELECT count(*) FROM w WHERE inserted) WHERE name = $1",
                )
                .bind(self.name.as_str())
                .bind(owner.as_str())
                .bind(ms(ttl_ms))
                .bind(ms(keep_ms))
                .execute(&mut *self.tx),
            )
            .await?;
        Ok(())
    }

    /// A new grant to `owner` with a fresh token; `Claimed::No` for a
    /// waiter whose acquire has yet to answer it.
    pub async fn grant(&mut self, owner: &LockOwner, ttl_ms: u64, claimed: Claimed) -> Result<GrantRow, StoreError> {
        let r = self
            .store
            .timed(
                "lock_grant",
                sqlx::query(concat!(
                    "UPDATE named_locks SET owner = $2, holds = 1, token = nextval('named_lock_tokens'), \
                       granted_at = now(), expires_at = now() + $5 * interval '1 millisecond', ttl_ms = $3, claimed = $4 \
                     WHERE name = $1 RETURNING ",
                    grant_cols!()
                ))
                .bind(self.name.as_str())
                .bind(owner.as_str())
                .bind(ms(ttl_ms))
                .bind(claimed == Claimed::Yes)
                .bind(ms(match claimed {
                    Claimed::Yes => ttl_ms,
                    Claimed::No { keep_ms } => keep_ms.min(ttl_ms),
                }))
                .fetch_one(&mut *self.tx),
            )
            .await?;
        grant_row(&r)
    }

    /// One more hold for the holder, its lease extended to `ttl_ms` from now if that is later.
    pub async fn add_hold(&mut self, ttl_ms: u64) -> Result<GrantRow, StoreError> {
        let r = self
            .store
            .timed(
                "lock_add_hold",
                sqlx::query(concat!(
                    "UPDATE named_locks SET holds = holds + 1, ttl_ms = $2, \
                       expires_at = greatest(expires_at, now() + $2 * interval '1 millisecond') \
                     WHERE name = $1 RETURNING ",
                    grant_cols!()
                ))
                .bind(self.name.as_str())
                .bind(ms(ttl_ms))
                .fetch_one(&mut *self.tx),
            )
            .await?;
        grant_row(&r)
    }

    /// Marks a handed-over grant as answered, its lease now the whole
    /// `ttl_ms` the waiter asked for (until then it was kept short: see
    /// [`Claimed::No`]), and returns it.
    pub async fn claim(&mut self) -> Result<GrantRow, StoreError> {
        let r = self
            .store
            .timed(
                "lock_claim",
                sqlx::query(concat!(
                    "UPDATE named_locks SET claimed = true, \
                       expires_at = greatest(expires_at, now() + ttl_ms * interval '1 millisecond') \
                     WHERE name = $1 RETURNING ",
                    grant_cols!()
                ))
                .bind(self.name.as_str())
                .fetch_one(&mut *self.tx),
            )
            .await?;
        grant_row(&r)
    }

    /// Sets the holder's holds to `holds` (a release that is not the last).
    pub async fn set_holds(&mut self, holds: u32) -> Result<(), StoreError> {
        self.store
            .timed(
                "lock_set_holds",
                sqlx::query("UPDATE named_locks SET holds = $2 WHERE name = $1")
                    .bind(self.name.as_str())
                    .bind(i32::try_from(holds).unwrap_or(i32::MAX))
                    .execute(&mut *self.tx),
            )
            .await?;
        Ok(())
    }

    /// Frees the lock (its row stays: it carries the last token and the queue count).
    pub async fn free(&mut self) -> Result<(), StoreError> {
        self.store
            .timed(
                "lock_free",
                sqlx::query(
                    "UPDATE named_locks SET owner = NULL, holds = 0, claimed = true, expires_at = now() WHERE name = $1",
                )
                .bind(self.name.as_str())
                .execute(&mut *self.tx),
            )
            .await?;
        Ok(())
    }

    /// Announces, on commit, that `owner` was handed the lock: only the
    /// coordinator process serving that waiter's request wakes it.
    pub async fn notify(&mut self, owner: &LockOwner) -> Result<(), StoreError> {
        let payload = format!("{} {}", self.name, owner);
        self.store
            .timed(
                "lock_notify",
                sqlx::query("SELECT pg_notify($1, $2)").bind(LOCK_CHANNEL).bind(payload).execute(&mut *self.tx),
            )
            .await?;
        Ok(())
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.store.timed("lock_commit", self.tx.commit()).await
    }
}

/// Whether a grant has been answered to its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// Its acquire answered it (a grant to the requester itself).
    Yes,
    /// Handed to a waiter; its acquire claims it. Until then its lease is
    /// at most `keep_ms`, so that a waiter that has gone away holds the
    /// lock no longer than its place would have been kept.
    No {
        /// The lease until claimed.
        keep_ms: u64,
    },
}

impl Store {
    /// A connection listening on [`LOCK_CHANNEL`] (its own, out of the pool).
    pub async fn lock_listener(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        let mut l = sqlx::postgres::PgListener::connect_with(&self.durable).await?;
        l.listen(LOCK_CHANNEL).await?;
        Ok(l)
    }
}
