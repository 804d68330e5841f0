//! Kafka: connection set-up, topics, the outbox relay, the status consumer, the trace
//! context carried in message headers and the consumer-lag sampler.
//!
//! With `TASKWIRE_KAFKA_BROKERS` unset the process starts librdkafka's mock cluster
//! in-process ([`embedded`]); otherwise it connects to the given brokers and creates the
//! topics if they are missing. Either way, everything else talks real Kafka protocol.

mod close;
pub(crate) mod consumer;
pub(crate) mod embedded;
pub(crate) mod producer;
mod rebalance;
pub(crate) mod relay;

use std::{sync::Arc, time::Duration};

use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::Headers,
};
use taskwire_domain::EnvelopeType;
use tokio_util::sync::CancellationToken;

pub(crate) use close::{ClosesAside, leave_group};
pub use embedded::EmbeddedCluster;
pub(crate) use rebalance::{GroupContext, RebalanceListener};

use crate::{metrics::Metrics, telemetry};
use taskwire_store::Topics;

/// Brokers in the embedded mock cluster.
const EMBEDDED_BROKERS: i32 = 3;

/// Kafka settings from the configuration.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port,…`; `None` starts the embedded mock cluster.
    pub brokers: Option<String>,
    /// Topic name prefix.
    pub topic_prefix: String,
    /// Partitions of each topic created at start.
    pub partitions: i32,
    /// Replication factor of each topic created at start (real brokers only).
    pub replication: i32,
    /// Time start-up may spend reaching the brokers, creating the topics and reading their
    /// offsets; past it the process exits with a clear error instead of hanging on a
    /// broker that accepts connections but does not answer.
    pub startup_timeout: Duration,
}

/// A connected Kafka: where it is and which topics it has.
#[derive(Debug, Clone)]
pub(crate) struct Kafka {
    bootstrap_servers: String,
    topics: Topics,
    embedded: Option<Arc<EmbeddedCluster>>,
}

/// How long a consumer's fetch may wait at the broker for records (`fetch.wait.max.ms`).
///
/// With `fetch.min.bytes` at 1, a Kafka broker answers as soon as a record arrives, so on
/// Kafka this bounds only how often an idle consumer asks: 20 times a second per broker.
/// This process's own changes reach its subscribers and its matcher at commit, not
/// through these consumers; they carry other processes' changes. Two brokers do not cut
/// the wait short: librdkafka's mock cluster holds an empty answer for the whole wait, and
/// tansu 0.6 sleeps out the rest of it even when it found records. On them a change from
/// another process can arrive up to this much later. A shorter wait makes idle consumers
/// poll the brokers more often, at the brokers' CPU cost.
const FETCH_WAIT_MAX_MS: &str = "50";

impl Kafka {
    /// Starts the embedded cluster or reaches the configured brokers, and makes sure the
    /// three topics exist.
    pub(crate) async fn connect(settings: &KafkaSettings) -> Result<Kafka, KafkaError> {
        let topics = Topics::new(&settings.topic_prefix);
        let names = topics.all();
        match &settings.brokers {
            None => {
                let partitions = settings.partitions;
                let cluster =
                    tokio::task::spawn_blocking(move || EmbeddedCluster::start(EMBEDDED_BROKERS, &names, partitions))
                        .await
                        .map_err(|_| KafkaError::MockCluster(RDKafkaErrorCode::Fail))??;
                tracing::info!(bootstrap = cluster.bootstrap_servers(), "started the embedded Kafka mock cluster");
                Ok(Kafka {
                    bootstrap_servers: cluster.bootstrap_servers().to_owned(),
                    topics,
                    embedded: Some(Arc::new(cluster)),
                })
            }
            Some(brokers) => {
                create_topics(brokers, &names, settings).await?;
                Ok(Kafka { bootstrap_servers: brokers.clone(), topics, embedded: None })
            }
        }
    }

    /// The topic names.
    pub(crate) fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The embedded cluster, when running on it (fault tests take its brokers down).
    pub(crate) fn embedded(&self) -> Option<Arc<EmbeddedCluster>> {
        self.embedded.clone()
    }

    /// The outbox producer: idempotent, `acks=all`, tuned for latency (`linger.ms` 1).
    pub(crate) fn producer(&self) -> Result<producer::OutboxProducer, KafkaError> {
        let config = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("compression.type", "lz4")
            // Bounded: an undeliverable message fails back to the relay, which keeps the
            // outbox row and retries later.
            .set("message.timeout.ms", "10000")
            .set("queue.buffering.max.messages", "100000")
            .clone();
        producer::OutboxProducer::new(&config)
    }

    /// A consumer with group id `group`, never committing (an api process
    /// only fans out live events). It does not subscribe: the caller assigns partitions
    /// explicitly ([`consumer::assign_at_end`]). A subscription as well would make the
    /// group's first rebalance replace that assignment with offsets taken later, and the
    /// events committed in between would never reach this process.
    pub(crate) fn live_consumer(&self, group: &str) -> Result<StreamConsumer, KafkaError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", group)
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
            .create()?;
        Ok(consumer)
    }

    /// The dispatch consumer of `topic`: group `group` (shared by every dispatcher
    /// process), from the earliest offset when the group has none, never committing by
    /// itself (its owner commits only what it has placed). The group's rebalances go to
    /// an `L` of the owner's.
    pub(crate) fn dispatch_consumer<L: RebalanceListener + Default>(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<StreamConsumer<GroupContext<L>>, KafkaError> {
        let consumer: StreamConsumer<GroupContext<L>> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
            .create_with_context(GroupContext::default())?;
        consumer.subscribe(&[topic])?;
        Ok(consumer)
    }

    /// Whether the cluster answers a metadata request for the status topic in time.
    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), KafkaError> {
        let bootstrap = self.bootstrap_servers.clone();
        let topic = self.topics.for_envelope(EnvelopeType::Status);
        tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
            let metadata = client.fetch_metadata(Some(&topic), timeout)?;
            let ok = metadata.topics().iter().any(|t| t.error().is_none() && !t.partitions().is_empty());
            if ok { Ok(()) } else { Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)) }
        })
        .await
        .map_err(|_| KafkaError::MetadataFetch(RDKafkaErrorCode::Fail))?
    }
}

async fn create_topics(brokers: &str, names: &[String], settings: &KafkaSettings) -> Result<(), KafkaError> {
    // Topics that exist are left alone: every process after the first finds them, and a
    // deployment may create them itself and grant no admin rights.
    let existing = existing_topics(brokers, settings.startup_timeout).await?;
    let missing: Vec<&String> = names.iter().filter(|n| !existing.contains(n.as_str())).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let (partitions, replication) = (settings.partitions, settings.replication);
    let new_topics: Vec<NewTopic<'_>> =
        missing.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication))).collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(settings.startup_timeout));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(topic, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(topic, ?code, "cannot create Kafka topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// The topics the brokers know, with at least one partition.
///
/// A broker that drops the connection (still starting, or a silent listener whose peer gives
/// up on it) is asked again until `timeout` has passed; then the call fails with
/// `OperationTimedOut`, which start-up reports as the brokers not answering in time.
async fn existing_topics(brokers: &str, timeout: Duration) -> Result<std::collections::HashSet<String>, KafkaError> {
    use RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure, OperationTimedOut};
    let deadline = std::time::Instant::now() + timeout;
    // One client for every attempt: it keeps reconnecting by itself between them.
    let consumer: Arc<BaseConsumer> = Arc::new(ClientConfig::new().set("bootstrap.servers", brokers).create()?);
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if remaining.is_zero() {
            return Err(KafkaError::MetadataFetch(OperationTimedOut));
        }
        let consumer = consumer.clone();
        // librdkafka's metadata call blocks its thread.
        let outcome = tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, remaining))
            .await
            .map_err(|_| KafkaError::MetadataFetch(RDKafkaErrorCode::Fail))?;
        match outcome {
            Ok(metadata) => {
                return Ok(metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.name().to_owned())
                    .collect());
            }
            Err(e) if matches!(e.rdkafka_error_code(), Some(BrokerTransportFailure | AllBrokersDown)) => {
                tracing::debug!(error = %e, "Kafka metadata request failed; asking again");
                tokio::time::sleep(Duration::from_millis(100).min(remaining)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The trace-context headers of a Kafka message, for [`telemetry::set_parent_from`]. Reads
/// the headers in place: nothing is copied.
struct HeaderCarrier<'a, H: Headers>(&'a H);

impl<H: Headers> std::fmt::Debug for HeaderCarrier<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCarrier").field("headers", &self.0.count()).finish()
    }
}

impl<H: Headers> opentelemetry::propagation::Extractor for HeaderCarrier<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// Makes `span` a child of the trace context in a message's headers, when spans are
/// exported (free otherwise).
pub(crate) fn set_parent_from_headers<H: Headers>(span: &tracing::Span, headers: Option<&H>) {
    if let Some(headers) = headers
        && telemetry::exporting()
    {
        telemetry::set_parent_from(span, &HeaderCarrier(headers));
    }
}

/// How often [`run_lag_sampler`] samples.
const LAG_SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How long one high-watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// A consumer whose lag can be measured.
pub(crate) trait ConsumerLag: Send + Sync {
    /// Σ(high watermark − position) over the partitions assigned to this consumer. A
    /// partition it has not read from since its assignment counts from the group's
    /// committed offset, or else from where its `auto.offset.reset` starts it. Blocking
    /// (asks the brokers): call it from `spawn_blocking`.
    fn lag(&self, timeout: Duration) -> Result<i64, KafkaError>;
}

/// The live consumers of [`Kafka::live_consumer`] start at the end (`latest`).
impl ConsumerLag for StreamConsumer {
    fn lag(&self, timeout: Duration) -> Result<i64, KafkaError> {
        lag_of(self, Reset::Latest, timeout)
    }
}

/// The dispatch consumers of [`Kafka::dispatch_consumer`] start at the beginning
/// (`earliest`).
impl<L: RebalanceListener> ConsumerLag for StreamConsumer<GroupContext<L>> {
    fn lag(&self, timeout: Duration) -> Result<i64, KafkaError> {
        lag_of(self, Reset::Earliest, timeout)
    }
}

impl<T: ConsumerLag + Send + 'static> ConsumerLag for ClosesAside<T> {
    fn lag(&self, timeout: Duration) -> Result<i64, KafkaError> {
        (**self).lag(timeout)
    }
}

/// A consumer's `auto.offset.reset`.
#[derive(Debug, Clone, Copy)]
enum Reset {
    Earliest,
    Latest,
}

fn lag_of<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    reset: Reset,
    timeout: Duration,
) -> Result<i64, KafkaError> {
    let positions = consumer.position()?;
    // (topic, partition, next offset to read; `None`: the low watermark)
    let mut starts: Vec<(String, i32, Option<i64>)> = Vec::with_capacity(positions.count());
    let mut unread = TopicPartitionList::new();
    for element in positions.elements() {
        match element.offset() {
            Offset::Offset(position) => starts.push((element.topic().to_owned(), element.partition(), Some(position))),
            _ => {
                unread.add_partition(element.topic(), element.partition());
            }
        }
    }
    if unread.count() > 0 {
        for element in consumer.committed_offsets(unread, timeout)?.elements() {
            let start = match (element.offset(), reset) {
                (Offset::Offset(committed), _) => Some(committed),
                (_, Reset::Earliest) => None,
                (_, Reset::Latest) => continue,
            };
            starts.push((element.topic().to_owned(), element.partition(), start));
        }
    }
    let mut lag = 0;
    for (topic, partition, start) in starts {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
        lag += (high - start.unwrap_or(low).max(low)).max(0);
    }
    Ok(lag)
}

/// Every [`LAG_SAMPLE_EVERY`], sets `kafka_consumer_lag{consumer=<label>}` for each
/// consumer, until `shutdown`. A sample that fails (brokers down) leaves the last value.
pub(crate) async fn run_lag_sampler(
    consumers: Vec<(&'static str, Arc<dyn ConsumerLag>)>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    if consumers.is_empty() {
        return;
    }
    let mut ticks = tokio::time::interval(LAG_SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'sampling: loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        for (label, consumer) in &consumers {
            let consumer = consumer.clone();
            let sample = tokio::task::spawn_blocking(move || consumer.lag(WATERMARK_TIMEOUT));
            // Shutdown does not wait for the brokers: the blocking call ends on its own.
            let sample = tokio::select! {
                () = shutdown.cancelled() => break 'sampling,
                sample = sample => sample,
            };
            match sample {
                Ok(Ok(lag)) => metrics.consumer_lag.with_label_values(&[*label]).set(lag),
                Ok(Err(e)) => tracing::debug!(consumer = *label, error = %e, "cannot sample the consumer lag"),
                Err(e) => tracing::debug!(consumer = *label, error = %e, "the lag sample task failed"),
            }
        }
    }
    tracing::debug!("consumer lag sampler stopped");
}
