//! Reads of transactions and branches (relaxed pool: a read never decides).

use super::rows::{branch_cols, branch_cols_b, tx_cols, BranchRow, TxRow};
use super::{Store, StoreError};
use sqlx::{FromRow, Row};
use std::collections::HashMap;
use tandem_wire::Xid;

/// Parses rows of a transaction joined with its branches (`b_` columns).
pub(super) fn tx_with_branches(rows: &[sqlx::postgres::PgRow]) -> Result<Option<(TxRow, Vec<BranchRow>)>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let tx = TxRow::from_row(first)?;
    let mut branches = Vec::with_capacity(rows.len());
    for r in rows {
        if r.try_get::<Option<String>, _>("b_branch_id")?.is_some() {
            branches.push(BranchRow::from_prefixed(r, "b_")?);
        }
    }
    Ok(Some((tx, branches)))
}

impl Store {
    /// The transaction begun with this idempotency key.
    pub async fn transaction_by_idempotency_key(&self, key: &str) -> Result<Option<TxRow>, StoreError> {
        self.timed(
            "transaction_by_idempotency_key",
            sqlx::query_as::<_, TxRow>(concat!(
                "SELECT ",
                tx_cols!(),
                " FROM global_transactions WHERE idempotency_key = $1"
            ))
            .bind(key)
            .fetch_optional(&self.relaxed),
        )
        .await
    }

    /// One transaction row.
    pub async fn transaction(&self, xid: &Xid) -> Result<Option<TxRow>, StoreError> {
        self.timed(
            "transaction",
            sqlx::query_as::<_, TxRow>(concat!("SELECT ", tx_cols!(), " FROM global_transactions WHERE xid = $1"))
                .bind(xid.as_str())
                .fetch_optional(&self.relaxed),
        )
        .await
    }

    /// Branches of one transaction in registration order.
    pub async fn branches(&self, xid: &Xid) -> Result<Vec<BranchRow>, StoreError> {
        self.timed(
            "branches",
            sqlx::query_as::<_, BranchRow>(concat!(
                "SELECT ",
                branch_cols!(),
                " FROM branches WHERE xid = $1 ORDER BY seq"
            ))
            .bind(xid.as_str())
            .fetch_all(&self.relaxed),
        )
        .await
    }

    /// Branches of several transactions, grouped by xid, each in registration order.
    pub async fn branches_of(&self, xids: &[Xid]) -> Result<HashMap<Xid, Vec<BranchRow>>, StoreError> {
        if xids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = xids.iter().map(Xid::as_str).collect();
        let rows = self
            .timed(
                "branches_of",
                sqlx::query_as::<_, BranchRow>(concat!(
                    "SELECT ",
                    branch_cols!(),
                    " FROM branches WHERE xid = ANY($1) ORDER BY xid, seq"
                ))
                .bind(&ids)
                .fetch_all(&self.relaxed),
            )
            .await?;
        let mut map: HashMap<Xid, Vec<BranchRow>> = HashMap::new();
        for r in rows {
            map.entry(r.xid.clone()).or_default().push(r);
        }
        Ok(map)
    }

    /// The transaction and its branches (registration order), read in one statement.
    pub async fn transaction_with_branches(&self, xid: &Xid) -> Result<Option<(TxRow, Vec<BranchRow>)>, StoreError> {
        let rows = self
            .timed(
                "transaction_with_branches",
                sqlx::query(concat!(
                    "SELECT t.*, ",
                    branch_cols_b!(),
                    " FROM (SELECT ",
                    tx_cols!(),
                    " FROM global_transactions WHERE xid = $1) t \
                     LEFT JOIN branches b ON b.xid = t.xid ORDER BY b.seq"
                ))
                .bind(xid.as_str())
                .fetch_all(&self.relaxed),
            )
            .await?;
        tx_with_branches(&rows)
    }
}
