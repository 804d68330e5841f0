/**
 * What the Node black-box tests share: the real server binary started on the embedded
 * defaults (SQLite, in-process Kafka) in a temp dir, on a free port, with an HS256 secret
 * the tests sign their tokens with; and a time limit that reports the server's output.
 *
 * The binary is `$TASKWIRE_BIN`, else `$CARGO_TARGET_DIR/debug/taskwire` (build it with
 * `cargo build -p taskwire-api`). Each test file runs in a process of its own, so the
 * module state below belongs to one file's server.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

import { SignJWT } from "jose";

const secret = randomBytes(32).toString("hex");
const output: string[] = [];
let server: ChildProcess | undefined;
let dataDir = "";

function serverBinary(): string {
  const explicit = process.env["TASKWIRE_BIN"];
  const target = process.env["CARGO_TARGET_DIR"];
  const binary = explicit ?? (target ? join(target, "debug", "taskwire") : join("..", "target", "debug", "taskwire"));
  assert.ok(existsSync(binary), `no server binary at ${binary}: set TASKWIRE_BIN or CARGO_TARGET_DIR (cargo build -p taskwire-api)`);
  return binary;
}

/**
 * Rejects saying `what` (a function is read when the time is up) and what the server
 * printed, when `promise` does not settle within `ms`.
 */
export async function within<T>(ms: number, what: string | (() => string), promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const described = typeof what === "function" ? what() : what;
      reject(new Error(`timed out after ${ms} ms: ${described}\nserver output:\n${output.join("")}`));
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A token for `sub` with `roles`, signed with the server's secret. */
export async function token(sub: string, roles: string[], expiresIn: string | number = "10m"): Promise<string> {
  return new SignJWT({ roles })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(new TextEncoder().encode(secret));
}

/** Starts the server; resolves to its base URL (`http://127.0.0.1:<port>`) once it listens. */
export async function startServer(): Promise<string> {
  dataDir = mkdtempSync(join(tmpdir(), "taskwire-node-test-"));
  const child = spawn(serverBinary(), [], {
    env: {
      PATH: process.env["PATH"] ?? "",
      TASKWIRE_LISTEN: "127.0.0.1:0",
      TASKWIRE_DATA_DIR: dataDir,
      TASKWIRE_DATABASE_URL: `sqlite://${dataDir}/taskwire.db?mode=rwc`,
      TASKWIRE_JWT_SECRET: secret,
      RUST_LOG: process.env["TEST_LOG"] ? "info" : "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  server = child;
  child.stderr?.on("data", (chunk: Buffer) => output.push(chunk.toString()));
  const listening = new Promise<string>((resolve, reject) => {
    let stdout = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      output.push(chunk.toString());
      const match = /Taskwire is listening on (http:\/\/[^\s]+)/.exec(stdout);
      if (match?.[1]) {
        resolve(match[1]);
      }
    });
    child.on("exit", (code, signal) => reject(new Error(`the server exited (${code ?? signal}) before listening:\n${output.join("")}`)));
  });
  return within(60_000, "the server's 'Taskwire is listening on' line", listening);
}

/** Stops the server gracefully and removes its temp dir. */
export async function stopServer(): Promise<void> {
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server?.once("exit", resolve));
    server.kill("SIGTERM");
    await within(20_000, "the server to stop after SIGTERM", exited);
  }
  if (dataDir) {
    rmSync(dataDir, { recursive: true, force: true });
  }
}
