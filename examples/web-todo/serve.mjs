// Serves the built demo (dist/) and /config.json: the relay's URL, the
// room, and a development token freshly minted with concord-sync/server
// from the relay's signing key. `cargo xtask demo` and the end-to-end test
// start it; it prints `web-todo listening on HOST:PORT` once it listens.
//
//   node serve.mjs --key-file DATA/concord-relay.key [--port 5173]
//       [--relay-url ws://127.0.0.1:8787/v1/sync] [--room demo] [--dist dist]
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, resolve } from "node:path";
import { parseArgs } from "node:util";
import { mintToken } from "concord-sync/server";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: "5173" },
    host: { type: "string", default: "127.0.0.1" },
    "relay-url": { type: "string", default: "ws://127.0.0.1:8787/v1/sync" },
    "key-file": { type: "string" },
    room: { type: "string", default: "demo" },
    dist: { type: "string", default: new URL("dist", import.meta.url).pathname },
  },
});
if (!args["key-file"]) {
  console.error("serve.mjs: --key-file (the relay's concord-relay.key) is required");
  process.exit(2);
}
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`serve.mjs: --port must be a port number, got ${args.port}`);
  process.exit(2);
}
const dist = resolve(args.dist);
// Read on every request: the relay creates its key on first start, maybe
// after this server started.
const key = async () => (await readFile(args["key-file"], "utf8")).trim();

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".wasm": "application/wasm",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".json": "application/json",
};

const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname));
  if (path === "/config.json") {
    try {
      const token = mintToken(await key(), { room: args.room, rights: "rw", ttlSeconds: 3600 });
      res.writeHead(200, { "content-type": TYPES[".json"], "cache-control": "no-store" });
      res.end(JSON.stringify({ relayUrl: args["relay-url"], room: args.room, token }));
    } catch (e) {
      res.writeHead(503, { "content-type": "text/plain" }).end(`no token: ${e.message}\n`);
    }
    return;
  }
  if (path.includes("..")) return res.writeHead(400).end();
  const file = path === "/" ? "/index.html" : path;
  try {
    const body = await readFile(join(dist, file));
    // Vite puts a content hash in every asset's name: those never change.
    const cache = file.startsWith("/assets/") ? "public, max-age=31536000, immutable" : "no-store";
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": cache });
    res.end(body);
  } catch {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
  }
});
server.on("error", (e) => {
  console.error(`serve.mjs: cannot listen on ${args.host}:${port}: ${e.message}`);
  process.exit(1);
});
server.listen(port, args.host, () => {
  const { address, port: bound } = server.address();
  console.log(`web-todo listening on ${address}:${bound}`);
});
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => process.exit(0)));
