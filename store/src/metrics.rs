//! The store's Prometheus series, registered into the application's registry (the
//! application owns the registry and serves `/metrics`; the store only counts).

use prometheus::{CounterVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, core::Collector};

/// Every series the store updates. Cheap to clone (the series are shared handles).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// MySQL deadlocks and lock-wait time-outs met by the store's writers, by path
    /// (`offer`, `transition`, `sweep`, `worker`, `purge`) and outcome (`retried`; `exhausted`
    /// when every retry lost too and the caller got a conflict).
    pub db_lock_conflicts: IntCounterVec,
    /// Write transactions, by writer (`create`, `transition`, `together`, `offer`, `sweep`,
    /// `worker`, `admin`, `relay`, `purge`), on either backend: counted when a writer takes its turn to write
    /// (`Store::write_lock`), so a transaction run again under the same turn (after a lost
    /// optimistic race, or a coalesced batch redone transition by transition) counts
    /// once; those are rare. Against the tasks created it tells how well writes are
    /// batched: transactions per task is what a task costs the database most
    /// (docs/BENCHMARKS.md).
    pub db_writes: IntCounterVec,
    /// Offers a queue's global limits held back in the offer transaction, by limit
    /// (`concurrency`, `rate`).
    pub dispatch_queue_limited: IntCounterVec,
    /// Creates that met another transaction's insert of the same `(creator, idempotency
    /// key)` between reading the keys and inserting (a unique-index violation), by
    /// outcome: `retried` (run again, which finds the other task), `exhausted`.
    pub idempotency_races: IntCounterVec,
    /// Task changes this process committed, by the status the task entered (a creation
    /// counts as entering `QUEUED` or `SCHEDULED`). Summed over the processes, `rate()` of
    /// `SUCCEEDED` is the throughput and of `DEAD` the dead-letter rate, without counting
    /// rows in the database.
    pub task_transitions: IntCounterVec,
    /// SQLite's write gate, by writer (absent on MySQL).
    pub write_gate: WriteGateMetrics,
    /// SQLite WAL checkpoints (see [`crate::run_checkpointer`]), by outcome (`complete`,
    /// `partial`, `failed`).
    pub wal_checkpoints: IntCounterVec,
    /// Seconds per SQLite WAL checkpoint.
    pub wal_checkpoint_duration: Histogram,
    /// Frames in SQLite's WAL when it was last checkpointed.
    pub wal_frames: IntGauge,
}

/// The use of SQLite's write gate (the mutex serialising write transactions), by
/// `writer`: `create`, `transition`, `together`, `offer`, `sweep`, `worker`, `admin`,
/// `relay`, `purge`.
#[derive(Debug, Clone)]
pub struct WriteGateMetrics {
    /// Times the gate was taken.
    pub acquired: IntCounterVec,
    /// Seconds spent waiting for the gate.
    pub wait: CounterVec,
    /// Seconds the gate was held; `rate()` of the sum over writers is the fraction of time
    /// SQLite's one writer is busy.
    pub held: CounterVec,
}

impl StoreMetrics {
    /// Builds every series and registers it in `registry` (whose namespace, if any,
    /// prefixes the names).
    pub fn register(registry: &Registry) -> StoreMetrics {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(registry, name, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let seconds_vec = |name: &str, help: &str, labels: &[&str]| {
            register(registry, name, CounterVec::new(Opts::new(name, help), labels))
        };
        let metrics = StoreMetrics {
            db_lock_conflicts: counter_vec(
                "db_lock_conflicts_total",
                "MySQL deadlocks and lock-wait time-outs met by the store's writers",
                &["path", "outcome"],
            ),
            db_writes: counter_vec(
                "db_writes_total",
                "Write transactions by writer (a rerun in the same turn counts once)",
                &["writer"],
            ),
            dispatch_queue_limited: counter_vec(
                "dispatch_queue_limited_total",
                "Offers held back by a queue's global limits in the offer transaction",
                &["limit"],
            ),
            idempotency_races: counter_vec(
                "idempotency_races_total",
                "Creates that raced another insert of the same idempotency key, by outcome",
                &["outcome"],
            ),
            task_transitions: counter_vec(
                "task_transitions_total",
                "Task changes committed by this process, by the status entered",
                &["status"],
            ),
            write_gate: WriteGateMetrics {
                acquired: counter_vec(
                    "sqlite_write_gate_acquired_total",
                    "Times SQLite's write gate was taken, by writer",
                    &["writer"],
                ),
                wait: seconds_vec(
                    "sqlite_write_gate_wait_seconds_total",
                    "Seconds spent waiting for SQLite's write gate, by writer",
                    &["writer"],
                ),
                held: seconds_vec(
                    "sqlite_write_gate_held_seconds_total",
                    "Seconds SQLite's write gate was held, by writer",
                    &["writer"],
                ),
            },
            wal_checkpoints: counter_vec(
                "sqlite_wal_checkpoints_total",
                "SQLite WAL checkpoints by outcome (complete, partial, failed)",
                &["outcome"],
            ),
            wal_checkpoint_duration: register(
                registry,
                "sqlite_wal_checkpoint_duration_seconds",
                Histogram::with_opts(
                    HistogramOpts::new("sqlite_wal_checkpoint_duration_seconds", "Seconds per SQLite WAL checkpoint")
                        .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
                ),
            ),
            wal_frames: register(
                registry,
                "sqlite_wal_frames",
                IntGauge::new("sqlite_wal_frames", "Frames in SQLite's WAL at its last checkpoint"),
            ),
        };
        // Every path and outcome from the start, at 0: "no conflict yet" reads as 0 on a
        // dashboard and in the cluster benchmark, not as a missing series.
        for path in crate::contention::ConflictPath::ALL {
            for outcome in crate::contention::OUTCOMES {
                metrics.db_lock_conflicts.with_label_values(&[path.label(), outcome]);
            }
        }
        for writer in crate::gate::Writer::ALL {
            metrics.db_writes.with_label_values(&[writer.label()]);
        }
        for status in taskwire_domain::TaskStatus::ALL {
            metrics.task_transitions.with_label_values(&[status.as_str()]);
        }
        metrics
    }
}

/// The store's series in a registry of their own, named as the application names them.
#[cfg(test)]
pub(crate) struct TestMetrics {
    registry: Registry,
    pub(crate) store: StoreMetrics,
}

#[cfg(test)]
impl TestMetrics {
    pub(crate) fn new() -> TestMetrics {
        let registry = Registry::new_custom(Some("taskwire".into()), None).expect("a valid prefix");
        let store = StoreMetrics::register(&registry);
        TestMetrics { registry, store }
    }

    /// The Prometheus text exposition of the series.
    pub(crate) fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buffer = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("encodes");
        String::from_utf8(buffer).expect("UTF-8")
    }
}

/// Registers a freshly built series and returns it.
///
/// Metric names and help texts are constants; a failure to build one is a programming
/// error caught by the first test run, hence the panic.
fn register<C: Collector + Clone + 'static>(registry: &Registry, name: &str, built: prometheus::Result<C>) -> C {
    match built {
        Ok(collector) => {
            let _ = registry.register(Box::new(collector.clone()));
            collector
        }
        Err(_) => panic!("invalid metric definition {name}"),
    }
}
