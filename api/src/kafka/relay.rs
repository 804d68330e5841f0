//! The outbox relay: publishes committed outbox rows to Kafka and deletes them once Kafka
//! has acknowledged them.
//!
//! It wakes right after a commit (the store's outbox signal) and also sweeps every
//! second as a safety net (a signal sent while it was busy, another process's rows).
//! Kafka being down only delays it: rows stay in the outbox and are retried with
//! backoff, so an acknowledged mutation is never lost (README, Task lifecycle).
//! Each message carries the trace context of the request that wrote it (see [`publish`]).
//!
//! Before a batch goes out, the relay writes an L2 cache tombstone for each status event in
//! it ([`TaskCache::announce`]): one writer per event whatever the number of processes, and
//! no process hears of a change through Kafka while Redis still serves the version before.
//!
//! An idempotent producer can fail for good: after a broker outage the broker may
//! answer `PRODUCER_FENCED` (for example after the broker process was frozen), and
//! librdkafka then fails every later message. The relay notices such a fatal error and
//! replaces the producer with a new one (a new producer id); the rows it could not
//! deliver are still in the outbox and go out through the new producer. Consumers
//! tolerate the duplicates that at-least-once delivery can bring.

use std::{collections::HashMap, time::Duration};

use chrono::Utc;
use futures::future::join_all;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
};
use taskwire_domain::TaskId;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::producer::OutboxProducer;
use crate::{cache::TaskCache, metrics::Metrics, telemetry};
use taskwire_store::{OutboxMessage, Store};

/// Messages claimed per round.
const BATCH: u64 = 500;
/// Sweep interval when no signal arrives.
const SWEEP: Duration = Duration::from_secs(1);
/// Longest pause between retries while Kafka is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the backlog gauge is refreshed.
const BACKLOG_SAMPLE: Duration = Duration::from_secs(1);

/// Builds the relay's producer (again, after a fatal error).
pub(crate) type MakeProducer = Box<dyn Fn() -> Result<OutboxProducer, KafkaError> + Send + Sync>;

/// The relay task's state.
pub(crate) struct OutboxRelay {
    store: Store,
    producer: OutboxProducer,
    make_producer: MakeProducer,
    cache: TaskCache,
    /// Messages to this topic announce a new task version (see [`announced_versions`]).
    status_topic: String,
    metrics: Metrics,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay").finish_non_exhaustive()
    }
}

impl OutboxRelay {
    /// A relay publishing `store`'s outbox with the producers `make_producer` builds
    /// (the first one now), announcing the versions of events to `status_topic` to `cache`.
    pub(crate) fn new(
        store: Store,
        make_producer: MakeProducer,
        cache: TaskCache,
        status_topic: String,
        metrics: Metrics,
    ) -> Result<Self, KafkaError> {
        let producer = make_producer()?;
        Ok(OutboxRelay { store, producer, make_producer, cache, status_topic, metrics })
    }

    /// Runs until `shutdown`, then drains what it can and flushes the producer.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let signal = self.store.outbox_signal();
        let mut backoff = Duration::from_millis(100);
        let mut last_count = std::time::Instant::now() - BACKLOG_SAMPLE;
        loop {
            match self.publish_round().await {
                Ok(claimed) => {
                    backoff = Duration::from_millis(100);
                    if claimed as u64 == BATCH {
                        continue; // more is waiting
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = signal.notified() => {}
                        () = tokio::time::sleep(SWEEP) => {}
                    }
                }
                Err(fatal) => {
                    if fatal {
                        self.replace_producer();
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            // Counting the backlog reads up to `BACKLOG_EXACT_UP_TO` rows: once a second
            // is enough for the gauge.
            if last_count.elapsed() >= BACKLOG_SAMPLE {
                last_count = std::time::Instant::now();
                if let Ok(backlog) = self.store.outbox_backlog().await {
                    self.metrics.outbox_backlog.set(backlog as i64);
                }
            }
        }
        // Last round: what committed just before shutdown goes out now if Kafka is up.
        let _ = self.publish_round().await;
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        tracing::info!("outbox relay stopped");
    }

    /// Publishes one batch. `Err` when anything failed (the caller backs off), with
    /// `true` when the producer failed for good and must be replaced.
    async fn publish_round(&self) -> Result<usize, bool> {
        let producer = &self.producer;
        let metrics = &self.metrics;
        let (cache, status_topic) = (&self.cache, self.status_topic.as_str());
        let mut failed = false;
        let mut fatal = false;
        let (failed_ref, fatal_ref) = (&mut failed, &mut fatal);
        let result = self
            .store
            .publish_outbox(BATCH, move |messages| async move {
                let attempted = messages.len();
                // Without Redis there is no L2, and no need to read the payloads.
                if cache.is_shared() {
                    cache.announce(&announced_versions(&messages, status_topic)).await;
                }
                let published = publish(producer, metrics, messages).await;
                *failed_ref = published.delivered.len() < attempted;
                *fatal_ref = published.fatal || producer.fatal_error().is_some();
                published.delivered
            })
            .await;
        match result {
            Ok(claimed) if !failed => Ok(claimed),
            Ok(_) => Err(fatal),
            Err(e) => {
                tracing::warn!(code = %e.code(), "reading the outbox failed");
                Err(false)
            }
        }
    }

    /// Swaps in a new producer after a fatal error (the old one is dropped: everything
    /// it held failed already). Keeps the old one if a new one cannot be built.
    fn replace_producer(&mut self) {
        let reason = self.producer.fatal_error().map(|(code, reason)| format!("{code:?}: {reason}"));
        match (self.make_producer)() {
            Ok(producer) => {
                self.producer = producer;
                self.metrics.outbox_producer_restarts.inc();
                tracing::error!(?reason, "the Kafka producer failed for good; replaced it with a new one");
            }
            Err(e) => tracing::error!(error = %e, "the Kafka producer failed for good and a new one cannot be built"),
        }
    }
}

/// Sends every message and waits for the acknowledgements; returns the ids Kafka
/// acknowledged.
///
/// Messages of one task share a key, hence a partition; the idempotent producer keeps
/// their order within this batch.
///
/// Each send runs in a `kafka.publish` span, a child of the row's stored trace context
/// (the request that committed it). The message carries that stored `traceparent`; when
/// spans are exported it carries the publish span's own context instead (same trace id),
/// so the consumers' spans hang under the publish in the exported trace.
async fn publish(producer: &OutboxProducer, metrics: &Metrics, messages: Vec<OutboxMessage>) -> Published {
    let attempted = messages.len();
    let sends = messages.iter().map(|message| {
        // No ambient parent: the relay's spans belong to the requests that wrote the rows.
        let span = tracing::info_span!(
            parent: None,
            "kafka.publish",
            otel.kind = "producer",
            topic = message.topic.as_str(),
            task_id = message.key.as_str(),
            outbox_id = message.id,
        );
        if let Some(stored) = &message.traceparent {
            telemetry::set_remote_parent(&span, stored);
        }
        let exported = telemetry::span_traceparent(&span);
        let headers = exported.as_ref().or(message.traceparent.as_ref()).map(|traceparent| {
            OwnedHeaders::new().insert(Header { key: telemetry::TRACEPARENT, value: Some(traceparent) })
        });
        let id = message.id;
        let created_at = message.created_at;
        let delivery = producer.send(&message.topic, &message.key, &message.payload, headers);
        async move {
            match delivery.await {
                Ok(()) => Ok((id, created_at)),
                Err(e) => {
                    tracing::debug!(error = %e, id, "outbox message not delivered");
                    Err(is_fatal(&e))
                }
            }
        }
        .instrument(span)
    });
    let results = join_all(sends).await;
    let fatal = results.iter().any(|r| matches!(r, Err(true)));
    let mut delivered = Vec::with_capacity(attempted);
    let now = Utc::now();
    for (id, created_at) in results.into_iter().flatten() {
        let latency = (now - created_at).to_std().unwrap_or_default();
        metrics.outbox_publish_latency.observe(latency.as_secs_f64());
        delivered.push(id);
    }
    metrics.outbox_published.inc_by(delivered.len() as u64);
    let failures = attempted - delivered.len();
    if failures > 0 {
        metrics.outbox_publish_failures.inc_by(failures as u64);
        tracing::warn!(failures, attempted, "some outbox messages were not delivered; they stay queued");
    }
    Published { delivered, fatal }
}

/// The newest version of each task that `messages` announce on `status_topic` (a batch
/// may hold several events of one task). A message that does not parse is left out here:
/// its consumers count and skip it too.
fn announced_versions(messages: &[OutboxMessage], status_topic: &str) -> Vec<(TaskId, u32)> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u32,
    }
    let mut newest: HashMap<TaskId, u32> = HashMap::new();
    for message in messages.iter().filter(|m| m.topic == status_topic) {
        let Some(id) = TaskId::parse(&message.key) else { continue };
        let Ok(Versioned { version }) = serde_json::from_str(&message.payload) else { continue };
        let entry = newest.entry(id).or_default();
        *entry = (*entry).max(version);
    }
    newest.into_iter().collect()
}

/// What [`publish`] achieved.
struct Published {
    /// Outbox ids Kafka acknowledged.
    delivered: Vec<i64>,
    /// Some message failed with an error that no retry through this producer can fix.
    fatal: bool,
}

/// Whether `e` means the producer is unusable from now on.
fn is_fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, key: &str, payload: &str) -> OutboxMessage {
        OutboxMessage {
            id: 1,
            topic: topic.into(),
            key: key.into(),
            payload: payload.into(),
            traceparent: None,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn a_batch_announces_the_newest_status_version_of_each_task_and_nothing_else() {
        let (one, two) = (TaskId::generate(Utc::now()), TaskId::generate(Utc::now()));
        let batch = [
            message("p.tasks.status", &one.to_string(), r#"{"version":2,"status":"QUEUED"}"#),
            message("p.tasks.status", &one.to_string(), r#"{"version":4,"status":"RUNNING"}"#),
            message("p.tasks.status", &one.to_string(), r#"{"version":3,"status":"ASSIGNED"}"#),
            message("p.tasks.dispatch", &two.to_string(), r#"{"version":9}"#),
            message("p.tasks.status", &two.to_string(), r#"{"version":1}"#),
            message("p.tasks.status", "not-a-task-id", r#"{"version":5}"#),
            message("p.tasks.status", &two.to_string(), "not json"),
        ];

        let mut announced = announced_versions(&batch, "p.tasks.status");
        announced.sort();

        let mut expected = vec![(one, 4), (two, 1)];
        expected.sort();
        assert_eq!(announced, expected);
    }
}
