/**
 * Black-box: the real server binary and the `graphql-sse` client in distinct connections
 * mode (one `POST /graphql` with `Accept: text/event-stream` per subscription), as a
 * frontend behind a proxy that blocks WebSockets would use it.
 *
 * The binary is `$TASKWIRE_BIN`, else `$CARGO_TARGET_DIR/debug/taskwire` (build it with
 * `cargo build -p taskwire-api`). It runs on the embedded defaults (SQLite, in-process
 * Kafka) in a temp dir, on a free port, with an HS256 secret this test also signs its
 * tokens with (as in server.test.ts).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import { print } from "graphql";
import { type Client, type ExecutionResult, NetworkError, createClient } from "graphql-sse";
import { SignJWT } from "jose";

import { CancelTaskDocument, CreateTaskDocument, TaskUpdatedDocument } from "../src/index.js";
import type { TaskUpdatedSubscription, TaskUpdatedSubscriptionVariables } from "../src/index.js";

/** Everything this file does must finish within this, or it fails saying what it waited for. */
const DEADLINE_MS = 90_000;
/** The longest any one step below may wait. */
const PATIENCE_MS = 15_000;

const secret = randomBytes(32).toString("hex");
let server: ChildProcess | undefined;
let baseUrl = "";
let dataDir = "";
const output: string[] = [];

function serverBinary(): string {
  const explicit = process.env["TASKWIRE_BIN"];
  const target = process.env["CARGO_TARGET_DIR"];
  const binary = explicit ?? (target ? join(target, "debug", "taskwire") : join("..", "target", "debug", "taskwire"));
  assert.ok(existsSync(binary), `no server binary at ${binary}: set TASKWIRE_BIN or CARGO_TARGET_DIR (cargo build -p taskwire-api)`);
  return binary;
}

/** Rejects saying `what` (read when the time is up) when `promise` does not settle within `ms`. */
async function within<T>(ms: number, what: () => string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what()}\nserver output:\n${output.join("")}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function token(sub: string, roles: string[], expiresIn: string | number = "10m"): Promise<string> {
  return new SignJWT({ roles })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(new TextEncoder().encode(secret));
}

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
  dataDir = mkdtempSync(join(tmpdir(), "taskwire-node-sse-test-"));
  const child = spawn(serverBinary(), [], {
    env: {
      PATH: process.env["PATH"] ?? "",
      TASKWIRE_LISTEN: "127.0.0.1:0",
      TASKWIRE_DATA_DIR: dataDir,
      TASKWIRE_DATABASE_URL: `sqlite://${dataDir}/taskwire.db?mode=rwc`,
      TASKWIRE_JWT_SECRET: secret,
      RUST_LOG: process.env["TEST_LOG"] ? "info" : "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  server = child;
  child.stderr?.on("data", (chunk: Buffer) => output.push(chunk.toString()));
  const listening = new Promise<string>((resolve, reject) => {
    let stdout = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      output.push(chunk.toString());
      const match = /Taskwire is listening on (http:\/\/[^\s]+)/.exec(stdout);
      if (match?.[1]) {
        resolve(match[1]);
      }
    });
    child.on("exit", (code, signal) => reject(new Error(`the server exited (${code ?? signal}) before listening:\n${output.join("")}`)));
  });
  baseUrl = await within(60_000, () => "the server's 'Taskwire is listening on' line", listening);
});

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server?.once("exit", resolve));
    server.kill("SIGTERM");
    await within(20_000, () => "the server to stop after SIGTERM", exited);
  }
  if (dataDir) {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

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
