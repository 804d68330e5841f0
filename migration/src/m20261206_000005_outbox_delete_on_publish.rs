//! The outbox keeps only unpublished messages: the relay deletes a row once Kafka has
//! acknowledged it, so the table needs neither `published_at` nor its index.
//!
//! Before, the relay set `published_at` on every published row and pruned the rows an
//! hour later. Every message then cost the database a secondary-index entry on insert, a
//! locking scan through that index, an update that moved the entry (and grew the row),
//! and a delete. In MariaDB's slow log of one `real dispatch` run the relay's scan and
//! mark were 15 % of all statement time, and inserts into `outbox` took 1.7× as long as
//! inserts into `task_events` (docs/BENCHMARKS.md). Kafka keeps the published copy.
//!
//! Up deletes the published rows, then drops the index and the column. Down adds them
//! back (every remaining row unpublished).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Outbox {
    Table,
    Id,
    PublishedAt,
}

/// The index the relay used to find unpublished rows (`published_at`, `id`).
const INDEX: &str = "idx_outbox_unpublished";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .exec_stmt(
                Query::delete()
                    .from_table(Outbox::Table)
                    .and_where(Expr::col(Outbox::PublishedAt).is_not_null())
                    .to_owned(),
            )
            .await?;
        manager.drop_index(Index::drop().name(INDEX).table(Outbox::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(Outbox::Table).drop_column(Outbox::PublishedAt).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .add_column(ColumnDef::new(Outbox::PublishedAt).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name(INDEX).table(Outbox::Table).col(Outbox::PublishedAt).col(Outbox::Id).to_owned(),
            )
            .await
    }
}
