import { open } from "concord-sync";

interface Todo { title: string; done: boolean; order: number }

const db = await open("quickstart", {
  relayUrl: "ws://127.0.0.1:8787/v1/sync",
  room: "demo",
  // A token string, or a function your backend answers (called again when it expires).
  token: () => fetch("/api/concord-token").then((r) => r.text()),
});
const todos = db.collection<Todo>("todos"); // the collection the web demo shows

// A write applies at once; its Promise resolves once it is durable here.
await todos.put("milk", { title: "Buy milk", done: false, order: 1 });
const doc = todos.getDoc("milk")!;
await todos.putIf("milk", { done: true }, doc.revision); // optimistic concurrency

const stop = todos.subscribe((change) => {
  if (change.type === "document") console.log(change.id, change.origin); // local or remote
});
await db.flush(); // until the relay acknowledged every write
console.log(todos.list(), db.status.value);
stop();
await db.close();
