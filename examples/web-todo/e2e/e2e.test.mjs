// End-to-end: the built demo in two isolated headless Chromium contexts
// (playwright-core driving Debian's chromium), a real release
// concord-relay on loopback that gets SIGKILLed and restarted, and the
// `concord` CLI in the same room. Prints `N passed, N failed` last.
//
// Run after `cargo xtask demo --build-only` (or let `cargo xtask test` do it):
//   node e2e/e2e.test.mjs [--update-readme-image]
// Screenshots go to target/e2e/; --update-readme-image also writes the
// two-window picture to docs/demo.png.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, mkdir, readFile, rm, copyFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";
import { mintToken } from "concord-sync/server";
import { startRelay } from "../relay.mjs";
import { startServer } from "../serve.mjs";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const RELAY_BIN = process.env.CONCORD_RELAY_BIN ?? join(ROOT, "target/release/concord-relay");
const CLI_BIN = process.env.CONCORD_CLI_BIN ?? join(ROOT, "target/debug/concord");
const SHOTS = join(ROOT, "target/e2e");
const ROOM = "demo";

await mkdir(SHOTS, { recursive: true });
const scratch = await mkdtemp(join(tmpdir(), "concord-web-todo-e2e-"));
const relayData = join(scratch, "relay");
let relay = await startRelay({ bin: RELAY_BIN, listen: "127.0.0.1:0", data: relayData });
// Restarts reuse the address the system picked, as a real relay keeps its port.
const restartRelay = async () => {
  relay = await startRelay({ bin: RELAY_BIN, listen: relay.addr, data: relayData });
};
const server = await startServer({ port: 0, relayUrl: relay.url, keyFile: relay.keyFile, room: ROOM });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

/** A fresh isolated browser context (own IndexedDB, own storage) showing the demo. */
async function openWindow(label) {
  const context = await browser.newContext({ viewport: { width: 600, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log(`  [${label}] page error: ${e}`));
  await page.goto(server.origin);
  await ready(page);
  return page;
}

async function ready(page) {
  await page.waitForSelector("body[data-ready]", { timeout: 0 });
}

/** What the page shows: its todos in display order. */
const shown = (page) =>
  page.evaluate(() =>
    [...document.querySelectorAll("li.todo")].map((li) => ({
      id: li.dataset.id,
      title: li.querySelector("[data-testid=title]").value,
      done: li.querySelector("[data-testid=done]").checked,
      by: li.querySelector("[data-testid=by]").textContent,
    })),
  );

/** Waits (no time limit but the hang guard) until the page shows a todo matching `match`. */
async function waitForTodo(page, match) {
  const handle = await page.waitForFunction(
    (m) =>
      [...document.querySelectorAll("li.todo")]
        .map((li) => ({ id: li.dataset.id, title: li.querySelector("[data-testid=title]").value, done: li.querySelector("[data-testid=done]").checked }))
        .find((t) => Object.entries(m).every(([k, v]) => t[k] === v)) ?? false,
    match,
    { timeout: 0, polling: 50 },
  );
  return handle.jsonValue();
}

const row = (page, id) => page.locator(`li.todo[data-id="${id}"]`);

async function add(page, title) {
  await page.fill("[data-testid=new-title]", title);
  await page.press("[data-testid=new-title]", "Enter");
  return (await waitForTodo(page, { title })).id;
}

async function rename(page, id, title) {
  const input = row(page, id).locator("[data-testid=title]");
  await input.fill(title);
  await input.press("Enter");
}

const connection = (page) => page.getAttribute("[data-testid=status]", "data-state");
const waitForConnection = (page, state) =>
  page.waitForSelector(`[data-testid=status][data-state="${state}"]`, { timeout: 0 });
/** Every local write acknowledged by the relay. */
const waitForSynced = (page) => page.waitForSelector("#pending[data-count='0']", { timeout: 0 });

const cliToken = () => mintToken(readKey(), { room: ROOM, ttlSeconds: 600 });
let key;
const readKey = () => key;
const run = promisify(execFile);
/** Runs the `concord` CLI against the test's room; resolves to its stdout. */
async function concord(...args) {
  const { stdout } = await run(CLI_BIN, ["--data", join(scratch, "cli"), "--relay", relay.url, "--room", ROOM, "--token", cliToken(), ...args]);
  return stdout;
}

async function shoot(name, pages) {
  await Promise.all(pages.map((p, i) => p.screenshot({ path: join(SHOTS, `${name}-${"ab"[i]}.png`) })));
}

let a;
let b;
const ids = {};
const tests = [
  [
    "a todo added in one window appears in the other",
    async () => {
      key = (await readFile(relay.keyFile, "utf8")).trim();
      a = await openWindow("a");
      b = await openWindow("b");
      await waitForConnection(a, "online");
      await waitForConnection(b, "online");
      ids.milk = await add(a, "Buy milk");
      ids.trip = await add(a, "Book flights");
      await waitForTodo(b, { id: ids.milk, title: "Buy milk", done: false });
      await waitForTodo(b, { id: ids.trip, title: "Book flights" });
      await shoot("added", [a, b]);
    },
  ],
  [
    "offline edits merge per field; the same field goes to the last writer",
    async () => {
      await a.click("[data-testid=toggle-offline]");
      await waitForConnection(a, "offline");
      // Different fields of one todo: B completes it (and the relay
      // acknowledges that), then A, offline and unaware, renames it later.
      // A write of the whole document would undo B's completion.
      await row(b, ids.milk).locator("[data-testid=done]").check();
      // The same field: B renames first, then A renames later while still
      // offline: A's is the last write, though it reaches the relay last.
      await rename(b, ids.trip, "Book train tickets");
      await waitForSynced(b);
      await rename(a, ids.milk, "Buy oat milk");
      await rename(a, ids.trip, "Book flights to Lisbon");
      assert.equal(await connection(a), "offline", "A stayed offline");
      assert.equal((await shown(b)).find((t) => t.id === ids.milk).title, "Buy milk", "B has not seen A's offline rename");
      await a.click("[data-testid=toggle-offline]");
      await waitForConnection(a, "online");
      await waitForSynced(a);
      for (const page of [a, b]) {
        await waitForTodo(page, { id: ids.milk, title: "Buy oat milk", done: true });
        await waitForTodo(page, { id: ids.trip, title: "Book flights to Lisbon" });
      }
      assert.deepEqual(await shown(a), await shown(b), "both windows show the same list");
      const milk = (await shown(a)).find((t) => t.id === ids.milk);
      assert.match(milk.by, /^named by \S+ · done by \S+$/);
      await shoot("merged", [a, b]);
    },
  ],
  [
    "a reload shows the todos from IndexedDB while the relay is down",
    async () => {
      const before = await shown(a);
      await relay.stop("SIGKILL");
      await a.reload();
      await ready(a);
      // The relay is gone: everything shown came from this browser's IndexedDB.
      assert.notEqual(await connection(a), "online");
      assert.deepEqual(await shown(a), before);
      await shoot("reloaded-offline", [a, b]);
      await restartRelay();
      await waitForConnection(a, "online");
      await waitForConnection(b, "online");
    },
  ],
  [
    "both windows reconnect after the relay is SIGKILLed; nothing acknowledged is lost",
    async () => {
      ids.plants = await add(a, "Water the plants");
      ids.review = await add(b, "Review the pull request");
      await row(b, ids.trip).locator("[data-testid=up]").click();
      await waitForSynced(a);
      await waitForSynced(b);
      await waitForTodo(a, { id: ids.review });
      await relay.stop("SIGKILL");
      // Written while the relay is down: kept locally, synced on return.
      ids.call = await add(b, "Call the plumber");
      await rename(a, ids.plants, "Water the plants (twice)");
      await restartRelay();
      await waitForConnection(a, "online");
      await waitForConnection(b, "online");
      await waitForSynced(a);
      await waitForSynced(b);
      for (const page of [a, b]) {
        await waitForTodo(page, { id: ids.call });
        await waitForTodo(page, { id: ids.plants, title: "Water the plants (twice)" });
      }
      assert.deepEqual(await shown(a), await shown(b));
      // A new, empty browser learns everything from the relay alone: what
      // it acknowledged before the SIGKILL survived it.
      const c = await openWindow("c");
      const expected = await shown(a);
      // It may receive the room in several batches: wait for all of it.
      await c.waitForFunction((n) => document.querySelectorAll("li.todo").length >= n, expected.length, { timeout: 0, polling: 50 });
      await waitForTodo(c, { id: ids.plants, title: "Water the plants (twice)" });
      assert.deepEqual(await shown(c), expected);
      assert.equal((await shown(a))[0].id, ids.trip, "the reorder synced");
      await c.context().close();
    },
  ],
  [
    "the concord CLI and the browser see each other's writes",
    async () => {
      await concord("put", "todos", "from-cli", JSON.stringify({ title: "Added from the terminal", done: false, order: 100, titleBy: "concord CLI" }));
      await waitForTodo(a, { id: "from-cli", title: "Added from the terminal" });
      await waitForTodo(b, { id: "from-cli", done: false });
      await row(b, "from-cli").locator("[data-testid=done]").check();
      await waitForSynced(b);
      const fields = JSON.parse(await concord("get", "todos", "from-cli"));
      assert.equal(fields.done, true);
      assert.equal(fields.title, "Added from the terminal");
      const listed = (await concord("list", "todos")).trim().split("\n").map((l) => JSON.parse(l).id);
      assert.deepEqual(listed.sort(), (await shown(a)).map((t) => t.id).sort());
      await waitForTodo(a, { id: "from-cli", done: true });
      await shoot("final", [a, b]);
      await sideBySide();
    },
  ],
];

/** The two final screenshots side by side in one picture (the README's). */
async function sideBySide() {
  const img = async (side) => `data:image/png;base64,${(await readFile(join(SHOTS, `final-${side}.png`))).toString("base64")}`;
  const html = `<!doctype html><body style="margin:0;background:#d9d6cf;display:flex;gap:16px;padding:16px;width:max-content">
    <img src="${await img("a")}" style="border-radius:10px;box-shadow:0 2px 12px #0003"><img src="${await img("b")}" style="border-radius:10px;box-shadow:0 2px 12px #0003"></body>`;
  const page = await browser.newPage({ viewport: { width: 1248, height: 672 } });
  await page.setContent(html);
  await page.screenshot({ path: join(SHOTS, "two-windows.png"), fullPage: true });
  await page.close();
  if (process.argv.includes("--update-readme-image")) await copyFile(join(SHOTS, "two-windows.png"), join(ROOT, "docs/demo.png"));
}

let passed = 0;
let failed = 0;
for (const [name, fn] of tests) {
  let timer;
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("hang guard: no result after 60 s")), 60_000))),
    ]);
    passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    // A failed step may leave the relay down: the next steps need it.
    if (relay.child.exitCode !== null || relay.child.signalCode !== null) {
      await restartRelay().catch((err) => console.log(`  cannot restart the relay: ${err.message}`));
    }
    console.log(`not ok - ${name}\n  ${String(e?.stack ?? e).replaceAll("\n", "\n  ")}`);
    for (const [i, page] of [a, b].entries()) await page?.screenshot({ path: join(SHOTS, `failed-${"ab"[i]}.png`) }).catch(() => {});
  } finally {
    clearTimeout(timer);
  }
}
await writeFile(join(SHOTS, "README.txt"), "Screenshots from examples/web-todo/e2e/e2e.test.mjs: <step>-a.png and <step>-b.png are the two windows.\n");
await browser.close();
await server.close();
await relay.stop("SIGTERM");
await rm(scratch, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
