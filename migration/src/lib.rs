//! # taskwire-migration
//!
//! The schema, as timestamped sea-orm-migration files that run unchanged on
//! MySQL/MariaDB and SQLite. `taskwire migrate [up|down|status|fresh]` drives them, and
//! `taskwire serve` applies pending ones at start unless told not to.
//!
//! Never edit a migration that has shipped: add a new one.

pub use sea_orm_migration::prelude::*;

/// Indexes the store names in its queries (index hints), so that a test can tie the two.
pub use m20261207_000007_workers_dispatcher_index::INDEX as WORKERS_DISPATCHER_INDEX;

mod m20261121_000001_initial_schema;
mod m20261121_000002_task_events_at_index;
mod m20261121_000003_task_deadline_index;
mod m20261122_000004_task_worker_status_index;
mod m20261206_000005_outbox_delete_on_publish;
mod m20261206_000006_dispatch_ownership;
mod m20261207_000007_workers_dispatcher_index;
mod m20261207_000008_worker_auto_accept;

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
            Box::new(m20261207_000007_workers_dispatcher_index::Migration),
            Box::new(m20261207_000008_worker_auto_accept::Migration),
        ]
    }
}

/// Creates the index `name` on `table` over `columns`: the whole `up` of a migration that
/// only adds an index.
async fn create_index<T: Iden + Clone + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: &[T],
) -> Result<(), DbErr> {
    let mut index = Index::create();
    index.name(name).table(table);
    for column in columns {
        index.col(column.clone());
    }
    manager.create_index(index.to_owned()).await
}

/// Drops the index `name` of `table`: the `down` of [`create_index`].
async fn drop_index<T: Iden + 'static>(manager: &SchemaManager<'_>, name: &str, table: T) -> Result<(), DbErr> {
    manager.drop_index(Index::drop().name(name).table(table).to_owned()).await
}
