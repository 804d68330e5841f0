//! The running worker, as its owner holds it.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, Semaphore, watch},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Assignment, Error, Handler, OfferFilter, Stopped, TaskRecord, WorkerConfig, WorkerStats,
    session::{connection_loop, heartbeat_loop},
    shared::{Counters, Endpoint, HTTP_TIMEOUT, Seen, Shared, lock},
    transport::Socket,
};

/// How long [`Worker::disconnect_for`] waits for the subscription to be open again.
const RECONNECT_WAIT: Duration = Duration::from_secs(10);

/// A running worker. Dropping it without [`Worker::stop`] acts like [`Worker::kill`].
pub struct Worker {
    shared: Arc<Shared>,
    /// Cancelled by `kill`/drop, and by `stop` once handlers finished: ends everything.
    root: CancellationToken,
    /// Cancelled by `stop`: closes the subscription, takes no more offers.
    intake: CancellationToken,
    handlers: TaskTracker,
    connection: Option<JoinHandle<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").field("id", &self.shared.worker_id).field("stats", &self.stats()).finish()
    }
}

impl Worker {
    /// Registers the worker, opens the WebSocket, subscribes to `assignments` and starts
    /// handling offers and heartbeating. Errors when registration or the first connection
    /// fails on every URL of [`WorkerConfig::url`] (later connection failures are retried).
    pub async fn start(config: WorkerConfig, handler: Handler) -> Result<Worker, Error> {
        Worker::start_with_filter(config, Arc::new(|_: &Assignment| true), handler).await
    }

    /// Like [`Worker::start`], with `filter` deciding, before acceptance, which offers to
    /// take; the others are left to lapse.
    pub async fn start_with_filter(
        config: WorkerConfig,
        filter: OfferFilter,
        handler: Handler,
    ) -> Result<Worker, Error> {
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().map_err(Error::HttpClient)?;
        let endpoints = config.url.split(',').map(Endpoint::parse).collect::<Result<Vec<_>, _>>()?;
        let capacity = usize::try_from(config.capacity).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let (connected_tx, _) = watch::channel(None);
        let mut shared = Shared {
            endpoints,
            current: AtomicUsize::new(0),
            http,
            worker_id: String::new(),
            permits: Arc::new(Semaphore::new(capacity)),
            reports: Arc::new(Semaphore::new(capacity)),
            filter,
            handler,
            counters: Counters::default(),
            last_error: Mutex::new(None),
            log: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Seen::default()),
            in_hand: Mutex::new(HashMap::new()),
            stall_until: Mutex::new(None),
            partition_until: Mutex::new(None),
            partition_started: Notify::new(),
            connected: connected_tx,
            config,
            intake: CancellationToken::new(),
        };
        let socket = first_connection(&mut shared).await?;
        let shared = Arc::new(shared);

        let root = CancellationToken::new();
        let intake = root.child_token();
        // Stopping ends the retries of lost answers, so that `stop` is prompt.
        let stopping = shared.intake.clone();
        let on_stop = intake.clone();
        tokio::spawn(async move {
            on_stop.cancelled().await;
            stopping.cancel();
        });
        let handlers = TaskTracker::new();
        let connection =
            tokio::spawn(connection_loop(shared.clone(), socket, root.clone(), intake.clone(), handlers.clone()));
        let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), root.clone()));
        Ok(Worker { shared, root, intake, handlers, connection: Some(connection), heartbeat: Some(heartbeat) })
    }

    /// The worker's id, as `registerWorker` answered it (the token's `sub`).
    pub fn id(&self) -> &str {
        &self.shared.worker_id
    }

    /// The base URL the worker uses now (of a fail-over list, the current one).
    pub fn url(&self) -> &str {
        &self.shared.endpoint().base
    }

    /// The counters so far.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WorkerStats {
            offered: get(&c.offered),
            duplicates: get(&c.duplicates),
            ignored: get(&c.ignored),
            accepted: get(&c.accepted),
            completed: get(&c.completed),
            failed: get(&c.failed),
            released: get(&c.released),
            lease_lost: get(&c.lease_lost),
            errors: get(&c.errors),
            heartbeats: get(&c.heartbeats),
            heartbeat_errors: get(&c.heartbeat_errors),
            reconnects: get(&c.reconnects),
            failovers: get(&c.failovers),
            in_flight: get(&c.in_flight),
            last_error: lock(&self.shared.last_error).clone(),
        }
    }

    /// One record per offer the worker is done with, oldest first (offers still being
    /// handled are not in it yet). Keeps the latest 100 000.
    pub fn log(&self) -> Vec<TaskRecord> {
        lock(&self.shared.log).iter().cloned().collect()
    }

    /// Like [`Worker::log`], and empties it (for long runs that print as they go).
    pub fn take_log(&self) -> Vec<TaskRecord> {
        lock(&self.shared.log).drain(..).collect()
    }

    /// Polls [`Worker::stats`] until `done` holds or `timeout` passes; whether it held.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&WorkerStats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.stats()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful shutdown (draining): completes the subscription and closes the WebSocket
    /// (no new offers), lets running handlers finish and report (heartbeats continue
    /// meanwhile), then stops heartbeating. Returns the final counters and the whole log
    /// (what [`Worker::take_log`] had not taken).
    pub async fn stop(mut self) -> Stopped {
        self.intake.cancel();
        if let Some(connection) = self.connection.take() {
            let _ = connection.await;
        }
        self.handlers.close();
        self.handlers.wait().await;
        self.root.cancel();
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = heartbeat.await;
        }
        Stopped { stats: self.stats(), log: self.take_log() }
    }

    /// Abrupt shutdown, like a crashed process: aborts every task, drops the socket without
    /// a close handshake and reports nothing. Offers and leases are left for the server to
    /// reclaim.
    pub fn kill(mut self) {
        self.abort();
    }

    /// Fault simulation, a network partition: closes the WebSocket and stops heartbeating
    /// for `d`; task mutations started meanwhile wait until it is over. Then the worker
    /// registers again and resubscribes. Returns once it is subscribed again, or at most
    /// 10 s after the partition ended (it keeps retrying in the background), or when the
    /// worker stops.
    pub async fn disconnect_for(&self, d: Duration) {
        let mut connected = self.shared.connected.subscribe();
        let until = Instant::now() + d;
        {
            let mut partition = lock(&self.shared.partition_until);
            *partition = Some(partition.map_or(until, |current| current.max(until)));
        }
        self.shared.partition_started.notify_one();
        // Only a subscription opened once the partition is over counts.
        let reconnected = connected.wait_for(|at| at.is_some_and(|at| at >= until));
        tokio::select! {
            _ = self.root.cancelled() => {}
            _ = self.intake.cancelled() => {}
            _ = reconnected => {}
            _ = tokio::time::sleep(RECONNECT_WAIT) => {}
        }
    }

    fn abort(&mut self) {
        self.root.cancel();
        self.handlers.close();
        if let Some(connection) = self.connection.take() {
            connection.abort();
        }
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Registers and subscribes on the first URL of the fail-over list that answers, trying
/// each once; the error of the last attempt when none does.
async fn first_connection(shared: &mut Shared) -> Result<Socket, Error> {
    let mut attempts = shared.endpoints.len();
    loop {
        let opened = match shared.register().await {
            Ok(id) => {
                shared.worker_id = id;
                shared.connect().await
            }
            Err(e) => Err(e),
        };
        attempts -= 1;
        if opened.is_ok() || attempts == 0 {
            return opened;
        }
        shared.fail_over();
    }
}
