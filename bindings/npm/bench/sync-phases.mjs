// Where an initial sync of 100k documents × 10 fields goes, on one time
// line: the relay's frames as they arrive (the snapshot or the operations),
// every IndexedDB read-write transaction (its writes, its bytes, issue to
// complete), every main-thread task over 50 ms, and when the sync is done
// (the cursor at the relay's head, nothing left to store). Measured from
// the page's side only (WebSocket and IndexedDB are wrapped in the page),
// so it needs no special build. Run after `cargo xtask npm` and
// `cargo build --release -p relay-server`:
//   node bench/sync-phases.mjs         (BENCH_DOCS, BENCH_RELAY_ARGS as in main-thread.mjs)
import { mintToken } from "../dist/server.js";
import { startRelay, startServer, launchChromium } from "../test/harness.mjs";
import { newPage, seedRoom } from "./pages.mjs";

const N = Number(process.env.BENCH_DOCS ?? 100_000);
const relay = await startRelay({ args: (process.env.BENCH_RELAY_ARGS ?? "").split(" ").filter(Boolean) });
const server = await startServer();
const browser = await launchChromium();
const token = mintToken(relay.key, { room: "phases", ttlSeconds: 3600 });

// Another profile fills the room, so the measured one starts empty.
const cursor = await seedRoom(browser, server.origin, { url: relay.url, token, room: "phases", n: N });
// Let the relay compact its log, as it would long before a new device joins.
await new Promise((r) => setTimeout(r, Number(process.env.BENCH_SETTLE_MS ?? 2000)));

const page = await newPage(await browser.newContext(), server.origin);
const events = await page.evaluate(
  async ({ url, token, cursor }) => {
    const events = [];
    const t0 = performance.now();
    const at = () => Math.round(performance.now() - t0);
    new PerformanceObserver((list) => {
      for (const e of list.getEntries())
        events.push({ at: Math.round(e.startTime - t0), what: `long task ${Math.round(e.duration)} ms` });
    }).observe({ type: "longtask" });
    const Socket = window.WebSocket;
    window.WebSocket = class extends Socket {
      constructor(...args) {
        super(...args);
        this.addEventListener("message", (m) => {
          const size = m.data.byteLength ?? m.data.size ?? m.data.length;
          events.push({ at: at(), what: `frame in ${size} B` });
        });
      }
    };
    const put = IDBObjectStore.prototype.put;
    const del = IDBObjectStore.prototype.delete;
    const open = new Map();
    const note = (store, bytes, deletes) => {
      const tx = store.transaction;
      let info = open.get(tx);
      if (!info) {
        info = { start: at(), puts: 0, deletes: 0, bytes: 0, store: store.name };
        open.set(tx, info);
        tx.addEventListener("complete", () => {
          events.push({
            at: info.start,
            what: `idb ${info.store}: ${info.puts} puts ${(info.bytes / 1e6).toFixed(2)} MB, ${info.deletes} deletes; complete at ${at()}`,
          });
          open.delete(tx);
        });
      }
      if (deletes) info.deletes++;
      else {
        info.puts++;
        info.bytes += bytes;
      }
    };
    IDBObjectStore.prototype.put = function (value, key) {
      note(this, value?.byteLength ?? 0, false);
      return put.call(this, value, key);
    };
    IDBObjectStore.prototype.delete = function (key) {
      note(this, 0, true);
      return del.call(this, key);
    };
    const db = await window.concord.open("measured", url, "phases", token);
    await window.untilStatus(db, (s) => s.cursor >= cursor && s.pendingWrites === 0);
    events.push({ at: at(), what: "synced and stored" });
    await db.close();
    events.push({ at: at(), what: "closed" });
    await new Promise((r) => setTimeout(r, 100));
    return events.sort((a, b) => a.at - b.at);
  },
  { url: relay.url, token, cursor },
);

// Frames in a row are folded into one line.
let frames = null;
const flush = () => {
  if (frames) console.log(`${String(frames.first).padStart(6)} ms  ${frames.n} frames in, ${(frames.bytes / 1e6).toFixed(2)} MB, the last at ${frames.last}`);
  frames = null;
};
for (const e of events) {
  const m = /^frame in (\d+) B$/.exec(e.what);
  if (m) {
    frames ??= { first: e.at, n: 0, bytes: 0 };
    frames.n++;
    frames.bytes += Number(m[1]);
    frames.last = e.at;
    continue;
  }
  flush();
  console.log(`${String(e.at).padStart(6)} ms  ${e.what}`);
}
flush();
await browser.close();
await server.close();
await relay.stop();
