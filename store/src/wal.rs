//! SQLite's WAL checkpoints, kept off the write gate.
//!
//! In WAL mode every commit appends pages to `<db>-wal`; a *checkpoint* copies them back
//! into the database file, and with `synchronous=NORMAL` it is the only step that calls
//! `fsync` (the WAL before copying, the database file after). Left to itself, SQLite runs
//! the checkpoint inside the commit that takes the WAL past 1,000 pages: on the write
//! connection, under the write gate, so every writer of the process waits for two
//! `fsync`s and a few megabytes of copying.
//!
//! Instead, [`run_checkpointer`] checkpoints every [`CHECKPOINT_EVERY`] on a pooled read
//! connection. Its checkpoints are `PASSIVE`: they neither wait for nor block readers and
//! the writer, which keeps appending meanwhile; SQLite starts the WAL over from its
//! beginning at the first write after a checkpoint has copied everything. The write
//! connection's own automatic checkpoint stays as the backstop, at
//! [`WRITER_AUTOCHECKPOINT_PAGES`]: should this task fall behind or stop, the WAL is still
//! bounded (to about 40 MB at SQLite's 4 KiB pages).

use std::time::{Duration, Instant};

use sea_orm::{DbBackend, DbErr, FromQueryResult, Statement};
use tokio_util::sync::CancellationToken;

use super::Store;
use crate::metrics::StoreMetrics;

/// How often the WAL is checkpointed.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL pages past which the write connection checkpoints by itself (SQLite's default is
/// 1,000): only reached when [`run_checkpointer`] falls behind or has stopped.
pub(super) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// The checkpoint statement. Housekeeping, not traffic: [`super::DbStats`] leaves it out.
pub(super) const CHECKPOINT_SQL: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// What one checkpoint did (the row `PRAGMA wal_checkpoint` answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromQueryResult)]
pub(crate) struct Checkpoint {
    /// 1 when the checkpoint could not copy every frame (a reader still needs an older
    /// one, or a writer appended meanwhile); the rest goes next time.
    pub busy: i32,
    /// Frames in the WAL.
    pub log: i32,
    /// Frames copied into the database file so far.
    pub checkpointed: i32,
}

impl Store {
    /// Runs a `PASSIVE` checkpoint of SQLite's WAL on a pooled connection (off the write
    /// gate). `None` on MySQL/MariaDB, and on a database that lives in memory.
    pub(crate) async fn checkpoint_wal(&self) -> Result<Option<Checkpoint>, DbErr> {
        if self.backend() != DbBackend::Sqlite {
            return Ok(None);
        }
        let statement = Statement::from_string(DbBackend::Sqlite, CHECKPOINT_SQL);
        let row = Checkpoint::find_by_statement(statement).one(&self.db).await?;
        // An in-memory database has no WAL: SQLite answers -1 frames.
        Ok(row.filter(|c| c.log >= 0))
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] until `shutdown` (SQLite only: returns
/// at once on MySQL). Counts each one in `taskwire_sqlite_wal_checkpoints_total{outcome}`
/// and its duration in `taskwire_sqlite_wal_checkpoint_duration_seconds`, and sets
/// `taskwire_sqlite_wal_frames` to the WAL's length it found. A failure is logged and
/// retried at the next tick; the writer's backstop bounds the WAL meanwhile.
pub async fn run_checkpointer(store: Store, metrics: StoreMetrics, shutdown: CancellationToken) {
    if store.backend() != DbBackend::Sqlite {
        return;
    }
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let outcome = match store.checkpoint_wal().await {
            Ok(Some(done)) => {
                metrics.wal_frames.set(i64::from(done.log));
                if done.busy == 0 { "complete" } else { "partial" }
            }
            // An in-memory database: nothing to checkpoint, ever.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; the writer's own checkpoint bounds the WAL");
                "failed"
            }
        };
        metrics.wal_checkpoint_duration.observe(started.elapsed().as_secs_f64());
        metrics.wal_checkpoints.with_label_values(&[outcome]).inc();
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    use super::*;
    use crate::{Writer, testing::test_store};

    /// The write connection leaves checkpoints to the background task up to its backstop.
    #[tokio::test]
    async fn the_writer_checkpoints_only_as_a_backstop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let writing = store.write_lock(Writer::Admin).await;
        let row = writing
            .db()
            .query_one_raw(Statement::from_string(DbBackend::Sqlite, "PRAGMA wal_autocheckpoint"))
            .await
            .expect("pragma")
            .expect("a row");
        let pages: i32 = row.try_get_by_index(0).expect("pages");
        assert_eq!(pages, WRITER_AUTOCHECKPOINT_PAGES as i32);
    }

    /// Writes leave frames in the WAL; a checkpoint copies every one of them.
    #[tokio::test]
    async fn a_checkpoint_copies_what_the_writer_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        {
            let writing = store.write_lock(Writer::Admin).await;
            for i in 0..20 {
                let sql = format!("INSERT INTO queues (name, paused, created_at, updated_at) VALUES ('q{i}', 0, 0, 0)");
                writing.db().execute_unprepared(&sql).await.expect("insert");
            }
        }
        let first = store.checkpoint_wal().await.expect("checkpoint").expect("SQLite has a WAL");
        assert!(first.log > 0, "the inserts are in the WAL: {first:?}");
        assert_eq!((first.busy, first.checkpointed), (0, first.log), "every frame copied: {first:?}");
        let before = store.stats().statements();
        store.checkpoint_wal().await.expect("checkpoint");
        assert_eq!(store.stats().statements(), before, "checkpoints are not counted as traffic");

        let metrics = crate::metrics::TestMetrics::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_checkpointer(store.clone(), metrics.store.clone(), shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.store.wal_checkpoints.with_label_values(&["complete"]).get() == 0 {
            assert!(Instant::now() < deadline, "no checkpoint within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops when told").expect("no panic");
        assert!(metrics.render().contains("taskwire_sqlite_wal_checkpoint_duration_seconds_count"));
    }

    #[tokio::test]
    async fn mysql_has_no_checkpoints() {
        let Some(store) = crate::testing::mysql_test_store("mysql_has_no_checkpoints").await else { return };
        assert_eq!(store.checkpoint_wal().await.expect("no query"), None);
        // The task ends at once instead of ticking forever.
        let run =
            run_checkpointer(Store::clone(&store), crate::metrics::TestMetrics::new().store, CancellationToken::new());
        tokio::time::timeout(Duration::from_secs(5), run).await.expect("returns on MySQL");
    }
}
