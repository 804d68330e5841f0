//! Black-box tests of the HTTP surface: health, readiness, schema, GraphiQL's switch, GET
//! queries, and the request envelope limits.

use serde_json::{Value, json};
use taskwire_tests::{REDIS_URL_VAR, TestApp, require_service};

#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).ok(), Some(json!({ "status": "ok" })));
}

#[tokio::test]
async fn readyz_names_each_dependency_and_is_ready_without_redis() {
    // Explicitly without Redis: with TASKWIRE_TEST_REDIS_URL set, test apps use it.
    let app = TestApp::spawn_with(&[("TASKWIRE_REDIS_URL", "")]).await;
    let (status, body) = app.get("/readyz").await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["dependencies"]["database"]["state"], "up");
    assert_eq!(body["dependencies"]["redis"]["state"], "disabled");
}

#[tokio::test]
async fn readyz_says_when_the_dispatcher_has_joined_its_group_without_making_it_a_condition() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/readyz").await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status, 200, "ready while the group is still forming: {body}");
    let state = body["dispatcher"]["state"].as_str().unwrap_or_default().to_owned();
    assert!(state == "joining" || state == "joined", "{body}");
    // The group assigns its first member after the broker's initial rebalance delay.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, body) = app.get("/readyz").await;
        let body: Value = serde_json::from_str(&body).expect("JSON");
        if body["dispatcher"]["state"] == "joined" {
            assert!(body["dispatcher"]["partitions"].as_u64().is_some_and(|p| p > 0), "the only member: {body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never joined: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let api_only = TestApp::spawn_with(&[("TASKWIRE_ROLES", "api")]).await;
    let (_, body) = api_only.get("/readyz").await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert!(body.get("dispatcher").is_none(), "a process that does not dispatch says nothing: {body}");
}

#[tokio::test]
async fn readyz_reports_an_unreachable_redis_as_degraded_but_stays_ready() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let app = TestApp::spawn_with(&[("TASKWIRE_REDIS_URL", "redis://127.0.0.1:1")]).await;
    let (status, body) = app.get("/readyz").await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status, 200, "Redis down only degrades: {body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["dependencies"]["redis"]["state"], "down");
}

#[tokio::test]
async fn readyz_reports_a_real_redis_as_up() {
    let Some(url) = require_service(REDIS_URL_VAR, "readyz_reports_a_real_redis_as_up") else {
        return;
    };
    let app = TestApp::spawn_with(&[("TASKWIRE_REDIS_URL", &url)]).await;
    let (status, body) = app.get("/readyz").await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status, 200);
    assert_eq!(body["dependencies"]["redis"]["state"], "up", "{body}");
}

#[tokio::test]
async fn the_sdl_is_served() {
    let app = TestApp::spawn().await;
    let (status, sdl) = app.get("/schema.graphql").await;
    assert_eq!(status, 200);
    assert_eq!(sdl, taskwire_api::graphql::sdl());
    // Arguments carry descriptions, so each sits on lines of its own.
    assert!(
        sdl.contains("\tcreateTask(\n") && sdl.contains("\t\tinput: CreateTaskInput!\n\t): CreateTaskPayload!"),
        "{sdl}"
    );
}

#[tokio::test]
async fn graphiql_and_introspection_can_be_switched_off() {
    let app = TestApp::spawn_with(&[("TASKWIRE_GRAPHIQL", "false"), ("TASKWIRE_INTROSPECTION", "false")]).await;
    assert_eq!(app.get("/graphiql").await.0, 404);
    let response = app.gql(None, "{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(response.body["data"]["__schema"], Value::Null, "introspection answers nothing: {}", response.body);
    let (status, _) = app.get("/schema.graphql").await;
    assert_eq!(status, 404, "nor does the SDL endpoint");
}

#[tokio::test]
async fn queries_work_over_get_but_mutations_do_not() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);
    let query = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", "{ me { subject } }")])
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(query.status().as_u16(), 200);
    let body: Value = query.json().await.expect("JSON");
    assert_eq!(body["data"]["me"]["subject"], "alice");

    let mutation = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", "mutation { createTask(input: {queue: \"q\", kind: \"k\"}) { created } }")])
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(mutation.status().as_u16(), 405);
    let body: Value = mutation.json().await.expect("JSON");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let listed = app.gql(Some(&token), "{ tasks { edges { node { id } } } }", json!({})).await;
    assert_eq!(listed.data()["tasks"]["edges"], json!([]), "the GET mutation did not run");
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_payload_too_large() {
    let app = TestApp::spawn_with(&[("TASKWIRE_MAX_BODY_BYTES", "1024")]).await;
    let token = app.token("alice", &["client"]);
    let padding = "x".repeat(2048);
    let response =
        app.post_json(Some(&token), &json!({ "query": format!("{{ me {{ subject }} }} # {padding}") })).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.code(), "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn batched_requests_run_up_to_the_limit() {
    let app = TestApp::spawn_with(&[("TASKWIRE_MAX_BATCH_OPERATIONS", "3")]).await;
    let token = app.token("alice", &["client"]);
    let op = json!({ "query": "{ me { subject } }" });
    let ok = app.post_json(Some(&token), &json!([op, op, op])).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body.as_array().map(Vec::len), Some(3), "{}", ok.body);
    assert_eq!(ok.body[2]["data"]["me"]["subject"], "alice");

    let too_many = app.post_json(Some(&token), &json!([op, op, op, op])).await;
    assert_eq!(too_many.status, 400);
    assert_eq!(too_many.code(), "BATCH_TOO_LARGE");
}

#[tokio::test]
async fn a_body_that_is_not_a_graphql_request_is_bad_input() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
}

/// A JSON body without a document (and without a persisted query's hash) is not a
/// GraphQL request: 400, not a parse error of an empty document with a location.
#[tokio::test]
async fn a_request_without_a_query_is_bad_input_with_400() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);

    let empty = app.post_json(Some(&token), &json!({})).await;
    let blank = app.post_json(Some(&token), &json!({ "query": "  ", "variables": {} })).await;

    for (case, response) in [("no query", &empty), ("a blank query", &blank)] {
        assert_eq!(response.status, 400, "{case}: {:?}", response.body);
        assert_eq!(response.code(), "BAD_USER_INPUT", "{case}");
        assert!(response.errors()[0].get("locations").is_none(), "{case}: no location in a document that is not there");
    }
}

#[tokio::test]
async fn every_error_carries_a_request_id_that_matches_the_header() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("x-request-id", "trace-me-123")
        .json(&json!({ "query": "{ me { subject } }" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-me-123"));
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(body["errors"][0]["extensions"]["requestId"], "trace-me-123");
}

/// A preflight from `origin` asking to POST with `Authorization` and JSON.
async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, format!("{}/graphql", app.address))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization,content-type,traceparent")
        .send()
        .await
        .expect("preflight sent")
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A page on a listed origin may call the API from a browser: the preflight allows the
/// method and the headers a GraphQL client sends, and the answer names the origin. Any
/// other origin gets no `Access-Control-Allow-Origin`, so the browser refuses the call.
#[tokio::test]
async fn a_listed_origin_may_call_from_a_browser_and_others_may_not() {
    let app = TestApp::spawn_with(&[("TASKWIRE_CORS_ORIGINS", "https://app.example.com")]).await;
    let alice = app.token("alice", &["client"]);

    let allowed = preflight(&app, "https://app.example.com").await;
    let refused = preflight(&app, "https://evil.example").await;
    let call = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("Origin", "https://app.example.com")
        .bearer_auth(&alice)
        .json(&json!({ "query": "{ me { subject } }" }))
        .send()
        .await
        .expect("sent");

    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(header(&allowed, "access-control-allow-origin").as_deref(), Some("https://app.example.com"));
    let headers = header(&allowed, "access-control-allow-headers").unwrap_or_default().to_lowercase();
    for name in ["authorization", "content-type", "traceparent"] {
        assert!(headers.contains(name), "{name} is allowed: {headers}");
    }
    assert!(header(&allowed, "access-control-allow-methods").unwrap_or_default().contains("POST"));
    assert_eq!(header(&refused, "access-control-allow-origin"), None, "an unlisted origin is not allowed");
    assert_eq!(header(&call, "access-control-allow-origin").as_deref(), Some("https://app.example.com"));
    assert!(header(&call, "access-control-expose-headers").unwrap_or_default().to_lowercase().contains("retry-after"));
    let body: Value = call.json().await.expect("JSON");
    assert_eq!(body["data"]["me"]["subject"], "alice");
}

/// `localhost` (the embedded default) lets a frontend's dev server on any local port call,
/// and nothing else.
#[tokio::test]
async fn localhost_origins_may_call_when_cors_is_set_to_localhost() {
    let app = TestApp::spawn_with(&[("TASKWIRE_CORS_ORIGINS", "localhost")]).await;

    let vite = preflight(&app, "http://localhost:5173").await;
    let lookalike = preflight(&app, "http://localhost.evil.example").await;

    assert_eq!(header(&vite, "access-control-allow-origin").as_deref(), Some("http://localhost:5173"));
    assert_eq!(header(&lookalike, "access-control-allow-origin"), None);
}
