//! Commit coalescing for single creates (DESIGN.md §8).
//!
//! Concurrent `createTask` calls queue here; one task takes everything waiting and
//! commits it as one transaction with multi-row inserts, answering each caller only
//! after that commit. Nothing is delayed on purpose: while one batch commits, the next
//! callers queue up and go together in the next batch, so batches grow with load and a
//! lone caller pays no extra latency. Inputs are independent (`CreateMode::PerInput`): an
//! idempotency conflict answers only its own caller.
//!
//! The queue is bounded ([`QUEUE`]): when full, callers wait (and their request timeout
//! bounds the wait). The task ends when the last `Store` handle is dropped.

use taskwire_domain::NewTask;
use tokio::sync::{mpsc, oneshot};

use super::{CreateMode, CreateOutcome, Store};
use crate::error::{ApiError, ApiResult};

/// Creates waiting to be committed, at most.
pub(super) const QUEUE: usize = 10_000;
/// Creates committed together, at most.
const MAX_BATCH: usize = 250;

pub(super) struct Pending {
    task: NewTask,
    traceparent: Option<String>,
    reply: oneshot::Sender<ApiResult<CreateOutcome>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

/// Starts `committers` coalescing tasks for `store` (a handle without a coalescer of its
/// own, so the tasks do not keep their own queue open). SQLite has one writer, so one
/// committer; MySQL commits several batches in parallel (its group commit shares fsyncs).
pub(super) fn start(store: Store, committers: usize) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..committers.max(1) {
        tokio::spawn(run(store.clone(), queue.clone()));
    }
    tx
}

/// Takes whatever is waiting (at least one, at most [`MAX_BATCH`]); `None` once closed.
async fn next_batch(queue: &tokio::sync::Mutex<mpsc::Receiver<Pending>>) -> Option<Vec<Pending>> {
    let mut queue = queue.lock().await;
    let first = queue.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn run(store: Store, queue: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>) {
    while let Some(batch) = next_batch(&queue).await {
        let inputs: Vec<NewTask> = batch.iter().map(|p| p.task.clone()).collect();
        let traces: Vec<Option<&str>> = batch.iter().map(|p| p.traceparent.as_deref()).collect();
        match store.create_tasks_traced(inputs, CreateMode::PerInput, &traces).await {
            Ok(outcomes) => {
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Store {
    /// Creates one task, committed together with concurrent creates.
    pub async fn create_task(&self, task: NewTask, traceparent: Option<&str>) -> ApiResult<CreateOutcome> {
        let Some(queue) = &self.coalescer else {
            let mut outcomes = self.create_tasks(vec![task], CreateMode::PerInput, traceparent).await?;
            return outcomes.pop().ok_or(ApiError::Internal);
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending { task, traceparent: traceparent.map(str::to_owned), reply };
        queue.send(pending).await.map_err(|_| ApiError::Unavailable)?;
        answer.await.map_err(|_| ApiError::Internal)?
    }
}
