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

use std::{
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::Metrics;

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Time limit for one command (and for connecting). Default 250 ms.
    pub timeout: Duration,
    /// How long the breaker stays open before a probe. Default 2 s.
    pub cooldown: Duration,
    /// Prefix of every key this service writes, so several deployments (or test runs)
    /// can share one Redis. Default `taskwire`.
    pub key_prefix: String,
}

/// A shared Redis handle with a circuit breaker. Cheap to share behind an `Arc`.
pub struct RedisLink {
    client: Option<redis::Client>,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
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
    pub fn new(client: Option<redis::Client>, settings: RedisSettings, metrics: Metrics) -> RedisLink {
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
    pub async fn call<T, F, Fut>(&self, command: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
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

    async fn connection(&self, client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1);
        let connection = client.get_connection_manager_with_config(config).await?;
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
        let client = redis::Client::open("redis://127.0.0.1:1").expect("valid url");
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
}
