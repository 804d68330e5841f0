//! The drill's task watchers (`taskwire_tools::watch`), fed with acknowledged tasks.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use taskwire_tools::{
    load::ws_graphql,
    watch::{self, WatchReport},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::args::Options;

/// Task ids waiting for each watcher (beyond that, a watched task is counted as skipped).
const WATCH_QUEUE: usize = 1024;
/// After the settle phase, how long the watchers get to see their last tasks end.
const WATCH_GRACE: Duration = Duration::from_secs(15);

/// Hands every `every`-th acknowledged task to the watchers, round-robin.
pub(crate) struct WatchFeed {
    senders: Vec<mpsc::Sender<String>>,
    every: u64,
    acknowledged: AtomicU64,
    /// Tasks not handed over because the watcher's queue was full.
    pub(crate) overflow: AtomicU64,
}

impl WatchFeed {
    pub(crate) fn acknowledged(&self, task: &str) {
        let n = self.acknowledged.fetch_add(1, Ordering::Relaxed);
        if self.senders.is_empty() || !n.is_multiple_of(self.every) {
            return;
        }
        let sender = &self.senders[((n / self.every) % self.senders.len() as u64) as usize];
        if sender.try_send(task.to_owned()).is_err() {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts `o.watchers` watchers, watcher w on instance w mod N first; the feed that hands
/// them tasks, and the watchers.
pub(crate) fn start_watchers(o: &Options, token: &str) -> (WatchFeed, Watchers) {
    let ws: Vec<String> = o.urls.iter().map(|url| ws_graphql(url)).collect();
    let stop = CancellationToken::new();
    let (mut senders, mut handles) = (Vec::new(), Vec::new());
    for w in 0..o.watchers {
        let (sender, receiver) = mpsc::channel(WATCH_QUEUE);
        let order: Vec<String> = (0..ws.len()).map(|k| ws[(w + k) % ws.len()].clone()).collect();
        handles.push(tokio::spawn(watch::watch(order, token.to_owned(), receiver, stop.clone())));
        senders.push(sender);
    }
    let feed =
        WatchFeed { senders, every: o.watch_every, acknowledged: AtomicU64::new(0), overflow: AtomicU64::new(0) };
    (feed, Watchers { handles, stop })
}

/// The watchers of a drill: stop them with [`Watchers::finish`].
pub(crate) struct Watchers {
    handles: Vec<JoinHandle<WatchReport>>,
    stop: CancellationToken,
}

impl Watchers {
    /// Gives the watchers [`WATCH_GRACE`] to see their tasks end (the feed must be closed),
    /// stops them, and adds up what they saw.
    pub(crate) async fn finish(self) -> WatchReport {
        let watching = futures::future::join_all(self.handles);
        tokio::pin!(watching);
        let reports = tokio::select! {
            reports = &mut watching => reports,
            () = tokio::time::sleep(WATCH_GRACE) => {
                self.stop.cancel();
                watching.await
            }
        };
        let mut watched = WatchReport::default();
        for report in reports {
            match report {
                Ok(report) => watched.merge(report),
                Err(_) => *watched.errors.entry("watcher task failed".to_owned()).or_default() += 1,
            }
        }
        watched
    }
}
