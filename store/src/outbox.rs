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
    if db.get_database_backend() == DbBackend::MySql {
        // `WHERE id IN (…)` is planned from the table's statistics. The outbox is a queue,
        // often empty when they were taken, and with too few rows on record the optimizer
        // scans the whole table whatever the index hint. A DELETE's scan waits for every
        // row it passes, so two relays each waited for the other's claimed rows: deadlock.
        // Driving the delete from the id list (`STRAIGHT_JOIN` keeps that order, the hint
        // the access) makes it look up each of its own rows by primary key, whatever the
        // statistics say.
        let list = serde_json::to_string(ids).map_err(|e| sea_orm::DbErr::Json(e.to_string()))?;
        db.execute_raw(Statement::from_sql_and_values(DbBackend::MySql, DELETE_BY_ID_LIST, [Value::from(list)]))
            .await?;
        return Ok(());
    }
    let ids = shape::padded(ids.iter().copied());
    outbox::Entity::delete_many().filter(outbox::Column::Id.is_in(ids)).exec(db).await?;
    Ok(())
}

/// MySQL/MariaDB: deletes the outbox rows whose ids the one parameter lists (a JSON array).
const DELETE_BY_ID_LIST: &str = "DELETE outbox FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS ids \
     STRAIGHT_JOIN outbox FORCE INDEX (PRIMARY) ON outbox.id = ids.id";

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use sea_orm::{ConnectionTrait, Database, QueryOrder, TransactionTrait};
    use taskwire_domain::{CreateTaskInput, NewTask};

    use super::*;
    use crate::CreateMode;

    /// Ids claimed the way the relay claims them: the oldest `n` rows nobody holds.
    async fn claim<C: ConnectionTrait>(conn: &C, n: u64) -> Vec<i64> {
        let rows = outbox::Entity::find()
            .order_by_asc(outbox::Column::Id)
            .limit(n)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .all(conn)
            .await
            .expect("claimed");
        rows.into_iter().map(|r| r.id).collect()
    }

    /// Two relays hold a batch each; one deletes what it published while the other still
    /// holds its rows. In a fresh schema the outbox's statistics say it is empty, which
    /// made MariaDB scan the whole table for `id IN (…)` despite an index hint: the
    /// delete then waited for the other relay's rows (and, with both deleting, deadlocked).
    #[tokio::test]
    async fn on_mysql_a_relay_deletes_its_rows_without_waiting_for_rows_another_relay_holds() {
        let Some(store) = crate::testing::mysql_test_store(
            "on_mysql_a_relay_deletes_its_rows_without_waiting_for_rows_another_relay_holds",
        )
        .await
        else {
            return;
        };
        let inputs = (0..3)
            .map(|_| {
                let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
                NewTask::parse(input, "alice", Utc::now()).expect("valid input")
            })
            .collect();
        store.create_tasks(inputs, CreateMode::AllOrNothing, None).await.expect("created");

        // Two relays' connections, set up as the store's are (READ COMMITTED), and one
        // connection each, so the second round below reuses the prepared delete.
        let relay = || async {
            let options = sea_orm::ConnectOptions::new(store.schema().url()).max_connections(1).to_owned();
            let db = Database::connect(options).await.expect("a relay's connection");
            db.execute_unprepared("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await.expect("isolation");
            // A wait for the other relay's rows fails within a second instead of 50.
            db.execute_unprepared("SET SESSION innodb_lock_wait_timeout = 1").await.expect("timeout");
            db
        };
        let (first, second) = (relay().await, relay().await);
        for round in 0..2 {
            let holder = first.begin().await.expect("begin");
            let held = claim(&holder, 1).await;
            let deleter = second.begin().await.expect("begin");
            let own = claim(&deleter, 2).await;
            assert_eq!((held.len(), own.len()), (1, 2), "round {round}: rows split: {held:?} {own:?}");

            let deleted = delete_published(&deleter, &own).await;
            assert!(deleted.is_ok(), "round {round}: the delete looked up its own rows only: {deleted:?}");
            deleter.commit().await.expect("commit");
            holder.rollback().await.expect("rollback");
            let left = outbox::Entity::find().order_by_asc(outbox::Column::Id).all(store.connection()).await;
            let left: Vec<i64> = left.expect("read").into_iter().map(|r| r.id).collect();
            assert_eq!(left.first(), held.first(), "round {round}: the holding relay's row stayed");
            assert!(own.iter().all(|id| !left.contains(id)), "round {round}: the deleting relay's rows went");
        }
    }
}
