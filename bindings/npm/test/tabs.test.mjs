// concord-sync in several tabs of one headless Chromium against real
// concord-relays on loopback: tabs of one origin share one database (one
// leader tab runs it, the others forward to it), the leader's tab closing
// hands it to another, the `online` event as a reconnect hint, and a
// token-fetching function asked again after the relay refuses a token.
// Run after `cargo xtask npm` and `cargo build --release -p relay-server`:
//   node test/tabs.test.mjs
import assert from "node:assert/strict";
import { mintToken } from "../dist/server.js";
import { startRelay, startServer, launchChromium, runTests } from "./harness.mjs";

const relay = await startRelay();
const server = await startServer();
const browser = await launchChromium();
/** The tabs of one user: one origin, one IndexedDB, one lock manager. */
const tabs = await browser.newContext();
/** Another device: a separate profile syncing through the relay. */
const device = await browser.newContext();
const token = (room, key = relay.key) => mintToken(key, { room, rights: "rw", ttlSeconds: 3600 });

async function newPage(context = tabs) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log(`  page error: ${e}`));
  await page.goto(`${server.origin}/test/browser/page.html`);
  await page.waitForFunction(() => window.concord);
  return page;
}

/** Opens database `name` in `page` as `window.dbs[name]`, syncing `room`; resolves to whether this tab leads. */
async function openIn(page, name, room, extra = {}) {
  return page.evaluate(
    async ({ name, url, room, token, extra }) => {
      window.dbs[name] = await window.concord.open(name, { relayUrl: url, room, token, ...extra });
      return window.dbs[name].leading;
    },
    { name, url: relay.url, room, token: token(room), extra },
  );
}

/** Waits in `page` until document `id` of `todos` in `name` has `fields`; resolves to how long that took (logged, not asserted). */
function seen(page, name, id, fields) {
  return page.evaluate(
    async ({ name, id, fields }) => {
      const db = window.dbs[name];
      const todos = db.collection("todos");
      const start = performance.now();
      const want = JSON.stringify(fields);
      await window.until(db, () => JSON.stringify(todos.get(id)) === want);
      return performance.now() - start;
    },
    { name, id, fields },
  );
}

const failed = await runTests([
  [
    "a write in one tab is seen in the other, online and offline, and syncs once",
    async () => {
      const a = await newPage();
      const b = await newPage();
      const other = await newPage(device);
      assert.equal(await openIn(a, "shared", "tabs"), true, "the first tab leads");
      assert.equal(await openIn(b, "shared", "tabs"), false, "the second tab follows");
      await openIn(other, "other", "tabs");
      const ids = await Promise.all([a.evaluate(() => window.dbs.shared.replicaId), b.evaluate(() => window.dbs.shared.replicaId)]);
      assert.equal(ids[0], ids[1], "one database, one replica id");

      // A → B while B waits for it; B → A.
      const inB = seen(b, "shared", "t1", { title: "from a" });
      await a.evaluate(() => window.dbs.shared.collection("todos").put("t1", { title: "from a" }));
      console.log(`  a write in the leader tab showed in the follower after ${(await inB).toFixed(1)} ms`);
      const inA = seen(a, "shared", "t2", { title: "from b" });
      const mine = await b.evaluate(async () => {
        const todos = window.dbs.shared.collection("todos");
        await todos.put("t2", { title: "from b" });
        // A resolved write reads back at once in the tab that made it.
        return todos.get("t2");
      });
      assert.deepEqual(mine, { title: "from b" });
      console.log(`  a write in the follower tab showed in the leader after ${(await inA).toFixed(1)} ms`);

      // Offline: the tabs still see each other's writes.
      await a.evaluate(async () => {
        window.dbs.shared.disconnect();
        await window.untilStatus(window.dbs.shared, (s) => s.connection === "offline");
      });
      const status = await b.evaluate(() => window.untilStatus(window.dbs.shared, (s) => s.connection === "offline"));
      assert.equal(status.connection, "offline", "the follower sees the leader's status");
      const offB = seen(b, "shared", "t3", { title: "offline a" });
      await a.evaluate(() => window.dbs.shared.collection("todos").put("t3", { title: "offline a" }));
      await offB;
      const offA = seen(a, "shared", "t4", { title: "offline b" });
      await b.evaluate(() => window.dbs.shared.collection("todos").put("t4", { title: "offline b" }));
      await offA;
      const counts = await b.evaluate(() => {
        const todos = window.dbs.shared.collection("todos");
        return { list: todos.list().map((d) => d.id), page: todos.list({ after: "t1", limit: 2 }).map((d) => d.id), pending: window.dbs.shared.status.value.pendingWrites };
      });
      assert.deepEqual(counts.list, ["t1", "t2", "t3", "t4"]);
      assert.deepEqual(counts.page, ["t2", "t3"]);
      assert.ok(counts.pending >= 2, `pending while offline: ${counts.pending}`);

      // Back online from the follower: the leader's one connection syncs everything.
      await b.evaluate(async () => {
        window.dbs.shared.connect();
        await window.dbs.shared.flush();
      });
      for (const [id, title] of [["t1", "from a"], ["t2", "from b"], ["t3", "offline a"], ["t4", "offline b"]]) {
        await seen(other, "other", id, { title });
      }
      // A typed error crosses tabs as its class.
      const error = await b.evaluate(async () => {
        try {
          await window.dbs.shared.collection("todos").putIf("t1", { title: "stale" }, null);
          return "written";
        } catch (e) {
          return { name: e.name, isConflict: e instanceof window.concord.ConflictError, id: e.id };
        }
      });
      assert.deepEqual(error, { name: "ConflictError", isConflict: true, id: "t1" });
      // A transaction from the follower: applied together, read back at once.
      const afterTx = await b.evaluate(async () => {
        const db = window.dbs.shared;
        await db.transaction((tx) => tx.put("todos", "t5", { title: "tx" }).delete("todos", "t4").unset("todos", "t1", ["title"]));
        const todos = db.collection("todos");
        return { t5: todos.get("t5"), t4: todos.get("t4") ?? null, t1: todos.get("t1") };
      });
      assert.deepEqual(afterTx, { t5: { title: "tx" }, t4: null, t1: {} });
      await seen(a, "shared", "t5", { title: "tx" });
      await Promise.all([a.close(), b.close(), other.close()]);
    },
  ],
  [
    "when the leader's tab closes another tab takes over; its writes sync and persist",
    async () => {
      const a = await newPage();
      const b = await newPage();
      const other = await newPage(device);
      assert.equal(await openIn(a, "takeover", "takeover"), true);
      assert.equal(await openIn(b, "takeover", "takeover"), false);
      await openIn(other, "other2", "takeover");
      // Written through the leader, durable once resolved.
      await b.evaluate(() => Promise.all(Array.from({ length: 50 }, (_, i) => window.dbs.takeover.collection("todos").put(`w${i}`, { i }))));
      // The tab goes away without closing the database.
      await a.close();
      await b.waitForFunction(() => window.dbs.takeover.leading);
      const after = await b.evaluate(async () => {
        const db = window.dbs.takeover;
        await db.collection("todos").put("late", { by: "b" });
        await db.flush();
        return db.collection("todos").list().length;
      });
      assert.equal(after, 51, "the new leader's store holds every resolved write");
      await seen(other, "other2", "late", { by: "b" });
      await seen(other, "other2", "w49", { i: 49 });
      await b.reload();
      await b.waitForFunction(() => window.concord);
      await openIn(b, "takeover", "takeover", { connect: false });
      const reloaded = await b.evaluate(() => window.dbs.takeover.collection("todos").list().length);
      assert.equal(reloaded, 51, "a reload restores everything");
      await Promise.all([b.close(), other.close()]);
    },
  ],
  [
    "a call the leader never answered is run by the next leader",
    async () => {
      const a = await newPage();
      const b = await newPage();
      await openIn(a, "handover", "handover", { connect: false });
      await openIn(b, "handover", "handover", { connect: false });
      // The leader stops answering (close() does at once) and the lock
      // stays taken (stolen by the test) with the follower's write sent to
      // nobody; then the lock frees and the follower takes over.
      await a.evaluate(async () => {
        window.closing = window.dbs.handover.close();
        await new Promise((granted) => {
          navigator.locks.request("concord-sync:handover", { steal: true }, () => {
            granted();
            return new Promise((release) => (window.releaseLock = release));
          });
        });
        await window.closing;
      });
      await b.evaluate(() => {
        window.during = window.dbs.handover.collection("todos").put("during", { v: 1 });
      });
      assert.equal(await b.evaluate(() => window.dbs.handover.leading), false);
      await a.evaluate(() => window.releaseLock());
      const result = await b.evaluate(async () => {
        const db = window.dbs.handover;
        const revision = await window.during;
        return { revision: typeof revision, leading: db.leading, doc: db.collection("todos").get("during") };
      });
      assert.deepEqual(result, { revision: "string", leading: true, doc: { v: 1 } });
      await b.reload();
      await b.waitForFunction(() => window.concord);
      await openIn(b, "handover", "handover", { connect: false });
      assert.deepEqual(await b.evaluate(() => window.dbs.handover.collection("todos").get("during")), { v: 1 }, "stored");
      await Promise.all([a.close(), b.close()]);
    },
  ],
  [
    "the online event reconnects at once; the offline event does not disconnect",
    async () => {
      const own = await startRelay();
      const context = await browser.newContext();
      const page = await newPage(context);
      await page.evaluate(
        async ({ url, token }) => {
          window.dbs.hint = await window.concord.open("hint", url, "hint", token);
          await window.untilStatus(window.dbs.hint, (s) => s.connection === "online");
        },
        { url: own.url, token: token("hint", own.key) },
      );
      await context.setOffline(true);
      const afterOffline = await page.evaluate(async () => {
        if (navigator.onLine) await new Promise((r) => addEventListener("offline", r, { once: true }));
        await new Promise((r) => setTimeout(r, 0));
        return window.dbs.hint.status.value.connection;
      });
      assert.notEqual(afterOffline, "offline", "the offline event is only a hint");
      // A real outage: the relay goes away and the client backs off.
      await own.stop({ keepData: true });
      const deadline = await page.evaluate(async () => {
        const s = await window.untilStatus(window.dbs.hint, (s) => s.connection === "reconnecting" && s.retryAt - Date.now() > 1500);
        return s.retryAt;
      });
      const back = await startRelay({ listen: own.addr, data: own.data });
      // Watch for the reconnection before the network "comes back".
      await page.evaluate(() => {
        window.reconnectedAt = window.untilStatus(window.dbs.hint, (s) => s.connection === "connecting" || s.connection === "online").then(() => Date.now());
      });
      await context.setOffline(false);
      const at = await page.evaluate(async () => {
        const at = await window.reconnectedAt;
        await window.untilStatus(window.dbs.hint, (s) => s.connection === "online");
        return at;
      });
      assert.ok(at < deadline, `reconnected ${deadline - at} ms before the backoff would have`);
      await context.close();
      await back.stop();
    },
  ],
  [
    "a token function is asked again after the relay refuses an expired token",
    async () => {
      const page = await newPage();
      const tokens = {
        expired: mintToken(relay.key, { room: "refresh", rights: "rw", expiresAt: Math.floor(Date.now() / 1000) - 60 }),
        fresh: token("refresh"),
      };
      const result = await page.evaluate(
        async ({ url, tokens }) => {
          let calls = 0;
          const fetchToken = async () => (++calls === 1 ? tokens.expired : tokens.fresh);
          const db = await window.concord.open("refresh", url, "refresh", fetchToken);
          await db.collection("todos").put("r", { ok: true });
          // Not flush(): it fails fast while syncing is stopped over the refused token.
          await window.untilStatus(db, (s) => s.connection === "online" && s.pendingWrites === 0);
          const result = { calls, connection: db.status.value.connection };
          await db.close();
          return result;
        },
        { url: relay.url, tokens },
      );
      assert.ok(result.calls >= 2, `token function calls: ${result.calls}`);
      assert.equal(result.connection, "online");
      await page.close();
    },
  ],
]);

await browser.close();
await server.close();
await relay.stop();
process.exit(failed ? 1 : 0);
