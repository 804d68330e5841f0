//! The messages of `graphql-transport-ws` and of the legacy `graphql-ws`, typed.
//!
//! Each protocol has its own wire enums: its message names, and only the messages it
//! has. The connection handles the protocol-neutral [`ClientMessage`] and
//! [`ServerMessage`] they are read into and written from.

use async_graphql::{Request, Response, ServerError};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

/// The subprotocol a connection speaks, chosen at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// `graphql-transport-ws` (the graphql-ws library).
    Transport,
    /// `graphql-ws` (the legacy subscriptions-transport-ws).
    Legacy,
}

impl Protocol {
    /// Both, in the server's order of preference.
    pub(super) const ALL: [Protocol; 2] = [Protocol::Transport, Protocol::Legacy];

    /// The name in `Sec-WebSocket-Protocol`.
    pub(super) const fn name(self) -> &'static str {
        match self {
            Protocol::Transport => "graphql-transport-ws",
            Protocol::Legacy => "graphql-ws",
        }
    }

    /// The protocol called `name` in `Sec-WebSocket-Protocol`.
    pub(super) fn named(name: &[u8]) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|protocol| protocol.name().as_bytes() == name)
    }
}

/// A client message, whichever protocol carried it. (A request is boxed: it is several
/// times the size of the other messages.)
///
/// An `id` is `None` when it is absent or not a string, and a subscribe's `request` when
/// its payload is not a GraphQL request: neither makes the message unreadable, because
/// the connection answers them where its order of checks reaches them (a `subscribe`
/// before the ack closes with `4401`, whatever its id).
#[derive(Debug)]
pub(super) enum ClientMessage {
    /// `connection_init`, with its payload (`null` when absent).
    ConnectionInit { payload: Value },
    /// `subscribe` (legacy: `start`).
    Subscribe { id: Option<String>, request: Option<Box<Request>> },
    /// `complete` (legacy: `stop`).
    Complete { id: Option<String> },
    /// `ping` (graphql-transport-ws only).
    Ping,
    /// `pong` (graphql-transport-ws only).
    Pong,
    /// `connection_terminate` (legacy only).
    Terminate,
}

impl ClientMessage {
    /// Reads a text frame of `protocol`. It is invalid unless it is a JSON object whose
    /// `type` names a client message of that protocol; fields a message does not have
    /// are ignored.
    pub(super) fn parse(protocol: Protocol, text: &str) -> Result<ClientMessage, serde_json::Error> {
        // An object first: serde also reads a tagged enum from an array (tag first).
        let message = Value::Object(serde_json::from_str::<Map<String, Value>>(text)?);
        Ok(match protocol {
            Protocol::Transport => TransportClient::deserialize(message)?.into(),
            Protocol::Legacy => LegacyClient::deserialize(message)?.into(),
        })
    }
}

/// The client messages of `graphql-transport-ws`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TransportClient {
    ConnectionInit {
        #[serde(default)]
        payload: Value,
    },
    Subscribe {
        #[serde(default, deserialize_with = "lenient")]
        id: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        payload: Option<Box<Request>>,
    },
    Complete {
        #[serde(default, deserialize_with = "lenient")]
        id: Option<String>,
    },
    Ping {},
    Pong {},
}

impl From<TransportClient> for ClientMessage {
    fn from(message: TransportClient) -> Self {
        match message {
            TransportClient::ConnectionInit { payload } => ClientMessage::ConnectionInit { payload },
            TransportClient::Subscribe { id, payload } => ClientMessage::Subscribe { id, request: payload },
            TransportClient::Complete { id } => ClientMessage::Complete { id },
            TransportClient::Ping {} => ClientMessage::Ping,
            TransportClient::Pong {} => ClientMessage::Pong,
        }
    }
}

/// The client messages of the legacy `graphql-ws`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LegacyClient {
    ConnectionInit {
        #[serde(default)]
        payload: Value,
    },
    Start {
        #[serde(default, deserialize_with = "lenient")]
        id: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        payload: Option<Box<Request>>,
    },
    Stop {
        #[serde(default, deserialize_with = "lenient")]
        id: Option<String>,
    },
    ConnectionTerminate {},
}

impl From<LegacyClient> for ClientMessage {
    fn from(message: LegacyClient) -> Self {
        match message {
            LegacyClient::ConnectionInit { payload } => ClientMessage::ConnectionInit { payload },
            LegacyClient::Start { id, payload } => ClientMessage::Subscribe { id, request: payload },
            LegacyClient::Stop { id } => ClientMessage::Complete { id },
            LegacyClient::ConnectionTerminate {} => ClientMessage::Terminate,
        }
    }
}

/// A field that is `None` when its value is not a `T`, instead of making the whole
/// message unreadable.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(deserializer: D) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).ok())
}

/// A server message, whichever protocol carries it.
#[derive(Debug)]
pub(super) enum ServerMessage<'a> {
    /// `connection_ack`.
    ConnectionAck,
    /// Why `connection_init` was refused, ahead of the close: legacy `connection_error`.
    /// graphql-transport-ws has no such message; the close reason alone says why.
    ConnectionError { message: &'a str },
    /// The server's keep-alive: `ping` (legacy: `ka`).
    KeepAlive,
    /// The answer to a client's `ping` (graphql-transport-ws only).
    Pong,
    /// A result of operation `id`: `next` (legacy: `data`).
    Next { id: &'a str, response: &'a Response },
    /// Operation `id` failed and is over: `error` with the errors (legacy: the first).
    Error { id: &'a str, errors: &'a [ServerError] },
    /// Operation `id` is over.
    Complete { id: &'a str },
}

impl ServerMessage<'_> {
    /// The message's text in `protocol`; `None` when the protocol has no such message,
    /// or (logged) when it cannot be written.
    ///
    /// It is written through a `serde_json::Value`, whose objects keep their keys sorted:
    /// the text does not depend on the order of fields in these types or on a response's
    /// selection order (`{"id":…,"payload":…,"type":…}`, the payload's keys sorted too).
    pub(super) fn encode(&self, protocol: Protocol) -> Option<String> {
        let value = match protocol {
            Protocol::Transport => serde_json::to_value(TransportServer::from_message(self)?),
            Protocol::Legacy => serde_json::to_value(LegacyServer::from_message(self)?),
        };
        match value {
            Ok(value) => Some(value.to_string()),
            Err(e) => {
                tracing::error!(error = %e, "a WebSocket message could not be written");
                None
            }
        }
    }
}

/// The server messages of `graphql-transport-ws`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TransportServer<'a> {
    ConnectionAck,
    Ping,
    Pong,
    Next { id: &'a str, payload: &'a Response },
    Error { id: &'a str, payload: &'a [ServerError] },
    Complete { id: &'a str },
}

impl<'a> TransportServer<'a> {
    fn from_message(message: &ServerMessage<'a>) -> Option<Self> {
        Some(match *message {
            ServerMessage::ConnectionAck => TransportServer::ConnectionAck,
            ServerMessage::ConnectionError { .. } => return None,
            ServerMessage::KeepAlive => TransportServer::Ping,
            ServerMessage::Pong => TransportServer::Pong,
            ServerMessage::Next { id, response } => TransportServer::Next { id, payload: response },
            ServerMessage::Error { id, errors } => TransportServer::Error { id, payload: errors },
            ServerMessage::Complete { id } => TransportServer::Complete { id },
        })
    }
}

/// The server messages of the legacy `graphql-ws`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LegacyServer<'a> {
    ConnectionAck,
    ConnectionError {
        payload: LegacyErrorPayload<'a>,
    },
    Ka,
    Data {
        id: &'a str,
        payload: &'a Response,
    },
    /// One error object (`null` when there is none).
    Error {
        id: &'a str,
        payload: Option<&'a ServerError>,
    },
    Complete {
        id: &'a str,
    },
}

/// The payload of a legacy `connection_error`.
#[derive(Serialize)]
struct LegacyErrorPayload<'a> {
    message: &'a str,
}

impl<'a> LegacyServer<'a> {
    fn from_message(message: &ServerMessage<'a>) -> Option<Self> {
        Some(match *message {
            ServerMessage::ConnectionAck => LegacyServer::ConnectionAck,
            ServerMessage::ConnectionError { message } => {
                LegacyServer::ConnectionError { payload: LegacyErrorPayload { message } }
            }
            ServerMessage::KeepAlive => LegacyServer::Ka,
            ServerMessage::Pong => return None,
            ServerMessage::Next { id, response } => LegacyServer::Data { id, payload: response },
            ServerMessage::Error { id, errors } => LegacyServer::Error { id, payload: errors.first() },
            ServerMessage::Complete { id } => LegacyServer::Complete { id },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Protocol; 2] = Protocol::ALL;

    fn parse(protocol: Protocol, text: &str) -> ClientMessage {
        ClientMessage::parse(protocol, text).unwrap_or_else(|e| panic!("{text} is valid: {e}"))
    }

    fn invalid(protocol: Protocol, text: &str) -> bool {
        ClientMessage::parse(protocol, text).is_err()
    }

    #[test]
    fn protocols_are_named_as_in_the_header() {
        assert_eq!(Protocol::named(b"graphql-transport-ws"), Some(Protocol::Transport));
        assert_eq!(Protocol::named(b"graphql-ws"), Some(Protocol::Legacy));
        assert_eq!(Protocol::named(b"graphql-sse"), None);
    }

    #[test]
    fn connection_init_takes_any_payload() {
        for protocol in BOTH {
            let init = parse(protocol, r#"{"type":"connection_init","payload":{"authorization":"Bearer x"}}"#);
            assert!(
                matches!(init, ClientMessage::ConnectionInit { payload } if payload["authorization"] == "Bearer x")
            );
            let bare = parse(protocol, r#"{"type":"connection_init"}"#);
            assert!(matches!(bare, ClientMessage::ConnectionInit { payload: Value::Null }));
            let text = parse(protocol, r#"{"type":"connection_init","payload":"token"}"#);
            assert!(matches!(text, ClientMessage::ConnectionInit { payload: Value::String(_) }));
        }
    }

    #[test]
    fn subscribe_reads_its_id_and_request() {
        let subscribe = r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { a }","variables":{"x":1}}}"#;
        let start = subscribe.replace("subscribe", "start");
        for (protocol, text) in [(Protocol::Transport, subscribe), (Protocol::Legacy, start.as_str())] {
            let ClientMessage::Subscribe { id, request: Some(request) } = parse(protocol, text) else {
                panic!("{text} is a subscribe with a request");
            };
            assert_eq!(id.as_deref(), Some("1"));
            assert_eq!(request.query, "subscription { a }");
        }
    }

    #[test]
    fn a_missing_or_mistyped_id_or_payload_is_left_to_the_connection() {
        for (text, id, has_request) in [
            (r#"{"type":"subscribe","payload":{"query":"{ a }"}}"#, None, true),
            (r#"{"id":7,"type":"subscribe","payload":{"query":"{ a }"}}"#, None, true),
            (r#"{"id":null,"type":"subscribe","payload":{"query":"{ a }"}}"#, None, true),
            (r#"{"id":"","type":"subscribe","payload":{"query":"{ a }"}}"#, Some(""), true),
            (r#"{"id":"1","type":"subscribe"}"#, Some("1"), false),
            (r#"{"id":"1","type":"subscribe","payload":"{ a }"}"#, Some("1"), false),
            (r#"{"id":"1","type":"subscribe","payload":{"query":7}}"#, Some("1"), false),
        ] {
            let ClientMessage::Subscribe { id: read, request } = parse(Protocol::Transport, text) else {
                panic!("{text} is a subscribe");
            };
            assert_eq!(read.as_deref(), id, "{text}");
            assert_eq!(request.is_some(), has_request, "{text}");
        }
        assert!(matches!(parse(Protocol::Transport, r#"{"type":"complete"}"#), ClientMessage::Complete { id: None }));
        assert!(matches!(parse(Protocol::Legacy, r#"{"id":[],"type":"stop"}"#), ClientMessage::Complete { id: None }));
    }

    #[test]
    fn an_oversized_id_is_read_whole_for_the_connection_to_refuse() {
        let id = "x".repeat(10_000);
        let text = format!(r#"{{"id":"{id}","type":"complete"}}"#);
        assert!(matches!(parse(Protocol::Transport, &text), ClientMessage::Complete { id: Some(read) } if read == id));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let ping = parse(Protocol::Transport, r#"{"type":"ping","payload":{"at":1},"extra":true}"#);
        assert!(matches!(ping, ClientMessage::Ping));
        let complete = parse(Protocol::Transport, r#"{"id":"1","type":"complete","payload":null,"more":[1]}"#);
        assert!(matches!(complete, ClientMessage::Complete { id: Some(id) } if id == "1"));
        let terminate = parse(Protocol::Legacy, r#"{"type":"connection_terminate","id":"x"}"#);
        assert!(matches!(terminate, ClientMessage::Terminate));
    }

    #[test]
    fn each_protocol_reads_only_its_own_message_names() {
        assert!(matches!(parse(Protocol::Transport, r#"{"type":"pong"}"#), ClientMessage::Pong));
        for name in ["start", "stop", "connection_terminate", "ka", "next"] {
            assert!(invalid(Protocol::Transport, &format!(r#"{{"id":"1","type":"{name}"}}"#)), "{name}");
        }
        for name in ["subscribe", "complete", "ping", "pong", "data"] {
            assert!(invalid(Protocol::Legacy, &format!(r#"{{"id":"1","type":"{name}"}}"#)), "{name}");
        }
    }

    #[test]
    fn messages_that_are_not_protocol_objects_are_invalid() {
        for protocol in BOTH {
            for text in [
                "",
                "not json",
                "null",
                "\"connection_init\"",
                r#"["connection_init", {}]"#,
                "{}",
                r#"{"id":"1"}"#,
                r#"{"type":null}"#,
                r#"{"type":7}"#,
                r#"{"type":"CONNECTION_INIT"}"#,
                r#"{"type":"connection_init""#,
            ] {
                assert!(invalid(protocol, text), "{protocol:?}: {text}");
            }
        }
    }

    #[test]
    fn a_repeated_key_counts_once_with_its_last_value() {
        let text = r#"{"type":"ping","id":"1","type":"complete"}"#;
        assert!(matches!(parse(Protocol::Transport, text), ClientMessage::Complete { id: Some(id) } if id == "1"));
    }

    fn response() -> Response {
        let data = async_graphql::Value::from_json(serde_json::json!({ "b": 1, "a": { "d": 2, "c": 3 } }))
            .unwrap_or_else(|e| panic!("a GraphQL value: {e}"));
        Response::new(data)
    }

    fn error(message: &str) -> ServerError {
        ServerError::new(message, None)
    }

    #[test]
    fn server_messages_are_written_with_sorted_keys() {
        let response = response();
        let errors = [error("first"), error("second")];
        let cases: [(ServerMessage<'_>, Option<&str>, Option<&str>); 8] = [
            (ServerMessage::ConnectionAck, Some(r#"{"type":"connection_ack"}"#), Some(r#"{"type":"connection_ack"}"#)),
            (
                ServerMessage::ConnectionError { message: "Forbidden" },
                None,
                Some(r#"{"payload":{"message":"Forbidden"},"type":"connection_error"}"#),
            ),
            (ServerMessage::KeepAlive, Some(r#"{"type":"ping"}"#), Some(r#"{"type":"ka"}"#)),
            (ServerMessage::Pong, Some(r#"{"type":"pong"}"#), None),
            (
                ServerMessage::Next { id: "1", response: &response },
                Some(r#"{"id":"1","payload":{"data":{"a":{"c":3,"d":2},"b":1}},"type":"next"}"#),
                Some(r#"{"id":"1","payload":{"data":{"a":{"c":3,"d":2},"b":1}},"type":"data"}"#),
            ),
            (
                ServerMessage::Error { id: "1", errors: &errors },
                Some(r#"{"id":"1","payload":[{"message":"first"},{"message":"second"}],"type":"error"}"#),
                Some(r#"{"id":"1","payload":{"message":"first"},"type":"error"}"#),
            ),
            (
                ServerMessage::Error { id: "1", errors: &[] },
                Some(r#"{"id":"1","payload":[],"type":"error"}"#),
                Some(r#"{"id":"1","payload":null,"type":"error"}"#),
            ),
            (
                ServerMessage::Complete { id: "1" },
                Some(r#"{"id":"1","type":"complete"}"#),
                Some(r#"{"id":"1","type":"complete"}"#),
            ),
        ];
        for (message, transport, legacy) in cases {
            assert_eq!(message.encode(Protocol::Transport).as_deref(), transport, "{message:?}");
            assert_eq!(message.encode(Protocol::Legacy).as_deref(), legacy, "{message:?}");
        }
    }
}
