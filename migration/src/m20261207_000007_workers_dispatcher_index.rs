//! Index for a dispatcher's own workers: `(status, connected_to)`.
//!
//! Every matcher round reads the `ONLINE` workers whose `assignments` stream its process
//! holds (`connected_to` = its dispatcher id) and those no dispatcher holds (`NULL`).
//! Before this index that read went through every `ONLINE` worker (or the whole table in
//! id order), so with N processes each round examined N times the rows it returned, and
//! the cost of a round grew with the size of the whole fleet, not with this process's
//! share of it. With it, a round reads its own workers and the unclaimed ones
//! (`ref_or_null`). The store names this index in the query (`FORCE INDEX` on MySQL):
//! without histograms MariaDB's optimizer prefers the primary key for the query's
//! `ORDER BY id` and scans every worker.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Workers {
    Table,
    Status,
    ConnectedTo,
}

/// The index's name (the store names it in its query).
pub const INDEX: &str = "idx_workers_status_connected";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::create_index(manager, INDEX, Workers::Table, &[Workers::Status, Workers::ConnectedTo]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::drop_index(manager, INDEX, Workers::Table).await
    }
}
