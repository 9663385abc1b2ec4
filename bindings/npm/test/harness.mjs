// Shared by the browser tests: a real concord-relay on loopback, a static
// file server for the package, headless Debian Chromium through
// playwright-core, and a tiny runner that ends with `N passed, N failed`.
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, extname, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

export const PACKAGE_DIR = fileURLToPath(new URL("..", import.meta.url));
const ROOT = join(PACKAGE_DIR, "..", "..");

/**
 * Starts the release relay (built by `cargo build --release -p relay-server`)
 * on 127.0.0.1:0, or on `listen` with the data folder `data` to restart one
 * that `stop({ keepData: true })` stopped; `args`: more relay flags.
 */
export async function startRelay({ listen = "127.0.0.1:0", data, args = [] } = {}) {
  const bin = process.env.CONCORD_RELAY ?? join(ROOT, "target", "release", "concord-relay");
  data ??= await mkdtemp(join(tmpdir(), "concord-npm-relay-"));
  const child = spawn(bin, ["--listen", listen, "--data", data, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CONCORD_"))),
  });
  let log = "";
  child.stderr.on("data", (d) => (log += d));
  const addr = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      const m = /^concord-relay listening on (\S+)/.exec(line);
      m ? resolve(m[1]) : reject(new Error(`unexpected relay output: ${line}`));
    });
    child.once("exit", (code) => reject(new Error(`relay exited (${code}): ${log}`)));
  });
  const key = (await readFile(join(data, "concord-relay.key"), "utf8")).trim();
  return {
    url: `ws://${addr}/v1/sync`,
    addr,
    data,
    key,
    async stop({ keepData = false } = {}) {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
      if (!keepData) await rm(data, { recursive: true, force: true });
    },
  };
}

const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".html": "text/html", ".json": "application/json" };

/** Serves the package folder over HTTP on 127.0.0.1 (the way a user serves an unbundled app). */
export async function startServer() {
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    if (path.includes("..")) return res.writeHead(400).end();
    try {
      const body = await readFile(join(PACKAGE_DIR, path));
      res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream", "cache-control": "no-store" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

/** Headless Debian Chromium (see ../shared/TOOLCHAIN.md for the flags). */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Runs named async tests in order, each under a hang guard; prints TAP-like lines and `N passed, N failed`. */
export async function runTests(tests, { guardMs = 60_000 } = {}) {
  let passed = 0;
  let failed = 0;
  for (const [name, fn] of tests) {
    let timer;
    try {
      await Promise.race([
        fn(),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`hang guard: no result after ${guardMs} ms`)), guardMs))),
      ]);
      passed++;
      console.log(`ok - ${name}`);
    } catch (e) {
      failed++;
      console.log(`not ok - ${name}\n  ${String(e?.stack ?? e).replaceAll("\n", "\n  ")}`);
    } finally {
      clearTimeout(timer);
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed;
}
