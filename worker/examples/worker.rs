//! `worker`: a command-line Taskwire worker built on `taskwire-worker`.
//!
//! ```text
//! TOKEN=$(cargo run -q --release -- token --sub worker-1 --role worker)
//! cargo run -p taskwire-worker --example worker -- --url http://127.0.0.1:8080 --token "$TOKEN" --queue q --capacity 4
//! ```
//!
//! It completes every task with `{"ok":true}`, or fails a fraction of them (`--fail-rate
//! 0.1`, retryable), and prints one line per task. Ctrl-C stops it gracefully (running tasks
//! finish and report); a second Ctrl-C exits at once. `--help` lists the options.

use std::{sync::Arc, time::Duration};

use clap::Parser;
use futures::FutureExt;
use serde_json::json;
use taskwire_worker::{Handler, Outcome, TaskRecord, Worker, WorkerConfig};

/// An example Taskwire worker: completes every task (or fails a fraction of them).
#[derive(Parser)]
struct Args {
    /// Base URL of the server; several comma-separated instances are a fail-over list.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The worker's JWT (role `worker`; its `sub` is the worker id).
    #[arg(long, env = "TASKWIRE_TOKEN", hide_env_values = true)]
    token: String,
    /// A queue to serve (repeatable, or comma-separated).
    #[arg(long = "queue", value_name = "NAME", required = true, value_delimiter = ',')]
    queues: Vec<String>,
    /// Tasks handled at once.
    #[arg(long, default_value_t = 4)]
    capacity: u32,
    /// Display name (default `worker-<pid>`).
    #[arg(long)]
    name: Option<String>,
    /// Fraction of tasks failed (retryable), 0–1.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    fail_rate: f64,
    /// Heartbeat period, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Register with `autoAccept`: offers arrive started, no `acceptTask` round trip.
    #[arg(long)]
    auto_accept: bool,
}

fn fraction(value: &str) -> Result<f64, String> {
    let rate: f64 = value.parse().map_err(|_| format!("not a number: {value}"))?;
    if (0.0..=1.0).contains(&rate) { Ok(rate) } else { Err(format!("must be between 0 and 1: {value}")) }
}

impl Args {
    fn config(&self) -> WorkerConfig {
        WorkerConfig {
            url: self.url.clone(),
            token: self.token.clone(),
            name: self.name.clone().unwrap_or_else(|| format!("worker-{}", std::process::id())),
            queues: self.queues.iter().filter(|q| !q.is_empty()).cloned().collect(),
            capacity: self.capacity,
            heartbeat_every: Duration::from_millis(self.heartbeat_ms),
            auto_accept: self.auto_accept,
        }
    }
}

/// Completes every task, or fails it (retryable) with probability `fail_rate`.
fn handler(fail_rate: f64) -> Handler {
    Arc::new(move |_assignment| {
        async move {
            if fail_rate > 0.0 && rand::random::<f64>() < fail_rate {
                Outcome::Fail { error: "simulated failure".to_owned(), retryable: true }
            } else {
                Outcome::Complete(Some(json!({ "ok": true })))
            }
        }
        .boxed()
    })
}

/// One line for a finished offer.
fn describe(record: &TaskRecord) -> String {
    let at = record.finished_at.unwrap_or(record.offered_at).utc.format("%H:%M:%S%.3f");
    let what = match (&record.accept, &record.outcome, &record.answer) {
        (Some(Err(e)), _, _) => format!("accept failed: {e}"),
        (None, _, _) => "offer ignored".to_owned(),
        (Some(Ok(())), Some(outcome), answer) => {
            let sent = match outcome {
                Outcome::Complete(_) | Outcome::Stall(_) => "completed".to_owned(),
                Outcome::Fail { error, .. } => format!("failed ({error})"),
                Outcome::Release => "released".to_owned(),
                Outcome::Ignore => "ignored".to_owned(),
            };
            match answer {
                Some(Err(e)) => format!("{sent}, server said {e}"),
                _ => sent,
            }
        }
        (Some(Ok(())), None, _) => "accepted".to_owned(),
    };
    let took = record.finished_at.map(|f| f.instant.duration_since(record.offered_at.instant)).unwrap_or_default();
    format!(
        "{at} task {} queue={} kind={} attempts={} {what} in {} ms",
        record.task_id,
        record.queue,
        record.kind,
        record.attempts,
        took.as_millis()
    )
}

fn print_log(worker: &Worker) {
    for record in worker.take_log() {
        println!("{}", describe(&record));
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = args.config();
    let (name, queues) = (config.name.clone(), config.queues.join(","));
    let worker = match Worker::start(config, handler(args.fail_rate)).await {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("worker failed to start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("worker {} ({name}) serving {queues}; Ctrl-C to stop", worker.id());

    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = ticks.tick() => print_log(&worker),
        }
    }
    eprintln!("stopping: running tasks finish and report (Ctrl-C again to quit at once)");
    print_log(&worker);
    tokio::select! {
        stopped = worker.stop() => {
            for record in &stopped.log {
                println!("{}", describe(record));
            }
            eprintln!("stopped: {:?}", stopped.stats);
        }
        // Dropping the stop future drops the worker: everything is aborted.
        _ = tokio::signal::ctrl_c() => eprintln!("quitting without waiting"),
    }
    std::process::ExitCode::SUCCESS
}
