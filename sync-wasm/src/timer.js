// The host loop's yield between the slices of a large load or snapshot: a
// macrotask, so input and rendering run in between, without the 4 ms that
// setTimeout(0) is clamped to once nested (a 100k-document open yields
// about 25 times). scheduler.yield() where the browser has it (it resumes
// ahead of other queued tasks), setImmediate in Node (an open
// MessagePort would keep Node's process alive), else a MessageChannel.
let channel;
const waiting = [];

export function yieldNow() {
  const scheduler = globalThis.scheduler;
  if (scheduler && typeof scheduler.yield === "function") return scheduler.yield();
  if (typeof setImmediate === "function") return new Promise((resolve) => setImmediate(resolve));
  if (typeof MessageChannel !== "function") return new Promise((resolve) => setTimeout(resolve, 0));
  if (!channel) {
    channel = new MessageChannel();
    channel.port1.onmessage = () => waiting.shift()();
  }
  return new Promise((resolve) => {
    waiting.push(resolve);
    channel.port2.postMessage(null);
  });
}
