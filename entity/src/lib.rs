//! # taskwire-entity
//!
//! SeaORM entities of the Taskwire tables, and nothing else. These types never leave the
//! storage layer: the GraphQL API has its own types and converts explicitly, so a column
//! change never silently changes the public schema.
//!
//! Timestamps are stored as `BIGINT` milliseconds since the Unix epoch (`*_at` columns):
//! the same type, precision and ordering on MySQL/MariaDB and SQLite, with no session
//! time-zone conversions in between.

pub mod outbox;
pub mod queue;
pub mod task;
pub mod task_event;
pub mod worker;

pub mod prelude {
    //! The entities under their table-ish names.
    pub use super::outbox::Entity as Outbox;
    pub use super::queue::Entity as Queue;
    pub use super::task::Entity as Task;
    pub use super::task_event::Entity as TaskEvent;
    pub use super::worker::Entity as Worker;
}
