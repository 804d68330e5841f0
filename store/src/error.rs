//! The store's error type: what a repository call can fail with, already classified so
//! that the layer above can map it to its own codes in one place without looking at
//! database errors itself.
//!
//! Infrastructure errors are logged here, with their whole cause chain, at the moment
//! they become a `StoreError`; the caller only learns the class.

use std::ops::Deref;

use sea_orm::{DbErr, RuntimeErr, SqlErr, sqlx};
use taskwire_domain::{DomainError, ErrorCode, error::chain};

/// Result alias for the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// A failed repository call.
///
/// Deliberately not `Display`/`std::error::Error`: the GraphQL layer converts *any*
/// `Display` type into an error by its message alone, which would let a `?` on a store
/// call silently drop the stable error code. The API maps this type explicitly instead.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The row is missing (or invisible to the caller: the two are not told apart).
    NotFound(&'static str),
    /// A broken domain rule (invalid input, a lost lease, an idempotency conflict).
    Domain(DomainError),
    /// The write does not fit the row's current state, or lost a race too many times.
    Conflict(String),
    /// MySQL broke a deadlock by rolling this transaction back, or a row lock was not
    /// granted in time, on every one of the store's retries (see `contention`). The
    /// database is up: the work met concurrent work.
    LockConflict,
    /// The database is down, saturated or busy; retrying later can succeed.
    Unavailable,
    /// A bug or an unexpected database answer (details in the log).
    Internal,
}

impl StoreError {
    /// The stable code the API reports this failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::Domain(e) => e.code(),
            StoreError::Conflict(_) | StoreError::LockConflict => ErrorCode::Conflict,
            StoreError::Unavailable => ErrorCode::Unavailable,
            StoreError::Internal => ErrorCode::Internal,
        }
    }

    /// Logs an unexpected error with its cause chain and returns [`StoreError::Internal`].
    pub fn internal(context: &str, err: &(dyn std::error::Error + 'static)) -> StoreError {
        tracing::error!(error = %chain(err), "{context}");
        StoreError::Internal
    }
}

impl From<DomainError> for StoreError {
    fn from(err: DomainError) -> Self {
        StoreError::Domain(err)
    }
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        if is_lock_conflict(&err) {
            // Contention, not an outage: the store's retries handle it where it is expected.
            tracing::debug!(error = %chain(&err), "lock conflict");
            StoreError::LockConflict
        } else if is_unavailable(&err) {
            tracing::warn!(error = %chain(&err), "database unavailable");
            StoreError::Unavailable
        } else {
            StoreError::internal("database error", &err)
        }
    }
}

/// Whether the database error means "try again later" rather than a bug: the pool is
/// exhausted or closed, the connection broke, or SQLite's file lock was busy. (A MySQL
/// lock conflict is contention, not unavailability: see [`is_lock_conflict`].)
pub(crate) fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match e.deref() {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => {
                    if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some() {
                        return false;
                    }
                    // SQLite BUSY (5, and its extended 261/517) and LOCKED (6).
                    matches!(db.code().as_deref(), Some("5" | "6" | "261" | "517"))
                        && !matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether the database error is MySQL's "deadlock found" (1213: the transaction was
/// rolled back) or "lock wait timeout" (1205), which a writer may retry from the start.
pub(crate) fn is_lock_conflict(err: &DbErr) -> bool {
    database_error(err)
        .and_then(|db| db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|mysql| matches!(mysql.number(), 1205 | 1213))
}

/// The error the database itself answered with, if that is what `err` is.
fn database_error(err: &DbErr) -> Option<&(dyn sqlx::error::DatabaseError + 'static)> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.deref() {
            sqlx::Error::Database(db) => Some(db.as_ref()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_are_unavailable_and_other_errors_internal() {
        let err = DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        assert!(matches!(StoreError::from(err), StoreError::Unavailable));
        assert!(matches!(StoreError::from(DbErr::Custom("bug".into())), StoreError::Internal));
    }
}
