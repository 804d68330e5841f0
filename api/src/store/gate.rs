//! SQLite's write gate: the in-process mutex that serialises write transactions
//! (SQLite has one writer; waiting here is orderly, where racing for the file lock would
//! fail with `SQLITE_BUSY`). On MySQL/MariaDB there is no gate: row locks do the work.
//!
//! Every acquisition names its [`Writer`], and, once [`Store::observe_write_gate`] has
//! been given the metrics, is counted with the time spent waiting for the gate and
//! holding it. The held time's rate is the fraction of time SQLite's one writer is busy,
//! which bounds every write's latency on the embedded default (see docs/BENCHMARKS.md).

use std::time::Instant;

use tokio::sync::MutexGuard;

use super::Store;
use crate::metrics::WriteGateMetrics;

/// Who takes the write gate: a label of the gate's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// Task creations (the commit coalescer).
    Create,
    /// Task transitions: workers' and clients' mutations (the transition coalescer).
    Transition,
    /// The matcher's offers.
    Offer,
    /// The reaper and scheduler.
    Sweep,
    /// Worker registration, heartbeats, draining and expiry.
    Worker,
    /// Queue administration.
    Admin,
    /// The outbox relay marking rows published and pruning them.
    Relay,
}

impl Writer {
    /// The metrics label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Writer::Create => "create",
            Writer::Transition => "transition",
            Writer::Offer => "offer",
            Writer::Sweep => "sweep",
            Writer::Worker => "worker",
            Writer::Admin => "admin",
            Writer::Relay => "relay",
        }
    }
}

/// The gate, held: released (and its hold time counted) on drop.
pub(crate) struct GateGuard<'a> {
    _held: MutexGuard<'a, ()>,
    since: Instant,
    observed: Option<(&'a WriteGateMetrics, Writer)>,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        if let Some((metrics, writer)) = self.observed {
            metrics.held.with_label_values(&[writer.label()]).inc_by(self.since.elapsed().as_secs_f64());
        }
    }
}

impl Store {
    /// Takes the write gate for `writer` on SQLite; `None` (nothing to take) on MySQL.
    pub(crate) async fn write_lock(&self, writer: Writer) -> Option<GateGuard<'_>> {
        let gate = self.write_gate.as_ref()?;
        let asked = Instant::now();
        let held = gate.lock().await;
        let since = Instant::now();
        let observed = self.gate_metrics.get().map(|metrics| (metrics, writer));
        if let Some((metrics, writer)) = observed {
            metrics.acquired.with_label_values(&[writer.label()]).inc();
            metrics.wait.with_label_values(&[writer.label()]).inc_by((since - asked).as_secs_f64());
        }
        Some(GateGuard { _held: held, since, observed })
    }

    /// Counts every use of the write gate in `metrics` from now on (the first call
    /// counts; clones of this store share it).
    pub fn observe_write_gate(&self, metrics: WriteGateMetrics) {
        let _ = self.gate_metrics.set(metrics);
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn each_writer_counts_its_waits_and_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = super::super::test_store(dir.path()).await;
        let metrics = Metrics::new();
        store.observe_write_gate(metrics.write_gate.clone());

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

        let gate = &metrics.write_gate;
        assert_eq!(gate.acquired.with_label_values(&["relay"]).get(), 1);
        assert_eq!(gate.acquired.with_label_values(&["offer"]).get(), 1);
        assert!(gate.held.with_label_values(&["relay"]).get() >= 0.03, "the first writer held it ≥ 30 ms");
        assert!(gate.wait.with_label_values(&["offer"]).get() >= 0.02, "the second writer waited for it");
        assert_eq!(gate.acquired.with_label_values(&["create"]).get(), 0);
        let text = metrics.render();
        assert!(text.contains("taskwire_sqlite_write_gate_held_seconds_total{writer=\"relay\"}"), "{text}");
    }

    #[tokio::test]
    async fn mysql_has_no_gate() {
        let Some((store, _)) = super::super::mysql_test_store("mysql_has_no_gate").await else { return };
        assert!(store.write_lock(super::Writer::Create).await.is_none());
    }
}
