//! The reference worker client: how to write a Taskwire worker in Rust.
//!
//! A worker registers itself over HTTP (`registerWorker`; its id is its token's `sub`, and
//! the token needs the `worker` role), opens the `assignments` subscription over a
//! `graphql-transport-ws` WebSocket, and for every offer it receives:
//!
//! 1. accepts it with `acceptTask(taskId, leaseToken)` (`ASSIGNED` → `RUNNING`);
//! 2. runs your [`Handler`], which returns an [`Outcome`];
//! 3. reports the outcome with `completeTask`, `failTask` or `releaseTask`, always
//!    presenting the offer's lease token (the fencing token: a stale one answers
//!    `LEASE_LOST`).
//!
//! Meanwhile it calls `heartbeat(tasks)` every [`WorkerConfig::heartbeat_every`], naming the
//! tasks it is working on: that keeps the worker `ONLINE` and extends those tasks' leases
//! (a task it no longer names lapses back to the queue). It reconnects the WebSocket with
//! a short backoff (100 ms doubling to 2 s) when it drops. Given several server URLs
//! ([`WorkerConfig::url`]), it moves to the next one whenever its connection dies or
//! cannot be opened, and its HTTP calls follow. Offers that arrive
//! twice (same lease token, e.g. replayed after a reconnect) are handled once. At most
//! [`WorkerConfig::capacity`] handlers run at a time; an offer beyond that is left to lapse.
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//!
//! use futures::FutureExt;
//! use serde_json::json;
//! use taskwire_tests::worker::{Handler, Outcome, Worker, WorkerConfig};
//!
//! # async fn run(token: String) -> Result<(), String> {
//! let config = WorkerConfig {
//!     url: "http://127.0.0.1:8080".into(),
//!     token, // a JWT with `sub` = the worker id and the `worker` role
//!     name: "resizer-1".into(),
//!     queues: vec!["images".into()],
//!     capacity: 4,
//!     heartbeat_every: Duration::from_secs(5),
//! };
//! let handler: Handler = Arc::new(|assignment| {
//!     async move {
//!         // Do the work for `assignment.payload` here; the task is already RUNNING.
//!         match assignment.kind.as_str() {
//!             "resize" => Outcome::Complete(Some(json!({ "ok": true }))),
//!             other => Outcome::Fail { error: format!("unknown kind {other}"), retryable: false },
//!         }
//!     }
//!     .boxed()
//! });
//! let worker = Worker::start(config, handler).await?;
//! // … later:
//! println!("{:?}", worker.stats());
//! worker.stop().await; // graceful: no new offers, running tasks finish and report
//! # Ok(())
//! # }
//! ```
//!
//! Writing the handler:
//! - the handler runs **after** the task was accepted, so do the work inside it and
//!   return [`Outcome::Complete`], [`Outcome::Fail`] or [`Outcome::Release`];
//! - long work is fine: heartbeats keep the lease alive while the handler runs;
//! - to leave an offer unaccepted (let it lapse back to the queue), decide before
//!   acceptance with an [`OfferFilter`] passed to [`Worker::start_with_filter`].
//!
//! Fault simulation for tests: [`Outcome::Stall`] (a hung process: the whole worker stops
//! heartbeating), [`Worker::disconnect_for`] (a network partition), [`Worker::kill`] (a crash).
//! What happened is observable through [`Worker::stats`] and [`Worker::log`].

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::{FutureExt, SinkExt, StreamExt, future::BoxFuture};
use serde_json::{Value, json};
use tokio::{
    net::TcpStream,
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    task::JoinHandle,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The `assignments` subscription the worker sends (operation name `Assignments`).
pub const ASSIGNMENTS_SUBSCRIPTION: &str = "subscription Assignments { assignments { leaseToken leaseExpiresAt \
     task { id queue kind payload priority attempts maxAttempts } } }";

const REGISTER: &str = "mutation RegisterWorker($input: RegisterWorkerInput!) { registerWorker(input: $input) { id } }";
const HEARTBEAT: &str = "mutation Heartbeat($tasks: [ID!]) { heartbeat(tasks: $tasks) { id } }";
const ACCEPT: &str = "mutation AcceptTask($taskId: ID!, $leaseToken: String!) { \
     acceptTask(taskId: $taskId, leaseToken: $leaseToken) { id } }";
const COMPLETE: &str = "mutation CompleteTask($taskId: ID!, $leaseToken: String!, $result: JSON) { \
     completeTask(taskId: $taskId, leaseToken: $leaseToken, result: $result) { id } }";
const FAIL: &str = "mutation FailTask($taskId: ID!, $leaseToken: String!, $error: String!, $retryable: Boolean) { \
     failTask(taskId: $taskId, leaseToken: $leaseToken, error: $error, retryable: $retryable) { id } }";
const RELEASE: &str = "mutation ReleaseTask($taskId: ID!, $leaseToken: String!) { \
     releaseTask(taskId: $taskId, leaseToken: $leaseToken) { id } }";

/// The id of the one subscription each connection carries.
const SUBSCRIPTION_ID: &str = "assignments";
/// The WebSocket subprotocol the worker speaks.
const PROTOCOL: &str = "graphql-transport-ws";
/// First and largest reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection that lived at least this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(2);
/// How long to wait for `connection_ack`, and for each HTTP request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lease tokens are remembered to drop duplicate deliveries.
const SEEN_LIMIT: usize = 100_000;
/// How many records [`Worker::log`] keeps (the oldest are dropped first).
const LOG_LIMIT: usize = 100_000;
/// How long a task mutation whose answer was lost is retried.
const REPORT_RETRY_LIMIT: Duration = Duration::from_secs(60);
/// The shortest heartbeat period honoured.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// How to reach the server and what to register as.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Base URL of the server, `http://host:port` (`/graphql` is appended; the WebSocket
    /// uses the same address with `ws://`). Several comma-separated base URLs (instances
    /// of one deployment) are a fail-over list: the worker starts on the first that
    /// answers and, whenever its connection dies or cannot be opened, moves on to the next
    /// (wrapping around); its HTTP calls go where its subscription is.
    pub url: String,
    /// The worker's JWT (role `worker`); its `sub` is the worker id.
    pub token: String,
    /// Display name sent to `registerWorker` (1–128 characters).
    pub name: String,
    /// Queues served (1–64).
    pub queues: Vec<String>,
    /// Tasks handled at once (1–1000); registered with the server and enforced locally.
    pub capacity: u32,
    /// Period of the `heartbeat` mutation; keep it well under the queues' lease length
    /// (30 s by default). Values under 10 ms are raised to 10 ms.
    pub heartbeat_every: Duration,
}

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .field("queues", &self.queues)
            .field("capacity", &self.capacity)
            .field("heartbeat_every", &self.heartbeat_every)
            .finish()
    }
}

/// One offer received on the `assignments` subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The task's id.
    pub task_id: String,
    /// The fencing token every mutation about this offer must present.
    pub lease_token: String,
    /// When the offer (then, once accepted, the lease) expires, RFC 3339, as sent.
    pub lease_expires_at: String,
    /// The task's queue.
    pub queue: String,
    /// The task's kind.
    pub kind: String,
    /// The task's payload (`null` when it has none).
    pub payload: Value,
    /// The task's priority, 0–9.
    pub priority: i64,
    /// Attempts made so far, as the server counts them.
    pub attempts: i64,
    /// Attempts allowed before the task is `DEAD`.
    pub max_attempts: i64,
}

/// What the handler decided; the worker reports it to the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `completeTask` with this result.
    Complete(Option<Value>),
    /// `failTask`: retried later when `retryable` and attempts remain, else `DEAD`.
    Fail {
        /// The error message stored on the task.
        error: String,
        /// Whether the task may be retried.
        retryable: bool,
    },
    /// `releaseTask`: hand the task back to the queue.
    Release,
    /// Hang: stop heartbeating (for the whole worker, like a GC pause or a hung process)
    /// for this long, then try to complete (`completeTask` with no result). The lease may
    /// expire meanwhile, in which case the completion answers `LEASE_LOST`.
    Stall(Duration),
    /// Report nothing. Returned by the handler (the task is already accepted), the task
    /// stays `RUNNING` on this worker, and heartbeats no longer name it: a worker that lost
    /// track of a task. Its lease lapses and the server reclaims it (a failed attempt). To
    /// let an *offer* lapse instead, refuse it with an [`OfferFilter`]; the log records
    /// such offers with this outcome.
    Ignore,
}

/// The task-handling function: called once per accepted offer.
pub type Handler = Arc<dyn Fn(Assignment) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Decides before acceptance whether to take an offer: `false` leaves it unaccepted, so the
/// offer lapses and the server offers the task again (to this or another worker).
pub type OfferFilter = Arc<dyn Fn(&Assignment) -> bool + Send + Sync>;

/// The server's answer to a mutation: `Ok`, or the error's `extensions.code` (for example
/// `LEASE_LOST`). Failures without a GraphQL answer are `TRANSPORT` (no response) or
/// `HTTP_<status>` (a body that is not GraphQL).
pub type Answer = Result<(), String>;

/// A moment, both monotonic (for durations) and wall-clock (to compare with server times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time.
    pub utc: DateTime<Utc>,
}

impl Stamp {
    /// Now.
    pub fn now() -> Stamp {
        Stamp { instant: Instant::now(), utc: Utc::now() }
    }
}

/// What happened to one offer. Added to the log once the worker is done with it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The task's id.
    pub task_id: String,
    /// The offer's lease token.
    pub lease_token: String,
    /// The task's queue.
    pub queue: String,
    /// The task's kind.
    pub kind: String,
    /// The task's attempts when offered.
    pub attempts: i64,
    /// When the offer arrived.
    pub offered_at: Stamp,
    /// The answer to `acceptTask`; `None` when the worker did not try (offer filtered out
    /// or capacity full).
    pub accept: Option<Answer>,
    /// Whether `acceptTask` succeeded.
    pub accepted: bool,
    /// When `acceptTask` succeeded.
    pub accepted_at: Option<Stamp>,
    /// The handler's outcome, or [`Outcome::Ignore`] for an offer left to lapse; `None`
    /// when acceptance failed.
    pub outcome: Option<Outcome>,
    /// The answer to `completeTask` / `failTask` / `releaseTask`; `None` when nothing was
    /// sent.
    pub answer: Option<Answer>,
    /// When the worker was done with the offer (the answer arrived, or it gave up).
    pub finished_at: Option<Stamp>,
}

/// Counters since start. `offered` counts distinct offers; every other counter counts
/// events, not tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Distinct offers received.
    pub offered: u64,
    /// Deliveries of an offer already received (same lease token), dropped.
    pub duplicates: u64,
    /// Offers left to lapse: filtered out, or beyond capacity.
    pub ignored: u64,
    /// Successful `acceptTask` calls.
    pub accepted: u64,
    /// Successful `completeTask` calls.
    pub completed: u64,
    /// Successful `failTask` calls.
    pub failed: u64,
    /// Successful `releaseTask` calls.
    pub released: u64,
    /// Task mutations (accept, complete, fail, release) answered `LEASE_LOST`.
    pub lease_lost: u64,
    /// Task mutations answered with any other error.
    pub errors: u64,
    /// Successful `heartbeat` calls.
    pub heartbeats: u64,
    /// Failed `heartbeat` calls.
    pub heartbeat_errors: u64,
    /// Times the subscription was re-established after the first connection (after a
    /// drop, or after [`Worker::disconnect_for`]).
    pub reconnects: u64,
    /// Moves to the next URL of a fail-over list ([`WorkerConfig::url`]).
    pub failovers: u64,
    /// Handlers running now (accepting, working or reporting).
    pub in_flight: u64,
    /// The latest problem seen (failed request, dropped connection, subscription error).
    pub last_error: Option<String>,
}

/// What [`Worker::stop`] leaves behind.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopped {
    /// The final counters.
    pub stats: WorkerStats,
    /// The records not taken earlier, oldest first.
    pub log: Vec<TaskRecord>,
}

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
    /// fails (later connection failures are retried).
    pub async fn start(config: WorkerConfig, handler: Handler) -> Result<Worker, String> {
        Worker::start_with_filter(config, Arc::new(|_: &Assignment| true), handler).await
    }

    /// Like [`Worker::start`], with `filter` deciding, before acceptance, which offers to
    /// take; the others are left to lapse.
    pub async fn start_with_filter(
        config: WorkerConfig,
        filter: OfferFilter,
        handler: Handler,
    ) -> Result<Worker, String> {
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().map_err(|e| format!("HTTP client: {e}"))?;
        let endpoints = config.url.split(',').map(Endpoint::parse).collect::<Result<Vec<_>, _>>()?;
        let capacity = usize::try_from(config.capacity).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let (connected_tx, _) = watch::channel(None);
        let mut shared = Shared {
            endpoints,
            current: AtomicUsize::new(0),
            http,
            worker_id: String::new(),
            permits: Arc::new(Semaphore::new(capacity)),
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
        // Each URL of a fail-over list is tried once.
        let mut opened = Err(String::new());
        for _ in 0..shared.endpoints.len() {
            opened = match shared.register().await {
                Ok(id) => {
                    shared.worker_id = id;
                    shared.connect().await
                }
                Err(e) => Err(e),
            };
            if opened.is_ok() {
                break;
            }
            shared.fail_over();
        }
        let stream = opened?;
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
            tokio::spawn(connection_loop(shared.clone(), stream, root.clone(), intake.clone(), handlers.clone()));
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

    /// Graceful shutdown: completes the subscription and closes the WebSocket (no new
    /// offers), lets running handlers finish and report (heartbeats continue meanwhile),
    /// then stops heartbeating. Returns the final counters and the whole log (what
    /// [`Worker::take_log`] had not taken).
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

    /// A network partition: closes the WebSocket and stops heartbeating for `d`; task
    /// mutations started meanwhile wait until it is over. Then the worker registers again
    /// and resubscribes. Returns once it is subscribed again, or at most 10 s after the
    /// partition ended (it keeps retrying in the background), or when the worker stops.
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
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
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

/// State shared by the worker's tasks.
struct Shared {
    config: WorkerConfig,
    /// The servers of [`WorkerConfig::url`], in order; `current` indexes the one in use.
    endpoints: Vec<Endpoint>,
    current: AtomicUsize,
    http: reqwest::Client,
    worker_id: String,
    permits: Arc<Semaphore>,
    filter: OfferFilter,
    handler: Handler,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    log: Mutex<VecDeque<TaskRecord>>,
    seen: Mutex<Seen>,
    /// Tasks being accepted, worked on or reported, with how many handlers have each
    /// (a task offered again while an earlier handler still reports it has two): what
    /// every heartbeat names. At most `capacity` entries, one per handler permit.
    in_hand: Mutex<HashMap<String, u32>>,
    /// Heartbeats pause until then (a stalled handler).
    stall_until: Mutex<Option<Instant>>,
    /// The network is "down" until then.
    partition_until: Mutex<Option<Instant>>,
    /// Wakes the connection loop when a partition starts.
    partition_started: Notify,
    /// When the subscription was last (re)opened.
    connected: watch::Sender<Option<Instant>>,
    /// Cancelled when the worker stops or is killed: ends retries of lost answers.
    intake: CancellationToken,
}

#[derive(Default)]
struct Counters {
    offered: AtomicU64,
    duplicates: AtomicU64,
    ignored: AtomicU64,
    accepted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    released: AtomicU64,
    lease_lost: AtomicU64,
    errors: AtomicU64,
    heartbeats: AtomicU64,
    heartbeat_errors: AtomicU64,
    reconnects: AtomicU64,
    failovers: AtomicU64,
    in_flight: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Lease tokens seen lately, to drop duplicate deliveries.
#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Whether `token` is new (and remembers it).
    fn insert(&mut self, token: &str) -> bool {
        if !self.set.insert(token.to_owned()) {
            return false;
        }
        self.order.push_back(token.to_owned());
        if self.order.len() > SEEN_LIMIT
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        true
    }
}

/// Locks a mutex, ignoring poisoning (the data are counters and logs, always usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection ended.
enum SessionEnd {
    /// `stop`: the subscription was completed and the socket closed.
    Stopped,
    /// `disconnect_for`: the socket was dropped on purpose.
    Partitioned,
    /// The connection dropped or the server ended the subscription.
    Dropped(String),
    /// The server refused the subscription (`error`); register again before retrying.
    Rejected(String),
}

/// One server of the fail-over list: its base URL and the addresses derived from it.
struct Endpoint {
    base: String,
    graphql: String,
    ws: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, String> {
        let base = url.trim().trim_end_matches('/').trim_end_matches("/graphql").to_owned();
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/graphql")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/graphql")
        } else {
            return Err(format!("url must start with http:// or https://: {url}"));
        };
        Ok(Endpoint { graphql: format!("{base}/graphql"), ws, base })
    }
}

impl Shared {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// Moves to the next server of the fail-over list (nothing to do with a single URL).
    fn fail_over(&self) {
        if self.endpoints.len() > 1 {
            self.current.fetch_add(1, Ordering::Relaxed);
            bump(&self.counters.failovers);
        }
    }

    fn note_error(&self, error: impl Into<String>) {
        *lock(&self.last_error) = Some(error.into());
    }

    fn partitioned_until(&self) -> Option<Instant> {
        let mut partition = lock(&self.partition_until);
        match *partition {
            Some(until) if until > Instant::now() => Some(until),
            Some(_) => {
                *partition = None;
                None
            }
            None => None,
        }
    }

    fn stalled(&self) -> bool {
        lock(&self.stall_until).is_some_and(|until| until > Instant::now())
    }

    fn stall_for(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut stall = lock(&self.stall_until);
        *stall = Some(stall.map_or(until, |current| current.max(until)));
    }

    /// Waits out a partition (task mutations do not get through while it lasts).
    async fn wait_for_network(&self) {
        while let Some(until) = self.partitioned_until() {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// POSTs one operation; its `data`, or the answer's error code (and a description,
    /// also noted as the last error). `UNAVAILABLE` means the server changed nothing
    /// (its transaction rolled back, e.g. on a database deadlock): the call is retried a
    /// few times with backoff, as every client should.
    async fn graphql(&self, query: &str, variables: Value) -> Result<Value, (String, String)> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.graphql_once(query, variables.clone()).await {
                Err((code, _)) if code == "UNAVAILABLE" && backoff <= Duration::from_secs(2) => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                other => return other,
            }
        }
    }

    async fn graphql_once(&self, query: &str, variables: Value) -> Result<Value, (String, String)> {
        let response = self
            .http
            .post(&self.endpoint().graphql)
            .bearer_auth(&self.config.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await;
        let result = match response {
            Err(e) => Err(("TRANSPORT".to_owned(), e.to_string())),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.json::<Value>().await {
                    Err(e) => Err((format!("HTTP_{status}"), e.to_string())),
                    Ok(body) => match body.get("errors").and_then(Value::as_array).and_then(|e| e.first()) {
                        Some(error) => {
                            let code = error["extensions"]["code"].as_str().unwrap_or("NO_CODE").to_owned();
                            let message = error["message"].as_str().unwrap_or_default().to_owned();
                            Err((code, message))
                        }
                        None if body.get("data").is_some_and(|d| !d.is_null()) => Ok(body["data"].clone()),
                        None => Err((format!("HTTP_{status}"), format!("no data: {body}"))),
                    },
                }
            }
        };
        if let Err((code, message)) = &result {
            let operation = query.split(['(', '{']).next().unwrap_or(query).trim();
            self.note_error(format!("{operation}: {code}: {message}"));
        }
        result
    }

    /// `registerWorker`; the worker id.
    async fn register(&self) -> Result<String, String> {
        let input = json!({
            "name": self.config.name,
            "queues": self.config.queues,
            "capacity": self.config.capacity,
        });
        match self.graphql(REGISTER, json!({ "input": input })).await {
            Ok(data) => Ok(data["registerWorker"]["id"].as_str().unwrap_or_default().to_owned()),
            Err((code, message)) => Err(format!("registerWorker: {code}: {message}")),
        }
    }

    /// A task mutation (after any partition), counted: `Ok`, or the error code.
    /// A task mutation (accept or a report). When the answer is lost (`TRANSPORT`, or an
    /// HTTP error without a GraphQL answer: the server may or may not have committed),
    /// it is sent again with backoff for up to [`REPORT_RETRY_LIMIT`]: every task
    /// mutation is fenced by the lease token, accepting again is idempotent for the
    /// holder, and a report that did commit answers `LEASE_LOST` when repeated. Without
    /// this, a worker that lost the answer to `completeTask` would forget a task it
    /// finished, and the lease its heartbeats stop naming would lapse as a failed attempt.
    async fn task_mutation(&self, query: &str, variables: Value, success: &AtomicU64) -> Answer {
        self.wait_for_network().await;
        let give_up = tokio::time::Instant::now() + REPORT_RETRY_LIMIT;
        let mut backoff = BACKOFF_MIN;
        let answer = loop {
            let answer = self.graphql(query, variables.clone()).await;
            let lost = matches!(&answer, Err((code, _)) if code == "TRANSPORT" || code.starts_with("HTTP_"));
            if !lost || tokio::time::Instant::now() + backoff > give_up || self.intake.is_cancelled() {
                break answer;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.intake.cancelled() => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        match answer {
            Ok(_) => {
                bump(success);
                Ok(())
            }
            Err((code, _)) => {
                bump(if code == "LEASE_LOST" { &self.counters.lease_lost } else { &self.counters.errors });
                Err(code)
            }
        }
    }

    /// Opens the WebSocket, initialises it and subscribes to `assignments`.
    async fn connect(&self) -> Result<Socket, String> {
        let mut socket = open_acknowledged(&self.endpoint().ws, &self.config.token).await?;
        let subscribe = json!({
            "id": SUBSCRIPTION_ID,
            "type": "subscribe",
            "payload": { "query": ASSIGNMENTS_SUBSCRIPTION, "variables": {}, "operationName": "Assignments" },
        });
        send(&mut socket, subscribe).await?;
        self.connected.send_replace(Some(Instant::now()));
        Ok(socket)
    }

    /// Reads the subscription until it ends.
    async fn session(
        self: &Arc<Self>,
        socket: &mut Socket,
        intake: &CancellationToken,
        root: &CancellationToken,
        handlers: &TaskTracker,
    ) -> SessionEnd {
        loop {
            let message = tokio::select! {
                _ = intake.cancelled() => {
                    let complete = json!({ "id": SUBSCRIPTION_ID, "type": "complete" });
                    let closing = async {
                        let _ = send(socket, complete).await;
                        let _ = socket.close(None).await;
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
                    return SessionEnd::Stopped;
                }
                _ = self.partition_started.notified() => {
                    // A notification left over from an earlier partition is stale.
                    if self.partitioned_until().is_some() {
                        return SessionEnd::Partitioned;
                    }
                    continue;
                }
                message = socket.next() => message,
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    return SessionEnd::Dropped(format!("closed by server: {}", describe_close(frame.as_ref())));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return SessionEnd::Dropped(format!("WebSocket: {e}")),
                None => return SessionEnd::Dropped("WebSocket ended".to_owned()),
            };
            let message: Value = match serde_json::from_str(&text) {
                Ok(message) => message,
                Err(e) => {
                    self.note_error(format!("assignments: bad JSON from server: {e}"));
                    continue;
                }
            };
            match message["type"].as_str() {
                Some("ping") => {
                    if let Err(e) = send(socket, json!({ "type": "pong" })).await {
                        return SessionEnd::Dropped(e);
                    }
                }
                Some("next") => {
                    let payload = &message["payload"];
                    if let Some(errors) = payload.get("errors").filter(|e| !e.is_null()) {
                        self.note_error(format!("assignments: {errors}"));
                    }
                    let assignment = &payload["data"]["assignments"];
                    if !assignment.is_null() {
                        match parse_assignment(assignment) {
                            Ok(assignment) => self.offer(assignment, root, handlers),
                            Err(e) => self.note_error(format!("assignments: {e}: {assignment}")),
                        }
                    }
                }
                Some("error") => return SessionEnd::Rejected(format!("assignments refused: {}", message["payload"])),
                Some("complete") => return SessionEnd::Dropped("server completed the subscription".to_owned()),
                _ => {}
            }
        }
    }

    /// Takes (or lets lapse) one delivered offer.
    fn offer(self: &Arc<Self>, assignment: Assignment, root: &CancellationToken, handlers: &TaskTracker) {
        if !lock(&self.seen).insert(&assignment.lease_token) {
            bump(&self.counters.duplicates);
            return;
        }
        bump(&self.counters.offered);
        let record = TaskRecord {
            task_id: assignment.task_id.clone(),
            lease_token: assignment.lease_token.clone(),
            queue: assignment.queue.clone(),
            kind: assignment.kind.clone(),
            attempts: assignment.attempts,
            offered_at: Stamp::now(),
            accept: None,
            accepted: false,
            accepted_at: None,
            outcome: None,
            answer: None,
            finished_at: None,
        };
        let wanted = std::panic::catch_unwind(AssertUnwindSafe(|| (self.filter)(&assignment))).unwrap_or(false);
        let permit = if wanted { self.permits.clone().try_acquire_owned().ok() } else { None };
        let Some(permit) = permit else {
            bump(&self.counters.ignored);
            self.record(TaskRecord { outcome: Some(Outcome::Ignore), finished_at: Some(Stamp::now()), ..record });
            return;
        };
        let shared = self.clone();
        let root = root.clone();
        bump(&self.counters.in_flight);
        handlers.spawn(async move {
            tokio::select! {
                _ = root.cancelled() => {}
                _ = shared.handle(assignment, record, permit) => {}
            }
            shared.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Accept, run the handler, report; heartbeats name the task meanwhile.
    async fn handle(&self, assignment: Assignment, record: TaskRecord, permit: OwnedSemaphorePermit) {
        let task_id = assignment.task_id.clone();
        *lock(&self.in_hand).entry(task_id.clone()).or_default() += 1;
        self.handle_in_hand(assignment, record, permit).await;
        let mut in_hand = lock(&self.in_hand);
        if let Some(handlers) = in_hand.get_mut(&task_id) {
            *handlers -= 1;
            if *handlers == 0 {
                in_hand.remove(&task_id);
            }
        }
    }

    /// The tasks to name in a heartbeat.
    fn tasks_in_hand(&self) -> Vec<String> {
        lock(&self.in_hand).keys().cloned().collect()
    }

    async fn handle_in_hand(&self, assignment: Assignment, mut record: TaskRecord, _permit: OwnedSemaphorePermit) {
        let ids = json!({ "taskId": assignment.task_id, "leaseToken": assignment.lease_token });
        let accept = self.task_mutation(ACCEPT, ids.clone(), &self.counters.accepted).await;
        record.accepted = accept.is_ok();
        record.accept = Some(accept);
        if !record.accepted {
            record.finished_at = Some(Stamp::now());
            self.record(record);
            return;
        }
        record.accepted_at = Some(Stamp::now());

        let handler = self.handler.clone();
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(assignment))) {
            Ok(work) => AssertUnwindSafe(work).catch_unwind().await,
            Err(panic) => Err(panic),
        };
        let outcome =
            outcome.unwrap_or_else(|_| Outcome::Fail { error: "worker handler panicked".to_owned(), retryable: true });
        record.outcome = Some(outcome.clone());

        let with = |extra: Value| {
            let mut variables = ids.clone();
            if let (Some(variables), Value::Object(extra)) = (variables.as_object_mut(), extra) {
                variables.extend(extra);
            }
            variables
        };
        let c = &self.counters;
        record.answer = match outcome {
            Outcome::Complete(result) => {
                Some(self.task_mutation(COMPLETE, with(json!({ "result": result })), &c.completed).await)
            }
            Outcome::Fail { error, retryable } => {
                let variables = with(json!({ "error": error, "retryable": retryable }));
                Some(self.task_mutation(FAIL, variables, &c.failed).await)
            }
            Outcome::Release => Some(self.task_mutation(RELEASE, ids.clone(), &c.released).await),
            Outcome::Stall(d) => {
                self.stall_for(d);
                tokio::time::sleep(d).await;
                Some(self.task_mutation(COMPLETE, with(json!({ "result": null })), &c.completed).await)
            }
            Outcome::Ignore => None,
        };
        record.finished_at = Some(Stamp::now());
        self.record(record);
    }

    fn record(&self, record: TaskRecord) {
        let mut log = lock(&self.log);
        if log.len() >= LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(record);
    }
}

/// Keeps the subscription open: reconnects with backoff, sits out partitions, ends on stop.
async fn connection_loop(
    shared: Arc<Shared>,
    socket: Socket,
    root: CancellationToken,
    intake: CancellationToken,
    handlers: TaskTracker,
) {
    let mut socket = Some(socket);
    let mut backoff = BACKOFF_MIN;
    let mut must_register = false;
    loop {
        if intake.is_cancelled() {
            return;
        }
        if let Some(until) = shared.partitioned_until() {
            drop(socket.take());
            tokio::select! {
                _ = intake.cancelled() => return,
                _ = tokio::time::sleep_until(until.into()) => {}
            }
            must_register = true;
            continue;
        }
        let current = match socket.take() {
            Some(current) => Some(current),
            None => {
                let attempt = async {
                    if must_register {
                        shared.register().await?;
                    }
                    shared.connect().await
                };
                let attempt = tokio::select! {
                    _ = intake.cancelled() => return,
                    attempt = attempt => attempt,
                };
                match attempt {
                    Ok(current) => {
                        must_register = false;
                        bump(&shared.counters.reconnects);
                        Some(current)
                    }
                    Err(e) => {
                        shared.note_error(e);
                        shared.fail_over();
                        None
                    }
                }
            }
        };
        if let Some(mut current) = current {
            let opened = Instant::now();
            match shared.session(&mut current, &intake, &root, &handlers).await {
                SessionEnd::Stopped => return,
                SessionEnd::Partitioned => {
                    // Dropped without a close handshake, like a cut cable.
                    drop(current);
                    continue;
                }
                SessionEnd::Dropped(reason) => {
                    shared.note_error(reason);
                    shared.fail_over();
                }
                SessionEnd::Rejected(reason) => {
                    shared.note_error(reason);
                    must_register = true;
                }
            }
            if opened.elapsed() >= STABLE_SESSION {
                backoff = BACKOFF_MIN;
            }
        }
        tokio::select! {
            _ = intake.cancelled() => return,
            _ = shared.partition_started.notified() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Calls `heartbeat` every period, except while stalled or partitioned.
async fn heartbeat_loop(shared: Arc<Shared>, root: CancellationToken) {
    let mut ticks = tokio::time::interval(shared.config.heartbeat_every.max(MIN_HEARTBEAT));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // The first tick is immediate; registration just counted as one.
    loop {
        tokio::select! {
            _ = root.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if shared.stalled() || shared.partitioned_until().is_some() {
            continue;
        }
        let beat = tokio::select! {
            _ = root.cancelled() => return,
            beat = shared.graphql(HEARTBEAT, json!({ "tasks": shared.tasks_in_hand() })) => beat,
        };
        bump(if beat.is_ok() { &shared.counters.heartbeats } else { &shared.counters.heartbeat_errors });
    }
}

pub(crate) async fn send(socket: &mut Socket, message: Value) -> Result<(), String> {
    socket.send(Message::text(message.to_string())).await.map_err(|e| format!("WebSocket send: {e}"))
}

/// Opens a `graphql-transport-ws` connection to `url`, sends `connection_init` with
/// `token` and waits for `connection_ack` (answering pings meanwhile), each step within
/// [`CONNECT_TIMEOUT`].
pub(crate) async fn open_acknowledged(url: &str, token: &str) -> Result<Socket, String> {
    let mut request = url.into_client_request().map_err(|e| format!("WebSocket URL: {e}"))?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let connecting = tokio_tungstenite::connect_async(request);
    let (mut socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| "WebSocket connect timed out".to_owned())?
        .map_err(|e| format!("WebSocket connect: {e}"))?;
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    send(&mut socket, init).await?;
    let acked = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match message["type"].as_str() {
                        Some("connection_ack") => return Ok(()),
                        Some("ping") => send(&mut socket, json!({ "type": "pong" })).await?,
                        _ => return Err(format!("expected connection_ack, got {message}")),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("closed before connection_ack: {}", describe_close(frame.as_ref())));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("WebSocket: {e}")),
                None => return Err("closed before connection_ack".to_owned()),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, acked).await.map_err(|_| "no connection_ack in time".to_owned())??;
    Ok(socket)
}

fn describe_close(frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(frame) => format!("{} {}", u16::from(frame.code), frame.reason),
        None => "no close frame".to_owned(),
    }
}

/// Reads one `assignments` item.
fn parse_assignment(value: &Value) -> Result<Assignment, String> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let task = &value["task"];
    Ok(Assignment {
        task_id: text(&task["id"]).ok_or("no task.id")?,
        lease_token: text(&value["leaseToken"]).ok_or("no leaseToken")?,
        lease_expires_at: text(&value["leaseExpiresAt"]).unwrap_or_default(),
        queue: text(&task["queue"]).unwrap_or_default(),
        kind: text(&task["kind"]).unwrap_or_default(),
        payload: task["payload"].clone(),
        priority: task["priority"].as_i64().unwrap_or_default(),
        attempts: task["attempts"].as_i64().unwrap_or_default(),
        max_attempts: task["maxAttempts"].as_i64().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::mpsc,
    };
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    #[test]
    fn parses_an_assignment() {
        let value = json!({
            "leaseToken": "lt-1",
            "leaseExpiresAt": "2026-01-01T00:00:00Z",
            "task": { "id": "t-1", "queue": "q", "kind": "k", "payload": { "a": 1 }, "priority": 3, "attempts": 1, "maxAttempts": 5 },
        });
        let assignment = parse_assignment(&value).expect("parses");
        assert_eq!(assignment.task_id, "t-1");
        assert_eq!(assignment.lease_token, "lt-1");
        assert_eq!(assignment.payload, json!({ "a": 1 }));
        assert_eq!((assignment.priority, assignment.attempts, assignment.max_attempts), (3, 1, 5));
        assert!(parse_assignment(&json!({ "task": { "id": "t" } })).is_err());
    }

    #[test]
    fn remembers_lease_tokens() {
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        assert!(seen.insert("b"));
    }

    /// A stand-in for the server: answers the worker mutations over HTTP and serves the
    /// `assignments` subscription, with offers pushed by the test.
    #[derive(Default)]
    struct Mock {
        /// `(mutation field, variables)` of every HTTP request.
        calls: Mutex<Vec<(String, Value)>>,
        /// Lease tokens answered `LEASE_LOST`.
        lost: Mutex<HashSet<String>>,
        /// Every WebSocket message the worker sent.
        received: Mutex<Vec<Value>>,
        /// Pushes to the open subscription (`None` drops the connection).
        push: Mutex<Option<mpsc::UnboundedSender<Option<Value>>>>,
    }

    impl Mock {
        async fn start() -> (Arc<Mock>, String) {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("address"));
            let mock = Arc::new(Mock::default());
            let server = mock.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(server.clone().serve(stream));
                }
            });
            (mock, url)
        }

        // The handshake callback's signature (a large `Err`) is tungstenite's.
        #[allow(clippy::result_large_err)]
        async fn serve(self: Arc<Self>, mut stream: TcpStream) {
            let mut head = [0u8; 4096];
            let head = loop {
                let n = stream.peek(&mut head).await.expect("peek");
                let text = String::from_utf8_lossy(&head[..n]).to_lowercase();
                if text.contains("\r\n\r\n") {
                    break text;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            if head.contains("upgrade: websocket") {
                let protocol = |_: &Request, mut response: Response| {
                    response.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
                    Ok(response)
                };
                let socket = tokio_tungstenite::accept_hdr_async(stream, protocol).await.expect("handshake");
                self.websocket(socket).await;
                return;
            }
            let mut request = Vec::new();
            let body_at = loop {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("read");
                request.extend_from_slice(&chunk[..n]);
                if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8_lossy(&request[..body_at]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            while request.len() < body_at + length {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("read");
                request.extend_from_slice(&chunk[..n]);
            }
            let body: Value = serde_json::from_slice(&request[body_at..]).expect("JSON");
            let answer = self.answer(&body).to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }

        fn answer(&self, body: &Value) -> Value {
            let query = body["query"].as_str().unwrap_or_default();
            let field = ["registerWorker", "heartbeat", "acceptTask", "completeTask", "failTask", "releaseTask"]
                .into_iter()
                .find(|f| query.contains(&format!("{f}(")) || query.contains(&format!("{f} {{")))
                .expect("a known mutation");
            let variables = body["variables"].clone();
            lock(&self.calls).push((field.to_owned(), variables.clone()));
            let token = variables["leaseToken"].as_str().unwrap_or_default();
            if lock(&self.lost).contains(token) {
                return json!({ "errors": [{ "message": "lease lost", "extensions": { "code": "LEASE_LOST" } }] });
            }
            json!({ "data": { field: { "id": variables["taskId"].as_str().unwrap_or("w-1") } } })
        }

        async fn websocket(&self, mut socket: WebSocketStream<TcpStream>) {
            let (push, mut pushed) = mpsc::unbounded_channel();
            loop {
                tokio::select! {
                    message = socket.next() => {
                        let Some(Ok(Message::Text(text))) = message else { return };
                        let message: Value = serde_json::from_str(&text).expect("JSON");
                        lock(&self.received).push(message.clone());
                        match message["type"].as_str() {
                            Some("connection_init") => {
                                let _ = socket.send(Message::text(json!({ "type": "connection_ack" }).to_string())).await;
                                let _ = socket.send(Message::text(json!({ "type": "ping" }).to_string())).await;
                            }
                            Some("subscribe") => *lock(&self.push) = Some(push.clone()),
                            _ => {}
                        }
                    }
                    item = pushed.recv() => {
                        let Some(Some(assignment)) = item else { return };
                        let next = json!({ "id": SUBSCRIPTION_ID, "type": "next", "payload": { "data": { "assignments": assignment } } });
                        let _ = socket.send(Message::text(next.to_string())).await;
                    }
                }
            }
        }

        /// Sends an offer once a subscription is open.
        async fn offer(&self, task: &str, lease: &str) {
            let assignment = json!({
                "leaseToken": lease,
                "leaseExpiresAt": "2030-01-01T00:00:00Z",
                "task": { "id": task, "queue": "q", "kind": "k", "payload": null, "priority": 0, "attempts": 0, "maxAttempts": 5 },
            });
            self.send(Some(assignment)).await;
        }

        async fn send(&self, item: Option<Value>) {
            for _ in 0..500 {
                if let Some(push) = lock(&self.push).as_ref()
                    && push.send(item.clone()).is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no subscription open");
        }

        fn count(&self, field: &str) -> usize {
            lock(&self.calls).iter().filter(|(f, _)| f == field).count()
        }

        fn received(&self, kind: &str) -> usize {
            lock(&self.received).iter().filter(|m| m["type"] == kind).count()
        }
    }

    fn config(url: &str, capacity: u32) -> WorkerConfig {
        WorkerConfig {
            url: url.to_owned(),
            token: "jwt".to_owned(),
            name: "test".to_owned(),
            queues: vec!["q".to_owned()],
            capacity,
            heartbeat_every: Duration::from_millis(50),
        }
    }

    /// Completes `ok`, fails kind `fail`, stalls on `stall-…` tasks, sleeps on `slow-…` ones.
    fn handler() -> Handler {
        Arc::new(|a: Assignment| {
            async move {
                if a.task_id.starts_with("slow") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                if a.task_id.starts_with("stall") {
                    return Outcome::Stall(Duration::from_millis(400));
                }
                if a.task_id.starts_with("release") {
                    return Outcome::Release;
                }
                if a.task_id.starts_with("fail") {
                    return Outcome::Fail { error: "boom".into(), retryable: false };
                }
                Outcome::Complete(Some(json!({ "ok": true })))
            }
            .boxed()
        })
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn handles_offers_duplicates_and_lost_leases() {
        let (mock, url) = Mock::start().await;
        let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
        assert_eq!(worker.id(), "w-1");
        mock.offer("t1", "l1").await;
        mock.offer("t1", "l1").await;
        lock(&mock.lost).insert("l2".into());
        mock.offer("t2", "l2").await;
        mock.offer("fail-3", "l3").await;
        mock.offer("release-4", "l4").await;
        assert!(worker.wait_until(WAIT, |s| s.offered == 4 && s.in_flight == 0 && s.duplicates == 1).await);
        assert!(worker.wait_until(WAIT, |s| s.heartbeats >= 2).await);
        let stats = worker.stats();
        assert_eq!((stats.accepted, stats.completed, stats.failed, stats.released), (3, 1, 1, 1), "{stats:?}");
        assert_eq!(stats.lease_lost, 1);
        let complete = lock(&mock.calls).iter().find(|(f, _)| f == "completeTask").cloned().expect("completed");
        assert_eq!(complete.1, json!({ "taskId": "t1", "leaseToken": "l1", "result": { "ok": true } }));
        let fail = lock(&mock.calls).iter().find(|(f, _)| f == "failTask").cloned().expect("failed");
        assert_eq!(fail.1["retryable"], false);
        let log = worker.log();
        let lost = log.iter().find(|r| r.task_id == "t2").expect("t2 recorded");
        assert_eq!(
            (lost.accept.clone(), lost.accepted, lost.outcome.clone()),
            (Some(Err("LEASE_LOST".into())), false, None)
        );
        let done = log.iter().find(|r| r.task_id == "t1").expect("t1 recorded");
        assert_eq!(done.answer, Some(Ok(())));
        assert!(done.accepted_at.is_some() && done.finished_at.is_some());
        assert_eq!(mock.received("pong"), 1);
        let subscribe = lock(&mock.received).iter().find(|m| m["type"] == "subscribe").cloned().expect("subscribed");
        assert_eq!(subscribe["payload"]["query"], ASSIGNMENTS_SUBSCRIPTION);
        let init = lock(&mock.received).iter().find(|m| m["type"] == "connection_init").cloned().expect("init");
        assert_eq!(init["payload"]["authorization"], "Bearer jwt");

        let stopped = worker.stop().await;
        assert_eq!(stopped.log.len(), 4);
        assert_eq!(mock.received("complete"), 1);
    }

    #[tokio::test]
    async fn capacity_filter_and_kill() {
        let (mock, url) = Mock::start().await;
        let filter: OfferFilter = Arc::new(|a: &Assignment| a.task_id != "skip");
        let worker = Worker::start_with_filter(config(&url, 1), filter, handler()).await.expect("starts");
        mock.offer("skip", "l0").await;
        mock.offer("slow-1", "l1").await;
        mock.offer("t2", "l2").await;
        assert!(worker.wait_until(WAIT, |s| s.offered == 3 && s.ignored == 2 && s.accepted == 1).await);
        worker.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(mock.count("completeTask"), 0, "a killed worker reports nothing");
        assert_eq!(mock.received("complete"), 0);
    }

    #[tokio::test]
    async fn stop_waits_for_running_handlers() {
        let (mock, url) = Mock::start().await;
        let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
        mock.offer("slow-1", "l1").await;
        assert!(worker.wait_until(WAIT, |s| s.accepted == 1).await);
        let stopped = worker.stop().await;
        assert_eq!(stopped.stats.completed, 1);
        assert_eq!(mock.count("completeTask"), 1);
    }

    #[tokio::test]
    async fn stalls_pause_heartbeats() {
        let (mock, url) = Mock::start().await;
        let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
        mock.offer("stall-1", "l1").await;
        assert!(worker.wait_until(WAIT, |s| s.accepted == 1).await);
        tokio::time::sleep(Duration::from_millis(100)).await; // a heartbeat in flight lands
        let before = mock.count("heartbeat");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(mock.count("heartbeat"), before, "no heartbeat while stalled");
        assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
        assert!(worker.wait_until(WAIT, |s| s.heartbeats > before as u64).await);
        worker.stop().await;
    }

    /// Heartbeats name the tasks being handled, and stop naming a task once it is reported.
    #[tokio::test]
    async fn heartbeats_name_the_tasks_in_hand() {
        let (mock, url) = Mock::start().await;
        let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
        mock.offer("slow-1", "l1").await;
        let named = |tasks: Value, after: usize| {
            let mock = &mock;
            async move {
                for _ in 0..500 {
                    let calls = lock(&mock.calls).clone();
                    let mut beats = calls.iter().filter(|(f, _)| f == "heartbeat").enumerate().skip(after);
                    if let Some((at, _)) = beats.find(|(_, (_, v))| v["tasks"] == tasks) {
                        return at;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("no heartbeat named {tasks} after {after} heartbeats");
            }
        };
        let working = named(json!(["slow-1"]), 0).await;
        assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
        named(json!([]), working + 1).await;
        worker.stop().await;
    }

    #[tokio::test]
    async fn fails_over_to_the_next_url_and_wraps_around() {
        let (first, first_url) = Mock::start().await;
        let (second, second_url) = Mock::start().await;
        let urls = format!("{first_url}, {second_url}/");
        let worker = Worker::start(config(&urls, 4), handler()).await.expect("starts");
        assert_eq!(worker.url(), first_url);
        first.send(None).await; // the first server drops the connection
        *lock(&first.push) = None;
        assert!(worker.wait_until(WAIT, |s| s.reconnects == 1 && s.failovers == 1).await);
        assert_eq!(worker.url(), second_url);
        second.offer("t1", "l1").await;
        assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
        assert_eq!((first.count("completeTask"), second.count("completeTask")), (0, 1), "reports follow");
        let beats = second.count("heartbeat");
        assert!(worker.wait_until(WAIT, |s| s.heartbeats as usize > beats).await);
        assert!(second.count("heartbeat") > beats, "heartbeats follow");

        second.send(None).await;
        *lock(&second.push) = None;
        assert!(worker.wait_until(WAIT, |s| s.reconnects == 2 && s.failovers == 2).await);
        assert_eq!(worker.url(), first_url, "the list wraps around");
        first.offer("t2", "l2").await;
        assert!(worker.wait_until(WAIT, |s| s.completed == 2).await);
        assert_eq!(first.count("completeTask"), 1);
        assert_eq!(first.count("registerWorker") + second.count("registerWorker"), 1);
        worker.stop().await;
    }

    #[tokio::test]
    async fn starts_on_the_first_url_that_answers() {
        let (mock, url) = Mock::start().await;
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead = format!("http://{}", closed.local_addr().expect("address"));
        drop(closed);
        let worker = Worker::start(config(&format!("{dead},{url}"), 4), handler()).await.expect("starts");
        assert_eq!((worker.url(), worker.stats().failovers), (url.as_str(), 1));
        assert!(Worker::start(config(&dead, 4), handler()).await.is_err());
        assert!(Worker::start(config(&format!("{url},ftp://x"), 4), handler()).await.is_err());
        mock.offer("t1", "l1").await;
        assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
        worker.stop().await;
    }

    #[tokio::test]
    async fn reconnects_after_drops_and_partitions() {
        let (mock, url) = Mock::start().await;
        let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
        mock.send(None).await; // the server drops the connection
        *lock(&mock.push) = None;
        assert!(worker.wait_until(WAIT, |s| s.reconnects == 1).await);
        mock.offer("t1", "l1").await;
        assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
        assert_eq!(mock.count("registerWorker"), 1);

        let started = Instant::now();
        let partition = worker.disconnect_for(Duration::from_millis(400));
        let during = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let beats = mock.count("heartbeat");
            tokio::time::sleep(Duration::from_millis(200)).await;
            (beats, mock.count("heartbeat"))
        };
        let ((), (before, after)) = tokio::join!(partition, during);
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert_eq!(before, after, "no heartbeat during a partition");
        assert_eq!(worker.stats().reconnects, 2);
        assert_eq!(mock.count("registerWorker"), 2);
        assert_eq!(mock.received("connection_init"), 3);
        worker.stop().await;
    }
}
