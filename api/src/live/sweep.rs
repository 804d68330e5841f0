//! The history sweep: routes to the hub the status events Kafka lost or skipped.
//!
//! Live events normally reach the hub in milliseconds through Kafka. A broker outage, a
//! lost message or an offset reset can leave a task's last events unheard, and a
//! subscriber would then wait for them forever. Instead of every idle subscriber reading
//! the history itself (one query per idle subscriber every few seconds), this one task per process reads the `(task, seq)` of the events
//! committed a few seconds ago, asks the hub which it has not routed
//! ([`Hub::unheard`]), and routes those from `task_events`, invalidating the cache as the
//! status consumer would. Subscribers de-duplicate by `seq`, so an event that arrives both
//! ways is delivered once.
//!
//! Events younger than [`GRACE`] are left to Kafka, so normal delivery lag is not
//! mistaken for loss. Each sweep overlaps the previous one by [`OVERLAP`] to cover events
//! that committed after later-stamped ones. The window only advances after a successful
//! read; after a long database outage it covers at most [`MAX_WINDOW`], read in pages.
//! With no subscriber in the process it reads nothing.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use taskwire_domain::{EnvelopeType, TaskEnvelope, TaskId};
use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::{cache::TaskCache, error::ApiResult, metrics::Metrics};
use taskwire_store::Store;

/// Time between sweeps.
pub const EVERY: Duration = Duration::from_secs(2);
/// Age before an event not heard through Kafka counts as missed.
pub const GRACE: Duration = Duration::from_secs(3);
/// How far each sweep reaches back before where the previous one ended.
pub const OVERLAP: Duration = Duration::from_secs(5);
/// The longest stretch of history one sweep covers (after a database outage).
pub const MAX_WINDOW: Duration = Duration::from_secs(300);
/// How long the hub remembers a task it routed an event of. Covers a normal sweep window
/// (about 10 s) with room to spare; a task forgotten sooner only has its in-window events
/// routed again, and subscribers drop those as duplicates.
pub const REMEMBER: Duration = Duration::from_secs(60);
/// Event heads read per query.
const PAGE: u64 = 5_000;
/// Events of one task routed per sweep (a task with more resumes next sweep).
const TASK_EVENTS: u64 = 500;

/// One sweeper; [`Sweeper::run`] owns it until shutdown.
pub struct Sweeper {
    hub: Arc<Hub>,
    store: Store,
    cache: TaskCache,
    metrics: Metrics,
    /// Where the next sweep starts (before the overlap).
    from: DateTime<Utc>,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper").field("from", &self.from).finish_non_exhaustive()
    }
}

impl Sweeper {
    /// A sweeper covering events from now on (the status consumer starts at the end of
    /// the topic too; earlier events have no subscribers in this process yet).
    pub fn new(hub: Arc<Hub>, store: Store, cache: TaskCache, metrics: Metrics) -> Self {
        Sweeper { hub, store, cache, metrics, from: Utc::now() }
    }

    /// Sweeps every [`EVERY`] until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.sweep(Utc::now()).await {
                // The window does not advance: the next sweep covers this one too.
                tracing::warn!(error = ?e, "history sweep failed; retrying");
            }
        }
        tracing::info!("history sweep stopped");
    }

    /// Routes the events of `[from - OVERLAP, now - GRACE)` the hub has not heard of;
    /// returns how many it routed.
    pub async fn sweep(&mut self, now: DateTime<Utc>) -> ApiResult<u64> {
        let until = now - GRACE;
        let from = (self.from - OVERLAP).max(until - MAX_WINDOW);
        if from >= until {
            return Ok(0);
        }
        if self.hub.subscriber_count() == 0 {
            // Nobody to deliver to (a new subscriber reads the history itself first).
            self.from = until;
            return Ok(0);
        }
        let mut routed = 0;
        let mut after = None;
        loop {
            let heads = self.store.event_heads(from, until, after, PAGE).await?;
            let full = heads.len() as u64 == PAGE;
            after = heads.last().map(|h| (h.at, h.id));
            // Per task: the highest seq in this page and the lowest one.
            let mut tasks: HashMap<&str, (u32, u32)> = HashMap::new();
            for head in &heads {
                let range = tasks.entry(head.task_id.as_str()).or_insert((head.seq, head.seq));
                range.0 = range.0.max(head.seq);
                range.1 = range.1.min(head.seq);
            }
            let unheard = self.hub.unheard(tasks.iter().map(|(task, (max, _))| (*task, *max)));
            for (task, heard) in unheard {
                let Some(id) = TaskId::parse(&task) else { continue };
                let lowest = tasks.get(task.as_str()).map_or(1, |(_, min)| *min);
                routed += self.route(id, heard.unwrap_or(lowest.saturating_sub(1))).await?;
            }
            if !full {
                break;
            }
        }
        self.from = until;
        self.hub.forget_heard(REMEMBER);
        if routed > 0 {
            // One line per sweep: during a broker outage every event comes this way.
            tracing::warn!(events = routed, "live events were missed; routed from task_events");
        }
        Ok(routed)
    }

    /// Routes the events of `id` after `after`, as the status consumer would.
    async fn route(&self, id: TaskId, after: u32) -> ApiResult<u64> {
        let Some(task) = self.store.task(id).await? else { return Ok(0) };
        let events = self.store.events_after(id, after, TASK_EVENTS).await?;
        let count = events.len() as u64;
        if let Some(last) = events.last() {
            tracing::debug!(task = %id, from = after + 1, to = last.seq, "routing missed live events");
        }
        if count > 0 {
            self.cache.invalidate_local(id, task.version);
        }
        for event in &events {
            let envelope = TaskEnvelope::new(EnvelopeType::Status, &task, event);
            self.metrics.live_events_recovered.inc();
            self.hub.publish(envelope);
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;
    use taskwire_domain::{CreateTaskInput, NewTask};

    use super::*;
    use crate::{cache, live::Route};
    use taskwire_store::{CreateMode, CreateOutcome, testing::test_store};

    fn cache(metrics: &Metrics) -> TaskCache {
        TaskCache::new(cache::tests::settings(), cache::tests::link(None, "t"), metrics.clone())
    }

    /// A store, a hub and its sweeper.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        metrics: Metrics,
        hub: Arc<Hub>,
        sweeper: Sweeper,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = test_store(dir.path()).await;
            let metrics = Metrics::new();
            let hub = Hub::new(16, metrics.clone());
            let sweeper = Sweeper::new(hub.clone(), store.clone(), cache(&metrics), metrics.clone());
            Fixture { _dir: dir, store, metrics, hub, sweeper }
        }
    }

    async fn create(store: &Store) -> taskwire_domain::Task {
        let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
        let new = NewTask::parse(input, "alice", Utc::now()).expect("valid input");
        match store.create_tasks(vec![new], CreateMode::AllOrNothing, None).await.expect("created").pop() {
            Some(CreateOutcome::Created(task)) => task,
            other => panic!("created, not {other:?}"),
        }
    }

    #[tokio::test]
    async fn events_kafka_did_not_deliver_are_routed_once_after_the_grace_time() {
        let Fixture { _dir, store, metrics, hub, mut sweeper } = Fixture::new().await;
        let mut all = hub.subscribe(Route::All);

        let missed = create(&store).await;
        let delivered = create(&store).await;
        // Kafka delivers the second task's event, not the first's.
        let event = store.events_after(delivered.id, 0, 10).await.expect("history").remove(0);
        hub.publish(TaskEnvelope::new(EnvelopeType::Status, &delivered, &event));
        assert_eq!(all.events.try_recv().map(|e| e.task_id.clone()).ok(), Some(delivered.id.to_string()));

        let now = Utc::now();
        assert_eq!(sweeper.sweep(now).await.expect("sweep"), 0, "events younger than the grace time are Kafka's");
        let later = now + GRACE + chrono::Duration::seconds(1);
        assert_eq!(sweeper.sweep(later).await.expect("sweep"), 1, "only the missed event is routed");
        let routed = all.events.try_recv().expect("the missed event reaches subscribers");
        assert_eq!((routed.task_id.as_str(), routed.seq), (missed.id.to_string().as_str(), 1));
        assert_eq!((routed.queue.as_str(), routed.created_by.as_str()), ("q", "alice"), "routed like a live event");
        assert_eq!(metrics.live_events_recovered.get(), 1);

        let again = later + EVERY;
        assert_eq!(sweeper.sweep(again).await.expect("sweep"), 0, "the overlap does not route it twice");
        assert!(all.events.try_recv().is_err());
    }

    #[tokio::test]
    async fn without_subscribers_nothing_is_read_or_routed() {
        let Fixture { _dir, store, hub, mut sweeper, .. } = Fixture::new().await;
        create(&store).await;
        let later = Utc::now() + GRACE + chrono::Duration::seconds(1);
        assert_eq!(sweeper.sweep(later).await.expect("sweep"), 0);
        let past_overlap = later + OVERLAP + EVERY;
        assert_eq!(sweeper.sweep(past_overlap).await.expect("sweep"), 0);

        let mut all = hub.subscribe(Route::All);
        assert_eq!(sweeper.sweep(past_overlap + EVERY).await.expect("sweep"), 0, "skipped windows stay skipped");
        assert!(all.events.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_failed_sweep_does_not_advance_the_window() {
        let Fixture { _dir, store, hub, mut sweeper, .. } = Fixture::new().await;
        let mut all = hub.subscribe(Route::All);
        let task = create(&store).await;

        store.connection().execute_unprepared("ALTER TABLE task_events RENAME TO away").await.expect("hidden");
        let later = Utc::now() + MAX_WINDOW / 2;
        assert!(sweeper.sweep(later).await.is_err(), "the history cannot be read");
        store.connection().execute_unprepared("ALTER TABLE away RENAME TO task_events").await.expect("restored");

        assert_eq!(sweeper.sweep(later + EVERY).await.expect("sweep"), 1, "the next sweep covers the failed one");
        assert_eq!(all.events.try_recv().map(|e| e.task_id.clone()).ok(), Some(task.id.to_string()));
    }
}
