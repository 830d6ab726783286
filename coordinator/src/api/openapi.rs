//! The OpenAPI document: operations come from the router (utoipa-axum), the
//! types from `tandem-wire`, and the limits the server enforces are written
//! into the schemas from the same constants and configuration the server
//! checks requests against, so the document and the server cannot disagree
//! (tested by `tests/coordinator.rs`, and by `scripts/schemathesis.sh`,
//! which fuzzes a running coordinator from this document).

use crate::modes;
use crate::Coordinator;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tandem_wire::limits::{self, DEFAULT_PAGE, MAX_PAGE};
use tandem_wire::{Mode, PROBLEM_CONTENT_TYPE};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::OpenApi;

/// The parts of the document written by hand: title, tags, and the schemas
/// no operation names directly. The operations are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(title = "Tandem coordinator", version = "1",
        description = "Distributed transaction coordinator, HTTP contract v1 with additive extensions \
            (docs/http-api.md). Participants receive `CallbackRequest` bodies at their `callback_url` and \
            answer 2xx (done, with a `CallbackReply`), 409 (permanent refusal) or anything else (retried). \
            Every error answer is `application/problem+json`."),
    components(schemas(
        tandem_wire::CallbackRequest, tandem_wire::CallbackAction, tandem_wire::CallbackReply,
        tandem_wire::CallbackOutcome, tandem_wire::ErrorCode, tandem_wire::LockHolder, tandem_wire::RollbackReason,
        tandem_wire::BranchStatus, tandem_wire::GlobalStatus, tandem_wire::Mode, tandem_wire::ThreePhaseOptions,
        tandem_wire::ThreePhaseTimeouts, tandem_wire::ActionStatus, tandem_wire::CompensationStatus,
        tandem_wire::CheckRequest, tandem_wire::CheckReply, tandem_wire::CheckOutcome,
    )),
    tags(
        (name = "transactions", description = "Global transactions"),
        (name = "branches", description = "Branches of a global transaction"),
        (name = "sagas", description = "Sagas submitted whole (extension)"),
        (name = "messages", description = "Two-phase messages (extension)"),
        (name = "locks", description = "Global row locks of AT mode"),
        (name = "named-locks", description = "Distributed locks for users: leases, renewal, owner-checked \
            release, re-entrancy, FIFO waiting and fencing tokens (extension; docs/locks.md)"),
        (name = "operators", description = "What operators read and do: timelines, the overview, locks held, \
            retry and stop (extension; the console and the CLI use these)"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// Problem answers of every `/v1` operation: the request timeout, an
/// internal error, the database unavailable.
pub struct ServerProblems;

/// Problem answers of an operation that reads a JSON body.
pub struct BodyProblems;

/// The 400 of an operation whose query parameters are checked.
pub struct QueryProblems;

fn problem(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    RefOr::T(ResponseBuilder::new().description(description).content(PROBLEM_CONTENT_TYPE, content).build())
}

fn problems(list: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter().map(|(status, description)| (status.to_string(), problem(description))).collect()
}

impl utoipa::IntoResponses for ServerProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[
            (408, "`request_timeout`: the request took longer than the server's request timeout"),
            (500, "`internal`: a bug or an unexpected database answer; not worth retrying as is"),
            (503, "`unavailable`: the coordinator's database is unreachable or busy; retry"),
        ])
    }
}

impl utoipa::IntoResponses for BodyProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[
            (400, "`validation_failed`: the body is not JSON"),
            (413, "`payload_too_large`: the body is larger than the server's limit"),
            (415, "`unsupported_media_type`: the body is not `application/json`"),
            (422, "`validation_failed`: the JSON does not match the schema or its limits"),
        ])
    }
}

impl utoipa::IntoResponses for QueryProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[(400, "`validation_failed`: a query parameter is outside its schema")])
    }
}

/// What the document declares that depends on the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `timeout_ms` (and 3PC phase timeout) accepted.
    pub max_timeout_ms: u64,
    /// Largest `wait_ms` of commit and rollback.
    pub max_wait_ms: u64,
    /// The modes a begin accepts: those this coordinator serves that start
    /// with `POST /v1/transactions` (a begin with another is refused).
    pub served_modes: Vec<&'static str>,
}

impl Limits {
    /// The limits of a running coordinator.
    pub fn of(c: &Coordinator) -> Limits {
        let t = c.timing();
        Limits {
            max_timeout_ms: u64::try_from(t.max_timeout.as_millis()).unwrap_or(u64::MAX),
            max_wait_ms: u64::try_from(t.max_wait.as_millis()).unwrap_or(u64::MAX),
            served_modes: modes::modes_where(|p| p.begin() == modes::Begin::Transactions),
        }
    }
}

/// The document served at `/openapi.json`: the router's operations with
/// the limits written in.
pub fn document(routes: utoipa::openapi::OpenApi, limits: &Limits) -> Value {
    let mut doc = serde_json::to_value(routes).unwrap_or_else(|_| json!({}));
    declare_security(&mut doc);
    let missing = declare_limits(&mut doc, limits);
    if !missing.is_empty() {
        // A bug (a renamed field or route); the unit test below fails on it.
        tracing::error!(?missing, "the OpenAPI limits name members the document does not have");
    }
    doc
}

/// Declares the bearer scheme, and on every operation what
/// [`crate::auth::policy::access`] requires of it: no security on a public
/// one; otherwise the bearer token, the roles it needs (in its
/// description and `x-tandem-roles`), and the answers 401, 403 and 429.
fn declare_security(doc: &mut Value) {
    use crate::auth::policy::{access, Access};
    use crate::auth::Role;
    let scheme = json!({ "bearer": { "type": "http", "scheme": "bearer",
        "description": "An API token (`tandem token new`). Without any token configured, the coordinator \
            serves only on loopback and needs none." } });
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        components.insert("securitySchemes".into(), scheme);
    }
    let auth_problems = [
        (401, "`unauthorized`: no bearer token, or one this coordinator does not know"),
        (403, "`forbidden`: the token's role may not call this operation"),
        (429, "`rate_limited`: the token is over its request rate; retry after `Retry-After` seconds"),
    ];
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let Ok(m) = method.to_ascii_uppercase().parse::<axum::http::Method>() else { continue };
            let Some(op) = op.as_object_mut() else { continue };
            match access(&m, path).0 {
                Access::Public => {
                    op.insert("security".into(), json!([]));
                }
                Access::Roles(roles) => {
                    op.insert("security".into(), json!([{ "bearer": [] }]));
                    let names: Vec<&str> = Role::ALL.into_iter().filter(|r| roles.has(*r)).map(Role::as_str).collect();
                    op.insert("x-tandem-roles".into(), json!(names));
                    let note = format!("\n\nNeeds a token with the role {}.", names.join(" or "));
                    let description = op.get("description").and_then(Value::as_str).unwrap_or_default().to_owned();
                    op.insert("description".into(), Value::String(format!("{description}{note}").trim().to_owned()));
                    let responses = op.entry("responses").or_insert_with(|| json!({}));
                    if let Some(responses) = responses.as_object_mut() {
                        for (status, d) in auth_problems {
                            let r = serde_json::to_value(problem(d)).unwrap_or_else(|_| json!({}));
                            responses.entry(status.to_string()).or_insert(r);
                        }
                    }
                }
            }
        }
    }
}

/// Edits of the generated document at JSON pointers. An edit of a member
/// that does not exist is not made but recorded, so that a renamed field
/// cannot leave a limit undeclared (or declare it on a field that is not
/// there) without a test noticing.
struct Patch<'a> {
    /// The document being edited.
    doc: &'a mut Value,
    /// Pointers of the edits whose target was missing.
    missing: Vec<String>,
}

impl Patch<'_> {
    fn target(&mut self, pointer: &str) -> Option<&mut Value> {
        if self.doc.pointer(pointer).is_none() {
            self.missing.push(pointer.to_owned());
            return None;
        }
        self.doc.pointer_mut(pointer)
    }

    /// Adds the members of `with` to the object at `pointer`.
    fn extend(&mut self, pointer: &str, with: Value) {
        if let (Some(Value::Object(target)), Value::Object(with)) = (self.target(pointer), with) {
            target.extend(with);
        }
    }

    /// Replaces the value at `pointer`, keeping its `description`.
    fn replace(&mut self, pointer: &str, mut with: Value) {
        if let Some(target) = self.target(pointer) {
            if let (Some(d), Value::Object(w)) = (target.get("description").cloned(), &mut with) {
                w.entry("description").or_insert(d);
            }
            *target = with;
        }
    }

    /// The pointer to the schema of parameter `name` of an operation.
    fn parameter(&mut self, path: &str, method: &str, name: &str) -> String {
        let params = format!("/paths/{}/{method}/parameters", path.replace('~', "~0").replace('/', "~1"));
        let index = self
            .doc
            .pointer(&params)
            .and_then(Value::as_array)
            .and_then(|ps| ps.iter().position(|p| p.get("name").and_then(Value::as_str) == Some(name)));
        match index {
            Some(i) => format!("{params}/{i}/schema"),
            None => format!("{params}/{name}"),
        }
    }
}

/// Writes the limits into the document; returns the pointers it could not
/// edit (none, unless a schema changed under it).
fn declare_limits(doc: &mut Value, limits: &Limits) -> Vec<String> {
    let mut patch = Patch { doc, missing: Vec::new() };
    let no_nul = limits::NO_NUL_PATTERN;
    let text = |min: usize, max: usize| json!({ "minLength": min, "maxLength": max, "pattern": no_nul });
    let timeout = json!({ "minimum": 1, "maximum": limits.max_timeout_ms });
    let id = json!({ "pattern": tandem_wire::ID_PATTERN });
    let callback_url = json!({ "minLength": 1, "maxLength": limits::MAX_CALLBACK_URL_CHARS,
        "pattern": limits::callback_url_pattern() });
    let lock_keys = json!({
        "maxItems": limits::MAX_LOCK_KEYS,
        "items": { "type": "string", "minLength": 1, "maxLength": limits::MAX_LOCK_KEY_CHARS, "pattern": no_nul },
    });

    // Identifiers.
    patch.extend("/components/schemas/Xid", id.clone());
    patch.extend("/components/schemas/BranchId", id);

    // Any JSON whose strings and keys hold no U+0000 (jsonb stores none).
    patch.extend(
        "/components/schemas",
        json!({ "Payload": {
            "description": "Any JSON value (object, array, string, number, boolean or null) without the \
                character U+0000 in its strings or keys, and no number beyond 1e308 in magnitude.",
            "anyOf": [
                { "type": ["null", "boolean"] },
                { "type": "number", "minimum": -limits::MAX_PAYLOAD_NUMBER, "maximum": limits::MAX_PAYLOAD_NUMBER },
                { "type": "string", "pattern": no_nul },
                { "type": "array", "items": { "$ref": "#/components/schemas/Payload" } },
                { "type": "object", "propertyNames": { "pattern": no_nul },
                  "additionalProperties": { "$ref": "#/components/schemas/Payload" } },
            ],
        }}),
    );
    for schema in ["RegisterBranchRequest", "Branch", "CallbackRequest", "SagaStepRequest", "DeliveryRequest"] {
        patch.replace(
            &format!("/components/schemas/{schema}/properties/payload"),
            json!({ "$ref": "#/components/schemas/Payload" }),
        );
    }

    // Begin: the modes served, and options only for their mode.
    patch.replace(
        "/components/schemas/BeginRequest/properties/mode",
        json!({
            "type": "string", "enum": limits.served_modes,
            "description": "Transaction mode: one this coordinator serves that begins here (`Mode` lists every mode \
                of the contract; a message is prepared with `POST /v1/messages`).",
        }),
    );
    patch.extend(
        "/components/schemas/BeginRequest",
        json!({ "anyOf": [
            { "properties": { "mode": { "const": Mode::ThreePc.as_str() } } },
            { "properties": { "three_phase": { "type": "null" } } },
        ]}),
    );

    // Each field's limits.
    let fields = [
        ("BeginRequest", "name", text(0, limits::MAX_NAME_CHARS)),
        ("BeginRequest", "timeout_ms", timeout.clone()),
        ("ThreePhaseOptions", "can_commit_timeout_ms", timeout.clone()),
        ("ThreePhaseOptions", "pre_commit_timeout_ms", timeout.clone()),
        ("ThreePhaseOptions", "do_commit_timeout_ms", timeout.clone()),
        ("RegisterBranchRequest", "resource", text(1, limits::MAX_RESOURCE_CHARS)),
        ("RegisterBranchRequest", "callback_url", callback_url.clone()),
        ("RegisterBranchRequest", "lock_keys", lock_keys.clone()),
        ("ReportRequest", "detail", text(0, limits::MAX_DETAIL_CHARS)),
        ("LockCheckRequest", "resource", text(1, limits::MAX_RESOURCE_CHARS)),
        ("LockCheckRequest", "lock_keys", lock_keys),
        ("SagaRequest", "name", text(0, limits::MAX_NAME_CHARS)),
        ("SagaRequest", "timeout_ms", timeout.clone()),
        ("SagaRequest", "retry_limit", json!({ "minimum": 0, "maximum": tandem_wire::MAX_RETRY_LIMIT })),
        ("SagaRequest", "steps", json!({ "minItems": 1, "maxItems": tandem_wire::MAX_SAGA_STEPS })),
        ("SagaStepRequest", "name", text(1, limits::MAX_RESOURCE_CHARS)),
        ("SagaStepRequest", "action_url", callback_url.clone()),
        ("MessageRequest", "name", text(0, limits::MAX_NAME_CHARS)),
        ("StopRequest", "note", text(1, tandem_wire::MAX_NOTE_CHARS)),
        ("MessageRequest", "timeout_ms", timeout),
        ("MessageRequest", "check_url", callback_url.clone()),
        ("MessageRequest", "deliveries", json!({ "minItems": 1, "maxItems": tandem_wire::MAX_DELIVERIES })),
        ("DeliveryRequest", "name", text(1, limits::MAX_RESOURCE_CHARS)),
        ("DeliveryRequest", "url", callback_url.clone()),
        ("DeliveryRequest", "destination", text(1, limits::MAX_RESOURCE_CHARS)),
        ("SagaStepRequest", "compensate_url", callback_url),
        (
            "SagaStepRequest",
            "after",
            json!({ "maxItems": tandem_wire::MAX_SAGA_STEPS,
                    "items": { "type": "integer", "minimum": 0, "maximum": tandem_wire::MAX_SAGA_STEPS - 1 } }),
        ),
    ];
    for (schema, property, constraints) in fields {
        patch.extend(&format!("/components/schemas/{schema}/properties/{property}"), constraints);
    }
    // A delivery has exactly one of `url` and `destination`.
    let only = |set: &str, unset: &str| json!({ "required": [set], "properties": { set: { "type": "string" }, unset: { "type": "null" } } });
    patch.extend(
        "/components/schemas/DeliveryRequest",
        json!({ "oneOf": [only("url", "destination"), only("destination", "url")] }),
    );

    // Parameters.
    let wait = json!({ "type": "integer", "minimum": 0, "maximum": limits.max_wait_ms,
        "default": super::transactions::DEFAULT_WAIT_MS.min(limits.max_wait_ms) });
    let parameters = [
        (
            "/v1/transactions",
            "post",
            "Idempotency-Key",
            json!({ "type": "string", "pattern": limits::IDEMPOTENCY_KEY_PATTERN }),
        ),
        (
            "/v1/transactions",
            "get",
            "limit",
            json!({ "type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE }),
        ),
        ("/v1/transactions", "get", "after", json!({ "type": "string", "pattern": tandem_wire::ID_PATTERN })),
        (
            "/v1/transactions",
            "get",
            "name",
            json!({ "type": "string", "maxLength": limits::MAX_NAME_CHARS, "pattern": no_nul }),
        ),
        (
            "/v1/transactions",
            "get",
            "xid",
            json!({ "type": "string", "maxLength": tandem_wire::MAX_ID_LEN, "pattern": no_nul }),
        ),
        ("/v1/locks", "get", "limit", json!({ "type": "integer", "minimum": 1, "maximum": 500, "default": 100 })),
        ("/v1/named-locks", "get", "limit", json!({ "type": "integer", "minimum": 1, "maximum": 500, "default": 100 })),
        ("/v1/transactions/{xid}/commit", "post", "wait_ms", wait.clone()),
        ("/v1/transactions/{xid}/rollback", "post", "wait_ms", wait.clone()),
        ("/v1/sagas", "post", "wait_ms", wait.clone()),
        ("/v1/messages/{xid}/submit", "post", "wait_ms", wait.clone()),
        ("/v1/messages/{xid}/abort", "post", "wait_ms", wait),
        (
            "/v1/messages",
            "post",
            "Idempotency-Key",
            json!({ "type": "string", "pattern": limits::IDEMPOTENCY_KEY_PATTERN }),
        ),
        (
            "/v1/sagas",
            "post",
            "Idempotency-Key",
            json!({ "type": "string", "pattern": limits::IDEMPOTENCY_KEY_PATTERN }),
        ),
    ];
    for (path, method, name, schema) in parameters {
        let pointer = patch.parameter(path, method, name);
        patch.replace(&pointer, schema);
    }
    patch.missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_lands_on_a_member_the_document_has() {
        let limits = Limits { max_timeout_ms: 1_000, max_wait_ms: 500, served_modes: modes::modes_where(|_| true) };
        let mut doc = serde_json::to_value(super::super::routes().split_for_parts().1).expect("document");
        assert_eq!(declare_limits(&mut doc, &limits), Vec::<String>::new());
        let wait = doc.pointer("/paths/~1v1~1transactions~1{xid}~1commit/post/parameters/1/schema/maximum");
        assert_eq!(wait, Some(&json!(500)));
    }
}
