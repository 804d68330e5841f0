//! `tasks`: one row per task, updated in place under an optimistic lock (`version`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "tasks")]
pub struct Model {
    /// UUIDv7 in canonical text form.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// JSON text, `NULL` when the task has no payload.
    #[sea_orm(column_type = "Text", nullable)]
    pub payload: Option<String>,
    pub priority: i16,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: i64,
    pub deadline: Option<i64>,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    /// Fingerprint of the creating input, to tell retries from key reuse.
    pub input_hash: String,
    pub worker_id: Option<String>,
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<i64>,
    #[sea_orm(column_type = "Text", nullable)]
    pub result: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub version: i32,
    pub last_seq: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
