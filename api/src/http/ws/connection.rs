//! One WebSocket connection: its reader loop and one handler per client message type.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_graphql::{Request, ServerError, parser::types::OperationType};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::StreamExt;
use serde_json::Value;
use taskwire_domain::{ErrorCode, Principal};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    SubjectSlot,
    close::Close,
    protocol::{ClientMessage, Protocol, ServerMessage},
    subscription::Subscription,
    writer::{OUTBOUND_CAPACITY, Outbound, unbudgeted, write_loop},
};
use crate::{
    auth::bearer_token,
    graphql::{RequestContext, SubscriptionLoaders},
    http::{AppState, graphql::stamp},
};

/// How long a connection closed for an oversized message stays open after its close
/// frame went out, so that the frame is not lost to the reset that closing it sends.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Why the reader loop ended.
enum End {
    /// Close with this code and reason.
    Close(Close),
    /// The client went away or the socket broke.
    Gone,
}

pub(super) struct Connection {
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
    /// Bytes of subscription results the connection may have queued for its socket.
    /// Results of large tasks could fill the queue with megabytes for a client that
    /// reads slowly; subscriptions wait for room in this budget as they wait for room
    /// in the queue.
    outbound_budget: Arc<Semaphore>,
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
    pub(super) fn new(
        state: Arc<AppState>,
        protocol: Protocol,
        header_auth: Option<String>,
        request_id: String,
        peer: std::net::IpAddr,
    ) -> Self {
        let outbound_budget = Arc::new(Semaphore::new(state.ws.max_outbound_bytes as usize));
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
            outbound_budget,
        }
    }

    pub(super) async fn run(mut self, socket: WebSocket) {
        let (sink, mut stream) = socket.split();
        let (out, outbound) = mpsc::channel::<Outbound>(OUTBOUND_CAPACITY);
        let writer = tokio::spawn(write_loop(sink, outbound, self.state.ws.write_timeout, self.state.metrics.clone()));
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
                () = shutdown.cancelled() => break End::Close(Close::ShuttingDown),
                () = tokio::time::sleep_until(init_deadline), if !acked => break End::Close(Close::InitTimeout),
                () = sleep_until_opt(expiry), if acked && expiry.is_some() => break End::Close(Close::TokenExpired),
                _ = keepalive.tick(), if acked => {
                    if !self.send(&out, &ServerMessage::KeepAlive).await { break End::Gone; }
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
                            break End::Close(Close::MessageTooBig);
                        }
                        _ => break End::Gone,
                    };
                    match message {
                        Message::Text(body) => {
                            // Boxed: handling a message (parsing, limits, rate limits) needs a
                            // few KiB of future state that an idle connection should not carry.
                            if let Some(end) = Box::pin(self.on_text(&body, &out, &mut running)).await { break end; }
                        }
                        Message::Binary(_) => break End::Close(Close::BinaryMessage),
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
        if let End::Close(close) = end {
            self.state.metrics.ws_closes.with_label_values(&[&close.code().to_string()]).inc();
            let frame = CloseFrame { code: close.code(), reason: Utf8Bytes::from_static(close.reason()) };
            let _ = out.send(Box::new((Message::Close(Some(frame)), None))).await;
        }
        drop(out);
        let _ = tokio::time::timeout(self.state.ws.write_timeout, writer).await;
        if matches!(end, End::Close(Close::MessageTooBig)) {
            // The rest of the oversized message is still unread, and closing a socket
            // with unread data resets it: the socket stays open a moment so the client
            // reads the close frame first. It is not read meanwhile, which would buffer
            // the whole oversized message.
            tokio::time::sleep(CLOSE_LINGER).await;
        }
        drop(stream);
    }

    /// Handles one text message; `Some` ends the connection.
    async fn on_text(
        &mut self,
        body: &str,
        out: &mpsc::Sender<Outbound>,
        running: &mut JoinSet<(String, u64)>,
    ) -> Option<End> {
        let Ok(message) = ClientMessage::parse(self.protocol, body) else {
            return Some(End::Close(Close::InvalidMessage));
        };
        match message {
            ClientMessage::ConnectionInit { payload } => self.on_connection_init(&payload, out).await,
            ClientMessage::Subscribe { id, request } => self.on_subscribe(id, request, body.len(), out, running).await,
            ClientMessage::Complete { id } => {
                self.on_complete(id.as_deref());
                None
            }
            ClientMessage::Ping => {
                self.send(out, &ServerMessage::Pong).await;
                None
            }
            ClientMessage::Pong => None,
            ClientMessage::Terminate => Some(End::Gone),
        }
    }

    /// `connection_init`: authenticates the connection and takes its place in its
    /// subject's count, or ends it.
    async fn on_connection_init(&mut self, payload: &Value, out: &mpsc::Sender<Outbound>) -> Option<End> {
        if self.principal.is_some() {
            return Some(End::Close(Close::TooManyInits));
        }
        let Some((principal, expires)) = self.authenticate(payload) else {
            // A refused token spends from the address's budget, as over HTTP; past it the
            // close says so, and the client should back off.
            let close = match self.state.protection.admit_invalid_token(self.peer).await {
                Ok(()) => Close::Forbidden,
                Err(_) => Close::TooManyRefusedTokens,
            };
            return Some(self.refuse_init(close, out).await);
        };
        let max = self.state.ws.max_connections_per_subject;
        let Some(slot) = self.state.ws_subjects.acquire(&principal.subject, max) else {
            self.state.metrics.ws_refusals.with_label_values(&["subject_connections"]).inc();
            return Some(self.refuse_init(Close::TooManySubjectConnections, out).await);
        };
        self.slot = Some(slot);
        self.principal = Some(principal);
        self.expires = expires;
        self.send(out, &ServerMessage::ConnectionAck).await;
        if self.protocol == Protocol::Legacy {
            // As subscriptions-transport-ws servers do: its clients start checking for
            // keep-alives at the first `ka`.
            self.send(out, &ServerMessage::KeepAlive).await;
        }
        None
    }

    /// Ends the connection at `connection_init`, saying why first where the protocol has
    /// a message for it.
    async fn refuse_init(&self, close: Close, out: &mpsc::Sender<Outbound>) -> End {
        self.send(out, &ServerMessage::ConnectionError { message: close.reason() }).await;
        End::Close(close)
    }

    /// `subscribe`: checks the subscription against the connection's limits and the
    /// caller's budget, then starts it. `bytes` is the message's length.
    async fn on_subscribe(
        &mut self,
        id: Option<String>,
        request: Option<Box<Request>>,
        bytes: usize,
        out: &mpsc::Sender<Outbound>,
        running: &mut JoinSet<(String, u64)>,
    ) -> Option<End> {
        let Some(principal) = self.principal.clone() else {
            return Some(End::Close(Close::Unauthorized));
        };
        let Some(id) = id.filter(|id| !id.is_empty()) else {
            return Some(End::Close(Close::InvalidMessage));
        };
        if id.len() > self.state.ws.max_id_bytes {
            self.state.metrics.ws_refusals.with_label_values(&["id_too_long"]).inc();
            return Some(End::Close(Close::IdTooLong));
        }
        if self.subscriptions.contains_key(&id) {
            return Some(End::Close(Close::DuplicateId));
        }
        if let Some(error) = self.over_limits(bytes) {
            self.send(out, &ServerMessage::Error { id: &id, errors: std::slice::from_ref(&error) }).await;
            return None;
        }
        let Some(mut request) = request else {
            return Some(End::Close(Close::InvalidMessage));
        };
        if let Err(error) = self.admit(&principal, &mut request).await {
            self.send(out, &ServerMessage::Error { id: &id, errors: std::slice::from_ref(&error) }).await;
            return None;
        }
        self.start(id, principal, *request, bytes, out, running);
        None
    }

    /// The error for a subscription of `bytes` that this connection may not hold: one too
    /// many, or one its budget of subscribe bytes has no room for.
    fn over_limits(&self, bytes: usize) -> Option<ServerError> {
        let ws = &self.state.ws;
        let (reason, message) = if self.subscriptions.len() >= ws.max_subscriptions {
            ("subscriptions", format!("at most {} subscriptions per connection", ws.max_subscriptions))
        } else if self.held_bytes + bytes > ws.max_connection_bytes {
            let message = format!(
                "the open subscriptions of a connection may hold at most {} bytes of subscribe messages; \
                 this one would take {} more than the {} held",
                ws.max_connection_bytes, bytes, self.held_bytes
            );
            ("connection_bytes", message)
        } else {
            return None;
        };
        self.state.metrics.ws_refusals.with_label_values(&[reason]).inc();
        let mut error = ServerError::new(message, None);
        error.extensions.get_or_insert_with(Default::default).set("code", ErrorCode::BadUserInput.as_str());
        stamp(&mut error, &self.request_id);
        Some(error)
    }

    /// The same checks as over HTTP: persisted query, limits, and the caller's budget,
    /// charged as HTTP charges it (one operation, and a mutation also spends from the
    /// mutations budget).
    async fn admit(&self, principal: &Principal, request: &mut Request) -> Result<(), ServerError> {
        let protection = &self.state.protection;
        let prepared = protection.prepare(request).await;
        let mutations = u32::from(matches!(&prepared, Ok(Some(op)) if op.ty == OperationType::Mutation));
        let checked = match protection.admit(&format!("sub:{}", principal.subject), 1, mutations).await {
            Ok(()) => prepared.map(|_| ()),
            Err(err) => Err(err),
        };
        checked.map_err(|err| {
            let mut error = err.to_request_error();
            stamp(&mut error, &self.request_id);
            error
        })
    }

    /// Starts subscription `id`, held by the connection until it ends or is completed.
    fn start(
        &mut self,
        id: String,
        principal: Principal,
        request: Request,
        bytes: usize,
        out: &mpsc::Sender<Outbound>,
        running: &mut JoinSet<(String, u64)>,
    ) {
        let context = RequestContext { principal: Some(principal), traceparent: None };
        // Loaders read past the cache (a subscription's fields are fresh) and are made on
        // first use; the cache itself is there for `assignments`, which takes an offer
        // this process just committed from L1 (checked by version) instead of querying
        // for it.
        let request = request.data(context).data(SubscriptionLoaders::default()).data(self.state.cache.clone());
        let cancel = CancellationToken::new();
        self.serial += 1;
        self.held_bytes += bytes;
        self.subscriptions.insert(id.clone(), Open { serial: self.serial, cancel: cancel.clone(), bytes });
        let task = Subscription {
            state: self.state.clone(),
            protocol: self.protocol,
            id,
            serial: self.serial,
            request_id: self.request_id.clone(),
            out: out.clone(),
            outbound_budget: self.outbound_budget.clone(),
            cancel,
        };
        running.spawn(task.run(request));
    }

    /// `complete`: ends subscription `id`, if it is open.
    fn on_complete(&mut self, id: Option<&str>) {
        if let Some(id) = id {
            self.close_subscription(id);
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

    /// Queues one of the connection's own messages (they hold no share of the outbound
    /// budget); `false` once the writer is gone.
    async fn send(&self, out: &mpsc::Sender<Outbound>, message: &ServerMessage<'_>) -> bool {
        match message.encode(self.protocol) {
            Some(text) => out.send(unbudgeted(text)).await.is_ok(),
            None => true,
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
