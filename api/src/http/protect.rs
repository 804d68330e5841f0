//! What stands between a request and execution: automatic persisted queries, the static
//! query limits (depth, complexity, aliases, directives) and the per-subject rate limit.
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
pub struct Protection {
    shape: SchemaShape,
    limits: QueryLimits,
    apq: PersistedQueries,
    rate: RateLimiter,
    metrics: Metrics,
    /// Parsed documents by query text. Only documents that parse are kept; the limits
    /// are checked on every request (they depend on the variables).
    parsed: moka::sync::Cache<String, Arc<ExecutableDocument>>,
}

impl Protection {
    /// The checks for the schema whose SDL is `sdl`.
    pub fn new(
        sdl: &str,
        limits: QueryLimits,
        apq: PersistedQueries,
        rate: RateLimiter,
        metrics: Metrics,
    ) -> Result<Protection, SchemaShapeError> {
        let shape = SchemaShape::from_sdl(sdl)?;
        let parsed = moka::sync::Cache::builder()
            .max_capacity(PARSE_CACHE_BYTES)
            .weigher(|query: &String, _| u32::try_from(query.len()).unwrap_or(u32::MAX))
            .build();
        Ok(Protection { shape, limits, apq, rate, metrics, parsed })
    }

    /// Resolves a persisted query, parses the document once (execution reuses it) and
    /// applies the query limits. The type of the selected operation, when there is one;
    /// `None` when the document does not parse or names no operation, which execution
    /// then reports as bad input without running anything.
    pub async fn prepare(&self, request: &mut Request) -> Result<Option<Operation>, ApiError> {
        self.apq.resolve(request).await?;
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
    pub async fn admit(&self, subject: &str, operations: u32, mutations: u32) -> Result<(), ApiError> {
        self.rate.check(subject, operations, mutations).await
    }
}

/// Shared handle.
pub type SharedProtection = Arc<Protection>;

/// The operation a request selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Query, mutation or subscription.
    pub ty: OperationType,
    /// Its name in the document, if it has one (for logs and metrics).
    pub name: Option<String>,
}

/// The operation `name` selects in `document` (the only one when `name` is `None`).
pub fn selected_operation(document: &ExecutableDocument, name: Option<&str>) -> Option<Operation> {
    match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(Operation { ty: op.node.ty, name: name.map(str::to_owned) }),
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
    }
}
