//! Configuration: one [`Config`], loaded in layers — built-in defaults, then an optional
//! TOML file (`--config`), then `TASKWIRE_*` environment variables.
//!
//! The file uses the variable names without the prefix, lower-cased
//! (`database_url = "mysql://…"` sets what `TASKWIRE_DATABASE_URL` sets). Unknown keys are
//! errors, so a typo never silently falls back to a default.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::SecretString;
use taskwire_store::{DatabaseSettings, is_mysql_url};

/// A configuration key: its name without the `TASKWIRE_` prefix, its default, its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The name, e.g. `LISTEN` for `TASKWIRE_LISTEN` (and `listen` in the file).
    pub name: &'static str,
    /// What applies when the key is not set.
    pub default: KeyDefault,
    /// One line for `--help`.
    pub meaning: &'static str,
}

/// How a key's default is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// This value, read exactly as if it had been set: the only place it is written.
    Value(&'static str),
    /// No single value: the key stays unset, or its default follows from other keys
    /// (this text says how; [`Config`] derives it).
    Derived(&'static str),
}

impl KeyDefault {
    /// The default as the docs show it.
    pub fn text(&self) -> &'static str {
        match self {
            KeyDefault::Value(text) | KeyDefault::Derived(text) => text,
        }
    }
}

const fn value(name: &'static str, default: &'static str, meaning: &'static str) -> Key {
    Key { name, default: KeyDefault::Value(default), meaning }
}

const fn derived(name: &'static str, default: &'static str, meaning: &'static str) -> Key {
    Key { name, default: KeyDefault::Derived(default), meaning }
}

/// Every key, with its one default and its meaning; printed by `taskwire --help` and
/// listed in the README's configuration table (a test keeps the two the same).
pub const KEYS: &[Key] = &[
    value("LISTEN", "127.0.0.1:8080", "bind address"),
    value("DATABASE_URL", "sqlite://data/taskwire.db?mode=rwc", "mysql://… for MySQL/MariaDB (production mode)"),
    derived(
        "DATABASE_MAX_CONNECTIONS",
        "8 (MySQL) / 4 (SQLite)",
        "database pool size (on SQLite the readers; writes have one connection of their own)",
    ),
    value("DATABASE_ACQUIRE_TIMEOUT_MS", "2000", "wait for a pooled connection before UNAVAILABLE"),
    value(
        "DATABASE_STATEMENT_CACHE",
        "512",
        "prepared statements kept per MySQL connection (server-wide limit: max_prepared_stmt_count)",
    ),
    derived(
        "REDIS_URL",
        "unset: in-process cache and rate limits only",
        "redis://host:port (one server), or a Redis Cluster as redis+cluster://host1:port1,host2:port2 or \
         redis://host1:port1,redis://host2:port2: the L2 cache, global rate limits and shared persisted queries",
    ),
    value("REDIS_TIMEOUT_MS", "250", "time limit of one Redis command; slower counts as a failure"),
    value("REDIS_BREAKER_COOLDOWN_MS", "2000", "after 3 failures in a row Redis is skipped this long, then probed"),
    value("REDIS_KEY_PREFIX", "taskwire", "prefix of every Redis key, so deployments can share one Redis"),
    value(
        "CACHE_L1_MAX_BYTES",
        "134217728",
        "memory the in-process (L1) cache may use, by an estimate of each task's size",
    ),
    value(
        "CACHE_L1_TTL_MS",
        "5000",
        "how long a task stays in L1 (a leased task: at most this long behind a heartbeat)",
    ),
    value("CACHE_L2_TTL_MS", "300000", "how long a settled task stays in Redis (L2), ±10% jitter"),
    value("CACHE_NULL_TTL_MS", "2000", "how long a missing task id is remembered as missing"),
    value("CACHE_DB_CONCURRENCY", "4", "concurrent cache-miss loads from the database (the cap while Redis is down)"),
    derived(
        "KAFKA_BROKERS",
        "unset: embedded librdkafka mock cluster",
        "host:port,… of a real Kafka-compatible cluster",
    ),
    value("KAFKA_TOPIC_PREFIX", "taskwire", "topics <prefix>.tasks.dispatch, .status, .dead"),
    value("KAFKA_PARTITIONS", "3", "partitions of each topic created at start"),
    value("KAFKA_REPLICATION", "1", "replication factor of each topic created at start (real brokers)"),
    value(
        "KAFKA_STARTUP_TIMEOUT_MS",
        "30000",
        "time to reach the brokers, create the topics and read their offsets at start before giving up",
    ),
    value("SUBSCRIBER_BUFFER", "256", "events buffered per subscription before it resyncs from the database"),
    value("WS_INIT_TIMEOUT_MS", "10000", "time to send connection_init before close 4408"),
    value("WS_KEEPALIVE_MS", "15000", "interval of server keep-alive pings"),
    value("WS_MAX_SUBSCRIPTIONS", "100", "subscriptions per WebSocket connection"),
    value("WS_MAX_CONNECTIONS", "10000", "open WebSocket connections per process"),
    value("WS_WRITE_TIMEOUT_MS", "10000", "a client that reads nothing for this long is dropped"),
    derived("WS_ALLOWED_ORIGINS", "unset: any", "comma-separated Origin allow-list for WebSocket upgrades"),
    derived("JWT_SECRET", "embedded mode: generated once into the data dir", "HS256 secret"),
    derived("JWT_PUBLIC_KEY_FILE", "unset", "PEM public key for RS256/ES256 (then HS256 is refused)"),
    derived("JWT_ISSUER", "unset", "required `iss` when set"),
    derived("JWT_AUDIENCE", "unset", "required `aud` when set"),
    derived("INTROSPECTION", "true embedded, false with MySQL", "GraphQL introspection"),
    derived("GRAPHIQL", "true embedded, false with MySQL", "serve GraphiQL at /graphiql"),
    value("CONSOLE", "true", "serve the operator console at /console (it holds no data: it asks for a token)"),
    derived(
        "CORS_ORIGINS",
        "localhost embedded, off with MySQL",
        "origins whose pages may call /graphql: comma-separated scheme://host[:port], localhost (any port), * or off",
    ),
    value("LOG_FORMAT", "pretty", "pretty | json; levels via RUST_LOG"),
    value("DATA_DIR", "data", "where the embedded dev secret lives"),
    value("MIGRATE", "true", "apply pending migrations when `serve` starts"),
    value("MAX_BODY_BYTES", "2097152", "largest accepted request body"),
    value("MAX_BATCH_OPERATIONS", "10", "operations in one batched HTTP request"),
    value("REQUEST_TIMEOUT_MS", "10000", "per-request time limit"),
    value("LIMIT_DEPTH", "12", "deepest field nesting of an operation (QUERY_TOO_DEEP)"),
    value(
        "LIMIT_COMPLEXITY",
        "10000",
        "largest operation cost; a list field costs first × its selection (QUERY_TOO_COMPLEX)",
    ),
    value("LIMIT_ALIASES", "30", "aliases per operation (TOO_MANY_ALIASES)"),
    value("LIMIT_DIRECTIVES", "50", "directives per operation (QUERY_TOO_COMPLEX)"),
    value("LIMIT_LIST_SIZE", "20", "cost multiplier of a list field without first/last"),
    value("RATE_LIMIT_OPERATIONS", "200", "operations per second per subject (burst: one second's worth); 0 = off"),
    value("RATE_LIMIT_MUTATIONS", "50", "mutations per second per subject, within the operations budget; 0 = off"),
    value("ROLES", "api,dispatcher", "components this process runs: api (HTTP, GraphQL, live events), dispatcher"),
    value("OFFER_TIMEOUT_MS", "10000", "time a worker has to accept an offer before it goes to another"),
    value("WORKER_TTL_MS", "30000", "a worker neither subscribed nor heartbeating for this long goes OFFLINE"),
    value("DISPATCH_READY_CAPACITY", "100000", "tasks the matcher holds in memory; when full it stops reading Kafka"),
    value("REAPER_INTERVAL_MS", "500", "how often lapsed offers, leases, deadlines and offline workers are reaped"),
    value(
        "RETENTION_FINISHED",
        "7d",
        "SUCCEEDED and CANCELLED tasks are deleted with their history this long after their last change; 0 keeps them",
    ),
    value("RETENTION_DEAD", "30d", "DEAD tasks are deleted with their history this long after they died; 0 keeps them"),
    derived(
        "OTLP_ENDPOINT",
        "unset",
        "OpenTelemetry collector (OTLP over HTTP, e.g. http://127.0.0.1:4318) for traces",
    ),
    value(
        "WS_MAX_MESSAGE_BYTES",
        "65536",
        "largest WebSocket message a client may send; a larger frame closes with 1009",
    ),
    value("WS_MAX_ID_BYTES", "128", "longest subscription id; a longer one closes the connection with 4400"),
    value(
        "WS_MAX_CONNECTION_BYTES",
        "262144",
        "bytes of subscribe messages one connection may hold open at once; past it the subscribe gets an error",
    ),
    value(
        "WS_MAX_CONNECTIONS_PER_SUBJECT",
        "64",
        "acknowledged WebSocket connections per token subject (sub) in this process; past it close 4429",
    ),
    value(
        "WS_MAX_OUTBOUND_BYTES",
        "1048576",
        "bytes of subscription results one WebSocket connection may have queued; its subscriptions wait for room",
    ),
    // HTTP hardening (README, Security).
    value(
        "LIMIT_SELECTIONS",
        "2000",
        "selections in a whole GraphQL document, every operation and fragment spread expanded (QUERY_TOO_COMPLEX)",
    ),
    value("LIMIT_QUERY_BYTES", "65536", "longest GraphQL document text, refused before parsing (QUERY_TOO_COMPLEX)"),
    value("HEADER_READ_TIMEOUT_MS", "10000", "time to send a request's headers (and between kept-alive requests)"),
    value("BODY_READ_TIMEOUT_MS", "30000", "time to send a request's body once its headers are in (HTTP 408)"),
    value("IDLE_TIMEOUT_MS", "60000", "an HTTP connection that reads and writes nothing this long is closed"),
    value("MAX_CONNECTIONS_PER_IP", "512", "concurrent connections per client address, WebSockets included; 0 = off"),
    value(
        "JWT_MAX_TTL",
        "24h",
        "longest token lifetime accepted (exp - iat, or exp - now without iat), e.g. 3600, 90m, 24h",
    ),
    value(
        "RATE_LIMIT_INVALID_TOKENS",
        "10",
        "refused tokens per second per client address before it gets RATE_LIMITED; 0 = off",
    ),
];

/// The components a process runs (`TASKWIRE_ROLES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// HTTP API, GraphQL, WebSocket subscriptions and the status consumer feeding them.
    pub api: bool,
    /// Matcher, reaper and scheduler.
    pub dispatcher: bool,
}

impl Roles {
    fn parse(raw: &str) -> Result<Roles, ConfigError> {
        let mut roles = Roles { api: false, dispatcher: false };
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "api" => roles.api = true,
                "dispatcher" => roles.dispatcher = true,
                other => {
                    return Err(ConfigError::Invalid {
                        key: "ROLES",
                        reason: format!("{other:?} is not api or dispatcher"),
                    });
                }
            }
        }
        if !roles.api && !roles.dispatcher {
            return Err(ConfigError::Invalid { key: "ROLES", reason: "name at least one of api, dispatcher".into() });
        }
        Ok(roles)
    }
}

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A value has the wrong shape.
    #[error("TASKWIRE_{key}: {reason}")]
    Invalid {
        /// The key, without prefix.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A combination of settings is refused.
    #[error("{0}")]
    Refused(String),
}

/// The whole service configuration. Defaults are the embedded ones.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bind address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The database (`DATABASE_*`).
    pub database: DatabaseSettings,
    /// Redis, one server or a cluster, from `TASKWIRE_REDIS_URL`. Default unset:
    /// in-process cache only.
    pub redis_target: Option<crate::redis_link::RedisTarget>,
    /// Redis timeouts, breaker and key prefix (defaults in [`KEYS`]).
    pub redis: crate::redis_link::RedisSettings,
    /// Task cache sizes and lifetimes (defaults in [`KEYS`]).
    pub cache: crate::cache::CacheSettings,
    /// OpenTelemetry collector for traces (OTLP/HTTP).
    pub otlp_endpoint: Option<String>,
    /// Kafka settings: brokers (default unset: embedded mock cluster), topic prefix
    /// (default `taskwire`), partitions (default 3), replication (default 1).
    pub kafka: crate::kafka::KafkaSettings,
    /// Events buffered per subscription before it resyncs.
    pub subscriber_buffer: usize,
    /// WebSocket limits and timers (defaults in [`KEYS`]).
    pub ws: crate::http::ws::WsSettings,
    /// Token verification.
    pub jwt: crate::auth::JwtSettings,
    /// GraphQL introspection. Default: on when embedded, off with MySQL.
    pub introspection: bool,
    /// GraphiQL at `/graphiql`. Default: on when embedded, off with MySQL.
    pub graphiql: bool,
    /// The operator console at `/console`.
    pub console: bool,
    /// Origins whose pages may call the API (`TASKWIRE_CORS_ORIGINS`; default: localhost
    /// origins in the embedded default, none in production mode).
    pub cors_origins: crate::http::cors::CorsOrigins,
    /// Log format.
    pub log_format: crate::telemetry::LogFormat,
    /// Directory for embedded-mode files (the dev JWT secret).
    pub data_dir: PathBuf,
    /// Apply pending migrations when serving.
    pub migrate: bool,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Operations in one batched HTTP request.
    pub max_batch_operations: usize,
    /// Per-request time limit.
    pub request_timeout: Duration,
    /// Static limits on every operation (defaults in [`KEYS`]).
    pub query_limits: crate::graphql::limits::QueryLimits,
    /// Per-subject rate limits (defaults in [`KEYS`]).
    pub rate_limits: crate::ratelimit::RateLimits,
    /// Components to run.
    pub roles: Roles,
    /// Dispatcher timers and bounds (defaults in [`KEYS`]).
    pub dispatch: crate::dispatch::DispatchSettings,
    /// Read time limits and the per-address connection cap of the HTTP server.
    pub connections: crate::http::serve::ConnectionLimits,
    /// Longest GraphQL document text accepted (`TASKWIRE_LIMIT_QUERY_BYTES`).
    pub max_query_bytes: usize,
    /// Refused tokens per second per client address (`TASKWIRE_RATE_LIMIT_INVALID_TOKENS`).
    pub rate_limit_invalid_tokens: u32,
}

impl Config {
    /// Whether this is production mode (a MySQL/MariaDB database).
    pub fn is_production(&self) -> bool {
        self.database.is_mysql()
    }

    /// The defaults alone (for tests of the modules whose settings these are).
    #[cfg(test)]
    pub(crate) fn defaults() -> Config {
        Config::load_from(None, &BTreeMap::new()).expect("the defaults load")
    }

    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Config::load_from(file, &env)
    }

    /// Like [`Config::load`], with an explicit environment (for tests).
    pub fn load_from(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut values = BTreeMap::new();
        if let Some(path) = file {
            values.extend(read_file(path)?);
        }
        for key in KEYS {
            if let Some(v) = env.get(&format!("TASKWIRE_{}", key.name)) {
                values.insert(key.name, v.clone());
            }
        }
        Config::from_values(&values)
    }

    fn from_values(values: &BTreeMap<&'static str, String>) -> Result<Config, ConfigError> {
        // A set value, else the key's default when it is a plain value.
        let get = |key: &str| {
            values.get(key).map(String::as_str).filter(|v| !v.is_empty()).or_else(|| match key_default(key) {
                Some(KeyDefault::Value(value)) => Some(value),
                _ => None,
            })
        };
        let database_url = text(get("DATABASE_URL"), "DATABASE_URL")?.to_owned();
        let production = is_mysql_url(&database_url);
        if !production && !database_url.starts_with("sqlite:") {
            return Err(ConfigError::Invalid {
                key: "DATABASE_URL",
                reason: "must start with mysql:// or sqlite:".into(),
            });
        }
        let max_body_bytes = parse(get("MAX_BODY_BYTES"), "MAX_BODY_BYTES")?;
        let config = Config {
            listen: parse(get("LISTEN"), "LISTEN")?,
            database: DatabaseSettings {
                url: database_url,
                max_connections: match get("DATABASE_MAX_CONNECTIONS") {
                    Some(_) => positive(get("DATABASE_MAX_CONNECTIONS"), "DATABASE_MAX_CONNECTIONS")?,
                    None if production => 8,
                    None => 4,
                },
                acquire_timeout: millis(get("DATABASE_ACQUIRE_TIMEOUT_MS"), "DATABASE_ACQUIRE_TIMEOUT_MS")?,
                statement_cache: positive(get("DATABASE_STATEMENT_CACHE"), "DATABASE_STATEMENT_CACHE")?,
            },
            redis_target: get("REDIS_URL")
                .map(crate::redis_link::RedisTarget::parse)
                .transpose()
                .map_err(|reason| ConfigError::Invalid { key: "REDIS_URL", reason })?,
            redis: crate::redis_link::RedisSettings {
                timeout: millis(get("REDIS_TIMEOUT_MS"), "REDIS_TIMEOUT_MS")?,
                cooldown: millis(get("REDIS_BREAKER_COOLDOWN_MS"), "REDIS_BREAKER_COOLDOWN_MS")?,
                key_prefix: text(get("REDIS_KEY_PREFIX"), "REDIS_KEY_PREFIX")?.to_owned(),
            },
            cache: crate::cache::CacheSettings {
                l1_max_bytes: parse(get("CACHE_L1_MAX_BYTES"), "CACHE_L1_MAX_BYTES")?,
                l1_ttl: millis(get("CACHE_L1_TTL_MS"), "CACHE_L1_TTL_MS")?,
                l2_ttl: millis(get("CACHE_L2_TTL_MS"), "CACHE_L2_TTL_MS")?,
                null_ttl: millis(get("CACHE_NULL_TTL_MS"), "CACHE_NULL_TTL_MS")?,
                db_concurrency: parse(get("CACHE_DB_CONCURRENCY"), "CACHE_DB_CONCURRENCY")?,
            },
            otlp_endpoint: get("OTLP_ENDPOINT").map(str::to_owned),
            kafka: crate::kafka::KafkaSettings {
                brokers: get("KAFKA_BROKERS").map(str::to_owned),
                topic_prefix: text(get("KAFKA_TOPIC_PREFIX"), "KAFKA_TOPIC_PREFIX")?.to_owned(),
                partitions: parse(get("KAFKA_PARTITIONS"), "KAFKA_PARTITIONS")?,
                replication: parse(get("KAFKA_REPLICATION"), "KAFKA_REPLICATION")?,
                startup_timeout: millis(get("KAFKA_STARTUP_TIMEOUT_MS"), "KAFKA_STARTUP_TIMEOUT_MS")?,
            },
            subscriber_buffer: parse(get("SUBSCRIBER_BUFFER"), "SUBSCRIBER_BUFFER")?,
            ws: crate::http::ws::WsSettings {
                init_timeout: millis(get("WS_INIT_TIMEOUT_MS"), "WS_INIT_TIMEOUT_MS")?,
                keepalive: millis(get("WS_KEEPALIVE_MS"), "WS_KEEPALIVE_MS")?,
                max_subscriptions: parse(get("WS_MAX_SUBSCRIPTIONS"), "WS_MAX_SUBSCRIPTIONS")?,
                max_connections: parse(get("WS_MAX_CONNECTIONS"), "WS_MAX_CONNECTIONS")?,
                write_timeout: millis(get("WS_WRITE_TIMEOUT_MS"), "WS_WRITE_TIMEOUT_MS")?,
                allowed_origins: get("WS_ALLOWED_ORIGINS")
                    .map(|v| v.split(',').map(|o| o.trim().to_owned()).filter(|o| !o.is_empty()).collect()),
                max_message_bytes: positive(get("WS_MAX_MESSAGE_BYTES"), "WS_MAX_MESSAGE_BYTES")?,
                max_id_bytes: positive(get("WS_MAX_ID_BYTES"), "WS_MAX_ID_BYTES")?,
                max_connection_bytes: positive(get("WS_MAX_CONNECTION_BYTES"), "WS_MAX_CONNECTION_BYTES")?,
                max_connections_per_subject: positive(
                    get("WS_MAX_CONNECTIONS_PER_SUBJECT"),
                    "WS_MAX_CONNECTIONS_PER_SUBJECT",
                )?,
                max_outbound_bytes: positive(get("WS_MAX_OUTBOUND_BYTES"), "WS_MAX_OUTBOUND_BYTES")?,
            },
            jwt: crate::auth::JwtSettings {
                secret: get("JWT_SECRET").map(|s| SecretString::from(s.to_owned())),
                public_key_file: get("JWT_PUBLIC_KEY_FILE").map(PathBuf::from),
                issuer: get("JWT_ISSUER").map(str::to_owned),
                audience: get("JWT_AUDIENCE").map(str::to_owned),
                max_ttl: duration(get("JWT_MAX_TTL"), "JWT_MAX_TTL")?,
            },
            introspection: flag(get("INTROSPECTION"), "INTROSPECTION")?.unwrap_or(!production),
            graphiql: flag(get("GRAPHIQL"), "GRAPHIQL")?.unwrap_or(!production),
            console: boolean(text(get("CONSOLE"), "CONSOLE")?, "CONSOLE")?,
            cors_origins: match get("CORS_ORIGINS") {
                Some(value) => crate::http::cors::CorsOrigins::parse(value)
                    .map_err(|reason| ConfigError::Invalid { key: "CORS_ORIGINS", reason })?,
                None if production => crate::http::cors::CorsOrigins::Off,
                None => crate::http::cors::CorsOrigins::Localhost,
            },
            log_format: match text(get("LOG_FORMAT"), "LOG_FORMAT")? {
                "pretty" => crate::telemetry::LogFormat::Pretty,
                "json" => crate::telemetry::LogFormat::Json,
                other => {
                    return Err(ConfigError::Invalid {
                        key: "LOG_FORMAT",
                        reason: format!("{other:?} is not pretty or json"),
                    });
                }
            },
            data_dir: PathBuf::from(text(get("DATA_DIR"), "DATA_DIR")?),
            migrate: boolean(text(get("MIGRATE"), "MIGRATE")?, "MIGRATE")?,
            max_body_bytes,
            max_batch_operations: parse(get("MAX_BATCH_OPERATIONS"), "MAX_BATCH_OPERATIONS")?,
            request_timeout: millis(get("REQUEST_TIMEOUT_MS"), "REQUEST_TIMEOUT_MS")?,
            query_limits: crate::graphql::limits::QueryLimits {
                max_depth: parse(get("LIMIT_DEPTH"), "LIMIT_DEPTH")?,
                max_complexity: parse(get("LIMIT_COMPLEXITY"), "LIMIT_COMPLEXITY")?,
                max_aliases: parse(get("LIMIT_ALIASES"), "LIMIT_ALIASES")?,
                max_directives: parse(get("LIMIT_DIRECTIVES"), "LIMIT_DIRECTIVES")?,
                default_list_size: parse(get("LIMIT_LIST_SIZE"), "LIMIT_LIST_SIZE")?,
                max_selections: positive(get("LIMIT_SELECTIONS"), "LIMIT_SELECTIONS")?,
            },
            rate_limits: crate::ratelimit::RateLimits {
                operations_per_second: parse(get("RATE_LIMIT_OPERATIONS"), "RATE_LIMIT_OPERATIONS")?,
                mutations_per_second: parse(get("RATE_LIMIT_MUTATIONS"), "RATE_LIMIT_MUTATIONS")?,
            },
            roles: Roles::parse(text(get("ROLES"), "ROLES")?)?,
            dispatch: crate::dispatch::DispatchSettings {
                offer_timeout: millis(get("OFFER_TIMEOUT_MS"), "OFFER_TIMEOUT_MS")?,
                worker_ttl: millis(get("WORKER_TTL_MS"), "WORKER_TTL_MS")?,
                ready_capacity: parse(get("DISPATCH_READY_CAPACITY"), "DISPATCH_READY_CAPACITY")?,
                reaper_interval: millis(get("REAPER_INTERVAL_MS"), "REAPER_INTERVAL_MS")?,
                retention: crate::dispatch::retention::Retention {
                    finished: retention(get("RETENTION_FINISHED"), "RETENTION_FINISHED")?,
                    dead: retention(get("RETENTION_DEAD"), "RETENTION_DEAD")?,
                },
            },
            connections: crate::http::serve::ConnectionLimits {
                header_read_timeout: millis(get("HEADER_READ_TIMEOUT_MS"), "HEADER_READ_TIMEOUT_MS")?,
                body_read_timeout: millis(get("BODY_READ_TIMEOUT_MS"), "BODY_READ_TIMEOUT_MS")?,
                idle_timeout: millis(get("IDLE_TIMEOUT_MS"), "IDLE_TIMEOUT_MS")?,
                max_connections_per_ip: parse(get("MAX_CONNECTIONS_PER_IP"), "MAX_CONNECTIONS_PER_IP")?,
            },
            max_query_bytes: positive(get("LIMIT_QUERY_BYTES"), "LIMIT_QUERY_BYTES")?,
            rate_limit_invalid_tokens: parse(get("RATE_LIMIT_INVALID_TOKENS"), "RATE_LIMIT_INVALID_TOKENS")?,
        };
        if config.redis_target.as_ref().is_some_and(|t| t.is_cluster()) && config.redis.key_prefix.contains(['{', '}'])
        {
            return Err(ConfigError::Invalid {
                key: "REDIS_KEY_PREFIX",
                reason: "must not contain { or } with a Redis Cluster: a hash tag in the prefix would put every key \
                         in one hash slot, on one node"
                    .into(),
            });
        }
        if config.jwt.secret.is_some() && config.jwt.public_key_file.is_some() {
            return Err(ConfigError::Refused(
                "set TASKWIRE_JWT_SECRET or TASKWIRE_JWT_PUBLIC_KEY_FILE, not both: algorithms are pinned to one"
                    .into(),
            ));
        }
        Ok(config)
    }

    /// Checks what serving needs beyond well-formed values: production mode (a MySQL
    /// database) refuses to start without a JWT secret or key, rather than invent one.
    pub fn check_serving(&self) -> Result<(), ConfigError> {
        if self.is_production() && self.jwt.secret.is_none() && self.jwt.public_key_file.is_none() {
            return Err(ConfigError::Refused(
                "production mode (a MySQL database) needs TASKWIRE_JWT_SECRET or TASKWIRE_JWT_PUBLIC_KEY_FILE".into(),
            ));
        }
        Ok(())
    }

    /// The help text listing every variable, for `taskwire --help`.
    pub fn help() -> String {
        let mut out = String::from(
            "Configuration (environment; `--config FILE` takes the same keys in TOML, lower-case, without the prefix):\n",
        );
        for key in KEYS {
            let (name, meaning, default) = (key.name, key.meaning, key.default.text());
            out.push_str(&format!("  TASKWIRE_{name:<28} {meaning} [default: {default}]\n"));
        }
        out.push_str("  RUST_LOG                              log levels, e.g. info,taskwire_api=debug\n");
        out
    }
}

/// The default of `key`, if it is one of [`KEYS`].
fn key_default(key: &str) -> Option<KeyDefault> {
    KEYS.iter().find(|k| k.name == key).map(|k| k.default)
}

/// A value every key with a plain default has; `missing` only for keys without one.
fn parse<T: std::str::FromStr>(raw: Option<&str>, key: &'static str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let raw = text(raw, key)?;
    raw.parse().map_err(|e: T::Err| ConfigError::Invalid { key, reason: format!("{raw:?}: {e}") })
}

/// The text of a key that has a value (set, or a plain default).
fn text<'a>(raw: Option<&'a str>, key: &'static str) -> Result<&'a str, ConfigError> {
    raw.ok_or(ConfigError::Invalid { key, reason: "missing".into() })
}

/// Milliseconds, greater than 0.
fn millis(raw: Option<&str>, key: &'static str) -> Result<Duration, ConfigError> {
    positive(raw, key).map(Duration::from_millis)
}

/// A number greater than 0.
fn positive<T>(raw: Option<&str>, key: &'static str) -> Result<T, ConfigError>
where
    T: std::str::FromStr + Default + PartialEq,
    T::Err: std::fmt::Display,
{
    let value: T = parse(raw, key)?;
    if value == T::default() {
        return Err(ConfigError::Invalid { key, reason: "must be greater than 0".into() });
    }
    Ok(value)
}

/// A duration given as seconds (`3600`) or with a unit (`90s`, `30m`, `24h`, `7d`),
/// greater than 0.
fn duration(raw: Option<&str>, key: &'static str) -> Result<Duration, ConfigError> {
    match parse_duration(text(raw, key)?) {
        Ok(value) if value.is_zero() => Err(ConfigError::Invalid { key, reason: "must be greater than 0".into() }),
        Ok(value) => Ok(value),
        Err(reason) => Err(ConfigError::Invalid { key, reason }),
    }
}

/// A retention given like a [`duration`]; `0` means keep forever (`None`).
fn retention(raw: Option<&str>, key: &'static str) -> Result<Option<Duration>, ConfigError> {
    match parse_duration(text(raw, key)?) {
        Ok(value) => Ok((!value.is_zero()).then_some(value)),
        Err(reason) => Err(ConfigError::Invalid { key, reason }),
    }
}

/// Parses `90s`, `30m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number.parse().map_err(|_| format!("bad duration {text:?}: expected e.g. 30m, 1h, 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration unit in {text:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(value.saturating_mul(seconds)))
}

/// A boolean, or `None` when unset (for keys whose default follows from others).
fn flag(raw: Option<&str>, key: &'static str) -> Result<Option<bool>, ConfigError> {
    raw.map(|raw| boolean(raw, key)).transpose()
}

fn boolean(raw: &str, key: &'static str) -> Result<bool, ConfigError> {
    match raw {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(ConfigError::Invalid { key, reason: format!("{other:?} is not a boolean") }),
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<&'static str, String>, ConfigError> {
    let err = |reason: String| ConfigError::File { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, value) in table {
        let key = KEYS
            .iter()
            .map(|k| k.name)
            .find(|k| k.eq_ignore_ascii_case(&name))
            .ok_or_else(|| err(format!("unknown key {name:?}")))?;
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => return Err(err(format!("{name}: unsupported value {other}"))),
        };
        out.insert(key, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn embedded_defaults_need_no_configuration() {
        let config = Config::load_from(None, &env(&[])).expect("defaults load");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database.url, "sqlite://data/taskwire.db?mode=rwc");
        assert!(!config.is_production());
        assert!(config.introspection && config.graphiql);
        assert!(config.migrate);
        assert_eq!(config.cors_origins, crate::http::cors::CorsOrigins::Localhost, "local frontends may call");
    }

    /// The README's configuration table names every key once, with the default `--help`
    /// prints (backticks aside), and names no key that does not exist.
    #[test]
    fn the_readme_configuration_table_lists_every_key_with_its_default() {
        let readme = include_str!("../../README.md");
        let section = readme.split("\n## Configuration\n").nth(1).expect("a Configuration section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let mut listed = BTreeMap::new();
        for row in section.lines().filter_map(|line| line.strip_prefix("| `TASKWIRE_")) {
            let (name, rest) = row.split_once("` | ").expect("a row: | `TASKWIRE_NAME` | default | meaning |");
            let default = rest.split(" | ").next().unwrap_or_default().replace('`', "");
            assert!(listed.insert(name, default).is_none(), "TASKWIRE_{name} is listed twice");
        }
        for key in KEYS {
            let listed = listed.remove(key.name);
            assert_eq!(listed.as_deref(), Some(key.default.text()), "the README row of TASKWIRE_{}", key.name);
        }
        assert!(listed.is_empty(), "the README lists keys that do not exist: {:?}", listed.keys());
    }

    /// Every plain default is a value the key accepts (a config of defaults only loads),
    /// and no key without one is required.
    #[test]
    fn every_key_has_one_default_that_loads() {
        let config = Config::load_from(None, &env(&[])).expect("defaults load");
        assert_eq!(config.database.max_connections, 4, "SQLite's derived pool size");
        let mysql =
            Config::load_from(None, &env(&[("TASKWIRE_DATABASE_URL", "mysql://root@localhost/t")])).expect("loads");
        assert_eq!(mysql.database.max_connections, 8, "MySQL's derived pool size");
        let names: std::collections::BTreeSet<_> = KEYS.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), KEYS.len(), "no key is declared twice");
    }

    #[test]
    fn cors_is_off_in_production_mode_until_origins_are_listed() {
        let mysql = ("TASKWIRE_DATABASE_URL", "mysql://root@localhost/t");
        let production = Config::load_from(None, &env(&[mysql])).expect("loads");
        let listed = Config::load_from(None, &env(&[mysql, ("TASKWIRE_CORS_ORIGINS", "https://app.example.com")]))
            .expect("loads");
        let bad = Config::load_from(None, &env(&[("TASKWIRE_CORS_ORIGINS", "app.example.com")]));

        assert_eq!(production.cors_origins, crate::http::cors::CorsOrigins::Off);
        assert!(matches!(listed.cors_origins, crate::http::cors::CorsOrigins::List(ref o) if o.len() == 1));
        assert!(matches!(bad, Err(ConfigError::Invalid { key: "CORS_ORIGINS", .. })));
    }

    #[test]
    fn production_mode_refuses_to_start_without_a_jwt_key() {
        let keyless = Config::load_from(None, &env(&[("TASKWIRE_DATABASE_URL", "mysql://root@localhost/t")]))
            .expect("loads: migrations and schema printing need no key");
        assert!(matches!(keyless.check_serving(), Err(ConfigError::Refused(_))));
        let ok = Config::load_from(
            None,
            &env(&[("TASKWIRE_DATABASE_URL", "mysql://root@localhost/t"), ("TASKWIRE_JWT_SECRET", "s3cret")]),
        )
        .expect("loads");
        assert!(ok.is_production());
        assert!(ok.check_serving().is_ok());
        assert!(!ok.introspection && !ok.graphiql, "production turns exploration off by default");
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("taskwire.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\ngraphiql = false\nmax_batch_operations = 3\n")
            .expect("write");
        let config = Config::load_from(Some(&path), &env(&[("TASKWIRE_LISTEN", "127.0.0.1:9001")])).expect("loads");
        assert_eq!(config.listen.port(), 9001, "environment wins over the file");
        assert!(!config.graphiql, "the file wins over the default");
        assert_eq!(config.max_batch_operations, 3);
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("taskwire.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9000\"\n").expect("write");
        assert!(matches!(Config::load_from(Some(&path), &env(&[])), Err(ConfigError::File { .. })));
        let bad = Config::load_from(None, &env(&[("TASKWIRE_GRAPHIQL", "maybe")]));
        assert!(matches!(bad, Err(ConfigError::Invalid { key: "GRAPHIQL", .. })));
        let bad_db = Config::load_from(None, &env(&[("TASKWIRE_DATABASE_URL", "postgres://x")]));
        assert!(matches!(bad_db, Err(ConfigError::Invalid { key: "DATABASE_URL", .. })));
        for value in ["0", "lots"] {
            let bad_cache = Config::load_from(None, &env(&[("TASKWIRE_DATABASE_STATEMENT_CACHE", value)]));
            assert!(matches!(bad_cache, Err(ConfigError::Invalid { key: "DATABASE_STATEMENT_CACHE", .. })), "{value}");
        }
        let cache = Config::load_from(None, &env(&[("TASKWIRE_DATABASE_STATEMENT_CACHE", "64")])).expect("loads");
        assert_eq!(cache.database.statement_cache, 64);
    }

    #[test]
    fn the_redis_url_names_one_server_or_a_cluster_and_bad_forms_are_errors() {
        use crate::redis_link::RedisTarget;
        let load = |pairs: &[(&str, &str)]| Config::load_from(None, &env(pairs));
        let unset = load(&[]).expect("loads");
        assert_eq!(unset.redis_target, None);
        let one = load(&[("TASKWIRE_REDIS_URL", "redis://127.0.0.1:6379")]).expect("loads");
        assert_eq!(one.redis_target, Some(RedisTarget::Standalone("redis://127.0.0.1:6379".into())));
        let cluster = load(&[("TASKWIRE_REDIS_URL", "redis+cluster://a:7001,b:7002")]).expect("loads");
        assert_eq!(
            cluster.redis_target,
            Some(RedisTarget::Cluster(vec!["redis://a:7001".into(), "redis://b:7002".into()]))
        );

        for bad in ["redis+cluster://", "redis+cluster://a:7001,,b:7002", "redis://a:7001,b:7002", "http://a:1"] {
            let error = load(&[("TASKWIRE_REDIS_URL", bad)]).expect_err(bad);
            assert!(matches!(error, ConfigError::Invalid { key: "REDIS_URL", .. }), "{bad}: {error}");
            assert!(error.to_string().starts_with("TASKWIRE_REDIS_URL: "), "{error}");
        }

        let tagged = [("TASKWIRE_REDIS_URL", "redis+cluster://a:7001"), ("TASKWIRE_REDIS_KEY_PREFIX", "app{1}")];
        let error = load(&tagged).expect_err("a hash tag in the prefix pins every key to one slot");
        assert!(matches!(error, ConfigError::Invalid { key: "REDIS_KEY_PREFIX", .. }), "{error}");
        let standalone_tagged = [("TASKWIRE_REDIS_URL", "redis://a:6379"), ("TASKWIRE_REDIS_KEY_PREFIX", "app{1}")];
        assert!(load(&standalone_tagged).is_ok(), "one server has no slots to pin");
    }
}
