//! # taskwire-tests
//!
//! Black-box test support: [`TestApp`] starts the real application on port 0 with its
//! own fresh database and talks to it over HTTP, like a frontend would.
//!
//! Database per test: a new SQLite file in a temp dir by default; with
//! `TASKWIRE_TEST_DATABASE_URL=mysql://user@host:port` a fresh MySQL/MariaDB schema,
//! dropped when the `TestApp` is dropped. Logs are silent unless `TEST_LOG` is set.

pub mod proxy;
pub mod ws;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jsonwebtoken::{EncodingKey, Header, encode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use taskwire_api::{config::Config, startup::Application};
use taskwire_store::DbStats;
use taskwire_store::testing::{MysqlTestSchema, server_url};
use tokio_util::sync::CancellationToken;

pub use crate::proxy::{CommitCut, TcpProxy};

/// Variable naming the MySQL/MariaDB server the suite may use.
pub use taskwire_store::testing::DATABASE_URL_VAR;
/// Variable naming the real Kafka-compatible brokers the suite may use.
pub const KAFKA_BROKERS_VAR: &str = "TASKWIRE_TEST_KAFKA_BROKERS";
/// Variable naming the Redis server the suite may use.
pub const REDIS_URL_VAR: &str = "TASKWIRE_TEST_REDIS_URL";
/// Variable naming the Redis Cluster the suite may use (`redis+cluster://host:port,…`);
/// only the cluster tests use it, every other test keeps `TASKWIRE_TEST_REDIS_URL`.
pub const REDIS_CLUSTER_URL_VAR: &str = "TASKWIRE_TEST_REDIS_CLUSTER_URL";

/// A running application and a client for it.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// HTTP client.
    pub client: reqwest::Client,
    /// The HS256 secret the app verifies with.
    pub secret: String,
    /// The database URL the app uses.
    pub database_url: String,
    db_stats: Arc<DbStats>,
    /// The app's task cache (to empty its L1 before measuring cold reads).
    pub task_cache: taskwire_api::cache::TaskCache,
    kafka_cluster: Option<Arc<taskwire_api::kafka::EmbeddedCluster>>,
    /// `bootstrap.servers` of the Kafka the app uses.
    pub kafka_bootstrap: String,
    topic_prefix: String,
    /// The Redis key prefix, when Redis is configured (peers share it).
    redis_prefix: Option<String>,
    shutdown: CancellationToken,
    mysql_schema: Option<MysqlTestSchema>,
    _dir: tempfile::TempDir,
}

/// The decoded JSON body of a GraphQL response.
#[derive(Debug, Clone)]
pub struct GqlResponse {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl GqlResponse {
    /// `data`, panicking (with the body) when the response has errors.
    pub fn data(&self) -> &Value {
        assert!(self.body.get("errors").is_none(), "unexpected errors: {}", self.body);
        &self.body["data"]
    }

    /// The `extensions.code` of every error.
    pub fn codes(&self) -> Vec<String> {
        self.errors().iter().map(|e| e["extensions"]["code"].as_str().unwrap_or("<none>").to_owned()).collect()
    }

    /// The single error's code, panicking when there is not exactly one error.
    pub fn code(&self) -> String {
        let codes = self.codes();
        assert_eq!(codes.len(), 1, "expected one error: {}", self.body);
        codes[0].clone()
    }

    /// The errors (empty when there are none).
    pub fn errors(&self) -> Vec<Value> {
        self.body.get("errors").and_then(Value::as_array).cloned().unwrap_or_default()
    }
}

/// The test process's telemetry, installed by the first app that wants any: logs when
/// `TEST_LOG` is set, span export when that app's configuration names an OTLP collector
/// (`TASKWIRE_OTLP_ENDPOINT`). The subscriber is global, so a test of the export runs alone
/// in its own test binary.
static TELEMETRY: std::sync::OnceLock<taskwire_api::telemetry::TelemetryGuard> = std::sync::OnceLock::new();

fn init_telemetry(otlp_endpoint: Option<&str>) {
    use taskwire_api::telemetry::{self, LogFormat};
    let logs = std::env::var("TEST_LOG").is_ok();
    if !logs && otlp_endpoint.is_none() {
        return;
    }
    TELEMETRY.get_or_init(|| match otlp_endpoint {
        Some(endpoint) if !logs => telemetry::init_traces_only(endpoint),
        endpoint => telemetry::init(LogFormat::Pretty, endpoint),
    });
}

/// Exports the spans ended so far and waits for the collector. Blocking: call it from
/// `spawn_blocking`.
pub fn flush_traces() {
    if let Some(telemetry) = TELEMETRY.get() {
        telemetry.force_flush();
    }
}

/// Which optional real services are configured for this run.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The longest a test app may take to start (the app's own Kafka start-up limit is 30 s).
const STARTUP_LIMIT: Duration = Duration::from_secs(60);

impl TestApp {
    /// Starts the app with default test configuration.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(&[]).await
    }

    /// Starts the app with extra `TASKWIRE_*` variables (they win over the defaults).
    pub async fn spawn_with(vars: &[(&str, &str)]) -> TestApp {
        TestApp::spawn_inner(vars, None, None, false).await
    }

    /// Starts the app on the embedded Kafka mock cluster even when
    /// `TASKWIRE_TEST_KAFKA_BROKERS` names a real broker (the database and Redis still
    /// follow their variables): for tests that take the brokers down or fence producers,
    /// which only the mock cluster lets a test do. They run in every lane, never skip.
    pub async fn spawn_on_embedded_kafka() -> (TestApp, Arc<taskwire_api::kafka::EmbeddedCluster>) {
        let app = TestApp::spawn_inner(&[], None, None, true).await;
        let cluster = app.kafka_cluster.clone().expect("the app runs on the embedded cluster");
        (app, cluster)
    }

    /// With `TASKWIRE_TEST_DATABASE_URL` set: starts the app on MySQL/MariaDB reached
    /// through a [`TcpProxy`] the test can cut and restore. `None` (and a skip notice)
    /// otherwise.
    pub async fn spawn_with_database_proxy(test: &str, vars: &[(&str, &str)]) -> Option<(TestApp, TcpProxy)> {
        let server = require_service(DATABASE_URL_VAR, test)?;
        let authority = server_url(&server);
        let host_port = authority.rsplit('@').next().and_then(|a| a.split_once("://").map(|(_, r)| r).or(Some(a)));
        let host_port = host_port.unwrap_or_default().to_owned();
        // The variable is set: a server that cannot be found fails the test, never skips it.
        let upstream = tokio::net::lookup_host(&host_port)
            .await
            .ok()
            .and_then(|mut addresses| addresses.next())
            .unwrap_or_else(|| panic!("{DATABASE_URL_VAR}: cannot resolve {host_port:?}"));
        let proxy = TcpProxy::start(upstream).await;
        let app = TestApp::spawn_inner(vars, Some(proxy.port()), None, false).await;
        Some((app, proxy))
    }

    /// Starts another instance of this app's service, as a second process of one
    /// deployment would be: the same database, Kafka (this app's embedded cluster, or the
    /// real brokers, with the same topic prefix), Redis keys and JWT secret, its own port
    /// and its own consumer groups for live events. `vars` as in [`TestApp::spawn_with`]
    /// (e.g. `TASKWIRE_ROLES`). The database belongs to this app: drop peers first.
    pub async fn spawn_peer(&self, vars: &[(&str, &str)]) -> TestApp {
        TestApp::spawn_inner(vars, None, Some(self), false).await
    }

    async fn spawn_inner(
        vars: &[(&str, &str)],
        mysql_via_port: Option<u16>,
        peer_of: Option<&TestApp>,
        embedded_kafka: bool,
    ) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = match peer_of {
            Some(first) => first.secret.clone(),
            None => format!("test-secret-{}", uuid::Uuid::new_v4().simple()),
        };
        let (database_url, mysql_schema) = match (peer_of, env_var(DATABASE_URL_VAR)) {
            (Some(first), _) => (first.database_url.clone(), None),
            (None, Some(server)) => {
                let schema = MysqlTestSchema::create(&server, "taskwire_test").await;
                let url = match mysql_via_port {
                    Some(port) => proxied_url(schema.server(), port, schema.name()),
                    None => schema.url(),
                };
                (url, Some(schema))
            }
            (None, None) => (format!("sqlite://{}/taskwire.db?mode=rwc", dir.path().display()), None),
        };
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let data_dir = dir.path().display().to_string();
        for (k, v) in [
            ("TASKWIRE_LISTEN", "127.0.0.1:0"),
            ("TASKWIRE_DATABASE_URL", database_url.as_str()),
            ("TASKWIRE_JWT_SECRET", secret.as_str()),
            ("TASKWIRE_DATA_DIR", data_dir.as_str()),
            ("TASKWIRE_INTROSPECTION", "true"),
            ("TASKWIRE_GRAPHIQL", "true"),
            // Tests drive one subject hard; the rate-limit tests turn the limits back on.
            ("TASKWIRE_RATE_LIMIT_OPERATIONS", "0"),
            ("TASKWIRE_RATE_LIMIT_MUTATIONS", "0"),
        ] {
            env.insert(k.to_owned(), v.to_owned());
        }
        let mut topic_prefix = "taskwire".to_owned();
        if let Some(first) = peer_of {
            // One deployment: the first app's brokers (its embedded cluster included) and topics.
            topic_prefix = first.topic_prefix.clone();
            env.insert("TASKWIRE_KAFKA_BROKERS".to_owned(), first.kafka_bootstrap.clone());
            env.insert("TASKWIRE_KAFKA_TOPIC_PREFIX".to_owned(), topic_prefix.clone());
        } else if let Some(brokers) = env_var(KAFKA_BROKERS_VAR).filter(|_| !embedded_kafka) {
            // A real broker is shared: give each app topics of its own.
            topic_prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            env.insert("TASKWIRE_KAFKA_BROKERS".to_owned(), brokers);
            env.insert("TASKWIRE_KAFKA_TOPIC_PREFIX".to_owned(), topic_prefix.clone());
        }
        let mut redis_prefix = None;
        if let Some(redis) = env_var(REDIS_URL_VAR) {
            // A real Redis is shared: give each deployment keys of its own.
            let prefix = peer_of
                .and_then(|first| first.redis_prefix.clone())
                .unwrap_or_else(|| format!("t{}", uuid::Uuid::new_v4().simple()));
            env.insert("TASKWIRE_REDIS_URL".to_owned(), redis);
            env.insert("TASKWIRE_REDIS_KEY_PREFIX".to_owned(), prefix.clone());
            redis_prefix = Some(prefix);
        }
        for (k, v) in vars {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let config = Config::load_from(None, &env).expect("test configuration loads");
        init_telemetry(config.otlp_endpoint.as_deref());
        // Bounded, so a broker or database that accepts connections but never answers
        // fails the test with a reason instead of hanging the suite.
        let app = match tokio::time::timeout(STARTUP_LIMIT, Application::build(config)).await {
            Ok(built) => built.expect("application builds"),
            Err(_) => {
                panic!("the application did not start within {STARTUP_LIMIT:?}: is every configured service answering?")
            }
        };
        let address = format!("http://127.0.0.1:{}", app.port());
        let db_stats = app.db_stats();
        let task_cache = app.task_cache();
        let kafka_cluster = app.kafka_cluster();
        let kafka_bootstrap = match &kafka_cluster {
            Some(cluster) => cluster.bootstrap_servers().to_owned(),
            None => env_var(KAFKA_BROKERS_VAR).unwrap_or_default(),
        };
        let shutdown = app.shutdown_token();
        tokio::spawn(app.run_until_stopped());
        TestApp {
            address,
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
            secret,
            database_url,
            db_stats,
            task_cache,
            kafka_cluster,
            kafka_bootstrap,
            topic_prefix,
            redis_prefix,
            shutdown,
            mysql_schema,
            _dir: dir,
        }
    }

    /// A valid token (1 h) for `sub` with `roles`.
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.token_with_claims(json!({ "sub": sub, "roles": roles, "exp": now_secs() + 3600 }))
    }

    /// A token with exactly these claims, signed with the app's secret.
    pub fn token_with_claims(&self, claims: Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(self.secret.as_bytes())).expect("token encodes")
    }

    /// POSTs a GraphQL request with an optional bearer token.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> GqlResponse {
        self.post_json(token, &json!({ "query": query, "variables": variables })).await
    }

    /// POSTs any JSON body to `/graphql`.
    pub async fn post_json(&self, token: Option<&str>, body: &Value) -> GqlResponse {
        let mut request = self.client.post(format!("{}/graphql", self.address)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let body = response.json().await.expect("JSON body");
        GqlResponse { status, body }
    }

    /// Starts a graceful shutdown of the app.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Opens a GraphQL WebSocket offering `protocol`.
    pub async fn ws(&self, protocol: &str) -> ws::WsClient {
        self.ws_with_headers(protocol, &[]).await.expect("WebSocket connects")
    }

    /// A GraphQL WebSocket speaking `protocol`, initialised with `token` and acknowledged.
    pub async fn ws_connected(&self, protocol: &str, token: &str) -> ws::WsClient {
        let mut ws = self.ws(protocol).await;
        assert_eq!(ws.protocol, protocol, "the server selects the offered subprotocol");
        ws.init(ws::bearer(token)).await;
        ws
    }

    /// Opens a GraphQL WebSocket with extra upgrade headers.
    pub async fn ws_with_headers(&self, protocol: &str, headers: &[(&str, &str)]) -> Result<ws::WsClient, String> {
        let url = format!("{}/graphql", self.address.replacen("http://", "ws://", 1));
        ws::WsClient::connect(&url, protocol, headers).await
    }

    /// The embedded Kafka cluster (present unless the app runs on `TASKWIRE_TEST_KAFKA_BROKERS`).
    pub fn kafka_cluster(&self) -> Option<Arc<taskwire_api::kafka::EmbeddedCluster>> {
        self.kafka_cluster.clone()
    }

    /// The full name of one of the app's topics, e.g. `topic("tasks.status")`.
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.topic_prefix)
    }

    /// The app's metrics in Prometheus text form.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    /// The value of an unlabelled series in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls `/metrics` (up to 10 s) until series `name` satisfies `done`; its last value.
    pub async fn wait_for_metric(&self, name: &str, done: impl Fn(f64) -> bool) -> f64 {
        let mut value = self.metric(name).await;
        for _ in 0..100 {
            if done(value) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            value = self.metric(name).await;
        }
        value
    }

    /// GETs a path, returning status and body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.client.get(format!("{}{path}", self.address)).send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// SQL statements the app has executed so far, leaving out the outbox relay's.
    pub fn db_statements(&self) -> u64 {
        self.db_stats.statements_outside_outbox()
    }

    /// Runs raw SQL against the app's database on a separate connection (test set-up).
    pub async fn sql(&self, statement: &str) {
        let db = Database::connect(&self.database_url).await.expect("test connection");
        db.execute_unprepared(statement).await.expect("test SQL runs");
        let _ = db.close().await;
    }

    /// Creates a task as `token`'s subject and returns its id.
    pub async fn create_task(&self, token: &str, input: Value) -> String {
        let response = self
            .gql(
                Some(token),
                "mutation($input: CreateTaskInput!) { createTask(input: $input) { task { id } } }",
                json!({ "input": input }),
            )
            .await;
        response.data()["createTask"]["task"]["id"].as_str().expect("task id").to_owned()
    }
}

impl TestApp {
    /// Creates `count` tasks in `queue` (kinds `k0`, `k1`, …) with one `createTasks` call.
    pub async fn create_tasks(&self, token: &str, queue: &str, count: usize) {
        let inputs: Vec<Value> = (0..count).map(|i| json!({ "queue": queue, "kind": format!("k{i}") })).collect();
        let create = "mutation($inputs: [CreateTaskInput!]!) { createTasks(inputs: $inputs) { created } }";
        self.gql(Some(token), create, json!({ "inputs": inputs })).await.data();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Dropping the schema kills the connections the stopped app left open first.
        drop(self.mysql_schema.take());
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// `mysql://user@127.0.0.1:<port>/<schema>` with the credentials of `server`.
fn proxied_url(server: &str, port: u16, schema: &str) -> String {
    let authority = server_url(server);
    let (scheme, rest) = authority.split_once("://").unwrap_or(("mysql", &authority));
    let credentials = rest.rsplit_once('@').map(|(c, _)| format!("{c}@")).unwrap_or_default();
    format!("{scheme}://{credentials}127.0.0.1:{port}/{schema}")
}

/// Prints the standard skip notice and returns the variable's value when set.
pub fn require_service(var: &str, test: &str) -> Option<String> {
    let value = env_var(var);
    if value.is_none() {
        // Straight to the stderr handle: the test harness captures `println!`/`eprintln!`
        // of passing tests, and a skip must be visible.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {var} is not set (CI sets it; see README, Testing)");
    }
    value
}
