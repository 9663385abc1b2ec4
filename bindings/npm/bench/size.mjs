// What a browser downloads for each library, measured one way for all:
// follow the ES module graph from the package's browser entry (relative
// imports, imports of its npm dependencies, and `new URL("x.wasm",
// import.meta.url)` / `import "x.wasm"`), gzip each file at level 9 and sum.
// Peers come from the npm registry as tarballs (`npm pack`), unbundled.
// Run after `cargo xtask npm`: node bench/size.mjs
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL("..", import.meta.url));
const work = mkdtempSync(join(tmpdir(), "concord-size-"));

/** Downloads and unpacks `spec`; returns its folder. */
function fetchPackage(spec) {
  const [info] = JSON.parse(execFileSync("npm", ["pack", "--json", spec], { cwd: work, encoding: "utf8" }));
  const dir = join(work, info.name.replace("/", "+"));
  mkdirSync(dir);
  execFileSync("tar", ["xzf", join(work, info.filename), "-C", dir, "--strip-components=1"]);
  return { dir, version: info.version };
}

/** Every file the module graph from `entry` loads. `deps` maps package names to folders. */
function closure(entry, deps) {
  const seen = new Set();
  const todo = [entry];
  while (todo.length) {
    let file = todo.pop();
    // Bundler-style builds import without the extension.
    if (!existsSync(file) && existsSync(`${file}.js`)) file = `${file}.js`;
    if (seen.has(file) || !existsSync(file)) continue;
    seen.add(file);
    if (!file.endsWith(".js") && !file.endsWith(".mjs")) continue;
    const text = readFileSync(file, "utf8");
    const specs = [
      // `\b`, not `\s`: minified code writes `import{a}from"./b.js"`.
      ...text.matchAll(/(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]/g),
      ...text.matchAll(/import\s*\(?\s*['"]([^'"]+)['"]/g),
      ...text.matchAll(/new URL\(\s*['"]([^'"]+)['"]\s*,\s*import\.meta\.url/g),
    ].map((m) => m[1]);
    for (const spec of specs) {
      if (spec.startsWith(".")) {
        todo.push(resolve(dirname(file), spec));
      } else {
        const [scopeOrName, ...rest] = spec.split("/");
        const name = scopeOrName.startsWith("@") ? `${scopeOrName}/${rest.shift()}` : scopeOrName;
        if (deps[name]) todo.push(resolveExport(deps[name], rest.length ? `./${rest.join("/")}` : "."));
      }
    }
  }
  return [...seen];
}

/** The browser/import file of `subpath` in the package at `dir`. */
function resolveExport(dir, subpath) {
  const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  let target = pkg.exports?.[subpath] ?? (subpath === "." ? pkg.module ?? pkg.main : subpath);
  const pick = (t) => (typeof t === "string" ? t : t && pick(t.browser ?? t.import ?? t.module ?? t.default));
  return join(dir, pick(target));
}

function measure(name, version, files) {
  const raw = files.reduce((n, f) => n + readFileSync(f).length, 0);
  const gz = files.reduce((n, f) => n + gzipSync(readFileSync(f), { level: 9 }).length, 0);
  const wasm = files.filter((f) => f.endsWith(".wasm")).reduce((n, f) => n + gzipSync(readFileSync(f), { level: 9 }).length, 0);
  return { name, version, files: files.length, rawKB: +(raw / 1024).toFixed(1), gzipKB: +(gz / 1024).toFixed(1), wasmGzipKB: +(wasm / 1024).toFixed(1) };
}

const rows = [];
const ours = JSON.parse(readFileSync(join(here, "package.json"), "utf8"));
rows.push(measure("concord-sync", ours.version, closure(join(here, "dist", "index.js"), {})));
const loro = fetchPackage("loro-crdt");
rows.push(measure("loro-crdt", loro.version, closure(resolveExport(loro.dir, "."), {})));
const automerge = fetchPackage("@automerge/automerge");
rows.push(measure("@automerge/automerge", automerge.version, closure(resolveExport(automerge.dir, "."), {})));
const yjs = fetchPackage("yjs");
const lib0 = fetchPackage("lib0");
rows.push(measure("yjs (+ lib0)", `${yjs.version} + ${lib0.version}`, closure(resolveExport(yjs.dir, "."), { lib0: lib0.dir })));
rmSync(work, { recursive: true, force: true });
console.table(rows);
