//! Live subscriptions over WebSocket, end to end: mutation → outbox → Kafka (embedded
//! mock cluster, or a real broker with TASKWIRE_TEST_KAFKA_BROKERS) → status consumer →
//! hub → subscription → socket.

use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};
use taskwire_tests::{
    TestApp,
    ws::{LEGACY_WS, TRANSPORT_WS, bearer},
};

const TASK_UPDATED: &str = "subscription($id: ID!, $afterSeq: Int) { taskUpdated(id: $id, afterSeq: $afterSeq) { taskId seq status previousStatus message } }";
const CANCEL: &str = "mutation($id: ID!, $reason: String) { cancelTask(id: $id, reason: $reason) { status } }";

#[tokio::test]
async fn a_client_watches_its_task_live_over_graphql_transport_ws() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;

    ws.subscribe("1", TASK_UPDATED, json!({ "id": id })).await;
    let first = ws.next_data("1").await;
    assert_eq!(
        first["taskUpdated"],
        json!({ "taskId": id, "seq": 1, "status": "QUEUED", "previousStatus": null, "message": null })
    );

    app.gql(Some(&alice), CANCEL, json!({ "id": id, "reason": "changed plans" })).await.data();
    let second = ws.next_data("1").await;
    assert_eq!(
        second["taskUpdated"],
        json!({ "taskId": id, "seq": 2, "status": "CANCELLED", "previousStatus": "QUEUED", "message": "changed plans" }),
        "the live event arrives through Kafka"
    );

    ws.send(json!({ "id": "1", "type": "complete" })).await;
    ws.close().await;
}

#[tokio::test]
async fn the_legacy_graphql_ws_protocol_works_too() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(LEGACY_WS, &alice).await;
    ws.subscribe("a", TASK_UPDATED, json!({ "id": id })).await;
    assert_eq!(ws.next_data("a").await["taskUpdated"]["seq"], 1);
    app.gql(Some(&alice), CANCEL, json!({ "id": id })).await.data();
    assert_eq!(ws.next_data("a").await["taskUpdated"]["status"], "CANCELLED");
    ws.send(json!({ "id": "a", "type": "stop" })).await;
}

#[tokio::test]
async fn resuming_with_after_seq_replays_exactly_the_missed_events() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;

    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    ws.subscribe("1", TASK_UPDATED, json!({ "id": id })).await;
    let seen = ws.next_data("1").await["taskUpdated"]["seq"].as_i64().unwrap_or_default();
    ws.close().await;

    app.gql(Some(&alice), CANCEL, json!({ "id": id })).await.data(); // missed while away

    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    ws.subscribe("1", TASK_UPDATED, json!({ "id": id, "afterSeq": seen })).await;
    let missed = ws.next_data("1").await;
    assert_eq!(missed["taskUpdated"]["seq"], 2);
    assert_eq!(missed["taskUpdated"]["status"], "CANCELLED");

    let mut from_start = app.ws_connected(TRANSPORT_WS, &alice).await;
    from_start.subscribe("all", TASK_UPDATED, json!({ "id": id, "afterSeq": 0 })).await;
    let seqs = [from_start.next_data("all").await, from_start.next_data("all").await]
        .map(|d| d["taskUpdated"]["seq"].as_i64().unwrap_or_default());
    assert_eq!(seqs, [1, 2], "afterSeq 0 replays the whole history in order");
}

#[tokio::test]
async fn a_client_cannot_subscribe_to_another_clients_task() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let bob = app.token("bob", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &bob).await;
    ws.subscribe("1", TASK_UPDATED, json!({ "id": id })).await;
    let message = ws.recv_json().await;
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(message["id"], "1");
    assert_eq!(message["payload"][0]["extensions"]["code"], "NOT_FOUND", "invisible reads like missing");
    // The connection stays usable for the caller's own work.
    let own = app.create_task(&bob, json!({ "queue": "q", "kind": "k" })).await;
    ws.subscribe("2", TASK_UPDATED, json!({ "id": own })).await;
    assert_eq!(ws.next_data("2").await["taskUpdated"]["seq"], 1);
}

#[tokio::test]
async fn a_connection_without_connection_init_is_closed_with_4408() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_INIT_TIMEOUT_MS", "300")]).await;
    let mut ws = app.ws(TRANSPORT_WS).await;
    assert_eq!(ws.expect_close().await.0, 4408);
}

#[tokio::test]
async fn subscribing_before_the_ack_is_closed_with_4401() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws(TRANSPORT_WS).await;
    ws.subscribe("1", TASK_UPDATED, json!({ "id": "x" })).await;
    assert_eq!(ws.expect_close().await.0, 4401);
}

#[tokio::test]
async fn connection_init_without_a_valid_token_is_closed_with_4403() {
    let app = TestApp::spawn().await;
    let expired = app.token_with_claims(json!({ "sub": "alice", "roles": ["client"], "exp": 1_000_000 }));
    for (payload, why) in [
        (json!({}), "no token"),
        (json!({ "authorization": "Bearer garbage" }), "garbage"),
        (bearer(&expired), "expired"),
    ] {
        let mut ws = app.ws(TRANSPORT_WS).await;
        ws.send(json!({ "type": "connection_init", "payload": payload })).await;
        assert_eq!(ws.expect_close().await.0, 4403, "{why}");
    }
}

#[tokio::test]
async fn every_documented_auth_payload_form_is_accepted() {
    let app = TestApp::spawn().await;
    let token = app.token("alice", &["client"]);
    for payload in [
        json!({ "authorization": format!("Bearer {token}") }),
        json!({ "Authorization": format!("Bearer {token}") }),
        json!({ "token": token }),
        json!({ "headers": { "Authorization": format!("Bearer {token}") } }),
    ] {
        let mut ws = app.ws(TRANSPORT_WS).await;
        ws.init(payload.clone()).await;
        ws.close().await;
    }
    let mut header_only =
        app.ws_with_headers(TRANSPORT_WS, &[("Authorization", &format!("Bearer {token}"))]).await.expect("connects");
    header_only.init(json!({})).await;
}

#[tokio::test]
async fn a_duplicate_subscription_id_is_closed_with_4409() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    ws.subscribe("same", TASK_UPDATED, json!({ "id": id })).await;
    ws.next_data("same").await;
    ws.subscribe("same", TASK_UPDATED, json!({ "id": id })).await;
    assert_eq!(ws.expect_close().await.0, 4409);
}

#[tokio::test]
async fn a_completed_id_can_be_reused_at_once_and_the_new_subscription_keeps_it() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    ws.subscribe("x", TASK_UPDATED, json!({ "id": id })).await;
    ws.next_data("x").await;
    ws.send(json!({ "id": "x", "type": "complete" })).await;
    ws.subscribe("x", TASK_UPDATED, json!({ "id": id })).await;
    assert_eq!(ws.next_data("x").await["taskUpdated"]["seq"], 1, "the id is free again");
    // Once the first subscription's task has ended, the id still belongs to the second.
    // (That the old task's end cannot free a reused id, whenever it comes, is ensured by
    // the serial in `http::ws`; the race itself is not reproducible from outside.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.subscribe("x", TASK_UPDATED, json!({ "id": id })).await;
    assert_eq!(ws.expect_close().await.0, 4409, "the second subscription still holds the id");
}

#[tokio::test]
async fn a_subscription_that_fails_to_start_frees_its_id() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    let unknown = "01JZZZZZZZZZZZZZZZZZZZZZZZ";
    ws.subscribe("y", TASK_UPDATED, json!({ "id": unknown })).await;
    let refused = ws.recv_json().await;
    assert_eq!((refused["type"].as_str(), refused["id"].as_str()), (Some("error"), Some("y")), "{refused}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.subscribe("y", TASK_UPDATED, json!({ "id": id })).await;
    assert_eq!(ws.next_data("y").await["taskUpdated"]["seq"], 1);
}

#[tokio::test]
async fn a_second_connection_init_is_closed_with_4429() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    ws.send(json!({ "type": "connection_init", "payload": bearer(&alice) })).await;
    assert_eq!(ws.expect_close().await.0, 4429);
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_MAX_SUBSCRIPTIONS", "2")]).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    for n in ["1", "2"] {
        ws.subscribe(n, TASK_UPDATED, json!({ "id": id })).await;
        ws.next_data(n).await;
    }
    ws.subscribe("3", TASK_UPDATED, json!({ "id": id })).await;
    let refused = ws.recv_json().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "3");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "BAD_USER_INPUT");
    // Completing one frees a slot.
    ws.send(json!({ "id": "1", "type": "complete" })).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.subscribe("4", TASK_UPDATED, json!({ "id": id })).await;
    assert_eq!(ws.next_data("4").await["taskUpdated"]["seq"], 1);
}

#[tokio::test]
async fn the_connection_closes_when_its_token_expires() {
    let app = TestApp::spawn().await;
    let short =
        app.token_with_claims(json!({ "sub": "alice", "roles": ["client"], "exp": taskwire_tests::now_secs() + 2 }));
    let mut ws = app.ws_connected(TRANSPORT_WS, &short).await;
    let (code, reason) = ws.expect_close().await;
    assert_eq!((code, reason.as_str()), (4401, "Token expired"));
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_refused() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let refused = app.ws_with_headers(TRANSPORT_WS, &[("Origin", "https://evil.example.com")]).await;
    assert!(refused.is_err_and(|e| e.contains("403")), "a foreign origin is refused at the upgrade");
    let allowed = app.ws_with_headers(TRANSPORT_WS, &[("Origin", "https://app.example.com")]).await;
    assert!(allowed.is_ok());
}

#[tokio::test]
async fn the_server_sends_keepalives_in_both_protocols() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_KEEPALIVE_MS", "100")]).await;
    let alice = app.token("alice", &["client"]);
    let mut modern = app.ws_connected(TRANSPORT_WS, &alice).await;
    assert_eq!(modern.expect_keepalive().await, "ping");
    let mut legacy = app.ws_connected(LEGACY_WS, &alice).await;
    assert_eq!(legacy.expect_keepalive().await, "ka");
}

/// The test client's own promise: a wait for an event that never comes fails within
/// `WAIT`, even while the server keeps pinging (a ping must not restart the wait, or one
/// regression would hang CI instead of failing a named test).
#[tokio::test]
async fn a_wait_for_a_message_that_never_comes_fails_despite_keepalives() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_KEEPALIVE_MS", "100")]).await;
    let alice = app.token("alice", &["client"]);
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;

    let waiting = tokio::spawn(async move { ws.recv().await });
    let outcome = tokio::time::timeout(taskwire_tests::ws::WAIT + Duration::from_secs(10), waiting)
        .await
        .expect("the wait ended by itself instead of hanging");

    assert!(outcome.is_err_and(|e| e.is_panic()), "an idle connection with keep-alives fails the wait");
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    app.shutdown();
    assert_eq!(ws.expect_close().await.0, 1001);
}

#[tokio::test]
async fn task_events_shows_clients_their_own_tasks_and_operators_a_queue() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let bob = app.token("bob", &["client"]);
    let operator = app.token("olga", &["operator"]);
    let events = "subscription($filter: TaskEventFilter) { taskEvents(filter: $filter) { taskId seq status task { queue createdBy } } }";

    let mut alices = app.ws_connected(TRANSPORT_WS, &alice).await;
    alices.subscribe("mine", events, json!({})).await;
    let mut ops = app.ws_connected(TRANSPORT_WS, &operator).await;
    ops.subscribe("sms", events, json!({ "filter": { "queue": "sms" } })).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // let both register

    let bobs_task = app.create_task(&bob, json!({ "queue": "sms", "kind": "k" })).await;
    let alices_task = app.create_task(&alice, json!({ "queue": "email", "kind": "k" })).await;
    let alices_sms = app.create_task(&alice, json!({ "queue": "sms", "kind": "k" })).await;

    // Order is guaranteed per task only (tasks spread over partitions), so compare sets.
    let mine: std::collections::BTreeSet<String> = [alices.next_data("mine").await, alices.next_data("mine").await]
        .iter()
        .map(|d| d["taskEvents"]["taskId"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(mine, [alices_task.clone(), alices_sms.clone()].into(), "only alice's tasks");
    let sms: std::collections::BTreeSet<String> = [ops.next_data("sms").await, ops.next_data("sms").await]
        .iter()
        .map(|d| d["taskEvents"]["taskId"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(sms, [bobs_task, alices_sms].into(), "every sms task, nothing else");

    let mut bobs = app.ws_connected(TRANSPORT_WS, &bob).await;
    bobs.subscribe("q", "subscription { queueStats(name: \"sms\") { name queued } }", json!({})).await;
    let refused = bobs.recv_json().await;
    assert_eq!(refused["payload"][0]["extensions"]["code"], "FORBIDDEN", "{refused}");
    let _ = alices_task;
}

#[tokio::test]
async fn queue_stats_counts_tasks_and_updates_after_changes() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let operator = app.token("olga", &["operator"]);
    let a = app.create_task(&alice, json!({ "queue": "reports", "kind": "k" })).await;
    app.create_task(&alice, json!({ "queue": "reports", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &operator).await;
    ws.subscribe(
        "s",
        "subscription { queueStats(name: \"reports\") { name queued cancelled oldestQueuedAgeMs } }",
        json!({}),
    )
    .await;
    let first = ws.next_data("s").await["queueStats"].clone();
    assert_eq!(
        (first["name"].clone(), first["queued"].clone(), first["cancelled"].clone()),
        (json!("reports"), json!(2), json!(0))
    );
    assert!(first["oldestQueuedAgeMs"].as_i64().is_some_and(|age| age >= 0));

    app.gql(Some(&alice), CANCEL, json!({ "id": a })).await.data();
    let second = ws.next_data("s").await["queueStats"].clone();
    assert_eq!((second["queued"].clone(), second["cancelled"].clone()), (json!(1), json!(1)));
}

/// One subscriber that never reads and one that does, on the same process: the reader
/// gets every event exactly once and in order, the other is cut off, and the server's
/// buffers stay at their bounds (overflows are counted, not queued).
#[tokio::test]
async fn a_slow_subscriber_stays_bounded_while_a_fast_one_keeps_receiving_in_order() {
    let app = TestApp::spawn_with(&[
        ("TASKWIRE_SUBSCRIBER_BUFFER", "4"),
        ("TASKWIRE_WS_WRITE_TIMEOUT_MS", "1000"),
        ("TASKWIRE_MAX_BODY_BYTES", "4194304"),
    ])
    .await;
    let alice = app.token("alice", &["client"]);
    let events = "subscription { taskEvents { taskId seq status task { payload } } }";
    let mut slow = app.ws_connected(TRANSPORT_WS, &alice).await;
    slow.subscribe("slow", events, json!({})).await;
    let mut fast = app.ws_connected(TRANSPORT_WS, &alice).await;
    fast.subscribe("fast", events, json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // ~18 MB of events for each socket: more than loopback buffers absorb. The fast
    // client reads while the tasks are being created, as a live client does.
    let big = "x".repeat(60 * 1024);
    let (batches, per_batch) = (10, 30);
    let creating = async {
        let mut created = Vec::new();
        for _ in 0..batches {
            let inputs: Vec<Value> =
                (0..per_batch).map(|_| json!({ "queue": "q", "kind": "k", "payload": big })).collect();
            let response = app
                .gql(
                    Some(&alice),
                    "mutation($i: [CreateTaskInput!]!) { createTasks(inputs: $i) { task { id } } }",
                    json!({ "i": inputs }),
                )
                .await;
            for payload in response.data()["createTasks"].as_array().cloned().unwrap_or_default() {
                created.push(payload["task"]["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        created
    };
    let reading = async {
        let mut last_seq: HashMap<String, i64> = HashMap::new();
        for _ in 0..batches * per_batch {
            let data = fast.next_data("fast").await;
            let event = &data["taskEvents"];
            let task = event["taskId"].as_str().unwrap_or_default().to_owned();
            let seq = event["seq"].as_i64().unwrap_or_default();
            let previous = last_seq.insert(task, seq);
            assert!(previous.is_none_or(|p| seq == p + 1), "in order, without gaps or repeats");
        }
        last_seq
    };
    let (created, last_seq) = tokio::join!(creating, reading);
    assert_eq!(last_seq.len(), created.len(), "every task's event reached the fast subscriber once");
    assert!(created.iter().all(|id| last_seq.get(id) == Some(&1)));

    let dropped = app.wait_for_metric("taskwire_ws_slow_clients_dropped_total", |v| v >= 1.0).await;
    assert_eq!(dropped, 1.0, "the slow client was cut off, the fast one was not");
    assert!(app.metric("taskwire_subscriber_overflows_total").await >= 1.0, "overflow was dropped, not queued");
    // What the slow client had not read yet is still in its socket; then the connection ends.
    slow.expect_close().await;
}
