//! Recovery's statements: deadlines, due retries and expired leases, and the
//! in-flight counts.
//!
//! Their status predicates are literal (written from the Rust sets by
//! [`in_list`]): each must match a partial index's predicate, which a generic
//! plan can only use for a literal.

use super::rows::{parsed, tx_cols, TxRow};
use super::sql::{in_list, ms};
use super::{Store, StoreError};
use crate::transaction::state::Transition;
use crate::transaction::statuses::{LEASED, UNDECIDED};
use sqlx::{FromRow, Row};
use std::sync::LazyLock;
use std::time::Duration;
use tandem_wire::{GlobalStatus, RollbackReason, Xid};

static CLAIM_EXPIRED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE global_transactions SET status = $4, rollback_reason = $5, \
                decided_at = now(), owner = $1, next_attempt_at = now() + $2 * interval '1 millisecond' \
         WHERE xid IN (SELECT xid FROM global_transactions WHERE status IN ({}) AND deadline <= now() \
                       ORDER BY deadline LIMIT $3 FOR UPDATE SKIP LOCKED) AND status = $6 RETURNING {}",
        in_list(UNDECIDED),
        tx_cols!()
    )
});

static CLAIM_DUE: LazyLock<String> = LazyLock::new(|| {
    // `p` names its columns apart from the table's, so that the returned
    // columns (unqualified in tx_cols) are the updated row's.
    format!(
        "UPDATE global_transactions SET owner = $1, next_attempt_at = now() + $2 * interval '1 millisecond' \
         FROM (SELECT xid AS claimed_xid, owner AS previous_owner FROM global_transactions \
               WHERE status IN ({}) AND next_attempt_at <= now() \
               ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) p \
         WHERE xid = p.claimed_xid RETURNING {}, p.previous_owner",
        in_list(&LEASED),
        tx_cols!()
    )
});

static CLAIM_ONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE global_transactions SET owner = $2, next_attempt_at = now() + $3 * interval '1 millisecond' \
         WHERE xid = $1 AND status IN ({}) AND next_attempt_at <= now() RETURNING {}",
        in_list(&LEASED),
        tx_cols!()
    )
});

static IN_FLIGHT_COUNTS: LazyLock<String> = LazyLock::new(|| {
    // Each half matches one partial index exactly.
    format!(
        "SELECT status, count(*) AS n FROM global_transactions WHERE status IN ({}) GROUP BY status \
         UNION ALL SELECT status, count(*) FROM global_transactions WHERE status IN ({}) GROUP BY status",
        in_list(UNDECIDED),
        in_list(&LEASED)
    )
});

impl Store {
    /// Decides rollback (`timeout`) for up to `limit` active transactions past
    /// their deadline, leased to `owner`. Rows locked by a concurrent
    /// registration or decision are skipped this round. Durable: a decision.
    pub async fn claim_expired(&self, owner: &str, lease: Duration, limit: i64) -> Result<Vec<TxRow>, StoreError> {
        let t = Transition::ROLLBACK;
        self.timed(
            "claim_expired",
            sqlx::query_as::<_, TxRow>(CLAIM_EXPIRED.as_str())
                .bind(owner)
                .bind(ms(lease))
                .bind(limit)
                .bind(t.to().as_str())
                .bind(RollbackReason::Timeout.as_str())
                .bind(t.from().as_str())
                .fetch_all(&self.durable),
        )
        .await
    }

    /// Leases up to `limit` leased-status transactions (decided and
    /// unfinished, or in a phase before the decision) whose lease has
    /// expired or whose retry is due, each with the coordinator whose lease
    /// expired (`None`: its last pass had released it, scheduling a retry).
    /// `FOR UPDATE SKIP LOCKED` keeps two coordinators from taking the same
    /// one. Relaxed: a lost lease write only means it is taken again.
    pub async fn claim_due(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<(TxRow, Option<String>)>, StoreError> {
        let rows = self
            .timed(
                "claim_due",
                sqlx::query(CLAIM_DUE.as_str()).bind(owner).bind(ms(lease)).bind(limit).fetch_all(&self.relaxed),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((TxRow::from_row(r)?, r.try_get("previous_owner")?));
        }
        Ok(out)
    }

    /// Leases one transaction that is due (an operator's retry), unless a
    /// recovery scan took it first. Relaxed, as [`Store::claim_due`].
    pub async fn claim_one(&self, xid: &Xid, owner: &str, lease: Duration) -> Result<Option<TxRow>, StoreError> {
        self.timed(
            "claim_one",
            sqlx::query_as::<_, TxRow>(CLAIM_ONE.as_str())
                .bind(xid.as_str())
                .bind(owner)
                .bind(ms(lease))
                .fetch_optional(&self.relaxed),
        )
        .await
    }

    /// Count of non-terminal transactions by status (statuses without any
    /// are left out).
    pub async fn in_flight_counts(&self) -> Result<Vec<(GlobalStatus, i64)>, StoreError> {
        let rows =
            self.timed("in_flight_counts", sqlx::query(IN_FLIGHT_COUNTS.as_str()).fetch_all(&self.relaxed)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((parsed(r, "status")?, r.try_get("n")?));
        }
        Ok(out)
    }
}
