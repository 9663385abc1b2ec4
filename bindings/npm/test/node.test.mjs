// The package's API in Node, against the in-memory store.
// Run after `cargo xtask npm`: node --test --test-reporter=tap test/node.test.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  open,
  ConcordError,
  ConflictError,
  EncodeError,
  NoRelayError,
  ClosedError,
} from "../dist/index.js";
import { WasmDatabase } from "../wasm/sync_wasm.js";

let n = 0;
const fresh = () => open(`node-test-${n++}`);

/** Resolves with the next `count` values `subscribe` hands to its listener. */
function collect(subscribe, count) {
  return new Promise((resolve) => {
    const seen = [];
    const stop = subscribe((item) => {
      seen.push(item);
      if (seen.length === count) {
        stop();
        resolve(seen);
      }
    });
  });
}

test("every kind of value round-trips", async () => {
  const db = await fresh();
  const things = db.collection("things");
  const doc = {
    nothing: null,
    yes: true,
    count: 42,
    negative: -7,
    ratio: 0.25,
    big: 2n ** 60n,
    name: "héllo",
    bytes: new Uint8Array([0, 1, 255]),
    list: [1, "two", [3]],
    map: { a: 1, nested: { b: false } },
  };
  const revision = await things.put("x", doc);
  assert.equal(typeof revision, "string");
  assert.deepEqual(things.get("x"), doc);
  assert.equal(things.getDoc("x").revision, revision);
  await db.close();
});

test("values that travel packed keep their kind and text", async () => {
  const db = await fresh();
  const c = db.collection("c");
  const long = "ünïcødé ".repeat(40) + "\u{1F600}"; // over 127 bytes, astral too
  const longKey = "ünïcødé ".repeat(12); // 144 bytes: names are at most 255
  const keys = Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`k${i}`, i])); // over 127 fields
  const doc = {
    long,
    [longKey]: "a long unicode key",
    ascii: "x".repeat(300),
    bytes: new Uint8Array(5000).map((_, i) => i % 251), // past the packer's first buffer
    buffer: new Uint8Array([9, 8]).buffer,
    skipped: undefined,
    holes: [1, undefined, 3],
    huge: -(2n ** 63n),
    beyondSafe: 2 ** 60,
    float: 0.1,
    negZero: -0,
    nan: NaN,
    deep: { a: [{ b: keys }] },
  };
  await c.put("d", doc);
  const back = c.get("d");
  assert.equal(back.long, long);
  assert.equal(back[longKey], "a long unicode key");
  assert.equal(back.ascii, doc.ascii);
  assert.deepEqual(back.bytes, doc.bytes);
  assert.deepEqual(back.buffer, new Uint8Array([9, 8]));
  assert.equal("skipped" in back, false);
  assert.deepEqual(back.holes, [1, null, 3]);
  assert.equal(back.huge, -(2n ** 63n));
  assert.equal(back.beyondSafe, 2 ** 60, "a float beyond 2^53 stays a number");
  assert.equal(back.float, 0.1);
  assert.ok(Object.is(back.negZero, 0));
  assert.ok(Number.isNaN(back.nan));
  assert.deepEqual(back.deep, { a: [{ b: keys }] });
  await db.close();
});

test("fields come back in name order, whatever order they were written in", async () => {
  const db = await fresh();
  const c = db.collection("c");
  await c.put("d", { b: 1 });
  await c.put("d", { a: 2, c: 3 });
  assert.deepEqual(Object.keys(c.get("d")), ["a", "b", "c"]);
  assert.deepEqual(Object.keys(c.list()[0].data), ["a", "b", "c"]);
  await db.close();
});

test("the puts of one turn resolve each to its own revision, and a refused one fails alone", async () => {
  const db = await fresh();
  const c = db.collection("c");
  const puts = [];
  for (let i = 0; i < 300; i++) puts.push(c.put(`d${i % 3}`, { [`f${i}`]: i }));
  const refused = c.put("bad", { when: new Date() });
  const after = c.put("d0", { last: true });
  const revisions = await Promise.all(puts);
  await assert.rejects(refused, EncodeError);
  assert.equal(new Set(revisions).size, 300, "every write has its own revision");
  assert.equal(await after, c.getDoc("d0").revision);
  assert.equal(c.getDoc("d2").revision, revisions[299]);
  // A put made while the turn's durability is awaited joins the next turn.
  const next = puts[0].then(() => c.put("d1", { later: 1 }));
  assert.equal(await next, c.getDoc("d1").revision);
  await db.close();
});

test("a write's clock reading is taken in its own task: shared within one, fresh in a later one", async () => {
  const db = await fresh();
  const c = db.collection("c");
  // A revision starts with its stamp's clock: 48 bits of ms, 16 of counter.
  const wallMs = (revision) => Number(BigInt(`0x${revision.slice(0, 16)}`) >> 16n);
  const before = Date.now();
  const first = await c.put("a", { v: 1 });
  const after = Date.now();
  assert.ok(before <= wallMs(first) && wallMs(first) <= after, "read from Date.now()");
  await new Promise((resolve) => setTimeout(resolve, 30));
  const later = await c.put("a", { v: 2 });
  assert.ok(wallMs(later) >= wallMs(first) + 20, "read again in a later task");
  await db.close();
});

test("a transaction packs every kind of write", async () => {
  const db = await fresh();
  const c = db.collection("c");
  const first = await c.put("k", { v: 1, gone: true });
  await c.put("old", { v: 0 });
  await db.transaction((tx) => {
    tx.putIf("c", "k", { v: 2 }, first).putIf("c", "new", { v: "é" }, null).unset("c", "k", ["gone"]).delete("c", "old").put("c", "p", { n: 1n });
  });
  assert.deepEqual(c.get("k"), { v: 2 });
  assert.deepEqual(c.get("new"), { v: "é" });
  assert.equal(c.get("old"), undefined);
  assert.deepEqual(c.get("p"), { n: 1 });
  await assert.rejects(
    db.transaction((tx) => tx.put("c", "x", { ok: 1 }).put("c", "y", { bad: Symbol("s") })),
    (e) => e instanceof EncodeError && /bad/.test(e.message),
  );
  assert.equal(c.get("x"), undefined, "nothing of a refused transaction applies");
  await db.close();
});

test("put merges fields, unset removes them, delete removes the document", async () => {
  const db = await fresh();
  const todos = db.collection("todos");
  await todos.put("milk", { title: "Buy milk", done: false });
  await todos.put("milk", { done: true });
  assert.deepEqual(todos.get("milk"), { title: "Buy milk", done: true });
  await todos.unset("milk", ["done"]);
  assert.deepEqual(todos.get("milk"), { title: "Buy milk" });
  await todos.delete("milk");
  assert.equal(todos.get("milk"), undefined);
  await db.close();
});

test("puts and gets that alternate between collections each reach their own", async () => {
  const db = await fresh();
  const a = db.collection("a");
  const b = db.collection("b");
  // Same ids, interleaved: the wasm side keeps the last collection's handle.
  await Promise.all([a.put("x", { in: "a" }), b.put("x", { in: "b" }), b.put("y", { in: "b" }), a.put("z", { in: "a" })]);
  assert.deepEqual(a.get("x"), { in: "a" });
  assert.deepEqual(b.get("x"), { in: "b" });
  assert.equal(a.get("y"), undefined);
  assert.equal(b.get("z"), undefined);
  // list does not go through that handle, so it checks where the puts landed.
  assert.deepEqual(a.list().map((d) => [d.id, d.data.in]), [["x", "a"], ["z", "a"]]);
  assert.deepEqual(b.list().map((d) => [d.id, d.data.in]), [["x", "b"], ["y", "b"]]);
  await db.close();
});

test("reads see a write before its promise resolves", async () => {
  const db = await fresh();
  const todos = db.collection("todos");
  const durable = todos.put("a", { v: 1 });
  assert.deepEqual(todos.get("a"), { v: 1 });
  await durable;
  await db.close();
});

test("list pages in id order with prefix, after and limit", async () => {
  const db = await fresh();
  const c = db.collection("c");
  await Promise.all(["b2", "a1", "b1", "b3", "c1"].map((id) => c.put(id, { id })));
  assert.deepEqual(c.list().map((d) => d.id), ["a1", "b1", "b2", "b3", "c1"]);
  assert.deepEqual(c.list({ prefix: "b" }).map((d) => d.id), ["b1", "b2", "b3"]);
  assert.deepEqual(c.list({ prefix: "b", after: "b1", limit: 1 }).map((d) => d.id), ["b2"]);
  assert.deepEqual(c.list({ limit: 2 })[1].data, { id: "b1" });
  await db.close();
});

test("putIf succeeds at the expected revision and conflicts otherwise", async () => {
  const db = await fresh();
  const c = db.collection("c");
  const first = await c.putIf("k", { v: 1 }, null);
  await assert.rejects(c.putIf("k", { v: 2 }, null), (e) => {
    assert.ok(e instanceof ConflictError);
    assert.ok(e instanceof ConcordError);
    // The class's own name (the build's minifier must keep identifiers).
    assert.equal(e.name, "ConflictError");
    assert.equal(e.kind, "Conflict");
    assert.equal(e.collection, "c");
    assert.equal(e.id, "k");
    assert.equal(e.expected, null);
    assert.equal(e.actual, first);
    return true;
  });
  assert.deepEqual(c.get("k"), { v: 1 });
  const second = await c.putIf("k", { v: 3 }, first);
  assert.notEqual(second, first);
  assert.deepEqual(c.get("k"), { v: 3 });
  await db.close();
});

test("a transaction applies all of its writes or none", async () => {
  const db = await fresh();
  await db.transaction((tx) => {
    tx.put("todo", "a", { t: 1 }).put("done", "b", { t: 2 });
  });
  assert.deepEqual(db.collection("todo").get("a"), { t: 1 });
  assert.deepEqual(db.collection("done").get("b"), { t: 2 });
  await assert.rejects(
    db.transaction((tx) => {
      tx.delete("todo", "a");
      tx.putIf("done", "b", { t: 3 }, null); // b exists: conflict
    }),
    ConflictError,
  );
  assert.deepEqual(db.collection("todo").get("a"), { t: 1 }, "the delete was rolled back");
  assert.deepEqual(db.collection("done").get("b"), { t: 2 });
  // wasm reads each write as it applies it: a bad one midway still undoes those before it.
  await assert.rejects(
    db.transaction((tx) => {
      tx.delete("todo", "a");
      tx.putIf("done", "new", { t: 4 }, "not a revision");
    }),
    EncodeError,
  );
  assert.deepEqual(db.collection("todo").get("a"), { t: 1 }, "the delete was rolled back");
  assert.equal(db.collection("done").get("new"), undefined);
  await db.close();
});

test("subscriptions see their changes and stop when unsubscribed", async () => {
  const db = await fresh();
  const todos = db.collection("todos");
  const all = collect((f) => db.subscribe(f), 2);
  const one = collect((f) => todos.subscribeDoc("b", f), 1);
  const mine = collect((f) => todos.subscribe(f), 2);
  await db.collection("other").put("x", { v: 1 });
  await todos.put("a", { v: 1 });
  await todos.put("b", { v: 2 });
  assert.deepEqual((await all).map((c) => [c.collection, c.id, c.origin]), [
    ["other", "x", "local"],
    ["todos", "a", "local"],
  ]);
  assert.deepEqual(await one, [{ type: "document", collection: "todos", id: "b", origin: "local" }]);
  assert.deepEqual((await mine).map((c) => c.id), ["a", "b"]);

  let calls = 0;
  const stop = todos.subscribe(() => calls++);
  stop();
  stop(); // a second call does nothing
  await todos.put("c", { v: 3 });
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(calls, 0);
  await db.close();
});

test("a subscription made after every earlier one stopped still sees changes", async () => {
  // The database's change stream is only followed while someone listens:
  // it must start again for a new listener.
  const db = await fresh();
  const todos = db.collection("todos");
  const first = collect((f) => todos.subscribe(f), 1);
  await todos.put("a", { v: 1 });
  assert.deepEqual((await first).map((c) => c.id), ["a"]);
  await todos.put("unheard", { v: 1 });
  const again = collect((f) => db.subscribe(f), 1);
  await todos.put("b", { v: 2 });
  assert.deepEqual((await again).map((c) => c.id), ["b"]);
  await db.close();
});

test("the puts of a turn fail, not hang, when wasm cannot be asked for their durability", async () => {
  const db = await fresh();
  const c = db.collection("c");
  // As after a trap in the wasm module: every later call into it throws.
  const durable = WasmDatabase.prototype.durable;
  WasmDatabase.prototype.durable = () => {
    throw new Error("RuntimeError: unreachable");
  };
  let timer;
  try {
    const settled = c.put("d", { n: 1 }).then(
      () => "resolved",
      (e) => e.message,
    );
    // A hang guard, not a timing assertion.
    const hung = new Promise((r) => (timer = setTimeout(() => r("still pending after 10 s"), 10_000)));
    assert.equal(await Promise.race([settled, hung]), "RuntimeError: unreachable");
  } finally {
    clearTimeout(timer);
    WasmDatabase.prototype.durable = durable;
  }
  await db.close();
});

test("a field named __proto__ reads back as a field, not as the document's prototype", async () => {
  const db = await fresh();
  const c = db.collection("c");
  // JSON.parse makes an own property of that name (as a peer's document may hold).
  await c.put("d", JSON.parse('{"__proto__": {"x": 1}, "a": 2, "m": {"__proto__": 5}}'));
  const back = c.get("d");
  assert.deepEqual(Object.keys(back), ["__proto__", "a", "m"]);
  assert.deepEqual(Object.getOwnPropertyDescriptor(back, "__proto__").value, { x: 1 });
  assert.equal(Object.getPrototypeOf(back), Object.prototype);
  assert.equal(back.x, undefined, "the field's value became the prototype");
  assert.deepEqual(Object.getOwnPropertyDescriptor(back.m, "__proto__").value, 5);
  await db.close();
});

test("a put made while another put's fields are read is packed apart", async () => {
  const db = await fresh();
  const c = db.collection("c");
  // A getter that writes: the inner put packs while the outer one is half packed.
  let inner;
  const fields = {
    a: "first",
    get b() {
      inner = c.put("inner", { x: "y".repeat(200), n: 7 });
      return 2;
    },
    z: 3,
  };
  await c.put("outer", fields);
  await inner;
  assert.deepEqual(c.get("outer"), { a: "first", b: 2, z: 3 });
  assert.deepEqual(c.get("inner"), { x: "y".repeat(200), n: 7 });
  // The same inside a transaction's ops.
  await db.transaction((tx) =>
    tx.put("c", "t", {
      get v() {
        inner = c.put("inner2", { w: 1 });
        return "t";
      },
    }),
  );
  await inner;
  assert.deepEqual(c.get("t"), { v: "t" });
  assert.deepEqual(c.get("inner2"), { w: 1 });
  await db.close();
});

test("values that cannot be stored are refused with EncodeError", async () => {
  const db = await fresh();
  const c = db.collection("c");
  await assert.rejects(c.put("d", { when: new Date() }), (e) => e instanceof EncodeError && /when/.test(e.message));
  await assert.rejects(c.put("f", { f: () => 1 }), EncodeError);
  await assert.rejects(c.put("n", "not an object"), EncodeError);
  await assert.rejects(c.put("p", { a: { b: [1, new Map()] } }), (e) => e instanceof EncodeError && e.message.startsWith("a.b[1] cannot be stored"));
  await assert.rejects(c.put("b", { big: 2n ** 64n }), (e) => e instanceof EncodeError && /big is a bigint outside/.test(e.message));
  const cycle = { name: "loop" };
  cycle.self = cycle;
  await assert.rejects(c.put("cycle", { cycle }), (e) => e instanceof EncodeError && /nested too deeply/.test(e.message));
  await assert.rejects(c.put("i", { i: new Int8Array(2) }), EncodeError);
  assert.equal(c.get("d"), undefined);
  await db.close();
});

test("a local database reports offline and has no relay", async () => {
  const db = await fresh();
  assert.equal(db.status.value.connection, "offline");
  assert.equal(db.status.value.pendingWrites, 0);
  assert.throws(() => db.connect(), NoRelayError);
  await db.collection("c").put("a", { v: 1 });
  await assert.rejects(db.flush(), NoRelayError);
  assert.match(db.replicaId, /\S+/);
  await db.close();
});

test("a database waiting to connect counts pending writes in its status", async () => {
  let asked = 0;
  const db = await open("pending", "ws://127.0.0.1:9/v1/sync", "room", () => {
    asked++;
    return "token";
  }, { connect: false });
  const seen = collect((f) => db.status.subscribe(f), 1);
  await db.collection("c").put("a", { v: 1 });
  assert.equal((await seen)[0].pendingWrites, 1);
  assert.equal(db.status.value.connection, "offline");
  assert.equal(asked, 0, "the token function is not called before connecting");
  await db.close();
});

test("a closed database refuses writes with ClosedError", async () => {
  const db = await fresh();
  await db.close();
  await assert.rejects(db.collection("c").put("a", { v: 1 }), ClosedError);
});
