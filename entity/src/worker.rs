//! `workers`: registered workers; the id is the worker token's `sub`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    /// JSON array of queue names the worker serves.
    #[sea_orm(column_type = "Text")]
    pub queues: String,
    pub capacity: i32,
    /// Tasks currently offered to or running on the worker.
    pub active: i32,
    pub status: String,
    pub last_seen_at: i64,
    /// The dispatcher process holding the worker's `assignments` stream (it alone offers
    /// to the worker); NULL when no dispatcher holds it.
    pub connected_to: Option<String>,
    /// The worker takes its offers as they come: an offer starts the task (`RUNNING`).
    pub auto_accept: bool,
    pub version: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
