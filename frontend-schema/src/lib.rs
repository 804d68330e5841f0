//! # taskwire-frontend-schema
//!
//! The contract frontends build against, as files:
//!
//! - `schema.graphql`: the SDL generated from the server (`cargo run -q -- schema`),
//!   checked in so frontend tooling (codegen, linters) works without a running server;
//! - `operations/*.graphql`: the operations the frontends and tests use.
//!
//! The tests of this crate fail when the checked-in SDL differs from the server's, or
//! when an operation no longer validates against it.

/// The checked-in SDL.
pub const SCHEMA: &str = include_str!("../schema.graphql");

/// The checked-in operations, by file name.
pub const OPERATIONS: &[(&str, &str)] = &[("tasks.graphql", include_str!("../operations/tasks.graphql"))];
