//! What a resolver knows about the request: the caller and the shared handles.

use async_graphql::Context;
use taskwire_domain::Principal;

use crate::{
    error::ApiError,
    graphql::{Loaders, SubscriptionLoaders},
};
use taskwire_store::Store;

/// Per-request data inserted by the HTTP layer.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The authenticated caller, `None` for anonymous requests.
    pub principal: Option<Principal>,
    /// W3C trace context carried into the Kafka messages this request's writes produce.
    pub traceparent: Option<String>,
}

/// The request's trace context, if any.
pub fn traceparent<'a>(ctx: &'a Context<'_>) -> Option<&'a str> {
    ctx.data_opt::<RequestContext>().and_then(|r| r.traceparent.as_deref())
}

/// The authenticated caller, or `UNAUTHENTICATED`.
pub fn principal<'a>(ctx: &'a Context<'_>) -> Result<&'a Principal, ApiError> {
    ctx.data_opt::<RequestContext>().and_then(|r| r.principal.as_ref()).ok_or(ApiError::Unauthenticated)
}

/// The store (schema data).
pub fn store<'a>(ctx: &'a Context<'_>) -> Result<&'a Store, ApiError> {
    ctx.data_opt::<Store>().ok_or_else(|| missing("Store"))
}

/// This request's DataLoaders (a subscription's are made on first use).
pub fn loaders<'a>(ctx: &'a Context<'_>) -> Result<&'a Loaders, ApiError> {
    if let Some(loaders) = ctx.data_opt::<std::sync::Arc<Loaders>>() {
        return Ok(loaders);
    }
    match ctx.data_opt::<SubscriptionLoaders>() {
        Some(lazy) => Ok(lazy.get_or_build(store(ctx)?)),
        None => Err(missing("Loaders")),
    }
}

fn missing(what: &str) -> ApiError {
    tracing::error!("{what} missing from the GraphQL context: the HTTP layer must insert it");
    ApiError::Internal
}
