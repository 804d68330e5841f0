//! The state a worker's tasks share, and its calls to the server.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    Answer, CallError, Error, Handler, OfferFilter, TaskRecord, WorkerConfig,
    transport::{self, Socket},
};

/// The `assignments` subscription the worker sends (operation name `Assignments`), and
/// the same asking whether each offer `started` the task (sent only by a worker registered
/// with `autoAccept`, so that a worker that does not opt in works with servers that
/// predate the field).
const ASSIGNMENTS_SUBSCRIPTION: &str = "subscription Assignments { assignments { leaseToken leaseExpiresAt \
     task { id queue kind payload priority attempts maxAttempts } } }";
const ASSIGNMENTS_STARTED_SUBSCRIPTION: &str = "subscription Assignments { assignments { leaseToken leaseExpiresAt started \
     task { id queue kind payload priority attempts maxAttempts } } }";
const REGISTER: &str = "mutation RegisterWorker($input: RegisterWorkerInput!) { registerWorker(input: $input) { id } }";
pub(crate) const HEARTBEAT: &str = "mutation Heartbeat($tasks: [ID!]) { heartbeat(tasks: $tasks) { id } }";
pub(crate) const ACCEPT: &str = "mutation AcceptTask($taskId: ID!, $leaseToken: String!) { \
     acceptTask(taskId: $taskId, leaseToken: $leaseToken) { id } }";
pub(crate) const COMPLETE: &str = "mutation CompleteTask($taskId: ID!, $leaseToken: String!, $result: JSON) { \
     completeTask(taskId: $taskId, leaseToken: $leaseToken, result: $result) { id } }";
pub(crate) const FAIL: &str = "mutation FailTask($taskId: ID!, $leaseToken: String!, $error: String!, \
     $retryable: Boolean) { failTask(taskId: $taskId, leaseToken: $leaseToken, error: $error, \
     retryable: $retryable) { id } }";
pub(crate) const RELEASE: &str = "mutation ReleaseTask($taskId: ID!, $leaseToken: String!) { \
     releaseTask(taskId: $taskId, leaseToken: $leaseToken) { id } }";

/// The id of the one subscription each connection carries.
pub(crate) const SUBSCRIPTION_ID: &str = "assignments";
/// First and largest delay between retries (reconnects, lost answers).
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The time limit of each HTTP request.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lease tokens are remembered to drop duplicate deliveries.
const SEEN_LIMIT: usize = 100_000;
/// How many records [`Worker::log`](crate::Worker::log) keeps (the oldest are dropped first).
const LOG_LIMIT: usize = 100_000;
/// Longest wait for a free handler for an offer that started the task (see
/// `Shared::take_started`); never more than a quarter of its lease.
pub(crate) const STARTED_PERMIT_WAIT: Duration = Duration::from_secs(5);
/// How long a task mutation whose answer was lost is retried.
const REPORT_RETRY_LIMIT: Duration = Duration::from_secs(60);

/// State shared by the worker's tasks.
pub(crate) struct Shared {
    pub(crate) config: WorkerConfig,
    /// The servers of [`WorkerConfig::url`], in order; `current` indexes the one in use.
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) current: AtomicUsize,
    pub(crate) http: reqwest::Client,
    pub(crate) worker_id: String,
    /// One per handler: a taken offer holds one until its handler returns.
    pub(crate) permits: std::sync::Arc<Semaphore>,
    /// One per report in flight (as many as handlers): a finished handler trades its
    /// handler permit for one of these, so the next offer finds a free handler while the
    /// report's answer is on its way, and reports held up by a failing network stop new
    /// work instead of piling up.
    pub(crate) reports: std::sync::Arc<Semaphore>,
    pub(crate) filter: OfferFilter,
    pub(crate) handler: Handler,
    pub(crate) counters: Counters,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) log: Mutex<VecDeque<TaskRecord>>,
    pub(crate) seen: Mutex<Seen>,
    /// Tasks being accepted, worked on or reported, with how many handlers have each
    /// (a task offered again while an earlier handler still reports it has two): what
    /// every heartbeat names. At most twice `capacity` entries, one per handler permit and
    /// one per report permit.
    pub(crate) in_hand: Mutex<HashMap<String, u32>>,
    /// Heartbeats pause until then (a stalled handler).
    pub(crate) stall_until: Mutex<Option<Instant>>,
    /// The network is "down" until then.
    pub(crate) partition_until: Mutex<Option<Instant>>,
    /// Wakes the connection loop when a partition starts.
    pub(crate) partition_started: Notify,
    /// When the subscription was last (re)opened.
    pub(crate) connected: watch::Sender<Option<Instant>>,
    /// Cancelled when the worker stops or is killed: ends retries of lost answers.
    pub(crate) intake: CancellationToken,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) offered: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) ignored: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) heartbeat_errors: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) failovers: AtomicU64,
    pub(crate) in_flight: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Lease tokens seen lately, to drop duplicate deliveries.
#[derive(Default)]
pub(crate) struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Whether `token` is new (and remembers it).
    pub(crate) fn insert(&mut self, token: &str) -> bool {
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
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One server of the fail-over list: its base URL and the addresses derived from it.
pub(crate) struct Endpoint {
    pub(crate) base: String,
    graphql: String,
    ws: String,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, Error> {
        let base = url.trim().trim_end_matches('/').trim_end_matches("/graphql").to_owned();
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/graphql")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/graphql")
        } else {
            return Err(Error::InvalidUrl { url: url.to_owned() });
        };
        Ok(Endpoint { graphql: format!("{base}/graphql"), ws, base })
    }
}

impl Shared {
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// Moves to the next server of the fail-over list (nothing to do with a single URL).
    pub(crate) fn fail_over(&self) {
        if self.endpoints.len() > 1 {
            self.current.fetch_add(1, Ordering::Relaxed);
            bump(&self.counters.failovers);
        }
    }

    pub(crate) fn note_error(&self, error: impl ToString) {
        *lock(&self.last_error) = Some(error.to_string());
    }

    pub(crate) fn partitioned_until(&self) -> Option<Instant> {
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

    pub(crate) fn stalled(&self) -> bool {
        lock(&self.stall_until).is_some_and(|until| until > Instant::now())
    }

    pub(crate) fn stall_for(&self, d: Duration) {
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

    /// POSTs one operation; its `data`, or why not (also noted as the last error).
    /// `UNAVAILABLE` means the server changed nothing (its transaction rolled back, e.g.
    /// on a database deadlock): the call is retried a few times with backoff, as every
    /// client should.
    pub(crate) async fn graphql(&self, query: &str, variables: Value) -> Result<Value, CallError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.graphql_once(query, variables.clone()).await {
                Err(e) if e.retry_later() && backoff <= BACKOFF_MAX => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                other => return other,
            }
        }
    }

    async fn graphql_once(&self, query: &str, variables: Value) -> Result<Value, CallError> {
        let response = self
            .http
            .post(&self.endpoint().graphql)
            .bearer_auth(&self.config.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await;
        let result = match response {
            Err(e) => Err(CallError::Transport(e.to_string())),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.json::<Value>().await {
                    Err(e) => Err(CallError::NotGraphql { status, message: e.to_string() }),
                    Ok(body) => graphql_answer(status, body),
                }
            }
        };
        if let Err(e) = &result {
            let operation = query.split(['(', '{']).next().unwrap_or(query).trim();
            self.note_error(format!("{operation}: {e}"));
        }
        result
    }

    /// `registerWorker`; the worker id.
    pub(crate) async fn register(&self) -> Result<String, Error> {
        let mut input = json!({
            "name": self.config.name,
            "queues": self.config.queues,
            "capacity": self.config.capacity,
        });
        if self.config.auto_accept {
            // Only when opted in: servers that predate the field refuse it.
            input["autoAccept"] = json!(true);
        }
        let data = self.graphql(REGISTER, json!({ "input": input })).await.map_err(Error::Register)?;
        Ok(data["registerWorker"]["id"].as_str().unwrap_or_default().to_owned())
    }

    /// A task mutation (accept or a report), after any partition, counted: `Ok`, or the
    /// error code. When the answer is lost (no response, or one that is not GraphQL: the
    /// server may or may not have committed), it is sent again with backoff for up to
    /// [`REPORT_RETRY_LIMIT`]: every task mutation is fenced by the lease token, accepting
    /// again is idempotent for the holder, and a report that did commit answers
    /// `LEASE_LOST` when repeated. Without this, a worker that lost the answer to
    /// `completeTask` would forget a task it finished, and the lease its heartbeats stop
    /// naming would lapse as a failed attempt.
    pub(crate) async fn task_mutation(&self, query: &str, variables: Value, success: &AtomicU64) -> Answer {
        self.wait_for_network().await;
        let give_up = tokio::time::Instant::now() + REPORT_RETRY_LIMIT;
        let mut backoff = BACKOFF_MIN;
        let answer = loop {
            let answer = self.graphql(query, variables.clone()).await;
            let lost = answer.as_ref().is_err_and(CallError::answer_lost);
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
            Err(e) => {
                bump(if e.code() == "LEASE_LOST" { &self.counters.lease_lost } else { &self.counters.errors });
                Err(e)
            }
        }
    }

    /// Opens the WebSocket, initialises it and subscribes to `assignments`.
    pub(crate) async fn connect(&self) -> Result<Socket, Error> {
        let mut socket = transport::connect(&self.endpoint().ws, &self.config.token).await?;
        let query = if self.config.auto_accept { ASSIGNMENTS_STARTED_SUBSCRIPTION } else { ASSIGNMENTS_SUBSCRIPTION };
        let subscribe = json!({
            "id": SUBSCRIPTION_ID,
            "type": "subscribe",
            "payload": { "query": query, "variables": {}, "operationName": "Assignments" },
        });
        transport::send(&mut socket, subscribe).await?;
        self.connected.send_replace(Some(Instant::now()));
        Ok(socket)
    }

    pub(crate) fn record(&self, record: TaskRecord) {
        let mut log = lock(&self.log);
        if log.len() >= LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(record);
    }
}

/// The `data` of a GraphQL response body, or its first error.
fn graphql_answer(status: u16, body: Value) -> Result<Value, CallError> {
    match body.get("errors").and_then(Value::as_array).and_then(|e| e.first()) {
        Some(error) => Err(CallError::Rejected {
            code: error["extensions"]["code"].as_str().unwrap_or("NO_CODE").to_owned(),
            message: error["message"].as_str().unwrap_or_default().to_owned(),
        }),
        None => match body.get("data") {
            Some(data) if !data.is_null() => Ok(data.clone()),
            _ => Err(CallError::NotGraphql { status, message: format!("no data: {body}") }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_lease_tokens() {
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        assert!(seen.insert("b"));
    }

    #[test]
    fn endpoints_derive_the_graphql_and_websocket_addresses() {
        let plain = Endpoint::parse(" http://127.0.0.1:8080/graphql ").expect("http");
        assert_eq!(
            (plain.base.as_str(), plain.graphql.as_str()),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/graphql")
        );
        assert_eq!(plain.ws, "ws://127.0.0.1:8080/graphql");
        assert_eq!(Endpoint::parse("https://h/").expect("https").ws, "wss://h/graphql");
        assert!(matches!(Endpoint::parse("ftp://x"), Err(Error::InvalidUrl { .. })));
    }

    #[test]
    fn answers_are_data_or_the_first_error() {
        let ok = graphql_answer(200, json!({ "data": { "x": 1 } }));
        assert_eq!(ok, Ok(json!({ "x": 1 })));
        let lost =
            graphql_answer(200, json!({ "errors": [{ "message": "m", "extensions": { "code": "LEASE_LOST" } }] }));
        assert_eq!(lost, Err(CallError::Rejected { code: "LEASE_LOST".into(), message: "m".into() }));
        assert_eq!(
            graphql_answer(502, json!({ "data": null })).map_err(|e| e.code().into_owned()),
            Err("HTTP_502".into())
        );
    }
}
