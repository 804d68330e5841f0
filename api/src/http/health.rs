//! Liveness and readiness.
//!
//! `/healthz` answers 200 while the process runs. `/readyz` checks each dependency and
//! answers 200 when the database and Kafka are usable (Redis down only degrades), 503
//! otherwise, with a JSON body naming each dependency's state, and, in a process that
//! dispatches, whether the dispatcher has joined its consumer group yet.

use std::time::{Duration, Instant};

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::{Value, json};

use super::AppState;

/// How long one dependency check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process is up.
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: can this process serve traffic now?
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (database, redis, kafka) = tokio::join!(check_database(&state), check_redis(&state), check_kafka(&state));
    let usable = database["state"] == "up" && kafka["state"] == "up";
    let redis_degraded = redis["state"] == "down";
    let status = match (usable, redis_degraded) {
        (false, _) => "unavailable",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    let code = if usable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let dependencies = json!({ "database": database, "kafka": kafka, "redis": redis });
    let mut body = json!({ "status": status, "dependencies": dependencies });
    if let Some(group) = &state.dispatch_group {
        body["dispatcher"] = dispatcher(group);
    }
    (code, Json(body))
}

/// Informational, not part of the verdict: until the dispatcher group assigns this
/// process (a few seconds after start), it dispatches by polling the database.
fn dispatcher(group: &crate::dispatch::matcher::GroupMembership) -> Value {
    match group.partitions() {
        None => json!({ "state": "joining" }),
        Some(partitions) => json!({ "state": "joined", "partitions": partitions }),
    }
}

async fn check_database(state: &AppState) -> Value {
    let started = Instant::now();
    match tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {
            json!({ "state": "up", "backend": format!("{:?}", state.store.backend()), "latencyMs": started.elapsed().as_millis() as u64 })
        }
        Ok(Err(_)) => json!({ "state": "down", "backend": format!("{:?}", state.store.backend()) }),
        Err(_) => {
            json!({ "state": "down", "backend": format!("{:?}", state.store.backend()), "error": "timeout" })
        }
    }
}

async fn check_kafka(state: &AppState) -> Value {
    let started = Instant::now();
    let embedded = state.kafka.embedded().is_some();
    match state.kafka.ping(CHECK_TIMEOUT).await {
        Ok(()) => json!({ "state": "up", "embedded": embedded, "latencyMs": started.elapsed().as_millis() as u64 }),
        Err(e) => {
            tracing::warn!(error = %e, "kafka readiness check failed");
            json!({ "state": "down", "embedded": embedded })
        }
    }
}

async fn check_redis(state: &AppState) -> Value {
    let Some(client) = &state.redis else {
        return json!({ "state": "disabled" });
    };
    let mode = if client.is_cluster() { "cluster" } else { "standalone" };
    let started = Instant::now();
    match tokio::time::timeout(CHECK_TIMEOUT, client.ping()).await {
        Ok(Ok(())) => json!({ "state": "up", "mode": mode, "latencyMs": started.elapsed().as_millis() as u64 }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "redis readiness check failed");
            json!({ "state": "down", "mode": mode })
        }
        Err(_) => json!({ "state": "down", "mode": mode, "error": "timeout" }),
    }
}
