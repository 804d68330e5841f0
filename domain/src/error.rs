//! Stable error codes and the domain error type.

use std::fmt;

/// The stable error codes of the public contract (`extensions.code` in GraphQL errors).
///
/// Frontends branch on these strings; never rename one. Add new codes at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No valid credentials were presented (missing, expired or malformed token).
    Unauthenticated,
    /// The caller is authenticated but its roles do not allow the operation.
    Forbidden,
    /// The object does not exist, or exists but is not visible to the caller.
    NotFound,
    /// An input value broke a rule; `extensions.field` names it.
    BadUserInput,
    /// The operation does not fit the current state (e.g. cancelling a finished task).
    Conflict,
    /// An idempotency key was reused with a different input.
    IdempotencyConflict,
    /// The presented lease token is not the task's current lease.
    LeaseLost,
    /// The caller exceeded its rate limit; `extensions.retryAfterMs` says when to retry.
    RateLimited,
    /// The query nests deeper than allowed.
    QueryTooDeep,
    /// The query's computed cost exceeds the limit.
    QueryTooComplex,
    /// The query uses more aliases than allowed.
    TooManyAliases,
    /// A batched request carries more operations than allowed.
    BatchTooLarge,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// An automatic persisted query hash is unknown to the server.
    PersistedQueryNotFound,
    /// A dependency (usually the database) is unavailable; retry later.
    Unavailable,
    /// An unexpected server error; details are in the server log under the request id.
    Internal,
}

impl ErrorCode {
    /// Every code, in contract order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::BadUserInput,
        ErrorCode::Conflict,
        ErrorCode::IdempotencyConflict,
        ErrorCode::LeaseLost,
        ErrorCode::RateLimited,
        ErrorCode::QueryTooDeep,
        ErrorCode::QueryTooComplex,
        ErrorCode::TooManyAliases,
        ErrorCode::BatchTooLarge,
        ErrorCode::PayloadTooLarge,
        ErrorCode::PersistedQueryNotFound,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The wire spelling of the code, e.g. `"BAD_USER_INPUT"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::BadUserInput => "BAD_USER_INPUT",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::LeaseLost => "LEASE_LOST",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::QueryTooDeep => "QUERY_TOO_DEEP",
            ErrorCode::QueryTooComplex => "QUERY_TOO_COMPLEX",
            ErrorCode::TooManyAliases => "TOO_MANY_ALIASES",
            ErrorCode::BatchTooLarge => "BATCH_TOO_LARGE",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A broken domain rule. Each variant's doc names the [`ErrorCode`] it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// `BAD_USER_INPUT`: an input value broke a validation rule.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The GraphQL input field (camelCase path, e.g. `input.queue`).
        field: String,
        /// What is wrong, safe to show to the caller.
        reason: String,
    },
    /// `CONFLICT`: the command does not apply to the task's current status.
    #[error("cannot {command} a task that is {status}")]
    InvalidTransition {
        /// The task's current status.
        status: crate::TaskStatus,
        /// The command's name, e.g. `cancel`.
        command: &'static str,
    },
    /// `LEASE_LOST`: the caller's lease token is not the task's current lease.
    #[error("the lease on this task is no longer held by the caller")]
    LeaseLost,
    /// `IDEMPOTENCY_CONFLICT`: the idempotency key was used before with a different input.
    #[error("idempotency key was already used with a different input")]
    IdempotencyConflict,
    /// `FORBIDDEN`: the caller may see the task but its roles do not allow the command
    /// (decided against the row the command would change).
    #[error("not allowed for the caller's roles")]
    Forbidden,
}

impl DomainError {
    /// Shorthand for [`DomainError::InvalidInput`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::InvalidInput { field: field.into(), reason: reason.into() }
    }

    /// The input field this error is about, with `prefix.` prepended (for nested inputs).
    pub fn in_field(self, prefix: &str) -> Self {
        match self {
            DomainError::InvalidInput { field, reason } => {
                DomainError::InvalidInput { field: format!("{prefix}.{field}"), reason }
            }
            other => other,
        }
    }

    /// The stable code this error maps to.
    pub fn code(&self) -> ErrorCode {
        match self {
            DomainError::InvalidInput { .. } => ErrorCode::BadUserInput,
            DomainError::InvalidTransition { .. } => ErrorCode::Conflict,
            DomainError::LeaseLost => ErrorCode::LeaseLost,
            DomainError::IdempotencyConflict => ErrorCode::IdempotencyConflict,
            DomainError::Forbidden => ErrorCode::Forbidden,
        }
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
    fn every_code_is_upper_snake_case_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(s.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{s}");
            assert!(seen.insert(s), "duplicate code {s}");
        }
    }

    #[test]
    fn in_field_prefixes_only_input_errors() {
        let e = DomainError::invalid("queue", "bad").in_field("inputs[3]");
        assert_eq!(e, DomainError::invalid("inputs[3].queue", "bad"));
        assert_eq!(DomainError::LeaseLost.in_field("x"), DomainError::LeaseLost);
    }
}
