// The IndexedDB figures in headless Chromium, against a real relay:
// 100k single-field puts issued together until all are durable; opening a
// database of 100k documents × 10 fields until it is ready to read; initial
// sync of those documents from the relay into an empty database.
// Run after `cargo xtask npm` and `cargo build --release -p relay-server`:
//   node bench/browser.mjs
// PROFILE=out.cpuprofile also writes Chromium's CPU profile of the puts row
// (through the DevTools protocol; open it in Chrome DevTools' Performance tab).
import { writeFileSync } from "node:fs";
import { mintToken } from "../dist/server.js";
import { startRelay, startServer, launchChromium } from "../test/harness.mjs";
import { newPage } from "./pages.mjs";

const N = Number(process.env.BENCH_DOCS ?? 100_000);
const relay = await startRelay();
const server = await startServer();
const browser = await launchChromium();
const context = await browser.newContext();
const token = mintToken(relay.key, { room: "bench", ttlSeconds: 3600 });

const page = await newPage(context, server.origin);
const cdp = process.env.PROFILE ? await context.newCDPSession(page) : undefined;
if (cdp) {
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.start");
}
const puts = await page.evaluate(async (N) => {
  const db = await window.concord.open("bench-puts");
  const c = db.collection("c");
  const t0 = performance.now();
  const writes = [];
  for (let i = 0; i < N; i++) writes.push(c.put(`d${i}`, { v: i }));
  await Promise.all(writes);
  const ms = performance.now() - t0;
  await db.close();
  return ms;
}, N);
if (cdp) writeFileSync(process.env.PROFILE, JSON.stringify((await cdp.send("Profiler.stop")).profile));

const { build, reopen, cursor } = await page.evaluate(
  async ({ url, token, N }) => {
    const db = await window.concord.open("bench-big", url, "bench", token);
    const t0 = performance.now();
    await db.transaction((tx) => {
      for (let i = 0; i < N; i++) {
        const fields = {};
        for (let f = 0; f < 10; f++) fields[`f${f}`] = `value ${i}.${f}`;
        tx.put("docs", `d${String(i).padStart(6, "0")}`, fields);
      }
    });
    const build = performance.now() - t0;
    await db.flush();
    const cursor = db.status.value.cursor;
    await db.close();
    const t1 = performance.now();
    const again = await window.concord.open("bench-big");
    const ready = again.collection("docs").get(`d${String(N - 1).padStart(6, "0")}`) !== undefined;
    const reopen = performance.now() - t1;
    if (!ready) throw new Error("reopened database lacks its documents");
    await again.close();
    return { build, reopen, cursor };
  },
  { url: relay.url, token, N },
);

const fresh = await newPage(context, server.origin);
const sync = await fresh.evaluate(
  async ({ url, token, cursor, N }) => {
    const t0 = performance.now();
    const db = await window.concord.open("bench-sync", url, "bench", token);
    const docs = db.collection("docs");
    const last = `d${String(N - 1).padStart(6, "0")}`;
    // Status changes come as the cursor moves; check the last document too.
    await window.untilStatus(db, (s) => s.cursor >= cursor && docs.get(last) !== undefined);
    const ms = performance.now() - t0;
    const count = db.collection("docs").list().length;
    await db.close();
    return { ms, count };
  },
  { url: relay.url, token, cursor, N },
);

console.table([
  { figure: `${N} single-field puts issued together, all durable`, ms: Math.round(puts), target: "≤ 1000" },
  { figure: `transaction of ${N} docs × 10 fields, durable`, ms: Math.round(build), target: "" },
  { figure: `open ${N} docs × 10 fields, ready to read`, ms: Math.round(reopen), target: "≤ 1000" },
  { figure: `initial sync of ${sync.count} docs × 10 fields from the relay, stored`, ms: Math.round(sync.ms), target: "≤ 2000" },
]);
await browser.close();
await server.close();
await relay.stop();
