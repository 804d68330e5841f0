//! The command line, and the drill's options resolved from it.

use std::time::Duration;

use clap::Parser;
use taskwire_tools::load::{loopback_urls, new_run_id, parse_queue_name, parse_rate, parse_seconds};

/// Longest load phase and settle wait accepted (the timeline holds one entry per second).
const MAX_SECONDS: u64 = 900;

/// One bounded fault drill against a running Taskwire (loopback only), with a PASS/FAIL
/// verdict. See the module documentation of `tools/src/bin/drill/main.rs` for what it
/// does and checks.
#[derive(Parser)]
#[command(name = "drill")]
pub(crate) struct Args {
    /// The drill's name, in the verdict line and the JSON.
    name: String,
    /// Base URL of an instance; repeatable, or several comma-separated.
    #[arg(long = "url", value_name = "URL[,URL…]")]
    urls: Vec<String>,
    /// The server's HS256 secret, to mint the drill's tokens.
    #[arg(long, env = "TASKWIRE_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// The queue served (default a fresh `drill-<run>`).
    #[arg(long, value_parser = parse_queue_name)]
    queue: Option<String>,
    /// The load phase, in seconds (at most 900).
    #[arg(long, value_name = "SECS", default_value = "40", value_parser = parse_seconds)]
    duration: u64,
    /// Tasks created per second.
    #[arg(long, default_value = "100", value_parser = parse_rate)]
    rate: f64,
    /// Creator connections (1–1000).
    #[arg(long, default_value_t = 16)]
    connections: u64,
    /// Reference workers (1–1000).
    #[arg(long, default_value_t = 10)]
    workers: u64,
    /// Tasks each worker handles at once (1–1000).
    #[arg(long, default_value_t = 4)]
    capacity: u64,
    /// The workers register with `autoAccept`: offers arrive started, no `acceptTask`.
    #[arg(long)]
    auto_accept: bool,
    /// How long each task takes, in milliseconds (at most 60000).
    #[arg(long, default_value_t = 20)]
    work_ms: u64,
    /// Every N-th task freezes its worker (0: none).
    #[arg(long, default_value_t = 0)]
    stall_every: u64,
    /// How long a frozen worker stays frozen, in seconds.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_seconds)]
    stall_for: u64,
    /// The queue's lease, in seconds, set as an admin before the load (default: the queue's).
    #[arg(long, value_name = "SECS")]
    lease_seconds: Option<u64>,
    /// Reader connections reading `task(id)` over the working set (at most 1000).
    #[arg(long, default_value_t = 0)]
    readers: u64,
    /// Tasks the readers read (1–100000).
    #[arg(long, default_value_t = 1000)]
    working_set: u64,
    /// Longest wait for every acknowledged task to end, in seconds.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_seconds)]
    settle: u64,
    /// When the fault command runs, in seconds after the load started.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    fault_at: u64,
    /// How long after the fault the restore command runs, in seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    fault_for: u64,
    /// The fault, run with `sh -c`.
    #[arg(long, value_name = "CMD")]
    fault_cmd: Option<String>,
    /// The restore, run with `sh -c`.
    #[arg(long, value_name = "CMD")]
    restore_cmd: Option<String>,
    /// Any failed create or read fails the drill.
    #[arg(long)]
    strict: bool,
    /// Watcher connections following tasks with `taskUpdated` (at most 100).
    #[arg(long, default_value_t = 0)]
    watchers: u64,
    /// Every N-th acknowledged task is watched.
    #[arg(long, default_value_t = 10)]
    watch_every: u64,
    /// The fault must have moved a worker to another instance (and, with watchers, resumed
    /// a watched task).
    #[arg(long)]
    expect_failover: bool,
    /// Where to write the full result as JSON.
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

/// What one drill does, resolved from [`Args`].
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) name: String,
    /// Base URLs of the instances (at least one).
    pub(crate) urls: Vec<String>,
    pub(crate) secret: String,
    pub(crate) queue: String,
    pub(crate) duration: Duration,
    pub(crate) rate: f64,
    pub(crate) connections: usize,
    pub(crate) workers: usize,
    pub(crate) capacity: u32,
    pub(crate) auto_accept: bool,
    pub(crate) work: Duration,
    pub(crate) stall_every: u64,
    pub(crate) stall_for: Duration,
    pub(crate) lease_seconds: Option<u64>,
    pub(crate) readers: usize,
    pub(crate) working_set: usize,
    pub(crate) settle: Duration,
    pub(crate) fault_at: Duration,
    pub(crate) fault_for: Duration,
    pub(crate) fault_cmd: Option<String>,
    pub(crate) restore_cmd: Option<String>,
    pub(crate) strict: bool,
    pub(crate) watchers: usize,
    pub(crate) watch_every: u64,
    pub(crate) expect_failover: bool,
    pub(crate) out: Option<String>,
}

impl Args {
    /// The drill's options: defaults, values brought into range, URLs checked.
    pub(crate) fn resolve(self) -> Result<Options, String> {
        let seconds = |s: u64| Duration::from_secs(s.min(MAX_SECONDS));
        let size = |n: u64, low: u64, high: u64| n.clamp(low, high) as usize;
        if self.secret.is_empty() {
            return Err("--secret (or TASKWIRE_JWT_SECRET) is required".into());
        }
        Ok(Options {
            name: self.name,
            urls: loopback_urls(&self.urls, "http://127.0.0.1:8080")?,
            secret: self.secret,
            queue: self.queue.unwrap_or_else(|| format!("drill-{}", new_run_id())),
            duration: seconds(self.duration),
            rate: self.rate,
            connections: size(self.connections, 1, 1000),
            workers: size(self.workers, 1, 1000),
            capacity: self.capacity.clamp(1, 1000) as u32,
            auto_accept: self.auto_accept,
            work: Duration::from_millis(self.work_ms.min(60_000)),
            stall_every: self.stall_every,
            stall_for: seconds(self.stall_for),
            lease_seconds: self.lease_seconds,
            readers: size(self.readers, 0, 1000),
            working_set: size(self.working_set, 1, 100_000),
            settle: seconds(self.settle),
            fault_at: seconds(self.fault_at),
            fault_for: seconds(self.fault_for),
            fault_cmd: self.fault_cmd,
            restore_cmd: self.restore_cmd,
            strict: self.strict,
            watchers: size(self.watchers, 0, 100),
            watch_every: self.watch_every.max(1),
            expect_failover: self.expect_failover,
            out: self.out,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn resolve(args: &[&str]) -> Result<Options, String> {
        let args = Args::try_parse_from(args).map_err(|e| e.to_string())?;
        args.resolve()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn the_drill_scripts_command_lines_parse() {
        let o = resolve(&[
            "drill",
            "frozen-worker-real",
            "--url",
            "http://127.0.0.1:18080",
            "--secret",
            "s",
            "--duration",
            "30",
            "--rate",
            "50",
            "--workers",
            "10",
            "--lease-seconds",
            "5",
            "--stall-every",
            "100",
            "--stall-for",
            "12",
            "--fault-cmd",
            "kill -9 1",
            "--strict",
            "--expect-failover",
            "--watchers",
            "6",
            "--out",
            "x.json",
        ])
        .expect("parses");
        assert_eq!(
            (o.name.as_str(), o.duration, o.stall_for),
            ("frozen-worker-real", Duration::from_secs(30), Duration::from_secs(12))
        );
        assert_eq!((o.lease_seconds, o.stall_every, o.watchers), (Some(5), 100, 6));
        assert!(o.strict && o.expect_failover && o.queue.starts_with("drill-"));
        assert_eq!(o.fault_cmd.as_deref(), Some("kill -9 1"));
    }

    #[test]
    fn values_are_brought_into_range_or_refused() {
        let o =
            resolve(&["drill", "d", "--secret", "s", "--duration", "5000", "--connections", "0", "--watch-every", "0"])
                .expect("parses");
        assert_eq!((o.duration, o.connections, o.watch_every), (Duration::from_secs(MAX_SECONDS), 1, 1));
        assert!(resolve(&["drill", "--secret", "s"]).is_err(), "the name is required");
        assert!(resolve(&["drill", "d", "--secret", "s", "--rate", "-1"]).is_err());
        assert!(resolve(&["drill", "d", "--secret", "s", "--url", "http://192.0.2.1:8080"]).is_err());
    }
}
