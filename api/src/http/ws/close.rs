//! Why the server closes a WebSocket: every close code and reason it sends, in one place.

/// A reason to close a connection, with the code and reason text the close frame carries
/// (README, Live updates over WebSocket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// `1001`: the server is shutting down.
    ShuttingDown,
    /// `1009`: a message larger than `max_message_bytes`.
    MessageTooBig,
    /// `4400`: a message that is not a message of the connection's protocol.
    InvalidMessage,
    /// `4400`: a binary frame (both protocols speak text).
    BinaryMessage,
    /// `4400`: a subscription id longer than `max_id_bytes`.
    IdTooLong,
    /// `4401`: `subscribe` before `connection_ack`.
    Unauthorized,
    /// `4401`: the connection's token expired.
    TokenExpired,
    /// `4403`: `connection_init` without a valid token.
    Forbidden,
    /// `4408`: no `connection_init` within `init_timeout`.
    InitTimeout,
    /// `4409`: a `subscribe` id that is already active.
    DuplicateId,
    /// `4429`: a second `connection_init`.
    TooManyInits,
    /// `4429`: a refused token from an address past its refused-token budget.
    TooManyRefusedTokens,
    /// `4429`: the token's subject has all its connections open already.
    TooManySubjectConnections,
}

impl Close {
    /// The close frame's code.
    pub(super) const fn code(self) -> u16 {
        self.frame().0
    }

    /// The close frame's reason (also the legacy `connection_error` message).
    pub(super) const fn reason(self) -> &'static str {
        self.frame().1
    }

    const fn frame(self) -> (u16, &'static str) {
        match self {
            Close::ShuttingDown => (1001, "server shutting down"),
            Close::MessageTooBig => (1009, "Message too big"),
            Close::InvalidMessage => (4400, "Invalid message"),
            Close::BinaryMessage => (4400, "Binary messages are not supported"),
            Close::IdTooLong => (4400, "Subscription id too long"),
            Close::Unauthorized => (4401, "Unauthorized"),
            Close::TokenExpired => (4401, "Token expired"),
            Close::Forbidden => (4403, "Forbidden"),
            Close::InitTimeout => (4408, "Connection initialisation timeout"),
            Close::DuplicateId => (4409, "Subscriber for this id already exists"),
            Close::TooManyInits => (4429, "Too many initialisation requests"),
            Close::TooManyRefusedTokens => (4429, "Too many refused tokens"),
            Close::TooManySubjectConnections => (4429, "Too many connections for this subject"),
        }
    }
}
