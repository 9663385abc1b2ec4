// How long the wasm keeps Chromium's main thread busy in one go during an
// initial sync of 100k documents × 10 fields from a real relay into an
// empty IndexedDB database, and while reopening that database: the longest
// task and the number of tasks over 50 ms (the Long Tasks API), beside the
// wall time. Run after `cargo xtask npm` and
// `cargo build --release -p relay-server`:
//   node bench/main-thread.mjs            (BENCH_DOCS=10000 for a quick run;
//   BENCH_RELAY_ARGS="--keep-recent-ops 1000000 --max-log-ops 2000000" to
//   sync from the relay's log instead of a compacted snapshot)
import { mintToken } from "../dist/server.js";
import { startRelay, startServer, launchChromium } from "../test/harness.mjs";
import { newPage, seedRoom } from "./pages.mjs";

const N = Number(process.env.BENCH_DOCS ?? 100_000);
const relay = await startRelay({ args: (process.env.BENCH_RELAY_ARGS ?? "").split(" ").filter(Boolean) });
const server = await startServer();
const browser = await launchChromium();
const token = mintToken(relay.key, { room: "main-thread", ttlSeconds: 3600 });

// Another profile fills the room, so the measured one starts empty.
const cursor = await seedRoom(browser, server.origin, { url: relay.url, token, room: "main-thread", n: N });

const page = await newPage(await browser.newContext(), server.origin);
/** Runs `body` in the page while recording long tasks; resolves to its wall time and the long tasks. */
const measured = (body, arg) =>
  page.evaluate(
    async ({ body, arg }) => {
      const tasks = [];
      const observer = new PerformanceObserver((list) => tasks.push(...list.getEntries().map((e) => e.duration)));
      observer.observe({ type: "longtask" });
      const t0 = performance.now();
      await new Function("arg", `return (${body})(arg)`)(arg);
      const ms = performance.now() - t0;
      // Long-task entries arrive after the task: let them.
      await new Promise((r) => setTimeout(r, 100));
      observer.disconnect();
      return { ms, longest: Math.max(0, ...tasks), over50: tasks.length };
    },
    { body: body.toString(), arg },
  );

const sync = await measured(
  async ({ url, token, cursor }) => {
    const db = await window.concord.open("measured", url, "main-thread", token);
    await window.untilStatus(db, (s) => s.cursor >= cursor && s.pendingWrites === 0);
    await db.close();
  },
  { url: relay.url, token, cursor },
);
const reopen = await measured(async () => {
  const db = await window.concord.open("measured", { connect: false });
  await db.close();
});

console.table([
  { figure: `initial sync of ${N} docs × 10 fields, stored`, ms: Math.round(sync.ms), "longest task ms": Math.round(sync.longest), "tasks > 50 ms": sync.over50 },
  { figure: `reopen ${N} docs × 10 fields`, ms: Math.round(reopen.ms), "longest task ms": Math.round(reopen.longest), "tasks > 50 ms": reopen.over50 },
]);
await browser.close();
await server.close();
await relay.stop();
