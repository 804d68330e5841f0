//! `drill`: one bounded fault drill against a running Taskwire (loopback only).
//!
//! ```text
//! cargo run --release -p taskwire-tools --bin drill -- <name> --url http://127.0.0.1:8080 --secret S \
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
//! acknowledged task with `taskUpdated` (`tools/src/watch.rs`), resuming after the last
//! `seq` received when their connection dies, and the verdict also needs:
//! - **seq**: no gap, no duplicate, nothing after the terminal event, in any watched task,
//!   and every watched task seen to its end;
//! - with `--expect-failover`: at least one worker moved to another instance, and (with
//!   watchers) at least one watched task was resumed — the fault must have hit someone.
//!
//! The JSON also holds a per-second timeline (creates and reads: successes, errors, p99)
//! and the fault window, which `plot` draws.
//!
//! `--help` lists every option.

mod args;
mod clients;
mod fault;
mod timeline;
mod verdict;
mod watchers;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use futures::FutureExt;
use taskwire_tools::load::{self, failover_list, mint};
use taskwire_worker::{Handler, Outcome, Worker, WorkerConfig};

use crate::{
    args::{Args, Options},
    clients::{Clients, run_load, settle},
    fault::inject,
    timeline::Timeline,
    verdict::Findings,
    watchers::start_watchers,
};

/// Reference workers started at once.
const WORKER_START_CONCURRENCY: usize = 16;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match Args::parse().resolve() {
        Ok(o) => match drill(o).await {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::from(1),
            Err(e) => {
                eprintln!("drill: {e}");
                std::process::ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("drill: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the drill; whether it passed.
async fn drill(o: Options) -> Result<bool, String> {
    let clients = Clients::new(&o)?;
    let working_set = clients.prepare(&o).await?;
    let workers = start_workers(&o, clients.lifetime).await?;
    let (feed, watchers) = start_watchers(&o, &clients.operator);
    let feed = Arc::new(feed);
    let total = o.duration + o.settle + Duration::from_secs(5);
    let timeline = Arc::new(Timeline::new(total.as_secs()));
    let fault = tokio::spawn(inject(o.clone(), timeline.clone()));

    let load = run_load(&o, &clients, working_set, &feed, &timeline).await;
    let window = fault.await.unwrap_or_default();
    // The creators are done: closing the feed lets each watcher end once its tasks have.
    let watch_overflow = feed.overflow.load(Ordering::Relaxed);
    drop(feed);
    eprintln!(
        "drill {}: load done at {:.1} s, {} creates acknowledged; settling",
        o.name,
        timeline.at(),
        load.acked.len()
    );

    let wanted: HashSet<&str> = load.acked.iter().map(String::as_str).collect();
    let (statuses, listing_errors) = settle(&o, &clients, &wanted).await;
    let settled_at = timeline.at();
    let watched = watchers.finish().await;
    let stopped = futures::future::join_all(workers.into_iter().map(Worker::stop)).await;

    let findings = Findings { load, window, statuses, listing_errors, settled_at, watched, watch_overflow, stopped };
    let (line, result, pass) = findings.report(&o, &timeline);
    println!("{line}");
    if let Some(path) = &o.out {
        std::fs::write(path, serde_json::to_string_pretty(&result).unwrap_or_default())
            .map_err(|e| format!("writing {path}: {e}"))?;
    }
    Ok(pass)
}

/// Starts the workers, worker i on instance i mod N with the others as its fail-over list:
/// each task takes `--work-ms`, and every `--stall-every`-th freezes its worker for
/// `--stall-for`. Fails when none starts.
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
            auto_accept: o.auto_accept,
        });
    }
    let (workers, failures) = load::start_workers(configs, handler, WORKER_START_CONCURRENCY).await;
    if workers.is_empty() {
        let reasons: Vec<String> = failures.iter().map(ToString::to_string).collect();
        return Err(format!("no worker started: {reasons:?}"));
    }
    Ok(workers)
}
