//! Trace export over OTLP/HTTP: a request's span and the spans of the Kafka messages it
//! causes reach the collector in the caller's trace, linked parent to child.
//!
//! Alone in its own test binary: the tracing subscriber, and with it the exporter, is
//! global to the process and installed by the first app started.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::post,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, any_value},
    trace::v1::span::SpanKind,
};
use prost::Message;
use serde_json::{Value, json};
use taskwire_tests::{TestApp, flush_traces};

/// A span as the collector received it, ids in lower-case hex.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: Option<String>,
    name: String,
    kind: SpanKind,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

impl ExportedSpan {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

type Received = Arc<Mutex<Vec<ExportedSpan>>>;

/// A fake OpenTelemetry collector: `POST /v1/traces` with an OTLP protobuf body.
struct Collector {
    /// Its base URL, as `TASKWIRE_OTLP_ENDPOINT` takes it.
    endpoint: String,
    received: Received,
}

impl Collector {
    async fn start() -> Collector {
        let received = Received::default();
        let app = Router::new().route("/v1/traces", post(receive)).with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("collector binds");
        let endpoint = format!("http://{}", listener.local_addr().expect("bound address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { endpoint, received }
    }

    /// The spans of `trace_id` once `complete` holds for them, flushing the exporter
    /// while waiting; panics with what arrived after 30 s.
    async fn wait_for(&self, trace_id: &str, complete: impl Fn(&[ExportedSpan]) -> bool) -> Vec<ExportedSpan> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            tokio::task::spawn_blocking(flush_traces).await.expect("flush joins");
            let spans: Vec<ExportedSpan> = self
                .received
                .lock()
                .expect("collector lock")
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if complete(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "the trace never completed; spans of {trace_id} received: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn receive(State(received): State<Received>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain")], b"not OTLP protobuf".to_vec());
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .and_then(|r| r.attributes.into_iter().find(|a| a.key == "service.name").and_then(|a| a.value.map(text)));
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(ExportedSpan {
                service: service.clone(),
                kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                name: span.name,
                trace_id: hex::encode(span.trace_id),
                span_id: hex::encode(span.span_id),
                parent_span_id: hex::encode(span.parent_span_id),
                attributes: span.attributes.into_iter().filter_map(|a| Some((a.key, text(a.value?)))).collect(),
            });
        }
    }
    received.lock().expect("collector lock").extend(spans);
    let response = ExportTraceServiceResponse::default().encode_to_vec();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], response)
}

/// An attribute value as text.
fn text(value: AnyValue) -> String {
    match value.value {
        Some(any_value::Value::StringValue(s)) => s,
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_the_kafka_messages_it_causes_are_exported_as_one_trace_under_the_callers_span() {
    // Arrange
    let collector = Collector::start().await;
    let app = TestApp::spawn_with(&[("TASKWIRE_OTLP_ENDPOINT", collector.endpoint.as_str())]).await;
    let alice = app.token("alice", &["client"]);
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span_id = "00f067aa0ba902b7";

    // Act
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&alice)
        .header("traceparent", format!("00-{trace_id}-{caller_span_id}-01"))
        .json(&json!({ "query": "mutation { createTask(input: {queue: \"q\", kind: \"k\"}) { task { id } } }" }))
        .send()
        .await
        .expect("sent");
    let body: Value = response.json().await.expect("JSON");
    let task_id = body["data"]["createTask"]["task"]["id"].as_str().expect("created").to_owned();

    // Assert
    let named = |spans: &[ExportedSpan], name: &str| -> Vec<ExportedSpan> {
        spans.iter().filter(|s| s.name == name && s.attribute("task_id") == Some(task_id.as_str())).cloned().collect()
    };
    let spans = collector
        .wait_for(&trace_id, |spans| {
            spans.iter().any(|s| s.name == "graphql")
                && named(spans, "kafka.publish").len() >= 2
                && !named(spans, "kafka.status").is_empty()
                && !named(spans, "kafka.dispatch").is_empty()
                && !named(spans, "dispatch.local").is_empty()
        })
        .await;

    for span in &spans {
        assert_eq!(span.service.as_deref(), Some("taskwire"), "service.name of {span:#?}");
    }
    let graphql = spans.iter().find(|s| s.name == "graphql").expect("the request's span");
    assert_eq!(graphql.parent_span_id, caller_span_id, "the request's span is a child of the caller's");

    let publishes = named(&spans, "kafka.publish");
    let topics: Vec<&str> = publishes.iter().filter_map(|s| s.attribute("topic")).collect();
    for publish in &publishes {
        assert_eq!(publish.kind, SpanKind::Producer, "{publish:#?}");
        assert_eq!(publish.parent_span_id, graphql.span_id, "the relay publishes on behalf of the request");
    }
    for (consumed, topic) in
        [("kafka.status", app.topic("tasks.status")), ("kafka.dispatch", app.topic("tasks.dispatch"))]
    {
        assert!(topics.contains(&topic.as_str()), "a publish to {topic}: {topics:?}");
        let span = named(&spans, consumed).into_iter().next().expect("consumed");
        assert_eq!(span.kind, SpanKind::Consumer, "{span:#?}");
        let parent = publishes.iter().find(|p| p.span_id == span.parent_span_id);
        assert_eq!(
            parent.and_then(|p| p.attribute("topic")),
            Some(topic.as_str()),
            "{consumed} is a child of the publish to {topic}: {spans:#?}"
        );
    }
    // This process's matcher also heard of the task at commit, under the request's span.
    let local = named(&spans, "dispatch.local").into_iter().next().expect("fed to the local matcher");
    assert_eq!(local.parent_span_id, graphql.span_id, "{local:#?}");
    let status = named(&spans, "kafka.status").into_iter().next().expect("consumed");
    assert_eq!(status.attribute("status"), Some("QUEUED"), "{status:#?}");
    assert_eq!(status.attribute("seq"), Some("1"), "{status:#?}");
}
