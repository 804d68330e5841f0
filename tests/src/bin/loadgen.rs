//! `loadgen`: a bounded load generator for Taskwire (loopback only).
//!
//! ```text
//! cargo run --release -p taskwire-tests --bin loadgen -- query    --url http://127.0.0.1:8080 --secret S
//! cargo run --release -p taskwire-tests --bin loadgen -- create   --url http://127.0.0.1:8080 --secret S --batch 10
//! cargo run --release -p taskwire-tests --bin loadgen -- dispatch --url http://127.0.0.1:8080 --secret S --workers 50 --rate 500
//! cargo run --release -p taskwire-tests --bin loadgen -- fanout   --url http://127.0.0.1:8080 --secret S --subscribers 1000 --events 100 --pid $SERVER_PID
//! ```
//!
//! Scenarios:
//! - `query`: N connections (`--connections`, default 64) read `task(id)` over a working set
//!   of M tasks it creates first, with a `uniform` or `hot` (90 % of reads on 10 % of the
//!   tasks) distribution;
//! - `create`: N connections call `createTask` (or `createTasks` with `--batch B`);
//! - `dispatch`: `--workers K` reference workers (`tests/src/worker.rs`, `--capacity` each,
//!   default 50 × 4; role `worker`, one `sub` each) serve `--queue` (default a fresh
//!   `loadgen-<run>`), while `--connections` (default 16) client connections create tasks
//!   open-loop at `--rate` per second (default 500: the i-th create is due at i / rate,
//!   whatever the completions do) and an operator's `taskEvents(filter: { queue })`
//!   subscription watches. Reports created → `ASSIGNED` and created → `SUCCEEDED` from the
//!   events' server timestamps (`at`), create acknowledged → `SUCCEEDED` received on the
//!   client clock, throughput, and how many tasks were created, assigned, succeeded and not
//!   finished once `--grace` seconds (default 10) have passed after creation stopped;
//! - `fanout`: `--subscribers S` (default 1000) operator connections, each with its own
//!   `sub`, opened `--connect-concurrency` (default 50) at a time, subscribe to one queue's
//!   `taskEvents`; then `--events E` tasks (default 100) are created at `--rate` (default 20
//!   per second). Reports the delivery latency over every (event, subscriber) pair, from the
//!   event's `at` and from the create's acknowledgement, deliveries expected vs received,
//!   and, with `--pid` of the server, its VmRSS before connecting, once every subscriber is
//!   connected and idle, and at the end, per subscription. `--hold SECS` (at most 600)
//!   keeps the subscribers connected that long after the last reading, for a heap
//!   profiler to see the server with them open (`--events 0` for idle subscribers).
//!
//! Several instances: `--url` may be repeated or list several comma-separated base URLs.
//! Then connections, creators and subscribers are spread round-robin over them (the i-th on
//! URL i mod N); in `dispatch` each URL gets an observer, worker i is registered and
//! subscribed on URL i mod N with the others as its fail-over list, and the figures are
//! for the whole run. With one URL nothing changes.
//!
//! Every run is bounded by `--duration` (the load phase; dispatch and fanout then wait at
//! most `--grace` for stragglers, and fanout holds its subscribers `--hold` longer) and
//! `--max-requests` (requests, or tasks created), prints
//! one summary line and writes the full result as JSON (`--out`). Refuses non-loopback
//! targets. Client-clock and server-clock times are compared only on this one machine.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{FutureExt, SinkExt, StreamExt};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use taskwire_tests::{
    load::{self, add_errors, brief, failover_list, latency_ms, lock, post, timeline},
    worker::{Handler, Outcome, Worker, WorkerConfig, WorkerStats},
};
use tokio::{net::TcpStream, sync::Semaphore};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig},
};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: loadgen <query|create|dispatch|fanout> [--url URL[,URL…]]… [--secret S] [--connections N] \
                     [--duration SECS] [--max-requests N] [--out FILE] [query: --working-set M --distribution \
                     uniform|hot] [create: --batch B] [dispatch: --workers K --capacity C --rate R --queue NAME \
                     --grace SECS --observers O] [fanout: --subscribers S --events E --rate R --queue NAME --pid PID \
                     --connect-concurrency N --grace SECS --hold SECS]";

/// The WebSocket subprotocol the subscribers speak.
const PROTOCOL: &str = "graphql-transport-ws";
/// The one subscription each event connection carries.
const SUBSCRIPTION_ID: &str = "events";
const EVENTS_SUBSCRIPTION: &str =
    "subscription Events($queue: String!) { taskEvents(filter: { queue: $queue }) { taskId seq status at } }";
const CREATE_ONE: &str = "mutation One($i: CreateTaskInput!) { createTask(input: $i) { task { id } } }";
/// Time limit of a WebSocket connect, and then of its `connection_ack`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The fanout connect phase ends after this long, whatever is still waiting to connect.
const CONNECT_PHASE_LIMIT: Duration = Duration::from_secs(120);
/// Time given to a closing WebSocket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between opening the subscriptions and creating tasks, so the server has registered
/// every subscription (graphql-transport-ws does not acknowledge a `subscribe`).
const SETTLE: Duration = Duration::from_secs(1);
/// In fanout, how long the connected subscribers sit idle before the server's RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Longest `--hold` (seconds): the run stays bounded.
const MAX_HOLD_SECONDS: u64 = 600;
/// Reference workers started at once.
const WORKER_START_CONCURRENCY: usize = 50;
/// Heartbeat period of the reference workers (leases last 30 s by default).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A create sent this far behind its slot counts as late (the creators could not keep up).
const LATE: Duration = Duration::from_millis(10);
/// Per-delivery records a fanout run may keep (`--events` × `--subscribers`), 32 bytes each.
const MAX_DELIVERIES: u64 = 20_000_000;
/// Read buffer of each event connection: small, because fanout opens thousands (the
/// tungstenite default, 128 KiB each, would be 1.3 GB for 10,000 connections).
const READ_BUFFER: usize = 4 * 1024;

#[derive(Debug, Clone)]
struct Options {
    scenario: String,
    /// Base URLs of the instances (at least one).
    urls: Vec<String>,
    secret: String,
    connections: usize,
    duration: Duration,
    max_requests: u64,
    working_set: usize,
    distribution: String,
    batch: usize,
    out: Option<String>,
    /// A short random id naming this run's queue and subjects.
    run: String,
    rate: f64,
    queue: String,
    grace: Duration,
    workers: usize,
    capacity: u32,
    /// `dispatch`: queue-wide subscriptions recording the run, observer i on URL i mod N
    /// (`None`: one per URL). A fixed count keeps the subscriber load equal whatever N is.
    observers: Option<usize>,
    subscribers: usize,
    events: u64,
    connect_concurrency: usize,
    pid: Option<u32>,
    /// `fanout`: how long the subscribers stay connected after the last measurement (for
    /// a heap profiler or `/proc` to look at the server with them open).
    hold: Duration,
}

fn parse_args() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().ok_or(USAGE)?;
    if !matches!(scenario.as_str(), "query" | "create" | "dispatch" | "fanout") {
        return Err(format!("unknown scenario {scenario}\n{USAGE}"));
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut o = Options {
        connections: match scenario.as_str() {
            "dispatch" => 16,
            "fanout" => 4,
            _ => 64,
        },
        rate: if scenario == "fanout" { 20.0 } else { 500.0 },
        scenario,
        urls: Vec::new(),
        secret: std::env::var("TASKWIRE_JWT_SECRET").unwrap_or_default(),
        duration: Duration::from_secs(20),
        max_requests: 2_000_000,
        working_set: 1_000,
        distribution: "uniform".into(),
        batch: 1,
        out: None,
        queue: format!("loadgen-{run}"),
        run,
        grace: Duration::from_secs(10),
        workers: 50,
        capacity: 4,
        observers: None,
        subscribers: 1_000,
        events: 100,
        connect_concurrency: 50,
        pid: None,
        hold: Duration::ZERO,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--url" => o.urls.push(value),
            "--secret" => o.secret = value,
            "--connections" => o.connections = number(&value)?.max(1) as usize,
            "--duration" => o.duration = Duration::from_secs(number(value.trim_end_matches('s'))?),
            "--max-requests" => o.max_requests = number(&value)?,
            "--working-set" => o.working_set = number(&value)? as usize,
            "--distribution" => o.distribution = value,
            "--batch" => o.batch = number(&value)?.clamp(1, 500) as usize,
            "--out" => o.out = Some(value),
            "--rate" => {
                o.rate = value.parse::<f64>().map_err(|_| format!("--rate: not a number: {value}"))?;
                if !(o.rate.is_finite() && o.rate > 0.0) {
                    return Err(format!("--rate must be positive: {value}"));
                }
            }
            "--queue" => {
                o.queue = taskwire_domain::QueueName::parse(&value).map_err(|e| format!("--queue: {e}"))?.to_string()
            }
            "--grace" => o.grace = Duration::from_secs(number(value.trim_end_matches('s'))?),
            "--hold" => o.hold = Duration::from_secs(number(value.trim_end_matches('s'))?.min(MAX_HOLD_SECONDS)),
            "--workers" => o.workers = number(&value)?.max(1) as usize,
            "--capacity" => o.capacity = number(&value)?.clamp(1, 1000) as u32,
            "--observers" => o.observers = Some(number(&value)?.clamp(1, 64) as usize),
            "--subscribers" => o.subscribers = number(&value)? as usize,
            "--events" => o.events = number(&value)?,
            "--connect-concurrency" => o.connect_concurrency = number(&value)?.max(1) as usize,
            "--pid" => {
                o.pid = Some(u32::try_from(number(&value)?).map_err(|_| format!("--pid: out of range: {value}"))?)
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    o.urls = load::loopback_urls(&o.urls, "http://127.0.0.1:8080")?;
    if o.secret.is_empty() {
        return Err("--secret (or TASKWIRE_JWT_SECRET) is required to mint the load token".into());
    }
    if o.scenario == "fanout" && o.events.min(o.max_requests).saturating_mul(o.subscribers as u64) > MAX_DELIVERIES {
        return Err(format!("--events × --subscribers must be at most {MAX_DELIVERIES} (one record per delivery)"));
    }
    if let Some(pid) = o.pid
        && rss_kib(pid).is_none()
    {
        return Err(format!("--pid {pid}: cannot read VmRSS from /proc/{pid}/status"));
    }
    Ok(o)
}

/// Where the servers are, and the clock every timestamp of a run is taken from.
struct Target {
    /// `/graphql` of each instance, HTTP and WebSocket, in `--url` order.
    graphql: Vec<String>,
    ws: Vec<String>,
    http: reqwest::Client,
    clock: Clock,
}

impl Target {
    fn new(urls: &[String], pool: usize) -> Target {
        let (mut graphql, mut ws) = (Vec::new(), Vec::new());
        for url in urls {
            graphql.push(format!("{}/graphql", url.trim_end_matches('/')));
            ws.push(load::ws_graphql(url));
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(pool)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Target { graphql, ws, http, clock: Clock::start() }
    }

    /// The `/graphql` URL of the `i`-th user (connection, creator…), round-robin.
    fn graphql(&self, i: usize) -> &str {
        &self.graphql[i % self.graphql.len()]
    }

    /// The WebSocket URL of the `i`-th subscriber, round-robin.
    fn ws(&self, i: usize) -> &str {
        &self.ws[i % self.ws.len()]
    }
}

/// Microseconds since the Unix epoch, read from a monotonic clock anchored once to the
/// system clock: comparable with the server's event timestamps (same machine), and immune
/// to clock steps during a run.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base: Instant,
    epoch_micros: i64,
}

impl Clock {
    fn start() -> Clock {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { base: Instant::now(), epoch_micros: since_epoch.as_micros() as i64 }
    }

    fn now(&self) -> i64 {
        self.epoch_micros + self.base.elapsed().as_micros() as i64
    }
}

/// A token for `sub` with `roles`, valid well past the end of the run.
fn mint(o: &Options, sub: &str, roles: &[&str]) -> Result<String, String> {
    let lifetime = o.duration + o.grace + CONNECT_PHASE_LIMIT + Duration::from_secs(3600);
    load::mint(&o.secret, sub, roles, lifetime)
}

/// Latencies and error codes of one worker.
#[derive(Default)]
struct Tally {
    micros: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let target = Target::new(&options.urls, options.connections);
    let outcome = match options.scenario.as_str() {
        "dispatch" => dispatch(&options, &target).await,
        "fanout" => fanout(&options, &target).await,
        _ => requests(&options, &target).await,
    };
    let (result, line) = match outcome {
        Ok(done) => done,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("{line}");
    if let Some(path) = &options.out
        && let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&result).unwrap_or_default())
    {
        eprintln!("loadgen: writing {path}: {e}");
    }
    std::process::ExitCode::SUCCESS
}

/// `query` and `create`: closed-loop requests; the JSON result and the summary line.
async fn requests(options: &Options, target: &Target) -> Result<(Value, String), String> {
    let token = mint(options, &format!("loadgen-{}", uuid::Uuid::new_v4().simple()), &["client"])?;
    let client = &target.http;
    let ids = if options.scenario == "query" {
        Arc::new(
            seed(client, target.graphql(0), &token, options.working_set)
                .await
                .map_err(|e| format!("seeding the working set failed: {e}"))?,
        )
    } else {
        Arc::new(vec![])
    };

    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut workers = Vec::new();
    for i in 0..options.connections {
        let url = target.graphql(i).to_owned();
        let (client, token, ids, issued, o) =
            (client.clone(), token.clone(), ids.clone(), issued.clone(), options.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < o.max_requests {
                let body = request_body(&o, &ids);
                let t0 = Instant::now();
                let result = post(&client, &url, &token, &body).await;
                tally.micros.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if let Err(code) = result {
                    *tally.errors.entry(code).or_default() += 1;
                }
            }
            tally
        }));
    }
    let mut micros = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            micros.extend(tally.micros);
            add_errors(&mut errors, tally.errors);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = micros.len() as f64;
    let per_request = if options.scenario == "create" { options.batch as f64 } else { 1.0 };
    let latency = latency_ms(micros.into_iter().map(i64::from).collect());
    let result = json!({
        "scenario": options.scenario,
        "connections": options.connections,
        "batch": options.batch,
        "distribution": options.distribution,
        "working_set": options.working_set,
        "seconds": elapsed,
        "requests": requests as u64,
        "requests_per_second": requests / elapsed,
        "items_per_second": requests * per_request / elapsed,
        "latency_ms": latency,
        "errors": errors,
    });
    let line = format!(
        "{} c={} batch={}: {:.0} req/s ({:.0} items/s), p50/p95/p99/max {}, errors {}",
        options.scenario,
        options.connections,
        options.batch,
        requests / elapsed,
        requests * per_request / elapsed,
        brief(&result["latency_ms"]),
        result["errors"]
    );
    Ok((result, line))
}

fn request_body(o: &Options, ids: &[String]) -> Value {
    match o.scenario.as_str() {
        "query" => {
            let mut rng = rand::rng();
            let n = ids.len().max(1);
            let index = if o.distribution == "hot" && rng.random_bool(0.9) {
                rng.random_range(0..(n / 10).max(1))
            } else {
                rng.random_range(0..n)
            };
            json!({ "query": "query Get($id: ID!) { task(id: $id) { id status priority } }", "variables": { "id": ids.get(index) } })
        }
        _ if o.batch > 1 => {
            let inputs: Vec<Value> =
                (0..o.batch).map(|_| json!({ "queue": "bench", "kind": "k", "payload": { "n": 1 } })).collect();
            json!({ "query": "mutation Many($i: [CreateTaskInput!]!) { createTasks(inputs: $i) { created } }", "variables": { "i": inputs } })
        }
        _ => json!({
            "query": CREATE_ONE,
            "variables": { "i": { "queue": "bench", "kind": "k", "payload": { "n": 1 } } }
        }),
    }
}

async fn seed(client: &reqwest::Client, url: &str, token: &str, count: usize) -> Result<Vec<String>, String> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let n = (count - ids.len()).min(500);
        let inputs: Vec<Value> = (0..n).map(|_| json!({ "queue": "bench-read", "kind": "k" })).collect();
        let body = json!({ "query": "mutation($i: [CreateTaskInput!]!) { createTasks(inputs: $i) { task { id } } }", "variables": { "i": inputs } });
        let value = post(client, url, token, &body).await?;
        for payload in value["data"]["createTasks"].as_array().cloned().unwrap_or_default() {
            ids.push(payload["task"]["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------
// Paced (open-loop) creation, shared by `dispatch` and `fanout`.

/// Called with each acknowledged task's id and the client-clock time of the acknowledgement.
type OnAck = Arc<dyn Fn(u128, i64) + Send + Sync>;

/// What the creators did.
#[derive(Default)]
struct Creates {
    /// Request latencies (µs) of every create, failed ones included.
    micros: Vec<u32>,
    errors: BTreeMap<String, u64>,
    /// Creates acknowledged with a task id.
    created: u64,
    /// Creates sent more than [`LATE`] after their slot.
    late: u64,
    /// How long creation lasted.
    seconds: f64,
}

/// Creates up to `limit` tasks in `o.queue`, open-loop: the i-th is due at `i / o.rate`
/// seconds, whoever is free sends it (one connection per token, token j on URL j mod N), nobody waits for the
/// tasks to finish. Stops at `o.duration`.
async fn paced_creates(o: &Options, target: &Target, tokens: Vec<String>, limit: u64, on_ack: OnAck) -> Creates {
    let slots = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let deadline = start + o.duration;
    let mut creators = Vec::new();
    for (j, token) in tokens.into_iter().enumerate() {
        let (slots, on_ack, http, url, queue, clock, rate) = (
            slots.clone(),
            on_ack.clone(),
            target.http.clone(),
            target.graphql(j).to_owned(),
            o.queue.clone(),
            target.clock,
            o.rate,
        );
        creators.push(tokio::spawn(async move {
            let mut c = Creates::default();
            loop {
                let slot = slots.fetch_add(1, Ordering::Relaxed);
                let due = start + Duration::from_secs_f64(slot as f64 / rate);
                if slot >= limit || due >= deadline || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep_until(due).await;
                if due.elapsed() > LATE {
                    c.late += 1;
                }
                let body = json!({
                    "query": CREATE_ONE,
                    "variables": { "i": { "queue": queue, "kind": "loadgen", "payload": { "n": slot } } },
                });
                let t0 = Instant::now();
                let result = post(&http, &url, &token, &body).await;
                let acked = clock.now();
                c.micros.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                match result.map(|v| v["data"]["createTask"]["task"]["id"].as_str().and_then(task_key)) {
                    Ok(Some(task)) => {
                        c.created += 1;
                        on_ack(task, acked);
                    }
                    Ok(None) => *c.errors.entry("NO_TASK_ID".to_owned()).or_default() += 1,
                    Err(code) => *c.errors.entry(code).or_default() += 1,
                }
            }
            c
        }));
    }
    let mut all = Creates::default();
    for creator in creators {
        if let Ok(c) = creator.await {
            all.micros.extend(c.micros);
            add_errors(&mut all.errors, c.errors);
            all.created += c.created;
            all.late += c.late;
        }
    }
    all.seconds = start.elapsed().as_secs_f64();
    all
}

/// A task id as a number (ids are UUIDs): compact keys for millions of records.
fn task_key(id: &str) -> Option<u128> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.as_u128())
}

// ---------------------------------------------------------------------------------------
// `taskEvents` subscribers over graphql-transport-ws.

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One `taskEvents` item.
#[derive(Debug)]
struct Event {
    task: u128,
    seq: u32,
    status: String,
    /// The server's timestamp, µs since the epoch.
    at: i64,
}

/// A protocol message, as far as the load generator cares.
enum Frame {
    Event(Event),
    Ping,
    Other,
    /// The subscription ended (an error, `complete`); the reason.
    End(String),
}

#[derive(Deserialize)]
struct WireFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    payload: Option<WirePayload<'a>>,
}

#[derive(Deserialize)]
struct WirePayload<'a> {
    #[serde(default, borrow)]
    data: Option<WireData<'a>>,
    #[serde(default)]
    errors: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct WireData<'a> {
    #[serde(rename = "taskEvents", borrow)]
    task_events: Option<WireEvent<'a>>,
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "taskId", borrow)]
    task_id: Cow<'a, str>,
    seq: u32,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    at: Cow<'a, str>,
}

/// Parses one text message. Events take the typed (fast) path: fanout parses hundreds of
/// thousands per second beside the server on the same cores.
fn parse_frame(text: &str) -> Frame {
    use Frame::End;
    let Ok(frame) = serde_json::from_str::<WireFrame<'_>>(text) else {
        // `error` carries an array payload, which the typed path does not read.
        return match serde_json::from_str::<Value>(text) {
            Ok(value) if value["type"] == "error" => End(format!("error {}", error_reason(&value["payload"][0]))),
            Ok(_) => Frame::Other,
            Err(_) => End("a message that is not JSON".to_owned()),
        };
    };
    match frame.kind.as_ref() {
        "next" => {
            let Some(payload) = frame.payload else { return Frame::Other };
            if let Some(error) = payload.errors.as_ref().and_then(|e| e.first()) {
                return End(format!("error {}", error_reason(error)));
            }
            let Some(event) = payload.data.and_then(|d| d.task_events) else { return Frame::Other };
            let at = chrono::DateTime::parse_from_rfc3339(&event.at).map(|at| at.timestamp_micros());
            match (task_key(&event.task_id), at) {
                (Some(task), Ok(at)) => {
                    Frame::Event(Event { task, seq: event.seq, status: event.status.into_owned(), at })
                }
                _ => Frame::Other,
            }
        }
        "ping" => Frame::Ping,
        "complete" => End("the server completed the subscription".to_owned()),
        // An `error` frame ends the subscription; its payload is an array of errors.
        "error" => match serde_json::from_str::<Value>(text) {
            Ok(value) => End(format!("error {}", error_reason(&value["payload"][0]))),
            Err(_) => End("error".to_owned()),
        },
        _ => Frame::Other,
    }
}

/// An error's `extensions.reason` (e.g. `SLOW_SUBSCRIBER`), else its code.
fn error_reason(error: &Value) -> String {
    let extensions = &error["extensions"];
    extensions["reason"].as_str().or(extensions["code"].as_str()).unwrap_or("NO_CODE").to_owned()
}

fn ws_error(e: tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => format!("HTTP {}", response.status().as_u16()),
        tungstenite::Error::Io(e) => format!("io: {e}"),
        other => other.to_string(),
    }
}

fn close_reason(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(frame) => format!("close {} {}", u16::from(frame.code), frame.reason).trim_end().to_owned(),
        None => "close without a frame".to_owned(),
    }
}

async fn send_json(socket: &mut Socket, message: &Value) -> Result<(), String> {
    socket.send(Message::text(message.to_string())).await.map_err(|e| format!("send: {}", ws_error(e)))
}

/// Connects as `token`, waits for `connection_ack` and subscribes to `queue`'s
/// `taskEvents`. The error is a short reason, to be counted.
async fn open_events(ws_url: &str, token: &str, queue: &str) -> Result<Socket, String> {
    let mut request = ws_url.into_client_request().map_err(|e| format!("request: {e}"))?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER).write_buffer_size(0);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (mut socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(ws_error)?;
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    send_json(&mut socket, &init).await?;
    let acked = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(&text).ok() {
                    Some(message) if message["type"] == "connection_ack" => return Ok(()),
                    Some(message) if message["type"] == "ping" => {
                        send_json(&mut socket, &json!({ "type": "pong" })).await?;
                    }
                    _ => return Err("no connection_ack".to_owned()),
                },
                Some(Ok(Message::Close(frame))) => return Err(close_reason(frame.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ws_error(e)),
                None => return Err("closed before connection_ack".to_owned()),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, acked).await.map_err(|_| "no connection_ack in time".to_owned())??;
    let subscribe = json!({
        "id": SUBSCRIPTION_ID,
        "type": "subscribe",
        "payload": { "query": EVENTS_SUBSCRIPTION, "variables": { "queue": queue }, "operationName": "Events" },
    });
    send_json(&mut socket, &subscribe).await?;
    Ok(socket)
}

/// Reads events until `stop` (then completes the subscription, closes and returns `None`)
/// or until the connection or subscription ends (the reason). `on_event` gets each event
/// with the client-clock time it was read.
async fn read_events(
    socket: &mut Socket,
    clock: Clock,
    stop: &CancellationToken,
    on_event: &mut impl FnMut(Event, i64),
) -> Option<String> {
    loop {
        let message = tokio::select! {
            biased;
            () = stop.cancelled() => {
                let closing = async {
                    let _ = send_json(socket, &json!({ "id": SUBSCRIPTION_ID, "type": "complete" })).await;
                    let _ = socket.close(None).await;
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
                return None;
            }
            message = socket.next() => message,
        };
        let received = clock.now();
        match message {
            Some(Ok(Message::Text(text))) => match parse_frame(&text) {
                Frame::Event(event) => on_event(event, received),
                Frame::Ping => {
                    if let Err(e) = send_json(socket, &json!({ "type": "pong" })).await {
                        return Some(e);
                    }
                }
                Frame::Other => {}
                Frame::End(reason) => return Some(reason),
            },
            Some(Ok(Message::Close(frame))) => return Some(close_reason(frame.as_ref())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Some(ws_error(e)),
            None => return Some("connection ended".to_owned()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// `dispatch`

/// What one task went through, as seen by the creators and the observer (µs since the
/// epoch; server times from the events' `at`, client times from [`Clock`]).
#[derive(Debug, Default, Clone, Copy)]
struct TaskTimes {
    /// Client: `createTask` answered with this task.
    acked: Option<i64>,
    /// Server: the first event (`seq` 1, the creation).
    created: Option<i64>,
    /// Server: the first `ASSIGNED` event.
    assigned: Option<i64>,
    /// Server: the first `RUNNING` event (the worker accepted the offer).
    running: Option<i64>,
    /// Server: the `SUCCEEDED` event.
    succeeded: Option<i64>,
    /// Client: the `SUCCEEDED` event arrived.
    succeeded_received: Option<i64>,
}

/// Per-task times, and how many tasks are both acknowledged and seen to succeed.
#[derive(Default)]
struct Ledger {
    tasks: Mutex<HashMap<u128, TaskTimes>>,
    finished: AtomicU64,
}

impl Ledger {
    fn ack(&self, task: u128, at: i64) {
        let mut tasks = lock(&self.tasks);
        let times = tasks.entry(task).or_default();
        times.acked = Some(at);
        if times.succeeded_received.is_some() {
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn event(&self, event: &Event, received: i64) {
        let mut tasks = lock(&self.tasks);
        let times = tasks.entry(event.task).or_default();
        if event.seq == 1 {
            times.created = Some(event.at);
        }
        match event.status.as_str() {
            "ASSIGNED" if times.assigned.is_none() => times.assigned = Some(event.at),
            "RUNNING" if times.running.is_none() => times.running = Some(event.at),
            "SUCCEEDED" if times.succeeded.is_none() => {
                times.succeeded = Some(event.at);
                times.succeeded_received = Some(received);
                if times.acked.is_some() {
                    self.finished.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

/// What the observer saw besides the task times.
#[derive(Default)]
struct Observed {
    /// Events by status.
    statuses: BTreeMap<String, u64>,
    /// Dropped connections and subscription errors, by reason.
    errors: BTreeMap<String, u64>,
}

/// The operator's `taskEvents` subscription: feeds the ledger, resubscribing when the
/// server ends it (e.g. `SLOW_SUBSCRIBER`) or the connection drops, until `stop`.
async fn observe(
    socket: Socket,
    ledger: Arc<Ledger>,
    (ws, token, queue): (String, String, String),
    clock: Clock,
    stop: CancellationToken,
) -> Observed {
    let mut observed = Observed::default();
    let mut socket = Some(socket);
    while !stop.is_cancelled() {
        let mut open = match socket.take() {
            Some(open) => open,
            None => match open_events(&ws, &token, &queue).await {
                Ok(open) => open,
                Err(reason) => {
                    *observed.errors.entry(format!("observer: connect: {reason}")).or_default() += 1;
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            },
        };
        let statuses = &mut observed.statuses;
        let mut on_event = |event: Event, received: i64| {
            ledger.event(&event, received);
            *statuses.entry(event.status).or_default() += 1;
        };
        match read_events(&mut open, clock, &stop, &mut on_event).await {
            None => break,
            Some(reason) => *observed.errors.entry(format!("observer: {reason}")).or_default() += 1,
        }
    }
    observed
}

/// `dispatch`: K reference workers serve a fresh queue while creators feed it at a fixed
/// rate and an operator's subscription (one per instance) records every task's way through.
async fn dispatch(o: &Options, target: &Target) -> Result<(Value, String), String> {
    let clock = target.clock;
    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();
    let observer_token = mint(o, &format!("loadgen-{}-observer", o.run), &["operator"])?;
    let history_token = observer_token.clone();
    // Every instance's subscribers see every task's events (another instance's changes
    // arrive through Kafka); the ledger keeps the first copy of each.
    let observer_urls: Vec<&String> =
        (0..o.observers.unwrap_or(target.ws.len())).map(|i| &target.ws[i % target.ws.len()]).collect();
    let mut observers = Vec::with_capacity(observer_urls.len());
    for ws in observer_urls.iter().copied() {
        let socket = match open_events(ws, &observer_token, &o.queue).await {
            Ok(socket) => socket,
            Err(e) => {
                stop.cancel();
                futures::future::join_all(observers).await;
                return Err(format!("the observer's subscription on {ws} failed: {e}"));
            }
        };
        let reconnect = (ws.clone(), observer_token.clone(), o.queue.clone());
        observers.push(tokio::spawn(observe(socket, ledger.clone(), reconnect, clock, stop.clone())));
    }

    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let handler: Handler = Arc::new(|_| async { Outcome::Complete(None) }.boxed());
    let mut configs = Vec::with_capacity(o.workers);
    for i in 0..o.workers {
        let name = format!("loadgen-{}-worker-{i}", o.run);
        let token = mint(o, &name, &["worker"])?;
        let queues = vec![o.queue.clone()];
        configs.push(WorkerConfig {
            url: failover_list(&o.urls, i),
            token,
            name,
            queues,
            capacity: o.capacity,
            heartbeat_every: HEARTBEAT,
        });
    }
    let started: Vec<Result<Worker, String>> = futures::stream::iter(configs)
        .map(|config| Worker::start(config, handler.clone()))
        .buffer_unordered(WORKER_START_CONCURRENCY)
        .collect()
        .await;
    let mut workers = Vec::new();
    for worker in started {
        match worker {
            Ok(worker) => workers.push(worker),
            Err(e) => *errors.entry(format!("worker start: {e}")).or_default() += 1,
        }
    }
    if workers.is_empty() {
        stop.cancel();
        futures::future::join_all(observers).await;
        return Err(format!("no worker started: {errors:?}"));
    }
    tokio::time::sleep(SETTLE).await;

    let creation_started = clock.now();
    let tokens = (0..o.connections)
        .map(|j| mint(o, &format!("loadgen-{}-creator-{j}", o.run), &["client"]))
        .collect::<Result<Vec<_>, _>>()?;
    let acks = ledger.clone();
    let creates = paced_creates(o, target, tokens, o.max_requests, Arc::new(move |task, at| acks.ack(task, at))).await;

    let grace_started = Instant::now();
    while ledger.finished.load(Ordering::Relaxed) < creates.created && grace_started.elapsed() < o.grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = grace_started.elapsed().as_secs_f64();
    let grace_end = clock.now();
    let mut tasks = std::mem::take(&mut *lock(&ledger.tasks));

    let mut workers_by_url: BTreeMap<String, u64> = BTreeMap::new();
    for worker in &workers {
        *workers_by_url.entry(worker.url().to_owned()).or_default() += 1;
    }
    let stopped = futures::future::join_all(workers.into_iter().map(Worker::stop)).await;
    stop.cancel();
    let observed: Vec<Observed> =
        futures::future::join_all(observers).await.into_iter().map(Result::unwrap_or_default).collect();

    // The observer may have missed events (a dropped connection, `SLOW_SUBSCRIBER`): the
    // server's history says what really happened to every task not seen to succeed.
    let unseen: Vec<u128> =
        tasks.iter().filter(|(_, t)| t.acked.is_some() && t.succeeded.is_none()).map(|(id, _)| *id).collect();
    let (histories, history_errors) = histories(o, target, &history_token, unseen).await;
    let mut unfinished: BTreeMap<String, u64> = BTreeMap::new();
    let mut from_history = 0u64;
    for (id, history) in &histories {
        let Some(times) = tasks.get_mut(id) else { continue };
        times.created = times.created.or(history.created);
        times.assigned = times.assigned.or(history.assigned);
        match history.succeeded {
            Some(at) if at <= grace_end => {
                times.succeeded = Some(at);
                from_history += 1;
            }
            Some(_) => *unfinished.entry("SUCCEEDED after the grace period".to_owned()).or_default() += 1,
            None => *unfinished.entry(history.status.clone()).or_default() += 1,
        }
    }

    let (mut created, mut assigned, mut succeeded, mut missed_creation, mut unacknowledged) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut to_assigned, mut to_succeeded, mut end_to_end) = (Vec::new(), Vec::new(), Vec::new());
    // The stages between, for the tasks seen in every one (one attempt, as a rule).
    let (mut to_running, mut running_to_succeeded) = (Vec::new(), Vec::new());
    let mut assigned_by_creation = Vec::new();
    let mut last_success = None;
    for times in tasks.values() {
        let Some(acked) = times.acked else {
            unacknowledged += 1;
            continue;
        };
        created += 1;
        if times.created.is_none() {
            missed_creation += 1;
        }
        if let Some(at) = times.assigned {
            assigned += 1;
            to_assigned.extend(times.created.map(|c| at - c));
            assigned_by_creation.extend(times.created.map(|c| (c, at - c)));
        }
        if let Some(at) = times.succeeded {
            succeeded += 1;
            to_succeeded.extend(times.created.map(|c| at - c));
            last_success = last_success.max(Some(at));
        }
        if let Some(received) = times.succeeded_received {
            end_to_end.push(received - acked);
        }
        if let (Some(assigned), Some(running), Some(done)) = (times.assigned, times.running, times.succeeded) {
            to_running.push(running - assigned);
            running_to_succeeded.push(done - running);
        }
    }
    let not_checked = (created - succeeded).saturating_sub(unfinished.values().sum());
    if not_checked > 0 {
        unfinished.insert("not checked".to_owned(), not_checked);
    }
    // From the first slot to the last success (server time, same machine).
    let success_window = last_success.map_or(0.0, |last| (last - creation_started) as f64 / 1e6);
    let succeeded_per_second = if success_window > 0.0 { succeeded as f64 / success_window } else { 0.0 };
    let created_per_second = creates.created as f64 / creates.seconds.max(1e-9);

    let sum = |counter: fn(&WorkerStats) -> u64| stopped.iter().map(|s| counter(&s.stats)).sum::<u64>();
    for s in &stopped {
        for record in &s.log {
            if let Some(Err(code)) = &record.accept {
                *errors.entry(format!("worker accept: {code}")).or_default() += 1;
            }
            if let Some(Err(code)) = &record.answer {
                *errors.entry(format!("worker report: {code}")).or_default() += 1;
            }
        }
    }
    add_errors(&mut errors, creates.errors);
    // The first observer's event counts stand for the run (each observer sees them all).
    let events = observed.first().map(|first| json!(first.statuses)).unwrap_or_default();
    // With several observers on one URL, the last one's counts stand for that URL.
    let events_by_url: BTreeMap<&str, &BTreeMap<String, u64>> =
        observer_urls.iter().map(|url| url.as_str()).zip(observed.iter().map(|seen| &seen.statuses)).collect();
    for seen in observed.iter() {
        add_errors(&mut errors, seen.errors.clone());
    }
    add_errors(&mut errors, history_errors);

    let unfinished_line = if unfinished.is_empty() { String::new() } else { format!(" {}", json!(unfinished)) };
    let latency = json!({
        "create_request": latency_ms(creates.micros.iter().map(|&m| i64::from(m)).collect()),
        "created_to_assigned": latency_ms(to_assigned),
        "created_to_succeeded": latency_ms(to_succeeded),
        "assigned_to_running": latency_ms(to_running),
        "running_to_succeeded": latency_ms(running_to_succeeded),
        "ack_to_succeeded_received": latency_ms(end_to_end),
    });
    let mut result = json!({
        "scenario": "dispatch",
        "queue": o.queue,
        "connections": o.connections,
        "rate": o.rate,
        "creation_seconds": creates.seconds,
        "grace_seconds": waited,
        "late_creates": creates.late,
        "workers": {
            "requested": o.workers,
            "started": stopped.len(),
            "capacity": o.capacity,
            "offered": sum(|s| s.offered),
            "accepted": sum(|s| s.accepted),
            "completed": sum(|s| s.completed),
            "failed": sum(|s| s.failed),
            "released": sum(|s| s.released),
            "lease_lost": sum(|s| s.lease_lost),
            "errors": sum(|s| s.errors),
            "duplicates": sum(|s| s.duplicates),
            "ignored": sum(|s| s.ignored),
            "reconnects": sum(|s| s.reconnects),
            "heartbeat_errors": sum(|s| s.heartbeat_errors),
        },
        "tasks": {
            "created": created,
            "assigned": assigned,
            "succeeded": succeeded,
            "not_finished": created - succeeded,
            "unfinished_by_status": unfinished,
            "succeeded_from_history": from_history,
            "creation_event_not_seen": missed_creation,
            "seen_but_not_acknowledged": unacknowledged,
        },
        "throughput": { "created_per_second": created_per_second, "succeeded_per_second": succeeded_per_second },
        "latency_ms": latency,
        "created_to_assigned_by_second": timeline(creation_started, &assigned_by_creation),
        "events": events,
        "errors": errors,
    });
    if o.urls.len() > 1 {
        result["urls"] = json!(o.urls);
        result["events_by_url"] = json!(events_by_url);
        result["workers"]["failovers"] = json!(sum(|s| s.failovers));
        result["workers"]["by_url_at_end"] = json!(workers_by_url);
    }
    let line = format!(
        "dispatch workers={}x{} rate={}/s c={}: created {} ({:.0}/s), assigned {}, succeeded {} ({:.0}/s), not finished {}{}; \
         p50/p95/p99/max created→assigned {}, created→succeeded {}, ack→SUCCEEDED received {}; errors {}",
        stopped.len(),
        o.capacity,
        o.rate,
        o.connections,
        created,
        created_per_second,
        assigned,
        succeeded,
        succeeded_per_second,
        created - succeeded,
        unfinished_line,
        brief(&result["latency_ms"]["created_to_assigned"]),
        brief(&result["latency_ms"]["created_to_succeeded"]),
        brief(&result["latency_ms"]["ack_to_succeeded_received"]),
        result["errors"],
    );
    Ok((result, line))
}

/// Reading task histories after a dispatch run stops after this long.
const HISTORY_LIMIT: Duration = Duration::from_secs(30);
const HISTORY: &str = "query History($id: ID!) { task(id: $id) { status events(last: 100) { seq status at } } }";

/// A task's status and event times (µs since the epoch) as the server holds them.
#[derive(Debug, Default)]
struct History {
    status: String,
    created: Option<i64>,
    assigned: Option<i64>,
    succeeded: Option<i64>,
}

/// The histories of `ids`, read `o.connections` at a time for at most [`HISTORY_LIMIT`];
/// failures by reason.
async fn histories(
    o: &Options,
    target: &Target,
    token: &str,
    ids: Vec<u128>,
) -> (HashMap<u128, History>, BTreeMap<String, u64>) {
    let deadline = Instant::now() + HISTORY_LIMIT;
    let read = |id: u128| async move {
        if Instant::now() >= deadline {
            return (id, Err("history: not read in time".to_owned()));
        }
        let variables = json!({ "id": uuid::Uuid::from_u128(id).hyphenated().to_string() });
        let body = json!({ "query": HISTORY, "variables": variables });
        let answer = post(&target.http, target.graphql(id as usize), token, &body).await;
        (id, answer.map_err(|code| format!("history: {code}")).and_then(|v| history(&v["data"]["task"])))
    };
    let answers: Vec<_> = futures::stream::iter(ids).map(read).buffer_unordered(o.connections).collect().await;
    let (mut found, mut errors) = (HashMap::new(), BTreeMap::new());
    for (id, answer) in answers {
        match answer {
            Ok(history) => {
                found.insert(id, history);
            }
            Err(reason) => *errors.entry(reason).or_default() += 1,
        }
    }
    (found, errors)
}

fn history(task: &Value) -> Result<History, String> {
    let status = task["status"].as_str().ok_or("history: task not found")?.to_owned();
    let mut history = History { status, ..History::default() };
    for event in task["events"].as_array().into_iter().flatten() {
        let Some(at) = event["at"].as_str().and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok()) else {
            continue;
        };
        let at = Some(at.timestamp_micros());
        if event["seq"] == 1 {
            history.created = at;
        }
        match event["status"].as_str() {
            Some("ASSIGNED") if history.assigned.is_none() => history.assigned = at,
            Some("SUCCEEDED") => history.succeeded = at,
            _ => {}
        }
    }
    Ok(history)
}

// ---------------------------------------------------------------------------------------
// `fanout`

/// Who got connected: the phase closes once everyone has tried, or at
/// [`CONNECT_PHASE_LIMIT`]; a connection that completes later is closed and counted as
/// failed, so "expected deliveries" is exact.
struct ConnectPhase {
    open: bool,
    connected: usize,
    failed: usize,
}

struct FanoutShared {
    phase: Mutex<ConnectPhase>,
    /// Creation events received, over all subscribers.
    deliveries: AtomicU64,
}

/// One creation event received by one subscriber (µs since the epoch).
#[derive(Debug, Clone, Copy)]
struct Delivery {
    task: u128,
    /// Server: the event's `at`.
    at: i64,
    /// Client: when it was read.
    received: i64,
}

#[derive(Default)]
struct SubscriberResult {
    deliveries: Vec<Delivery>,
    /// Why it failed to connect or was dropped.
    error: Option<String>,
}

async fn subscriber(
    (ws, token, queue): (String, String, String),
    clock: Clock,
    shared: Arc<FanoutShared>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) -> SubscriberResult {
    let mut out = SubscriberResult::default();
    let opened = match permits.acquire().await {
        Ok(_permit) if lock(&shared.phase).open => open_events(&ws, &token, &queue).await,
        _ => Err("the connect phase was over".to_owned()),
    };
    let admitted = {
        let mut phase = lock(&shared.phase);
        let admitted = phase.open && opened.is_ok();
        if admitted {
            phase.connected += 1;
        } else {
            phase.failed += 1;
        }
        admitted
    };
    let mut socket = match opened {
        Ok(socket) if admitted => socket,
        Ok(mut socket) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await;
            out.error = Some("connect: completed after the connect phase".to_owned());
            return out;
        }
        Err(reason) => {
            out.error = Some(format!("connect: {reason}"));
            return out;
        }
    };
    let deliveries = &mut out.deliveries;
    let mut on_event = |event: Event, received: i64| {
        if event.seq == 1 {
            deliveries.push(Delivery { task: event.task, at: event.at, received });
            shared.deliveries.fetch_add(1, Ordering::Relaxed);
        }
    };
    if let Some(reason) = read_events(&mut socket, clock, &stop, &mut on_event).await {
        out.error = Some(format!("dropped: {reason}"));
    }
    out
}

/// `fanout`: S subscribers to one queue's events, E tasks created into it.
async fn fanout(o: &Options, target: &Target) -> Result<(Value, String), String> {
    let clock = target.clock;
    let rss_before = o.pid.and_then(rss_kib);
    let stop = CancellationToken::new();
    let shared = Arc::new(FanoutShared {
        phase: Mutex::new(ConnectPhase { open: true, connected: 0, failed: 0 }),
        deliveries: AtomicU64::new(0),
    });
    let permits = Arc::new(Semaphore::new(o.connect_concurrency));
    let connect_started = Instant::now();
    let mut subscribers = Vec::with_capacity(o.subscribers);
    for i in 0..o.subscribers {
        let token = mint(o, &format!("loadgen-{}-subscriber-{i}", o.run), &["operator"])?;
        let address = (target.ws(i).to_owned(), token, o.queue.clone());
        subscribers.push(tokio::spawn(subscriber(address, clock, shared.clone(), permits.clone(), stop.clone())));
    }
    let connected = loop {
        {
            let mut phase = lock(&shared.phase);
            if phase.connected + phase.failed >= o.subscribers || connect_started.elapsed() >= CONNECT_PHASE_LIMIT {
                phase.open = false;
                break phase.connected;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(IDLE_SETTLE).await;
    let rss_idle = o.pid.and_then(rss_kib);

    let acks: Arc<Mutex<HashMap<u128, i64>>> = Arc::default();
    let sink = acks.clone();
    let on_ack: OnAck = Arc::new(move |task, at| {
        lock(&sink).insert(task, at);
    });
    let tokens = (0..o.connections)
        .map(|j| mint(o, &format!("loadgen-{}-creator-{j}", o.run), &["client"]))
        .collect::<Result<Vec<_>, _>>()?;
    let creates = paced_creates(o, target, tokens, o.events.min(o.max_requests), on_ack).await;
    let expected = creates.created * connected as u64;
    let grace_started = Instant::now();
    while shared.deliveries.load(Ordering::Relaxed) < expected && grace_started.elapsed() < o.grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = grace_started.elapsed().as_secs_f64();
    let rss_end = o.pid.and_then(rss_kib);
    tokio::time::sleep(o.hold).await;
    stop.cancel();
    let results = futures::future::join_all(subscribers).await;

    let acks = std::mem::take(&mut *lock(&acks));
    let mut errors = creates.errors;
    let (mut from_at, mut from_ack) = (Vec::new(), Vec::new());
    let (mut received, mut duplicates, mut unacknowledged) = (0u64, 0u64, 0u64);
    for result in results {
        let Ok(mut result) = result else {
            *errors.entry("subscriber task failed".to_owned()).or_default() += 1;
            continue;
        };
        if let Some(reason) = result.error {
            *errors.entry(reason).or_default() += 1;
        }
        // Stable: of duplicate deliveries, the first read is kept.
        result.deliveries.sort_by_key(|d| d.task);
        let mut previous = None;
        for delivery in result.deliveries {
            if previous == Some(delivery.task) {
                duplicates += 1;
                continue;
            }
            previous = Some(delivery.task);
            let Some(ack) = acks.get(&delivery.task) else {
                unacknowledged += 1;
                continue;
            };
            received += 1;
            from_at.push(delivery.received - delivery.at);
            from_ack.push(delivery.received - ack);
        }
    }

    let mib = |kib: Option<u64>| kib.map(|k| k as f64 / 1024.0);
    let per_subscription = |kib: Option<u64>| match (rss_before, kib) {
        (Some(before), Some(after)) if connected > 0 => {
            Some((after as f64 - before as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    let result = json!({
        "scenario": "fanout",
        "queue": o.queue,
        "subscribers": { "requested": o.subscribers, "connected": connected, "connect_concurrency": o.connect_concurrency, "connect_seconds": connect_seconds },
        "connections": o.connections,
        "rate": o.rate,
        "events_created": creates.created,
        "creation_seconds": creates.seconds,
        "late_creates": creates.late,
        "grace_seconds": waited,
        "deliveries": {
            "expected": expected,
            "received": received,
            "missing": expected.saturating_sub(received),
            "duplicates": duplicates,
            "of_unacknowledged_tasks": unacknowledged,
        },
        "latency_ms": {
            "create_request": latency_ms(creates.micros.iter().map(|&m| i64::from(m)).collect()),
            "at_to_received": latency_ms(from_at),
            "ack_to_received": latency_ms(from_ack),
        },
        "server_rss_mib": { "pid": o.pid, "before": mib(rss_before), "idle": mib(rss_idle), "end": mib(rss_end) },
        "server_rss_bytes_per_subscription": { "idle": per_subscription(rss_idle), "end": per_subscription(rss_end) },
        "errors": errors,
    });
    let rss = match (rss_before, rss_idle, rss_end) {
        (Some(before), Some(idle), Some(end)) => format!(
            "server RSS {:.1} → {:.1} (idle) → {:.1} MiB (end), {:.1} KiB/subscription idle",
            before as f64 / 1024.0,
            idle as f64 / 1024.0,
            end as f64 / 1024.0,
            per_subscription(rss_idle).unwrap_or_default() / 1024.0
        ),
        _ => "server RSS not measured (--pid)".to_owned(),
    };
    let line = format!(
        "fanout subscribers={} (connected {} in {:.1} s) events={} rate={}/s: deliveries {}/{}; p50/p95/p99/max \
         at→received {}, ack→received {}; {}; errors {}",
        o.subscribers,
        connected,
        connect_seconds,
        creates.created,
        o.rate,
        received,
        expected,
        brief(&result["latency_ms"]["at_to_received"]),
        brief(&result["latency_ms"]["ack_to_received"]),
        rss,
        result["errors"],
    );
    Ok((result, line))
}

// ---------------------------------------------------------------------------------------
// Helpers

/// The resident set size of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}
