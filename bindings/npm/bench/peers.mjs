// The peer workloads of benches/compare, in Node, side by side in one run:
// concord-sync (this package, in-memory store; syncing through a real
// concord-relay on loopback) against the npm packages loro-crdt,
// @automerge/automerge and yjs. One table; medians of RUNS runs.
//
// Run after `cargo xtask npm` and `cargo build --release -p relay-server`:
//   node --experimental-websocket --expose-gc bench/peers.mjs
// (`cargo xtask bench` runs it; Node 20 needs the flag for WebSocket.)
// ONLY=concord,yjs picks libraries; RAW=1 adds every run's figures after
// the table (for ranges, next to the medians); PARTS=writes,batched picks
// workloads (writes, batched, merge, encodeDecode, incremental; the last
// two need writes), and without merge, encodeDecode and incremental the
// relay is not started (nor needed).
//
// One document is the closest per-field last-writer-wins map in each
// library, as in benches/compare: yjs and loro one root map per document
// (named by its id), automerge one nested map per document under the root
// (built before the clock starts, so concurrent writers share them).
// Each row uses what an application would call: 1a (one commit per write)
// concord-sync `collection.put` (a Promise per put, resolved once stored),
// yjs `doc.transact(() => map.set)`, loro `map.set` then `doc.commit()`,
// automerge `Automerge.change`; 1b (one commit for all) concord-sync
// `db.transaction(tx => tx.put...)` (one crossing into wasm for the whole
// array), one yjs `transact`, loro's sets then one `commit()`, one
// `Automerge.change`.
// concord-sync has no API to export operations or a snapshot, so its rows
// that move state between replicas go through the relay: see NOTES below
// and docs/BENCHMARKS.md for what each row measures.
import { createServer, connect } from "node:net";
import { performance } from "node:perf_hooks";
import { readFileSync } from "node:fs";
import os from "node:os";
import * as Y from "yjs";
import * as Automerge from "@automerge/automerge";
import { LoroDoc } from "loro-crdt";
import { open } from "../dist/index.js";
import { mintToken } from "../dist/server.js";
import { startRelay } from "../test/harness.mjs";

const RUNS = Number(process.env.RUNS ?? 3);
const DOCS = 1_000;
const WRITES = 100_000;
const CONCURRENT = 50_000;
const INCREMENTAL = 1_000;
/** Hang guard for waits on the relay; never a timed assertion. */
const GUARD_MS = 120_000;

const docName = (d) => `doc${String(d).padStart(4, "0")}`;
const DOC_NAMES = Array.from({ length: DOCS }, (_, d) => docName(d));
const FIELD_NAMES = Array.from({ length: WRITES / DOCS + 1 }, (_, f) => `f${f}`);
/** Write `i` goes to document `i mod 1000`, field `i div 1000`. */
const slot = (i) => [DOC_NAMES[i % DOCS], FIELD_NAMES[Math.floor(i / DOCS)]];

const settle = () => {
  globalThis.gc?.();
  return new Promise((r) => setTimeout(r, 20));
};

/** Progress on stderr, so a slow workload shows where it is. */
const progress = (what) => process.env.PROGRESS && console.error(`  ${Math.round(performance.now())} ms: ${what}`);

/**
 * Wall time of `fn`, and this process's CPU time (user + system) during it:
 * on a machine shared with other jobs the CPU time shows the work done here
 * (for rows through the relay, the relay's own CPU is not in it).
 */
async function time(fn) {
  await settle();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const extra = await fn();
  const ms = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return { ms, cpu: (c.user + c.system) / 1000, ...extra };
}

// ---- the relay, and a byte-counting TCP proxy in front of it --------------

const PARTS = process.env.PARTS?.split(",");
/** Whether workload `name` runs (see PARTS above). */
const part = (name) => !PARTS || PARTS.includes(name);
const relay = part("merge") || part("encodeDecode") || part("incremental") ? await startRelay() : undefined;
const relayPort = relay && Number(new URL(relay.url).port);

/** A loopback proxy to the relay that counts the bytes each way; one per database. */
async function proxy() {
  const counts = { up: 0, down: 0 };
  const sockets = new Set();
  const server = createServer((client) => {
    const upstream = connect(relayPort, "127.0.0.1");
    sockets.add(client).add(upstream);
    client.on("data", (d) => (counts.up += d.length));
    upstream.on("data", (d) => (counts.down += d.length));
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => (client.destroy(), upstream.destroy());
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `ws://127.0.0.1:${server.address().port}/v1/sync`,
    counts,
    reset: () => ((counts.up = 0), (counts.down = 0)),
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

let rooms = 0;
/** A memory-backed database syncing through its own counting proxy into `room`. */
async function synced(room, connectNow = true) {
  const p = await proxy();
  const token = mintToken(relay.key, { room, ttlSeconds: 3600 });
  const db = await open(`peers-${room}-${rooms++}`, { relayUrl: p.url, room, token, connect: connectNow, storage: "memory" });
  return { db, proxy: p };
}

/** Resolves when `check(status)` holds (checked now and on every status change). */
function until(db, check, what) {
  return new Promise((resolve, reject) => {
    if (check(db.status.value)) return resolve();
    const guard = setTimeout(() => (stop(), reject(new Error(`hang guard: ${what}; status ${JSON.stringify(db.status.value)}`))), GUARD_MS);
    const stop = db.status.subscribe((s) => {
      if (check(s)) {
        clearTimeout(guard);
        stop();
        resolve();
      }
    });
  });
}

/** Every field of every document, read once; the count of fields read. */
function readAll(get) {
  let n = 0;
  for (const d of DOC_NAMES) {
    const doc = get(d);
    for (const f in doc) if (doc[f] !== undefined) n++;
  }
  return n;
}

// ---- the libraries ---------------------------------------------------------

const concord = {
  name: "concord-sync",
  async writes() {
    const db = await open(`peers-writes-${rooms++}`, { storage: "memory" });
    const c = db.collection("docs");
    const r = await time(async () => {
      const pending = new Array(WRITES);
      for (let i = 0; i < WRITES; i++) {
        const [d, f] = slot(i);
        pending[i] = c.put(d, { [f]: i });
      }
      await Promise.all(pending);
    });
    await db.close();
    return r;
  },
  async batched() {
    const db = await open(`peers-batch-${rooms++}`, { storage: "memory" });
    const r = await time(() =>
      db.transaction((tx) => {
        for (let i = 0; i < WRITES; i++) {
          const [d, f] = slot(i);
          tx.put("docs", d, { [f]: i });
        }
      }),
    );
    await db.close();
    return r;
  },
  async merge() {
    const room = `merge-${rooms}`;
    const a = await synced(room, false);
    const b = await synced(room, false);
    const ca = a.db.collection("docs");
    const cb = b.db.collection("docs");
    const pa = [];
    const pb = [];
    for (let i = 0; i < CONCURRENT; i++) {
      const [d, f] = slot(i);
      pa.push(ca.put(d, { [f]: i }));
      pb.push(cb.put(d, { [f]: -i }));
    }
    await Promise.all([...pa, ...pb]);
    const r = await time(async () => {
      a.db.connect();
      b.db.connect();
      await Promise.all([a.db.flush(), b.db.flush()]);
      const done = (s) => s.pendingWrites === 0 && s.cursor >= 2 * CONCURRENT;
      await Promise.all([until(a.db, done, "merge a"), until(b.db, done, "merge b")]);
    });
    for (const d of DOC_NAMES) {
      if (JSON.stringify(ca.get(d)) !== JSON.stringify(cb.get(d))) throw new Error(`merge: ${d} differs`);
    }
    r.bytes = a.proxy.counts.up + a.proxy.counts.down + b.proxy.counts.up + b.proxy.counts.down;
    // Through the relay every operation crosses two connections; one
    // replica's connection carries each operation once, as a peer's does.
    r.linkBytes = Math.max(a.proxy.counts.up + a.proxy.counts.down, b.proxy.counts.up + b.proxy.counts.down);
    await Promise.all([a.db.close(), b.db.close(), a.proxy.close(), b.proxy.close()]);
    return r;
  },
  /**
   * No snapshot API: the state of workload 1 goes from one database through
   * the relay into a fresh one (the relay encodes it, the client decodes,
   * stores and applies it), then every field is read.
   */
  async encodeDecode() {
    const room = `snap-${rooms}`;
    const a = await synced(room);
    await a.db.transaction((tx) => {
      for (let i = 0; i < WRITES; i++) {
        const [d, f] = slot(i);
        tx.put("docs", d, { [f]: i });
      }
    });
    await a.db.flush();
    // `flush` waits for the relay's acknowledgement; the delivery of the
    // last batch back to `a` (which moves its cursor) may come after it,
    // so the head is taken once `a` has seen every write come back.
    await until(a.db, (s) => s.cursor >= WRITES, "writes delivered back");
    const head = a.db.status.value.cursor;
    await settle();
    const t0 = performance.now();
    const b = await synced(room);
    await until(b.db, (s) => s.cursor >= head, "initial sync");
    const decode = performance.now() - t0;
    const cb = b.db.collection("docs");
    const t1 = performance.now();
    const fields = readAll((d) => cb.get(d));
    const read = performance.now() - t1;
    if (fields !== WRITES) throw new Error(`read ${fields} fields, expected ${WRITES}`);
    const bytes = b.proxy.counts.down + b.proxy.counts.up;
    await Promise.all([a.db.close(), b.db.close(), a.proxy.close(), b.proxy.close()]);
    return { encode: null, decode, read, bytes };
  },
  /**
   * Two databases in sync on workload 1's state; the second goes offline,
   * the first writes 1,000 fields and the relay acknowledges them; timed is
   * the second reconnecting until it has applied them. Bytes: the second's
   * socket both ways (handshake included).
   */
  async incremental() {
    const room = `inc-${rooms}`;
    const a = await synced(room);
    const b = await synced(room);
    const ca = a.db.collection("docs");
    await a.db.transaction((tx) => {
      for (let i = 0; i < WRITES; i++) {
        const [d, f] = slot(i);
        tx.put("docs", d, { [f]: i });
      }
    });
    await a.db.flush();
    // As in `encodeDecode`: the last batch may come back after the flush.
    await until(a.db, (s) => s.cursor >= WRITES, "writes delivered back");
    let head = a.db.status.value.cursor;
    await until(b.db, (s) => s.cursor >= head, "first sync");
    b.db.disconnect();
    await until(b.db, (s) => s.connection === "offline", "disconnect");
    const pending = [];
    for (let i = 0; i < INCREMENTAL; i++) {
      const [d, f] = slot(i);
      pending.push(ca.put(d, { [f]: 1_000_000 + i }));
    }
    await Promise.all(pending);
    await a.db.flush();
    // `flush` waits for the relay's acknowledgement, which may come before
    // the (empty) delivery of those writes moves A's cursor: the room's head
    // is one offset per operation further.
    head += INCREMENTAL;
    await until(a.db, (s) => s.cursor >= head, "own writes delivered");
    b.proxy.reset();
    const r = await time(async () => {
      b.db.connect();
      await until(b.db, (s) => s.cursor >= head, "incremental sync");
    });
    const cb = b.db.collection("docs");
    if (cb.get(DOC_NAMES[DOCS - 1]).f0 !== 1_000_000 + DOCS - 1) throw new Error("incremental: the write did not arrive");
    r.bytes = b.proxy.counts.up + b.proxy.counts.down;
    await Promise.all([a.db.close(), b.db.close(), a.proxy.close(), b.proxy.close()]);
    return r;
  },
};

const yjs = {
  name: "yjs",
  async writes() {
    return time(() => {
      const doc = new Y.Doc();
      for (let i = 0; i < WRITES; i++) {
        const [d, f] = slot(i);
        doc.transact(() => doc.getMap(d).set(f, i));
      }
      return { state: doc };
    });
  },
  async batched() {
    return time(() => {
      const doc = new Y.Doc();
      doc.transact(() => {
        for (let i = 0; i < WRITES; i++) {
          const [d, f] = slot(i);
          doc.getMap(d).set(f, i);
        }
      });
    });
  },
  async merge() {
    const a = new Y.Doc();
    const b = new Y.Doc();
    for (let i = 0; i < CONCURRENT; i++) {
      const [d, f] = slot(i);
      a.transact(() => a.getMap(d).set(f, i));
      b.transact(() => b.getMap(d).set(f, -i));
    }
    let bytes = 0;
    const r = await time(() => {
      const svA = Y.encodeStateVector(a);
      const svB = Y.encodeStateVector(b);
      const toB = Y.encodeStateAsUpdate(a, svB);
      const toA = Y.encodeStateAsUpdate(b, svA);
      Y.applyUpdate(b, toB);
      Y.applyUpdate(a, toA);
      bytes = svA.length + svB.length + toA.length + toB.length;
    });
    for (const d of DOC_NAMES) {
      if (JSON.stringify(a.getMap(d).toJSON()) !== JSON.stringify(b.getMap(d).toJSON())) throw new Error(`yjs merge: ${d} differs`);
    }
    return { ...r, bytes };
  },
  async encodeDecode(state) {
    const doc = state;
    await settle();
    let t0 = performance.now();
    const bytes = Y.encodeStateAsUpdate(doc);
    const encode = performance.now() - t0;
    await settle();
    t0 = performance.now();
    const fresh = new Y.Doc();
    Y.applyUpdate(fresh, bytes);
    const decode = performance.now() - t0;
    t0 = performance.now();
    const fields = readAll((d) => {
      const m = fresh.getMap(d);
      const out = {};
      for (const f of FIELD_NAMES) {
        const v = m.get(f);
        if (v !== undefined) out[f] = v;
      }
      return out;
    });
    const read = performance.now() - t0;
    if (fields !== WRITES) throw new Error(`yjs read ${fields} fields`);
    return { encode, decode, read, bytes: bytes.length };
  },
  async incremental(state) {
    const a = state;
    const b = new Y.Doc();
    Y.applyUpdate(b, Y.encodeStateAsUpdate(a));
    for (let i = 0; i < INCREMENTAL; i++) {
      const [d, f] = slot(i);
      a.transact(() => a.getMap(d).set(f, 1_000_000 + i));
    }
    let bytes = 0;
    const r = await time(() => {
      const sv = Y.encodeStateVector(b);
      const update = Y.encodeStateAsUpdate(a, sv);
      Y.applyUpdate(b, update);
      bytes = sv.length + update.length;
    });
    if (b.getMap(DOC_NAMES[DOCS - 1]).get("f0") !== 1_000_000 + DOCS - 1) throw new Error("yjs incremental");
    return { ...r, bytes };
  },
};

/** Automerge's root with the 1,000 empty document maps, the common base. */
function automergeBase() {
  return Automerge.change(Automerge.init(), (d) => {
    for (const name of DOC_NAMES) d[name] = {};
  });
}

const automerge = {
  name: "@automerge/automerge",
  write(doc, i, value) {
    const [d, f] = slot(i);
    return Automerge.change(doc, (x) => {
      x[d][f] = value;
    });
  },
  async writes() {
    const base = automergeBase();
    return time(() => {
      let doc = base;
      for (let i = 0; i < WRITES; i++) doc = this.write(doc, i, i);
      return { state: doc };
    });
  },
  async batched() {
    const base = automergeBase();
    return time(() => {
      Automerge.change(base, (x) => {
        for (let i = 0; i < WRITES; i++) {
          const [d, f] = slot(i);
          x[d][f] = i;
        }
      });
    });
  },
  async merge() {
    const base = automergeBase();
    let a = Automerge.clone(base, { actor: "0a".repeat(16) });
    let b = Automerge.clone(base, { actor: "0b".repeat(16) });
    for (let i = 0; i < CONCURRENT; i++) {
      a = this.write(a, i, i);
      b = this.write(b, i, -i);
    }
    let bytes = 0;
    const r = await time(() => {
      const headsA = Automerge.getHeads(a);
      const headsB = Automerge.getHeads(b);
      const toB = Automerge.saveSince(a, headsB);
      const toA = Automerge.saveSince(b, headsA);
      b = Automerge.loadIncremental(b, toB);
      a = Automerge.loadIncremental(a, toA);
      bytes = 32 * (headsA.length + headsB.length) + toA.length + toB.length;
    });
    for (const d of DOC_NAMES) {
      if (JSON.stringify(a[d]) !== JSON.stringify(b[d])) throw new Error(`automerge merge: ${d} differs`);
    }
    return { ...r, bytes };
  },
  async encodeDecode(state) {
    const doc = state;
    await settle();
    let t0 = performance.now();
    const bytes = Automerge.save(doc);
    const encode = performance.now() - t0;
    await settle();
    t0 = performance.now();
    const fresh = Automerge.load(bytes);
    const decode = performance.now() - t0;
    t0 = performance.now();
    const fields = readAll((d) => fresh[d]);
    const read = performance.now() - t0;
    if (fields !== WRITES) throw new Error(`automerge read ${fields} fields`);
    return { encode, decode, read, bytes: bytes.length };
  },
  async incremental(state) {
    let a = state;
    let b = Automerge.load(Automerge.save(a));
    for (let i = 0; i < INCREMENTAL; i++) a = this.write(a, i, 1_000_000 + i);
    let bytes = 0;
    const r = await time(() => {
      const heads = Automerge.getHeads(b);
      const update = Automerge.saveSince(a, heads);
      b = Automerge.loadIncremental(b, update);
      bytes = 32 * heads.length + update.length;
    });
    if (b[DOC_NAMES[DOCS - 1]].f0 !== 1_000_000 + DOCS - 1) throw new Error("automerge incremental");
    return { ...r, bytes };
  },
};

const loro = {
  name: "loro-crdt",
  write(doc, i, value) {
    const [d, f] = slot(i);
    doc.getMap(d).set(f, value);
    doc.commit();
  },
  state() {
    const doc = new LoroDoc();
    for (let i = 0; i < WRITES; i++) this.write(doc, i, i);
    return doc;
  },
  async writes() {
    return time(() => ({ state: this.state() }));
  },
  async batched() {
    return time(() => {
      const doc = new LoroDoc();
      for (let i = 0; i < WRITES; i++) {
        const [d, f] = slot(i);
        doc.getMap(d).set(f, i);
      }
      doc.commit();
    });
  },
  async merge() {
    const a = new LoroDoc();
    const b = new LoroDoc();
    a.setPeerId(1n);
    b.setPeerId(2n);
    for (let i = 0; i < CONCURRENT; i++) {
      this.write(a, i, i);
      this.write(b, i, -i);
    }
    let bytes = 0;
    const r = await time(() => {
      const vvA = a.oplogVersion();
      const vvB = b.oplogVersion();
      const toB = a.export({ mode: "update", from: vvB });
      const toA = b.export({ mode: "update", from: vvA });
      b.import(toB);
      a.import(toA);
      bytes = vvA.encode().length + vvB.encode().length + toA.length + toB.length;
    });
    for (const d of DOC_NAMES) {
      if (JSON.stringify(a.getMap(d).toJSON()) !== JSON.stringify(b.getMap(d).toJSON())) throw new Error(`loro merge: ${d} differs`);
    }
    return { ...r, bytes };
  },
  async encodeDecode(state) {
    const doc = state;
    await settle();
    let t0 = performance.now();
    const bytes = doc.export({ mode: "snapshot" });
    const encode = performance.now() - t0;
    await settle();
    t0 = performance.now();
    const fresh = new LoroDoc();
    fresh.import(bytes);
    const decode = performance.now() - t0;
    t0 = performance.now();
    const fields = readAll((d) => {
      const m = fresh.getMap(d);
      const out = {};
      for (const f of FIELD_NAMES) {
        const v = m.get(f);
        if (v !== undefined) out[f] = v;
      }
      return out;
    });
    const read = performance.now() - t0;
    if (fields !== WRITES) throw new Error(`loro read ${fields} fields`);
    return { encode, decode, read, bytes: bytes.length };
  },
  async incremental(state) {
    const a = state;
    const b = new LoroDoc();
    b.import(a.export({ mode: "snapshot" }));
    for (let i = 0; i < INCREMENTAL; i++) this.write(a, i, 1_000_000 + i);
    let bytes = 0;
    const r = await time(() => {
      const vv = b.oplogVersion();
      const update = a.export({ mode: "update", from: vv });
      b.import(update);
      bytes = vv.encode().length + update.length;
    });
    if (b.getMap(DOC_NAMES[DOCS - 1]).get("f0") !== 1_000_000 + DOCS - 1) throw new Error("loro incremental");
    return { ...r, bytes };
  },
};

// ---- the run ---------------------------------------------------------------

// ONLY=yjs,loro runs a subset (names or their starts); the table in
// docs/BENCHMARKS.md comes from a run of all four.
const ONLY = process.env.ONLY?.split(",");
const LIBS = [concord, yjs, automerge, loro].filter((l) => !ONLY || ONLY.some((o) => l.name.startsWith(o)));
const median = (xs) => {
  const s = xs.filter((x) => x !== null && x !== undefined).sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : null;
};

/** results[lib][figure] = list over runs. */
const results = Object.fromEntries(LIBS.map((l) => [l.name, {}]));
const record = (lib, figure, value) => (results[lib.name][figure] ??= []).push(value);

for (let run = 0; run < RUNS; run++) {
  for (const lib of LIBS) {
    const started = performance.now();
    let w;
    if (part("writes")) {
      progress(`${lib.name} writes`);
      w = await lib.writes();
      record(lib, "writes", w.ms);
      record(lib, "writesCpu", w.cpu);
    }
    if (part("batched")) {
      progress(`${lib.name} batched`);
      const b = await lib.batched();
      record(lib, "batched", b.ms);
      record(lib, "batchedCpu", b.cpu);
    }
    if (part("merge")) {
      progress(`${lib.name} merge`);
      const m = await lib.merge();
      record(lib, "merge", m.ms);
      record(lib, "mergeCpu", m.cpu);
      record(lib, "mergeBytes", m.bytes);
      // A peer exchanges bytes with the other directly: all of them pass its link.
      record(lib, "mergeLinkBytes", m.linkBytes ?? m.bytes);
    }
    if (w && part("encodeDecode")) {
      progress(`${lib.name} encodeDecode`);
      const e = await lib.encodeDecode(w.state);
      record(lib, "encode", e.encode);
      record(lib, "decode", e.decode);
      record(lib, "read", e.read);
      record(lib, "decodeRead", e.decode + e.read);
      record(lib, "bytes", e.bytes);
    }
    if (w && part("incremental")) {
      progress(`${lib.name} incremental`);
      const inc = await lib.incremental(w.state);
      record(lib, "incTime", inc.ms);
      record(lib, "incCpu", inc.cpu);
      record(lib, "incBytes", inc.bytes);
    }
    console.error(`run ${run + 1}/${RUNS}: ${lib.name} done (${Math.round(performance.now() - started)} ms)`);
  }
}
await relay?.stop();

const ms = (x) => (x === null ? "—" : x < 10 ? `${x.toFixed(2)} ms` : `${Math.round(x)} ms`);
const kib = (x) => (x === null ? "—" : x < 10_240 ? `${x} B` : `${(x / 1024).toFixed(1)} KiB`);
const ROWS = [
  ["1a. 100,000 writes over 1,000 docs, one commit each", "writes", ms],
  ["1b. the same 100,000 writes in one transaction", "batched", ms],
  ["2. 2 × 50,000 concurrent writes: merge both ways", "merge", ms],
  ["2b. merge: bytes exchanged", "mergeBytes", kib],
  ["2c. merge: bytes through one replica's connection", "mergeLinkBytes", kib],
  ["3a. encode full state (100,000 writes)", "encode", ms],
  ["3b. decode into a fresh replica", "decode", ms],
  ["3c. encoded bytes", "bytes", kib],
  ["3d. then the first read of every field", "read", ms],
  ["3e. decode + first read", "decodeRead", ms],
  ["5a. incremental sync of 1,000 writes: time", "incTime", ms],
  ["5b. incremental sync: bytes exchanged", "incBytes", kib],
  ["CPU time of this process: 1a", "writesCpu", ms],
  ["CPU time: 1b", "batchedCpu", ms],
  ["CPU time: 2 (concord-sync: without the relay's)", "mergeCpu", ms],
  ["CPU time: 5a (concord-sync: without the relay's)", "incCpu", ms],
];
const version = (dir) => JSON.parse(readFileSync(new URL(`../${dir}/package.json`, import.meta.url), "utf8")).version;
const DIRS = { "concord-sync": ".", yjs: "node_modules/yjs", "@automerge/automerge": "node_modules/@automerge/automerge", "loro-crdt": "node_modules/loro-crdt" };
const names = LIBS.map((l) => `${l.name} ${version(DIRS[l.name])}`);
console.log(`\nNode ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(" ")} at the end, ${RUNS} runs, medians; ratio = best peer ÷ concord-sync (above 1: concord-sync ahead)\n`);
console.log(`| workload | ${names.join(" | ")} | ratio |`);
console.log(`| --- | ${LIBS.map(() => "---:").join(" | ")} | ---: |`);
for (const [label, key, fmt] of ROWS) {
  const values = LIBS.map((l) => median(results[l.name][key] ?? []));
  const ours = values[0];
  const peers = values.slice(1).filter((v) => v !== null);
  const best = peers.length ? Math.min(...peers) : null;
  const ratio = ours === null || best === null || ours === 0 ? "—" : `${(best / ours).toFixed(2)}×`;
  console.log(`| ${label} | ${values.map(fmt).join(" | ")} | ${ratio} |`);
}
if (process.env.RAW) {
  console.log("\nEvery run, in order:\n");
  for (const [label, key, fmt] of ROWS) {
    const runs = LIBS.map((l) => (results[l.name][key] ?? []).map(fmt).join(", ") || "—");
    if (runs.some((r) => r !== "—")) console.log(`| ${label} | ${runs.join(" | ")} |`);
  }
}
