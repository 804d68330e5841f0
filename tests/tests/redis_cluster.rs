//! Processes sharing a Redis Cluster (`TASKWIRE_TEST_REDIS_CLUSTER_URL`, a 3-master
//! cluster in CI): the task cache (L2), the rate limits and the persisted queries are
//! shared through it exactly as through one server. Each test skips when the variable is
//! not set.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use taskwire_tests::{REDIS_CLUSTER_URL_VAR, TestApp, require_service};

/// Tasks read in one request: enough that their keys land on many hash slots, on every
/// master of a 3-master cluster, and within the alias limit.
const TASKS: usize = 24;

/// The variables of a process on the cluster with key prefix `prefix`, only the api
/// role (no reaper or scheduler statements muddy the counts).
fn cluster_vars<'a>(url: &'a str, prefix: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![("TASKWIRE_REDIS_URL", url), ("TASKWIRE_REDIS_KEY_PREFIX", prefix), ("TASKWIRE_ROLES", "api")]
}

/// One query reading every id in `ids` by alias: one batch through the cache, one MGET.
fn read_all(ids: &[String]) -> String {
    let fields: String = ids.iter().enumerate().map(|(i, id)| format!("t{i}: task(id: \"{id}\") {{ id }} ")).collect();
    format!("{{ {fields}}}")
}

#[tokio::test]
async fn a_second_process_on_a_redis_cluster_is_ready_and_reads_the_first_ones_tasks_from_l2() {
    let test = "a_second_process_on_a_redis_cluster_is_ready_and_reads_the_first_ones_tasks_from_l2";
    let Some(url) = require_service(REDIS_CLUSTER_URL_VAR, test) else { return };
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let one = TestApp::spawn_with(&cluster_vars(&url, &prefix)).await;
    // The same database and the same cluster: two processes of one deployment.
    let mut vars = cluster_vars(&url, &prefix);
    vars.push(("TASKWIRE_DATABASE_URL", one.database_url.as_str()));
    let two = TestApp::spawn_with(&vars).await;

    for app in [&one, &two] {
        let (status, body) = app.get("/readyz").await;
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ready", "{body}");
        assert_eq!(body["dependencies"]["redis"]["state"], "up", "every master answers: {body}");
        assert_eq!(body["dependencies"]["redis"]["mode"], "cluster", "{body}");
    }

    let token = one.token("alice", &["client"]);
    let mut ids = Vec::new();
    for i in 0..TASKS {
        ids.push(one.create_task(&token, json!({ "queue": "q", "kind": format!("k{i}") })).await);
    }
    let query = read_all(&ids);
    // Process one loads them from the database and fills L2 (its L1 holds its own writes).
    one.task_cache.clear_local();
    let first = one.gql(Some(&token), &query, json!({})).await;
    assert_eq!(first.data().as_object().map(|o| o.len()), Some(TASKS), "{:?}", first.body);

    let statements_before = two.db_statements();
    let l2_hits_before = two.metric("taskwire_cache_hits_total{level=\"l2\"}").await;
    let response = two.gql(Some(&two.token("alice", &["client"])), &query, json!({})).await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(response.data()[format!("t{i}")]["id"], id.as_str(), "task {i} is served: {:?}", response.body);
    }
    assert_eq!(two.db_statements(), statements_before, "process two asked the database nothing");
    let l2_hits = two.metric("taskwire_cache_hits_total{level=\"l2\"}").await - l2_hits_before;
    assert_eq!(l2_hits, TASKS as f64, "every task came from the cluster in one multi-slot read");
    assert_eq!(two.metric("taskwire_redis_errors_total").await, 0.0, "no CROSSSLOT or other Redis error");
    assert_eq!(one.metric("taskwire_redis_errors_total").await, 0.0, "the fills went through on every slot");
}

#[tokio::test]
async fn processes_on_a_redis_cluster_share_persisted_queries_and_one_rate_limit_budget() {
    let test = "processes_on_a_redis_cluster_share_persisted_queries_and_one_rate_limit_budget";
    let Some(url) = require_service(REDIS_CLUSTER_URL_VAR, test) else { return };
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let mut vars = cluster_vars(&url, &prefix);
    vars.push(("TASKWIRE_RATE_LIMIT_OPERATIONS", "4"));
    let one = TestApp::spawn_with(&vars).await;
    let two = TestApp::spawn_with(&vars).await;

    // A persisted query registered with process one is found by process two.
    let query = format!("{{ me {{ subject }} }} # {prefix}");
    let hash = hex::encode(Sha256::digest(query.as_bytes()));
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    let bob_one = one.token("bob", &["client"]);
    let bob_two = two.token("bob", &["client"]);
    let unknown = two.post_json(Some(&bob_two), &json!({ "extensions": extensions })).await;
    assert_eq!(unknown.code(), "PERSISTED_QUERY_NOT_FOUND");
    let registered = one.post_json(Some(&bob_one), &json!({ "query": query, "extensions": extensions })).await;
    assert_eq!(registered.data()["me"]["subject"], "bob");
    let found = two.post_json(Some(&bob_two), &json!({ "extensions": extensions })).await;
    assert_eq!(found.data()["me"]["subject"], "bob", "process two runs the query process one learned");

    // One budget of 4 operations a second for alice across both processes.
    let mut allowed = 0;
    let mut refused = 0;
    for i in 0..8 {
        let app = if i % 2 == 0 { &one } else { &two };
        let response = app.gql(Some(&app.token("alice", &["client"])), "{ me { subject } }", json!({})).await;
        if response.errors().is_empty() {
            allowed += 1;
        } else {
            assert_eq!(response.code(), "RATE_LIMITED", "{:?}", response.body);
            refused += 1;
        }
    }
    assert!((4..=5).contains(&allowed), "one budget of 4 (+ at most one refilled token) across both: {allowed}");
    assert!(refused >= 3, "past the budget both processes refuse: {refused}");
    for app in [&one, &two] {
        assert_eq!(app.metric("taskwire_redis_errors_total").await, 0.0, "every check ran on the cluster");
    }
}
