//! The worker against a stand-in for the server: offers, duplicates, lost leases,
//! capacity, draining, stalls, heartbeats, fail-over and partitions, over the real HTTP
//! and WebSocket protocol.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use taskwire_worker::{Assignment, Error, Handler, OfferFilter, Outcome, Worker, WorkerConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::server::{Request, Response},
        http::HeaderValue,
    },
};

/// The subprotocol the worker speaks, and the id of its one subscription.
const PROTOCOL: &str = "graphql-transport-ws";
const SUBSCRIPTION_ID: &str = "assignments";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A stand-in for the server: answers the worker mutations over HTTP and serves the
/// `assignments` subscription, with offers pushed by the test.
#[derive(Default)]
struct Mock {
    /// `(mutation field, variables)` of every HTTP request.
    calls: Mutex<Vec<(String, Value)>>,
    /// Lease tokens answered `LEASE_LOST`.
    lost: Mutex<HashSet<String>>,
    /// Every WebSocket message the worker sent.
    received: Mutex<Vec<Value>>,
    /// Pushes to the open subscription (`None` drops the connection).
    push: Mutex<Option<mpsc::UnboundedSender<Option<Value>>>>,
    /// Lease tokens whose reports are answered only after this long, as a
    /// server does when its answer travels behind the offer its commit made possible.
    slow_answers: Mutex<Vec<(String, Duration)>>,
}

impl Mock {
    async fn start() -> (Arc<Mock>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let mock = Arc::new(Mock::default());
        let server = mock.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(server.clone().serve(stream));
            }
        });
        (mock, url)
    }

    // The handshake callback's signature (a large `Err`) is tungstenite's.
    #[allow(clippy::result_large_err)]
    async fn serve(self: Arc<Self>, mut stream: TcpStream) {
        let mut head = [0u8; 4096];
        let head = loop {
            let n = stream.peek(&mut head).await.expect("peek");
            let text = String::from_utf8_lossy(&head[..n]).to_lowercase();
            if text.contains("\r\n\r\n") {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if head.contains("upgrade: websocket") {
            let protocol = |_: &Request, mut response: Response| {
                response.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
                Ok(response)
            };
            let socket = tokio_tungstenite::accept_hdr_async(stream, protocol).await.expect("handshake");
            self.websocket(socket).await;
            return;
        }
        let mut request = Vec::new();
        let body_at = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            request.extend_from_slice(&chunk[..n]);
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&request[..body_at]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        while request.len() < body_at + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            request.extend_from_slice(&chunk[..n]);
        }
        let body: Value = serde_json::from_slice(&request[body_at..]).expect("JSON");
        let answer = self.answer(&body).to_string();
        let token = body["variables"]["leaseToken"].as_str().unwrap_or_default().to_owned();
        let delay = lock(&self.slow_answers).iter().find(|(t, _)| *t == token).map(|(_, d)| *d);
        let reports = ["completeTask", "failTask", "releaseTask"];
        if let Some(delay) =
            delay.filter(|_| reports.iter().any(|r| body["query"].as_str().unwrap_or_default().contains(r)))
        {
            tokio::time::sleep(delay).await;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
    }

    fn answer(&self, body: &Value) -> Value {
        let query = body["query"].as_str().unwrap_or_default();
        let field = ["registerWorker", "heartbeat", "acceptTask", "completeTask", "failTask", "releaseTask"]
            .into_iter()
            .find(|f| query.contains(&format!("{f}(")) || query.contains(&format!("{f} {{")))
            .expect("a known mutation");
        let variables = body["variables"].clone();
        lock(&self.calls).push((field.to_owned(), variables.clone()));
        let token = variables["leaseToken"].as_str().unwrap_or_default();
        if lock(&self.lost).contains(token) {
            return json!({ "errors": [{ "message": "lease lost", "extensions": { "code": "LEASE_LOST" } }] });
        }
        json!({ "data": { field: { "id": variables["taskId"].as_str().unwrap_or("w-1") } } })
    }

    async fn websocket(&self, mut socket: WebSocketStream<TcpStream>) {
        let (push, mut pushed) = mpsc::unbounded_channel();
        loop {
            tokio::select! {
                message = socket.next() => {
                    let Some(Ok(Message::Text(text))) = message else { return };
                    let message: Value = serde_json::from_str(&text).expect("JSON");
                    lock(&self.received).push(message.clone());
                    match message["type"].as_str() {
                        Some("connection_init") => {
                            let _ = socket.send(Message::text(json!({ "type": "connection_ack" }).to_string())).await;
                            let _ = socket.send(Message::text(json!({ "type": "ping" }).to_string())).await;
                        }
                        Some("subscribe") => *lock(&self.push) = Some(push.clone()),
                        _ => {}
                    }
                }
                item = pushed.recv() => {
                    let Some(Some(assignment)) = item else { return };
                    let next = json!({ "id": SUBSCRIPTION_ID, "type": "next", "payload": { "data": { "assignments": assignment } } });
                    let _ = socket.send(Message::text(next.to_string())).await;
                }
            }
        }
    }

    /// Sends an offer once a subscription is open.
    async fn offer(&self, task: &str, lease: &str) {
        self.offer_as(task, lease, false).await;
    }

    /// Sends an offer, `started` or not, once a subscription is open.
    async fn offer_as(&self, task: &str, lease: &str, started: bool) {
        let assignment = json!({
            "leaseToken": lease,
            "leaseExpiresAt": "2030-01-01T00:00:00Z",
            "started": started,
            "task": { "id": task, "queue": "q", "kind": "k", "payload": null, "priority": 0, "attempts": 0, "maxAttempts": 5 },
        });
        self.send(Some(assignment)).await;
    }

    async fn send(&self, item: Option<Value>) {
        for _ in 0..500 {
            if let Some(push) = lock(&self.push).as_ref()
                && push.send(item.clone()).is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no subscription open");
    }

    fn count(&self, field: &str) -> usize {
        lock(&self.calls).iter().filter(|(f, _)| f == field).count()
    }

    fn received(&self, kind: &str) -> usize {
        lock(&self.received).iter().filter(|m| m["type"] == kind).count()
    }
}

fn config(url: &str, capacity: u32) -> WorkerConfig {
    WorkerConfig {
        url: url.to_owned(),
        token: "jwt".to_owned(),
        name: "test".to_owned(),
        queues: vec!["q".to_owned()],
        capacity,
        heartbeat_every: Duration::from_millis(50),
        auto_accept: false,
    }
}

/// Completes `ok`, fails kind `fail`, stalls on `stall-…` tasks, sleeps on `slow-…` ones.
fn handler() -> Handler {
    Arc::new(|a: Assignment| {
        async move {
            if a.task_id.starts_with("slow") {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if a.task_id.starts_with("stall") {
                return Outcome::Stall(Duration::from_millis(400));
            }
            if a.task_id.starts_with("release") {
                return Outcome::Release;
            }
            if a.task_id.starts_with("fail") {
                return Outcome::Fail { error: "boom".into(), retryable: false };
            }
            Outcome::Complete(Some(json!({ "ok": true })))
        }
        .boxed()
    })
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn handles_offers_duplicates_and_lost_leases() {
    let (mock, url) = Mock::start().await;
    let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
    assert_eq!(worker.id(), "w-1");
    mock.offer("t1", "l1").await;
    mock.offer("t1", "l1").await;
    lock(&mock.lost).insert("l2".into());
    mock.offer("t2", "l2").await;
    mock.offer("fail-3", "l3").await;
    mock.offer("release-4", "l4").await;
    assert!(worker.wait_until(WAIT, |s| s.offered == 4 && s.in_flight == 0 && s.duplicates == 1).await);
    assert!(worker.wait_until(WAIT, |s| s.heartbeats >= 2).await);
    let stats = worker.stats();
    assert_eq!((stats.accepted, stats.completed, stats.failed, stats.released), (3, 1, 1, 1), "{stats:?}");
    assert_eq!(stats.lease_lost, 1);
    let complete = lock(&mock.calls).iter().find(|(f, _)| f == "completeTask").cloned().expect("completed");
    assert_eq!(complete.1, json!({ "taskId": "t1", "leaseToken": "l1", "result": { "ok": true } }));
    let fail = lock(&mock.calls).iter().find(|(f, _)| f == "failTask").cloned().expect("failed");
    assert_eq!(fail.1["retryable"], false);
    let log = worker.log();
    let lost = log.iter().find(|r| r.task_id == "t2").expect("t2 recorded");
    assert_eq!(
        (lost.accept.as_ref().map(|a| a.as_ref().map_err(|e| e.code())), lost.accepted, lost.outcome.clone()),
        (Some(Err("LEASE_LOST".into())), false, None)
    );
    let done = log.iter().find(|r| r.task_id == "t1").expect("t1 recorded");
    assert_eq!(done.answer, Some(Ok(())));
    assert!(done.accepted_at.is_some() && done.finished_at.is_some());
    assert_eq!(mock.received("pong"), 1);
    let subscribe = lock(&mock.received).iter().find(|m| m["type"] == "subscribe").cloned().expect("subscribed");
    assert_eq!(subscribe["payload"]["operationName"], "Assignments");
    let query = subscribe["payload"]["query"].as_str().unwrap_or_default();
    assert!(query.starts_with("subscription Assignments { assignments { leaseToken"), "{query}");
    let init = lock(&mock.received).iter().find(|m| m["type"] == "connection_init").cloned().expect("init");
    assert_eq!(init["payload"]["authorization"], "Bearer jwt");

    let stopped = worker.stop().await;
    assert_eq!(stopped.log.len(), 4);
    assert_eq!(mock.received("complete"), 1);
}

#[tokio::test]
async fn capacity_filter_and_kill() {
    let (mock, url) = Mock::start().await;
    let filter: OfferFilter = Arc::new(|a: &Assignment| a.task_id != "skip");
    let worker = Worker::start_with_filter(config(&url, 1), filter, handler()).await.expect("starts");
    mock.offer("skip", "l0").await;
    mock.offer("slow-1", "l1").await;
    mock.offer("t2", "l2").await;
    assert!(worker.wait_until(WAIT, |s| s.offered == 3 && s.ignored == 2 && s.accepted == 1).await);
    worker.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mock.count("completeTask"), 0, "a killed worker reports nothing");
    assert_eq!(mock.received("complete"), 0);
}

/// The server frees a worker's slot when its report commits, and may offer the next task
/// at once: that offer can arrive before the report's answer. The handler that finished
/// no longer holds the worker's one slot while its report is in flight, so the offer is
/// accepted rather than ignored (an ignored plain offer waits out the whole offer timeout).
#[tokio::test]
async fn an_offer_that_overtakes_the_previous_reports_answer_is_taken() {
    let (mock, url) = Mock::start().await;
    lock(&mock.slow_answers).push(("l1".to_owned(), Duration::from_secs(1)));
    let worker = Worker::start(config(&url, 1), handler()).await.expect("starts");
    mock.offer("t1", "l1").await;
    let reported = async {
        while mock.count("completeTask") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, reported).await.expect("t1 reported");
    mock.offer("t2", "l2").await;
    assert!(worker.wait_until(WAIT, |s| s.completed == 2).await, "{:?}", worker.stats());
    let stats = worker.stats();
    assert_eq!((stats.accepted, stats.ignored), (2, 0), "{stats:?}");
    let log = worker.log();
    let first = log.iter().find(|r| r.task_id == "t1").expect("t1 recorded");
    let second = log.iter().find(|r| r.task_id == "t2").expect("t2 recorded");
    let (accepted, answered) = (second.accepted_at.map(|s| s.instant), first.finished_at.map(|s| s.instant));
    assert!(accepted.is_some() && accepted < answered, "t2 ran while t1's answer was on its way: {log:?}");
    worker.stop().await;
}

/// Reports in flight are bounded by the capacity: while t1's report waits for its answer,
/// t2 takes the one handler and, done, waits for a report permit still holding it, so t3
/// finds no handler and is ignored. Once t1's answer arrives, t2 reports too.
#[tokio::test]
async fn reports_waiting_for_answers_hold_up_new_work_at_the_capacity() {
    let (mock, url) = Mock::start().await;
    lock(&mock.slow_answers).push(("l1".to_owned(), Duration::from_secs(2)));
    let worker = Worker::start(config(&url, 1), handler()).await.expect("starts");
    let calls = |field: &'static str, n: usize| {
        let mock = mock.clone();
        async move {
            while mock.count(field) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    mock.offer("t1", "l1").await;
    tokio::time::timeout(WAIT, calls("completeTask", 1)).await.expect("t1 reported");
    mock.offer("t2", "l2").await;
    tokio::time::timeout(WAIT, calls("acceptTask", 2)).await.expect("t2 accepted");
    tokio::time::sleep(Duration::from_millis(100)).await; // t2's handler returns
    assert_eq!(mock.count("completeTask"), 1, "t2 waits for t1's report permit");
    mock.offer("t3", "l3").await;
    assert!(worker.wait_until(WAIT, |s| s.offered == 3 && s.ignored == 1).await, "{:?}", worker.stats());
    assert!(worker.wait_until(WAIT, |s| s.completed == 2).await, "{:?}", worker.stats());
    assert_eq!(mock.count("acceptTask"), 2, "t3 was never accepted");
    worker.stop().await;
}

/// An `auto_accept` worker registers so, asks whether offers started, never accepts a
/// started offer, waits for its one handler to finish rather than hand back the next
/// started offer, and hands back one its filter refuses.
#[tokio::test]
async fn started_offers_wait_for_a_handler_and_refusals_are_handed_back() {
    let (mock, url) = Mock::start().await;
    let filter: OfferFilter = Arc::new(|a: &Assignment| a.task_id != "skip");
    let config = WorkerConfig { auto_accept: true, ..config(&url, 1) };
    let worker = Worker::start_with_filter(config, filter, handler()).await.expect("starts");
    mock.offer_as("slow-1", "l1", true).await;
    mock.offer_as("t2", "l2", true).await;
    mock.offer_as("skip", "l3", true).await;
    assert!(worker.wait_until(WAIT, |s| s.completed == 2 && s.released == 1).await, "{:?}", worker.stats());
    assert_eq!(mock.count("acceptTask"), 0, "started offers are not accepted");
    let released: Vec<Value> =
        lock(&mock.calls).iter().filter(|(f, _)| f == "releaseTask").map(|(_, v)| v["taskId"].clone()).collect();
    assert_eq!(released, [json!("skip")], "only the refused offer goes back");
    let register = lock(&mock.calls).iter().find(|(f, _)| f == "registerWorker").map(|(_, v)| v.clone());
    assert_eq!(register.expect("registered")["input"]["autoAccept"], true);
    let subscribe = lock(&mock.received).iter().find(|m| m["type"] == "subscribe").cloned().expect("subscribed");
    assert!(subscribe["payload"]["query"].as_str().unwrap_or_default().contains("started"));
    worker.stop().await;
}

#[tokio::test]
async fn stop_waits_for_running_handlers() {
    let (mock, url) = Mock::start().await;
    let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
    mock.offer("slow-1", "l1").await;
    assert!(worker.wait_until(WAIT, |s| s.accepted == 1).await);
    let stopped = worker.stop().await;
    assert_eq!(stopped.stats.completed, 1);
    assert_eq!(mock.count("completeTask"), 1);
}

#[tokio::test]
async fn stalls_pause_heartbeats() {
    let (mock, url) = Mock::start().await;
    let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
    mock.offer("stall-1", "l1").await;
    assert!(worker.wait_until(WAIT, |s| s.accepted == 1).await);
    tokio::time::sleep(Duration::from_millis(100)).await; // a heartbeat in flight lands
    let before = mock.count("heartbeat");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(mock.count("heartbeat"), before, "no heartbeat while stalled");
    assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
    assert!(worker.wait_until(WAIT, |s| s.heartbeats > before as u64).await);
    worker.stop().await;
}

/// Heartbeats name the tasks being handled, and stop naming a task once it is reported.
#[tokio::test]
async fn heartbeats_name_the_tasks_in_hand() {
    let (mock, url) = Mock::start().await;
    let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
    mock.offer("slow-1", "l1").await;
    let named = |tasks: Value, after: usize| {
        let mock = &mock;
        async move {
            for _ in 0..500 {
                let calls = lock(&mock.calls).clone();
                let mut beats = calls.iter().filter(|(f, _)| f == "heartbeat").enumerate().skip(after);
                if let Some((at, _)) = beats.find(|(_, (_, v))| v["tasks"] == tasks) {
                    return at;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no heartbeat named {tasks} after {after} heartbeats");
        }
    };
    let working = named(json!(["slow-1"]), 0).await;
    assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
    named(json!([]), working + 1).await;
    worker.stop().await;
}

#[tokio::test]
async fn fails_over_to_the_next_url_and_wraps_around() {
    let (first, first_url) = Mock::start().await;
    let (second, second_url) = Mock::start().await;
    let urls = format!("{first_url}, {second_url}/");
    let worker = Worker::start(config(&urls, 4), handler()).await.expect("starts");
    assert_eq!(worker.url(), first_url);
    first.send(None).await; // the first server drops the connection
    *lock(&first.push) = None;
    assert!(worker.wait_until(WAIT, |s| s.reconnects == 1 && s.failovers == 1).await);
    assert_eq!(worker.url(), second_url);
    second.offer("t1", "l1").await;
    assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
    assert_eq!((first.count("completeTask"), second.count("completeTask")), (0, 1), "reports follow");
    let beats = second.count("heartbeat");
    assert!(worker.wait_until(WAIT, |s| s.heartbeats as usize > beats).await);
    assert!(second.count("heartbeat") > beats, "heartbeats follow");

    second.send(None).await;
    *lock(&second.push) = None;
    assert!(worker.wait_until(WAIT, |s| s.reconnects == 2 && s.failovers == 2).await);
    assert_eq!(worker.url(), first_url, "the list wraps around");
    first.offer("t2", "l2").await;
    assert!(worker.wait_until(WAIT, |s| s.completed == 2).await);
    assert_eq!(first.count("completeTask"), 1);
    assert_eq!(first.count("registerWorker") + second.count("registerWorker"), 1);
    worker.stop().await;
}

#[tokio::test]
async fn starts_on_the_first_url_that_answers() {
    let (mock, url) = Mock::start().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let worker = Worker::start(config(&format!("{dead},{url}"), 4), handler()).await.expect("starts");
    assert_eq!((worker.url(), worker.stats().failovers), (url.as_str(), 1));
    let refused = Worker::start(config(&dead, 4), handler()).await;
    assert!(matches!(refused, Err(Error::Register(ref e)) if e.code() == "TRANSPORT"), "{refused:?}");
    let bad_url = Worker::start(config(&format!("{url},ftp://x"), 4), handler()).await;
    assert!(matches!(bad_url, Err(Error::InvalidUrl { ref url }) if url == "ftp://x"), "{bad_url:?}");
    mock.offer("t1", "l1").await;
    assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
    worker.stop().await;
}

#[tokio::test]
async fn reconnects_after_drops_and_partitions() {
    let (mock, url) = Mock::start().await;
    let worker = Worker::start(config(&url, 4), handler()).await.expect("starts");
    mock.send(None).await; // the server drops the connection
    *lock(&mock.push) = None;
    assert!(worker.wait_until(WAIT, |s| s.reconnects == 1).await);
    mock.offer("t1", "l1").await;
    assert!(worker.wait_until(WAIT, |s| s.completed == 1).await);
    assert_eq!(mock.count("registerWorker"), 1);

    let started = Instant::now();
    let partition = worker.disconnect_for(Duration::from_millis(400));
    let during = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let beats = mock.count("heartbeat");
        tokio::time::sleep(Duration::from_millis(200)).await;
        (beats, mock.count("heartbeat"))
    };
    let ((), (before, after)) = tokio::join!(partition, during);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(before, after, "no heartbeat during a partition");
    assert_eq!(worker.stats().reconnects, 2);
    assert_eq!(mock.count("registerWorker"), 2);
    assert_eq!(mock.received("connection_init"), 3);
    worker.stop().await;
}
