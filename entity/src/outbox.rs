//! `outbox`: messages written in the same transaction as the state change they announce,
//! published to Kafka by the relay afterwards (README, Task lifecycle). A row is
//! deleted once Kafka has acknowledged it: the table holds only unpublished messages.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub topic: String,
    /// Message key: the task id, so one task's messages stay in one partition, in order.
    pub message_key: String,
    /// JSON envelope.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// W3C `traceparent` of the request that caused the change, if any.
    pub traceparent: Option<String>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
