/**
 * The stable codes the server sends (README, Authentication and roles: Errors; Live updates
 * over WebSocket: close codes). Branch on these, never on message text.
 *
 * `ErrorCode` mirrors `ErrorCode::ALL` in domain/src/error.rs; the crate's contract test
 * fails when the two differ. `WsCloseCode` mirrors api/src/http/ws/close.rs.
 */

/** Every `extensions.code` a GraphQL error can carry. */
export const ErrorCode = {
  /** No valid credentials: missing, expired or malformed token. Sign in again. */
  Unauthenticated: "UNAUTHENTICATED",
  /** Authenticated, but the token's roles do not allow the operation. */
  Forbidden: "FORBIDDEN",
  /** Missing, or not visible to the caller (the server does not say which). */
  NotFound: "NOT_FOUND",
  /** An input broke a rule; `extensions.field` names it (`input.queue`, `inputs[3].priority`). */
  BadUserInput: "BAD_USER_INPUT",
  /** The operation does not fit the current state (e.g. cancelling a finished task). */
  Conflict: "CONFLICT",
  /** An idempotency key was reused with a different input. */
  IdempotencyConflict: "IDEMPOTENCY_CONFLICT",
  /** A worker call on a task the caller no longer holds: drop the work, do not retry. */
  LeaseLost: "LEASE_LOST",
  /** The caller's budget is spent; retry after `extensions.retryAfterMs`. */
  RateLimited: "RATE_LIMITED",
  /** The operation nests deeper than the server allows. */
  QueryTooDeep: "QUERY_TOO_DEEP",
  /** The operation (or the whole document) costs more than the server allows. */
  QueryTooComplex: "QUERY_TOO_COMPLEX",
  /** The operation uses more aliases than the server allows. */
  TooManyAliases: "TOO_MANY_ALIASES",
  /** A batched HTTP request holds more operations than allowed. */
  BatchTooLarge: "BATCH_TOO_LARGE",
  /** The request body is larger than allowed. */
  PayloadTooLarge: "PAYLOAD_TOO_LARGE",
  /** An automatic persisted query hash the server does not know; send the query with it. */
  PersistedQueryNotFound: "PERSISTED_QUERY_NOT_FOUND",
  /** A dependency is down or saturated; retrying later can succeed. */
  Unavailable: "UNAVAILABLE",
  /** A server bug; quote `extensions.requestId` to an operator. */
  Internal: "INTERNAL",
} as const;

/** One of the codes in {@link ErrorCode}. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * `extensions.reason` of an `UNAVAILABLE` error that ends a `taskEvents` stream whose
 * subscriber fell too far behind: resubscribe (`taskUpdated` resumes with `afterSeq`).
 */
export const SLOW_SUBSCRIBER = "SLOW_SUBSCRIBER";

/** The extensions every Taskwire GraphQL error carries. */
export interface TaskwireErrorExtensions {
  code: ErrorCode;
  /** Equals the `x-request-id` response header; quote it to an operator. */
  requestId?: string;
  /** With `BAD_USER_INPUT`: the input field at fault. */
  field?: string;
  /** With `RATE_LIMITED`: milliseconds until a retry can succeed. */
  retryAfterMs?: number;
  /** With `UNAVAILABLE` at the end of a stream: {@link SLOW_SUBSCRIBER}. */
  reason?: string;
}

const CODES: ReadonlySet<string> = new Set(Object.values(ErrorCode));

/** Whether `value` is one of the codes the server sends. */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && CODES.has(value);
}

/** The `extensions.code` of a GraphQL error, or `undefined` when it carries none we know. */
export function errorCode(error: { extensions?: Record<string, unknown> | null | undefined }): ErrorCode | undefined {
  const code = error.extensions?.["code"];
  return isErrorCode(code) ? code : undefined;
}

/** Every close code the server's WebSocket endpoint sends. */
export const WsCloseCode = {
  /** The server is shutting down: reconnect (to another instance). */
  GoingAway: 1001,
  /** A message larger than `TASKWIRE_WS_MAX_MESSAGE_BYTES`: send large operations over HTTP. */
  MessageTooBig: 1009,
  /** Not valid protocol JSON, a binary frame, or a subscription id that is too long. */
  BadRequest: 4400,
  /** `subscribe` before `connection_ack`, or the token expired (reason `Token expired`): get a new token. */
  Unauthorized: 4401,
  /** `connection_init` without a valid token. */
  Forbidden: 4403,
  /** No `connection_init` within `TASKWIRE_WS_INIT_TIMEOUT_MS`. */
  ConnectionInitialisationTimeout: 4408,
  /** A `subscribe` id that is already active. */
  SubscriberAlreadyExists: 4409,
  /**
   * A second `connection_init`; too many connections for the token's subject; too many
   * refused tokens from the address. Transient: back off, then reconnect.
   */
  TooManyRequests: 4429,
} as const;

/** One of the codes in {@link WsCloseCode}. */
export type WsCloseCode = (typeof WsCloseCode)[keyof typeof WsCloseCode];
