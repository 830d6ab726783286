//! The web console at `/console`: server-rendered pages (maud: HTML escaped
//! by construction), no JavaScript, every page and asset compiled into the
//! binary. It reads and acts through the same [`Coordinator`] operations as
//! the API ([`crate::transaction::operator`]), in-process.
//!
//! Mutations are POST forms reached through a confirmation page, refused
//! cross-site (`Sec-Fetch-Site`, `Origin`); [`Operator`] is the one
//! extractor every page takes: with authentication on, it requires a
//! session, begun at `/console/login` with an admin token
//! ([`crate::auth::session`]) and ended by `/console/logout`.

pub mod svg;

use crate::auth::session::{self, Transport};
use crate::auth::{Auth, Role};
use crate::error::CoordinatorError;
use crate::transaction::service::ListFilter;
use crate::Coordinator;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use std::sync::Arc;
use tandem_wire::{Branch, GlobalStatus, Mode, Timeline, TimelineEvent, Transaction, Xid, STUCK_ATTEMPTS};

/// The stylesheet, compiled in.
const CSS: &str = include_str!("console.css");
/// Its cache validator: changes with the binary's version.
const CSS_ETAG: &str = concat!("\"console-", env!("CARGO_PKG_VERSION"), "\"");
/// Rows per list page.
const PAGE: i64 = 50;

/// The console's routes, under `/console`.
pub fn router() -> Router<Coordinator> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/", get(overview))
        .route("/console/transactions", get(list))
        .route("/console/transactions/{xid}", get(transaction))
        .route("/console/transactions/{xid}/retry", get(confirm_retry).post(retry))
        .route("/console/transactions/{xid}/stop", get(confirm_stop).post(stop))
        .route("/console/locks", get(locks))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/console.css", get(css))
}

/// What the console needs to know about authentication.
#[derive(Clone)]
pub struct Access {
    /// The API's tokens (an operator logs in with an admin one).
    auth: Arc<Auth>,
    /// Whether cookies are `Secure`.
    transport: Transport,
}

impl Access {
    /// The console's access with `auth`; `secure_cookies` when served over TLS.
    pub fn new(auth: Arc<Auth>, secure_cookies: bool) -> Access {
        Access { auth, transport: if secure_cookies { Transport::Tls } else { Transport::Plain } }
    }
}

/// Whoever uses the console: anyone when authentication is off, else the
/// holder of a live session (logged in with an admin token). A request
/// without one is sent to the login page.
#[derive(Debug)]
pub struct Operator;

impl FromRequestParts<Coordinator> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Coordinator) -> Result<Self, Response> {
        let Some(access) = parts.extensions.get::<Access>() else {
            tracing::error!("the console is served without its access layer");
            return Err(page_error(StatusCode::INTERNAL_SERVER_ERROR, "Error", "The console is misconfigured."));
        };
        if access.auth.is_open() {
            return Ok(Operator);
        }
        let Some(id) = session::from_cookies(&parts.headers) else {
            return Err(Redirect::to("/console/login").into_response());
        };
        match c.store().session(&session::id_hash(&id)).await {
            Ok(Some(_name)) => Ok(Operator),
            Ok(None) => Err(Redirect::to("/console/login").into_response()),
            Err(e) => Err(failed(e.into())),
        }
    }
}

async fn login_page(Extension(access): Extension<Access>) -> Response {
    if access.auth.is_open() {
        return Redirect::to("/console").into_response();
    }
    login_form(StatusCode::OK, None)
}

fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let mut resp = page_with(
        "Log in",
        html! {
            h1 { "Log in" }
            p { "The console needs an API token with the " code { "admin" } " role." }
            @if let Some(e) = error { p.error { (e) } }
            form.login method="post" action="/console/login" {
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="off" required;
                button type="submit" { "Log in" }
            }
        },
        Header::Bare,
    );
    *resp.status_mut() = status;
    resp
}

/// The login form's body.
#[derive(Debug, Deserialize)]
struct LoginForm {
    /// The admin token.
    token: String,
}

async fn login(
    _: SameOrigin,
    State(c): State<Coordinator>,
    Extension(access): Extension<Access>,
    Form(form): Form<LoginForm>,
) -> Response {
    if access.auth.is_open() {
        return Redirect::to("/console").into_response();
    }
    let Some(entry) = access.auth.tokens().find(form.token.trim()) else {
        return login_form(StatusCode::UNAUTHORIZED, Some("That is not a token this coordinator knows."));
    };
    if entry.admit().is_err() {
        return login_form(StatusCode::TOO_MANY_REQUESTS, Some("Too many attempts with this token; wait a moment."));
    }
    if !entry.roles.has(Role::Admin) {
        return login_form(StatusCode::FORBIDDEN, Some("That token is not an admin token."));
    }
    let (id, hash) = session::new_id();
    let expires = Utc::now() + chrono::Duration::seconds(session::SESSION_TTL.as_secs() as i64);
    if let Err(e) = c.store().insert_session(&hash, &entry.name, expires).await {
        return failed(e.into());
    }
    tracing::info!(name = &*entry.name, "console login");
    let mut resp = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id, access.transport)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(
    _: SameOrigin,
    State(c): State<Coordinator>,
    Extension(access): Extension<Access>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(id) = session::from_cookies(&headers) {
        if let Err(e) = c.store().delete_session(&session::id_hash(&id)).await {
            return failed(e.into());
        }
    }
    let mut resp = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(access.transport)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// A POST from a page of this console: a browser says where a form came
/// from (`Sec-Fetch-Site`, else `Origin`); anything cross-site is refused.
#[derive(Debug)]
pub struct SameOrigin;

impl<S: Send + Sync> FromRequestParts<S> for SameOrigin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let h = &parts.headers;
        let text = |name| h.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        let refused =
            || page_error(StatusCode::FORBIDDEN, "Refused", "This action must come from the console's own page.");
        if let Some(site) = text("sec-fetch-site") {
            return if matches!(site, "same-origin" | "none") { Ok(SameOrigin) } else { Err(refused()) };
        }
        if let Some(origin) = text("origin") {
            let host = text("host").unwrap_or_default();
            let origin_host = origin.split("://").nth(1).unwrap_or_default();
            return if !host.is_empty() && origin_host == host { Ok(SameOrigin) } else { Err(refused()) };
        }
        // No browser sent this (a browser always names a form's origin): no CSRF to fear.
        Ok(SameOrigin)
    }
}

/// An HTML page with the console's headers.
/// What a page's header bar holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// The navigation and the logout button: a page behind the session.
    Full,
    /// The name alone: the login page.
    Bare,
}

fn page(title: &str, body: Markup) -> Response {
    page_with(title, body, Header::Full)
}

fn page_with(title: &str, body: Markup, header: Header) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tandem" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header.top {
                    a.brand href="/console" { "Tandem" }
                    @if header == Header::Full {
                        nav {
                            a href="/console" { "Overview" }
                            a href="/console/transactions" { "Transactions" }
                            a href="/console#attention" { "Needs attention" }
                            a href="/console/locks" { "Locks" }
                        }
                        form.logout method="post" action="/console/logout" { button type="submit" { "Log out" } }
                    }
                }
                main { (body) }
            }
        }
    };
    let mut resp = (StatusCode::OK, axum::response::Html(markup.into_string())).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn page_error(status: StatusCode, title: &str, detail: &str) -> Response {
    let mut resp =
        page(title, html! { h1 { (title) } p.error { (detail) } p { a href="/console" { "Back to the overview" } } });
    *resp.status_mut() = status;
    resp
}

/// A service error as a page; database trouble logged here, once.
fn failed(e: CoordinatorError) -> Response {
    match e {
        CoordinatorError::TransactionNotFound(xid) => {
            page_error(StatusCode::NOT_FOUND, "Not found", &format!("No transaction {xid}."))
        }
        CoordinatorError::Store(e) if e.is_transient() => {
            tracing::warn!(error = %e, "console: database unavailable");
            page_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The coordinator's database is unavailable; reload in a moment.",
            )
        }
        CoordinatorError::Store(e) => {
            tracing::error!(error = %e, "console: database error");
            page_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "The coordinator's database answered with an error; see its log.",
            )
        }
        other => page_error(StatusCode::CONFLICT, "Not done", &other.to_string()),
    }
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8")),
            (header::ETAG, HeaderValue::from_static(CSS_ETAG)),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        CSS,
    )
        .into_response()
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn badge(status: GlobalStatus) -> Markup {
    let class = match status {
        GlobalStatus::Committed | GlobalStatus::Delivered => "ok",
        GlobalStatus::RolledBack => "rolled",
        GlobalStatus::CommitFailed | GlobalStatus::RollbackFailed | GlobalStatus::HeuristicMixed => "bad",
        _ => "busy",
    };
    html! { span class=(format!("badge {class}")) { (status.as_str()) } }
}

/// Whether a person must look at `tx`: a terminal failure, or decided and retried often.
fn needs_person(tx: &Transaction) -> bool {
    matches!(tx.status, GlobalStatus::CommitFailed | GlobalStatus::RollbackFailed | GlobalStatus::HeuristicMixed)
        || (actionable(tx.status) && tx.branches.iter().any(|b| b.attempts >= STUCK_ATTEMPTS as u32))
}

/// Whether retry and stop apply: decided and unfinished.
fn actionable(status: GlobalStatus) -> bool {
    crate::transaction::statuses::DECIDED.contains(&status)
}

fn tx_table(txs: &[Transaction]) -> Markup {
    html! {
        table.list {
            thead { tr { th { "xid" } th { "name" } th { "mode" } th { "status" } th { "created" } th { "finished" } th.num { "branches" } } }
            tbody {
                @for t in txs {
                    tr {
                        td.mono { a href=(format!("/console/transactions/{}", t.xid)) { (t.xid) } }
                        td { (t.name.as_deref().unwrap_or("")) }
                        td { (t.mode.as_str()) }
                        td { (badge(t.status)) }
                        td { (time(t.created_at)) }
                        td { (t.finished_at.map(time).unwrap_or_default()) }
                        td.num { (t.branches.len()) }
                    }
                }
            }
        }
        @if txs.is_empty() { p.empty { "None." } }
    }
}

async fn overview(_: Operator, State(c): State<Coordinator>) -> Response {
    let o = match c.overview().await {
        Ok(o) => o,
        Err(e) => return failed(e),
    };
    let counts = |rows: &[tandem_wire::StatusCount]| {
        html! {
            table.counts {
                thead { tr { th { "status" } th { "mode" } th.num { "count" } } }
                tbody { @for r in rows { tr { td { (badge(r.status)) } td { (r.mode.as_str()) } td.num { (r.count) } } } }
            }
            @if rows.is_empty() { p.empty { "None." } }
        }
    };
    page(
        "Overview",
        html! {
            h1 { "Overview" }
            section.charts {
                (svg::chart(&o.last_hour, svg::Series::Throughput, "Ended per minute"))
                (svg::chart(&o.last_hour, svg::Series::Failures, "Failures per minute"))
            }
            section.grid {
                div { h2 { "Unfinished" } (counts(&o.in_flight)) }
                div { h2 { "Ended, last 24 h" } (counts(&o.ended_last_24h)) }
            }
            h2 #attention { "Needs attention" }
            p.hint { "Ended commit_failed, rollback_failed or heuristic_mixed, or decided and retried "
                (STUCK_ATTEMPTS) " times or more." }
            (tx_table(&o.needs_attention))
            h2 { "Oldest unfinished" }
            (tx_table(&o.oldest_unfinished))
        },
    )
}

/// The list page's query, as the filter form sends it (empty fields are absent).
#[derive(Debug, Default, Deserialize)]
struct ListForm {
    status: Option<String>,
    mode: Option<String>,
    name: Option<String>,
    xid: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    after: Option<String>,
}

/// A time of the form: `datetime-local` (UTC) or RFC 3339.
fn form_time(field: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>, String> {
    let Some(s) = v.as_deref().map(str::trim).filter(|s| !s.is_empty()) else { return Ok(None) };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(Some(t.and_utc()));
        }
    }
    Err(format!("{field}: {s:?} is not a time (use 2026-12-03T14:30, UTC)"))
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl ListForm {
    fn filter(&self) -> Result<ListFilter, String> {
        let status =
            nonempty(&self.status).map(|s| s.parse::<GlobalStatus>()).transpose().map_err(|e| e.to_string())?;
        let mode = nonempty(&self.mode).map(|s| s.parse::<Mode>()).transpose().map_err(|e| e.to_string())?;
        let name = nonempty(&self.name);
        let xid = nonempty(&self.xid);
        for (field, v) in [("name", &name), ("xid", &xid)] {
            if let Some(v) = v {
                tandem_wire::limits::check_text(field, v, 0, tandem_wire::limits::MAX_NAME_CHARS)
                    .map_err(|e| e.to_string())?;
            }
        }
        let after = nonempty(&self.after).map(Xid::parse).transpose().map_err(|e| format!("after: {e}"))?;
        Ok(ListFilter {
            status,
            mode,
            name,
            xid,
            created_after: form_time("created after", &self.created_after)?,
            created_before: form_time("created before", &self.created_before)?,
            began_by: None,
            limit: PAGE,
            after,
        })
    }

    /// The query of the next page: these filters, after `next`.
    fn next_query(&self, next: &str) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("status", &self.status),
            ("mode", &self.mode),
            ("name", &self.name),
            ("xid", &self.xid),
            ("created_after", &self.created_after),
            ("created_before", &self.created_before),
        ] {
            if let Some(v) = nonempty(v) {
                q.append_pair(k, &v);
            }
        }
        q.append_pair("after", next);
        q.finish()
    }
}

async fn list(_: Operator, State(c): State<Coordinator>, Query(form): Query<ListForm>) -> Response {
    let (result, problem) = match form.filter() {
        Ok(f) => match c.list(f).await {
            Ok(l) => (Some(l), None),
            Err(CoordinatorError::Validation(e)) => (None, Some(e)),
            Err(e) => return failed(e),
        },
        Err(e) => (None, Some(e)),
    };
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let status_now = value(&form.status);
    let mode_now = value(&form.mode);
    let mut resp = page(
        "Transactions",
        html! {
            h1 { "Transactions" }
            form.filters method="get" action="/console/transactions" {
                label { "status " select name="status" {
                    option value="" { "any" }
                    @for s in GlobalStatus::ALL {
                        option value=(s.as_str()) selected[status_now == s.as_str()] { (s.as_str()) }
                    }
                } }
                label { "mode " select name="mode" {
                    option value="" { "any" }
                    @for m in Mode::ALL {
                        option value=(m.as_str()) selected[mode_now == m.as_str()] { (m.as_str()) }
                    }
                } }
                label { "name starts with " input type="text" name="name" value=(value(&form.name)) size="14"; }
                label { "xid contains " input type="text" name="xid" value=(value(&form.xid)) size="14"; }
                label { "created after " input type="datetime-local" name="created_after" value=(value(&form.created_after)); }
                label { "before " input type="datetime-local" name="created_before" value=(value(&form.created_before)); }
                button type="submit" { "Filter" }
                " " a href="/console/transactions" { "clear" }
            }
            @if let Some(p) = &problem { p.error #filter-error { (p) } }
            @if let Some(l) = &result {
                (tx_table(&l.transactions))
                @if let Some(next) = &l.next {
                    p { a.next href=(format!("/console/transactions?{}", form.next_query(next))) { "Older →" } }
                }
            }
        },
    );
    if problem.is_some() {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
    }
    resp
}

/// The flash message after an action.
#[derive(Debug, Deserialize)]
struct Flash {
    done: Option<String>,
}

fn why_box(tx: &Transaction) -> Markup {
    let errors: Vec<&Branch> = tx.branches.iter().filter(|b| b.last_error.is_some()).collect();
    let advice = match tx.status {
        GlobalStatus::HeuristicMixed => "A 3PC participant committed on its own timeout while the transaction rolled back: \
            the outcome is split. Find the branch that committed (heuristic_committed), decide the business outcome, \
            and repair its data by hand; no retry can undo it.",
        GlobalStatus::CommitFailed => "A participant refused its commit for good (409): its effect is not applied. \
            Repair its data so that it matches the commit, then record what you did.",
        GlobalStatus::RollbackFailed => "A participant refused its rollback for good (409): its effect may still be there \
            (an AT branch whose rows changed since it wrote them lists them below). Repair by hand; its global locks stay held.",
        _ => "The coordinator keeps retrying with backoff. Retry now once the participant is back; stop retrying if \
            it will not come back or the work was finished by hand.",
    };
    html! {
        section.why {
            h2 { "Why this needs a person" }
            p { (advice) }
            @for b in &errors {
                h3 { "branch " span.mono { (b.branch_id) } " (" (b.resource) ", " (b.status.as_str()) ", " (b.attempts) " attempts)" }
                pre.error-text { (pretty(b.last_error.as_deref().unwrap_or(""))) }
            }
        }
    }
}

/// An error body made readable: JSON pretty-printed (a dirty-write
/// refusal lists its rows), anything else as it came.
fn pretty(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v.is_object() || v.is_array() => serde_json::to_string_pretty(&v).unwrap_or_else(|_| text.to_owned()),
        _ => text.to_owned(),
    }
}

fn events_table(tl: &Timeline) -> Markup {
    let start = tl.transaction.created_at;
    let offset = |e: &TimelineEvent| format!("{:.1}", (e.at - start).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    html! {
        table.list #events {
            thead { tr { th { "time" } th.num { "+ms" } th { "event" } th { "branch" } th { "action" } th { "outcome" } th.num { "HTTP" } th.num { "latency ms" } th { "by" } th { "detail" } } }
            tbody {
                @for e in &tl.events {
                    tr class=(format!("ev-{}", e.kind.as_str())) {
                        td { (e.at.format("%H:%M:%S%.3f")) }
                        td.num { (offset(e)) }
                        td { (e.kind.as_str())
                            @if let Some(s) = e.status { " → " (s.as_str()) }
                            @if let Some(r) = e.reason { " (" (r.as_str()) ")" } }
                        td.mono { (e.branch_id.as_deref().map(svg::short).unwrap_or("")) }
                        td { (e.action.map(|a| a.as_str()).unwrap_or("")) }
                        td { (e.outcome.map(|o| o.as_str()).unwrap_or("")) }
                        td.num { (e.http_status.map(|s| s.to_string()).unwrap_or_default()) }
                        td.num { (e.latency_us.map(|us| format!("{:.1}", us as f64 / 1000.0)).unwrap_or_default()) }
                        td.mono { (e.coordinator.as_deref().unwrap_or("")) }
                        td.detail { (e.detail.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

async fn transaction(
    _: Operator,
    State(c): State<Coordinator>,
    Path(xid): Path<String>,
    Query(flash): Query<Flash>,
) -> Response {
    let tl = match c.timeline(&xid).await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let tx = &tl.transaction;
    let branch_ids: Vec<String> = tx.branches.iter().map(|b| b.branch_id.to_string()).collect();
    let picture = svg::timeline(&svg::layout(&tl.events, &branch_ids));
    page(
        &format!("Transaction {}", tx.xid),
        html! {
            @if let Some(done) = &flash.done { p.flash #flash { (match done.as_str() {
                "retried" => "Retry requested: this coordinator drives it now.",
                "stopped" => "Stopped: the coordinator calls its branches no more.",
                _ => "Done.",
            }) } }
            h1 { "Transaction " span.mono { (tx.xid) } }
            dl.facts {
                dt { "status" } dd #status { (badge(tx.status)) @if let Some(r) = tx.rollback_reason { " (" (r.as_str()) ")" } }
                dt { "mode" } dd { (tx.mode.as_str()) }
                dt { "name" } dd { (tx.name.as_deref().unwrap_or("—")) }
                dt { "created" } dd { (time(tx.created_at)) }
                dt { "deadline" } dd { (time(tx.deadline)) }
                dt { "decided" } dd { (tx.decided_at.map(time).unwrap_or_else(|| "—".into())) }
                dt { "finished" } dd { (tx.finished_at.map(time).unwrap_or_else(|| "—".into())) }
            }
            @if needs_person(tx) { (why_box(tx)) }
            @if actionable(tx.status) {
                p.actions {
                    a.button href=(format!("/console/transactions/{}/retry", tx.xid)) #retry { "Retry now…" }
                    " "
                    a.button.danger href=(format!("/console/transactions/{}/stop", tx.xid)) #stop { "Stop retrying…" }
                }
            }
            h2 { "Branches" }
            table.list #branches {
                thead { tr { th { "branch" } th { "resource" } th { "status" } th.num { "attempts" } th { "target" } th { "last error" } } }
                tbody {
                    @for b in &tx.branches {
                        tr {
                            td.mono { (b.branch_id) }
                            td { (b.resource) }
                            td { (b.status.as_str()) }
                            td.num { (b.attempts) }
                            td.mono { (b.destination.as_deref().unwrap_or(&b.callback_url)) }
                            td.detail { (b.last_error.as_deref().map(|e| e.lines().next().unwrap_or("")).unwrap_or("")) }
                        }
                    }
                }
            }
            @if tx.branches.is_empty() { p.empty { "No branches." } }
            h2 { "Timeline" }
            div.picture { (picture) }
            p.legend {
                span.key.m-done {} " done " span.key.m-refused {} " refused " span.key.m-unknown {} " unknown (retried) "
                span.key.m-takeover {} " takeover " span.key.m-operator {} " operator " span.key.m-decided {} " decision "
            }
            (events_table(&tl))
        },
    )
}

/// What an action will do, in words.
fn consequence(tx: &Transaction, action: &str) -> String {
    let end = if tx.status == GlobalStatus::RollingBack { "rollback_failed" } else { "commit_failed" };
    match action {
        "retry" => "The transaction becomes due now, its backoff reset, and this coordinator calls its unfinished \
            branches at once."
            .into(),
        _ => format!(
            "The transaction ends {end}, and so do its unfinished branches, with your note as their last error. \
             The coordinator calls them no more; a call already in flight may still arrive. AT global locks stay held."
        ),
    }
}

async fn confirm(c: Coordinator, xid: String, action: &'static str) -> Response {
    let tx = match c.get(&xid).await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let verb = if action == "retry" { "Retry now" } else { "Stop retrying" };
    page(
        verb,
        html! {
            h1 { (verb) ": " span.mono { (tx.xid) } }
            p { "Now " (badge(tx.status)) ", " (tx.mode.as_str()) ", " (tx.name.as_deref().unwrap_or("unnamed")) "." }
            p.consequence { (consequence(&tx, action)) }
            form.confirm method="post" action=(format!("/console/transactions/{}/{action}", tx.xid)) {
                @if action == "stop" {
                    label { "Note (required): why, and what was done" br;
                        textarea name="note" rows="3" cols="70" required maxlength=(tandem_wire::MAX_NOTE_CHARS) {} }
                    br;
                }
                button type="submit" #confirm { "Yes, " (verb.to_lowercase()) }
                " " a href=(format!("/console/transactions/{}", tx.xid)) { "Cancel" }
            }
        },
    )
}

async fn confirm_retry(_: Operator, State(c): State<Coordinator>, Path(xid): Path<String>) -> Response {
    confirm(c, xid, "retry").await
}

async fn confirm_stop(_: Operator, State(c): State<Coordinator>, Path(xid): Path<String>) -> Response {
    confirm(c, xid, "stop").await
}

async fn retry(_: Operator, _: SameOrigin, State(c): State<Coordinator>, Path(xid): Path<String>) -> Response {
    match c.retry(&xid).await {
        Ok(t) => Redirect::to(&format!("/console/transactions/{}?done=retried", t.xid)).into_response(),
        Err(e) => failed(e),
    }
}

/// The stop form.
#[derive(Debug, Deserialize)]
struct StopForm {
    note: String,
}

async fn stop(
    _: Operator,
    _: SameOrigin,
    State(c): State<Coordinator>,
    Path(xid): Path<String>,
    Form(f): Form<StopForm>,
) -> Response {
    match c.stop(&xid, &f.note).await {
        Ok(t) => Redirect::to(&format!("/console/transactions/{}?done=stopped", t.xid)).into_response(),
        Err(CoordinatorError::Limit(e)) => page_error(StatusCode::UNPROCESSABLE_ENTITY, "Not stopped", &e.to_string()),
        Err(e) => failed(e),
    }
}

async fn locks(_: Operator, State(c): State<Coordinator>) -> Response {
    let l = match c.locks(crate::transaction::operator::MAX_LOCKS).await {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let named = match c.named_locks().list(crate::transaction::operator::MAX_LOCKS).await {
        Ok(n) => n,
        Err(crate::locks::LockServiceError::Store(e)) => return failed(CoordinatorError::Store(e)),
        Err(e) => return failed(CoordinatorError::Store(crate::store::StoreError::Internal(e.to_string()))),
    };
    page(
        "Locks",
        html! {
            h1 { "Global locks" }
            p #lock-total { (l.total) " held" @if (l.locks.len() as i64) < l.total { " (oldest " (l.locks.len()) " shown)" } "." }
            table.list {
                thead { tr { th { "resource" } th { "lock key" } th { "xid" } th { "branch" } th { "since" } } }
                tbody { @for k in &l.locks { tr {
                    td { (k.resource) } td.mono { (k.lock_key) }
                    td.mono { a href=(format!("/console/transactions/{}", k.xid)) { (k.xid) } }
                    td.mono { (k.branch_id) } td { (time(k.since)) }
                } } }
            }
            h1 { "Named locks" }
            p #named-lock-total { (named.total) " held or waited for" @if (named.locks.len() as i64) < named.total { " (first " (named.locks.len()) " by name shown)" } "." }
            table.list #named-locks {
                thead { tr { th { "name" } th { "owner" } th { "holds" } th { "token" } th { "expires" } th { "waiters, in order" } } }
                tbody { @for k in &named.locks { tr {
                    td.mono { (k.name) }
                    td.mono { @if let Some(o) = &k.owner { (o) } @else { "-" } }
                    td { (k.holds) } td.mono { (k.token) }
                    td { @if let Some(t) = k.expires_at { (time(t)) } @else { "-" } }
                    td.mono { @for (i, w) in k.waiters.iter().enumerate() { @if i > 0 { ", " } (w.owner) } }
                } } }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_times_take_datetime_local_and_rfc3339() {
        let t = form_time("x", &Some("2026-12-03T14:30".into())).expect("parses").expect("some");
        assert_eq!(t.to_rfc3339(), "2026-12-03T14:30:00+00:00");
        assert!(form_time("x", &Some("2026-12-03T14:30:00+01:00".into())).expect("parses").is_some());
        assert_eq!(form_time("x", &Some("  ".into())).expect("empty"), None);
        assert!(form_time("created after", &Some("yesterday".into())).expect_err("refused").contains("created after"));
    }

    #[test]
    fn the_next_page_keeps_the_filters() {
        let f = ListForm { status: Some("committed".into()), name: Some("shop. x".into()), ..Default::default() };
        assert_eq!(f.next_query("abc"), "status=committed&name=shop.+x&after=abc");
    }

    #[test]
    fn error_bodies_are_made_readable() {
        assert!(pretty(r#"{"rows":[{"pk":1},{"pk":2}]}"#).contains("\n"));
        assert_eq!(pretty("plain text"), "plain text");
    }
}
