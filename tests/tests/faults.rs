//! Dependency failures: what clients see while the database is down, and recovery
//! without a restart (README, Testing: the fault test).

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use serde_json::{Value, json};
use taskwire_tests::{CommitCut, TestApp};
use taskwire_worker::{Handler, Outcome, Worker, WorkerConfig};

#[tokio::test]
async fn database_outage_answers_unavailable_and_recovers_without_restart() {
    let Some((app, proxy)) =
        TestApp::spawn_with_database_proxy("database_outage_answers_unavailable_and_recovers_without_restart", &[])
            .await
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

/// A create whose `COMMIT` is cut, before the database got it or after it applied it,
/// is answered `UNAVAILABLE` (the server cannot tell which happened) and never run again
/// behind the caller's back: the task exists once or not at all, and retrying with the
/// idempotency key ends with exactly one task. Only the API runs here (no dispatcher), so
/// the create's transaction is the one the proxy recognises by its queue.
#[tokio::test]
async fn a_create_whose_commit_is_cut_answers_unavailable_and_is_never_doubled() {
    let test = "a_create_whose_commit_is_cut_answers_unavailable_and_is_never_doubled";
    let Some((app, proxy)) = TestApp::spawn_with_database_proxy(test, &[("TASKWIRE_ROLES", "api")]).await else {
        return;
    };
    let alice = app.token("alice", &["client"]);
    let create = "mutation($input: CreateTaskInput!) { createTask(input: $input) { created task { id } } }";
    let in_queue = |queue: &str| {
        let (app, alice, queue) = (&app, &alice, queue.to_owned());
        async move {
            let listed = app
                .gql(
                    Some(alice),
                    "query($q: String) { tasks(filter: { queue: $q }) { edges { node { id } } } }",
                    json!({ "q": queue }),
                )
                .await;
            listed.data()["tasks"]["edges"].as_array().map_or(0, Vec::len)
        }
    };
    for (mode, committed) in [(CommitCut::Before, 0), (CommitCut::After, 1)] {
        for keyed in [false, true] {
            let queue = format!(
                "cut-{}-{}",
                if committed == 0 { "before" } else { "after" },
                if keyed { "keyed" } else { "plain" }
            );
            let mut input = json!({ "queue": queue, "kind": "k" });
            if keyed {
                input["idempotencyKey"] = json!(format!("key-{queue}"));
            }
            let cuts = proxy.commits_cut();
            proxy.cut_next_commit(&queue, mode);
            let answer = app.gql(Some(&alice), create, json!({ "input": input })).await;
            assert_eq!(proxy.commits_cut(), cuts + 1, "{queue}: the create's COMMIT was cut");
            assert_eq!(answer.codes(), ["UNAVAILABLE"], "{queue}: {}", answer.body);
            assert_eq!(in_queue(&queue).await, committed, "{queue}: committed once or not at all, never run again");
            if keyed {
                let retried = app.gql(Some(&alice), create, json!({ "input": input })).await;
                assert!(retried.errors().is_empty(), "{queue}: {}", retried.body);
                assert_eq!(retried.data()["createTask"]["created"], committed == 0, "{queue}: {}", retried.body);
                assert_eq!(in_queue(&queue).await, 1, "{queue}: one task after the retry");
            }
        }
    }
}

/// A worker's report whose `COMMIT` is cut is applied exactly once. The server answers
/// `UNAVAILABLE` (it cannot tell whether the commit applied) and the Rust SDK sends the
/// report again, as it does for every `UNAVAILABLE`. Cut before the database got it, the
/// first report rolled back and the second one completes the task (`Ok`). Cut after the
/// database applied it, the task succeeded with the first, and the second answers
/// `LEASE_LOST` (the lease ended with the report). Either way: one attempt, one
/// `SUCCEEDED` in the history, the worker's result kept. The result carries the marker the
/// proxy recognises.
#[tokio::test]
async fn a_report_whose_commit_is_cut_is_applied_exactly_once() {
    let test = "a_report_whose_commit_is_cut_is_applied_exactly_once";
    let Some((app, proxy)) = TestApp::spawn_with_database_proxy(test, &[]).await else { return };
    let alice = app.token("alice", &["client"]);
    for (n, (mode, answer)) in
        [(CommitCut::Before, None), (CommitCut::After, Some("LEASE_LOST"))].into_iter().enumerate()
    {
        let marker = format!("result-of-a-cut-{n}");
        let result = json!({ "marker": marker });
        let handler: Handler = Arc::new({
            let result = result.clone();
            move |_| {
                let result = result.clone();
                async move { Outcome::Complete(Some(result)) }.boxed()
            }
        });
        let worker_id = format!("w{n}");
        let config = WorkerConfig {
            url: app.address.clone(),
            token: app.token(&worker_id, &["worker"]),
            name: worker_id.clone(),
            queues: vec![format!("q{n}")],
            capacity: 1,
            heartbeat_every: Duration::from_millis(200),
            auto_accept: false,
        };
        let worker = Worker::start(config, handler).await.expect("start");
        let cuts = proxy.commits_cut();
        proxy.cut_next_commit(&marker, mode);
        let id = app.create_task(&alice, json!({ "queue": format!("q{n}"), "kind": "k" })).await;
        let query = "query($id: ID!) { task(id: $id) { status attempts result events(last: 50) { status } } }";
        let mut task = Value::Null;
        for _ in 0..150 {
            task = app.gql(Some(&alice), query, json!({ "id": id })).await.data()["task"].clone();
            if task["status"] == "SUCCEEDED" && worker.stats().in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(proxy.commits_cut(), cuts + 1, "{mode:?}: the report's COMMIT was cut");
        assert_eq!(
            (task["status"].as_str(), task["attempts"].as_i64()),
            (Some("SUCCEEDED"), Some(1)),
            "{mode:?}: {task}"
        );
        assert_eq!(task["result"], result, "{mode:?}: the worker's result is kept");
        let succeeded =
            task["events"].as_array().expect("events").iter().filter(|e| e["status"] == "SUCCEEDED").count();
        assert_eq!(succeeded, 1, "{mode:?}: {task}");
        let record = worker.log().into_iter().find(|r| r.task_id == id).expect("the run is logged");
        let code = record.answer.as_ref().and_then(|a| a.as_ref().err()).map(|e| e.code().into_owned());
        assert_eq!(code.as_deref(), answer, "{mode:?}: {record:?}");
        worker.stop().await;
    }
}

/// Redis cut for several seconds while writes, reads by persisted-query hash and rate
/// limits are in flight: every create and read succeeds (the rate limits and persisted
/// queries fall back to this process), the limits still refuse a burst, and once Redis is
/// back the breaker closes and what was written meanwhile reads back.
#[tokio::test]
async fn a_redis_outage_under_writes_rate_limits_and_persisted_queries_fails_soft() {
    use sha2::Digest;
    let test = "a_redis_outage_under_writes_rate_limits_and_persisted_queries_fails_soft";
    let Some(url) = taskwire_tests::require_service(taskwire_tests::REDIS_URL_VAR, test) else { return };
    let authority = url.trim_start_matches("redis://").split('/').next().unwrap_or_default().to_owned();
    let upstream = tokio::net::lookup_host(authority).await.expect("redis address").next().expect("an address");
    let proxy = taskwire_tests::TcpProxy::start(upstream).await;
    let proxied = format!("redis://127.0.0.1:{}", proxy.port());
    let app = TestApp::spawn_with(&[
        ("TASKWIRE_REDIS_URL", &proxied),
        ("TASKWIRE_REDIS_BREAKER_COOLDOWN_MS", "300"),
        ("TASKWIRE_RATE_LIMIT_OPERATIONS", "60"),
    ])
    .await;
    let alice = app.token("alice", &["client"]);
    let query = "query Mine($id: ID!) { task(id: $id) { id status } }";
    let hash = hex::encode(sha2::Sha256::digest(query.as_bytes()));
    let persisted = |id: &str| json!({ "variables": { "id": id }, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } });
    let first = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let registered = app
        .post_json(
            Some(&alice),
            &json!({ "query": query, "variables": { "id": first }, "extensions": persisted(&first)["extensions"] }),
        )
        .await;
    assert_eq!(registered.data()["task"]["id"], first.as_str(), "registered before the outage");

    proxy.stop().await;
    let mut created = vec![first];
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        // About 20 operations a second: within alice's budget of 60.
        let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
        let read = app.post_json(Some(&alice), &persisted(&id)).await;
        assert_eq!(read.data()["task"]["id"], id.as_str(), "a read by hash while Redis is down: {read:?}");
        created.push(id);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(app.metric("taskwire_redis_breaker_open").await, 1.0, "the breaker opened");
    // The limits still hold, from this process's own buckets.
    let carol = app.token("carol", &["client"]);
    let burst =
        futures::future::join_all((0..120).map(|_| app.gql(Some(&carol), "{ me { subject } }", json!({})))).await;
    let limited =
        burst.iter().filter(|r| r.errors().first().is_some_and(|e| e["extensions"]["code"] == "RATE_LIMITED")).count();
    assert!(limited >= 10, "a burst of 120 against a budget of 60 is refused in part while Redis is down ({limited})");
    assert!(burst.iter().all(|r| r.errors().is_empty() || r.code() == "RATE_LIMITED"), "nothing else fails");

    proxy.resume().await;
    let mut closed = false;
    for _ in 0..100 {
        let read = app.post_json(Some(&alice), &persisted(&created[0])).await;
        assert!(read.errors().is_empty(), "reads succeed while Redis comes back: {read:?}");
        if app.metric("taskwire_redis_breaker_open").await == 0.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(closed, "the breaker closed again once Redis was back");
    for id in &created {
        let read = app.post_json(Some(&alice), &persisted(id)).await;
        assert_eq!(read.data()["task"]["status"], "QUEUED", "{id} was written during the outage and reads back");
    }
}
