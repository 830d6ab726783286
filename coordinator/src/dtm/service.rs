//! DTM's operations on the coordinator: each maps a DTM request onto the
//! mode it names and runs it through the same store statements, drivers and
//! recovery as `/v1` (what a request means is decided in [`super::plan`]).

use super::plan::{self, force_stop_moves};
use super::request::{BranchRequest, TransRequest, TransType};
use super::{view, DtmOptions};
use crate::auth::Caller;
use crate::error::CoordinatorError;
use crate::store::{
    DtmRegistration, NewDelivery, NewDtmBranch, NewMessage, NewSaga, NewStep, NewTransaction, TxFilter, TxRow,
};
use crate::transaction::service::DecideReply;
use crate::transaction::state::Decision;
use crate::Coordinator;
use chrono::Utc;
use serde_json::{json, Value};
use std::time::Duration;
use tandem_wire::{
    ActionStatus, BranchId, BranchStatus, DeliveryOrder, EventKind, GlobalStatus, Mode, TimelineEvent, Xid,
};

/// Why a DTM operation did not succeed, by DTM's kinds of answer.
#[derive(Debug, thiserror::Error)]
pub enum DtmError {
    /// DTM's FAILURE (409): a definitive no, such as a state that does not
    /// allow the operation, or a transaction that was rolled back.
    #[error("{0}")]
    Failure(String),
    /// DTM's ONGOING (425): not finished yet; ask again.
    #[error("{0}")]
    Ongoing(String),
    /// The request is not one Tandem can act on (422): a gid outside
    /// Tandem's identifiers, an unknown trans_type, a bad field.
    #[error("{0}")]
    Invalid(String),
    /// The body is not JSON (400).
    #[error("{0}")]
    Malformed(String),
    /// The body is larger than the coordinator accepts (413).
    #[error("request body is too large")]
    TooLarge,
    /// No transaction with this gid (404).
    #[error("no transaction with gid {0:?}")]
    NotFound(String),
    /// What the service layer refused or failed with (its own mapping).
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
}

impl From<crate::store::StoreError> for DtmError {
    fn from(e: crate::store::StoreError) -> DtmError {
        DtmError::Coordinator(e.into())
    }
}

/// The gid as a Tandem xid.
fn gid(text: &str) -> Result<Xid, DtmError> {
    if text.is_empty() {
        return Err(DtmError::Invalid("gid is required".into()));
    }
    Xid::parse(text).map_err(|e| {
        DtmError::Invalid(format!(
            "gid {text:?} is not one Tandem can keep: {e} (1 to 64 of A-Z a-z 0-9 _ . : -; newGid makes one)"
        ))
    })
}

fn dtm_type(t: &str) -> Result<TransType, DtmError> {
    TransType::parse(t).map_err(DtmError::Invalid)
}

/// A refusal in DTM's words: a transaction in `status` cannot `what`.
fn cannot(status: GlobalStatus, what: &str) -> DtmError {
    DtmError::Failure(format!("current status '{}' ({status}), cannot {what}", view::global_status(status)))
}

/// The DTM options of a request, with its headers checked.
fn options(req: &TransRequest) -> Result<DtmOptions, DtmError> {
    for (name, value) in &req.branch_headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            return Err(DtmError::Invalid(format!("branch_headers: {name:?}: {value:?} is not a valid HTTP header")));
        }
    }
    if req.request_timeout > 3600 || req.retry_interval > 86_400 || req.retry_limit > 1000 {
        return Err(DtmError::Invalid(
            "request_timeout is at most 3600 s, retry_interval 86400 s, retry_limit 1000".into(),
        ));
    }
    if req.custom_data.as_ref().is_some_and(|c| c.len() > 65_536) {
        return Err(DtmError::Invalid("custom_data is at most 64 KiB".into()));
    }
    Ok(DtmOptions {
        branch_headers: req.branch_headers.clone(),
        request_timeout: req.request_timeout,
        retry_interval: req.retry_interval,
        timeout_to_fail: req.timeout_to_fail,
        custom_data: req.custom_data.clone(),
        concurrent: plan::concurrent(req),
        retry_limit: req.retry_limit,
    })
}

/// The key that makes a second insert of the same gid a no-op.
fn gid_key(xid: &Xid) -> Option<String> {
    Some(format!("dtm\u{1f}{xid}"))
}

impl Coordinator {
    /// The transaction `xid` if the caller may see it.
    async fn dtm_existing(&self, xid: &Xid, caller: &Caller) -> Result<Option<TxRow>, DtmError> {
        let Some(tx) = self.store().transaction(xid).await? else {
            return Ok(None);
        };
        if let Some(name) = caller.only_own() {
            if !self.store().began_by(xid.as_str(), name).await? {
                return Ok(None);
            }
        }
        Ok(Some(tx))
    }

    /// An existing transaction a DTM operation acts on: the caller's, begun
    /// through the DTM API.
    async fn dtm_own(&self, xid: &Xid, caller: &Caller) -> Result<Option<TxRow>, DtmError> {
        let tx = self.store().transaction(xid).await?;
        let Some(tx) = tx else {
            return Ok(None);
        };
        if let Some(name) = caller.only_own() {
            if !self.store().began_by(xid.as_str(), name).await? {
                return Err(DtmError::Failure(format!("gid {xid} is taken by a transaction of another client")));
            }
        }
        if tx.dtm.is_none() {
            return Err(DtmError::Failure(format!(
                "transaction {xid} was begun through /v1, not the DTM API; drive it through /v1"
            )));
        }
        Ok(Some(tx))
    }

    fn dtm_timeout(&self, t: TransType, req: &TransRequest) -> Result<u64, DtmError> {
        let timeout = plan::timeout(t, req.timeout_to_fail, self.timing().max_timeout).map_err(DtmError::Invalid)?;
        Ok(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
    }

    /// A payload as stored: the JSON text it came as, within the limits.
    fn dtm_payload(&self, field: &'static str, text: Option<&str>) -> Result<Option<Value>, DtmError> {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let value = Value::String(text.to_owned());
        self.check_payload_size(field, &value)?;
        Ok(Some(value))
    }

    /// A branch URL: empty (nothing to call) or one the allow-list permits.
    fn dtm_url(&self, field: &'static str, url: &str) -> Result<(), DtmError> {
        if url.is_empty() {
            return Ok(());
        }
        Ok(self.check_callback_url(field, url)?)
    }

    /// `prepare`: begins a TCC or XA transaction, or prepares a message.
    /// Preparing a prepared gid again is a success, anything else a failure.
    pub async fn dtm_prepare(&self, req: TransRequest, caller: &Caller) -> Result<(), DtmError> {
        let t = dtm_type(&req.trans_type)?;
        let xid = gid(&req.gid)?;
        if let Some(tx) = self.dtm_own(&xid, caller).await? {
            return prepared_again(&tx, t);
        }
        let inserted = match t {
            TransType::Saga => {
                return Err(DtmError::Invalid("a saga is submitted, not prepared (POST submit)".into()));
            }
            TransType::Tcc | TransType::Xa => {
                let new = self.dtm_transaction(&req, t, &xid, caller)?;
                self.store().insert_transaction(&new).await?.is_some()
            }
            TransType::Msg => {
                let new = self.dtm_message(&req, &xid, caller, BackCheck::Needed)?;
                self.store().insert_message(&new).await?.is_some()
            }
        };
        if inserted {
            self.metrics().begun.with_label_values(&[plan::mode(t).as_str()]).inc();
            return Ok(());
        }
        // A concurrent prepare of the same gid won.
        match self.dtm_own(&xid, caller).await? {
            Some(tx) => prepared_again(&tx, t),
            None => Err(DtmError::Coordinator(CoordinatorError::Store(crate::store::StoreError::Contended))),
        }
    }

    fn dtm_transaction(
        &self,
        req: &TransRequest,
        t: TransType,
        xid: &Xid,
        caller: &Caller,
    ) -> Result<NewTransaction, DtmError> {
        Ok(NewTransaction {
            xid: xid.clone(),
            mode: plan::mode(t),
            name: None,
            timeout_ms: self.dtm_timeout(t, req)?,
            idempotency_key: gid_key(xid),
            three_phase: None,
            began_by: caller.name().map(str::to_owned),
            dtm: Some(options(req)?),
        })
    }

    fn dtm_message(
        &self,
        req: &TransRequest,
        xid: &Xid,
        caller: &Caller,
        check: BackCheck,
    ) -> Result<NewMessage, DtmError> {
        if req.steps.is_empty() || req.steps.len() > tandem_wire::MAX_DELIVERIES {
            return Err(DtmError::Invalid(format!(
                "a msg needs 1 to {} steps, not {}",
                tandem_wire::MAX_DELIVERIES,
                req.steps.len()
            )));
        }
        let check_url = req.query_prepared.clone().unwrap_or_default();
        if check_url.is_empty() && check == BackCheck::Needed {
            return Err(DtmError::Invalid(
                "a prepared msg needs query_prepared: the coordinator asks it when the producer never submits".into(),
            ));
        }
        self.dtm_url("query_prepared", &check_url)?;
        let options = options(req)?;
        let mut deliveries = Vec::with_capacity(req.steps.len());
        for (i, step) in req.steps.iter().enumerate() {
            self.dtm_url("steps[].action", &step.action)?;
            deliveries.push(NewDelivery {
                branch_id: step_id(i)?,
                resource: plan::resource(&step.action),
                url: step.action.clone(),
                destination: None,
                payload: self.dtm_payload("payloads[]", req.payload(i))?,
            });
        }
        Ok(NewMessage {
            xid: xid.clone(),
            name: None,
            timeout_ms: self.dtm_timeout(TransType::Msg, req)?,
            idempotency_key: gid_key(xid),
            check_url,
            began_by: caller.name().map(str::to_owned),
            order: if options.concurrent { DeliveryOrder::Concurrent } else { DeliveryOrder::InOrder },
            deliveries,
            dtm: Some(options),
        })
    }

    fn dtm_saga(&self, req: &TransRequest, xid: &Xid, caller: &Caller) -> Result<NewSaga, DtmError> {
        let after = plan::saga_after(req).map_err(DtmError::Invalid)?;
        let mut steps = Vec::with_capacity(req.steps.len());
        for (i, (step, after)) in req.steps.iter().zip(after).enumerate() {
            self.dtm_url("steps[].action", &step.action)?;
            self.dtm_url("steps[].compensate", &step.compensate)?;
            steps.push(NewStep {
                branch_id: step_id(i)?,
                resource: plan::resource(&step.action),
                action_url: step.action.clone(),
                compensate_url: step.compensate.clone(),
                payload: self.dtm_payload("payloads[]", req.payload(i))?,
                action: if after.is_empty() { ActionStatus::Running } else { ActionStatus::Pending },
                after,
            });
        }
        Ok(NewSaga {
            xid: xid.clone(),
            name: None,
            timeout_ms: self.dtm_timeout(TransType::Saga, req)?,
            idempotency_key: gid_key(xid),
            retry_limit: (req.retry_limit > 0).then(|| u32::try_from(req.retry_limit).unwrap_or(u32::MAX)),
            began_by: caller.name().map(str::to_owned),
            steps,
            dtm: Some(options(req)?),
        })
    }

    /// `submit`: a new saga or msg starts; a prepared TCC, XA or msg is
    /// committed (the decision durable before the answer). With
    /// `wait_result`, the answer waits for the end (up to `request_timeout`).
    pub async fn dtm_submit(&self, req: TransRequest, caller: &Caller) -> Result<(), DtmError> {
        let t = dtm_type(&req.trans_type)?;
        let xid = gid(&req.gid)?;
        let wait = if req.wait_result { plan::wait(req.request_timeout) } else { Duration::ZERO };
        // A saga is nearly always new: stored at once, the gid's key (or the
        // xid) telling a repeat apart, without a read before.
        if t != TransType::Saga {
            if let Some(tx) = self.dtm_own(&xid, caller).await? {
                return self.dtm_submit_existing(&tx, t, wait).await;
            }
        }
        match t {
            TransType::Saga => {
                let new = self.dtm_saga(&req, &xid, caller)?;
                let started = match self.start_saga(&new, wait).await {
                    Err(CoordinatorError::Store(crate::store::StoreError::UniqueViolation { .. })) => {
                        return Err(DtmError::Failure(format!("gid {xid} is taken by a transaction begun through /v1")))
                    }
                    other => other?,
                };
                match started {
                    Some(reply) => outcome(reply, wait),
                    None => match self.dtm_own(&xid, caller).await? {
                        Some(tx) => self.dtm_submit_existing(&tx, t, wait).await,
                        None => {
                            Err(DtmError::Coordinator(CoordinatorError::Store(crate::store::StoreError::Contended)))
                        }
                    },
                }
            }
            TransType::Msg => {
                // Submitted without a prepare: stored, then decided at once;
                // nothing will ask its producer.
                let new = self.dtm_message(&req, &xid, caller, BackCheck::NotNeeded)?;
                if self.store().insert_message(&new).await?.is_some() {
                    self.metrics().begun.with_label_values(&[Mode::Msg.as_str()]).inc();
                }
                self.dtm_commit(&xid, Mode::Msg, wait).await
            }
            TransType::Tcc | TransType::Xa => {
                let new = self.dtm_transaction(&req, t, &xid, caller)?;
                if self.store().insert_transaction(&new).await?.is_some() {
                    self.metrics().begun.with_label_values(&[new.mode.as_str()]).inc();
                }
                self.dtm_commit(&xid, new.mode, wait).await
            }
        }
    }

    async fn dtm_submit_existing(&self, tx: &TxRow, t: TransType, wait: Duration) -> Result<(), DtmError> {
        if tx.mode != plan::mode(t) {
            return Err(DtmError::Failure(format!(
                "gid {} is a {} transaction, not {}",
                tx.xid,
                view::trans_type_name(tx.mode),
                t.as_str()
            )));
        }
        match tx.status {
            GlobalStatus::Active | GlobalStatus::Prepared => self.dtm_commit(&tx.xid, tx.mode, wait).await,
            // Submitted before (a client's retry): the same answer.
            GlobalStatus::Running | GlobalStatus::Committing | GlobalStatus::Delivering => {
                outcome(self.wait_terminal(&tx.xid, wait).await?, wait)
            }
            s => Err(cannot(s, "submit")),
        }
    }

    async fn dtm_commit(&self, xid: &Xid, mode: Mode, wait: Duration) -> Result<(), DtmError> {
        let reply = match mode {
            Mode::Msg => self.decide_message(xid.as_str(), Decision::Commit, wait).await,
            _ => self.decide(xid.as_str(), Decision::Commit, wait).await,
        };
        match reply {
            Ok(reply) => outcome(reply, wait),
            Err(CoordinatorError::InvalidState { detail, .. }) => Err(DtmError::Failure(detail)),
            Err(e) => Err(e.into()),
        }
    }

    /// `abort`: rolls back a prepared TCC or XA transaction, or aborts a
    /// prepared msg (the decision durable before the answer).
    pub async fn dtm_abort(&self, req: TransRequest, caller: &Caller) -> Result<(), DtmError> {
        let xid = gid(&req.gid)?;
        let Some(tx) = self.dtm_own(&xid, caller).await? else {
            return Err(DtmError::NotFound(req.gid));
        };
        let decided = match (tx.mode, tx.status) {
            (Mode::Msg, GlobalStatus::Prepared) => {
                self.decide_message(xid.as_str(), Decision::Rollback, Duration::ZERO).await
            }
            (Mode::Tcc | Mode::Xa, GlobalStatus::Active) => {
                self.decide(xid.as_str(), Decision::Rollback, Duration::ZERO).await
            }
            (Mode::Tcc | Mode::Xa | Mode::Msg, GlobalStatus::RollingBack) => return Ok(()),
            (mode, s) => {
                return Err(DtmError::Failure(format!(
                    "trans type '{}' current status '{}' ({s}), cannot abort",
                    view::trans_type_name(mode),
                    view::global_status(s)
                )))
            }
        };
        match decided {
            Ok(_) => Ok(()),
            Err(CoordinatorError::InvalidState { detail, .. }) => Err(DtmError::Failure(detail)),
            Err(e) => Err(e.into()),
        }
    }

    /// `registerBranch` (and `registerTccBranch`, `registerXaBranch`): a
    /// TCC branch with its confirm and cancel, or an XA branch with its
    /// URL, under the id the client chose. Registering it again succeeds.
    pub async fn dtm_register(&self, req: BranchRequest, caller: &Caller) -> Result<(), DtmError> {
        let t = dtm_type(&req.trans_type)?;
        let xid = gid(&req.gid)?;
        let branch_id = BranchId::parse(&req.branch_id)
            .map_err(|e| DtmError::Invalid(format!("branch_id {:?}: {e}", req.branch_id)))?;
        let (callback_url, action_url, status) = match t {
            TransType::Tcc => {
                self.dtm_url("confirm", &req.confirm)?;
                self.dtm_url("cancel", &req.cancel)?;
                (req.cancel.clone(), Some(req.confirm.clone()), BranchStatus::Registered)
            }
            TransType::Xa => {
                if req.url.is_empty() {
                    return Err(DtmError::Invalid("an xa branch needs its url".into()));
                }
                self.dtm_url("url", &req.url)?;
                (req.url.clone(), None, BranchStatus::Prepared)
            }
            other => {
                return Err(DtmError::Invalid(format!(
                    "registerBranch is for tcc and xa branches; a {} has its steps in its submit",
                    other.as_str()
                )))
            }
        };
        let not_prepared = || DtmError::Failure(format!("no trans with gid: {} status: prepared found", req.gid));
        let Some(tx) = self.dtm_own(&xid, caller).await? else {
            return Err(not_prepared());
        };
        if tx.mode != plan::mode(t) {
            return Err(DtmError::Failure(format!(
                "gid {xid} is a {} transaction; its branches are not {}",
                view::trans_type_name(tx.mode),
                t.as_str()
            )));
        }
        let resource = plan::resource(action_url.as_deref().filter(|u| !u.is_empty()).unwrap_or(&callback_url));
        let new = NewDtmBranch {
            branch_id,
            resource,
            callback_url,
            action_url,
            status,
            payload: self.dtm_payload("data", Some(&req.data))?,
        };
        match self.store().insert_dtm_branch(&xid, &new).await? {
            DtmRegistration::Registered(_) | DtmRegistration::AlreadyThere => Ok(()),
            DtmRegistration::NotActive => match self.store().transaction(&xid).await? {
                Some(now) if now.status == GlobalStatus::Active && now.expired => Err(DtmError::Failure(format!(
                    "no trans with gid: {} status: prepared found: its timeout_to_fail has passed",
                    req.gid
                ))),
                Some(now) if now.status == GlobalStatus::Active => {
                    Err(DtmError::Coordinator(CoordinatorError::LimitExceeded(format!(
                        "the transaction has {} branches, the most this coordinator allows (--max-branches)",
                        now.branch_count
                    ))))
                }
                _ => Err(not_prepared()),
            },
        }
    }

    /// `query`: the transaction and its branches in DTM's shapes; an
    /// unknown gid is `{"transaction": null, "branches": []}` as in DTM.
    pub async fn dtm_query(&self, gid_text: &str, caller: &Caller) -> Result<Value, DtmError> {
        if gid_text.is_empty() {
            return Err(DtmError::Invalid("no gid specified".into()));
        }
        let empty = json!({"transaction": null, "branches": []});
        let Ok(xid) = Xid::parse(gid_text) else {
            return Ok(empty);
        };
        let Some((tx, branches)) = self.store().transaction_with_branches(&xid).await? else {
            return Ok(empty);
        };
        if let Some(name) = caller.only_own() {
            if !self.store().began_by(xid.as_str(), name).await? {
                return Ok(empty);
            }
        }
        Ok(json!({"transaction": view::transaction(&tx, &branches), "branches": view::branches(&tx, &branches)}))
    }

    /// `all`: a page of transactions, newest first, in DTM's shape;
    /// `position` is the last gid of the previous page.
    pub async fn dtm_all(
        &self,
        position: Option<&str>,
        limit: i64,
        status: Option<&str>,
        caller: &Caller,
    ) -> Result<Value, DtmError> {
        let after = match position.filter(|p| !p.is_empty()) {
            Some(p) => Some(Xid::parse(p).map_err(|e| DtmError::Invalid(format!("position {p:?}: {e}")))?),
            None => None,
        };
        let filter = TxFilter { began_by: caller.only_own(), ..Default::default() };
        let rows = self.store().list_filtered(&filter, limit, after.as_ref()).await?;
        let next = if rows.len() as i64 == limit { rows.last().map(|r| r.xid.to_string()) } else { None };
        let xids: Vec<Xid> = rows.iter().map(|r| r.xid.clone()).collect();
        let mut branches = self.store().branches_of(&xids).await?;
        let wanted = status.filter(|s| !s.is_empty());
        let transactions: Vec<Value> = rows
            .iter()
            .filter(|r| wanted.is_none_or(|s| view::global_status(r.status) == s))
            .map(|r| view::transaction(r, &branches.remove(&r.xid).unwrap_or_default()))
            .collect();
        Ok(json!({"transactions": transactions, "next_position": next.unwrap_or_default()}))
    }

    /// `forceStop`: ends an unfinished transaction without calling its
    /// branches again, as `rollback_failed` (or `commit_failed` if a commit
    /// was decided): nothing proves its data consistent, and the status says so.
    pub async fn dtm_force_stop(&self, req: TransRequest, caller: &Caller) -> Result<(), DtmError> {
        let xid = gid(&req.gid)?;
        let Some(tx) = self.dtm_existing(&xid, caller).await? else {
            return Err(DtmError::NotFound(req.gid));
        };
        let refused = |s: GlobalStatus| {
            DtmError::Failure(format!("global transaction force stop error. status: {} ({s})", view::global_status(s)))
        };
        if tx.status.is_terminal() {
            return Err(refused(tx.status));
        }
        let mut event = TimelineEvent::new(Utc::now(), EventKind::OperatorStop);
        event.coordinator = Some(self.instance_id().to_owned());
        event.detail = Some("forceStop through the DTM API".into());
        let error = "stopped by forceStop (DTM API): its branches were not called again";
        match self.store().stop_moving(&xid, &force_stop_moves(), error, &event).await? {
            Some(row) => {
                self.events().ended(row.mode, row.status);
                tracing::warn!(%xid, status = %row.status, "forceStop through the DTM API");
                Ok(())
            }
            None => match self.store().transaction(&xid).await? {
                Some(now) => Err(refused(now.status)),
                None => Err(DtmError::NotFound(req.gid)),
            },
        }
    }
}

/// Whether a message needs a back-check URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackCheck {
    /// Prepared: the producer is asked if it never submits.
    Needed,
    /// Submitted in the same request: nobody will ask.
    NotNeeded,
}

/// DTM's id of step `i` as a branch id.
fn step_id(i: usize) -> Result<BranchId, DtmError> {
    BranchId::parse(plan::step_branch_id(i)).map_err(|e| DtmError::Invalid(e.to_string()))
}

/// A prepare of a gid that exists: fine if it is still prepared.
fn prepared_again(tx: &TxRow, t: TransType) -> Result<(), DtmError> {
    if tx.mode == plan::mode(t) && matches!(tx.status, GlobalStatus::Active | GlobalStatus::Prepared) {
        return Ok(());
    }
    Err(cannot(tx.status, "prepare"))
}

/// A decision's answer: without a wait, the durable decision is the
/// success; with one, the end (a rollback is a failure, still running is
/// ongoing).
fn outcome(reply: DecideReply, wait: Duration) -> Result<(), DtmError> {
    let t = match &reply {
        DecideReply::Finished(t) | DecideReply::InProgress(t) => t,
    };
    let rolled_back = Decision::of_status(t.status) == Some(Decision::Rollback)
        || matches!(t.status, GlobalStatus::CommitFailed | GlobalStatus::HeuristicMixed);
    if rolled_back {
        let why = t.rollback_reason.map(|r| r.as_str()).unwrap_or("a branch failed");
        return Err(DtmError::Failure(format!("the transaction is {} ({why})", t.status)));
    }
    match reply {
        DecideReply::InProgress(t) if !wait.is_zero() => {
            Err(DtmError::Ongoing(format!("the transaction is {} and not finished yet", t.status)))
        }
        _ => Ok(()),
    }
}
