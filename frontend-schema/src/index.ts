/**
 * Taskwire's GraphQL contract for TypeScript frontends.
 *
 * - the typed documents and types generated from `operations/*.graphql` (`CreateTaskDocument`,
 *   `TaskStatus`, `GetTaskQuery`, …);
 * - the error codes and WebSocket close codes the server sends;
 * - Apollo Client's type policies and a client factory;
 * - a graphql-ws client with Taskwire's token and retry rules.
 */
export * from "./generated/graphql.js";
export type { JsonValue } from "./json.js";
export * from "./codes.js";
export * from "./apollo.js";
export * from "./ws.js";
