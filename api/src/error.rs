//! The API error type: every failure a resolver or handler can return, each mapped to a
//! stable code listed in README, Authentication and roles (Errors).
//!
//! Infrastructure errors are logged here, with their whole cause chain, at the moment
//! they become an `ApiError`; the client only ever sees `INTERNAL` or `UNAVAILABLE` and
//! the request id (added to every error by the HTTP layer) to quote to an operator.

use async_graphql::ErrorExtensions;
use taskwire_domain::{DomainError, ErrorCode, error::chain};
use taskwire_store::StoreError;

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
    /// was not granted in time, on every one of the store's retries. The database is up:
    /// the work met concurrent work.
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

    /// The error as a response error of a request that never reached execution: no
    /// `locations` (there is no place in a document to point at; a `0:0` would be read as
    /// one), no `path`.
    pub fn to_request_error(&self) -> async_graphql::ServerError {
        let mut error = self.to_graphql().into_server_error(async_graphql::Pos::default());
        error.locations.clear();
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

/// The one place store failures become API errors.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Domain(e) => ApiError::Domain(e),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::LockConflict => ApiError::LockConflict,
            StoreError::Unavailable => ApiError::Unavailable,
            StoreError::Internal => ApiError::Internal,
        }
    }
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
    fn store_failures_keep_their_class() {
        let cases = [
            (StoreError::NotFound("task"), "NOT_FOUND"),
            (StoreError::Domain(DomainError::LeaseLost), "LEASE_LOST"),
            (StoreError::Conflict("x".into()), "CONFLICT"),
            (StoreError::LockConflict, "CONFLICT"),
            (StoreError::Unavailable, "UNAVAILABLE"),
            (StoreError::Internal, "INTERNAL"),
        ];
        for (err, code) in cases {
            assert_eq!(ApiError::from(err.clone()).code().as_str(), code, "{err:?}");
        }
    }
}
