/**
 * Black-box: the real server binary and the `graphql-sse` client in distinct connections
 * mode (one `POST /graphql` with `Accept: text/event-stream` per subscription), as a
 * frontend behind a proxy that blocks WebSockets would use it.
 * The server is started by `harness.ts`.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import { print } from "graphql";
import { type Client, type ExecutionResult, NetworkError, createClient } from "graphql-sse";

import { CancelTaskDocument, CreateTaskDocument, TaskUpdatedDocument } from "../src/index.js";
import type { TaskUpdatedSubscription, TaskUpdatedSubscriptionVariables } from "../src/index.js";
import { startServer, stopServer, token, within } from "./harness.js";

/** Everything this file does must finish within this, or it fails saying what it waited for. */
const DEADLINE_MS = 90_000;
/** The longest any one step below may wait. */
const PATIENCE_MS = 15_000;

let baseUrl = "";

/** A query or mutation over plain HTTP; fails on any GraphQL error. */
async function gql<Data, Variables>(bearer: string, document: TypedDocumentNode<Data, Variables>, variables: Variables): Promise<Data> {
  const response = await fetch(`${baseUrl}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${bearer}` },
    body: JSON.stringify({ query: print(document), variables }),
  });
  const body = (await response.json()) as { data?: Data; errors?: unknown[] };
  assert.equal(body.errors, undefined, `errors: ${JSON.stringify(body.errors)}`);
  assert.ok(body.data, "a result with data");
  return body.data;
}

/** A graphql-sse client in distinct connections mode; `authorization` is the header's value, if any. */
function sseClient(authorization: string | null): Client {
  return createClient({
    url: `${baseUrl}/graphql`,
    singleConnection: false,
    // Every non-2xx answer is a NetworkError to graphql-sse, retried with backoff unless
    // told otherwise; a refused token is final.
    retryAttempts: 0,
    headers: () => (authorization === null ? {} : { Authorization: authorization }),
  });
}

/** What one subscription's sink received so far, and how it ended, if it did. */
interface Recording {
  results: ExecutionResult<TaskUpdatedSubscription, unknown>[];
  end?: { complete: true } | { error: unknown };
  /** Waits until `done` holds, failing with what was received after {@link PATIENCE_MS}. */
  until: (what: string, done: (recording: Recording) => boolean) => Promise<void>;
  unsubscribe: () => void;
}

function follow(client: Client, variables: TaskUpdatedSubscriptionVariables): Recording {
  let changed = (): void => {};
  const recording: Recording = {
    results: [],
    until: (what, done) =>
      within(
        PATIENCE_MS,
        () => `${what} (received: ${JSON.stringify(recording.results)}, end: ${JSON.stringify(recording.end)})`,
        new Promise<void>((resolve) => {
          changed = () => {
            if (done(recording)) {
              resolve();
            }
          };
          changed();
        }),
      ),
    unsubscribe: () => {},
  };
  recording.unsubscribe = client.subscribe<TaskUpdatedSubscription>(
    { query: print(TaskUpdatedDocument), variables },
    {
      next: (result) => {
        recording.results.push(result);
        changed();
      },
      error: (error) => {
        recording.end = { error };
        changed();
      },
      complete: () => {
        recording.end = { complete: true };
        changed();
      },
    },
  );
  return recording;
}

/** `[seq, status]` of each result, failing on any result with errors. */
function events(recording: Recording): [number, string][] {
  return recording.results.map((result) => {
    assert.equal(result.errors, undefined, `errors: ${JSON.stringify(result.errors)}`);
    assert.ok(result.data, "an event with data");
    return [result.data.taskUpdated.seq, result.data.taskUpdated.status];
  });
}

async function createTask(bearer: string): Promise<string> {
  const created = await gql(bearer, CreateTaskDocument, { input: { queue: "sse", kind: "watch" } });
  return created.createTask.task.id;
}

before(async () => {
  baseUrl = await startServer();
});

after(stopServer);

describe("subscriptions over Server-Sent Events with the graphql-sse client", { timeout: DEADLINE_MS }, () => {
  test("follows a task from afterSeq 0 and resumes with afterSeq without a gap or a duplicate", async () => {
    const bearer = await token("sse-user", ["client"]);
    const id = await createTask(bearer);
    const client = sseClient(`Bearer ${bearer}`);
    try {
      const live = follow(client, { id, afterSeq: 0 });
      await live.until("seq 1", (r) => r.results.length >= 1 || r.end !== undefined);
      assert.deepEqual(events(live), [[1, "QUEUED"]]);

      const cancelled = await gql(bearer, CancelTaskDocument, { id });
      assert.equal(cancelled.cancelTask.status, "CANCELLED");
      await live.until("seq 2", (r) => r.results.length >= 2 || r.end !== undefined);
      assert.deepEqual(events(live), [[1, "QUEUED"], [2, "CANCELLED"]]);
      live.unsubscribe();

      // As after a dropped stream: pass the last seq received.
      const resumed = follow(client, { id, afterSeq: 1 });
      await resumed.until("the replay after seq 1", (r) => r.results.length >= 1 || r.end !== undefined);
      // Anything more (a duplicate, a replay of seq 1) would arrive right behind it.
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.deepEqual(events(resumed), [[2, "CANCELLED"]]);
      resumed.unsubscribe();
    } finally {
      client.dispose();
    }
  });

  for (const [name, authorization] of [
    ["a missing token", null],
    ["an invalid token", "Bearer not-a-token"],
  ] as const) {
    test(`${name}: the sink receives a 401 error with UNAUTHENTICATED`, async () => {
      const client = sseClient(authorization);
      try {
        const refused = follow(client, { id: "00000000-0000-0000-0000-000000000000", afterSeq: 0 });
        await refused.until("the refusal", (r) => r.end !== undefined);
        assert.deepEqual(refused.results, [], "no event before the error");
        assert.ok(refused.end && "error" in refused.end, `an error, got ${JSON.stringify(refused.end)}`);
        const error = refused.end.error;
        assert.ok(error instanceof NetworkError, `a NetworkError, got ${String(error)}`);
        assert.ok(error.response, "the refusal's response");
        assert.equal(error.response.status, 401);
        const body = (await (error.response as Response).json()) as { errors: { extensions: { code: string } }[] };
        assert.equal(body.errors[0]?.extensions.code, "UNAUTHENTICATED");
      } finally {
        client.dispose();
      }
    });
  }

  test("a token that expires mid-stream: an UNAUTHENTICATED error, then complete", async () => {
    const bearer = await token("sse-expiring", ["client"]);
    const id = await createTask(bearer);
    const short = await token("sse-expiring", ["client"], Math.floor(Date.now() / 1000) + 2);
    const client = sseClient(`Bearer ${short}`);
    try {
      const expiring = follow(client, { id, afterSeq: 0 });
      await expiring.until("the expiry and complete", (r) => r.end !== undefined);
      assert.deepEqual(expiring.end, { complete: true });
      const [first, last, ...rest] = expiring.results;
      assert.equal(first?.data?.taskUpdated.seq, 1, JSON.stringify(first));
      assert.deepEqual(rest, []);
      assert.equal(last?.errors?.[0]?.extensions?.["code"], "UNAUTHENTICATED", JSON.stringify(last));
    } finally {
      client.dispose();
    }
  });
});
