//! Two-phase messages (mode `msg`): the message a service prepares, the
//! back-check the coordinator sends it, and the id every delivery carries
//! (extension of the contract, `docs/messages.md`).

use crate::{BranchId, Xid};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most deliveries in one message.
pub const MAX_DELIVERIES: usize = 64;

/// The header (HTTP and broker) that carries a delivery's message id.
pub const MESSAGE_ID_HEADER: &str = "Tandem-Message-Id";

/// `POST /v1/messages`: prepare a message. Extension.
///
/// Prepared is durable when the answer comes: the service then runs its
/// local transaction and submits (`POST /v1/messages/{xid}/submit`) or
/// aborts. A message neither submitted nor aborted within `timeout_ms` is
/// back-checked at `check_url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageRequest {
    /// Free-form name for operators (for example `order-placed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How long the message may stay prepared before the coordinator
    /// back-checks it. Default 60000.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::de::opt_u64")]
    pub timeout_ms: Option<u64>,
    /// Where the coordinator POSTs the back-check ([`CheckRequest`]).
    pub check_url: String,
    /// Whether the deliveries go out all at once (default) or one after
    /// another in list order, each once the one before it was acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<DeliveryOrder>,
    /// The deliveries, in list order: 1 to [`MAX_DELIVERIES`].
    pub deliveries: Vec<DeliveryRequest>,
}

/// One delivery of a [`MessageRequest`]: exactly one of `url` and `destination`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryRequest {
    /// Name of the delivery (the branch's `resource`). Default `delivery-N` (N from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An HTTP endpoint: the coordinator POSTs a callback (`action:
    /// "deliver"`) with the payload; 2xx acknowledges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A broker destination named in the coordinator's configuration
    /// (`--destination`): the payload is published there, and the delivery
    /// is acknowledged by the broker's confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The message's body for this delivery (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
}

/// The order of a message's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOrder {
    /// All at once; each retried on its own until acknowledged.
    #[default]
    Concurrent,
    /// One after another in list order.
    InOrder,
}

impl DeliveryOrder {
    /// Stable text form (wire and database).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOrder::Concurrent => "concurrent",
            DeliveryOrder::InOrder => "in_order",
        }
    }
}

impl std::str::FromStr for DeliveryOrder {
    type Err = crate::UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "concurrent" => Ok(DeliveryOrder::Concurrent),
            "in_order" => Ok(DeliveryOrder::InOrder),
            _ => Err(crate::UnknownValue { kind: "delivery order", value: s.to_owned() }),
        }
    }
}

/// What the transaction object shows of a message. Extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageInfo {
    /// The back-check endpoint.
    pub check_url: String,
    /// The deliveries' order.
    pub order: DeliveryOrder,
    /// Back-checks that answered `unknown` or failed so far.
    pub checks: u32,
}

/// Body of the coordinator's back-check, `POST {check_url}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckRequest {
    /// The message.
    pub xid: Xid,
    /// Always `msg`.
    pub mode: crate::Mode,
    /// Always `check`.
    pub action: crate::CallbackAction,
    /// The message's name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What the producer's local transaction did, as a back-check answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    /// It committed: deliver the message.
    Committed,
    /// It rolled back (or never ran, and now never can): drop the message.
    RolledBack,
    /// Not known yet (still running): ask again later.
    Unknown,
}

/// Body of a 200 answer to a back-check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckReply {
    /// The local transaction's outcome.
    pub outcome: CheckOutcome,
}

/// The id of one delivery of a message, `{xid}/{branch_id}`: the same for
/// every redelivery, so consumers and brokers deduplicate on it.
pub fn message_id(xid: &Xid, branch_id: &BranchId) -> String {
    format!("{xid}/{branch_id}")
}

/// The xid and branch id of a [`message_id`].
pub fn parse_message_id(id: &str) -> Option<(Xid, BranchId)> {
    let (xid, branch) = id.split_once('/')?;
    Some((Xid::parse(xid).ok()?, BranchId::parse(branch).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_round_trip() {
        let (x, b) = (Xid::generate(), BranchId::generate());
        assert_eq!(parse_message_id(&message_id(&x, &b)), Some((x, b)));
        assert_eq!(parse_message_id("no-slash"), None);
        assert_eq!(parse_message_id("a/b/c"), None);
        for o in [DeliveryOrder::Concurrent, DeliveryOrder::InOrder] {
            assert_eq!(o.as_str().parse::<DeliveryOrder>().ok(), Some(o));
            assert_eq!(serde_json::to_value(o).ok(), Some(serde_json::json!(o.as_str())));
        }
    }
}
