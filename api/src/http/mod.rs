//! The HTTP surface: the axum router and its handlers.
//!
//! | path | handler |
//! |---|---|
//! | `POST/GET /graphql` | [`graphql::post`], [`graphql::get`] |
//! | `GET /graphiql`, `GET /graphiql/assets/{name}` | [`assets`]: GraphiQL and its embedded assets (when enabled) |
//! | `GET /console`, `GET /console/assets/{name}` | [`assets`]: the operator console (when enabled) |
//! | `GET /healthz`, `GET /readyz` | [`health`] |
//! | `GET /schema.graphql` | the SDL |

pub(crate) mod apq;
pub(crate) mod assets;
pub mod cors;
pub(crate) mod graphql;
pub(crate) mod health;
pub(crate) mod protect;
pub mod serve;
pub(crate) mod sse;
pub mod ws;

use std::{
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::header,
    response::IntoResponse,
    routing::get,
};

use tokio_util::sync::CancellationToken;

use crate::{auth::JwtKeys, graphql::TaskwireSchema, kafka::Kafka, metrics::Metrics};
use taskwire_store::Store;

/// Everything the handlers share: one pointer, so that the clones axum makes for every
/// request and extractor cost one reference count, not one per field (which showed in
/// the cached-read profile, docs/BENCHMARKS.md).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl AppState {
    pub(crate) fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points to.
pub(crate) struct Shared {
    /// The executable schema.
    pub schema: TaskwireSchema,
    /// The repository.
    pub store: Store,
    /// Token verification.
    pub keys: Arc<JwtKeys>,
    /// The SDL, rendered once.
    pub sdl: Arc<str>,
    /// Redis, when configured (readiness reports it).
    pub redis: Option<crate::redis_link::RedisClient>,
    /// The task read cache.
    pub cache: crate::cache::TaskCache,
    /// Persisted queries, query limits and rate limits.
    pub protection: Arc<protect::Protection>,
    /// Request limits.
    pub limits: Limits,
    /// Kafka, for readiness.
    pub kafka: Kafka,
    /// The dispatcher's consumer-group membership, for readiness (`dispatcher` role).
    pub dispatch_group: Option<crate::dispatch::matcher::GroupMembership>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// WebSocket settings.
    pub ws: Arc<ws::WsSettings>,
    /// Open WebSocket connections (for the cap).
    pub ws_open: Arc<AtomicUsize>,
    /// Open WebSocket connections per token subject (for the per-subject cap).
    pub ws_subjects: Arc<ws::SubjectConnections>,
    /// Cancelled when the server shuts down (WebSockets close with 1001).
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("store", &self.store).field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// HTTP-level limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Operations in one batched request.
    pub max_batch_operations: usize,
    /// Per-request time limit.
    pub request_timeout: Duration,
    /// Time to receive a request body once the headers are in.
    pub body_read_timeout: Duration,
}

/// The router. GraphiQL is mounted only when `graphiql` is true, the operator console
/// only when `console` is, the SDL only when `introspection` is (it is the same
/// information).
///
/// A process without the `api` role (`TASKWIRE_ROLES=dispatcher`) serves only the
/// health, readiness and metrics endpoints.
///
/// Cross-origin calls are answered as `cors` allows (README, Frontends).
pub(crate) fn router(
    state: AppState,
    api: bool,
    graphiql: bool,
    console: bool,
    introspection: bool,
    cors: &cors::CorsOrigins,
) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics));
    if api {
        router = router.route("/graphql", get(graphql::get).post(graphql::post));
    }
    if api && introspection {
        router = router.route("/schema.graphql", get(schema_sdl));
    }
    if api && graphiql {
        router = router
            .route("/graphiql", get(assets::graphiql_page))
            .route("/graphiql/assets/{name}", get(assets::graphiql_asset));
    }
    if api && console {
        router = router
            .route("/console", get(assets::console_page))
            .route("/console/assets/{name}", get(assets::console_asset));
    }
    let router = router.layer(DefaultBodyLimit::max(state.limits.max_body_bytes));
    // Outermost, so a preflight is answered before any other layer looks at it.
    let router = match cors.layer() {
        Some(layer) => router.layer(layer),
        None => router,
    };
    router.with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (in_use, idle) = state.store.pool_state();
    state.metrics.db_pool_connections.with_label_values(&["in_use"]).set(i64::from(in_use));
    state.metrics.db_pool_connections.with_label_values(&["idle"]).set(i64::from(idle));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

async fn schema_sdl(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], state.sdl.to_string())
}
