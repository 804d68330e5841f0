//! The WebSocket and worker-mutation limits, black-box: visibility re-checked
//! for every live event, bounded ids, messages, bytes and connections per subject, the
//! mutation budget over WebSocket, worker mutations that reveal nothing about tasks the
//! caller holds no lease on, and refused subprotocols.

use serde_json::{Value, json};
use taskwire_tests::{
    TestApp,
    ws::{LEGACY_WS, Received, TRANSPORT_WS, WsClient, bearer},
};

const REGISTER: &str = "mutation($input: RegisterWorkerInput!) { registerWorker(input: $input) { id } }";
const ASSIGNMENTS: &str = "subscription { assignments { leaseToken task { id } } }";
const ACCEPT: &str =
    "mutation($id: ID!, $lease: String!) { acceptTask(taskId: $id, leaseToken: $lease) { id status } }";
const COMPLETE: &str =
    "mutation($id: ID!, $lease: String!) { completeTask(taskId: $id, leaseToken: $lease, result: {secret: 2}) { id } }";
const FAIL: &str =
    "mutation($id: ID!, $lease: String!) { failTask(taskId: $id, leaseToken: $lease, error: \"boom\") { id } }";
const RELEASE: &str = "mutation($id: ID!, $lease: String!) { releaseTask(taskId: $id, leaseToken: $lease) { id } }";
const TASK_UPDATED: &str = "subscription($id: ID!) { taskUpdated(id: $id) { seq status task { payload result } } }";
const CREATE: &str = "mutation($input: CreateTaskInput!) { createTask(input: $input) { created task { id } } }";

/// The first message of subscription `id` that ends it or carries data.
async fn next_for(ws: &mut WsClient, id: &str) -> Value {
    loop {
        let message = ws.recv_json().await;
        if message["id"] == id {
            return message;
        }
    }
}

/// A `taskUpdated` subscription of `task` padded with a comment to about `bytes` bytes.
fn padded_subscribe(id: &str, task: &str, bytes: usize) -> Value {
    let query = format!("subscription($id: ID!) {{ taskUpdated(id: $id) {{ seq }} }}\n#{}", "x".repeat(bytes));
    json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": { "id": task } } })
}

/// Item 2: a worker's `taskUpdated` stream ends, like a missing task's, once the worker
/// lets go of the task; it never hears of the task under another holder, its result or
/// the creator's payload.
#[tokio::test]
async fn a_worker_that_lets_go_of_a_task_stops_hearing_of_it() {
    let app = TestApp::spawn().await;
    let w1 = app.token("w1", &["worker"]);
    let input = json!({ "input": { "name": "w1", "queues": ["q"], "capacity": 1 } });
    app.gql(Some(&w1), REGISTER, input).await.data();
    let mut worker = app.ws_connected(TRANSPORT_WS, &w1).await;
    worker.subscribe("a", ASSIGNMENTS, json!({})).await;

    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k", "payload": { "secret": 1 } })).await;
    let offer = worker.next_data("a").await["assignments"].clone();
    assert_eq!(offer["task"]["id"], id);
    let lease = offer["leaseToken"].as_str().expect("lease token").to_owned();
    app.gql(Some(&w1), ACCEPT, json!({ "id": id, "lease": lease })).await.data();

    // While it holds the task, the worker watches it and reads it.
    let mut watch = app.ws_connected(TRANSPORT_WS, &w1).await;
    watch.subscribe("t", TASK_UPDATED, json!({ "id": id })).await;
    let running = watch.next_data("t").await;
    assert_eq!(running["taskUpdated"]["status"], "RUNNING", "{running}");
    assert_eq!(running["taskUpdated"]["task"]["payload"], json!({ "secret": 1 }));

    // Paused, the queue does not offer the released task to the worker again.
    let admin = app.token("root", &["admin"]);
    app.gql(Some(&admin), "mutation { pauseQueue(name: \"q\") { paused } }", json!({})).await.data();
    app.gql(Some(&w1), RELEASE, json!({ "id": id, "lease": lease })).await.data();
    let task = app.gql(Some(&w1), "query($id: ID!) { task(id: $id) { id } }", json!({ "id": id })).await;
    assert_eq!(task.data()["task"], Value::Null, "a released task is invisible to the worker");

    // The release is the last the stream tells: it ends as a missing task's would.
    let ended = next_for(&mut watch, "t").await;
    assert_eq!(ended["type"], "error", "the stream ends instead of delivering: {ended}");
    assert_eq!(ended["payload"][0]["extensions"]["code"], "NOT_FOUND", "{ended}");
    assert_eq!(app.metric("taskwire_subscriptions_revoked_total").await, 1.0);

    // The same id answers like a missing task from then on.
    watch.subscribe("t2", TASK_UPDATED, json!({ "id": id })).await;
    let refused = next_for(&mut watch, "t2").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "NOT_FOUND", "{refused}");
}

/// Item 5: every worker mutation answers a task the caller holds no lease on exactly like
/// a task that does not exist, or an id that is not a task id.
#[tokio::test]
async fn worker_mutations_answer_alike_for_missing_tasks_and_tasks_of_others() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let existing = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    // Another version-7 id: the same but for its last digit, which names no task.
    let last = existing.chars().last().expect("an id");
    let missing = format!("{}{}", &existing[..existing.len() - 1], if last == '0' { '1' } else { '0' });
    let w1 = app.token("w1", &["worker"]);

    for (name, mutation) in
        [("acceptTask", ACCEPT), ("completeTask", COMPLETE), ("failTask", FAIL), ("releaseTask", RELEASE)]
    {
        let mut answers = Vec::new();
        for id in [existing.as_str(), missing.as_str(), "not-a-task-id"] {
            let response = app.gql(Some(&w1), mutation, json!({ "id": id, "lease": "no-such-lease" })).await;
            let error = response.errors().first().cloned().unwrap_or_else(|| panic!("{name} on {id} must fail"));
            answers.push((error["extensions"]["code"].clone(), error["message"].clone()));
        }
        assert_eq!(answers[0].0, "LEASE_LOST", "{name}: {answers:?}");
        assert!(answers.iter().all(|a| *a == answers[0]), "{name} answers alike: {answers:?}");
    }
}

/// Item 4: a mutation sent over WebSocket spends from the mutations budget, as over HTTP.
#[tokio::test]
async fn mutations_over_websocket_spend_the_mutations_budget() {
    let app =
        TestApp::spawn_with(&[("TASKWIRE_RATE_LIMIT_MUTATIONS", "1"), ("TASKWIRE_RATE_LIMIT_OPERATIONS", "1000")])
            .await;
    let alice = app.token("alice", &["client"]);
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    let ids: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    for id in &ids {
        ws.subscribe(id, CREATE, json!({ "input": { "queue": "q", "kind": "k" } })).await;
    }
    // Refusals are answered at once, results when the mutation ran: in any order.
    let mut answered = std::collections::HashSet::new();
    let (mut created, mut limited) = (0, 0);
    while answered.len() < ids.len() {
        let answer = ws.recv_json().await;
        match answer["type"].as_str() {
            Some("complete") => continue,
            Some("next") => created += 1,
            Some("error") => {
                assert_eq!(answer["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{answer}");
                limited += 1;
            }
            other => panic!("unexpected {other:?}: {answer}"),
        }
        assert!(answered.insert(answer["id"].to_string()), "one answer per operation: {answer}");
    }
    assert!(limited >= 1, "a budget of one mutation per second refuses some of five at once ({created} created)");
    assert!(app.metric("taskwire_rate_limited_total{bucket=\"mutations\"}").await >= 1.0);
}

/// Subscriptions spend from the operations budget too: with a burst of three operations,
/// the fourth and fifth `subscribe` on a connection are refused with `RATE_LIMITED` while
/// the first three stay open and deliver.
#[tokio::test]
async fn subscribes_spend_the_operations_budget() {
    let app = TestApp::spawn_with(&[("TASKWIRE_RATE_LIMIT_OPERATIONS", "3")]).await;
    let alice = app.token("alice", &["client"]);
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    for i in 0..5 {
        ws.subscribe(&format!("s{i}"), "subscription { taskEvents { taskId seq } }", json!({})).await;
    }
    let mut refused = std::collections::BTreeSet::new();
    while refused.len() < 2 {
        let answer = ws.recv_json().await;
        assert_eq!(answer["type"], "error", "only refusals come before any event: {answer}");
        assert_eq!(answer["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{answer}");
        assert!(answer["payload"][0]["extensions"]["retryAfterMs"].as_u64().is_some(), "{answer}");
        refused.insert(answer["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(refused, ["s3", "s4"].map(str::to_owned).into(), "the burst admits the first three in order");
    assert!(app.metric("taskwire_rate_limited_total{bucket=\"operations\"}").await >= 2.0);

    // The admitted subscriptions are live: one event reaches each of them.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the create needs a token too
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut delivered = std::collections::BTreeSet::new();
    while delivered.len() < 3 {
        let answer = ws.recv_json().await;
        assert_eq!(answer["type"], "next", "{answer}");
        assert_eq!(answer["payload"]["data"]["taskEvents"]["taskId"], id.as_str());
        delivered.insert(answer["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(delivered, ["s0", "s1", "s2"].map(str::to_owned).into());
}

/// Item 11: an upgrade that offers no subprotocol, or only unknown ones, is refused.
#[tokio::test]
async fn an_upgrade_without_a_supported_subprotocol_is_refused_with_400() {
    let app = TestApp::spawn().await;
    for offered in ["", "graphql-sse"] {
        let refused = app.ws_with_headers(offered, &[]).await.expect_err("refused");
        assert!(refused.contains("400"), "offering {offered:?}: {refused}");
    }
    assert_eq!(app.metric("taskwire_ws_refusals_total{reason=\"subprotocol\"}").await, 2.0);
    assert_eq!(app.ws(LEGACY_WS).await.protocol, LEGACY_WS, "the supported ones still connect");
}

/// `TASKWIRE_WS_MAX_CONNECTIONS` caps the open WebSockets of the process: the upgrade past
/// it answers 503 (counted), and a place freed by a close is taken again.
#[tokio::test]
async fn upgrades_past_the_connection_cap_answer_503_until_a_place_frees() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_MAX_CONNECTIONS", "2")]).await;
    let alice = app.token("alice", &["client"]);
    let first = app.ws_connected(TRANSPORT_WS, &alice).await;
    let _second = app.ws_connected(LEGACY_WS, &alice).await;

    let refused = app.ws_with_headers(TRANSPORT_WS, &[]).await.expect_err("the third upgrade is refused");
    assert!(refused.contains("503"), "{refused}");
    assert_eq!(app.metric("taskwire_ws_refusals_total{reason=\"connections\"}").await, 1.0);

    first.close().await;
    for attempt in 0.. {
        match app.ws_with_headers(TRANSPORT_WS, &[]).await {
            Ok(mut again) => {
                again.init(bearer(&alice)).await;
                break;
            }
            Err(refused) if refused.contains("503") && attempt < 100 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(other) => panic!("a place should have been freed: {other}"),
        }
    }
}

/// Items 3 and 11: a message over `TASKWIRE_WS_MAX_MESSAGE_BYTES` closes with 1009.
#[tokio::test]
async fn a_message_over_the_limit_closes_the_connection_with_1009() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_MAX_MESSAGE_BYTES", "4096")]).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    ws.send(padded_subscribe("small", &id, 1000)).await;
    assert_eq!(ws.next_data("small").await["taskUpdated"]["seq"], 1, "a message under the limit is served");

    ws.send(padded_subscribe("big", &id, 5000)).await;
    let (code, _) = ws.expect_close().await;
    assert_eq!(code, 1009);
    assert_eq!(app.metric("taskwire_ws_refusals_total{reason=\"message_too_large\"}").await, 1.0);
    assert_eq!(app.metric("taskwire_ws_closes_total{code=\"1009\"}").await, 1.0);
}

/// Item 3: a subscription id over `TASKWIRE_WS_MAX_ID_BYTES` closes with 4400.
#[tokio::test]
async fn a_subscription_id_over_the_limit_closes_the_connection_with_4400() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    ws.send(padded_subscribe(&"i".repeat(128), &id, 0)).await;
    assert_eq!(ws.next_data(&"i".repeat(128)).await["taskUpdated"]["seq"], 1, "the longest id allowed (default 128)");

    ws.send(padded_subscribe(&"i".repeat(129), &id, 0)).await;
    assert_eq!(ws.expect_close().await, (4400, "Subscription id too long".to_owned()));
    assert_eq!(app.metric("taskwire_ws_refusals_total{reason=\"id_too_long\"}").await, 1.0);
}

/// Item 3: the subscribe messages a connection holds open are bounded by
/// `TASKWIRE_WS_MAX_CONNECTION_BYTES`; completing one gives its bytes back.
#[tokio::test]
async fn a_connection_holds_a_bounded_number_of_subscription_bytes() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_MAX_CONNECTION_BYTES", "2500")]).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
    for sub in ["1", "2"] {
        ws.send(padded_subscribe(sub, &id, 1000)).await;
        assert_eq!(ws.next_data(sub).await["taskUpdated"]["seq"], 1);
    }
    ws.send(padded_subscribe("3", &id, 1000)).await;
    let refused = next_for(&mut ws, "3").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "BAD_USER_INPUT", "{refused}");
    assert_eq!(app.metric("taskwire_ws_refusals_total{reason=\"connection_bytes\"}").await, 1.0);

    ws.send(json!({ "id": "1", "type": "complete" })).await;
    ws.send(padded_subscribe("4", &id, 1000)).await;
    assert_eq!(ws.next_data("4").await["taskUpdated"]["seq"], 1, "a completed subscription's bytes are free again");
}

/// Item 3: one subject holds at most `TASKWIRE_WS_MAX_CONNECTIONS_PER_SUBJECT`
/// acknowledged connections; the next closes with 4429, other subjects are unaffected,
/// and a closed connection frees its place.
#[tokio::test]
async fn connections_per_subject_are_capped() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WS_MAX_CONNECTIONS_PER_SUBJECT", "2")]).await;
    let alice = app.token("alice", &["client"]);
    let first = app.ws_connected(TRANSPORT_WS, &alice).await;
    let _second = app.ws_connected(LEGACY_WS, &alice).await;

    let mut third = app.ws(TRANSPORT_WS).await;
    third.send(json!({ "type": "connection_init", "payload": bearer(&alice) })).await;
    assert_eq!(third.recv().await, Received::Closed(4429, "Too many connections for this subject".into()));
    assert_eq!(app.metric("taskwire_ws_refusals_total{reason=\"subject_connections\"}").await, 1.0);

    let bob = app.token("bob", &["client"]);
    app.ws_connected(TRANSPORT_WS, &bob).await;

    // The server frees the place when it sees the close; until then it refuses.
    first.close().await;
    for attempt in 0.. {
        let mut again = app.ws(TRANSPORT_WS).await;
        again.send(json!({ "type": "connection_init", "payload": bearer(&alice) })).await;
        match again.recv().await {
            Received::Json(ack) if ack["type"] == "connection_ack" => break,
            Received::Closed(4429, _) if attempt < 100 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => panic!("a place should have been freed: {other:?}"),
        }
    }
}

/// Item 3: the results a connection has queued for its socket are bounded by
/// `TASKWIRE_WS_MAX_OUTBOUND_BYTES`, however large the tasks and however slowly the client
/// reads: here it reads nothing while megabytes of events are due to it.
#[tokio::test]
async fn results_queued_for_a_client_that_does_not_read_stay_within_the_outbound_budget() {
    let budget = 65_536.0;
    let app = TestApp::spawn_with(&[
        ("TASKWIRE_WS_MAX_OUTBOUND_BYTES", "65536"),
        ("TASKWIRE_WS_WRITE_TIMEOUT_MS", "60000"),
        ("TASKWIRE_SUBSCRIBER_BUFFER", "4096"),
    ])
    .await;
    let alice = app.token("alice", &["client"]);
    let mut silent = app.ws_connected(TRANSPORT_WS, &alice).await;
    silent.subscribe("all", "subscription { taskEvents { taskId task { payload } } }", json!({})).await;

    // ~24 MB of events, more than the loopback socket buffers absorb.
    let big = "x".repeat(60 * 1024);
    let mut queued = 0.0;
    for _ in 0..20 {
        let inputs: Vec<Value> = (0..20).map(|_| json!({ "queue": "q", "kind": "k", "payload": big })).collect();
        let create = "mutation($i: [CreateTaskInput!]!) { createTasks(inputs: $i) { created } }";
        app.gql(Some(&alice), create, json!({ "i": inputs })).await.data();
        queued = app.metric("taskwire_ws_outbound_bytes").await;
        assert!(queued <= budget, "{queued} bytes queued for one connection, over the budget");
    }
    let queued = app.wait_for_metric("taskwire_ws_outbound_bytes", |v| v > 0.0).await.max(queued);
    assert!(queued > 0.0 && queued <= budget, "the silent client's queue fills up to the budget: {queued}");
    silent.close().await;
}

/// Refused tokens at `connection_init` spend from the address's budget, as over HTTP:
/// past `TASKWIRE_RATE_LIMIT_INVALID_TOKENS` the close is `4429`, not `4403`.
#[tokio::test]
async fn refused_tokens_over_websocket_spend_the_addresss_budget() {
    let app = TestApp::spawn_with(&[("TASKWIRE_RATE_LIMIT_INVALID_TOKENS", "2")]).await;
    let valid = app.token("alice", &["client"]);
    let (signed_part, _) = valid.rsplit_once('.').expect("a JWT has three parts");
    let forged = format!("{signed_part}.bm90LXRoZS1zaWduYXR1cmU");

    let mut codes = Vec::new();
    for _ in 0..6 {
        let mut ws = app.ws(TRANSPORT_WS).await;
        ws.send(json!({ "type": "connection_init", "payload": bearer(&forged) })).await;
        codes.push(ws.expect_close().await.0);
    }

    assert_eq!(&codes[..2], &[4403, 4403], "the first refusals are plain: {codes:?}");
    assert!(codes[2..].contains(&4429), "then the address is out of budget: {codes:?}");
}
