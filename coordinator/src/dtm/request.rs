//! DTM's request bodies, read as DTM reads them: fields it does not know,
//! and nulls (the Python client sends `"custom_data": null`,
//! `"query_prepared": null`, `"protocol": null`), are ignored; numbers may
//! come as strings; `payloads` are JSON texts. Pure: the body in, a
//! request or the reason it is not one out.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// DTM's transaction types served here (DTM's `workflow` is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransType {
    /// `saga`: actions called by the coordinator, compensations on failure.
    Saga,
    /// `msg`: a two-phase message.
    Msg,
    /// `tcc`: try by the client; confirm or cancel by the coordinator.
    Tcc,
    /// `xa`: the branch's XA transaction committed or rolled back by the coordinator.
    Xa,
}

impl TransType {
    /// DTM's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TransType::Saga => "saga",
            TransType::Msg => "msg",
            TransType::Tcc => "tcc",
            TransType::Xa => "xa",
        }
    }

    /// The type of `name`, or why there is none.
    pub fn parse(name: &str) -> Result<TransType, String> {
        match name {
            "saga" => Ok(TransType::Saga),
            "msg" => Ok(TransType::Msg),
            "tcc" => Ok(TransType::Tcc),
            "xa" => Ok(TransType::Xa),
            "workflow" => Err("trans_type workflow is not supported by Tandem's DTM API".into()),
            "" => Err("trans_type is required (saga, msg, tcc or xa)".into()),
            other => Err(format!("unknown trans_type {other:?} (saga, msg, tcc or xa)")),
        }
    }
}

/// One step of a saga or msg (`steps[i]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// The action's URL (empty: nothing to call, counted as done, as DTM does).
    pub action: String,
    /// The compensation's URL (saga; empty: nothing to call).
    pub compensate: String,
    /// `steps[i].data`: the payload when `payloads` has none for the step.
    pub data: Option<String>,
}

/// The body of `prepare`, `submit`, `abort` and `forceStop`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransRequest {
    /// The global transaction id, with `\n`, `\r` and `;` removed as DTM does.
    pub gid: String,
    /// `trans_type` as sent (checked by the operations that need it).
    pub trans_type: String,
    /// `steps`.
    pub steps: Vec<Step>,
    /// `payloads`: one JSON text per step.
    pub payloads: Vec<String>,
    /// `custom_data` (a JSON string; an object is taken as its text).
    pub custom_data: Option<String>,
    /// `query_prepared`: the msg back-check URL.
    pub query_prepared: Option<String>,
    /// `wait_result`.
    pub wait_result: bool,
    /// `timeout_to_fail`, seconds.
    pub timeout_to_fail: u64,
    /// `request_timeout`, seconds.
    pub request_timeout: u64,
    /// `retry_interval`, seconds.
    pub retry_interval: u64,
    /// `retry_limit` (saga).
    pub retry_limit: u64,
    /// `branch_headers`.
    pub branch_headers: BTreeMap<String, String>,
    /// `concurrent` (top level; `custom_data.concurrent` counts too).
    pub concurrent: bool,
    /// `rollback_reason` (abort).
    pub rollback_reason: Option<String>,
}

/// The body of `registerBranch` (and its aliases): DTM reads it as a map of
/// strings; other values are taken as their JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BranchRequest {
    /// `gid`.
    pub gid: String,
    /// `branch_id` (the client's IdGenerator: `01`, `02`, `0101`…).
    pub branch_id: String,
    /// `trans_type`: `tcc` or `xa`.
    pub trans_type: String,
    /// TCC: `confirm`.
    pub confirm: String,
    /// TCC: `cancel`.
    pub cancel: String,
    /// XA: `url` (phase 2 with `op=commit` / `op=rollback`).
    pub url: String,
    /// `data`: the body of the branch's phase-2 calls.
    pub data: String,
}

/// A field's text: strings as they are, numbers and booleans as their JSON
/// text, null as absent; objects and arrays as their JSON text.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A count of seconds (or a limit): a non-negative number or numeric string; null or absent: 0.
fn count(obj: &Map<String, Value>, field: &str) -> Result<u64, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Ok(u),
            (_, Some(i), _) if i < 0 => Err(format!("{field} must not be negative")),
            (_, _, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 1e15 => Ok(f as u64),
            _ => Err(format!("{field} must be a whole number of seconds")),
        },
        Some(Value::String(s)) if s.is_empty() => Ok(0),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| format!("{field} must be a whole number, not {s:?}")),
        Some(_) => Err(format!("{field} must be a number")),
    }
}

fn flag(obj: &Map<String, Value>, field: &str) -> Result<bool, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(_) => Err(format!("{field} must be true or false")),
    }
}

/// DTM's `Escape`: removes the characters it refuses in a gid.
fn escaped_gid(gid: &str) -> String {
    gid.chars().filter(|c| !matches!(c, '\n' | '\r' | ';')).collect()
}

fn object(body: &Value) -> Result<&Map<String, Value>, String> {
    body.as_object().ok_or_else(|| "the body must be a JSON object".to_owned())
}

impl TransRequest {
    /// Reads a transaction request.
    pub fn parse(body: &Value) -> Result<TransRequest, String> {
        let obj = object(body)?;
        let steps = match obj.get("steps") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(m) => Ok(Step {
                        action: text(m.get("action")).unwrap_or_default(),
                        compensate: text(m.get("compensate")).unwrap_or_default(),
                        data: text(m.get("data")).filter(|d| !d.is_empty()),
                    }),
                    Value::Null => Ok(Step::default()),
                    _ => Err(format!("steps[{i}] must be an object")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("steps must be an array".into()),
        };
        let payloads = match obj.get("payloads") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(|p| text(Some(p)).unwrap_or_default()).collect(),
            Some(_) => return Err("payloads must be an array of JSON texts".into()),
        };
        let branch_headers = match obj.get("branch_headers") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m.iter().filter_map(|(k, v)| text(Some(v)).map(|v| (k.clone(), v))).collect(),
            Some(_) => return Err("branch_headers must be an object of header names to values".into()),
        };
        Ok(TransRequest {
            gid: escaped_gid(&text(obj.get("gid")).unwrap_or_default()),
            trans_type: text(obj.get("trans_type")).unwrap_or_default(),
            steps,
            payloads,
            custom_data: text(obj.get("custom_data")).filter(|c| !c.is_empty()),
            query_prepared: text(obj.get("query_prepared")).filter(|q| !q.is_empty()),
            wait_result: flag(obj, "wait_result")?,
            timeout_to_fail: count(obj, "timeout_to_fail")?,
            request_timeout: count(obj, "request_timeout")?,
            retry_interval: count(obj, "retry_interval")?,
            retry_limit: count(obj, "retry_limit")?,
            branch_headers,
            concurrent: flag(obj, "concurrent")?,
            rollback_reason: text(obj.get("rollback_reason")).filter(|r| !r.is_empty()),
        })
    }

    /// Step `i`'s payload: `payloads[i]`, else the step's `data`, else none.
    pub fn payload(&self, i: usize) -> Option<&str> {
        self.payloads.get(i).map(String::as_str).or_else(|| self.steps.get(i).and_then(|s| s.data.as_deref()))
    }
}

impl BranchRequest {
    /// Reads a branch registration.
    pub fn parse(body: &Value) -> Result<BranchRequest, String> {
        let obj = object(body)?;
        let field = |name: &str| text(obj.get(name)).unwrap_or_default();
        Ok(BranchRequest {
            gid: escaped_gid(&field("gid")),
            branch_id: field("branch_id"),
            trans_type: field("trans_type"),
            confirm: field("confirm"),
            cancel: field("cancel"),
            url: field("url"),
            data: field("data"),
        })
    }
}

/// The saga options of `custom_data`: `{"concurrent": true, "orders": {"2": [0, 1]}}`
/// (0-based step indexes: step 2 runs after steps 0 and 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaCustom {
    /// Steps run concurrently (with `orders` as their dependencies).
    pub concurrent: bool,
    /// Step index → the steps it runs after.
    pub orders: BTreeMap<usize, Vec<usize>>,
}

impl SagaCustom {
    /// Reads `custom_data` (absent: ordinary sequential saga).
    pub fn parse(custom: Option<&str>) -> Result<SagaCustom, String> {
        let Some(text) = custom else {
            return Ok(SagaCustom::default());
        };
        let v: Value = serde_json::from_str(text).map_err(|e| format!("custom_data is not JSON: {e}"))?;
        let Some(obj) = v.as_object() else {
            return Ok(SagaCustom::default());
        };
        let concurrent = flag(obj, "concurrent")?;
        let mut orders = BTreeMap::new();
        match obj.get("orders") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let step: usize =
                        k.trim().parse().map_err(|_| format!("custom_data.orders key {k:?} is not a step index"))?;
                    let Value::Array(list) = v else {
                        return Err(format!("custom_data.orders[{k}] must be a list of step indexes"));
                    };
                    let after = list
                        .iter()
                        .map(|j| {
                            j.as_u64()
                                .and_then(|j| usize::try_from(j).ok())
                                .ok_or_else(|| format!("custom_data.orders[{k}] holds {j}, not a step index"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    orders.insert(step, after);
                }
            }
            Some(_) => return Err("custom_data.orders must be an object".into()),
        }
        Ok(SagaCustom { concurrent, orders })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_python_clients_body_with_its_nulls_is_read() {
        let body = json!({
            "gid": "g;1\n", "trans_type": "saga", "custom_data": null, "query_prepared": null, "protocol": null,
            "steps": [{"action": "http://a/out", "compensate": "http://a/revert"}],
            "payloads": ["{\"amount\": 30}"], "wait_result": false, "timeout_to_fail": 0, "request_timeout": 8,
            "retry_interval": 0, "passthrough_headers": [], "branch_headers": {}, "concurrent": false,
            "something_new": {"x": 1}
        });
        let r = TransRequest::parse(&body).expect("parsed");
        assert_eq!(r.gid, "g1");
        assert_eq!(r.steps[0].compensate, "http://a/revert");
        assert_eq!(r.payload(0), Some("{\"amount\": 30}"));
        assert_eq!(r.request_timeout, 8);
        assert_eq!(r.custom_data, None);
    }

    #[test]
    fn numbers_may_be_strings_and_bad_values_are_named() {
        let r = TransRequest::parse(&json!({"gid": "g", "timeout_to_fail": "5", "retry_limit": 3.0})).expect("parsed");
        assert_eq!((r.timeout_to_fail, r.retry_limit), (5, 3));
        let e = TransRequest::parse(&json!({"gid": "g", "timeout_to_fail": -1})).expect_err("negative");
        assert!(e.contains("timeout_to_fail"), "{e}");
        assert!(TransRequest::parse(&json!([1])).is_err());
        assert!(TransRequest::parse(&json!({"steps": "x"})).is_err());
    }

    #[test]
    fn step_data_stands_in_for_a_missing_payload() {
        let r = TransRequest::parse(&json!({"steps": [{"action": "http://a", "data": "{}"}]})).expect("parsed");
        assert_eq!(r.payload(0), Some("{}"));
        assert_eq!(r.payload(1), None);
    }

    #[test]
    fn saga_orders_are_read_from_custom_data() {
        let c = SagaCustom::parse(Some(r#"{"concurrent":true,"orders":{"2":[0,1]}}"#)).expect("parsed");
        assert!(c.concurrent);
        assert_eq!(c.orders.get(&2), Some(&vec![0, 1]));
        assert!(SagaCustom::parse(Some("{")).is_err());
        assert!(SagaCustom::parse(Some(r#"{"orders":{"x":[0]}}"#)).is_err());
        assert_eq!(SagaCustom::parse(None).expect("none"), SagaCustom::default());
    }

    #[test]
    fn branch_fields_are_strings() {
        let b = BranchRequest::parse(&json!({"gid": "g", "branch_id": "01", "trans_type": "tcc", "data": "{}",
            "confirm": "http://c", "cancel": "http://x", "status": "prepared", "extra": 5}))
        .expect("parsed");
        assert_eq!((b.branch_id.as_str(), b.confirm.as_str(), b.data.as_str()), ("01", "http://c", "{}"));
    }

    #[test]
    fn trans_types() {
        assert_eq!(TransType::parse("tcc"), Ok(TransType::Tcc));
        assert!(TransType::parse("workflow").is_err());
        assert!(TransType::parse("").is_err());
    }
}
