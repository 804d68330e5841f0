// A task board in plain DOM: lists the caller's tasks, creates and cancels tasks, and keeps
// the list live over graphql-ws. CI type-checks it (`npm run typecheck`). To run it, serve
// index.html with a bundler that maps `@taskwire/frontend-schema` to ../src/index.ts as
// tsconfig.json's `paths` does (Vite: `resolve.alias`); a dev server on
// http://localhost:5173 is an origin the embedded server allows.
import { CombinedGraphQLErrors } from "@apollo/client";
import {
  CancelTaskDocument,
  CreateTaskDocument,
  ErrorCode,
  ListTasksDocument,
  TaskEventsDocument,
  createTaskwireApolloClient,
  createTaskwireWsClient,
  errorCode,
} from "@taskwire/frontend-schema";
import type { ListTasksQuery, TaskStatus } from "@taskwire/frontend-schema";

type TaskRow = ListTasksQuery["tasks"]["edges"][number]["node"];

const API = "http://127.0.0.1:8080/graphql";

// The token from your sign-in; for a local server, `taskwire token --sub alice --role client`.
const token = (): string | null => localStorage.getItem("taskwire.token");

const wsClient = createTaskwireWsClient({ url: API.replace(/^http/, "ws"), token });
const client = createTaskwireApolloClient({ httpUrl: API, wsClient, token, clientName: "example" });

const list = document.querySelector<HTMLUListElement>("#tasks");
const status = document.querySelector<HTMLParagraphElement>("#status");
const form = document.querySelector<HTMLFormElement>("#create");

const terminal: ReadonlySet<TaskStatus> = new Set<TaskStatus>(["SUCCEEDED", "CANCELLED", "DEAD"]);

/** Says what went wrong, by code: the message text is for people, not for branching. */
function explain(error: unknown): string {
  if (CombinedGraphQLErrors.is(error)) {
    const first = error.errors[0];
    switch (first ? errorCode(first) : undefined) {
      case ErrorCode.Unauthenticated:
        return "Sign in again (no token, or it expired).";
      case ErrorCode.BadUserInput:
        return `Check ${String(first?.extensions?.["field"] ?? "the input")}: ${first?.message ?? ""}`;
      case ErrorCode.RateLimited:
        return `Slow down; retry in ${String(first?.extensions?.["retryAfterMs"] ?? "a few")} ms.`;
      default:
        return first?.message ?? "The request failed.";
    }
  }
  return error instanceof Error ? error.message : String(error);
}

function render(tasks: readonly TaskRow[]): void {
  if (!list) return;
  list.replaceChildren(
    ...tasks.map((task) => {
      const item = document.createElement("li");
      item.textContent = `${task.queue}/${task.kind} ${task.status} (attempt ${task.attempts}/${task.maxAttempts})`;
      if (!terminal.has(task.status)) {
        const cancel = document.createElement("button");
        cancel.textContent = "Cancel";
        cancel.onclick = () => {
          client
            .mutate({ mutation: CancelTaskDocument, variables: { id: task.id, reason: "cancelled from the example" } })
            .catch((error: unknown) => status && (status.textContent = explain(error)));
        };
        item.append(" ", cancel);
      }
      return item;
    }),
  );
}

// The list is read from the cache: createTask answers and live events (which carry the
// task) update the Task entries it points to, so the list re-renders without a refetch.
const tasks = client.watchQuery({ query: ListTasksDocument, variables: { first: 50 } });
tasks.subscribe({
  next: (result) => {
    if (result.error) {
      if (status) status.textContent = explain(result.error);
    } else if (result.dataState === "complete") {
      render(result.data.tasks.edges.map((edge) => edge.node));
    }
  },
});

// Every event of the caller's tasks. A task the list does not hold yet (created in another
// tab) makes the list read its first page again.
client.subscribe({ query: TaskEventsDocument }).subscribe({
  next: ({ data }) => {
    if (data?.taskEvents.seq === 1) {
      void tasks.refetch();
    }
  },
  error: (error: unknown) => status && (status.textContent = explain(error)),
});

form?.addEventListener("submit", (event) => {
  event.preventDefault();
  const fields = new FormData(form);
  client
    .mutate({
      mutation: CreateTaskDocument,
      variables: {
        input: {
          queue: String(fields.get("queue")),
          kind: String(fields.get("kind")),
          payload: { from: "example", at: new Date().toISOString() },
          idempotencyKey: crypto.randomUUID(),
        },
      },
      refetchQueries: [ListTasksDocument],
    })
    .then(({ data }) => status && (status.textContent = `Created ${data?.createTask.task.id ?? "?"}`))
    .catch((error: unknown) => status && (status.textContent = explain(error)));
});
