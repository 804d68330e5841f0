//! The schema's promises to caches and tools: `node`/`nodes` over global ids with the
//! authorization of `task(id)`/`worker(id)`, a key on every object, `totalCount` and
//! backward pagination of `tasks`, one `DateTime` precision.

use serde_json::{Value, json};
use taskwire_tests::TestApp;

const NODE: &str =
    "query($id: ID!) { node(id: $id) { __typename nodeId ... on Task { id status } ... on Worker { id name } } }";
const NODES: &str =
    "query($ids: [ID!]!) { nodes(ids: $ids) { __typename nodeId ... on Task { id } ... on Worker { id } } }";
const TASK: &str = "query($id: ID!) { task(id: $id) { id nodeId } }";
const WORKER: &str = "query($id: ID!) { worker(id: $id) { id nodeId } }";
const REGISTER: &str = "mutation($name: String!) { registerWorker(input: { name: $name, queues: [\"idle\"], capacity: 1 }) { id nodeId } }";
const PAGE: &str = "query($filter: TaskFilter, $first: Int, $after: String, $last: Int, $before: String) {
  tasks(filter: $filter, first: $first, after: $after, last: $last, before: $before) {
    totalCount edges { cursor node { id } } pageInfo { hasPreviousPage hasNextPage startCursor endCursor }
  }
}";

/// The ids of `n` tasks created by `token` in one call, newest first.
async fn create(app: &TestApp, token: &str, queue: &str, n: usize) -> Vec<String> {
    let inputs: Vec<Value> = (0..n).map(|i| json!({ "queue": queue, "kind": format!("k{i}") })).collect();
    let create = "mutation($inputs: [CreateTaskInput!]!) { createTasks(inputs: $inputs) { task { id } } }";
    let created = app.gql(Some(token), create, json!({ "inputs": inputs })).await;
    let mut ids: Vec<String> = created.data()["createTasks"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["task"]["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids.reverse();
    ids
}

async fn node_id_of_task(app: &TestApp, token: &str, id: &str) -> String {
    let read = app.gql(Some(token), TASK, json!({ "id": id })).await;
    read.data()["task"]["nodeId"].as_str().expect("nodeId").to_owned()
}

fn ids(page: &Value) -> Vec<String> {
    page["tasks"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn node_and_nodes_fetch_tasks_and_workers_by_global_id() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let operator = app.token("olga", &["operator"]);
    let courier = app.token("courier-1", &["worker"]);
    let task = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let task_node = node_id_of_task(&app, &alice, &task).await;
    let worker_node =
        app.gql(Some(&courier), REGISTER, json!({ "name": "Courier" })).await.data()["registerWorker"]["nodeId"]
            .as_str()
            .expect("nodeId")
            .to_owned();
    assert_ne!(task_node, task, "a global id is not the task id");
    assert_ne!(worker_node, "courier-1", "nor the worker id");

    let read = app.gql(Some(&alice), NODE, json!({ "id": task_node })).await;
    assert_eq!(
        read.data()["node"],
        json!({ "__typename": "Task", "nodeId": task_node, "id": task, "status": "QUEUED" })
    );
    let read = app.gql(Some(&operator), NODE, json!({ "id": worker_node })).await;
    assert_eq!(
        read.data()["node"],
        json!({ "__typename": "Worker", "nodeId": worker_node, "id": "courier-1", "name": "Courier" })
    );
    // Same answer through `worker(id)`: the global id is a property of the object.
    let worker = app.gql(Some(&operator), WORKER, json!({ "id": "courier-1" })).await;
    assert_eq!(worker.data()["worker"]["nodeId"], worker_node.as_str());

    // Not global ids: a raw task id, a worker id, garbage, an unknown type (`User:alice`).
    for id in [task.as_str(), "courier-1", "", "not base64!", "VXNlcjphbGljZQ"] {
        let read = app.gql(Some(&operator), NODE, json!({ "id": id })).await;
        assert_eq!(read.data()["node"], Value::Null, "{id:?}");
    }

    // In order, repeats repeated, unknown ones null.
    let many = app.gql(Some(&operator), NODES, json!({ "ids": [worker_node, "nope", task_node, worker_node] })).await;
    assert_eq!(
        many.data()["nodes"],
        json!([
            { "__typename": "Worker", "nodeId": worker_node, "id": "courier-1" },
            null,
            { "__typename": "Task", "nodeId": task_node, "id": task },
            { "__typename": "Worker", "nodeId": worker_node, "id": "courier-1" },
        ])
    );
    assert_eq!(app.gql(Some(&operator), NODES, json!({ "ids": [] })).await.data()["nodes"], json!([]));

    // Bounded like a page.
    let too_many: Vec<String> = vec![task_node.clone(); 101];
    let refused = app.gql(Some(&operator), NODES, json!({ "ids": too_many })).await;
    assert_eq!(refused.code(), "BAD_USER_INPUT");
    assert_eq!(refused.errors()[0]["extensions"]["field"], "ids");
    let hundred: Vec<String> = vec![task_node.clone(); 100];
    let fine = app.gql(Some(&operator), NODES, json!({ "ids": hundred })).await;
    assert_eq!(fine.data()["nodes"].as_array().map(Vec::len), Some(100));
}

#[tokio::test]
async fn node_is_authorized_like_task_and_worker() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let bob = app.token("bob", &["client"]);
    let courier = app.token("courier-1", &["worker"]);
    let other_courier = app.token("courier-2", &["worker"]);
    let task = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let task_node = node_id_of_task(&app, &alice, &task).await;
    let worker_node =
        app.gql(Some(&courier), REGISTER, json!({ "name": "C1" })).await.data()["registerWorker"]["nodeId"]
            .as_str()
            .expect("nodeId")
            .to_owned();
    app.gql(Some(&other_courier), REGISTER, json!({ "name": "C2" })).await.data();

    // Another client's task looks exactly like a missing one, as through `task(id)`.
    let missing = {
        // The global id of a task that no longer exists.
        let gone = app.create_task(&alice, json!({ "queue": "q", "kind": "gone" })).await;
        let node = node_id_of_task(&app, &alice, &gone).await;
        app.sql(&format!("DELETE FROM task_events WHERE task_id = '{gone}'")).await;
        app.sql(&format!("DELETE FROM tasks WHERE id = '{gone}'")).await;
        node
    };
    let foreign = app.gql(Some(&bob), NODE, json!({ "id": task_node })).await;
    let absent = app.gql(Some(&bob), NODE, json!({ "id": missing })).await;
    assert_eq!(foreign.body, absent.body, "not found and not yours answer alike");
    assert_eq!(foreign.data()["node"], Value::Null);
    assert_eq!(app.gql(Some(&bob), TASK, json!({ "id": task })).await.data()["task"], Value::Null);

    // A worker reads itself, not another worker (null, as `worker(id)` answers).
    let own = app.gql(Some(&courier), NODE, json!({ "id": worker_node })).await;
    assert_eq!(own.data()["node"]["id"], "courier-1");
    let other = app.gql(Some(&other_courier), NODE, json!({ "id": worker_node })).await;
    assert_eq!(other.data()["node"], Value::Null);
    assert_eq!(app.gql(Some(&other_courier), WORKER, json!({ "id": "courier-1" })).await.data()["worker"], Value::Null);
    // …nor a task it does not hold.
    assert_eq!(app.gql(Some(&courier), NODE, json!({ "id": task_node })).await.data()["node"], Value::Null);

    // A client asking for a worker is refused, as by `worker(id)`: whether or not it exists.
    let refused = app.gql(Some(&alice), NODE, json!({ "id": worker_node })).await;
    assert_eq!(refused.code(), "FORBIDDEN");
    assert_eq!(app.gql(Some(&alice), WORKER, json!({ "id": "courier-1" })).await.code(), "FORBIDDEN");
    let courier_3 = app.token("courier-3", &["worker"]);
    let no_such_worker =
        app.gql(Some(&courier_3), REGISTER, json!({ "name": "C3" })).await.data()["registerWorker"]["nodeId"]
            .as_str()
            .expect("nodeId")
            .to_owned();
    app.sql("DELETE FROM workers WHERE id = 'courier-3'").await;
    let operator = app.token("olga", &["operator"]);
    assert_eq!(app.gql(Some(&operator), NODE, json!({ "id": no_such_worker })).await.data()["node"], Value::Null);
    let refused_missing = app.gql(Some(&alice), NODE, json!({ "id": no_such_worker })).await;
    assert_eq!(refused_missing.code(), "FORBIDDEN");

    // In `nodes`, a refused id is null with its error at its index; the others answer.
    let mixed = app.gql(Some(&alice), NODES, json!({ "ids": [task_node, worker_node] })).await;
    assert_eq!(mixed.body["data"]["nodes"][0]["id"], task.as_str());
    assert_eq!(mixed.body["data"]["nodes"][1], Value::Null);
    assert_eq!(mixed.code(), "FORBIDDEN");
    assert_eq!(mixed.errors()[0]["path"], json!(["nodes", 1]));

    // Without a token, nothing.
    assert_eq!(app.gql(None, NODE, json!({ "id": task_node })).await.code(), "UNAUTHENTICATED");
    assert_eq!(app.gql(None, NODES, json!({ "ids": [task_node] })).await.code(), "UNAUTHENTICATED");
}

#[tokio::test]
async fn total_count_counts_what_the_caller_sees_whatever_the_page() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let bob = app.token("bob", &["client"]);
    let operator = app.token("olga", &["operator"]);
    let tasks = create(&app, &alice, "emails", 25).await;
    create(&app, &bob, "sms", 3).await;

    let first = app.gql(Some(&alice), PAGE, json!({ "first": 10 })).await;
    assert_eq!(first.data()["tasks"]["totalCount"], 25);
    let later = app
        .gql(Some(&alice), PAGE, json!({ "first": 2, "after": first.data()["tasks"]["pageInfo"]["endCursor"] }))
        .await;
    assert_eq!(later.data()["tasks"]["totalCount"], 25, "the cursor does not change the count");
    assert_eq!(app.gql(Some(&bob), PAGE, json!({})).await.data()["tasks"]["totalCount"], 3);
    assert_eq!(app.gql(Some(&operator), PAGE, json!({})).await.data()["tasks"]["totalCount"], 28);
    let filtered = app.gql(Some(&operator), PAGE, json!({ "filter": { "queue": "sms" }, "first": 0 })).await;
    assert_eq!(filtered.data()["tasks"]["totalCount"], 3);
    assert_eq!(ids(filtered.data()), Vec::<String>::new());
    app.gql(Some(&alice), "mutation($id: ID!) { cancelTask(id: $id) { id } }", json!({ "id": tasks[0] })).await.data();
    let cancelled = app.gql(Some(&alice), PAGE, json!({ "filter": { "status": ["CANCELLED"] } })).await;
    assert_eq!(cancelled.data()["tasks"]["totalCount"], 1);
}

#[tokio::test]
async fn total_count_stops_at_ten_thousand() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    for _ in 0..20 {
        app.create_tasks(&alice, "bulk", 500).await;
    }
    let count = "query($q: String) { tasks(first: 1, filter: { queue: $q }) { totalCount } }";
    assert_eq!(app.gql(Some(&alice), count, json!({ "q": "bulk" })).await.data()["tasks"]["totalCount"], 10_000);
    app.create_tasks(&alice, "bulk", 5).await;
    assert_eq!(
        app.gql(Some(&alice), count, json!({ "q": "bulk" })).await.data()["tasks"]["totalCount"],
        10_000,
        "10,005 tasks count as 10,000"
    );
}

#[tokio::test]
async fn tasks_page_backwards_with_last_and_before() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let all = create(&app, &alice, "q", 25).await;

    // The oldest ten, still newest first; there are newer ones, none older.
    let page = app.gql(Some(&alice), PAGE, json!({ "last": 10 })).await;
    let data = page.data();
    assert_eq!(ids(data), all[15..25].to_vec());
    assert_eq!(data["tasks"]["pageInfo"]["hasPreviousPage"], true);
    assert_eq!(data["tasks"]["pageInfo"]["hasNextPage"], false);

    // Walk back to the newest with `before: startCursor`.
    let mut seen = ids(data);
    let mut before = data["tasks"]["pageInfo"]["startCursor"].clone();
    let mut pages = 1;
    loop {
        let page = app.gql(Some(&alice), PAGE, json!({ "last": 10, "before": before })).await;
        let data = page.data();
        let mut got = ids(data);
        got.extend(seen);
        seen = got;
        pages += 1;
        assert_eq!(data["tasks"]["pageInfo"]["hasNextPage"], true, "older tasks exist behind `before`");
        if data["tasks"]["pageInfo"]["hasPreviousPage"] != true {
            break;
        }
        before = data["tasks"]["pageInfo"]["startCursor"].clone();
        assert!(pages < 10, "pagination terminates");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, all, "every task once, in the same order as forwards");

    // `first` with `before`: the newest of the tasks newer than the cursor.
    let cursor =
        app.gql(Some(&alice), PAGE, json!({ "first": 20 })).await.data()["tasks"]["edges"][19]["cursor"].clone();
    let newest = app.gql(Some(&alice), PAGE, json!({ "first": 3, "before": cursor })).await;
    assert_eq!(ids(newest.data()), all[0..3].to_vec());
    assert_eq!(newest.data()["tasks"]["pageInfo"]["hasNextPage"], true);
    assert_eq!(newest.data()["tasks"]["pageInfo"]["hasPreviousPage"], false);
    // Both cursors: the range between them.
    let after =
        app.gql(Some(&alice), PAGE, json!({ "first": 5 })).await.data()["tasks"]["pageInfo"]["endCursor"].clone();
    let between = app.gql(Some(&alice), PAGE, json!({ "after": after, "before": cursor, "last": 100 })).await;
    assert_eq!(ids(between.data()), all[5..19].to_vec());
    assert_eq!(between.data()["tasks"]["pageInfo"]["hasPreviousPage"], true);
    assert_eq!(between.data()["tasks"]["pageInfo"]["hasNextPage"], true);

    // Forwards, `hasPreviousPage` is exact: true past the first page, false on it.
    let first = app.gql(Some(&alice), PAGE, json!({ "first": 25 })).await;
    assert_eq!(first.data()["tasks"]["pageInfo"]["hasPreviousPage"], false);
    assert_eq!(first.data()["tasks"]["pageInfo"]["hasNextPage"], false);

    for (vars, field) in [
        (json!({ "first": 5, "last": 5 }), "last"),
        (json!({ "last": 101 }), "last"),
        (json!({ "last": -1 }), "last"),
        (json!({ "last": 5, "before": "not-a-cursor" }), "before"),
    ] {
        let response = app.gql(Some(&alice), PAGE, vars.clone()).await;
        assert_eq!(response.code(), "BAD_USER_INPUT", "{vars}");
        assert_eq!(response.errors()[0]["extensions"]["field"], field, "{vars}");
    }
}

#[tokio::test]
async fn every_object_has_a_key_and_every_datetime_has_milliseconds() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let operator = app.token("olga", &["operator"]);
    let me = app.gql(Some(&alice), "{ me { id subject } }", json!({})).await;
    assert_eq!(me.data()["me"], json!({ "id": "alice", "subject": "alice" }));

    let create = "mutation($input: CreateTaskInput!) { createTask(input: $input) { task { id runAt createdAt updatedAt events { id taskId seq at } } } }";
    // Tomorrow at 10:15:02.123456 in +02:00: answered in UTC, to the millisecond.
    let day = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let run_at = format!("{day}T10:15:02.123456+02:00");
    let created =
        app.gql(Some(&alice), create, json!({ "input": { "queue": "q", "kind": "k", "runAt": run_at } })).await;
    let task = &created.data()["createTask"]["task"];
    assert_eq!(task["runAt"], format!("{day}T08:15:02.123Z"), "UTC, milliseconds");
    let id = task["id"].as_str().expect("id");
    assert_eq!(task["events"][0]["id"], format!("{id}:1"));
    let queue = app.gql(Some(&operator), "{ queue(name: \"q\") { id name stats { id name at } } }", json!({})).await;
    let queue = &queue.data()["queue"];
    assert_eq!((queue["id"].clone(), queue["stats"]["id"].clone()), (json!("q"), json!("q")));
    let millis = |v: &Value| {
        let s = v.as_str().unwrap_or_default();
        s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.' && chrono::DateTime::parse_from_rfc3339(s).is_ok()
    };
    for at in [&task["createdAt"], &task["updatedAt"], &task["events"][0]["at"], &queue["stats"]["at"]] {
        assert!(millis(at), "{at} is RFC 3339 UTC with milliseconds");
    }
}
