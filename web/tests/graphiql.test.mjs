// GraphiQL in Chromium with no network beyond loopback: the page, its assets and its
// subscriptions come from the server alone. Runs the debug server binary (harness.mjs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { gql, mint, offlineBrowser, screenshotPath, startServer, watchPage } from "./harness.mjs";

/// Replaces the text of a GraphiQL (CodeMirror 5) editor the way a user does: focus it,
/// select all, type.
async function typeInto(page, editor, text) {
  await editor.click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  await page.keyboard.insertText(text);
}

async function resultContains(page, text, timeout = 15_000) {
  try {
    await page.waitForFunction(
      (t) => document.querySelector(".result-window")?.textContent.includes(t),
      text,
      { timeout },
    );
  } catch (e) {
    const shown = await page.locator(".result-window").textContent().catch(() => "(no result pane)");
    throw new Error(`${text} not in the result pane: ${shown}`, { cause: e });
  }
}

test("GraphiQL works offline: a query and a subscription with the Headers pane's token", async () => {
  const server = await startServer();
  const { browser, context, blocked } = await offlineBrowser();
  try {
    const token = mint(server.secret, "graphiql-admin", ["admin", "client"]);
    const page = await context.newPage();
    const problems = await watchPage(page);
    const response = await page.goto(`${server.url}/graphiql`);
    assert.match(response.headers()["content-security-policy"], /script-src 'self';/);
    await page.waitForSelector(".graphiql-query-editor .CodeMirror");

    // The Headers pane is open by default; paste the token there.
    const headers = page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror");
    await typeInto(page, headers, JSON.stringify({ Authorization: `Bearer ${token}` }));
    const query = page.locator(".graphiql-query-editor .CodeMirror");
    await typeInto(page, query, "query Me {\n  me { subject roles }\n}");
    await page.locator(".graphiql-tab", { hasText: "Me" }).waitFor();
    await page.click(".graphiql-execute-button");
    await resultContains(page, '"graphiql-admin"');

    // A subscription over graphql-ws, authenticated with the same header: the task's
    // history first (afterSeq 0), then a change made elsewhere, live.
    const created = await gql(
      server.url,
      token,
      "mutation($input: CreateTaskInput!) { createTask(input: $input) { task { id } } }",
      { input: { queue: "graphiql", kind: "demo", payload: { hello: "offline" } } },
    );
    const id = created.createTask.task.id;
    await typeInto(
      page,
      query,
      `subscription Watch {\n  taskUpdated(id: "${id}", afterSeq: 0) {\n    seq\n    status\n    previousStatus\n    message\n  }\n}`,
    );
    // GraphiQL reads the operation name from the editor a moment after typing; its tab
    // shows it once it has.
    await page.locator(".graphiql-tab", { hasText: "Watch" }).waitFor();
    await page.click(".graphiql-execute-button");
    await resultContains(page, '"QUEUED"');
    await gql(server.url, token, "mutation($id: ID!) { cancelTask(id: $id, reason: \"seen live in GraphiQL\") { id } }", {
      id,
    });
    await resultContains(page, '"CANCELLED"');
    await resultContains(page, "seen live in GraphiQL");

    await page.screenshot({ path: screenshotPath("graphiql.png") });
    assert.deepEqual(blocked, [], "GraphiQL asked for nothing beyond the server");
    assert.deepEqual(problems, [], "no console error, no CSP violation");
  } finally {
    await browser.close();
    await server.stop();
  }
});
