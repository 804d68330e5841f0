//! Heartbeats that name their tasks: `heartbeat(tasks)` extends the leases of the named
//! tasks the caller holds and no others, so a task the worker forgot lapses and is reaped
//! while the worker stays `ONLINE`; `renewLeases` says which named tasks are still held;
//! the legacy `heartbeat` without `tasks` extends every running lease.

use std::time::Duration;

use serde_json::{Value, json};
use taskwire_tests::{
    TestApp,
    ws::{TRANSPORT_WS, WsClient},
};

const REGISTER: &str = "mutation($input: RegisterWorkerInput!) { registerWorker(input: $input) { id } }";
const ASSIGNMENTS: &str = "subscription { assignments { leaseToken task { id } } }";
const ACCEPT: &str =
    "mutation($id: ID!, $lease: String!) { acceptTask(taskId: $id, leaseToken: $lease) { status attempts } }";
const HEARTBEAT: &str = "mutation($tasks: [ID!]) { heartbeat(tasks: $tasks) { id status } }";
const LEGACY_HEARTBEAT: &str = "mutation { heartbeat { id status } }";
const RENEW: &str = "mutation($tasks: [ID!]!) { renewLeases(tasks: $tasks) { taskId outcome leaseExpiresAt } }";
const TASK: &str =
    "query($id: ID!) { task(id: $id) { status attempts lastError leaseExpiresAt worker { id } events { status } } }";

/// A registered worker with its `assignments` subscription open (the server offers to
/// subscribed workers), holding `RUNNING` tasks it accepted through the protocol.
struct Holder {
    token: String,
    _ws: WsClient,
    tasks: Vec<String>,
}

impl Holder {
    /// Worker `id` of capacity `inputs.len()`, serving their queues, holding one task
    /// created from each input.
    async fn start(app: &TestApp, id: &str, inputs: &[Value]) -> Holder {
        let token = app.token(id, &["worker"]);
        let queues: Vec<&Value> = inputs.iter().map(|input| &input["queue"]).collect();
        let input = json!({ "input": { "name": id, "queues": queues, "capacity": inputs.len() } });
        app.gql(Some(&token), REGISTER, input).await.data();
        let mut ws = app.ws(TRANSPORT_WS).await;
        ws.init(json!({ "authorization": format!("Bearer {token}") })).await;
        ws.subscribe("a", ASSIGNMENTS, json!({})).await;
        let alice = app.token("alice", &["client"]);
        let mut tasks = Vec::new();
        for input in inputs {
            let id = app.create_task(&alice, input.clone()).await;
            let offer = ws.next_data("a").await;
            assert_eq!(offer["assignments"]["task"]["id"], id.as_str(), "the only worker with a free slot");
            let lease = offer["assignments"]["leaseToken"].clone();
            let accepted = app.gql(Some(&token), ACCEPT, json!({ "id": id, "lease": lease })).await;
            assert_eq!(accepted.data()["acceptTask"]["status"], "RUNNING");
            tasks.push(id);
        }
        Holder { token, _ws: ws, tasks }
    }

    async fn heartbeat(&self, app: &TestApp, tasks: &[&str]) -> Value {
        app.gql(Some(&self.token), HEARTBEAT, json!({ "tasks": tasks })).await.data()["heartbeat"].clone()
    }

    /// `heartbeat(tasks: null)`.
    async fn heartbeat_null(&self, app: &TestApp) -> Value {
        app.gql(Some(&self.token), HEARTBEAT, json!({ "tasks": null })).await.data()["heartbeat"].clone()
    }
}

async fn task(app: &TestApp, id: &str) -> Value {
    let operator = app.token("olga", &["operator"]);
    app.gql(Some(&operator), TASK, json!({ "id": id })).await.data()["task"].clone()
}

/// A timestamp of the API, in ms since the epoch.
fn ms(at: &Value) -> i64 {
    let text = at.as_str().unwrap_or_else(|| panic!("a timestamp: {at}"));
    chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339").timestamp_millis()
}

/// The `leaseExpiresAt` of each of `ids`, in ms.
async fn leases(app: &TestApp, ids: &[&str]) -> Vec<i64> {
    let mut leases = Vec::with_capacity(ids.len());
    for id in ids {
        leases.push(ms(&task(app, id).await["leaseExpiresAt"]));
    }
    leases
}

/// An app whose task reads are at most 1 ms behind a heartbeat: a heartbeat extends
/// leases in place, without an event to invalidate cached copies, and cached tasks that
/// can still change are kept for the L1 TTL (5 s by default).
async fn spawn(vars: &[(&str, &str)]) -> TestApp {
    let mut vars = vars.to_vec();
    vars.push(("TASKWIRE_CACHE_L1_TTL_MS", "1"));
    TestApp::spawn_with(&vars).await
}

/// Configures queue `name`.
async fn configure_queue(app: &TestApp, name: &str, settings: Value) {
    let admin = app.token("root", &["admin"]);
    let configure = "mutation($input: ConfigureQueueInput!) { configureQueue(input: $input) { name } }";
    let mut input = json!({ "name": name });
    if let (Some(input), Value::Object(settings)) = (input.as_object_mut(), settings) {
        input.extend(settings);
    }
    app.gql(Some(&admin), configure, json!({ "input": input })).await.data();
}

fn task_input(kind: &str, max_attempts: i32) -> Value {
    json!({ "queue": "q", "kind": kind, "maxAttempts": max_attempts })
}

#[tokio::test]
async fn a_task_the_heartbeat_does_not_name_lapses_and_is_reaped_while_the_worker_stays_online() {
    let app = spawn(&[("TASKWIRE_REAPER_INTERVAL_MS", "50")]).await;
    // Retries back off for up to a day (full jitter), so a retried task is seen SCHEDULED.
    let day_ms = 86_400_000;
    configure_queue(&app, "q", json!({ "leaseSeconds": 2, "backoffBaseMs": day_ms, "backoffMaxMs": day_ms })).await;
    // Named; forgotten on its last attempt (DEAD); forgotten with attempts left (retried).
    let inputs = [task_input("named", 1), task_input("last-try", 1), task_input("retried", 3)];
    let w1 = Holder::start(&app, "w1", &inputs).await;
    let (named, last_try, retried) = (w1.tasks[0].as_str(), w1.tasks[1].as_str(), w1.tasks[2].as_str());
    let accepted = leases(&app, &[named]).await[0];

    // Heartbeats name one task, well within its 2 s lease, until the others are reaped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let beat = w1.heartbeat(&app, &[named]).await;
        assert_eq!(beat["status"], "ONLINE");
        let mut running = 0;
        for id in [last_try, retried] {
            running += usize::from(task(&app, id).await["status"] == "RUNNING");
        }
        if running == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the forgotten tasks were never reaped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let kept = task(&app, named).await;
    assert_eq!((kept["status"].clone(), kept["worker"]["id"].clone()), (json!("RUNNING"), json!("w1")), "{kept}");
    assert!(ms(&kept["leaseExpiresAt"]) > accepted, "extended past the lease accepting gave it");
    for (id, reaped_to) in [(last_try, "DEAD"), (retried, "SCHEDULED")] {
        let reaped = task(&app, id).await;
        assert_eq!(reaped["status"], reaped_to, "{reaped}");
        assert_eq!((reaped["attempts"].clone(), reaped["lastError"].clone()), (json!(1), json!("lease expired")));
        let events = reaped["events"].as_array().cloned().unwrap_or_default();
        let statuses: Vec<&str> = events.iter().filter_map(|e| e["status"].as_str()).collect();
        assert_eq!(statuses, ["QUEUED", "ASSIGNED", "RUNNING", reaped_to], "{reaped}");
    }
    let operator = app.token("olga", &["operator"]);
    let worker = app.gql(Some(&operator), "{ worker(id: \"w1\") { status } }", json!({})).await;
    assert_eq!(worker.data()["worker"]["status"], "ONLINE", "the worker itself did not lapse");
}

#[tokio::test]
async fn a_heartbeat_extends_only_the_named_tasks_the_caller_holds() {
    let app = spawn(&[]).await;
    let w1 = Holder::start(&app, "w1", &[task_input("a", 3), task_input("b", 3)]).await;
    let w2 = Holder::start(&app, "w2", &[task_input("c", 3)]).await;
    let (a, b, c) = (w1.tasks[0].as_str(), w1.tasks[1].as_str(), w2.tasks[0].as_str());
    let before = leases(&app, &[a, b, c]).await;
    // Leases are kept to the millisecond: let some pass, so that an extension shows.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let unknown = "0190b1b2-0000-7000-8000-000000000000";
    let beat = w1.heartbeat(&app, &[c, a, "not-a-task-id", unknown, a]).await;
    assert_eq!(beat["status"], "ONLINE", "ids of tasks it does not hold are ignored");
    let after = leases(&app, &[a, b, c]).await;
    assert!(after[0] > before[0], "a: named and held, extended");
    assert_eq!(after[1], before[1], "b: held but not named");
    assert_eq!(after[2], before[2], "c: named, but held by w2");

    // `renewLeases` answers for each distinct named id, in order, whether it is held.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let renewed = app.gql(Some(&w1.token), RENEW, json!({ "tasks": [a, c, "not-a-task-id", a] })).await;
    let renewals = renewed.data()["renewLeases"].as_array().cloned().unwrap_or_default();
    let outcomes: Vec<(&str, &str)> = renewals
        .iter()
        .map(|r| (r["taskId"].as_str().unwrap_or_default(), r["outcome"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(outcomes, [(a, "RENEWED"), (c, "LEASE_LOST"), ("not-a-task-id", "LEASE_LOST")]);
    assert_eq!(ms(&renewals[0]["leaseExpiresAt"]), leases(&app, &[a]).await[0], "the lease end stored");
    assert!(ms(&renewals[0]["leaseExpiresAt"]) > after[0]);
    assert_eq!(
        (renewals[1]["leaseExpiresAt"].clone(), renewals[2]["leaseExpiresAt"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(leases(&app, &[b, c]).await, before[1..].to_vec(), "neither b nor c extended");

    // A task the worker finished is not held any more.
    let w2_renewed = app.gql(Some(&w2.token), RENEW, json!({ "tasks": [c] })).await;
    assert_eq!(w2_renewed.data()["renewLeases"][0]["outcome"], "RENEWED");
    let alice = app.token("alice", &["client"]);
    app.gql(Some(&alice), "mutation($id: ID!) { cancelTask(id: $id) { status } }", json!({ "id": c })).await.data();
    let lost = app.gql(Some(&w2.token), RENEW, json!({ "tasks": [c] })).await;
    assert_eq!(lost.data()["renewLeases"][0]["outcome"], "LEASE_LOST");
}

/// One heartbeat naming tasks of queues with different lease lengths leases each for its
/// own queue's length, from one instant.
#[tokio::test]
async fn each_named_task_is_leased_for_its_own_queues_lease_length() {
    let app = spawn(&[]).await;
    configure_queue(&app, "long", json!({ "leaseSeconds": 100 })).await;
    let inputs = [task_input("a", 3), json!({ "queue": "long", "kind": "b" }), json!({ "queue": "long", "kind": "c" })];
    let w1 = Holder::start(&app, "w1", &inputs).await;
    let (a, b, c) = (w1.tasks[0].as_str(), w1.tasks[1].as_str(), w1.tasks[2].as_str());
    let before = leases(&app, &[a, b, c]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    w1.heartbeat(&app, &[a, b]).await;
    let after = leases(&app, &[a, b, c]).await;
    assert!(after[0] > before[0] && after[1] > before[1], "{before:?} → {after:?}");
    assert_eq!(after[1] - after[0], 70_000, "100 s on `long`, 30 s (the default) on `q`");
    assert_eq!(after[2], before[2], "c not named");
}

/// A lease that lapsed stays lapsed when a heartbeat names its task before the reaper
/// comes: the reaper counts it as a failed attempt.
#[tokio::test]
async fn naming_a_task_whose_lease_lapsed_does_not_revive_it() {
    // The reaper runs at start-up, then not again during the test.
    let app = spawn(&[("TASKWIRE_REAPER_INTERVAL_MS", "600000")]).await;
    configure_queue(&app, "q", json!({ "leaseSeconds": 1 })).await;
    let w1 = Holder::start(&app, "w1", &[task_input("a", 3)]).await;
    let a = w1.tasks[0].as_str();
    let lapsed = leases(&app, &[a]).await[0];
    let wait = lapsed + 50 - chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;

    assert_eq!(w1.heartbeat(&app, &[a]).await["status"], "ONLINE");
    let renewed = app.gql(Some(&w1.token), RENEW, json!({ "tasks": [a] })).await;
    assert_eq!(renewed.data()["renewLeases"][0]["outcome"], "LEASE_LOST");
    let still = task(&app, a).await;
    assert_eq!(still["status"], "RUNNING", "not reaped yet");
    assert_eq!(ms(&still["leaseExpiresAt"]), lapsed, "not extended");
}

#[tokio::test]
async fn the_named_tasks_are_bounded_and_an_empty_list_only_keeps_the_worker_alive() {
    let app = spawn(&[]).await;
    let w1 = Holder::start(&app, "w1", &[task_input("a", 3)]).await;
    let a = w1.tasks[0].as_str();
    let before = leases(&app, &[a]).await;

    let too_many: Vec<String> = (0..1001).map(|i| format!("0190b1b2-0000-7000-8000-{i:012}")).collect();
    for query in [HEARTBEAT, RENEW] {
        let refused = app.gql(Some(&w1.token), query, json!({ "tasks": too_many })).await;
        assert_eq!(refused.code(), "BAD_USER_INPUT", "{query}");
        assert_eq!(refused.errors()[0]["extensions"]["field"], "tasks");
        let most = app.gql(Some(&w1.token), query, json!({ "tasks": too_many[..1000] })).await;
        most.data();
    }
    let renewed = app.gql(Some(&w1.token), RENEW, json!({ "tasks": too_many[..1000] })).await;
    let renewals = renewed.data()["renewLeases"].as_array().cloned().unwrap_or_default();
    assert_eq!(renewals.len(), 1000);
    assert!(renewals.iter().all(|r| r["outcome"] == "LEASE_LOST"));

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(w1.heartbeat(&app, &[]).await["status"], "ONLINE");
    assert_eq!(leases(&app, &[a]).await, before, "naming no task extends no lease");
    let client = app.token("alice", &["client"]);
    assert_eq!(app.gql(Some(&client), HEARTBEAT, json!({ "tasks": [a] })).await.code(), "FORBIDDEN");
    let stranger = app.token("w9", &["worker"]);
    assert_eq!(app.gql(Some(&stranger), HEARTBEAT, json!({ "tasks": [a] })).await.code(), "NOT_FOUND", "unregistered");
}

#[tokio::test]
async fn the_legacy_heartbeat_without_tasks_extends_every_running_lease() {
    let app = spawn(&[]).await;
    let w1 = Holder::start(&app, "w1", &[task_input("a", 3), task_input("b", 3)]).await;
    let w2 = Holder::start(&app, "w2", &[task_input("c", 3)]).await;
    let ids = [w1.tasks[0].as_str(), w1.tasks[1].as_str(), w2.tasks[0].as_str()];
    let before = leases(&app, &ids).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let beat = app.gql(Some(&w1.token), LEGACY_HEARTBEAT, json!({})).await;
    assert_eq!(beat.data()["heartbeat"]["status"], "ONLINE");
    let after = leases(&app, &ids).await;
    assert!(after[0] > before[0] && after[1] > before[1], "both of w1's leases extended: {before:?} → {after:?}");
    assert_eq!(after[2], before[2], "not w2's");
    // `tasks: null` is the legacy form too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    w1.heartbeat_null(&app).await;
    let again = leases(&app, &ids).await;
    assert!(again[0] > after[0] && again[1] > after[1]);
}
