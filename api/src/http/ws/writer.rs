//! The socket writer of a connection, and the queue that feeds it.

use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::metrics::Metrics;

/// Messages waiting for the socket writer, per connection.
pub(super) const OUTBOUND_CAPACITY: usize = 64;

/// A message queued for the socket writer, with the share of the connection's outbound
/// byte budget it holds until it is written (none for the small protocol messages the
/// connection itself sends). Boxed: tokio's channel allocates its slots in blocks when
/// it is created, so an idle connection holds a block of empty slots; boxed, each slot
/// is pointer-sized.
pub(super) type Outbound = Box<(Message, Option<OutboundShare>)>;

/// A text message that holds no share of the outbound budget.
pub(super) fn unbudgeted(text: String) -> Outbound {
    Box::new((Message::Text(Utf8Bytes::from(text)), None))
}

/// A queued message's share of its connection's outbound budget, given back (and no
/// longer counted in `taskwire_ws_outbound_bytes`) when the message is dropped: written,
/// or discarded with its connection.
pub(super) struct OutboundShare {
    permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl OutboundShare {
    pub(super) fn new(permit: OwnedSemaphorePermit, metrics: &Metrics) -> Self {
        metrics.ws_outbound_bytes.add(permit.num_permits() as i64);
        OutboundShare { permit, metrics: metrics.clone() }
    }
}

impl Drop for OutboundShare {
    fn drop(&mut self) {
        self.metrics.ws_outbound_bytes.sub(self.permit.num_permits() as i64);
    }
}

/// Writes queued messages; gives up on a client that stops reading.
pub(super) async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut outbound: mpsc::Receiver<Outbound>,
    write_timeout: Duration,
    metrics: Metrics,
) {
    while let Some(queued) = outbound.recv().await {
        // The message's share of the budget is given back once it is written.
        let (message, _share) = *queued;
        let closing = matches!(message, Message::Close(_));
        match tokio::time::timeout(write_timeout, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::info!("dropping a WebSocket client that stopped reading");
                metrics.ws_slow_clients_dropped.inc();
                return;
            }
        }
        if closing {
            break;
        }
    }
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
}
