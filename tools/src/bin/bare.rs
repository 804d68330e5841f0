//! `bare`: the ceiling a GraphQL server on this machine is measured against
//! (docs/benchmarks-analysis.md, "Queries against bare axum").
//!
//! A bare axum endpoint that does what any JSON-over-HTTP handler must and nothing more:
//! it reads a POST body, parses it as JSON, and answers a JSON object built from the
//! request's `variables.id`, shaped like Taskwire's answer to
//! `task(id) { id status priority }`. Same runtime, allocator and HTTP stack as the
//! service, so the ratio between the two is what the service's own work costs.
//!
//!     bare [ADDRESS]   (default 127.0.0.1:18088)

use axum::{Json, Router, body::Bytes, http::StatusCode, routing::post};
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

async fn graphql(body: Bytes) -> Result<Json<Value>, StatusCode> {
    let request: Value = serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let id = request["variables"]["id"].as_str().unwrap_or_default();
    Ok(Json(json!({ "data": { "task": { "id": id, "status": "QUEUED", "priority": 0 } } })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18088".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("bare axum JSON endpoint on http://{address}/graphql");
    axum::serve(listener, Router::new().route("/graphql", post(graphql))).await?;
    Ok(())
}
