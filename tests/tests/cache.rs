//! The task read cache, from outside: one database load for many concurrent misses,
//! hot reads that never touch the database, no stale value after a write, and reads that
//! keep working while Redis is down.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use taskwire_tests::{REDIS_URL_VAR, TcpProxy, TestApp, require_service};

const READ: &str = "query($id: ID!) { task(id: $id) { id status version } }";

async fn app_without_dispatcher() -> TestApp {
    // Only the api role: no reaper or scheduler statements muddy the counts.
    TestApp::spawn_with(&[("TASKWIRE_ROLES", "api")]).await
}

#[tokio::test]
async fn a_thousand_concurrent_reads_of_an_uncached_task_cause_exactly_one_database_load() {
    let app = app_without_dispatcher().await;
    let token = app.token("alice", &["client"]);
    let id = app.create_task(&token, json!({ "queue": "q", "kind": "k" })).await;
    app.task_cache.clear_local();
    let loads_before = app.metric("taskwire_cache_db_loads_total").await;
    let statements_before = app.db_statements();

    let reads = (0..1000).map(|_| app.gql(Some(&token), READ, json!({ "id": id })));
    let responses = join_all(reads).await;

    for response in &responses {
        assert_eq!(response.data()["task"]["id"], id.as_str(), "every read sees the task: {response:?}");
    }
    assert_eq!(app.db_statements() - statements_before, 1, "one SELECT for a thousand readers");
    assert_eq!(app.metric("taskwire_cache_db_loads_total").await - loads_before, 1.0);
}

#[tokio::test]
async fn hot_reads_are_served_from_memory_without_touching_the_database() {
    let app = app_without_dispatcher().await;
    let token = app.token("alice", &["client"]);
    let id = app.create_task(&token, json!({ "queue": "q", "kind": "k" })).await;
    app.gql(Some(&token), READ, json!({ "id": id })).await;
    let statements_before = app.db_statements();

    for _ in 0..200 {
        let response = app.gql(Some(&token), READ, json!({ "id": id })).await;
        assert_eq!(response.data()["task"]["status"], "QUEUED");
    }

    assert_eq!(app.db_statements(), statements_before, "200 hot reads, no statement");
    assert!(app.metric("taskwire_cache_hits_total{level=\"l1\"}").await >= 200.0);
}

#[tokio::test]
async fn a_task_the_caller_may_not_see_stays_invisible_when_cached() {
    let app = app_without_dispatcher().await;
    let alice = app.token("alice", &["client"]);
    let bob = app.token("bob", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    app.gql(Some(&alice), READ, json!({ "id": id })).await;

    let response = app.gql(Some(&bob), READ, json!({ "id": id })).await;

    assert_eq!(response.data()["task"], serde_json::Value::Null, "cached or not, visibility is checked");
}

#[tokio::test]
async fn reads_racing_a_write_never_leave_the_old_version_cached() {
    let app = app_without_dispatcher().await;
    let token = app.token("alice", &["client"]);
    for round in 0..20 {
        let id = app.create_task(&token, json!({ "queue": "q", "kind": "k" })).await;
        app.task_cache.clear_local();
        let reads = join_all((0..20).map(|_| app.gql(Some(&token), READ, json!({ "id": id }))));
        let cancel =
            app.gql(Some(&token), "mutation($id: ID!) { cancelTask(id: $id) { status } }", json!({ "id": id }));
        let (_, cancelled) = tokio::join!(reads, cancel);
        assert_eq!(cancelled.data()["cancelTask"]["status"], "CANCELLED", "round {round}: {cancelled:?}");

        // Read-your-writes at once, and still after the status event went through.
        for pause in [0, 300] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let after = app.gql(Some(&token), READ, json!({ "id": id })).await;
            assert_eq!(after.data()["task"]["status"], "CANCELLED", "round {round}, {pause} ms after the write");
        }
    }
}

#[tokio::test]
async fn with_redis_cut_under_load_reads_keep_succeeding_and_the_breaker_recovers() {
    let test = "with_redis_cut_under_load_reads_keep_succeeding_and_the_breaker_recovers";
    let Some(url) = require_service(REDIS_URL_VAR, test) else { return };
    let authority = url.trim_start_matches("redis://").split('/').next().unwrap_or_default().to_owned();
    let upstream = tokio::net::lookup_host(authority).await.expect("redis address").next().expect("an address");
    let proxy = TcpProxy::start(upstream).await;
    let proxied = format!("redis://127.0.0.1:{}", proxy.port());
    let app = TestApp::spawn_with(&[
        ("TASKWIRE_ROLES", "api"),
        ("TASKWIRE_REDIS_URL", &proxied),
        ("TASKWIRE_REDIS_BREAKER_COOLDOWN_MS", "300"),
        ("TASKWIRE_CACHE_L1_TTL_MS", "50"),
    ])
    .await;
    let token = app.token("alice", &["client"]);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(app.create_task(&token, json!({ "queue": "q", "kind": "k" })).await);
    }
    let read_all = || join_all(ids.iter().map(|id| app.gql(Some(&token), READ, json!({ "id": id }))));
    let ok = |responses: &[taskwire_tests::GqlResponse]| responses.iter().all(|r| r.errors().is_empty());
    assert!(ok(&read_all().await), "warm-up reads succeed");

    proxy.stop().await;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut rounds = 0;
    while tokio::time::Instant::now() < until {
        let responses = read_all().await;
        assert!(
            ok(&responses),
            "reads succeed while Redis is down: {:?}",
            responses.iter().find(|r| !r.errors().is_empty())
        );
        rounds += 1;
    }
    assert!(rounds > 1);
    assert_eq!(app.metric("taskwire_redis_breaker_open").await, 1.0, "the breaker opened");

    proxy.resume().await;
    // Reads drive the probe that closes the breaker.
    let mut closed = false;
    for _ in 0..100 {
        assert!(ok(&read_all().await), "reads succeed while Redis comes back");
        if app.metric("taskwire_redis_breaker_open").await == 0.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the breaker closed again once Redis was back");
    let hits_before = app.metric("taskwire_cache_hits_total{level=\"l2\"}").await;
    app.task_cache.clear_local();
    assert!(ok(&read_all().await));
    assert!(app.metric("taskwire_cache_hits_total{level=\"l2\"}").await > hits_before, "L2 serves again");
}
