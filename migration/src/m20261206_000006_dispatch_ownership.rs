//! Columns that let several dispatcher processes share one database without fighting:
//!
//! - `workers.connected_to`: the dispatcher process whose `assignments` stream the
//!   worker holds (NULL when the process holding it runs no dispatcher). A dispatcher
//!   offers only to the workers it holds, and to those no dispatcher holds, so two
//!   dispatchers never plan against the same worker's capacity.
//! - `queues.rate_tokens`, `queues.rate_refilled_at`: the queue's rate-limit bucket,
//!   kept in the queue row so that every dispatcher spends from one bucket, under the
//!   row lock its offer transaction takes anyway for `maxConcurrency`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Workers {
    Table,
    ConnectedTo,
}

#[derive(DeriveIden, Clone, Copy)]
enum Queues {
    Table,
    RateTokens,
    RateRefilledAt,
}

/// Longest instance id (`<host>-<pid>-<random>`), bounded like subject names.
const INSTANCE_LEN: u32 = 128;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Workers::Table)
                    .add_column(ColumnDef::new(Workers::ConnectedTo).string_len(INSTANCE_LEN).null())
                    .to_owned(),
            )
            .await?;
        // SQLite alters one column per statement.
        manager
            .alter_table(
                Table::alter()
                    .table(Queues::Table)
                    .add_column(ColumnDef::new(Queues::RateTokens).double().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Queues::Table)
                    .add_column(ColumnDef::new(Queues::RateRefilledAt).big_integer().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Queues::Table).drop_column(Queues::RateRefilledAt).to_owned()).await?;
        manager.alter_table(Table::alter().table(Queues::Table).drop_column(Queues::RateTokens).to_owned()).await?;
        manager.alter_table(Table::alter().table(Workers::Table).drop_column(Workers::ConnectedTo).to_owned()).await
    }
}
