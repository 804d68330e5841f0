/**
 * Apollo Client set-up for Taskwire: the cache's type policies, and a client whose
 * queries and mutations go over HTTP and whose subscriptions go over graphql-ws.
 */
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache } from "@apollo/client";
import type { TypePolicies } from "@apollo/client";
import { SetContextLink } from "@apollo/client/link/context";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import { relayStylePagination } from "@apollo/client/utilities";
import { OperationTypeNode } from "graphql";
import type { Client } from "graphql-ws";

import type { TokenSource } from "./ws.js";

/**
 * How the cache identifies and merges Taskwire objects.
 *
 * Every type with an identity is normalised under it, so an event that carries a task
 * (`TaskEvent.task`), a mutation's answer and a list all update the same cache entry.
 * Types without one (payloads, page info, lease renewals) stay inside their parent.
 *
 * Every keyed type also has an `id` field (docs/CONTRACT.md, Object keys); the key
 * fields below are the natural keys that `id` is made of, so operations written before
 * `id` existed keep being normalised. `Task.nodeId` and `Worker.nodeId` are the global
 * ids of `node`/`nodes`; the cache does not key by them.
 */
export const typePolicies: TypePolicies = {
  Query: {
    fields: {
      // One cached list per filter; `after` pages are appended and `before` pages
      // prepended (Relay cursors).
      tasks: relayStylePagination(["filter"]),
      // `task(id)` first looks for the Task already in the cache (from a list, a
      // mutation or an event), so opening a task from a list shows it at once; fields
      // the cached copy lacks (its events, say) still make Apollo ask the server.
      task: {
        read(existing, { args, toReference }) {
          return existing ?? (typeof args?.["id"] === "string" ? toReference({ __typename: "Task", id: args["id"] }) : undefined);
        },
      },
      worker: {
        read(existing, { args, toReference }) {
          return existing ?? (typeof args?.["id"] === "string" ? toReference({ __typename: "Worker", id: args["id"] }) : undefined);
        },
      },
      queue: {
        read(existing, { args, toReference }) {
          return existing ?? (typeof args?.["name"] === "string" ? toReference({ __typename: "Queue", name: args["name"] }) : undefined);
        },
      },
    },
  },
  Task: {
    keyFields: ["id"],
    fields: {
      // `events(last:)` answers the latest events: a fresh answer replaces the old one.
      events: { merge: false },
    },
  },
  // The id of a TaskEvent is its task and its place in the task's history.
  TaskEvent: { keyFields: ["taskId", "seq"] },
  Worker: { keyFields: ["id"] },
  Queue: { keyFields: ["name"] },
  // The latest counts of a queue replace the previous ones.
  QueueStats: { keyFields: ["name"] },
  // One offer: the lease token is fresh for every offer of a task.
  Assignment: { keyFields: ["leaseToken"] },
  Viewer: { keyFields: ["subject"] },
  CreateTaskPayload: { keyFields: false },
  LeaseRenewal: { keyFields: false },
  TaskConnection: { keyFields: false },
  TaskEdge: { keyFields: false },
  PageInfo: { keyFields: false },
};

/**
 * The implementations of each interface, so fragments on `Task` and `Worker` inside
 * `node`/`nodes` match (a test keeps this equal to schema.graphql).
 */
export const possibleTypes: Record<string, string[]> = {
  Node: ["Task", "Worker"],
};

/** An `InMemoryCache` with {@link typePolicies} and {@link possibleTypes}. */
export function createTaskwireCache(): InMemoryCache {
  return new InMemoryCache({ typePolicies, possibleTypes });
}

/** What {@link createTaskwireApolloClient} needs. */
export interface TaskwireApolloOptions {
  /** `http(s)://host:port/graphql`. */
  httpUrl: string;
  /** The WebSocket client for subscriptions, from `createTaskwireWsClient`. */
  wsClient: Client;
  /** The current token, read for every HTTP request (`null`: anonymous). */
  token: TokenSource;
  /** Sent as `apollographql-client-name`, which the server's CORS preflight allows. */
  clientName?: string;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
}

/**
 * An Apollo Client for Taskwire: `Authorization: Bearer <token>` on every HTTP request,
 * subscriptions over `wsClient`, and a cache with {@link typePolicies}.
 */
export function createTaskwireApolloClient(options: TaskwireApolloOptions): ApolloClient {
  const auth = new SetContextLink(async (previous) => {
    const token = await options.token();
    const headers: Record<string, string> = { ...(previous["headers"] as Record<string, string> | undefined) };
    if (token) {
      headers["authorization"] = `Bearer ${token}`;
    }
    return { headers };
  });
  const http = new HttpLink({
    uri: options.httpUrl,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  const link = ApolloLink.split(
    (operation) => operation.operationType === OperationTypeNode.SUBSCRIPTION,
    new GraphQLWsLink(options.wsClient),
    ApolloLink.from([auth, http]),
  );
  return new ApolloClient({
    link,
    cache: createTaskwireCache(),
    ...(options.clientName ? { clientAwareness: { name: options.clientName } } : {}),
  });
}
