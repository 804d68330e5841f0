//! Prometheus metrics: one registry per application, rendered at `GET /metrics`.
//!
//! Series are named `taskwire_*`. Each application instance owns its registry (no global
//! state), so tests running several apps in one process do not mix their numbers.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};
use taskwire_store::StoreMetrics;

/// Every series Taskwire exports. A shared handle: cloning it (once per request, per queued
/// WebSocket message) is one reference count, not one per series.
#[derive(Debug, Clone)]
pub struct Metrics(std::sync::Arc<Series>);

impl std::ops::Deref for Metrics {
    type Target = Series;

    fn deref(&self) -> &Series {
        &self.0
    }
}

/// The series behind a [`Metrics`] handle.
#[derive(Debug)]
pub struct Series {
    registry: Registry,
    /// Outbox rows not yet published to Kafka.
    pub outbox_backlog: IntGauge,
    /// Seconds from commit to Kafka acknowledgement, per message.
    pub outbox_publish_latency: Histogram,
    /// Outbox messages published.
    pub outbox_published: IntCounter,
    /// Outbox publish attempts that failed (retried later).
    pub outbox_publish_failures: IntCounter,
    /// Kafka producers replaced after a fatal error (e.g. fenced).
    pub outbox_producer_restarts: IntCounter,
    /// Status events consumed from Kafka, by outcome (`routed`, `invalid`).
    pub status_events: IntCounterVec,
    /// Events dropped from a full subscriber buffer (the subscriber resyncs from the DB).
    pub subscriber_overflows: IntCounter,
    /// Subscriber resyncs from `task_events`.
    pub subscriber_resyncs: IntCounter,
    /// Status events Kafka did not deliver in time, routed from the history by the sweep.
    pub live_events_recovered: IntCounter,
    /// Status events the hub had routed already (the Kafka copy of an event this
    /// process published at commit, a redelivery), dropped instead of routed again.
    pub live_duplicates: IntCounter,
    /// Subscriptions ended because the subscriber could not keep up at all.
    pub subscribers_too_slow: IntCounter,
    /// Open WebSocket connections.
    pub ws_connections: IntGauge,
    /// Open GraphQL event streams (`graphql-sse`).
    pub sse_streams: IntGauge,
    /// Active subscriptions.
    pub subscriptions: IntGauge,
    /// Offers delivered on `assignments` streams, by where the offer was read: `commit`
    /// (the task this process just committed, held in L1) or `database`.
    pub assignments_delivered: IntCounterVec,
    /// WebSocket connections closed by the server, by close code.
    pub ws_closes: IntCounterVec,
    /// WebSocket clients dropped for not reading.
    pub ws_slow_clients_dropped: IntCounter,
    /// What the WebSocket limits refused, by reason: `subprotocol` (upgrade without a
    /// supported subprotocol, HTTP 400), `connections` (the process cap, HTTP 503),
    /// `subject_connections` (close 4429), `message_too_large` (close 1009),
    /// `id_too_long` (close 4400), `connection_bytes` and `subscriptions` (an `error`
    /// for that subscribe).
    pub ws_refusals: IntCounterVec,
    /// `taskUpdated` streams ended because the caller may no longer read the task.
    pub subscriptions_revoked: IntCounter,
    /// Bytes of subscription results queued for WebSocket writers, over all connections
    /// (each connection holds at most `TASKWIRE_WS_MAX_OUTBOUND_BYTES`).
    pub ws_outbound_bytes: IntGauge,
    /// Tasks the matcher holds, ready to offer.
    pub dispatch_ready: IntGauge,
    /// Partitions of the dispatch topic this process's dispatcher holds in the group
    /// (0 until it has joined; absent in a process without the dispatcher role).
    pub dispatch_partitions: IntGauge,
    /// Offers made by the matcher.
    pub dispatch_offers: IntCounter,
    /// Matcher rounds that read workers and queue settings to plan offers (one per batch
    /// of announcements, wake-up or tick while tasks are ready).
    pub dispatch_rounds: IntCounter,
    /// Seconds from a task becoming `QUEUED` (its dispatch message) to its offer.
    pub dispatch_latency: Histogram,
    /// Dispatch messages consumed, by outcome (`queued`, `stale`, `duplicate`, `invalid`).
    pub dispatch_messages: IntCounterVec,
    /// Tasks that became `QUEUED` in this process, handed to its matcher at commit, by
    /// outcome (`fed`; `dropped` when the matcher's local feed was full and the task was
    /// left to its Kafka announcement).
    pub dispatch_local: IntCounterVec,
    /// Tasks moved by the reaper and scheduler, by reason (`promoted`, `offer_expired`,
    /// `lease_expired`, `deadline`, `worker_offline`).
    pub reaped: IntCounterVec,
    /// Workers marked `OFFLINE` after their TTL.
    pub workers_expired: IntCounter,
    /// Tasks a dispatcher with idle workers took over from the database after they waited
    /// for a worker elsewhere.
    pub dispatch_pulled: IntCounter,
    /// GraphQL operations, by operation name, type and result code (`OK` when no error).
    pub operations: IntCounterVec,
    /// Seconds per GraphQL operation, by operation name and type.
    pub operation_duration: HistogramVec,
    /// Task cache lookups that found the task, by level (`l1`, `l2`).
    pub cache_hits: IntCounterVec,
    /// Task cache lookups that missed, by level (`l1`, `l2`).
    pub cache_misses: IntCounterVec,
    /// Batched task loads that reached the database (one per single-flight batch).
    pub cache_db_loads: IntCounter,
    /// Cache writes refused because the cache already held a newer version.
    pub cache_stale_writes: IntCounter,
    /// Whether the Redis circuit breaker is open (1) or closed (0).
    pub redis_breaker_open: IntGauge,
    /// Redis commands that failed or timed out.
    pub redis_errors: IntCounter,
    /// Operations refused by the rate limiter, by bucket (`operations`, `mutations`).
    pub rate_limited: IntCounterVec,
    /// Operations rejected by the query limits, by code.
    pub query_limit_rejections: IntCounterVec,
    /// Connections closed at accept, by reason (`per_ip`: the address had
    /// `TASKWIRE_MAX_CONNECTIONS_PER_IP` open).
    pub http_connections_refused: IntCounterVec,
    /// Requests and connections cut off by a read or idle time limit, by phase
    /// (`headers`, `body`, `idle`).
    pub http_timeouts: IntCounterVec,
    /// Automatic persisted queries, by outcome (`hit`, `miss`, `registered`).
    pub persisted_queries: IntCounterVec,
    /// Database pool connections, by state (`in_use`, `idle`), sampled when rendered.
    pub db_pool_connections: IntGaugeVec,
    /// Kafka consumer lag in messages, by consumer (`status`, `dispatch`).
    pub consumer_lag: IntGaugeVec,
    /// Tasks by status, sampled periodically from the database (unfinished and `DEAD`).
    pub tasks_by_status: IntGaugeVec,
    /// Finished tasks deleted by retention, by the status they had.
    pub tasks_purged: IntCounterVec,
    /// The store's series (lock conflicts, queue limits, SQLite's write gate and WAL).
    pub store: StoreMetrics,
    operation_names: std::sync::RwLock<std::collections::HashSet<String>>,
}

/// Distinct operation names kept as label values; later names are reported as `other`,
/// so a client cannot grow the registry without bound.
const MAX_OPERATION_NAMES: usize = 200;

impl Metrics {
    /// A fresh registry with every series registered.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("taskwire".into()), None).unwrap_or_default();
        let gauge = |name: &str, help: &str| register(&registry, name, IntGauge::new(name, help));
        let counter = |name: &str, help: &str| register(&registry, name, IntCounter::new(name, help));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, name, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, name, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            register(&registry, name, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())))
        };
        let latency = histogram(
            "outbox_publish_latency_seconds",
            "Seconds from commit to Kafka acknowledgement",
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
        );
        let dispatch_latency = histogram(
            "dispatch_latency_seconds",
            "Seconds from QUEUED to the offer",
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
        );
        let operation_duration = register(
            &registry,
            "graphql_operation_duration_seconds",
            HistogramVec::new(
                HistogramOpts::new("graphql_operation_duration_seconds", "Seconds per GraphQL operation").buckets(
                    vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                ),
                &["operation", "type"],
            ),
        );
        Metrics(std::sync::Arc::new(Series {
            operations: counter_vec(
                "graphql_operations_total",
                "GraphQL operations by name, type and result code",
                &["operation", "type", "code"],
            ),
            operation_duration,
            cache_hits: counter_vec("cache_hits_total", "Task cache hits by level", &["level"]),
            cache_misses: counter_vec("cache_misses_total", "Task cache misses by level", &["level"]),
            cache_db_loads: counter("cache_db_loads_total", "Batched task loads that reached the database"),
            cache_stale_writes: counter(
                "cache_stale_writes_total",
                "Cache writes refused because a newer version was cached",
            ),
            redis_breaker_open: gauge("redis_breaker_open", "1 while the Redis circuit breaker is open"),
            redis_errors: counter("redis_errors_total", "Redis commands that failed or timed out"),
            rate_limited: counter_vec("rate_limited_total", "Operations refused by the rate limiter", &["bucket"]),
            query_limit_rejections: counter_vec(
                "query_limit_rejections_total",
                "Operations rejected by the query limits",
                &["code"],
            ),
            http_connections_refused: counter_vec(
                "http_connections_refused_total",
                "Connections closed at accept, by reason",
                &["reason"],
            ),
            http_timeouts: counter_vec(
                "http_timeouts_total",
                "Requests and connections cut off by a read or idle time limit, by phase",
                &["phase"],
            ),
            persisted_queries: counter_vec("persisted_queries_total", "Automatic persisted queries", &["outcome"]),
            db_pool_connections: gauge_vec("db_pool_connections", "Database pool connections", &["state"]),
            consumer_lag: gauge_vec("kafka_consumer_lag", "Kafka consumer lag in messages", &["consumer"]),
            tasks_by_status: gauge_vec("tasks", "Unfinished and dead tasks by status (sampled)", &["status"]),
            tasks_purged: counter_vec(
                "tasks_purged_total",
                "Finished tasks deleted with their history by retention, by status",
                &["status"],
            ),
            store: StoreMetrics::register(&registry),
            operation_names: Default::default(),
            dispatch_ready: gauge("dispatch_ready", "Tasks the matcher holds, ready to offer"),
            dispatch_partitions: gauge(
                "dispatch_partitions",
                "Partitions of the dispatch topic this process's dispatcher holds in the group",
            ),
            dispatch_offers: counter("dispatch_offers_total", "Offers made by the matcher"),
            dispatch_rounds: counter(
                "dispatch_rounds_total",
                "Matcher rounds that read workers and queue settings to plan offers",
            ),
            dispatch_latency,
            dispatch_messages: counter_vec("dispatch_messages_total", "Dispatch messages consumed", &["outcome"]),
            dispatch_local: counter_vec(
                "dispatch_local_total",
                "Tasks queued in this process handed to its matcher at commit",
                &["outcome"],
            ),
            reaped: counter_vec("reaped_total", "Tasks moved by the reaper and scheduler", &["reason"]),
            workers_expired: counter("workers_expired_total", "Workers marked OFFLINE after their TTL"),
            dispatch_pulled: counter(
                "dispatch_pulled_total",
                "Tasks a dispatcher with idle workers took over from the database",
            ),
            outbox_backlog: gauge("outbox_backlog", "Outbox rows not yet published to Kafka"),
            outbox_publish_latency: latency,
            outbox_published: counter("outbox_published_total", "Outbox messages published to Kafka"),
            outbox_publish_failures: counter("outbox_publish_failures_total", "Outbox publish attempts that failed"),
            outbox_producer_restarts: counter(
                "outbox_producer_restarts_total",
                "Kafka producers the relay replaced after a fatal error (fenced, failed idempotence)",
            ),
            status_events: counter_vec("status_events_total", "Status events consumed from Kafka", &["outcome"]),
            subscriber_overflows: counter("subscriber_overflows_total", "Events dropped from full subscriber buffers"),
            subscriber_resyncs: counter("subscriber_resyncs_total", "Subscriber resyncs from task_events"),
            live_duplicates: counter(
                "live_duplicates_total",
                "Status events the live hub had routed already, dropped instead of routed again",
            ),
            live_events_recovered: counter(
                "live_events_recovered_total",
                "Status events Kafka did not deliver within the grace time, routed from task_events",
            ),
            subscribers_too_slow: counter("subscribers_too_slow_total", "Subscriptions ended for not keeping up"),
            ws_connections: gauge("ws_connections", "Open WebSocket connections"),
            sse_streams: gauge("sse_streams", "Open GraphQL event streams (graphql-sse)"),
            subscriptions: gauge("subscriptions", "Active subscriptions"),
            assignments_delivered: counter_vec(
                "assignments_delivered_total",
                "Offers delivered on assignments streams, by where they were read",
                &["source"],
            ),
            ws_closes: counter_vec("ws_closes_total", "WebSocket connections closed by the server", &["code"]),
            ws_slow_clients_dropped: counter(
                "ws_slow_clients_dropped_total",
                "WebSocket clients dropped for not reading",
            ),
            ws_refusals: counter_vec("ws_refusals_total", "What the WebSocket limits refused, by reason", &["reason"]),
            subscriptions_revoked: counter(
                "subscriptions_revoked_total",
                "taskUpdated streams ended because the caller may no longer read the task",
            ),
            ws_outbound_bytes: gauge("ws_outbound_bytes", "Bytes of subscription results queued for WebSocket writers"),
            registry,
        }))
    }

    /// The label value for a client-chosen operation name: the name while fewer than
    /// [`MAX_OPERATION_NAMES`] distinct ones were seen, `other` after that, `-` for none.
    pub fn operation_label(&self, name: Option<&str>) -> String {
        let Some(name) = name.filter(|n| !n.is_empty()) else { return "-".into() };
        // Known names take only the shared lock: this runs for every operation.
        if self.operation_names.read().is_ok_and(|names| names.contains(name)) {
            return name.to_owned();
        }
        let Ok(mut names) = self.operation_names.write() else { return "other".into() };
        if names.contains(name) {
            return name.to_owned();
        }
        if names.len() < MAX_OPERATION_NAMES && name.len() <= 64 {
            names.insert(name.to_owned());
            return name.to_owned();
        }
        "other".into()
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers a freshly built series and returns it.
///
/// Metric names and help texts are constants; a failure to build one is a programming
/// error caught by the first test run.
fn register<C: Collector + Clone + 'static>(registry: &Registry, name: &str, built: prometheus::Result<C>) -> C {
    let collector = built.unwrap_or_else(|_| unreachable_metric(name));
    let _ = registry.register(Box::new(collector.clone()));
    collector
}

/// Panics naming the metric that could not be built (see [`register`]).
fn unreachable_metric<T>(name: &str) -> T {
    panic!("invalid metric definition {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_are_bounded_label_values() {
        let metrics = Metrics::new();
        assert_eq!(metrics.operation_label(None), "-");
        assert_eq!(metrics.operation_label(Some("GetTask")), "GetTask");
        for i in 0..MAX_OPERATION_NAMES {
            metrics.operation_label(Some(&format!("op{i}")));
        }
        assert_eq!(metrics.operation_label(Some("GetTask")), "GetTask", "known names stay");
        assert_eq!(metrics.operation_label(Some("brand_new")), "other", "new names past the bound are folded");
    }

    #[test]
    fn every_series_renders_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.outbox_published.inc();
        metrics.status_events.with_label_values(&["routed"]).inc();
        metrics.ws_closes.with_label_values(&["4408"]).inc();
        let text = metrics.render();
        for series in [
            "taskwire_outbox_backlog",
            "taskwire_outbox_publish_latency_seconds_bucket",
            "taskwire_outbox_published_total 1",
            "taskwire_status_events_total{outcome=\"routed\"} 1",
            "taskwire_ws_connections",
            "taskwire_ws_closes_total{code=\"4408\"} 1",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }
}
