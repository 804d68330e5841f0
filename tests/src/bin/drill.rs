//! `drill`: one bounded fault drill against a running Taskwire (loopback only).
//!
//! ```text
//! cargo run --release -p taskwire-tests --bin drill -- <name> --url http://127.0.0.1:8080 --secret S \
//!     [--fault-at 10 --fault-for 30 --fault-cmd 'redis-cli shutdown nosave' --restore-cmd '…']
//! ```
//!
//! What it does, in order:
//! 1. optionally sets the queue's lease (`--lease-seconds`, as an admin) and seeds
//!    `--working-set` tasks for the readers in a queue nobody serves (`<queue>-reads`);
//! 2. starts `--workers` reference workers (`--capacity` each) on the drill's queue; each
//!    task takes `--work-ms`, and every `--stall-every`-th task freezes its worker (no
//!    heartbeats, no report) for `--stall-for` seconds before it tries to complete: a worker
//!    frozen past its lease;
//! 3. for `--duration` seconds, `--connections` creators call `createTask` open-loop at
//!    `--rate` per second, and `--readers` connections read `task(id)` over the working set
//!    (closed loop);
//! 4. meanwhile, at `--fault-at` seconds it runs `sh -c <--fault-cmd>`, and `--fault-for`
//!    seconds later `sh -c <--restore-cmd>` (the drill scripts pass commands that kill or
//!    stop a process and bring it back);
//! 5. then, with the workers still serving, it waits up to `--settle` seconds until every
//!    task whose creation was acknowledged is in a terminal state, read from the server's
//!    `tasks` listing.
//!
//! Verdict (one line, `PASS` or `FAIL`, also in the JSON of `--out`):
//! - **lost**: acknowledged tasks the server does not have — must be 0;
//! - **unfinished**: acknowledged tasks not terminal after `--settle` — must be 0;
//! - **run twice**: tasks where one worker's report was accepted although another worker
//!   had accepted the task while the first was still running it, or that were completed
//!   twice — must be 0 (a frozen worker whose report is refused with `LEASE_LOST` is
//!   *fenced*, which is the system working);
//! - with `--strict`, any failed create or read also fails the drill (for outages the
//!   clients must not see, such as Redis's);
//! - at least one task must have been acknowledged, and the fault and restore commands (when
//!   given) must have succeeded: a drill whose fault did not happen proves nothing.
//!
//! Several instances (`--url` repeated or comma-separated, e.g. the processes of
//! `tests/bench/cluster.sh`): creators and readers are spread round-robin over them and move
//! to the next one when theirs stops answering; worker i starts on URL i mod N with the
//! others as its fail-over list; the listing uses any instance that answers. With
//! `--watchers W`, W connections (spread the same way) follow every `--watch-every`-th
//! acknowledged task with `taskUpdated` (`tests/src/watch.rs`), resuming after the last
//! `seq` received when their connection dies, and the verdict also needs:
//! - **seq**: no gap, no duplicate, nothing after the terminal event, in any watched task,
//!   and every watched task seen to its end;
//! - with `--expect-failover`: at least one worker moved to another instance, and (with
//!   watchers) at least one watched task was resumed — the fault must have hit someone.
//!
//! The JSON also holds a per-second timeline (creates and reads: successes, errors, p99)
//! and the fault window, which `plot` draws.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use taskwire_tests::{
    load::{add_errors, brief, error_kind, failover_list, latency_ms, lock, loopback_urls, mint, post, ws_graphql},
    watch::{self, TERMINAL, WatchReport},
    worker::{Handler, Outcome, Stopped, TaskRecord, Worker, WorkerConfig},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: drill <name> --url URL[,URL…] --secret S [--queue Q] [--duration SECS] [--rate R] \
                     [--connections N] [--workers K] [--capacity C] [--work-ms MS] [--stall-every N] \
                     [--stall-for SECS] [--lease-seconds SECS] [--readers N] [--working-set M] [--settle SECS] \
                     [--fault-at SECS] [--fault-for SECS] [--fault-cmd CMD] [--restore-cmd CMD] [--strict] \
                     [--watchers W] [--watch-every N] [--expect-failover] [--out FILE]";

/// Longest load phase and settle wait accepted (the timeline holds one entry per second).
const MAX_SECONDS: u64 = 900;
/// Pause of a creator or reader after a transport failure (the server is down).
const DOWN_PAUSE: Duration = Duration::from_millis(100);
/// How often the listing is read while settling.
const SETTLE_POLL: Duration = Duration::from_secs(2);
/// A fault or restore command that has not finished after this long is reported as failed.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);
/// Task ids waiting for each watcher (beyond that, a watched task is counted as skipped).
const WATCH_QUEUE: usize = 1024;
/// After the settle phase, how long the watchers get to see their last tasks end.
const WATCH_GRACE: Duration = Duration::from_secs(15);

const CREATE: &str = "mutation Create($i: CreateTaskInput!) { createTask(input: $i) { task { id } } }";
const READ: &str = "query Read($id: ID!) { task(id: $id) { id status } }";
const LIST: &str = "query List($queue: String!, $after: String) { tasks(filter: { queue: $queue }, first: 100, \
                    after: $after) { pageInfo { hasNextPage endCursor } nodes { id status } } }";
const CONFIGURE: &str = "mutation Configure($i: ConfigureQueueInput!) { configureQueue(input: $i) { name } }";
const SEED: &str = "mutation Seed($i: [CreateTaskInput!]!) { createTasks(inputs: $i) { task { id } } }";

#[derive(Debug, Clone)]
struct Options {
    name: String,
    /// Base URLs of the instances (at least one).
    urls: Vec<String>,
    secret: String,
    queue: String,
    duration: Duration,
    rate: f64,
    connections: usize,
    workers: usize,
    capacity: u32,
    work: Duration,
    stall_every: u64,
    stall_for: Duration,
    lease_seconds: Option<u64>,
    readers: usize,
    working_set: usize,
    settle: Duration,
    fault_at: Duration,
    fault_for: Duration,
    fault_cmd: Option<String>,
    restore_cmd: Option<String>,
    strict: bool,
    watchers: usize,
    watch_every: u64,
    expect_failover: bool,
    out: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let name = args.next().filter(|n| !n.starts_with('-')).ok_or(USAGE)?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut o = Options {
        name,
        urls: Vec::new(),
        secret: std::env::var("TASKWIRE_JWT_SECRET").unwrap_or_default(),
        queue: format!("drill-{run}"),
        duration: Duration::from_secs(40),
        rate: 100.0,
        connections: 16,
        workers: 10,
        capacity: 4,
        work: Duration::from_millis(20),
        stall_every: 0,
        stall_for: Duration::ZERO,
        lease_seconds: None,
        readers: 0,
        working_set: 1000,
        settle: Duration::from_secs(120),
        fault_at: Duration::from_secs(10),
        fault_for: Duration::from_secs(30),
        fault_cmd: None,
        restore_cmd: None,
        strict: false,
        watchers: 0,
        watch_every: 10,
        expect_failover: false,
        out: None,
    };
    while let Some(flag) = args.next() {
        if flag == "--strict" || flag == "--expect-failover" {
            o.strict |= flag == "--strict";
            o.expect_failover |= flag == "--expect-failover";
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
        let seconds = |v: &str| number(v).map(|s| Duration::from_secs(s.min(MAX_SECONDS)));
        match flag.as_str() {
            "--url" => o.urls.push(value),
            "--secret" => o.secret = value,
            "--queue" => {
                o.queue = taskwire_domain::QueueName::parse(&value).map_err(|e| format!("--queue: {e}"))?.to_string()
            }
            "--duration" => o.duration = seconds(&value)?,
            "--rate" => {
                o.rate = value.parse::<f64>().map_err(|_| format!("--rate: not a number: {value}"))?;
                if !(o.rate.is_finite() && o.rate > 0.0) {
                    return Err(format!("--rate must be positive: {value}"));
                }
            }
            "--connections" => o.connections = number(&value)?.clamp(1, 1000) as usize,
            "--workers" => o.workers = number(&value)?.clamp(1, 1000) as usize,
            "--capacity" => o.capacity = number(&value)?.clamp(1, 1000) as u32,
            "--work-ms" => o.work = Duration::from_millis(number(&value)?.min(60_000)),
            "--stall-every" => o.stall_every = number(&value)?,
            "--stall-for" => o.stall_for = seconds(&value)?,
            "--lease-seconds" => o.lease_seconds = Some(number(&value)?),
            "--readers" => o.readers = number(&value)?.min(1000) as usize,
            "--working-set" => o.working_set = number(&value)?.clamp(1, 100_000) as usize,
            "--settle" => o.settle = seconds(&value)?,
            "--fault-at" => o.fault_at = seconds(&value)?,
            "--fault-for" => o.fault_for = seconds(&value)?,
            "--fault-cmd" => o.fault_cmd = Some(value),
            "--restore-cmd" => o.restore_cmd = Some(value),
            "--watchers" => o.watchers = number(&value)?.min(100) as usize,
            "--watch-every" => o.watch_every = number(&value)?.max(1),
            "--out" => o.out = Some(value),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    o.urls = loopback_urls(&o.urls, "http://127.0.0.1:8080")?;
    if o.secret.is_empty() {
        return Err("--secret (or TASKWIRE_JWT_SECRET) is required".into());
    }
    Ok(o)
}

/// Successes, failures and latencies of one second of the drill.
#[derive(Debug, Default)]
struct Second {
    create_ok: u64,
    create_err: u64,
    create_micros: Vec<u32>,
    read_ok: u64,
    read_err: u64,
    read_micros: Vec<u32>,
}

/// The drill's per-second record, indexed by seconds since the load started.
struct Timeline {
    start: Instant,
    seconds: Mutex<Vec<Second>>,
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Read,
}

impl Timeline {
    fn new(seconds: u64) -> Timeline {
        Timeline { start: Instant::now(), seconds: Mutex::new((0..seconds).map(|_| Second::default()).collect()) }
    }

    /// Records an operation that ended now after `took`.
    fn record(&self, op: Op, ok: bool, took: Duration) {
        let index = self.start.elapsed().as_secs() as usize;
        let micros = took.as_micros().min(u128::from(u32::MAX)) as u32;
        let mut seconds = lock(&self.seconds);
        let Some(second) = seconds.get_mut(index) else { return };
        match (op, ok) {
            (Op::Create, true) => {
                second.create_ok += 1;
                second.create_micros.push(micros);
            }
            (Op::Create, false) => second.create_err += 1,
            (Op::Read, true) => {
                second.read_ok += 1;
                second.read_micros.push(micros);
            }
            (Op::Read, false) => second.read_err += 1,
        }
    }

    fn at(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn to_json(&self) -> Value {
        let p99 = |micros: &mut Vec<u32>| {
            micros.sort_unstable();
            let rank = ((micros.len() as f64 * 0.99) as usize).min(micros.len().saturating_sub(1));
            micros.get(rank).map(|&m| f64::from(m) / 1000.0)
        };
        let mut seconds = lock(&self.seconds);
        let rows: Vec<Value> = seconds
            .iter_mut()
            .enumerate()
            .map(|(t, s)| {
                json!({
                    "t": t,
                    "create_ok": s.create_ok, "create_err": s.create_err, "create_p99_ms": p99(&mut s.create_micros),
                    "read_ok": s.read_ok, "read_err": s.read_err, "read_p99_ms": p99(&mut s.read_micros),
                })
            })
            .collect();
        Value::Array(rows)
    }
}

/// Successes, failures by kind and latencies of one kind of client operation.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: BTreeMap<String, u64>,
    micros: Vec<i64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        add_errors(&mut self.errors, other.errors);
        self.micros.extend(other.micros);
    }

    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// When the fault and the restore ran (seconds since the load started) and how they ended.
#[derive(Debug, Default)]
struct FaultWindow {
    fault_at: Option<f64>,
    fault_status: Option<String>,
    restore_at: Option<f64>,
    restore_done_at: Option<f64>,
    restore_status: Option<String>,
}

async fn shell(command: &str) -> String {
    let run = tokio::process::Command::new("sh").arg("-c").arg(command).kill_on_drop(true).status();
    match tokio::time::timeout(COMMAND_LIMIT, run).await {
        Ok(Ok(status)) if status.success() => "ok".to_owned(),
        Ok(Ok(status)) => format!("exit {}", status.code().map_or_else(|| "signal".to_owned(), |c| c.to_string())),
        Ok(Err(e)) => format!("not started: {e}"),
        Err(_) => format!("not finished after {COMMAND_LIMIT:?}"),
    }
}

/// Runs the fault command at `fault_at` and the restore command `fault_for` later.
async fn inject(o: Options, timeline: Arc<Timeline>) -> FaultWindow {
    let mut window = FaultWindow::default();
    let Some(fault) = &o.fault_cmd else { return window };
    tokio::time::sleep_until((timeline.start + o.fault_at).into()).await;
    window.fault_at = Some(timeline.at());
    window.fault_status = Some(shell(fault).await);
    eprintln!("drill {}: fault at {:.1} s: {}", o.name, timeline.at(), fault);
    if let Some(restore) = &o.restore_cmd {
        tokio::time::sleep_until((timeline.start + o.fault_at + o.fault_for).into()).await;
        window.restore_at = Some(timeline.at());
        window.restore_status = Some(shell(restore).await);
        window.restore_done_at = Some(timeline.at());
        eprintln!("drill {}: restored at {:.1} s: {}", o.name, timeline.at(), restore);
    }
    window
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = match parse_args() {
        Ok(o) => drill(o).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("drill: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A client's place in the list of instances: it stays on one until that stops answering
/// (a transport error), then moves on to the next, as behind a load balancer.
#[derive(Clone)]
struct Rotation {
    graphql: Arc<Vec<String>>,
    at: usize,
}

impl Rotation {
    fn url(&self) -> &str {
        &self.graphql[self.at % self.graphql.len()]
    }

    /// Moves on when `error` says the instance did not answer (`transport: …`, or
    /// `listing: transport`).
    fn after(&mut self, error: &str) {
        if error.split(':').any(|part| part.trim() == "transport") {
            self.at += 1;
        }
    }
}

/// Hands every `every`-th acknowledged task to the watchers, round-robin.
struct WatchFeed {
    senders: Vec<mpsc::Sender<String>>,
    every: u64,
    acknowledged: AtomicU64,
    /// Tasks not handed over because the watcher's queue was full.
    overflow: AtomicU64,
}

impl WatchFeed {
    fn acknowledged(&self, task: &str) {
        let n = self.acknowledged.fetch_add(1, Ordering::Relaxed);
        if self.senders.is_empty() || !n.is_multiple_of(self.every) {
            return;
        }
        let sender = &self.senders[((n / self.every) % self.senders.len() as u64) as usize];
        if sender.try_send(task.to_owned()).is_err() {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts `o.watchers` watchers, watcher w on instance w mod N first; the feed and how to
/// collect their reports.
fn start_watchers(
    o: &Options,
    token: &str,
) -> (WatchFeed, Vec<tokio::task::JoinHandle<WatchReport>>, CancellationToken) {
    let ws: Vec<String> = o.urls.iter().map(|url| ws_graphql(url)).collect();
    let stop = CancellationToken::new();
    let (mut senders, mut handles) = (Vec::new(), Vec::new());
    for w in 0..o.watchers {
        let (sender, receiver) = mpsc::channel(WATCH_QUEUE);
        let order: Vec<String> = (0..ws.len()).map(|k| ws[(w + k) % ws.len()].clone()).collect();
        handles.push(tokio::spawn(watch::watch(order, token.to_owned(), receiver, stop.clone())));
        senders.push(sender);
    }
    let feed =
        WatchFeed { senders, every: o.watch_every, acknowledged: AtomicU64::new(0), overflow: AtomicU64::new(0) };
    (feed, handles, stop)
}

/// Runs the drill; whether it passed.
async fn drill(o: Options) -> Result<bool, String> {
    let graphql = Arc::new(o.urls.iter().map(|url| format!("{url}/graphql")).collect::<Vec<_>>());
    let rotation = |at: usize| Rotation { graphql: graphql.clone(), at };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.connections + o.readers)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let lifetime = o.duration + o.settle + Duration::from_secs(3600);
    let operator = mint(&o.secret, &format!("{}-operator", o.queue), &["operator", "admin", "client"], lifetime)?;

    if let Some(lease) = o.lease_seconds {
        let input = json!({ "name": o.queue, "leaseSeconds": lease });
        post(&http, &graphql[0], &operator, &json!({ "query": CONFIGURE, "variables": { "i": input } }))
            .await
            .map_err(|e| format!("configureQueue: {e}"))?;
    }
    let reads_queue = format!("{}-reads", o.queue);
    let working_set = if o.readers > 0 {
        Arc::new(seed(&http, &graphql[0], &operator, &reads_queue, o.working_set).await?)
    } else {
        Arc::new(vec![])
    };

    let workers = start_workers(&o, lifetime).await?;
    let (feed, watchers, stop_watching) = start_watchers(&o, &operator);
    let feed = Arc::new(feed);
    let total = o.duration + o.settle + Duration::from_secs(5);
    let timeline = Arc::new(Timeline::new(total.as_secs()));
    let fault = tokio::spawn(inject(o.clone(), timeline.clone()));
    let deadline = timeline.start + o.duration;

    // Readers: closed loop over the working set until the load phase ends.
    let readers: Vec<_> = (0..o.readers)
        .map(|i| {
            let (http, mut instance, token, ids, timeline) =
                (http.clone(), rotation(i), operator.clone(), working_set.clone(), timeline.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let id = {
                        let mut rng = rand::rng();
                        let hot = rng.random_bool(0.9);
                        let n = if hot { (ids.len() / 10).max(1) } else { ids.len() };
                        ids[rng.random_range(0..n)].clone()
                    };
                    let t0 = Instant::now();
                    let read = json!({ "query": READ, "variables": { "id": id } });
                    let answer = post(&http, instance.url(), &token, &read).await.and_then(|v| {
                        if v["data"]["task"]["id"] == id.as_str() { Ok(()) } else { Err("WRONG_ANSWER".into()) }
                    });
                    let took = t0.elapsed();
                    timeline.record(Op::Read, answer.is_ok(), took);
                    match answer {
                        Ok(()) => {
                            tally.ok += 1;
                            tally.micros.push(took.as_micros() as i64);
                        }
                        Err(reason) => {
                            let transport = reason.starts_with("transport");
                            instance.after(&reason);
                            *tally.errors.entry(error_kind(&reason)).or_default() += 1;
                            if transport {
                                tokio::time::sleep(DOWN_PAUSE).await;
                            }
                        }
                    }
                }
                tally
            })
        })
        .collect();

    // Creators: open loop, the i-th create due at i / rate.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let slots = Arc::new(AtomicU64::new(0));
    let creators: Vec<_> = (0..o.connections)
        .map(|j| {
            let (http, mut instance, feed, timeline, acked, slots, queue, rate) = (
                http.clone(),
                rotation(j),
                feed.clone(),
                timeline.clone(),
                acked.clone(),
                slots.clone(),
                o.queue.clone(),
                o.rate,
            );
            let token = mint(&o.secret, &format!("{queue}-creator-{j}"), &["client"], lifetime);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let Ok(token) = token else { return tally };
                loop {
                    let slot = slots.fetch_add(1, Ordering::Relaxed);
                    let due = timeline.start + Duration::from_secs_f64(slot as f64 / rate);
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let input = json!({ "queue": queue, "kind": "drill", "payload": { "n": slot } });
                    let t0 = Instant::now();
                    let answer =
                        post(&http, instance.url(), &token, &json!({ "query": CREATE, "variables": { "i": input } }))
                            .await
                            .and_then(|v| {
                                v["data"]["createTask"]["task"]["id"]
                                    .as_str()
                                    .map(str::to_owned)
                                    .ok_or("NO_TASK_ID".into())
                            });
                    let took = t0.elapsed();
                    timeline.record(Op::Create, answer.is_ok(), took);
                    match answer {
                        Ok(id) => {
                            tally.ok += 1;
                            tally.micros.push(took.as_micros() as i64);
                            feed.acknowledged(&id);
                            lock(&acked).push(id);
                        }
                        Err(reason) => {
                            instance.after(&reason);
                            *tally.errors.entry(error_kind(&reason)).or_default() += 1;
                        }
                    }
                }
                tally
            })
        })
        .collect();

    let (mut creates, mut reads) = (Tally::default(), Tally::default());
    for creator in creators {
        creates.merge(creator.await.unwrap_or_default());
    }
    for reader in readers {
        reads.merge(reader.await.unwrap_or_default());
    }
    let window = fault.await.unwrap_or_default();
    // The creators are done: closing the feed lets each watcher end once its tasks have.
    let watch_overflow = feed.overflow.load(Ordering::Relaxed);
    drop(feed);
    let acked: Vec<String> = std::mem::take(&mut *lock(&acked));
    eprintln!("drill {}: load done at {:.1} s, {} creates acknowledged; settling", o.name, timeline.at(), acked.len());

    // Settle: wait until every acknowledged task is terminal (or the time is up).
    let settle_deadline = Instant::now() + o.settle;
    let wanted: HashSet<&str> = acked.iter().map(String::as_str).collect();
    let mut listing_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut instance = rotation(0);
    let statuses = loop {
        match list(&http, instance.url(), &operator, &o.queue).await {
            Ok(statuses) => {
                let open = wanted
                    .iter()
                    .filter(|id| statuses.get(**id).is_none_or(|s| !TERMINAL.contains(&s.as_str())))
                    .count();
                if open == 0 || Instant::now() >= settle_deadline {
                    break statuses;
                }
            }
            Err(e) => {
                instance.after(&e);
                *listing_errors.entry(e).or_default() += 1;
                if Instant::now() >= settle_deadline {
                    break HashMap::new();
                }
            }
        }
        tokio::time::sleep(SETTLE_POLL).await;
    };
    let settled_at = timeline.at();
    let watching = futures::future::join_all(watchers);
    tokio::pin!(watching);
    let reports = tokio::select! {
        reports = &mut watching => reports,
        () = tokio::time::sleep(WATCH_GRACE) => {
            stop_watching.cancel();
            watching.await
        }
    };
    let mut watched = WatchReport::default();
    for report in reports {
        match report {
            Ok(report) => watched.merge(report),
            Err(_) => *watched.errors.entry("watcher task failed".to_owned()).or_default() += 1,
        }
    }
    let stopped: Vec<Stopped> = futures::future::join_all(workers.into_iter().map(Worker::stop)).await;

    // The verdict.
    let lost: Vec<&str> = wanted.iter().copied().filter(|id| !statuses.contains_key(*id)).collect();
    let mut unfinished: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for id in &wanted {
        if let Some(status) = statuses.get(*id) {
            *by_status.entry(status.clone()).or_default() += 1;
            if !TERMINAL.contains(&status.as_str()) {
                *unfinished.entry(status.clone()).or_default() += 1;
            }
        }
    }
    let records: Vec<&TaskRecord> = stopped.iter().flat_map(|s| s.log.iter()).collect();
    let runs = check_runs(&records);
    let worker_stats = json!({
        "accepted": stopped.iter().map(|s| s.stats.accepted).sum::<u64>(),
        "completed": stopped.iter().map(|s| s.stats.completed).sum::<u64>(),
        "lease_lost": stopped.iter().map(|s| s.stats.lease_lost).sum::<u64>(),
        "errors": stopped.iter().map(|s| s.stats.errors).sum::<u64>(),
        "reconnects": stopped.iter().map(|s| s.stats.reconnects).sum::<u64>(),
        "failovers": stopped.iter().map(|s| s.stats.failovers).sum::<u64>(),
        "heartbeat_errors": stopped.iter().map(|s| s.stats.heartbeat_errors).sum::<u64>(),
    });
    let unfinished_count: u64 = unfinished.values().sum();
    let worker_failovers = stopped.iter().map(|s| s.stats.failovers).sum::<u64>();
    let client_errors = creates.failed() + reads.failed();
    // A drill whose fault or restore did not run proves nothing.
    let injected = o.fault_cmd.is_none() || window.fault_status.as_deref() == Some("ok");
    let restored = o.restore_cmd.is_none() || window.restore_status.as_deref() == Some("ok");
    let pass = injected
        && restored
        && !acked.is_empty()
        && lost.is_empty()
        && unfinished_count == 0
        && runs.run_twice == 0
        && (!o.strict || client_errors == 0)
        && (o.watchers == 0 || seq_intact(&watched))
        && (!o.expect_failover || failed_over(&watched, o.watchers, worker_failovers));
    let verdict = if pass { "PASS" } else { "FAIL" };
    let create_latency = latency_ms(creates.micros.clone());
    let read_latency = latency_ms(reads.micros.clone());
    let line = format!(
        "drill {}: {verdict} — acknowledged {}, lost {}, unfinished {}, run twice {}, fenced {}; creates failed {} {}, \
         reads {} failed {} {} (p50/p95/p99/max {}); fault {} at {:.1} s, restore {} at {} s; settled at {:.1} s",
        o.name,
        acked.len(),
        lost.len(),
        unfinished_count,
        runs.run_twice,
        runs.fenced,
        creates.failed(),
        json!(creates.errors),
        reads.ok,
        reads.failed(),
        json!(reads.errors),
        brief(&read_latency),
        window.fault_status.as_deref().unwrap_or("none"),
        window.fault_at.unwrap_or_default(),
        window.restore_status.as_deref().unwrap_or("none"),
        window.restore_done_at.map_or_else(|| "-".to_owned(), |t| format!("{t:.1}")),
        settled_at,
    );
    let line = if o.watchers > 0 || o.urls.len() > 1 {
        format!(
            "{line}; watched {} (finished {}, resumed {}, gaps {}, duplicates {}, after the end {}); worker failovers {}",
            watched.watched,
            watched.finished,
            watched.resumed,
            watched.gaps,
            watched.duplicates,
            watched.after_terminal,
            worker_failovers,
        )
    } else {
        line
    };
    println!("{line}");
    let result = json!({
        "drill": o.name,
        "verdict": verdict,
        "line": line,
        "queue": o.queue,
        "strict": o.strict,
        "options": {
            "duration_s": o.duration.as_secs(), "rate": o.rate, "connections": o.connections,
            "workers": o.workers, "capacity": o.capacity, "work_ms": o.work.as_millis() as u64,
            "stall_every": o.stall_every, "stall_for_s": o.stall_for.as_secs(), "lease_seconds": o.lease_seconds,
            "readers": o.readers, "working_set": o.working_set, "settle_s": o.settle.as_secs(),
        },
        "fault": {
            "command": o.fault_cmd, "restore_command": o.restore_cmd,
            "at_s": window.fault_at, "status": window.fault_status,
            "restore_at_s": window.restore_at, "restore_done_at_s": window.restore_done_at,
            "restore_status": window.restore_status,
        },
        "tasks": {
            "acknowledged": acked.len(), "lost": lost.len(), "lost_ids": lost.iter().take(20).collect::<Vec<_>>(),
            "unfinished": unfinished, "by_status": by_status, "settled_at_s": settled_at,
        },
        "runs": { "run_twice": runs.run_twice, "completed_twice": runs.completed_twice,
                  "overlapping_accepted": runs.overlapping, "fenced": runs.fenced },
        "workers": worker_stats,
        "creates": { "ok": creates.ok, "errors": creates.errors, "latency_ms": create_latency },
        "reads": { "ok": reads.ok, "errors": reads.errors, "latency_ms": read_latency },
        "listing_errors": listing_errors,
        "urls": o.urls,
        "watch": {
            "watchers": o.watchers, "every": o.watch_every, "watched": watched.watched,
            "finished": watched.finished, "skipped": watched.skipped + watch_overflow, "gaps": watched.gaps,
            "duplicates": watched.duplicates, "after_terminal": watched.after_terminal,
            "resumed": watched.resumed, "drops": watched.drops, "failovers": watched.failovers,
            "errors": watched.errors, "unfinished": watched.unfinished,
        },
        "expect_failover": o.expect_failover,
        "timeline": timeline.to_json(),
    });
    if let Some(path) = &o.out {
        std::fs::write(path, serde_json::to_string_pretty(&result).unwrap_or_default())
            .map_err(|e| format!("writing {path}: {e}"))?;
    }
    Ok(pass)
}

/// Starts the workers; fails when none starts.
async fn start_workers(o: &Options, lifetime: Duration) -> Result<Vec<Worker>, String> {
    let handled = Arc::new(AtomicU64::new(0));
    let (work, stall_every, stall_for) = (o.work, o.stall_every, o.stall_for);
    let handler: Handler = Arc::new(move |_| {
        let n = handled.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            if stall_every > 0 && n.is_multiple_of(stall_every) {
                return Outcome::Stall(stall_for);
            }
            tokio::time::sleep(work).await;
            Outcome::Complete(None)
        }
        .boxed()
    });
    // Heartbeats well inside the lease (30 s unless the drill sets it).
    let lease = Duration::from_secs(o.lease_seconds.unwrap_or(30).max(1));
    let heartbeat_every = (lease / 4).min(Duration::from_secs(5));
    let mut configs = Vec::new();
    for i in 0..o.workers {
        let name = format!("{}-worker-{i}", o.queue);
        configs.push(WorkerConfig {
            url: failover_list(&o.urls, i),
            token: mint(&o.secret, &name, &["worker"], lifetime)?,
            name,
            queues: vec![o.queue.clone()],
            capacity: o.capacity,
            heartbeat_every,
        });
    }
    let started: Vec<Result<Worker, String>> =
        futures::stream::iter(configs).map(|c| Worker::start(c, handler.clone())).buffer_unordered(16).collect().await;
    let (workers, failures): (Vec<_>, Vec<_>) = started.into_iter().partition(Result::is_ok);
    let workers: Vec<Worker> = workers.into_iter().filter_map(Result::ok).collect();
    if workers.is_empty() {
        let reasons: Vec<String> = failures.into_iter().filter_map(Result::err).collect();
        return Err(format!("no worker started: {reasons:?}"));
    }
    Ok(workers)
}

/// Creates `count` tasks in `queue` (nobody serves it) for the readers; their ids.
async fn seed(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    queue: &str,
    count: usize,
) -> Result<Vec<String>, String> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let inputs: Vec<Value> =
            (0..(count - ids.len()).min(500)).map(|_| json!({ "queue": queue, "kind": "read" })).collect();
        let value = post(http, url, token, &json!({ "query": SEED, "variables": { "i": inputs } }))
            .await
            .map_err(|e| format!("seeding the readers' tasks: {e}"))?;
        let created = value["data"]["createTasks"].as_array().cloned().unwrap_or_default();
        if created.is_empty() {
            return Err("seeding the readers' tasks: nothing created".into());
        }
        ids.extend(created.iter().filter_map(|c| c["task"]["id"].as_str().map(str::to_owned)));
    }
    Ok(ids)
}

/// Every task of `queue` with its status, read page by page from the `tasks` listing.
async fn list(http: &reqwest::Client, url: &str, token: &str, queue: &str) -> Result<HashMap<String, String>, String> {
    let mut statuses = HashMap::new();
    let mut after = Value::Null;
    loop {
        let body = json!({ "query": LIST, "variables": { "queue": queue, "after": after } });
        let page = post(http, url, token, &body).await.map_err(|e| format!("listing: {}", error_kind(&e)))?;
        let tasks = &page["data"]["tasks"];
        for node in tasks["nodes"].as_array().into_iter().flatten() {
            if let (Some(id), Some(status)) = (node["id"].as_str(), node["status"].as_str()) {
                statuses.insert(id.to_owned(), status.to_owned());
            }
        }
        if tasks["pageInfo"]["hasNextPage"] != true {
            return Ok(statuses);
        }
        after = tasks["pageInfo"]["endCursor"].clone();
    }
}

/// The watched tasks' events came in `seq` order without gaps or duplicates, and every
/// watched task was seen to its end (at least one was watched).
fn seq_intact(watched: &WatchReport) -> bool {
    watched.watched > 0
        && watched.finished == watched.watched
        && watched.gaps == 0
        && watched.duplicates == 0
        && watched.after_terminal == 0
}

/// The fault moved someone: a worker to another instance and, when tasks were watched, a
/// watched task's subscription to a new one.
fn failed_over(watched: &WatchReport, watchers: usize, worker_failovers: u64) -> bool {
    worker_failovers > 0 && (watchers == 0 || watched.resumed > 0)
}

/// What the workers' logs say about exclusive execution.
#[derive(Debug, Default, PartialEq, Eq)]
struct Runs {
    /// Tasks completed (answer accepted) more than once.
    completed_twice: u64,
    /// Accepted reports made while another worker had accepted the same task.
    overlapping: u64,
    /// Tasks with either of the above.
    run_twice: u64,
    /// Reports refused with `LEASE_LOST` (a stale holder fenced off).
    fenced: u64,
}

/// Checks that no task ran on two workers at once: for each task, the accepted runs in the
/// order they were accepted; a run whose report the server accepted must not overlap a
/// later acceptance (by then its lease had passed to someone else), and a task completes
/// at most once.
fn check_runs(records: &[&TaskRecord]) -> Runs {
    let mut by_task: HashMap<&str, Vec<&TaskRecord>> = HashMap::new();
    let mut runs = Runs::default();
    for record in records {
        if matches!(&record.accept, Some(Err(code)) if code == "LEASE_LOST")
            || matches!(&record.answer, Some(Err(code)) if code == "LEASE_LOST")
        {
            runs.fenced += 1;
        }
        if record.accepted {
            by_task.entry(record.task_id.as_str()).or_default().push(record);
        }
    }
    for accepted in by_task.values_mut() {
        accepted.sort_by_key(|r| r.accepted_at.map(|s| s.instant));
        let completions = accepted
            .iter()
            .filter(|r| matches!(r.outcome, Some(Outcome::Complete(_)) | Some(Outcome::Stall(_))))
            .filter(|r| matches!(r.answer, Some(Ok(()))))
            .count();
        let mut bad = completions > 1;
        if completions > 1 {
            runs.completed_twice += 1;
        }
        for pair in accepted.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            let overlapped = match (first.finished_at, next.accepted_at) {
                (Some(finished), Some(accepted)) => accepted.instant < finished.instant,
                (None, Some(_)) => true,
                _ => false,
            };
            if overlapped && matches!(first.answer, Some(Ok(()))) {
                runs.overlapping += 1;
                bad = true;
            }
        }
        if bad {
            runs.run_twice += 1;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use taskwire_tests::worker::Stamp;

    use super::*;

    fn record(task: &str, accepted_at: Duration, finished_at: Duration, answer: Result<(), String>) -> TaskRecord {
        let base = Stamp::now();
        let at = |d: Duration| Stamp { instant: base.instant + d, utc: base.utc };
        TaskRecord {
            task_id: task.into(),
            lease_token: "t".into(),
            queue: "q".into(),
            kind: "k".into(),
            attempts: 0,
            offered_at: base,
            accept: Some(Ok(())),
            accepted: true,
            accepted_at: Some(at(accepted_at)),
            outcome: Some(Outcome::Complete(None)),
            answer: Some(answer),
            finished_at: Some(at(finished_at)),
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn clients_move_on_only_when_the_instance_does_not_answer() {
        let mut rotation = Rotation { graphql: Arc::new(vec!["a".into(), "b".into()]), at: 1 };
        assert_eq!(rotation.url(), "b");
        rotation.after("UNAVAILABLE");
        rotation.after("WRONG_ANSWER");
        assert_eq!(rotation.url(), "b");
        rotation.after("transport: error sending request for url (http://b/graphql)");
        assert_eq!(rotation.url(), "a");
        rotation.after("listing: transport");
        assert_eq!(rotation.url(), "b");
    }

    #[test]
    fn seq_and_failover_verdicts() {
        let clean = WatchReport { watched: 10, finished: 10, resumed: 3, ..WatchReport::default() };
        assert!(seq_intact(&clean));
        assert!(!seq_intact(&WatchReport::default()), "nothing watched proves nothing");
        assert!(!seq_intact(&WatchReport { gaps: 1, ..clean.clone() }));
        assert!(!seq_intact(&WatchReport { duplicates: 1, ..clean.clone() }));
        assert!(!seq_intact(&WatchReport { after_terminal: 1, ..clean.clone() }));
        assert!(!seq_intact(&WatchReport { finished: 9, ..clean.clone() }));
        assert!(failed_over(&clean, 4, 2));
        assert!(!failed_over(&clean, 4, 0), "no worker moved");
        assert!(!failed_over(&WatchReport { resumed: 0, ..clean.clone() }, 4, 2), "no watched task resumed");
        assert!(failed_over(&WatchReport::default(), 0, 1));
    }

    #[test]
    fn a_fenced_frozen_worker_is_not_a_double_run() {
        let frozen = record("a", S(0), S(40), Err("LEASE_LOST".into()));
        let rescuer = record("a", S(31), S(32), Ok(()));
        let runs = check_runs(&[&frozen, &rescuer]);
        assert_eq!(runs, Runs { fenced: 1, ..Runs::default() });
    }

    #[test]
    fn an_accepted_report_during_another_run_is_a_double_run() {
        let first = record("a", S(0), S(40), Ok(()));
        let second = record("a", S(31), S(32), Err("LEASE_LOST".into()));
        let runs = check_runs(&[&first, &second]);
        assert_eq!((runs.overlapping, runs.run_twice, runs.fenced), (1, 1, 1));
    }

    #[test]
    fn two_accepted_completions_are_a_double_run_even_apart() {
        let first = record("a", S(0), S(1), Ok(()));
        let second = record("a", S(5), S(6), Ok(()));
        let other = record("b", S(0), S(1), Ok(()));
        let runs = check_runs(&[&second, &first, &other]);
        assert_eq!((runs.completed_twice, runs.overlapping, runs.run_twice), (1, 0, 1));
    }

    #[test]
    fn a_failed_attempt_then_a_completion_is_fine() {
        let mut failed = record("a", S(0), S(1), Ok(()));
        failed.outcome = Some(Outcome::Fail { error: "x".into(), retryable: true });
        let completed = record("a", S(5), S(6), Ok(()));
        assert_eq!(check_runs(&[&failed, &completed]), Runs::default());
    }
}
