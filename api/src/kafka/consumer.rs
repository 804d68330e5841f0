//! The status consumer: feeds this process's live subscriptions from
//! `<prefix>.tasks.status`.
//!
//! Every api process reads the whole topic with a group of its own, starting at the end
//! as it was when the process started (offsets fixed before serving, so nothing
//! committed after start-up is missed). Offsets are never committed: a restarted process
//! has no subscribers to catch up; subscribers resume from `task_events` with `afterSeq`.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
};
use taskwire_domain::TaskEnvelope;
use tokio_util::sync::CancellationToken;

use crate::{live::Hub, metrics::Metrics};

/// Assigns every partition of `topic` at its current end offset.
pub async fn assign_at_end(consumer: Arc<StreamConsumer>, topic: String) -> Result<(), KafkaError> {
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
pub async fn run(consumer: Arc<StreamConsumer>, hub: Arc<Hub>, metrics: Metrics, shutdown: CancellationToken) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                let envelope = message.payload().and_then(|p| serde_json::from_slice::<TaskEnvelope>(p).ok());
                match envelope {
                    Some(envelope) => {
                        metrics.status_events.with_label_values(&["routed"]).inc();
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
