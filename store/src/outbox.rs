//! The transactional outbox: reading unpublished messages for the relay and deleting
//! them once published. Rows are written by the task transactions themselves (see
//! `tasks`).

use std::future::Future;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
    TransactionTrait, Value,
    sea_query::{LockBehavior, LockType},
};
use taskwire_entity::outbox;

use super::{Store, Writer, convert, shape};
use crate::error::StoreResult;

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

/// Up to this many unpublished messages are counted exactly; above, the backlog is
/// estimated from the span of their ids (see [`Store::outbox_backlog`]).
pub const BACKLOG_EXACT_UP_TO: u64 = 10_000;

impl Store {
    /// Publishes up to `limit` unpublished messages, oldest first, with `publish`, which
    /// returns the ids Kafka acknowledged; those rows are deleted (the outbox holds only
    /// what is still to be published; Kafka keeps the published copy). Returns how many
    /// messages were handed to `publish`.
    ///
    /// On MySQL/MariaDB the rows are claimed in primary-key order with
    /// `FOR UPDATE SKIP LOCKED` for the duration, so several relays (processes) share the
    /// backlog without publishing a row twice. On SQLite (one process) they are read
    /// plainly and the delete takes the write gate only briefly, so a slow Kafka never
    /// blocks task writes.
    pub async fn publish_outbox<F, Fut>(&self, limit: u64, publish: F) -> StoreResult<usize>
    where
        F: FnOnce(Vec<OutboxMessage>) -> Fut,
        Fut: Future<Output = Vec<i64>>,
    {
        let pending = outbox::Entity::find().order_by_asc(outbox::Column::Id).limit(limit);
        if self.backend() == DbBackend::MySql {
            // READ COMMITTED (every connection's session default, see `gate`): the locking
            // read takes record locks only, no gap locks, so task transactions keep
            // inserting new outbox rows while this batch is out.
            self.count_write(Writer::Relay);
            let txn = self.db.begin().await?;
            let rows = pending.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked).all(&txn).await?;
            let count = rows.len();
            if count > 0 {
                let delivered = publish(rows.into_iter().map(Into::into).collect()).await;
                delete_published(&txn, &delivered).await?;
            }
            txn.commit().await?;
            Ok(count)
        } else {
            let rows = pending.all(&self.db).await?;
            let count = rows.len();
            if count > 0 {
                let delivered = publish(rows.into_iter().map(Into::into).collect()).await;
                let writing = self.write_lock(Writer::Relay).await;
                delete_published(writing.db(), &delivered).await?;
            }
            Ok(count)
        }
    }

    /// Messages not yet published: counted exactly up to [`BACKLOG_EXACT_UP_TO`]; above,
    /// the span of their ids (`MAX(id) - MIN(id) + 1`, an upper bound: ids of rolled-back
    /// transactions leave gaps). Counting a large backlog row by row every second would
    /// cost the database as much as publishing it.
    pub async fn outbox_backlog(&self) -> StoreResult<u64> {
        // A capped subquery: `COUNT(*)` over the whole table would read every row.
        let capped = Statement::from_sql_and_values(
            self.backend(),
            "SELECT COUNT(*) AS n FROM (SELECT id FROM outbox LIMIT ?) AS capped",
            [Value::from(BACKLOG_EXACT_UP_TO as i64 + 1)],
        );
        let counted = match self.db.query_one_raw(capped).await? {
            Some(row) => u64::try_from(row.try_get::<i64>("", "n")?).unwrap_or(0),
            None => 0,
        };
        if counted <= BACKLOG_EXACT_UP_TO {
            return Ok(counted);
        }
        let span: Option<(Option<i64>, Option<i64>)> = outbox::Entity::find()
            .select_only()
            .column_as(outbox::Column::Id.min(), "first")
            .column_as(outbox::Column::Id.max(), "last")
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(match span {
            Some((Some(first), Some(last))) => u64::try_from(last - first + 1).unwrap_or(counted).max(counted),
            _ => counted,
        })
    }
}

/// Deletes the rows of the messages Kafka acknowledged.
async fn delete_published<C: sea_orm::ConnectionTrait>(db: &C, ids: &[i64]) -> Result<(), sea_orm::DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids = shape::padded(ids.iter().copied());
    if db.get_database_backend() == DbBackend::MySql {
        // The outbox is small (rows go as they are published), so for a long id list the
        // optimizer prefers scanning the whole table, and a DELETE's scan waits for every
        // row it passes: the rows another relay holds. Two relays then deadlocked on each
        // other's batches. Forcing the primary key makes it look up exactly its own rows.
        let marks = vec!["?"; ids.len()].join(", ");
        let sql = format!("DELETE outbox FROM outbox FORCE INDEX (PRIMARY) WHERE outbox.id IN ({marks})");
        let values = ids.into_iter().map(sea_orm::Value::from);
        db.execute_raw(Statement::from_sql_and_values(DbBackend::MySql, sql, values)).await?;
        return Ok(());
    }
    outbox::Entity::delete_many().filter(outbox::Column::Id.is_in(ids)).exec(db).await?;
    Ok(())
}
