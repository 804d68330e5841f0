//! Building and running the application.
//!
//! `Application::build` does all fallible set-up (database, migrations, keys, listener)
//! and returns a handle whose port is known, so tests can bind port 0 and talk to the
//! real thing. `run_until_stopped` serves until the shutdown token is cancelled, then
//! drains in-flight requests.

use std::sync::{Arc, atomic::AtomicUsize};

use rdkafka::consumer::StreamConsumer;
use sea_orm_migration::MigratorTrait;
use taskwire_domain::EnvelopeType;
use taskwire_migration::Migrator;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::JwtKeys,
    cache::TaskCache,
    config::{Config, ConfigError},
    dispatch::{DispatchSettings, DispatcherId, LocalDispatcher, matcher::Matcher, reaper},
    graphql::{SchemaOptions, build_schema, sdl},
    http::{AppState, Limits, Shared, apq::PersistedQueries, protect::Protection, router},
    kafka::{ClosesAside, EmbeddedCluster, Kafka, consumer, relay::OutboxRelay},
    live::{Hub, sweep::Sweeper},
    metrics::Metrics,
    ratelimit::RateLimiter,
    redis_link::{RedisClient, RedisLink},
};
use taskwire_store::{DbStats, Store, Topics};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Bad or refused configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The JWT verification keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] crate::auth::KeyError),
    /// The database could not be reached or migrated.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// Migrations are off (`TASKWIRE_MIGRATE=false`) and the database lacks some of this
    /// release's: its queries would fail (some name the indexes those migrations add).
    #[error(
        "database: {pending} migration(s) of this release are not applied (the first: {first}); run \
         `taskwire migrate up`, or start one process with TASKWIRE_MIGRATE=true"
    )]
    SchemaBehind {
        /// How many are missing.
        pending: usize,
        /// The oldest missing one.
        first: String,
    },
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
    /// The query limits cannot read the schema (a bug: the SDL is generated).
    #[error("query limits: {0}")]
    Schema(#[from] crate::graphql::limits::SchemaShapeError),
    /// Kafka could not be started or reached.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The brokers did not answer in time (`TASKWIRE_KAFKA_STARTUP_TIMEOUT_MS`).
    #[error("kafka: {step} did not finish within {after:?}; are the brokers at {brokers} up and answering?")]
    KafkaTimeout {
        /// What start-up was doing.
        step: &'static str,
        /// The configured limit.
        after: std::time::Duration,
        /// The configured brokers (`embedded` for the mock cluster).
        brokers: String,
    },
}

/// The librdkafka error code of `e`, including an admin operation's (which
/// `rdkafka_error_code` leaves out).
fn kafka_code(e: &rdkafka::error::KafkaError) -> Option<rdkafka::types::RDKafkaErrorCode> {
    match e {
        rdkafka::error::KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    }
}

/// Runs one start-up step against Kafka within the configured time limit.
async fn kafka_step<T>(
    settings: &crate::kafka::KafkaSettings,
    step: &'static str,
    work: impl Future<Output = Result<T, rdkafka::error::KafkaError>>,
) -> Result<T, StartupError> {
    use rdkafka::types::RDKafkaErrorCode::{OperationTimedOut, RequestTimedOut};
    let timed_out = || StartupError::KafkaTimeout {
        step,
        after: settings.startup_timeout,
        brokers: settings.brokers.clone().unwrap_or_else(|| "embedded".to_owned()),
    };
    match tokio::time::timeout(settings.startup_timeout, work).await {
        // librdkafka's own request time limits may run out first: the same failure.
        Ok(Err(e)) if matches!(kafka_code(&e), Some(OperationTimedOut | RequestTimedOut)) => Err(timed_out()),
        Ok(result) => Ok(result?),
        Err(_) => Err(timed_out()),
    }
}

/// The background work an application owns: started by `run_until_stopped`, stopped
/// after HTTP has drained.
struct Background {
    relay: OutboxRelay,
    /// The status consumer feeding live subscriptions (`api` role).
    consumer: Option<Arc<ClosesAside<StreamConsumer>>>,
    hub: Arc<Hub>,
    /// The matcher, reaper and scheduler (`dispatcher` role).
    dispatcher: Option<(Matcher, DispatchSettings)>,
}

/// A built application, bound but not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    api: bool,
    graphiql: bool,
    console: bool,
    introspection: bool,
    cors: crate::http::cors::CorsOrigins,
    connections: crate::http::serve::ConnectionLimits,
    background: Background,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("port", &self.port()).finish_non_exhaustive()
    }
}

/// Brings the schema up to this release, or with `migrate` off checks that it is.
///
/// A schema newer than this binary (migrations of a later release applied: an older
/// process restarting during a rolling upgrade) is served as it is, whatever `migrate`
/// says: later releases only add to the schema, and running this release's migrations
/// against it would fail on the ones it does not know. A schema older than the binary
/// with migrations off refuses to start: some queries name the indexes its migrations add.
async fn prepare_schema(db: &sea_orm::DatabaseConnection, migrate: bool) -> Result<(), StartupError> {
    let pending = match Migrator::get_pending_migrations_read_only(db).await {
        Ok(pending) => pending,
        // sea-orm-migration's words for a migration applied in the database that this
        // binary does not have (a test pins them).
        Err(sea_orm::DbErr::Custom(message)) if message.contains("has been applied but its file is missing") => {
            tracing::warn!(%message, "the database has migrations of a later release; serving it as it is");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    match pending.first() {
        None => Ok(()),
        Some(_) if migrate => Ok(Migrator::up(db, None).await?),
        Some(first) => Err(StartupError::SchemaBehind { pending: pending.len(), first: first.name().to_owned() }),
    }
}

impl Application {
    /// Connects, migrates (unless disabled), loads keys and binds the listener.
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        config.check_serving()?;
        let keys = JwtKeys::load(&config.jwt, &config.data_dir)?;
        let store = Store::connect(&config.database, Topics::new(&config.kafka.topic_prefix)).await?;
        prepare_schema(store.connection(), config.migrate).await?;
        let redis =
            config.redis_target.as_ref().map(|target| RedisClient::open(target, config.redis.timeout)).transpose()?;
        let metrics = Metrics::new();
        store.observe(metrics.store.clone());
        let redis_link = Arc::new(RedisLink::new(redis.clone(), config.redis.clone(), metrics.clone()));
        let cache = TaskCache::new(config.cache.clone(), redis_link.clone(), metrics.clone());
        let kafka = kafka_step(&config.kafka, "creating the topics", Kafka::connect(&config.kafka)).await?;
        let producer_kafka = kafka.clone();
        let relay = OutboxRelay::new(
            store.clone(),
            Box::new(move || producer_kafka.producer()),
            cache.clone(),
            kafka.topics().for_envelope(EnvelopeType::Status),
            metrics.clone(),
        )?;
        let hub = Hub::new(config.subscriber_buffer, metrics.clone());
        let dispatcher_id = config.roles.dispatcher.then(DispatcherId::generate);
        let dispatcher = match &dispatcher_id {
            Some(id) => {
                let topic = kafka.topics().for_envelope(EnvelopeType::Dispatch);
                let group = format!("{}.dispatcher", config.kafka.topic_prefix);
                let consumer = kafka.dispatch_consumer(&group, &topic)?;
                tracing::info!(dispatcher = id.as_str(), "dispatcher id");
                let matcher =
                    Matcher::new(store.clone(), config.dispatch.clone(), metrics.clone(), id.clone(), consumer, topic);
                Some((matcher, config.dispatch.clone()))
            }
            None => None,
        };
        // After a change commits, this process acts on it at once instead of after the
        // relay → Kafka → consumer round trip (each listener says what it does). The Kafka
        // copies still come: they are what other processes (and this one, for other
        // writers) act on.
        store.subscribe(Arc::new(cache.clone()));
        if config.roles.api {
            store.subscribe(hub.clone());
        }
        if let Some((matcher, _)) = &dispatcher {
            store.subscribe(Arc::new(matcher.local_feed()));
        }
        let consumer = if config.roles.api {
            let status_topic = kafka.topics().for_envelope(EnvelopeType::Status);
            let group = format!("taskwire-api-{}", uuid::Uuid::new_v4().simple());
            let consumer = Arc::new(ClosesAside::new(kafka.live_consumer(&group)?));
            // Fixed before serving: every status event committed from now on reaches us.
            let assign = consumer::assign_at_end(consumer.clone(), status_topic);
            kafka_step(&config.kafka, "reading the status topic's end offsets", assign).await?;
            Some(consumer)
        } else {
            None
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartupError::Bind { addr: config.listen, source })?;
        let schema = build_schema(
            store.clone(),
            hub.clone(),
            metrics.clone(),
            SchemaOptions { introspection: config.introspection, worker_ttl: config.dispatch.worker_ttl },
            LocalDispatcher {
                id: dispatcher_id,
                streams: dispatcher.as_ref().map(|(matcher, _)| matcher.open_streams()).unwrap_or_default(),
            },
        );
        let schema_sdl = sdl();
        let protection = Protection::new(
            &schema_sdl,
            config.query_limits,
            config.max_query_bytes,
            PersistedQueries::new(redis_link.clone(), metrics.clone()),
            RateLimiter::new(config.rate_limits, redis_link.clone(), metrics.clone()),
            RateLimiter::for_invalid_tokens(config.rate_limit_invalid_tokens, redis_link, metrics.clone()),
            metrics.clone(),
        )
        .map_err(StartupError::Schema)?;
        let state = AppState::new(Shared {
            protection: Arc::new(protection),
            schema,
            store: store.clone(),
            keys: Arc::new(keys),
            sdl: schema_sdl.into(),
            redis,
            cache,
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                max_batch_operations: config.max_batch_operations,
                request_timeout: config.request_timeout,
                body_read_timeout: config.connections.body_read_timeout,
            },
            kafka,
            dispatch_group: dispatcher.as_ref().map(|(matcher, _)| matcher.membership()),
            metrics: metrics.clone(),
            ws: Arc::new(config.ws.clone()),
            ws_open: Arc::new(AtomicUsize::new(0)),
            ws_subjects: Arc::default(),
            shutdown: CancellationToken::new(),
        });
        Ok(Application {
            listener,
            state,
            api: config.roles.api,
            graphiql: config.graphiql,
            console: config.console,
            introspection: config.introspection,
            cors: config.cors_origins.clone(),
            connections: config.connections,
            background: Background { relay, consumer, hub, dispatcher },
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

    /// The embedded Kafka cluster, when running on it (fault tests take it down).
    pub fn kafka_cluster(&self) -> Option<Arc<EmbeddedCluster>> {
        self.state.kafka.embedded()
    }

    /// The task cache (tests empty its L1 to measure cold reads).
    pub fn task_cache(&self) -> TaskCache {
        self.state.cache.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Metrics {
        self.state.metrics.clone()
    }

    /// Cancelling this token stops the server gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled: then stops accepting, closes
    /// WebSockets with 1001, lets in-flight requests finish, and only then stops the
    /// background tasks (the relay publishes what committed meanwhile and flushes).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application { listener, state, api, graphiql, console, introspection, cors, connections, background } =
            self;
        let shutdown = state.shutdown.clone();
        let background_stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(background.relay.run(background_stop.clone()));
        let mut lagging: Vec<(&'static str, Arc<dyn crate::kafka::ConsumerLag>)> = Vec::new();
        if let Some(status) = background.consumer {
            lagging.push(("status", status.clone()));
            let cache = state.cache.clone();
            let sweeper =
                Sweeper::new(background.hub.clone(), state.store.clone(), cache.clone(), state.metrics.clone());
            tasks.spawn(sweeper.run(background_stop.clone()));
            tasks.spawn(consumer::run(
                status,
                background.hub,
                cache.clone(),
                state.metrics.clone(),
                background_stop.clone(),
            ));
        }
        if let Some((matcher, settings)) = background.dispatcher {
            lagging.push(("dispatch", matcher.consumer()));
            let (store, metrics) = (state.store.clone(), state.metrics.clone());
            tasks.spawn(matcher.run(background_stop.clone()));
            let retention = settings.retention;
            tasks.spawn(reaper::run_reaper(store.clone(), settings, metrics.clone(), background_stop.clone()));
            tasks.spawn(crate::dispatch::retention::run_retention(
                store.clone(),
                state.cache.clone(),
                retention,
                metrics.clone(),
                background_stop.clone(),
            ));
            tasks.spawn(reaper::run_status_sampler(store.clone(), metrics.clone(), background_stop.clone()));
            tasks.spawn(reaper::run_scheduler(store, metrics, background_stop.clone()));
        }
        tasks.spawn(taskwire_store::run_checkpointer(
            state.store.clone(),
            state.metrics.store.clone(),
            background_stop.clone(),
        ));
        tasks.spawn(crate::kafka::run_lag_sampler(lagging, state.metrics.clone(), background_stop.clone()));
        tasks.close();

        let metrics = state.metrics.clone();
        let app = router(state, api, graphiql, console, introspection, &cors);
        let served = crate::http::serve::serve(listener, app, connections, metrics, shutdown).await;
        background_stop.cancel();
        tasks.wait().await;
        served
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

    use super::*;

    /// librdkafka's own time-out, on an admin operation or a metadata request, is the same
    /// start-up failure as the configured limit running out.
    #[tokio::test]
    async fn librdkafka_time_outs_are_start_up_time_outs() {
        let settings = crate::kafka::KafkaSettings {
            brokers: Some("127.0.0.1:1".into()),
            topic_prefix: "t".into(),
            partitions: 1,
            replication: 1,
            startup_timeout: std::time::Duration::from_secs(5),
        };
        for error in [
            KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut),
            KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut),
        ] {
            let outcome = kafka_step(&settings, "a step", async move { Err::<(), _>(error) }).await;
            assert!(matches!(outcome, Err(StartupError::KafkaTimeout { .. })), "{outcome:?}");
        }
        let other =
            kafka_step(&settings, "a step", async { Err::<(), _>(KafkaError::AdminOp(RDKafkaErrorCode::Fail)) });
        assert!(matches!(other.await, Err(StartupError::Kafka(_))), "other errors stay themselves");
    }

    /// An empty database is migrated; with migrations off, a schema older than the binary
    /// stops start-up with a clear error; a schema newer than the binary (an older process
    /// in a rolling upgrade) starts whether migrations are on or off.
    #[tokio::test]
    async fn the_schema_is_migrated_checked_or_left_newer() {
        use sea_orm::{ConnectionTrait, Database};
        use sea_orm_migration::MigratorTrait;

        let db = Database::connect("sqlite::memory:").await.expect("sqlite");
        match prepare_schema(&db, false).await {
            Err(StartupError::SchemaBehind { pending, first }) => {
                assert_eq!(pending, Migrator::migrations().len());
                assert!(first.contains("initial_schema"), "{first}");
            }
            other => panic!("an empty database with migrations off refuses, not {other:?}"),
        }
        prepare_schema(&db, true).await.expect("migrated");
        prepare_schema(&db, false).await.expect("a migrated database is current");

        Migrator::down(&db, Some(1)).await.expect("the newest migration undone");
        match prepare_schema(&db, false).await {
            Err(StartupError::SchemaBehind { pending: 1, first }) => {
                let newest = Migrator::migrations().last().map(|m| m.name().to_owned()).unwrap_or_default();
                assert_eq!(first, newest, "the pending migration is named")
            }
            other => panic!("refused for one pending migration, not {other:?}"),
        }
        prepare_schema(&db, true).await.expect("migrated again");

        db.execute_unprepared(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m20991231_000099_future', 0)",
        )
        .await
        .expect("a migration of a later release");
        prepare_schema(&db, false).await.expect("a newer schema starts with migrations off");
        prepare_schema(&db, true).await.expect("and with migrations on");
    }
}
