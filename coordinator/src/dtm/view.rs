//! Tandem's rows in DTM's shapes: the `transaction` and `branches` of
//! `query`, the `transactions` of `all`, and DTM's status names. Pure.
//!
//! DTM stores a branch as one row per op (a saga step as `compensate` and
//! `action`, a TCC branch as `cancel` and `confirm`, an XA branch as
//! `rollback` and `commit`); so does this view, from Tandem's one row per
//! branch. Tandem's own statuses ride along as `tandem_status` (an
//! extension: DTM's `failed` cannot tell a clean rollback from one an
//! operator must look at).

use super::plan;
use super::request::TransType;
use crate::store::{BranchRow, TxRow};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use tandem_wire::{ActionStatus, BranchStatus, GlobalStatus, Mode};

/// DTM's global status of a Tandem status.
pub fn global_status(s: GlobalStatus) -> &'static str {
    match s {
        GlobalStatus::Active | GlobalStatus::Prepared => "prepared",
        GlobalStatus::RollingBack => "aborting",
        GlobalStatus::Committed | GlobalStatus::Delivered => "succeed",
        GlobalStatus::RolledBack
        | GlobalStatus::CommitFailed
        | GlobalStatus::RollbackFailed
        | GlobalStatus::HeuristicMixed => "failed",
        // running, committing, delivering, 3PC's phases: decided or under way.
        _ => "submitted",
    }
}

fn time(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// The JSON text a branch's payload is sent as (DTM payloads are stored as
/// the string they came as).
pub fn payload_text(p: Option<&Value>) -> String {
    match p {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The `trans_type` DTM's participants are told for a Tandem mode.
pub fn trans_type_name(mode: Mode) -> &'static str {
    plan::trans_type(mode).map_or(mode.as_str(), TransType::as_str)
}

/// The `transaction` of `query` (and each of `all`).
pub fn transaction(tx: &TxRow, branches: &[BranchRow]) -> Value {
    let mut t = Map::new();
    t.insert("gid".into(), json!(tx.xid.as_str()));
    t.insert("trans_type".into(), json!(trans_type_name(tx.mode)));
    t.insert("status".into(), json!(global_status(tx.status)));
    t.insert("protocol".into(), json!("http"));
    t.insert("create_time".into(), time(tx.created_at));
    t.insert("update_time".into(), time(tx.finished_at.or(tx.decided_at).unwrap_or(tx.created_at)));
    if let Some(f) = tx.finished_at {
        let key = if global_status(tx.status) == "succeed" { "finish_time" } else { "rollback_time" };
        t.insert(key.into(), time(f));
    }
    if let Some(r) = tx.rollback_reason {
        t.insert("rollback_reason".into(), json!(r.as_str()));
    }
    if let Some(q) = &tx.check_url {
        t.insert("query_prepared".into(), json!(q));
    }
    if let Some(owner) = &tx.owner {
        t.insert("owner".into(), json!(owner));
    }
    let options = tx.dtm.clone().unwrap_or_default();
    if let Some(c) = &options.custom_data {
        t.insert("custom_data".into(), json!(c));
    }
    t.insert("concurrent".into(), json!(options.concurrent));
    for (key, v) in [
        ("timeout_to_fail", options.timeout_to_fail),
        ("request_timeout", options.request_timeout),
        ("retry_interval", options.retry_interval),
        ("retry_limit", options.retry_limit),
    ] {
        if v != 0 {
            t.insert(key.into(), json!(v));
        }
    }
    if !options.branch_headers.is_empty() {
        t.insert("branch_headers".into(), json!(options.branch_headers));
    }
    if matches!(tx.mode, Mode::Saga | Mode::Msg) {
        let steps: Vec<Value> = branches
            .iter()
            .map(|b| match tx.mode {
                Mode::Saga => json!({"action": b.action_url.clone().unwrap_or_default(), "compensate": b.callback_url}),
                _ => json!({"action": b.callback_url}),
            })
            .collect();
        let payloads: Vec<String> = branches.iter().map(|b| payload_text(b.payload.as_ref())).collect();
        t.insert("steps".into(), Value::Array(steps));
        t.insert("payloads".into(), json!(payloads));
    }
    t.insert("tandem_status".into(), json!(tx.status.as_str()));
    Value::Object(t)
}

/// Which side of phase 2 an op belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A saga's forward action.
    Action,
    /// Commit, confirm, a msg's delivery.
    Commit,
    /// Rollback, cancel, compensate.
    Rollback,
}

fn row_status(b: &BranchRow, side: Side) -> &'static str {
    match side {
        Side::Action => match b.action_status {
            Some(ActionStatus::Succeeded) | None => "succeed",
            Some(ActionStatus::Failed) => "failed",
            _ => "prepared",
        },
        Side::Commit => match b.status {
            BranchStatus::Committed => "succeed",
            BranchStatus::CommitFailed => "failed",
            _ => "prepared",
        },
        Side::Rollback => match b.status {
            BranchStatus::RolledBack => "succeed",
            BranchStatus::RollbackFailed | BranchStatus::HeuristicCommitted => "failed",
            _ => "prepared",
        },
    }
}

/// The `branches` of `query`: one row per op, in DTM's order (the
/// rollback-side op first).
pub fn branches(tx: &TxRow, branches: &[BranchRow]) -> Vec<Value> {
    let ops: &[(&str, Side)] = match tx.mode {
        Mode::Saga => &[("compensate", Side::Rollback), ("action", Side::Action)],
        Mode::Msg => &[("action", Side::Commit)],
        Mode::Tcc => &[("cancel", Side::Rollback), ("confirm", Side::Commit)],
        _ => &[("rollback", Side::Rollback), ("commit", Side::Commit)],
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::with_capacity(branches.len() * ops.len());
    for b in branches {
        let data = payload_text(b.payload.as_ref());
        for &(op, side) in ops {
            let url = match side {
                Side::Action | Side::Commit => b.action_url.as_deref().unwrap_or(&b.callback_url),
                Side::Rollback => &b.callback_url,
            };
            let mut row = Map::new();
            row.insert("gid".into(), json!(tx.xid.as_str()));
            row.insert("url".into(), json!(url));
            if !data.is_empty() {
                row.insert("bin_data".into(), json!(engine.encode(data.as_bytes())));
            }
            row.insert("branch_id".into(), json!(b.branch_id.as_str()));
            row.insert("op".into(), json!(op));
            row.insert("status".into(), json!(row_status(b, side)));
            row.insert("create_time".into(), time(tx.created_at));
            row.insert("tandem_status".into(), json!(b.status.as_str()));
            out.push(Value::Object(row));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_a_dtm_name() {
        for &s in GlobalStatus::ALL {
            let name = global_status(s);
            assert!(["prepared", "submitted", "aborting", "succeed", "failed"].contains(&name));
        }
        assert_eq!(global_status(GlobalStatus::RollbackFailed), "failed");
        assert_eq!(global_status(GlobalStatus::Running), "submitted");
    }

    #[test]
    fn payloads_are_sent_as_the_text_they_came_as() {
        assert_eq!(payload_text(Some(&json!("{\"a\": 1}"))), "{\"a\": 1}");
        assert_eq!(payload_text(Some(&json!({"a": 1}))), "{\"a\":1}");
        assert_eq!(payload_text(None), "");
    }
}
