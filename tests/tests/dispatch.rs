//! The dispatcher over real HTTP and WebSocket, driven by hand (one protocol step at a
//! time): offers, acceptance, completion, fencing, capacity, priority, pause.
//! `workers.rs` runs the same machinery with the reference worker under load and faults.

use serde_json::{Value, json};
use taskwire_tests::{
    TestApp,
    ws::{TRANSPORT_WS, WsClient},
};

const REGISTER: &str =
    "mutation($input: RegisterWorkerInput!) { registerWorker(input: $input) { id status activeTasks } }";
const ASSIGNMENTS: &str =
    "subscription { assignments { leaseToken leaseExpiresAt task { id queue priority status attempts } } }";
const ACCEPT: &str = "mutation($id: ID!, $lease: String!) { acceptTask(taskId: $id, leaseToken: $lease) { id status attempts leaseExpiresAt } }";
const COMPLETE: &str = "mutation($id: ID!, $lease: String!, $result: JSON) { completeTask(taskId: $id, leaseToken: $lease, result: $result) { id status result } }";
const FAIL: &str = "mutation($id: ID!, $lease: String!, $retryable: Boolean) { failTask(taskId: $id, leaseToken: $lease, error: \"boom\", retryable: $retryable) { id status attempts lastError runAt } }";
const RELEASE: &str =
    "mutation($id: ID!, $lease: String!) { releaseTask(taskId: $id, leaseToken: $lease) { id status attempts } }";
const TASK: &str = "query($id: ID!) { task(id: $id) { id status attempts result lastError worker { id } } }";

/// A worker driven step by step: registered, with its `assignments` subscription open.
struct ManualWorker {
    token: String,
    ws: WsClient,
}

impl ManualWorker {
    async fn start(app: &TestApp, id: &str, queues: &[&str], capacity: i32) -> ManualWorker {
        let token = app.token(id, &["worker"]);
        let input = json!({ "input": { "name": id, "queues": queues, "capacity": capacity } });
        app.gql(Some(&token), REGISTER, input).await.data();
        let mut ws = app.ws(TRANSPORT_WS).await;
        ws.init(json!({ "authorization": format!("Bearer {token}") })).await;
        ws.subscribe("a", ASSIGNMENTS, json!({})).await;
        ManualWorker { token, ws }
    }

    /// The next offer: `(task id, lease token, the assignment)`.
    async fn next_offer(&mut self) -> (String, String, Value) {
        let data = self.ws.next_data("a").await;
        let a = data["assignments"].clone();
        (a["task"]["id"].as_str().expect("id").to_owned(), a["leaseToken"].as_str().expect("token").to_owned(), a)
    }

    async fn call(&self, app: &TestApp, query: &str, vars: Value) -> taskwire_tests::GqlResponse {
        app.gql(Some(&self.token), query, vars).await
    }
}

/// Asserts that task `id` was never offered: its whole history is its creation. Polling
/// until it reads `QUEUED` would also pass after a wrong offer that lapsed.
async fn assert_never_offered(app: &TestApp, id: &str, why: &str) {
    let admin = app.token("ops", &["operator"]);
    let query = "query($id: ID!) { task(id: $id) { status events(last: 20) { status } } }";
    let task = app.gql(Some(&admin), query, json!({ "id": id })).await.data()["task"].clone();
    assert_eq!(task["status"], "QUEUED", "{why}");
    assert_eq!(task["events"], json!([{ "status": "QUEUED" }]), "{why}: never offered");
}

async fn wait_for_status(app: &TestApp, id: &str, status: &str) -> Value {
    let admin = app.token("ops", &["operator"]);
    for _ in 0..300 {
        let task = app.gql(Some(&admin), TASK, json!({ "id": id })).await.data()["task"].clone();
        if task["status"] == status {
            return task;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("task {id} never reached {status}");
}

#[tokio::test]
async fn a_task_flows_from_queued_to_succeeded_through_an_accepted_offer() {
    let app = TestApp::spawn().await;
    let mut worker = ManualWorker::start(&app, "w1", &["q"], 2).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k", "payload": { "n": 1 } })).await;

    let (offered, lease, assignment) = worker.next_offer().await;
    assert_eq!(offered, id);
    assert_eq!(assignment["task"]["status"], "ASSIGNED");
    assert!(assignment["leaseExpiresAt"].is_string());

    let accepted = worker.call(&app, ACCEPT, json!({ "id": id, "lease": lease })).await;
    assert_eq!(accepted.data()["acceptTask"]["status"], "RUNNING");
    assert_eq!(accepted.data()["acceptTask"]["attempts"], 1);
    let done = worker.call(&app, COMPLETE, json!({ "id": id, "lease": lease, "result": { "ok": true } })).await;
    assert_eq!(done.data()["completeTask"]["status"], "SUCCEEDED");
    assert_eq!(done.data()["completeTask"]["result"], json!({ "ok": true }));

    // The history tells the whole story, and the worker's slot is free again.
    let task = app
        .gql(
            Some(&alice),
            "query($id: ID!) { task(id: $id) { events { status workerId } worker { id activeTasks } } }",
            json!({ "id": id }),
        )
        .await;
    let statuses: Vec<&str> =
        task.data()["task"]["events"].as_array().expect("events").iter().filter_map(|e| e["status"].as_str()).collect();
    assert_eq!(statuses, ["QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED"]);
    assert_eq!(task.data()["task"]["worker"]["activeTasks"], 0);
}

/// A task queued by this process reaches this process's matcher at commit (the local
/// feed), not only through its Kafka announcement; that announcement, when it comes, finds
/// the task offered (or held) already, and the task is offered once.
#[tokio::test]
async fn a_task_queued_here_is_fed_to_this_matcher_at_commit_and_offered_once() {
    let app = TestApp::spawn().await;
    let mut worker = ManualWorker::start(&app, "w1", &["q"], 2).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;

    let (offered, _, _) = worker.next_offer().await;
    assert_eq!(offered, id);
    assert_eq!(app.metric("taskwire_dispatch_local_total{outcome=\"fed\"}").await, 1.0, "fed at commit");
    // The Kafka copy arrives later (on a real broker, once the dispatcher group has
    // formed): it is placed as stale (offered already) or a duplicate (still held).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let placed = app.metric("taskwire_dispatch_messages_total{outcome=\"stale\"}").await
            + app.metric("taskwire_dispatch_messages_total{outcome=\"duplicate\"}").await;
        if placed >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the Kafka announcement never came");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let task =
        app.gql(Some(&alice), "query($id: ID!) { task(id: $id) { events { status } } }", json!({ "id": id })).await;
    let statuses: Vec<&str> =
        task.data()["task"]["events"].as_array().expect("events").iter().filter_map(|e| e["status"].as_str()).collect();
    assert_eq!(statuses, ["QUEUED", "ASSIGNED"], "offered once");
}

/// An offer this process commits reaches the worker's `assignments` stream from the task
/// it just committed (held in L1), not from a query, and with the current lease.
#[tokio::test]
async fn an_offer_committed_here_reaches_the_worker_without_a_query() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let mut worker = ManualWorker::start(&app, "w1", &["q"], 2).await;
    // Let the stream make its first read (no offers yet) before the offer exists.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;

    let (offered, lease, _) = worker.next_offer().await;
    assert_eq!(offered, id);
    const COMMIT: &str = "taskwire_assignments_delivered_total{source=\"commit\"}";
    const DATABASE: &str = "taskwire_assignments_delivered_total{source=\"database\"}";
    assert_eq!((app.metric(COMMIT).await, app.metric(DATABASE).await), (1.0, 0.0));
    let accepted = worker.call(&app, ACCEPT, json!({ "id": id, "lease": lease })).await;
    assert_eq!(accepted.data()["acceptTask"]["status"], "RUNNING", "the lease delivered is the current one");
}

#[tokio::test]
async fn worker_calls_need_the_current_lease() {
    let app = TestApp::spawn().await;
    let mut worker = ManualWorker::start(&app, "w1", &["q"], 1).await;
    let other = app.token("w2", &["worker"]);
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let (_, lease, _) = worker.next_offer().await;

    let wrong_token = worker.call(&app, ACCEPT, json!({ "id": id, "lease": "not-the-token" })).await;
    assert_eq!(wrong_token.code(), "LEASE_LOST");
    let wrong_worker = app.gql(Some(&other), ACCEPT, json!({ "id": id, "lease": lease })).await;
    assert_eq!(wrong_worker.code(), "LEASE_LOST", "another worker cannot use a stolen token");
    let unknown =
        worker.call(&app, ACCEPT, json!({ "id": "0190b1b2-0000-7000-8000-000000000000", "lease": lease })).await;
    assert_eq!(unknown.code(), "LEASE_LOST", "a missing task answers like one held by someone else");
    let client = app.gql(Some(&alice), ACCEPT, json!({ "id": id, "lease": lease })).await;
    assert_eq!(client.code(), "FORBIDDEN", "only workers accept tasks");

    worker.call(&app, ACCEPT, json!({ "id": id, "lease": lease })).await.data();
    // Cancel wins over the worker: its next call is LEASE_LOST.
    app.gql(Some(&alice), "mutation($id: ID!) { cancelTask(id: $id) { status } }", json!({ "id": id })).await.data();
    let late = worker.call(&app, COMPLETE, json!({ "id": id, "lease": lease })).await;
    assert_eq!(late.code(), "LEASE_LOST");
    let w = app.gql(Some(&worker.token), "query { worker(id: \"w1\") { activeTasks } }", json!({})).await;
    assert_eq!(w.data()["worker"]["activeTasks"], 0, "cancelling freed the slot");
}

#[tokio::test]
async fn a_worker_never_holds_more_than_its_capacity_and_gets_higher_priorities_first() {
    let app = TestApp::spawn().await;
    let admin = app.token("root", &["admin"]);
    // Paused while the tasks arrive, so the order of offers is the queue's, not arrival's.
    app.gql(Some(&admin), "mutation { pauseQueue(name: \"q\") { paused } }", json!({})).await.data();
    let mut worker = ManualWorker::start(&app, "w1", &["q"], 2).await;
    let alice = app.token("alice", &["client"]);
    let low = app.create_task(&alice, json!({ "queue": "q", "kind": "k", "priority": 1 })).await;
    let high = app.create_task(&alice, json!({ "queue": "q", "kind": "k", "priority": 9 })).await;
    let mid = app.create_task(&alice, json!({ "queue": "q", "kind": "k", "priority": 5 })).await;
    // All three announced and held by the matcher, none offered.
    app.wait_for_metric("taskwire_dispatch_ready", |n| n >= 3.0).await;
    let w = app.gql(Some(&worker.token), "query { worker(id: \"w1\") { activeTasks } }", json!({})).await;
    assert_eq!(w.data()["worker"]["activeTasks"], 0, "a paused queue offers nothing");

    app.gql(Some(&admin), "mutation { resumeQueue(name: \"q\") { paused } }", json!({})).await.data();
    let (first, lease_first, _) = worker.next_offer().await;
    let (second, _, _) = worker.next_offer().await;
    assert_eq!((first.as_str(), second.as_str()), (high.as_str(), mid.as_str()), "priority order");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_never_offered(&app, &low, "capacity 2: the third waits").await;

    let released = worker.call(&app, RELEASE, json!({ "id": first, "lease": lease_first })).await;
    assert_eq!(released.data()["releaseTask"]["status"], "QUEUED");
    // The released task is offered again (the low one may take the freed slot first:
    // the release reaches the matcher through Kafka, the freed slot at once).
    let mut seen = vec![];
    loop {
        let (offered, lease, _) = worker.next_offer().await;
        seen.push(offered.clone());
        if offered == high {
            break;
        }
        assert_eq!(offered, low, "only the released or the waiting task can be offered");
        worker.call(&app, ACCEPT, json!({ "id": offered, "lease": lease })).await.data();
        worker.call(&app, COMPLETE, json!({ "id": offered, "lease": lease })).await.data();
        assert!(seen.len() <= 2, "offers: {seen:?}");
    }
}

#[tokio::test]
async fn failures_back_off_and_end_dead_after_max_attempts_then_requeue_revives_them() {
    let app = TestApp::spawn().await;
    let admin = app.token("root", &["admin"]);
    let configure = "mutation($input: ConfigureQueueInput!) { configureQueue(input: $input) { name } }";
    let settings = json!({ "input": { "name": "q", "backoffBaseMs": 50, "backoffMaxMs": 100 } });
    app.gql(Some(&admin), configure, settings).await.data();
    let mut worker = ManualWorker::start(&app, "w1", &["q"], 1).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k", "maxAttempts": 2 })).await;

    for attempt in 1..=2 {
        let (offered, lease, _) = worker.next_offer().await;
        assert_eq!(offered, id);
        worker.call(&app, ACCEPT, json!({ "id": id, "lease": lease })).await.data();
        let failed = worker.call(&app, FAIL, json!({ "id": id, "lease": lease, "retryable": true })).await;
        let expected = if attempt < 2 { "SCHEDULED" } else { "DEAD" };
        assert_eq!(failed.data()["failTask"]["status"], expected, "attempt {attempt}");
        assert_eq!(failed.data()["failTask"]["attempts"], attempt);
    }
    let dead = wait_for_status(&app, &id, "DEAD").await;
    assert_eq!(dead["lastError"], "boom");

    let requeued = app.gql(Some(&admin), "mutation { requeueDeadTasks(queue: \"q\") }", json!({})).await;
    assert_eq!(requeued.data()["requeueDeadTasks"], 1);
    let (offered, lease, _) = worker.next_offer().await;
    assert_eq!(offered, id, "a requeued task is dispatched again");
    worker.call(&app, ACCEPT, json!({ "id": id, "lease": lease })).await.data();
    let fatal = worker.call(&app, FAIL, json!({ "id": id, "lease": lease, "retryable": false })).await;
    assert_eq!(fatal.data()["failTask"]["status"], "DEAD", "a non-retryable failure is final at once");
}

#[tokio::test]
async fn an_offer_not_accepted_in_time_goes_to_another_worker_without_counting_an_attempt() {
    let app = TestApp::spawn_with(&[("TASKWIRE_OFFER_TIMEOUT_MS", "300"), ("TASKWIRE_REAPER_INTERVAL_MS", "50")]).await;
    let mut sleepy = ManualWorker::start(&app, "w1", &["q"], 1).await;
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    let (offered, stale_lease, _) = sleepy.next_offer().await;
    assert_eq!(offered, id, "the only worker gets the offer");

    let mut awake = ManualWorker::start(&app, "w2", &["q"], 1).await;
    let (again, lease, _) = awake.next_offer().await;
    assert_eq!(again, id, "after the offer lapsed, the other worker gets it");
    let late = sleepy.call(&app, ACCEPT, json!({ "id": id, "lease": stale_lease })).await;
    assert_eq!(late.code(), "LEASE_LOST", "the lapsed offer cannot be accepted");
    let accepted = awake.call(&app, ACCEPT, json!({ "id": id, "lease": lease })).await;
    assert_eq!(accepted.data()["acceptTask"]["attempts"], 1, "a lapsed offer is not an attempt");
    let history = app
        .gql(
            Some(&alice),
            "query($id: ID!) { task(id: $id) { events { status workerId message } } }",
            json!({ "id": id }),
        )
        .await;
    let events = history.data()["task"]["events"].as_array().expect("events").clone();
    let lapsed = events.iter().find(|e| e["message"] == "offer expired").expect("the lapse is in the history");
    assert_eq!(lapsed["workerId"], "w1");
}

#[tokio::test]
async fn max_concurrency_caps_a_queue_across_workers() {
    let app = TestApp::spawn().await;
    let admin = app.token("root", &["admin"]);
    let configure = "mutation($input: ConfigureQueueInput!) { configureQueue(input: $input) { maxConcurrency } }";
    app.gql(Some(&admin), configure, json!({ "input": { "name": "q", "maxConcurrency": 1 } })).await.data();
    let mut one = ManualWorker::start(&app, "w1", &["q"], 5).await;
    let mut two = ManualWorker::start(&app, "w2", &["q"], 5).await;
    let alice = app.token("alice", &["client"]);
    // Paused while both announcements arrive: on a real broker they travel on different
    // partitions, and the matcher must hold both before it picks by priority.
    app.gql(Some(&admin), "mutation { pauseQueue(name: \"q\") { paused } }", json!({})).await.data();
    let first = app.create_task(&alice, json!({ "queue": "q", "kind": "k", "priority": 9 })).await;
    let second = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    app.wait_for_metric("taskwire_dispatch_ready", |n| n >= 2.0).await;
    app.gql(Some(&admin), "mutation { resumeQueue(name: \"q\") { paused } }", json!({})).await.data();

    let (offered, lease, _) = one.next_offer().await;
    assert_eq!(offered, first);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_never_offered(&app, &second, "one at a time in this queue").await;
    one.call(&app, ACCEPT, json!({ "id": first, "lease": lease })).await.data();
    one.call(&app, COMPLETE, json!({ "id": first, "lease": lease })).await.data();
    // The slot is free: the second task goes to the less loaded worker... or the same
    // one (both are idle again); either way it is offered now.
    let (next, _, _) = tokio::select! {
        offer = one.next_offer() => offer,
        offer = two.next_offer() => offer,
    };
    assert_eq!(next, second);
}

#[tokio::test]
async fn a_rate_limited_queue_offers_no_faster_than_its_limit() {
    let app = TestApp::spawn().await;
    let admin = app.token("root", &["admin"]);
    let configure = "mutation($input: ConfigureQueueInput!) { configureQueue(input: $input) { rateLimitPerSecond } }";
    app.gql(Some(&admin), configure, json!({ "input": { "name": "q", "rateLimitPerSecond": 4.0 } })).await.data();
    let mut worker = ManualWorker::start(&app, "w1", &["q"], 50).await;
    let alice = app.token("alice", &["client"]);
    app.create_tasks(&alice, "q", 12).await;

    let started = std::time::Instant::now();
    for _ in 0..12 {
        worker.next_offer().await;
    }
    // A burst of 4, then 4 per second: the 12th offer cannot come before 2 s.
    assert!(started.elapsed() >= std::time::Duration::from_millis(1_800), "offered too fast: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_scheduled_task_is_queued_at_its_run_at_and_not_before() {
    let app = TestApp::spawn().await;
    let mut worker = ManualWorker::start(&app, "w1", &["q"], 1).await;
    let alice = app.token("alice", &["client"]);
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let id = app
        .create_task(
            &alice,
            json!({ "queue": "q", "kind": "k", "runAt": run_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true) }),
        )
        .await;
    let (offered, _, _) = worker.next_offer().await;
    assert_eq!(offered, id);
    let history =
        app.gql(Some(&alice), "query($id: ID!) { task(id: $id) { events { status at } } }", json!({ "id": id })).await;
    let events = history.data()["task"]["events"].as_array().expect("events").clone();
    assert_eq!(events[0]["status"], "SCHEDULED");
    assert_eq!(events[1]["status"], "QUEUED");
    let queued_at: chrono::DateTime<chrono::Utc> = events[1]["at"].as_str().expect("at").parse().expect("a time");
    let run_at_ms = chrono::DateTime::from_timestamp_millis(run_at.timestamp_millis()).expect("valid");
    assert!(queued_at >= run_at_ms, "queued at {queued_at}, before its runAt {run_at_ms}");
    // The scheduler promises 100 ms; this bound only catches a scheduler that is not
    // running on time at all (timing is measured in docs/BENCHMARKS.md, not here).
    assert!(queued_at - run_at_ms < chrono::Duration::seconds(2), "queued at {queued_at}, long after {run_at_ms}");
}

#[tokio::test]
async fn a_matcher_with_a_tiny_ready_set_still_dispatches_everything() {
    // Two tasks in memory at most: the rest wait in Kafka (uncommitted) until offers
    // make room.
    let app = TestApp::spawn_with(&[("TASKWIRE_DISPATCH_READY_CAPACITY", "2")]).await;
    let mut worker = ManualWorker::start(&app, "w1", &["q"], 100).await;
    let alice = app.token("alice", &["client"]);
    app.create_tasks(&alice, "q", 30).await;
    let mut offered = std::collections::HashSet::new();
    while offered.len() < 30 {
        let (id, _, _) = worker.next_offer().await;
        assert!(offered.insert(id), "each task is offered once");
    }
    assert!(app.metric("taskwire_dispatch_ready").await <= 2.0);
}

/// Resuming with `afterSeq` while the task keeps changing: subscribers that join at
/// different points of a run of live events (a worker taking the task and giving it back
/// again and again, then completing it) each get exactly the events after their
/// `afterSeq`: in order, none missing, none twice, up to the end.
#[tokio::test]
async fn resuming_with_after_seq_while_events_keep_coming_misses_and_repeats_nothing() {
    const TASK_UPDATED: &str =
        "subscription($id: ID!, $afterSeq: Int) { taskUpdated(id: $id, afterSeq: $afterSeq) { seq status } }";
    const LAST_SEQ: &str = "query($id: ID!) { task(id: $id) { events(last: 1) { seq } } }";
    const CYCLES: usize = 12;
    let app = TestApp::spawn().await;
    let alice = app.token("alice", &["client"]);
    let mut worker = ManualWorker::start(&app, "w-resume", &["resume"], 1).await;
    let id = app.create_task(&alice, json!({ "queue": "resume", "kind": "k", "maxAttempts": 50 })).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let joins = std::sync::atomic::AtomicUsize::new(0);

    let work = async {
        for cycle in 0..=CYCLES {
            // Every fourth cycle waits for one more subscriber to have joined, so that
            // subscribers join all along the run however fast the server answers.
            if cycle > 0 && cycle % 4 == 0 {
                let wanted = cycle / 4;
                let waited = std::time::Instant::now();
                while joins.load(std::sync::atomic::Ordering::Acquire) < wanted {
                    assert!(waited.elapsed() < std::time::Duration::from_secs(20), "subscriber {wanted} never joined");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
            let (offered, lease, _) = worker.next_offer().await;
            assert_eq!(offered, id);
            worker.call(&app, ACCEPT, json!({ "id": id, "lease": lease })).await.data();
            let last = if cycle == CYCLES { COMPLETE } else { RELEASE };
            worker.call(&app, last, json!({ "id": id, "lease": lease })).await.data();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    };
    let join = async {
        let mut joined: Vec<(i64, WsClient)> = Vec::new();
        let mut step = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            let read = app.gql(Some(&alice), LAST_SEQ, json!({ "id": id })).await;
            let last = read.data()["task"]["events"][0]["seq"].as_i64().expect("a seq");
            // At the newest event, and one or two behind it, by turns.
            let after = (last - (step % 3)).max(0);
            step += 1;
            let mut ws = app.ws_connected(TRANSPORT_WS, &alice).await;
            ws.subscribe("t", TASK_UPDATED, json!({ "id": id, "afterSeq": after })).await;
            joined.push((after, ws));
            joins.fetch_add(1, std::sync::atomic::Ordering::Release);
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        joined
    };
    let ((), joined) = tokio::join!(work, join);
    assert!(joined.len() >= 3, "subscribers joined while the task changed ({})", joined.len());

    let final_seq = 1 + 3 * (CYCLES as i64 + 1);
    for (after, mut ws) in joined {
        let mut expected = after + 1;
        while expected <= final_seq {
            let event = ws.next_data("t").await["taskUpdated"].clone();
            assert_eq!(event["seq"], expected, "joined after {after}: the next event in order, no gap, no repeat");
            expected += 1;
        }
        assert_eq!(expected - 1, final_seq);
    }
}
