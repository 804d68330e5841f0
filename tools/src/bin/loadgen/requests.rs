//! `query` and `create`: closed-loop requests.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use rand::Rng;
use serde_json::{Value, json};
use taskwire_tools::load::{add_errors, brief, latency_ms, post};

use crate::{
    Target,
    args::{Distribution, Options, Scenario},
    creates::CREATE_ONE,
    mint,
};

/// Latencies and error codes of one connection.
#[derive(Default)]
struct Tally {
    micros: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

/// `query` and `create`: closed-loop requests; the JSON result and the summary line.
pub(crate) async fn requests(options: &Options, target: &Target) -> Result<(Value, String), String> {
    let token = mint(options, &format!("loadgen-{}", uuid::Uuid::new_v4().simple()), &["client"])?;
    let client = &target.http;
    let ids = if options.scenario == Scenario::Query {
        Arc::new(
            seed(client, target.graphql(0), &token, options.working_set)
                .await
                .map_err(|e| format!("seeding the working set failed: {e}"))?,
        )
    } else {
        Arc::new(vec![])
    };

    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut workers = Vec::new();
    for i in 0..options.connections {
        let url = target.graphql(i).to_owned();
        let (client, token, ids, issued, o) =
            (client.clone(), token.clone(), ids.clone(), issued.clone(), options.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < o.max_requests {
                let body = request_body(&o, &ids);
                let t0 = Instant::now();
                let result = post(&client, &url, &token, &body).await;
                tally.micros.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if let Err(code) = result {
                    *tally.errors.entry(code).or_default() += 1;
                }
            }
            tally
        }));
    }
    let mut micros = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            micros.extend(tally.micros);
            add_errors(&mut errors, tally.errors);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = micros.len() as f64;
    let per_request = if options.scenario == Scenario::Create { options.batch as f64 } else { 1.0 };
    let latency = latency_ms(micros.into_iter().map(i64::from).collect());
    let result = json!({
        "scenario": options.scenario.to_string(),
        "connections": options.connections,
        "batch": options.batch,
        "distribution": options.distribution.to_string(),
        "working_set": options.working_set,
        "seconds": elapsed,
        "requests": requests as u64,
        "requests_per_second": requests / elapsed,
        "items_per_second": requests * per_request / elapsed,
        "latency_ms": latency,
        "errors": errors,
    });
    let line = format!(
        "{} c={} batch={}: {:.0} req/s ({:.0} items/s), p50/p95/p99/max {}, errors {}",
        options.scenario,
        options.connections,
        options.batch,
        requests / elapsed,
        requests * per_request / elapsed,
        brief(&result["latency_ms"]),
        result["errors"]
    );
    Ok((result, line))
}

fn request_body(o: &Options, ids: &[String]) -> Value {
    match o.scenario {
        Scenario::Query => {
            let mut rng = rand::rng();
            let n = ids.len().max(1);
            let index = if o.distribution == Distribution::Hot && rng.random_bool(0.9) {
                rng.random_range(0..(n / 10).max(1))
            } else {
                rng.random_range(0..n)
            };
            json!({ "query": "query Get($id: ID!) { task(id: $id) { id status priority } }", "variables": { "id": ids.get(index) } })
        }
        _ if o.batch > 1 => {
            let inputs: Vec<Value> =
                (0..o.batch).map(|_| json!({ "queue": "bench", "kind": "k", "payload": { "n": 1 } })).collect();
            json!({ "query": "mutation Many($i: [CreateTaskInput!]!) { createTasks(inputs: $i) { created } }", "variables": { "i": inputs } })
        }
        _ => json!({
            "query": CREATE_ONE,
            "variables": { "i": { "queue": "bench", "kind": "k", "payload": { "n": 1 } } }
        }),
    }
}

async fn seed(client: &reqwest::Client, url: &str, token: &str, count: usize) -> Result<Vec<String>, String> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let n = (count - ids.len()).min(500);
        let inputs: Vec<Value> = (0..n).map(|_| json!({ "queue": "bench-read", "kind": "k" })).collect();
        let body = json!({ "query": "mutation($i: [CreateTaskInput!]!) { createTasks(inputs: $i) { task { id } } }", "variables": { "i": inputs } });
        let value = post(client, url, token, &body).await?;
        for payload in value["data"]["createTasks"].as_array().cloned().unwrap_or_default() {
            ids.push(payload["task"]["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    Ok(ids)
}
