//! The checked-in contract matches the server.

use serde_json::{Value, json};
use taskwire_frontend_schema::{OPERATIONS, SCHEMA};
use taskwire_tests::TestApp;

#[test]
fn the_checked_in_sdl_matches_the_server() {
    let server = taskwire_api::graphql::sdl();
    assert!(
        SCHEMA == server,
        "frontend-schema/schema.graphql is stale; regenerate it with\n    cargo run -q -- schema > frontend-schema/schema.graphql\nand review the diff (frontends depend on it)"
    );
}

/// Sample variables by name, enough for every operation to pass validation.
fn variables_for(operation: &str, task_id: &str) -> Value {
    match operation {
        "GetTask" => json!({ "id": task_id, "lastEvents": 5 }),
        "ListTasks" => json!({ "filter": { "status": ["QUEUED"] }, "first": 5 }),
        "CreateTask" => json!({ "input": { "queue": "q", "kind": "k", "payload": { "n": 1 } } }),
        "CreateTasks" => json!({ "inputs": [{ "queue": "q", "kind": "k" }] }),
        "CancelTask" => json!({ "id": task_id, "reason": "contract test" }),
        _ => json!({}),
    }
}

fn operation_names(document: &str) -> Vec<String> {
    document
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let rest = line.strip_prefix("query ").or_else(|| line.strip_prefix("mutation "))?;
            Some(rest.split(['(', ' ', '{']).next().unwrap_or_default().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn every_checked_in_operation_runs_without_errors() {
    let app = TestApp::spawn().await;
    let token = app.token("contract", &["client"]);
    for (file, document) in OPERATIONS {
        let names = operation_names(document);
        assert!(!names.is_empty(), "{file} holds operations");
        for name in names {
            let task_id = app.create_task(&token, json!({ "queue": "q", "kind": "k" })).await;
            let body = json!({ "query": document, "operationName": name, "variables": variables_for(&name, &task_id) });
            let response = app.post_json(Some(&token), &body).await;
            assert_eq!(response.status, 200, "{file} {name}");
            assert!(response.errors().is_empty(), "{file} {name}: {}", response.body);
        }
    }
}
