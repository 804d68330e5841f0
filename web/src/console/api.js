// The console talks to the public GraphQL API only: POST /graphql, and graphql-ws on the
// same path for subscriptions, with the token the operator pasted (sessionStorage).
import { createClient } from "graphql-ws";

const TOKEN_KEY = "taskwire.console.token";
const HTTP_URL = new URL("/graphql", window.location.href).href;
const WS_URL = HTTP_URL.replace(/^http/, "ws");

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    resetSocket();
  },
};

/// A GraphQL error with its `extensions.code`, shown to the operator as is.
export class GqlError extends Error {
  constructor(errors) {
    const first = errors[0] ?? {};
    const code = first.extensions?.code ?? "ERROR";
    super(`${code}: ${first.message ?? "request failed"}`);
    this.code = code;
  }
}

export async function gql(query, variables = {}, token = session.token) {
  let response;
  try {
    response = await fetch(HTTP_URL, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ query, variables }),
    });
  } catch {
    throw new GqlError([{ message: "the server cannot be reached", extensions: { code: "UNAVAILABLE" } }]);
  }
  const body = await response.json().catch(() => ({ errors: [{ message: `HTTP ${response.status}` }] }));
  if (body.errors?.length) throw new GqlError(body.errors);
  return body.data;
}

let socket = null;
function resetSocket() {
  socket?.dispose();
  socket = null;
}

function client() {
  if (!socket) {
    socket = createClient({
      url: WS_URL,
      connectionParams: () => ({ authorization: `Bearer ${session.token}` }),
      lazy: true,
      // Reconnects after network trouble; a refused token (4403) or expiry (4401) needs a
      // new one, so those end the stream and the page asks for it.
      retryAttempts: Infinity,
      shouldRetry: (event) => !(event && typeof event.code === "number" && [4401, 4403, 4429].includes(event.code)),
    });
  }
  return socket;
}

/// Subscribes; `onData` gets each payload's data. Returns the unsubscribe function.
export function subscribe(query, variables, onData, onError) {
  return client().subscribe(
    { query, variables },
    {
      next: (message) => {
        if (message.errors?.length) onError?.(new GqlError(message.errors));
        else onData(message.data);
      },
      error: (error) => {
        const errors = Array.isArray(error) ? error : [{ message: error?.reason || String(error?.message ?? error) }];
        onError?.(new GqlError(errors));
      },
      complete: () => {},
    },
  );
}
