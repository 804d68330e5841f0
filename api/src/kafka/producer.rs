//! The outbox relay's Kafka producer: librdkafka's idempotent producer, whose delivery
//! reports complete futures, polled by a thread of its own.
//!
//! rdkafka's `FutureProducer` does the same, but its thread polls in windows of 100 ms
//! through `BaseProducer::poll`, which turns the time left into whole milliseconds: in
//! the last millisecond of every window it polls with a timeout of 0, again and again,
//! until the window is over. That is a busy loop of up to a millisecond ten times a
//! second, about 1 % of a core in every process whether it publishes or not (half of an
//! idle instance's CPU; docs/BENCHMARKS.md). Polling in windows of a second spins ten
//! times less; delivery reports still complete their futures as they arrive (the poll
//! serves each report as it comes and waits on for the rest of its window), and the stop
//! flag is read between windows.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::{DeliveryResult, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer, ProducerContext},
    util::Timeout,
};
use tokio::sync::oneshot;

/// How long one poll of the delivery reports may wait. The thread notices that its
/// producer was dropped at the end of a window.
const POLL_WINDOW: Duration = Duration::from_secs(1);

/// Sends the result of each delivery to the future waiting for it.
#[derive(Debug, Default)]
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        // The sender is gone only when its publish round was dropped (shutdown).
        let _ = waiting.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// A handle on the producer; clones share it. The polling thread stops within
/// [`POLL_WINDOW`] of the last handle being dropped, and the producer is destroyed there.
#[derive(Clone)]
pub(crate) struct OutboxProducer(Arc<Handle>);

struct Handle {
    producer: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for OutboxProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxProducer").finish_non_exhaustive()
    }
}

impl OutboxProducer {
    /// Creates the producer `config` describes and starts its polling thread.
    pub(crate) fn new(config: &ClientConfig) -> Result<OutboxProducer, KafkaError> {
        let producer: Arc<BaseProducer<Deliveries>> = Arc::new(config.create_with_context(Deliveries)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (Arc::clone(&producer), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("kafka delivery".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(POLL_WINDOW);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start the delivery thread: {e}")))?;
        Ok(OutboxProducer(Arc::new(Handle { producer, stop })))
    }

    /// Queues one message; the future ends when Kafka acknowledged it (`Ok`) or it failed
    /// for good (`message.timeout.ms`, a fatal error). Fails at once when the producer's
    /// queue is full or the producer is unusable.
    pub(crate) fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &str,
        headers: Option<OwnedHeaders>,
    ) -> impl Future<Output = Result<(), KafkaError>> + use<> {
        let (waiting, delivered) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(waiting)).key(key).payload(payload);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        let queued = self.0.producer.send(record).map_err(|(e, _)| e);
        async move {
            queued?;
            delivered.await.unwrap_or(Err(KafkaError::Canceled))
        }
    }

    /// The error that made the producer unusable for good, if one did.
    pub(crate) fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.0.producer.client().fatal_error()
    }

    /// Waits up to `timeout` for the queued messages to be delivered (blocking).
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.0.producer.flush(Timeout::After(timeout))
    }
}
