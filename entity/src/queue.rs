//! `queues`: per-queue settings. A queue without a row uses the defaults.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "queues")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub paused: bool,
    pub rate_limit_per_second: Option<f64>,
    pub max_concurrency: Option<i32>,
    pub max_attempts: Option<i32>,
    pub lease_seconds: Option<i32>,
    pub backoff_base_ms: Option<i64>,
    pub backoff_max_ms: Option<i64>,
    /// Tokens left in the rate-limit bucket shared by every dispatcher, as of
    /// `rate_refilled_at` (epoch ms); NULL until the first offer of a rate-limited queue.
    pub rate_tokens: Option<f64>,
    pub rate_refilled_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
