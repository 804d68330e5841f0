//! The one shared Redis connection, behind a circuit breaker.
//!
//! Redis is an optimisation here (the L2 cache, global rate limits, shared persisted
//! queries), never a source of truth, so no caller may fail because Redis did. Every
//! command goes through [`RedisLink::call`], which answers `None` instead of an error:
//! when Redis is not configured, when the breaker is open, when the command fails, or
//! when it takes longer than the timeout. Callers then fall back to what they do without
//! Redis (the database, in-process buckets).
//!
//! The breaker opens after [`FAILURES_TO_OPEN`] consecutive failures and stays open for
//! the cool-down; then one probe command is let through (half-open) and its outcome
//! closes or re-opens it. While open, calls cost nothing: no connection attempts, no
//! timeouts added to requests. The connection is made lazily, so a Redis that is down at
//! start-up delays nothing and is picked up when it comes back.
//!
//! Redis is one server or a Redis Cluster ([`RedisTarget`] reads which from
//! `TASKWIRE_REDIS_URL`); callers get a [`RedisConnection`] either way and send the same
//! commands. What a cluster asks of them: the keys one command or script touches share a
//! hash slot (a `{…}` hash tag in the key), and a batch of commands over many slots goes
//! through [`RedisConnection::exec_pipelined`], which splits it by slot. `MGET` needs
//! nothing: the cluster connection splits it by slot and reassembles the answer in order.
use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{
    IntoConnectionInfo,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::Slot,
};

use crate::metrics::Metrics;

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Time limit for one command (and for connecting).
    pub timeout: Duration,
    /// How long the breaker stays open before a probe.
    pub cooldown: Duration,
    /// Prefix of every key this service writes, so several deployments (or test runs)
    /// can share one Redis.
    pub key_prefix: String,
}

/// The scheme of the cluster URL form: `redis+cluster://host1:port1,host2:port2`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Where Redis is, as `TASKWIRE_REDIS_URL` says:
///
/// - one URL (`redis://host:port/db`, or any other form the redis crate reads): one server;
/// - `redis+cluster://[user:password@]host1:port1,host2:port2,…`: a Redis Cluster;
/// - `redis://host1:port1,redis://host2:port2,…` (two or more URLs): a Redis Cluster.
///
/// The nodes of a cluster are seeds: the client asks them for the cluster's layout and
/// finds the other nodes itself, so one answering seed is enough to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server, by its URL.
    Standalone(String),
    /// Seed nodes of a Redis Cluster, one `redis://host:port` URL each.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Reads `url` (see [`RedisTarget`]); the error says what is wrong with it without
    /// repeating it, since it may carry a password.
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return cluster_from_host_list(rest).map(RedisTarget::Cluster);
        }
        if url.contains(',') {
            return cluster_from_url_list(url).map(RedisTarget::Cluster);
        }
        url.into_connection_info().map_err(|e| format!("is not a Redis URL ({e})"))?;
        Ok(RedisTarget::Standalone(url.to_owned()))
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }
}

/// The seeds of `redis+cluster://[credentials@]host:port,…` (what follows the scheme).
fn cluster_from_host_list(rest: &str) -> Result<Vec<String>, String> {
    // Hosts hold no `@`, so the last one ends the credentials even if a password has one.
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    if hosts.trim().is_empty() {
        return Err(format!("names no cluster node: write {CLUSTER_SCHEME}host1:port1,host2:port2"));
    }
    let mut nodes = Vec::new();
    for (i, host) in hosts.split(',').enumerate() {
        let host = host.trim();
        if host.is_empty() {
            return Err(format!("has an empty cluster node (node {}): a comma too many?", i + 1));
        }
        if host.contains("://") {
            return Err(format!("mixes forms: after {CLUSTER_SCHEME} come host:port pairs, not URLs (node {})", i + 1));
        }
        if host.contains(['/', '?', '#']) {
            return Err(format!(
                "gives cluster node {} a database or options: a Redis Cluster has database 0 only and \
                 {CLUSTER_SCHEME} takes host:port pairs",
                i + 1
            ));
        }
        nodes.push(cluster_node(format!("redis://{credentials}{host}"), i)?);
    }
    Ok(nodes)
}

/// The seeds of `redis://host1:port1,redis://host2:port2,…`.
fn cluster_from_url_list(list: &str) -> Result<Vec<String>, String> {
    let mut nodes = Vec::new();
    for (i, node) in list.split(',').enumerate() {
        let node = node.trim();
        if node.is_empty() {
            return Err(format!("has an empty cluster node (node {}): a comma too many?", i + 1));
        }
        if !node.starts_with("redis://") {
            return Err(format!(
                "lists cluster nodes, but node {} is not a redis:// URL: write redis://host1:port1,redis://host2:port2 \
                 or {CLUSTER_SCHEME}host1:port1,host2:port2",
                i + 1
            ));
        }
        nodes.push(cluster_node(node.to_owned(), i)?);
    }
    Ok(nodes)
}

/// `url` if it is a usable cluster node: TCP, database 0.
fn cluster_node(url: String, index: usize) -> Result<String, String> {
    let node = index + 1;
    let info = url.as_str().into_connection_info().map_err(|e| format!("has a bad cluster node {node} ({e})"))?;
    if !matches!(info.addr(), redis::ConnectionAddr::Tcp(..)) {
        return Err(format!("has cluster node {node} that is not a plain TCP host:port"));
    }
    if info.redis_settings().db() != 0 {
        return Err(format!("selects a database on cluster node {node}: a Redis Cluster has database 0 only"));
    }
    Ok(url)
}

/// A client for one server or for a cluster: what [`RedisLink`] connects with.
#[derive(Clone)]
pub enum RedisClient {
    /// One server.
    Standalone(redis::Client),
    /// A Redis Cluster (boxed: its client is twice the size of a server's).
    Cluster(Box<ClusterClient>),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The clients' own Debug output would show passwords.
        f.write_str(if self.is_cluster() { "RedisClient::Cluster" } else { "RedisClient::Standalone" })
    }
}

impl From<redis::Client> for RedisClient {
    fn from(client: redis::Client) -> RedisClient {
        RedisClient::Standalone(client)
    }
}

impl RedisClient {
    /// A client for `target`. A cluster client waits at most `timeout` for a connection
    /// or an answer from any node (a standalone connection gets its limits when made).
    /// Connects to nothing yet.
    pub fn open(target: &RedisTarget, timeout: Duration) -> redis::RedisResult<RedisClient> {
        Ok(match target {
            RedisTarget::Standalone(url) => RedisClient::Standalone(redis::Client::open(url.as_str())?),
            RedisTarget::Cluster(nodes) => RedisClient::Cluster(Box::new(
                ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()?,
            )),
        })
    }

    /// [`RedisTarget::parse`] then [`RedisClient::open`].
    pub fn from_url(url: &str, timeout: Duration) -> redis::RedisResult<RedisClient> {
        let target = RedisTarget::parse(url)
            .map_err(|reason| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "redis url", reason)))?;
        RedisClient::open(&target, timeout)
    }

    /// Whether this is a cluster client.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisClient::Cluster(_))
    }

    /// `PING` on a fresh connection of its own (not the shared one, and not behind the
    /// breaker), for readiness. On a cluster every primary must answer.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        match self {
            RedisClient::Standalone(client) => {
                let mut connection = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<()>(&mut connection).await
            }
            RedisClient::Cluster(client) => {
                let mut connection = client.get_async_connection().await?;
                redis::cmd("PING").query_async::<()>(&mut connection).await
            }
        }
    }
}

/// A connection to one server or to a cluster. Cheap to clone (clones share the
/// connection); commands and scripts run on it as on any redis-rs async connection.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, through a connection manager that reconnects by itself.
    Standalone(ConnectionManager),
    /// A cluster: commands are routed to the node owning their keys' slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_cluster() { "RedisConnection::Cluster" } else { "RedisConnection::Standalone" })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConnection::Standalone(connection) => connection.req_packed_command(cmd),
            RedisConnection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConnection::Standalone(connection) => connection.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Standalone(connection) => connection.get_db(),
            RedisConnection::Cluster(connection) => connection.get_db(),
        }
    }
}

impl RedisConnection {
    /// Whether this connection is to a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }

    /// Runs `commands`, whose answers nobody needs, in as few round trips as the server
    /// allows. Each comes with the key that decides its hash slot. A standalone server
    /// gets them all in one pipeline. A cluster refuses a pipeline that spans slots
    /// (`CROSSSLOT`), so there they go as one pipeline per slot, all in flight at once
    /// (the connection to each node multiplexes them).
    ///
    /// When `script` is given and a server does not know it yet (`NOSCRIPT`: a fresh or
    /// restarted server), it is loaded and every pipeline is sent once more, so the
    /// commands must be safe to repeat. Fails with the first error any pipeline met.
    pub async fn exec_pipelined(
        &mut self,
        commands: Vec<(String, redis::Cmd)>,
        script: Option<&redis::Script>,
    ) -> redis::RedisResult<()> {
        let pipelines = match self {
            RedisConnection::Standalone(_) => vec![pipeline(commands.into_iter().map(|(_, cmd)| cmd))],
            RedisConnection::Cluster(_) => {
                let mut by_slot: HashMap<Slot, Vec<redis::Cmd>> = HashMap::new();
                for (key, cmd) in commands {
                    by_slot.entry(Slot::for_key(&key)).or_default().push(cmd);
                }
                by_slot.into_values().map(pipeline).collect()
            }
        };
        match self.exec_all(&pipelines).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let Some(script) = script else { return Err(e) };
                // On a cluster, SCRIPT LOAD goes to every primary.
                script.load_async(self).await?;
                self.exec_all(&pipelines).await
            }
            other => other,
        }
    }

    async fn exec_all(&self, pipelines: &[redis::Pipeline]) -> redis::RedisResult<()> {
        let sends = pipelines.iter().map(|pipeline| {
            let mut connection = self.clone();
            async move { pipeline.exec_async(&mut connection).await }
        });
        futures::future::try_join_all(sends).await.map(drop)
    }
}

/// One pipeline of `commands`, their answers ignored.
fn pipeline(commands: impl IntoIterator<Item = redis::Cmd>) -> redis::Pipeline {
    let mut pipeline = redis::pipe();
    for cmd in commands {
        pipeline.add_command(cmd).ignore();
    }
    pipeline
}

/// A shared Redis handle with a circuit breaker. Cheap to share behind an `Arc`.
pub struct RedisLink {
    client: Option<RedisClient>,
    connection: tokio::sync::Mutex<Option<RedisConnection>>,
    settings: RedisSettings,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    probing: AtomicBool,
    metrics: Metrics,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("configured", &self.client.is_some())
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to `client`, or a link that always answers `None` when `client` is `None`.
    pub fn new(client: Option<RedisClient>, settings: RedisSettings, metrics: Metrics) -> RedisLink {
        metrics.redis_breaker_open.set(0);
        RedisLink {
            client,
            connection: tokio::sync::Mutex::new(None),
            settings,
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            probing: AtomicBool::new(false),
            metrics,
        }
    }

    /// Whether Redis is configured at all.
    pub fn is_configured(&self) -> bool {
        self.client.is_some()
    }

    /// Whether Redis is a cluster.
    pub fn is_cluster(&self) -> bool {
        self.client.as_ref().is_some_and(RedisClient::is_cluster)
    }

    /// Whether the breaker is open (calls are skipped).
    pub fn is_open(&self) -> bool {
        self.open_until.lock().map(|g| g.is_some()).unwrap_or(false)
    }

    /// `<prefix>:<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.settings.key_prefix)
    }

    /// Runs `command` on the shared connection. `None` when Redis is not configured, the
    /// breaker is open, or the command failed or timed out (the failure is counted).
    ///
    /// On a cluster, keys that one command or script touches must share a hash slot; see
    /// the module documentation.
    pub async fn call<T, F, Fut>(&self, command: F) -> Option<T>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let client = self.client.as_ref()?;
        let probe = match self.admit() {
            Admission::Closed => false,
            Admission::Probe => true,
            Admission::Skip => return None,
        };
        let outcome = tokio::time::timeout(self.settings.timeout, async {
            let connection = self.connection(client).await?;
            command(connection).await
        })
        .await;
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        match outcome {
            Ok(Ok(value)) => {
                self.record_success();
                Some(value)
            }
            Ok(Err(e)) => {
                self.record_failure(probe, &e.to_string());
                None
            }
            Err(_) => {
                self.record_failure(probe, "timed out");
                None
            }
        }
    }

    async fn connection(&self, client: &RedisClient) -> redis::RedisResult<RedisConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = match client {
            RedisClient::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.settings.timeout))
                    .set_response_timeout(Some(self.settings.timeout))
                    .set_number_of_retries(1);
                RedisConnection::Standalone(client.get_connection_manager_with_config(config).await?)
            }
            // The cluster connection keeps a connection per node, follows MOVED/ASK
            // redirections, and re-reads the layout from the seeds when it loses every node.
            RedisClient::Cluster(client) => RedisConnection::Cluster(client.get_async_connection().await?),
        };
        *slot = Some(connection.clone());
        Ok(connection)
    }

    fn admit(&self) -> Admission {
        let Ok(mut open_until) = self.open_until.lock() else { return Admission::Skip };
        match *open_until {
            None => Admission::Closed,
            Some(until) if Instant::now() < until => Admission::Skip,
            Some(_) => {
                // Half-open: exactly one probe at a time; everyone else keeps skipping.
                if self.probing.swap(true, Ordering::AcqRel) {
                    Admission::Skip
                } else {
                    *open_until = Some(Instant::now() + self.settings.cooldown);
                    Admission::Probe
                }
            }
        }
    }

    fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
        if let Ok(mut open_until) = self.open_until.lock()
            && open_until.take().is_some()
        {
            tracing::info!("redis is back: circuit breaker closed");
            self.metrics.redis_breaker_open.set(0);
        }
    }

    fn record_failure(&self, probe: bool, reason: &str) {
        self.metrics.redis_errors.inc();
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if probe || failures >= FAILURES_TO_OPEN {
            if let Ok(mut open_until) = self.open_until.lock() {
                if open_until.is_none() {
                    tracing::warn!(reason, cooldown = ?self.settings.cooldown, "redis failing: circuit breaker opened");
                }
                *open_until = Some(Instant::now() + self.settings.cooldown);
            }
            self.metrics.redis_breaker_open.set(1);
        } else {
            tracing::debug!(reason, failures, "redis command failed");
        }
    }
}

enum Admission {
    Closed,
    Probe,
    Skip,
}

/// What the unit tests of every Redis user share: the test deployments and links to them.
#[cfg(test)]
pub(crate) mod testing {
    use std::{io::Write, sync::Arc, time::Duration};

    use super::{RedisClient, RedisLink, RedisSettings};
    use crate::metrics::Metrics;

    /// The variable naming the standalone Redis the tests may use.
    pub(crate) const REDIS_URL_VAR: &str = "TASKWIRE_TEST_REDIS_URL";
    /// The variable naming the Redis Cluster the tests may use.
    pub(crate) const REDIS_CLUSTER_URL_VAR: &str = "TASKWIRE_TEST_REDIS_CLUSTER_URL";

    /// The URL in `var`, or `None` and a skip notice for `test`.
    pub(crate) fn test_redis_url(var: &str, test: &str) -> Option<String> {
        let url = std::env::var(var).ok().filter(|url| !url.trim().is_empty());
        if url.is_none() {
            // Straight to the handle: the harness captures `eprintln!` of passing tests.
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {var} is not set (CI sets it; see README, Testing)");
        }
        url
    }

    /// Every configured test deployment (the standalone server, the cluster), each one
    /// not configured noted as skipped.
    pub(crate) fn test_redis_urls(test: &str) -> Vec<String> {
        [REDIS_URL_VAR, REDIS_CLUSTER_URL_VAR].into_iter().filter_map(|var| test_redis_url(var, test)).collect()
    }

    /// A key prefix no other test run uses.
    pub(crate) fn unique_prefix() -> String {
        format!("taskwire-test-{}", uuid::Uuid::new_v4().simple())
    }

    /// A link to `url` with `prefix` and a 2 s timeout, its connection already made so
    /// that connecting does not stretch the time a test's commands take.
    pub(crate) async fn connected_link(url: &str, prefix: &str, metrics: &Metrics) -> Arc<RedisLink> {
        let timeout = Duration::from_secs(2);
        let client = RedisClient::from_url(url, timeout).expect("a valid test Redis URL");
        let settings = RedisSettings { timeout, cooldown: Duration::from_secs(2), key_prefix: prefix.to_owned() };
        let link = RedisLink::new(Some(client), settings, metrics.clone());
        let pong = link.call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await;
        assert_eq!(pong.as_deref(), Some("PONG"), "redis answers at {url}");
        Arc::new(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cooldown_ms: u64) -> RedisSettings {
        RedisSettings {
            timeout: Duration::from_millis(200),
            cooldown: Duration::from_millis(cooldown_ms),
            key_prefix: "t".into(),
        }
    }

    #[tokio::test]
    async fn an_unconfigured_link_answers_none_without_trying() {
        let link = RedisLink::new(None, settings(100), Metrics::new());
        let answer = link.call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await;
        assert_eq!(answer, None);
        assert!(!link.is_open());
    }

    #[tokio::test]
    async fn a_dead_redis_opens_the_breaker_which_then_skips_calls_until_the_cooldown() {
        // Port 1 on loopback: connection refused at once.
        assert_the_breaker_opens_and_probes("redis://127.0.0.1:1").await;
    }

    #[tokio::test]
    async fn a_dead_redis_cluster_opens_the_breaker_which_then_skips_calls_until_the_cooldown() {
        assert_the_breaker_opens_and_probes("redis+cluster://127.0.0.1:1,127.0.0.1:2").await;
    }

    async fn assert_the_breaker_opens_and_probes(url: &str) {
        let client = RedisClient::from_url(url, Duration::from_millis(200)).expect("valid url");
        let link = RedisLink::new(Some(client), settings(300), Metrics::new());
        let ping =
            || async { link.call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await };
        for _ in 0..FAILURES_TO_OPEN {
            assert_eq!(ping().await, None);
        }
        assert!(link.is_open(), "three failures open the breaker");
        assert!(matches!(link.admit(), Admission::Skip), "open: calls are skipped");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(matches!(link.admit(), Admission::Probe), "after the cooldown one probe goes through");
        assert!(matches!(link.admit(), Admission::Skip), "only one probe at a time");
        link.probing.store(false, Ordering::Release);
        link.record_success();
        assert!(!link.is_open(), "a successful probe closes the breaker");
        assert!(matches!(link.admit(), Admission::Closed));
    }

    fn cluster(nodes: &[&str]) -> Result<RedisTarget, String> {
        Ok(RedisTarget::Cluster(nodes.iter().map(|n| (*n).to_owned()).collect()))
    }

    #[test]
    fn one_url_is_one_server_while_the_cluster_scheme_or_a_list_of_urls_is_a_cluster() {
        let standalone = |url: &str| Ok(RedisTarget::Standalone(url.to_owned()));
        assert_eq!(RedisTarget::parse("redis://127.0.0.1:6379"), standalone("redis://127.0.0.1:6379"));
        assert_eq!(RedisTarget::parse(" redis://cache:6379/2 "), standalone("redis://cache:6379/2"));
        assert_eq!(
            RedisTarget::parse("redis+cluster://10.0.0.1:7001,10.0.0.2:7002, 10.0.0.3:7003"),
            cluster(&["redis://10.0.0.1:7001", "redis://10.0.0.2:7002", "redis://10.0.0.3:7003"])
        );
        assert_eq!(RedisTarget::parse("redis+cluster://seed:7001"), cluster(&["redis://seed:7001"]), "one seed");
        assert_eq!(
            RedisTarget::parse("redis+cluster://app:p@ss@a:7001,b:7002"),
            cluster(&["redis://app:p@ss@a:7001", "redis://app:p@ss@b:7002"]),
            "the credentials apply to every node"
        );
        assert_eq!(RedisTarget::parse("redis://a:7001,redis://b:7002"), cluster(&["redis://a:7001", "redis://b:7002"]));
        assert!(RedisTarget::parse("redis+cluster://a:1").is_ok_and(|t| t.is_cluster()));
        assert!(RedisTarget::parse("redis://a:1").is_ok_and(|t| !t.is_cluster()));
    }

    #[test]
    fn malformed_redis_urls_are_refused_with_a_reason_and_without_the_password() {
        for (url, expected) in [
            ("redis+cluster://", "names no cluster node"),
            ("redis+cluster://app:hunter2@", "names no cluster node"),
            ("redis+cluster://a:7001,,b:7002", "empty cluster node (node 2)"),
            ("redis+cluster://a:7001,", "empty cluster node (node 2)"),
            ("redis+cluster://redis://a:7001", "not URLs"),
            ("redis+cluster://a:7001/3", "database 0 only"),
            ("redis+cluster://a:7001?protocol=resp3", "database 0 only"),
            ("redis+cluster://app:hunter2@a:notaport", "bad cluster node 1"),
            ("redis://a:7001,b:7002", "node 2 is not a redis:// URL"),
            ("redis://a:7001,redis+unix:///tmp/redis.sock", "node 2 is not a redis:// URL"),
            ("redis://a:7001/1,redis://b:7002/1", "database 0 only"),
            ("redis://a:7001,redis://:hunter2@", "bad cluster node 2"),
            ("http://a:7001", "is not a Redis URL"),
            ("a:7001", "is not a Redis URL"),
        ] {
            let error = RedisTarget::parse(url).expect_err(url);
            assert!(error.contains(expected), "{url}: {error:?} should say {expected:?}");
            assert!(!error.contains("hunter2"), "{url}: the reason repeats the password: {error:?}");
        }
    }

    #[tokio::test]
    async fn exec_pipelined_writes_keys_of_many_slots_loading_an_unknown_script_once() {
        let test = "exec_pipelined_writes_keys_of_many_slots_loading_an_unknown_script_once";
        for url in testing::test_redis_urls(test) {
            let prefix = testing::unique_prefix();
            let metrics = Metrics::new();
            let one = testing::connected_link(&url, &prefix, &metrics).await;
            let two = testing::connected_link(&url, &prefix, &metrics).await;
            // A script no server has seen: the first EVALSHA of every pipeline meets NOSCRIPT.
            let script =
                redis::Script::new(&format!("-- {prefix}\nredis.call('SET', KEYS[1], ARGV[1], 'PX', 60000) return 1"));
            let keys: Vec<String> = (0..40).map(|i| one.key(&format!("k{i}"))).collect();
            let slots: std::collections::HashSet<Slot> = keys.iter().map(Slot::for_key).collect();
            assert!(slots.len() > 1, "the keys span several hash slots");
            let commands = keys
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(script.get_hash()).arg(1).arg(key).arg(i);
                    (key.clone(), cmd)
                })
                .collect();
            let written = one.call(|mut c| async move { c.exec_pipelined(commands, Some(&script)).await }).await;
            assert_eq!(written, Some(()), "{url}: every pipeline went through");

            let read_keys = keys.clone();
            let values = two
                .call(|mut c| async move {
                    redis::cmd("MGET").arg(&read_keys).query_async::<Vec<Option<u32>>>(&mut c).await
                })
                .await;
            let expected: Vec<Option<u32>> = (0..40).map(Some).collect();
            assert_eq!(values, Some(expected), "{url}: another link reads every key back, in order");
            let target = RedisTarget::parse(&url).expect("a valid test Redis URL");
            assert_eq!(one.is_cluster(), target.is_cluster(), "{url}");
        }
    }
}
