//! Dependency failures: what clients see while the database is down, and recovery
//! without a restart (README, Testing: the fault test).

use serde_json::json;
use taskwire_tests::TestApp;

#[tokio::test]
async fn database_outage_answers_unavailable_and_recovers_without_restart() {
    let Some((app, proxy)) =
        TestApp::spawn_with_database_proxy("database_outage_answers_unavailable_and_recovers_without_restart").await
    else {
        return;
    };
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;

    proxy.stop().await;

    let create = app
        .gql(Some(&alice), "mutation { createTask(input: {queue: \"q\", kind: \"k\"}) { created } }", json!({}))
        .await;
    assert_eq!(create.codes(), ["UNAVAILABLE"], "{}", create.body);
    let read = app.gql(Some(&alice), "query($id: ID!) { task(id: $id) { id } }", json!({ "id": id })).await;
    assert_eq!(read.codes(), ["UNAVAILABLE"], "{}", read.body);
    let message = read.errors()[0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.contains("mysql") && !message.contains("127.0.0.1"), "no internals leak: {message}");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");

    proxy.resume().await;

    let mut recovered = false;
    for _ in 0..50 {
        let read = app.gql(Some(&alice), "query($id: ID!) { task(id: $id) { id } }", json!({ "id": id })).await;
        if read.errors().is_empty() {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "reads recover once the database is back");
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
    let listed = app.gql(Some(&alice), "{ tasks { edges { node { id } } } }", json!({})).await;
    assert_eq!(
        listed.data()["tasks"]["edges"].as_array().map(Vec::len),
        Some(1),
        "the failed create left nothing behind"
    );
}
