//! Automatic persisted queries (the Apollo APQ protocol), over POST and GET.
//!
//! A client first sends only `extensions.persistedQuery.sha256Hash`. If the server knows
//! the hash, it runs the query stored under it; if not, it answers
//! `PersistedQueryNotFound` (code `PERSISTED_QUERY_NOT_FOUND`) and the client retries
//! with the query text and the hash, which the server checks and stores. Queries live in
//! a bounded in-process map and, when Redis is configured, in Redis for a day, so every
//! api process shares what one of them learned.
//!
//! What it must never do: run a query whose text does not hash to the hash it came with.

use std::{sync::Arc, time::Duration};

use async_graphql::{Request, Value};
use sha2::{Digest, Sha256};
use taskwire_domain::DomainError;

use crate::{error::ApiError, metrics::Metrics, redis_link::RedisLink};

/// Total bytes of query text kept in process.
const LOCAL_BYTES: u64 = 32 * 1024 * 1024;
/// How long Redis keeps a persisted query.
const REDIS_TTL: Duration = Duration::from_secs(24 * 3600);

/// The persisted-query store.
pub(crate) struct PersistedQueries {
    local: moka::sync::Cache<String, Arc<str>>,
    redis: Arc<RedisLink>,
    metrics: Metrics,
}

impl std::fmt::Debug for PersistedQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistedQueries").field("entries", &self.local.entry_count()).finish_non_exhaustive()
    }
}

impl PersistedQueries {
    /// An empty store, shared through `redis` when it is configured.
    pub(crate) fn new(redis: Arc<RedisLink>, metrics: Metrics) -> PersistedQueries {
        let local = moka::sync::Cache::builder()
            .max_capacity(LOCAL_BYTES)
            .weigher(|hash: &String, query: &Arc<str>| (hash.len() + query.len()).try_into().unwrap_or(u32::MAX))
            .build();
        PersistedQueries { local, redis, metrics }
    }

    /// Applies the APQ protocol to `request`: fills in the query of a known hash, stores
    /// a new (query, hash) pair, or fails with `PERSISTED_QUERY_NOT_FOUND`. A request
    /// without `extensions.persistedQuery` is left alone.
    pub(crate) async fn resolve(&self, request: &mut Request) -> Result<(), ApiError> {
        let Some(hash) = requested_hash(request)? else { return Ok(()) };
        if !request.query.is_empty() {
            if hex::encode(Sha256::digest(request.query.as_bytes())) != hash {
                return Err(invalid("the sha256Hash does not match the query"));
            }
            let query: Arc<str> = request.query.as_str().into();
            self.local.insert(hash.clone(), query.clone());
            let key = self.redis.key(&format!("apq:{hash}"));
            self.redis
                .call(|mut conn| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(query.as_bytes())
                        .arg("PX")
                        .arg(REDIS_TTL.as_millis() as u64)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await;
            self.metrics.persisted_queries.with_label_values(&["registered"]).inc();
            return Ok(());
        }
        if let Some(query) = self.local.get(&hash) {
            request.query = query.to_string();
            self.metrics.persisted_queries.with_label_values(&["hit"]).inc();
            return Ok(());
        }
        let key = self.redis.key(&format!("apq:{hash}"));
        let stored: Option<Option<String>> =
            self.redis.call(|mut conn| async move { redis::cmd("GET").arg(&key).query_async(&mut conn).await }).await;
        // Re-check what Redis returns: a shared store is not trusted blindly.
        match stored.flatten().filter(|q| hex::encode(Sha256::digest(q.as_bytes())) == hash) {
            Some(query) => {
                self.local.insert(hash, query.as_str().into());
                request.query = query;
                self.metrics.persisted_queries.with_label_values(&["hit"]).inc();
                Ok(())
            }
            None => {
                self.metrics.persisted_queries.with_label_values(&["miss"]).inc();
                Err(ApiError::PersistedQueryNotFound)
            }
        }
    }
}

/// The lower-case hex hash of `extensions.persistedQuery`, if present and well formed.
fn requested_hash(request: &Request) -> Result<Option<String>, ApiError> {
    let Some(persisted) = request.extensions.0.get("persistedQuery") else { return Ok(None) };
    let Value::Object(fields) = persisted else {
        return Err(invalid("persistedQuery must be an object"));
    };
    match fields.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        _ => return Err(invalid("persistedQuery.version must be 1")),
    }
    match fields.get("sha256Hash") {
        Some(Value::String(hash)) if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(hash.to_ascii_lowercase()))
        }
        _ => Err(invalid("persistedQuery.sha256Hash must be 64 hex digits")),
    }
}

fn invalid(reason: &str) -> ApiError {
    DomainError::invalid("extensions.persistedQuery", reason).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_link::{RedisSettings, testing};

    fn store() -> PersistedQueries {
        let settings = RedisSettings {
            timeout: Duration::from_millis(100),
            cooldown: Duration::from_secs(1),
            key_prefix: "t".into(),
        };
        PersistedQueries::new(Arc::new(RedisLink::new(None, settings, Metrics::new())), Metrics::new())
    }

    fn apq_request(query: &str, hash: &str) -> Request {
        let extensions = serde_json::json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
        let body = serde_json::json!({ "query": query, "extensions": extensions });
        serde_json::from_value(body).expect("a request")
    }

    #[tokio::test]
    async fn an_unknown_hash_misses_then_registers_then_hits() {
        let apq = store();
        let query = "{ me { subject } }";
        let hash = hex::encode(Sha256::digest(query.as_bytes()));
        let miss = apq.resolve(&mut apq_request("", &hash)).await;
        assert_eq!(miss.map_err(|e| e.code().as_str()), Err("PERSISTED_QUERY_NOT_FOUND"));
        apq.resolve(&mut apq_request(query, &hash)).await.map_err(|e| e.message()).expect("registers");
        let mut hit = apq_request("", &hash);
        apq.resolve(&mut hit).await.map_err(|e| e.message()).expect("hits");
        assert_eq!(hit.query, query);
    }

    #[tokio::test]
    async fn a_query_that_does_not_match_its_hash_is_refused() {
        let apq = store();
        let wrong = hex::encode(Sha256::digest(b"{ other }"));
        let result = apq.resolve(&mut apq_request("{ me { subject } }", &wrong)).await;
        assert_eq!(result.map_err(|e| e.code().as_str()), Err("BAD_USER_INPUT"));
        let malformed = apq.resolve(&mut apq_request("", "not-a-hash")).await;
        assert_eq!(malformed.map_err(|e| e.code().as_str()), Err("BAD_USER_INPUT"));
    }

    #[tokio::test]
    async fn requests_without_the_extension_are_left_alone() {
        let apq = store();
        let mut request = Request::new("{ me { subject } }");
        apq.resolve(&mut request).await.map_err(|e| e.message()).expect("passes");
        assert_eq!(request.query, "{ me { subject } }");
    }

    #[tokio::test]
    async fn a_query_registered_through_one_process_is_found_through_another() {
        for url in testing::test_redis_urls("a_query_registered_through_one_process_is_found_through_another") {
            let prefix = testing::unique_prefix();
            let metrics = Metrics::new();
            let one = PersistedQueries::new(testing::connected_link(&url, &prefix, &metrics).await, metrics.clone());
            let two = PersistedQueries::new(testing::connected_link(&url, &prefix, &metrics).await, metrics.clone());
            let queries: Vec<String> = (0..8).map(|i| format!("{{ me {{ subject }} }} # {prefix} {i}")).collect();
            for query in &queries {
                let hash = hex::encode(Sha256::digest(query.as_bytes()));
                let miss = two.resolve(&mut apq_request("", &hash)).await;
                assert_eq!(miss.map_err(|e| e.code().as_str()), Err("PERSISTED_QUERY_NOT_FOUND"), "{url}");
                one.resolve(&mut apq_request(query, &hash)).await.map_err(|e| e.message()).expect("registers");
                let mut hit = apq_request("", &hash);
                two.resolve(&mut hit).await.map_err(|e| e.message()).expect("the other process finds it in Redis");
                assert_eq!(&hit.query, query, "{url}");
            }
            assert_eq!(metrics.redis_errors.get(), 0, "{url}");
        }
    }
}
