/**
 * The graphql-ws client's retry rules against a scripted graphql-transport-ws server, one
 * close code at a time (no Taskwire server needed).
 */
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import WebSocket, { WebSocketServer } from "ws";

import { WsCloseCode, createTaskwireWsClient, isCloseEvent } from "../src/index.js";

/** What the scripted server does with the n-th connection's `connection_init` (0-based). */
type Script = (connection: number, init: Record<string, unknown> | undefined) => { close: number } | "ack";

let server: WebSocketServer;
let url = "";
let script: Script = () => "ack";
let connections = 0;
const initPayloads: unknown[] = [];

before(async () => {
  server = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "graphql-transport-ws" });
  await new Promise<void>((resolve) => server.once("listening", resolve));
  url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}/graphql`;
  server.on("connection", (socket) => {
    const connection = connections++;
    socket.on("message", (raw) => {
      const message = JSON.parse(raw.toString()) as { type: string; id?: string; payload?: Record<string, unknown> };
      if (message.type === "connection_init") {
        initPayloads.push(message.payload);
        const answer = script(connection, message.payload);
        if (answer === "ack") {
          socket.send(JSON.stringify({ type: "connection_ack" }));
        } else {
          socket.close(answer.close, "scripted");
        }
      } else if (message.type === "subscribe") {
        socket.send(JSON.stringify({ id: message.id, type: "next", payload: { data: { connection } } }));
        socket.send(JSON.stringify({ id: message.id, type: "complete" }));
      }
    });
  });
});

after(() => new Promise<void>((resolve) => server.close(() => resolve())));

/** Subscribes once; resolves with the data of the first event, or the error. */
function firstResult(tokens: () => string | null, retryAttempts?: number): Promise<{ data?: unknown; error?: unknown }> {
  const client = createTaskwireWsClient({
    url,
    token: tokens,
    webSocketImpl: WebSocket,
    maxRetryDelayMs: 200,
    ...(retryAttempts === undefined ? {} : { retryAttempts }),
  });
  return new Promise((resolve) => {
    client.subscribe(
      { query: "subscription { taskEvents { seq } }" },
      {
        next: (value) => resolve({ data: value.data }),
        error: (error) => resolve({ error }),
        complete: () => {},
      },
    );
  }).finally(() => client.dispose()) as Promise<{ data?: unknown; error?: unknown }>;
}

function reset(next: Script): void {
  script = next;
  connections = 0;
  initPayloads.length = 0;
}

describe("createTaskwireWsClient", { timeout: 30_000 }, () => {
  test("reads the token at every attempt and sends it as a bearer token", async () => {
    reset((connection) => (connection === 0 ? { close: WsCloseCode.GoingAway } : "ack"));
    const tokens = ["first", "refreshed"];
    const result = await firstResult(() => tokens.shift() ?? null);
    assert.deepEqual(result.data, { connection: 1 }, "reconnected after 1001");
    assert.deepEqual(initPayloads, [{ authorization: "Bearer first" }, { authorization: "Bearer refreshed" }]);
  });

  for (const code of [WsCloseCode.Unauthorized, WsCloseCode.Forbidden]) {
    test(`never retries ${code}`, async () => {
      reset(() => ({ close: code }));
      const result = await firstResult(() => "token");
      assert.ok(isCloseEvent(result.error), `a close event, got ${String(result.error)}`);
      assert.equal(result.error.code, code);
      assert.equal(connections, 1);
    });
  }

  test("backs off on 4429 and subscribes again", async () => {
    reset((connection) => (connection < 2 ? { close: WsCloseCode.TooManyRequests } : "ack"));
    const started = Date.now();
    const result = await firstResult(() => "token");
    assert.deepEqual(result.data, { connection: 2 });
    assert.ok(Date.now() - started >= 2_000, "each 4429 waits at least a second before the next attempt");
  });

  test("retries other closes until its attempts are spent", async () => {
    reset(() => ({ close: WsCloseCode.ConnectionInitialisationTimeout }));
    const result = await firstResult(() => "token", 2);
    assert.ok(isCloseEvent(result.error));
    assert.equal(result.error.code, WsCloseCode.ConnectionInitialisationTimeout);
    assert.equal(connections, 3, "the first attempt and two retries");
  });
});
