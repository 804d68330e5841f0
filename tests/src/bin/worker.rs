//! `worker`: an example Taskwire worker built on [`taskwire_tests::worker`].
//!
//! ```text
//! TOKEN=$(cargo run -q --release -- token --sub worker-1 --role worker)
//! cargo run -p taskwire-tests --bin worker -- --url http://127.0.0.1:8080 --token "$TOKEN" --queue q --capacity 4
//! ```
//!
//! It completes every task with `{"ok":true}`, or fails a fraction of them (`--fail-rate
//! 0.1`, retryable), and prints one line per task. Ctrl-C stops it gracefully (running tasks
//! finish and report); a second Ctrl-C exits at once.
//!
//! Options: `--url` (default `http://127.0.0.1:8080`; several comma-separated instances are a
//! fail-over list), `--token` (default `$TASKWIRE_TOKEN`),
//! `--queue` (repeatable, or comma-separated; required), `--capacity` (default 4), `--name`
//! (default `worker-<pid>`), `--fail-rate` (0–1, default 0), `--heartbeat-ms` (default 5000).

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use serde_json::json;
use taskwire_tests::worker::{Handler, Outcome, TaskRecord, Worker, WorkerConfig};

const USAGE: &str = "usage: worker --token JWT --queue NAME [--queue NAME…] [--url http://127.0.0.1:8080] \
                     [--capacity 4] [--name NAME] [--fail-rate 0.0] [--heartbeat-ms 5000]";

struct Options {
    config: WorkerConfig,
    fail_rate: f64,
}

fn parse_args() -> Result<Options, String> {
    let mut config = WorkerConfig {
        url: "http://127.0.0.1:8080".to_owned(),
        token: std::env::var("TASKWIRE_TOKEN").unwrap_or_default(),
        name: format!("worker-{}", std::process::id()),
        queues: Vec::new(),
        capacity: 4,
        heartbeat_every: Duration::from_secs(5),
    };
    let mut fail_rate = 0.0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = args.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--url" => config.url = value,
            "--token" => config.token = value,
            "--name" => config.name = value,
            "--queue" => config.queues.extend(value.split(',').filter(|q| !q.is_empty()).map(str::to_owned)),
            "--capacity" => {
                config.capacity = value.parse().map_err(|_| format!("--capacity: not a number: {value}"))?
            }
            "--heartbeat-ms" => {
                let ms = value.parse().map_err(|_| format!("--heartbeat-ms: not a number: {value}"))?;
                config.heartbeat_every = Duration::from_millis(ms);
            }
            "--fail-rate" => {
                fail_rate = value.parse().map_err(|_| format!("--fail-rate: not a number: {value}"))?;
                if !(0.0..=1.0).contains(&fail_rate) {
                    return Err(format!("--fail-rate must be between 0 and 1: {value}"));
                }
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if config.token.is_empty() {
        return Err(format!("--token (or TASKWIRE_TOKEN) is required\n{USAGE}"));
    }
    if config.queues.is_empty() {
        return Err(format!("at least one --queue is required\n{USAGE}"));
    }
    Ok(Options { config, fail_rate })
}

/// One line for a finished offer.
fn describe(record: &TaskRecord) -> String {
    let at = record.finished_at.unwrap_or(record.offered_at).utc.format("%H:%M:%S%.3f");
    let what = match (&record.accept, &record.outcome, &record.answer) {
        (Some(Err(code)), _, _) => format!("accept failed: {code}"),
        (None, _, _) => "offer ignored".to_owned(),
        (Some(Ok(())), Some(outcome), answer) => {
            let sent = match outcome {
                Outcome::Complete(_) | Outcome::Stall(_) => "completed".to_owned(),
                Outcome::Fail { error, .. } => format!("failed ({error})"),
                Outcome::Release => "released".to_owned(),
                Outcome::Ignore => "ignored".to_owned(),
            };
            match answer {
                Some(Err(code)) => format!("{sent}, server said {code}"),
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
async fn main() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let fail_rate = options.fail_rate;
    let handler: Handler = Arc::new(move |_assignment| {
        async move {
            if fail_rate > 0.0 && rand::random::<f64>() < fail_rate {
                Outcome::Fail { error: "simulated failure".to_owned(), retryable: true }
            } else {
                Outcome::Complete(Some(json!({ "ok": true })))
            }
        }
        .boxed()
    });
    let name = options.config.name.clone();
    let queues = options.config.queues.join(",");
    let worker = match Worker::start(options.config, handler).await {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("worker failed to start: {e}");
            std::process::exit(1);
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
}
