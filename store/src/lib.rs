//! # taskwire-store
//!
//! Taskwire's persistence: the SeaORM repository, the only code that speaks SQL.
//!
//! It depends on the domain and the entities, never on the service above it: it takes
//! narrow [`DatabaseSettings`] and the Kafka [`Topics`] its outbox rows go to, answers
//! with its own [`StoreError`], counts into [`StoreMetrics`] the application registers,
//! and tells [`CommitListener`]s about every change it committed.
//!
//! Every state change of a task is one transaction that updates the row conditionally
//! on its version, appends the event and writes the outbox rows (README, Task lifecycle).
//! The same code runs on MySQL/MariaDB and SQLite; on SQLite, write
//! transactions are serialised in-process (SQLite has one writer anyway, and this turns
//! `SQLITE_BUSY` upgrade failures into orderly waiting).

// A panic on anything a user, the network or a dependency can reach is an outage:
// production code returns errors instead (tests may panic; see clippy.toml).
#![warn(clippy::expect_used)]
#![warn(missing_docs)]

/// Two tests of one check (an `async fn(&Store)`): `$sqlite` runs it on a fresh SQLite
/// file, `$mysql` on a fresh MySQL schema (`testing::mysql_test_store`; it says it skipped when
/// `TASKWIRE_TEST_DATABASE_URL` is not set). Defined before the modules that use it.
#[cfg(test)]
macro_rules! on_both_backends {
    ($check:ident, $sqlite:ident, $mysql:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let dir = tempfile::tempdir().expect("tempdir");
            $check(&crate::testing::test_store(dir.path()).await).await;
        }

        #[tokio::test]
        async fn $mysql() {
            let Some(store) = crate::testing::mysql_test_store(stringify!($mysql)).await else { return };
            $check(&store).await;
        }
    };
}

mod admin;
mod coalesce;
mod contention;
mod convert;
mod dispatch;
mod error;
mod events;
mod gate;
mod metrics;
mod outbox;
mod recent;
mod retention;
mod roster;
mod settings;
mod shape;
mod tasks;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod wal;

pub(crate) use settings::QUEUE_SETTINGS_TTL;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    QueryFilter,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use taskwire_domain::EnvelopeType;
use taskwire_entity::worker;
use tokio::sync::{Mutex, Notify};

pub use admin::Leases;
pub(crate) use contention::ConflictPath;
pub use dispatch::{Due, Limited, OfferOutcome, Offers, PlannedOffer};
pub use error::{StoreError, StoreResult};
pub use events::{EventHead, EventScope, QueueStats};
pub(crate) use gate::{Writer, Writing};
pub use metrics::{StoreMetrics, WriteGateMetrics};
pub use outbox::{BACKLOG_EXACT_UP_TO, OutboxMessage};
pub use roster::RosterChanges;
pub use tasks::{CreateMode, CreateOutcome, TaskListQuery, TaskScope};
pub use wal::run_checkpointer;

use taskwire_domain::machine::Transition;

/// Makes READ COMMITTED the isolation level of a new MySQL/MariaDB connection's
/// transactions (see [`gate::Writing::begin_read_committed`] for why every transaction
/// of the store runs at it). Set once per connection instead of with a `SET TRANSACTION`
/// before each transaction: that was one statement in eleven under dispatch load
/// (docs/BENCHMARKS.md).
async fn read_committed(conn: &mut sea_orm::sqlx::MySqlConnection) -> Result<(), sea_orm::sqlx::Error> {
    use sea_orm::sqlx::Executor;
    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await.map(|_| ())
}

/// Counters about the database traffic of this process.
#[derive(Debug, Default)]
pub struct DbStats {
    outbox_statements: AtomicU64,
    other_statements: AtomicU64,
}

impl DbStats {
    /// SQL statements executed so far (including `BEGIN`/`COMMIT` where the driver issues
    /// them), but for the WAL checkpointer's housekeeping (see `wal`).
    pub fn statements(&self) -> u64 {
        self.outbox_statements.load(Ordering::Relaxed) + self.statements_outside_outbox()
    }

    /// Statements that touch no `outbox` table: what serving requests costs, without
    /// the relay running beside it. A counter of its own, so that reading it while the
    /// relay runs cannot be off by one.
    pub fn statements_outside_outbox(&self) -> u64 {
        self.other_statements.load(Ordering::Relaxed)
    }
}

/// Kafka topic names derived from the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics `<prefix>.tasks.dispatch`, `.status` and `.dead`.
    pub fn new(prefix: &str) -> Self {
        Topics { prefix: prefix.to_owned() }
    }

    /// The topic an envelope of `kind` goes to.
    pub fn for_envelope(&self, kind: EnvelopeType) -> String {
        format!("{}.{}", self.prefix, kind.topic_suffix())
    }

    /// All three topics.
    pub fn all(&self) -> Vec<String> {
        [EnvelopeType::Dispatch, EnvelopeType::Status, EnvelopeType::Dead].map(|k| self.for_envelope(k)).to_vec()
    }
}

/// A registered worker, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    /// The worker's id (its token's `sub`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Queues it serves.
    pub queues: Vec<String>,
    /// Concurrent tasks it accepts.
    pub capacity: u32,
    /// Tasks currently offered to or running on it.
    pub active: u32,
    /// `ONLINE`, `DRAINING` or `OFFLINE`.
    pub status: String,
    /// Last heartbeat or connection.
    pub last_seen_at: chrono::DateTime<chrono::Utc>,
    /// Takes its offers as they come: the matcher starts the tasks it offers to it.
    pub auto_accept: bool,
}

/// Handle to the database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    topics: Topics,
    /// SQLite's write gate (see `gate`); `None` on MySQL.
    write_gate: Option<Arc<Mutex<()>>>,
    /// What writes go through (see `gate::Writing`): on SQLite a connection of its own,
    /// taken only under the gate; on MySQL the pool itself.
    writer: DatabaseConnection,
    /// Where the write gate's use, lock conflicts (see `contention`) and offers held
    /// back by queue limits are counted, once the application has metrics.
    metrics: Arc<std::sync::OnceLock<StoreMetrics>>,
    stats: Arc<DbStats>,
    outbox_signal: Arc<Notify>,
    dispatch_signal: Arc<Notify>,
    /// Queues of the committers of creates and transitions (see `coalesce`); `None` in
    /// the handle the committers themselves use.
    writes: Option<coalesce::Queues>,
    /// Told about every change committed (the cache's write-through, the local hub and
    /// the local matcher).
    listeners: Arc<std::sync::RwLock<Listeners>>,
    /// Queue settings for the task paths (see `settings`).
    settings: settings::SettingsCache,
    /// The tasks as this process last committed them (see `recent`).
    recent: recent::RecentTasks,
    /// What this process changed about workers, for its dispatcher (see `roster`).
    roster: RosterChanges,
}

/// The commit listeners at one moment; replaced whole when one is added.
type Listeners = Arc<[Arc<dyn CommitListener>]>;

/// Something this process tells about every change it committed, right after the
/// commit and before the outbox relay has published the change's events: the cache
/// writes the task through, the live hub routes the event to local subscribers, the
/// matcher takes a task that became `QUEUED`. Other processes learn the same change from
/// Kafka; a listener must therefore tolerate seeing it a second time from there.
///
/// Called on the committing task, once per change, in commit order: an implementation
/// must not block or await (hand the work to a queue of its own instead).
pub trait CommitListener: Send + Sync + std::fmt::Debug {
    /// `change` was committed (a creation has no `previous_status` in its event);
    /// `traceparent` is the W3C trace context of the request that made it.
    fn committed(&self, change: &Transition, traceparent: Option<&str>);
}

/// The narrow settings the store needs (the application's configuration assembles them).
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSettings {
    /// `sqlite:…` (embedded) or `mysql://…` / `mariadb://…`.
    pub url: String,
    /// Pool size (on SQLite the readers; writes have one connection of their own).
    pub max_connections: u32,
    /// Wait for a pooled connection before [`StoreError::Unavailable`].
    pub acquire_timeout: Duration,
    /// Prepared statements kept per MySQL connection.
    pub statement_cache: usize,
}

impl DatabaseSettings {
    /// Whether the URL names MySQL/MariaDB (production mode) rather than SQLite.
    pub fn is_mysql(&self) -> bool {
        is_mysql_url(&self.url)
    }
}

/// Whether `url` names MySQL/MariaDB.
pub fn is_mysql_url(url: &str) -> bool {
    url.starts_with("mysql://") || url.starts_with("mariadb://")
}

/// A pooled MySQL connection idle for at least this long is pinged before it is handed
/// out; one used more recently is not. sqlx pings every connection when it goes back to
/// the pool anyway (a connection broken during use is closed there), so pinging again on
/// every checkout doubles the round trips of a busy connection. What this leaves open: a connection the server drops in the
/// second after its last use fails one statement, and the pool then replaces it.
pub(crate) const MYSQL_PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Committers of creates and transitions on MySQL/MariaDB, at most (and at most one per
/// two pooled connections; SQLite has one: it has one writer). They take turns at both
/// queues (transitions first), and creates and workers' transitions that waited together
/// commit in one transaction (see `coalesce`). Two overlap one batch's commit with the next
/// batch's statements, as two create committers did; a second committer of transitions
/// alone once cost MariaDB about a tenth more CPU per task, while the shared two measured
/// the same CPU as before and fewer transactions per task (docs/benchmarks-history.md,
/// thirteenth session).
pub(crate) const COMMITTERS_MYSQL: usize = 2;

impl Store {
    /// Connects with the configured pool; creates the SQLite file's directory if needed.
    /// Outbox rows name topics of `topics`.
    pub async fn connect(settings: &DatabaseSettings, topics: Topics) -> Result<Store, DbErr> {
        let url = &settings.url;
        let sqlite = url.starts_with("sqlite:");
        if sqlite
            && let Some(parent) = sqlite_path(url).and_then(|p| p.parent().map(Path::to_owned))
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(&parent)
                .map_err(|e| DbErr::Custom(format!("creating {}: {e}", parent.display())))?;
        }
        let mut options = ConnectOptions::new(url.clone());
        options
            .max_connections(settings.max_connections)
            .min_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_timeout(Duration::from_secs(5))
            .sqlx_logging(false);
        if sqlite {
            // A file connection cannot go stale: no ping before each use.
            options.test_before_acquire(false).map_sqlx_sqlite_opts(sqlite_options);
        } else {
            // Every distinct statement text is prepared once per connection and cached.
            // `shape` keeps the texts to a few dozen; the cache size is headroom above that
            // (replacing an evicted statement stalls MariaDB commits, see `shape`).
            let cache = settings.statement_cache;
            options
                .map_sqlx_mysql_opts(move |o| o.statement_cache_capacity(cache))
                .map_sqlx_mysql_pool_opts(|pool| pool.after_connect(|conn, _| Box::pin(read_committed(conn))))
                .test_before_acquire_if_idle_for(MYSQL_PING_IF_IDLE_FOR);
        }
        let stats = Arc::new(DbStats::default());
        let mut db = Database::connect(options.clone()).await?;
        count_statements(&mut db, &stats);
        // SQLite's writes go through one connection of their own (see `gate::Writing`),
        // unless the database lives in memory, where a second pool would open another one.
        let writer = if sqlite && sqlite_path(url).is_some() {
            options.max_connections(1).min_connections(1).map_sqlx_sqlite_opts(|o| {
                // Named, so that profiles and `top -H` tell it from the readers. Its own
                // automatic checkpoint is only the backstop (see `wal`).
                sqlite_options(o)
                    .thread_name(|n| format!("sqlite-writer-{n}"))
                    .pragma("wal_autocheckpoint", wal::WRITER_AUTOCHECKPOINT_PAGES.to_string())
            });
            let mut writer = Database::connect(options).await?;
            count_statements(&mut writer, &stats);
            writer
        } else {
            db.clone()
        };
        let mut store = Store {
            db,
            topics,
            write_gate: sqlite.then(|| Arc::new(Mutex::new(()))),
            writer,
            metrics: Arc::new(std::sync::OnceLock::new()),
            stats,
            outbox_signal: Arc::new(Notify::new()),
            dispatch_signal: Arc::new(Notify::new()),
            writes: None,
            listeners: Arc::new(std::sync::RwLock::new(Arc::new([]))),
            settings: settings::SettingsCache::new(QUEUE_SETTINGS_TTL),
            recent: recent::RecentTasks::default(),
            roster: RosterChanges::default(),
        };
        let committers = if sqlite { 1 } else { (settings.max_connections as usize / 2).clamp(1, COMMITTERS_MYSQL) };
        // The committers get a handle without queues of its own, so that the queues
        // close (and the committers end) when the last outside handle is dropped.
        store.writes = Some(coalesce::start(store.clone(), committers));
        Ok(store)
    }

    /// The underlying connection (for migrations).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Signalled after every commit that wrote outbox rows, so the relay publishes at
    /// once instead of waiting for its next sweep.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox_signal.clone()
    }

    /// Signalled when dispatching may make progress: a worker's capacity was freed, a
    /// worker came online, a queue was resumed or reconfigured.
    pub fn dispatch_signal(&self) -> Arc<Notify> {
        self.dispatch_signal.clone()
    }

    /// What this process changes about workers: slots freed, workers registered, moved,
    /// drained or gone offline (see [`RosterChanges`]).
    pub fn roster_changes(&self) -> RosterChanges {
        self.roster.clone()
    }

    /// Adds `listener` to those told about every change (creation or transition)
    /// committed through this store or its clones from now on (see [`CommitListener`]).
    pub fn subscribe(&self, listener: Arc<dyn CommitListener>) {
        let mut listeners = self.listeners.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all = listeners.to_vec();
        all.push(listener);
        *listeners = all.into();
    }

    /// The listeners at this moment (a snapshot: no lock is held while they run).
    fn listeners(&self) -> Listeners {
        self.listeners.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Statement counters.
    pub fn stats(&self) -> &Arc<DbStats> {
        &self.stats
    }

    /// Connections of the pool: (in use, idle).
    pub fn pool_state(&self) -> (u32, u32) {
        let (size, idle) = match self.backend() {
            DbBackend::MySql => {
                let pool = self.db.get_mysql_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => {
                let pool = self.db.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
        };
        let idle = u32::try_from(idle).unwrap_or(u32::MAX);
        (size.saturating_sub(idle), idle)
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> StoreResult<()> {
        self.db.execute_unprepared("SELECT 1").await?;
        Ok(())
    }

    /// The backend in use.
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Workers by id (missing ids are simply absent).
    pub async fn workers_by_ids(&self, ids: &[String]) -> StoreResult<Vec<WorkerRecord>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let rows = worker::Entity::find()
            .filter(worker::Column::Id.is_in(shape::padded(ids.iter().cloned())))
            .all(&self.db)
            .await?;
        rows.into_iter().map(convert::worker_from_row).collect()
    }
}

/// Every SQLite connection: WAL (readers never block the writer), `NORMAL` sync (a
/// power loss may lose the last commits, never corrupt), foreign keys on.
fn sqlite_options(o: SqliteConnectOptions) -> SqliteConnectOptions {
    o.journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
}

/// Counts every statement `db` runs in `stats` (split by whether it touches the outbox).
fn count_statements(db: &mut DatabaseConnection, stats: &Arc<DbStats>) {
    let counter = stats.clone();
    db.set_metric_callback(move |info| {
        if info.statement.sql == wal::CHECKPOINT_SQL {
            return;
        }
        let kind =
            if info.statement.sql.contains("outbox") { &counter.outbox_statements } else { &counter.other_statements };
        kind.fetch_add(1, Ordering::Relaxed);
    });
}

/// The file path of a `sqlite:` URL, if it names a file.
fn sqlite_path(url: &str) -> Option<&Path> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| Path::new(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooled connection the server killed while it sat idle is pinged, found dead and
    /// replaced before it is handed out: the next statement succeeds.
    #[tokio::test]
    async fn mysql_replaces_a_pooled_connection_the_server_killed() {
        let test = "mysql_replaces_a_pooled_connection_the_server_killed";
        let Some(store) = crate::testing::mysql_test_store(test).await else { return };
        store.ping().await.expect("a first statement");
        let (server, schema) = (store.schema().server(), store.schema().name());
        let admin = Database::connect(server).await.expect("MySQL server reachable");
        let ids = admin
            .query_all_raw(sea_orm::Statement::from_string(
                DbBackend::MySql,
                format!("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{schema}'"),
            ))
            .await
            .expect("process list");
        assert!(!ids.is_empty(), "the store holds pooled connections");
        for row in ids {
            let id: i64 = row.try_get_by_index(0).expect("an id");
            admin.execute_unprepared(&format!("KILL {id}")).await.expect("killed");
        }
        tokio::time::sleep(MYSQL_PING_IF_IDLE_FOR + Duration::from_millis(200)).await;
        store.ping().await.expect("the dead connection was replaced, not handed out");
        store.ping().await.expect("and the pool goes on");
    }

    #[test]
    fn sqlite_paths_are_extracted_from_urls() {
        assert_eq!(sqlite_path("sqlite://data/taskwire.db?mode=rwc"), Some(Path::new("data/taskwire.db")));
        assert_eq!(sqlite_path("sqlite:///tmp/x.db"), Some(Path::new("/tmp/x.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
