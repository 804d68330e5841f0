//! Kafka: connection set-up, topics, the outbox relay and the status consumer.
//!
//! With `TASKWIRE_KAFKA_BROKERS` unset the process starts librdkafka's mock cluster
//! in-process ([`embedded`]); otherwise it connects to the given brokers and creates the
//! topics if they are missing. Either way, everything else talks real Kafka protocol.

pub mod consumer;
pub mod embedded;
pub mod relay;

use std::{sync::Arc, time::Duration};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::FutureProducer,
};
use taskwire_domain::EnvelopeType;

pub use embedded::EmbeddedCluster;

use crate::store::Topics;

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
}

/// A connected Kafka: where it is and which topics it has.
#[derive(Debug, Clone)]
pub struct Kafka {
    bootstrap_servers: String,
    topics: Topics,
    embedded: Option<Arc<EmbeddedCluster>>,
}

impl Kafka {
    /// Starts the embedded cluster or reaches the configured brokers, and makes sure the
    /// three topics exist.
    pub async fn connect(settings: &KafkaSettings) -> Result<Kafka, KafkaError> {
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
                create_topics(brokers, &names, settings.partitions, settings.replication).await?;
                Ok(Kafka { bootstrap_servers: brokers.clone(), topics, embedded: None })
            }
        }
    }

    /// The topic names.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The embedded cluster, when running on it (fault tests take its brokers down).
    pub fn embedded(&self) -> Option<Arc<EmbeddedCluster>> {
        self.embedded.clone()
    }

    /// The outbox producer: idempotent, `acks=all`, tuned for latency (`linger.ms` 1).
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("compression.type", "lz4")
            // Bounded: an undeliverable message fails back to the relay, which keeps the
            // outbox row and retries later.
            .set("message.timeout.ms", "10000")
            .set("queue.buffering.max.messages", "100000")
            .create()
    }

    /// A consumer of `topic` in group `group`, starting at the latest offset when the
    /// group has none, without committing (an api process only fans out live events).
    pub fn live_consumer(&self, group: &str, topic: &str) -> Result<StreamConsumer, KafkaError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", group)
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        consumer.subscribe(&[topic])?;
        Ok(consumer)
    }

    /// The matcher's consumer of `topic`: group `group` (shared by every dispatcher
    /// process), from the earliest offset when the group has none, offsets committed by
    /// the matcher itself (only below the lowest task not yet placed).
    pub fn dispatch_consumer(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<StreamConsumer<crate::dispatch::matcher::RebalanceContext>, KafkaError> {
        let consumer: StreamConsumer<crate::dispatch::matcher::RebalanceContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .set("fetch.wait.max.ms", "10")
            .create_with_context(crate::dispatch::matcher::RebalanceContext::default())?;
        consumer.subscribe(&[topic])?;
        Ok(consumer)
    }

    /// Whether the cluster answers a metadata request for the status topic in time.
    pub async fn ping(&self, timeout: Duration) -> Result<(), KafkaError> {
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

async fn create_topics(brokers: &str, names: &[String], partitions: i32, replication: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new_topics: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
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
