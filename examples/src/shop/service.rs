//! The shop's services, each run as its own OS process by `shop service
//! KIND --mode M --port P --coordinator URL --db URL`: orders, inventory,
//! payment and (message mode) shipping, written the way each mode is meant
//! to be used with the SDK.
//!
//! Every service also serves `GET /healthz` and `POST /_shop/die-at` (arms
//! a [`DiePoint`]: the process then SIGKILLs itself there, once), so that
//! the client can crash it at a point where recovery must finish the work.

use crate::model::{DiePoint, Kind, MsgOrder, MsgPlaced, OrderLine, ShopMode};
use anyhow::Context;
use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::FutureExt;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{MySql, MySqlConnection, MySqlPool, PgConnection, PgPool, Postgres};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_sdk::at::{AtError, AtParticipant, MySqlDb, Pg};
use tandem_sdk::msg::{Consumer, Delivery, DeliveryHandler, Message, MsgError, Producer};
use tandem_sdk::saga::{SagaParticipant, SagaSteps, StepContext};
use tandem_sdk::tcc::{BranchContext, StepError, TccError, TccParticipant, TccSteps};
use tandem_sdk::three_phase::{ThreePhaseParticipant, ThreePhaseWork};
use tandem_sdk::wire::Xid;
use tandem_sdk::xa::{MySqlXa, PgXa, XaError, XaParticipant};
use tandem_sdk::{BoxError, GlobalXid, TandemClient};

/// The arguments of the hidden `shop service` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Which service.
    #[arg(value_enum)]
    pub kind: Kind,
    /// The transaction mode it is written for.
    #[arg(long, value_enum)]
    pub mode: ShopMode,
    /// Loopback port to listen on (the same after a restart: the
    /// coordinator's callbacks name it).
    #[arg(long)]
    pub port: u16,
    /// The coordinator's base URL.
    #[arg(long)]
    pub coordinator: String,
    /// The service's database (postgres:// or mysql://).
    #[arg(long)]
    pub db: String,
    /// Other services' base URLs, `KIND=URL` (the message producer's consumers).
    #[arg(long = "peer")]
    pub peers: Vec<String>,
}

/// An error answer of a business route.
type Refusal = (StatusCode, String);

fn refuse(status: StatusCode, e: impl std::fmt::Display) -> Refusal {
    (status, e.to_string())
}

fn need_xid(xid: Option<Xid>) -> Result<Xid, Refusal> {
    xid.ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "no Tandem-Xid header: this runs inside a global transaction"))
}

/// The armed die point, if any.
#[derive(Clone, Default)]
struct Die(Arc<Mutex<Option<DiePoint>>>);

impl Die {
    fn armed(&self) -> Option<DiePoint> {
        self.0.lock().map(|g| *g).unwrap_or(None)
    }
    fn arm(&self, point: DiePoint) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(point);
        }
    }
}

/// Kills this process with SIGKILL: no destructor, no flush, no goodbye to
/// the databases, exactly as a crash.
fn die(point: DiePoint) -> ! {
    eprintln!("shop service: reached die point {point:?}: SIGKILL to myself");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

async fn arm(State(die): State<Die>, Json(point): Json<DiePoint>) -> StatusCode {
    tracing::warn!(?point, "armed: this process will SIGKILL itself there");
    die.arm(point);
    StatusCode::NO_CONTENT
}

/// Middleware: kills the process at an armed callback point.
async fn die_hook(State(hook): State<Die>, req: Request, next: Next) -> Response {
    let Some(point) = hook.armed() else { return next.run(req).await };
    if !req.uri().path().starts_with("/tandem/") || point == DiePoint::BeforeSubmit {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e).into_response(),
    };
    let action = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("action").and_then(|a| a.as_str()).map(str::to_owned));
    let req = Request::from_parts(parts, Body::from(bytes));
    match (point, action.as_deref()) {
        (DiePoint::Commit, Some("commit")) => die(point),
        (DiePoint::ActionAnswered, Some("action")) => {
            let resp = next.run(req).await;
            if resp.status().is_success() {
                die(point);
            }
            resp
        }
        _ => next.run(req).await,
    }
}

/// Runs one service until it is killed.
pub async fn run(args: ServiceArgs) -> anyhow::Result<()> {
    // A service must not outlive the demo that started it.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!(error = %e, "could not ask for SIGKILL on the parent's death");
    }
    let base = format!("http://127.0.0.1:{}", args.port);
    let client = TandemClient::new(&args.coordinator)?;
    let die = Die::default();
    let app = build(&args, &base, client, die.clone())
        .await
        .with_context(|| format!("starting {} ({})", args.kind.as_str(), args.mode.as_str()))?;
    let control = Router::new().route("/_shop/die-at", post(arm)).with_state(die.clone());
    let app = app
        .merge(control)
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(die, die_hook));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
    tracing::info!(kind = args.kind.as_str(), mode = args.mode.as_str(), %base, "serving");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn pg(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new().max_connections(6).connect(url).await.with_context(|| format!("connecting to {url}"))
}

async fn my(url: &str) -> anyhow::Result<MySqlPool> {
    MySqlPoolOptions::new().max_connections(6).connect(url).await.with_context(|| format!("connecting to {url}"))
}

fn is_mysql(url: &str) -> bool {
    url.starts_with("mysql://") || url.starts_with("mariadb://")
}

/// The business work of a service on the line, as plain SQL (XA, 3PC's PreCommit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Insert the order, paid.
    Order,
    /// Take the stock.
    Stock,
    /// Charge the customer.
    Charge,
}

impl Work {
    fn of(kind: Kind) -> Work {
        match kind {
            Kind::Orders | Kind::Shipping => Work::Order,
            Kind::Inventory => Work::Stock,
            Kind::Payment => Work::Charge,
        }
    }
}

fn not_enough_stock(l: &OrderLine) -> String {
    format!("inventory refused: not enough {} in stock for {}", l.sku, l.qty)
}

fn insufficient(l: &OrderLine) -> String {
    format!("payment declined: insufficient balance ({} cannot pay {})", l.customer, l.amount)
}

/// Inserts the order with `status`; returns its id.
async fn insert_order(c: &mut PgConnection, xid: &str, l: &OrderLine, status: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO orders (xid, customer, sku, qty, amount, status) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(xid)
    .bind(&l.customer)
    .bind(&l.sku)
    .bind(l.qty)
    .bind(l.amount)
    .bind(status)
    .fetch_one(c)
    .await
}

/// Takes the line's quantity from stock; `false` (nothing changed) if there is not enough.
async fn take_stock(c: &mut PgConnection, l: &OrderLine) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("UPDATE stock SET qty = qty - $1 WHERE sku = $2 AND qty >= $1")
        .bind(l.qty)
        .bind(&l.sku)
        .execute(c)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// Charges the line's amount (PostgreSQL); `false` (nothing changed) if the balance is short.
async fn charge_pg(c: &mut PgConnection, l: &OrderLine) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE customer = $2 AND balance >= $1")
        .bind(l.amount)
        .bind(&l.customer)
        .execute(c)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// Charges the line's amount (MySQL/MariaDB); `false` if the balance is short.
async fn charge_my(c: &mut MySqlConnection, l: &OrderLine) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("UPDATE accounts SET balance = balance - ? WHERE customer = ? AND balance >= ?")
        .bind(l.amount)
        .bind(&l.customer)
        .bind(l.amount)
        .execute(c)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// The plain SQL of `work` on PostgreSQL (XA phase 1, 3PC PreCommit).
async fn pg_work(c: &mut PgConnection, work: Work, xid: String, l: OrderLine) -> Result<(), BoxError> {
    match work {
        Work::Order => {
            insert_order(c, &xid, &l, "paid").await?;
        }
        Work::Stock if !take_stock(c, &l).await? => return Err(not_enough_stock(&l).into()),
        Work::Charge if !charge_pg(c, &l).await? => return Err(insufficient(&l).into()),
        Work::Stock | Work::Charge => {}
    }
    Ok(())
}

/// The charge on MySQL/MariaDB (XA phase 1).
async fn my_charge(c: &mut MySqlConnection, l: OrderLine) -> Result<(), BoxError> {
    if !charge_my(c, &l).await? {
        return Err(insufficient(&l).into());
    }
    Ok(())
}

async fn build(args: &ServiceArgs, base: &str, client: TandemClient, die: Die) -> anyhow::Result<Router> {
    let mysql = is_mysql(&args.db);
    match args.mode {
        ShopMode::Tcc => tcc(args, base, client).await,
        ShopMode::Xa if mysql => {
            let xa = XaParticipant::builder(MySqlXa::new(my(&args.db).await?), client, "payment", base).build();
            xa.check().await?;
            // Participant-side recovery: prepared branches left by a crash are
            // finished from the coordinator's record (the coordinator's own
            // retries usually get there first).
            xa.spawn_recovery(Duration::from_secs(2), Duration::from_secs(60));
            Ok(Router::new().route("/place", post(xa_place_my)).with_state(xa.clone()).merge(xa.router()))
        }
        ShopMode::Xa => {
            let xa = XaParticipant::builder(PgXa::new(pg(&args.db).await?), client, args.kind.as_str(), base).build();
            xa.check().await?;
            xa.spawn_recovery(Duration::from_secs(2), Duration::from_secs(60));
            let state = (xa.clone(), Work::of(args.kind));
            Ok(Router::new().route("/place", post(xa_place_pg)).with_state(state).merge(xa.router()))
        }
        ShopMode::At if mysql => {
            let at = AtParticipant::<MySqlDb>::builder(my(&args.db).await?, client, "payment", base).build();
            at.install().await?;
            Ok(Router::new().route("/place", post(at_place_my)).with_state(at.clone()).merge(at.router()))
        }
        ShopMode::At => {
            let at = AtParticipant::<Pg>::builder(pg(&args.db).await?, client, args.kind.as_str(), base).build();
            at.install().await?;
            let state = (at.clone(), Work::of(args.kind));
            Ok(Router::new().route("/place", post(at_place_pg)).with_state(state).merge(at.router()))
        }
        ShopMode::Saga if mysql => {
            let p = SagaParticipant::<MySql>::builder(my(&args.db).await?, base).step(MyCharge).build()?;
            p.install().await?;
            Ok(p.router())
        }
        ShopMode::Saga => {
            let pool = pg(&args.db).await?;
            let b = SagaParticipant::builder(pool, base);
            let p = match args.kind {
                Kind::Orders => b.step(CreateOrder).step(ConfirmOrder),
                Kind::Inventory => b.step(ReserveStock),
                _ => b.step(PgCharge),
            }
            .build()?;
            p.install().await?;
            Ok(p.router())
        }
        ShopMode::Msg => msg(args, base, client, die).await,
        ShopMode::ThreePc => {
            let pool = pg(&args.db).await?;
            let work = Vote { work: Work::of(args.kind) };
            let p = ThreePhaseParticipant::builder(pool, client, args.kind.as_str(), base, work).build();
            p.check().await?;
            p.install().await?;
            // A restarted process re-arms the timers of its branches first.
            let rearmed = p.recover().await?;
            tracing::info!(?rearmed, "3PC recovery");
            Ok(Router::new().route("/place", post(three_phase_place)).with_state(p.clone()).merge(p.router()))
        }
    }
}

// ---------------------------------------------------------------- TCC

fn line_of(payload: &serde_json::Value) -> Result<OrderLine, StepError> {
    serde_json::from_value(payload.clone()).map_err(|e| StepError::reject(format!("bad order line: {e}")))
}

/// TCC orders: Try writes the order `pending`, Confirm makes it `paid`, Cancel `cancelled`.
struct TccOrders;
/// TCC inventory: Try reserves stock, Confirm takes it, Cancel releases it.
struct TccStock;
/// TCC payment: Try freezes funds, Confirm takes them, Cancel unfreezes them.
struct TccPay;

#[async_trait]
impl TccSteps for TccOrders {
    fn name(&self) -> &str {
        "orders"
    }
    async fn try_(&self, db: &mut PgConnection, b: &BranchContext, p: &serde_json::Value) -> Result<(), StepError> {
        insert_order(db, b.xid.as_str(), &line_of(p)?, "pending").await?;
        Ok(())
    }
    async fn confirm(&self, db: &mut PgConnection, b: &BranchContext, _: &serde_json::Value) -> Result<(), StepError> {
        sqlx::query("UPDATE orders SET status = 'paid' WHERE xid = $1").bind(b.xid.as_str()).execute(&mut *db).await?;
        Ok(())
    }
    async fn cancel(&self, db: &mut PgConnection, b: &BranchContext, _: &serde_json::Value) -> Result<(), StepError> {
        sqlx::query("UPDATE orders SET status = 'cancelled' WHERE xid = $1")
            .bind(b.xid.as_str())
            .execute(&mut *db)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl TccSteps for TccStock {
    fn name(&self) -> &str {
        "inventory"
    }
    async fn try_(&self, db: &mut PgConnection, _: &BranchContext, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        let n = sqlx::query("UPDATE stock SET reserved = reserved + $1 WHERE sku = $2 AND qty - reserved >= $1")
            .bind(l.qty)
            .bind(&l.sku)
            .execute(&mut *db)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StepError::reject(not_enough_stock(&l)));
        }
        Ok(())
    }
    async fn confirm(&self, db: &mut PgConnection, _: &BranchContext, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        sqlx::query("UPDATE stock SET qty = qty - $1, reserved = reserved - $1 WHERE sku = $2")
            .bind(l.qty)
            .bind(&l.sku)
            .execute(&mut *db)
            .await?;
        Ok(())
    }
    async fn cancel(&self, db: &mut PgConnection, _: &BranchContext, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        sqlx::query("UPDATE stock SET reserved = reserved - $1 WHERE sku = $2")
            .bind(l.qty)
            .bind(&l.sku)
            .execute(&mut *db)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl TccSteps for TccPay {
    fn name(&self) -> &str {
        "payment"
    }
    async fn try_(&self, db: &mut PgConnection, _: &BranchContext, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        let n = sqlx::query("UPDATE accounts SET frozen = frozen + $1 WHERE customer = $2 AND balance - frozen >= $1")
            .bind(l.amount)
            .bind(&l.customer)
            .execute(&mut *db)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StepError::reject(insufficient(&l)));
        }
        Ok(())
    }
    async fn confirm(&self, db: &mut PgConnection, _: &BranchContext, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        sqlx::query("UPDATE accounts SET balance = balance - $1, frozen = frozen - $1 WHERE customer = $2")
            .bind(l.amount)
            .bind(&l.customer)
            .execute(&mut *db)
            .await?;
        Ok(())
    }
    async fn cancel(&self, db: &mut PgConnection, _: &BranchContext, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        sqlx::query("UPDATE accounts SET frozen = frozen - $1 WHERE customer = $2")
            .bind(l.amount)
            .bind(&l.customer)
            .execute(&mut *db)
            .await?;
        Ok(())
    }
}

async fn tcc(args: &ServiceArgs, base: &str, client: TandemClient) -> anyhow::Result<Router> {
    let pool = pg(&args.db).await?;
    let b = TccParticipant::builder(pool, client, base);
    let p = match args.kind {
        Kind::Orders | Kind::Shipping => b.resource(TccOrders),
        Kind::Inventory => b.resource(TccStock),
        Kind::Payment => b.resource(TccPay),
    }
    .build();
    p.install().await?;
    let state = (p.clone(), args.kind.as_str());
    Ok(Router::new().route("/place", post(tcc_place)).with_state(state).merge(p.router()))
}

/// `POST /place` (TCC): registers the branch and runs its Try.
async fn tcc_place(
    State((p, resource)): State<(TccParticipant, &'static str)>,
    GlobalXid(xid): GlobalXid,
    Json(line): Json<OrderLine>,
) -> Result<&'static str, Refusal> {
    let xid = need_xid(xid)?;
    let payload = serde_json::to_value(&line).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
    match p.try_branch(&xid, resource, payload).await {
        Ok(_) => Ok("tried"),
        Err(TccError::TryFailed(e)) => Err(refuse(StatusCode::CONFLICT, e)),
        Err(e @ TccError::Suspended(_)) => Err(refuse(StatusCode::CONFLICT, e)),
        Err(e) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, e)),
    }
}

// ---------------------------------------------------------------- XA

fn xa_refusal(e: XaError) -> Refusal {
    match e {
        XaError::Phase1(e) => refuse(StatusCode::CONFLICT, e),
        e => refuse(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `POST /place` (XA, PostgreSQL): the work in a branch that is then prepared.
async fn xa_place_pg(
    State((xa, work)): State<(XaParticipant<PgXa>, Work)>,
    GlobalXid(xid): GlobalXid,
    Json(line): Json<OrderLine>,
) -> Result<&'static str, Refusal> {
    let xid = need_xid(xid)?;
    let key = xid.to_string();
    xa.run(&xid, move |c| pg_work(c, work, key, line).boxed()).await.map_err(xa_refusal)?;
    Ok("prepared")
}

/// `POST /place` (XA, MariaDB): the charge in an XA branch.
async fn xa_place_my(
    State(xa): State<XaParticipant<MySqlXa>>,
    GlobalXid(xid): GlobalXid,
    Json(line): Json<OrderLine>,
) -> Result<&'static str, Refusal> {
    let xid = need_xid(xid)?;
    xa.run(&xid, move |c| my_charge(c, line).boxed()).await.map_err(xa_refusal)?;
    Ok("prepared")
}

// ---------------------------------------------------------------- AT

fn at_refusal(e: AtError) -> Refusal {
    refuse(StatusCode::SERVICE_UNAVAILABLE, e)
}

/// `POST /place` (AT, PostgreSQL): plain SQL through the AT executor.
async fn at_place_pg(
    State((at, work)): State<(AtParticipant<Pg>, Work)>,
    GlobalXid(xid): GlobalXid,
    Json(l): Json<OrderLine>,
) -> Result<&'static str, Refusal> {
    let xid = need_xid(xid)?;
    let mut tx = at.begin(&xid).await.map_err(at_refusal)?;
    let changed = match work {
        Work::Order => tx
            .sql("INSERT INTO orders (xid, customer, sku, qty, amount, status) VALUES ($1, $2, $3, $4, $5, 'paid')")
            .bind(xid.to_string())
            .bind(l.customer.clone())
            .bind(l.sku.clone())
            .bind(l.qty)
            .bind(l.amount)
            .execute()
            .await
            .map_err(at_refusal)?,
        Work::Stock => tx
            .sql("UPDATE stock SET qty = qty - $1 WHERE sku = $2 AND qty >= $1")
            .bind(l.qty)
            .bind(l.sku.clone())
            .execute()
            .await
            .map_err(at_refusal)?,
        Work::Charge => tx
            .sql("UPDATE accounts SET balance = balance - $1 WHERE customer = $2 AND balance >= $1")
            .bind(l.amount)
            .bind(l.customer.clone())
            .execute()
            .await
            .map_err(at_refusal)?,
    };
    if changed == 0 {
        // Nothing imaged: dropping the transaction registers no branch.
        let why = if work == Work::Stock { not_enough_stock(&l) } else { insufficient(&l) };
        return Err(refuse(StatusCode::CONFLICT, why));
    }
    tx.commit().await.map_err(at_refusal)?;
    Ok("done")
}

/// `POST /place` (AT, MariaDB): the charge through the AT executor.
async fn at_place_my(
    State(at): State<AtParticipant<MySqlDb>>,
    GlobalXid(xid): GlobalXid,
    Json(l): Json<OrderLine>,
) -> Result<&'static str, Refusal> {
    let xid = need_xid(xid)?;
    let mut tx = at.begin(&xid).await.map_err(at_refusal)?;
    let changed = tx
        .sql("UPDATE accounts SET balance = balance - ? WHERE customer = ? AND balance >= ?")
        .bind(l.amount)
        .bind(l.customer.clone())
        .bind(l.amount)
        .execute()
        .await
        .map_err(at_refusal)?;
    if changed == 0 {
        return Err(refuse(StatusCode::CONFLICT, insufficient(&l)));
    }
    tx.commit().await.map_err(at_refusal)?;
    Ok("done")
}

// ---------------------------------------------------------------- Saga

/// Saga orders, first step: the order, `pending`; compensated to `cancelled`.
struct CreateOrder;
/// Saga orders, last step: the order `paid`.
struct ConfirmOrder;
/// Saga inventory: takes the stock, recorded in `stock_moves` for the compensation.
struct ReserveStock;
/// Saga payment (PostgreSQL): charges, recorded in `charges` for the refund.
struct PgCharge;
/// Saga payment (MariaDB): the same.
struct MyCharge;

async fn set_order_status(db: &mut PgConnection, xid: &Xid, status: &str) -> Result<(), StepError> {
    sqlx::query("UPDATE orders SET status = $2 WHERE xid = $1").bind(xid.as_str()).bind(status).execute(db).await?;
    Ok(())
}

#[async_trait]
impl SagaSteps for CreateOrder {
    fn name(&self) -> &str {
        "create-order"
    }
    async fn action(&self, db: &mut PgConnection, s: &StepContext, p: &serde_json::Value) -> Result<(), StepError> {
        insert_order(db, s.xid.as_str(), &line_of(p)?, "pending").await?;
        Ok(())
    }
    async fn compensate(&self, db: &mut PgConnection, s: &StepContext, _: &serde_json::Value) -> Result<(), StepError> {
        set_order_status(db, &s.xid, "cancelled").await
    }
}

#[async_trait]
impl SagaSteps for ConfirmOrder {
    fn name(&self) -> &str {
        "confirm-order"
    }
    async fn action(&self, db: &mut PgConnection, s: &StepContext, _: &serde_json::Value) -> Result<(), StepError> {
        set_order_status(db, &s.xid, "paid").await
    }
    async fn compensate(&self, db: &mut PgConnection, s: &StepContext, _: &serde_json::Value) -> Result<(), StepError> {
        set_order_status(db, &s.xid, "cancelled").await
    }
}

#[async_trait]
impl SagaSteps for ReserveStock {
    fn name(&self) -> &str {
        "reserve-stock"
    }
    async fn action(&self, db: &mut PgConnection, s: &StepContext, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        if !take_stock(db, &l).await? {
            return Err(StepError::reject(not_enough_stock(&l)));
        }
        sqlx::query("INSERT INTO stock_moves (xid, branch_id, sku, qty) VALUES ($1, $2, $3, $4)")
            .bind(s.xid.as_str())
            .bind(s.branch_id.as_str())
            .bind(&l.sku)
            .bind(l.qty)
            .execute(&mut *db)
            .await?;
        Ok(())
    }
    async fn compensate(&self, db: &mut PgConnection, s: &StepContext, _: &serde_json::Value) -> Result<(), StepError> {
        // Undo what the action committed, as it committed it.
        sqlx::query(
            "WITH m AS (DELETE FROM stock_moves WHERE xid = $1 AND branch_id = $2 RETURNING sku, qty) \
             UPDATE stock SET qty = stock.qty + m.qty FROM m WHERE stock.sku = m.sku",
        )
        .bind(s.xid.as_str())
        .bind(s.branch_id.as_str())
        .execute(&mut *db)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl SagaSteps for PgCharge {
    fn name(&self) -> &str {
        "charge"
    }
    async fn action(&self, db: &mut PgConnection, s: &StepContext, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        if !charge_pg(db, &l).await? {
            return Err(StepError::reject(insufficient(&l)));
        }
        sqlx::query("INSERT INTO charges (xid, branch_id, customer, amount) VALUES ($1, $2, $3, $4)")
            .bind(s.xid.as_str())
            .bind(s.branch_id.as_str())
            .bind(&l.customer)
            .bind(l.amount)
            .execute(&mut *db)
            .await?;
        Ok(())
    }
    async fn compensate(&self, db: &mut PgConnection, s: &StepContext, _: &serde_json::Value) -> Result<(), StepError> {
        sqlx::query(
            "WITH c AS (DELETE FROM charges WHERE xid = $1 AND branch_id = $2 RETURNING customer, amount) \
             UPDATE accounts SET balance = accounts.balance + c.amount FROM c WHERE accounts.customer = c.customer",
        )
        .bind(s.xid.as_str())
        .bind(s.branch_id.as_str())
        .execute(&mut *db)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl SagaSteps<MySql> for MyCharge {
    fn name(&self) -> &str {
        "charge"
    }
    async fn action(&self, db: &mut MySqlConnection, s: &StepContext, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        if !charge_my(db, &l).await? {
            return Err(StepError::reject(insufficient(&l)));
        }
        sqlx::query("INSERT INTO charges (xid, branch_id, customer, amount) VALUES (?, ?, ?, ?)")
            .bind(s.xid.as_str())
            .bind(s.branch_id.as_str())
            .bind(&l.customer)
            .bind(l.amount)
            .execute(&mut *db)
            .await?;
        Ok(())
    }
    async fn compensate(
        &self,
        db: &mut MySqlConnection,
        s: &StepContext,
        _: &serde_json::Value,
    ) -> Result<(), StepError> {
        let charge: Option<(String, i64)> =
            sqlx::query_as("SELECT customer, amount FROM charges WHERE xid = ? AND branch_id = ? FOR UPDATE")
                .bind(s.xid.as_str())
                .bind(s.branch_id.as_str())
                .fetch_optional(&mut *db)
                .await?;
        if let Some((customer, amount)) = charge {
            sqlx::query("UPDATE accounts SET balance = balance + ? WHERE customer = ?")
                .bind(amount)
                .bind(customer)
                .execute(&mut *db)
                .await?;
            sqlx::query("DELETE FROM charges WHERE xid = ? AND branch_id = ?")
                .bind(s.xid.as_str())
                .bind(s.branch_id.as_str())
                .execute(&mut *db)
                .await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- messages

/// Path of every consumer's delivery endpoint.
pub const DELIVER_PATH: &str = "/msg/deliver";

/// Consumer (inventory): takes the stock of a placed order.
struct TakeStock;
/// Consumer (shipping): schedules the shipment of a placed order.
struct Ship;
/// Consumer (payment, PostgreSQL): charges a placed order.
struct PgDebit;
/// Consumer (payment, MariaDB): the same.
struct MyDebit;

#[async_trait]
impl DeliveryHandler for TakeStock {
    async fn handle(&self, db: &mut PgConnection, _: &Delivery, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        if !take_stock(db, &l).await? {
            return Err(StepError::reject(not_enough_stock(&l)));
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryHandler for Ship {
    async fn handle(&self, db: &mut PgConnection, d: &Delivery, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        sqlx::query(
            "INSERT INTO shipments (order_xid, customer, sku, qty, status) VALUES ($1, $2, $3, $4, 'scheduled')",
        )
        .bind(d.xid.as_str())
        .bind(&l.customer)
        .bind(&l.sku)
        .bind(l.qty)
        .execute(&mut *db)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl DeliveryHandler for PgDebit {
    async fn handle(&self, db: &mut PgConnection, _: &Delivery, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        if !charge_pg(db, &l).await? {
            // Authorized before the message was submitted, short now: for an operator.
            return Err(StepError::reject(insufficient(&l)));
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryHandler<MySql> for MyDebit {
    async fn handle(&self, db: &mut MySqlConnection, _: &Delivery, p: &serde_json::Value) -> Result<(), StepError> {
        let l = line_of(p)?;
        if !charge_my(db, &l).await? {
            return Err(StepError::reject(insufficient(&l)));
        }
        Ok(())
    }
}

/// Payment's `POST /authorize` (message mode): may the customer pay this?
/// 204 yes, 409 declined. The producer asks it inside its local transaction.
async fn authorize(State(db): State<PayDb>, Json(l): Json<OrderLine>) -> Result<StatusCode, Refusal> {
    let ok = match db {
        PayDb::Pg(pool) => {
            sqlx::query_scalar::<Postgres, bool>("SELECT balance >= $1 FROM accounts WHERE customer = $2")
                .bind(l.amount)
                .bind(&l.customer)
                .fetch_optional(&pool)
                .await
                .map(|b| b.unwrap_or(false))
        }
        PayDb::My(pool) => {
            sqlx::query_scalar::<MySql, i64>("SELECT CAST(balance >= ? AS SIGNED) FROM accounts WHERE customer = ?")
                .bind(l.amount)
                .bind(&l.customer)
                .fetch_optional(&pool)
                .await
                .map(|b| b.unwrap_or(0) == 1)
        }
    }
    .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, e))?;
    if ok {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(refuse(StatusCode::CONFLICT, insufficient(&l)))
    }
}

/// Payment's database in message mode.
#[derive(Clone)]
enum PayDb {
    Pg(PgPool),
    My(MySqlPool),
}

/// The orders service in message mode: the producer, its peers and its die hook.
#[derive(Clone)]
struct OrdersMsg {
    producer: Producer,
    http: reqwest::Client,
    peers: Arc<HashMap<String, String>>,
    die: Die,
}

async fn msg(args: &ServiceArgs, base: &str, client: TandemClient, die: Die) -> anyhow::Result<Router> {
    match args.kind {
        Kind::Orders => {
            let pool = pg(&args.db).await?;
            let producer = Producer::new(pool, client, base)?;
            producer.install().await?;
            let peers = args
                .peers
                .iter()
                .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect::<HashMap<_, _>>();
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
            let state = OrdersMsg { producer: producer.clone(), http, peers: Arc::new(peers), die };
            Ok(Router::new().route("/place-msg", post(place_msg)).with_state(state).merge(producer.router()))
        }
        Kind::Inventory => {
            let c = Consumer::new(pg(&args.db).await?, TakeStock);
            c.install().await?;
            Ok(c.router(DELIVER_PATH))
        }
        Kind::Shipping => {
            let c = Consumer::new(pg(&args.db).await?, Ship);
            c.install().await?;
            Ok(c.router(DELIVER_PATH))
        }
        Kind::Payment if is_mysql(&args.db) => {
            let pool = my(&args.db).await?;
            let c = Consumer::new(pool.clone(), MyDebit);
            c.install().await?;
            let auth = Router::new().route("/authorize", post(authorize)).with_state(PayDb::My(pool));
            Ok(c.router(DELIVER_PATH).merge(auth))
        }
        Kind::Payment => {
            let pool = pg(&args.db).await?;
            let c = Consumer::new(pool.clone(), PgDebit);
            c.install().await?;
            let auth = Router::new().route("/authorize", post(authorize)).with_state(PayDb::Pg(pool));
            Ok(c.router(DELIVER_PATH).merge(auth))
        }
    }
}

/// The orders service's local transaction: payment authorizes, then the order row.
async fn order_locally(
    c: &mut PgConnection,
    http: reqwest::Client,
    payment: String,
    xid: Xid,
    l: OrderLine,
) -> Result<i64, BoxError> {
    let r = http.post(format!("{payment}/authorize")).json(&l).send().await?;
    if !r.status().is_success() {
        return Err(r.text().await.unwrap_or_else(|e| e.to_string()).into());
    }
    Ok(insert_order(c, xid.as_str(), &l, "placed").await?)
}

/// The producer's business code as the SDK takes it.
fn local_transaction(
    http: reqwest::Client,
    payment: String,
    xid: Xid,
    l: OrderLine,
) -> impl for<'c> FnOnce(&'c mut PgConnection) -> futures::future::BoxFuture<'c, Result<i64, BoxError>> + Send {
    move |c| order_locally(c, http, payment, xid, l).boxed()
}

/// `POST /place-msg`: "order placed" as a two-phase message to inventory,
/// payment and shipping, committed with the order row.
async fn place_msg(State(s): State<OrdersMsg>, Json(o): Json<MsgOrder>) -> Response {
    let payload = match serde_json::to_value(&o.line) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e).into_response(),
    };
    let peer = |k: Kind| s.peers.get(k.as_str()).cloned().unwrap_or_default();
    let mut msg = Message::new(o.name.clone()).timeout(Duration::from_millis(o.timeout_ms));
    for k in [Kind::Inventory, Kind::Payment, Kind::Shipping] {
        msg = msg.deliver(format!("{}{DELIVER_PATH}", peer(k)), payload.clone());
    }
    let xid = match s.producer.prepare(&msg).await {
        Ok(x) => x,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    };
    let (http, payment, key, line) = (s.http.clone(), peer(Kind::Payment), xid.clone(), o.line.clone());
    let business = local_transaction(http, payment, key, line);
    let answer = |status: StatusCode, error: Option<String>| {
        (status, Json(MsgPlaced { xid: xid.to_string(), error })).into_response()
    };
    if s.die.armed() == Some(DiePoint::BeforeSubmit) {
        return match s.producer.commit_local(&xid, &msg, business).await {
            // Committed locally, never submitted: the back-check must settle it.
            Ok(_) => die(DiePoint::BeforeSubmit),
            Err(e) => answer(StatusCode::SERVICE_UNAVAILABLE, Some(e.to_string())),
        };
    }
    match s.producer.commit_and_submit(&xid, &msg, business).await {
        Ok(_) => answer(StatusCode::OK, None),
        Err(MsgError::Business(e)) => answer(StatusCode::CONFLICT, Some(e.to_string())),
        Err(e @ MsgError::SubmitPending(_)) => answer(StatusCode::ACCEPTED, Some(e.to_string())),
        Err(e) => answer(StatusCode::SERVICE_UNAVAILABLE, Some(e.to_string())),
    }
}

// ---------------------------------------------------------------- 3PC

/// A 3PC branch's vote and work.
struct Vote {
    work: Work,
}

#[async_trait]
impl ThreePhaseWork for Vote {
    async fn can_commit(&self, pool: &PgPool, p: &serde_json::Value) -> Result<bool, BoxError> {
        let l: OrderLine = serde_json::from_value(p.clone())?;
        let yes = match self.work {
            Work::Order => true,
            Work::Stock => sqlx::query_scalar::<_, bool>("SELECT qty >= $1 FROM stock WHERE sku = $2")
                .bind(l.qty)
                .bind(&l.sku)
                .fetch_optional(pool)
                .await?
                .unwrap_or(false),
            Work::Charge => sqlx::query_scalar::<_, bool>("SELECT balance >= $1 FROM accounts WHERE customer = $2")
                .bind(l.amount)
                .bind(&l.customer)
                .fetch_optional(pool)
                .await?
                .unwrap_or(false),
        };
        if !yes {
            tracing::info!(work = ?self.work, "votes no: {}", if self.work == Work::Stock { not_enough_stock(&l) } else { insufficient(&l) });
        }
        Ok(yes)
    }

    async fn execute(&self, conn: &mut PgConnection, p: &serde_json::Value) -> Result<(), BoxError> {
        let l: OrderLine = serde_json::from_value(p.clone())?;
        let xid = p.get("xid").and_then(|x| x.as_str()).unwrap_or_default().to_owned();
        pg_work(conn, self.work, xid, l).await
    }
}

/// `POST /place` (3PC): joins the transaction with the work as payload;
/// nothing runs until the coordinator's CanCommit and PreCommit.
async fn three_phase_place(
    State(p): State<ThreePhaseParticipant>,
    GlobalXid(xid): GlobalXid,
    Json(line): Json<OrderLine>,
) -> Result<&'static str, Refusal> {
    let xid = need_xid(xid)?;
    let mut payload = serde_json::to_value(&line).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
    if let Some(o) = payload.as_object_mut() {
        o.insert("xid".into(), serde_json::Value::String(xid.to_string()));
    }
    p.join(&xid, payload).await.map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok("joined")
}
