//! The initial schema: tasks, task_events, workers, queues, outbox.
//!
//! Timestamps are `BIGINT` milliseconds since the epoch (see `taskwire-entity`).
//! Large JSON columns use `MEDIUMTEXT` so a 64 KiB payload fits on MySQL (whose `TEXT`
//! stops at 65,535 bytes); SQLite reads the name as TEXT affinity.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    Id,
    Queue,
    Kind,
    Payload,
    Priority,
    Status,
    Attempts,
    MaxAttempts,
    RunAt,
    Deadline,
    CreatedBy,
    IdempotencyKey,
    InputHash,
    WorkerId,
    LeaseToken,
    LeaseExpiresAt,
    Result,
    LastError,
    Version,
    LastSeq,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum TaskEvents {
    Table,
    Id,
    TaskId,
    Seq,
    Status,
    PreviousStatus,
    Attempt,
    WorkerId,
    Message,
    At,
}

#[derive(DeriveIden, Clone, Copy)]
enum Workers {
    Table,
    Id,
    Name,
    Queues,
    Capacity,
    Active,
    Status,
    LastSeenAt,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Queues {
    Table,
    Name,
    Paused,
    RateLimitPerSecond,
    MaxConcurrency,
    MaxAttempts,
    LeaseSeconds,
    BackoffBaseMs,
    BackoffMaxMs,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Outbox {
    Table,
    Id,
    Topic,
    MessageKey,
    Payload,
    Traceparent,
    CreatedAt,
    PublishedAt,
}

/// Subject names (JWT `sub`) are bounded so composite indexes stay within InnoDB limits.
const SUBJECT_LEN: u32 = 255;

/// Creates a table; on MySQL/MariaDB with a binary collation, so idempotency keys,
/// ids and names compare exactly (the server default is often case-insensitive).
async fn create_table(manager: &SchemaManager<'_>, mut stmt: TableCreateStatement) -> Result<(), DbErr> {
    if manager.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::MySql {
        stmt.character_set("utf8mb4").collate("utf8mb4_bin");
    }
    manager.create_table(stmt).await
}

fn medium_text<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).custom(Alias::new("MEDIUMTEXT")).to_owned()
}

fn index(table: impl IntoIden, name: &str, cols: Vec<DynIden>) -> IndexCreateStatement {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for col in cols {
        stmt.col(col);
    }
    stmt.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_table(
            manager,
            Table::create()
                .table(Tasks::Table)
                .col(ColumnDef::new(Tasks::Id).string_len(36).not_null().primary_key())
                .col(ColumnDef::new(Tasks::Queue).string_len(64).not_null())
                .col(ColumnDef::new(Tasks::Kind).string_len(64).not_null())
                .col(medium_text(Tasks::Payload).null())
                .col(ColumnDef::new(Tasks::Priority).small_integer().not_null())
                .col(ColumnDef::new(Tasks::Status).string_len(16).not_null())
                .col(ColumnDef::new(Tasks::Attempts).integer().not_null())
                .col(ColumnDef::new(Tasks::MaxAttempts).integer().not_null())
                .col(ColumnDef::new(Tasks::RunAt).big_integer().not_null())
                .col(ColumnDef::new(Tasks::Deadline).big_integer().null())
                .col(ColumnDef::new(Tasks::CreatedBy).string_len(SUBJECT_LEN).not_null())
                .col(ColumnDef::new(Tasks::IdempotencyKey).string_len(128).null())
                .col(ColumnDef::new(Tasks::InputHash).string_len(64).not_null())
                .col(ColumnDef::new(Tasks::WorkerId).string_len(SUBJECT_LEN).null())
                .col(ColumnDef::new(Tasks::LeaseToken).string_len(64).null())
                .col(ColumnDef::new(Tasks::LeaseExpiresAt).big_integer().null())
                .col(medium_text(Tasks::Result).null())
                .col(ColumnDef::new(Tasks::LastError).text().null())
                .col(ColumnDef::new(Tasks::Version).integer().not_null())
                .col(ColumnDef::new(Tasks::LastSeq).integer().not_null())
                .col(ColumnDef::new(Tasks::CreatedAt).big_integer().not_null())
                .col(ColumnDef::new(Tasks::UpdatedAt).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        // Dispatch: ready tasks of a queue in priority order.
        manager
            .create_index(index(
                Tasks::Table,
                "idx_tasks_dispatch",
                vec![
                    Tasks::Status.into_iden(),
                    Tasks::Queue.into_iden(),
                    Tasks::Priority.into_iden(),
                    Tasks::RunAt.into_iden(),
                ],
            ))
            .await?;
        // Scheduler and reaper: due SCHEDULED tasks, lapsed leases.
        manager
            .create_index(index(
                Tasks::Table,
                "idx_tasks_status_run_at",
                vec![Tasks::Status.into_iden(), Tasks::RunAt.into_iden()],
            ))
            .await?;
        manager
            .create_index(index(
                Tasks::Table,
                "idx_tasks_status_lease",
                vec![Tasks::Status.into_iden(), Tasks::LeaseExpiresAt.into_iden()],
            ))
            .await?;
        // Listing a creator's tasks newest first; a worker's tasks.
        manager
            .create_index(index(
                Tasks::Table,
                "idx_tasks_creator",
                vec![Tasks::CreatedBy.into_iden(), Tasks::Id.into_iden()],
            ))
            .await?;
        manager
            .create_index(index(
                Tasks::Table,
                "idx_tasks_worker",
                vec![Tasks::WorkerId.into_iden(), Tasks::Id.into_iden()],
            ))
            .await?;
        manager
            .create_index(index(Tasks::Table, "idx_tasks_queue", vec![Tasks::Queue.into_iden(), Tasks::Id.into_iden()]))
            .await?;
        // Idempotency: a key is unique per creator (NULL keys do not collide).
        manager
            .create_index(
                index(
                    Tasks::Table,
                    "uq_tasks_creator_idempotency_key",
                    vec![Tasks::CreatedBy.into_iden(), Tasks::IdempotencyKey.into_iden()],
                )
                .unique()
                .to_owned(),
            )
            .await?;

        create_table(
            manager,
            Table::create()
                .table(TaskEvents::Table)
                .col(ColumnDef::new(TaskEvents::Id).big_integer().not_null().auto_increment().primary_key())
                .col(ColumnDef::new(TaskEvents::TaskId).string_len(36).not_null())
                .col(ColumnDef::new(TaskEvents::Seq).integer().not_null())
                .col(ColumnDef::new(TaskEvents::Status).string_len(16).not_null())
                .col(ColumnDef::new(TaskEvents::PreviousStatus).string_len(16).null())
                .col(ColumnDef::new(TaskEvents::Attempt).integer().not_null())
                .col(ColumnDef::new(TaskEvents::WorkerId).string_len(SUBJECT_LEN).null())
                .col(ColumnDef::new(TaskEvents::Message).text().null())
                .col(ColumnDef::new(TaskEvents::At).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        // One event per (task, seq): a duplicate append fails instead of forking history.
        manager
            .create_index(
                index(
                    TaskEvents::Table,
                    "uq_task_events_task_seq",
                    vec![TaskEvents::TaskId.into_iden(), TaskEvents::Seq.into_iden()],
                )
                .unique()
                .to_owned(),
            )
            .await?;

        create_table(
            manager,
            Table::create()
                .table(Workers::Table)
                .col(ColumnDef::new(Workers::Id).string_len(SUBJECT_LEN).not_null().primary_key())
                .col(ColumnDef::new(Workers::Name).string_len(128).not_null())
                .col(ColumnDef::new(Workers::Queues).text().not_null())
                .col(ColumnDef::new(Workers::Capacity).integer().not_null())
                .col(ColumnDef::new(Workers::Active).integer().not_null())
                .col(ColumnDef::new(Workers::Status).string_len(16).not_null())
                .col(ColumnDef::new(Workers::LastSeenAt).big_integer().not_null())
                .col(ColumnDef::new(Workers::Version).integer().not_null())
                .col(ColumnDef::new(Workers::CreatedAt).big_integer().not_null())
                .col(ColumnDef::new(Workers::UpdatedAt).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        manager
            .create_index(index(
                Workers::Table,
                "idx_workers_status_seen",
                vec![Workers::Status.into_iden(), Workers::LastSeenAt.into_iden()],
            ))
            .await?;

        create_table(
            manager,
            Table::create()
                .table(Queues::Table)
                .col(ColumnDef::new(Queues::Name).string_len(64).not_null().primary_key())
                .col(ColumnDef::new(Queues::Paused).boolean().not_null())
                .col(ColumnDef::new(Queues::RateLimitPerSecond).double().null())
                .col(ColumnDef::new(Queues::MaxConcurrency).integer().null())
                .col(ColumnDef::new(Queues::MaxAttempts).integer().null())
                .col(ColumnDef::new(Queues::LeaseSeconds).integer().null())
                .col(ColumnDef::new(Queues::BackoffBaseMs).big_integer().null())
                .col(ColumnDef::new(Queues::BackoffMaxMs).big_integer().null())
                .col(ColumnDef::new(Queues::CreatedAt).big_integer().not_null())
                .col(ColumnDef::new(Queues::UpdatedAt).big_integer().not_null())
                .to_owned(),
        )
        .await?;

        create_table(
            manager,
            Table::create()
                .table(Outbox::Table)
                .col(ColumnDef::new(Outbox::Id).big_integer().not_null().auto_increment().primary_key())
                .col(ColumnDef::new(Outbox::Topic).string_len(255).not_null())
                .col(ColumnDef::new(Outbox::MessageKey).string_len(64).not_null())
                .col(ColumnDef::new(Outbox::Payload).text().not_null())
                .col(ColumnDef::new(Outbox::Traceparent).string_len(64).null())
                .col(ColumnDef::new(Outbox::CreatedAt).big_integer().not_null())
                .col(ColumnDef::new(Outbox::PublishedAt).big_integer().null())
                .to_owned(),
        )
        .await?;
        // The relay scans unpublished rows in id order.
        manager
            .create_index(index(
                Outbox::Table,
                "idx_outbox_unpublished",
                vec![Outbox::PublishedAt.into_iden(), Outbox::Id.into_iden()],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Outbox::Table.into_iden(),
            Queues::Table.into_iden(),
            Workers::Table.into_iden(),
            TaskEvents::Table.into_iden(),
            Tasks::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
