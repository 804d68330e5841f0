//! GraphQL over Server-Sent Events: the `graphql-sse` protocol's *distinct connections*
//! mode, for clients and networks where WebSockets are blocked.
//!
//! `POST /graphql` (JSON body) or `GET /graphql?query=…` with `Accept: text/event-stream`
//! answers with an event stream: one `next` event per result, then `complete`. The rules
//! are a WebSocket subscription's:
//!
//! | situation | outcome |
//! |---|---|
//! | no valid token in `Authorization` | 401, `UNAUTHENTICATED` |
//! | a persisted-query miss, a query over the limits | a `next` with the error (`PERSISTED_QUERY_NOT_FOUND`, `QUERY_TOO_COMPLEX`, …), then `complete` |
//! | a batch, or no query | 400, `BAD_USER_INPUT` |
//! | the caller's operations budget is spent | 429, `RATE_LIMITED`, `Retry-After` |
//! | the process holds `TASKWIRE_WS_MAX_CONNECTIONS` streams and sockets | 503 |
//! | the subject holds `TASKWIRE_WS_MAX_CONNECTIONS_PER_SUBJECT` of them | 429, `RATE_LIMITED` |
//! | the token expires | a `next` with an `UNAUTHENTICATED` error, then `complete` |
//! | server shutdown | `complete` (resume with `afterSeq`) |
//!
//! Streams and WebSockets share the two connection caps: each is one open subscription
//! channel holding a subject's place. Refusals answer the JSON error shape of every other
//! path. A stream's memory is bounded like a socket's: the hub's per-subscriber buffer
//! ends a subscriber that cannot keep up (`SLOW_SUBSCRIBER`), and nothing is queued here
//! beyond what the socket takes.

use std::{convert::Infallible, net::SocketAddr, sync::atomic::Ordering, time::SystemTime};

use async_graphql::{Request, ServerError, parser::types::OperationType};
use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::{StreamExt, stream};
use taskwire_domain::ErrorCode;

use super::{
    AppState,
    graphql::{envelope_error, rate_limited, stamp},
    ws::SubjectSlot,
};
use crate::{
    auth::bearer_token,
    graphql::{RequestContext, SubscriptionLoaders},
};

/// Whether the client asks for an event stream (`Accept: text/event-stream`).
pub(crate) fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|media| {
        media.split(';').next().is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
    })
}

/// Runs `request` as an event stream, or refuses it with the JSON error shape.
pub(crate) async fn stream(
    state: AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    request_id: String,
    mut request: Request,
) -> Response {
    let verified = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| bearer_token(v).ok())
        .map(|token| state.keys.verify_with_expiry(token));
    let (principal, expires) = match verified {
        Some(Ok(verified)) => verified,
        Some(Err(e)) => {
            tracing::info!(reason = %e, "rejected event-stream token");
            if let Err(limited) = state.protection.admit_invalid_token(peer.ip()).await {
                return rate_limited(&request_id, &limited);
            }
            return unauthenticated(&request_id);
        }
        None => return unauthenticated(&request_id),
    };
    let operation = match state.protection.prepare(&mut request).await {
        Ok(operation) => operation,
        // The protocol wants errors about the request itself inside an accepted stream.
        Err(err) => {
            let mut error = err.to_request_error();
            stamp(&mut error, &request_id);
            let refusal = stream::iter([
                event("next", &serde_json::json!({ "errors": [error] })),
                Event::default().event("complete").data(""),
            ]);
            return sse_response(refusal.map(Ok::<_, Infallible>), &state, &request_id);
        }
    };
    let mutations = u32::from(matches!(&operation, Some(op) if op.ty == OperationType::Mutation));
    if let Err(err) = state.protection.admit(&format!("sub:{}", principal.subject), 1, mutations).await {
        return rate_limited(&request_id, &err);
    }
    let place = match Place::take(&state, &principal.subject) {
        Ok(place) => place,
        Err(Full::Process) => {
            state.metrics.ws_refusals.with_label_values(&["connections"]).inc();
            let message = "too many open subscription connections";
            return envelope_error(&request_id, StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, message);
        }
        Err(Full::Subject) => {
            state.metrics.ws_refusals.with_label_values(&["subject_connections"]).inc();
            let message = "Too many connections for this subject";
            return envelope_error(&request_id, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, message);
        }
    };

    let context = RequestContext { principal: Some(principal), traceparent: None };
    let request = request.data(context).data(SubscriptionLoaders::default()).data(state.cache.clone());
    let stamped = request_id.clone();
    let results = state.schema.execute_stream(request).map(move |mut response| {
        response.errors.iter_mut().for_each(|e| stamp(e, &stamped));
        event("next", &response)
    });
    // The stream ends at shutdown (graceful shutdown waits for open responses) and when
    // the token expires, which the client hears of before `complete`.
    let shutdown = state.shutdown.clone();
    let expired = request_id.clone();
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Option<Event>>();
    let ending = async move {
        let last = tokio::select! {
            () = shutdown.cancelled() => None,
            () = until(expires) => {
                let mut error = ServerError::new("the token expired", None);
                error.extensions.get_or_insert_with(Default::default).set("code", ErrorCode::Unauthenticated.as_str());
                stamp(&mut error, &expired);
                Some(event("next", &serde_json::json!({ "errors": [error] })))
            }
        };
        let _ = end_tx.send(last);
    };
    let results = results.take_until(ending);
    let tail = stream::once(async move { end_rx.await.ok().flatten() }).filter_map(std::future::ready);
    let complete = stream::once(async { Event::default().event("complete").data("") });
    let events = results.chain(tail).chain(complete).map(move |event| {
        // The place is given back when the response body, and so this closure, is dropped.
        let _ = &place;
        Ok::<_, Infallible>(event)
    });
    sse_response(events, &state, &request_id)
}

fn sse_response(
    events: impl futures::Stream<Item = Result<Event, Infallible>> + Send + 'static,
    state: &AppState,
    request_id: &str,
) -> Response {
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(state.ws.keepalive)).into_response();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    // Proxies must not buffer an event stream.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn unauthenticated(request_id: &str) -> Response {
    let message = "an event stream needs a valid token in the Authorization header";
    envelope_error(request_id, StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, message)
}

/// One SSE event carrying `data` as JSON.
fn event(name: &'static str, data: &impl serde::Serialize) -> Event {
    Event::default().event(name).json_data(data).unwrap_or_else(|e| {
        tracing::error!(error = %e, "an event-stream result did not serialize");
        Event::default()
            .event(name)
            .data(r#"{"errors":[{"message":"internal error","extensions":{"code":"INTERNAL"}}]}"#)
    })
}

async fn until(at: Option<SystemTime>) {
    match at.map(|at| at.duration_since(SystemTime::now()).unwrap_or_default()) {
        Some(remaining) => tokio::time::sleep(remaining).await,
        None => std::future::pending().await,
    }
}

/// A stream's place under the process's and its subject's connection caps, shared with
/// WebSockets; given back when dropped.
struct Place {
    state: AppState,
    _subject: SubjectSlot,
}

/// Which cap refused a stream.
enum Full {
    Process,
    Subject,
}

impl Place {
    fn take(state: &AppState, subject: &str) -> Result<Place, Full> {
        // Counted first, then checked: two streams racing for the last place cannot both
        // take it.
        if state.ws_open.fetch_add(1, Ordering::AcqRel) >= state.ws.max_connections {
            state.ws_open.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Process);
        }
        let Some(slot) = state.ws_subjects.acquire(subject, state.ws.max_connections_per_subject) else {
            state.ws_open.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Subject);
        };
        state.metrics.sse_streams.inc();
        Ok(Place { state: state.clone(), _subject: slot })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.state.metrics.sse_streams.dec();
        self.state.ws_open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_event_stream_accept_header_asks_for_one() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).expect("a header value"));
            wants_event_stream(&headers)
        };
        assert!(with("text/event-stream"));
        assert!(with("application/json, Text/Event-Stream; q=0.9"));
        assert!(!with("application/json"));
        assert!(!with("text/event-streams"));
        assert!(!wants_event_stream(&HeaderMap::new()));
    }
}
