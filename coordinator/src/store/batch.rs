//! Batching of independent writes (application-level group commit).
//!
//! One executor per kind of write: while its statement runs, new requests
//! queue; the next statement takes everything queued (up to a maximum). An
//! idle system runs each request alone at once; a busy one amortizes one
//! statement over many requests, the batch growing with the load. Each
//! request is answered only after the statement that carried it completed.

use super::StoreError;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Reply<O> = oneshot::Sender<Result<O, Arc<StoreError>>>;

/// Handle to a batching worker. Cheap to clone.
pub struct Batcher<I, O> {
    /// Queue to the worker.
    queue: mpsc::Sender<(I, Reply<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher { queue: self.queue.clone() }
    }
}

impl<I: Clone + Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the worker. `run` executes one batch and returns one result per
    /// input, in input order. A batch that fails is run again item by item, so
    /// that one bad item (or a deadlock between batches) fails only itself.
    pub fn start<F, Fut>(max: usize, run: F) -> Batcher<I, O>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, StoreError>> + Send + 'static,
    {
        let (queue, mut rx) = mpsc::channel::<(I, Reply<O>)>(max * 4);
        let run = Arc::new(run);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while rx.recv_many(&mut batch, max).await > 0 {
                let (inputs, replies): (Vec<I>, Vec<Reply<O>>) = batch.drain(..).unzip();
                if inputs.len() > 1 {
                    if let Ok(outputs) = execute(&run, inputs.clone()).await {
                        for (reply, out) in replies.into_iter().zip(outputs) {
                            let _ = reply.send(Ok(out));
                        }
                        continue;
                    }
                }
                for (input, reply) in inputs.into_iter().zip(replies) {
                    // `execute` checked the count: one output for one input.
                    let r = execute(&run, vec![input]).await.and_then(|mut v| {
                        v.pop().ok_or_else(|| StoreError::Internal("a batch of one answered nothing".into()))
                    });
                    let _ = reply.send(r.map_err(Arc::new));
                }
            }
        });
        Batcher { queue }
    }

    /// Submits one item and waits for its result.
    pub async fn submit(&self, item: I) -> Result<O, StoreError> {
        let (tx, rx) = oneshot::channel();
        // The worker is gone: it panicked outside a batch (a bug), or the
        // runtime is shutting down.
        let stopped = || StoreError::Internal("the batch worker stopped".into());
        self.queue.send((item, tx)).await.map_err(|_| stopped())?;
        match rx.await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => Err(StoreError::Batch(e)),
            Err(_) => Err(stopped()),
        }
    }
}

/// Runs one batch in its own task (a panic fails the batch, not the worker)
/// and checks that it answered every item.
async fn execute<I, O, F, Fut>(run: &Arc<F>, inputs: Vec<I>) -> Result<Vec<O>, StoreError>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<O>, StoreError>> + Send + 'static,
{
    let n = inputs.len();
    // Not logged here: the error reaches each caller, which logs it where it
    // is handled (the API maps `Internal` to a 500).
    match tokio::spawn(run(inputs)).await {
        Ok(Ok(outputs)) if outputs.len() == n => Ok(outputs),
        Ok(Ok(outputs)) => Err(StoreError::Internal(format!("a batch of {n} answered {} results", outputs.len()))),
        Ok(Err(e)) => Err(e),
        Err(join) => Err(StoreError::Internal(format!("a batched statement panicked: {join}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Submits `0..n` from concurrent tasks; returns each item with its result.
    async fn submit_concurrently(b: &Batcher<u32, u32>, n: u32) -> Vec<(u32, Result<u32, StoreError>)> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_each_item_and_batches_under_load() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b = Batcher::start(16, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().map(|mut s| s.push(items.len())).ok();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(items.into_iter().map(|i| i * 2).collect())
            }
        });
        for (i, r) in submit_concurrently(&b, 100).await {
            assert_eq!(r.expect("result"), i * 2);
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.iter().all(|&n| n <= 16));
        assert!(sizes.len() < 100, "requests queued behind a running batch share the next one: {sizes:?}");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_items() {
        let b: Batcher<u32, u32> = Batcher::start(4, |_| async { Err(StoreError::Contended) });
        assert!(matches!(b.submit(1).await, Err(StoreError::Batch(_))));
    }

    #[tokio::test]
    async fn a_panic_or_a_wrong_count_is_an_internal_error_not_a_retry() {
        let panics: Batcher<u32, u32> = Batcher::start(4, |_| async { panic!("bug") });
        let e = panics.submit(1).await.expect_err("fails");
        assert!(matches!(&e, StoreError::Batch(inner) if matches!(**inner, StoreError::Internal(_))), "{e:?}");
        assert!(!e.is_transient(), "a bug must not be answered 503 (clients retry that forever)");
        let short: Batcher<u32, u32> = Batcher::start(4, |_| async { Ok(vec![]) });
        let e = short.submit(1).await.expect_err("fails");
        assert!(e.to_string().contains("answered 0 results"), "{e}");
        assert!(!e.is_transient());
        // The worker survives a panic: the next item is served.
        let flaky = Batcher::start(4, |items: Vec<u32>| async move {
            if items.contains(&0) {
                panic!("bug");
            }
            Ok(items)
        });
        assert!(flaky.submit(0).await.is_err());
        assert_eq!(flaky.submit(5).await.expect("served"), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_poisoned_item_fails_alone() {
        let b = Batcher::start(64, |items: Vec<u32>| async move {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            if items.contains(&13) {
                return Err(StoreError::Contended);
            }
            Ok(items)
        });
        for (i, r) in submit_concurrently(&b, 40).await {
            if i == 13 {
                assert!(r.is_err());
            } else {
                assert_eq!(r.expect("others succeed"), i);
            }
        }
    }
}
