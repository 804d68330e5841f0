//! Workers and queues: registration, heartbeats, draining, queue settings, operator
//! recovery (`retryTask`, `requeueDeadTasks`).

use serde_json::{Value, json};
use taskwire_tests::TestApp;

const REGISTER: &str = "mutation($input: RegisterWorkerInput!) { registerWorker(input: $input) { id name queues capacity activeTasks status lastSeenAt } }";
const HEARTBEAT: &str = "mutation { heartbeat { id status lastSeenAt } }";
const QUEUE_FIELDS: &str = "name paused rateLimitPerSecond maxConcurrency maxAttempts leaseSeconds backoffBaseMs backoffMaxMs stats { queued dead }";

fn register_input(name: &str, queues: &[&str], capacity: i32) -> Value {
    json!({ "input": { "name": name, "queues": queues, "capacity": capacity } })
}

#[tokio::test]
async fn a_worker_registers_under_its_token_subject_and_can_update_itself() {
    let app = TestApp::spawn().await;
    let worker = app.token("courier-7", &["worker"]);
    let registered = app.gql(Some(&worker), REGISTER, register_input("Courier 7", &["eu", "asia", "eu"], 3)).await;
    let w = &registered.data()["registerWorker"];
    assert_eq!(w["id"], "courier-7");
    assert_eq!(w["queues"], json!(["asia", "eu"]), "sorted, deduplicated");
    assert_eq!(
        (w["capacity"].clone(), w["activeTasks"].clone(), w["status"].clone()),
        (json!(3), json!(0), json!("ONLINE"))
    );

    let again = app.gql(Some(&worker), REGISTER, register_input("Courier 7b", &["eu"], 5)).await;
    assert_eq!(again.data()["registerWorker"]["name"], "Courier 7b");
    assert_eq!(again.data()["registerWorker"]["capacity"], 5);
}

#[tokio::test]
async fn registration_is_validated_and_reserved_for_workers() {
    let app = TestApp::spawn().await;
    let worker = app.token("w", &["worker"]);
    for (vars, field) in [
        (register_input("", &["q"], 1), "input.name"),
        (register_input("w", &[], 1), "input.queues"),
        (register_input("w", &["Not A Queue"], 1), "input.queues.queue"),
        (register_input("w", &["q"], 0), "input.capacity"),
    ] {
        let response = app.gql(Some(&worker), REGISTER, vars).await;
        assert_eq!(response.code(), "BAD_USER_INPUT", "{field}");
        assert_eq!(response.errors()[0]["extensions"]["field"], field);
    }
    let client = app.token("alice", &["client"]);
    assert_eq!(app.gql(Some(&client), REGISTER, register_input("w", &["q"], 1)).await.code(), "FORBIDDEN");
}

#[tokio::test]
async fn heartbeats_need_a_registration_and_extend_running_leases() {
    let app = TestApp::spawn().await;
    let worker = app.token("w1", &["worker"]);
    assert_eq!(app.gql(Some(&worker), HEARTBEAT, json!({})).await.code(), "NOT_FOUND");
    app.gql(Some(&worker), REGISTER, register_input("one", &["q"], 1)).await.data();

    // A task running on w1 whose lease ends in one second, set up directly, its slot
    // taken first: the dispatcher offers a task the moment it is queued, and must not
    // offer this one to w1 under the set-up's feet.
    app.sql("UPDATE workers SET active = 1 WHERE id = 'w1'").await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let soon = chrono::Utc::now().timestamp_millis() + 1_000;
    app.sql(&format!(
        "UPDATE tasks SET status = 'RUNNING', version = version + 1, worker_id = 'w1', lease_token = 't', \
         lease_expires_at = {soon} WHERE id = '{id}'"
    ))
    .await;

    let beat = app.gql(Some(&worker), HEARTBEAT, json!({})).await;
    assert_eq!(beat.data()["heartbeat"]["status"], "ONLINE");
    let operator = app.token("olga", &["operator"]);
    let task = app
        .gql(Some(&operator), "query($id: ID!) { task(id: $id) { leaseExpiresAt worker { id } } }", json!({ "id": id }))
        .await;
    let expires =
        chrono::DateTime::parse_from_rfc3339(task.data()["task"]["leaseExpiresAt"].as_str().unwrap_or_default())
            .expect("timestamp")
            .timestamp_millis();
    assert!(expires >= soon + 25_000, "extended by the queue's 30 s lease");
    assert_eq!(task.data()["task"]["worker"]["id"], "w1");
}

#[tokio::test]
async fn an_admin_drains_a_worker_and_it_stays_drained_when_it_reregisters() {
    let app = TestApp::spawn().await;
    let worker = app.token("w1", &["worker"]);
    let admin = app.token("root", &["admin"]);
    let operator = app.token("olga", &["operator"]);
    app.gql(Some(&worker), REGISTER, register_input("one", &["q"], 2)).await.data();
    let drain = "mutation($id: ID!) { drainWorker(id: $id) { id status } }";

    assert_eq!(app.gql(Some(&operator), drain, json!({ "id": "w1" })).await.code(), "FORBIDDEN");
    assert_eq!(app.gql(Some(&admin), drain, json!({ "id": "nobody" })).await.code(), "NOT_FOUND");
    assert_eq!(app.gql(Some(&admin), drain, json!({ "id": "w1" })).await.data()["drainWorker"]["status"], "DRAINING");
    let again = app.gql(Some(&worker), REGISTER, register_input("one", &["q"], 2)).await;
    assert_eq!(again.data()["registerWorker"]["status"], "DRAINING");
}

#[tokio::test]
async fn operators_list_workers_and_a_worker_sees_only_itself() {
    let app = TestApp::spawn().await;
    for (id, queues) in [("w1", vec!["eu"]), ("w2", vec!["eu", "us"]), ("w3", vec!["us"])] {
        let token = app.token(id, &["worker"]);
        app.gql(Some(&token), REGISTER, register_input(id, &queues, 1)).await.data();
    }
    let admin = app.token("root", &["admin"]);
    app.gql(Some(&admin), "mutation { drainWorker(id: \"w3\") { id } }", json!({})).await.data();
    let operator = app.token("olga", &["operator"]);
    let list = |vars: Value| {
        let app = &app;
        let operator = operator.clone();
        async move {
            let r = app
                .gql(
                    Some(&operator),
                    "query($q: String, $s: WorkerStatus) { workers(queue: $q, status: $s) { id } }",
                    vars,
                )
                .await;
            r.data()["workers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|w| w["id"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(json!({})).await, ["w1", "w2", "w3"]);
    assert_eq!(list(json!({ "q": "us" })).await, ["w2", "w3"]);
    assert_eq!(list(json!({ "s": "DRAINING" })).await, ["w3"]);
    assert_eq!(list(json!({ "q": "eu", "s": "ONLINE" })).await, ["w1", "w2"]);

    let w1 = app.token("w1", &["worker"]);
    let me = app.gql(Some(&w1), "{ worker(id: \"w1\") { id } other: worker(id: \"w2\") { id } }", json!({})).await;
    assert_eq!(me.data()["worker"]["id"], "w1");
    assert_eq!(me.data()["other"], Value::Null, "another worker reads like a missing one");
    let client = app.token("alice", &["client"]);
    assert_eq!(app.gql(Some(&client), "{ workers { id } }", json!({})).await.code(), "FORBIDDEN");
}

#[tokio::test]
async fn an_admin_configures_pauses_and_resumes_a_queue() {
    let app = TestApp::spawn().await;
    let admin = app.token("root", &["admin"]);
    let read = format!("query($n: String!) {{ queue(name: $n) {{ {QUEUE_FIELDS} }} }}");
    let defaults = app.gql(Some(&admin), &read, json!({ "n": "mail" })).await;
    assert_eq!(
        defaults.data()["queue"],
        json!({ "name": "mail", "paused": false, "rateLimitPerSecond": null, "maxConcurrency": null, "maxAttempts": null,
                "leaseSeconds": 30, "backoffBaseMs": 1000, "backoffMaxMs": 300000, "stats": { "queued": 0, "dead": 0 } })
    );

    let configure = format!("mutation($i: ConfigureQueueInput!) {{ configureQueue(input: $i) {{ {QUEUE_FIELDS} }} }}");
    let set = app
        .gql(Some(&admin), &configure, json!({ "i": { "name": "mail", "rateLimitPerSecond": 5.5, "maxConcurrency": 3, "maxAttempts": 2, "leaseSeconds": 60, "backoffBaseMs": 200, "backoffMaxMs": 5000 } }))
        .await;
    let q = &set.data()["configureQueue"];
    assert_eq!(
        (q["rateLimitPerSecond"].clone(), q["maxConcurrency"].clone(), q["maxAttempts"].clone()),
        (json!(5.5), json!(3), json!(2))
    );
    assert_eq!(
        (q["leaseSeconds"].clone(), q["backoffBaseMs"].clone(), q["backoffMaxMs"].clone()),
        (json!(60), json!(200), json!(5000))
    );

    let unset = app.gql(Some(&admin), &configure, json!({ "i": { "name": "mail", "rateLimitPerSecond": null } })).await;
    assert_eq!(unset.data()["configureQueue"]["rateLimitPerSecond"], Value::Null, "null removes a limit");
    assert_eq!(unset.data()["configureQueue"]["maxConcurrency"], 3, "absent fields keep their value");

    let bad = app.gql(Some(&admin), &configure, json!({ "i": { "name": "mail", "leaseSeconds": 0 } })).await;
    assert_eq!(bad.code(), "BAD_USER_INPUT");
    assert_eq!(bad.errors()[0]["extensions"]["field"], "input.leaseSeconds");

    let paused = app.gql(Some(&admin), "mutation { pauseQueue(name: \"mail\") { paused } }", json!({})).await;
    assert_eq!(paused.data()["pauseQueue"]["paused"], true);
    let resumed =
        app.gql(Some(&admin), "mutation { resumeQueue(name: \"mail\") { paused maxConcurrency } }", json!({})).await;
    assert_eq!(resumed.data()["resumeQueue"], json!({ "paused": false, "maxConcurrency": 3 }));

    // The configured default applies to new tasks.
    let alice = app.token("alice", &["client"]);
    let created = app
        .gql(
            Some(&alice),
            "mutation { createTask(input: {queue: \"mail\", kind: \"k\"}) { task { maxAttempts } } }",
            json!({}),
        )
        .await;
    assert_eq!(created.data()["createTask"]["task"]["maxAttempts"], 2);

    let listed = app.gql(Some(&admin), "{ queues { name } }", json!({})).await;
    assert_eq!(listed.data()["queues"], json!([{ "name": "mail" }]));

    let operator = app.token("olga", &["operator"]);
    assert_eq!(
        app.gql(Some(&operator), "mutation { pauseQueue(name: \"mail\") { paused } }", json!({})).await.code(),
        "FORBIDDEN"
    );
    assert_eq!(app.gql(Some(&alice), "{ queues { name } }", json!({})).await.code(), "FORBIDDEN");
}

#[tokio::test]
async fn an_operator_retries_a_cancelled_task() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let operator = app.token("olga", &["operator"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let retry = "mutation($id: ID!) { retryTask(id: $id) { status attempts events { seq status message } } }";

    assert_eq!(
        app.gql(Some(&operator), retry, json!({ "id": id })).await.code(),
        "CONFLICT",
        "a queued task needs no retry"
    );
    app.gql(Some(&alice), "mutation($id: ID!) { cancelTask(id: $id) { status } }", json!({ "id": id })).await.data();
    assert_eq!(app.gql(Some(&alice), retry, json!({ "id": id })).await.code(), "FORBIDDEN");
    let retried = app.gql(Some(&operator), retry, json!({ "id": id })).await;
    let task = &retried.data()["retryTask"];
    assert_eq!(task["status"], "QUEUED");
    assert_eq!(task["events"][2], json!({ "seq": 3, "status": "QUEUED", "message": "retried by operator" }));
    assert_eq!(app.gql(Some(&operator), retry, json!({ "id": "nope" })).await.code(), "NOT_FOUND");
}

#[tokio::test]
async fn an_admin_requeues_every_dead_task_of_a_queue() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let admin = app.token("root", &["admin"]);
    let mut ids = vec![];
    for queue in ["q", "q", "q", "other"] {
        ids.push(app.create_task(&alice, json!({ "queue": queue, "kind": "k" })).await);
    }
    // Dead tasks set up directly: exhausting attempts through a worker is dispatch.rs's test.
    app.sql("UPDATE tasks SET status = 'DEAD', attempts = 5").await;

    let requeue = "mutation($q: String!) { requeueDeadTasks(queue: $q) }";
    assert_eq!(app.gql(Some(&admin), requeue, json!({ "q": "q" })).await.data()["requeueDeadTasks"], 3);
    assert_eq!(app.gql(Some(&admin), requeue, json!({ "q": "q" })).await.data()["requeueDeadTasks"], 0, "nothing left");
    let statuses = app.gql(Some(&admin), "{ tasks { edges { node { id queue status attempts } } } }", json!({})).await;
    let edges = statuses.data()["tasks"]["edges"].as_array().cloned().unwrap_or_default();
    let mut listed: Vec<String> =
        edges.iter().map(|e| e["node"]["id"].as_str().unwrap_or_default().to_owned()).collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids, "the listing shows exactly the four tasks");
    for edge in &edges {
        let node = &edge["node"];
        let expected = if node["queue"] == "q" { json!(["QUEUED", 0]) } else { json!(["DEAD", 5]) };
        assert_eq!(json!([node["status"], node["attempts"]]), expected, "{node}");
    }
    let operator = app.token("olga", &["operator"]);
    assert_eq!(app.gql(Some(&operator), requeue, json!({ "q": "q" })).await.code(), "FORBIDDEN");
}

/// Retention (`TASKWIRE_RETENTION_FINISHED`): a cancelled task is deleted with its history
/// once it has been finished for longer than the retention, while a queued one of the same
/// age stays; a read by id answers `null` at once, though the cache held the task (the
/// cancel wrote it through); the `tasks` gauge counts only what is unfinished or dead,
/// and the purge is counted by status.
#[tokio::test]
async fn finished_tasks_are_deleted_with_their_history_after_their_retention() {
    let app = TestApp::spawn_with(&[("TASKWIRE_RETENTION_FINISHED", "3s"), ("TASKWIRE_RETENTION_DEAD", "0")]).await;
    let alice = app.token("alice", &["client"]);
    let cancelled = app.create_task(&alice, json!({ "queue": "kept", "kind": "k" })).await;
    let cancel = "mutation($id: ID!) { cancelTask(id: $id) { status } }";
    assert_eq!(
        app.gql(Some(&alice), cancel, json!({ "id": cancelled })).await.data()["cancelTask"]["status"],
        "CANCELLED"
    );
    let queued = app.create_task(&alice, json!({ "queue": "kept", "kind": "k" })).await;
    let read = "query($id: ID!) { task(id: $id) { id } }";
    assert_eq!(app.gql(Some(&alice), read, json!({ "id": cancelled })).await.data()["task"]["id"], cancelled);

    let purged = r#"taskwire_tasks_purged_total{status="CANCELLED"}"#;
    assert_eq!(app.wait_for_metric(purged, |n| n >= 1.0).await, 1.0, "the cancelled task, once");
    assert_eq!(app.gql(Some(&alice), read, json!({ "id": cancelled })).await.data()["task"], Value::Null, "not cached");
    let list = "{ tasks(filter: { queue: \"kept\" }) { edges { node { id status events { seq } } } } }";
    let listed = app.gql(Some(&alice), list, json!({})).await;
    assert_eq!(
        listed.data()["tasks"]["edges"],
        json!([{ "node": { "id": queued, "status": "QUEUED", "events": [{ "seq": 1 }] } }]),
        "only the unfinished task is left"
    );
    let left = app.get("/metrics").await.1;
    assert!(!left.contains(r#"taskwire_tasks{status="CANCELLED"}"#), "finished statuses are not counted: {left}");
    assert!(left.contains(r#"taskwire_tasks{status="QUEUED"}"#), "unfinished ones are: {left}");
    assert!(app.metric(r#"taskwire_task_transitions_total{status="CANCELLED"}"#).await >= 1.0);
}
