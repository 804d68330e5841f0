//! GraphQL over WebSocket: `graphql-transport-ws` and the legacy `graphql-ws`
//! (subscriptions-transport-ws) on `GET /graphql`.
//!
//! async-graphql's own WebSocket handler does not enforce several rules we need, so the
//! protocol is implemented here on top of `Schema::execute_stream`:
//!
//! | situation | outcome |
//! |---|---|
//! | an upgrade offering neither subprotocol | HTTP 400 |
//! | no `connection_init` within the timeout | close `4408` |
//! | `connection_init` without a valid token | close `4403` |
//! | … from an address past its refused-token budget | close `4429` |
//! | a second `connection_init` | close `4429` |
//! | `connection_init` of a subject that has all its connections open already | close `4429` |
//! | `subscribe` before the ack | close `4401` |
//! | a `subscribe` id already in use | close `4409` |
//! | a `subscribe` id longer than allowed | close `4400` |
//! | more subscriptions, or more bytes of them, than allowed | `error` for that id (`BAD_USER_INPUT`) |
//! | the token expires | close `4401` |
//! | unparsable message | close `4400` |
//! | a message larger than allowed | close `1009` |
//! | an operation that fails (no data, only errors) | `error` for that id; the operation ends |
//! | server shutdown | close `1001` |
//! | the client does not read for `write_timeout` | connection dropped |
//!
//! The messages of both protocols are typed in [`protocol`], the close codes in [`close`];
//! [`connection`] handles one message type per function.
//!
//! Each connection owns its subscription tasks (a `JoinSet`, aborted when the connection
//! ends) and one writer task fed by a bounded queue; subscription tasks wait
//! when it is full, which makes their hub buffers overflow and resync instead of
//! growing: a slow socket costs bounded memory and never delays other sockets.
//!
//! What a connection holds is bounded too: an open subscription keeps its id and its
//! request (query text and variables) for as long as it runs, so ids have a length
//! limit and the subscribe messages a connection holds open have a byte budget; a
//! subject's connections are capped so that one token cannot multiply that budget.
//! Queries and mutations sent over a socket are charged like HTTP ones: one operation,
//! and a mutation also spends from the mutations budget.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use axum::{
    extract::ws::WebSocketUpgrade,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use self::{connection::Connection, protocol::Protocol};
use super::{AppState, graphql::request_id};

mod close;
mod connection;
mod protocol;
mod subscription;
mod writer;

/// WebSocket limits and timers.
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// Time allowed between the upgrade and `connection_init`.
    pub init_timeout: Duration,
    /// Interval of server keep-alive messages.
    pub keepalive: Duration,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Open connections this process accepts.
    pub max_connections: usize,
    /// How long a frame may wait for a client that does not read.
    pub write_timeout: Duration,
    /// Allowed `Origin` values; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Largest message a client may send; a larger frame closes the connection with 1009.
    pub max_message_bytes: usize,
    /// Longest subscription id, in bytes.
    pub max_id_bytes: usize,
    /// Bytes of subscribe messages (id, query, variables) one connection may hold open.
    pub max_connection_bytes: usize,
    /// Acknowledged connections one token subject may hold open in this process.
    pub max_connections_per_subject: usize,
    /// Bytes of subscription results one connection may have queued for its socket.
    pub max_outbound_bytes: u32,
}

/// Open connections per token subject, for [`WsSettings::max_connections_per_subject`].
/// Subjects with no connection have no entry, so the map is bounded by the open
/// connections.
#[derive(Debug, Default)]
pub(crate) struct SubjectConnections(Mutex<HashMap<String, usize>>);

impl SubjectConnections {
    /// A slot for one more connection of `subject`, unless it holds `max` already.
    pub(in crate::http) fn acquire(self: &Arc<Self>, subject: &str, max: usize) -> Option<SubjectSlot> {
        let mut open = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(subject.to_owned()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SubjectSlot { registry: self.clone(), subject: subject.to_owned() })
    }
}

/// One connection's place in its subject's count, given back when dropped.
#[derive(Debug)]
pub(in crate::http) struct SubjectSlot {
    registry: Arc<SubjectConnections>,
    subject: String,
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        let mut open = self.registry.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.subject) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

/// Whether the request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Accepts the upgrade when the origin and connection cap allow it.
pub(crate) fn upgrade(
    state: AppState,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
    ws: WebSocketUpgrade,
) -> Response {
    if let (Some(allowed), Some(origin)) = (&state.ws.allowed_origins, headers.get(header::ORIGIN)) {
        let origin = origin.to_str().unwrap_or_default();
        if !allowed.iter().any(|a| a == origin) {
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    if state.ws_open.load(Ordering::Acquire) >= state.ws.max_connections {
        state.metrics.ws_refusals.with_label_values(&["connections"]).inc();
        return (StatusCode::SERVICE_UNAVAILABLE, "too many WebSocket connections").into_response();
    }
    let header_auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request_id = request_id(headers);
    // tungstenite's defaults (128 KiB read and write buffers per socket, 64 MiB messages)
    // would cost ~130 KiB per idle subscriber; GraphQL messages are small. The read
    // buffer is the chunk size (a bigger frame still arrives whole, up to the message
    // limit), and with no write buffer every message is written out as it is sent.
    let ws = ws
        .protocols(Protocol::ALL.map(Protocol::name))
        .read_buffer_size(WS_READ_CHUNK)
        .write_buffer_size(0)
        .max_message_size(state.ws.max_message_bytes)
        .max_frame_size(state.ws.max_message_bytes);
    // A client that offers neither protocol would get answers it cannot read (the two
    // differ in message names), so it is refused before the upgrade.
    let Some(protocol) = ws.selected_protocol().map(HeaderValue::as_bytes).and_then(Protocol::named) else {
        state.metrics.ws_refusals.with_label_values(&["subprotocol"]).inc();
        let message = "offer the WebSocket subprotocol graphql-transport-ws or graphql-ws";
        return (StatusCode::BAD_REQUEST, message).into_response();
    };
    ws.on_upgrade(move |socket| async move {
        // Shared by the connection and its subscriptions: one pointer each, not a copy
        // of the whole state per subscription.
        let state = Arc::new(state);
        state.ws_open.fetch_add(1, Ordering::AcqRel);
        state.metrics.ws_connections.inc();
        Connection::new(state.clone(), protocol, header_auth, request_id, peer.ip()).run(socket).await;
        state.metrics.ws_connections.dec();
        state.ws_open.fetch_sub(1, Ordering::AcqRel);
    })
}

/// Bytes read from a socket at a time.
const WS_READ_CHUNK: usize = 1024;
