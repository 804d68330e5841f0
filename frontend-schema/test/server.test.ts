/**
 * Black-box: the real server binary, and this package used as a browser frontend on
 * another origin would use it (generated documents, Apollo Client with the type policies,
 * the graphql-ws client).
 * The server is started by `harness.ts`.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import type { ApolloClient } from "@apollo/client";
import { parse } from "graphql";
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
import { startServer, stopServer, token, within } from "./harness.js";

/** A frontend's dev server (Vite's default port), allowed by the embedded default `localhost`. */
const ORIGIN = "http://localhost:5173";
/** Everything this file does must finish within this, or it fails saying what it waited for. */
const DEADLINE_MS = 90_000;

let baseUrl = "";

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
  baseUrl = await startServer();
});

after(stopServer);

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
