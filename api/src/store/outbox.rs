//! The transactional outbox: reading unpublished messages for the relay and marking
//! them published. Rows are written by the task transactions themselves (see `tasks`).

use std::future::Future;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DbBackend, EntityTrait, IsolationLevel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, LockBehavior, LockType},
};
use taskwire_entity::outbox;

use super::{Store, Writer, convert, shape};
use crate::error::ApiResult;

/// A message waiting to be published.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    /// Row id; publishing order within a relay batch.
    pub id: i64,
    /// Kafka topic.
    pub topic: String,
    /// Kafka key (the task id).
    pub key: String,
    /// JSON envelope.
    pub payload: String,
    /// W3C trace context of the originating request, if any.
    pub traceparent: Option<String>,
    /// When the state change committed.
    pub created_at: DateTime<Utc>,
}

impl From<outbox::Model> for OutboxMessage {
    fn from(row: outbox::Model) -> Self {
        OutboxMessage {
            id: row.id,
            topic: row.topic,
            key: row.message_key,
            payload: row.payload,
            traceparent: row.traceparent,
            created_at: convert::from_ms(row.created_at),
        }
    }
}

impl Store {
    /// Publishes up to `limit` unpublished messages, oldest first, with `publish`, which
    /// returns the ids Kafka acknowledged; those are marked published. Returns how many
    /// messages were handed to `publish`.
    ///
    /// On MySQL/MariaDB the rows are claimed with `FOR UPDATE SKIP LOCKED` for the
    /// duration, so several relays (processes) share the backlog without publishing a
    /// row twice. On SQLite (one process) they are read plainly and the update takes the
    /// write gate only briefly, so a slow Kafka never blocks task writes.
    pub async fn publish_outbox<F, Fut>(&self, limit: u64, publish: F) -> ApiResult<usize>
    where
        F: FnOnce(Vec<OutboxMessage>) -> Fut,
        Fut: Future<Output = Vec<i64>>,
    {
        let pending = outbox::Entity::find()
            .filter(outbox::Column::PublishedAt.is_null())
            .order_by_asc(outbox::Column::Id)
            .limit(limit);
        if self.backend() == DbBackend::MySql {
            // READ COMMITTED: the locking read takes record locks only, no gap locks, so
            // task transactions keep inserting new outbox rows while this batch is out.
            let txn = self.db.begin_with_config(Some(IsolationLevel::ReadCommitted), None).await?;
            let rows = pending.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked).all(&txn).await?;
            let count = rows.len();
            if count > 0 {
                let delivered = publish(rows.into_iter().map(Into::into).collect()).await;
                mark_published(&txn, &delivered).await?;
            }
            txn.commit().await?;
            Ok(count)
        } else {
            let rows = pending.all(&self.db).await?;
            let count = rows.len();
            if count > 0 {
                let delivered = publish(rows.into_iter().map(Into::into).collect()).await;
                let writing = self.write_lock(Writer::Relay).await;
                mark_published(writing.db(), &delivered).await?;
            }
            Ok(count)
        }
    }

    /// Messages not yet published.
    pub async fn outbox_backlog(&self) -> ApiResult<u64> {
        Ok(outbox::Entity::find().filter(outbox::Column::PublishedAt.is_null()).count(&self.db).await?)
    }

    /// Deletes up to `limit` messages published before `before`; returns how many.
    pub async fn prune_outbox(&self, before: DateTime<Utc>, limit: u64) -> ApiResult<u64> {
        let ids: Vec<i64> = outbox::Entity::find()
            .select_only()
            .column(outbox::Column::Id)
            .filter(outbox::Column::PublishedAt.lt(convert::to_ms(before)))
            .order_by_asc(outbox::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let writing = self.write_lock(Writer::Relay).await;
        let deleted = outbox::Entity::delete_many()
            .filter(outbox::Column::Id.is_in(shape::padded(ids)))
            .exec(writing.db())
            .await?;
        Ok(deleted.rows_affected)
    }
}

async fn mark_published<C: sea_orm::ConnectionTrait>(db: &C, ids: &[i64]) -> Result<(), sea_orm::DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    outbox::Entity::update_many()
        .col_expr(outbox::Column::PublishedAt, Expr::value(convert::to_ms(Utc::now())))
        .filter(outbox::Column::Id.is_in(shape::padded(ids.iter().copied())))
        .exec(db)
        .await?;
    Ok(())
}
