//! Paced (open-loop) creation, shared by `dispatch` and `fanout`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use taskwire_tools::load::{add_errors, post};

use crate::{Target, args::Options, mint};

pub(crate) const CREATE_ONE: &str = "mutation One($i: CreateTaskInput!) { createTask(input: $i) { task { id } } }";
/// A create sent this far behind its slot counts as late (the creators could not keep up).
const LATE: Duration = Duration::from_millis(10);

/// Called with each acknowledged task's id and the client-clock time of the acknowledgement.
pub(crate) type OnAck = Arc<dyn Fn(u128, i64) + Send + Sync>;

/// What the creators did.
#[derive(Default)]
pub(crate) struct Creates {
    /// Request latencies (µs) of every create, failed ones included.
    pub(crate) micros: Vec<u32>,
    pub(crate) errors: BTreeMap<String, u64>,
    /// Creates acknowledged with a task id.
    pub(crate) created: u64,
    /// Creates sent more than [`LATE`] after their slot.
    pub(crate) late: u64,
    /// How long creation lasted.
    pub(crate) seconds: f64,
}

/// Creates up to `limit` tasks in `o.queue`, open-loop: the i-th is due at `i / o.rate`
/// seconds, whoever is free sends it (one connection per token, token j on URL j mod N), nobody waits for the
/// tasks to finish. Stops at `o.duration`.
pub(crate) async fn paced_creates(
    o: &Options,
    target: &Target,
    tokens: Vec<String>,
    limit: u64,
    on_ack: OnAck,
) -> Creates {
    let slots = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let deadline = start + o.duration;
    let mut creators = Vec::new();
    for (j, token) in tokens.into_iter().enumerate() {
        let (slots, on_ack, http, url, queue, clock, rate) = (
            slots.clone(),
            on_ack.clone(),
            target.http.clone(),
            target.graphql(j).to_owned(),
            o.queue.clone(),
            target.clock,
            o.rate,
        );
        creators.push(tokio::spawn(async move {
            let mut c = Creates::default();
            loop {
                let slot = slots.fetch_add(1, Ordering::Relaxed);
                let due = start + Duration::from_secs_f64(slot as f64 / rate);
                if slot >= limit || due >= deadline || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep_until(due).await;
                if due.elapsed() > LATE {
                    c.late += 1;
                }
                let body = json!({
                    "query": CREATE_ONE,
                    "variables": { "i": { "queue": queue, "kind": "loadgen", "payload": { "n": slot } } },
                });
                let t0 = Instant::now();
                let result = post(&http, &url, &token, &body).await;
                let acked = clock.now();
                c.micros.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                match result.map(|v| v["data"]["createTask"]["task"]["id"].as_str().and_then(task_key)) {
                    Ok(Some(task)) => {
                        c.created += 1;
                        on_ack(task, acked);
                    }
                    Ok(None) => *c.errors.entry("NO_TASK_ID".to_owned()).or_default() += 1,
                    Err(code) => *c.errors.entry(code).or_default() += 1,
                }
            }
            c
        }));
    }
    let mut all = Creates::default();
    for creator in creators {
        if let Ok(c) = creator.await {
            all.micros.extend(c.micros);
            add_errors(&mut all.errors, c.errors);
            all.created += c.created;
            all.late += c.late;
        }
    }
    all.seconds = start.elapsed().as_secs_f64();
    all
}

/// A task id as a number (ids are UUIDs): compact keys for millions of records.
pub(crate) fn task_key(id: &str) -> Option<u128> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.as_u128())
}

/// One client token per creator connection (`--connections`), each its own subject.
pub(crate) fn creator_tokens(o: &Options) -> Result<Vec<String>, String> {
    (0..o.connections).map(|j| mint(o, &format!("loadgen-{}-creator-{j}", o.run), &["client"])).collect()
}
