//! GraphQL over HTTP: POST (single or batched JSON) and GET (queries only), plus GraphiQL.
//!
//! The handler owns the request envelope: it authenticates the bearer token, enforces the
//! body and batch limits, creates the per-request DataLoaders, applies the request
//! timeout, and makes sure every error leaves with an `extensions.code` and the request
//! id. Responses are `application/json` with status 200 for anything GraphQL executed
//! (errors included, as the GraphQL-over-HTTP spec prescribes for that media type);
//! envelope failures use 4xx/5xx with the same JSON error shape.

use async_graphql::{
    BatchRequest, BatchResponse, Request, ServerError,
    http::GraphiQLSource,
    parser::types::{DocumentOperations, OperationType},
};
use axum::{
    body::Bytes,
    extract::{FromRequestParts, State, rejection::BytesRejection, ws::WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use serde_json::json;
use taskwire_domain::{ErrorCode, Principal};
use tracing::Instrument;

use super::AppState;
use crate::{
    auth::bearer_token,
    error::ApiError,
    graphql::{Loaders, RequestContext},
};

const REQUEST_ID_HEADER: &str = "x-request-id";

/// `POST /graphql`: a JSON request or an array of them.
pub async fn post(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let request_id = request_id(&headers);
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let err = ApiError::PayloadTooLarge { limit: state.limits.max_body_bytes };
            return envelope_error(&request_id, StatusCode::PAYLOAD_TOO_LARGE, err.code(), &err.message());
        }
        Err(rejection) => {
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
    execute(state, &headers, request_id, batch).await
}

/// `GET /graphql`: a WebSocket upgrade (subscriptions), or
/// `?query=…&variables=…&operationName=…` for queries only.
pub async fn get(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let headers = parts.headers.clone();
    if super::ws::is_upgrade(&headers) {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(ws) => super::ws::upgrade(state, &headers, ws),
            Err(rejection) => rejection.into_response(),
        };
    }
    let uri = parts.uri;
    let request_id = request_id(&headers);
    let mut request = match async_graphql::http::parse_query_string(uri.query().unwrap_or_default()) {
        Ok(request) => request,
        Err(e) => {
            let message = format!("the query string is not a GraphQL request: {e}");
            return envelope_error(&request_id, StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, &message);
        }
    };
    if !is_query(&mut request) {
        let message = "only queries may be sent with GET; use POST for mutations";
        return envelope_error(&request_id, StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadUserInput, message);
    }
    execute(state, &headers, request_id, BatchRequest::Single(request)).await
}

/// `GET /graphiql`.
pub async fn graphiql() -> impl IntoResponse {
    Html(GraphiQLSource::build().endpoint("/graphql").subscription_endpoint("/graphql").title("Taskwire").finish())
}

async fn execute(state: AppState, headers: &HeaderMap, request_id: String, batch: BatchRequest) -> Response {
    let principal = match authenticate(&state, headers) {
        Ok(principal) => principal,
        Err(err) => return envelope_error(&request_id, StatusCode::OK, err.code(), &err.message()),
    };
    let operations = match &batch {
        BatchRequest::Single(_) => 1,
        BatchRequest::Batch(requests) => requests.len(),
    };
    if operations > state.limits.max_batch_operations {
        let err = ApiError::BatchTooLarge { limit: state.limits.max_batch_operations };
        return envelope_error(&request_id, StatusCode::BAD_REQUEST, err.code(), &err.message());
    }
    let span = tracing::info_span!(
        "graphql",
        request_id = %request_id,
        subject = principal.as_ref().map(|p| p.subject.as_str()).unwrap_or("-"),
        operation = operation_name(&batch),
    );
    let incoming_trace = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let traceparent = crate::telemetry::traceparent(incoming_trace);
    let context = RequestContext { principal, request_id: request_id.clone(), traceparent: Some(traceparent) };
    // One loader set per operation: a cached task from one operation of a batch must not
    // be served to a later one that runs after a mutation changed it.
    let batch = match batch {
        BatchRequest::Single(r) => BatchRequest::Single(r.data(Loaders::new(&state.store))),
        BatchRequest::Batch(rs) => {
            BatchRequest::Batch(rs.into_iter().map(|r| r.data(Loaders::new(&state.store))).collect())
        }
    }
    .data(context);
    let timeout = state.limits.request_timeout;
    let result = tokio::time::timeout(timeout, state.schema.execute_batch(batch)).instrument(span).await;
    let Ok(mut response) = result else {
        tracing::warn!(request_id = %request_id, ?timeout, "request timed out");
        let message = "the request took too long; retry later";
        return envelope_error(&request_id, StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, message);
    };
    match &mut response {
        BatchResponse::Single(r) => r.errors.iter_mut().for_each(|e| stamp(e, &request_id)),
        BatchResponse::Batch(rs) => rs.iter_mut().flat_map(|r| r.errors.iter_mut()).for_each(|e| stamp(e, &request_id)),
    }
    let mut http = axum::Json(response).into_response();
    set_request_id(&mut http, &request_id);
    http
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

/// Whether the request's selected operation is a query (GET must not mutate).
fn is_query(request: &mut Request) -> bool {
    let name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else {
        // Let execution report the syntax error with its code.
        return true;
    };
    let operation = match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => {
            ops.iter().find(|(n, _)| n.as_str() == name).map(|(_, op)| op)
        }
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    };
    operation.is_none_or(|op| op.node.ty == OperationType::Query)
}

fn operation_name(batch: &BatchRequest) -> String {
    match batch {
        BatchRequest::Single(r) => r.operation_name.clone().unwrap_or_else(|| "-".into()),
        BatchRequest::Batch(rs) => format!("batch[{}]", rs.len()),
    }
}

/// Every error leaves with a code (parse and validation errors are bad input) and the
/// request id.
pub(crate) fn stamp(error: &mut ServerError, request_id: &str) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", ErrorCode::BadUserInput.as_str());
    }
    extensions.set("requestId", request_id);
}

/// A request-level failure in the GraphQL error shape.
fn envelope_error(request_id: &str, status: StatusCode, code: ErrorCode, message: &str) -> Response {
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

/// The caller's `x-request-id` when it is short and printable, else a fresh one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}
