//! Black-box tests of the task API: create, read, list, cancel, validation, idempotency,
//! ownership and batching, over real HTTP against a freshly started app.

use serde_json::{Value, json};
use taskwire_tests::TestApp;

const CREATE: &str = "mutation($input: CreateTaskInput!) {
  createTask(input: $input) { created task { id queue kind payload priority status attempts maxAttempts runAt deadline createdBy version events { seq status previousStatus } } }
}";
const CREATE_MANY: &str =
    "mutation($inputs: [CreateTaskInput!]!) { createTasks(inputs: $inputs) { created task { id kind } } }";
const GET: &str = "query($id: ID!) { task(id: $id) { id status createdBy events { seq status message } } }";
const CANCEL: &str = "mutation($id: ID!, $reason: String) { cancelTask(id: $id, reason: $reason) { id status version events { seq status previousStatus message } } }";
const LIST: &str = "query($filter: TaskFilter, $first: Int, $after: String) {
  tasks(filter: $filter, first: $first, after: $after) { edges { cursor node { id kind status createdBy } } pageInfo { hasNextPage hasPreviousPage endCursor } }
}";

fn ids_of(list: &Value) -> Vec<String> {
    list["tasks"]["edges"]
        .as_array()
        .map(|edges| edges.iter().map(|e| e["node"]["id"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_client_creates_a_task_and_reads_it_back() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);

    let response = app
        .gql(Some(&alice), CREATE, json!({ "input": { "queue": "emails", "kind": "send", "payload": { "to": "a@example.com" }, "priority": 7 } }))
        .await;

    let created = &response.data()["createTask"];
    assert_eq!(created["created"], true);
    let task = &created["task"];
    assert_eq!(task["queue"], "emails");
    assert_eq!(task["kind"], "send");
    assert_eq!(task["payload"], json!({ "to": "a@example.com" }));
    assert_eq!(task["priority"], 7);
    assert_eq!(task["status"], "QUEUED");
    assert_eq!(task["attempts"], 0);
    assert_eq!(task["maxAttempts"], 5, "default when neither input nor queue sets it");
    assert_eq!(task["createdBy"], "alice");
    assert_eq!(task["events"], json!([{ "seq": 1, "status": "QUEUED", "previousStatus": null }]));
    let id = task["id"].as_str().expect("id");
    assert!(uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 7), "ids are UUIDv7: {id}");

    let read = app.gql(Some(&alice), GET, json!({ "id": id })).await;
    assert_eq!(read.data()["task"]["id"], id);
    assert_eq!(read.data()["task"]["status"], "QUEUED");
}

#[tokio::test]
async fn a_task_due_in_the_future_is_scheduled() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let run_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let response = app
        .gql(Some(&alice), CREATE, json!({ "input": { "queue": "q", "kind": "k", "runAt": run_at, "maxAttempts": 3 } }))
        .await;
    let task = &response.data()["createTask"]["task"];
    assert_eq!(task["status"], "SCHEDULED");
    assert_eq!(task["maxAttempts"], 3);
}

#[tokio::test]
async fn the_queue_default_max_attempts_applies_when_the_input_has_none() {
    let app = TestApp::spawn().await;
    app.sql(
        "INSERT INTO queues (name, paused, max_attempts, created_at, updated_at) VALUES ('reports', false, 9, 0, 0)",
    )
    .await;
    let alice = app.token("alice", &["client"]);
    let response = app.gql(Some(&alice), CREATE, json!({ "input": { "queue": "reports", "kind": "k" } })).await;
    assert_eq!(response.data()["createTask"]["task"]["maxAttempts"], 9);
}

#[tokio::test]
async fn invalid_inputs_are_rejected_with_the_offending_field() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let far = (chrono::Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let big = "x".repeat(64 * 1024);
    let cases = [
        (json!({ "queue": "Bad Queue", "kind": "k" }), "input.queue", "queue with spaces and capitals"),
        (json!({ "queue": "", "kind": "k" }), "input.queue", "empty queue"),
        (json!({ "queue": "q", "kind": "-k" }), "input.kind", "kind starting with a dash"),
        (json!({ "queue": "q", "kind": "k", "priority": 10 }), "input.priority", "priority above 9"),
        (json!({ "queue": "q", "kind": "k", "priority": -1 }), "input.priority", "negative priority"),
        (json!({ "queue": "q", "kind": "k", "maxAttempts": 0 }), "input.maxAttempts", "zero attempts"),
        (json!({ "queue": "q", "kind": "k", "maxAttempts": 101 }), "input.maxAttempts", "too many attempts"),
        (json!({ "queue": "q", "kind": "k", "payload": big }), "input.payload", "payload over 64 KiB"),
        (json!({ "queue": "q", "kind": "k", "runAt": far }), "input.runAt", "runAt beyond 30 days"),
        (json!({ "queue": "q", "kind": "k", "deadline": past }), "input.deadline", "deadline in the past"),
        (json!({ "queue": "q", "kind": "k", "runAt": "tomorrow" }), "input.runAt", "runAt not a DateTime"),
        (json!({ "queue": "q", "kind": "k", "deadline": "2026-13-01T00:00:00Z" }), "input.deadline", "no month 13"),
        (
            json!({ "queue": "q", "kind": "k", "idempotencyKey": "k".repeat(129) }),
            "input.idempotencyKey",
            "key over 128 chars",
        ),
    ];
    for (input, field, why) in cases {
        let response = app.gql(Some(&alice), CREATE, json!({ "input": input })).await;
        assert_eq!(response.codes(), ["BAD_USER_INPUT"], "{why}: {}", response.body);
        assert_eq!(response.errors()[0]["extensions"]["field"], field, "{why}: {}", response.body);
    }
    let listed = app.gql(Some(&alice), LIST, json!({})).await;
    assert_eq!(ids_of(listed.data()), Vec::<String>::new(), "no invalid input created a task");
}

#[tokio::test]
async fn graphql_type_errors_also_carry_a_code() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let response = app.gql(Some(&alice), CREATE, json!({ "input": { "queue": "q" } })).await;
    assert_eq!(response.codes(), ["BAD_USER_INPUT"], "missing required field kind: {}", response.body);
    let unknown = app.gql(Some(&alice), "{ task(id: \"x\") { nope } }", json!({})).await;
    assert_eq!(unknown.codes(), ["BAD_USER_INPUT"], "unknown field: {}", unknown.body);
}

/// A value of the wrong type written into the document is refused by validation before
/// any resolver runs, and names its field like the resolvers' own checks do.
#[tokio::test]
async fn a_literal_of_the_wrong_type_names_its_field() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let create = r#"mutation { createTasks(inputs: [{ queue: "q", kind: "k" }, { queue: "q", kind: "k", priority: "high" }]) { created } }"#;
    let response = app.gql(Some(&alice), create, json!({})).await;
    assert_eq!(response.codes(), ["BAD_USER_INPUT"], "{}", response.body);
    assert_eq!(response.errors()[0]["extensions"]["field"], "inputs[1].priority", "{}", response.body);
}

#[tokio::test]
async fn the_same_idempotency_key_and_input_returns_the_original_task() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let input = json!({ "queue": "q", "kind": "k", "payload": { "a": 1, "b": 2 }, "idempotencyKey": "order-42" });
    let first = app.gql(Some(&alice), CREATE, json!({ "input": input })).await;
    let reordered = json!({ "queue": "q", "kind": "k", "payload": { "b": 2, "a": 1 }, "idempotencyKey": "order-42" });
    let second = app.gql(Some(&alice), CREATE, json!({ "input": reordered })).await;

    assert_eq!(first.data()["createTask"]["created"], true);
    assert_eq!(second.data()["createTask"]["created"], false);
    let original = first.data()["createTask"]["task"]["id"].as_str().expect("the first call answers an id").to_owned();
    assert_eq!(second.data()["createTask"]["task"]["id"], original.as_str());
    assert_eq!(ids_of(app.gql(Some(&alice), LIST, json!({})).await.data()).len(), 1);
}

#[tokio::test]
async fn reusing_an_idempotency_key_with_a_different_input_is_a_conflict() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    app.create_task(&alice, json!({ "queue": "q", "kind": "k", "idempotencyKey": "order-42" })).await;
    let response = app
        .gql(Some(&alice), CREATE, json!({ "input": { "queue": "q", "kind": "other", "idempotencyKey": "order-42" } }))
        .await;
    assert_eq!(response.code(), "IDEMPOTENCY_CONFLICT");
}

#[tokio::test]
async fn idempotency_keys_are_scoped_to_their_creator() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.token("alice", &["client"]), app.token("bob", &["client"]));
    let input = json!({ "queue": "q", "kind": "k", "idempotencyKey": "same" });
    let a = app.create_task(&alice, input.clone()).await;
    let response = app.gql(Some(&bob), CREATE, json!({ "input": input })).await;
    assert_eq!(response.data()["createTask"]["created"], true);
    assert_ne!(response.data()["createTask"]["task"]["id"], a.as_str());
}

#[tokio::test]
async fn concurrent_creates_with_one_idempotency_key_make_exactly_one_task() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let input = json!({ "input": { "queue": "q", "kind": "k", "idempotencyKey": "race" } });
    let responses = futures::future::join_all((0..16).map(|_| app.gql(Some(&alice), CREATE, input.clone()))).await;
    let ids: std::collections::HashSet<String> = responses
        .iter()
        .map(|r| r.data()["createTask"]["task"]["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let created = responses.iter().filter(|r| r.data()["createTask"]["created"] == true).count();
    assert_eq!(ids.len(), 1, "every caller sees the same task");
    assert_eq!(created, 1, "exactly one caller created it");
}

#[tokio::test]
async fn create_tasks_creates_a_batch_in_input_order() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let inputs: Vec<Value> = (0..50).map(|i| json!({ "queue": "q", "kind": format!("k{i}") })).collect();
    let response = app.gql(Some(&alice), CREATE_MANY, json!({ "inputs": inputs })).await;
    let created = response.data()["createTasks"].as_array().expect("list").clone();
    assert_eq!(created.len(), 50);
    for (i, payload) in created.iter().enumerate() {
        assert_eq!(payload["task"]["kind"], format!("k{i}"), "outcome {i} in input order");
        assert_eq!(payload["created"], true);
    }
    let listed = app.gql(Some(&alice), LIST, json!({ "first": 100 })).await;
    assert_eq!(ids_of(listed.data()).len(), 50);
}

#[tokio::test]
async fn create_tasks_is_all_or_nothing() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    app.create_task(&alice, json!({ "queue": "q", "kind": "k", "idempotencyKey": "taken" })).await;

    let invalid = json!([{ "queue": "q", "kind": "a" }, { "queue": "NOPE", "kind": "b" }]);
    let response = app.gql(Some(&alice), CREATE_MANY, json!({ "inputs": invalid })).await;
    assert_eq!(response.code(), "BAD_USER_INPUT");
    assert_eq!(response.errors()[0]["extensions"]["field"], "inputs[1].queue");

    let conflicting =
        json!([{ "queue": "q", "kind": "a" }, { "queue": "q", "kind": "different", "idempotencyKey": "taken" }]);
    let response = app.gql(Some(&alice), CREATE_MANY, json!({ "inputs": conflicting })).await;
    assert_eq!(response.code(), "IDEMPOTENCY_CONFLICT");

    let listed = app.gql(Some(&alice), LIST, json!({})).await;
    assert_eq!(ids_of(listed.data()).len(), 1, "only the first, separately created task exists");
}

#[tokio::test]
async fn a_repeated_key_within_one_batch_resolves_to_one_task() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let input = json!({ "queue": "q", "kind": "k", "idempotencyKey": "dup" });
    let response = app.gql(Some(&alice), CREATE_MANY, json!({ "inputs": [input, input] })).await;
    let out = &response.data()["createTasks"];
    assert_eq!(out[0]["task"]["id"], out[1]["task"]["id"]);
    assert_eq!((out[0]["created"].clone(), out[1]["created"].clone()), (json!(true), json!(false)));
}

#[tokio::test]
async fn create_tasks_refuses_more_than_500_inputs() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let inputs: Vec<Value> = (0..501).map(|_| json!({ "queue": "q", "kind": "k" })).collect();
    let response = app.gql(Some(&alice), CREATE_MANY, json!({ "inputs": inputs })).await;
    assert_eq!(response.code(), "BAD_USER_INPUT");
    assert_eq!(response.errors()[0]["extensions"]["field"], "inputs");
}

#[tokio::test]
async fn a_client_cannot_read_list_or_cancel_another_clients_task() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.token("alice", &["client"]), app.token("bob", &["client"]));
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;

    let read = app.gql(Some(&bob), GET, json!({ "id": id })).await;
    assert_eq!(read.data()["task"], Value::Null, "invisible reads like missing");
    let missing = app.gql(Some(&bob), GET, json!({ "id": "01900000-0000-7000-8000-000000000000" })).await;
    assert_eq!(missing.data()["task"], Value::Null);

    assert_eq!(ids_of(app.gql(Some(&bob), LIST, json!({})).await.data()), Vec::<String>::new());

    let cancel = app.gql(Some(&bob), CANCEL, json!({ "id": id })).await;
    let cancel_missing = app.gql(Some(&bob), CANCEL, json!({ "id": "01900000-0000-7000-8000-000000000000" })).await;
    assert_eq!(cancel.code(), "NOT_FOUND");
    assert_eq!(
        cancel.errors()[0]["message"],
        cancel_missing.errors()[0]["message"],
        "cannot tell invisible from missing"
    );

    let filtered = app.gql(Some(&bob), LIST, json!({ "filter": { "createdBy": "alice" } })).await;
    assert_eq!(filtered.code(), "FORBIDDEN", "a client may only filter by itself");

    let still = app.gql(Some(&alice), GET, json!({ "id": id })).await;
    assert_eq!(still.data()["task"]["status"], "QUEUED");
}

#[tokio::test]
async fn operators_see_and_cancel_every_task_while_workers_see_only_their_own() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let operator = app.token("olga", &["operator"]);
    let worker = app.token("w1", &["worker"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;

    assert_eq!(app.gql(Some(&operator), GET, json!({ "id": id })).await.data()["task"]["createdBy"], "alice");
    assert_eq!(
        ids_of(app.gql(Some(&operator), LIST, json!({ "filter": { "createdBy": "alice" } })).await.data()),
        vec![id.clone()]
    );
    assert_eq!(app.gql(Some(&worker), GET, json!({ "id": id })).await.data()["task"], Value::Null);
    assert_eq!(ids_of(app.gql(Some(&worker), LIST, json!({})).await.data()), Vec::<String>::new());

    let cancelled = app.gql(Some(&operator), CANCEL, json!({ "id": id, "reason": "ops" })).await;
    assert_eq!(cancelled.data()["cancelTask"]["status"], "CANCELLED");
}

#[tokio::test]
async fn cancelling_records_an_event_and_a_second_cancel_conflicts() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;

    let response = app.gql(Some(&alice), CANCEL, json!({ "id": id, "reason": "no longer needed" })).await;
    let task = &response.data()["cancelTask"];
    assert_eq!(task["status"], "CANCELLED");
    assert_eq!(task["version"], 2);
    assert_eq!(
        task["events"],
        json!([
            { "seq": 1, "status": "QUEUED", "previousStatus": null, "message": null },
            { "seq": 2, "status": "CANCELLED", "previousStatus": "QUEUED", "message": "no longer needed" }
        ])
    );
    let again = app.gql(Some(&alice), CANCEL, json!({ "id": id })).await;
    assert_eq!(again.code(), "CONFLICT");
    let garbage = app.gql(Some(&alice), CANCEL, json!({ "id": "not-an-id" })).await;
    assert_eq!(garbage.code(), "NOT_FOUND");
}

#[tokio::test]
async fn concurrent_cancels_succeed_exactly_once() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let responses = futures::future::join_all((0..8).map(|_| app.gql(Some(&alice), CANCEL, json!({ "id": id })))).await;
    let ok = responses.iter().filter(|r| r.errors().is_empty()).count();
    let conflicts = responses.iter().filter(|r| r.codes() == ["CONFLICT"]).count();
    assert_eq!((ok, conflicts), (1, 7), "one winner, the rest see the finished task");
    let events = app.gql(Some(&alice), GET, json!({ "id": id })).await;
    assert_eq!(events.data()["task"]["events"].as_array().map(Vec::len), Some(2), "one cancel event, no duplicates");
}

#[tokio::test]
async fn listing_pages_through_every_task_newest_first() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let inputs: Vec<Value> = (0..25).map(|i| json!({ "queue": "q", "kind": format!("k{i}") })).collect();
    let created = app.gql(Some(&alice), CREATE_MANY, json!({ "inputs": inputs })).await;
    let mut expected: Vec<String> = created.data()["createTasks"]
        .as_array()
        .map(|a| a.iter().map(|p| p["task"]["id"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default();
    expected.sort();
    expected.reverse();

    let mut seen = vec![];
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = app.gql(Some(&alice), LIST, json!({ "first": 10, "after": after })).await;
        let data = page.data();
        seen.extend(ids_of(data));
        pages += 1;
        assert_eq!(data["tasks"]["pageInfo"]["hasPreviousPage"], json!(after.is_some()));
        if data["tasks"]["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = data["tasks"]["pageInfo"]["endCursor"].as_str().map(str::to_owned);
        assert!(pages < 10, "pagination terminates");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected, "every task once, newest first");
}

#[tokio::test]
async fn listing_filters_by_status_queue_kind_and_creation_time() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let a = app.create_task(&alice, json!({ "queue": "emails", "kind": "send" })).await;
    let b = app.create_task(&alice, json!({ "queue": "sms", "kind": "send" })).await;
    let c = app.create_task(&alice, json!({ "queue": "emails", "kind": "bounce" })).await;
    app.gql(Some(&alice), CANCEL, json!({ "id": c })).await.data();

    let cases = [
        (json!({ "queue": "emails" }), vec![c.clone(), a.clone()], "by queue"),
        (json!({ "kind": "send" }), vec![b.clone(), a.clone()], "by kind"),
        (json!({ "status": ["CANCELLED"] }), vec![c.clone()], "by status"),
        (json!({ "status": ["QUEUED", "CANCELLED"], "queue": "emails" }), vec![c.clone(), a.clone()], "combined"),
        (
            json!({ "createdAfter": "2000-01-01T00:00:00Z", "createdBefore": "2000-01-02T00:00:00Z" }),
            vec![],
            "empty range",
        ),
        (json!({ "createdAfter": "2000-01-01T00:00:00Z" }), vec![c.clone(), b.clone(), a.clone()], "open range"),
    ];
    for (filter, expected, why) in cases {
        let listed = app.gql(Some(&alice), LIST, json!({ "filter": filter })).await;
        assert_eq!(ids_of(listed.data()), expected, "{why}");
    }
}

#[tokio::test]
async fn listing_rejects_bad_page_sizes_and_cursors() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    for (vars, field) in [
        (json!({ "first": 101 }), "first"),
        (json!({ "first": -1 }), "first"),
        (json!({ "after": "not-a-cursor" }), "after"),
    ] {
        let response = app.gql(Some(&alice), LIST, vars.clone()).await;
        assert_eq!(response.code(), "BAD_USER_INPUT", "{vars}");
        assert_eq!(response.errors()[0]["extensions"]["field"], field, "{vars}");
    }
}

#[tokio::test]
async fn listing_fifty_tasks_with_events_and_workers_takes_a_few_statements_not_one_per_task() {
    // API role only: the dispatcher's background queries would be counted too.
    let app = TestApp::spawn_with(&[("TASKWIRE_ROLES", "api")]).await;
    let alice = app.token("alice", &["client"]);
    let inputs: Vec<Value> = (0..50).map(|i| json!({ "queue": "q", "kind": format!("k{i}") })).collect();
    app.gql(Some(&alice), CREATE_MANY, json!({ "inputs": inputs })).await.data();
    // Two workers hold some of the tasks (set up directly: the offers and accepts that would get them there are dispatch.rs's tests).
    app.sql(
        "INSERT INTO workers (id, name, queues, capacity, active, status, last_seen_at, version, created_at, updated_at) VALUES \
         ('w1', 'one', '[\"q\"]', 5, 0, 'ONLINE', 0, 1, 0, 0), ('w2', 'two', '[\"q\"]', 5, 0, 'ONLINE', 0, 1, 0, 0)",
    )
    .await;
    app.sql("UPDATE tasks SET worker_id = CASE WHEN kind < 'k3' THEN 'w1' ELSE 'w2' END").await;

    let before = app.db_statements();
    let response = app
        .gql(
            Some(&alice),
            "{ tasks(first: 50) { edges { node { id events(last: 5) { seq status task { id } } worker { id name capacity } } } } }",
            json!({}),
        )
        .await;
    let statements = app.db_statements() - before;

    let edges = response.data()["tasks"]["edges"].as_array().expect("edges").clone();
    assert_eq!(edges.len(), 50);
    assert!(edges.iter().all(|e| e["node"]["events"][0]["seq"] == 1 && e["node"]["worker"]["id"].is_string()));
    // Three when each DataLoader takes all its keys in one batch (tasks, events, workers).
    // A loader gathers keys for 1 ms from the first request; a descheduled thread (CI runs
    // many tests on two cores) can spill the rest into a second batch. Unbatched would be
    // 1 + 50 + 50.
    assert!(statements <= 6, "expected at most 2 batches per loader, saw {statements} statements");
}

#[tokio::test]
async fn events_last_is_bounded() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let response = app
        .gql(Some(&alice), "query($id: ID!) { task(id: $id) { events(last: 101) { seq } } }", json!({ "id": id }))
        .await;
    assert_eq!(response.code(), "BAD_USER_INPUT");
}

#[tokio::test]
async fn what_a_mutation_answers_is_exactly_what_a_read_returns() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let run_at = "2099-01-01T00:00:00.123456789Z";
    let fields = "id runAt deadline createdAt updatedAt version status";
    let created = app
        .gql(
            Some(&alice),
            &format!("mutation($input: CreateTaskInput!) {{ createTask(input: $input) {{ task {{ {fields} }} }} }}"),
            json!({ "input": { "queue": "q", "kind": "k", "runAt": (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339(), "deadline": run_at } }),
        )
        .await;
    let task = created.data()["createTask"]["task"].clone();
    assert!(task["id"].is_string(), "the create answers the task: {task}");
    let read = app
        .gql(Some(&alice), &format!("query($id: ID!) {{ task(id: $id) {{ {fields} }} }}"), json!({ "id": task["id"] }))
        .await;
    assert_eq!(read.data()["task"], task, "timestamps are answered at storage precision");
    let cancelled = app
        .gql(
            Some(&alice),
            &format!("mutation($id: ID!) {{ cancelTask(id: $id) {{ {fields} }} }}"),
            json!({ "id": task["id"] }),
        )
        .await;
    let after = app
        .gql(Some(&alice), &format!("query($id: ID!) {{ task(id: $id) {{ {fields} }} }}"), json!({ "id": task["id"] }))
        .await;
    assert_eq!(cancelled.data()["cancelTask"]["id"], task["id"], "the cancel answers the task");
    assert_eq!(after.data()["task"], cancelled.data()["cancelTask"]);
}

#[tokio::test]
async fn concurrent_creates_are_answered_one_by_one_even_when_committed_together() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let original = app.create_task(&alice, json!({ "queue": "q", "kind": "k", "idempotencyKey": "taken" })).await;
    let mut inputs: Vec<Value> =
        (0..30).map(|i| json!({ "queue": "q", "kind": "k", "idempotencyKey": format!("k{i}") })).collect();
    inputs.push(json!({ "queue": "q", "kind": "other", "idempotencyKey": "taken" })); // conflicting reuse
    inputs.push(json!({ "queue": "q", "kind": "k", "idempotencyKey": "taken" })); // a retry
    let responses =
        futures::future::join_all(inputs.iter().map(|input| app.gql(Some(&alice), CREATE, json!({ "input": input }))))
            .await;

    for (i, response) in responses.iter().take(30).enumerate() {
        assert_eq!(response.data()["createTask"]["created"], true, "input {i} stands alone");
    }
    assert_eq!(responses[30].code(), "IDEMPOTENCY_CONFLICT", "only the conflicting caller fails");
    assert_eq!(responses[31].data()["createTask"]["created"], false);
    assert_eq!(responses[31].data()["createTask"]["task"]["id"], original.as_str());
    let listed = app.gql(Some(&alice), LIST, json!({ "first": 100 })).await;
    assert_eq!(ids_of(listed.data()).len(), 31);
}
