//! The GraphQL schema: one `MergedObject` per area, guards for roles, per-request
//! DataLoaders. Resolvers stay thin: they check who may do what, call the store, and
//! convert domain values into the API types of [`types`].

pub(crate) mod context;
pub(crate) mod guards;
pub(crate) mod limits;
pub(crate) mod loaders;
pub(crate) mod mutation;
pub(crate) mod query;
pub(crate) mod scalars;
pub(crate) mod subscription;
pub(crate) mod types;

use std::sync::Arc;

use async_graphql::{SDLExportOptions, Schema};

pub(crate) use context::RequestContext;
pub(crate) use loaders::{Loaders, SubscriptionLoaders};

use crate::{live::Hub, metrics::Metrics};
use taskwire_store::Store;

/// The executable schema.
pub(crate) type TaskwireSchema = Schema<query::Query, mutation::Mutation, subscription::Subscription>;

/// Schema-level switches.
///
/// The query limits (depth, complexity, aliases, directives) are not set on the schema:
/// [`limits`] checks them before execution, so each is answered with its own code.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchemaOptions {
    /// Allow introspection queries.
    pub introspection: bool,
    /// A worker's TTL: an open `assignments` subscription refreshes its `lastSeenAt`
    /// three times per TTL.
    pub worker_ttl: std::time::Duration,
}

/// Builds the schema around the store and the live hub; `dispatcher` is this process's
/// dispatcher, if it runs one (its `assignments` streams mark their workers with it).
pub(crate) fn build_schema(
    store: Store,
    hub: Arc<Hub>,
    metrics: Metrics,
    options: SchemaOptions,
    dispatcher: crate::dispatch::LocalDispatcher,
) -> TaskwireSchema {
    let mut builder = Schema::build(query::Query::default(), mutation::Mutation::default(), subscription::Subscription)
        .data(store)
        .data(hub)
        .data(metrics)
        .data(options)
        .data(dispatcher);
    if !options.introspection {
        // Without introspection, "did you mean …" hints would leak the schema piecemeal.
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder.finish()
}

/// The SDL of the schema (what `taskwire schema` prints and `frontend-schema` checks in).
pub fn sdl() -> String {
    Schema::build(query::Query::default(), mutation::Mutation::default(), subscription::Subscription)
        .finish()
        .sdl_with_options(SDLExportOptions::new().include_specified_by())
}
