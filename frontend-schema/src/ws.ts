/**
 * A graphql-ws client set up for Taskwire (README, Live updates over WebSocket).
 *
 * - The token is read from a function at every connection attempt, so a reconnect after
 *   a refresh presents the new token.
 * - `4401` (the token expired, or `subscribe` came before the ack) and `4403` (a refused
 *   token) are never retried: a reconnect with the same credentials would be refused
 *   again. The subscriptions end with the close event; get a new token and resubscribe.
 * - `4429` (too many connections for the token's subject, too many refused tokens from
 *   the address) is transient: each subscription waits, backing off with jitter, and
 *   subscribes again on a new connection. graphql-ws itself treats `4429` as fatal, so
 *   this happens one level up, per subscription.
 * - Anything else (a dropped network, `1001` at a server restart, `4408`) is retried
 *   with exponential backoff and jitter, and the subscriptions carry on.
 */
import { createClient } from "graphql-ws";
import type { Client, ClientOptions, FormattedExecutionResult, Sink, SubscribePayload } from "graphql-ws";

import { WsCloseCode } from "./codes.js";

/** Where the current token comes from; `null`/`undefined` for none. */
export type TokenSource = () => string | null | undefined | Promise<string | null | undefined>;

/** What {@link createTaskwireWsClient} needs. */
export interface TaskwireWsOptions {
  /** `ws(s)://host:port/graphql`. */
  url: string;
  /** Read at every connection attempt. */
  token: TokenSource;
  /** A WebSocket implementation where there is no global one (Node: the `ws` package). */
  webSocketImpl?: unknown;
  /** Reconnection attempts in a row before subscriptions fail (default: unlimited). */
  retryAttempts?: number;
  /** Resubscriptions in a row after `4429` before a subscription fails (default: 10). */
  rateLimitedAttempts?: number;
  /** The longest wait between two attempts, in ms (default 30,000). */
  maxRetryDelayMs?: number;
  /** graphql-ws event listeners (connected, closed, …). */
  on?: ClientOptions["on"];
}

/** A close event, as graphql-ws hands it to sinks. */
export function isCloseEvent(value: unknown): value is { code: number; reason: string } {
  return typeof value === "object" && value !== null && "code" in value && "reason" in value;
}

/** Whether a connection that ended with `errorOrClose` should be made again. */
export function shouldReconnect(errorOrClose: unknown): boolean {
  if (!isCloseEvent(errorOrClose)) {
    // A network error (no close code): the server may be back shortly.
    return true;
  }
  return errorOrClose.code !== WsCloseCode.Unauthorized && errorOrClose.code !== WsCloseCode.Forbidden;
}

/** Full-jitter exponential backoff: a random wait in [0, min(max, base · 2^attempt)]. */
export function backoffDelayMs(attempt: number, baseMs: number, maxMs: number): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20));
  return Math.floor(Math.random() * ceiling);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * A graphql-ws `Client` for Taskwire with the token and retry rules above. Pass it to
 * Apollo's `GraphQLWsLink`, or call `subscribe`/`iterate` directly.
 */
export function createTaskwireWsClient(options: TaskwireWsOptions): Client {
  const maxDelay = options.maxRetryDelayMs ?? 30_000;
  const rateLimitedAttempts = options.rateLimitedAttempts ?? 10;
  const inner = createClient({
    url: options.url,
    lazy: true,
    connectionParams: async () => {
      const token = await options.token();
      return token ? { authorization: `Bearer ${token}` } : {};
    },
    retryAttempts: options.retryAttempts ?? Number.POSITIVE_INFINITY,
    shouldRetry: shouldReconnect,
    retryWait: (retries) => sleep(500 + backoffDelayMs(retries, 1_000, maxDelay)),
    ...(options.webSocketImpl ? { webSocketImpl: options.webSocketImpl } : {}),
    ...(options.on ? { on: options.on } : {}),
  });

  function subscribe<Data = Record<string, unknown>, Extensions = unknown>(
    payload: SubscribePayload,
    sink: Sink<FormattedExecutionResult<Data, Extensions>>,
  ): () => void {
    let stopped = false;
    let attempt = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let unsubscribe = () => {};
    const start = () => {
      unsubscribe = inner.subscribe<Data, Extensions>(payload, {
        next: (value) => {
          attempt = 0;
          sink.next(value);
        },
        complete: () => sink.complete(),
        error: (error) => {
          if (!stopped && isCloseEvent(error) && error.code === WsCloseCode.TooManyRequests && attempt < rateLimitedAttempts) {
            // Longer waits than for a dropped connection: the server asked for fewer connections.
            timer = setTimeout(start, 1_000 + backoffDelayMs(attempt++, 2_000, Math.max(maxDelay, 2_000)));
            return;
          }
          sink.error(error);
        },
      });
    };
    start();
    return () => {
      stopped = true;
      clearTimeout(timer);
      unsubscribe();
    };
  }

  function iterate<Data = Record<string, unknown>, Extensions = unknown>(
    payload: SubscribePayload,
  ): AsyncIterableIterator<FormattedExecutionResult<Data, Extensions>> {
    const pending: FormattedExecutionResult<Data, Extensions>[] = [];
    let failure: { error: unknown } | undefined;
    let done = false;
    let wake: (() => void) | undefined;
    const notify = () => {
      wake?.();
      wake = undefined;
    };
    const unsubscribe = subscribe<Data, Extensions>(payload, {
      next: (value) => {
        pending.push(value);
        notify();
      },
      error: (error) => {
        failure = { error };
        notify();
      },
      complete: () => {
        done = true;
        notify();
      },
    });
    const iterator: AsyncIterableIterator<FormattedExecutionResult<Data, Extensions>> = {
      async next() {
        for (;;) {
          const value = pending.shift();
          if (value) {
            return { value, done: false };
          }
          if (failure) {
            throw failure.error;
          }
          if (done) {
            return { value: undefined, done: true };
          }
          await new Promise<void>((resolve) => (wake = resolve));
        }
      },
      async return() {
        done = true;
        unsubscribe();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  return {
    on: inner.on,
    subscribe,
    iterate,
    dispose: () => inner.dispose(),
    terminate: () => inner.terminate(),
  };
}
