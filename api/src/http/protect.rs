//! What stands between a request and execution: automatic persisted queries, the static
//! query limits (document length, selections, depth, complexity, aliases, directives),
//! the per-subject rate limit, and the per-address budget of refused tokens.
//!
//! Each check answers with its own code before any resolver runs, for HTTP and
//! WebSocket alike. Parsed documents are kept by query text (bounded), so an operation
//! that clients send again and again is parsed once (docs/BENCHMARKS.md). What it must never do: execute anything, or fail a request because
//! Redis (behind the persisted queries and the rate limits) failed.

use std::sync::Arc;

use async_graphql::{
    Request,
    parser::{
        parse_query,
        types::{DocumentOperations, ExecutableDocument, OperationType},
    },
};

use super::apq::PersistedQueries;
use crate::{
    error::ApiError,
    graphql::limits::{QueryLimits, SchemaShape, SchemaShapeError, check},
    metrics::Metrics,
    ratelimit::RateLimiter,
};

/// Query text kept in the parse cache, at most (bytes, counted by text length).
const PARSE_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Longer documents are parsed every time rather than cached.
const PARSE_CACHE_MAX_QUERY: usize = 32 * 1024;

/// The checks, built once at start-up.
#[derive(Debug)]
pub(crate) struct Protection {
    shape: SchemaShape,
    limits: QueryLimits,
    /// Longest document text parsed (`TASKWIRE_LIMIT_QUERY_BYTES`).
    max_query_bytes: usize,
    apq: PersistedQueries,
    rate: RateLimiter,
    /// Refused tokens per client address.
    invalid_tokens: RateLimiter,
    metrics: Metrics,
    /// Parsed documents by query text. Only documents that parse are kept; the limits
    /// are checked on every request (they depend on the variables).
    parsed: moka::sync::Cache<String, Arc<ExecutableDocument>>,
}

impl Protection {
    /// The checks for the schema whose SDL is `sdl`.
    pub(crate) fn new(
        sdl: &str,
        limits: QueryLimits,
        max_query_bytes: usize,
        apq: PersistedQueries,
        rate: RateLimiter,
        invalid_tokens: RateLimiter,
        metrics: Metrics,
    ) -> Result<Protection, SchemaShapeError> {
        let shape = SchemaShape::from_sdl(sdl)?;
        let parsed = moka::sync::Cache::builder()
            .max_capacity(PARSE_CACHE_BYTES)
            .weigher(|query: &String, _| u32::try_from(query.len()).unwrap_or(u32::MAX))
            .build();
        Ok(Protection { shape, limits, max_query_bytes, apq, rate, invalid_tokens, metrics, parsed })
    }

    /// Resolves a persisted query, parses the document once (execution reuses it) and
    /// applies the query limits. The type of the selected operation, when there is one;
    /// `None` when the document does not parse or names no operation, which execution
    /// then reports as bad input without running anything.
    pub(crate) async fn prepare(&self, request: &mut Request) -> Result<Option<Operation>, ApiError> {
        self.apq.resolve(request).await?;
        // Parsing costs time in the length of the text: refuse what is too long first.
        if request.query.len() > self.max_query_bytes {
            let err = ApiError::QueryTooComplex {
                measured: format!("{} bytes of query text", request.query.len()),
                limit: self.max_query_bytes,
            };
            self.metrics.query_limit_rejections.with_label_values(&[err.code().as_str()]).inc();
            return Err(err);
        }
        let Some(document) = self.parse(&request.query) else { return Ok(None) };
        let name = request.operation_name.as_deref();
        if let Err(err) = check(&self.shape, &document, name, &request.variables, &self.limits) {
            self.metrics.query_limit_rejections.with_label_values(&[err.code().as_str()]).inc();
            return Err(err);
        }
        let operation = selected_operation(&document, name);
        request.set_parsed_query(document);
        Ok(operation)
    }

    /// The parsed document of `query`, from the parse cache when it was seen before;
    /// `None` when it does not parse.
    fn parse(&self, query: &str) -> Option<ExecutableDocument> {
        if let Some(document) = self.parsed.get(query) {
            return Some(ExecutableDocument::clone(&document));
        }
        let document = parse_query(query).ok()?;
        if query.len() <= PARSE_CACHE_MAX_QUERY {
            self.parsed.insert(query.to_owned(), Arc::new(document.clone()));
        }
        Some(document)
    }

    /// Spends `operations` (of which `mutations` are mutations) from `subject`'s budget.
    pub(crate) async fn admit(&self, subject: &str, operations: u32, mutations: u32) -> Result<(), ApiError> {
        self.rate.check(subject, operations, mutations).await
    }

    /// Spends one refused token from `ip`'s budget (`TASKWIRE_RATE_LIMIT_INVALID_TOKENS`):
    /// `RATE_LIMITED` once the address refuses more than its rate, so nobody can make the
    /// server verify signatures without end from one address.
    pub(crate) async fn admit_invalid_token(&self, ip: std::net::IpAddr) -> Result<(), ApiError> {
        // A subject of its own: the anonymous operations budget is keyed by `ip:<addr>`.
        self.invalid_tokens.check(&format!("invalid-token:{ip}"), 1, 0).await
    }
}

/// The operation a request selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Operation {
    /// Query, mutation or subscription.
    pub(crate) ty: OperationType,
    /// Its name in the document, if it has one (for logs and metrics).
    pub(crate) name: Option<String>,
}

/// The operation `name` selects in `document` (the only one when `name` is `None`).
///
/// The name is the document's own: a request's `operationName` that names no operation
/// (an anonymous operation's) is not taken for one, so clients cannot choose names that
/// then appear in logs and metrics.
fn selected_operation(document: &ExecutableDocument, name: Option<&str>) -> Option<Operation> {
    match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(Operation { ty: op.node.ty, name: None }),
        (DocumentOperations::Multiple(ops), Some(name)) => ops
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(n, op)| Operation { ty: op.node.ty, name: Some(n.to_string()) }),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.iter().next().map(|(n, op)| Operation { ty: op.node.ty, name: Some(n.to_string()) })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selected_operation_carries_its_name_and_type() {
        let document = parse_query("query GetTask($id: ID!) { task(id: $id) { id } }").expect("parses");
        let operation = selected_operation(&document, None).expect("selected");
        assert_eq!((operation.ty, operation.name.as_deref()), (OperationType::Query, Some("GetTask")));
        let document = parse_query("query A { me { subject } } mutation B { heartbeat { id } }").expect("parses");
        assert_eq!(selected_operation(&document, None), None, "two operations need a name");
        let b = selected_operation(&document, Some("B")).expect("selected");
        assert_eq!((b.ty, b.name.as_deref()), (OperationType::Mutation, Some("B")));
        let anonymous = parse_query("{ me { subject } }").expect("parses");
        assert_eq!(selected_operation(&anonymous, None).and_then(|op| op.name), None);
        let claimed = selected_operation(&anonymous, Some("ChosenByTheClient")).expect("selected");
        assert_eq!(claimed.name, None, "an anonymous operation takes no name from the request");
    }
}
