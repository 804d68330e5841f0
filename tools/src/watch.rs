//! Task watchers for the fault drills: a watcher follows tasks with `taskUpdated(id,
//! afterSeq)` over one `graphql-transport-ws` connection, as a client showing a task's
//! progress would. When the connection dies it reconnects to the next instance of its
//! list (wrapping around) and resumes every unfinished task after the last `seq` it
//! received; when the server ends one subscription, that task is resumed the same way.
//!
//! It checks that each task's events arrive in `seq` order without gaps or duplicates,
//! from `seq` 1 to a terminal status, across any number of resumptions.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use taskwire_worker::transport::{Socket, connect, send};

/// The subscription each watched task gets.
pub const TASK_UPDATED: &str =
    "subscription Watch($id: ID!, $after: Int) { taskUpdated(id: $id, afterSeq: $after) { seq status } }";
/// Statuses after which a task has no more events.
pub const TERMINAL: [&str; 3] = ["SUCCEEDED", "CANCELLED", "DEAD"];
/// Tasks one watcher follows at once: under the server's subscriptions per connection
/// (`TASKWIRE_WS_MAX_SUBSCRIPTIONS`, 100 by default). Tasks handed over beyond that are
/// counted as skipped, not watched.
pub const MAX_OPEN: usize = 90;
/// Pause before connecting again after a failed attempt (the instance may be down).
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// What one watcher saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchReport {
    /// Tasks followed.
    pub watched: u64,
    /// Tasks seen to reach a terminal status.
    pub finished: u64,
    /// Tasks handed over while [`MAX_OPEN`] were open (not followed).
    pub skipped: u64,
    /// Events whose `seq` was beyond the next one expected (a gap before it).
    pub gaps: u64,
    /// Events whose `seq` had been received already.
    pub duplicates: u64,
    /// Events received for a task after its terminal one.
    pub after_terminal: u64,
    /// Subscriptions opened again with `afterSeq` (after a drop or a server `complete`).
    pub resumed: u64,
    /// Connections that died under the watcher.
    pub drops: u64,
    /// Moves to the next instance.
    pub failovers: u64,
    /// Failed connects and subscription errors, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Tasks not seen to finish, up to 20, with the last `seq` received.
    pub unfinished: Vec<(String, u32)>,
}

impl WatchReport {
    /// Adds another watcher's counts.
    pub fn merge(&mut self, other: WatchReport) {
        self.watched += other.watched;
        self.finished += other.finished;
        self.skipped += other.skipped;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.after_terminal += other.after_terminal;
        self.resumed += other.resumed;
        self.drops += other.drops;
        self.failovers += other.failovers;
        for (reason, n) in other.errors {
            *self.errors.entry(reason).or_default() += n;
        }
        self.unfinished.extend(other.unfinished);
        self.unfinished.truncate(20);
    }
}

/// The `seq` order of one task's events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqCheck {
    /// The highest `seq` received (what a resumption passes as `afterSeq`).
    pub last: u32,
    /// A terminal status was received.
    pub done: bool,
}

/// What one event meant for the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next `seq`.
    Next,
    /// A `seq` received before.
    Duplicate,
    /// A `seq` beyond the next: the events between were skipped.
    Gap,
    /// Any event after the terminal one.
    AfterTerminal,
}

impl SeqCheck {
    /// Records the event `seq` with `status`.
    pub fn observe(&mut self, seq: u32, status: &str) -> Step {
        if self.done {
            return Step::AfterTerminal;
        }
        if seq <= self.last {
            return Step::Duplicate;
        }
        let step = if seq == self.last + 1 { Step::Next } else { Step::Gap };
        self.last = seq;
        self.done = TERMINAL.contains(&status);
        step
    }
}

/// One followed task.
#[derive(Debug, Default)]
struct Watched {
    check: SeqCheck,
    /// Subscribed at least once (a later subscription is a resumption).
    subscribed: bool,
}

/// What woke the watcher.
enum Wake {
    Stop,
    Task(Option<String>),
    Message(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
}

/// Follows the task ids received on `tasks` until `stop`, or until `tasks` is closed and
/// every task followed has finished. `ws_urls` are the instances' WebSocket endpoints in
/// fail-over order; `token` must be allowed to read the tasks.
pub async fn watch(
    ws_urls: Vec<String>,
    token: String,
    mut tasks: mpsc::Receiver<String>,
    stop: CancellationToken,
) -> WatchReport {
    let mut report = WatchReport::default();
    let mut followed: HashMap<String, Watched> = HashMap::new();
    // Subscription id → task id, for the current connection.
    let mut subscriptions: HashMap<String, String> = HashMap::new();
    let mut next_id = 0u64;
    let mut at = 0usize;
    let mut socket: Option<Socket> = None;
    let mut intake_open = true;
    let open = |followed: &HashMap<String, Watched>| followed.values().filter(|w| !w.check.done).count();
    loop {
        if stop.is_cancelled() || (!intake_open && open(&followed) == 0) {
            break;
        }
        if socket.is_none() && !ws_urls.is_empty() {
            match connect(&ws_urls[at % ws_urls.len()], &token).await {
                Ok(mut connected) => {
                    subscriptions.clear();
                    let mut failed = None;
                    for (task, watched) in followed.iter_mut().filter(|(_, w)| !w.check.done) {
                        if watched.subscribed {
                            report.resumed += 1;
                        }
                        watched.subscribed = true;
                        next_id += 1;
                        let id = next_id.to_string();
                        if let Err(e) = subscribe(&mut connected, &id, task, watched.check.last).await {
                            failed = Some(e);
                            break;
                        }
                        subscriptions.insert(id, task.clone());
                    }
                    match failed {
                        None => socket = Some(connected),
                        Some(e) => {
                            *report.errors.entry(format!("resubscribe: {e}")).or_default() += 1;
                            report.drops += 1;
                            at += 1;
                            report.failovers += u64::from(ws_urls.len() > 1);
                        }
                    }
                }
                Err(e) => {
                    *report.errors.entry(format!("connect: {e}")).or_default() += 1;
                    at += 1;
                    report.failovers += u64::from(ws_urls.len() > 1);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    }
                }
            }
            continue;
        }
        let wake = match socket.as_mut() {
            Some(connected) => tokio::select! {
                () = stop.cancelled() => Wake::Stop,
                task = tasks.recv(), if intake_open => Wake::Task(task),
                message = connected.next() => Wake::Message(message),
            },
            None => tokio::select! {
                () = stop.cancelled() => Wake::Stop,
                task = tasks.recv(), if intake_open => Wake::Task(task),
            },
        };
        match wake {
            Wake::Stop => break,
            Wake::Task(None) => intake_open = false,
            Wake::Task(Some(task)) => {
                if followed.contains_key(&task) {
                    continue;
                }
                if open(&followed) >= MAX_OPEN {
                    report.skipped += 1;
                    continue;
                }
                report.watched += 1;
                let watched = followed.entry(task.clone()).or_default();
                if let Some(connected) = socket.as_mut() {
                    watched.subscribed = true;
                    next_id += 1;
                    let id = next_id.to_string();
                    match subscribe(connected, &id, &task, 0).await {
                        Ok(()) => {
                            subscriptions.insert(id, task);
                        }
                        // The connection is dying; the next read ends it, and the
                        // reconnection subscribes this task with the others.
                        Err(e) => *report.errors.entry(format!("subscribe: {e}")).or_default() += 1,
                    }
                }
            }
            Wake::Message(Some(Ok(Message::Text(text)))) => {
                let Some(connected) = socket.as_mut() else { continue };
                let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let id = message["id"].as_str().unwrap_or_default().to_owned();
                match message["type"].as_str() {
                    Some("ping") => {
                        let _ = send(connected, json!({ "type": "pong" })).await;
                    }
                    Some("next") => {
                        let Some(task) = subscriptions.get(&id).cloned() else { continue };
                        let Some(watched) = followed.get_mut(&task) else { continue };
                        if let Some(error) = message["payload"]["errors"].as_array().and_then(|e| e.first()) {
                            let code = error["extensions"]["code"].as_str().unwrap_or("NO_CODE");
                            *report.errors.entry(format!("taskUpdated: {code}")).or_default() += 1;
                            continue;
                        }
                        let event = &message["payload"]["data"]["taskUpdated"];
                        let (Some(seq), Some(status)) = (event["seq"].as_u64(), event["status"].as_str()) else {
                            continue;
                        };
                        match watched.check.observe(u32::try_from(seq).unwrap_or(u32::MAX), status) {
                            Step::Next => {}
                            Step::Gap => report.gaps += 1,
                            Step::Duplicate => report.duplicates += 1,
                            Step::AfterTerminal => report.after_terminal += 1,
                        }
                        if watched.check.done {
                            subscriptions.remove(&id);
                            let _ = send(connected, json!({ "id": id, "type": "complete" })).await;
                        }
                    }
                    Some("error") | Some("complete") => {
                        // The server ended this subscription: resume the task if unfinished.
                        let Some(task) = subscriptions.remove(&id) else { continue };
                        if message["type"] == "error" {
                            let code = message["payload"][0]["extensions"]["code"].as_str().unwrap_or("NO_CODE");
                            *report.errors.entry(format!("taskUpdated: {code}")).or_default() += 1;
                        }
                        let Some(watched) = followed.get(&task).filter(|w| !w.check.done) else { continue };
                        report.resumed += 1;
                        next_id += 1;
                        let id = next_id.to_string();
                        if subscribe(connected, &id, &task, watched.check.last).await.is_ok() {
                            subscriptions.insert(id, task);
                        }
                    }
                    _ => {}
                }
            }
            Wake::Message(Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                socket = None;
                report.drops += 1;
                at += 1;
                report.failovers += u64::from(ws_urls.len() > 1);
            }
            Wake::Message(Some(Ok(_))) => {}
        }
    }
    if let Some(mut connected) = socket.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), connected.close(None)).await;
    }
    report.finished = followed.values().filter(|w| w.check.done).count() as u64;
    report.unfinished =
        followed.iter().filter(|(_, w)| !w.check.done).take(20).map(|(id, w)| (id.clone(), w.check.last)).collect();
    report
}

async fn subscribe(socket: &mut Socket, id: &str, task: &str, after: u32) -> Result<(), taskwire_worker::Error> {
    let payload =
        json!({ "query": TASK_UPDATED, "variables": { "id": task, "after": after }, "operationName": "Watch" });
    send(socket, json!({ "id": id, "type": "subscribe", "payload": payload })).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_order_gaps_duplicates_and_the_end() {
        let mut check = SeqCheck::default();
        assert_eq!(check.observe(1, "QUEUED"), Step::Next);
        assert_eq!(check.observe(2, "ASSIGNED"), Step::Next);
        assert_eq!(check.observe(2, "ASSIGNED"), Step::Duplicate);
        assert_eq!(check.observe(1, "QUEUED"), Step::Duplicate);
        assert_eq!(check.observe(4, "QUEUED"), Step::Gap);
        assert_eq!((check.last, check.done), (4, false));
        assert_eq!(check.observe(5, "SUCCEEDED"), Step::Next);
        assert!(check.done);
        assert_eq!(check.observe(6, "QUEUED"), Step::AfterTerminal);
        let mut late = SeqCheck::default();
        assert_eq!(late.observe(2, "RUNNING"), Step::Gap, "the history must start at seq 1");
    }

    #[test]
    fn reports_add_up() {
        let mut total = WatchReport { watched: 2, gaps: 1, ..WatchReport::default() };
        total.errors.insert("connect: x".into(), 1);
        let other = WatchReport {
            watched: 3,
            resumed: 4,
            errors: BTreeMap::from([("connect: x".to_owned(), 2)]),
            unfinished: vec![("t".into(), 3)],
            ..WatchReport::default()
        };
        total.merge(other);
        assert_eq!((total.watched, total.gaps, total.resumed), (5, 1, 4));
        assert_eq!(total.errors["connect: x"], 3);
        assert_eq!(total.unfinished, vec![("t".to_owned(), 3)]);
    }
}
