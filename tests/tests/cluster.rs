//! Several instances of the service as one deployment: two apps on one database, one
//! Kafka (topics and all) and one Redis, like two `taskwire` processes behind a load
//! balancer (`TestApp::spawn_peer`). What one process commits, subscribers and workers of
//! the other must see; who offers to which worker, and the queues' limits, must hold over
//! both dispatchers together.
//!
//! "Not offered" is checked on what was offered (every task's event history), never by
//! waiting for a status that a wrong offer would also pass through.
//!
//! Several processes share a MySQL/MariaDB database: these tests run when
//! `TASKWIRE_TEST_DATABASE_URL` is set (SQLite, the embedded default, is one process's
//! database) and say that they skipped otherwise.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde_json::{Value, json};
use taskwire_tests::{
    DATABASE_URL_VAR, GqlResponse, TestApp, require_service,
    ws::{TRANSPORT_WS, WsClient},
};

const REGISTER: &str = "mutation($input: RegisterWorkerInput!) { registerWorker(input: $input) { id } }";
const ASSIGNMENTS: &str = "subscription { assignments { leaseToken started task { id queue } } }";
const ACCEPT: &str =
    "mutation($id: ID!, $lease: String!) { acceptTask(taskId: $id, leaseToken: $lease) { id status } }";
const COMPLETE: &str =
    "mutation($id: ID!, $lease: String!) { completeTask(taskId: $id, leaseToken: $lease) { id status } }";
const CONFIGURE: &str = "mutation($input: ConfigureQueueInput!) { configureQueue(input: $input) { name } }";
const EVENTS: &str = "subscription($queue: String) { taskEvents(filter: { queue: $queue }) { taskId seq status } }";
const HISTORY: &str = "query($id: ID!) { task(id: $id) { status events { seq status at } } }";

/// The longest any wait below may take before the test fails with what it was waiting for.
const PATIENCE: Duration = Duration::from_secs(60);

/// A worker with its `assignments` stream open on `app` (the process that holds it).
struct Worker {
    token: String,
    ws: WsClient,
}

impl Worker {
    async fn connect(app: &TestApp, id: &str, queue: &str, capacity: i32) -> Worker {
        Self::connect_taking(app, id, queue, capacity, false).await
    }

    /// [`Worker::connect`], registered with `autoAccept` when `auto_accept`.
    async fn connect_taking(app: &TestApp, id: &str, queue: &str, capacity: i32, auto_accept: bool) -> Worker {
        let token = app.token(id, &["worker"]);
        let input =
            json!({ "input": { "name": id, "queues": [queue], "capacity": capacity, "autoAccept": auto_accept } });
        app.gql(Some(&token), REGISTER, input).await.data();
        let streams = app.metric("taskwire_subscriptions").await;
        let mut ws = app.ws(TRANSPORT_WS).await;
        ws.init(json!({ "authorization": format!("Bearer {token}") })).await;
        ws.subscribe("a", ASSIGNMENTS, json!({})).await;
        // Until the stream is open (the gauge moves once the worker is marked as held by
        // this process): before that the worker is nobody's, and any dispatcher may offer
        // to it, which the tests below would take for a broken ownership rule.
        app.wait_for_metric("taskwire_subscriptions", |open| open > streams).await;
        Worker { token, ws }
    }

    /// The next offer, `(task id, lease token)`, within [`PATIENCE`].
    async fn next_offer(&mut self) -> (String, String) {
        let (id, lease, _) = self.next_offer_started().await;
        (id, lease)
    }

    /// The next offer, `(task id, lease token, whether it started the task)`.
    async fn next_offer_started(&mut self) -> (String, String, bool) {
        let data = tokio::time::timeout(PATIENCE, self.ws.next_data("a")).await.expect("an offer within the patience");
        let a = &data["assignments"];
        let started = a["started"].as_bool().expect("started");
        (a["task"]["id"].as_str().expect("id").to_owned(), a["leaseToken"].as_str().expect("lease").to_owned(), started)
    }

    /// Accepts and completes `id` through `app`.
    async fn run(&self, app: &TestApp, id: &str, lease: &str) {
        app.gql(Some(&self.token), ACCEPT, json!({ "id": id, "lease": lease })).await.data();
        app.gql(Some(&self.token), COMPLETE, json!({ "id": id, "lease": lease })).await.data();
    }
}

async fn configure(app: &TestApp, input: Value) {
    let admin = app.token("root", &["admin"]);
    app.gql(Some(&admin), CONFIGURE, json!({ "input": input })).await.data();
}

/// Every task's history, `(seq, status, at)`, read through `app`.
async fn histories(app: &TestApp, ids: &[String]) -> HashMap<String, Vec<(u64, String, String)>> {
    let operator = app.token("olga", &["operator"]);
    let mut out = HashMap::new();
    for id in ids {
        let r: GqlResponse = app.gql(Some(&operator), HISTORY, json!({ "id": id })).await;
        let events = r.data()["task"]["events"].as_array().cloned().unwrap_or_default();
        let events = events
            .iter()
            .map(|e| {
                let seq = e["seq"].as_u64().expect("seq");
                (
                    seq,
                    e["status"].as_str().unwrap_or_default().to_owned(),
                    e["at"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        out.insert(id.clone(), events);
    }
    out
}

/// The offers made so far among `ids` (their `ASSIGNED` events), by time.
async fn offer_times(app: &TestApp, ids: &[String]) -> Vec<chrono::DateTime<chrono::FixedOffset>> {
    let mut times: Vec<_> = histories(app, ids)
        .await
        .into_values()
        .flatten()
        .filter(|(_, status, _)| status == "ASSIGNED")
        .map(|(_, _, at)| chrono::DateTime::parse_from_rfc3339(&at).expect("event time"))
        .collect();
    times.sort();
    times
}

/// Two processes of one deployment, `b` started with `b_vars`; `None` (and a skip notice)
/// without a shared database server.
async fn two_processes(test: &str, b_vars: &[(&str, &str)]) -> Option<(TestApp, TestApp)> {
    require_service(DATABASE_URL_VAR, test)?;
    let a = TestApp::spawn().await;
    let b = a.spawn_peer(b_vars).await;
    Some((a, b))
}

/// Waits until `metric` on `app` satisfies `done`; fails with its last value otherwise.
async fn wait_metric(app: &TestApp, metric: &str, done: impl Fn(f64) -> bool) -> f64 {
    tokio::time::timeout(PATIENCE, app.wait_for_metric(metric, done))
        .await
        .unwrap_or_else(|_| panic!("{metric} never reached the expected value"))
}

/// Process A queues, offers and completes; process B, which runs no dispatcher, holds the
/// worker's stream and a subscriber. B commits no task change, so everything B's
/// subscriber and worker hear came through Kafka (its status consumer): every event of
/// every task, in `seq` order, without gaps or repeats, and the offers A's dispatcher
/// made to the worker connected to B.
#[tokio::test]
async fn events_and_offers_made_by_one_process_reach_subscribers_and_workers_on_another() {
    let Some((a, b)) = two_processes(
        "events_and_offers_made_by_one_process_reach_subscribers_and_workers_on_another",
        &[("TASKWIRE_ROLES", "api")],
    )
    .await
    else {
        return;
    };
    let alice = a.token("alice", &["client"]);
    let mut subscriber = b.ws(TRANSPORT_WS).await;
    subscriber.init(json!({ "authorization": format!("Bearer {alice}") })).await;
    subscriber.subscribe("e", EVENTS, json!({ "queue": "cross" })).await;
    let mut worker = Worker::connect(&b, "w-on-b", "cross", 4).await;

    const TASKS: usize = 12;
    let mut ids = Vec::new();
    for n in 0..TASKS {
        ids.push(a.create_task(&alice, json!({ "queue": "cross", "kind": "k", "payload": { "n": n } })).await);
    }
    for _ in 0..TASKS {
        let (id, lease) = worker.next_offer().await;
        assert!(ids.contains(&id), "an offer of a task of this test: {id}");
        worker.run(&a, &id, &lease).await;
    }

    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let expected = TASKS * 4;
    let mut received = 0;
    while received < expected {
        let data = tokio::time::timeout(PATIENCE, subscriber.next_data("e"))
            .await
            .unwrap_or_else(|_| panic!("{received} of {expected} events within the patience: {seen:?}"));
        let event = &data["taskEvents"];
        let id = event["taskId"].as_str().expect("task id").to_owned();
        seen.entry(id).or_default().push(event["seq"].as_u64().expect("seq"));
        received += 1;
    }
    assert_eq!(seen.len(), TASKS, "every task was heard of");
    for (id, seqs) in &seen {
        assert_eq!(seqs, &[1, 2, 3, 4], "task {id}: QUEUED, ASSIGNED, RUNNING, SUCCEEDED in order, once each");
    }
    assert_eq!(b.metric("taskwire_live_events_recovered_total").await, 0.0, "none came from the history sweep");
    assert_eq!(b.metric("taskwire_dispatch_offers_total").await, 0.0, "B runs no dispatcher");
    assert_eq!(a.metric("taskwire_dispatch_offers_total").await, TASKS as f64);
}

/// An offer is started (for a worker registered with `autoAccept`) only by the process
/// where the worker's stream is open, which delivers it at once. With the worker on B,
/// which runs no dispatcher, A's dispatcher makes plain offers (B's stream is not open on
/// A), and the worker accepts them as usual. With the worker on B running a dispatcher,
/// B's dispatcher starts the tasks queued through A: `QUEUED` → `RUNNING` → `SUCCEEDED`,
/// no `acceptTask`.
#[tokio::test]
async fn offers_are_started_only_where_the_auto_accepting_workers_stream_is_open() {
    let test = "offers_are_started_only_where_the_auto_accepting_workers_stream_is_open";
    for b_dispatches in [false, true] {
        let b_vars: &[(&str, &str)] = if b_dispatches { &[] } else { &[("TASKWIRE_ROLES", "api")] };
        let Some((a, b)) = two_processes(test, b_vars).await else { return };
        let queue = if b_dispatches { "taken-on-b" } else { "taken-from-a" };
        let mut worker = Worker::connect_taking(&b, "w-takes", queue, 4, true).await;
        let alice = a.token("alice", &["client"]);
        const TASKS: usize = 6;
        let mut ids = Vec::new();
        for _ in 0..TASKS {
            ids.push(a.create_task(&alice, json!({ "queue": queue, "kind": "k" })).await);
        }
        for _ in 0..TASKS {
            let (id, lease, started) = worker.next_offer_started().await;
            assert_eq!(started, b_dispatches, "started only by the process holding the stream");
            if started {
                b.gql(Some(&worker.token), COMPLETE, json!({ "id": id, "lease": lease })).await.data();
            } else {
                worker.run(&b, &id, &lease).await;
            }
        }
        let (offering, idle) = if b_dispatches { (&b, &a) } else { (&a, &b) };
        assert_eq!(offering.metric("taskwire_dispatch_offers_total").await, TASKS as f64);
        assert_eq!(idle.metric("taskwire_dispatch_offers_total").await, 0.0);
        let expected: &[&str] = if b_dispatches {
            &["QUEUED", "RUNNING", "SUCCEEDED"]
        } else {
            &["QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED"]
        };
        for (id, events) in histories(&a, &ids).await {
            let statuses: Vec<&str> = events.iter().map(|(_, s, _)| s.as_str()).collect();
            assert_eq!(statuses, expected, "task {id}");
        }
    }
}

/// A dispatcher offers only to the workers whose stream its process holds: tasks queued
/// through A, whose only worker is connected to B, are offered by B's dispatcher (which
/// hears of them through Kafka or takes them over from the database), never by A's.
#[tokio::test]
async fn a_dispatcher_offers_only_to_workers_connected_to_its_own_process() {
    let Some((a, b)) = two_processes("a_dispatcher_offers_only_to_workers_connected_to_its_own_process", &[]).await
    else {
        return;
    };
    let mut worker = Worker::connect(&b, "w-on-b", "own", 8).await;
    let alice = a.token("alice", &["client"]);
    const TASKS: usize = 6;
    let mut ids = Vec::new();
    for _ in 0..TASKS {
        ids.push(a.create_task(&alice, json!({ "queue": "own", "kind": "k" })).await);
    }
    for _ in 0..TASKS {
        let (id, lease) = worker.next_offer().await;
        worker.run(&b, &id, &lease).await;
    }
    assert_eq!(a.metric("taskwire_dispatch_local_total{outcome=\"fed\"}").await, TASKS as f64, "A held them first");
    assert_eq!(a.metric("taskwire_dispatch_offers_total").await, 0.0, "A never offered to B's worker");
    assert_eq!(b.metric("taskwire_dispatch_offers_total").await, TASKS as f64);
    for (id, events) in histories(&a, &ids).await {
        let statuses: Vec<&str> = events.iter().map(|(_, s, _)| s.as_str()).collect();
        assert_eq!(statuses, ["QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED"], "task {id} offered once");
    }
}

/// `maxConcurrency` counts every dispatcher's offers: with tasks queued on both
/// processes and idle workers on both, no more than the cap is ever offered at once.
#[tokio::test]
async fn max_concurrency_holds_across_dispatchers() {
    let Some((a, b)) = two_processes("max_concurrency_holds_across_dispatchers", &[]).await else { return };
    configure(&a, json!({ "name": "capped", "maxConcurrency": 2 })).await;
    let mut on_a = Worker::connect(&a, "w-a", "capped", 5).await;
    let mut on_b = Worker::connect(&b, "w-b", "capped", 5).await;
    let alice = a.token("alice", &["client"]);
    let mut ids = Vec::new();
    for n in 0..10 {
        let app = if n % 2 == 0 { &a } else { &b };
        ids.push(app.create_task(&alice, json!({ "queue": "capped", "kind": "k" })).await);
    }
    // Both dispatchers hold tasks and have idle workers; two offers are made...
    wait_metric(&a, "taskwire_dispatch_local_total{outcome=\"fed\"}", |n| n >= 5.0).await;
    wait_metric(&b, "taskwire_dispatch_local_total{outcome=\"fed\"}", |n| n >= 5.0).await;
    let mut held = Vec::new();
    while held.len() < 2 {
        tokio::select! {
            offer = on_a.next_offer() => held.push(("a", offer)),
            offer = on_b.next_offer() => held.push(("b", offer)),
        }
    }
    // ... and no third while they run, however many rounds both dispatchers make.
    const ROUNDS: &str = "taskwire_dispatch_rounds_total";
    let (ra, rb) = (a.metric(ROUNDS).await, b.metric(ROUNDS).await);
    wait_metric(&a, ROUNDS, |n| n >= ra + 5.0).await;
    wait_metric(&b, ROUNDS, |n| n >= rb + 5.0).await;
    assert_eq!(offer_times(&a, &ids).await.len(), 2, "exactly the cap is offered over both dispatchers");
    let limited = a.metric("taskwire_dispatch_queue_limited_total{limit=\"concurrency\"}").await
        + b.metric("taskwire_dispatch_queue_limited_total{limit=\"concurrency\"}").await;
    assert!(limited >= 1.0, "the offer transactions held offers back: {limited}");

    // Finishing one frees exactly one place.
    let (process, (id, lease)) = held.remove(0);
    let worker = if process == "a" { &on_a } else { &on_b };
    worker.run(&a, &id, &lease).await;
    tokio::select! {
        _ = on_a.next_offer() => {},
        _ = on_b.next_offer() => {},
    }
    let (ra, rb) = (a.metric(ROUNDS).await, b.metric(ROUNDS).await);
    wait_metric(&a, ROUNDS, |n| n >= ra + 5.0).await;
    wait_metric(&b, ROUNDS, |n| n >= rb + 5.0).await;
    assert_eq!(offer_times(&a, &ids).await.len(), 3, "one more offer for the one place freed");
}

/// `rateLimitPerSecond` is one bucket for every dispatcher: two processes with tasks and
/// idle workers together offer no more than a second's burst plus the rate over time.
#[tokio::test]
async fn the_rate_limit_holds_across_dispatchers() {
    let Some((a, b)) = two_processes("the_rate_limit_holds_across_dispatchers", &[]).await else { return };
    const RATE: f64 = 2.0;
    configure(&a, json!({ "name": "slow", "rateLimitPerSecond": RATE })).await;
    let mut on_a = Worker::connect(&a, "w-a", "slow", 50).await;
    let mut on_b = Worker::connect(&b, "w-b", "slow", 50).await;
    let alice = a.token("alice", &["client"]);
    let mut ids = Vec::new();
    for n in 0..24 {
        let app = if n % 2 == 0 { &a } else { &b };
        ids.push(app.create_task(&alice, json!({ "queue": "slow", "kind": "k" })).await);
    }
    // Take offers for a while (each worker completes what it is offered).
    let mut taken = 0;
    while taken < 8 {
        let (worker, app, (id, lease)) = tokio::select! {
            offer = on_a.next_offer() => (&on_a, &a, offer),
            offer = on_b.next_offer() => (&on_b, &b, offer),
        };
        worker.run(app, &id, &lease).await;
        taken += 1;
    }
    let times = offer_times(&a, &ids).await;
    let first = times[0];
    // Any window of `w` seconds from the first offer holds at most a burst of RATE plus
    // RATE × w offers (each dispatcher spending alone would allow twice that). An offer's
    // time is taken before its transaction waits for the queue's row, so it may read up
    // to that wait early: 100 ms of slack.
    for (i, at) in times.iter().enumerate() {
        let window = (*at - first).num_milliseconds() as f64 / 1_000.0 + 0.1;
        let allowed = RATE + RATE * window;
        assert!((i + 1) as f64 <= allowed + 1e-9, "offer {} at {window:.3}s exceeds {allowed:.1}: {times:?}", i + 1);
    }
    let limited = a.metric("taskwire_dispatch_queue_limited_total{limit=\"rate\"}").await
        + b.metric("taskwire_dispatch_queue_limited_total{limit=\"rate\"}").await;
    assert!(limited >= 1.0, "the offer transactions held offers back: {limited}");
}
