//! # taskwire-frontend-schema
//!
//! The contract frontends build against, as files:
//!
//! - `schema.graphql`: the SDL generated from the server (`cargo run -q -- schema`),
//!   checked in so frontend tooling (codegen, linters) works without a running server;
//! - `operations/*.graphql`: the operations the frontends, workers written in TypeScript
//!   and operator tools send, one file per area; fragments may be shared across files;
//! - an npm package (`package.json`, README "For frontend developers") with the typed
//!   documents generated from both, the error and close codes, Apollo Client's type
//!   policies and a graphql-ws client set-up.
//!
//! The tests of this crate fail when the checked-in SDL differs from the server's, when an
//! operation does not run without errors against a live server (subscriptions included),
//! or when the package's error codes differ from the server's.

/// The checked-in SDL.
pub const SCHEMA: &str = include_str!("../schema.graphql");

/// The checked-in operations, by file name.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("operators.graphql", include_str!("../operations/operators.graphql")),
    ("tasks.graphql", include_str!("../operations/tasks.graphql")),
    ("workers.graphql", include_str!("../operations/workers.graphql")),
];

/// The TypeScript package's error and close codes (`src/codes.ts`).
pub const TS_CODES: &str = include_str!("codes.ts");
