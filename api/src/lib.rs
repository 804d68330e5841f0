//! # taskwire-api
//!
//! The Taskwire service. `main.rs` is a thin shell around [`cli`]; everything else is a
//! library so the black-box tests can start the real application on port 0. The
//! database lives below it, in the `taskwire-store` crate (the only code that speaks SQL).
//!
//! - [`config`]: one `Config`, layered defaults → TOML file → environment
//! - [`startup`]: `Application::build(config)`, the bound port, `run_until_stopped`
//! - [`auth`]: JWT verification and dev-token minting
//! - [`graphql`]: the schema (queries, mutations, types, loaders, guards)
//! - [`http`]: the axum router and handlers
//! - [`kafka`]: embedded or real Kafka, the outbox relay, the status consumer
//! - [`live`]: fan-out of status events to this process's subscriptions
//! - [`metrics`]: the Prometheus registry behind `/metrics`
//! - [`redis_link`]: the shared Redis connection behind a circuit breaker
//! - [`cache`]: task reads through L1 (moka) and L2 (Redis)
//! - [`ratelimit`]: per-subject token buckets, global through Redis when configured

// A panic on anything a user, the network or a dependency can reach is an outage:
// production code returns errors instead (tests may panic; see clippy.toml).
#![warn(clippy::expect_used)]

pub(crate) mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub(crate) mod dispatch;
pub(crate) mod error;
pub mod graphql;
pub(crate) mod http;
pub mod kafka;
pub(crate) mod live;
pub(crate) mod metrics;
pub(crate) mod ratelimit;
pub(crate) mod redis_link;
pub mod startup;
pub mod telemetry;
