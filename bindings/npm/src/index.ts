/**
 * concord-sync: local-first collections of documents that sync through a
 * Concord relay. Reads are instant and local; writes apply at once and
 * their Promise resolves once they are durable (IndexedDB in browsers,
 * memory in Node); syncing happens whenever the relay is reachable.
 *
 * @example
 * ```ts
 * import { open } from "concord-sync";
 * interface Todo { title: string; done: boolean }
 * const db = await open("app", "wss://relay.example/v1/sync", "team-42", () => fetchToken());
 * const todos = db.collection<Todo>("todos");
 * await todos.put("milk", { title: "Buy milk", done: false });
 * const stop = todos.subscribe((change) => render());
 * ```
 * @module
 */
import init, { openDatabase, type WasmDatabase } from "../wasm/sync_wasm.js";
import { toConcordError, typed, typedAsync } from "./errors.js";
import type { Op } from "./packed.js";
import { Shared } from "./tabs.js";

export * from "./errors.js";

/** Stops a subscription. Calling it again does nothing. */
export type Unsubscribe = () => void;

/** A value a document field can hold. Integers beyond ±2^53 come back as bigints. */
export type Value = null | boolean | number | bigint | string | Uint8Array | Value[] | { [key: string]: Value };

/** A document's fields. */
export type Fields = { [field: string]: Value };

/** A document with its id and revision (for `putIf`). */
export interface Doc<T> {
  /** The document id. */
  id: string;
  /** Its revision: pass it to `putIf` for read-modify-write. */
  revision: string;
  /** Its fields. */
  data: T;
}

/** Something changed, here (`origin: "local"`) or on another device (`"remote"`). */
export type Change =
  | { type: "document"; collection: string; id: string; origin: "local" | "remote" }
  | { type: "collection"; collection: string; origin: "local" | "remote" }
  /** The subscriber fell far behind and missed changes: re-read what it shows. */
  | { type: "lagged" };

/** Where syncing stands. */
export interface Status {
  /** The link to the relay. */
  connection: "offline" | "connecting" | "online" | "reconnecting";
  /** When `reconnecting`: the next attempt, in ms since the epoch. */
  retryAt: number | null;
  /** Local writes the relay has not acknowledged yet. */
  pendingWrites: number;
  /** The room offset applied and stored here. */
  cursor: number;
  /** Room operations not applied here yet, as last known. */
  lag: number;
  /** Whether the token only allows reading. */
  readOnly: boolean;
  /** The last problem: a dropped link, a refused token, a store failure. */
  lastError: string | null;
}

/** A token, or a function that fetches a fresh one from the app's backend. */
export type TokenInput = string | (() => string | Promise<string>);

/** How to open a database. */
export interface OpenOptions {
  /** The relay's sync endpoint, e.g. `wss://relay.example/v1/sync`. Without it the database stays local. */
  relayUrl?: string;
  /** The room to sync with. */
  room?: string;
  /** The room token, or a function fetching one (called again when the relay refuses it or before it expires). */
  token?: TokenInput;
  /** Start syncing at once (default `true`). */
  connect?: boolean;
  /** `"indexeddb"` (default where it exists) or `"memory"` (default in Node). */
  storage?: "indexeddb" | "memory";
  /** Names this client in the relay's logs. */
  agent?: string;
}

/** List paging: documents come in id order. */
export interface ListOptions {
  /** Only ids starting with this. */
  prefix?: string;
  /** Only ids after this one (the last id of the previous page). */
  after?: string;
  /** At most this many. */
  limit?: number;
}

let ready: Promise<unknown> | undefined;

/**
 * The wasm module: its URL (browsers fetch and compile it while it
 * downloads; bundlers see the `new URL(..., import.meta.url)` and ship the
 * file), or its bytes in Node, whose fetch cannot read `file:` URLs.
 */
async function wasmSource(): Promise<URL | Uint8Array> {
  const url = new URL("../wasm/sync_wasm_bg.wasm", import.meta.url);
  if (url.protocol !== "file:") return url;
  const fs = await import(/* webpackIgnore: true */ /* @vite-ignore */ "node:fs/promises");
  return fs.readFile(url);
}

/** Loads and instantiates the wasm module (once). */
function load(): Promise<unknown> {
  ready ??= wasmSource().then((source) => init({ module_or_path: source }));
  return ready;
}

/**
 * Opens (creating if needed) the database `name`. Either
 * `open(name, relayUrl, room, token)` or `open(name, options)`.
 */
export async function open(name: string, relayUrl: string, room: string, token: TokenInput, options?: Omit<OpenOptions, "relayUrl" | "room" | "token">): Promise<Database>;
export async function open(name: string, options?: OpenOptions): Promise<Database>;
export async function open(
  name: string,
  urlOrOptions?: string | OpenOptions,
  room?: string,
  token?: TokenInput,
  more?: OpenOptions,
): Promise<Database> {
  const options: OpenOptions =
    typeof urlOrOptions === "string" ? { ...more, relayUrl: urlOrOptions, room, token } : { ...urlOrOptions };
  await load();
  const openInner = async (): Promise<WasmDatabase> => {
    let first: string | undefined;
    let tokenSource: (() => string | Promise<string>) | undefined;
    if (typeof options.token === "function") {
      tokenSource = options.token;
      // The first token comes from the function too, unless syncing waits.
      if (options.relayUrl !== undefined && options.connect !== false) first = await tokenSource();
    } else {
      first = options.token;
    }
    return typedAsync(
      openDatabase({
        name,
        storage: options.storage,
        relayUrl: options.relayUrl,
        room: options.room,
        token: first,
        tokenSource,
        connect: options.connect,
        agent: options.agent,
      }),
    );
  };
  // IndexedDB is per origin: the tabs of an origin share one copy of the
  // database, run by one of them (see ./tabs.ts).
  const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
  const indexedDb = options.storage === "indexeddb" || (options.storage === undefined && "indexedDB" in globalThis);
  const shared =
    indexedDb && locks !== undefined && typeof BroadcastChannel === "function"
      ? await Shared.join(name, locks, openInner)
      : await Shared.alone(openInner);
  return new Database(shared);
}

/**
 * A value that changes over time: read `value`, or `subscribe` to be told
 * of each new one.
 */
export class Observable<T> {
  #value: T;
  #listeners = new Set<(value: T) => void>();

  /** @internal */
  constructor(initial: T) {
    this.#value = initial;
  }

  /** The current value. */
  get value(): T {
    return this.#value;
  }

  /** Calls `listener` with every new value; returns the function that stops it. */
  subscribe(listener: (value: T) => void): Unsubscribe {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** @internal */
  set(value: T): void {
    this.#value = value;
    for (const listener of [...this.#listeners]) {
      try {
        listener(value);
      } catch (e) {
        console.error("concord-sync: a status listener threw", e);
      }
    }
  }
}

/** A local-first database syncing with one relay room. */
export class Database {
  #inner: Shared;
  #statusWatch: Unsubscribe;
  #collections = new Map<string, Collection<any>>();
  /** Where syncing stands, as an observable value. */
  readonly status: Observable<Status>;

  /** @internal Use {@link open}. */
  constructor(inner: Shared) {
    this.#inner = inner;
    this.status = new Observable<Status>(inner.status());
    this.#statusWatch = inner.watchStatus((s: Status) => this.status.set(s));
  }

  /** This database's replica id (random, made when it was created). */
  get replicaId(): string {
    return this.#inner.replicaId();
  }

  /**
   * Whether this tab runs the database: holds its store and its relay
   * connection. The other tabs of the origin that opened it forward their
   * writes here and read a copy kept fresh by this one; when this tab
   * closes, one of them takes over.
   */
  get leading(): boolean {
    return this.#inner.leading;
  }

  /** The collection `name`, its documents typed as `T`. */
  collection<T extends object = Fields>(name: string): Collection<T> {
    // The same object for the same name, so React hooks and memoized code
    // see a stable collection.
    let collection = this.#collections.get(name);
    if (collection === undefined) {
      collection = new Collection<T>(this.#inner, name);
      this.#collections.set(name, collection);
    }
    return collection as Collection<T>;
  }

  /**
   * Many writes as one, across documents and collections: `build` records
   * them on `tx`; all apply together (or none, if one is refused or
   * `build` throws), in one durable batch. Resolves once it is durable.
   */
  transaction(build: (tx: Transaction) => void): Promise<void> {
    try {
      const tx = new Transaction();
      build(tx);
      return this.#inner.transaction(tx.ops);
    } catch (e) {
      return Promise.reject(toConcordError(e));
    }
  }

  /** Calls `listener` for every change, local or remote. */
  subscribe(listener: (change: Change) => void): Unsubscribe {
    return this.#inner.subscribe(undefined, undefined, listener);
  }

  /** Starts syncing (again). */
  connect(): void {
    typed(() => this.#inner.connect());
  }

  /** Stops syncing; everything keeps working locally. */
  disconnect(): void {
    this.#inner.disconnect();
  }

  /** Replaces the access token (and resumes syncing if it stopped over the old one). */
  setToken(token: string): void {
    this.#inner.setToken(token);
  }

  /** Resolves once the relay has acknowledged every local write made so far. */
  flush(): Promise<void> {
    return this.#inner.flush();
  }

  /** Closes the database once everything applied is stored; later calls fail with `ClosedError`. */
  async close(): Promise<void> {
    this.#statusWatch();
    await this.#inner.close();
  }
}

/** Records the writes of {@link Database.transaction}. */
export class Transaction {
  /** @internal */
  readonly ops: Op[] = [];

  /** Writes fields of a document (see {@link Collection.put}). */
  put(collection: string, id: string, fields: object): this {
    this.ops.push({ op: "put", collection, id, fields });
    return this;
  }

  /** Writes fields only if the document is still at `expected` (`null`: absent). */
  putIf(collection: string, id: string, fields: object, expected: string | null): this {
    this.ops.push({ op: "putIf", collection, id, fields, expected });
    return this;
  }

  /** Removes fields of a document. */
  unset(collection: string, id: string, names: string[]): this {
    this.ops.push({ op: "unset", collection, id, names });
    return this;
  }

  /** Deletes a document. */
  delete(collection: string, id: string): this {
    this.ops.push({ op: "delete", collection, id });
    return this;
  }
}

/** A collection of documents of type `T`. */
export class Collection<T extends object = Fields> {
  #db: Shared;
  /** The collection's name. */
  readonly name: string;

  /** @internal Use {@link Database.collection}. */
  constructor(db: Shared, name: string) {
    this.#db = db;
    this.name = name;
  }

  /**
   * Writes the given fields of document `id`, creating it if needed;
   * fields not given keep their values. Visible to reads at once; resolves
   * to the new revision once durable.
   */
  put(id: string, fields: Partial<T>): Promise<string> {
    return this.#db.put(this.name, id, fields);
  }

  /** Like `put`, but only if the document is still at `expected` (`null`: only if absent); else rejects with `ConflictError`. */
  putIf(id: string, fields: Partial<T>, expected: string | null): Promise<string> {
    return this.#db.putIf(this.name, id, fields, expected ?? undefined);
  }

  /** Removes fields of document `id`. */
  unset(id: string, names: Array<keyof T & string>): Promise<string> {
    return this.#db.unset(this.name, id, names);
  }

  /** Deletes document `id`. */
  delete(id: string): Promise<void> {
    return this.#db.delete(this.name, id);
  }

  /** Document `id`'s fields, or `undefined`. */
  get(id: string): T | undefined {
    return this.getDoc(id)?.data;
  }

  /** Document `id` with its revision, or `undefined`. */
  getDoc(id: string): Doc<T> | undefined {
    const raw = typed(() => this.#db.get(this.name, id));
    return raw === undefined ? undefined : { id: raw.id, revision: raw.revision, data: raw.fields };
  }

  /** Documents in id order, filtered and paged. */
  list(options: ListOptions = {}): Doc<T>[] {
    const raw = typed(() => this.#db.list(this.name, options.prefix, options.after, options.limit));
    return raw.map((d: any) => ({ id: d.id, revision: d.revision, data: d.fields }));
  }

  /** Calls `listener` for every change to this collection, local or remote. */
  subscribe(listener: (change: Change) => void): Unsubscribe {
    return this.#db.subscribe(this.name, undefined, listener);
  }

  /** Calls `listener` for every change to document `id`. */
  subscribeDoc(id: string, listener: (change: Change) => void): Unsubscribe {
    return this.#db.subscribe(this.name, id, listener);
  }
}
