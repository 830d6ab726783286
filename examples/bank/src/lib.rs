//! A bank-account service as a TCC participant.
//!
//! Accounts hold `balance` and `frozen`. A transfer leg is one branch:
//! - debit:  try freezes the amount (refused if `balance - frozen` is short),
//!   confirm takes it from balance and frozen, cancel unfreezes it;
//! - credit: try records it as `incoming`, confirm adds it to balance, cancel drops it.
//!
//! Every business step also appends a row to `step_log`, so that tests (and
//! curious readers) can see exactly which steps ran, and how often.

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tandem_sdk::tcc::{BranchContext, StepError, TccError, TccParticipant, TccSteps};
use tandem_sdk::{GlobalXid, TandemClient};

/// Resource name of the account legs.
pub const RESOURCE: &str = "account";

/// Direction of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Money leaves the account.
    Debit,
    /// Money arrives.
    Credit,
}

/// One transfer leg: the branch payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leg {
    /// Account id.
    pub account: String,
    /// Amount in cents (positive).
    pub amount: i64,
    /// Debit or credit.
    pub direction: Direction,
}

/// Balances of one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// Available plus frozen.
    pub balance: i64,
    /// Reserved by tried, unconfirmed debits.
    pub frozen: i64,
    /// Tried, unconfirmed credits.
    pub incoming: i64,
}

/// Creates the bank's tables in `participant`'s database, and the SDK's
/// fence table ([`TccParticipant::install`]).
pub async fn setup(participant: &TccParticipant) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS accounts (
            id text PRIMARY KEY,
            balance bigint NOT NULL CHECK (balance >= 0),
            frozen bigint NOT NULL DEFAULT 0 CHECK (frozen >= 0),
            incoming bigint NOT NULL DEFAULT 0 CHECK (incoming >= 0));
         CREATE TABLE IF NOT EXISTS step_log (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            xid text NOT NULL, branch_id text NOT NULL, step text NOT NULL,
            at timestamptz NOT NULL DEFAULT now());",
    )
    .execute(participant.pool())
    .await?;
    participant.install().await
}

/// Opens (or resets) an account with `balance`.
pub async fn open_account(pool: &PgPool, id: &str, balance: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accounts (id, balance) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET balance = $2, frozen = 0, incoming = 0",
    )
    .bind(id)
    .bind(balance)
    .execute(pool)
    .await?;
    Ok(())
}

/// Reads an account.
pub async fn balance(pool: &PgPool, id: &str) -> Result<Option<Balance>, sqlx::Error> {
    let row: Option<(i64, i64, i64)> = sqlx::query_as("SELECT balance, frozen, incoming FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(balance, frozen, incoming)| Balance { balance, frozen, incoming }))
}

/// How many times `step` (`try`, `confirm`, `cancel`) ran for a branch.
pub async fn step_count(pool: &PgPool, branch_id: &str, step: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM step_log WHERE branch_id = $1 AND step = $2")
        .bind(branch_id)
        .bind(step)
        .fetch_one(pool)
        .await
}

async fn log(db: &mut PgConnection, b: &BranchContext, step: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO step_log (xid, branch_id, step) VALUES ($1, $2, $3)")
        .bind(b.xid.as_str())
        .bind(b.branch_id.as_str())
        .bind(step)
        .execute(db)
        .await?;
    Ok(())
}

fn leg(payload: &serde_json::Value) -> Result<Leg, StepError> {
    let leg: Leg = serde_json::from_value(payload.clone()).map_err(|e| StepError::reject(format!("bad leg: {e}")))?;
    if leg.amount <= 0 {
        return Err(StepError::reject("amount must be positive"));
    }
    Ok(leg)
}

/// The TCC steps of account legs.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccountSteps;

#[async_trait]
impl TccSteps for AccountSteps {
    fn name(&self) -> &str {
        RESOURCE
    }

    async fn try_(
        &self,
        db: &mut PgConnection,
        b: &BranchContext,
        payload: &serde_json::Value,
    ) -> Result<(), StepError> {
        let l = leg(payload)?;
        let sql = match l.direction {
            Direction::Debit => "UPDATE accounts SET frozen = frozen + $2 WHERE id = $1 AND balance - frozen >= $2",
            Direction::Credit => "UPDATE accounts SET incoming = incoming + $2 WHERE id = $1",
        };
        let n = sqlx::query(sql).bind(&l.account).bind(l.amount).execute(&mut *db).await?.rows_affected();
        if n == 0 {
            return Err(StepError::reject(match l.direction {
                Direction::Debit => format!("insufficient funds or no account {:?}", l.account),
                Direction::Credit => format!("no account {:?}", l.account),
            }));
        }
        log(db, b, "try").await?;
        Ok(())
    }

    async fn confirm(
        &self,
        db: &mut PgConnection,
        b: &BranchContext,
        payload: &serde_json::Value,
    ) -> Result<(), StepError> {
        let sql = [
            "UPDATE accounts SET balance = balance - $2, frozen = frozen - $2 WHERE id = $1",
            "UPDATE accounts SET balance = balance + $2, incoming = incoming - $2 WHERE id = $1",
        ];
        phase2_step(db, b, payload, sql, "confirm").await
    }

    async fn cancel(
        &self,
        db: &mut PgConnection,
        b: &BranchContext,
        payload: &serde_json::Value,
    ) -> Result<(), StepError> {
        let sql = [
            "UPDATE accounts SET frozen = frozen - $2 WHERE id = $1",
            "UPDATE accounts SET incoming = incoming - $2 WHERE id = $1",
        ];
        phase2_step(db, b, payload, sql, "cancel").await
    }
}

/// A confirm or cancel: `sql` is `[for a debit, for a credit]`, bound to (account, amount).
async fn phase2_step(
    db: &mut PgConnection,
    b: &BranchContext,
    payload: &serde_json::Value,
    sql: [&str; 2],
    step: &str,
) -> Result<(), StepError> {
    let l = leg(payload)?;
    let sql = match l.direction {
        Direction::Debit => sql[0],
        Direction::Credit => sql[1],
    };
    sqlx::query(sql).bind(&l.account).bind(l.amount).execute(&mut *db).await?;
    log(db, b, step).await?;
    Ok(())
}

/// A participant serving [`AccountSteps`], reachable at `public_base_url`.
pub fn participant(pool: PgPool, coordinator: TandemClient, public_base_url: &str) -> TccParticipant {
    TccParticipant::builder(pool, coordinator, public_base_url).resource(AccountSteps).build()
}

/// Answer of `POST /legs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegAccepted {
    /// The branch that now holds the try.
    pub branch_id: String,
}

/// The bank's HTTP service: `POST /legs` (a transfer leg, inside the global
/// transaction named by `Tandem-Xid`), `GET /accounts/{id}`, and the TCC callback.
pub fn router(participant: TccParticipant) -> Router {
    Router::new()
        .route("/legs", post(post_leg))
        .route("/accounts/{id}", get(get_account))
        .with_state(participant.clone())
        .merge(participant.router())
}

async fn post_leg(State(p): State<TccParticipant>, GlobalXid(xid): GlobalXid, Json(l): Json<Leg>) -> Response {
    let Some(xid) = xid else {
        return (StatusCode::BAD_REQUEST, "a leg must run inside a global transaction (Tandem-Xid)").into_response();
    };
    let payload = match serde_json::to_value(&l) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match p.try_branch(&xid, RESOURCE, payload).await {
        Ok(ctx) => (StatusCode::OK, Json(LegAccepted { branch_id: ctx.branch_id.to_string() })).into_response(),
        Err(e @ (TccError::TryFailed(_) | TccError::Suspended(_))) => {
            (StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Err(e @ TccError::Coordinator(_)) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn get_account(
    State(p): State<TccParticipant>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match balance(p.pool(), &id).await {
        Ok(Some(b)) => Json(b).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
