//! Logs and traces: `tracing` with levels from `RUST_LOG` and a pretty or JSON format, spans
//! exported over OTLP/HTTP when a collector is configured, and the W3C trace context that
//! ties a request to the Kafka messages it causes (README, Operations (Logs and traces)).
//!
//! Without a collector the trace-context helpers return at once: no parsing, no allocation,
//! so the hot paths (every consumed and published message) pay only for their spans. This
//! module never blocks the async runtime by itself: the exporter runs on the SDK's own
//! thread, and only the guard's explicit flush and shutdown wait for it.

use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicBool, Ordering},
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// Log output format (`TASKWIRE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable (default).
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Default filter when `RUST_LOG` is unset. It also decides which spans are exported.
const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn";
/// The `service.name` of exported spans.
pub(crate) const SERVICE_NAME: &str = "taskwire";
/// The header (HTTP and Kafka) carrying the W3C trace context.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// Path of the OTLP/HTTP traces endpoint, appended to a collector's base URL.
const TRACES_PATH: &str = "/v1/traces";

/// Whether the global subscriber has been installed by [`init`] (later calls are no-ops).
static INSTALLED: Mutex<bool> = Mutex::new(false);
/// Whether the global subscriber exports spans: when not, trace-context work is skipped.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Owns the span exporter of the process, if [`init`] installed one: flushes and shuts it
/// down when dropped (or on [`TelemetryGuard::shutdown`]), so the last spans leave before
/// the process does. Inert when export is off or another call installed the subscriber.
///
/// Flushing waits for the collector (up to the exporter's timeout): from async code, do
/// it through `spawn_blocking`.
#[must_use = "dropping the guard stops the span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard").field("exporting", &self.provider.is_some()).finish()
    }
}

impl TelemetryGuard {
    /// Whether this guard owns the span exporter.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans ended so far and waits for the collector's answer. Blocking.
    pub fn force_flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "flushing spans to the OTLP collector failed");
        }
    }

    /// Exports what is left and stops the exporter. Blocking. Spans ended afterwards are
    /// dropped.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "shutting down the OTLP span exporter failed");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber: logs in `format`, and spans exported over OTLP/HTTP
/// (protobuf) to `otlp_endpoint` when given, as service [`SERVICE_NAME`].
///
/// `otlp_endpoint` is the collector's base URL (`http://127.0.0.1:4318`), to which
/// `/v1/traces` is appended unless it already ends so. Batching follows the standard
/// `OTEL_BSP_*` variables (5 s delay by default). Safe to call more than once: only the
/// first call installs anything, later ones return an inert guard.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> TelemetryGuard {
    install(Some(format), otlp_endpoint)
}

/// Like [`init`], exporting spans to `otlp_endpoint` but writing no logs (tests that check
/// the exported spans while keeping their output quiet).
pub fn init_traces_only(otlp_endpoint: &str) -> TelemetryGuard {
    install(None, Some(otlp_endpoint))
}

fn install(format: Option<LogFormat>, otlp_endpoint: Option<&str>) -> TelemetryGuard {
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if *installed {
        return TelemetryGuard { provider: None };
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    type Inner = tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;
    let mut layers: Vec<Box<dyn Layer<Inner> + Send + Sync>> = Vec::with_capacity(2);
    match format {
        Some(LogFormat::Pretty) => layers.push(fmt::layer().boxed()),
        Some(LogFormat::Json) => {
            layers.push(fmt::layer().json().flatten_event(true).with_current_span(true).boxed());
        }
        None => {}
    }
    let (provider, export_error) = match otlp_endpoint.map(tracer_provider).transpose() {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    if let Some(provider) = &provider {
        layers.push(tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME)).boxed());
    }
    if tracing_subscriber::registry().with(filter).with(layers).try_init().is_err() {
        // Someone else's subscriber is in place: nothing of ours would see a span.
        *installed = true;
        return TelemetryGuard { provider: None };
    }
    *installed = true;
    if let Some(e) = export_error {
        tracing::warn!(error = %e, endpoint = otlp_endpoint, "cannot build the OTLP span exporter; spans are not exported");
    }
    if provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(endpoint = otlp_endpoint, "exporting spans over OTLP/HTTP");
    }
    TelemetryGuard { provider }
}

/// An OTLP/HTTP (protobuf) batch exporter to `endpoint`.
fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build())
}

/// The traces URL of a collector given by its base URL (or already by its traces URL).
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim().trim_end_matches('/');
    if base.ends_with(TRACES_PATH) { base.to_owned() } else { format!("{base}{TRACES_PATH}") }
}

/// Whether spans are exported. When not, the helpers below do nothing.
pub(crate) fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes `span` continue the trace of the W3C `traceparent` (its remote parent), when
/// spans are exported. A malformed value is ignored (the span starts a trace of its own).
/// Must happen before the span is first entered.
pub(crate) fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if exporting() {
        continue_trace(span, &Traceparent(traceparent));
    }
}

/// Like [`set_remote_parent`], reading the trace context from any carrier (e.g. the
/// headers of a Kafka message).
pub(crate) fn set_parent_from(span: &tracing::Span, carrier: &dyn Extractor) {
    if exporting() {
        continue_trace(span, carrier);
    }
}

/// The W3C `traceparent` of `span` itself, when spans are exported (`None` otherwise):
/// what to send along with work `span` causes, so that work's spans become its children.
pub(crate) fn span_traceparent(span: &tracing::Span) -> Option<String> {
    if exporting() { own_traceparent(span) } else { None }
}

/// Places a request's span in its trace and returns the `traceparent` for the work the
/// request causes (the Kafka messages of its writes).
///
/// When spans are exported, `span` continues the caller's trace (`incoming`, when valid)
/// and the result is `span`'s own context, so the messages' spans are its children.
/// Otherwise the result is [`traceparent`]`(incoming)`. Either way its trace id is the
/// caller's when the caller sent a valid one.
pub(crate) fn request_traceparent(span: &tracing::Span, incoming: Option<&str>) -> String {
    if let Some(incoming) = incoming {
        set_remote_parent(span, incoming);
    }
    span_traceparent(span).unwrap_or_else(|| traceparent(incoming))
}

fn continue_trace(span: &tracing::Span, carrier: &dyn Extractor) {
    if span.is_disabled() {
        return;
    }
    let context = TraceContextPropagator::new().extract(carrier);
    if context.span().span_context().is_valid() {
        // Fails only when the span was already entered or has no OpenTelemetry data:
        // it then stays in the trace it has.
        let _ = span.set_parent(context);
    }
}

fn own_traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Traceparent::injected();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0
}

/// A carrier holding nothing but a `traceparent` value.
struct Traceparent<T>(T);

impl Extractor for Traceparent<&str> {
    fn get(&self, key: &str) -> Option<&str> {
        key.eq_ignore_ascii_case(TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

impl Traceparent<Option<String>> {
    fn injected() -> Self {
        Traceparent(None)
    }
}

impl Injector for Traceparent<Option<String>> {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// A W3C `traceparent` for work caused by a request: the caller's trace continues when it
/// sent a valid `traceparent`, with a new span id for us; otherwise a new trace starts.
/// It travels in the Kafka headers of every message the request's writes produce.
pub(crate) fn traceparent(incoming: Option<&str>) -> String {
    use rand::RngCore;
    let mut rng = rand::rng();
    let span_id = loop {
        let id = rng.next_u64();
        if id != 0 {
            break id;
        }
    };
    let trace_id = incoming.and_then(parse_trace_id).unwrap_or_else(|| {
        loop {
            let id = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            if id != 0 {
                break id;
            }
        }
    });
    format!("00-{trace_id:032x}-{span_id:016x}-01")
}

/// The trace id of a well-formed version-00 `traceparent`.
fn parse_trace_id(value: &str) -> Option<u128> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if parts.next().is_some() || version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    u128::from_str_radix(trace, 16).ok().filter(|id| *id != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Runs `f` under a subscriber that gives spans OpenTelemetry contexts (nothing is
    /// exported), without touching the global subscriber other tests share.
    fn with_otel_spans<R>(f: impl FnOnce() -> R) -> R {
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_valid_incoming_trace_is_continued_with_a_new_span() {
        let ours = traceparent(Some(INCOMING));
        assert!(ours.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{ours}");
        assert_ne!(ours, INCOMING, "a new span id");
        assert_eq!(ours.len(), 55);
    }

    #[test]
    fn malformed_incoming_traces_start_a_new_one() {
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let ours = traceparent(Some(bad));
            assert!(parse_trace_id(&ours).is_some(), "{bad:?} → {ours}");
            assert!(!ours.contains("4bf92f3577b34da6"), "{bad:?} is not continued");
        }
    }

    #[test]
    fn the_traces_path_is_appended_to_a_collectors_base_url_once() {
        for (endpoint, expected) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            ("https://otel.example:4318/v1/traces", "https://otel.example:4318/v1/traces"),
            (" http://collector:4318 ", "http://collector:4318/v1/traces"),
        ] {
            assert_eq!(traces_url(endpoint), expected, "{endpoint:?}");
        }
    }

    #[test]
    fn without_export_the_helpers_do_nothing_and_requests_keep_the_plain_traceparent() {
        assert!(!exporting(), "no test of this crate installs the exporter");
        with_otel_spans(|| {
            let span = tracing::info_span!("graphql");
            set_remote_parent(&span, INCOMING);
            assert_eq!(span_traceparent(&span), None);
            let ours = request_traceparent(&span, Some(INCOMING));
            assert!(ours.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{ours}");
        });
    }

    #[test]
    fn a_span_given_a_remote_parent_continues_its_trace_with_a_span_id_of_its_own() {
        with_otel_spans(|| {
            let span = tracing::info_span!("kafka.status");
            continue_trace(&span, &Traceparent(INCOMING));
            let ours = own_traceparent(&span).expect("the span has a context");
            assert!(ours.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{ours}");
            assert!(ours.ends_with("-01"), "sampled, like its parent: {ours}");
            assert!(!ours.contains("00f067aa0ba902b7"), "a span id of its own: {ours}");
            let child = span.in_scope(|| tracing::info_span!("child"));
            let child = own_traceparent(&child).expect("the child has a context");
            assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "children share the trace: {child}");
        });
    }

    #[test]
    fn a_malformed_remote_parent_leaves_the_span_in_a_trace_of_its_own() {
        with_otel_spans(|| {
            for bad in ["", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
                let span = tracing::info_span!("kafka.dispatch");
                continue_trace(&span, &Traceparent(bad));
                let ours = own_traceparent(&span).expect("a root span still has a context");
                assert_eq!(parse_trace_id(&ours).map(|_| ()), Some(()), "{bad:?} → {ours}");
                assert!(!ours.contains("00f067aa0ba902b7"), "{bad:?}");
            }
        });
    }

    #[test]
    fn a_span_without_opentelemetry_data_has_no_traceparent() {
        let span = tracing::info_span!("no-subscriber");
        continue_trace(&span, &Traceparent(INCOMING));
        assert_eq!(own_traceparent(&span), None);
    }
}
