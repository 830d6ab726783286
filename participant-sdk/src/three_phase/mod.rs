//! Three-phase commit (mode `3pc`) participant on PostgreSQL.
//!
//! A business request only [joins](ThreePhaseParticipant::join) the global
//! transaction with a payload that describes its work; the coordinator then
//! drives the branch through the callback router:
//!
//! - **CanCommit**: the application's [`ThreePhaseWork::can_commit`] votes,
//!   taking no locks. A yes is recorded with its vote deadline
//!   (`pre_commit_timeout_ms` from now); no PreCommit by then → the branch
//!   aborts on its own.
//! - **PreCommit**: [`ThreePhaseWork::execute`] runs in a local transaction
//!   that is then prepared (`PREPARE TRANSACTION`), so the pre-committed state
//!   survives a crash of this process and of the database. The gid carries the
//!   commit deadline (`do_commit_timeout_ms` from now); neither DoCommit nor
//!   abort by then → the branch commits on its own.
//! - **DoCommit** / **abort**: `COMMIT PREPARED` / `ROLLBACK PREPARED`.
//!   An abort for a branch that already committed on its own is answered 409
//!   `heuristic_commit`: the coordinator marks the transaction
//!   `heuristic_mixed`.
//!
//! The state of each branch is the table `tandem_three_phase` (votes, aborts,
//! commits) plus `pg_prepared_xacts` (pre-committed). The decisions are in
//! [`state`], without I/O. [`ThreePhaseParticipant::recover`] re-arms the
//! timers of a restarted process from the database alone.
//!
//! Callbacks and timers of one branch are serialized in this process (a lock
//! per branch); run one participant process per database and resource, or
//! route a branch's callbacks to one process.

pub mod state;
mod timer;

pub use state::{Effect, Event, LocalState, Reply};
pub use timer::now_ms;

pub use crate::BoxError;

use crate::callback::{self, Callbacks, Refusal};
use crate::client::{ClientError, TandemClient};
use crate::xa::{Gid, THREE_PHASE_GID_PREFIX};
use async_trait::async_trait;
use axum::Router;
use sqlx::{Executor, PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tandem_wire::{
    Branch, BranchId, CallbackAction, CallbackOutcome, CallbackReply, CallbackRequest, ErrorCode,
    RegisterBranchRequest, ThreePhaseTimeouts, Xid,
};
use tokio_util::sync::CancellationToken;

/// Path of the 3PC callback endpoint.
pub const CALLBACK_PATH: &str = "/tandem/3pc/callback";

/// The lock of each branch in flight, by branch (weak: gone when nobody holds it).
type BranchLocks = HashMap<(Xid, BranchId), Weak<tokio::sync::Mutex<()>>>;

/// Above this many entries, the branch-lock map drops the entries nobody holds.
const LOCKS_PRUNE_AT: usize = 1024;

/// Errors of the 3PC participant.
#[derive(Debug, thiserror::Error)]
pub enum ThreePhaseError {
    /// Talking to the coordinator failed.
    #[error(transparent)]
    Coordinator(#[from] ClientError),
    /// The participant's database failed; the coordinator retries or aborts.
    #[error("participant database: {0}")]
    Database(#[from] sqlx::Error),
    /// The server cannot prepare transactions; the message names the setting.
    #[error("{0}")]
    Unavailable(&'static str),
    /// The callback names another resource.
    #[error("this participant serves resource {ours:?}, not {asked:?}")]
    WrongResource {
        /// This participant's resource.
        ours: String,
        /// The callback's.
        asked: String,
    },
    /// A CanCommit or PreCommit without the transaction's phase timeouts.
    #[error("a {0} callback must carry three_phase timeouts")]
    MissingTimeouts(&'static str),
    /// An action of another mode (a saga's action or compensation).
    #[error("a 3PC participant does not serve {0} callbacks")]
    WrongAction(&'static str),
}

/// The application's side of a 3PC branch.
#[async_trait]
pub trait ThreePhaseWork: Send + Sync + 'static {
    /// CanCommit: whether this branch can take the work `payload` describes.
    /// A quick check that takes no locks and writes nothing; an error votes no.
    async fn can_commit(&self, pool: &PgPool, payload: &serde_json::Value) -> Result<bool, BoxError>;

    /// PreCommit: do the work on `conn`, inside the branch's local
    /// transaction, which is prepared afterwards. An error refuses PreCommit
    /// (the coordinator aborts) and rolls the local transaction back.
    async fn execute(&self, conn: &mut PgConnection, payload: &serde_json::Value) -> Result<(), BoxError>;
}

/// What a callback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What to answer the coordinator.
    pub reply: Reply,
    /// For a yes: whether it took effect now or before (a repeated delivery).
    pub outcome: CallbackOutcome,
    /// The branch's state afterwards.
    pub state: LocalState,
    /// Why, for a refusal.
    pub detail: Option<String>,
}

/// What [`ThreePhaseParticipant::recover`] re-armed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rearmed {
    /// Pre-committed branches whose commit timer runs again.
    pub pre_committed: usize,
    /// Yes votes whose abort timer runs again.
    pub voted: usize,
}

/// A 3PC participant for one resource on one PostgreSQL database
/// (`max_prepared_transactions > 0`). Cheap to clone.
#[derive(Clone)]
pub struct ThreePhaseParticipant {
    inner: Arc<Inner>,
}

struct Inner {
    /// The participant's database.
    pool: PgPool,
    /// Coordinator client.
    client: TandemClient,
    /// Resource name registered with each branch.
    resource: String,
    /// Where the coordinator reaches [`ThreePhaseParticipant::router`].
    callback_url: String,
    /// The application's vote and work.
    work: Arc<dyn ThreePhaseWork>,
    /// One lock per branch in flight: serializes that branch's callbacks and
    /// timers, and nothing else (a slow branch holds up no other).
    locks: std::sync::Mutex<BranchLocks>,
    /// Cancels every timer ([`ThreePhaseParticipant::stop`]).
    stop: CancellationToken,
}

/// Builder of [`ThreePhaseParticipant`] ([`ThreePhaseParticipant::builder`]).
pub struct ThreePhaseParticipantBuilder {
    /// The participant's database.
    pool: PgPool,
    /// Coordinator client.
    client: TandemClient,
    /// Resource name registered with each branch.
    resource: String,
    /// Where the coordinator reaches the callback router.
    callback_url: String,
    /// The application's vote and work.
    work: Arc<dyn ThreePhaseWork>,
}

impl ThreePhaseParticipantBuilder {
    /// Finishes.
    pub fn build(self) -> ThreePhaseParticipant {
        ThreePhaseParticipant {
            inner: Arc::new(Inner {
                pool: self.pool,
                client: self.client,
                resource: self.resource,
                callback_url: self.callback_url,
                work: self.work,
                locks: std::sync::Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
            }),
        }
    }
}

impl ThreePhaseParticipant {
    /// A builder of a participant for `resource` on `pool`, whose vote and
    /// work `work` provides. `public_base_url` is how the coordinator reaches
    /// this service; callbacks go to `{public_base_url}`[`CALLBACK_PATH`].
    pub fn builder(
        pool: PgPool,
        client: TandemClient,
        resource: &str,
        public_base_url: &str,
        work: impl ThreePhaseWork,
    ) -> ThreePhaseParticipantBuilder {
        ThreePhaseParticipantBuilder {
            pool,
            client,
            resource: resource.to_owned(),
            callback_url: format!("{}{}", public_base_url.trim_end_matches('/'), CALLBACK_PATH),
            work: Arc::new(work),
        }
    }

    /// Creates the participant's table (`tandem_three_phase`,
    /// [`crate::migrations::THREE_PHASE`]) if it is missing; serialized
    /// across processes.
    pub async fn install(&self) -> Result<(), sqlx::Error> {
        crate::migrations::install_postgres(&self.inner.pool, crate::migrations::THREE_PHASE).await
    }

    /// The resource name registered with each branch.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// The callback URL registered with each branch.
    pub fn callback_url(&self) -> &str {
        &self.inner.callback_url
    }

    /// Startup check: PostgreSQL must allow prepared transactions.
    pub async fn check(&self) -> Result<(), ThreePhaseError> {
        if !crate::xa::postgres::prepared_transactions_enabled(&self.inner.pool).await? {
            return Err(ThreePhaseError::Unavailable(
                "PostgreSQL has max_prepared_transactions = 0, so 3PC branches cannot pre-commit: \
                 set max_prepared_transactions (for example to 64) in postgresql.conf and restart the server",
            ));
        }
        Ok(())
    }

    /// Joins `xid` with a branch whose work `payload` describes (it is handed
    /// to [`ThreePhaseWork`] in CanCommit and PreCommit).
    pub async fn join(&self, xid: &Xid, payload: serde_json::Value) -> Result<Branch, ThreePhaseError> {
        let req = RegisterBranchRequest {
            resource: self.inner.resource.clone(),
            callback_url: self.inner.callback_url.clone(),
            payload: Some(payload),
            lock_keys: None,
        };
        Ok(self.inner.client.register(xid, &req).await?)
    }

    /// Stops every timer of this participant (shutdown; tests use it to play
    /// a process that died). Prepared branches stay in the database.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// The branch's state at this participant.
    pub async fn state(&self, xid: &Xid, branch: &BranchId) -> Result<LocalState, sqlx::Error> {
        Ok(self.read(xid, branch).await?.0)
    }

    /// Handles one coordinator callback.
    #[tracing::instrument(skip_all, fields(xid = %req.xid, branch_id = %req.branch_id, action = req.action.as_str()))]
    pub async fn handle_callback(&self, req: &CallbackRequest) -> Result<Answer, ThreePhaseError> {
        let arrived = std::time::Instant::now();
        if req.resource != self.inner.resource {
            return Err(ThreePhaseError::WrongResource {
                ours: self.inner.resource.clone(),
                asked: req.resource.clone(),
            });
        }
        let timeouts = || req.three_phase.ok_or(ThreePhaseError::MissingTimeouts(req.action.as_str()));
        let payload = req.payload.clone().unwrap_or(serde_json::Value::Null);
        let _serial = self.lock(&req.xid, &req.branch_id).await;
        let (state, gid) = self.read(&req.xid, &req.branch_id).await?;
        let mut detail = None;
        let event = match req.action {
            CallbackAction::CanCommit => {
                timeouts()?;
                let yes = match state {
                    // Only a first CanCommit asks the application.
                    LocalState::Unknown => match self.inner.work.can_commit(&self.inner.pool, &payload).await {
                        Ok(yes) => yes,
                        Err(e) => {
                            detail = Some(format!("CanCommit check failed: {e}"));
                            false
                        }
                    },
                    _ => true,
                };
                Event::CanCommit { yes }
            }
            CallbackAction::PreCommit => {
                timeouts()?;
                Event::PreCommit
            }
            CallbackAction::Commit => Event::DoCommit,
            CallbackAction::Rollback => Event::Abort,
            CallbackAction::Action | CallbackAction::Compensate | CallbackAction::Deliver | CallbackAction::Check => {
                return Err(ThreePhaseError::WrongAction(req.action.as_str()))
            }
        };
        let (effect, mut reply) = state::next(state, event);
        let mut outcome = match effect {
            Effect::Nothing => CallbackOutcome::AlreadyDone,
            // An abort before any vote: the marker refuses a late PreCommit.
            Effect::RecordAbort if state == LocalState::Unknown => CallbackOutcome::EmptyRollback,
            _ => CallbackOutcome::Applied,
        };
        let mut after = state;
        match effect {
            Effect::Nothing => {}
            Effect::RecordVote => {
                let deadline = now_ms() + ms(timeouts()?.pre_commit_timeout_ms);
                self.record_vote(&req.xid, &req.branch_id, deadline).await?;
                self.arm(req.xid.clone(), req.branch_id.clone(), deadline, Event::VoteTimeout);
                after = LocalState::Voted;
            }
            Effect::RecordAbort => {
                let why = match event {
                    Event::CanCommit { .. } => detail.clone().unwrap_or_else(|| "voted no".into()),
                    _ => "abort from the coordinator".into(),
                };
                self.record_abort(&req.xid, &req.branch_id, &why).await?;
                after = LocalState::Aborted;
            }
            Effect::Prepare => {
                let t = timeouts()?;
                match self.prepare(&req.xid, &req.branch_id, &payload, arrived, t).await? {
                    Ok(commit_at) => {
                        self.arm(req.xid.clone(), req.branch_id.clone(), commit_at, Event::CommitTimeout);
                        after = LocalState::PreCommitted;
                    }
                    Err(why) => {
                        self.record_abort(&req.xid, &req.branch_id, &why).await?;
                        detail = Some(why);
                        reply = Reply::No;
                        after = LocalState::Aborted;
                    }
                }
            }
            Effect::CommitPrepared | Effect::RollbackPrepared => {
                let commit = effect == Effect::CommitPrepared;
                let how = if commit { "committed by DoCommit" } else { "abort from the coordinator" };
                let applied = match &gid {
                    Some(gid) => self.finish_prepared(gid, commit, how).await?,
                    None => false,
                };
                after = if commit { LocalState::Committed } else { LocalState::Aborted };
                if !applied {
                    // Finished meanwhile by someone else: answer from what it became.
                    let (now, _) = self.read(&req.xid, &req.branch_id).await?;
                    reply = state::next(now, event).1;
                    outcome = CallbackOutcome::AlreadyDone;
                    after = now;
                }
            }
        }
        if reply == Reply::HeuristicCommit {
            tracing::error!("abort received for a branch that committed on its own timeout (heuristic commit)");
            detail = Some("the branch already committed on its own timeout (heuristic commit)".into());
        }
        if detail.is_none() && reply != Reply::Yes {
            detail = Some(format!("{} refused: the branch is {}", req.action.as_str(), state.as_str()));
        }
        Ok(Answer { reply, outcome, state: after, detail })
    }

    /// Re-arms the timers of this database's 3PC branches (call at startup):
    /// a prepared branch commits at the deadline in its gid, a yes vote
    /// without PreCommit aborts at its recorded deadline. A passed deadline
    /// fires at once.
    pub async fn recover(&self) -> Result<Rearmed, ThreePhaseError> {
        let gids: Vec<String> = sqlx::query_scalar(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1)",
        )
        .bind(THREE_PHASE_GID_PREFIX)
        .fetch_all(&self.inner.pool)
        .await?;
        // This resource's branches (a prepared branch's row reads `voted` outside its transaction).
        let ours: std::collections::HashSet<(String, String)> =
            sqlx::query_as("SELECT xid, branch_id FROM tandem_three_phase WHERE resource = $1 AND state = 'voted'")
                .bind(&self.inner.resource)
                .fetch_all(&self.inner.pool)
                .await?
                .into_iter()
                .collect();
        let mut out = Rearmed::default();
        for gid in gids.iter().filter_map(|g| Gid::parse_postgres(g).ok()) {
            if !ours.contains(&(gid.xid().to_string(), gid.branch().to_string())) {
                continue;
            }
            if let Some(at) = gid.commit_at_ms() {
                self.arm(gid.xid().clone(), gid.branch().clone(), at, Event::CommitTimeout);
                out.pre_committed += 1;
            }
        }
        let voted: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT xid, branch_id, deadline_ms FROM tandem_three_phase WHERE resource = $1 AND state = 'voted'",
        )
        .bind(&self.inner.resource)
        .fetch_all(&self.inner.pool)
        .await?;
        for (xid, branch, deadline) in voted {
            let (Ok(xid), Ok(branch)) = (Xid::parse(&xid), BranchId::parse(&branch)) else { continue };
            // A pre-committed branch also reads `voted`; its vote timer finds nothing to do.
            self.arm(xid, branch, deadline.unwrap_or(0), Event::VoteTimeout);
            out.voted += 1;
        }
        tracing::info!(pre_committed = out.pre_committed, voted = out.voted, "3PC timers re-armed");
        Ok(out)
    }

    /// Deletes this resource's rows of finished branches (aborted or
    /// committed) last changed more than `age` ago whose transaction the
    /// coordinator reports terminal. Until then a row is needed: an abort
    /// row refuses a late PreCommit, and a committed row answers a late abort
    /// with `heuristic_commit`. Rows of transactions the coordinator does not
    /// know, or could not be asked about, stay. At most 1000 transactions per
    /// call; returns the rows deleted. Run it now and then.
    pub async fn purge(&self, age: std::time::Duration) -> Result<u64, ThreePhaseError> {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT xid FROM tandem_three_phase WHERE resource = $1 AND state IN ('aborted', 'committed') \
             AND updated_at < now() - $2 * interval '1 millisecond' LIMIT 1000",
        )
        .bind(&self.inner.resource)
        .bind(age_ms)
        .fetch_all(&self.inner.pool)
        .await?;
        let mut ended = Vec::new();
        for xid in candidates.iter().filter_map(|x| Xid::parse(x).ok()) {
            match self.inner.client.get(&xid).await {
                Ok(t) if t.status.is_terminal() => ended.push(xid.to_string()),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%xid, error = %e, "purge keeps the row: the coordinator did not say it ended")
                }
            }
        }
        let deleted = sqlx::query(
            "DELETE FROM tandem_three_phase WHERE resource = $1 AND xid = ANY($2) \
             AND state IN ('aborted', 'committed') AND updated_at < now() - $3 * interval '1 millisecond'",
        )
        .bind(&self.inner.resource)
        .bind(&ended)
        .bind(age_ms)
        .execute(&self.inner.pool)
        .await?
        .rows_affected();
        Ok(deleted)
    }

    /// A router serving [`CALLBACK_PATH`]; merge it into the service's router.
    pub fn router(&self) -> Router {
        callback::router(CALLBACK_PATH, self.clone(), self.inner.client.verifier())
    }

    async fn lock(&self, xid: &Xid, branch: &BranchId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= LOCKS_PRUNE_AT {
                map.retain(|_, w| w.strong_count() > 0);
            }
            let key = (xid.clone(), branch.clone());
            match map.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// The branch's state and, if it is pre-committed, its prepared gid.
    async fn read(&self, xid: &Xid, branch: &BranchId) -> Result<(LocalState, Option<Gid>), sqlx::Error> {
        let (row, gid): (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT (SELECT state FROM tandem_three_phase WHERE xid = $1 AND branch_id = $2), \
                    (SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
                       AND starts_with(gid, $3) AND right(gid, length($4)) = $4 LIMIT 1)",
        )
        .bind(xid.as_str())
        .bind(branch.as_str())
        .bind(THREE_PHASE_GID_PREFIX)
        .bind(format!("|{xid}|{branch}"))
        .fetch_one(&self.inner.pool)
        .await?;
        if let Some(gid) = gid.and_then(|g| Gid::parse_postgres(&g).ok()) {
            return Ok((LocalState::PreCommitted, Some(gid)));
        }
        let state = match row.as_deref() {
            None => LocalState::Unknown,
            Some("voted") => LocalState::Voted,
            Some("committed") => LocalState::Committed,
            Some(_) => LocalState::Aborted,
        };
        Ok((state, None))
    }

    /// Records a yes vote. Committed without waiting for the WAL flush
    /// (`synchronous_commit = off` for this statement's transaction only): a
    /// vote lost in a crash of the database makes PreCommit find no vote and
    /// refuse, which aborts the transaction; and a PreCommit's PREPARE
    /// flushes the WAL past the vote it turns into a commit.
    async fn record_vote(&self, xid: &Xid, branch: &BranchId, deadline_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) \
             INSERT INTO tandem_three_phase (xid, branch_id, resource, state, deadline_ms) \
             SELECT $1, $2, $3, 'voted', $4 FROM relaxed ON CONFLICT (xid, branch_id) DO NOTHING",
        )
        .bind(xid.as_str())
        .bind(branch.as_str())
        .bind(&self.inner.resource)
        .bind(deadline_ms)
        .execute(&self.inner.pool)
        .await
        .map(|_| ())
    }

    /// Records the branch as aborted unless it committed (a committed row is never overwritten).
    async fn record_abort(&self, xid: &Xid, branch: &BranchId, why: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO tandem_three_phase (xid, branch_id, resource, state, detail) \
             VALUES ($1, $2, $3, 'aborted', $4) \
             ON CONFLICT (xid, branch_id) DO UPDATE SET state = 'aborted', detail = $4, updated_at = now() \
             WHERE tandem_three_phase.state = 'voted'",
        )
        .bind(xid.as_str())
        .bind(branch.as_str())
        .bind(&self.inner.resource)
        .bind(why)
        .execute(&self.inner.pool)
        .await
        .map(|_| ())
    }

    /// PreCommit: the vote row turns `committed` and the work runs, in one
    /// local transaction, which is then prepared (its gid carrying the commit
    /// deadline, counted from now) and checked in `pg_prepared_xacts`.
    /// Returns the commit deadline. `Ok(Err(why))`: refused, nothing is left
    /// prepared; so is work that outlasted the coordinator's wait for the
    /// acknowledgement (`arrived` + `pre_commit_timeout_ms`), which the
    /// coordinator has given up on and is aborting.
    async fn prepare(
        &self,
        xid: &Xid,
        branch: &BranchId,
        payload: &serde_json::Value,
        arrived: std::time::Instant,
        t: ThreePhaseTimeouts,
    ) -> Result<Result<i64, String>, sqlx::Error> {
        let mut conn = self.inner.pool.acquire().await?;
        conn.execute("BEGIN").await?;
        let run = async {
            let n = sqlx::query(
                "UPDATE tandem_three_phase SET state = 'committed', deadline_ms = NULL, updated_at = now() \
                 WHERE xid = $1 AND branch_id = $2 AND state = 'voted'",
            )
            .bind(xid.as_str())
            .bind(branch.as_str())
            .execute(&mut *conn)
            .await
            .map_err(|e| e.to_string())?
            .rows_affected();
            if n != 1 {
                return Err("the vote is no longer open".to_owned());
            }
            self.inner.work.execute(&mut conn, payload).await.map_err(|e| format!("PreCommit work failed: {e}"))?;
            if arrived.elapsed() > std::time::Duration::from_millis(t.pre_commit_timeout_ms) {
                return Err("PreCommit work outlasted the coordinator's wait; not prepared".to_owned());
            }
            Ok(())
        };
        if let Err(why) = run.await {
            if conn.execute("ROLLBACK").await.is_err() {
                conn.detach();
            }
            return Ok(Err(why));
        }
        let commit_at = now_ms() + ms(t.do_commit_timeout_ms);
        let gid = Gid::three_phase(xid, branch, commit_at);
        if let Err(e) = conn.execute(gid.statement("PREPARE TRANSACTION").as_str()).await {
            conn.detach();
            return Err(e);
        }
        // Inside an aborted block PREPARE answers ROLLBACK and no error: check.
        let prepared: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = $1)")
            .bind(gid.as_postgres())
            .fetch_one(&mut *conn)
            .await?;
        Ok(if prepared {
            Ok(commit_at)
        } else {
            Err("the branch did not prepare (its transaction had aborted)".into())
        })
    }

    /// `COMMIT PREPARED` or `ROLLBACK PREPARED`, then records how it ended.
    /// `false`: the gid was gone (finished meanwhile elsewhere); nothing done.
    async fn finish_prepared(&self, gid: &Gid, commit: bool, how: &str) -> Result<bool, sqlx::Error> {
        let verb = if commit { "COMMIT PREPARED" } else { "ROLLBACK PREPARED" };
        match self.inner.pool.execute(gid.statement(verb).as_str()).await {
            Ok(_) => {}
            // 42704: no such gid any more.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42704") => return Ok(false),
            Err(e) => return Err(e),
        }
        if commit {
            // A note for operators, not state (the state became `committed` in
            // the prepared transaction itself): no need to wait for the flush.
            sqlx::query(
                "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) \
                 UPDATE tandem_three_phase SET detail = $3, updated_at = now() FROM relaxed \
                 WHERE xid = $1 AND branch_id = $2",
            )
            .bind(gid.xid().as_str())
            .bind(gid.branch().as_str())
            .bind(how)
            .execute(&self.inner.pool)
            .await?;
        } else {
            self.record_abort(gid.xid(), gid.branch(), how).await?;
        }
        Ok(true)
    }

    /// Runs `event` (a timeout) for the branch at `deadline_ms`.
    fn arm(&self, xid: Xid, branch: BranchId, deadline_ms: i64, event: Event) {
        let this = self.clone();
        timer::arm(deadline_ms, self.inner.stop.clone(), async move {
            if let Err(e) = this.on_timeout(&xid, &branch, event).await {
                // Handled here: the next recover() re-arms from the database.
                tracing::warn!(%xid, branch_id = %branch, error = %e, "3PC timer failed; recover() re-arms it");
            }
        });
    }

    async fn on_timeout(&self, xid: &Xid, branch: &BranchId, event: Event) -> Result<(), sqlx::Error> {
        let _serial = self.lock(xid, branch).await;
        let (state, gid) = self.read(xid, branch).await?;
        match (state::next(state, event).0, gid) {
            (Effect::RecordAbort, _) => {
                tracing::info!(%xid, branch_id = %branch, "no PreCommit before the vote deadline; aborting");
                self.record_abort(xid, branch, "no PreCommit before the vote deadline").await
            }
            (Effect::CommitPrepared, Some(gid)) => {
                tracing::warn!(%xid, branch_id = %branch, "neither DoCommit nor abort before the deadline; committing");
                self.finish_prepared(&gid, true, "committed on its own timeout").await.map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Callbacks for ThreePhaseParticipant {
    const MODE: &'static str = "3PC";

    async fn answer(self, req: CallbackRequest) -> Result<CallbackReply, Refusal> {
        match self.handle_callback(&req).await {
            Ok(Answer { reply: Reply::Yes, outcome, state, .. }) => {
                Ok(CallbackReply { outcome, state: Some(state.as_str().to_owned()) })
            }
            Ok(Answer { reply: Reply::HeuristicCommit, detail, .. }) => {
                Err(Refusal::permanent(ErrorCode::HeuristicCommit, detail.unwrap_or_default()))
            }
            Ok(Answer { detail, .. }) => Err(Refusal::permanent(ErrorCode::InvalidState, detail.unwrap_or_default())),
            Err(e @ ThreePhaseError::WrongResource { .. }) => Err(Refusal::unknown_resource(e.to_string())),
            Err(e @ (ThreePhaseError::MissingTimeouts(_) | ThreePhaseError::WrongAction(_))) => {
                Err(Refusal::permanent(ErrorCode::ValidationFailed, e.to_string()))
            }
            Err(e) => Err(Refusal::retry(e.to_string())),
        }
    }
}
