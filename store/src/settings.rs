//! Queue settings as the task paths read them: from a cache at most
//! [`QUEUE_SETTINGS_TTL`] old.
//!
//! Every create (its queue's default `maxAttempts`), transition batch, sweep, heartbeat
//! and matcher round needs the settings of the queues involved. Read from the database
//! each time, it would be the most frequent `SELECT` of all. Settings change only through `configureQueue`, `pauseQueue` and
//! `resumeQueue` ([`Store::save_queue`]): this process forgets its copy when it saves
//! one, and other processes read the change within the time-to-live. A plain read of
//! the database is no stronger: it is not locked, so a change committed just after it is
//! not seen either. The admin API's own reads (`queue`, `queues`, and the mutations'
//! read-modify-write) still go to the database ([`Store::queue_settings`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use taskwire_domain::{QueueName, QueueSettings};
use taskwire_entity::queue;

#[cfg(doc)]
use super::Store;
use super::{admin::settings_from_row, shape};
use crate::error::StoreResult;

/// How long a process may act on queue settings another process has since changed.
pub(crate) const QUEUE_SETTINGS_TTL: Duration = Duration::from_secs(1);

/// Queues whose settings are kept; the least recently used beyond that are dropped.
const CAPACITY: u64 = 10_000;

/// Cached [`QueueSettings`] by queue name (defaults for queues never configured). Cheap to
/// clone: clones share the entries.
#[derive(Debug, Clone)]
pub(super) struct SettingsCache {
    entries: moka::sync::Cache<String, QueueSettings>,
    /// Bumped by every [`SettingsCache::forget`]: a read that started before a save does
    /// not put the settings it read back into the cache after the save forgot them.
    generation: Arc<AtomicU64>,
}

impl SettingsCache {
    /// An empty cache whose entries live for `ttl`.
    pub(super) fn new(ttl: Duration) -> SettingsCache {
        SettingsCache {
            entries: moka::sync::Cache::builder().max_capacity(CAPACITY).time_to_live(ttl).build(),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The settings of each queue named; those not cached are read on `conn` (inside the
    /// caller's transaction when it has one) in one statement. Invalid names are left out.
    pub(super) async fn get_many<'a, C: ConnectionTrait>(
        &self,
        conn: &C,
        names: impl IntoIterator<Item = &'a str>,
    ) -> StoreResult<HashMap<String, QueueSettings>> {
        let names: HashSet<&str> = names.into_iter().collect();
        let mut out = HashMap::with_capacity(names.len());
        let mut missing = Vec::new();
        for name in names {
            match self.entries.get(name) {
                Some(settings) => {
                    out.insert(name.to_owned(), settings);
                }
                None => missing.push(name),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let read = read(conn, missing).await?;
        self.keep(generation, &read);
        out.extend(read);
        Ok(out)
    }

    /// Caches settings read when the generation was `read_at`, unless a save came since.
    fn keep(&self, read_at: u64, read: &HashMap<String, QueueSettings>) {
        if self.generation.load(Ordering::Acquire) != read_at {
            return;
        }
        for (name, settings) in read {
            self.entries.insert(name.clone(), settings.clone());
        }
    }

    /// Drops the copy of `name`'s settings, after they were saved.
    pub(super) fn forget(&self, name: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(name);
    }
}

/// The settings of each queue named, read from the database on `conn` (inside a
/// transaction, so it never needs a second pooled connection while holding one). Invalid
/// names are left out; valid ones never configured get the defaults.
async fn read<'a, C: ConnectionTrait>(
    conn: &C,
    names: impl IntoIterator<Item = &'a str>,
) -> StoreResult<HashMap<String, QueueSettings>> {
    let names: HashSet<&str> = names.into_iter().collect();
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let rows =
        queue::Entity::find().filter(queue::Column::Name.is_in(shape::padded(names.iter().copied()))).all(conn).await?;
    let mut out = HashMap::with_capacity(names.len());
    for row in rows {
        let settings = settings_from_row(row)?;
        out.insert(settings.name.to_string(), settings);
    }
    for name in names {
        if !out.contains_key(name)
            && let Ok(parsed) = QueueName::parse(name)
        {
            out.insert(name.to_owned(), QueueSettings::defaults(parsed));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::*;
    use crate::testing::test_store;

    fn pause_behind_the_cache(name: &str) -> Statement {
        // Another process's save, as far as this one can tell.
        Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO queues (name, paused, created_at, updated_at) VALUES (?, 1, 0, 0)",
            [name.into()],
        )
    }

    #[tokio::test]
    async fn a_cached_copy_costs_no_statement_until_it_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let cache = SettingsCache::new(Duration::from_secs(60));
        let first = cache.get_many(&store.db, ["mail"]).await.expect("read");
        assert!(!first["mail"].paused, "defaults for a queue never configured");

        store.db.execute_raw(pause_behind_the_cache("mail")).await.expect("paused elsewhere");
        let before = store.stats.statements();
        let cached = cache.get_many(&store.db, ["mail", "not a valid name!"]).await.expect("read");
        assert!(!cached["mail"].paused, "the cached copy, within the time-to-live");
        assert!(!cached.contains_key("not a valid name!"), "invalid names are left out");
        let only_the_invalid_name = store.stats.statements() - before;
        assert_eq!(only_the_invalid_name, 1, "the cached queue cost no statement");
    }

    #[tokio::test]
    async fn another_processs_change_is_read_once_the_copy_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let ttl = Duration::from_millis(50);
        let cache = SettingsCache::new(ttl);
        assert!(!cache.get_many(&store.db, ["mail"]).await.expect("read")["mail"].paused);
        store.db.execute_raw(pause_behind_the_cache("mail")).await.expect("paused elsewhere");
        tokio::time::sleep(ttl * 4).await;
        let later = cache.get_many(&store.db, ["mail"]).await.expect("read");
        assert!(later["mail"].paused, "another process's change, once the copy expired");
    }

    #[tokio::test]
    async fn a_save_in_this_process_is_seen_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let read = store.queue_settings_many(["mail"]).await.expect("read");
        assert!(!read["mail"].paused);
        let mut paused = read["mail"].clone();
        paused.paused = true;
        store.save_queue(&paused).await.expect("saved");
        let read = store.queue_settings_many(["mail"]).await.expect("read");
        assert!(read["mail"].paused, "forgotten on save, not kept for the time-to-live");
    }

    #[tokio::test]
    async fn a_read_that_raced_a_save_is_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let cache = SettingsCache::new(Duration::from_secs(60));
        // A read starts; a save forgets the queue before the read comes back. What the
        // read brings may predate the save, so it is used once but not cached.
        let read_at = cache.generation.load(Ordering::Acquire);
        let stale = read(&store.db, ["mail"]).await.expect("read");
        cache.forget("mail");
        cache.keep(read_at, &stale);
        assert!(cache.entries.get("mail").is_none(), "the raced read was dropped");
        // A read after the save is cached as usual.
        let read_at = cache.generation.load(Ordering::Acquire);
        cache.keep(read_at, &stale);
        assert!(cache.entries.get("mail").is_some());
    }
}
