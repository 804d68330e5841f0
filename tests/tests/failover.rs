//! Fail-over between instances, with one app behind two addresses (two TCP proxies): when
//! every connection through the first address is cut, a reference worker given both URLs
//! moves to the second and finishes its running tasks there, and `taskUpdated` watchers
//! resume each task after the last `seq` they received, with no gap and no duplicate.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures::FutureExt;
use serde_json::json;
use taskwire_tests::{TestApp, proxy::TcpProxy};
use taskwire_tools::watch::{self, WatchReport};
use taskwire_worker::{Handler, Outcome, Worker, WorkerConfig};
use tokio::sync::{mpsc, watch as signal};
use tokio_util::sync::CancellationToken;

const TASKS: usize = 5;
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn workers_and_watchers_fail_over_and_resume_without_gaps() {
    let app = TestApp::spawn().await;
    let upstream: SocketAddr = app.address.trim_start_matches("http://").parse().expect("app address");
    let first = TcpProxy::start(upstream).await;
    let second = TcpProxy::start(upstream).await;
    let base = |proxy: &TcpProxy| format!("http://127.0.0.1:{}", proxy.port());
    let ws = |proxy: &TcpProxy| format!("ws://127.0.0.1:{}/graphql", proxy.port());

    // Each task is held running until the test opens the gate.
    let (open_gate, gate) = signal::channel(false);
    let handler: Handler = Arc::new(move |_| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Outcome::Complete(None)
        }
        .boxed()
    });
    let config = WorkerConfig {
        url: format!("{},{}", base(&first), base(&second)),
        token: app.token("mover", &["worker"]),
        name: "mover".into(),
        queues: vec!["q".into()],
        capacity: TASKS as u32,
        heartbeat_every: Duration::from_millis(200),
        auto_accept: false,
    };
    let worker = Worker::start(config, handler).await.expect("worker starts");
    assert_eq!(worker.url(), base(&first));

    let (feed, tasks) = mpsc::channel(TASKS);
    let stop = CancellationToken::new();
    let watcher =
        tokio::spawn(watch::watch(vec![ws(&first), ws(&second)], app.token("ops", &["operator"]), tasks, stop.clone()));
    let client = app.token("alice", &["client"]);
    for _ in 0..TASKS {
        let id = app.create_task(&client, json!({ "queue": "q", "kind": "k" })).await;
        feed.send(id).await.expect("watcher takes the task");
    }
    drop(feed);
    assert!(worker.wait_until(WAIT, |s| s.accepted == TASKS as u64).await, "{:?}", worker.stats());
    // Every watch (and the worker's assignments) is subscribed through the first address.
    let subscriptions = app.wait_for_metric("taskwire_subscriptions", |n| n >= (TASKS + 1) as f64).await;
    assert!(subscriptions >= (TASKS + 1) as f64, "subscriptions: {subscriptions}");

    first.stop().await; // the first instance is gone
    assert!(worker.wait_until(WAIT, |s| s.failovers >= 1 && s.reconnects >= 1).await, "{:?}", worker.stats());
    assert_eq!(worker.url(), base(&second));
    open_gate.send_replace(true);
    assert!(worker.wait_until(WAIT, |s| s.completed == TASKS as u64).await, "{:?}", worker.stats());

    let report: WatchReport = match tokio::time::timeout(WAIT, watcher).await {
        Ok(report) => report.expect("watcher runs"),
        Err(_) => {
            stop.cancel();
            panic!("the watcher did not see every task end");
        }
    };
    assert_eq!((report.watched, report.finished), (TASKS as u64, TASKS as u64), "{report:?}");
    assert_eq!((report.gaps, report.duplicates, report.after_terminal), (0, 0, 0), "{report:?}");
    assert!(report.drops >= 1 && report.failovers >= 1, "{report:?}");
    assert_eq!(report.resumed, TASKS as u64, "every open task resumed after the cut: {report:?}");
    let stopped = worker.stop().await;
    assert_eq!(stopped.stats.lease_lost, 0);
}
