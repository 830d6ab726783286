//! A message's statement: its insert, prepared, with every delivery. (Its
//! later writes are the generic ones: the decision, phase 2, the end.)

use super::rows::{tx_cols, BranchRow, TxRow};
use super::{Store, StoreError};
use crate::dtm::DtmOptions;
use tandem_wire::{BranchId, BranchStatus, DeliveryOrder, GlobalStatus, Mode, Xid};

/// A prepared message to insert.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Fresh xid.
    pub xid: Xid,
    /// Optional name.
    pub name: Option<String>,
    /// Timeout in ms: the first back-check comes then.
    pub timeout_ms: u64,
    /// Optional client idempotency key.
    pub idempotency_key: Option<String>,
    /// The producer's back-check endpoint.
    pub check_url: String,
    /// The name of the token that began it (none: authentication off).
    pub began_by: Option<String>,
    /// The deliveries' order.
    pub order: DeliveryOrder,
    /// The deliveries, in list order.
    pub deliveries: Vec<NewDelivery>,
    /// Prepared through DTM's protocol: its options.
    pub dtm: Option<DtmOptions>,
}

/// One delivery of a [`NewMessage`].
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Fresh branch id.
    pub branch_id: BranchId,
    /// Delivery name (the branch's resource).
    pub resource: String,
    /// The HTTP endpoint, or empty for a broker delivery.
    pub url: String,
    /// The broker destination, for a broker delivery.
    pub destination: Option<String>,
    /// The payload.
    pub payload: Option<serde_json::Value>,
}

impl Store {
    /// Inserts a message `prepared` with its deliveries, in one durable
    /// statement: on disk before the producer's local transaction runs.
    /// Nobody holds it; its `next_attempt_at` is its deadline, when the
    /// recovery worker takes it for a back-check unless it was submitted or
    /// aborted. `None` if the idempotency key is taken (the caller reads
    /// that transaction).
    pub async fn insert_message(&self, m: &NewMessage) -> Result<Option<(TxRow, Vec<BranchRow>)>, StoreError> {
        let ids: Vec<&str> = m.deliveries.iter().map(|d| d.branch_id.as_str()).collect();
        let resources: Vec<&str> = m.deliveries.iter().map(|d| d.resource.as_str()).collect();
        let urls: Vec<&str> = m.deliveries.iter().map(|d| d.url.as_str()).collect();
        let destinations: Vec<Option<&str>> = m.deliveries.iter().map(|d| d.destination.as_deref()).collect();
        let payloads: Vec<Option<&serde_json::Value>> = m.deliveries.iter().map(|d| d.payload.as_ref()).collect();
        let n = i32::try_from(m.deliveries.len()).unwrap_or(i32::MAX);
        let q = sqlx::query_as::<_, TxRow>(concat!(
            "WITH t AS (INSERT INTO global_transactions (xid, mode, name, status, timeout_ms, deadline, \
                            idempotency_key, next_attempt_at, check_url, delivery_order, branch_count, \
                            branches_unprepared, began_by, dtm) \
                        VALUES ($1, $2, $3, $4, $5, now() + $5 * interval '1 millisecond', $6, \
                                now() + $5 * interval '1 millisecond', $7, $8, $9, $9, $16, $17) \
                        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING *), \
             b AS (INSERT INTO branches (xid, branch_id, resource, callback_url, status, payload, destination) \
                   SELECT t.xid, d.branch_id, d.resource, d.url, $10, d.payload, d.destination \
                   FROM t, unnest($11::text[], $12::text[], $13::text[], $14::jsonb[], $15::text[]) WITH ORDINALITY \
                        AS d(branch_id, resource, url, payload, destination, ord) \
                   ORDER BY d.ord) \
             SELECT ",
            tx_cols!(),
            " FROM t"
        ))
        .bind(m.xid.as_str())
        .bind(Mode::Msg.as_str())
        .bind(m.name.as_deref())
        .bind(GlobalStatus::Prepared.as_str())
        .bind(i64::try_from(m.timeout_ms).unwrap_or(i64::MAX))
        .bind(m.idempotency_key.as_deref())
        .bind(&m.check_url)
        .bind(m.order.as_str())
        .bind(n)
        .bind(BranchStatus::Registered.as_str())
        .bind(&ids)
        .bind(&resources)
        .bind(&urls)
        .bind(&payloads)
        .bind(&destinations)
        .bind(m.began_by.as_deref())
        .bind(m.dtm.as_ref().map(sqlx::types::Json));
        let Some(tx) = self.timed("insert_message", q.fetch_optional(&self.durable)).await? else {
            return Ok(None);
        };
        let branches = m
            .deliveries
            .iter()
            .enumerate()
            .map(|(i, d)| BranchRow {
                branch_id: d.branch_id.clone(),
                xid: m.xid.clone(),
                seq: i as i64,
                resource: d.resource.clone(),
                callback_url: d.url.clone(),
                status: BranchStatus::Registered,
                payload: d.payload.clone(),
                lock_keys: Vec::new(),
                attempts: 0,
                last_error: None,
                action_url: None,
                after_steps: None,
                action_status: None,
                action_attempts: 0,
                action_error: None,
                destination: d.destination.clone(),
            })
            .collect();
        Ok(Some((tx, branches)))
    }
}
