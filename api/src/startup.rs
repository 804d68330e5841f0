//! Building and running the application.
//!
//! `Application::build` does all fallible set-up (database, migrations, keys, listener)
//! and returns a handle whose port is known, so tests can bind port 0 and talk to the
//! real thing. `run_until_stopped` serves until the shutdown token is cancelled, then
//! drains in-flight requests.

use std::sync::Arc;

use sea_orm_migration::MigratorTrait;
use taskwire_migration::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::JwtKeys,
    config::{Config, ConfigError},
    graphql::{SchemaOptions, build_schema, sdl},
    http::{AppState, Limits, router},
    store::{DbStats, Store},
};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Bad or refused configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be reached or migrated.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// The listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The Redis URL is malformed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A built application, bound but not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    graphiql: bool,
    introspection: bool,
    shutdown: CancellationToken,
}

impl Application {
    /// Connects, migrates (unless disabled), loads keys and binds the listener.
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        config.check_serving()?;
        let keys = JwtKeys::load(&config.jwt, &config.data_dir)?;
        let store = Store::connect(&config).await?;
        if config.migrate {
            Migrator::up(store.connection(), None).await?;
        }
        let redis = config.redis_url.as_deref().map(redis::Client::open).transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartupError::Bind { addr: config.listen, source })?;
        let schema = build_schema(store.clone(), SchemaOptions { introspection: config.introspection });
        let state = AppState {
            schema,
            store,
            keys: Arc::new(keys),
            sdl: sdl().into(),
            redis,
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                max_batch_operations: config.max_batch_operations,
                request_timeout: config.request_timeout,
            },
        };
        Ok(Application {
            listener,
            state,
            graphiql: config.graphiql,
            introspection: config.introspection,
            shutdown: CancellationToken::new(),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Token keys (to mint the dev token printed at start).
    pub fn keys(&self) -> Arc<JwtKeys> {
        self.state.keys.clone()
    }

    /// Database statement counters.
    pub fn db_stats(&self) -> Arc<DbStats> {
        self.state.store.stats().clone()
    }

    /// Cancelling this token stops the server gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let app = router(self.state, self.graphiql, self.introspection);
        let shutdown = self.shutdown.clone();
        axum::serve(self.listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    }
}
