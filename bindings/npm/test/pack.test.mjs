// The packed tarball, installed into a scratch project the way a user
// installs it, type-checked with tsc and run with node: a broken
// package.json, missing types or a wrong export fails here.
// Run after `cargo xtask npm`: node test/pack.test.mjs
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, writeFile, rm, mkdir, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PACKAGE_DIR, runTests } from "./harness.mjs";

const scratch = await mkdtemp(join(tmpdir(), "concord-npm-pack-"));
const tsc = join(PACKAGE_DIR, "node_modules", ".bin", "tsc");
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

const tsconfig = {
  compilerOptions: {
    target: "ES2022",
    module: "NodeNext",
    moduleResolution: "NodeNext",
    strict: true,
    noEmit: false,
    outDir: "out",
    skipLibCheck: false,
    lib: ["ES2022", "DOM"],
    typeRoots: [join(PACKAGE_DIR, "node_modules", "@types")],
    types: ["node"],
  },
};

// What a user writes: typed collections, typed errors, the server entry.
const consumer = `
import { open, ConflictError, ConcordError, type Database, type Collection, type Doc, type Status, type Unsubscribe } from "concord-sync";
import { mintToken } from "concord-sync/server";

interface Todo { title: string; done: boolean }

const db: Database = await open("scratch");
const todos: Collection<Todo> = db.collection<Todo>("todos");
const revision: string = await todos.put("milk", { title: "Buy milk", done: false });
const todo: Todo | undefined = todos.get("milk");
const docs: Doc<Todo>[] = todos.list({ limit: 10 });
const stop: Unsubscribe = todos.subscribe((change) => void change);
stop();
const status: Status = db.status.value;
let conflict = "";
try {
  await todos.putIf("milk", { done: true }, null);
} catch (e) {
  if (e instanceof ConflictError && e instanceof ConcordError) conflict = e.actual ?? "";
}
const token: string = mintToken(new Uint8Array(32), { room: "todos", rights: "r", ttlSeconds: 60 });
await db.close();
console.log(JSON.stringify({ revision, todo, count: docs.length, connection: status.connection, conflict, token }));
`;

// Misuse the types must catch.
const misuse = `
import { open } from "concord-sync";
interface Todo { title: string; done: boolean }
const db = await open("scratch");
const todos = db.collection<Todo>("todos");
await todos.put("milk", { title: 5 });
todos.unset("milk", ["colour"]);
const n: number = todos.get("milk");
`;

let tarball;
const failed = await runTests([
  [
    "npm pack holds the built package and nothing else",
    async () => {
      const [info] = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", scratch], PACKAGE_DIR));
      tarball = join(scratch, info.filename);
      const files = info.files.map((f) => f.path).sort();
      for (const needed of ["package.json", "README.md", "dist/index.js", "dist/index.d.ts", "dist/server.js", "dist/server.d.ts", "dist/react.js", "dist/react.d.ts", "dist/errors.js", "wasm/sync_wasm.js", "wasm/sync_wasm.d.ts", "wasm/sync_wasm_bg.wasm"]) {
        assert.ok(files.includes(needed), `${needed} is in the tarball`);
      }
      assert.deepEqual(files.filter((f) => /^(src|test|node_modules)\//.test(f)), []);
    },
  ],
  [
    "the wasm ships without the toolchain's metadata sections",
    async () => {
      // `cargo xtask npm` strips them: no engine reads them, and they
      // cost 0.2 KB of every download.
      const wasm = new WebAssembly.Module(await readFile(join(PACKAGE_DIR, "wasm", "sync_wasm_bg.wasm")));
      for (const section of ["producers", "target_features"]) {
        assert.equal(WebAssembly.Module.customSections(wasm, section).length, 0, `no ${section} section`);
      }
    },
  ],
  [
    "the installed package type-checks in a user's project",
    async () => {
      const app = join(scratch, "app");
      await mkdir(app);
      await writeFile(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
      run("npm", ["install", "--no-audit", "--no-fund", "--no-package-lock", tarball], app);
      await writeFile(join(app, "tsconfig.json"), JSON.stringify({ ...tsconfig, files: ["main.ts"] }));
      await writeFile(join(app, "main.ts"), consumer);
      run(tsc, ["-p", "tsconfig.json"], app);
    },
  ],
  [
    "the types reject misuse",
    async () => {
      const app = join(scratch, "app");
      await writeFile(join(app, "tsconfig.misuse.json"), JSON.stringify({ ...tsconfig, compilerOptions: { ...tsconfig.compilerOptions, noEmit: true }, files: ["misuse.ts"] }));
      await writeFile(join(app, "misuse.ts"), misuse);
      let output = "";
      try {
        run(tsc, ["-p", "tsconfig.misuse.json"], app);
      } catch (e) {
        output = e.stdout;
      }
      assert.match(output, /misuse\.ts\(6,/, "a number for a string field");
      assert.match(output, /misuse\.ts\(7,/, "unsetting a field the type lacks");
      assert.match(output, /misuse\.ts\(8,/, "a document read as a number");
    },
  ],
  [
    "the installed package runs in Node as a user imports it",
    async () => {
      const out = JSON.parse(run("node", ["out/main.js"], join(scratch, "app")));
      assert.deepEqual(out.todo, { title: "Buy milk", done: false });
      assert.equal(out.count, 1);
      assert.equal(out.connection, "offline");
      assert.equal(out.conflict, out.revision);
      assert.match(out.token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{86}$/);
    },
  ],
]);
await rm(scratch, { recursive: true, force: true });
process.exit(failed ? 1 : 0);
