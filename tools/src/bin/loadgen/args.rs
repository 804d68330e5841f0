//! The command line, and the run's options resolved from it.

use std::{fmt, time::Duration};

use clap::{Parser, ValueEnum};
use taskwire_tools::load::{self, new_run_id, parse_queue_name, parse_rate, parse_seconds};

use crate::rss_kib;

/// Longest `--hold` (seconds): the run stays bounded.
const MAX_HOLD_SECONDS: u64 = 600;
/// Per-delivery records a fanout run may keep (`--events` × `--subscribers`), 32 bytes each.
const MAX_DELIVERIES: u64 = 20_000_000;

/// A bounded load generator for Taskwire (loopback only). See the module documentation of
/// `tools/src/bin/loadgen/main.rs` for what each scenario measures.
#[derive(Parser)]
#[command(name = "loadgen")]
pub(crate) struct Args {
    /// The scenario to run.
    scenario: Scenario,
    /// Base URL of an instance; repeatable, or several comma-separated.
    #[arg(long = "url", value_name = "URL[,URL…]")]
    urls: Vec<String>,
    /// The server's HS256 secret, to mint the load's tokens.
    #[arg(long, env = "TASKWIRE_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// Client connections (default: 64 for query and create, 16 for dispatch, 4 for fanout).
    #[arg(long)]
    connections: Option<u64>,
    /// The load phase, in seconds.
    #[arg(long, value_name = "SECS", default_value = "20", value_parser = parse_seconds)]
    duration: u64,
    /// Requests (or tasks created) at most.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Where to write the full result as JSON.
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
    /// Tasks read.
    #[arg(long, default_value_t = 1_000, help_heading = "query")]
    working_set: u64,
    /// How reads pick a task.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform, help_heading = "query")]
    distribution: Distribution,
    /// Tasks per `createTasks` call (1–500; 1 calls `createTask`).
    #[arg(long, default_value_t = 1, help_heading = "create")]
    batch: u64,
    /// Tasks created per second (default: 500 for dispatch, 20 for fanout).
    #[arg(long, value_parser = parse_rate, help_heading = "dispatch and fanout")]
    rate: Option<f64>,
    /// The queue (default a fresh `loadgen-<run>`).
    #[arg(long, value_parser = parse_queue_name, help_heading = "dispatch and fanout")]
    queue: Option<String>,
    /// Longest wait for stragglers after creation stops, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds, help_heading = "dispatch and fanout")]
    grace: u64,
    /// Reference workers.
    #[arg(long, default_value_t = 50, help_heading = "dispatch")]
    workers: u64,
    /// Tasks each worker handles at once (1–1000).
    #[arg(long, default_value_t = 4, help_heading = "dispatch")]
    capacity: u64,
    /// The workers register with `autoAccept`: offers arrive started, no `acceptTask`.
    #[arg(long, help_heading = "dispatch")]
    auto_accept: bool,
    /// Queue-wide subscriptions recording the run, observer i on URL i mod N
    /// (1–64; default one per URL).
    #[arg(long, help_heading = "dispatch")]
    observers: Option<u64>,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1_000, help_heading = "fanout")]
    subscribers: u64,
    /// Tasks created once the subscribers are connected.
    #[arg(long, default_value_t = 100, help_heading = "fanout")]
    events: u64,
    /// Subscribers connecting at once.
    #[arg(long, default_value_t = 50, help_heading = "fanout")]
    connect_concurrency: u64,
    /// The server's process id, to read its VmRSS.
    #[arg(long, help_heading = "fanout")]
    pid: Option<u32>,
    /// How long the subscribers stay connected after the last reading, in seconds
    /// (at most 600).
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_seconds, help_heading = "fanout")]
    hold: u64,
}

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Connections read `task(id)` over a working set of tasks created first.
    Query,
    /// Connections call `createTask` (or `createTasks` with `--batch`).
    Create,
    /// Reference workers serve a fresh queue fed at a fixed rate; an operator's
    /// subscription records every task's way through.
    Dispatch,
    /// Subscribers to one queue's events; tasks created into it.
    Fanout,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Query => "query",
            Scenario::Create => "create",
            Scenario::Dispatch => "dispatch",
            Scenario::Fanout => "fanout",
        })
    }
}

/// Which task a `query` read picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Distribution {
    /// Any task of the working set.
    Uniform,
    /// 90 % of the reads on 10 % of the tasks.
    Hot,
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if *self == Distribution::Hot { "hot" } else { "uniform" })
    }
}

/// What one run does, resolved from [`Args`].
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) scenario: Scenario,
    /// Base URLs of the instances (at least one).
    pub(crate) urls: Vec<String>,
    pub(crate) secret: String,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) max_requests: u64,
    pub(crate) working_set: usize,
    pub(crate) distribution: Distribution,
    pub(crate) batch: usize,
    pub(crate) out: Option<String>,
    /// A short random id naming this run's queue and subjects.
    pub(crate) run: String,
    pub(crate) rate: f64,
    pub(crate) queue: String,
    pub(crate) grace: Duration,
    pub(crate) workers: usize,
    pub(crate) capacity: u32,
    pub(crate) auto_accept: bool,
    /// `dispatch`: queue-wide subscriptions recording the run, observer i on URL i mod N
    /// (`None`: one per URL). A fixed count keeps the subscriber load equal whatever N is.
    pub(crate) observers: Option<usize>,
    pub(crate) subscribers: usize,
    pub(crate) events: u64,
    pub(crate) connect_concurrency: usize,
    pub(crate) pid: Option<u32>,
    /// `fanout`: how long the subscribers stay connected after the last measurement (for
    /// a heap profiler or `/proc` to look at the server with them open).
    pub(crate) hold: Duration,
}

impl Args {
    /// The options of the run: defaults per scenario, values brought into range, and the
    /// checks that need several flags.
    pub(crate) fn resolve(self) -> Result<Options, String> {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let run = new_run_id();
        let scenario = self.scenario;
        let default_connections = match scenario {
            Scenario::Dispatch => 16,
            Scenario::Fanout => 4,
            Scenario::Query | Scenario::Create => 64,
        };
        let o = Options {
            scenario,
            urls: load::loopback_urls(&self.urls, "http://127.0.0.1:8080")?,
            secret: self.secret,
            connections: size(self.connections.unwrap_or(default_connections).max(1)),
            duration: Duration::from_secs(self.duration),
            max_requests: self.max_requests,
            working_set: size(self.working_set),
            distribution: self.distribution,
            batch: size(self.batch.clamp(1, 500)),
            out: self.out,
            rate: self.rate.unwrap_or(if scenario == Scenario::Fanout { 20.0 } else { 500.0 }),
            queue: self.queue.unwrap_or_else(|| format!("loadgen-{run}")),
            run,
            grace: Duration::from_secs(self.grace),
            workers: size(self.workers.max(1)),
            capacity: self.capacity.clamp(1, 1000) as u32,
            auto_accept: self.auto_accept,
            observers: self.observers.map(|n| size(n.clamp(1, 64))),
            subscribers: size(self.subscribers),
            events: self.events,
            connect_concurrency: size(self.connect_concurrency.max(1)),
            pid: self.pid,
            hold: Duration::from_secs(self.hold.min(MAX_HOLD_SECONDS)),
        };
        if o.secret.is_empty() {
            return Err("--secret (or TASKWIRE_JWT_SECRET) is required to mint the load token".into());
        }
        if o.scenario == Scenario::Fanout
            && o.events.min(o.max_requests).saturating_mul(o.subscribers as u64) > MAX_DELIVERIES
        {
            return Err(format!("--events × --subscribers must be at most {MAX_DELIVERIES} (one record per delivery)"));
        }
        if let Some(pid) = o.pid
            && rss_kib(pid).is_none()
        {
            return Err(format!("--pid {pid}: cannot read VmRSS from /proc/{pid}/status"));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn resolve(line: &str) -> Result<Options, String> {
        let args = Args::try_parse_from(line.split_whitespace()).map_err(|e| e.to_string())?;
        args.resolve()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_scenario() {
        let fanout = resolve("loadgen fanout --secret s").expect("parses");
        assert_eq!((fanout.connections, fanout.rate), (4, 20.0));
        assert!(fanout.queue.starts_with("loadgen-") && fanout.queue.ends_with(&fanout.run));
        let dispatch =
            resolve("loadgen dispatch --secret s --url http://127.0.0.1:1,http://localhost:2").expect("parses");
        assert_eq!((dispatch.connections, dispatch.rate, dispatch.urls.len()), (16, 500.0, 2));
        let query = resolve("loadgen query --secret s --distribution hot --duration 15s").expect("parses");
        assert_eq!(
            (query.connections, query.distribution, query.duration),
            (64, Distribution::Hot, Duration::from_secs(15))
        );
    }

    #[test]
    fn values_are_brought_into_range_or_refused() {
        let o = resolve("loadgen create --secret s --batch 900 --connections 0 --hold 9999").expect("parses");
        assert_eq!((o.batch, o.connections, o.hold), (500, 1, Duration::from_secs(MAX_HOLD_SECONDS)));
        assert!(resolve("loadgen dispatch --secret s --rate 0").is_err());
        assert!(resolve("loadgen dispatch --secret s --queue Bad").is_err());
        assert!(resolve("loadgen dispatch --secret s --url http://10.0.0.1:8080").is_err());
        assert!(resolve("loadgen soak --secret s").is_err());
        assert!(resolve("loadgen fanout --secret s --subscribers 1000000 --events 1000").is_err());
    }
}
