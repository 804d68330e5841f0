//! # taskwire-migration
//!
//! The schema, as timestamped sea-orm-migration files that run unchanged on
//! MySQL/MariaDB and SQLite. `taskwire migrate [up|down|status|fresh]` drives them, and
//! `taskwire serve` applies pending ones at start unless told not to.
//!
//! Never edit a migration that has shipped: add a new one.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_initial_schema;
mod m20261121_000002_task_events_at_index;
mod m20261121_000003_task_deadline_index;
mod m20261122_000004_task_worker_status_index;
mod m20261206_000005_outbox_delete_on_publish;
mod m20261206_000006_dispatch_ownership;

/// All migrations, oldest first.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_initial_schema::Migration),
            Box::new(m20261121_000002_task_events_at_index::Migration),
            Box::new(m20261121_000003_task_deadline_index::Migration),
            Box::new(m20261122_000004_task_worker_status_index::Migration),
            Box::new(m20261206_000005_outbox_delete_on_publish::Migration),
            Box::new(m20261206_000006_dispatch_ownership::Migration),
        ]
    }
}
