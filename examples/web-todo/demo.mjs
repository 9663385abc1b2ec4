// `cargo xtask demo` runs this once everything is built: it starts
// concord-relay (its data, and so the demo's todos, kept in --data), serves
// the demo with tokens for room `demo`, prints the URL to open (then the
// commands that watch the same room with the CLI, the Kotlin and the Python
// examples, with a token of their own), and stops
// the relay when it is interrupted (Ctrl-C, SIGTERM) or when the process
// that started it goes away (its stdin closes).
//
//   node demo.mjs --relay BIN --data DIR [--port 5173] [--relay-listen 127.0.0.1:8787]
import { parseArgs } from "node:util";
import { mkdir, readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { startRelay } from "./relay.mjs";
import { startServer } from "./serve.mjs";
import { mintToken } from "concord-sync/server";

const { values: args } = parseArgs({
  options: {
    relay: { type: "string" },
    data: { type: "string" },
    port: { type: "string", default: "5173" },
    "relay-listen": { type: "string", default: "127.0.0.1:8787" },
  },
});
if (!args.relay || !args.data) {
  console.error("demo.mjs: --relay BIN and --data DIR are required");
  process.exit(2);
}
const port = Number(args.port);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`demo: --port must be a port number (1-65535), got ${args.port}`);
  process.exit(2);
}

await mkdir(resolve(args.data), { recursive: true });
let relay;
try {
  relay = await startRelay({ bin: resolve(args.relay), listen: args["relay-listen"], data: resolve(args.data) });
} catch (e) {
  console.error(`demo: ${e.message}\n(is another relay already listening on ${args["relay-listen"]}?)`);
  process.exit(1);
}

let stopping = false;
async function stop(code) {
  if (stopping) return;
  stopping = true;
  await relay.stop("SIGTERM");
  process.exit(code);
}
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => stop(0));
// The parent (cargo xtask demo) keeps our stdin open while it lives.
process.stdin.on("end", () => stop(0));
process.stdin.on("error", () => stop(0));
process.stdin.resume();
relay.child.once("exit", (code, signal) => {
  if (!stopping) {
    console.error(`demo: concord-relay stopped unexpectedly (${code ?? signal})`);
    process.exit(1);
  }
});

try {
  await startServer({ port, relayUrl: relay.url, keyFile: relay.keyFile, room: "demo" });
} catch (e) {
  console.error(`demo: ${e.message} (pick another with --port)`);
  await stop(1);
}
console.error(`demo: concord-relay on ${relay.addr} (data in ${resolve(args.data)}), room "demo"; Ctrl-C stops both`);
console.error("demo: open this in two windows (or two browsers) and edit the same todo in both:");
console.log(`http://127.0.0.1:${port}/`);

// The native examples join the same room: print their commands, ready to
// copy, with a development token of their own (a day long, so a terminal
// left open keeps working; the browser fetches fresh ones).
const key = (await readFile(relay.keyFile, "utf8")).trim();
const token = mintToken(key, { room: "demo", rights: "rw", ttlSeconds: 24 * 3600 });
console.log(
  [
    "",
    "Watch the same room from a terminal (from the repository root; the token works for 24 hours):",
    `  export CONCORD_RELAY=${relay.url} CONCORD_ROOM=demo CONCORD_TOKEN='${token}'`,
    "  cargo run -q -p concord-cli -- --data target/demo/cli watch todos   # the concord CLI",
    "  cargo xtask example kotlin                                          # examples/kotlin-console",
    "  cargo xtask example python                                          # examples/python-watch",
  ].join("\n"),
);
