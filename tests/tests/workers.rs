//! The dispatcher with reference workers (`taskwire_worker`) that crash, hang,
//! drop off the network and fail: every task still ends, nothing runs on two workers
//! at once, and attempts stay within their budget.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::FutureExt;
use rand::Rng;
use serde_json::{Value, json};
use taskwire_tests::TestApp;
use taskwire_worker::{Assignment, Handler, Outcome, Worker, WorkerConfig};

const CONFIGURE: &str = "mutation($input: ConfigureQueueInput!) { configureQueue(input: $input) { name } }";

fn config(app: &TestApp, id: &str, capacity: u32) -> WorkerConfig {
    WorkerConfig {
        url: app.address.clone(),
        token: app.token(id, &["worker"]),
        name: id.to_owned(),
        queues: vec!["q".to_owned()],
        capacity,
        heartbeat_every: Duration::from_millis(200),
        auto_accept: false,
    }
}

fn handler(f: impl Fn() -> Outcome + Send + Sync + 'static) -> Handler {
    Arc::new(move |_| {
        let outcome = f();
        async move { outcome }.boxed()
    })
}

/// Completes each task after `work`.
fn completing(work: Duration) -> Handler {
    Arc::new(move |_| {
        async move {
            tokio::time::sleep(work).await;
            Outcome::Complete(Some(json!({ "ok": true })))
        }
        .boxed()
    })
}

/// A short lease and a fast backoff, so recovery happens within a test.
async fn fast_queue(app: &TestApp, max_attempts: i64) {
    let admin = app.token("root", &["admin"]);
    let input = json!({ "input": { "name": "q", "leaseSeconds": 1, "backoffBaseMs": 20, "backoffMaxMs": 100, "maxAttempts": max_attempts } });
    app.gql(Some(&admin), CONFIGURE, input).await.data();
}

/// Waits until the server holds `n` open subscriptions (here: the workers' `assignments`
/// streams). `Worker::start` returns once it has sent its subscribe, before the server
/// counts the stream as open; until then the dispatcher offers to a worker registered
/// with `autoAccept` plainly (see `OpenStreams`), so a test about started offers creates
/// its tasks only after this.
async fn wait_for_streams(app: &TestApp, n: usize) {
    let open = app.wait_for_metric("taskwire_subscriptions", |open| open >= n as f64).await;
    assert!(open >= n as f64, "{open} of the workers' {n} streams open");
}

/// Every task with its full history, via the API (pages of 10: with up to 100 events
/// each, a page costs about 5,000, within the default complexity limit).
async fn all_tasks(app: &TestApp) -> Vec<Value> {
    let ops = app.token("ops", &["operator"]);
    let query = "query($after: String) { tasks(first: 10, after: $after) { pageInfo { hasNextPage endCursor } edges { node { id status attempts maxAttempts events(last: 100) { seq status previousStatus workerId message } } } } }";
    let mut out = vec![];
    let mut after = Value::Null;
    loop {
        let page = app.gql(Some(&ops), query, json!({ "after": after })).await;
        let tasks = &page.data()["tasks"];
        out.extend(tasks["edges"].as_array().expect("edges").iter().map(|e| e["node"].clone()));
        if tasks["pageInfo"]["hasNextPage"] != true {
            return out;
        }
        after = tasks["pageInfo"]["endCursor"].clone();
    }
}

async fn wait_until_all_end(app: &TestApp, expected: usize, timeout: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let tasks = all_tasks(app).await;
        let ended = tasks.iter().filter(|t| matches!(t["status"].as_str(), Some("SUCCEEDED" | "DEAD"))).count();
        if tasks.len() == expected && ended == expected {
            return tasks;
        }
        if tokio::time::Instant::now() > deadline {
            let stuck: Vec<String> = tasks
                .iter()
                .filter(|t| !matches!(t["status"].as_str(), Some("SUCCEEDED" | "DEAD")))
                .take(5)
                .map(|t| format!("{} {}", t["id"], t["status"]))
                .collect();
            panic!("{ended} of {expected} tasks ended; still open: {stuck:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Replays a task's history and checks its leases never overlap: a task is held by at
/// most one worker between an `ASSIGNED` event and the event that ends the lease, and
/// every event in between names that worker.
fn assert_one_lease_at_a_time(task: &Value) {
    let events = task["events"].as_array().expect("events");
    assert!(events.len() < 100, "history truncated for {}", task["id"]);
    let mut holder: Option<&str> = None;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], i + 1, "gapless history of {}", task["id"]);
        let status = event["status"].as_str().expect("status");
        let worker = event["workerId"].as_str();
        match status {
            "ASSIGNED" => {
                assert!(holder.is_none(), "{}: offered to {worker:?} while {holder:?} held it", task["id"]);
                holder = worker;
                assert!(holder.is_some(), "an offer names its worker");
            }
            // An offer to a worker that takes its offers as they come starts the task.
            "RUNNING" if event["previousStatus"] == "QUEUED" => {
                assert!(holder.is_none(), "{}: started for {worker:?} while {holder:?} held it", task["id"]);
                holder = worker;
                assert!(holder.is_some(), "a started offer names its worker");
            }
            "RUNNING" => assert_eq!(worker, holder, "{}: run by the offer's holder", task["id"]),
            _ => {
                if holder.is_some() {
                    assert_eq!(worker, holder, "{}: the lease ends for its holder", task["id"]);
                }
                holder = None;
            }
        }
    }
}

/// A worker registered with `autoAccept` runs its tasks without accepting them: each
/// offer arrives started, and the history goes `QUEUED` → `RUNNING` → `SUCCEEDED`, one
/// attempt each.
#[tokio::test]
async fn a_worker_that_takes_offers_as_they_come_never_accepts() {
    let app = TestApp::spawn().await;
    fast_queue(&app, 3).await;
    let taking = WorkerConfig { auto_accept: true, ..config(&app, "taker", 4) };
    let worker = Worker::start(taking, completing(Duration::ZERO)).await.expect("start");
    wait_for_streams(&app, 1).await;
    let alice = app.token("alice", &["client"]);
    for n in 0..8 {
        app.create_task(&alice, json!({ "queue": "q", "kind": "k", "payload": { "n": n } })).await;
    }
    let tasks = wait_until_all_end(&app, 8, Duration::from_secs(30)).await;
    for task in &tasks {
        let statuses: Vec<&str> =
            task["events"].as_array().expect("events").iter().filter_map(|e| e["status"].as_str()).collect();
        assert_eq!(statuses, ["QUEUED", "RUNNING", "SUCCEEDED"], "{}", task["id"]);
        assert_eq!((task["status"].as_str(), task["attempts"].as_i64()), (Some("SUCCEEDED"), Some(1)));
        assert_one_lease_at_a_time(task);
    }
    assert!(worker.log().iter().all(|r| r.accepted && r.accept.is_none()), "no acceptTask was sent");
    let ops = app.token("ops", &["operator"]);
    let workers = app.gql(Some(&ops), "{ workers { id autoAccept } }", json!({})).await;
    assert_eq!(workers.data()["workers"][0]["autoAccept"], true);
    worker.stop().await;
}

/// A worker process that restarts (same worker id, a new stream) is not handed the tasks
/// its previous life was running: it would run them again under the same token and
/// attempt. Their leases lapse, counting the attempt, and they run again from the queue.
#[tokio::test]
async fn a_restarted_worker_is_not_handed_its_earlier_runs() {
    let app = TestApp::spawn().await;
    fast_queue(&app, 5).await;
    let taking = || WorkerConfig { auto_accept: true, ..config(&app, "phoenix", 1) };
    let first = Worker::start(taking(), completing(Duration::from_secs(3600))).await.expect("start");
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    assert!(first.wait_until(Duration::from_secs(15), |s| s.accepted == 1).await, "the first life runs it");
    first.kill();
    let second = Worker::start(taking(), completing(Duration::ZERO)).await.expect("start");
    let tasks = wait_until_all_end(&app, 1, Duration::from_secs(30)).await;
    let task = &tasks[0];
    assert_eq!((&task["id"], task["status"].as_str()), (&json!(id), Some("SUCCEEDED")));
    assert_eq!(task["attempts"], 2, "the earlier run's lease lapsed, counting its attempt");
    let messages: Vec<&str> =
        task["events"].as_array().expect("events").iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(messages.contains(&"lease expired"), "{messages:?}");
    assert_one_lease_at_a_time(task);
    second.stop().await;
}

/// An offer that started the task but that the worker does not take (its filter refuses
/// it) goes back to the queue at once, its attempt counted, and another worker runs it.
#[tokio::test]
async fn a_started_offer_the_worker_refuses_is_handed_back() {
    let app = TestApp::spawn().await;
    fast_queue(&app, 3).await;
    let alice = app.token("alice", &["client"]);
    // Both idle, the picky one first in id order: it is offered the task first, hands it
    // back, and the dispatcher gives it to the other, avoiding the worker that let go.
    let picky = WorkerConfig { auto_accept: true, ..config(&app, "a-picky", 4) };
    let refuses = Worker::start_with_filter(picky, Arc::new(|_: &Assignment| false), completing(Duration::ZERO))
        .await
        .expect("start");
    let other = Worker::start(config(&app, "z-other", 1), completing(Duration::ZERO)).await.expect("start");
    wait_for_streams(&app, 2).await;
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "refused" })).await;
    let tasks = wait_until_all_end(&app, 1, Duration::from_secs(30)).await;
    let task = tasks.iter().find(|t| t["id"] == id).expect("the refused task");
    let events: Vec<(&str, &str)> = task["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| (e["status"].as_str().unwrap_or_default(), e["workerId"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        events,
        [
            ("QUEUED", ""),
            ("RUNNING", "a-picky"),
            ("QUEUED", "a-picky"),
            ("ASSIGNED", "z-other"),
            ("RUNNING", "z-other"),
            ("SUCCEEDED", "z-other")
        ]
    );
    assert_eq!(task["attempts"], 2, "the handed-back run kept its attempt");
    assert_one_lease_at_a_time(task);
    assert_eq!(refuses.stats().released, 1);
    refuses.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn a_crashed_workers_task_is_offered_again_after_its_lease() {
    let app = TestApp::spawn().await;
    fast_queue(&app, 5).await;
    let hanging = Worker::start(config(&app, "crashy", 1), completing(Duration::from_secs(3600))).await.expect("start");
    let alice = app.token("alice", &["client"]);
    let id = app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    assert!(hanging.wait_until(Duration::from_secs(15), |s| s.accepted == 1).await, "the first worker runs it");
    hanging.kill();

    let healthy = Worker::start(config(&app, "healthy", 1), completing(Duration::ZERO)).await.expect("start");
    let tasks = wait_until_all_end(&app, 1, Duration::from_secs(30)).await;
    let task = &tasks[0];
    assert_eq!(task["id"], id);
    assert_eq!(task["status"], "SUCCEEDED");
    assert_eq!(task["attempts"], 2, "the lost run counted as an attempt");
    let messages: Vec<&str> =
        task["events"].as_array().expect("events").iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(messages.contains(&"lease expired"), "{messages:?}");
    assert_one_lease_at_a_time(task);
    healthy.stop().await;
}

#[tokio::test]
async fn a_hung_workers_late_completion_is_rejected() {
    let app = TestApp::spawn().await;
    fast_queue(&app, 5).await;
    // Hangs (no heartbeats) for 2.5 s, past its 1 s lease, then tries to complete.
    let hung = Worker::start(config(&app, "hung", 1), handler(|| Outcome::Stall(Duration::from_millis(2_500))))
        .await
        .expect("start");
    let alice = app.token("alice", &["client"]);
    app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    assert!(hung.wait_until(Duration::from_secs(15), |s| s.accepted == 1).await);
    let other = Worker::start(config(&app, "other", 1), completing(Duration::ZERO)).await.expect("start");
    let tasks = wait_until_all_end(&app, 1, Duration::from_secs(30)).await;
    assert_eq!(tasks[0]["status"], "SUCCEEDED");
    assert!(hung.wait_until(Duration::from_secs(15), |s| s.lease_lost >= 1).await, "the late completion is LEASE_LOST");
    let stopped = hung.stop().await;
    let late = stopped.log.iter().find(|r| r.accepted).expect("the hung run is logged");
    assert!(matches!(&late.answer, Some(Err(e)) if e.code() == "LEASE_LOST"), "{:?}", late.answer);
    assert_one_lease_at_a_time(&tasks[0]);
    other.stop().await;
}

#[tokio::test]
async fn a_worker_that_drops_off_goes_offline_and_its_tasks_are_reclaimed() {
    let app = TestApp::spawn_with(&[("TASKWIRE_WORKER_TTL_MS", "1000"), ("TASKWIRE_REAPER_INTERVAL_MS", "100")]).await;
    let admin = app.token("root", &["admin"]);
    // A long lease: only the worker going offline can free the task.
    let input = json!({ "input": { "name": "q", "leaseSeconds": 600, "backoffBaseMs": 20, "backoffMaxMs": 100 } });
    app.gql(Some(&admin), CONFIGURE, input).await.data();
    let flaky = Worker::start(config(&app, "flaky", 1), completing(Duration::from_secs(3))).await.expect("start");
    let alice = app.token("alice", &["client"]);
    app.create_task(&alice, json!({ "queue": "q", "kind": "k" })).await;
    assert!(flaky.wait_until(Duration::from_secs(15), |s| s.accepted == 1).await);

    let partition = flaky.disconnect_for(Duration::from_secs(4));
    let observe = async {
        let query = "query { worker(id: \"flaky\") { status } }";
        for _ in 0..100 {
            if app.gql(Some(&admin), query, json!({})).await.data()["worker"]["status"] == "OFFLINE" {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    let (_, went_offline) = tokio::join!(partition, observe);
    assert!(went_offline, "no subscription and no heartbeat past the TTL: OFFLINE");

    let backup = Worker::start(config(&app, "backup", 1), completing(Duration::ZERO)).await.expect("start");
    let tasks = wait_until_all_end(&app, 1, Duration::from_secs(30)).await;
    assert_eq!(tasks[0]["status"], "SUCCEEDED");
    let messages: Vec<&str> =
        tasks[0]["events"].as_array().expect("events").iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(messages.contains(&"worker offline"), "{messages:?}");
    assert_one_lease_at_a_time(&tasks[0]);
    flaky.stop().await;
    backup.stop().await;
}

/// A thousand tasks, five workers (two of them taking their offers as they come) that
/// fail, hang past their lease and drop off the network at random: every task ends, attempts stay within `maxAttempts`, no task is
/// ever leased to two workers at once, and no task is completed twice.
#[tokio::test]
async fn a_thousand_tasks_survive_workers_that_fail_hang_and_disconnect() {
    let app = TestApp::spawn_with(&[
        ("TASKWIRE_WORKER_TTL_MS", "1500"),
        ("TASKWIRE_OFFER_TIMEOUT_MS", "1000"),
        ("TASKWIRE_REAPER_INTERVAL_MS", "100"),
    ])
    .await;
    fast_queue(&app, 3).await;
    let chaos: Handler = Arc::new(|_| {
        let roll = rand::rng().random_range(0..100);
        let work = Duration::from_millis(rand::rng().random_range(1..20));
        async move {
            tokio::time::sleep(work).await;
            match roll {
                0..10 => Outcome::Fail { error: "random failure".into(), retryable: true },
                10..12 => Outcome::Fail { error: "fatal".into(), retryable: false },
                12..14 => Outcome::Stall(Duration::from_millis(1_500)),
                14..16 => Outcome::Release,
                _ => Outcome::Complete(None),
            }
        }
        .boxed()
    });
    let mut workers = vec![];
    for i in 0..5 {
        let config = WorkerConfig { auto_accept: i >= 3, ..config(&app, &format!("w{i}"), 8) };
        workers.push(Worker::start(config, chaos.clone()).await.expect("start"));
    }
    let alice = app.token("alice", &["client"]);
    let create = "mutation($inputs: [CreateTaskInput!]!) { createTasks(inputs: $inputs) { created } }";
    for batch in 0..4 {
        let inputs: Vec<Value> =
            (0..250).map(|i| json!({ "queue": "q", "kind": format!("k{batch}-{i}"), "priority": (i % 10) })).collect();
        app.gql(Some(&alice), create, json!({ "inputs": inputs })).await.data();
    }
    // Network partitions while the work runs.
    let workers = Arc::new(workers);
    let partitions = {
        let workers = workers.clone();
        tokio::spawn(async move {
            for round in 0..3 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                workers[round % workers.len()].disconnect_for(Duration::from_secs(2)).await;
            }
        })
    };

    let tasks = wait_until_all_end(&app, 1000, Duration::from_secs(240)).await;
    partitions.await.expect("partitions ran");
    let mut completions: HashMap<String, usize> = HashMap::new();
    for worker in workers.iter() {
        for record in worker.log() {
            if record.outcome == Some(Outcome::Complete(None)) && record.answer == Some(Ok(())) {
                *completions.entry(record.task_id.clone()).or_default() += 1;
            }
        }
    }
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for task in &tasks {
        let id = task["id"].as_str().expect("id");
        *by_status.entry(task["status"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        assert!(task["attempts"].as_i64() <= task["maxAttempts"].as_i64(), "{id}: attempts within the budget");
        assert_one_lease_at_a_time(task);
        let completed = completions.get(id).copied().unwrap_or(0);
        assert!(completed <= 1, "{id} completed {completed} times");
        if task["status"] == "SUCCEEDED" {
            assert_eq!(completed, 1, "{id}: SUCCEEDED means one accepted completion");
        }
    }
    assert!(by_status.get("SUCCEEDED").copied().unwrap_or(0) > 500, "{by_status:?}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("taskwire_dispatch_offers_total"), "the dispatcher reports its offers");
    assert!(app.metric("taskwire_dispatch_rounds_total").await >= 1.0, "and the rounds that planned them");
    if let Ok(workers) = Arc::try_unwrap(workers) {
        for worker in workers {
            worker.stop().await;
        }
    }
}
