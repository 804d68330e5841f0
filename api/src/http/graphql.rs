//! GraphQL over HTTP: POST (single or batched JSON) and GET (queries only).
//!
//! The handler owns the request envelope: it authenticates the bearer token, enforces the
//! body and batch limits, resolves persisted queries and applies the query limits and
//! the caller's rate limit ([`super::protect`]), creates the per-operation DataLoaders,
//! applies the request timeout, counts and times every operation, and makes sure every
//! error leaves with an `extensions.code` and the request id. Responses are `application/json` with status 200 for anything GraphQL executed
//! (errors included, as the GraphQL-over-HTTP spec prescribes for that media type);
//! envelope failures use 4xx/5xx with the same JSON error shape.

use std::net::SocketAddr;

use async_graphql::{BatchRequest, BatchResponse, Request, ServerError, parser::types::OperationType};
use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, State, ws::WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use taskwire_domain::{ErrorCode, Principal};
use tracing::Instrument;

use super::{AppState, protect::Operation};
use crate::{
    auth::bearer_token,
    error::ApiError,
    graphql::{Loaders, RequestContext},
};

const REQUEST_ID_HEADER: &str = "x-request-id";

/// `POST /graphql`: a JSON request or an array of them.
///
/// The body must arrive within `TASKWIRE_BODY_READ_TIMEOUT_MS` of the headers (else 408):
/// a client trickling its body would otherwise hold the connection and its buffer.
pub(crate) async fn post(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map_or(UNKNOWN_PEER, |c| c.0);
    let headers = request.headers().clone();
    let request_id = request_id(&headers);
    let read = tokio::time::timeout(state.limits.body_read_timeout, Bytes::from_request(request, &state)).await;
    let body = match read {
        Ok(Ok(body)) => body,
        Err(_) => {
            state.metrics.http_timeouts.with_label_values(&["body"]).inc();
            let message = "the request body did not arrive in time";
            let mut response =
                envelope_error(&request_id, StatusCode::REQUEST_TIMEOUT, ErrorCode::BadUserInput, message);
            // The rest of the body may still come: the connection cannot carry another request.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let err = ApiError::PayloadTooLarge { limit: state.limits.max_body_bytes };
            return envelope_error(&request_id, StatusCode::PAYLOAD_TOO_LARGE, err.code(), &err.message());
        }
        Ok(Err(rejection)) => {
            return envelope_error(
                &request_id,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &rejection.body_text(),
            );
        }
    };
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => {
            let message = format!("the body is not a GraphQL request: {e}");
            return envelope_error(&request_id, StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, &message);
        }
    };
    if super::sse::wants_event_stream(&headers) {
        return event_stream(state, &headers, peer, request_id, batch).await;
    }
    let transport = Transport::Post { json: is_json(&headers) };
    execute(state, &headers, peer, request_id, batch, transport).await
}

/// How a request came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// GET with the request in the query string: queries only.
    Get,
    /// POST; `json` when its `Content-Type` is one of [`JSON_MEDIA_TYPES`].
    Post { json: bool },
}

/// Media types a POST carrying a mutation must declare (GraphQL over HTTP). Any other
/// type (`text/plain`, forms) is one a browser sends cross-site without a CORS
/// preflight, so a page elsewhere could make a signed-in browser run mutations.
const JSON_MEDIA_TYPES: [&str; 3] =
    ["application/json", "application/graphql-response+json", "application/graphql+json"];

/// Whether the request's `Content-Type` is a JSON type of [`JSON_MEDIA_TYPES`]
/// (parameters such as `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim();
    JSON_MEDIA_TYPES.iter().any(|media_type| essence.eq_ignore_ascii_case(media_type))
}

/// `GET /graphql`: a WebSocket upgrade (subscriptions), or
/// `?query=…&variables=…&operationName=…&extensions=…` for queries only (and persisted
/// queries by hash).
pub(crate) async fn get(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let headers = parts.headers.clone();
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(UNKNOWN_PEER, |c| c.0);
    if super::ws::is_upgrade(&headers) {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(ws) => super::ws::upgrade(state, &headers, peer, ws),
            Err(rejection) => rejection.into_response(),
        };
    }
    let uri = parts.uri;
    let request_id = request_id(&headers);
    let request = match parse_query_string(&uri) {
        Ok(request) => request,
        Err(e) => {
            let message = format!("the query string is not a GraphQL request: {e}");
            return envelope_error(&request_id, StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, &message);
        }
    };
    if super::sse::wants_event_stream(&headers) {
        return event_stream(state, &headers, peer, request_id, BatchRequest::Single(request)).await;
    }
    execute(state, &headers, peer, request_id, BatchRequest::Single(request), Transport::Get).await
}

/// One operation as an event stream ([`super::sse`]); a batch or a request without a
/// document is refused as over plain HTTP.
async fn event_stream(
    state: AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    request_id: String,
    batch: BatchRequest,
) -> Response {
    let BatchRequest::Single(request) = batch else {
        let message = "an event stream carries one operation, not a batch";
        return envelope_error(&request_id, StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, message);
    };
    if request.query.trim().is_empty() && !request.extensions.0.contains_key("persistedQuery") {
        let message = "the request has no query (and no extensions.persistedQuery)";
        return envelope_error(&request_id, StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, message);
    }
    super::sse::stream(state, headers, peer, request_id, request).await
}

/// The parameters of a GET request (GraphQL over HTTP): `variables` and `extensions`
/// are JSON texts.
#[derive(Debug, serde::Deserialize)]
struct GetParameters {
    #[serde(default)]
    query: String,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

/// The GraphQL request in a GET query string. async-graphql's own parser reads the
/// operation name from `operation_name`, not the standard `operationName`.
fn parse_query_string(uri: &axum::http::Uri) -> Result<Request, String> {
    let axum::extract::Query(parameters) =
        axum::extract::Query::<GetParameters>::try_from_uri(uri).map_err(|e| e.body_text())?;
    let json = |name: &str, text: Option<String>| -> Result<Option<serde_json::Value>, String> {
        text.filter(|text| !text.is_empty())
            .map(|text| serde_json::from_str(&text).map_err(|e| format!("{name} is not JSON: {e}")))
            .transpose()
    };
    let mut request = serde_json::Map::new();
    request.insert("query".into(), parameters.query.into());
    if let Some(name) = parameters.operation_name.filter(|name| !name.is_empty()) {
        request.insert("operationName".into(), name.into());
    }
    if let Some(variables) = json("variables", parameters.variables)? {
        request.insert("variables".into(), variables);
    }
    if let Some(extensions) = json("extensions", parameters.extensions)? {
        request.insert("extensions".into(), extensions);
    }
    serde_json::from_value(serde_json::Value::Object(request)).map_err(|e| e.to_string())
}

const UNKNOWN_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Authenticates, checks every operation (persisted query, limits), spends the caller's
/// rate budget, then executes the operations in order, each with its own loaders.
async fn execute(
    state: AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    request_id: String,
    batch: BatchRequest,
    transport: Transport,
) -> Response {
    let principal = match authenticate(&state, headers) {
        Ok(principal) => principal,
        Err(err) => {
            if let Err(limited) = state.protection.admit_invalid_token(peer.ip()).await {
                return rate_limited(&request_id, &limited);
            }
            return envelope_error(&request_id, StatusCode::OK, err.code(), &err.message());
        }
    };
    let (requests, batched) = match batch {
        BatchRequest::Single(r) => (vec![r], false),
        BatchRequest::Batch(rs) => (rs, true),
    };
    if requests.len() > state.limits.max_batch_operations {
        let err = ApiError::BatchTooLarge { limit: state.limits.max_batch_operations };
        return envelope_error(&request_id, StatusCode::BAD_REQUEST, err.code(), &err.message());
    }
    // A body without a document and without a persisted query's hash is not a GraphQL
    // request at all (README, Errors: 400), not a document that fails to parse.
    if requests.iter().any(|r| r.query.trim().is_empty() && !r.extensions.0.contains_key("persistedQuery")) {
        let message = "the request has no query (and no extensions.persistedQuery)";
        return envelope_error(&request_id, StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, message);
    }
    let mut prepared = Vec::with_capacity(requests.len());
    for mut request in requests {
        let outcome = state.protection.prepare(&mut request).await;
        prepared.push(outcome.map(|ty| (request, ty)));
    }
    if transport == Transport::Get
        && prepared.iter().any(|p| matches!(p, Ok((_, Some(op))) if op.ty != OperationType::Query))
    {
        let message = "only queries may be sent with GET; use POST for mutations";
        return envelope_error(&request_id, StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadUserInput, message);
    }
    if transport == (Transport::Post { json: false })
        && prepared.iter().any(|p| matches!(p, Ok((_, Some(op))) if op.ty == OperationType::Mutation))
    {
        let message = "mutations must be sent with Content-Type: application/json";
        return envelope_error(&request_id, StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::BadUserInput, message);
    }
    // Anonymous callers can do nothing but fail; they share a budget per address.
    let subject = match &principal {
        Some(p) => format!("sub:{}", p.subject),
        None => format!("ip:{}", peer.ip()),
    };
    let mutations =
        prepared.iter().filter(|p| matches!(p, Ok((_, Some(op))) if op.ty == OperationType::Mutation)).count();
    if let Err(err) = state.protection.admit(&subject, prepared.len() as u32, mutations as u32).await {
        return rate_limited(&request_id, &err);
    }
    let span = tracing::info_span!(
        "graphql",
        request_id = %request_id,
        subject = principal.as_ref().map(|p| p.subject.as_str()).unwrap_or("-"),
        operation = operation_name(&prepared),
    );
    let incoming_trace = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let traceparent = crate::telemetry::request_traceparent(&span, incoming_trace);
    let context = RequestContext { principal, traceparent: Some(traceparent) };
    let run = async {
        let mut responses = Vec::with_capacity(prepared.len());
        for outcome in prepared {
            let response = match outcome {
                // One loader set per operation: a cached task from one operation of a batch
                // must not be served to a later one that runs after a mutation changed it.
                Ok((request, operation)) => {
                    let ty = operation.as_ref().map(|op| op.ty);
                    let request = request.data(Loaders::new(&state.store, &state.cache)).data(context.clone());
                    let started = std::time::Instant::now();
                    let response = state.schema.execute(request).await;
                    let elapsed = started.elapsed();
                    // Label values are a bounded budget: only names of operations that
                    // passed validation, sent by authenticated callers, may take one.
                    let name =
                        operation.and_then(|op| op.name).filter(|_| context.principal.is_some() && executed(&response));
                    let name = state.metrics.operation_label(name.as_deref());
                    record(&state, &name, ty, &response, elapsed);
                    response
                }
                Err(err) => {
                    let response = async_graphql::Response::from_errors(vec![err.to_request_error()]);
                    record(&state, "-", None, &response, std::time::Duration::ZERO);
                    response
                }
            };
            responses.push(response);
        }
        responses
    };
    let timeout = state.limits.request_timeout;
    let Ok(mut responses) = tokio::time::timeout(timeout, run).instrument(span).await else {
        tracing::warn!(request_id = %request_id, ?timeout, "request timed out");
        let message = "the request took too long; retry later";
        return envelope_error(&request_id, StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, message);
    };
    responses.iter_mut().flat_map(|r| r.errors.iter_mut()).for_each(|e| stamp(e, &request_id));
    let response = match (batched, responses.pop()) {
        (false, Some(single)) => BatchResponse::Single(single),
        (_, last) => BatchResponse::Batch(responses.into_iter().chain(last).collect()),
    };
    let mut http = axum::Json(response).into_response();
    set_request_id(&mut http, &request_id);
    http
}

/// Whether the operation ran: it produced data, or a resolver failed (an error with a
/// path). Parse and validation failures carry neither.
fn executed(response: &async_graphql::Response) -> bool {
    response.data != async_graphql::Value::Null || response.errors.iter().any(|e| !e.path.is_empty())
}

/// A 429 for a refused rate limit, with `Retry-After` in whole seconds.
pub(super) fn rate_limited(request_id: &str, err: &ApiError) -> Response {
    let mut response = envelope_error_with(request_id, StatusCode::TOO_MANY_REQUESTS, err);
    if let ApiError::RateLimited { retry_after_ms } = err
        && let Ok(value) = HeaderValue::from_str(&retry_after_ms.div_ceil(1000).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Counts and times one operation by name, type and result code.
fn record(
    state: &AppState,
    name: &str,
    ty: Option<OperationType>,
    response: &async_graphql::Response,
    elapsed: std::time::Duration,
) {
    let ty = match ty {
        Some(OperationType::Query) => "query",
        Some(OperationType::Mutation) => "mutation",
        Some(OperationType::Subscription) => "subscription",
        None => "-",
    };
    let code = response
        .errors
        .first()
        .map(|e| {
            e.extensions
                .as_ref()
                .and_then(|ext| ext.get("code"))
                .and_then(|code| match code {
                    async_graphql::Value::String(code) => Some(code.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| ErrorCode::BadUserInput.as_str().to_owned())
        })
        .unwrap_or_else(|| "OK".to_owned());
    state.metrics.operations.with_label_values(&[name, ty, &code]).inc();
    if !elapsed.is_zero() {
        state.metrics.operation_duration.with_label_values(&[name, ty]).observe(elapsed.as_secs_f64());
    }
}

/// Verifies the bearer token, if any. No header means anonymous (resolvers then answer
/// `UNAUTHENTICATED`); a header with a bad token fails the whole request.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ApiError::InvalidToken)?;
    let token = bearer_token(value).map_err(|e| {
        tracing::info!(reason = %e, "rejected authorization header");
        ApiError::InvalidToken
    })?;
    state.keys.verify(token).map(Some).map_err(|e| {
        tracing::info!(reason = %e, "rejected token");
        ApiError::InvalidToken
    })
}

fn operation_name(prepared: &[Result<(Request, Option<Operation>), ApiError>]) -> String {
    match prepared {
        [Ok((_, Some(Operation { name: Some(name), .. })))] => name.clone(),
        [Ok((r, _))] => r.operation_name.clone().unwrap_or_else(|| "-".into()),
        [_] => "-".into(),
        many => format!("batch[{}]", many.len()),
    }
}

/// Every error leaves with a code (parse and validation errors are bad input) and the
/// request id.
pub(crate) fn stamp(error: &mut ServerError, request_id: &str) {
    let field = invalid_argument_field(&error.message);
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", ErrorCode::BadUserInput.as_str());
    }
    if let Some(field) = field
        && extensions.get("field").is_none()
    {
        extensions.set("field", field);
    }
    extensions.set("requestId", request_id);
}

/// The input an error of async-graphql's validation is about (`Invalid value for argument
/// "input.runAt", …`: a malformed scalar, a missing field), in the notation of this API's
/// own `extensions.field` (`inputs[1].queue`), so every invalid input names its field.
fn invalid_argument_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("Invalid value for argument \"")?;
    let path = &rest[..rest.find('"')?];
    let mut field = String::new();
    for segment in path.split('.') {
        if !field.is_empty() && !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            field.push('[');
            field.push_str(segment);
            field.push(']');
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(segment);
        }
    }
    Some(field)
}

/// A request-level failure of `err`, with its extensions (e.g. `retryAfterMs`).
fn envelope_error_with(request_id: &str, status: StatusCode, err: &ApiError) -> Response {
    let mut error = err.to_request_error();
    stamp(&mut error, request_id);
    let body = json!({ "errors": [error] });
    let mut response = (status, axum::Json(body)).into_response();
    set_request_id(&mut response, request_id);
    response
}

/// A request-level failure in the GraphQL error shape.
pub(super) fn envelope_error(request_id: &str, status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = json!({
        "errors": [{ "message": message, "extensions": { "code": code.as_str(), "requestId": request_id } }]
    });
    let mut response = (status, axum::Json(body)).into_response();
    set_request_id(&mut response, request_id);
    response
}

fn set_request_id(response: &mut Response, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
}

/// The caller's `x-request-id` when it is short and printable, else a fresh one: a
/// random UUID from the thread's user-space generator. Request ids are labels, not
/// secrets, and asking the kernel for randomness on every request showed in the
/// cached-read profile (docs/BENCHMARKS.md).
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Builder::from_random_bytes(rand::random()).into_uuid().simple().to_string())
}

#[cfg(test)]
mod tests {
    use super::invalid_argument_field;

    #[test]
    fn validation_errors_name_their_field_in_the_api_notation() {
        let message = r#"Invalid value for argument "input.runAt", expected type "DateTime""#;
        assert_eq!(invalid_argument_field(message).as_deref(), Some("input.runAt"));
        let listed = r#"Invalid value for argument "inputs.1.deadline", expected type "DateTime""#;
        assert_eq!(invalid_argument_field(listed).as_deref(), Some("inputs[1].deadline"));
        assert_eq!(invalid_argument_field("Unknown field \"x\" on type \"Query\"."), None);
    }
}
