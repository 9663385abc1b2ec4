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
import { fileURLToPath } from "node:url";
import { mintToken } from "concord-sync/server";

/** The Vite build. */
const DIST = fileURLToPath(new URL("dist", import.meta.url));

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".wasm": "application/wasm",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".json": "application/json",
};

/**
 * Starts the server; resolves to `{ origin, close }` once it listens.
 * `keyFile` is read on every token request: the relay creates its key on
 * first start, maybe after this server started.
 */
export function startServer({ port = 5173, host = "127.0.0.1", relayUrl, keyFile, room = "demo", dist = DIST }) {
  const key = async () => (await readFile(keyFile, "utf8")).trim();
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname));
    if (path === "/config.json") {
      try {
        const token = mintToken(await key(), { room, rights: "rw", ttlSeconds: 3600 });
        res.writeHead(200, { "content-type": TYPES[".json"], "cache-control": "no-store" });
        res.end(JSON.stringify({ relayUrl, room, token }));
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
  return new Promise((resolvePromise, reject) => {
    server.once("error", (e) => reject(new Error(`cannot listen on ${host}:${port}: ${e.message}`)));
    server.listen(port, host, () => {
      const { address, port: bound } = server.address();
      resolvePromise({ origin: `http://${address}:${bound}`, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

// Run as a program: `node serve.mjs --key-file ...`.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values: args } = parseArgs({
    options: {
      port: { type: "string", default: "5173" },
      host: { type: "string", default: "127.0.0.1" },
      "relay-url": { type: "string", default: "ws://127.0.0.1:8787/v1/sync" },
      "key-file": { type: "string" },
      room: { type: "string", default: "demo" },
      dist: { type: "string", default: DIST },
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
  try {
    const { origin } = await startServer({ port, host: args.host, relayUrl: args["relay-url"], keyFile: args["key-file"], room: args.room, dist: resolve(args.dist) });
    console.log(`web-todo listening on ${origin.slice("http://".length)}`);
  } catch (e) {
    console.error(`serve.mjs: ${e.message}`);
    process.exit(1);
  }
  for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(0));
}
