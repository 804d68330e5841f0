//! # taskwire-worker
//!
//! The Rust worker SDK for Taskwire: a process that runs tasks for one or more queues.
//!
//! A worker registers itself over HTTP (`registerWorker`; its id is its token's `sub`, and
//! the token needs the `worker` role), opens the `assignments` subscription over a
//! `graphql-transport-ws` WebSocket, and for every offer it receives:
//!
//! 1. accepts it with `acceptTask(taskId, leaseToken)` (`ASSIGNED` → `RUNNING`), unless
//!    it registered with [`WorkerConfig::auto_accept`], when the offer arrives `RUNNING`;
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
//! [`WorkerConfig::capacity`] handlers run at a time; an offer beyond that is left to lapse
//! (or, started by the server, handed back with `releaseTask`). A handler's slot is free
//! as soon as it returns, while its report is still on its way (the server, freeing the
//! slot at the report's commit, may offer the next task before the answer arrives). At
//! most as many reports as handlers wait for their answers that way, so at most twice
//! `capacity` tasks are in hand (`WorkerStats::in_flight`).
//! [`Worker::stop`] drains: no new offers, running tasks finish and report.
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//!
//! use futures::FutureExt;
//! use serde_json::json;
//! use taskwire_worker::{Handler, Outcome, Worker, WorkerConfig};
//!
//! # async fn run(token: String) -> Result<(), taskwire_worker::Error> {
//! let config = WorkerConfig {
//!     url: "http://127.0.0.1:8080".into(),
//!     token, // a JWT with `sub` = the worker id and the `worker` role
//!     name: "resizer-1".into(),
//!     queues: vec!["images".into()],
//!     capacity: 4,
//!     heartbeat_every: Duration::from_secs(5),
//!     auto_accept: true, // offers arrive RUNNING: no acceptTask round trip
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
//! `examples/worker.rs` is a complete command-line worker built this way.
//!
//! Writing the handler:
//! - the handler runs **after** the task was accepted, so do the work inside it and
//!   return [`Outcome::Complete`], [`Outcome::Fail`] or [`Outcome::Release`];
//! - long work is fine: heartbeats keep the lease alive while the handler runs;
//! - to leave an offer unaccepted (let it lapse back to the queue), decide before
//!   acceptance with an [`OfferFilter`] passed to [`Worker::start_with_filter`].
//!
//! Errors: [`Worker::start`] fails with an [`Error`] when no URL lets it register and
//! subscribe; once started, the worker retries on its own. What the server answered to
//! each task mutation is kept in the [`TaskRecord`]s of [`Worker::log`], as stable codes
//! ([`CallError::code`]).
//!
//! Fault simulation, for testing a deployment: [`Outcome::Stall`] (a hung process: the
//! whole worker stops heartbeating), [`Worker::disconnect_for`] (a network partition),
//! [`Worker::kill`] (a crash). What happened is observable through [`Worker::stats`] and
//! [`Worker::log`].
#![warn(missing_docs)]

mod config;
mod error;
mod offer;
mod report;
mod session;
mod shared;
pub mod transport;
mod worker;

pub use crate::{
    config::WorkerConfig,
    error::{CallError, Error},
    offer::{Assignment, Handler, OfferFilter, Outcome},
    report::{Answer, Stamp, Stopped, TaskRecord, WorkerStats},
    worker::Worker,
};
