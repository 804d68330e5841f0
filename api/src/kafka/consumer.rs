//! The status consumer: feeds this process's live subscriptions from
//! `<prefix>.tasks.status`, and invalidates the task cache on every event.
//!
//! Every api process reads the whole topic with a group of its own, starting at the end
//! as it was when the process started (offsets fixed before serving, so nothing
//! committed after start-up is missed). Offsets are never committed: a restarted process
//! has no subscribers to catch up; subscribers resume from `task_events` with `afterSeq`.
//!
//! Each message is handled in a `kafka.status` span, a child of the trace context in the
//! message's headers when spans are exported.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
};
use taskwire_domain::{TaskEnvelope, TaskId};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ClosesAside;
use crate::{cache::TaskCache, live::Hub, metrics::Metrics};

/// Assigns every partition of `topic` at its current end offset.
pub(crate) async fn assign_at_end(consumer: Arc<ClosesAside<StreamConsumer>>, topic: String) -> Result<(), KafkaError> {
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer.fetch_watermarks(&topic, partition.id(), timeout)?;
            assignment.add_partition_offset(&topic, partition.id(), Offset::Offset(high))?;
        }
        consumer.assign(&assignment)
    })
    .await
    .map_err(|_| KafkaError::Subscription("assignment task failed".into()))?
}

/// Routes every status event to the hub until `shutdown`.
pub(crate) async fn run(
    consumer: Arc<ClosesAside<StreamConsumer>>,
    hub: Arc<Hub>,
    cache: TaskCache,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                let envelope = message.payload().and_then(|p| serde_json::from_slice::<TaskEnvelope>(p).ok());
                let span = tracing::info_span!(
                    "kafka.status",
                    otel.kind = "consumer",
                    task_id = envelope.as_ref().map(|e| e.task_id.as_str()),
                    seq = envelope.as_ref().map(|e| e.seq),
                    status = envelope.as_ref().map(|e| e.status.as_str()),
                    partition = message.partition(),
                    offset = message.offset(),
                );
                super::set_parent_from_headers(&span, message.headers());
                async {
                    match envelope {
                        Some(envelope) => {
                            metrics.status_events.with_label_values(&["routed"]).inc();
                            // Before the subscribers hear of it, so one that reads the task at
                            // once cannot be served the previous version from the cache.
                            if let Some(id) = TaskId::parse(&envelope.task_id) {
                                cache.invalidate_local(id, envelope.version);
                            }
                            hub.publish(envelope);
                        }
                        None => {
                            metrics.status_events.with_label_values(&["invalid"]).inc();
                            tracing::warn!(
                                offset = message.offset(),
                                "ignoring a status message that is not a task envelope"
                            );
                        }
                    }
                }
                .instrument(span)
                .await;
            }
            Err(e) => {
                // Broker outages surface here; librdkafka reconnects by itself.
                tracing::debug!(error = %e, "status consumer error");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
    tracing::info!("status consumer stopped");
}
