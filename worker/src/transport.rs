//! The `graphql-transport-ws` connection under the worker, for clients that speak the
//! protocol themselves (a task watcher, a monitoring probe): open an authenticated,
//! acknowledged connection with [`connect`], then send JSON messages with [`send`] and
//! read the socket as a [`futures::Stream`].

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue, protocol::CloseFrame},
};

use crate::Error;

/// The WebSocket subprotocol spoken.
pub(crate) const PROTOCOL: &str = "graphql-transport-ws";
/// How long to wait for the WebSocket to open, and then for `connection_ack`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open WebSocket to the server.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Sends one JSON message as a text frame.
pub async fn send(socket: &mut Socket, message: Value) -> Result<(), Error> {
    socket.send(Message::text(message.to_string())).await.map_err(Error::from)
}

/// Opens a `graphql-transport-ws` connection to `url` (`ws://host:port/graphql`), sends
/// `connection_init` with `token` as a bearer token and waits for `connection_ack`
/// (answering pings meanwhile), each step within a 10 s limit.
pub async fn connect(url: &str, token: &str) -> Result<Socket, Error> {
    let mut request = url.into_client_request().map_err(|_| Error::InvalidUrl { url: url.to_owned() })?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let connecting = tokio_tungstenite::connect_async(request);
    let (mut socket, _) =
        tokio::time::timeout(CONNECT_TIMEOUT, connecting).await.map_err(|_| Error::ConnectTimeout)??;
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    send(&mut socket, init).await?;
    tokio::time::timeout(CONNECT_TIMEOUT, acknowledged(&mut socket)).await.map_err(|_| Error::AckTimeout)??;
    Ok(socket)
}

/// Reads until `connection_ack`, answering pings.
async fn acknowledged(socket: &mut Socket) -> Result<(), Error> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match message["type"].as_str() {
                    Some("connection_ack") => return Ok(()),
                    Some("ping") => send(socket, json!({ "type": "pong" })).await?,
                    _ => return Err(Error::Protocol { message: message.to_string() }),
                }
            }
            Some(Ok(Message::Close(frame))) => return Err(Error::Refused { reason: describe_close(frame.as_ref()) }),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Refused { reason: "the connection ended".to_owned() }),
        }
    }
}

/// `<code> <reason>` of a close frame.
pub(crate) fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame) => format!("{} {}", u16::from(frame.code), frame.reason),
        None => "no close frame".to_owned(),
    }
}
