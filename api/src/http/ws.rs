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
    time::{Duration, SystemTime},
};

use async_graphql::{Request, Response as GqlResponse, parser::types::OperationType};
use axum::{
    extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use taskwire_domain::Principal;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    AppState,
    graphql::{request_id, stamp},
};
use crate::{
    auth::bearer_token,
    graphql::{RequestContext, SubscriptionLoaders},
};

/// Messages waiting for the socket writer, per connection.
const OUTBOUND_CAPACITY: usize = 64;

/// A message queued for the socket writer, with the share of the connection's outbound
/// byte budget it holds until it is written (none for the small protocol messages the
/// connection itself sends). Boxed: tokio's channel allocates its slots 32 at a time
/// when it is created, and a `Message` is 48 bytes, so an idle connection held a 1.5 KiB
/// block of empty slots; boxed, the block is 256 bytes (docs/BENCHMARKS.md, 10,000 idle
/// subscriptions).
type Outbound = Box<(Message, Option<OutboundShare>)>;

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
pub struct SubjectConnections(Mutex<HashMap<String, usize>>);

impl SubjectConnections {
    /// A slot for one more connection of `subject`, unless it holds `max` already.
    fn acquire(self: &Arc<Self>, subject: &str, max: usize) -> Option<SubjectSlot> {
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
struct SubjectSlot {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `graphql-transport-ws` (graphql-ws library).
    Transport,
    /// `graphql-ws` (legacy subscriptions-transport-ws).
    Legacy,
}

const TRANSPORT_WS: &str = "graphql-transport-ws";
const LEGACY_WS: &str = "graphql-ws";

/// Whether the request asks for a WebSocket upgrade.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Accepts the upgrade when the origin and connection cap allow it.
pub fn upgrade(state: AppState, headers: &HeaderMap, peer: std::net::SocketAddr, ws: WebSocketUpgrade) -> Response {
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
        .protocols([TRANSPORT_WS, LEGACY_WS])
        .read_buffer_size(WS_READ_CHUNK)
        .write_buffer_size(0)
        .max_message_size(state.ws.max_message_bytes)
        .max_frame_size(state.ws.max_message_bytes);
    // A client that offers neither protocol would get answers it cannot read (the two
    // differ in message names), so it is refused before the upgrade.
    let protocol = match ws.selected_protocol().map(HeaderValue::as_bytes) {
        Some(b"graphql-ws") => Protocol::Legacy,
        Some(b"graphql-transport-ws") => Protocol::Transport,
        _ => {
            state.metrics.ws_refusals.with_label_values(&["subprotocol"]).inc();
            let message = "offer the WebSocket subprotocol graphql-transport-ws or graphql-ws";
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
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

/// How long a connection closed for an oversized message stays open after its close
/// frame went out, so that the frame is not lost to the reset that closing it sends.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Bytes read from a socket at a time.
const WS_READ_CHUNK: usize = 1024;

/// Why the reader loop ended.
enum End {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The client went away or the socket broke.
    Gone,
}

struct Connection {
    state: Arc<AppState>,
    protocol: Protocol,
    header_auth: Option<String>,
    request_id: String,
    /// The client's address: refused tokens spend from its budget, as over HTTP.
    peer: std::net::IpAddr,
    principal: Option<Principal>,
    /// This connection's place in its subject's count, once acknowledged.
    slot: Option<SubjectSlot>,
    expires: Option<Instant>,
    /// Open subscriptions by id.
    subscriptions: HashMap<String, Open>,
    /// Bytes of the subscribe messages of the open subscriptions.
    held_bytes: usize,
    /// Subscriptions started so far (serials).
    serial: u64,
}

/// An open subscription, as its connection tracks it.
struct Open {
    /// Tells it from a later subscription reusing its id.
    serial: u64,
    cancel: CancellationToken,
    /// The length of its subscribe message, counted against the connection's budget.
    bytes: usize,
}

impl Connection {
    fn new(
        state: Arc<AppState>,
        protocol: Protocol,
        header_auth: Option<String>,
        request_id: String,
        peer: std::net::IpAddr,
    ) -> Self {
        Connection {
            state,
            protocol,
            header_auth,
            request_id,
            peer,
            principal: None,
            slot: None,
            expires: None,
            subscriptions: HashMap::new(),
            held_bytes: 0,
            serial: 0,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (sink, mut stream) = socket.split();
        let (out, outbound) = mpsc::channel::<Outbound>(OUTBOUND_CAPACITY);
        let writer = tokio::spawn(write_loop(sink, outbound, self.state.ws.write_timeout, self.state.metrics.clone()));
        // Results of large tasks could fill the queue with megabytes for a client that
        // reads slowly; subscriptions wait for room in this budget as they wait for room
        // in the queue.
        let outbound_budget = Arc::new(Semaphore::new(self.state.ws.max_outbound_bytes as usize));
        // The connection owns its subscriptions' tasks: they end with it (aborted on drop),
        // and each reports its `(id, serial)` here when it ends by itself.
        let mut running: JoinSet<(String, u64)> = JoinSet::new();
        let shutdown = self.state.shutdown.clone();
        let init_deadline = Instant::now() + self.state.ws.init_timeout;
        let mut keepalive = tokio::time::interval(self.state.ws.keepalive);
        keepalive.tick().await;

        let end = loop {
            let acked = self.principal.is_some();
            let expiry = self.expires;
            tokio::select! {
                () = shutdown.cancelled() => break End::Close(1001, "server shutting down"),
                () = tokio::time::sleep_until(init_deadline), if !acked => {
                    break End::Close(4408, "Connection initialisation timeout");
                }
                () = sleep_until_opt(expiry), if acked && expiry.is_some() => break End::Close(4401, "Token expired"),
                _ = keepalive.tick(), if acked => {
                    let ping = match self.protocol {
                        Protocol::Transport => json!({ "type": "ping" }),
                        Protocol::Legacy => json!({ "type": "ka" }),
                    };
                    if out.send(text(&ping)).await.is_err() { break End::Gone; }
                }
                Some(ended) = running.join_next(), if !running.is_empty() => {
                    if let Ok((id, serial)) = ended {
                        // Only if the id was not completed and reused meanwhile.
                        if self.subscriptions.get(&id).is_some_and(|open| open.serial == serial) {
                            self.close_subscription(&id);
                        }
                    }
                }
                incoming = stream.next() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(e)) if too_large(&e) => {
                            self.state.metrics.ws_refusals.with_label_values(&["message_too_large"]).inc();
                            break End::Close(1009, "Message too big");
                        }
                        _ => break End::Gone,
                    };
                    match message {
                        Message::Text(body) => {
                            // Boxed: handling a message (parsing, limits, rate limits) needs a
                            // few KiB of future state that an idle connection should not carry.
                            if let Some(end) = Box::pin(self.on_text(&body, &out, &outbound_budget, &mut running)).await { break end; }
                        }
                        Message::Binary(_) => break End::Close(4400, "Binary messages are not supported"),
                        Message::Close(_) => break End::Gone,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
            }
        };
        for open in self.subscriptions.values() {
            open.cancel.cancel();
        }
        drop(running); // aborts whatever has not ended yet
        if let End::Close(code, reason) = end {
            self.state.metrics.ws_closes.with_label_values(&[&code.to_string()]).inc();
            let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
            let _ = out.send(Box::new((Message::Close(Some(frame)), None))).await;
        }
        drop(out);
        let _ = tokio::time::timeout(self.state.ws.write_timeout, writer).await;
        if matches!(end, End::Close(1009, _)) {
            // The rest of the oversized message is still unread, and closing a socket
            // with unread data resets it: the socket stays open a moment so the client
            // reads the close frame first. It is not read meanwhile, which would buffer
            // the whole oversized message.
            tokio::time::sleep(CLOSE_LINGER).await;
        }
        drop(stream);
    }

    /// Handles one protocol message; `Some` ends the connection.
    async fn on_text(
        &mut self,
        body: &str,
        out: &mpsc::Sender<Outbound>,
        outbound_budget: &Arc<Semaphore>,
        running: &mut JoinSet<(String, u64)>,
    ) -> Option<End> {
        let Ok(message) = serde_json::from_str::<Value>(body) else {
            return Some(End::Close(4400, "Invalid message"));
        };
        let kind = message["type"].as_str().unwrap_or_default();
        let id = message["id"].as_str().map(str::to_owned);
        match (self.protocol, kind) {
            (_, "connection_init") => {
                if self.principal.is_some() {
                    return Some(End::Close(4429, "Too many initialisation requests"));
                }
                match self.authenticate(&message["payload"]) {
                    Some((principal, expires)) => {
                        let max = self.state.ws.max_connections_per_subject;
                        let Some(slot) = self.state.ws_subjects.acquire(&principal.subject, max) else {
                            self.state.metrics.ws_refusals.with_label_values(&["subject_connections"]).inc();
                            if self.protocol == Protocol::Legacy {
                                let message = "Too many connections for this subject";
                                let error = json!({ "type": "connection_error", "payload": { "message": message } });
                                let _ = out.send(text(&error)).await;
                            }
                            return Some(End::Close(4429, "Too many connections for this subject"));
                        };
                        self.slot = Some(slot);
                        self.principal = Some(principal);
                        self.expires = expires;
                        let _ = out.send(text(&json!({ "type": "connection_ack" }))).await;
                        if self.protocol == Protocol::Legacy {
                            let _ = out.send(text(&json!({ "type": "ka" }))).await;
                        }
                        None
                    }
                    None => {
                        // A refused token spends from the address's budget, as over HTTP;
                        // past it the close says so, and the client should back off.
                        let (code, reason) = match self.state.protection.admit_invalid_token(self.peer).await {
                            Ok(()) => (4403, "Forbidden"),
                            Err(_) => (4429, "Too many refused tokens"),
                        };
                        if self.protocol == Protocol::Legacy {
                            let error = json!({ "type": "connection_error", "payload": { "message": reason } });
                            let _ = out.send(text(&error)).await;
                        }
                        Some(End::Close(code, reason))
                    }
                }
            }
            (Protocol::Transport, "subscribe") | (Protocol::Legacy, "start") => {
                let Some(principal) = self.principal.clone() else {
                    return Some(End::Close(4401, "Unauthorized"));
                };
                let Some(id) = id.filter(|id| !id.is_empty()) else {
                    return Some(End::Close(4400, "Invalid message"));
                };
                if id.len() > self.state.ws.max_id_bytes {
                    self.state.metrics.ws_refusals.with_label_values(&["id_too_long"]).inc();
                    return Some(End::Close(4400, "Subscription id too long"));
                }
                if self.subscriptions.contains_key(&id) {
                    return Some(End::Close(4409, "Subscriber for this id already exists"));
                }
                let ws = &self.state.ws;
                let refusal = if self.subscriptions.len() >= ws.max_subscriptions {
                    Some(("subscriptions", format!("at most {} subscriptions per connection", ws.max_subscriptions)))
                } else if self.held_bytes + body.len() > ws.max_connection_bytes {
                    let message = format!(
                        "the open subscriptions of a connection may hold at most {} bytes of subscribe messages; \
                         this one would take {} more than the {} held",
                        ws.max_connection_bytes,
                        body.len(),
                        self.held_bytes
                    );
                    Some(("connection_bytes", message))
                } else {
                    None
                };
                if let Some((reason, message)) = refusal {
                    self.state.metrics.ws_refusals.with_label_values(&[reason]).inc();
                    let errors = json!([{ "message": message, "extensions": { "code": "BAD_USER_INPUT", "requestId": self.request_id } }]);
                    let _ = out.send(text(&error_message(self.protocol, &id, errors))).await;
                    return None;
                }
                let Ok(mut request) = serde_json::from_value::<Request>(message["payload"].clone()) else {
                    return Some(End::Close(4400, "Invalid message"));
                };
                // The same checks as over HTTP: persisted query, limits, and the caller's
                // budget, charged as HTTP charges it (one operation, and a mutation also
                // spends from the mutations budget).
                let protection = &self.state.protection;
                let prepared = protection.prepare(&mut request).await;
                let mutations = u32::from(matches!(&prepared, Ok(Some(op)) if op.ty == OperationType::Mutation));
                let checked = match protection.admit(&format!("sub:{}", principal.subject), 1, mutations).await {
                    Ok(()) => prepared.map(|_| ()),
                    Err(err) => Err(err),
                };
                if let Err(err) = checked {
                    let mut error = err.to_graphql().into_server_error(async_graphql::Pos::default());
                    super::graphql::stamp(&mut error, &self.request_id);
                    let errors = json!([error]);
                    let _ = out.send(text(&error_message(self.protocol, &id, errors))).await;
                    return None;
                }
                let context = RequestContext {
                    principal: Some(principal),
                    request_id: self.request_id.clone(),
                    traceparent: None,
                };
                // Loaders read past the cache (a subscription's fields are fresh) and are
                // made on first use; the cache itself is there for `assignments`, which
                // takes an offer this process just committed from L1 (checked by version)
                // instead of querying for it.
                let request = request.data(context).data(SubscriptionLoaders::default()).data(self.state.cache.clone());
                let cancel = CancellationToken::new();
                self.serial += 1;
                self.held_bytes += body.len();
                self.subscriptions
                    .insert(id.clone(), Open { serial: self.serial, cancel: cancel.clone(), bytes: body.len() });
                let task = Subscription {
                    state: self.state.clone(),
                    protocol: self.protocol,
                    id,
                    serial: self.serial,
                    request_id: self.request_id.clone(),
                    out: out.clone(),
                    outbound_budget: outbound_budget.clone(),
                    cancel,
                };
                running.spawn(task.run(request));
                None
            }
            (Protocol::Transport, "complete") | (Protocol::Legacy, "stop") => {
                if let Some(id) = id {
                    self.close_subscription(&id);
                }
                None
            }
            (Protocol::Transport, "ping") => {
                let _ = out.send(text(&json!({ "type": "pong" }))).await;
                None
            }
            (Protocol::Transport, "pong") => None,
            (Protocol::Legacy, "connection_terminate") => Some(End::Gone),
            _ => Some(End::Close(4400, "Invalid message")),
        }
    }

    /// Forgets subscription `id` (cancelling it if it still runs) and gives its bytes back
    /// to the connection's budget.
    fn close_subscription(&mut self, id: &str) {
        if let Some(open) = self.subscriptions.remove(id) {
            open.cancel.cancel();
            self.held_bytes -= open.bytes;
        }
    }

    /// The principal from the `connection_init` payload (or, failing that, the upgrade
    /// request's `Authorization` header). `None` when absent or invalid.
    fn authenticate(&self, payload: &Value) -> Option<(Principal, Option<Instant>)> {
        let value = auth_value(payload).or(self.header_auth.clone())?;
        let token = bearer_token(&value).ok().map(str::to_owned).unwrap_or(value);
        match self.state.keys.verify_with_expiry(&token) {
            Ok((principal, expires)) => Some((principal, expires.map(instant_of))),
            Err(e) => {
                tracing::info!(reason = %e, "rejected WebSocket token");
                None
            }
        }
    }
}

/// The authorization value in the forms README, Live updates over WebSocket lists.
fn auth_value(payload: &Value) -> Option<String> {
    let object = payload.as_object()?;
    let find = |map: &serde_json::Map<String, Value>, names: &[&str]| {
        map.iter()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
    };
    find(object, &["authorization", "token"])
        .or_else(|| object.get("headers").and_then(Value::as_object).and_then(|h| find(h, &["authorization"])))
}

/// Whether a read failed because the client's frame or message is over the size limit.
fn too_large(error: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    let inner = std::error::Error::source(error);
    inner.and_then(|e| e.downcast_ref::<Error>()).is_some_and(|e| matches!(e, Error::Capacity(_)))
}

fn instant_of(at: SystemTime) -> Instant {
    let remaining = at.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now() + remaining
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn text(value: &Value) -> Outbound {
    Box::new((Message::Text(Utf8Bytes::from(value.to_string())), None))
}

fn error_message(protocol: Protocol, id: &str, errors: Value) -> Value {
    match protocol {
        Protocol::Transport => json!({ "id": id, "type": "error", "payload": errors }),
        Protocol::Legacy => {
            json!({ "id": id, "type": "error", "payload": errors.get(0).cloned().unwrap_or(Value::Null) })
        }
    }
}

/// One running subscription of a connection.
struct Subscription {
    state: Arc<AppState>,
    protocol: Protocol,
    id: String,
    /// Tells this subscription from a later one reusing its id.
    serial: u64,
    request_id: String,
    out: mpsc::Sender<Outbound>,
    /// The connection's outbound byte budget.
    outbound_budget: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl Subscription {
    /// Streams the operation's results to the socket; returns its `(id, serial)`.
    async fn run(self, request: Request) -> (String, u64) {
        self.stream(request).await;
        (self.id, self.serial)
    }

    async fn stream(&self, request: Request) {
        let mut stream = self.state.schema.execute_stream(request);
        loop {
            let item = tokio::select! {
                () = self.cancel.cancelled() => return,
                item = stream.next() => item,
            };
            let Some(mut response) = item else { break };
            response.errors.iter_mut().for_each(|e| stamp(e, &self.request_id));
            let message = if failed(&response) {
                // The operation never started (validation, authorization, not found), or
                // its stream failed and ends (the caller may no longer read the task, the
                // subscriber fell too far behind, the database failed): either way the
                // operation is over, and `error` says so without a `complete`.
                let errors = serde_json::to_value(&response.errors).unwrap_or(Value::Null);
                let _ = self.send(error_message(self.protocol, &self.id, errors)).await;
                return;
            } else {
                let kind = if self.protocol == Protocol::Transport { "next" } else { "data" };
                json!({ "id": self.id, "type": kind, "payload": response })
            };
            if !self.send(message).await {
                return;
            }
        }
        let _ = self.send(json!({ "id": self.id, "type": "complete" })).await;
    }

    /// Queues a message for the writer once the connection's outbound budget has room
    /// for it; `false` once the subscription or socket is gone.
    async fn send(&self, message: Value) -> bool {
        let text = message.to_string();
        // A message larger than the whole budget waits until the queue is empty of results.
        let share = u32::try_from(text.len()).unwrap_or(u32::MAX).min(self.state.ws.max_outbound_bytes);
        let queued = async {
            let permit = self.outbound_budget.clone().acquire_many_owned(share).await.ok()?;
            let share = OutboundShare::new(permit, &self.state.metrics);
            let message = Message::Text(Utf8Bytes::from(text));
            self.out.send(Box::new((message, Some(share)))).await.ok()
        };
        tokio::select! {
            () = self.cancel.cancelled() => false,
            sent = queued => sent.is_some(),
        }
    }
}

fn failed(response: &GqlResponse) -> bool {
    !response.errors.is_empty() && response.data == async_graphql::Value::Null
}

/// A queued message's share of its connection's outbound budget, given back (and no
/// longer counted in `taskwire_ws_outbound_bytes`) when the message is dropped: written,
/// or discarded with its connection.
struct OutboundShare {
    permit: OwnedSemaphorePermit,
    metrics: crate::metrics::Metrics,
}

impl OutboundShare {
    fn new(permit: OwnedSemaphorePermit, metrics: &crate::metrics::Metrics) -> Self {
        metrics.ws_outbound_bytes.add(permit.num_permits() as i64);
        OutboundShare { permit, metrics: metrics.clone() }
    }
}

impl Drop for OutboundShare {
    fn drop(&mut self) {
        self.metrics.ws_outbound_bytes.sub(self.permit.num_permits() as i64);
    }
}

/// Writes queued messages; gives up on a client that stops reading.
async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut outbound: mpsc::Receiver<Outbound>,
    write_timeout: Duration,
    metrics: crate::metrics::Metrics,
) {
    while let Some(queued) = outbound.recv().await {
        // The message's share of the budget is given back once it is written.
        let (message, _share) = *queued;
        let closing = matches!(message, Message::Close(_));
        match tokio::time::timeout(write_timeout, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::info!("dropping a WebSocket client that stopped reading");
                metrics.ws_slow_clients_dropped.inc();
                return;
            }
        }
        if closing {
            break;
        }
    }
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
}
