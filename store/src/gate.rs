//! SQLite's write gate: the in-process mutex that serialises write transactions
//! (SQLite has one writer; waiting here is orderly, where racing for the file lock would
//! fail with `SQLITE_BUSY`). On MySQL/MariaDB there is no gate: row locks do the work.
//!
//! Every acquisition names its [`Writer`], and, once [`Store::observe`] has been given
//! the metrics, is counted with the time spent waiting for the gate and holding it. The
//! held time's rate is the fraction of time SQLite's one writer is busy, which bounds
//! every write's latency on the embedded default.

use std::time::Instant;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use tokio::sync::MutexGuard;

use super::Store;
use crate::metrics::{StoreMetrics, WriteGateMetrics};

/// Who takes the write gate: a label of the gate's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// Task creations (the committers of `coalesce`).
    Create,
    /// Task transitions: workers' and clients' mutations (the committers of `coalesce`).
    Transition,
    /// Creations and workers' transitions committed in one transaction by a committer of
    /// `coalesce` (`Store::create_and_transition`).
    Together,
    /// The matcher's offers.
    Offer,
    /// The reaper and scheduler.
    Sweep,
    /// Worker registration, heartbeats, draining and expiry.
    Worker,
    /// Queue administration.
    Admin,
    /// The outbox relay deleting the rows Kafka acknowledged.
    Relay,
    /// Retention deleting finished tasks (`Store::purge_finished`).
    Purge,
}

impl Writer {
    /// Every writer, for series that exist from the start.
    pub(crate) const ALL: [Writer; 9] = [
        Writer::Create,
        Writer::Transition,
        Writer::Together,
        Writer::Offer,
        Writer::Sweep,
        Writer::Worker,
        Writer::Admin,
        Writer::Relay,
        Writer::Purge,
    ];

    /// The metrics label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Writer::Create => "create",
            Writer::Transition => "transition",
            Writer::Together => "together",
            Writer::Offer => "offer",
            Writer::Sweep => "sweep",
            Writer::Worker => "worker",
            Writer::Admin => "admin",
            Writer::Relay => "relay",
            Writer::Purge => "purge",
        }
    }
}

/// Permission to write: on SQLite the gate, held, with the one connection every write
/// goes through; on MySQL the shared pool (row locks do the serialising). Released (and
/// its hold time counted) on drop.
///
/// Every write goes through [`Writing::db`]. On SQLite that is a connection of its own,
/// so its page cache stays warm: SQLite drops a connection's whole page cache whenever
/// another connection wrote since its last transaction, so writes spread over the pool
/// re-read every page they touched, under the gate. Reads use the pool.
pub(crate) struct Writing<'a> {
    db: &'a DatabaseConnection,
    _held: Option<MutexGuard<'a, ()>>,
    since: Instant,
    observed: Option<(&'a WriteGateMetrics, Writer)>,
}

impl Writing<'_> {
    /// The connection to write (and read what the write depends on) with.
    pub(crate) fn db(&self) -> &DatabaseConnection {
        self.db
    }

    /// A transaction at READ COMMITTED on MySQL/MariaDB, plain on SQLite (which has one
    /// writer and serialisable transactions anyway).
    ///
    /// At MySQL's default REPEATABLE READ a locking read or an `UPDATE` takes next-key
    /// locks on every row and gap it scans (InnoDB plans a multi-row update on a small
    /// table as a scan), which blocked concurrent task inserts into deadlocks; `SKIP
    /// LOCKED` claims take no gap locks either. Every write of the store is conditional
    /// on a version read before it, claims its rows with a lock, or is guarded by a
    /// unique index, so the weaker isolation loses nothing. It is every MySQL
    /// connection's session default (set when the pool opens it, `read_committed` in
    /// `lib.rs`), so this is a plain `BEGIN`: the name says what the caller relies on.
    pub(crate) async fn begin_read_committed(&self) -> Result<DatabaseTransaction, DbErr> {
        self.db.begin().await
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if let Some((metrics, writer)) = self.observed {
            metrics.held.with_label_values(&[writer.label()]).inc_by(self.since.elapsed().as_secs_f64());
        }
    }
}

impl Store {
    /// Takes the right to write for `writer`: on SQLite waits for the gate.
    pub(crate) async fn write_lock(&self, writer: Writer) -> Writing<'_> {
        self.count_write(writer);
        let since = Instant::now();
        let Some(gate) = &self.write_gate else {
            return Writing { db: &self.db, _held: None, since, observed: None };
        };
        let held = gate.lock().await;
        let now = Instant::now();
        let observed = self.metrics.get().map(|metrics| (&metrics.write_gate, writer));
        if let Some((metrics, writer)) = observed {
            metrics.acquired.with_label_values(&[writer.label()]).inc();
            metrics.wait.with_label_values(&[writer.label()]).inc_by((now - since).as_secs_f64());
        }
        Writing { db: &self.writer, _held: Some(held), since: now, observed }
    }

    /// Counts one write transaction of `writer` (`db_writes_total`).
    pub(crate) fn count_write(&self, writer: Writer) {
        if let Some(metrics) = self.metrics.get() {
            metrics.db_writes.with_label_values(&[writer.label()]).inc();
        }
    }

    /// Counts the write gate's use, lock conflicts and offers held back by queue limits
    /// in `metrics` from now on (the first call counts; clones of this store share it).
    pub fn observe(&self, metrics: StoreMetrics) {
        let _ = self.metrics.set(metrics);
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::TestMetrics;

    #[tokio::test]
    async fn each_writer_counts_its_waits_and_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::testing::test_store(dir.path()).await;
        let metrics = TestMetrics::new();
        store.observe(metrics.store.clone());

        let held = store.write_lock(super::Writer::Relay).await;
        // A second writer waits while the first holds the gate.
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move {
                let _gate = store.write_lock(super::Writer::Offer).await;
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        drop(held);
        waiter.await.expect("second writer ran");

        let gate = &metrics.store.write_gate;
        assert_eq!(gate.acquired.with_label_values(&["relay"]).get(), 1);
        assert_eq!(gate.acquired.with_label_values(&["offer"]).get(), 1);
        assert!(gate.held.with_label_values(&["relay"]).get() >= 0.03, "the first writer held it ≥ 30 ms");
        assert!(gate.wait.with_label_values(&["offer"]).get() >= 0.02, "the second writer waited for it");
        assert_eq!(gate.acquired.with_label_values(&["create"]).get(), 0);
        let writes = &metrics.store.db_writes;
        assert_eq!(writes.with_label_values(&["relay"]).get(), 1);
        assert_eq!(writes.with_label_values(&["offer"]).get(), 1);
        let text = metrics.render();
        assert!(text.contains("taskwire_db_writes_total{writer=\"create\"} 0"), "every writer's series exists: {text}");
        assert!(text.contains("taskwire_sqlite_write_gate_held_seconds_total{writer=\"relay\"}"), "{text}");
    }

    #[tokio::test]
    async fn mysql_has_no_gate() {
        let Some(store) = crate::testing::mysql_test_store("mysql_has_no_gate").await else { return };
        let metrics = TestMetrics::new();
        store.observe(metrics.store.clone());
        let writing = store.write_lock(super::Writer::Create).await;
        assert!(writing._held.is_none(), "row locks serialise MySQL writers");
        // Write transactions are counted on MySQL too: they are what a task costs.
        assert_eq!(metrics.store.db_writes.with_label_values(&["create"]).get(), 1);
    }

    #[tokio::test]
    async fn mysql_transactions_run_at_read_committed() {
        use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
        let Some(store) = crate::testing::mysql_test_store("mysql_transactions_run_at_read_committed").await else {
            return;
        };
        // Every pooled connection, not only the first: hold several at once.
        let mut open = Vec::new();
        for _ in 0..4 {
            let txn = store.db.begin().await.expect("begin");
            // MariaDB names the variable `tx_isolation`; MySQL 8 only `transaction_isolation`.
            let mut level = None;
            for variable in ["@@session.tx_isolation", "@@session.transaction_isolation"] {
                let sql = format!("SELECT {variable} AS level");
                let statement = Statement::from_string(txn.get_database_backend(), sql);
                if let Ok(Some(row)) = txn.query_one_raw(statement).await {
                    level = row.try_get::<String>("", "level").ok();
                    break;
                }
            }
            assert_eq!(level.as_deref(), Some("READ-COMMITTED"), "a plain BEGIN runs at READ COMMITTED");
            open.push(txn);
        }
    }
}
