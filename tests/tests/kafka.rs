//! The Kafka backbone under failure: nothing acknowledged is lost, nothing is duplicated.

use std::{collections::HashSet, sync::Arc, time::Duration};

use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
};
use serde_json::{Value, json};
use taskwire_api::kafka::EmbeddedCluster;
use taskwire_tests::{
    TestApp,
    ws::{TRANSPORT_WS, WsClient},
};

const CREATE_MANY: &str = "mutation($i: [CreateTaskInput!]!) { createTasks(inputs: $i) { task { id } } }";

/// With every broker of the embedded cluster down, 1,000 tasks are still acknowledged;
/// once the brokers return, every one reaches the status topic and a live subscriber,
/// and `task_events` holds exactly one creation event per task.
#[tokio::test]
async fn tasks_created_while_kafka_is_down_all_arrive_once_it_returns() {
    let (app, cluster) = TestApp::spawn_on_embedded_kafka().await;
    let alice = app.token("alice", &["client"]);
    let mut ws = subscribed(&app, &alice, "all", "subscription { taskEvents { taskId seq status } }").await;

    let published_before = app.metric("taskwire_outbox_published_total").await;
    set_brokers(&cluster, false).await;

    let mut created = HashSet::new();
    for _ in 0..10 {
        let inputs: Vec<Value> = (0..100).map(|_| json!({ "queue": "q", "kind": "k" })).collect();
        let response = app.gql(Some(&alice), CREATE_MANY, json!({ "i": inputs })).await;
        for payload in response.data()["createTasks"].as_array().cloned().unwrap_or_default() {
            created.insert(payload["task"]["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(created.len(), 1000, "every create was acknowledged while Kafka was down");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "not ready without Kafka: {body}");
    assert_eq!(
        app.metric("taskwire_outbox_published_total").await,
        published_before,
        "nothing reached Kafka while it was down: the acknowledged tasks wait in the outbox"
    );

    set_brokers(&cluster, true).await;

    // Every task reaches the live subscriber, exactly once.
    let mut delivered = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while delivered.len() < created.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {} of 1000 delivered", delivered.len());
        let data = ws.next_data("all").await;
        let id = data["taskEvents"]["taskId"].as_str().unwrap_or_default().to_owned();
        assert_eq!(data["taskEvents"]["seq"], 1);
        assert!(delivered.insert(id), "no event is delivered twice");
    }
    assert_eq!(delivered, created);

    // Every task reaches the status topic.
    let mut on_topic = HashSet::new();
    read_topic(&app, &app.topic("tasks.status"), |message| {
        let envelope: Value = serde_json::from_slice(message.payload().unwrap_or_default()).expect("envelope");
        assert_eq!(envelope["v"], 1);
        assert_eq!(message.key(), envelope["taskId"].as_str().map(str::as_bytes), "keyed by task id");
        on_topic.insert(envelope["taskId"].as_str().unwrap_or_default().to_owned());
        on_topic.len() < created.len()
    })
    .await;
    assert_eq!(on_topic, created);

    // The history is exact: one creation event per task, no duplicates.
    let listed =
        app.gql(Some(&alice), "{ tasks(first: 100) { edges { node { events(last: 5) { seq } } } } }", json!({})).await;
    for edge in listed.data()["tasks"]["edges"].as_array().cloned().unwrap_or_default() {
        assert_eq!(edge["node"]["events"], json!([{ "seq": 1 }]));
    }
    let backlog = app.wait_for_metric("taskwire_outbox_backlog", |v| v == 0.0).await;
    assert_eq!(backlog, 0.0, "the outbox drained");
}

/// A broker that fences the relay's producer (`PRODUCER_FENCED`, which librdkafka treats
/// as fatal for an idempotent producer: every later message would fail) does not stall
/// the outbox: the relay replaces its producer and every task still reaches a live
/// subscriber.
#[tokio::test]
async fn a_fenced_producer_is_replaced_and_the_outbox_still_drains() {
    let (app, cluster) = TestApp::spawn_on_embedded_kafka().await;
    let alice = app.token("alice", &["client"]);
    let mut ws = subscribed(&app, &alice, "all", "subscription { taskEvents { taskId seq } }").await;

    let fence = cluster.clone();
    tokio::task::spawn_blocking(move || fence.fence_producers(3)).await.expect("join").expect("fenced");
    let inputs: Vec<Value> = (0..20).map(|_| json!({ "queue": "q", "kind": "k" })).collect();
    let response = app.gql(Some(&alice), CREATE_MANY, json!({ "i": inputs })).await;
    let created: HashSet<String> = response.data()["createTasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| p["task"]["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(created.len(), 20);

    let mut delivered = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered.len() < created.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {} of 20 delivered", delivered.len());
        let data = ws.next_data("all").await;
        delivered.insert(data["taskEvents"]["taskId"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(delivered, created);
    // The subscriber hears of local creations at commit, so delivery alone does not show
    // that the relay got past the fence: the restart counter and the drained outbox do.
    let restarts = app.wait_for_metric("taskwire_outbox_producer_restarts_total", |v| v >= 1.0).await;
    assert!(restarts >= 1.0, "the fenced producer was replaced");
    assert_eq!(app.wait_for_metric("taskwire_outbox_backlog", |v| v == 0.0).await, 0.0, "the outbox drained");
}

/// A subscriber whose live feed is cut (brokers down, so an event another writer commits
/// never reaches Kafka) still gets the event: a few seconds later the hub's history sweep
/// routes it. The other writer is played by raw SQL, as another Taskwire process would
/// commit it: task row and `task_events` row together.
#[tokio::test]
async fn a_subscriber_whose_live_feed_is_cut_catches_up_from_the_history() {
    let (app, cluster) = TestApp::spawn_on_embedded_kafka().await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut ws = app.ws(TRANSPORT_WS).await;
    ws.init(json!({ "authorization": format!("Bearer {alice}") })).await;
    ws.subscribe("t", "subscription($id: ID!) { taskUpdated(id: $id) { seq status } }", json!({ "id": id })).await;
    assert_eq!(ws.next_data("t").await["taskUpdated"]["seq"], 1);

    set_brokers(&cluster, false).await;
    let now = chrono::Utc::now().timestamp_millis();
    app.sql(&format!(
        "UPDATE tasks SET status = 'CANCELLED', version = version + 1, last_seq = 2, updated_at = {now} WHERE id = '{id}'"
    ))
    .await;
    app.sql(&format!(
        "INSERT INTO task_events (task_id, seq, status, previous_status, attempt, at) \
         VALUES ('{id}', 2, 'CANCELLED', 'QUEUED', 0, {now})"
    ))
    .await;

    let event = ws.next_data("t").await;
    assert_eq!(event["taskUpdated"], json!({ "seq": 2, "status": "CANCELLED" }));
    assert!(app.metric("taskwire_live_events_recovered_total").await >= 1.0, "the sweep routed the event");
    set_brokers(&cluster, true).await;
}

/// A change this process commits reaches this process's subscribers at commit, without
/// the Kafka round trip: with every broker down, the subscriber still hears of it, and
/// not from the history sweep. The Kafka copy that follows once the brokers return is
/// dropped by `seq`, so nothing is delivered twice.
#[tokio::test]
async fn a_change_committed_here_reaches_subscribers_here_without_kafka() {
    let (app, cluster) = TestApp::spawn_on_embedded_kafka().await;
    let alice = app.token("alice", &["client"]);
    let first = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let second = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    app.wait_for_metric(ROUTED, |v| v >= 2.0).await;
    let mut ws = subscribed(&app, &alice, "mine", "subscription { taskEvents { taskId seq status } }").await;

    set_brokers(&cluster, false).await;
    app.gql(Some(&alice), CANCEL, json!({ "id": first })).await.data();
    let event = ws.next_data("mine").await;
    assert_eq!(event["taskEvents"], json!({ "taskId": first, "seq": 2, "status": "CANCELLED" }));
    assert_eq!(app.metric("taskwire_live_events_recovered_total").await, 0.0, "not routed by the sweep");

    set_brokers(&cluster, true).await;
    assert!(app.wait_for_metric(ROUTED, |v| v >= 3.0).await >= 3.0, "the Kafka copy was routed too");
    app.gql(Some(&alice), CANCEL, json!({ "id": second })).await.data();
    let event = ws.next_data("mine").await;
    assert_eq!(event["taskEvents"], json!({ "taskId": second, "seq": 2, "status": "CANCELLED" }), "no duplicate");
}

/// A task created here reaches this process's queue subscribers at commit, like any other
/// change: with every broker down, the subscriber hears of the creation, and not from the
/// history sweep. Were creations to come only through Kafka, a subscriber would see a
/// task offered at once (`ASSIGNED`, published here) first and then drop its creation.
#[tokio::test]
async fn a_task_created_here_reaches_subscribers_here_without_kafka() {
    let (app, cluster) = TestApp::spawn_on_embedded_kafka().await;
    let operator = app.token("olga", &["operator"]);
    let alice = app.token("alice", &["client"]);
    let mut ws =
        subscribed(&app, &operator, "q", "subscription { taskEvents(filter: { queue: \"q\" }) { taskId seq status } }")
            .await;

    set_brokers(&cluster, false).await;
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let event = ws.next_data("q").await;
    assert_eq!(event["taskEvents"], json!({ "taskId": id, "seq": 1, "status": "QUEUED" }));
    assert_eq!(app.metric("taskwire_live_events_recovered_total").await, 0.0, "not routed by the sweep");

    set_brokers(&cluster, true).await;
    assert!(app.wait_for_metric(ROUTED, |v| v >= 1.0).await >= 1.0, "the Kafka copy was routed too");
    app.gql(Some(&alice), CANCEL, json!({ "id": id })).await.data();
    let event = ws.next_data("q").await;
    assert_eq!(event["taskEvents"], json!({ "taskId": id, "seq": 2, "status": "CANCELLED" }), "no duplicate");
}

const ROUTED: &str = "taskwire_status_events_total{outcome=\"routed\"}";
const CANCEL: &str = "mutation($id: ID!) { cancelTask(id: $id) { status } }";

/// Two processes of one deployment on the embedded stack: `a` (api and dispatcher) and a
/// peer `b` with the `api` role only, sharing `a`'s database file and Kafka cluster. `b`
/// commits nothing, so an event reaches its hub only through the status topic (or, late,
/// through its history sweep).
async fn a_and_an_api_peer() -> (TestApp, TestApp, Arc<EmbeddedCluster>) {
    let (a, cluster) = TestApp::spawn_on_embedded_kafka().await;
    let b = a.spawn_peer(&[("TASKWIRE_ROLES", "api")]).await;
    (a, b, cluster)
}

/// Creates `count` tasks on `app` in `queue` and cancels each: two events per task.
async fn create_and_cancel(app: &TestApp, token: &str, queue: &str, count: usize) -> Vec<String> {
    let inputs: Vec<Value> = (0..count).map(|_| json!({ "queue": queue, "kind": "k" })).collect();
    let created = app.gql(Some(token), CREATE_MANY, json!({ "i": inputs })).await;
    let ids: Vec<String> = created.data()["createTasks"]
        .as_array()
        .expect("payloads")
        .iter()
        .map(|p| p["task"]["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), count);
    for id in &ids {
        app.gql(Some(token), CANCEL, json!({ "id": id })).await.data();
    }
    ids
}

/// Reads `ws`'s subscription `sub` until every task in `ids` has had both its events,
/// and checks each task's events: exactly `QUEUED` (seq 1) then `CANCELLED` (seq 2), none
/// twice, none from another task.
async fn expect_created_and_cancelled(ws: &mut WsClient, sub: &str, ids: &[String]) {
    let mut seen: std::collections::HashMap<String, Vec<(u64, String)>> =
        ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    for _ in 0..ids.len() * 2 {
        let event = ws.next_data(sub).await["taskEvents"].clone();
        let id = event["taskId"].as_str().expect("taskId");
        let events = seen.get_mut(id).unwrap_or_else(|| panic!("an event of an unknown task: {event}"));
        events.push((event["seq"].as_u64().expect("seq"), event["status"].as_str().expect("status").to_owned()));
    }
    let expected = vec![(1, "QUEUED".to_owned()), (2, "CANCELLED".to_owned())];
    for (id, events) in &seen {
        assert_eq!(events, &expected, "task {id}: every event, in order, once");
    }
}

/// What one process commits reaches a subscriber on another through Kafka: every task's
/// every event, in order, once; and the other process's status consumer routed a copy of
/// each (so the subscriber was not served by the history sweep alone).
#[tokio::test]
async fn events_committed_by_another_process_reach_subscribers_here_through_kafka() {
    let (a, b, _cluster) = a_and_an_api_peer().await;
    let alice = a.token("alice", &["client"]);
    let operator = b.token("olga", &["operator"]);
    let query = "subscription { taskEvents(filter: { queue: \"across\" }) { taskId seq status } }";
    let mut ws = subscribed(&b, &operator, "q", query).await;
    let routed_before = b.metric(ROUTED).await;

    let ids = create_and_cancel(&a, &alice, "across", 25).await;
    expect_created_and_cancelled(&mut ws, "q", &ids).await;
    let events = (ids.len() * 2) as f64;
    let routed = b.wait_for_metric(ROUTED, |v| v >= routed_before + events).await;
    assert!(routed >= routed_before + events, "b's status consumer routed every event ({routed} - {routed_before})");
}

/// A broker outage while another process commits: the subscriber here is served from the
/// history meanwhile; once the brokers return, the Kafka copies of every event still
/// arrive here, and none of them is delivered to the subscriber a second time.
#[tokio::test]
async fn after_an_outage_another_process_s_events_arrive_through_kafka_and_are_not_delivered_twice() {
    let (a, b, cluster) = a_and_an_api_peer().await;
    let alice = a.token("alice", &["client"]);
    let operator = b.token("olga", &["operator"]);
    let query = "subscription { taskEvents(filter: { queue: \"outage\" }) { taskId seq status } }";
    let mut ws = subscribed(&b, &operator, "q", query).await;
    let (routed_before, duplicates_before) = (b.metric(ROUTED).await, b.metric("taskwire_live_duplicates_total").await);

    set_brokers(&cluster, false).await;
    let ids = create_and_cancel(&a, &alice, "outage", 20).await;
    expect_created_and_cancelled(&mut ws, "q", &ids).await;
    assert!(b.metric("taskwire_live_events_recovered_total").await > 0.0, "the history sweep served the outage");
    assert_eq!(b.metric(ROUTED).await, routed_before, "nothing came through Kafka while it was down");

    set_brokers(&cluster, true).await;
    let events = (ids.len() * 2) as f64;
    let routed = b.wait_for_metric(ROUTED, |v| v >= routed_before + events).await;
    assert!(routed >= routed_before + events, "every Kafka copy arrived after the outage");
    let duplicates = b.metric("taskwire_live_duplicates_total").await;
    assert!(duplicates >= duplicates_before + events, "the hub dropped every late copy ({duplicates})");

    // The next events the subscriber gets are a new task's: no late copy slipped through.
    let next = create_and_cancel(&a, &alice, "outage", 1).await;
    expect_created_and_cancelled(&mut ws, "q", &next).await;
    assert_eq!(a.wait_for_metric("taskwire_outbox_backlog", |v| v == 0.0).await, 0.0, "the outbox drained");
}

/// A `graphql-transport-ws` connection authenticated with `token`, carrying `query`
/// under `id`, once the server has had time to register it (the protocol does not
/// acknowledge a `subscribe`).
async fn subscribed(app: &TestApp, token: &str, id: &str, query: &str) -> WsClient {
    let mut ws = app.ws(TRANSPORT_WS).await;
    ws.init(json!({ "authorization": format!("Bearer {token}") })).await;
    ws.subscribe(id, query, json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws
}

/// Takes every broker of the embedded cluster down (`up = false`) or brings them back
/// (librdkafka's mock calls block, so off the runtime).
async fn set_brokers(cluster: &Arc<EmbeddedCluster>, up: bool) {
    let cluster = cluster.clone();
    let switched =
        tokio::task::spawn_blocking(move || if up { cluster.set_brokers_up() } else { cluster.set_brokers_down() });
    switched.await.expect("join").expect("brokers switched");
}

/// Reads `topic` from the beginning while `wanted` returns true.
async fn read_topic(
    app: &TestApp,
    topic: &str,
    mut wanted: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &app.kafka_bootstrap)
        .set("group.id", format!("verify-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the message arrives")
            .expect("message");
        if !wanted(&message) {
            return;
        }
    }
}

#[tokio::test]
async fn a_requests_trace_context_travels_in_the_kafka_headers() {
    use rdkafka::message::Headers;
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&alice)
        .header("traceparent", incoming)
        .json(&json!({ "query": "mutation { createTask(input: {queue: \"q\", kind: \"k\"}) { task { id } } }" }))
        .send()
        .await
        .expect("sent");
    let body: Value = response.json().await.expect("JSON");
    let id = body["data"]["createTask"]["task"]["id"].as_str().expect("created").to_owned();

    for topic in ["tasks.status", "tasks.dispatch"] {
        let mut traceparent = None;
        read_topic(&app, &app.topic(topic), |message| {
            if message.key() != Some(id.as_bytes()) {
                return true;
            }
            traceparent = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "traceparent").and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned());
            false
        })
        .await;
        let traceparent = traceparent.expect("the message carries a traceparent header");
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{topic}: the caller's trace continues: {traceparent}"
        );
        assert_ne!(traceparent, incoming, "{topic}: with a span of our own");
    }
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_the_backbone_series() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let published = app.wait_for_metric("taskwire_outbox_published_total", |v| v >= 2.0).await;
    assert!(published >= 2.0, "status and dispatch messages of the task were published");
    let text = app.metrics().await;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            assert!(comment.starts_with(" HELP ") || comment.starts_with(" TYPE "), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        assert!(value.parse::<f64>().is_ok(), "numeric value in {line}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{line}");
    }
    for series in [
        "taskwire_outbox_backlog",
        "taskwire_outbox_publish_latency_seconds_bucket",
        "taskwire_outbox_published_total",
        "taskwire_ws_connections",
        "taskwire_subscriptions",
        "taskwire_subscriber_overflows_total",
    ] {
        assert!(text.contains(series), "missing {series}");
    }
}

/// A task that dies is published to the dead-letter topic, with its last status.
#[tokio::test]
async fn a_dead_task_is_published_to_the_dead_letter_topic() {
    use futures::FutureExt;
    use taskwire_worker::{Outcome, Worker, WorkerConfig};
    let app = TestApp::spawn().await;
    let config = WorkerConfig {
        url: app.address.clone(),
        token: app.token("w1", &["worker"]),
        name: "w1".into(),
        queues: vec!["q".into()],
        capacity: 1,
        heartbeat_every: Duration::from_secs(1),
        auto_accept: false,
    };
    let fatal =
        std::sync::Arc::new(|_| async { Outcome::Fail { error: "bad input".into(), retryable: false } }.boxed());
    let worker = Worker::start(config, fatal).await.expect("worker starts");
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let mut dead = None;
    read_topic(&app, &app.topic("tasks.dead"), |message| {
        if message.key() != Some(id.as_bytes()) {
            return true;
        }
        dead = message.payload().and_then(|p| serde_json::from_slice::<Value>(p).ok());
        false
    })
    .await;
    let dead = dead.expect("a dead-letter message");
    assert_eq!((dead["status"].as_str(), dead["taskId"].as_str()), (Some("DEAD"), Some(id.as_str())));
    assert_eq!(dead["message"], "bad input");
    worker.stop().await;
}

/// A broker address that accepts connections but never answers (a hung broker) makes
/// start-up fail with a clear error once `TASKWIRE_KAFKA_STARTUP_TIMEOUT_MS` has passed,
/// instead of hanging.
#[tokio::test]
async fn start_up_gives_up_on_brokers_that_never_answer() {
    start_up_gives_up_on(Broker::Silent).await;
}

/// A broker address that accepts connections and closes them at once (a broker still
/// starting, a proxy with nothing behind it) is asked again until the time limit, and
/// start-up then fails with the same clear error, not with the first transport failure.
#[tokio::test]
async fn start_up_gives_up_on_brokers_that_drop_every_connection() {
    start_up_gives_up_on(Broker::Dropping).await;
}

#[derive(Clone, Copy)]
enum Broker {
    /// Holds every connection, reading and writing nothing.
    Silent,
    /// Closes every connection as soon as it is accepted.
    Dropping,
}

async fn start_up_gives_up_on(broker: Broker) {
    use taskwire_api::{
        config::Config,
        startup::{Application, StartupError},
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let brokers = format!("127.0.0.1:{}", listener.local_addr().expect("address").port());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            match broker {
                Broker::Silent => held.push(socket),
                Broker::Dropping => drop(socket),
            }
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let env: std::collections::BTreeMap<String, String> = [
        ("TASKWIRE_LISTEN", "127.0.0.1:0".to_owned()),
        ("TASKWIRE_DATABASE_URL", format!("sqlite://{}/taskwire.db?mode=rwc", dir.path().display())),
        ("TASKWIRE_JWT_SECRET", "a-test-secret-long-enough-for-hs256".to_owned()),
        ("TASKWIRE_DATA_DIR", dir.path().display().to_string()),
        ("TASKWIRE_KAFKA_BROKERS", brokers.clone()),
        ("TASKWIRE_KAFKA_STARTUP_TIMEOUT_MS", "1500".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = Config::load_from(None, &env).expect("configuration loads");

    let outcome = tokio::time::timeout(Duration::from_secs(30), Application::build(config)).await;

    holder.abort();
    match outcome.expect("start-up gave up by itself, well before 30 s") {
        Err(error @ StartupError::KafkaTimeout { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&brokers) && message.contains("1.5s"), "unclear error: {message}");
        }
        other => panic!("expected a Kafka start-up timeout, got {other:?}"),
    }
}
