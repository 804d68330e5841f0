//! `workers.auto_accept`: the worker takes its offers as they come.
//!
//! A worker registered with `autoAccept: true` is offered tasks already `RUNNING`: the
//! dispatcher's offer is also the acceptance, so the worker sends no `acceptTask` and
//! the task makes one write, one event and one Kafka message fewer on its way. The
//! matcher reads the flag with the worker's capacity; existing workers keep the
//! offer-then-accept protocol (`false`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Workers {
    Table,
    AutoAccept,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(Workers::AutoAccept).boolean().not_null().default(false).to_owned();
        manager.alter_table(Table::alter().table(Workers::Table).add_column(column).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Workers::Table).drop_column(Workers::AutoAccept).to_owned()).await
    }
}
