// GraphiQL for Taskwire, bundled at development time (web/build.mjs) and served by the
// binary from /graphiql/assets/: no CDN, no inline script, no eval.
import { GraphiQL } from "graphiql";
import { createRoot } from "react-dom/client";
import { getOperationAST, parse } from "graphql";
import { createClient } from "graphql-ws";
import { setNonce } from "get-nonce";
import "graphiql/style.css";
import "./page.css";

// GraphiQL's dialogs (Radix UI's scroll lock) add <style> elements; the page's policy lets
// them in only with the nonce the server gave this page's script tag.
setNonce(document.currentScript?.nonce);

// Same origin as the page: the server serves GraphiQL next to /graphql.
const HTTP_URL = new URL("/graphql", window.location.href).href;
const WS_URL = HTTP_URL.replace(/^http/, "ws");

// One WebSocket client per distinct Headers-pane content: the server reads the token once,
// from connection_init (README, Live updates over WebSocket), so changing the token means
// a new connection. `{"headers": {...}}` is one of the payload forms the server accepts.
const wsClients = new Map();
function wsClient(headers) {
  const key = JSON.stringify(headers ?? {});
  let client = wsClients.get(key);
  if (!client) {
    client = createClient({ url: WS_URL, connectionParams: { headers: headers ?? {} }, lazy: true });
    wsClients.set(key, client);
  }
  return client;
}

function isSubscription(params) {
  try {
    const operation = getOperationAST(parse(params.query), params.operationName ?? undefined);
    return operation?.operation === "subscription";
  } catch {
    return false; // let the server report the syntax error
  }
}

async function httpFetch(params, headers) {
  const response = await fetch(HTTP_URL, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json", ...headers },
    body: JSON.stringify(params),
  });
  return response.json();
}

function fetcher(params, opts) {
  const headers = opts?.headers ?? {};
  if (isSubscription(params)) {
    return wsClient(headers).iterate({
      query: params.query,
      variables: params.variables ?? undefined,
      operationName: params.operationName ?? undefined,
    });
  }
  return httpFetch(params, headers);
}

const defaultQuery = `# Paste {"Authorization": "Bearer <token>"} into the Headers pane below.
# \`taskwire\` prints an admin token at start in the embedded mode;
# \`taskwire token --sub NAME --role ROLE\` mints others.

query Me {
  me {
    subject
    roles
  }
}
`;

createRoot(document.getElementById("graphiql")).render(
  <GraphiQL fetcher={fetcher} defaultQuery={defaultQuery} defaultEditorToolsVisibility="headers" />,
);
