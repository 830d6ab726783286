//! Running code inside a global transaction.

use crate::client::{ClientError, TandemClient};
use crate::propagation::with_xid;
use std::future::Future;
use std::time::Duration;
use tandem_wire::{BeginRequest, Transaction, Xid};
use tracing::Instrument;

/// Why [`in_transaction`] did not commit.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError<E> {
    /// The closure failed; the transaction was rolled back (or will be, on timeout).
    #[error("business step failed; rolled back: {0}")]
    Aborted(E),
    /// Begin or commit failed at the coordinator (a commit turned into a
    /// rollback is a problem with code `invalid_state`).
    #[error(transparent)]
    Coordinator(#[from] ClientError),
}

/// How long commit and rollback wait for phase 2 in [`in_transaction`].
const WAIT: Duration = Duration::from_secs(5);

/// Begins a global transaction, runs `f` with its xid (also as the task's
/// current xid, so [`crate::RequestBuilderExt::propagate_xid`] forwards it),
/// then commits on `Ok` and rolls back on `Err`.
///
/// On success returns `f`'s value and the transaction as the commit answered
/// (`committed`, or `committing` if phase 2 took longer than 5 s).
pub async fn in_transaction<T, E, F, Fut>(
    client: &TandemClient,
    begin: BeginRequest,
    f: F,
) -> Result<(T, Transaction), GlobalError<E>>
where
    F: FnOnce(Xid) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let tx = client.begin(&begin).await?;
    let xid = tx.xid.clone();
    let span = tracing::info_span!("global_transaction", xid = %xid);
    match with_xid(xid.clone(), f(xid.clone())).instrument(span).await {
        Ok(v) => {
            let decided = client.commit(&xid, Some(WAIT)).await?;
            Ok((v, decided.transaction))
        }
        Err(e) => {
            if let Err(re) = client.rollback(&xid, Some(WAIT)).await {
                // The coordinator rolls it back on timeout anyway; the business error matters more.
                tracing::warn!(%xid, error = %re, "rollback request failed; the transaction will time out");
            }
            Err(GlobalError::Aborted(e))
        }
    }
}
