//! DTM's HTTP protocol (`/api/dtmsvr`), served on the same engine: an
//! unmodified DTM client (Go, Java, Python, PHP, C#, Node) begins ordinary
//! Tandem transactions, visible in `/v1`, the console, the CLI and the
//! metrics, driven and recovered like any other (docs/dtm-compatibility.md).
//!
//! - [`request`]: DTM's request bodies read as leniently as DTM reads them
//!   (unknown and null fields ignored, numbers as strings), pure.
//! - [`plan`]: what a request means in Tandem's terms (its mode, timeout,
//!   saga dependencies, deliveries), pure.
//! - [`view`]: Tandem's rows in DTM's shapes (`query`, `all`) and DTM's
//!   status names, pure.
//! - [`service`]: the operations, on [`crate::Coordinator`].
//! - [`api`]: the routes and DTM's answers (`{"dtm_result": …}`).
//!
//! A transaction begun here keeps its [`DtmOptions`] in the `dtm` column;
//! the callback client calls its branches the way DTM does
//! ([`crate::callbacks::dtm`]).

pub mod api;
pub mod plan;
pub mod request;
pub mod service;
pub mod view;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a DTM client asked for beyond Tandem's own columns, stored with the
/// transaction. Its presence means: call the branches DTM's way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmOptions {
    /// Headers added to every branch call (`branch_headers`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub branch_headers: BTreeMap<String, String>,
    /// Timeout of one branch call in seconds (`request_timeout`; 0: the
    /// coordinator's callback timeout).
    #[serde(default)]
    pub request_timeout: u64,
    /// `retry_interval` as asked, in seconds (kept for `query`; retries
    /// follow the coordinator's backoff).
    #[serde(default)]
    pub retry_interval: u64,
    /// `timeout_to_fail` as asked, in seconds (0: DTM's default).
    #[serde(default)]
    pub timeout_to_fail: u64,
    /// `custom_data` as sent (a JSON string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<String>,
    /// Saga and msg: steps run concurrently.
    #[serde(default)]
    pub concurrent: bool,
    /// Saga: `retry_limit` as asked.
    #[serde(default)]
    pub retry_limit: u64,
}
