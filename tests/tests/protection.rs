//! Abuse protection from outside: every malicious query is rejected with its code before
//! any resolver runs, persisted queries follow the Apollo protocol, the rate limit
//! answers `RATE_LIMITED` and recovers, and `/metrics` is valid Prometheus text.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use taskwire_tests::{REDIS_URL_VAR, TestApp, require_service};

/// A mutation whose every execution would create a task: if a rejected query ran any
/// resolver, a task would exist afterwards.
const CREATE: &str = r#"createTask(input: { queue: "q", kind: "k" })"#;

async fn task_count(app: &TestApp) -> usize {
    let operator = app.token("ops", &["operator"]);
    let response = app.gql(Some(&operator), "{ tasks(first: 100) { edges { node { id } } } }", json!({})).await;
    response.data()["tasks"]["edges"].as_array().map_or(0, Vec::len)
}

fn nested_events(levels: usize) -> String {
    let mut selection = "seq".to_owned();
    for _ in 0..levels {
        selection = format!("task {{ events {{ {selection} }} }}");
    }
    selection
}

#[tokio::test]
async fn each_malicious_query_is_rejected_with_its_code_and_runs_no_resolver() {
    let app = TestApp::spawn().await;
    let client = app.token("mallory", &["client"]);
    let aliases: String = (0..1000).map(|i| format!("a{i}: {CREATE} {{ created }} ")).collect();
    let huge = format!(
        "mutation {{ {CREATE} {{ task {{ events(last: 100000) {{ task {{ events(last: 100000) {{ seq }} }} }} }} }} }}"
    );
    let deep = format!("mutation {{ {CREATE} {{ task {{ events {{ {} }} }} }} }}", nested_events(8));
    let cycle = format!(
        "mutation {{ {CREATE} {{ ...A }} }} fragment A on CreateTaskPayload {{ task {{ id }} ...B }} fragment B on CreateTaskPayload {{ ...A }}"
    );
    let dodge = format!(
        "mutation {{ {CREATE} {{ task {{ events {{ task {{ events {{ task {{ ...__schema }} }} }} }} }} }} }} \
         fragment __schema on Task {{ events {{ {} }} }}",
        nested_events(6)
    );
    let directives: String = (0..60).map(|_| "@include(if: true) ").collect();
    let many_directives = format!("mutation {{ {CREATE} {{ created {directives} }} }}");
    let cases = [
        ("1,000 aliases", format!("mutation {{ {aliases} }}"), "TOO_MANY_ALIASES"),
        ("deep nesting", deep, "QUERY_TOO_DEEP"),
        ("huge lists", huge, "QUERY_TOO_COMPLEX"),
        ("fragment cycle", cycle, "BAD_USER_INPUT"),
        ("a fragment named __schema", dodge, "QUERY_TOO_DEEP"),
        ("60 directives", many_directives, "QUERY_TOO_COMPLEX"),
    ];
    for (case, query, code) in cases {
        let response = app.gql(Some(&client), &query, json!({})).await;
        assert_eq!(response.codes(), vec![code.to_owned()], "{case}: {response:?}");
        assert!(response.errors()[0]["extensions"]["requestId"].is_string(), "{case}: request id");
    }

    let batch: Vec<Value> =
        (0..100).map(|_| json!({ "query": format!("mutation {{ {CREATE} {{ created }} }}") })).collect();
    let response = app.post_json(Some(&client), &Value::Array(batch)).await;
    assert_eq!(response.code(), "BATCH_TOO_LARGE", "a batch of 100");

    assert_eq!(task_count(&app).await, 0, "no rejected operation ran a resolver");
}

#[tokio::test]
async fn ordinary_queries_and_the_introspection_query_pass_the_limits() {
    let app = TestApp::spawn().await;
    let client = app.token("alice", &["client"]);
    let id = app.create_task(&client, json!({ "queue": "q", "kind": "k" })).await;
    let query = "query($id: ID!) { task(id: $id) { id events { seq task { id status } } } \
                 tasks(first: 50) { edges { node { id events(last: 5) { seq } } } } }";
    let response = app.gql(Some(&client), query, json!({ "id": id })).await;
    assert!(response.errors().is_empty(), "{response:?}");
    let introspection = "{ __schema { types { name fields { name type { name kind ofType { name kind ofType { \
                         name kind ofType { name kind ofType { name kind } } } } } } } } }";
    let response = app.gql(Some(&client), introspection, json!({})).await;
    assert!(response.errors().is_empty(), "GraphiQL's introspection works: {response:?}");
}

#[tokio::test]
async fn a_document_parsed_before_is_still_checked_against_each_requests_variables() {
    let app = TestApp::spawn().await;
    let operator = app.token("ops", &["operator"]);
    // The cost of this document depends on `$n`: the parse cache must not cache a verdict.
    let query = "query Page($n: Int!) { tasks(first: $n) { nodes { events(last: 100) { seq status at } } } }";
    let cheap = app.gql(Some(&operator), query, json!({ "n": 1 })).await;
    assert!(cheap.errors().is_empty(), "{cheap:?}");
    let costly = app.gql(Some(&operator), query, json!({ "n": 100 })).await;
    assert_eq!(costly.codes(), vec!["QUERY_TOO_COMPLEX".to_owned()], "{costly:?}");
    let cheap_again = app.gql(Some(&operator), query, json!({ "n": 1 })).await;
    assert!(cheap_again.errors().is_empty(), "{cheap_again:?}");
    let broken = app.gql(Some(&operator), "query Page($n: Int!) { tasks(first: $n) {", json!({ "n": 1 })).await;
    assert_eq!(broken.code(), "BAD_USER_INPUT", "{broken:?}");
}

#[tokio::test]
async fn limits_are_configurable() {
    let app = TestApp::spawn_with(&[("TASKWIRE_LIMIT_ALIASES", "2"), ("TASKWIRE_LIMIT_DEPTH", "3")]).await;
    let client = app.token("alice", &["client"]);
    let three = app.gql(Some(&client), "{ a: me { subject } b: me { subject } c: me { subject } }", json!({})).await;
    assert_eq!(three.code(), "TOO_MANY_ALIASES");
    let two = app.gql(Some(&client), "{ a: me { subject } b: me { subject } }", json!({})).await;
    assert!(two.errors().is_empty(), "{two:?}");
    let deep = app.gql(Some(&client), "{ tasks { edges { node { id } } } }", json!({})).await;
    assert_eq!(deep.code(), "QUERY_TOO_DEEP");
}

#[tokio::test]
async fn subscriptions_get_the_same_limits_over_websocket() {
    let app = TestApp::spawn_with(&[("TASKWIRE_LIMIT_DEPTH", "3")]).await;
    let token = app.token("alice", &["client"]);
    let mut ws = app.ws("graphql-transport-ws").await;
    ws.init(json!({ "authorization": format!("Bearer {token}") })).await;
    let query = "subscription { taskEvents { task { events { task { id } } } } }";
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": query } })).await;
    let message = ws.recv_json().await;
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(message["payload"][0]["extensions"]["code"], "QUERY_TOO_DEEP", "{message}");
}

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[tokio::test]
async fn persisted_queries_miss_register_and_hit_over_post_and_get() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);
    let query = "query Me { me { subject } }";
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": sha256(query) } });

    let miss = app.post_json(Some(&token), &json!({ "extensions": extensions })).await;
    assert_eq!(miss.code(), "PERSISTED_QUERY_NOT_FOUND", "{miss:?}");
    assert_eq!(miss.errors()[0]["message"], "PersistedQueryNotFound", "Apollo clients match this message");
    assert!(miss.errors()[0].get("locations").is_none(), "no document, so no locations: {miss:?}");

    let register = app.post_json(Some(&token), &json!({ "query": query, "extensions": extensions })).await;
    assert_eq!(register.data()["me"]["subject"], "alice", "{register:?}");

    let hit = app.post_json(Some(&token), &json!({ "extensions": extensions })).await;
    assert_eq!(hit.data()["me"]["subject"], "alice", "{hit:?}");

    let url = format!("{}/graphql?extensions={}", app.address, urlencode(&extensions.to_string()));
    let response = app.client.get(url).bearer_auth(&token).send().await.expect("GET");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["data"]["me"]["subject"], "alice", "GET by hash: {body}");

    let wrong = json!({ "persistedQuery": { "version": 1, "sha256Hash": sha256("{ other }") } });
    let mismatch = app.post_json(Some(&token), &json!({ "query": query, "extensions": wrong })).await;
    assert_eq!(mismatch.code(), "BAD_USER_INPUT", "a query must match its hash");
    assert!(app.metric("taskwire_persisted_queries_total{outcome=\"hit\"}").await >= 2.0);
}

#[tokio::test]
async fn a_mutation_by_hash_over_get_is_refused() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);
    let mutation = format!("mutation {{ {CREATE} {{ created }} }}");
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": sha256(&mutation) } });
    app.post_json(Some(&token), &json!({ "query": "{ me { subject } }", "extensions": {} })).await;
    let registered = app.post_json(Some(&token), &json!({ "query": mutation, "extensions": extensions })).await;
    assert!(registered.errors().is_empty(), "{registered:?}");
    let url = format!("{}/graphql?extensions={}", app.address, urlencode(&extensions.to_string()));
    let response = app.client.get(url).bearer_auth(&token).send().await.expect("GET");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(task_count(&app).await, 1, "only the POST created a task");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_rate_limit_answers_rate_limited_with_a_retry_time_and_recovers() {
    let app =
        TestApp::spawn_with(&[("TASKWIRE_RATE_LIMIT_OPERATIONS", "5"), ("TASKWIRE_RATE_LIMIT_MUTATIONS", "2")]).await;
    let alice = app.token("alice", &["client"]);
    let bob = app.token("bob", &["client"]);
    for i in 0..5 {
        let response = app.gql(Some(&alice), "{ me { subject } }", json!({})).await;
        assert!(response.errors().is_empty(), "operation {i} is within the burst: {response:?}");
    }
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&alice)
        .json(&json!({ "query": "{ me { subject } }" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 429);
    let header: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in whole seconds");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED", "{body}");
    assert!(body["errors"][0].get("locations").is_none(), "the GraphQL error shape, no locations: {body}");
    let retry_after = body["errors"][0]["extensions"]["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!((1..=1000).contains(&retry_after), "a refill of one token at 5/s: {retry_after}");
    assert_eq!(header, retry_after.div_ceil(1000), "Retry-After is retryAfterMs rounded up to whole seconds");

    let other = app.gql(Some(&bob), "{ me { subject } }", json!({})).await;
    assert!(other.errors().is_empty(), "another subject has its own budget");

    tokio::time::sleep(Duration::from_millis(retry_after + 50)).await;
    let again = app.gql(Some(&alice), "{ me { subject } }", json!({})).await;
    assert!(again.errors().is_empty(), "the budget refills: {again:?}");
    assert!(app.metric("taskwire_rate_limited_total{bucket=\"operations\"}").await >= 1.0);
}

#[tokio::test]
async fn mutations_have_a_budget_of_their_own() {
    let app =
        TestApp::spawn_with(&[("TASKWIRE_RATE_LIMIT_OPERATIONS", "100"), ("TASKWIRE_RATE_LIMIT_MUTATIONS", "2")]).await;
    let alice = app.token("alice", &["client"]);
    let create = format!("mutation {{ {CREATE} {{ created }} }}");
    assert!(app.gql(Some(&alice), &create, json!({})).await.errors().is_empty());
    assert!(app.gql(Some(&alice), &create, json!({})).await.errors().is_empty());
    assert_eq!(app.gql(Some(&alice), &create, json!({})).await.code(), "RATE_LIMITED");
    let query = app.gql(Some(&alice), "{ me { subject } }", json!({})).await;
    assert!(query.errors().is_empty(), "queries still pass: {query:?}");
    assert_eq!(task_count(&app).await, 2);
}

#[tokio::test]
async fn with_redis_two_processes_share_one_budget() {
    let Some(url) = require_service(REDIS_URL_VAR, "with_redis_two_processes_share_one_budget") else { return };
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let vars = [
        ("TASKWIRE_REDIS_URL", url.as_str()),
        ("TASKWIRE_REDIS_KEY_PREFIX", prefix.as_str()),
        ("TASKWIRE_RATE_LIMIT_OPERATIONS", "4"),
    ];
    let one = TestApp::spawn_with(&vars).await;
    let two = TestApp::spawn_with(&vars).await;
    let mut allowed = 0;
    for i in 0..8 {
        let app = if i % 2 == 0 { &one } else { &two };
        let token = app.token("alice", &["client"]);
        let response = app.gql(Some(&token), "{ me { subject } }", json!({})).await;
        if response.errors().is_empty() {
            allowed += 1;
        } else {
            assert_eq!(response.code(), "RATE_LIMITED");
        }
    }
    assert!((4..=5).contains(&allowed), "one budget of 4 (+ at most one refilled token) across both: {allowed}");
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_the_operational_series() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);
    let id = app.create_task(&token, json!({ "queue": "q", "kind": "k" })).await;
    app.gql(Some(&token), "query GetTask($id: ID!) { task(id: $id) { id } }", json!({ "id": id })).await;
    app.gql(Some(&token), "{ nope }", json!({})).await;

    // The task-status gauges come from a background sampler whose first round runs beside
    // these requests: wait (bounded) until it has reported once.
    let mut text = app.metrics().await;
    for _ in 0..100 {
        if text.contains("taskwire_tasks{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        text = app.metrics().await;
    }

    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            assert!(comment.starts_with(" HELP ") || comment.starts_with(" TYPE "), "comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line: {line}"));
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "value: {line}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "name: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "labels: {line}");
        }
    }
    for series in [
        "taskwire_graphql_operations_total{code=\"OK\",operation=\"GetTask\",type=\"query\"}",
        "taskwire_graphql_operations_total{code=\"BAD_USER_INPUT\"",
        "taskwire_graphql_operation_duration_seconds_bucket{operation=\"GetTask\"",
        "taskwire_cache_hits_total",
        "taskwire_cache_misses_total",
        "taskwire_redis_breaker_open",
        "taskwire_outbox_backlog",
        "taskwire_outbox_publish_latency_seconds_bucket",
        "taskwire_dispatch_latency_seconds_bucket",
        "taskwire_ws_connections",
        "taskwire_subscriptions",
        "taskwire_db_pool_connections{state=\"idle\"}",
        "taskwire_tasks{status=\"QUEUED\"}",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
}

#[tokio::test]
async fn with_redis_a_query_persisted_through_one_process_is_known_to_another() {
    let test = "with_redis_a_query_persisted_through_one_process_is_known_to_another";
    let Some(url) = require_service(REDIS_URL_VAR, test) else { return };
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let vars = [("TASKWIRE_REDIS_URL", url.as_str()), ("TASKWIRE_REDIS_KEY_PREFIX", prefix.as_str())];
    let one = TestApp::spawn_with(&vars).await;
    let two = TestApp::spawn_with(&vars).await;
    let query = "query Shared { me { subject } }";
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": sha256(query) } });

    let registered = one
        .post_json(Some(&one.token("alice", &["client"])), &json!({ "query": query, "extensions": extensions }))
        .await;
    assert!(registered.errors().is_empty(), "{registered:?}");
    let hit = two.post_json(Some(&two.token("alice", &["client"])), &json!({ "extensions": extensions })).await;

    assert_eq!(hit.data()["me"]["subject"], "alice", "the other process found it in Redis: {hit:?}");
}

#[tokio::test]
async fn with_introspection_off_errors_suggest_no_field_names() {
    let app = TestApp::spawn_with(&[("TASKWIRE_INTROSPECTION", "false")]).await;
    let token = app.token("alice", &["client"]);

    let typo = app.gql(Some(&token), "{ tsks { edges { node { id } } } }", json!({})).await;
    let introspection = app.gql(Some(&token), "{ __schema { types { name } } }", json!({})).await;

    assert_eq!(typo.code(), "BAD_USER_INPUT");
    let message = typo.errors()[0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.contains("Did you mean"), "no hints about the schema: {message}");
    // Whether it answers an error or a null field, no part of the schema comes back.
    let schema = &introspection.body["data"]["__schema"];
    assert!(schema.is_null(), "introspection answers nothing: {introspection:?}");
}
