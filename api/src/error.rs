//! The API error type: every failure a resolver or handler can return, each mapped to a
//! stable code listed in README, Authentication and roles (Errors).
//!
//! Infrastructure errors are logged here, with their whole cause chain, at the moment
//! they become an `ApiError`; the client only ever sees `INTERNAL` or `UNAVAILABLE` and
//! the request id (added to every error by the HTTP layer) to quote to an operator.

use std::ops::Deref;

use async_graphql::ErrorExtensions;
use sea_orm::{DbErr, RuntimeErr, SqlErr, sqlx};
use taskwire_domain::{DomainError, ErrorCode};

/// Result alias for the API layer.
pub type ApiResult<T> = Result<T, ApiError>;

/// A failure, as the API reports it.
///
/// Deliberately not `Display`/`std::error::Error`: async-graphql converts *any* `Display`
/// type into a GraphQL error by its message alone, which would let a `?` silently drop
/// `extensions.code`. Without `Display`, the only conversion is ours, which sets it.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// `UNAUTHENTICATED`: no token was presented where one is needed.
    Unauthenticated,
    /// `UNAUTHENTICATED`: the token was rejected (the reason is logged, not returned).
    InvalidToken,
    /// `FORBIDDEN`: the caller's roles do not allow this.
    Forbidden,
    /// `NOT_FOUND`: missing or invisible to the caller (indistinguishable on purpose).
    NotFound(&'static str),
    /// A broken domain rule; its code comes from [`DomainError::code`].
    Domain(DomainError),
    /// `CONFLICT`: the write lost a race too many times or does not fit the state.
    Conflict(String),
    /// `BATCH_TOO_LARGE`: too many operations in one HTTP request.
    BatchTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// `PAYLOAD_TOO_LARGE`: the request body exceeds the limit.
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// `QUERY_TOO_DEEP`: the operation nests deeper than allowed.
    QueryTooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// `QUERY_TOO_COMPLEX`: the operation's computed cost (lists cost `first × child`)
    /// or its directive count exceeds the limit.
    QueryTooComplex {
        /// What was measured, e.g. "cost 12000" or "60 directives".
        measured: String,
        /// The configured limit.
        limit: usize,
    },
    /// `TOO_MANY_ALIASES`: the operation uses more aliases than allowed.
    TooManyAliases {
        /// The configured limit.
        limit: usize,
    },
    /// `RATE_LIMITED`: the caller used up its budget; `extensions.retryAfterMs` says
    /// when the next operation will be allowed.
    RateLimited {
        /// Milliseconds until a retry can succeed (at least 1).
        retry_after_ms: u64,
    },
    /// `PERSISTED_QUERY_NOT_FOUND`: an APQ hash the server does not know; the client
    /// sends the full query with the hash next.
    PersistedQueryNotFound,
    /// `CONFLICT`: MySQL broke a deadlock by rolling this transaction back, or a row lock
    /// was not granted in time, on every one of the store's retries (see
    /// `Store::retry_lock_conflicts`). The database is up: the work met concurrent work.
    LockConflict,
    /// `UNAVAILABLE`: a dependency is down or saturated; retrying later can succeed.
    Unavailable,
    /// `INTERNAL`: a bug or an unexpected dependency answer (details in the log).
    Internal,
}

impl ApiError {
    /// The message shown to the client (never internal details).
    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthenticated => "authentication required".into(),
            ApiError::InvalidToken => "invalid or expired token".into(),
            ApiError::Forbidden => "not allowed for the caller's roles".into(),
            ApiError::NotFound(what) => format!("{what} not found"),
            ApiError::Domain(e) => e.to_string(),
            ApiError::Conflict(message) => message.clone(),
            ApiError::BatchTooLarge { limit } => {
                format!("a batch may hold at most {limit} operations")
            }
            ApiError::PayloadTooLarge { limit } => format!("request body exceeds {limit} bytes"),
            ApiError::QueryTooDeep { limit } => format!("the query nests deeper than {limit} levels"),
            ApiError::QueryTooComplex { measured, limit } => {
                format!("the query is too complex ({measured}; the limit is {limit})")
            }
            ApiError::TooManyAliases { limit } => format!("the query uses more than {limit} aliases"),
            ApiError::RateLimited { retry_after_ms } => format!("rate limit exceeded; retry in {retry_after_ms} ms"),
            // Apollo clients recognise this exact message (and the code).
            ApiError::PersistedQueryNotFound => "PersistedQueryNotFound".into(),
            ApiError::LockConflict => "the change met concurrent changes of the same rows; retry".into(),
            ApiError::Unavailable => "service temporarily unavailable; retry later".into(),
            ApiError::Internal => "internal error; quote the requestId to an operator".into(),
        }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthenticated | ApiError::InvalidToken => ErrorCode::Unauthenticated,
            ApiError::Forbidden => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Domain(e) => e.code(),
            ApiError::Conflict(_) | ApiError::LockConflict => ErrorCode::Conflict,
            ApiError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::QueryTooDeep { .. } => ErrorCode::QueryTooDeep,
            ApiError::QueryTooComplex { .. } => ErrorCode::QueryTooComplex,
            ApiError::TooManyAliases { .. } => ErrorCode::TooManyAliases,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::PersistedQueryNotFound => ErrorCode::PersistedQueryNotFound,
            ApiError::Unavailable => ErrorCode::Unavailable,
            ApiError::Internal => ErrorCode::Internal,
        }
    }

    /// Logs an unexpected error with its cause chain and returns `INTERNAL`.
    pub fn internal(context: &str, err: &(dyn std::error::Error + 'static)) -> ApiError {
        tracing::error!(error = %chain(err), "{context}");
        ApiError::Internal
    }

    /// The GraphQL error, with `extensions.code` (and `field` for input errors).
    pub fn to_graphql(&self) -> async_graphql::Error {
        let mut error = async_graphql::Error::new(self.message());
        error = error.extend_with(|_, ext| ext.set("code", self.code().as_str()));
        if let ApiError::Domain(DomainError::InvalidInput { field, .. }) = self {
            let field = field.clone();
            error = error.extend_with(|_, ext| ext.set("field", field));
        }
        if let ApiError::RateLimited { retry_after_ms } = self {
            let retry_after_ms = *retry_after_ms;
            error = error.extend_with(|_, ext| ext.set("retryAfterMs", retry_after_ms));
        }
        error
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        self.to_graphql()
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(err: ApiError) -> Self {
        err.to_graphql()
    }
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        ApiError::Domain(err)
    }
}

impl From<DbErr> for ApiError {
    fn from(err: DbErr) -> Self {
        if is_lock_conflict(&err) {
            // Contention, not an outage: the store's retries handle it where it is expected.
            tracing::debug!(error = %chain(&err), "lock conflict");
            ApiError::LockConflict
        } else if is_unavailable(&err) {
            tracing::warn!(error = %chain(&err), "database unavailable");
            ApiError::Unavailable
        } else {
            ApiError::internal("database error", &err)
        }
    }
}

/// Whether the database error means "try again later" rather than a bug: the pool is
/// exhausted or closed, the connection broke, or SQLite's file lock was busy. (A MySQL
/// lock conflict is contention, not unavailability: see [`is_lock_conflict`].)
pub fn is_unavailable(err: &DbErr) -> bool {
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
pub fn is_lock_conflict(err: &DbErr) -> bool {
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

/// `error: cause: cause…` on one line, for logs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_contract_code() {
        let cases = [
            (ApiError::Unauthenticated, "UNAUTHENTICATED"),
            (ApiError::InvalidToken, "UNAUTHENTICATED"),
            (ApiError::Forbidden, "FORBIDDEN"),
            (ApiError::NotFound("task"), "NOT_FOUND"),
            (DomainError::invalid("input.queue", "bad").into(), "BAD_USER_INPUT"),
            (DomainError::IdempotencyConflict.into(), "IDEMPOTENCY_CONFLICT"),
            (DomainError::LeaseLost.into(), "LEASE_LOST"),
            (ApiError::Conflict("x".into()), "CONFLICT"),
            (ApiError::BatchTooLarge { limit: 1 }, "BATCH_TOO_LARGE"),
            (ApiError::PayloadTooLarge { limit: 1 }, "PAYLOAD_TOO_LARGE"),
            (ApiError::QueryTooDeep { limit: 1 }, "QUERY_TOO_DEEP"),
            (ApiError::QueryTooComplex { measured: "cost 2".into(), limit: 1 }, "QUERY_TOO_COMPLEX"),
            (ApiError::TooManyAliases { limit: 1 }, "TOO_MANY_ALIASES"),
            (ApiError::RateLimited { retry_after_ms: 5 }, "RATE_LIMITED"),
            (ApiError::PersistedQueryNotFound, "PERSISTED_QUERY_NOT_FOUND"),
            (ApiError::Unavailable, "UNAVAILABLE"),
            (ApiError::Internal, "INTERNAL"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code().as_str(), code, "{err:?}");
        }
    }

    #[test]
    fn pool_timeouts_are_unavailable_not_internal() {
        let err = DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        assert_eq!(ApiError::from(err).code(), ErrorCode::Unavailable);
        assert_eq!(ApiError::from(DbErr::Custom("bug".into())).code(), ErrorCode::Internal);
    }
}
