//! Prometheus metrics: one registry per application, rendered at `GET /metrics`.
//!
//! Series are named `taskwire_*`. Each application instance owns its registry (no global
//! state), so tests running several apps in one process do not mix their numbers.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Every series Taskwire exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Outbox rows not yet published to Kafka.
    pub outbox_backlog: IntGauge,
    /// Seconds from commit to Kafka acknowledgement, per message.
    pub outbox_publish_latency: Histogram,
    /// Outbox messages published.
    pub outbox_published: IntCounter,
    /// Outbox publish attempts that failed (retried later).
    pub outbox_publish_failures: IntCounter,
    /// Status events consumed from Kafka, by outcome (`routed`, `invalid`).
    pub status_events: IntCounterVec,
    /// Events dropped from a full subscriber buffer (the subscriber resyncs from the DB).
    pub subscriber_overflows: IntCounter,
    /// Subscriber resyncs from `task_events`.
    pub subscriber_resyncs: IntCounter,
    /// Idle subscribers that found events in the history that Kafka never delivered.
    pub subscriber_idle_catchups: IntCounter,
    /// Subscriptions ended because the subscriber could not keep up at all.
    pub subscribers_too_slow: IntCounter,
    /// Open WebSocket connections.
    pub ws_connections: IntGauge,
    /// Active subscriptions.
    pub subscriptions: IntGauge,
    /// WebSocket connections closed by the server, by close code.
    pub ws_closes: IntCounterVec,
    /// WebSocket clients dropped for not reading.
    pub ws_slow_clients_dropped: IntCounter,
    /// Tasks the matcher holds, ready to offer.
    pub dispatch_ready: IntGauge,
    /// Offers made by the matcher.
    pub dispatch_offers: IntCounter,
    /// Seconds from a task becoming `QUEUED` (its dispatch message) to its offer.
    pub dispatch_latency: Histogram,
    /// Dispatch messages consumed, by outcome (`queued`, `stale`, `duplicate`, `invalid`).
    pub dispatch_messages: IntCounterVec,
    /// Tasks moved by the reaper and scheduler, by reason (`promoted`, `offer_expired`,
    /// `lease_expired`, `deadline`, `worker_offline`).
    pub reaped: IntCounterVec,
    /// Workers marked `OFFLINE` after their TTL.
    pub workers_expired: IntCounter,
}

impl Metrics {
    /// A fresh registry with every series registered.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("taskwire".into()), None).unwrap_or_default();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|_| unreachable_metric(name));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric(name));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric(name));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let latency = Histogram::with_opts(
            HistogramOpts::new("outbox_publish_latency_seconds", "Seconds from commit to Kafka acknowledgement")
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
        )
        .unwrap_or_else(|_| unreachable_metric("outbox_publish_latency_seconds"));
        let _ = registry.register(Box::new(latency.clone()));
        let dispatch_latency = Histogram::with_opts(
            HistogramOpts::new("dispatch_latency_seconds", "Seconds from QUEUED to the offer").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .unwrap_or_else(|_| unreachable_metric("dispatch_latency_seconds"));
        let _ = registry.register(Box::new(dispatch_latency.clone()));
        Metrics {
            dispatch_ready: gauge("dispatch_ready", "Tasks the matcher holds, ready to offer"),
            dispatch_offers: counter("dispatch_offers_total", "Offers made by the matcher"),
            dispatch_latency,
            dispatch_messages: counter_vec("dispatch_messages_total", "Dispatch messages consumed", &["outcome"]),
            reaped: counter_vec("reaped_total", "Tasks moved by the reaper and scheduler", &["reason"]),
            workers_expired: counter("workers_expired_total", "Workers marked OFFLINE after their TTL"),
            outbox_backlog: gauge("outbox_backlog", "Outbox rows not yet published to Kafka"),
            outbox_publish_latency: latency,
            outbox_published: counter("outbox_published_total", "Outbox messages published to Kafka"),
            outbox_publish_failures: counter("outbox_publish_failures_total", "Outbox publish attempts that failed"),
            status_events: counter_vec("status_events_total", "Status events consumed from Kafka", &["outcome"]),
            subscriber_overflows: counter("subscriber_overflows_total", "Events dropped from full subscriber buffers"),
            subscriber_resyncs: counter("subscriber_resyncs_total", "Subscriber resyncs from task_events"),
            subscriber_idle_catchups: counter(
                "subscriber_idle_catchups_total",
                "Idle subscribers that caught up from the history on events Kafka did not deliver",
            ),
            subscribers_too_slow: counter("subscribers_too_slow_total", "Subscriptions ended for not keeping up"),
            ws_connections: gauge("ws_connections", "Open WebSocket connections"),
            subscriptions: gauge("subscriptions", "Active subscriptions"),
            ws_closes: counter_vec("ws_closes_total", "WebSocket connections closed by the server", &["code"]),
            ws_slow_clients_dropped: counter(
                "ws_slow_clients_dropped_total",
                "WebSocket clients dropped for not reading",
            ),
            registry,
        }
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

/// Metric names and help texts are constants; a failure to build one is a programming
/// error caught by the first test run.
fn unreachable_metric<T>(name: &str) -> T {
    panic!("invalid metric definition {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

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
