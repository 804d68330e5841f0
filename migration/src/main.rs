//! Stand-alone migration CLI (`DATABASE_URL=… cargo run -p taskwire-migration -- up`).
//! `taskwire migrate` does the same with Taskwire's own configuration.

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli(taskwire_migration::Migrator).await;
}
