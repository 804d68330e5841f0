//! A small GraphQL-over-WebSocket client for tests, speaking either protocol.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue, protocol::frame::coding::CloseCode},
};

/// How long a test waits for any one message, keep-alives included: the server's pings
/// (every 15 s by default) must not restart the wait, or an event that never comes would
/// hang the test instead of failing it.
pub const WAIT: Duration = Duration::from_secs(15);

/// `graphql-transport-ws` (the graphql-ws library's protocol).
pub const TRANSPORT_WS: &str = "graphql-transport-ws";
/// The legacy `graphql-ws` protocol (subscriptions-transport-ws).
pub const LEGACY_WS: &str = "graphql-ws";

/// The `connection_init` payload carrying `token`.
pub fn bearer(token: &str) -> Value {
    json!({ "authorization": format!("Bearer {token}") })
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A protocol message.
    Json(Value),
    /// The server closed the connection with this code and reason.
    Closed(u16, String),
}

/// A connected client.
#[derive(Debug)]
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The negotiated subprotocol.
    pub protocol: String,
}

impl WsClient {
    /// Connects to `url` offering `protocol` (none when empty), with extra request headers.
    pub async fn connect(url: &str, protocol: &str, headers: &[(&str, &str)]) -> Result<WsClient, String> {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        if !protocol.is_empty() {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol).map_err(|e| e.to_string())?);
        }
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName =
                name.parse().map_err(|_| "bad header".to_owned())?;
            request.headers_mut().insert(name, HeaderValue::from_str(value).map_err(|e| e.to_string())?);
        }
        let (stream, response) = tokio_tungstenite::connect_async(request).await.map_err(|e| e.to_string())?;
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(WsClient { stream, protocol })
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, message: Value) {
        self.send_text(message.to_string()).await;
    }

    /// Sends a text frame as it is.
    pub async fn send_text(&mut self, text: String) {
        self.stream.send(Message::text(text)).await.expect("send");
    }

    /// The next protocol message or close, skipping keep-alives (`ping` is answered).
    /// Panics when none arrives within [`WAIT`], keep-alives or not.
    pub async fn recv(&mut self) -> Received {
        self.recv_until(tokio::time::Instant::now() + WAIT).await
    }

    /// [`WsClient::recv`] with the deadline given.
    async fn recv_until(&mut self, deadline: tokio::time::Instant) -> Received {
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no message within {WAIT:?} (keep-alives do not count)"));
            match next {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON message");
                    match value["type"].as_str() {
                        Some("ka") | Some("pong") => continue,
                        Some("ping") => {
                            self.send(json!({ "type": "pong" })).await;
                            continue;
                        }
                        _ => return Received::Json(value),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((u16::from(CloseCode::Status), String::new()));
                    return Received::Closed(code, reason);
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Received::Closed(0, e.to_string()),
                None => return Received::Closed(0, "stream ended".into()),
            }
        }
    }

    /// The next protocol message, panicking on close.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Received::Json(value) => value,
            Received::Closed(code, reason) => panic!("closed with {code} {reason}"),
        }
    }

    /// Sends `connection_init` with `payload` and expects the ack.
    pub async fn init(&mut self, payload: Value) {
        self.send(json!({ "type": "connection_init", "payload": payload })).await;
        let ack = self.recv_json().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
    }

    /// Starts a subscription (`subscribe` or legacy `start`).
    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = if self.protocol == LEGACY_WS { "start" } else { "subscribe" };
        self.send(json!({ "id": id, "type": kind, "payload": { "query": query, "variables": variables } })).await;
    }

    /// The payload `data` of the next `next`/`data` message of subscription `id`.
    pub async fn next_data(&mut self, id: &str) -> Value {
        let message = self.recv_json().await;
        assert_eq!(message["id"], id, "{message}");
        assert!(matches!(message["type"].as_str(), Some("next" | "data")), "expected data, got {message}");
        assert!(message["payload"].get("errors").is_none(), "{message}");
        message["payload"]["data"].clone()
    }

    /// Waits for a server keep-alive (`ping`, or legacy `ka`) and returns its type,
    /// without answering it.
    pub async fn expect_keepalive(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no keep-alive within {WAIT:?}"));
            if let Some(Ok(Message::Text(text))) = next {
                let value: Value = serde_json::from_str(&text).expect("JSON message");
                if let Some(kind @ ("ping" | "ka")) = value["type"].as_str() {
                    return kind.to_owned();
                }
            } else if !matches!(next, Some(Ok(_))) {
                panic!("connection ended before a keep-alive: {next:?}");
            }
        }
    }

    /// Closes the connection from the client side.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// Reads raw frames until a close arrives; the close code. Panics when the close does
    /// not come within [`WAIT`], however many other messages arrive meanwhile.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Received::Closed(code, reason) = self.recv_until(deadline).await {
                return (code, reason);
            }
        }
    }
}
