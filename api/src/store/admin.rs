//! Workers and queues: registration, liveness, drain, queue settings.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
};
use taskwire_domain::{
    MaxAttempts, QueueName, QueueSettings, RetryPolicy, WorkerRegistration, WorkerStatus, queue::DEFAULT_LEASE_SECONDS,
};
use taskwire_entity::{queue, task, worker};

use super::{Store, WorkerRecord, Writer, convert};
use crate::error::{ApiError, ApiResult};

impl Store {
    /// Registers (or re-registers) worker `id`. A worker an admin drained stays
    /// `DRAINING`; any other comes back `ONLINE`. Its active count is kept.
    pub async fn register_worker(&self, id: &str, registration: &WorkerRegistration) -> ApiResult<WorkerRecord> {
        let now = convert::to_ms(Utc::now());
        let queues = serde_json::to_string(&registration.queues.iter().map(QueueName::as_str).collect::<Vec<_>>())
            .map_err(|e| ApiError::internal("serialising queues", &e))?;
        let writing = self.write_lock(Writer::Worker).await;
        for _ in 0..3 {
            let existing = worker::Entity::find_by_id(id.to_owned()).one(writing.db()).await?;
            let result = match existing {
                Some(row) => {
                    let status = if row.status == WorkerStatus::Draining.as_str() {
                        WorkerStatus::Draining
                    } else {
                        WorkerStatus::Online
                    };
                    let mut active: worker::ActiveModel = row.clone().into();
                    active.name = Set(registration.name.clone());
                    active.queues = Set(queues.clone());
                    active.capacity = Set(registration.capacity as i32);
                    active.status = Set(status.as_str().to_owned());
                    active.last_seen_at = Set(now);
                    active.version = Set(row.version + 1);
                    active.updated_at = Set(now);
                    active.update(writing.db()).await
                }
                None => {
                    worker::ActiveModel {
                        id: Set(id.to_owned()),
                        name: Set(registration.name.clone()),
                        queues: Set(queues.clone()),
                        capacity: Set(registration.capacity as i32),
                        active: Set(0),
                        status: Set(WorkerStatus::Online.as_str().to_owned()),
                        last_seen_at: Set(now),
                        version: Set(1),
                        created_at: Set(now),
                        updated_at: Set(now),
                    }
                    .insert(writing.db())
                    .await
                }
            };
            match result {
                Ok(row) => {
                    self.dispatch_signal.notify_one();
                    return convert::worker_from_row(row);
                }
                // Registered concurrently by another request: update instead.
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict("the worker registration changed concurrently; retry".into()))
    }

    /// Records a heartbeat of worker `id` (an `OFFLINE` worker comes back `ONLINE`) and
    /// extends the leases of its running tasks by their queue's lease length.
    pub async fn heartbeat(&self, id: &str) -> ApiResult<WorkerRecord> {
        let now = Utc::now();
        let writing = self.write_lock(Writer::Worker).await;
        let row =
            worker::Entity::find_by_id(id.to_owned()).one(writing.db()).await?.ok_or(ApiError::NotFound("worker"))?;
        let came_back = row.status == WorkerStatus::Offline.as_str();
        let mut active: worker::ActiveModel = row.clone().into();
        if came_back {
            active.status = Set(WorkerStatus::Online.as_str().to_owned());
        }
        active.last_seen_at = Set(convert::to_ms(now));
        active.updated_at = Set(convert::to_ms(now));
        let row = active.update(writing.db()).await?;
        let record = convert::worker_from_row(row)?;
        if came_back {
            self.dispatch_signal.notify_one();
        }
        // READ COMMITTED on MySQL: the range update takes no gap locks, so it cannot
        // deadlock with transitions that move tasks in and out of this worker's range.
        let txn = writing.begin_read_committed().await?;
        let settings = super::dispatch::queue_settings_in(&txn, record.queues.iter().map(String::as_str)).await?;
        for (queue, settings) in settings {
            // Leases are extended in place: the lease token (not the row version) is what
            // fences a worker, and extending a lease changes no visible state. A lease
            // that already lapsed stays lapsed: the reaper counts it as a failed attempt.
            let until = now + chrono::Duration::seconds(i64::from(settings.lease_seconds));
            task::Entity::update_many()
                .col_expr(task::Column::LeaseExpiresAt, sea_orm::sea_query::Expr::value(convert::to_ms(until)))
                .filter(task::Column::WorkerId.eq(id))
                .filter(task::Column::Queue.eq(queue.as_str()))
                .filter(task::Column::Status.eq("RUNNING"))
                .filter(task::Column::LeaseExpiresAt.gt(convert::to_ms(now)))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(record)
    }

    /// Marks worker `id` draining: no new offers, running tasks finish.
    pub async fn drain_worker(&self, id: &str) -> ApiResult<WorkerRecord> {
        let writing = self.write_lock(Writer::Worker).await;
        let row =
            worker::Entity::find_by_id(id.to_owned()).one(writing.db()).await?.ok_or(ApiError::NotFound("worker"))?;
        let mut active: worker::ActiveModel = row.clone().into();
        active.status = Set(WorkerStatus::Draining.as_str().to_owned());
        active.version = Set(row.version + 1);
        active.updated_at = Set(convert::to_ms(Utc::now()));
        convert::worker_from_row(active.update(writing.db()).await?)
    }

    /// Workers, optionally only those serving `queue` and/or in `status`, by id.
    pub async fn workers(&self, queue: Option<&str>, status: Option<WorkerStatus>) -> ApiResult<Vec<WorkerRecord>> {
        let mut select = worker::Entity::find().order_by_asc(worker::Column::Id);
        if let Some(status) = status {
            select = select.filter(worker::Column::Status.eq(status.as_str()));
        }
        let rows = select.limit(10_000).all(&self.db).await?;
        let workers = rows.into_iter().map(convert::worker_from_row).collect::<ApiResult<Vec<_>>>()?;
        Ok(workers.into_iter().filter(|w| queue.is_none_or(|q| w.queues.iter().any(|wq| wq == q))).collect())
    }

    /// The settings of `name` (defaults when never configured).
    pub async fn queue_settings(&self, name: &str) -> ApiResult<QueueSettings> {
        self.queue_settings_unlocked(name).await
    }

    async fn queue_settings_unlocked(&self, name: &str) -> ApiResult<QueueSettings> {
        let parsed = QueueName::parse(name).map_err(ApiError::from)?;
        let row = queue::Entity::find_by_id(name.to_owned()).one(&self.db).await?;
        Ok(row.map(settings_from_row).transpose()?.unwrap_or_else(|| QueueSettings::defaults(parsed)))
    }

    /// Stores `settings` (insert or update).
    pub async fn save_queue(&self, settings: &QueueSettings) -> ApiResult<QueueSettings> {
        let now = convert::to_ms(Utc::now());
        let writing = self.write_lock(Writer::Admin).await;
        let exists = queue::Entity::find_by_id(settings.name.to_string()).one(writing.db()).await?.is_some();
        let row = queue::ActiveModel {
            name: Set(settings.name.to_string()),
            paused: Set(settings.paused),
            rate_limit_per_second: Set(settings.rate_limit_per_second),
            max_concurrency: Set(settings.max_concurrency.map(|m| m as i32)),
            max_attempts: Set(settings.max_attempts.map(|m| m.get() as i32)),
            lease_seconds: Set(Some(settings.lease_seconds as i32)),
            backoff_base_ms: Set(Some(settings.retry.base.as_millis() as i64)),
            backoff_max_ms: Set(Some(settings.retry.max.as_millis() as i64)),
            created_at: if exists { sea_orm::ActiveValue::NotSet } else { Set(now) },
            updated_at: Set(now),
        };
        let saved = if exists { row.update(writing.db()).await? } else { row.insert(writing.db()).await? };
        self.dispatch_signal.notify_one();
        settings_from_row(saved)
    }

    /// Names of every queue that is configured or has tasks.
    pub async fn queue_names(&self) -> ApiResult<Vec<String>> {
        let mut names: Vec<String> =
            queue::Entity::find().select_only().column(queue::Column::Name).into_tuple().all(&self.db).await?;
        let used: Vec<String> = task::Entity::find()
            .select_only()
            .column(task::Column::Queue)
            .distinct()
            .limit(10_000)
            .into_tuple()
            .all(&self.db)
            .await?;
        names.extend(used);
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Ids of up to `limit` `DEAD` tasks of `queue`, oldest first.
    pub async fn dead_task_ids(&self, queue: &str, limit: u64) -> ApiResult<Vec<String>> {
        Ok(task::Entity::find()
            .select_only()
            .column(task::Column::Id)
            .filter(task::Column::Queue.eq(queue))
            .filter(task::Column::Status.eq("DEAD"))
            .order_by_asc(task::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?)
    }
}

pub(super) fn settings_from_row(row: queue::Model) -> ApiResult<QueueSettings> {
    let name = QueueName::parse(&row.name).map_err(|_| ApiError::Internal)?;
    let defaults = RetryPolicy::default();
    let ms = |v: Option<i64>, default: std::time::Duration| {
        v.and_then(|v| u64::try_from(v).ok()).map(std::time::Duration::from_millis).unwrap_or(default)
    };
    Ok(QueueSettings {
        name,
        paused: row.paused,
        rate_limit_per_second: row.rate_limit_per_second,
        max_concurrency: row.max_concurrency.and_then(|m| u32::try_from(m).ok()),
        max_attempts: row.max_attempts.and_then(|m| MaxAttempts::try_from(i64::from(m)).ok()),
        lease_seconds: row.lease_seconds.and_then(|l| u32::try_from(l).ok()).unwrap_or(DEFAULT_LEASE_SECONDS),
        retry: RetryPolicy { base: ms(row.backoff_base_ms, defaults.base), max: ms(row.backoff_max_ms, defaults.max) },
    })
}
