//! What can go wrong talking to the server.

use std::borrow::Cow;

use tokio_tungstenite::tungstenite;

/// Why a worker could not start, or a connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server URL that is not `http://…` or `https://…`.
    #[error("url must start with http:// or https://: {url}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// `registerWorker` failed.
    #[error("registerWorker: {0}")]
    Register(#[source] CallError),
    /// The WebSocket could not be opened, or failed while in use.
    #[error("WebSocket: {0}")]
    WebSocket(#[source] Box<tungstenite::Error>),
    /// The WebSocket did not open within the connect time limit.
    #[error("WebSocket connect timed out")]
    ConnectTimeout,
    /// No `connection_ack` arrived within the connect time limit.
    #[error("no connection_ack in time")]
    AckTimeout,
    /// The server closed the connection before acknowledging it (for example, it refused
    /// the token).
    #[error("closed before connection_ack: {reason}")]
    Refused {
        /// The close code and reason, as far as the server sent them.
        reason: String,
    },
    /// The server answered the connection's initialisation with something other than
    /// `connection_ack`.
    #[error("expected connection_ack, got {message}")]
    Protocol {
        /// The message received instead.
        message: String,
    },
}

impl From<tungstenite::Error> for Error {
    fn from(error: tungstenite::Error) -> Error {
        Error::WebSocket(Box::new(error))
    }
}

/// Why one GraphQL call (a mutation over HTTP) did not succeed. Its [`CallError::code`]
/// is what a [`TaskRecord`](crate::TaskRecord) keeps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The server answered with a GraphQL error.
    #[error("{code}: {message}")]
    Rejected {
        /// The error's `extensions.code` (for example `LEASE_LOST`); `NO_CODE` when it has
        /// none.
        code: String,
        /// The error's message.
        message: String,
    },
    /// No response arrived (refused, reset, timed out): the server may or may not have
    /// acted on the call.
    #[error("TRANSPORT: {0}")]
    Transport(String),
    /// A response that is not a GraphQL answer (a proxy's error page, an empty body): the
    /// server may or may not have acted on the call.
    #[error("HTTP_{status}: {message}")]
    NotGraphql {
        /// The HTTP status.
        status: u16,
        /// What was wrong with the body.
        message: String,
    },
}

impl CallError {
    /// The stable code of the failure: the GraphQL error's code, `TRANSPORT`, or
    /// `HTTP_<status>`.
    pub fn code(&self) -> Cow<'_, str> {
        match self {
            CallError::Rejected { code, .. } => Cow::Borrowed(code),
            CallError::Transport(_) => Cow::Borrowed("TRANSPORT"),
            CallError::NotGraphql { status, .. } => Cow::Owned(format!("HTTP_{status}")),
        }
    }

    /// Whether the answer was lost: the call may or may not have taken effect.
    pub(crate) fn answer_lost(&self) -> bool {
        matches!(self, CallError::Transport(_) | CallError::NotGraphql { .. })
    }

    /// Whether the server changed nothing and asks for the call again (its transaction
    /// rolled back, e.g. on a database deadlock).
    pub(crate) fn retry_later(&self) -> bool {
        matches!(self, CallError::Rejected { code, .. } if code == "UNAVAILABLE")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let rejected = CallError::Rejected { code: "LEASE_LOST".into(), message: "lease lost".into() };
        assert_eq!(rejected.code(), "LEASE_LOST");
        assert_eq!(rejected.to_string(), "LEASE_LOST: lease lost");
        assert!(!rejected.answer_lost());
        assert_eq!(CallError::Transport("refused".into()).code(), "TRANSPORT");
        let page = CallError::NotGraphql { status: 502, message: "not JSON".into() };
        assert_eq!((page.code().as_ref(), page.answer_lost()), ("HTTP_502", true));
        assert!(CallError::Rejected { code: "UNAVAILABLE".into(), message: String::new() }.retry_later());
    }
}
