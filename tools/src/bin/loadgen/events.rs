//! `taskEvents` subscribers over graphql-transport-ws.

use std::{borrow::Cow, time::Duration};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig},
};
use tokio_util::sync::CancellationToken;

use crate::{Clock, creates::task_key};

/// The WebSocket subprotocol the subscribers speak.
const PROTOCOL: &str = "graphql-transport-ws";
/// The one subscription each event connection carries.
const SUBSCRIPTION_ID: &str = "events";
const EVENTS_SUBSCRIPTION: &str =
    "subscription Events($queue: String!) { taskEvents(filter: { queue: $queue }) { taskId seq status at } }";
/// Time limit of a WebSocket connect, and then of its `connection_ack`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time given to a closing WebSocket.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Read buffer of each event connection: small, because fanout opens thousands (the
/// tungstenite default, 128 KiB each, would be 1.3 GB for 10,000 connections).
const READ_BUFFER: usize = 4 * 1024;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One `taskEvents` item.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) task: u128,
    pub(crate) seq: u32,
    pub(crate) status: String,
    /// The server's timestamp, µs since the epoch.
    pub(crate) at: i64,
}

/// A protocol message, as far as the load generator cares.
enum Frame {
    Event(Event),
    Ping,
    Other,
    /// The subscription ended (an error, `complete`); the reason.
    End(String),
}

#[derive(Deserialize)]
struct WireFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    payload: Option<WirePayload<'a>>,
}

#[derive(Deserialize)]
struct WirePayload<'a> {
    #[serde(default, borrow)]
    data: Option<WireData<'a>>,
    #[serde(default)]
    errors: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct WireData<'a> {
    #[serde(rename = "taskEvents", borrow)]
    task_events: Option<WireEvent<'a>>,
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "taskId", borrow)]
    task_id: Cow<'a, str>,
    seq: u32,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    at: Cow<'a, str>,
}

/// Parses one text message. Events take the typed (fast) path: fanout parses hundreds of
/// thousands per second beside the server on the same cores.
fn parse_frame(text: &str) -> Frame {
    use Frame::End;
    let Ok(frame) = serde_json::from_str::<WireFrame<'_>>(text) else {
        // `error` carries an array payload, which the typed path does not read.
        return match serde_json::from_str::<Value>(text) {
            Ok(value) if value["type"] == "error" => End(format!("error {}", error_reason(&value["payload"][0]))),
            Ok(_) => Frame::Other,
            Err(_) => End("a message that is not JSON".to_owned()),
        };
    };
    match frame.kind.as_ref() {
        "next" => {
            let Some(payload) = frame.payload else { return Frame::Other };
            if let Some(error) = payload.errors.as_ref().and_then(|e| e.first()) {
                return End(format!("error {}", error_reason(error)));
            }
            let Some(event) = payload.data.and_then(|d| d.task_events) else { return Frame::Other };
            let at = chrono::DateTime::parse_from_rfc3339(&event.at).map(|at| at.timestamp_micros());
            match (task_key(&event.task_id), at) {
                (Some(task), Ok(at)) => {
                    Frame::Event(Event { task, seq: event.seq, status: event.status.into_owned(), at })
                }
                _ => Frame::Other,
            }
        }
        "ping" => Frame::Ping,
        "complete" => End("the server completed the subscription".to_owned()),
        // An `error` frame ends the subscription; its payload is an array of errors.
        "error" => match serde_json::from_str::<Value>(text) {
            Ok(value) => End(format!("error {}", error_reason(&value["payload"][0]))),
            Err(_) => End("error".to_owned()),
        },
        _ => Frame::Other,
    }
}

/// An error's `extensions.reason` (e.g. `SLOW_SUBSCRIBER`), else its code.
fn error_reason(error: &Value) -> String {
    let extensions = &error["extensions"];
    extensions["reason"].as_str().or(extensions["code"].as_str()).unwrap_or("NO_CODE").to_owned()
}

fn ws_error(e: tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => format!("HTTP {}", response.status().as_u16()),
        tungstenite::Error::Io(e) => format!("io: {e}"),
        other => other.to_string(),
    }
}

fn close_reason(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(frame) => format!("close {} {}", u16::from(frame.code), frame.reason).trim_end().to_owned(),
        None => "close without a frame".to_owned(),
    }
}

async fn send_json(socket: &mut Socket, message: &Value) -> Result<(), String> {
    socket.send(Message::text(message.to_string())).await.map_err(|e| format!("send: {}", ws_error(e)))
}

/// Connects as `token`, waits for `connection_ack` and subscribes to `queue`'s
/// `taskEvents`. The error is a short reason, to be counted.
pub(crate) async fn open_events(ws_url: &str, token: &str, queue: &str) -> Result<Socket, String> {
    let mut request = ws_url.into_client_request().map_err(|e| format!("request: {e}"))?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER).write_buffer_size(0);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (mut socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(ws_error)?;
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    send_json(&mut socket, &init).await?;
    let acked = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(&text).ok() {
                    Some(message) if message["type"] == "connection_ack" => return Ok(()),
                    Some(message) if message["type"] == "ping" => {
                        send_json(&mut socket, &json!({ "type": "pong" })).await?;
                    }
                    _ => return Err("no connection_ack".to_owned()),
                },
                Some(Ok(Message::Close(frame))) => return Err(close_reason(frame.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ws_error(e)),
                None => return Err("closed before connection_ack".to_owned()),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, acked).await.map_err(|_| "no connection_ack in time".to_owned())??;
    let subscribe = json!({
        "id": SUBSCRIPTION_ID,
        "type": "subscribe",
        "payload": { "query": EVENTS_SUBSCRIPTION, "variables": { "queue": queue }, "operationName": "Events" },
    });
    send_json(&mut socket, &subscribe).await?;
    Ok(socket)
}

/// Reads events until `stop` (then completes the subscription, closes and returns `None`)
/// or until the connection or subscription ends (the reason). `on_event` gets each event
/// with the client-clock time it was read.
pub(crate) async fn read_events(
    socket: &mut Socket,
    clock: Clock,
    stop: &CancellationToken,
    on_event: &mut impl FnMut(Event, i64),
) -> Option<String> {
    loop {
        let message = tokio::select! {
            biased;
            () = stop.cancelled() => {
                let closing = async {
                    let _ = send_json(socket, &json!({ "id": SUBSCRIPTION_ID, "type": "complete" })).await;
                    let _ = socket.close(None).await;
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
                return None;
            }
            message = socket.next() => message,
        };
        let received = clock.now();
        match message {
            Some(Ok(Message::Text(text))) => match parse_frame(&text) {
                Frame::Event(event) => on_event(event, received),
                Frame::Ping => {
                    if let Err(e) = send_json(socket, &json!({ "type": "pong" })).await {
                        return Some(e);
                    }
                }
                Frame::Other => {}
                Frame::End(reason) => return Some(reason),
            },
            Some(Ok(Message::Close(frame))) => return Some(close_reason(frame.as_ref())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Some(ws_error(e)),
            None => return Some("connection ended".to_owned()),
        }
    }
}
