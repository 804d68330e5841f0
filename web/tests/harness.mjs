// What the browser tests share: the debug server, tokens, an offline browser, GraphQL calls.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const repo = new URL("../..", import.meta.url).pathname;

/// The server binary: $TASKWIRE_BIN, else the debug build in $CARGO_TARGET_DIR (CI builds it).
export function serverBinary() {
  if (process.env.TASKWIRE_BIN) return process.env.TASKWIRE_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, ".cache/taskwire/target");
  return join(target, "debug/taskwire");
}

/// Starts the server on the embedded defaults (SQLite in a temp dir, the in-process Kafka
/// mock) on a free port, with an HS256 secret of its own. Resolves once it listens.
export async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), "taskwire-web-"));
  const secret = randomBytes(32).toString("hex");
  // Only what the test sets: a TASKWIRE_* variable of the caller's shell must not leak in.
  const env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    RUST_LOG: process.env.RUST_LOG ?? "warn",
    TASKWIRE_LISTEN: "127.0.0.1:0",
    TASKWIRE_DATA_DIR: dir,
    TASKWIRE_DATABASE_URL: `sqlite://${dir}/taskwire.db?mode=rwc`,
    TASKWIRE_JWT_SECRET: secret,
  };
  const child = spawn(serverBinary(), ["serve"], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start in 90 s:\n${log}`)), 90_000);
    const onData = (chunk) => {
      log += chunk;
      const match = /Taskwire is listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited with ${code}:\n${log}`));
    });
  });
  const stop = async () => {
    if (child.exitCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    rmSync(dir, { recursive: true, force: true });
  };
  return { url, secret, stop, log: () => log };
}

const base64url = (data) => Buffer.from(data).toString("base64url");

/// An HS256 JWT, as README "Authentication and roles" describes the claims.
export function mint(secret, sub, roles, ttlSeconds = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = base64url(JSON.stringify({ sub, roles, iat: now, exp: now + ttlSeconds }));
  const signature = createHmac("sha256", secret).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${signature}`;
}

/// One GraphQL operation over HTTP; throws on errors.
export async function gql(url, token, query, variables = {}) {
  const response = await fetch(`${url}/graphql`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors) throw new Error(`${query}: ${JSON.stringify(body.errors)}`);
  return body.data;
}

/// A graphql-ws client for the server, authenticated as the README shows.
export function wsClient(url, token) {
  return createClient({
    url: `${url.replace(/^http/, "ws")}/graphql`,
    connectionParams: { authorization: `Bearer ${token}` },
    lazy: true,
    retryAttempts: 0,
    // Node 20 has no WebSocket of its own.
    webSocketImpl: WebSocket,
  });
}

/// Chromium with no network but loopback. Every request that does not go to 127.0.0.1
/// is aborted and recorded in `blocked` (a test asserts it stays empty), and the
/// browser's resolver knows no other host, so WebSockets cannot leave either.
export async function offlineBrowser() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const blocked = [];
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === "127.0.0.1") return route.continue();
    blocked.push(url.href);
    return route.abort("internetdisconnected");
  });
  return { browser, context, blocked };
}

/// Records what a page reports: console errors, uncaught errors and CSP violations.
export async function watchPage(page) {
  const problems = [];
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  page.on("console", (message) => {
    if (message.type() === "error") {
      problems.push(`console: ${message.text()}`);
    }
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  return problems;
}

export const screenshotPath = (name) => join(repo, "docs/img", name);
