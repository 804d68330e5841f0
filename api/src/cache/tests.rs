use chrono::Utc;
use taskwire_domain::{LeaseToken, TaskStatus};

use super::*;
use crate::redis_link::{RedisClient, RedisSettings, testing};

pub(crate) fn settings() -> CacheSettings {
    CacheSettings {
        l1_max_bytes: 1 << 20,
        l1_ttl: Duration::from_secs(5),
        l2_ttl: Duration::from_secs(60),
        null_ttl: Duration::from_secs(2),
        db_concurrency: 2,
    }
}

pub(crate) fn link(url: Option<&str>, prefix: &str) -> Arc<RedisLink> {
    let timeout = Duration::from_millis(500);
    let client = url.map(|u| RedisClient::from_url(u, timeout).expect("redis url"));
    let settings = RedisSettings { timeout, cooldown: Duration::from_secs(1), key_prefix: prefix.into() };
    Arc::new(RedisLink::new(client, settings, Metrics::new()))
}

fn task(version: u32, status: TaskStatus) -> Task {
    let now = taskwire_domain::task::at_storage_precision(Utc::now());
    Task {
        id: TaskId::generate(now),
        queue: "q".into(),
        kind: "k".into(),
        payload: Some(serde_json::json!({"n": 1})),
        priority: 3,
        status,
        attempts: 1,
        max_attempts: 5,
        run_at: now,
        deadline: None,
        created_by: "alice".into(),
        idempotency_key: Some("key".into()),
        worker_id: Some("w1".into()),
        lease_token: Some(LeaseToken::generate()),
        lease_expires_at: Some(now),
        result: None,
        last_error: Some("boom".into()),
        version,
        last_seq: version,
        created_at: now,
        updated_at: now,
    }
}

fn with_version(t: &Task, version: u32) -> Task {
    Task { version, ..t.clone() }
}

fn cached_version(cache: &TaskCache, id: TaskId) -> Option<u32> {
    match cache.0.l1.get(&id).map(|e| e.value) {
        Some(Value::Task(t)) => Some(t.version),
        _ => None,
    }
}

#[test]
fn the_l2_format_round_trips_without_the_lease_token() {
    let original = task(4, TaskStatus::Running);
    let decoded = codec::decode(&codec::encode(&Entry::task(Arc::new(original.clone())))).expect("decodes");
    assert_eq!(decoded.rank, 8);
    let Value::Task(back) = decoded.value else { panic!("a task") };
    assert_eq!(back.lease_token, None, "fencing tokens never reach Redis");
    assert_eq!(Task { lease_token: original.lease_token.clone(), ..(*back).clone() }, original);
    let tombstone = codec::decode(&codec::encode(&Entry::tombstone(4))).expect("decodes");
    assert!(matches!(tombstone.value, Value::Tombstone) && tombstone.rank == 7);
    assert!(matches!(codec::decode(&codec::encode(&Entry::missing())).map(|e| e.value), Some(Value::Missing)));
    for garbage in [&b""[..], b"x|T|{}", b"3|T|not json", b"3|Q|", b"3"] {
        assert!(codec::decode(garbage).is_none(), "{:?} is a miss", String::from_utf8_lossy(garbage));
    }
}

#[test]
fn a_tombstone_refuses_older_versions_and_takes_the_version_it_names() {
    let cache = TaskCache::new(settings(), link(None, "t"), Metrics::new());
    let v3 = task(3, TaskStatus::Queued);
    let id = v3.id;
    cache.l1_put(id, Entry::tombstone(4));
    cache.l1_put(id, Entry::task(Arc::new(v3.clone())));
    assert_eq!(cached_version(&cache, id), None, "a read of version 3 cannot undo the news of version 4");
    cache.l1_put(id, Entry::task(Arc::new(with_version(&v3, 4))));
    assert_eq!(cached_version(&cache, id), Some(4), "version 4 replaces its own tombstone");
    cache.l1_put(id, Entry::missing());
    assert_eq!(cached_version(&cache, id), Some(4), "'missing' never replaces a task");
    assert!(cache.0.metrics.cache_stale_writes.get() >= 2);
}

#[test]
fn a_commit_in_this_process_beats_a_slower_read_of_the_previous_version() {
    let cache = TaskCache::new(settings(), link(None, "t"), Metrics::new());
    let v1 = task(1, TaskStatus::Queued);
    cache.committed(&with_version(&v1, 2));
    cache.l1_put(v1.id, Entry::task(Arc::new(v1.clone())));
    assert_eq!(cached_version(&cache, v1.id), Some(2));
}

#[tokio::test]
async fn a_thousand_concurrent_misses_on_one_id_load_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = taskwire_store::testing::test_store(dir.path()).await;
    let cache = TaskCache::new(settings(), link(None, "t"), Metrics::new());
    let id = TaskId::generate(Utc::now());
    let reads = (0..1000).map(|_| {
        let (cache, store) = (cache.clone(), store.clone());
        tokio::spawn(async move { cache.get_many(&store, &[id]).await })
    });
    for read in futures::future::join_all(reads).await {
        assert!(read.expect("joins").expect("reads").is_empty(), "no such task");
    }
    assert_eq!(cache.0.metrics.cache_db_loads.get(), 1, "one load for a thousand readers");
    assert!(cache.0.inflight.lock().expect("lock").is_empty(), "in-flight entries are cleaned up");
}

#[tokio::test]
async fn with_redis_a_second_process_reads_from_l2_and_respects_tombstones() {
    for url in testing::test_redis_urls("with_redis_a_second_process_reads_from_l2_and_respects_tombstones") {
        let prefix = testing::unique_prefix();
        let metrics = Metrics::new();
        let one = TaskCache::new(settings(), testing::connected_link(&url, &prefix, &metrics).await, metrics.clone());
        let two = TaskCache::new(settings(), testing::connected_link(&url, &prefix, &metrics).await, metrics.clone());
        let settled = task(5, TaskStatus::Succeeded);
        let id = settled.id;

        one.l2_put(vec![(id, Entry::task(Arc::new(settled.clone())))]).await;
        let read = two.l2_get(&[id]).await.expect("redis answers");
        assert!(
            matches!(&read[0], Some(Entry { rank: 10, value: Value::Task(_) })),
            "{url}: process two sees the fill"
        );

        two.l2_put(vec![(id, Entry::tombstone(6))]).await;
        one.l2_put(vec![(id, Entry::task(Arc::new(settled.clone())))]).await;
        let read = one.l2_get(&[id]).await.expect("redis answers");
        assert!(
            matches!(&read[0], Some(Entry { rank: 11, value: Value::Tombstone })),
            "{url}: a stale fill cannot overwrite the tombstone of a newer version"
        );
        one.l2_put(vec![(id, Entry::task(Arc::new(with_version(&settled, 6))))]).await;
        let read = two.l2_get(&[id]).await.expect("redis answers");
        assert!(matches!(&read[0], Some(Entry { rank: 12, .. })), "{url}: the newer version replaces its tombstone");
    }
}

#[tokio::test]
async fn a_batch_of_tasks_on_many_slots_is_written_by_one_process_and_read_in_order_by_another() {
    let test = "a_batch_of_tasks_on_many_slots_is_written_by_one_process_and_read_in_order_by_another";
    for url in testing::test_redis_urls(test) {
        let prefix = testing::unique_prefix();
        let metrics = Metrics::new();
        let one_link = testing::connected_link(&url, &prefix, &metrics).await;
        let one = TaskCache::new(settings(), one_link.clone(), metrics.clone());
        let two = TaskCache::new(settings(), testing::connected_link(&url, &prefix, &metrics).await, metrics.clone());
        let tasks: Vec<Task> = (1..=64).map(|v| task(v, TaskStatus::Succeeded)).collect();
        let slots: std::collections::HashSet<_> = tasks
            .iter()
            .map(|t| redis::cluster_routing::Slot::for_key(one_link.key(&format!("task:{}", t.id))))
            .collect();
        assert!(slots.len() > 1, "the task keys span several hash slots ({} here)", slots.len());

        one.l2_put(tasks.iter().map(|t| (t.id, Entry::task(Arc::new(t.clone())))).collect()).await;
        // Interleave unknown ids, so the answer's order is checked, not just its contents.
        let unknown: Vec<TaskId> = (0..8).map(|_| TaskId::generate(Utc::now())).collect();
        let mut ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        for (i, id) in unknown.iter().enumerate() {
            ids.insert(i * 9, *id);
        }
        let read = two.l2_get(&ids).await.expect("redis answers one MGET over every slot");
        assert_eq!(read.len(), ids.len(), "{url}");
        for (id, entry) in ids.iter().zip(&read) {
            match tasks.iter().find(|t| t.id == *id) {
                Some(t) => assert!(
                    matches!(entry, Some(Entry { rank, value: Value::Task(read) }) if *rank == 2 * u64::from(t.version) && read.id == t.id),
                    "{url}: task {id} (version {}) comes back in its place: {entry:?}",
                    t.version
                ),
                None => assert!(entry.is_none(), "{url}: unknown id {id} is a miss"),
            }
        }

        // The rank guard holds on every slot: older versions bounce off, newer ones land.
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        let older: Vec<_> =
            tasks.iter().map(|t| (t.id, Entry::task(Arc::new(with_version(t, t.version - 1))))).collect();
        two.l2_put(older).await;
        let read = one.l2_get(&ids).await.expect("redis answers");
        for (t, entry) in tasks.iter().zip(&read) {
            assert!(
                matches!(entry, Some(Entry { rank, .. }) if *rank == 2 * u64::from(t.version)),
                "{url}: task {} keeps version {} against an older write: {entry:?}",
                t.id,
                t.version
            );
        }
        let newer: Vec<_> = tasks.iter().map(|t| (t.id, Entry::tombstone(t.version + 1))).collect();
        two.l2_put(newer).await;
        let read = one.l2_get(&ids).await.expect("redis answers");
        for (t, entry) in tasks.iter().zip(&read) {
            assert!(
                matches!(entry, Some(Entry { rank, value: Value::Tombstone }) if *rank == 2 * u64::from(t.version) + 1),
                "{url}: task {} holds the tombstone of version {}: {entry:?}",
                t.id,
                t.version + 1
            );
        }
    }
}

#[test]
fn l1_is_bounded_by_memory_not_by_a_count_of_tasks() {
    let small = Entry::task(Arc::new(task(1, TaskStatus::Queued)));
    let mut big_task = task(1, TaskStatus::Queued);
    big_task.payload = Some(serde_json::json!({ "blob": "x".repeat(60_000) }));
    let big = Entry::task(Arc::new(big_task));
    assert!(estimated_size(&big) > 60_000, "a 60 KB payload weighs what it holds");
    assert!(estimated_size(&small) < 2_000);

    let mut tight = settings();
    tight.l1_max_bytes = 1 << 20;
    let cache = TaskCache::new(tight, link(None, "t"), Metrics::new());
    for _ in 0..100 {
        let mut t = task(1, TaskStatus::Queued);
        t.payload = Some(serde_json::json!({ "blob": "x".repeat(60_000) }));
        cache.committed(&t);
    }
    cache.0.l1.run_pending_tasks();
    assert!(cache.0.l1.weighted_size() <= 1 << 20, "100 × 60 KB never exceed 1 MiB");
    assert!(cache.0.l1.entry_count() < 100);
}

#[test]
fn an_event_for_a_task_nobody_reads_leaves_no_tombstone_but_one_for_a_cached_task_does() {
    let cache = TaskCache::new(settings(), link(None, "t"), Metrics::new());
    let cold = task(1, TaskStatus::Queued);
    let warm = task(1, TaskStatus::Queued);
    cache.committed(&warm);

    cache.invalidate_local(cold.id, 2);
    cache.invalidate_local(warm.id, 2);

    assert!(!cache.0.l1.contains_key(&cold.id), "nothing cached, nothing loading: no tombstone");
    assert!(matches!(cache.0.l1.get(&warm.id).map(|e| e.value), Some(Value::Tombstone)));
}

#[tokio::test]
async fn an_announced_version_is_a_tombstone_in_l2_that_a_slower_fill_cannot_overwrite() {
    let test = "an_announced_version_is_a_tombstone_in_l2_that_a_slower_fill_cannot_overwrite";
    for url in testing::test_redis_urls(test) {
        let prefix = testing::unique_prefix();
        let metrics = Metrics::new();
        let relay = TaskCache::new(settings(), testing::connected_link(&url, &prefix, &metrics).await, metrics.clone());
        let reader =
            TaskCache::new(settings(), testing::connected_link(&url, &prefix, &metrics).await, metrics.clone());
        let cached = task(3, TaskStatus::Running);
        reader.l2_put(vec![(cached.id, Entry::task(Arc::new(cached.clone())))]).await;
        let unseen = TaskId::generate(Utc::now());

        relay.announce(&[(cached.id, 4), (unseen, 1)]).await;
        reader.l2_put(vec![(cached.id, Entry::task(Arc::new(cached.clone())))]).await;

        let read = reader.l2_get(&[cached.id, unseen]).await.expect("redis answers");
        assert!(
            matches!(&read[0], Some(Entry { rank: 7, value: Value::Tombstone })),
            "{url}: version 3 in L2 gave way to the tombstone of version 4 and stays out: {:?}",
            read[0]
        );
        assert!(
            matches!(&read[1], Some(Entry { rank: 1, value: Value::Tombstone })),
            "{url}: a task nobody cached gets its tombstone too: {:?}",
            read[1]
        );
    }
}
