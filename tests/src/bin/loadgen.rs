//! `loadgen`: a bounded load generator for Taskwire (loopback only).
//!
//! ```text
//! cargo run --release -p taskwire-tests --bin loadgen -- query  --url http://127.0.0.1:8080 --secret S
//! cargo run --release -p taskwire-tests --bin loadgen -- create --url http://127.0.0.1:8080 --secret S --batch 10
//! ```
//!
//! Scenarios:
//! - `query`: N connections read `task(id)` over a working set of M tasks it creates
//!   first, with a `uniform` or `hot` (90 % of reads on 10 % of the tasks) distribution;
//! - `create`: N connections call `createTask` (or `createTasks` with `--batch B`).
//!
//! Every run is bounded by `--duration` and `--max-requests`, prints one summary line and
//! writes the full result as JSON (`--out`). Refuses non-loopback targets.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use jsonwebtoken::{EncodingKey, Header, encode};
use rand::Rng;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Options {
    scenario: String,
    url: String,
    secret: String,
    connections: usize,
    duration: Duration,
    max_requests: u64,
    working_set: usize,
    distribution: String,
    batch: usize,
    out: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().ok_or("usage: loadgen <query|create> [options]")?;
    let mut o = Options {
        scenario,
        url: "http://127.0.0.1:8080".into(),
        secret: std::env::var("TASKWIRE_JWT_SECRET").unwrap_or_default(),
        connections: 64,
        duration: Duration::from_secs(20),
        max_requests: 2_000_000,
        working_set: 1_000,
        distribution: "uniform".into(),
        batch: 1,
        out: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--url" => o.url = value,
            "--secret" => o.secret = value,
            "--connections" => o.connections = number(&value)? as usize,
            "--duration" => o.duration = Duration::from_secs(number(value.trim_end_matches('s'))?),
            "--max-requests" => o.max_requests = number(&value)?,
            "--working-set" => o.working_set = number(&value)? as usize,
            "--distribution" => o.distribution = value,
            "--batch" => o.batch = number(&value)?.clamp(1, 500) as usize,
            "--out" => o.out = Some(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let host = o.url.split("://").nth(1).unwrap_or_default().split(['/', ':']).next().unwrap_or_default();
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        return Err(format!("refusing a non-loopback target {host}"));
    }
    if o.secret.is_empty() {
        return Err("--secret (or TASKWIRE_JWT_SECRET) is required to mint the load token".into());
    }
    Ok(o)
}

/// Latencies and error codes of one worker.
#[derive(Default)]
struct Tally {
    micros: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

async fn post(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> Result<Value, String> {
    let response =
        client.post(url).bearer_auth(token).json(body).send().await.map_err(|e| format!("transport: {e}"))?;
    let value: Value = response.json().await.map_err(|e| format!("body: {e}"))?;
    match value["errors"][0]["extensions"]["code"].as_str() {
        Some(code) => Err(code.to_owned()),
        None => Ok(value),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
            + 3600;
    let claims =
        json!({ "sub": format!("loadgen-{}", uuid::Uuid::new_v4().simple()), "roles": ["client"], "exp": exp });
    let token = match encode(&Header::default(), &claims, &EncodingKey::from_secret(options.secret.as_bytes())) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("loadgen: minting the token: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let url = format!("{}/graphql", options.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.connections)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();

    let ids = if options.scenario == "query" {
        match seed(&client, &url, &token, options.working_set).await {
            Ok(ids) => Arc::new(ids),
            Err(e) => {
                eprintln!("loadgen: seeding the working set failed: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        Arc::new(vec![])
    };

    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut workers = Vec::new();
    for _ in 0..options.connections {
        let (client, url, token, ids, issued, o) =
            (client.clone(), url.clone(), token.clone(), ids.clone(), issued.clone(), options.clone());
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
            for (code, n) in tally.errors {
                *errors.entry(code).or_default() += n;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    micros.sort_unstable();
    let pct = |p: f64| {
        micros.get(((micros.len() as f64 * p) as usize).min(micros.len().saturating_sub(1))).copied().unwrap_or(0)
            as f64
            / 1000.0
    };
    let requests = micros.len() as f64;
    let per_request = if options.scenario == "create" { options.batch as f64 } else { 1.0 };
    let result = json!({
        "scenario": options.scenario,
        "connections": options.connections,
        "batch": options.batch,
        "distribution": options.distribution,
        "working_set": options.working_set,
        "seconds": elapsed,
        "requests": micros.len(),
        "requests_per_second": requests / elapsed,
        "items_per_second": requests * per_request / elapsed,
        "latency_ms": { "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": micros.last().copied().unwrap_or(0) as f64 / 1000.0 },
        "errors": errors,
    });
    println!(
        "{} c={} batch={}: {:.0} req/s ({:.0} items/s), p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {:?}",
        options.scenario,
        options.connections,
        options.batch,
        requests / elapsed,
        requests * per_request / elapsed,
        pct(0.5),
        pct(0.95),
        pct(0.99),
        micros.last().copied().unwrap_or(0) as f64 / 1000.0,
        result["errors"]
    );
    if let Some(path) = &options.out
        && let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&result).unwrap_or_default())
    {
        eprintln!("loadgen: writing {path}: {e}");
    }
    std::process::ExitCode::SUCCESS
}

fn request_body(o: &Options, ids: &[String]) -> Value {
    match o.scenario.as_str() {
        "query" => {
            let mut rng = rand::rng();
            let n = ids.len().max(1);
            let index = if o.distribution == "hot" && rng.random_bool(0.9) {
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
            "query": "mutation One($i: CreateTaskInput!) { createTask(input: $i) { task { id } } }",
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
