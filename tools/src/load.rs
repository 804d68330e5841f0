//! Pieces shared by the load tools (`loadgen`, `drill`, `plot`): a GraphQL POST that
//! answers the error code, token minting, latency summaries, command-line value parsers
//! and small helpers.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use taskwire_worker::{Handler, Worker, WorkerConfig};

/// Percentiles of the latency curve in [`latency_ms`] (what `plot` draws).
pub const CURVE_PERCENTILES: [f64; 14] =
    [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0];

/// POSTs a GraphQL request; the response body, or the first error's `extensions.code`
/// (`transport: …` / `body: …` when there is no GraphQL answer).
pub async fn post(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> Result<Value, String> {
    let response =
        client.post(url).bearer_auth(token).json(body).send().await.map_err(|e| format!("transport: {e}"))?;
    let value: Value = response.json().await.map_err(|e| format!("body: {e}"))?;
    match value["errors"][0]["extensions"]["code"].as_str() {
        Some(code) => Err(code.to_owned()),
        None => Ok(value),
    }
}

/// An HS256 token for `sub` with `roles`, valid for `lifetime`.
pub fn mint(secret: &str, sub: &str, roles: &[&str], lifetime: Duration) -> Result<String, String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + lifetime;
    let claims = json!({ "sub": sub, "roles": roles, "exp": exp.as_secs() });
    encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| format!("minting a token: {e}"))
}

/// Count, p50, p95, p99, max and the percentile curve ([`CURVE_PERCENTILES`], as
/// `[percentile, ms]` pairs) of latencies given in µs, in ms (`null`s when empty).
pub fn latency_ms(mut micros: Vec<i64>) -> Value {
    micros.sort_unstable();
    let ms = |v: &i64| *v as f64 / 1000.0;
    let at = |p: f64| {
        let rank = ((micros.len() as f64 * p / 100.0) as usize).min(micros.len().saturating_sub(1));
        micros.get(rank).map(ms)
    };
    let curve: Vec<Value> = CURVE_PERCENTILES.iter().filter_map(|&p| at(p).map(|v| json!([p, v]))).collect();
    json!({
        "count": micros.len(),
        "p50": at(50.0),
        "p95": at(95.0),
        "p99": at(99.0),
        "max": micros.last().map(ms),
        "curve": curve,
    })
}

/// Latencies grouped by the second (since `start`, µs) their sample began in: one
/// `[second, count, p50 ms, p99 ms, max ms]` row per second that has samples. Shows
/// whether a tail is spread out or comes in bursts, and when.
pub fn timeline(start: i64, samples: &[(i64, i64)]) -> Value {
    let mut by_second: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for &(began, micros) in samples {
        by_second.entry((began - start).div_euclid(1_000_000)).or_default().push(micros);
    }
    let rows: Vec<Value> = by_second
        .into_iter()
        .map(|(second, mut micros)| {
            micros.sort_unstable();
            let at = |p: usize| micros[(micros.len() * p / 100).min(micros.len() - 1)] as f64 / 1000.0;
            json!([second, micros.len(), at(50), at(99), at(100)])
        })
        .collect();
    Value::Array(rows)
}

/// `p50/p95/p99/max ms` of a [`latency_ms`] value.
pub fn brief(latency: &Value) -> String {
    let at = |key: &str| latency[key].as_f64().map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    format!("{}/{}/{}/{} ms", at("p50"), at("p95"), at("p99"), at("max"))
}

/// The base URLs given to a tool (each value may list several, comma-separated), without
/// trailing slashes; `default` when none is given. Refuses any that is not on loopback:
/// the tools load this machine only.
pub fn loopback_urls(values: &[String], default: &str) -> Result<Vec<String>, String> {
    let mut urls: Vec<String> = values
        .iter()
        .flat_map(|value| value.split(','))
        .map(|url| url.trim().trim_end_matches('/').to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() {
        urls.push(default.to_owned());
    }
    for url in &urls {
        let authority = url.split("://").nth(1).unwrap_or_default().split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        if !(host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())) {
            return Err(format!("refusing a non-loopback target {url}"));
        }
    }
    Ok(urls)
}

/// The URLs starting at the `i`-th, wrapping around, comma-separated: the fail-over list of
/// the `i`-th reference worker (see `WorkerConfig::url`), so that workers start spread
/// round-robin over the instances.
pub fn failover_list(urls: &[String], i: usize) -> String {
    let n = urls.len().max(1);
    (0..urls.len()).map(|k| urls[(i + k) % n].as_str()).collect::<Vec<_>>().join(",")
}

/// Starts one reference worker per configuration, `concurrency` at a time, all with
/// `handler`: the workers that started, and why the others did not.
pub async fn start_workers(
    configs: Vec<WorkerConfig>,
    handler: Handler,
    concurrency: usize,
) -> (Vec<Worker>, Vec<taskwire_worker::Error>) {
    let started: Vec<_> = futures::stream::iter(configs)
        .map(|config| Worker::start(config, handler.clone()))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let (mut workers, mut failures) = (Vec::new(), Vec::new());
    for worker in started {
        match worker {
            Ok(worker) => workers.push(worker),
            Err(e) => failures.push(e),
        }
    }
    (workers, failures)
}

/// The GraphQL WebSocket endpoint of a base URL (`http://h:p` → `ws://h:p/graphql`).
pub fn ws_graphql(base: &str) -> String {
    let base = base.trim_end_matches('/');
    match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}/graphql"),
        None => format!("{}/graphql", base.replacen("http://", "ws://", 1)),
    }
}

/// A short random id naming one run's queue and subjects.
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// A count of seconds, `20` or `20s`.
pub fn parse_seconds(value: &str) -> Result<u64, String> {
    value.trim_end_matches('s').parse().map_err(|_| format!("not a number of seconds: {value}"))
}

/// A rate per second: finite and positive.
pub fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        Ok(_) => Err(format!("must be positive: {value}")),
        Err(_) => Err(format!("not a number: {value}")),
    }
}

/// A queue name the server accepts.
pub fn parse_queue_name(value: &str) -> Result<String, String> {
    taskwire_domain::QueueName::parse(value).map(|name| name.to_string()).map_err(|e| e.to_string())
}

/// Adds error counts by reason.
pub fn add_errors(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (reason, n) in from {
        *into.entry(reason).or_default() += n;
    }
}

/// Shortens an error reason to its kind, so that counts group: `transport: error sending
/// request for url (…)` becomes `transport`; GraphQL codes stay as they are.
pub fn error_kind(reason: &str) -> String {
    reason.split(':').next().unwrap_or(reason).trim().to_owned()
}

/// Locks a mutex, ignoring poisoning (counters and maps, always usable).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_and_curve() {
        let summary = latency_ms((1..=1000).map(|ms| ms * 1000).collect());
        assert_eq!(summary["count"], 1000);
        assert_eq!(summary["p50"], 501.0);
        assert_eq!(summary["p99"], 991.0);
        assert_eq!(summary["max"], 1000.0);
        let curve = summary["curve"].as_array().cloned().unwrap_or_default();
        assert_eq!(curve.len(), CURVE_PERCENTILES.len());
        assert_eq!(curve[0], json!([0.0, 1.0]));
        assert_eq!(curve[curve.len() - 1], json!([100.0, 1000.0]));
        let empty = latency_ms(vec![]);
        assert!(empty["p50"].is_null());
        assert_eq!(empty["curve"], json!([]));
    }

    #[test]
    fn urls_are_split_checked_and_rotated() {
        let values = vec!["http://127.0.0.1:1/, http://localhost:2".to_owned(), "http://[::1]:3".to_owned()];
        let urls = loopback_urls(&values, "http://127.0.0.1:8080").expect("loopback");
        assert_eq!(urls, ["http://127.0.0.1:1", "http://localhost:2", "http://[::1]:3"]);
        assert_eq!(loopback_urls(&[], "http://127.0.0.1:8080"), Ok(vec!["http://127.0.0.1:8080".to_owned()]));
        assert!(loopback_urls(&["http://127.0.0.1:1,http://10.0.0.1:2".to_owned()], "x").is_err());
        assert!(loopback_urls(&["http://[::2]:1".to_owned()], "x").is_err());
        assert!(loopback_urls(&["http://127.0.0.1.example.com:1".to_owned()], "x").is_err());
        assert_eq!(failover_list(&urls, 0), "http://127.0.0.1:1,http://localhost:2,http://[::1]:3");
        assert_eq!(failover_list(&urls, 4), "http://localhost:2,http://[::1]:3,http://127.0.0.1:1");
        assert_eq!(failover_list(&urls[..1], 7), "http://127.0.0.1:1");
        assert_eq!(ws_graphql("http://127.0.0.1:1/"), "ws://127.0.0.1:1/graphql");
        assert_eq!(ws_graphql("https://localhost"), "wss://localhost/graphql");
    }

    #[test]
    fn command_line_values() {
        assert_eq!((parse_seconds("20"), parse_seconds("20s")), (Ok(20), Ok(20)));
        assert!(parse_seconds("soon").is_err());
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("0").is_err() && parse_rate("inf").is_err() && parse_rate("x").is_err());
        assert_eq!(parse_queue_name("images.thumbs"), Ok("images.thumbs".to_owned()));
        assert!(parse_queue_name("Images").is_err());
        assert_eq!(new_run_id().len(), 8);
    }

    #[test]
    fn error_kinds_group_transport_failures() {
        assert_eq!(error_kind("transport: error sending request for url (http://x)"), "transport");
        assert_eq!(error_kind("UNAVAILABLE"), "UNAVAILABLE");
    }
}
