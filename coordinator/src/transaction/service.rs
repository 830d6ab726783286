//! The coordinator's operations, as the API exposes them. Each reads and
//! writes through the store and asks the pure state machine what is allowed.

use super::state::{self, Decision, DecisionInput, DecisionOutcome, RegisterRefusal, ReportRefusal};
use crate::callbacks::CallbackClient;
use crate::config::{Bounds, Timing};
use crate::driver::{Job, Outcome};
use crate::error::CoordinatorError;
use crate::events::EventLog;
use crate::metrics::Metrics;
use crate::modes::{self, saga, OptionLimits, Protocol, Resumed};
use crate::store::{
    LockedRegistration, NewBranch, NewDelivery, NewMessage, NewSaga, NewStep, NewTransaction, ReportResult, Store,
    StoreError, TxFilter,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_wire::limits;
use tandem_wire::{
    ActionStatus, BeginRequest, Branch, BranchId, BranchStatus, GlobalStatus, LockCheckRequest, LockCheckResponse,
    MessageRequest, Mode, RegisterBranchRequest, ReportRequest, SagaRequest, Transaction, TransactionList, Xid,
    MAX_DELIVERIES, MAX_RETRY_LIMIT,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The coordinator: shared state of one process. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    /// Persistence.
    store: Store,
    /// Metrics registry.
    metrics: Metrics,
    /// Participant HTTP client.
    callbacks: CallbackClient,
    /// Where attempts, takeovers and ends are recorded for the timeline.
    events: EventLog,
    /// Timing knobs.
    timing: Timing,
    /// Bounds on one transaction (branches, payload size).
    bounds: Bounds,
    /// This process's name in leases.
    instance_id: String,
    /// Phase-2 tasks, awaited on shutdown.
    tasks: TaskTracker,
    /// Cancelled on shutdown: drivers release their leases, workers stop.
    shutdown: CancellationToken,
    /// The named-lock service (`/v1/named-locks`), on the same store.
    locks: crate::locks::LockService,
}

/// Result of a commit or rollback request.
#[derive(Debug, Clone)]
pub enum DecideReply {
    /// Terminal (200).
    Finished(Box<Transaction>),
    /// Decided durably, phase 2 still running (202).
    InProgress(Box<Transaction>),
}

/// Whether a commit request was answered with a rollback at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overridden {
    /// Decided as asked.
    No,
    /// Asked to commit, decided to roll back (a branch failed, or the deadline passed).
    Yes,
}

/// The protocol of a stored transaction's mode. A row of a mode this build
/// does not serve was written by no begin of it: a bug, answered 500.
fn served(mode: Mode) -> Result<&'static dyn Protocol, StoreError> {
    modes::protocol(mode).ok_or_else(|| StoreError::Internal(format!("no protocol serves mode {mode}")))
}

/// Filters of `GET /v1/transactions`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<GlobalStatus>,
    /// Only this mode.
    pub mode: Option<Mode>,
    /// Only names starting with this.
    pub name: Option<String>,
    /// Only xids containing this.
    pub xid: Option<String>,
    /// Only created at or after this.
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only created before this.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Only begun by this token's name (a client's own listing).
    pub began_by: Option<String>,
    /// Page size (1..=500).
    pub limit: i64,
    /// Cursor: the last xid of the previous page.
    pub after: Option<Xid>,
}

fn invalid(detail: impl Into<String>, tx: Option<Transaction>) -> CoordinatorError {
    CoordinatorError::InvalidState { detail: detail.into(), transaction: tx.map(Box::new) }
}

pub(crate) fn parse_xid(xid: &str) -> Result<Xid, CoordinatorError> {
    Xid::parse(xid).map_err(|_| CoordinatorError::TransactionNotFound(xid.to_owned()))
}

impl Coordinator {
    /// Assembles a coordinator.
    pub fn new(
        store: Store,
        metrics: Metrics,
        callbacks: CallbackClient,
        events: EventLog,
        timing: Timing,
        bounds: Bounds,
        instance_id: String,
    ) -> Coordinator {
        let shutdown = CancellationToken::new();
        let locks = crate::locks::LockService::new(store.clone(), metrics.clone(), timing.max_wait, shutdown.clone());
        Coordinator {
            inner: Arc::new(Inner {
                locks,
                store,
                metrics,
                callbacks,
                events,
                timing,
                bounds,
                instance_id,
                tasks: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// The named-lock service.
    pub fn named_locks(&self) -> &crate::locks::LockService {
        &self.inner.locks
    }

    /// The event log (timeline and overview).
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// Persistence handle.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    /// Metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    /// Timing knobs.
    pub fn timing(&self) -> &Timing {
        &self.inner.timing
    }
    /// This process's lease name.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }
    /// Phase-2 task tracker.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }
    /// Shutdown signal.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
    pub(crate) fn callbacks(&self) -> &CallbackClient {
        &self.inner.callbacks
    }

    /// Begins a transaction. Returns it and whether it was created now
    /// (`false`: an earlier begin with the same idempotency key).
    #[tracing::instrument(skip_all, fields(mode = %req.mode))]
    pub async fn begin(
        &self,
        req: BeginRequest,
        idempotency_key: Option<String>,
        began_by: Option<&str>,
    ) -> Result<(Transaction, bool), CoordinatorError> {
        let Some(protocol) = modes::protocol(req.mode) else {
            return Err(CoordinatorError::ModeNotSupported(req.mode));
        };
        if let Some(name) = &req.name {
            limits::check_text("name", name, 0, limits::MAX_NAME_CHARS)?;
        }
        let timing = self.timing();
        let timeout = self.resolve_timeout(req.timeout_ms)?;
        let limits = OptionLimits {
            max_ms: u64::try_from(timing.max_timeout.as_millis()).unwrap_or(u64::MAX),
            takeover_ms: u64::try_from((timing.lease + timing.recovery_interval).as_millis()).unwrap_or(u64::MAX),
        };
        let options = protocol.begin_options(&req, limits)?;
        if let Some(key) = &idempotency_key {
            limits::check_idempotency_key(key)?;
        }
        let new = NewTransaction {
            xid: Xid::generate(),
            mode: req.mode,
            name: req.name,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            idempotency_key: scoped_key(began_by, idempotency_key),
            three_phase: options.three_phase,
            began_by: began_by.map(str::to_owned),
            dtm: None,
        };
        if let Some(row) = self.store().insert_transaction(&new).await? {
            self.metrics().begun.with_label_values(&[row.mode.as_str()]).inc();
            tracing::debug!(xid = %row.xid, "transaction begun");
            return Ok((row.to_wire(&[]), true));
        }
        // The idempotency key is taken: same request → same transaction.
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let Some(row) = self.store().transaction_by_idempotency_key(key).await? else {
            // The key's holder vanished between our insert and this read (a
            // concurrent begin that failed): transient, the client retries.
            return Err(CoordinatorError::Store(StoreError::Contended));
        };
        if row.mode != new.mode
            || row.name != new.name
            || row.timeout_ms != new.timeout_ms
            || row.three_phase != new.three_phase
        {
            return Err(CoordinatorError::IdempotencyKeyReused(row.xid.to_string()));
        }
        let branches = self.store().branches(&row.xid).await?;
        Ok((row.to_wire(&branches), false))
    }

    /// A request's `timeout_ms`, or the default.
    fn resolve_timeout(&self, timeout_ms: Option<u64>) -> Result<Duration, CoordinatorError> {
        let timing = self.timing();
        match timeout_ms {
            None => Ok(timing.default_timeout),
            Some(0) => Err(CoordinatorError::Validation("timeout_ms must be positive".into())),
            Some(ms) if Duration::from_millis(ms) > timing.max_timeout => Err(CoordinatorError::Validation(format!(
                "timeout_ms must be at most {}",
                timing.max_timeout.as_millis()
            ))),
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }

    /// Submits a whole saga: stores it `running` with its steps (durably,
    /// with the start of its first steps), drives it, and waits up to `wait`
    /// for its end. Returns the reply and whether the saga was created now
    /// (`false`: an earlier submit with the same idempotency key). A saga
    /// that ended compensated is answered as a commit turned into a
    /// rollback: `invalid_state` with the transaction.
    #[tracing::instrument(skip_all, fields(steps = req.steps.len()))]
    pub async fn submit_saga(
        &self,
        req: SagaRequest,
        idempotency_key: Option<String>,
        began_by: Option<&str>,
        wait: Duration,
    ) -> Result<(DecideReply, bool), CoordinatorError> {
        let started = Instant::now();
        let new = self.saga_definition(req, idempotency_key, began_by)?;
        if let Some(reply) = self.start_saga(&new, wait).await? {
            return Ok((saga_reply(reply)?, true));
        }
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let Some(row) = self.store().transaction_by_idempotency_key(key).await? else {
            return Err(CoordinatorError::Store(StoreError::Contended));
        };
        if row.mode != Mode::Saga
            || row.name != new.name
            || row.timeout_ms != new.timeout_ms
            || row.retry_limit != new.retry_limit
            || row.branch_count as usize != new.steps.len()
        {
            return Err(CoordinatorError::IdempotencyKeyReused(row.xid.to_string()));
        }
        let reply = self.wait_terminal(&row.xid, wait.saturating_sub(started.elapsed())).await?;
        Ok((saga_reply(reply)?, false))
    }

    /// Stores a checked saga `running` (durably, with the start of its first
    /// steps), drives it, and waits up to `wait` for its end. `None`: its
    /// idempotency key is taken (nothing stored).
    pub(crate) async fn start_saga(
        &self,
        new: &NewSaga,
        wait: Duration,
    ) -> Result<Option<DecideReply>, CoordinatorError> {
        let started = Instant::now();
        let timing = self.timing();
        let Some((tx, branches)) = self.store().insert_saga(new, self.instance_id(), timing.lease).await? else {
            return Ok(None);
        };
        self.metrics().begun.with_label_values(&[Mode::Saga.as_str()]).inc();
        tracing::debug!(xid = %tx.xid, "saga stored");
        let xid = tx.xid.clone();
        let recorded_starts = (0..new.steps.len()).filter(|&i| new.steps[i].action == ActionStatus::Running).collect();
        let job = Job { tx, branches, leased_at: started, resumed: Resumed::Fresh, recorded_starts };
        let handle = self.spawn_driver(job, None);
        let remaining = wait.saturating_sub(started.elapsed());
        let reply = match tokio::time::timeout(remaining, handle).await {
            Ok(Ok(Outcome::Finished(t))) => DecideReply::Finished(t),
            _ => self.wait_terminal(&xid, wait.saturating_sub(started.elapsed())).await?,
        };
        Ok(Some(reply))
    }

    /// Checks a saga definition and resolves it into the rows to insert.
    fn saga_definition(
        &self,
        req: SagaRequest,
        idempotency_key: Option<String>,
        began_by: Option<&str>,
    ) -> Result<NewSaga, CoordinatorError> {
        if let Some(name) = &req.name {
            limits::check_text("name", name, 0, limits::MAX_NAME_CHARS)?;
        }
        let timeout = self.resolve_timeout(req.timeout_ms)?;
        let retry_limit = match req.retry_limit {
            Some(n) if n > u64::from(MAX_RETRY_LIMIT) => {
                return Err(CoordinatorError::Validation(format!("retry_limit must be at most {MAX_RETRY_LIMIT}")))
            }
            n => n.map(|n| n as u32),
        };
        if let Some(key) = &idempotency_key {
            limits::check_idempotency_key(key)?;
        }
        let deps = saga::dependencies(&req.steps).map_err(|e| CoordinatorError::Validation(e.to_string()))?;
        let mut steps = Vec::with_capacity(req.steps.len());
        for (i, (step, after)) in req.steps.into_iter().zip(deps).enumerate() {
            let resource = step.name.unwrap_or_else(|| format!("step-{}", i + 1));
            limits::check_text("steps[].name", &resource, 1, limits::MAX_RESOURCE_CHARS)?;
            self.check_callback_url("steps[].action_url", &step.action_url)?;
            self.check_callback_url("steps[].compensate_url", &step.compensate_url)?;
            if let Some(payload) = &step.payload {
                limits::check_json("steps[].payload", payload)?;
                self.check_payload_size("steps[].payload", payload)?;
            }
            let action = if after.is_empty() { ActionStatus::Running } else { ActionStatus::Pending };
            steps.push(NewStep {
                branch_id: BranchId::generate(),
                resource,
                action_url: step.action_url,
                compensate_url: step.compensate_url,
                payload: step.payload,
                after,
                action,
            });
        }
        Ok(NewSaga {
            xid: Xid::generate(),
            name: req.name,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            idempotency_key: scoped_key(began_by, idempotency_key),
            retry_limit,
            began_by: began_by.map(str::to_owned),
            steps,
            dtm: None,
        })
    }

    /// Prepares a message: stores it `prepared` with its deliveries
    /// (durably: the producer's local transaction runs after the answer).
    /// Returns it and whether it was created now (`false`: an earlier
    /// prepare with the same idempotency key).
    #[tracing::instrument(skip_all, fields(deliveries = req.deliveries.len()))]
    pub async fn prepare_message(
        &self,
        req: MessageRequest,
        idempotency_key: Option<String>,
        began_by: Option<&str>,
    ) -> Result<(Transaction, bool), CoordinatorError> {
        let new = self.message_definition(req, idempotency_key, began_by)?;
        if let Some((tx, branches)) = self.store().insert_message(&new).await? {
            self.metrics().begun.with_label_values(&[Mode::Msg.as_str()]).inc();
            tracing::debug!(xid = %tx.xid, "message prepared");
            return Ok((tx.to_wire(&branches), true));
        }
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let Some(row) = self.store().transaction_by_idempotency_key(key).await? else {
            return Err(CoordinatorError::Store(StoreError::Contended));
        };
        let branches = self.store().branches(&row.xid).await?;
        let same = row.mode == Mode::Msg
            && row.name == new.name
            && row.timeout_ms == new.timeout_ms
            && row.check_url.as_deref() == Some(new.check_url.as_str())
            && row.delivery_order == Some(new.order)
            && branches.len() == new.deliveries.len()
            && branches.iter().zip(&new.deliveries).all(|(b, d)| {
                b.resource == d.resource
                    && b.callback_url == d.url
                    && b.destination == d.destination
                    && b.payload == d.payload
            });
        if !same {
            return Err(CoordinatorError::IdempotencyKeyReused(row.xid.to_string()));
        }
        Ok((row.to_wire(&branches), false))
    }

    /// Checks a message and resolves it into the rows to insert. A broker
    /// delivery must name a configured destination: a client never points
    /// the coordinator at a broker of its choosing.
    fn message_definition(
        &self,
        req: MessageRequest,
        idempotency_key: Option<String>,
        began_by: Option<&str>,
    ) -> Result<NewMessage, CoordinatorError> {
        if let Some(name) = &req.name {
            limits::check_text("name", name, 0, limits::MAX_NAME_CHARS)?;
        }
        let timeout = self.resolve_timeout(req.timeout_ms)?;
        if let Some(key) = &idempotency_key {
            limits::check_idempotency_key(key)?;
        }
        self.check_callback_url("check_url", &req.check_url)?;
        if req.deliveries.is_empty() || req.deliveries.len() > MAX_DELIVERIES {
            return Err(CoordinatorError::Validation(format!(
                "deliveries must hold 1 to {MAX_DELIVERIES} deliveries, not {}",
                req.deliveries.len()
            )));
        }
        let mut deliveries = Vec::with_capacity(req.deliveries.len());
        for (i, d) in req.deliveries.into_iter().enumerate() {
            let resource = d.name.unwrap_or_else(|| format!("delivery-{}", i + 1));
            limits::check_text("deliveries[].name", &resource, 1, limits::MAX_RESOURCE_CHARS)?;
            if let Some(payload) = &d.payload {
                limits::check_json("deliveries[].payload", payload)?;
                self.check_payload_size("deliveries[].payload", payload)?;
            }
            let (url, destination) = match (d.url, d.destination) {
                (Some(url), None) => {
                    self.check_callback_url("deliveries[].url", &url)?;
                    (url, None)
                }
                (None, Some(name)) => {
                    limits::check_text("deliveries[].destination", &name, 1, limits::MAX_RESOURCE_CHARS)?;
                    if !self.callbacks().has_destination(&name) {
                        let known = self.callbacks().destinations();
                        let known = if known.is_empty() { "none is configured".to_owned() } else { known.join(", ") };
                        return Err(CoordinatorError::Validation(format!(
                            "deliveries[{i}].destination {name:?} is not a configured destination ({known})"
                        )));
                    }
                    (String::new(), Some(name))
                }
                _ => {
                    return Err(CoordinatorError::Validation(format!(
                        "deliveries[{i}] needs exactly one of url and destination"
                    )))
                }
            };
            deliveries.push(NewDelivery {
                branch_id: BranchId::generate(),
                resource,
                url,
                destination,
                payload: d.payload,
            });
        }
        Ok(NewMessage {
            xid: Xid::generate(),
            name: req.name,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            idempotency_key: scoped_key(began_by, idempotency_key),
            check_url: req.check_url,
            began_by: began_by.map(str::to_owned),
            order: req.order.unwrap_or_default(),
            deliveries,
            dtm: None,
        })
    }

    /// Submits (`Decision::Commit`) or aborts a prepared message: the
    /// decision of [`Coordinator::decide`], for a transaction of mode `msg`
    /// only (anything else is not a message: 404).
    pub async fn decide_message(
        &self,
        xid: &str,
        requested: Decision,
        wait: Duration,
    ) -> Result<DecideReply, CoordinatorError> {
        let started = Instant::now();
        let parsed = parse_xid(xid)?;
        match self.store().transaction(&parsed).await? {
            // The one-statement decision only moves `active` transactions,
            // which a message never is: straight to the general path.
            Some(row) if row.mode == Mode::Msg => self.decide_general(&parsed, requested, wait, started).await,
            _ => Err(CoordinatorError::TransactionNotFound(xid.to_owned())),
        }
    }

    /// One transaction with its branches.
    pub async fn get(&self, xid: &str) -> Result<Transaction, CoordinatorError> {
        let xid = parse_xid(xid)?;
        let Some(row) = self.store().transaction(&xid).await? else {
            return Err(CoordinatorError::TransactionNotFound(xid.to_string()));
        };
        let branches = self.store().branches(&xid).await?;
        Ok(row.to_wire(&branches))
    }

    /// A page of transactions, newest first.
    pub async fn list(&self, filter: ListFilter) -> Result<TransactionList, CoordinatorError> {
        let f = TxFilter {
            status: filter.status,
            mode: filter.mode,
            name_prefix: filter.name.as_deref(),
            xid_contains: filter.xid.as_deref(),
            created_after: filter.created_after,
            created_before: filter.created_before,
            began_by: filter.began_by.as_deref(),
        };
        let rows = self.store().list_filtered(&f, filter.limit, filter.after.as_ref()).await?;
        let xids: Vec<Xid> = rows.iter().map(|r| r.xid.clone()).collect();
        let mut branches = self.store().branches_of(&xids).await?;
        let next = if rows.len() as i64 == filter.limit { xids.last().map(|x| x.to_string()) } else { None };
        let transactions = rows.iter().map(|r| r.to_wire(&branches.remove(&r.xid).unwrap_or_default())).collect();
        Ok(TransactionList { transactions, next })
    }

    /// Registers a branch on an active transaction.
    #[tracing::instrument(skip_all, fields(xid = %xid))]
    pub async fn register(&self, xid: &str, req: RegisterBranchRequest) -> Result<Branch, CoordinatorError> {
        let xid = parse_xid(xid)?;
        self.validate_register(&req)?;
        let new = NewBranch {
            branch_id: BranchId::generate(),
            resource: req.resource,
            callback_url: req.callback_url,
            payload: req.payload,
            lock_keys: req.lock_keys.unwrap_or_default(),
        };
        if !new.lock_keys.is_empty() {
            return self.register_locking(&xid, &new).await;
        }
        if let Some(row) = self.store().insert_branch(&xid, &new).await? {
            tracing::debug!(branch_id = %row.row.branch_id, resource = %row.row.resource, "branch registered");
            return Ok(row.to_wire());
        }
        Err(self.register_refused(&xid).await)
    }

    /// Registration with lock keys: in a locking mode (AT) the branch and its
    /// global locks commit together; other modes only record the keys.
    async fn register_locking(&self, xid: &Xid, new: &NewBranch) -> Result<Branch, CoordinatorError> {
        match self.store().insert_branch_locking(xid, new).await? {
            LockedRegistration::Registered(row) => {
                tracing::debug!(branch_id = %row.row.branch_id, locks = new.lock_keys.len(), "branch registered with locks");
                Ok(row.to_wire())
            }
            LockedRegistration::Conflict(holder) => {
                self.metrics().lock_conflicts.inc();
                Err(CoordinatorError::LockConflict(Box::new(holder)))
            }
            LockedRegistration::NotActive => Err(self.register_refused(xid).await),
        }
    }

    /// Why a registration was refused, as the error to answer.
    async fn register_refused(&self, xid: &Xid) -> CoordinatorError {
        let tx = match self.store().transaction(xid).await {
            Ok(Some(tx)) => tx,
            Ok(None) => return CoordinatorError::TransactionNotFound(xid.to_string()),
            Err(e) => return e.into(),
        };
        let detail = match state::may_register(tx.status, tx.expired) {
            Err(RegisterRefusal::NotActive(s)) => format!("cannot register a branch: transaction is {s}"),
            Err(RegisterRefusal::Expired) => {
                "cannot register a branch: the transaction's deadline has passed and it is rolling back".into()
            }
            Ok(()) if tx.branch_count >= self.inner.bounds.max_branches => {
                return CoordinatorError::LimitExceeded(format!(
                    "the transaction has {} branches, the most this coordinator allows (--max-branches)",
                    tx.branch_count
                ));
            }
            Ok(()) => "cannot register a branch right now; retry".into(),
        };
        invalid(detail, None)
    }

    /// `POST /v1/locks/check`: one holder of any of the keys other than `xid`.
    pub async fn check_locks(&self, req: LockCheckRequest) -> Result<LockCheckResponse, CoordinatorError> {
        limits::check_lock_keys(&req.lock_keys)?;
        limits::check_text("resource", &req.resource, 1, limits::MAX_RESOURCE_CHARS)?;
        let holder = self.store().lock_holder(&req.resource, &req.lock_keys, req.xid.as_ref()).await?;
        Ok(LockCheckResponse { free: holder.is_none(), holder })
    }

    /// Records a participant's phase-1 result.
    #[tracing::instrument(skip_all, fields(xid = %xid, branch_id = %branch_id))]
    pub async fn report(&self, xid: &str, branch_id: &str, req: ReportRequest) -> Result<Branch, CoordinatorError> {
        let parsed_xid = parse_xid(xid)?;
        let not_found = || CoordinatorError::BranchNotFound { xid: xid.to_owned(), branch_id: branch_id.to_owned() };
        let bid = BranchId::parse(branch_id).map_err(|_| not_found())?;
        if let Some(detail) = &req.detail {
            limits::check_text("detail", detail, 0, limits::MAX_DETAIL_CHARS)?;
        }
        // Common case in one statement: a registered branch of an active transaction.
        if let Ok(to) = state::apply_report(GlobalStatus::Active, BranchStatus::Registered, req.status) {
            if let Some(row) = self.store().report_expected(&parsed_xid, &bid, to, req.detail.as_deref()).await? {
                return Ok(row.to_wire());
            }
        }
        let r = self
            .store()
            .report_branch(&parsed_xid, &bid, req.detail.as_deref(), |g, b| state::apply_report(g, b, req.status))
            .await?;
        match r {
            ReportResult::NoTransaction => Err(CoordinatorError::TransactionNotFound(xid.to_owned())),
            ReportResult::NoBranch => Err(not_found()),
            ReportResult::Refused(ReportRefusal::TransactionDecided(s)) => {
                Err(invalid(format!("cannot report phase 1: transaction is already {s}"), None))
            }
            ReportResult::Refused(ReportRefusal::BranchState(s)) => {
                Err(invalid(format!("cannot report {}: branch is {s}", req.status), None))
            }
            ReportResult::Applied(row) => Ok(row.to_wire()),
        }
    }

    /// Decides commit or rollback, drives phase 2, and waits up to `wait` for it.
    #[tracing::instrument(skip_all, fields(xid = %xid, decision = ?requested))]
    pub async fn decide(
        &self,
        xid: &str,
        requested: Decision,
        wait: Duration,
    ) -> Result<DecideReply, CoordinatorError> {
        let xid = parse_xid(xid)?;
        let started = Instant::now();
        let timing = self.timing();

        // The common case in one statement (see `state::fast_decision`).
        let fast = state::fast_decision(requested);
        if let Some((tx, branches)) = self.store().decide_expected(&xid, fast, self.instance_id(), timing.lease).await?
        {
            let job = Job { tx, branches, leased_at: started, resumed: Resumed::Fresh, recorded_starts: Vec::new() };
            return self.start_driving(&xid, job, requested, Overridden::No, wait, started).await;
        }
        self.decide_general(&xid, requested, wait, started).await
    }

    /// Any decision but the one-statement common case: read, ask the state
    /// machine, write if unchanged. `wait` counts from `started`.
    async fn decide_general(
        &self,
        xid: &Xid,
        requested: Decision,
        wait: Duration,
        started: Instant,
    ) -> Result<DecideReply, CoordinatorError> {
        let timing = self.timing();
        let r = self
            .store()
            .decide(xid, self.instance_id(), timing.lease, |tx, branches| {
                let protocol = served(tx.mode)?;
                let statuses = branches.iter().map(|b| b.status);
                Ok(state::decide(requested, DecisionInput::new(tx.status, tx.expired, statuses, protocol)))
            })
            .await?;
        let Some(r) = r else {
            return Err(CoordinatorError::TransactionNotFound(xid.to_string()));
        };
        match r.outcome {
            DecisionOutcome::Decide { overridden, .. } => {
                let job = Job {
                    tx: r.tx,
                    branches: r.branches,
                    leased_at: started,
                    resumed: Resumed::Fresh,
                    recorded_starts: Vec::new(),
                };
                let overridden = if overridden { Overridden::Yes } else { Overridden::No };
                self.start_driving(xid, job, requested, overridden, wait, started).await
            }
            DecisionOutcome::AlreadyDecided => self.wait_terminal(xid, wait.saturating_sub(started.elapsed())).await,
            DecisionOutcome::Conflict => {
                let current = r.tx.to_wire(&r.branches);
                let verb = match requested {
                    Decision::Commit => "committed",
                    Decision::Rollback => "rolled back",
                };
                // A rollback the client did not ask for says why it happened.
                let why = match current.rollback_reason {
                    Some(reason) if reason != tandem_wire::RollbackReason::Requested => {
                        format!(" (it rolled back because {})", served(r.tx.mode)?.commit_refused_because(Some(reason)))
                    }
                    _ => String::new(),
                };
                Err(invalid(
                    format!("transaction is already {} and cannot be {verb}{why}", current.status),
                    Some(current),
                ))
            }
        }
    }

    /// Drives a transaction this request just moved (decided, or started the
    /// phases before the decision) and waits for it until `wait` (counted
    /// from `started`) has passed. A commit request answered with a rollback
    /// (`overridden`, or phases that ended in an abort) is answered 409 with
    /// the state.
    async fn start_driving(
        &self,
        xid: &Xid,
        job: Job,
        requested: Decision,
        overridden: Overridden,
        wait: Duration,
        started: Instant,
    ) -> Result<DecideReply, CoordinatorError> {
        tracing::debug!(status = %job.tx.status, "decision recorded");
        let protocol = served(job.tx.mode)?;
        let handle = self.spawn_driver(job, None);
        let remaining = wait.saturating_sub(started.elapsed());
        let reply = match tokio::time::timeout(remaining, handle).await {
            Ok(Ok(Outcome::Finished(t))) => DecideReply::Finished(t),
            _ => self.wait_terminal(xid, wait.saturating_sub(started.elapsed())).await?,
        };
        let status = match &reply {
            DecideReply::Finished(t) | DecideReply::InProgress(t) => t.status,
        };
        let aborted = requested == Decision::Commit && Decision::of_status(status) == Some(Decision::Rollback);
        if overridden == Overridden::No && !aborted {
            return Ok(reply);
        }
        let t = match reply {
            DecideReply::Finished(t) | DecideReply::InProgress(t) => t,
        };
        let why = protocol.commit_refused_because(t.rollback_reason);
        Err(invalid(format!("commit refused: the transaction was rolled back because {why}"), Some(*t)))
    }

    /// Polls until the transaction is terminal or `wait` has passed.
    pub(crate) async fn wait_terminal(&self, xid: &Xid, wait: Duration) -> Result<DecideReply, CoordinatorError> {
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            let t = self.get(xid.as_str()).await?;
            if t.status.is_terminal() {
                return Ok(DecideReply::Finished(Box::new(t)));
            }
            if Instant::now() + pause > deadline {
                return Ok(DecideReply::InProgress(Box::new(t)));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

impl Coordinator {
    fn validate_register(&self, req: &RegisterBranchRequest) -> Result<(), CoordinatorError> {
        limits::check_text("resource", &req.resource, 1, limits::MAX_RESOURCE_CHARS)?;
        if let Some(payload) = &req.payload {
            limits::check_json("payload", payload)?;
        }
        if let Some(keys) = &req.lock_keys {
            limits::check_lock_keys(keys)?;
        }
        // The request's shape first (422 `validation_failed`), then what the
        // configuration allows.
        self.check_callback_url("callback_url", &req.callback_url)?;
        if let Some(payload) = &req.payload {
            self.check_payload_size("payload", payload)?;
        }
        Ok(())
    }

    /// A URL the coordinator will POST to: in the documented shape, one
    /// that parses (the pattern admits only URLs that parse; parsing again
    /// costs little and keeps a pattern mistake from reaching the callback
    /// client), and one the allow-list permits.
    pub(crate) fn check_callback_url(&self, field: &'static str, url: &str) -> Result<(), CoordinatorError> {
        if let Err(e) = limits::check_callback_url(url) {
            return Err(match field {
                "callback_url" => e.into(),
                _ => CoordinatorError::Validation(format!("{field}: {e}")),
            });
        }
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            _ => return Err(CoordinatorError::Validation(format!("{field} {url:?} is not an absolute http(s) URL"))),
        }
        self.callbacks().allowed(url).map_err(|reason| CoordinatorError::CallbackNotAllowed { field, reason })
    }

    /// A payload within `--max-payload-bytes` (its JSON text).
    pub(crate) fn check_payload_size(
        &self,
        field: &'static str,
        payload: &serde_json::Value,
    ) -> Result<(), CoordinatorError> {
        let max = self.inner.bounds.max_payload_bytes;
        // Counted as it is written: a registration allocates no copy of its payload.
        let mut counter = ByteCount(0);
        let size = serde_json::to_writer(&mut counter, payload).map(|()| counter.0).unwrap_or(usize::MAX);
        if size > max {
            return Err(CoordinatorError::PayloadTooLarge { field, size, max });
        }
        Ok(())
    }
}

/// A writer that only counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An idempotency key as stored: scoped to the token that sent it, so that
/// two clients' keys never meet (nor does one learn of the other's
/// transaction by guessing its key).
fn scoped_key(began_by: Option<&str>, key: Option<String>) -> Option<String> {
    match (began_by, key) {
        (Some(name), Some(key)) => Some(format!("{name}\u{1f}{key}")),
        (_, key) => key,
    }
}

/// A saga's end as the submit answers it: committed or still running as
/// is; compensated (or compensating) as `invalid_state` with the transaction.
fn saga_reply(reply: DecideReply) -> Result<DecideReply, CoordinatorError> {
    let t = match &reply {
        DecideReply::Finished(t) | DecideReply::InProgress(t) => t,
    };
    if Decision::of_status(t.status) != Some(Decision::Rollback) {
        return Ok(reply);
    }
    let why = saga::Saga.commit_refused_because(t.rollback_reason);
    let t = match reply {
        DecideReply::Finished(t) | DecideReply::InProgress(t) => t,
    };
    Err(invalid(format!("the saga was compensated because {why}"), Some(*t)))
}
