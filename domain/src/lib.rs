//! # taskwire-domain
//!
//! The pure heart of Taskwire: identifiers, validated inputs, the task state machine, the
//! retry policy, authorization rules, the Kafka wire schema and the stable error codes.
//!
//! This crate must never do I/O: no HTTP, GraphQL, SQL, Redis or Kafka types appear here.
//! Adapters in `taskwire-api` convert to and from these types at the edges, so the rules
//! can be unit-tested without any infrastructure.

// A panic on anything a user, the network or a dependency can reach is an outage:
// production code returns errors instead (tests may panic; see clippy.toml).
#![warn(clippy::expect_used)]

pub mod auth;
pub mod error;
pub mod event;
pub mod ids;
pub mod input;
pub mod machine;
pub mod queue;
pub mod retry;
pub mod status;
pub mod task;
pub mod worker;

pub use auth::{Principal, Role};
pub use error::{DomainError, ErrorCode};
pub use event::{EnvelopeType, TaskEnvelope};
pub use ids::{LeaseToken, TaskId};
pub use input::{CreateTaskInput, IdempotencyKey, MaxAttempts, NewTask, Payload, Priority, QueueName, TaskKind};
pub use machine::{Command, Effect, Transition, transition};
pub use queue::{QueueChanges, QueueSettings, RateBucket};
pub use retry::RetryPolicy;
pub use status::TaskStatus;
pub use task::Task;
pub use worker::{WorkerRegistration, WorkerStatus};
