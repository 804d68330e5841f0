//! The outbox store operations the relay relies on, against a real (SQLite) database.

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use sea_orm::ConnectionTrait;
use sea_orm_migration::MigratorTrait;
use taskwire_api::{config::Config, store::Store};

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/o.db?mode=rwc", dir.path().display());
    let env: BTreeMap<String, String> = [("TASKWIRE_DATABASE_URL".to_owned(), url)].into();
    let config = Config::load_from(None, &env).expect("config");
    let store = Store::connect(&config).await.expect("connects");
    taskwire_migration::Migrator::up(store.connection(), None).await.expect("migrates");
    (store, dir)
}

async fn insert(store: &Store, id: i64, published_at: Option<i64>) {
    let published = published_at.map(|p| p.to_string()).unwrap_or_else(|| "NULL".into());
    let sql = format!(
        "INSERT INTO outbox (id, topic, message_key, payload, created_at, published_at) VALUES ({id}, 't', 'k', '{{}}', 0, {published})"
    );
    store.connection().execute_unprepared(&sql).await.expect("insert");
}

#[tokio::test]
async fn only_acknowledged_messages_are_marked_published_and_the_rest_are_retried() {
    let (store, _dir) = store().await;
    for id in 1..=4 {
        insert(&store, id, None).await;
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
}

#[tokio::test]
async fn pruning_deletes_only_old_published_messages_in_bounded_batches() {
    let (store, _dir) = store().await;
    let old = (Utc::now() - Duration::hours(2)).timestamp_millis();
    let recent = Utc::now().timestamp_millis();
    for id in 1..=3 {
        insert(&store, id, Some(old)).await;
    }
    insert(&store, 4, Some(recent)).await;
    insert(&store, 5, None).await;

    let before = Utc::now() - Duration::hours(1);
    assert_eq!(store.prune_outbox(before, 2).await.expect("prune"), 2, "bounded by the limit");
    assert_eq!(store.prune_outbox(before, 2).await.expect("prune"), 1);
    assert_eq!(store.prune_outbox(before, 2).await.expect("prune"), 0);
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 1, "unpublished rows are never pruned");
    let left = store
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(store.backend(), "SELECT id FROM outbox"))
        .await
        .expect("rows");
    assert_eq!(left.len(), 2, "the recent published row and the unpublished one remain");
}
