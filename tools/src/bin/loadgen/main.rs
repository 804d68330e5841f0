//! `loadgen`: a bounded load generator for Taskwire (loopback only).
//!
//! ```text
//! cargo run --release -p taskwire-tools --bin loadgen -- query    --url http://127.0.0.1:8080 --secret S
//! cargo run --release -p taskwire-tools --bin loadgen -- create   --url http://127.0.0.1:8080 --secret S --batch 10
//! cargo run --release -p taskwire-tools --bin loadgen -- dispatch --url http://127.0.0.1:8080 --secret S --workers 50 --rate 500
//! cargo run --release -p taskwire-tools --bin loadgen -- fanout   --url http://127.0.0.1:8080 --secret S --subscribers 1000 --events 100 --pid $SERVER_PID
//! ```
//!
//! Scenarios:
//! - `query`: N connections (`--connections`, default 64) read `task(id)` over a working set
//!   of M tasks it creates first, with a `uniform` or `hot` (90 % of reads on 10 % of the
//!   tasks) distribution;
//! - `create`: N connections call `createTask` (or `createTasks` with `--batch B`);
//! - `dispatch`: `--workers K` reference workers (the `taskwire-worker` SDK, `--capacity` each,
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
//!
//! `--help` lists every option.

mod args;
mod creates;
mod dispatch;
mod events;
mod fanout;
mod requests;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::Value;
use taskwire_tools::load;

use crate::args::{Args, Options, Scenario};

/// The fanout connect phase ends after this long, whatever is still waiting to connect.
const CONNECT_PHASE_LIMIT: Duration = Duration::from_secs(120);
/// Pause between opening the subscriptions and creating tasks, so the server has registered
/// every subscription (graphql-transport-ws does not acknowledge a `subscribe`).
const SETTLE: Duration = Duration::from_secs(1);

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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = match Args::parse().resolve() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let target = Target::new(&options.urls, options.connections);
    let outcome = match options.scenario {
        Scenario::Dispatch => dispatch::dispatch(&options, &target).await,
        Scenario::Fanout => fanout::fanout(&options, &target).await,
        Scenario::Query | Scenario::Create => requests::requests(&options, &target).await,
    };
    let (result, line): (Value, String) = match outcome {
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

/// The resident set size of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}
