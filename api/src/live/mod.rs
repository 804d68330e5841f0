//! Live fan-out: routes status events from Kafka to the subscriptions of this process.
//!
//! Every subscriber has a bounded buffer. Publishing never waits: when a buffer is full
//! the event is dropped *for that subscriber only* and the subscriber is flagged as
//! lagged; it then resyncs from `task_events` (the source of truth) before taking live
//! events again. So one slow socket never delays the others, and memory per subscriber
//! is bounded by its buffer.
//!
//! The hub also remembers, per task, the highest `seq` it has routed without a gap
//! ([`Hub::unheard`]), and does not route an event at or below it again: the Kafka copy
//! of an event this process published at commit, or a redelivery, is dropped here rather
//! than handed to every subscriber to drop. (An event routed past a gap can still come
//! twice, and so can one of a task the hub forgot; subscriptions keep their own checks.)
//! The [`sweep`] task compares what the hub heard with `task_events` every few seconds
//! and routes whatever Kafka lost or has not delivered, so a subscriber never waits
//! forever and no subscriber has to poll the database itself.

mod generations;
pub mod sweep;

pub(crate) use generations::Generations;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use taskwire_domain::{EnvelopeType, TaskEnvelope, TaskId, machine::Transition};
use taskwire_store::CommitListener;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// What a subscriber listens to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// One task.
    Task(String),
    /// Every task of one creator.
    Creator(String),
    /// Every task of one queue.
    Queue(String),
    /// Every event naming one worker (offers to it, runs ending on it).
    Worker(String),
    /// Every task.
    All,
}

impl Route {
    /// The route of one task.
    pub fn task(id: TaskId) -> Route {
        Route::Task(id.to_string())
    }
}

struct Subscriber {
    tx: mpsc::Sender<Arc<TaskEnvelope>>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct Routes {
    next_id: u64,
    by_route: HashMap<Route, HashMap<u64, Subscriber>>,
    /// Per task: the highest `seq` routed with every earlier one routed too (as far as
    /// this process knows), and when the task was last heard of.
    heard: HeardTasks,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    seq: u32,
    at: Instant,
}

impl Heard {
    /// Records that `seq` is about to be routed; `false` when it was routed already.
    fn advance(&mut self, seq: u32, now: Instant) -> bool {
        if seq <= self.seq {
            return false;
        }
        self.at = now;
        // A gap stays open until the missing events are routed (by the sweep).
        if seq == self.seq + 1 {
            self.seq = seq;
        }
        true
    }
}

/// Tasks the hub remembers at most (two generations of half as many; see [`HeardTasks`]).
/// A task forgotten is routed again from its next event, and the sweep may re-route its
/// recent events, which subscribers drop as duplicates as far as they remember the task.
const MAX_HEARD: usize = 200_000;

/// What the hub has routed, per task, for the tasks heard of most recently: two
/// generations of at most [`MAX_HEARD`] / 2 tasks ([`Generations`]), so a burst of new
/// tasks forgets the tasks silent the longest, never the ones just routed (whose copies
/// are still coming).
struct HeardTasks(Generations<String, Heard>);

impl Default for HeardTasks {
    fn default() -> Self {
        HeardTasks(Generations::new(MAX_HEARD / 2))
    }
}

impl HeardTasks {
    fn get(&self, task: &str) -> Option<&Heard> {
        self.0.get(task)
    }

    /// Records that `seq` of `task` is about to be routed; `false` when it was routed
    /// already (with every earlier `seq`), so it must not be routed again.
    fn remember(&mut self, task: &str, seq: u32) -> bool {
        let now = Instant::now();
        // A task heard of for the first time starts at this `seq`.
        let first = self.0.get(task).is_none();
        self.0.update(task, || Heard { seq, at: now }, |known| first || known.advance(seq, now))
    }

    /// Forgets tasks not heard of for `age`.
    fn forget_older_than(&mut self, age: Duration) {
        let now = Instant::now();
        self.0.retain(|_, heard| now.duration_since(heard.at) < age);
    }
}

/// The router. Cheap to share (`Arc`).
pub struct Hub {
    routes: Mutex<Routes>,
    capacity: usize,
    metrics: Metrics,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

/// A live subscription: a bounded receiver plus the lagged flag. Unsubscribes on drop.
#[derive(Debug)]
pub struct Subscription {
    /// Events in arrival order.
    pub events: mpsc::Receiver<Arc<TaskEnvelope>>,
    lagged: Arc<AtomicBool>,
    _guard: Unsubscribe,
}

impl Subscription {
    /// Whether events were dropped since the last call (the caller must resync), and
    /// clears the flag. Buffered events are discarded too: the resync covers them.
    pub fn take_lagged(&mut self) -> bool {
        let lagged = self.lagged.swap(false, Ordering::AcqRel);
        if lagged {
            while self.events.try_recv().is_ok() {}
        }
        lagged
    }
}

/// What [`Subscription::next_or_idle`] found.
#[derive(Debug)]
pub enum Next {
    /// A live event.
    Event(Arc<TaskEnvelope>),
    /// Nothing arrived within the idle time.
    Idle,
    /// The hub is gone.
    Closed,
}

impl Subscription {
    /// The next live event, or [`Next::Idle`] after `idle` without one.
    pub async fn next_or_idle(&mut self, idle: std::time::Duration) -> Next {
        tokio::select! {
            event = self.events.recv() => event.map_or(Next::Closed, Next::Event),
            () = tokio::time::sleep(idle) => Next::Idle,
        }
    }
}

#[derive(Debug)]
struct Unsubscribe {
    hub: Arc<Hub>,
    route: Route,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Ok(mut routes) = self.hub.routes.lock() else { return };
        if let Some(subscribers) = routes.by_route.get_mut(&self.route) {
            subscribers.remove(&self.id);
            if subscribers.is_empty() {
                routes.by_route.remove(&self.route);
            }
        }
    }
}

impl Hub {
    /// A hub whose subscribers buffer at most `capacity` events each.
    pub fn new(capacity: usize, metrics: Metrics) -> Arc<Hub> {
        Arc::new(Hub { routes: Mutex::new(Routes::default()), capacity: capacity.max(1), metrics })
    }

    /// Registers a subscriber on `route`.
    pub fn subscribe(self: &Arc<Self>, route: Route) -> Subscription {
        let (tx, events) = mpsc::channel(self.capacity);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = match self.routes.lock() {
            Ok(mut routes) => {
                routes.next_id += 1;
                let id = routes.next_id;
                routes.by_route.entry(route.clone()).or_default().insert(id, Subscriber { tx, lagged: lagged.clone() });
                id
            }
            // A poisoned lock means a panic elsewhere; the subscription then only
            // resyncs from the database, which stays correct.
            Err(_) => 0,
        };
        Subscription { events, lagged, _guard: Unsubscribe { hub: self.clone(), route, id } }
    }

    /// Delivers `envelope` to every subscriber of its task, creator, queue, worker (if
    /// any) and `All`, unless this hub has routed it already: an event committed in this
    /// process is published here at commit and again when its Kafka copy comes back, and
    /// Kafka may redeliver. Only an event at or below the task's gapless `seq` is
    /// recognised, and only while the hub remembers the task ([`MAX_HEARD`], a minute of
    /// silence); subscribers keep their own de-duplication for the rest.
    /// Never blocks: a full buffer flags its subscriber as lagged instead.
    pub fn publish(&self, envelope: TaskEnvelope) {
        let envelope = Arc::new(envelope);
        let mut routes = vec![
            Route::Task(envelope.task_id.clone()),
            Route::Creator(envelope.created_by.clone()),
            Route::Queue(envelope.queue.clone()),
            Route::All,
        ];
        if let Some(worker) = &envelope.worker_id {
            routes.push(Route::Worker(worker.clone()));
        }
        let Ok(mut table) = self.routes.lock() else { return };
        if !table.heard.remember(&envelope.task_id, envelope.seq) {
            self.metrics.live_duplicates.inc();
            return;
        }
        for route in &routes {
            let Some(subscribers) = table.by_route.get(route) else { continue };
            for subscriber in subscribers.values() {
                if let Err(mpsc::error::TrySendError::Full(_)) = subscriber.tx.try_send(envelope.clone()) {
                    subscriber.lagged.store(true, Ordering::Release);
                    self.metrics.subscriber_overflows.inc();
                }
            }
        }
    }

    /// Of `tasks` (task id, highest `seq` in the history), those this hub has not routed
    /// every event of, each with the highest `seq` it routed without a gap (`None`: none
    /// at all).
    pub fn unheard<'a>(&self, tasks: impl IntoIterator<Item = (&'a str, u32)>) -> Vec<(String, Option<u32>)> {
        let Ok(table) = self.routes.lock() else { return Vec::new() };
        tasks
            .into_iter()
            .filter_map(|(task, seq)| match table.heard.get(task) {
                Some(heard) if heard.seq >= seq => None,
                heard => Some((task.to_owned(), heard.map(|h| h.seq))),
            })
            .collect()
    }

    /// Forgets tasks not heard of for `age`.
    pub fn forget_heard(&self, age: Duration) {
        let Ok(mut table) = self.routes.lock() else { return };
        table.heard.forget_older_than(age);
    }

    /// Subscribers currently registered (all routes).
    pub fn subscriber_count(&self) -> usize {
        self.routes.lock().map(|r| r.by_route.values().map(HashMap::len).sum()).unwrap_or_default()
    }
}

/// A change this process committed reaches its subscribers at once, before the relay
/// publishes it. Creations too: a subscriber would otherwise see a task offered at once
/// (its `ASSIGNED` event, published here) before the Kafka copy of its creation, and
/// then drop that copy as older. The Kafka copy of each event comes later and is dropped
/// as known.
impl CommitListener for Hub {
    fn committed(&self, change: &Transition, _traceparent: Option<&str>) {
        if let Some(event) = &change.event {
            self.publish(TaskEnvelope::new(EnvelopeType::Status, &change.task, event));
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use taskwire_domain::{EnvelopeType, TaskStatus};

    use super::*;

    fn envelope(task: &str, seq: u32, creator: &str, queue: &str) -> TaskEnvelope {
        TaskEnvelope {
            v: 1,
            kind: EnvelopeType::Status,
            task_id: task.into(),
            seq,
            status: TaskStatus::Queued,
            previous_status: None,
            queue: queue.into(),
            attempt: 0,
            worker_id: None,
            at: Utc::now(),
            created_by: creator.into(),
            version: seq,
            priority: 0,
            run_at: Utc::now(),
            message: None,
        }
    }

    #[tokio::test]
    async fn events_reach_task_creator_queue_and_catch_all_subscribers_only() {
        let hub = Hub::new(8, Metrics::new());
        let mut by_task = hub.subscribe(Route::Task("t1".into()));
        let mut by_creator = hub.subscribe(Route::Creator("alice".into()));
        let mut by_queue = hub.subscribe(Route::Queue("q".into()));
        let mut all = hub.subscribe(Route::All);
        let mut other = hub.subscribe(Route::Task("t2".into()));

        hub.publish(envelope("t1", 1, "alice", "q"));

        for (name, sub) in
            [("task", &mut by_task), ("creator", &mut by_creator), ("queue", &mut by_queue), ("all", &mut all)]
        {
            assert_eq!(sub.events.try_recv().map(|e| e.seq).ok(), Some(1), "{name} route");
        }
        assert!(other.events.try_recv().is_err(), "another task's subscriber sees nothing");
    }

    #[tokio::test]
    async fn a_full_buffer_drops_for_that_subscriber_only_and_flags_it() {
        let metrics = Metrics::new();
        let hub = Hub::new(2, metrics.clone());
        let mut slow = hub.subscribe(Route::All);
        let mut fast = hub.subscribe(Route::All);
        for seq in 1..=5 {
            hub.publish(envelope("t1", seq, "alice", "q"));
            let got = fast.events.recv().await.map(|e| e.seq);
            assert_eq!(got, Some(seq), "the fast subscriber gets every event in order");
        }
        assert_eq!(slow.events.len(), 2, "the slow buffer stays at its bound");
        assert_eq!(metrics.subscriber_overflows.get(), 3);
        assert!(slow.take_lagged(), "the slow subscriber must resync");
        assert!(slow.events.try_recv().is_err(), "resync discards the stale buffer");
        assert!(!slow.take_lagged(), "the flag clears");
    }

    #[tokio::test]
    async fn waiting_ends_with_an_event_or_after_the_idle_time() {
        let hub = Hub::new(2, Metrics::new());
        let mut sub = hub.subscribe(Route::All);
        assert!(matches!(sub.next_or_idle(std::time::Duration::from_millis(10)).await, Next::Idle));
        hub.publish(envelope("t1", 1, "a", "q"));
        assert!(matches!(sub.next_or_idle(std::time::Duration::from_secs(5)).await, Next::Event(e) if e.seq == 1));
    }

    #[tokio::test]
    async fn the_hub_knows_which_events_it_routed_without_a_gap() {
        let hub = Hub::new(8, Metrics::new());
        hub.publish(envelope("t1", 1, "a", "q"));
        hub.publish(envelope("t1", 2, "a", "q"));
        assert!(hub.unheard([("t1", 2)]).is_empty(), "everything up to 2 was routed");
        assert_eq!(hub.unheard([("t1", 3), ("t2", 1)]), [("t1".to_owned(), Some(2)), ("t2".to_owned(), None)]);

        hub.publish(envelope("t1", 4, "a", "q"));
        assert_eq!(hub.unheard([("t1", 4)]), [("t1".to_owned(), Some(2))], "3 is missing: the gap stays open");
        hub.publish(envelope("t1", 3, "a", "q"));
        hub.publish(envelope("t1", 4, "a", "q"));
        assert!(hub.unheard([("t1", 4)]).is_empty(), "the gap is filled");

        hub.forget_heard(std::time::Duration::ZERO);
        assert_eq!(hub.unheard([("t1", 4)]), [("t1".to_owned(), None)], "forgotten tasks count as unheard");
    }

    #[tokio::test]
    async fn an_event_routed_already_is_not_routed_again() {
        let metrics = Metrics::new();
        let hub = Hub::new(8, metrics.clone());
        let mut sub = hub.subscribe(Route::Queue("q".into()));
        // At commit, then the Kafka copy of the same event, then a redelivered older one.
        for seq in [1, 1, 2, 2, 1] {
            hub.publish(envelope("t1", seq, "a", "q"));
        }
        let got: Vec<u32> = std::iter::from_fn(|| sub.events.try_recv().ok()).map(|e| e.seq).collect();
        assert_eq!(got, [1, 2], "each event once, in order");
        assert_eq!(metrics.live_duplicates.get(), 3);

        // Past a gap only the events up to it count as routed: the missing one still passes.
        hub.publish(envelope("t1", 4, "a", "q"));
        hub.publish(envelope("t1", 3, "a", "q"));
        let got: Vec<u32> = std::iter::from_fn(|| sub.events.try_recv().ok()).map(|e| e.seq).collect();
        assert_eq!(got, [4, 3], "the gap's event is routed when it comes");

        // A task the hub forgot is routed again; subscribers drop what they have seen.
        hub.forget_heard(std::time::Duration::ZERO);
        hub.publish(envelope("t1", 4, "a", "q"));
        assert_eq!(sub.events.try_recv().map(|e| e.seq).ok(), Some(4));
        assert_eq!(metrics.live_duplicates.get(), 3);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let hub = Hub::new(2, Metrics::new());
        let sub = hub.subscribe(Route::Task("t1".into()));
        assert_eq!(hub.subscriber_count(), 1);
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
        hub.publish(envelope("t1", 1, "a", "q"));
    }
}
