//! One running subscription of a connection: streams its operation's results.

use std::sync::Arc;

use async_graphql::{Request, Response};
use axum::extract::ws::{Message, Utf8Bytes};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    protocol::{Protocol, ServerMessage},
    writer::{Outbound, OutboundShare},
};
use crate::http::{AppState, graphql::stamp};

/// One running subscription of a connection.
pub(super) struct Subscription {
    pub(super) state: Arc<AppState>,
    pub(super) protocol: Protocol,
    pub(super) id: String,
    /// Tells this subscription from a later one reusing its id.
    pub(super) serial: u64,
    pub(super) request_id: String,
    pub(super) out: mpsc::Sender<Outbound>,
    /// The connection's outbound byte budget.
    pub(super) outbound_budget: Arc<Semaphore>,
    pub(super) cancel: CancellationToken,
}

impl Subscription {
    /// Streams the operation's results to the socket; returns its `(id, serial)`.
    pub(super) async fn run(self, request: Request) -> (String, u64) {
        self.stream(request).await;
        (self.id, self.serial)
    }

    async fn stream(&self, request: Request) {
        let mut stream = self.state.schema.execute_stream(request);
        loop {
            let item = tokio::select! {
                () = self.cancel.cancelled() => return,
                item = stream.next() => item,
            };
            let Some(mut response) = item else { break };
            response.errors.iter_mut().for_each(|e| stamp(e, &self.request_id));
            if failed(&response) {
                // The operation never started (validation, authorization, not found), or
                // its stream failed and ends (the caller may no longer read the task, the
                // subscriber fell too far behind, the database failed): either way the
                // operation is over, and `error` says so without a `complete`.
                let _ = self.send(&ServerMessage::Error { id: &self.id, errors: &response.errors }).await;
                return;
            }
            if !self.send(&ServerMessage::Next { id: &self.id, response: &response }).await {
                return;
            }
        }
        let _ = self.send(&ServerMessage::Complete { id: &self.id }).await;
    }

    /// Queues a message for the writer once the connection's outbound budget has room
    /// for it; `false` once the subscription or socket is gone.
    async fn send(&self, message: &ServerMessage<'_>) -> bool {
        let Some(text) = message.encode(self.protocol) else { return true };
        // A message larger than the whole budget waits until the queue is empty of results.
        let share = u32::try_from(text.len()).unwrap_or(u32::MAX).min(self.state.ws.max_outbound_bytes);
        let queued = async {
            let permit = self.outbound_budget.clone().acquire_many_owned(share).await.ok()?;
            let share = OutboundShare::new(permit, &self.state.metrics);
            let message = Message::Text(Utf8Bytes::from(text));
            self.out.send(Box::new((message, Some(share)))).await.ok()
        };
        tokio::select! {
            () = self.cancel.cancelled() => false,
            sent = queued => sent.is_some(),
        }
    }
}

/// Whether the operation failed: errors and no data.
fn failed(response: &Response) -> bool {
    !response.errors.is_empty() && response.data == async_graphql::Value::Null
}
