//! Black-box tests of the HTTP hardening (README, Security): the whole-document query
//! limits, read and idle time limits, the per-address connection cap, the media type of
//! mutations, the operation labels of `/metrics`, token lifetimes, the refused-token
//! budget and GET's `operationName`.

use std::time::Duration;

use serde_json::{Value, json};
use taskwire_tests::{TestApp, now_secs};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long a test waits for the server to do what it must; generous, because these
/// tests share a busy machine. Reaching it fails the test: it is a bound, not a measure.
const PATIENCE: Duration = Duration::from_secs(20);

const CREATE: &str = r#"mutation { createTask(input: { queue: "q", kind: "k" }) { task { id } } }"#;

/// `count` spreads of a fragment of `fields` fields in an operation the request does not
/// select.
fn unselected_spreads(count: usize, fields: usize) -> String {
    let spreads = "...F ".repeat(count);
    let fields: String = (0..fields).map(|i| format!("f{i}: __typename ")).collect();
    format!("query Main {{ me {{ subject }} }} query Big {{ {spreads} }} fragment F on Query {{ {fields} }}")
}

async fn post(app: &TestApp, token: Option<&str>, body: &Value) -> (u16, Value) {
    let response = app.post_json(token, body).await;
    (response.status, response.body)
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or("<none>")
}

async fn connect(app: &TestApp) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    TcpStream::connect(address).await.expect("TCP connect")
}

/// Reads until the server closes the connection; what it sent. Fails the test when the
/// server keeps the connection open past [`PATIENCE`].
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let outcome = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the server kept the connection open; it sent: {}", String::from_utf8_lossy(&received));
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn a_document_too_big_for_validation_is_refused_before_it_whatever_operation_runs() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);
    // 2,000 spreads of a 2,000-field fragment in an operation that is not selected: some
    // 50 KiB that validation would flatten into millions of fields.
    let wide = unselected_spreads(2_000, 2_000);
    // Over 64 KiB of text: refused before parsing.
    let long = unselected_spreads(5_000, 5_000);
    let fields: String = (0..500).map(|i| format!("f{i}: __typename ")).collect();
    let unused = format!("{{ me {{ subject }} }} fragment Unused on Query {{ {fields} }}");

    let (wide_status, wide_body) = post(&app, Some(&token), &json!({ "query": wide, "operationName": "Main" })).await;
    let (long_status, long_body) = post(&app, Some(&token), &json!({ "query": long, "operationName": "Main" })).await;
    let (unused_status, unused_body) = post(&app, Some(&token), &json!({ "query": unused })).await;
    let (small_status, small_body) =
        post(&app, Some(&token), &json!({ "query": unselected_spreads(3, 3), "operationName": "Main" })).await;

    assert_eq!((wide_status, code(&wide_body)), (200, "QUERY_TOO_COMPLEX"), "{wide_body}");
    assert!(wide_body["errors"][0]["message"].as_str().unwrap_or_default().contains("selections"), "{wide_body}");
    assert_eq!((long_status, code(&long_body)), (200, "QUERY_TOO_COMPLEX"), "{long_body}");
    assert_eq!((unused_status, code(&unused_body)), (200, "BAD_USER_INPUT"), "{unused_body}");
    assert!(unused_body["errors"][0]["message"].as_str().unwrap_or_default().contains("never used"), "{unused_body}");
    assert_eq!(small_status, 200);
    assert_eq!(small_body["data"]["me"]["subject"], "alice", "a small second operation is fine: {small_body}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("taskwire_query_limit_rejections_total{code=\"QUERY_TOO_COMPLEX\"} 2"), "{metrics}");
}

#[tokio::test]
async fn websocket_subscriptions_pass_the_whole_document_limits_too() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);
    let mut ws = app.ws("graphql-transport-ws").await;
    ws.init(json!({ "authorization": format!("Bearer {token}") })).await;
    let spreads = "...F ".repeat(2_000);
    let fields: String = (0..2_000).map(|i| format!("f{i}: __typename ")).collect();
    let query = format!(
        "subscription Main {{ taskEvents {{ seq }} }} query Big {{ {spreads} }} fragment F on Query {{ {fields} }}"
    );

    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "operationName": "Main" } })).await;
    let message = ws.recv_json().await;

    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(message["payload"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX", "{message}");
}

#[tokio::test]
async fn get_honours_the_standard_operation_name_parameter() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);
    let get = |query: &str, name: &str| {
        app.client
            .get(format!("{}/graphql", app.address))
            .bearer_auth(&token)
            .query(&[("query", query), ("operationName", name)])
            .send()
    };

    let read = get("query A { me { subject } } query B { me { roles } }", "B").await.expect("sent");
    let (status, body): (u16, Value) = (read.status().as_u16(), read.json().await.expect("JSON"));
    let named_mutation =
        get(&format!("query A {{ me {{ subject }} }} mutation M {}", &CREATE["mutation ".len()..]), "M")
            .await
            .expect("sent");

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!({ "me": { "roles": ["CLIENT"] } }), "operation B ran: {body}");
    assert_eq!(named_mutation.status().as_u16(), 405, "a mutation selected by operationName is refused over GET");
}

#[tokio::test]
async fn mutations_need_a_json_content_type() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);
    let send = |content_type: &'static str, query: &str| {
        app.client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(json!({ "query": query }).to_string())
            .send()
    };

    let mut refused = Vec::new();
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let response = send(content_type, CREATE).await.expect("sent");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON error body");
        refused.push((content_type, status, code(&body).to_owned()));
    }
    let mut accepted = Vec::new();
    for content_type in
        ["application/json", "application/json; charset=utf-8", "application/graphql-response+json", "Application/JSON"]
    {
        let response = send(content_type, CREATE).await.expect("sent");
        let body: Value = response.json().await.expect("JSON");
        accepted.push((content_type, body["data"]["createTask"]["task"]["id"].is_string()));
    }
    let query = send("text/plain", "{ me { subject } }").await.expect("sent");

    for (content_type, status, code) in &refused {
        assert_eq!((*status, code.as_str()), (415, "BAD_USER_INPUT"), "{content_type}");
    }
    for (content_type, created) in &accepted {
        assert!(created, "{content_type}: the mutation ran");
    }
    let listed = app.gql(Some(&token), "{ tasks(first: 100) { edges { node { id } } } }", json!({})).await;
    let count = listed.data()["tasks"]["edges"].as_array().map_or(0, Vec::len);
    assert_eq!(count, accepted.len(), "only the JSON requests created tasks");
    assert_eq!(query.status().as_u16(), 200, "a query needs no particular media type");
}

#[tokio::test]
async fn only_validated_operations_of_authenticated_callers_name_metric_series() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);

    app.gql(None, "query AnonymousName1 { me { subject } }", json!({})).await;
    app.post_json(None, &json!({ "query": "{ me { subject } }", "operationName": "ClaimedByAnonymous" })).await;
    app.post_json(Some(&token), &json!({ "query": "{ me { subject } }", "operationName": "ClaimedByAlice" })).await;
    app.gql(Some(&token), "query FailsValidation { nope }", json!({})).await;
    app.gql(Some(&token), "query AliceReads { me { subject } }", json!({})).await;
    let metrics = app.metrics().await;

    for name in ["AnonymousName1", "ClaimedByAnonymous", "ClaimedByAlice", "FailsValidation"] {
        assert!(!metrics.contains(&format!("operation=\"{name}\"")), "{name} became a label:\n{metrics}");
    }
    assert!(metrics.contains("operation=\"AliceReads\""), "a validated operation of a caller is named:\n{metrics}");
}

#[tokio::test]
async fn tokens_living_longer_than_the_maximum_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let long = app.token_with_claims(json!({ "sub": "alice", "roles": ["client"], "exp": now_secs() + 2 * 86_400 }));
    let long_with_iat = app.token_with_claims(
        json!({ "sub": "alice", "roles": ["client"], "iat": now_secs(), "exp": now_secs() + 30 * 86_400 }),
    );
    let relaxed = TestApp::spawn_with(&[("TASKWIRE_JWT_MAX_TTL", "3d")]).await;
    let accepted =
        relaxed.token_with_claims(json!({ "sub": "alice", "roles": ["client"], "exp": now_secs() + 2 * 86_400 }));

    let refused = app.gql(Some(&long), "{ me { subject } }", json!({})).await;
    let refused_with_iat = app.gql(Some(&long_with_iat), "{ me { subject } }", json!({})).await;
    let ok = relaxed.gql(Some(&accepted), "{ me { subject } }", json!({})).await;

    assert_eq!(refused.code(), "UNAUTHENTICATED");
    assert_eq!(refused_with_iat.code(), "UNAUTHENTICATED");
    assert_eq!(ok.data()["me"]["subject"], "alice");
}

#[tokio::test]
async fn a_flood_of_refused_tokens_from_one_address_is_rate_limited() {
    let app = TestApp::spawn_with(&[("TASKWIRE_RATE_LIMIT_INVALID_TOKENS", "3")]).await;
    let valid = app.token("alice", &["client"]);
    let (signed_part, _) = valid.rsplit_once('.').expect("a JWT has three parts");
    let forged = format!("{signed_part}.bm90LXRoZS1zaWduYXR1cmU");

    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..10 {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(&forged)
            .json(&json!({ "query": "{ me { subject } }" }))
            .send()
            .await
            .expect("sent");
        statuses.push(response.status().as_u16());
        if response.status().as_u16() == 429 {
            let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body: Value = response.json().await.expect("JSON");
            limited.get_or_insert((retry_after, code(&body).to_owned(), body["errors"][0]["extensions"].clone()));
        }
    }
    let still_valid = app.gql(Some(&valid), "{ me { subject } }", json!({})).await;

    assert_eq!(&statuses[..3], &[200, 200, 200], "the first refusals answer UNAUTHENTICATED: {statuses:?}");
    assert!(statuses[3..].contains(&429), "then the address is rate limited: {statuses:?}");
    let (retry_after, code, extensions) = limited.expect("a 429");
    assert!(retry_after.is_some_and(|seconds| seconds.parse::<u64>().is_ok_and(|s| s >= 1)), "Retry-After");
    assert_eq!(code, "RATE_LIMITED");
    assert!(extensions["retryAfterMs"].as_u64().is_some_and(|ms| ms >= 1), "{extensions}");
    assert_eq!(still_valid.data()["me"]["subject"], "alice", "valid tokens spend nothing from that budget");
    let metrics = app.metrics().await;
    assert!(metrics.contains("taskwire_rate_limited_total{bucket=\"invalid_tokens\"}"), "{metrics}");
}

#[tokio::test]
async fn connections_trickling_headers_or_sending_nothing_are_closed() {
    let app = TestApp::spawn_with(&[("TASKWIRE_HEADER_READ_TIMEOUT_MS", "300")]).await;
    let mut silent = connect(&app).await;
    let mut trickling = connect(&app).await;
    trickling.write_all(b"GET /healthz HTTP/1.1\r\nHost: taskwire\r\n").await.expect("written");

    read_until_closed(&mut silent).await;
    read_until_closed(&mut trickling).await;

    let timeouts = app.wait_for_metric("taskwire_http_timeouts_total{phase=\"headers\"}", |n| n >= 2.0).await;
    assert!(timeouts >= 2.0, "both counted: {timeouts}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_answers_408() {
    let app = TestApp::spawn_with(&[("TASKWIRE_BODY_READ_TIMEOUT_MS", "300")]).await;
    let mut stream = connect(&app).await;
    let head =
        "POST /graphql HTTP/1.1\r\nHost: taskwire\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("written");
    stream.write_all(br#"{"query":"#).await.expect("written");

    let received = read_until_closed(&mut stream).await;

    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    assert!(received.contains("\"code\":\"BAD_USER_INPUT\""), "{received}");
    assert_eq!(app.metric("taskwire_http_timeouts_total{phase=\"body\"}").await, 1.0);
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_a_quiet_websocket_is_not() {
    let app =
        TestApp::spawn_with(&[("TASKWIRE_IDLE_TIMEOUT_MS", "300"), ("TASKWIRE_HEADER_READ_TIMEOUT_MS", "60000")]).await;
    let token = app.token("alice", &["client"]);
    let mut ws = app.ws("graphql-transport-ws").await;
    ws.init(json!({ "authorization": format!("Bearer {token}") })).await;
    let mut idle = connect(&app).await;

    read_until_closed(&mut idle).await;
    // Several idle limits of silence on the WebSocket (its keep-alive pings come every 15 s).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // An invalid subscription answers at once with an error for its id.
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { nope }" } })).await;
    let answer = ws.recv_json().await;

    assert_eq!((answer["type"].as_str(), answer["id"].as_str()), (Some("error"), Some("1")), "still served: {answer}");
    assert!(app.metric("taskwire_http_timeouts_total{phase=\"idle\"}").await >= 1.0);
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_closed_at_once() {
    let app = TestApp::spawn_with(&[("TASKWIRE_MAX_CONNECTIONS_PER_IP", "2")]).await;
    let first = connect(&app).await;
    let second = connect(&app).await;
    let mut third = connect(&app).await;

    let received = read_until_closed(&mut third).await;
    drop((first, second));

    assert_eq!(received, "", "closed before any byte was read");
    // The server frees the two slots once it has seen them close; a fresh client (no
    // pooled connection holding a slot) then gets through.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let url = format!("{}/metrics", app.address);
    let metrics = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(response) = client.get(&url).send().await
                && let Ok(text) = response.text().await
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the slots are freed");
    // At least the third; connections tried while the slots were still held count too.
    let refused = metrics
        .lines()
        .find_map(|line| line.strip_prefix("taskwire_http_connections_refused_total{reason=\"per_ip\"} "))
        .and_then(|value| value.parse::<f64>().ok());
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");
}
