//! What stands between a request and execution: automatic persisted queries, the static
//! query limits (depth, complexity, aliases, directives) and the per-subject rate limit.
//!
//! Each check answers with its own code before any resolver runs, for HTTP and
//! WebSocket alike. What it must never do: execute anything, or fail a request because
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

/// The checks, built once at start-up.
#[derive(Debug)]
pub struct Protection {
    shape: SchemaShape,
    limits: QueryLimits,
    apq: PersistedQueries,
    rate: RateLimiter,
    metrics: Metrics,
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
        Ok(Protection { shape, limits, apq, rate, metrics })
    }

    /// Resolves a persisted query, parses the document once (execution reuses it) and
    /// applies the query limits. The type of the selected operation, when there is one;
    /// `None` when the document does not parse or names no operation, which execution
    /// then reports as bad input without running anything.
    pub async fn prepare(&self, request: &mut Request) -> Result<Option<Operation>, ApiError> {
        self.apq.resolve(request).await?;
        let Ok(document) = parse_query(&request.query) else { return Ok(None) };
        let name = request.operation_name.as_deref();
        if let Err(err) = check(&self.shape, &document, name, &request.variables, &self.limits) {
            self.metrics.query_limit_rejections.with_label_values(&[err.code().as_str()]).inc();
            return Err(err);
        }
        let operation = selected_operation(&document, name);
        request.set_parsed_query(document);
        Ok(operation)
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
