//! `fanout`: S subscribers to one queue's events, E tasks created into it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use taskwire_tools::load::{brief, latency_ms, lock};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    CONNECT_PHASE_LIMIT, Clock, Target,
    args::Options,
    creates::{OnAck, creator_tokens, paced_creates},
    events::{CLOSE_TIMEOUT, Event, open_events, read_events},
    mint, rss_kib,
};

/// How long the connected subscribers sit idle before the server's RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// Who got connected: the phase closes once everyone has tried, or at
/// [`CONNECT_PHASE_LIMIT`]; a connection that completes later is closed and counted as
/// failed, so "expected deliveries" is exact.
struct ConnectPhase {
    open: bool,
    connected: usize,
    failed: usize,
}

struct FanoutShared {
    phase: Mutex<ConnectPhase>,
    /// Creation events received, over all subscribers.
    deliveries: AtomicU64,
}

/// One creation event received by one subscriber (µs since the epoch).
#[derive(Debug, Clone, Copy)]
struct Delivery {
    task: u128,
    /// Server: the event's `at`.
    at: i64,
    /// Client: when it was read.
    received: i64,
}

#[derive(Default)]
struct SubscriberResult {
    deliveries: Vec<Delivery>,
    /// Why it failed to connect or was dropped.
    error: Option<String>,
}

async fn subscriber(
    (ws, token, queue): (String, String, String),
    clock: Clock,
    shared: Arc<FanoutShared>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) -> SubscriberResult {
    let mut out = SubscriberResult::default();
    let opened = match permits.acquire().await {
        Ok(_permit) if lock(&shared.phase).open => open_events(&ws, &token, &queue).await,
        _ => Err("the connect phase was over".to_owned()),
    };
    let admitted = {
        let mut phase = lock(&shared.phase);
        let admitted = phase.open && opened.is_ok();
        if admitted {
            phase.connected += 1;
        } else {
            phase.failed += 1;
        }
        admitted
    };
    let mut socket = match opened {
        Ok(socket) if admitted => socket,
        Ok(mut socket) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await;
            out.error = Some("connect: completed after the connect phase".to_owned());
            return out;
        }
        Err(reason) => {
            out.error = Some(format!("connect: {reason}"));
            return out;
        }
    };
    let deliveries = &mut out.deliveries;
    let mut on_event = |event: Event, received: i64| {
        if event.seq == 1 {
            deliveries.push(Delivery { task: event.task, at: event.at, received });
            shared.deliveries.fetch_add(1, Ordering::Relaxed);
        }
    };
    if let Some(reason) = read_events(&mut socket, clock, &stop, &mut on_event).await {
        out.error = Some(format!("dropped: {reason}"));
    }
    out
}

impl FanoutShared {
    /// Waits until every one of `subscribers` has tried to connect, or until
    /// [`CONNECT_PHASE_LIMIT`] after `started`, then closes the phase; how many connected.
    async fn close_connect_phase(&self, subscribers: usize, started: Instant) -> usize {
        loop {
            {
                let mut phase = lock(&self.phase);
                if phase.connected + phase.failed >= subscribers || started.elapsed() >= CONNECT_PHASE_LIMIT {
                    phase.open = false;
                    return phase.connected;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The deliveries of acknowledged tasks, over all subscribers (µs).
#[derive(Default)]
struct Received {
    /// Event `at` → read, per delivery.
    from_at: Vec<i64>,
    /// Create acknowledged → read, per delivery.
    from_ack: Vec<i64>,
    received: u64,
    /// Deliveries of an event the subscriber had already received.
    duplicates: u64,
    /// Deliveries of tasks whose create was not acknowledged.
    unacknowledged: u64,
}

impl Received {
    /// Counts the subscribers' deliveries against `acks`; failed subscribers' reasons go
    /// to `errors`.
    fn count(
        results: Vec<Result<SubscriberResult, tokio::task::JoinError>>,
        acks: &HashMap<u128, i64>,
        errors: &mut BTreeMap<String, u64>,
    ) -> Received {
        let mut counted = Received::default();
        for result in results {
            let Ok(mut result) = result else {
                *errors.entry("subscriber task failed".to_owned()).or_default() += 1;
                continue;
            };
            if let Some(reason) = result.error {
                *errors.entry(reason).or_default() += 1;
            }
            // Stable: of duplicate deliveries, the first read is kept.
            result.deliveries.sort_by_key(|d| d.task);
            let mut previous = None;
            for delivery in result.deliveries {
                if previous == Some(delivery.task) {
                    counted.duplicates += 1;
                    continue;
                }
                previous = Some(delivery.task);
                let Some(ack) = acks.get(&delivery.task) else {
                    counted.unacknowledged += 1;
                    continue;
                };
                counted.received += 1;
                counted.from_at.push(delivery.received - delivery.at);
                counted.from_ack.push(delivery.received - ack);
            }
        }
        counted
    }
}

/// `fanout`: S subscribers to one queue's events, E tasks created into it.
pub(crate) async fn fanout(o: &Options, target: &Target) -> Result<(Value, String), String> {
    let clock = target.clock;
    let mut rss = ServerRss { before: o.pid.and_then(rss_kib), ..ServerRss::default() };
    let stop = CancellationToken::new();
    let shared = Arc::new(FanoutShared {
        phase: Mutex::new(ConnectPhase { open: true, connected: 0, failed: 0 }),
        deliveries: AtomicU64::new(0),
    });
    let permits = Arc::new(Semaphore::new(o.connect_concurrency));
    let connect_started = Instant::now();
    let mut subscribers = Vec::with_capacity(o.subscribers);
    for i in 0..o.subscribers {
        let token = mint(o, &format!("loadgen-{}-subscriber-{i}", o.run), &["operator"])?;
        let address = (target.ws(i).to_owned(), token, o.queue.clone());
        subscribers.push(tokio::spawn(subscriber(address, clock, shared.clone(), permits.clone(), stop.clone())));
    }
    let connected = shared.close_connect_phase(o.subscribers, connect_started).await;
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(IDLE_SETTLE).await;
    rss.subscriptions = connected;
    rss.idle = o.pid.and_then(rss_kib);

    let acks: Arc<Mutex<HashMap<u128, i64>>> = Arc::default();
    let sink = acks.clone();
    let on_ack: OnAck = Arc::new(move |task, at| {
        lock(&sink).insert(task, at);
    });
    let creates = paced_creates(o, target, creator_tokens(o)?, o.events.min(o.max_requests), on_ack).await;
    let expected = creates.created * connected as u64;
    let grace_started = Instant::now();
    while shared.deliveries.load(Ordering::Relaxed) < expected && grace_started.elapsed() < o.grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = grace_started.elapsed().as_secs_f64();
    rss.end = o.pid.and_then(rss_kib);
    tokio::time::sleep(o.hold).await;
    stop.cancel();
    let results = futures::future::join_all(subscribers).await;

    let acks = std::mem::take(&mut *lock(&acks));
    let mut errors = creates.errors;
    let Received { from_at, from_ack, received, duplicates, unacknowledged } =
        Received::count(results, &acks, &mut errors);

    let result = json!({
        "scenario": "fanout",
        "queue": o.queue,
        "subscribers": { "requested": o.subscribers, "connected": connected, "connect_concurrency": o.connect_concurrency, "connect_seconds": connect_seconds },
        "connections": o.connections,
        "rate": o.rate,
        "events_created": creates.created,
        "creation_seconds": creates.seconds,
        "late_creates": creates.late,
        "grace_seconds": waited,
        "deliveries": {
            "expected": expected,
            "received": received,
            "missing": expected.saturating_sub(received),
            "duplicates": duplicates,
            "of_unacknowledged_tasks": unacknowledged,
        },
        "latency_ms": {
            "create_request": latency_ms(creates.micros.iter().map(|&m| i64::from(m)).collect()),
            "at_to_received": latency_ms(from_at),
            "ack_to_received": latency_ms(from_ack),
        },
        "server_rss_mib": rss.mib(o.pid),
        "server_rss_bytes_per_subscription": rss.bytes_per_subscription(),
        "errors": errors,
    });
    let line = format!(
        "fanout subscribers={} (connected {} in {:.1} s) events={} rate={}/s: deliveries {}/{}; p50/p95/p99/max \
         at→received {}, ack→received {}; {}; errors {}",
        o.subscribers,
        connected,
        connect_seconds,
        creates.created,
        o.rate,
        received,
        expected,
        brief(&result["latency_ms"]["at_to_received"]),
        brief(&result["latency_ms"]["ack_to_received"]),
        rss.describe(),
        result["errors"],
    );
    Ok((result, line))
}

/// The server's resident set size (KiB) before the subscribers connect, once they are
/// connected and idle, and at the end; `None` without `--pid`.
#[derive(Default)]
struct ServerRss {
    before: Option<u64>,
    idle: Option<u64>,
    end: Option<u64>,
    /// Subscriptions open at the readings after `before`.
    subscriptions: usize,
}

impl ServerRss {
    /// Bytes per subscription added since `before`.
    fn per_subscription(&self, kib: Option<u64>) -> Option<f64> {
        match (self.before, kib) {
            (Some(before), Some(after)) if self.subscriptions > 0 => {
                Some((after as f64 - before as f64) * 1024.0 / self.subscriptions as f64)
            }
            _ => None,
        }
    }

    fn mib(&self, pid: Option<u32>) -> Value {
        let mib = |kib: Option<u64>| kib.map(|k| k as f64 / 1024.0);
        json!({ "pid": pid, "before": mib(self.before), "idle": mib(self.idle), "end": mib(self.end) })
    }

    fn bytes_per_subscription(&self) -> Value {
        json!({ "idle": self.per_subscription(self.idle), "end": self.per_subscription(self.end) })
    }

    fn describe(&self) -> String {
        match (self.before, self.idle, self.end) {
            (Some(before), Some(idle), Some(end)) => format!(
                "server RSS {:.1} → {:.1} (idle) → {:.1} MiB (end), {:.1} KiB/subscription idle",
                before as f64 / 1024.0,
                idle as f64 / 1024.0,
                end as f64 / 1024.0,
                self.per_subscription(self.idle).unwrap_or_default() / 1024.0
            ),
            _ => "server RSS not measured (--pid)".to_owned(),
        }
    }
}
