// The packed tarball through the two bundlers apps use: a scratch project
// installs it the way a user does, imports `concord-sync`, is built for
// production by Vite and by webpack 5, and each built bundle runs in
// headless Chromium: it opens a database on IndexedDB and one in memory,
// puts and gets a document, and reopens the IndexedDB one to find it.
// A wrong `exports` path, a wasm file the bundler cannot find or ship, or
// code that only works unbundled fails here.
// Run after `cargo xtask npm`: node test/bundlers.test.mjs
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { mkdtemp, writeFile, readFile, rm, mkdir, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, extname, normalize } from "node:path";
import { PACKAGE_DIR, launchChromium, runTests } from "./harness.mjs";

const scratch = await mkdtemp(join(tmpdir(), "concord-npm-bundlers-"));
const app = join(scratch, "app");
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

// What an app's entry module does; the page reads `window.result`.
const main = `
import { open } from "concord-sync";

async function main() {
  const mem = await open("bundled-memory", { storage: "memory" });
  await mem.collection("notes").put("a", { text: "in memory", n: 1 });
  const memory = mem.collection("notes").get("a");
  await mem.close();

  const db = await open("bundled-idb", { storage: "indexeddb" });
  await db.collection("notes").put("b", { text: "in IndexedDB", n: 2 });
  await db.close();
  const again = await open("bundled-idb", { storage: "indexeddb" });
  const reopened = again.collection("notes").get("b");
  await again.close();
  return { memory, reopened };
}

main().then(
  (result) => (window.result = result),
  (error) => (window.result = { error: String(error && error.stack || error) }),
);
`;

const html = (script) => `<!doctype html><meta charset="utf-8"><title>bundled</title><script type="module" src="${script}"></script>`;

const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".html": "text/html" };

/** Serves `dir` on 127.0.0.1, the way a static host serves a built app. */
async function serve(dir) {
  const server = createServer(async (req, res) => {
    let path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    if (path.includes("..")) return res.writeHead(400).end();
    if (path.endsWith("/")) path += "index.html";
    try {
      const body = await readFile(join(dir, path));
      res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

let browser;
/** Loads the built app in `dir` in a fresh browser context; returns `window.result`. */
async function runBuilt(dir) {
  const files = await readdir(dir, { recursive: true });
  assert.ok(files.some((f) => f.endsWith(".wasm")), `the build ships the wasm module (files: ${files.join(", ")})`);
  const server = await serve(dir);
  browser ??= await launchChromium();
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${server.origin}/`);
    await page.waitForFunction(() => window.result !== undefined, null, { timeout: 60_000 });
    const result = await page.evaluate(() => window.result);
    assert.equal(result.error, undefined, `the bundle threw: ${result.error}`);
    assert.deepEqual(errors, []);
    return result;
  } finally {
    await context.close();
    await server.close();
  }
}

function checkResult(result) {
  assert.deepEqual(result.memory, { text: "in memory", n: 1 });
  assert.deepEqual(result.reopened, { text: "in IndexedDB", n: 2 });
}

const failed = await runTests(
  [
    [
      "the packed tarball installs into a scratch app",
      async () => {
        const [info] = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", scratch], PACKAGE_DIR));
        await mkdir(join(app, "src"), { recursive: true });
        await writeFile(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
        run("npm", ["install", "--no-audit", "--no-fund", "--no-package-lock", join(scratch, info.filename)], app);
        await writeFile(join(app, "src", "main.js"), main);
        await writeFile(join(app, "index.html"), html("/src/main.js"));
      },
    ],
    [
      "a Vite production build runs in Chromium",
      async () => {
        // The package's own Vite; the app is its root, so `concord-sync`
        // resolves from the app's node_modules like in a user's project.
        const { build } = await import("vite");
        const outDir = join(scratch, "vite-dist");
        await build({ root: app, logLevel: "warn", configFile: false, build: { outDir, emptyOutDir: true } });
        checkResult(await runBuilt(outDir));
      },
    ],
    [
      "a webpack 5 production build runs in Chromium",
      async () => {
        const { default: webpack } = await import("webpack");
        const outDir = join(scratch, "webpack-dist");
        const stats = await new Promise((resolve, reject) =>
          webpack(
            {
              mode: "production",
              context: app,
              entry: "./src/main.js",
              output: { path: outDir, filename: "main.js", publicPath: "/", clean: true },
              resolve: { modules: [join(app, "node_modules")] },
              resolveLoader: { modules: [join(PACKAGE_DIR, "node_modules")] },
              performance: { hints: false },
            },
            (err, stats) => (err ? reject(err) : resolve(stats)),
          ),
        );
        assert.ok(!stats.hasErrors(), stats.toString({ all: false, errors: true }));
        await writeFile(join(outDir, "index.html"), html("/main.js"));
        checkResult(await runBuilt(outDir));
      },
    ],
  ],
  { guardMs: 180_000 },
);
await browser?.close();
await rm(scratch, { recursive: true, force: true });
process.exit(failed ? 1 : 0);
