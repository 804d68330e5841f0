// The operator console in Chromium, offline but for the server: sign in, watch a task go
// to SUCCEEDED live on its page, pause and resume a queue, requeue a dead task, drain a
// worker, and fit a phone-width screen. A worker driven from Node (graphql-ws) runs the
// tasks through the public worker protocol (README, Writing a worker).
import { test } from "node:test";
import assert from "node:assert/strict";
import { gql, mint, offlineBrowser, screenshotPath, startServer, watchPage, wsClient } from "./harness.mjs";

/// Registers a worker and runs what it is offered: it fails (not retryable) the first
/// run of a task whose payload says `fail`, and completes everything else.
async function startWorker(url, secret, id, queues) {
  const token = mint(secret, id, ["worker"]);
  await gql(url, token, "mutation($input: RegisterWorkerInput!) { registerWorker(input: $input) { id } }", {
    input: { name: `${id} (test)`, queues, capacity: 4 },
  });
  const failedOnce = new Set();
  const errors = [];
  const client = wsClient(url, token);
  const unsubscribe = client.subscribe(
    { query: "subscription { assignments { leaseToken task { id payload } } }" },
    {
      next: async ({ data, errors: errs }) => {
        if (errs) return errors.push(errs);
        const { leaseToken, task } = data.assignments;
        try {
          const lease = { taskId: task.id, leaseToken };
          await gql(url, token, "mutation($taskId: ID!, $leaseToken: String!) { acceptTask(taskId: $taskId, leaseToken: $leaseToken) { id } }", lease);
          if (task.payload?.fail && !failedOnce.has(task.id)) {
            failedOnce.add(task.id);
            await gql(url, token, "mutation($taskId: ID!, $leaseToken: String!) { failTask(taskId: $taskId, leaseToken: $leaseToken, error: \"the printer is on fire\", retryable: false) { id } }", lease);
          } else {
            await gql(url, token, "mutation($taskId: ID!, $leaseToken: String!, $result: JSON) { completeTask(taskId: $taskId, leaseToken: $leaseToken, result: $result) { id } }", { ...lease, result: { printed: true, by: id } });
          }
        } catch (e) {
          errors.push(e.message);
        }
      },
      error: (e) => errors.push(String(e?.reason ?? e)),
      complete: () => {},
    },
  );
  return { errors, stop: async () => { unsubscribe(); await client.dispose(); } };
}

async function waitFor(what, check, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

const taskStatus = async (url, token, id) => (await gql(url, token, "query($id: ID!) { task(id: $id) { status } }", { id })).task.status;

test("the console signs in, follows a task live, steers queues and workers", async () => {
  const server = await startServer();
  const { browser, context, blocked } = await offlineBrowser();
  let worker;
  try {
    const admin = mint(server.secret, "console-admin", ["admin"]);
    const client = mint(server.secret, "console-client", ["client"]);
    const create = async (queue, payload) =>
      (await gql(server.url, client, "mutation($input: CreateTaskInput!) { createTask(input: $input) { task { id } } }", {
        input: { queue, kind: "print", payload },
      })).createTask.task.id;

    const page = await context.newPage();
    const problems = await watchPage(page);
    const response = await page.goto(`${server.url}/console`);
    assert.match(response.headers()["content-security-policy"], /script-src 'self';/);

    // Sign in with the token, as an operator pastes it.
    await page.fill("#token", `Bearer ${admin}`);
    await page.click("button[type=submit]");
    await page.waitForSelector("#queues-title");

    // A task waits (no worker yet); its page shows it QUEUED, then every change live.
    const first = await create("printing", { document: "report.pdf", copies: 2 });
    await page.click("header nav >> text=Tasks");
    await page.click(`[data-task="${first}"] a`);
    await page.waitForSelector(".task-status .status-queued");
    worker = await startWorker(server.url, server.secret, "printer-1", ["printing", "fragile"]);
    await page.waitForSelector(".task-status .status-succeeded", { timeout: 20_000 });
    const history = await page.locator(".history li").allTextContents();
    for (const status of ["QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED"]) {
      assert.ok(history.some((line) => line.includes(status)), `${status} in the history: ${history}`);
    }
    assert.match(await page.locator("pre").nth(1).textContent(), /"printed": true/);
    await page.screenshot({ path: screenshotPath("console-task.png"), fullPage: true });

    // Pause: a new task stays queued although a worker is free; resume (by keyboard): it runs.
    await page.click("header nav >> text=Queues");
    const row = page.locator('[data-queue="printing"]');
    await row.locator("button", { hasText: "Pause" }).click();
    await row.locator(".status-paused").waitFor();
    const paused = await gql(server.url, admin, '{ queue(name: "printing") { paused } }');
    assert.equal(paused.queue.paused, true);
    const second = await create("printing", { document: "invoice.pdf" });
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await taskStatus(server.url, admin, second), "QUEUED", "a paused queue offers nothing");
    await row.locator("button", { hasText: "Resume" }).focus();
    await page.keyboard.press("Enter");
    await row.locator(".status-active").waitFor();
    await waitFor("the second task to succeed", async () => (await taskStatus(server.url, admin, second)) === "SUCCEEDED");

    // A task that dies, requeued from the console, then succeeds.
    const doomed = await create("fragile", { document: "vase.pdf", fail: true });
    await waitFor("the fragile task to die", async () => (await taskStatus(server.url, admin, doomed)) === "DEAD");
    await page.reload(); // the fragile queue is new; the token survives in session storage
    const fragile = page.locator('[data-queue="fragile"]');
    await fragile.locator('[data-field="dead"]', { hasText: "1" }).waitFor();
    page.once("dialog", (dialog) => dialog.accept());
    await fragile.locator("button", { hasText: "Requeue dead" }).click();
    await page.locator(".notice.ok", { hasText: "1 dead tasks of fragile requeued" }).waitFor();
    await waitFor("the requeued task to succeed", async () => (await taskStatus(server.url, admin, doomed)) === "SUCCEEDED");
    // The table follows queueStats: the dead count drops without a reload.
    await fragile.locator('[data-field="dead"]', { hasText: "0" }).waitFor();
    await page.screenshot({ path: screenshotPath("console-queues.png"), fullPage: true });

    // Workers: drain the one worker.
    await page.click("header nav >> text=Workers");
    const workerRow = page.locator('[data-worker="printer-1"]');
    await workerRow.locator(".status-online").waitFor();
    page.once("dialog", (dialog) => dialog.accept());
    await workerRow.locator("button", { hasText: "Drain" }).click();
    await workerRow.locator(".status-draining").waitFor();
    const drained = await gql(server.url, admin, '{ worker(id: "printer-1") { status } }');
    assert.equal(drained.worker.status, "DRAINING");
    await page.screenshot({ path: screenshotPath("console-workers.png") });

    // A phone-width screen: nothing sticks out of the page (tables scroll in their box).
    await page.setViewportSize({ width: 390, height: 844 });
    await page.click("header nav >> text=Queues");
    await page.waitForSelector('[data-queue="printing"]');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
    await page.screenshot({ path: screenshotPath("console-phone.png") });

    assert.deepEqual(worker.errors, [], "the worker's calls all succeeded");
    assert.deepEqual(blocked, [], "the console asked for nothing beyond the server");
    assert.deepEqual(problems, [], "no console error, no CSP violation");
  } finally {
    await worker?.stop();
    await browser.close();
    await server.stop();
  }
});
