//! The outbox store operations the relay relies on, against a real (SQLite) database.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use sea_orm_migration::MigratorTrait;
use taskwire_store::{BACKLOG_EXACT_UP_TO, DatabaseSettings, Store, Topics};

/// A store on a fresh SQLite file, not migrated.
async fn unmigrated() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/o.db?mode=rwc", dir.path().display());
    let settings =
        DatabaseSettings { url, max_connections: 4, acquire_timeout: Duration::from_secs(2), statement_cache: 64 };
    (Store::connect(&settings, Topics::new("taskwire")).await.expect("connects"), dir)
}

async fn store() -> (Store, tempfile::TempDir) {
    let (store, dir) = unmigrated().await;
    taskwire_migration::Migrator::up(store.connection(), None).await.expect("migrates");
    (store, dir)
}

async fn insert(store: &Store, id: i64) {
    let sql =
        format!("INSERT INTO outbox (id, topic, message_key, payload, created_at) VALUES ({id}, 't', 'k', '{{}}', 0)");
    store.connection().execute_unprepared(&sql).await.expect("insert");
}

async fn ids_left(store: &Store) -> Vec<i64> {
    let rows = store
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(store.backend(), "SELECT id FROM outbox ORDER BY id"))
        .await
        .expect("rows");
    rows.iter().map(|r| r.try_get::<i64>("", "id").expect("id")).collect()
}

#[tokio::test]
async fn only_acknowledged_messages_are_deleted_and_the_rest_are_retried() {
    let (store, _dir) = store().await;
    for id in 1..=4 {
        insert(&store, id).await;
    }
    let mut handed = vec![];
    let claimed = store
        .publish_outbox(10, |messages| {
            handed = messages.iter().map(|m| m.id).collect();
            async { vec![1, 3] }
        })
        .await
        .expect("round");
    assert_eq!(claimed, 4);
    assert_eq!(handed, [1, 2, 3, 4], "oldest first");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 2);
    assert_eq!(ids_left(&store).await, [2, 4], "acknowledged rows are deleted, the others stay");

    let mut retried = vec![];
    store
        .publish_outbox(10, |messages| {
            retried = messages.iter().map(|m| m.id).collect();
            async { vec![2, 4] }
        })
        .await
        .expect("round");
    assert_eq!(retried, [2, 4], "unacknowledged messages come back");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 0);
    assert!(ids_left(&store).await.is_empty());
}

#[tokio::test]
async fn the_backlog_is_exact_up_to_its_cap_and_the_id_span_above_it() {
    let (store, _dir) = store().await;
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 0);
    let cap = BACKLOG_EXACT_UP_TO as i64;
    // Ids 1..=cap, then a gap of 10 (ids of rolled-back transactions), then 5 more.
    let fill = |from: i64, to: i64| {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to}) \
             INSERT INTO outbox (id, topic, message_key, payload, created_at) SELECT i, 't', 'k', '{{}}', 0 FROM n"
        )
    };
    store.connection().execute_unprepared(&fill(1, cap)).await.expect("fill");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), BACKLOG_EXACT_UP_TO, "counted exactly at the cap");
    store.connection().execute_unprepared(&fill(cap + 11, cap + 15)).await.expect("fill");
    assert_eq!(
        store.outbox_backlog().await.expect("backlog"),
        BACKLOG_EXACT_UP_TO + 15,
        "above the cap: the span of the ids, gaps included (an upper bound)"
    );
}

/// The migration that made the outbox delete-on-publish keeps every unpublished message
/// and drops the ones published before it.
#[tokio::test]
async fn migrating_to_delete_on_publish_keeps_exactly_the_unpublished_messages() {
    let (store, _dir) = unmigrated().await;
    let db = store.connection();
    let migrations = taskwire_migration::Migrator::migrations();
    let before = migrations
        .iter()
        .position(|m| m.name() == "m20261206_000005_outbox_delete_on_publish")
        .expect("the migration is listed") as u32;
    let after = migrations.len() as u32 - before;
    taskwire_migration::Migrator::up(db, Some(before)).await.expect("migrates to the one before");
    for (id, published) in [(1, "5"), (2, "NULL"), (3, "7"), (4, "NULL")] {
        let sql = format!(
            "INSERT INTO outbox (id, topic, message_key, payload, created_at, published_at) VALUES ({id}, 't', 'k', '{{}}', 0, {published})"
        );
        db.execute_unprepared(&sql).await.expect("insert");
    }
    taskwire_migration::Migrator::up(db, None).await.expect("migrates");
    assert_eq!(ids_left(&store).await, [2, 4], "the unpublished rows, and only they");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 2);

    taskwire_migration::Migrator::down(db, Some(after)).await.expect("migrates down past it");
    let unpublished = db
        .query_all_raw(sea_orm::Statement::from_string(
            store.backend(),
            "SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id",
        ))
        .await
        .expect("rows");
    assert_eq!(unpublished.len(), 2, "down: the column is back and every row unpublished");
}
