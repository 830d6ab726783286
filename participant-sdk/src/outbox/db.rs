//! Every SQL statement of the outbox, for PostgreSQL and MySQL/MariaDB. The
//! tables are [`crate::migrations::OUTBOX_POSTGRES`] /
//! [`crate::migrations::OUTBOX_MYSQL`].
//!
//! **Enqueue** takes the key's next sequence number by incrementing its row
//! of `tandem_outbox_key` (an upsert, which locks that row until the
//! business transaction ends), then inserts the message. Enqueues of one key
//! therefore commit in seq order: a message is visible only after every
//! earlier message of its key committed.
//!
//! **The relay's claim** takes the *heads*: due unsent messages with no
//! unsent message of lower seq in their key, locked `FOR UPDATE SKIP
//! LOCKED` (a head another relay holds is skipped). At most one message per
//! key qualifies, and a key's later messages cannot qualify while its head
//! is unsent: so no two relays ever publish messages of one key at once,
//! and none is published before its predecessor was confirmed. The head's
//! *followers* (its key's next unsent messages) are read in the same
//! transaction and published after it, in order; no other relay can claim
//! them either, since their head is unsent until this transaction commits.
//! Whether an earlier message is unsent is read from a snapshot, which is
//! safe: a message once sent stays sent, and (enqueue's lock) none of lower
//! seq can appear later.
//!
//! **PostgreSQL** claims in one statement: `FOR UPDATE` locks only the rows
//! of the outer query, not those the `NOT EXISTS` reads. **MySQL /
//! MariaDB** claim in two: the heads are found by a plain (consistent) read,
//! then locked by id with `FOR UPDATE SKIP LOCKED`, re-checking that they
//! are unsent (a locking read sees the latest committed version), so that
//! the subquery takes no locks. The relay's transaction runs at READ
//! COMMITTED there: REPEATABLE READ's next-key locks on the scanned ranges
//! would make the business transactions' enqueues wait for a relay that is
//! publishing.

use super::{OutboxTarget, Stored};
use async_trait::async_trait;
use sqlx::{MySql, MySqlConnection, PgConnection, Pool, Postgres, QueryBuilder, Transaction};
use std::time::Duration;

/// A message as enqueue writes it.
pub struct NewRow<'a> {
    pub message_id: &'a str,
    pub key: &'a str,
    pub target_kind: &'static str,
    pub target: &'a str,
    pub payload: &'a [u8],
    pub headers: &'a str,
}

/// A row as the relay reads it.
#[derive(sqlx::FromRow)]
pub struct Row {
    id: i64,
    message_id: String,
    ordering_key: String,
    seq: i64,
    target_kind: String,
    target: String,
    payload: Vec<u8>,
    headers: String,
    attempts: i32,
}

impl Row {
    /// The message, or why this row is not one the relay can publish (a row
    /// written by hand): it is then failed, and blocks its key, like any
    /// message that cannot be published.
    pub(crate) fn into_stored(self) -> Result<Stored, (i64, String)> {
        let target = match self.target_kind.as_str() {
            "http" => OutboxTarget::Http { url: self.target },
            "destination" => OutboxTarget::Destination { name: self.target },
            other => return Err((self.id, format!("unknown target kind {other:?}"))),
        };
        let headers: Vec<(String, String)> = serde_json::from_str(&self.headers)
            .map_err(|e| (self.id, format!("headers are not a JSON list of [name, value]: {e}")))?;
        Ok(Stored {
            id: self.id,
            message_id: self.message_id,
            key: self.ordering_key,
            seq: self.seq,
            target,
            payload: self.payload,
            headers,
            attempts: self.attempts,
        })
    }

    pub(crate) fn key(&self) -> &str {
        &self.ordering_key
    }

    pub(crate) fn seq(&self) -> i64 {
        self.seq
    }
}

/// Columns the relay reads (MySQL casts the binary-collated key to text).
const PG_COLUMNS: &str = "id, message_id, ordering_key, seq, target_kind, target, payload, headers, attempts";
const MYSQL_COLUMNS: &str =
    "id, message_id, CAST(ordering_key AS CHAR) AS ordering_key, seq, target_kind, target, payload, headers, attempts";

mod sealed {
    /// Only the SDK's databases implement [`super::OutboxDb`].
    pub trait Sealed {}
    impl Sealed for sqlx::Postgres {}
    impl Sealed for sqlx::MySql {}
}

/// A database the outbox runs on: [`sqlx::Postgres`] or [`sqlx::MySql`]
/// (MySQL 8 and MariaDB 10.6 or later). Sealed: the SQL is the SDK's.
#[async_trait]
pub trait OutboxDb: sqlx::Database + sealed::Sealed {
    /// Statements creating the outbox tables (idempotent): the file of
    /// `participant-sdk/migrations/` for this database.
    const DDL: &'static str;

    /// Runs [`OutboxDb::DDL`] on `pool` (on PostgreSQL serialized with every
    /// other SDK install on the server).
    async fn install(pool: &Pool<Self>) -> Result<(), sqlx::Error>;

    /// Inserts a message with its key's next seq, in the caller's
    /// transaction; returns the seq.
    #[doc(hidden)]
    async fn insert(conn: &mut Self::Connection, row: &NewRow<'_>) -> Result<i64, sqlx::Error>;

    /// Begins the relay's transaction.
    #[doc(hidden)]
    async fn begin_relay(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error>;

    /// Locks up to `limit` due heads (see the module docs), oldest first.
    #[doc(hidden)]
    async fn claim_heads(conn: &mut Self::Connection, limit: i64) -> Result<Vec<Row>, sqlx::Error>;

    /// The next `per_key` unsent messages after each `(key, seq)` head, in
    /// no particular order.
    #[doc(hidden)]
    async fn followers(
        conn: &mut Self::Connection,
        heads: &[(String, i64)],
        per_key: i64,
    ) -> Result<Vec<Row>, sqlx::Error>;

    /// Marks the messages sent (and counts their attempt).
    #[doc(hidden)]
    async fn mark_sent(conn: &mut Self::Connection, ids: &[i64]) -> Result<(), sqlx::Error>;

    /// Counts a failed attempt, keeps its error, and makes the message due
    /// again in `retry_in`.
    #[doc(hidden)]
    async fn mark_failed(
        conn: &mut Self::Connection,
        id: i64,
        error: &str,
        retry_in: Duration,
    ) -> Result<(), sqlx::Error>;

    /// Deletes up to `limit` messages sent more than `older_than` ago.
    #[doc(hidden)]
    async fn purge_sent(pool: &Pool<Self>, older_than: Duration, limit: i64) -> Result<u64, sqlx::Error>;

    /// Deletes up to `limit` key rows unused for `older_than` whose key has
    /// no message left.
    #[doc(hidden)]
    async fn purge_keys(pool: &Pool<Self>, older_than: Duration, limit: i64) -> Result<u64, sqlx::Error>;
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[async_trait]
impl OutboxDb for Postgres {
    const DDL: &'static str = crate::migrations::OUTBOX_POSTGRES;

    async fn install(pool: &Pool<Postgres>) -> Result<(), sqlx::Error> {
        crate::migrations::install_postgres(pool, Self::DDL).await
    }

    async fn insert(conn: &mut PgConnection, row: &NewRow<'_>) -> Result<i64, sqlx::Error> {
        // One statement: the key's row is incremented (and locked until the
        // caller's transaction ends), then the message takes its seq.
        sqlx::query_scalar(
            "WITH k AS ( \
               INSERT INTO tandem_outbox_key (ordering_key, last_seq) VALUES ($1, 1) \
               ON CONFLICT (ordering_key) DO UPDATE \
                 SET last_seq = tandem_outbox_key.last_seq + 1, updated_at = clock_timestamp() \
               RETURNING last_seq) \
             INSERT INTO tandem_outbox (message_id, ordering_key, seq, target_kind, target, payload, headers) \
             SELECT $2, $1, k.last_seq, $3, $4, $5, $6 FROM k \
             RETURNING seq",
        )
        .bind(row.key)
        .bind(row.message_id)
        .bind(row.target_kind)
        .bind(row.target)
        .bind(row.payload)
        .bind(row.headers)
        .fetch_one(conn)
        .await
    }

    async fn begin_relay(pool: &Pool<Postgres>) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        pool.begin().await
    }

    async fn claim_heads(conn: &mut PgConnection, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {PG_COLUMNS} FROM tandem_outbox m \
             WHERE m.sent_at IS NULL AND m.next_attempt_at <= now() \
               AND NOT EXISTS (SELECT 1 FROM tandem_outbox e \
                               WHERE e.ordering_key = m.ordering_key AND e.sent_at IS NULL AND e.seq < m.seq) \
             ORDER BY m.id LIMIT $1 \
             FOR UPDATE SKIP LOCKED"
        ))
        .bind(limit)
        .fetch_all(conn)
        .await
    }

    async fn followers(
        conn: &mut PgConnection,
        heads: &[(String, i64)],
        per_key: i64,
    ) -> Result<Vec<Row>, sqlx::Error> {
        let keys: Vec<&str> = heads.iter().map(|(k, _)| k.as_str()).collect();
        let seqs: Vec<i64> = heads.iter().map(|(_, s)| *s).collect();
        let columns = PG_COLUMNS.split(", ").map(|c| format!("f.{c}")).collect::<Vec<_>>().join(", ");
        sqlx::query_as(&format!(
            "SELECT {columns} FROM unnest($1::text[], $2::bigint[]) AS h(ordering_key, seq) \
             CROSS JOIN LATERAL ( \
               SELECT {PG_COLUMNS} FROM tandem_outbox m \
               WHERE m.ordering_key = h.ordering_key AND m.sent_at IS NULL AND m.seq > h.seq \
               ORDER BY m.seq LIMIT $3) f"
        ))
        .bind(keys)
        .bind(seqs)
        .bind(per_key)
        .fetch_all(conn)
        .await
    }

    async fn mark_sent(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE tandem_outbox SET sent_at = clock_timestamp(), attempts = attempts + 1, last_error = NULL \
             WHERE id = ANY($1)",
        )
        .bind(ids)
        .execute(conn)
        .await
        .map(|_| ())
    }

    async fn mark_failed(conn: &mut PgConnection, id: i64, error: &str, retry_in: Duration) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE tandem_outbox SET attempts = attempts + 1, last_error = $2, \
               next_attempt_at = clock_timestamp() + $3 * interval '1 millisecond' \
             WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(millis(retry_in))
        .execute(conn)
        .await
        .map(|_| ())
    }

    async fn purge_sent(pool: &Pool<Postgres>, older_than: Duration, limit: i64) -> Result<u64, sqlx::Error> {
        let r = sqlx::query(
            "DELETE FROM tandem_outbox WHERE id IN ( \
               SELECT id FROM tandem_outbox \
               WHERE sent_at IS NOT NULL AND sent_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
        )
        .bind(millis(older_than))
        .bind(limit)
        .execute(pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn purge_keys(pool: &Pool<Postgres>, older_than: Duration, limit: i64) -> Result<u64, sqlx::Error> {
        // An enqueue racing this delete either locked the key row first (it
        // then has a fresh updated_at, which the delete re-checks after
        // waiting) or waits for the delete and inserts the key anew.
        let r = sqlx::query(
            "DELETE FROM tandem_outbox_key WHERE ordering_key IN ( \
               SELECT k.ordering_key FROM tandem_outbox_key k \
               WHERE k.updated_at < now() - $1 * interval '1 millisecond' \
                 AND NOT EXISTS (SELECT 1 FROM tandem_outbox m WHERE m.ordering_key = k.ordering_key) \
               LIMIT $2) \
             AND updated_at < now() - $1 * interval '1 millisecond'",
        )
        .bind(millis(older_than))
        .bind(limit)
        .execute(pool)
        .await?;
        Ok(r.rows_affected())
    }
}

#[async_trait]
impl OutboxDb for MySql {
    const DDL: &'static str = crate::migrations::OUTBOX_MYSQL;

    async fn install(pool: &Pool<MySql>) -> Result<(), sqlx::Error> {
        // Over the text protocol: a migration file is a script. CREATE TABLE
        // IF NOT EXISTS is atomic on InnoDB, so no install lock is needed.
        sqlx::raw_sql(Self::DDL).execute(pool).await.map(|_| ())
    }

    async fn insert(conn: &mut MySqlConnection, row: &NewRow<'_>) -> Result<i64, sqlx::Error> {
        // The upsert locks the key's row until the caller's transaction
        // ends; LAST_INSERT_ID(expr) hands the new seq back in its answer.
        let r = sqlx::query(
            "INSERT INTO tandem_outbox_key (ordering_key, last_seq) VALUES (?, LAST_INSERT_ID(1)) \
             ON DUPLICATE KEY UPDATE last_seq = LAST_INSERT_ID(last_seq + 1), updated_at = NOW(6)",
        )
        .bind(row.key)
        .execute(&mut *conn)
        .await?;
        let seq = i64::try_from(r.last_insert_id()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO tandem_outbox (message_id, ordering_key, seq, target_kind, target, payload, headers) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.message_id)
        .bind(row.key)
        .bind(seq)
        .bind(row.target_kind)
        .bind(row.target)
        .bind(row.payload)
        .bind(row.headers)
        .execute(&mut *conn)
        .await?;
        Ok(seq)
    }

    async fn begin_relay(pool: &Pool<MySql>) -> Result<Transaction<'static, MySql>, sqlx::Error> {
        // SET TRANSACTION applies to the next transaction only: the pooled
        // connection goes back with the server's default.
        pool.begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION").await
    }

    async fn claim_heads(conn: &mut MySqlConnection, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT m.id FROM tandem_outbox m \
             WHERE m.sent_at IS NULL AND m.next_attempt_at <= NOW(6) \
               AND NOT EXISTS (SELECT 1 FROM tandem_outbox e \
                               WHERE e.ordering_key = m.ordering_key AND e.sent_at IS NULL AND e.seq < m.seq) \
             ORDER BY m.id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<MySql>::new(format!("SELECT {MYSQL_COLUMNS} FROM tandem_outbox WHERE id IN ("));
        let mut list = q.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        q.push(") AND sent_at IS NULL AND next_attempt_at <= NOW(6) ORDER BY id FOR UPDATE SKIP LOCKED");
        q.build_query_as().fetch_all(&mut *conn).await
    }

    async fn followers(
        conn: &mut MySqlConnection,
        heads: &[(String, i64)],
        per_key: i64,
    ) -> Result<Vec<Row>, sqlx::Error> {
        if heads.is_empty() {
            return Ok(Vec::new());
        }
        // One index range per key, in one round trip.
        let mut q = QueryBuilder::<MySql>::new("");
        for (i, (key, seq)) in heads.iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            q.push(format!("(SELECT {MYSQL_COLUMNS} FROM tandem_outbox WHERE ordering_key = "));
            q.push_bind(key.as_str());
            q.push(" AND sent_at IS NULL AND seq > ");
            q.push_bind(*seq);
            q.push(" ORDER BY seq LIMIT ");
            q.push_bind(per_key);
            q.push(")");
        }
        q.build_query_as().fetch_all(&mut *conn).await
    }

    async fn mark_sent(conn: &mut MySqlConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<MySql>::new(
            "UPDATE tandem_outbox SET sent_at = NOW(6), attempts = attempts + 1, last_error = NULL WHERE id IN (",
        );
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        q.push(")");
        q.build().execute(conn).await.map(|_| ())
    }

    async fn mark_failed(
        conn: &mut MySqlConnection,
        id: i64,
        error: &str,
        retry_in: Duration,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE tandem_outbox SET attempts = attempts + 1, last_error = ?, \
               next_attempt_at = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE id = ?",
        )
        .bind(error)
        .bind(micros(retry_in))
        .bind(id)
        .execute(conn)
        .await
        .map(|_| ())
    }

    async fn purge_sent(pool: &Pool<MySql>, older_than: Duration, limit: i64) -> Result<u64, sqlx::Error> {
        let r = sqlx::query(
            "DELETE FROM tandem_outbox WHERE sent_at IS NOT NULL AND sent_at < NOW(6) - INTERVAL ? MICROSECOND \
             ORDER BY sent_at LIMIT ?",
        )
        .bind(micros(older_than))
        .bind(limit)
        .execute(pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn purge_keys(pool: &Pool<MySql>, older_than: Duration, limit: i64) -> Result<u64, sqlx::Error> {
        // The delete reads the key rows with locks (their latest version):
        // one an enqueue just incremented has a fresh updated_at.
        let r = sqlx::query(
            "DELETE FROM tandem_outbox_key WHERE updated_at < NOW(6) - INTERVAL ? MICROSECOND \
               AND NOT EXISTS (SELECT 1 FROM tandem_outbox m WHERE m.ordering_key = tandem_outbox_key.ordering_key) \
             LIMIT ?",
        )
        .bind(micros(older_than))
        .bind(limit)
        .execute(pool)
        .await?;
        Ok(r.rows_affected())
    }
}
