//! The embedded Kafka: librdkafka's in-process mock cluster, speaking the real Kafka
//! protocol over loopback TCP, so `cargo run` needs no broker.
//!
//! `MockCluster` holds raw librdkafka pointers and is neither `Send` nor `Sync`, so it
//! lives on a thread of its own; this handle talks to that thread over a channel. The
//! thread ends (and the cluster shuts down) when the handle is dropped.

use std::{
    sync::{Mutex, mpsc},
    thread::JoinHandle,
};

use rdkafka::{error::KafkaError, mocking::MockCluster};

enum Request {
    /// Disconnect every broker and refuse new connections (`up == false`), or let them back.
    SetBrokers {
        up: bool,
        reply: mpsc::Sender<Result<(), KafkaError>>,
    },
    /// Answer the next `count` produce requests with `PRODUCER_FENCED`.
    FenceProducers {
        count: usize,
        reply: mpsc::Sender<()>,
    },
    Stop,
}

/// Handle to the embedded mock cluster thread.
#[derive(Debug)]
pub struct EmbeddedCluster {
    bootstrap_servers: String,
    requests: Mutex<mpsc::Sender<Request>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::SetBrokers { up, .. } => write!(f, "SetBrokers({up})"),
            Request::FenceProducers { count, .. } => write!(f, "FenceProducers({count})"),
            Request::Stop => f.write_str("Stop"),
        }
    }
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` brokers with `topics` created (`partitions` each).
    pub(crate) fn start(brokers: i32, topics: &[String], partitions: i32) -> Result<EmbeddedCluster, KafkaError> {
        let (requests, inbox) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, KafkaError>>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("kafka-mock-cluster".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let replication = brokers.min(3);
                for topic in &topics {
                    if let Err(e) = cluster.create_topic(topic, partitions, replication) {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                for request in inbox {
                    match request {
                        Request::SetBrokers { up, reply } => {
                            let result = if up { cluster.broker_up(-1) } else { cluster.broker_down(-1) };
                            let _ = reply.send(result);
                        }
                        Request::FenceProducers { count, reply } => {
                            let fenced = vec![rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; count];
                            cluster.request_errors(rdkafka::types::RDKafkaApiKey::Produce, &fenced);
                            let _ = reply.send(());
                        }
                        Request::Stop => break,
                    }
                }
            })
            .map_err(|_| KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail))?;
        let bootstrap_servers =
            ready_rx.recv().map_err(|_| KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail))??;
        Ok(EmbeddedCluster { bootstrap_servers, requests: Mutex::new(requests), thread: Mutex::new(Some(thread)) })
    }

    /// The `bootstrap.servers` list of the cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Takes every broker down (connections cut, new ones refused) — for fault tests.
    pub fn set_brokers_down(&self) -> Result<(), KafkaError> {
        self.set_brokers(false)
    }

    /// Brings every broker back.
    pub fn set_brokers_up(&self) -> Result<(), KafkaError> {
        self.set_brokers(true)
    }

    /// Answers the next `count` produce requests with `PRODUCER_FENCED`, as a broker
    /// does to a producer it no longer accepts — for fault tests.
    pub fn fence_producers(&self, count: usize) -> Result<(), KafkaError> {
        let (reply, answer) = mpsc::channel();
        let fail = || KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail);
        self.requests.lock().map_err(|_| fail())?.send(Request::FenceProducers { count, reply }).map_err(|_| fail())?;
        answer.recv().map_err(|_| fail())
    }

    fn set_brokers(&self, up: bool) -> Result<(), KafkaError> {
        let (reply, answer) = mpsc::channel();
        let fail = || KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail);
        self.requests.lock().map_err(|_| fail())?.send(Request::SetBrokers { up, reply }).map_err(|_| fail())?;
        answer.recv().map_err(|_| fail())?
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        if let Ok(requests) = self.requests.lock() {
            let _ = requests.send(Request::Stop);
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}
