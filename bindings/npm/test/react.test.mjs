// concord-sync/react with React 18 (react-test-renderer) in Node, against
// the in-memory store: hooks show current data and re-render only on
// relevant changes.
// Run after `cargo xtask npm`: node --test --test-reporter=tap test/react.test.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import { createElement } from "react";
import TestRenderer from "react-test-renderer";
import { open } from "../dist/index.js";
import { useCollection, useDocument, useStatus } from "../dist/react.js";

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;

/** Renders `hook()` in a component; returns the latest value and a render count. */
async function renderHook(hook) {
  const seen = { value: undefined, renders: 0 };
  function Probe() {
    seen.value = hook();
    seen.renders++;
    return null;
  }
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(createElement(Probe));
  });
  seen.unmount = () => act(async () => renderer.unmount());
  return seen;
}

test("useCollection follows its collection and prefix, ignoring other changes", async () => {
  const db = await open("react-collection");
  const todos = db.collection("todos");
  await todos.put("a1", { title: "one" });
  const all = await renderHook(() => useCollection(todos));
  const bs = await renderHook(() => useCollection(todos, { prefix: "b" }));
  assert.deepEqual(all.value.map((d) => d.data.title), ["one"]);
  assert.deepEqual(bs.value, []);

  await act(async () => {
    await todos.put("b1", { title: "two" });
  });
  assert.deepEqual(all.value.map((d) => d.id), ["a1", "b1"]);
  assert.deepEqual(bs.value.map((d) => d.data), [{ title: "two" }]);

  const [allBefore, bsBefore] = [all.renders, bs.renders];
  await act(async () => {
    await db.collection("other").put("x", { v: 1 }); // another collection
    await todos.put("a2", { title: "three" }); // outside prefix "b"
  });
  assert.equal(all.renders, allBefore + 1, "useCollection re-rendered for its own change only");
  assert.equal(bs.renders, bsBefore, "a change outside the prefix does not re-render");
  await all.unmount();
  await bs.unmount();
  await db.close();
});

test("useDocument re-renders for its document only", async () => {
  const db = await open("react-document");
  const notes = db.collection("notes");
  const note = await renderHook(() => useDocument(notes, "n"));
  assert.equal(note.value, undefined);
  await act(async () => {
    await notes.put("n", { text: "hello" });
  });
  assert.deepEqual(note.value.data, { text: "hello" });
  const before = note.renders;
  await act(async () => {
    await notes.put("m", { text: "other" });
  });
  assert.equal(note.renders, before, "another document does not re-render");
  await act(async () => {
    await notes.delete("n");
  });
  assert.equal(note.value, undefined);
  await note.unmount();
  await db.close();
});

test("useStatus shows status changes", async () => {
  const db = await open("react-status", "ws://127.0.0.1:9/v1/sync", "room", "token", { connect: false });
  const status = await renderHook(() => useStatus(db));
  assert.equal(status.value.connection, "offline");
  assert.equal(status.value.pendingWrites, 0);
  await act(async () => {
    await db.collection("c").put("a", { v: 1 });
  });
  assert.equal(status.value.pendingWrites, 1);
  await status.unmount();
  await db.close();
});
