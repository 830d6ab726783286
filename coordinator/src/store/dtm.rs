//! What DTM's protocol needs of the store beyond the modes' own statements:
//! a branch registered under the id the client chose (DTM's `registerBranch`).

use super::rows::{branch_cols, BranchWithMode};
use super::{Store, StoreError};
use tandem_wire::{BranchId, BranchStatus, GlobalStatus, Xid};

/// A branch registered through DTM's protocol.
#[derive(Debug, Clone)]
pub struct NewDtmBranch {
    /// The id the client chose (`01`, `0101`…): DTM's participants see it.
    pub branch_id: BranchId,
    /// Resource name (the branch's URL host, for operators).
    pub resource: String,
    /// Where its rollback-side op goes (TCC `cancel`, XA `url`).
    pub callback_url: String,
    /// Where its commit-side op goes when it differs (TCC `confirm`).
    pub action_url: Option<String>,
    /// Its status: `registered` (TCC: its try runs after), or `prepared`
    /// (XA: DTM registers a branch once it is part of the transaction).
    pub status: BranchStatus,
    /// The payload (DTM's `data`, kept as the JSON string it came as).
    pub payload: Option<serde_json::Value>,
}

/// What a DTM registration did.
#[derive(Debug)]
pub enum DtmRegistration {
    /// Registered now.
    Registered(Box<BranchWithMode>),
    /// A branch with this id was registered before (DTM clients retry).
    AlreadyThere,
    /// The transaction is not active, past its deadline, or full.
    NotActive,
}

impl Store {
    /// Registers `b` on the active transaction `xid` under the id the client
    /// chose, counting it as the batched registrations do. Durable: the
    /// participant runs its phase 1 after the answer.
    pub async fn insert_dtm_branch(&self, xid: &Xid, b: &NewDtmBranch) -> Result<DtmRegistration, StoreError> {
        let unprepared = i32::from(b.status != BranchStatus::Prepared);
        let r = self
            .timed(
                "insert_dtm_branch",
                sqlx::query_as::<_, BranchWithMode>(concat!(
                    "WITH t AS (UPDATE global_transactions SET version = version + 1, \
                                       branch_count = branch_count + 1, \
                                       branches_unprepared = branches_unprepared + $8 \
                                WHERE xid = $1 AND status = $9 AND deadline > now() AND branch_count < $10 \
                                  AND NOT EXISTS (SELECT 1 FROM branches WHERE xid = $1 AND branch_id = $2) \
                                RETURNING xid, mode), \
                          ins AS (INSERT INTO branches (branch_id, xid, resource, callback_url, action_url, status, payload) \
                                  SELECT $2, t.xid, $3, $4, $5, $6, $7 FROM t RETURNING ",
                    branch_cols!(),
                    ") SELECT ins.*, t.mode AS tx_mode FROM ins, t"
                ))
                .bind(xid.as_str())
                .bind(b.branch_id.as_str())
                .bind(&b.resource)
                .bind(&b.callback_url)
                .bind(b.action_url.as_deref())
                .bind(b.status.as_str())
                .bind(&b.payload)
                .bind(unprepared)
                .bind(GlobalStatus::Active.as_str())
                .bind(self.max_branches)
                .fetch_optional(&self.durable),
            )
            .await;
        match r {
            Ok(Some(row)) => Ok(DtmRegistration::Registered(Box::new(row))),
            // A concurrent registration of the same id won the row.
            Err(StoreError::UniqueViolation { .. }) => Ok(DtmRegistration::AlreadyThere),
            Err(e) => Err(e),
            Ok(None) => {
                let exists: Option<i32> = self
                    .timed(
                        "dtm_branch_exists",
                        sqlx::query_scalar("SELECT 1 FROM branches WHERE xid = $1 AND branch_id = $2")
                            .bind(xid.as_str())
                            .bind(b.branch_id.as_str())
                            .fetch_optional(&self.relaxed),
                    )
                    .await?;
                Ok(if exists.is_some() { DtmRegistration::AlreadyThere } else { DtmRegistration::NotActive })
            }
        }
    }
}
