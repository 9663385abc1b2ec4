// concord-sync in headless Chromium against a real concord-relay on
// loopback: IndexedDB durability, convergence, remote subscriptions,
// offline writes, tokens minted by concord-sync/server, the checkpoint
// record (an initial sync from a compacted room, reloads, a new checkpoint
// after writes), and a tab of an
// older package blocking the IndexedDB schema upgrade.
// Run after `cargo xtask npm` and `cargo build --release -p relay-server`:
//   node test/browser.test.mjs
import assert from "node:assert/strict";
import { mintToken } from "../dist/server.js";
import { startRelay, startServer, launchChromium, runTests } from "./harness.mjs";

const relay = await startRelay();
const server = await startServer();
const browser = await launchChromium();
const context = await browser.newContext();
const token = (room, rights = "rw") => mintToken(relay.key, { room, rights, ttlSeconds: 3600 });

async function newPage() {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log(`  page error: ${e}`));
  await page.goto(`${server.origin}/test/browser/page.html`);
  await page.waitForFunction(() => window.concord);
  return page;
}

/** Opens database `name` in `page` as `window.dbs[name]`, syncing `room` (or local when room is null). */
async function openIn(page, name, room, extra = {}) {
  await page.evaluate(
    async ({ name, url, room, token, extra }) => {
      const options = room === null ? { ...extra } : { relayUrl: url, room, token, ...extra };
      window.dbs[name] = await window.concord.open(name, options);
    },
    { name, url: relay.url, room, token: room === null ? undefined : token(room), extra },
  );
}

const a = await newPage();
const b = await newPage();

const failed = await runTests([
  [
    "IndexedDB keeps every write across close, reopen and page reload",
    async () => {
      const page = await newPage();
      await openIn(page, "durable", null);
      const first = await page.evaluate(async () => {
        const db = window.dbs.durable;
        const notes = db.collection("notes");
        // Issued together, awaited together.
        await Promise.all(Array.from({ length: 200 }, (_, i) => notes.put(`n${String(i).padStart(3, "0")}`, { i, text: `note ${i}` })));
        await notes.delete("n000");
        await db.close();
        const names = (await indexedDB.databases()).map((d) => d.name);
        const again = await window.concord.open("durable");
        const docs = again.collection("notes").list();
        const result = { names, count: docs.length, first: docs[0], replica: again.replicaId, before: db.replicaId };
        await again.close();
        return result;
      });
      assert.ok(first.names.includes("durable"), "stored in IndexedDB");
      assert.equal(first.count, 199);
      assert.deepEqual(first.first.data, { i: 1, text: "note 1" });
      assert.equal(first.replica, first.before, "the replica id is stored too");
      await page.reload();
      await page.waitForFunction(() => window.concord);
      await openIn(page, "durable", null);
      const after = await page.evaluate(() => {
        const notes = window.dbs.durable.collection("notes");
        return { count: notes.list().length, last: notes.get("n199"), gone: notes.get("n000") ?? null };
      });
      assert.deepEqual(after, { count: 199, last: { i: 199, text: "note 199" }, gone: null });
      await page.close();
    },
  ],
  [
    "thousands of puts issued together (stored as one logged batch) survive a reload right after they resolve, and later writes win",
    async () => {
      const page = await newPage();
      await openIn(page, "logged", null);
      await page.evaluate(async () => {
        const notes = window.dbs.logged.collection("notes");
        // 3,000 puts make one persist batch of 6,000 records: the store logs it.
        await Promise.all(Array.from({ length: 3000 }, (_, i) => notes.put(`n${String(i).padStart(4, "0")}`, { i })));
        // Right behind it, likely while the logged batch is still being copied.
        await notes.put("n0001", { i: -1 });
        await notes.delete("n0002");
      });
      await page.reload(); // no close(): the copy into records may not have finished
      await page.waitForFunction(() => window.concord);
      await openIn(page, "logged", null);
      const after = await page.evaluate(async () => {
        const db = window.dbs.logged;
        const notes = db.collection("notes");
        const seen = { count: notes.list().length, changed: notes.get("n0001"), gone: notes.get("n0002") ?? null, last: notes.get("n2999") };
        await notes.put("n0003", { i: -3 });
        await db.close();
        const again = await window.concord.open("logged");
        const c = again.collection("notes");
        const reread = { count: c.list().length, changed: c.get("n0001"), gone: c.get("n0002") ?? null, later: c.get("n0003") };
        await again.close();
        return { seen, reread };
      });
      assert.deepEqual(after.seen, { count: 2999, changed: { i: -1 }, gone: null, last: { i: 2999 } });
      assert.deepEqual(after.reread, { count: 2999, changed: { i: -1 }, gone: null, later: { i: -3 } });
      await page.close();
    },
  ],
  [
    "an initial sync from a compacted room is stored as the checkpoint; reload, writes that make a new checkpoint, reload again keep every document",
    async () => {
      // A relay that compacts at once, so a new database syncs from its snapshot.
      const compacting = await startRelay({ args: ["--keep-recent-ops", "0", "--compaction-min-ops", "1", "--compaction-min-fold-percent", "0"] });
      const room = "checkpoint";
      const roomToken = mintToken(compacting.key, { room, ttlSeconds: 3600 });
      try {
        const seeder = await newPage();
        await seeder.evaluate(
          async ({ url, room, token }) => {
            const db = await window.concord.open("ckpt-seed", { relayUrl: url, room, token, storage: "memory" });
            window.dbs.seed = db;
            await db.transaction((tx) => {
              for (let i = 0; i < 3000; i++) tx.put("docs", `d${String(i).padStart(4, "0")}`, { i, text: `doc ${i}` });
            });
            await db.flush();
          },
          { url: compacting.url, room, token: roomToken },
        );
        // The relay folds only what every member has confirmed, judged when
        // a push arrives: a few more writes until it has compacted.
        for (let i = 0; ; i++) {
          const metrics = await (await fetch(`http://${compacting.addr}/metrics`)).text();
          if (/^concord_compactions_total [1-9]/m.test(metrics)) break;
          if (i === 200) throw new Error("the relay did not compact");
          await seeder.evaluate(async (i) => {
            await window.dbs.seed.collection("marks").put("m", { i });
            await window.dbs.seed.flush();
          }, i);
          await new Promise((r) => setTimeout(r, 100));
        }
        const cursor = await seeder.evaluate(async () => {
          const db = window.dbs.seed;
          const cursor = db.status.value.cursor;
          await db.close();
          return cursor;
        });
        await seeder.close();
        const page = await newPage();
        /** The checkpoint and `docs` records in IndexedDB, once no logged batch waits to be copied (while the database is open). */
        const stored = () =>
          page.evaluate(async () => {
            const idb = await new Promise((resolve, reject) => {
              const request = indexedDB.open("ckpt");
              request.onsuccess = () => resolve(request.result);
              request.onerror = () => reject(request.error);
            });
            const all = (name, what) =>
              new Promise((resolve, reject) => {
                const request = idb.transaction(name, "readonly").objectStore(name)[what]();
                request.onsuccess = () => resolve(request.result);
                request.onerror = () => reject(request.error);
              });
            for (let i = 0; (await all("log", "getAllKeys")).length > 0; i++) {
              if (i === 600) throw new Error("logged batches were never copied");
              await new Promise((r) => setTimeout(r, 100));
            }
            // Keys: `B` the checkpoint; `D`, the collection's length (u16 BE), collection, id.
            const keys = (await all("records", "getAllKeys")).map((k) => new Uint8Array(k));
            const docsKey = (k) => k[0] === 68 && new TextDecoder().decode(k.subarray(3, 3 + ((k[1] << 8) | k[2]))) === "docs";
            idb.close();
            return { checkpoints: keys.filter((k) => k.length === 1 && k[0] === 66).length, documents: keys.filter(docsKey).length };
          });
        await page.evaluate(
          async ({ url, room, token, cursor }) => {
            const db = await window.concord.open("ckpt", { relayUrl: url, room, token });
            window.dbs.ckpt = db;
            await window.untilStatus(db, (s) => s.cursor >= cursor && s.pendingWrites === 0);
            await window.until(db, () => db.collection("docs").list().length === 3000);
          },
          { url: compacting.url, room, token: roomToken, cursor },
        );
        assert.deepEqual(await stored(), { checkpoints: 1, documents: 0 }, "the snapshot stored as the checkpoint, no record per document of it");
        // The package reads snapshot formats 4 and 5 only (sync-core without
        // `legacy-snapshots`) and says so in its Hello: the relay's snapshot,
        // stored as received, is in one of them.
        const format = await page.evaluate(async () => {
          const idb = await new Promise((resolve, reject) => {
            const request = indexedDB.open("ckpt");
            request.onsuccess = () => resolve(request.result);
            request.onerror = () => reject(request.error);
          });
          const value = await new Promise((resolve, reject) => {
            const request = idb.transaction("records", "readonly").objectStore("records").get(new Uint8Array([66]));
            request.onsuccess = () => resolve(request.result);
            request.onerror = () => reject(request.error);
          });
          idb.close();
          const bytes = ArrayBuffer.isView(value) ? new Uint8Array(value.buffer, value.byteOffset, value.byteLength) : new Uint8Array(value);
          // The checkpoint record's version byte, then the snapshot: magic "CNSN", format.
          const at = bytes.findIndex((_, i) => bytes[i] === 67 && bytes[i + 1] === 78 && bytes[i + 2] === 83 && bytes[i + 3] === 78);
          return at < 0 ? null : bytes[at + 4];
        });
        assert.ok(format === 4 || format === 5, `the stored snapshot is in format ${format}`);
        await page.evaluate(() => window.dbs.ckpt.close());
        await page.reload();
        await page.waitForFunction(() => window.concord);
        const reopened = await page.evaluate(async () => {
          const db = await window.concord.open("ckpt", { connect: false });
          const docs = db.collection("docs");
          const seen = { count: docs.list().length, first: docs.get("d0000"), last: docs.get("d2999") };
          // 1,100 documents changed or added (more than the 1,024 records that
          // make a new checkpoint) in puts issued together, then a delete and
          // a change after it: records over the new checkpoint.
          const writes = [];
          for (let i = 0; i < 1100; i++) writes.push(docs.put(`d${String(i * 2).padStart(4, "0")}`, { i: -i }));
          for (let i = 0; i < 100; i++) writes.push(docs.put(`n${i}`, { n: i }));
          await Promise.all(writes);
          await docs.delete("d0001");
          await docs.put("d0002", { text: "changed" });
          await db.close();
          return seen;
        });
        assert.deepEqual(reopened, { count: 3000, first: { i: 0, text: "doc 0" }, last: { i: 2999, text: "doc 2999" } });
        await page.reload();
        await page.waitForFunction(() => window.concord);
        await page.evaluate(async () => (window.dbs.ckpt = await window.concord.open("ckpt", { connect: false })));
        // Open copies the batches logged before the reload into the records.
        const after = await stored();
        assert.equal(after.checkpoints, 1);
        assert.ok(after.documents < 1024, `a new checkpoint took the records written since: ${after.documents} document records`);
        const again = await page.evaluate(async () => {
          const db = window.dbs.ckpt;
          const docs = db.collection("docs");
          const result = {
            count: docs.list().length,
            rewritten: docs.get("d0004"),
            last: docs.get("d2999"),
            added: docs.get("n99"),
            deleted: docs.get("d0001") ?? null,
            changed: docs.get("d0002"),
            untouched: docs.get("d0003"),
          };
          await db.close();
          return result;
        });
        assert.deepEqual(again, {
          count: 3099,
          rewritten: { i: -2, text: "doc 4" },
          last: { i: 2999, text: "doc 2999" },
          added: { n: 99 },
          deleted: null,
          changed: { i: -1, text: "changed" },
          untouched: { i: 3, text: "doc 3" },
        });
        await page.close();
      } finally {
        await compacting.stop();
      }
    },
  ],
  [
    "a token minted by concord-sync/server is accepted and two databases converge",
    async () => {
      // A fetches its token through a function, as an app asking its backend would.
      await page_open_with_token_function(a, "a", "converge");
      await openIn(b, "b", "converge");
      await a.evaluate(() => window.dbs.a.collection("todos").put("t1", { title: "from a" }));
      await b.evaluate(() => window.dbs.b.collection("todos").put("t1", { done: true }));
      await Promise.all([a.evaluate(() => window.dbs.a.flush()), b.evaluate(() => window.dbs.b.flush())]);
      const check = (page, name) =>
        page.evaluate(
          async ({ name }) => {
            const db = window.dbs[name];
            const todos = db.collection("todos");
            await window.until(db, () => todos.get("t1")?.title === "from a" && todos.get("t1")?.done === true);
            return { doc: todos.get("t1"), status: db.status.value.connection };
          },
          { name },
        );
      const [fromA, fromB] = await Promise.all([check(a, "a"), check(b, "b")]);
      assert.deepEqual(fromA.doc, { done: true, title: "from a" });
      assert.deepEqual(fromB.doc, fromA.doc);
      assert.equal(fromA.status, "online");
    },
  ],
  [
    "subscriptions fire on remote changes",
    async () => {
      const seen = b.evaluate(
        () =>
          new Promise((resolve) => {
            const stop = window.dbs.b.collection("todos").subscribe((change) => {
              if (change.id === "t2") {
                stop();
                resolve({ change, doc: window.dbs.b.collection("todos").get("t2") });
              }
            });
            window.subscribed = true;
          }),
      );
      await b.waitForFunction(() => window.subscribed);
      await a.evaluate(() => window.dbs.a.collection("todos").put("t2", { title: "remote" }));
      const { change, doc } = await seen;
      assert.deepEqual(change, { type: "document", collection: "todos", id: "t2", origin: "remote" });
      assert.deepEqual(doc, { title: "remote" });
    },
  ],
  [
    "writes made offline sync after reconnecting",
    async () => {
      const pending = await a.evaluate(async () => {
        const db = window.dbs.a;
        db.disconnect();
        await window.untilStatus(db, (s) => s.connection === "offline");
        await db.collection("todos").put("offline", { made: "offline" });
        return db.status.value.pendingWrites;
      });
      assert.ok(pending >= 1, `pending writes while offline: ${pending}`);
      await a.evaluate(async () => {
        const db = window.dbs.a;
        db.connect();
        await db.flush();
      });
      const doc = await b.evaluate(async () => {
        const todos = window.dbs.b.collection("todos");
        await window.until(window.dbs.b, () => todos.get("offline") !== undefined);
        return todos.get("offline");
      });
      assert.deepEqual(doc, { made: "offline" });
      const status = await a.evaluate(() => window.dbs.a.status.value);
      assert.equal(status.pendingWrites, 0);
    },
  ],
  [
    "a write made offline survives a reload and syncs when the page comes back",
    async () => {
      const page = await newPage();
      await openIn(page, "outbox", "converge", { connect: false });
      await page.evaluate(() => window.dbs.outbox.collection("todos").put("kept", { by: "outbox" }));
      await page.reload(); // no close(): the tab just goes away
      await page.waitForFunction(() => window.concord);
      await openIn(page, "outbox", "converge");
      await page.evaluate(() => window.dbs.outbox.flush());
      const doc = await b.evaluate(async () => {
        const todos = window.dbs.b.collection("todos");
        await window.until(window.dbs.b, () => todos.get("kept") !== undefined);
        return todos.get("kept");
      });
      assert.deepEqual(doc, { by: "outbox" });
      await page.close();
    },
  ],
  [
    "a token for another room is refused with OfflineError",
    async () => {
      const page = await newPage();
      const result = await page.evaluate(
        async ({ url, wrong }) => {
          const db = await window.concord.open("wrong-room", url, "mine", wrong);
          await db.collection("c").put("x", { v: 1 });
          try {
            await db.flush();
            return "flushed";
          } catch (e) {
            return { name: e.name, isConcord: e instanceof window.concord.ConcordError, code: e.code, lastError: db.status.value.lastError };
          }
        },
        { url: relay.url, wrong: token("theirs") },
      );
      assert.equal(result.name, "OfflineError");
      assert.equal(result.isConcord, true);
      assert.equal(result.code, "Forbidden");
      await page.close();
    },
  ],
  [
    "a tab of an older package holding the database at schema 1 makes open fail with a Locked StoreError, and open works once it closes",
    async () => {
      // The older tab: schema 1 (object store `records` only), kept open
      // without a versionchange handler, as packages before schema 2 did.
      const old = await newPage();
      await old.evaluate(
        () =>
          new Promise((resolve, reject) => {
            const request = indexedDB.open("upgrade-blocked", 1);
            request.onupgradeneeded = () => request.result.createObjectStore("records");
            request.onsuccess = () => ((window.oldDb = request.result), resolve());
            request.onerror = () => reject(request.error);
          }),
      );
      const page = await newPage();
      const blocked = await page.evaluate(async () => {
        try {
          await window.concord.open("upgrade-blocked");
          return "opened";
        } catch (e) {
          return { name: e.name, storeKind: e.storeKind, message: e.message, isStore: e instanceof window.concord.StoreError };
        }
      });
      assert.equal(blocked.isStore, true, JSON.stringify(blocked));
      assert.equal(blocked.storeKind, "Locked");
      assert.match(blocked.message, /older version of concord-sync/);
      await old.evaluate(() => window.oldDb.close());
      const reopened = await page.evaluate(async () => {
        const db = await window.concord.open("upgrade-blocked");
        await db.collection("c").put("x", { v: 1 });
        const v = db.collection("c").get("x");
        await db.close();
        return v;
      });
      assert.deepEqual(reopened, { v: 1 });
      await Promise.all([old.close(), page.close()]);
    },
  ],
]);

/** Opens `name` in `page` with a token-fetching function (which the test counts). */
async function page_open_with_token_function(page, name, room) {
  await page.evaluate(
    async ({ name, url, room, token }) => {
      window.tokenCalls = 0;
      const fetchToken = async () => {
        window.tokenCalls++;
        return token;
      };
      window.dbs[name] = await window.concord.open(name, url, room, fetchToken);
    },
    { name, url: relay.url, room, token: token(room) },
  );
  assert.equal(await page.evaluate(() => window.tokenCalls), 1);
}

await browser.close();
await server.close();
await relay.stop();
process.exit(failed ? 1 : 0);
