//! What the shop's client and its services share: the modes, the services,
//! an order line, and the points where a service can be told to die.

use serde::{Deserialize, Serialize};

/// A transaction mode of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ShopMode {
    /// Try-Confirm-Cancel: reservations (reserved stock, frozen funds).
    Tcc,
    /// XA: plain SQL held in prepared database transactions.
    Xa,
    /// AT: plain SQL through the SDK's AT executor, undone from undo logs.
    At,
    /// Saga: actions and compensations behind the SDK's barrier.
    Saga,
    /// Two-phase message: "order placed", delivered to the consumers.
    Msg,
    /// Three-phase commit: votes, prepared work, DoCommit.
    #[value(name = "3pc")]
    ThreePc,
}

impl ShopMode {
    /// Every mode, in the order `--mode all` runs them.
    pub const ALL: [ShopMode; 6] =
        [ShopMode::Tcc, ShopMode::Xa, ShopMode::At, ShopMode::Saga, ShopMode::Msg, ShopMode::ThreePc];

    /// The mode's name in transaction names, database names and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            ShopMode::Tcc => "tcc",
            ShopMode::Xa => "xa",
            ShopMode::At => "at",
            ShopMode::Saga => "saga",
            ShopMode::Msg => "msg",
            ShopMode::ThreePc => "3pc",
        }
    }
}

/// One of the shop's services (each a separate OS process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    /// Orders (PostgreSQL).
    Orders,
    /// Stock (PostgreSQL).
    Inventory,
    /// Balances (MariaDB, or PostgreSQL where MariaDB is missing or the mode needs it).
    Payment,
    /// Shipments (PostgreSQL; message mode only).
    Shipping,
}

impl Kind {
    /// The service's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Orders => "orders",
            Kind::Inventory => "inventory",
            Kind::Payment => "payment",
            Kind::Shipping => "shipping",
        }
    }
}

/// What a customer orders: one line, and what it costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Who pays.
    pub customer: String,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: i32,
    /// What it costs in total.
    pub amount: i64,
}

/// The body of the orders service's `POST /place-msg` (message mode): the
/// message's name and timeout, and the line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MsgOrder {
    /// The message's name (`shop.msg.<scenario>`).
    pub name: String,
    /// How long the message may stay prepared before the back-check.
    pub timeout_ms: u64,
    /// The order.
    pub line: OrderLine,
}

/// The answer of `POST /place-msg`: the message's xid, and the error if the
/// local transaction did not commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MsgPlaced {
    /// The message.
    pub xid: String,
    /// Why the order was not placed.
    pub error: Option<String>,
}

/// Where a service kills itself (SIGKILL), once armed with `POST /_shop/die-at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiePoint {
    /// When the coordinator's `commit` callback (TCC confirm, XA / AT commit,
    /// 3PC DoCommit) arrives, before the SDK handles it.
    Commit,
    /// After a saga action committed, before its answer goes out.
    ActionAnswered,
    /// Message producer: after the local transaction committed, before the submit.
    BeforeSubmit,
}
