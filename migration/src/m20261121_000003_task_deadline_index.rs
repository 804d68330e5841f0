//! Index for the reaper's deadline sweep: non-terminal tasks whose `deadline` passed.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    Status,
    Deadline,
}

const INDEX: &str = "idx_tasks_status_deadline";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create().name(INDEX).table(Tasks::Table).col(Tasks::Status).col(Tasks::Deadline).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(INDEX).table(Tasks::Table).to_owned()).await
    }
}
