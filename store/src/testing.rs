//! Test support, for this crate's tests and (with the `testing` feature) for the tests of
//! the crates above it: a migrated store on a SQLite file, and fresh MySQL/MariaDB
//! schemas that are dropped when the test ends. One implementation, so that every suite
//! creates and cleans up schemas the same way.
#![allow(clippy::expect_used)] // Test support: a failed set-up is a failed test.

use std::{path::Path, time::Duration};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend};
use sea_orm_migration::MigratorTrait;

use crate::{DatabaseSettings, Store, Topics};

/// The variable naming the MySQL/MariaDB server the suites may use.
pub const DATABASE_URL_VAR: &str = "TASKWIRE_TEST_DATABASE_URL";

/// A migrated SQLite store in `dir`.
pub async fn test_store(dir: &Path) -> Store {
    migrated(settings(sqlite_url(dir))).await
}

/// Another handle on the store [`test_store`] made in `dir`, sharing nothing with it
/// but the database: what a second process is to the first.
pub async fn another_process(dir: &Path) -> Store {
    Store::connect(&settings(sqlite_url(dir)), Topics::new("taskwire")).await.expect("another handle")
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}/t.db?mode=rwc", dir.display())
}

/// A migrated store on a fresh schema of the server named by `TASKWIRE_TEST_DATABASE_URL`
/// (any database in the URL is ignored), dropped with the value; `None`, after the
/// standard skip notice naming `test`, when the variable is unset.
pub async fn mysql_test_store(test: &str) -> Option<MysqlTestStore> {
    let server = mysql_server(test)?;
    let schema = MysqlTestSchema::create(&server, "taskwire_unit").await;
    let store = migrated(settings(schema.url())).await;
    Some(MysqlTestStore { store, schema })
}

/// The MySQL server of `TASKWIRE_TEST_DATABASE_URL`, or `None` after the standard skip
/// notice naming `test`.
pub fn mysql_server(test: &str) -> Option<String> {
    let value = std::env::var(DATABASE_URL_VAR).ok().filter(|v| !v.is_empty());
    if value.is_none() {
        // Straight to the stderr handle: the test harness captures `eprintln!` of passing
        // tests, and a skip must be visible.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {DATABASE_URL_VAR} is not set (CI sets it; see README, Testing)"
        );
    }
    value
}

/// Small pools: a test holds a few connections at most.
fn settings(url: String) -> DatabaseSettings {
    DatabaseSettings { url, max_connections: 4, acquire_timeout: Duration::from_secs(2), statement_cache: 512 }
}

async fn migrated(settings: DatabaseSettings) -> Store {
    let store = Store::connect(&settings, Topics::new("taskwire")).await.expect("store");
    taskwire_migration::Migrator::up(store.connection(), None).await.expect("migrations");
    store
}

/// A schema made for one test on a shared MySQL/MariaDB server, dropped (after killing
/// the connections still using it) when this value is dropped, so that test runs leave
/// nothing behind.
#[derive(Debug)]
pub struct MysqlTestSchema {
    /// `mysql://user@host:port`.
    server: String,
    name: String,
}

impl MysqlTestSchema {
    /// Creates `<prefix>_<random>` on the server of `url` (any database path in it is
    /// ignored).
    pub async fn create(url: &str, prefix: &str) -> MysqlTestSchema {
        let server = server_url(url);
        let name = format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let admin = Database::connect(&server).await.expect("the MySQL server of TASKWIRE_TEST_DATABASE_URL answers");
        admin
            .execute_unprepared(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
            .await
            .expect("test schema created");
        let _ = admin.close().await;
        MysqlTestSchema { server, name }
    }

    /// `mysql://user@host:port`, without a database.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the schema.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for MysqlTestSchema {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // `drop` cannot await, and the test's runtime may be blocked in it: a thread with
        // a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let admin = Database::connect(&server).await.ok()?;
                let dropped = drop_schema(&admin, &name).await;
                let _ = admin.close().await;
                dropped
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "warning: test schema {} not dropped", self.name);
        }
    }
}

/// Kills the connections still using `schema` (a transaction a stopped test left open
/// would hold its metadata locks forever), then drops it.
async fn drop_schema(admin: &DatabaseConnection, schema: &str) -> Option<()> {
    let _ = admin.execute_unprepared("SET SESSION lock_wait_timeout = 10").await;
    let sql = format!("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{schema}'");
    for row in admin.query_all_raw(sea_orm::Statement::from_string(DbBackend::MySql, sql)).await.ok()? {
        if let Ok(id) = row.try_get_by_index::<i64>(0) {
            let _ = admin.execute_unprepared(&format!("KILL CONNECTION {id}")).await;
        }
    }
    admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS `{schema}`")).await.ok().map(|_| ())
}

/// The server part of a MySQL URL (any database path and query removed).
pub fn server_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("mysql", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// A [`Store`] on a MySQL schema made for one test ([`mysql_test_store`]). One value, not
/// a store and a guard, so that a test cannot drop the schema early by not binding the
/// guard.
#[derive(Debug)]
pub struct MysqlTestStore {
    // Declared first so that it is dropped first: its pool closes before the schema goes.
    store: Store,
    schema: MysqlTestSchema,
}

impl std::ops::Deref for MysqlTestStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl MysqlTestStore {
    /// The schema the store works on.
    pub fn schema(&self) -> &MysqlTestSchema {
        &self.schema
    }
}
