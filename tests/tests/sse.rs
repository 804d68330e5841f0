//! Subscriptions over Server-Sent Events (`graphql-sse`, distinct connections mode), for
//! clients where WebSockets are blocked: the same auth, limits and `afterSeq` resume as
//! over a WebSocket, and a stream that ends cleanly.

use std::time::Duration;

use serde_json::{Value, json};
use taskwire_tests::TestApp;

const TASK_UPDATED: &str =
    "subscription($id: ID!, $afterSeq: Int) { taskUpdated(id: $id, afterSeq: $afterSeq) { seq status } }";
const CANCEL: &str = "mutation($id: ID!) { cancelTask(id: $id) { status } }";
/// The longest any read below may wait.
const PATIENCE: Duration = Duration::from_secs(20);

/// An open event stream, read event by event.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// The next event as `(name, data)`; `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = if data.is_empty() { Value::Null } else { serde_json::from_str(&data).expect("JSON data") };
                return Some((name, data));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {PATIENCE:?}"))
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).expect("UTF-8")),
                None => return None,
            }
        }
    }

    /// The data of the next `next` event.
    async fn next_data(&mut self) -> Value {
        match self.next().await {
            Some((name, data)) if name == "next" => data,
            other => panic!("expected a next event, got {other:?}"),
        }
    }
}

async fn open(app: &TestApp, token: Option<&str>, query: &str, variables: Value) -> Result<EventStream, (u16, Value)> {
    let mut request = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("accept", "text/event-stream")
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST");
    if response.status().is_success() {
        let media = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(media.starts_with("text/event-stream"), "{media}");
        Ok(EventStream { response, buffer: String::new() })
    } else {
        let status = response.status().as_u16();
        Err((status, response.json().await.expect("a JSON error body")))
    }
}

#[tokio::test]
async fn a_client_watches_its_task_over_an_event_stream_and_resumes_with_after_seq() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;

    let mut stream = open(&app, Some(&alice), TASK_UPDATED, json!({ "id": id })).await.expect("a stream");
    assert_eq!(stream.next_data().await["data"]["taskUpdated"], json!({ "seq": 1, "status": "QUEUED" }));
    app.gql(Some(&alice), CANCEL, json!({ "id": id })).await.data();
    assert_eq!(stream.next_data().await["data"]["taskUpdated"], json!({ "seq": 2, "status": "CANCELLED" }));
    drop(stream);

    // Resuming replays exactly what came after the last event seen.
    let mut resumed =
        open(&app, Some(&alice), TASK_UPDATED, json!({ "id": id, "afterSeq": 1 })).await.expect("a stream");
    assert_eq!(resumed.next_data().await["data"]["taskUpdated"]["seq"], 2);
}

#[tokio::test]
async fn an_event_stream_is_refused_like_any_request() {
    let app = TestApp::spawn_with(&[("TASKWIRE_RATE_LIMIT_OPERATIONS", "3")]).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;

    let (status, body) = open(&app, None, TASK_UPDATED, json!({ "id": id })).await.err().expect("refused");
    assert_eq!((status, body["errors"][0]["extensions"]["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{body}");

    // A persisted-query miss is answered in the stream too (the protocol's rule for errors
    // about the request itself).
    let miss = json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "0".repeat(64) } } });
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("accept", "text/event-stream")
        .bearer_auth(&alice)
        .json(&miss)
        .send()
        .await
        .expect("POST");
    let mut missed = EventStream { response, buffer: String::new() };
    let answer = missed.next_data().await;
    assert_eq!(answer["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND", "{answer}");
    assert!(answer["errors"][0].get("locations").is_none(), "{answer}");
    assert_eq!(missed.next().await.map(|(name, _)| name).as_deref(), Some("complete"));

    // A document that fails validation is answered in the stream, like over a WebSocket.
    let mut invalid = open(&app, Some(&alice), "subscription { nope }", json!({})).await.expect("a stream");
    let answer = invalid.next_data().await;
    assert_eq!(answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{answer}");
    assert_eq!(invalid.next().await.map(|(name, _)| name).as_deref(), Some("complete"));

    let bob = app.token("bob", &["client"]);
    let _first = open(&app, Some(&bob), TASK_UPDATED, json!({ "id": id })).await;
    let _second = open(&app, Some(&bob), TASK_UPDATED, json!({ "id": id })).await;
    let _third = open(&app, Some(&bob), TASK_UPDATED, json!({ "id": id })).await;
    let (status, body) = open(&app, Some(&bob), TASK_UPDATED, json!({ "id": id })).await.err().expect("over budget");
    assert_eq!((status, body["errors"][0]["extensions"]["code"].as_str()), (429, Some("RATE_LIMITED")), "{body}");
    assert!(body["errors"][0]["extensions"]["retryAfterMs"].as_u64().is_some(), "{body}");
}

#[tokio::test]
async fn event_streams_share_the_connection_caps_with_websockets() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_MAX_CONNECTIONS_PER_SUBJECT", "1")]).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut first = open(&app, Some(&alice), TASK_UPDATED, json!({ "id": id })).await.expect("a stream");
    assert_eq!(first.next_data().await["data"]["taskUpdated"]["seq"], 1);
    assert_eq!(app.metric("taskwire_sse_streams").await, 1.0);

    let (status, body) = open(&app, Some(&alice), TASK_UPDATED, json!({ "id": id })).await.err().expect("capped");
    assert_eq!((status, body["errors"][0]["extensions"]["code"].as_str()), (429, Some("RATE_LIMITED")), "{body}");

    drop(first);
    // The place comes back when the server sees the stream go.
    for attempt in 0.. {
        match open(&app, Some(&alice), TASK_UPDATED, json!({ "id": id })).await {
            Ok(_) => break,
            Err((429, _)) if attempt < 100 => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(other) => panic!("the place should have been given back: {other:?}"),
        }
    }
}

#[tokio::test]
async fn past_the_process_cap_an_event_stream_answers_503() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_MAX_CONNECTIONS", "1")]).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let _socket = app.ws_connected(taskwire_tests::ws::TRANSPORT_WS, &alice).await;
    let (status, body) = open(&app, Some(&alice), TASK_UPDATED, json!({ "id": id })).await.err().expect("capped");
    assert_eq!((status, body["errors"][0]["extensions"]["code"].as_str()), (503, Some("UNAVAILABLE")), "{body}");
    assert_eq!(app.metric("taskwire_ws_refusals_total{reason=\"connections\"}").await, 1.0);
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_expires_and_at_shutdown() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let exp = taskwire_tests::now_secs() + 2;
    let short = app.token_with_claims(json!({ "sub": "alice", "roles": ["client"], "exp": exp }));
    let mut expiring = open(&app, Some(&short), TASK_UPDATED, json!({ "id": id })).await.expect("a stream");
    assert_eq!(expiring.next_data().await["data"]["taskUpdated"]["seq"], 1);
    let last = expiring.next_data().await;
    assert_eq!(last["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{last}");
    assert_eq!(expiring.next().await.map(|(name, _)| name).as_deref(), Some("complete"));

    let mut open_at_shutdown = open(&app, Some(&alice), TASK_UPDATED, json!({ "id": id })).await.expect("a stream");
    assert_eq!(open_at_shutdown.next_data().await["data"]["taskUpdated"]["seq"], 1);
    app.shutdown();
    assert_eq!(open_at_shutdown.next().await.map(|(name, _)| name).as_deref(), Some("complete"));
    assert!(open_at_shutdown.next().await.is_none());
}
