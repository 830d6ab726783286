//! The bank's TCC participant on MariaDB/MySQL.
//!
//! The SDK's [`tandem_sdk::tcc::TccParticipant`] runs on PostgreSQL only
//! (its steps take a `PgConnection`, its fence is PostgreSQL SQL), while
//! the SDK's saga barrier already runs on both. Until the SDK's TCC is
//! generic over the database as the saga participant is, this is the same
//! participant for InnoDB, kept to the SDK's contract so that the suite
//! tests what a MariaDB bank would do:
//!
//! - the fence is the SDK's table (`tandem_tcc_fence`, one row per
//!   branch: `tried`, `committed`, `rolled_back`, `suspended`) written in
//!   the local transaction of each step, and the steps are those of
//!   `examples/bank` (a debit freezes, a credit is recorded as incoming,
//!   confirm and cancel settle them; every step appends to `step_log`);
//! - no locking read of an absent key, the lesson of the SDK's saga
//!   barrier on InnoDB (a `SELECT ... FOR UPDATE` of a missing row takes a
//!   gap lock, and two such deadlock on their inserts): rows are written
//!   with `INSERT IGNORE` on the primary key, and a row is read `FOR
//!   UPDATE` only once a plain read or that insert found it;
//! - the callback contract: signed callbacks verified with the SDK's
//!   verifier when the client has the coordinator's key; the work runs in a task of its own (a
//!   coordinator hanging up does not abandon a local transaction), 200
//!   with a [`CallbackReply`], 409 for what can never succeed (confirm
//!   after cancel, cancel after confirm), 503 for anything transient,
//!   InnoDB's deadlock victims included: the coordinator delivers again.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use sqlx::{MySqlConnection, MySqlPool};
use std::sync::Arc;
use tandem_example_bank::{Direction, Leg, RESOURCE};
use tandem_sdk::tcc::CALLBACK_PATH;
use tandem_sdk::wire::signature::SIGNATURE_HEADER;
use tandem_sdk::wire::{
    BranchId, CallbackAction, CallbackOutcome, CallbackReply, CallbackRequest, ErrorCode, Problem,
    RegisterBranchRequest, ReportRequest, ReportStatus, Xid, PROBLEM_CONTENT_TYPE, XID_HEADER,
};
use tandem_sdk::{BoxError, ClientError, TandemClient};

/// The fence table, as the SDK's PostgreSQL one (identifiers compared byte
/// for byte, as in the SDK's MySQL barrier).
pub const FENCE_DDL: &str = "CREATE TABLE IF NOT EXISTS tandem_tcc_fence (
    xid        varchar(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    branch_id  varchar(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    resource   varchar(128) CHARACTER SET utf8mb4 NOT NULL,
    status     varchar(12)  NOT NULL,
    created_at datetime(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at datetime(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (xid, branch_id),
    KEY tandem_tcc_fence_updated (updated_at),
    CONSTRAINT tandem_tcc_fence_status CHECK (status IN ('tried', 'committed', 'rolled_back', 'suspended'))
) ENGINE = InnoDB";

/// Fence status of a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    Tried,
    Committed,
    RolledBack,
    Suspended,
}

impl Fence {
    fn as_str(self) -> &'static str {
        match self {
            Fence::Tried => "tried",
            Fence::Committed => "committed",
            Fence::RolledBack => "rolled_back",
            Fence::Suspended => "suspended",
        }
    }

    fn parse(s: &str) -> Result<Fence, sqlx::Error> {
        Ok(match s {
            "tried" => Fence::Tried,
            "committed" => Fence::Committed,
            "rolled_back" => Fence::RolledBack,
            "suspended" => Fence::Suspended,
            other => {
                return Err(sqlx::Error::ColumnDecode {
                    index: "status".into(),
                    source: format!("unknown fence status {other:?}").into(),
                })
            }
        })
    }
}

/// Inserts the branch's fence row with `status` unless it exists; `true` if inserted.
async fn fence_insert(db: &mut MySqlConnection, xid: &Xid, b: &BranchId, status: Fence) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("INSERT IGNORE INTO tandem_tcc_fence (xid, branch_id, resource, status) VALUES (?, ?, ?, ?)")
        .bind(xid.as_str())
        .bind(b.as_str())
        .bind(RESOURCE)
        .bind(status.as_str())
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The branch's fence status; `lock` reads it `FOR UPDATE` (only ever for a row known to exist).
async fn fence_read(
    db: &mut MySqlConnection,
    xid: &Xid,
    b: &BranchId,
    lock: bool,
) -> Result<Option<Fence>, sqlx::Error> {
    let sql = if lock {
        "SELECT status FROM tandem_tcc_fence WHERE xid = ? AND branch_id = ? FOR UPDATE"
    } else {
        "SELECT status FROM tandem_tcc_fence WHERE xid = ? AND branch_id = ?"
    };
    let s: Option<String> = sqlx::query_scalar(sql).bind(xid.as_str()).bind(b.as_str()).fetch_optional(db).await?;
    s.as_deref().map(Fence::parse).transpose()
}

async fn fence_set(db: &mut MySqlConnection, xid: &Xid, b: &BranchId, status: Fence) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tandem_tcc_fence SET status = ?, updated_at = CURRENT_TIMESTAMP(6) WHERE xid = ? AND branch_id = ?",
    )
    .bind(status.as_str())
    .bind(xid.as_str())
    .bind(b.as_str())
    .execute(db)
    .await?;
    Ok(())
}

async fn log_step(db: &mut MySqlConnection, xid: &Xid, b: &BranchId, step: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO step_log (xid, branch_id, step) VALUES (?, ?, ?)")
        .bind(xid.as_str())
        .bind(b.as_str())
        .bind(step)
        .execute(db)
        .await?;
    Ok(())
}

/// Why a leg's try did not hold.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    /// The coordinator refused or could not be reached (no branch, or one
    /// the coordinator will cancel).
    #[error("coordinator: {0}")]
    Coordinator(#[from] ClientError),
    /// The business try refused (insufficient funds); reported `phase1_failed`.
    #[error("try failed: {0}")]
    Refused(String),
    /// The branch was cancelled before its try (suspension).
    #[error("try refused: branch {0} was already rolled back")]
    Suspended(BranchId),
    /// The participant's database failed.
    #[error("participant database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Why a callback did not apply.
#[derive(Debug)]
enum CallbackError {
    /// It never can (409).
    Conflict(String),
    /// It may later (503).
    Retry(BoxError),
    /// Not a resource of this participant (404, retried: a misrouted callback).
    UnknownResource(String),
}

impl From<sqlx::Error> for CallbackError {
    fn from(e: sqlx::Error) -> CallbackError {
        CallbackError::Retry(Box::new(e))
    }
}

/// The bank on MariaDB as a TCC participant. Cheap to clone.
#[derive(Clone)]
pub struct MyTccBank {
    inner: Arc<Inner>,
}

struct Inner {
    pool: MySqlPool,
    client: TandemClient,
    callback_url: String,
}

impl MyTccBank {
    /// A participant on `pool`, reached by the coordinator at `public_base_url`.
    pub fn new(pool: MySqlPool, client: TandemClient, public_base_url: &str) -> MyTccBank {
        let callback_url = format!("{}{CALLBACK_PATH}", public_base_url.trim_end_matches('/'));
        MyTccBank { inner: Arc::new(Inner { pool, client, callback_url }) }
    }

    /// Phase 1 of a leg: registers the branch (before the try, so that a
    /// crash after the try leaves the coordinator able to cancel it), then
    /// runs the try in one local transaction with its fence row.
    pub async fn try_leg(&self, xid: &Xid, leg: &Leg) -> Result<BranchId, TryError> {
        let payload = serde_json::to_value(leg).map_err(|e| TryError::Refused(format!("bad leg: {e}")))?;
        let reg = RegisterBranchRequest {
            resource: RESOURCE.into(),
            callback_url: self.inner.callback_url.clone(),
            payload: Some(payload),
            lock_keys: None,
        };
        let branch = self.inner.client.register(xid, &reg).await?.branch_id;
        let mut tx = self.inner.pool.begin().await?;
        if !fence_insert(&mut tx, xid, &branch, Fence::Tried).await? {
            let status = fence_read(&mut tx, xid, &branch, false).await?;
            tx.rollback().await?;
            return match status {
                Some(Fence::Tried | Fence::Committed) => Ok(branch),
                _ => Err(TryError::Suspended(branch)),
            };
        }
        let (sql, binds_amount_twice) = match leg.direction {
            Direction::Debit => {
                ("UPDATE accounts SET frozen = frozen + ? WHERE id = ? AND balance - frozen >= ?", true)
            }
            Direction::Credit => ("UPDATE accounts SET incoming = incoming + ? WHERE id = ?", false),
        };
        let mut q = sqlx::query(sql).bind(leg.amount).bind(&leg.account);
        if binds_amount_twice {
            q = q.bind(leg.amount);
        }
        if leg.amount <= 0 || q.execute(&mut *tx).await?.rows_affected() == 0 {
            tx.rollback().await?;
            let why = format!("insufficient funds or no account {:?}", leg.account);
            let report = ReportRequest { status: ReportStatus::Phase1Failed, detail: Some(why.clone()) };
            if let Err(e) = self.inner.client.report(xid, &branch, &report).await {
                // The caller's rollback (or the timeout) still cancels the branch.
                tracing::warn!(%xid, error = %e, "could not report phase1_failed");
            }
            return Err(TryError::Refused(why));
        }
        log_step(&mut tx, xid, &branch, "try").await?;
        tx.commit().await?;
        Ok(branch)
    }

    async fn settle(&self, req: &CallbackRequest) -> Result<CallbackOutcome, CallbackError> {
        if req.resource != RESOURCE {
            return Err(CallbackError::UnknownResource(format!("unknown resource {:?}", req.resource)));
        }
        let leg: Leg = serde_json::from_value(req.payload.clone().unwrap_or_default())
            .map_err(|e| CallbackError::Conflict(format!("bad leg: {e}")))?;
        let (xid, b) = (&req.xid, &req.branch_id);
        let mut tx = self.inner.pool.begin().await?;
        let outcome = match req.action {
            CallbackAction::Commit => {
                // A plain read first: locking an absent key would take a gap lock.
                if fence_read(&mut tx, xid, b, false).await?.is_none() {
                    return Err(CallbackError::Retry("no committed try for this branch yet; retry".into()));
                }
                match fence_read(&mut tx, xid, b, true).await? {
                    Some(Fence::Committed) => CallbackOutcome::AlreadyDone,
                    Some(Fence::Tried) => {
                        let sql = match leg.direction {
                            Direction::Debit => {
                                "UPDATE accounts SET balance = balance - ?, frozen = frozen - ? WHERE id = ?"
                            }
                            Direction::Credit => {
                                "UPDATE accounts SET balance = balance + ?, incoming = incoming - ? WHERE id = ?"
                            }
                        };
                        sqlx::query(sql).bind(leg.amount).bind(leg.amount).bind(&leg.account).execute(&mut *tx).await?;
                        log_step(&mut tx, xid, b, "confirm").await?;
                        fence_set(&mut tx, xid, b, Fence::Committed).await?;
                        CallbackOutcome::Applied
                    }
                    Some(Fence::RolledBack | Fence::Suspended) => {
                        return Err(CallbackError::Conflict("confirm for a branch that was rolled back".into()))
                    }
                    None => return Err(CallbackError::Retry("fence row not visible to the locking read".into())),
                }
            }
            CallbackAction::Rollback => {
                if fence_insert(&mut tx, xid, b, Fence::Suspended).await? {
                    tx.commit().await?;
                    return Ok(CallbackOutcome::EmptyRollback);
                }
                match fence_read(&mut tx, xid, b, true).await? {
                    Some(Fence::RolledBack | Fence::Suspended) => CallbackOutcome::AlreadyDone,
                    Some(Fence::Tried) => {
                        let sql = match leg.direction {
                            Direction::Debit => "UPDATE accounts SET frozen = frozen - ? WHERE id = ?",
                            Direction::Credit => "UPDATE accounts SET incoming = incoming - ? WHERE id = ?",
                        };
                        sqlx::query(sql).bind(leg.amount).bind(&leg.account).execute(&mut *tx).await?;
                        log_step(&mut tx, xid, b, "cancel").await?;
                        fence_set(&mut tx, xid, b, Fence::RolledBack).await?;
                        CallbackOutcome::Applied
                    }
                    Some(Fence::Committed) => {
                        return Err(CallbackError::Conflict("cancel for a branch that was confirmed".into()))
                    }
                    None => return Err(CallbackError::Conflict("fence row vanished during cancel".into())),
                }
            }
            other => {
                return Err(CallbackError::Conflict(format!(
                    "a TCC branch does not take the action {}",
                    other.as_str()
                )))
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// The callback route ([`CALLBACK_PATH`]).
    pub fn router(&self) -> Router {
        Router::new().route(CALLBACK_PATH, post(callback)).with_state(self.clone())
    }
}

fn problem(status: StatusCode, code: ErrorCode, detail: String) -> Response {
    let p = Problem::new(status.as_u16(), code, status.canonical_reason().unwrap_or("Error"), detail);
    (status, [(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)], Json(p)).into_response()
}

async fn callback(State(bank): State<MyTccBank>, headers: HeaderMap, body: Bytes) -> Response {
    // Signed callbacks first, as the SDK's routers do: with the coordinator's
    // key, an unsigned, forged, stale or replayed callback is refused (401,
    // which the coordinator retries).
    let verifier = bank.inner.client.verifier();
    if verifier.is_on() {
        let header = |name: &str| headers.get(name).and_then(|h| h.to_str().ok());
        let (signature, xid) = (header(SIGNATURE_HEADER), header(XID_HEADER).unwrap_or_default());
        if let Err(e) = verifier.check(signature, xid, &body, chrono::Utc::now().timestamp()) {
            return problem(StatusCode::UNAUTHORIZED, ErrorCode::InvalidSignature, e.to_string());
        }
    }
    let req: CallbackRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationFailed, e.to_string()),
    };
    // Its own task: dropped by a coordinator that stops waiting, the
    // handler must not take the local transaction down with it.
    let settled = tokio::spawn(async move { bank.settle(&req).await }).await;
    match settled {
        Ok(Ok(outcome)) => (StatusCode::OK, Json(CallbackReply::new(outcome))).into_response(),
        Ok(Err(CallbackError::Conflict(why))) => problem(StatusCode::CONFLICT, ErrorCode::InvalidState, why),
        Ok(Err(CallbackError::Retry(e))) => {
            problem(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, e.to_string())
        }
        Ok(Err(CallbackError::UnknownResource(why))) => problem(StatusCode::NOT_FOUND, ErrorCode::NotFound, why),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, format!("callback task: {e}")),
    }
}
