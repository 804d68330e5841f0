/**
 * Black-box: the real server binary, and this package used as a browser frontend on
 * another origin would use it (generated documents, Apollo Client with the type policies,
 * the graphql-ws client).
 *
 * The binary is `$TASKWIRE_BIN`, else `$CARGO_TARGET_DIR/debug/taskwire` (build it with
 * `cargo build -p taskwire-api`). It runs on the embedded defaults (SQLite, in-process
 * Kafka) in a temp dir, on a free port (`TASKWIRE_LISTEN=127.0.0.1:0`; the port is read
 * from its start-up line), with an HS256 secret this test also signs its tokens with.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import type { ApolloClient } from "@apollo/client";
import { parse } from "graphql";
import { SignJWT } from "jose";
import WebSocket from "ws";

import {
  AcceptTaskDocument,
  AssignmentsDocument,
  CompleteTaskDocument,
  CreateTaskDocument,
  ListTasksDocument,
  MeDocument,
  RegisterWorkerDocument,
  TaskUpdatedDocument,
  WsCloseCode,
  createTaskwireApolloClient,
  createTaskwireWsClient,
  isCloseEvent,
} from "../src/index.js";
import type { TaskStatus } from "../src/index.js";

/** A frontend's dev server (Vite's default port), allowed by the embedded default `localhost`. */
const ORIGIN = "http://localhost:5173";
/** Everything this file does must finish within this, or it fails saying what it waited for. */
const DEADLINE_MS = 90_000;

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

/** Rejects with `what` when `promise` does not settle within `ms`. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}\nserver output:\n${output.join("")}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function token(sub: string, roles: string[]): Promise<string> {
  return new SignJWT({ roles })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime("10m")
    .sign(new TextEncoder().encode(secret));
}

/** A WebSocket that, like a browser's, sends the page's origin with the upgrade. */
class BrowserWebSocket extends WebSocket {
  constructor(url: string | URL, protocols?: string | string[]) {
    super(url, protocols, { origin: ORIGIN });
  }
}

/** `fetch` as a page on {@link ORIGIN} sends it; keeps the last response's CORS header. */
const seen: { allowOrigin: string | null } = { allowOrigin: null };
const browserFetch: typeof fetch = async (input, init) => {
  const headers = new Headers(init?.headers);
  headers.set("origin", ORIGIN);
  const response = await fetch(input, { ...init, headers });
  seen.allowOrigin = response.headers.get("access-control-allow-origin");
  return response;
};

function clientFor(bearer: string): { apollo: ApolloClient; close: () => void } {
  const wsClient = createTaskwireWsClient({
    url: `${baseUrl.replace("http://", "ws://")}/graphql`,
    token: () => bearer,
    webSocketImpl: BrowserWebSocket,
  });
  const apollo = createTaskwireApolloClient({
    httpUrl: `${baseUrl}/graphql`,
    wsClient,
    token: () => bearer,
    clientName: "node-test",
    fetch: browserFetch,
  });
  return {
    apollo,
    close: () => {
      apollo.stop();
      void wsClient.dispose();
    },
  };
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "taskwire-node-test-"));
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
  baseUrl = await within(60_000, "the server's 'Taskwire is listening on' line", listening);
});

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server?.once("exit", resolve));
    server.kill("SIGTERM");
    await within(20_000, "the server to stop after SIGTERM", exited);
  }
  if (dataDir) {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

describe("a browser frontend on another origin", { timeout: DEADLINE_MS }, () => {
  test("passes the CORS preflight; an origin outside the allow-list does not", async () => {
    const preflight = (origin: string) =>
      fetch(`${baseUrl}/graphql`, {
        method: "OPTIONS",
        headers: {
          origin,
          "access-control-request-method": "POST",
          "access-control-request-headers": "authorization,content-type,apollographql-client-name",
        },
      });

    const allowed = await preflight(ORIGIN);
    assert.ok(allowed.status >= 200 && allowed.status < 300, `preflight status ${allowed.status}`);
    assert.equal(allowed.headers.get("access-control-allow-origin"), ORIGIN);
    const methods = allowed.headers.get("access-control-allow-methods") ?? "";
    assert.match(methods, /POST/);
    const headers = (allowed.headers.get("access-control-allow-headers") ?? "").toLowerCase();
    for (const header of ["authorization", "content-type", "apollographql-client-name"]) {
      assert.ok(headers.includes(header), `allow-headers ${headers} lacks ${header}`);
    }
    assert.equal(allowed.headers.get("access-control-allow-credentials"), null, "credentials are never allowed");

    const refused = await preflight("http://evil.example");
    assert.equal(refused.headers.get("access-control-allow-origin"), null);
  });

  test("creates a task with the generated document and follows it live to SUCCEEDED", async () => {
    const user = clientFor(await token("browser-user", ["client"]));
    const worker = clientFor(await token("node-worker", ["worker"]));
    try {
      const me = await user.apollo.query({ query: MeDocument });
      assert.equal(me.data?.me.subject, "browser-user");
      assert.equal(seen.allowOrigin, ORIGIN, "the server answers the page's origin");

      // A worker written with this package: register, take the offer, accept, complete.
      await worker.apollo.mutate({
        mutation: RegisterWorkerDocument,
        variables: { input: { name: "node worker", queues: ["browser"], capacity: 2 } },
      });
      const workerDone = new Promise<void>((resolve, reject) => {
        const subscription = worker.apollo.subscribe({ query: AssignmentsDocument }).subscribe({
          next: ({ data, error }) => {
            if (error || !data) {
              reject(error ?? new Error("an assignment without data"));
              return;
            }
            const { task, leaseToken } = data.assignments;
            void (async () => {
              await worker.apollo.mutate({ mutation: AcceptTaskDocument, variables: { taskId: task.id, leaseToken } });
              await worker.apollo.mutate({
                mutation: CompleteTaskDocument,
                variables: { taskId: task.id, leaseToken, result: { echoed: task.payload } },
              });
              subscription.unsubscribe();
              resolve();
            })().catch(reject);
          },
          error: reject,
        });
      });

      const created = await user.apollo.mutate({
        mutation: CreateTaskDocument,
        variables: { input: { queue: "browser", kind: "greet", payload: { to: "bob" }, priority: 5 } },
      });
      const task = created.data?.createTask.task;
      assert.ok(task, "createTask answers the task");
      assert.equal(task.status, "QUEUED");

      // From the first event on (afterSeq 0), so none is missed however fast the worker is.
      const statuses: TaskStatus[] = [];
      const seqs: number[] = [];
      const followed = new Promise<void>((resolve, reject) => {
        const subscription = user.apollo
          .subscribe({ query: TaskUpdatedDocument, variables: { id: task.id, afterSeq: 0 } })
          .subscribe({
            next: ({ data, error }) => {
              if (error || !data) {
                reject(error ?? new Error("an event without data"));
                return;
              }
              statuses.push(data.taskUpdated.status);
              seqs.push(data.taskUpdated.seq);
              if (data.taskUpdated.status === "SUCCEEDED") {
                subscription.unsubscribe();
                resolve();
              }
            },
            error: reject,
          });
      });
      await within(30_000, `the task's events up to SUCCEEDED (so far: ${statuses.join(", ")})`, Promise.all([followed, workerDone]));
      assert.deepEqual(statuses, ["QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED"]);
      assert.deepEqual(seqs, [1, 2, 3, 4], "events arrive in seq order without gaps");

      // The `task(id)` read policy finds the Task that createTask put in the cache.
      const cached = user.apollo.readQuery({
        query: parse("query Cached($id: ID!) { task(id: $id) { id queue kind } }"),
        variables: { id: task.id },
      }) as { task: { id: string; queue: string; kind: string } | null } | null;
      assert.deepEqual(cached?.task, { __typename: "Task", id: task.id, queue: "browser", kind: "greet" });
    } finally {
      user.close();
      worker.close();
    }
  });

  test("pages through tasks into one cached list (relayStylePagination)", async () => {
    const user = clientFor(await token("pager", ["client"]));
    try {
      for (const kind of ["first", "second", "third"]) {
        await user.apollo.mutate({ mutation: CreateTaskDocument, variables: { input: { queue: "pages", kind } } });
      }
      const filter = { queue: "pages" };
      const page1 = await user.apollo.query({ query: ListTasksDocument, variables: { filter, first: 2 } });
      assert.equal(page1.data?.tasks.edges.length, 2);
      assert.equal(page1.data?.tasks.pageInfo.hasNextPage, true);
      // As `fetchMore` does: the next page from the server, merged into the cached list.
      await user.apollo.query({
        query: ListTasksDocument,
        variables: { filter, first: 2, after: page1.data?.tasks.pageInfo.endCursor ?? null },
        fetchPolicy: "network-only",
      });
      const merged = user.apollo.readQuery({ query: ListTasksDocument, variables: { filter, first: 2 } });
      assert.deepEqual(
        merged?.tasks.edges.map((edge) => edge.node.kind),
        ["third", "second", "first"],
        "the second page is appended to the first, newest first",
      );
      assert.equal(merged?.tasks.pageInfo.hasNextPage, false);
    } finally {
      user.close();
    }
  });

  test("a refused token ends subscriptions with 4403, without reconnecting", async () => {
    let connecting = 0;
    const wsClient = createTaskwireWsClient({
      url: `${baseUrl.replace("http://", "ws://")}/graphql`,
      token: () => "not-a-token",
      webSocketImpl: BrowserWebSocket,
      on: { connecting: () => void connecting++ },
    });
    try {
      const ended = new Promise<unknown>((resolve) => {
        wsClient.subscribe(
          { query: "subscription { taskEvents { seq } }" },
          { next: () => resolve(new Error("an event despite a refused token")), error: resolve, complete: () => resolve(new Error("completed")) },
        );
      });
      const reason = await within(15_000, "the close after a refused token", ended);
      assert.ok(isCloseEvent(reason), `a close event, got ${String(reason)}`);
      assert.equal(reason.code, WsCloseCode.Forbidden);
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      assert.equal(connecting, 1, "4403 is not retried");
    } finally {
      await wsClient.dispose();
    }
  });
});
