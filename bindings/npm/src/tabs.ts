/**
 * One database shared by every tab of an origin: one tab (the leader)
 * holds the Web Lock `concord-sync:<name>`, opens the IndexedDB store and
 * runs the one `Database` of sync-client (with its relay connection);
 * the other tabs (followers) forward writes and commands to it over a
 * BroadcastChannel and read a copy of the documents that the leader keeps
 * fresh by broadcasting every change. A follower waits on the lock; when
 * the leader's tab closes, the browser hands the lock to one follower,
 * which opens the store and takes over. Without Web Locks or
 * BroadcastChannel (Node, the memory store) the database is a leader on
 * its own.
 *
 * Why not a SharedWorker: IndexedDB, WebSocket and the wasm module all
 * work in a page; a SharedWorker needs a separate script URL that every
 * bundler handles differently, does not exist in Chrome on Android, and
 * would turn every read into a round trip. Here reads stay synchronous in
 * every tab.
 *
 * Delivery of forwarded calls is at least once: a call is re-sent to a
 * new leader unless the old one answered it. Re-sending a `put`, `unset`
 * or `delete` writes the same values again; a re-sent `putIf` whose first
 * copy was stored fails with a conflict. A follower's write resolves only
 * after the leader has stored it, so a resolved write is never lost.
 * @internal
 * @module
 */
import type { WasmDatabase, WasmSubscription } from "../wasm/sync_wasm.js";
import { ClosedError, toConcordError, typedCall } from "./errors.js";
import type { Change, Status } from "./index.js";
import { type Op, type RawDoc, packOps, packPut, unpackDocument, unpackDocuments } from "./packed.js";

/** A thrown error flattened for postMessage (custom properties do not survive structured cloning). */
interface ErrorData {
  name: string;
  message: string;
  props: Record<string, unknown>;
}

/** The leader's answer to a forwarded call. */
interface Reply {
  ok: boolean;
  value?: unknown;
  error?: ErrorData;
  /** The documents the call wrote, as stored, so the caller reads its own write. */
  docs?: Array<[string, string, RawDoc | null]>;
}

/** Messages on the database's BroadcastChannel. `to`/`from` are tab ids. */
type Message =
  | { t: "hello"; from: string }
  | { t: "bye"; from: string }
  | { t: "leader" }
  | { t: "state"; to: string; replicaId: string; status: Status; collections: Array<[string, RawDoc[]]> }
  | { t: "call"; from: string; rid: number; method: string; args: unknown[] }
  | { t: "reply"; to: string; rid: number; reply: Reply }
  | { t: "change"; change: Change; doc?: RawDoc | null; docs?: RawDoc[] }
  | { t: "status"; status: Status };

/** The calls a follower may forward. */
const METHODS = new Set(["put", "putIf", "unset", "delete", "transaction", "flush", "connect", "disconnect", "setToken"]);

interface Listener {
  collection: string | undefined;
  id: string | undefined;
  fn: (change: Change) => void;
}

interface PendingCall {
  method: string;
  args: unknown[];
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

/** Whether `change` concerns a listener filtered to `collection` / `id` (sync-client's filter rules). */
function matches(l: Listener, change: Change): boolean {
  if (change.type === "lagged" || l.collection === undefined) return true;
  if (change.collection !== l.collection) return false;
  return l.id === undefined || change.type === "collection" || change.id === l.id;
}

function errorData(e: unknown): ErrorData {
  if (e instanceof Error) {
    const props: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(e)) if (typeof v !== "function" && typeof v !== "object") props[k] = v;
    return { name: e.name, message: e.message, props };
  }
  return { name: "Error", message: String(e), props: {} };
}

/**
 * The length of a revision: wasm hands a turn's revisions over as one
 * string of them back to back (one string per turn instead of one per
 * put). Each put's revision is a slice of it, which V8 keeps as a view
 * into the turn's string rather than a copy.
 */
const REVISION_LENGTH = 50;

/** What wasm's `durable()` resolves to: the turn's revisions, and its errors if any write failed to be stored. */
interface Turn {
  revisions: string;
  errors: unknown[] | undefined;
}

/** The wasm-style error (`kind` and details as properties) that `toConcordError` turns into a typed one. */
function errorFrom(d: ErrorData): Error {
  const e = d.name === "TypeError" ? new TypeError(d.message) : new Error(d.message);
  return Object.assign(e, d.props);
}

function randomId(): string {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The (collection, id) pairs a forwarded write touches. */
function touched(method: string, args: unknown[]): Array<[string, string]> {
  if (method === "transaction") return (args[0] as Array<{ collection: string; id: string }>).map((op) => [op.collection, op.id]);
  if (method === "put" || method === "putIf" || method === "unset" || method === "delete") return [[args[0] as string, args[1] as string]];
  return [];
}

/**
 * The engine behind a `Database`: the wasm database in the leader, the
 * forwarder and document copy in a follower; it switches from one to the
 * other on takeover without the app noticing.
 * @internal
 */
export class Shared {
  readonly #tab = randomId();
  readonly #openInner: () => Promise<WasmDatabase>;
  #inner: WasmDatabase | undefined;
  #innerSubs: WasmSubscription[] = [];
  /** Leader: the database's changes, subscribed only while wanted (see #wantChanges). */
  #changeSub: WasmSubscription | undefined;
  #channel: BroadcastChannel | undefined;
  #lockAbort: AbortController | undefined;
  #releaseLock: () => void = () => {};
  #listeners = new Set<Listener>();
  #statusListeners = new Set<(s: Status) => void>();
  #status: Status | undefined;
  #replicaId = "";
  /** Follower: documents by collection, then id. */
  #docs: Map<string, Map<string, RawDoc>> | undefined;
  #pending = new Map<number, PendingCall>();
  #nextRid = 0;
  #followers = new Set<string>();
  #closing = false;
  #ready: Promise<void>;
  /** Set while this tab is opening the store to lead. */
  #leadStarted: Promise<void> | undefined;
  #settle!: { resolve: () => void; reject: (e: unknown) => void; done: boolean };
  /** Leader: the durability of this turn's puts, once one was made (see #put). */
  #turn: Promise<Turn> | undefined;
  /** Leader: what each put of this turn chains on `#turn` (see #startTurn). */
  #turnRevision: (t: Turn) => string = () => "";
  #onOnline = () => {
    // A hint, not the truth: reconnect at once instead of waiting out the
    // backoff, but only when syncing is wanted and the link is down. The
    // `offline` event is ignored: the socket tells when it is really gone.
    const inner = this.#inner;
    if (inner !== undefined && inner.status().connection === "reconnecting") inner.connect();
  };

  private constructor(openInner: () => Promise<WasmDatabase>) {
    this.#openInner = openInner;
    this.#ready = new Promise<void>((resolve, reject) => (this.#settle = { resolve, reject, done: false }));
  }

  /** A database in this tab only (no other tab can share it). */
  static async alone(openInner: () => Promise<WasmDatabase>): Promise<Shared> {
    const shared = new Shared(openInner);
    await shared.#lead();
    return shared;
  }

  /** Database `name`, shared with this origin's other tabs; resolves once it is readable here. */
  static async join(name: string, locks: LockManager, openInner: () => Promise<WasmDatabase>): Promise<Shared> {
    const shared = new Shared(openInner);
    const channel = new BroadcastChannel(`concord-sync:${name}`);
    shared.#channel = channel;
    channel.onmessage = (e: MessageEvent<Message>) => shared.#receive(e.data);
    const abort = new AbortController();
    shared.#lockAbort = abort;
    // Not `ifAvailable`: a follower queues for the lock, and the browser
    // grants it to one queued tab when the leader's tab closes.
    locks
      .request(`concord-sync:${name}`, { signal: abort.signal }, async () => {
        if (shared.#closing && shared.#pending.size === 0) return;
        try {
          await (shared.#leadStarted = shared.#lead());
        } catch (e) {
          shared.#fail(e);
          return;
        }
        return new Promise<void>((release) => (shared.#releaseLock = release));
      })
      .catch((e: unknown) => {
        if ((e as Error)?.name !== "AbortError") shared.#fail(e);
      });
    // Ask a running leader for the documents; if there is none the lock
    // is free and this tab leads.
    shared.#post({ t: "hello", from: shared.#tab });
    try {
      await shared.#ready;
    } catch (e) {
      abort.abort();
      channel.close();
      throw e;
    }
    return shared;
  }

  #fail(e: unknown): void {
    if (!this.#settle.done) {
      this.#settle.done = true;
      this.#settle.reject(e);
    } else {
      console.error("concord-sync: taking over the database failed", e);
    }
  }

  #becomeReady(): void {
    if (!this.#settle.done) {
      this.#settle.done = true;
      this.#settle.resolve();
    }
  }

  /** Whether this tab runs the database (else it forwards to the tab that does). */
  get leading(): boolean {
    return this.#inner !== undefined;
  }

  #post(message: Message): void {
    this.#channel?.postMessage(message);
  }

  /** Opens the store and starts serving: this tab is (now) the leader. */
  async #lead(): Promise<void> {
    const inner = await this.#openInner();
    const wasFollower = this.#docs !== undefined;
    this.#inner = inner;
    this.#docs = undefined;
    this.#replicaId = inner.replicaId();
    this.#status = inner.status() as Status;
    this.#wantChanges();
    this.#innerSubs.push(
      inner.watchStatus((status: Status) => {
        this.#setStatus(status);
        if (this.#followers.size > 0) this.#post({ t: "status", status });
      }),
    );
    globalThis.addEventListener?.("online", this.#onOnline);
    // Calls this tab forwarded to the old leader and got no answer for:
    // run them here.
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const call of pending) this.#exec(call.method, call.args).then(call.resolve, call.reject);
    this.#becomeReady();
    // The copy this tab showed may hold changes the old leader never
    // stored (they come back from the relay): tell subscribers to re-read.
    if (wasFollower) this.#dispatch({ type: "lagged" });
    this.#post({ t: "leader" });
  }

  /**
   * Leader: subscribes to the database's changes while a listener in this
   * tab or a follower tab wants them, and only then: each change delivered
   * costs a copy, a conversion into a JavaScript object and a call, which
   * for a page writing without listening (100,000 puts) is pure overhead.
   */
  #wantChanges(): void {
    const want = this.#inner !== undefined && !this.#closing && (this.#listeners.size > 0 || this.#followers.size > 0);
    if (want && this.#changeSub === undefined) {
      this.#changeSub = this.#inner!.subscribe(undefined, undefined, (change: Change) => this.#leaderChange(change));
    } else if (!want && this.#changeSub !== undefined) {
      this.#changeSub.cancel();
      this.#changeSub.free();
      this.#changeSub = undefined;
    }
  }

  /** Leader: a change of the database, to this tab's subscribers and the followers. */
  #leaderChange(change: Change): void {
    if (this.#followers.size > 0 && this.#inner !== undefined) {
      if (change.type === "document") {
        this.#post({ t: "change", change, doc: this.get(change.collection, change.id) ?? null });
      } else if (change.type === "collection") {
        this.#post({ t: "change", change, docs: this.list(change.collection) });
      } else {
        this.#postState("*");
      }
    }
    this.#dispatch(change);
  }

  #postState(to: string): void {
    const inner = this.#inner!;
    const collections = (inner.collectionNames() as string[]).map((c): [string, RawDoc[]] => [c, this.list(c)]);
    this.#post({ t: "state", to, replicaId: this.#replicaId, status: this.#status!, collections });
  }

  #dispatch(change: Change): void {
    for (const l of [...this.#listeners]) {
      if (!matches(l, change)) continue;
      try {
        l.fn(change);
      } catch (e) {
        console.error("concord-sync: a subscriber threw", e);
      }
    }
  }

  #setStatus(status: Status): void {
    this.#status = status;
    for (const fn of [...this.#statusListeners]) fn(status);
  }

  #receive(m: Message): void {
    if (this.#inner !== undefined) {
      this.#serve(m);
      return;
    }
    if (this.#closing && this.#pending.size === 0) return;
    switch (m.t) {
      case "leader":
        // A new leader: ask it for the documents again and re-send every
        // call the old one left unanswered.
        this.#post({ t: "hello", from: this.#tab });
        for (const [rid, call] of this.#pending) this.#post({ t: "call", from: this.#tab, rid, method: call.method, args: call.args });
        break;
      case "state": {
        if (m.to !== this.#tab && m.to !== "*") break;
        const first = this.#docs === undefined;
        this.#docs = new Map(m.collections.map(([c, docs]) => [c, new Map(docs.map((d) => [d.id, d]))]));
        this.#replicaId = m.replicaId;
        this.#setStatus(m.status);
        if (first) this.#becomeReady();
        else this.#dispatch({ type: "lagged" });
        break;
      }
      case "change": {
        const docs = this.#docs;
        if (docs === undefined) break; // the state still to come includes it
        const change = m.change;
        if (change.type === "document") {
          this.#storeDoc(change.collection, change.id, m.doc ?? null);
        } else if (change.type === "collection") {
          if (m.docs === undefined || m.docs.length === 0) docs.delete(change.collection);
          else docs.set(change.collection, new Map(m.docs.map((d) => [d.id, d])));
        }
        this.#dispatch(change);
        break;
      }
      case "status":
        if (this.#docs !== undefined) this.#setStatus(m.status);
        break;
      case "reply": {
        if (m.to !== this.#tab) break;
        const call = this.#pending.get(m.rid);
        if (call === undefined) break;
        this.#pending.delete(m.rid);
        for (const [c, id, doc] of m.reply.docs ?? []) this.#storeDoc(c, id, doc);
        if (m.reply.ok) call.resolve(m.reply.value);
        else call.reject(errorFrom(m.reply.error!));
        break;
      }
      default:
        break;
    }
  }

  #storeDoc(collection: string, id: string, doc: RawDoc | null): void {
    const docs = this.#docs;
    if (docs === undefined) return;
    let c = docs.get(collection);
    if (doc === null) {
      c?.delete(id);
      return;
    }
    if (c === undefined) docs.set(collection, (c = new Map()));
    c.set(id, doc);
  }

  /** Leader: answers followers. */
  #serve(m: Message): void {
    // While closing, calls go unanswered: the follower re-sends them to
    // the next leader.
    if (this.#closing) return;
    switch (m.t) {
      case "hello":
        this.#followers.add(m.from);
        this.#wantChanges();
        this.#postState(m.from);
        break;
      case "bye":
        this.#followers.delete(m.from);
        this.#wantChanges();
        break;
      case "call": {
        const { from, rid, method, args } = m;
        this.#followers.add(from);
        this.#wantChanges();
        const answer = (reply: Reply) => this.#post({ t: "reply", to: from, rid, reply });
        if (!METHODS.has(method)) {
          answer({ ok: false, error: errorData(new TypeError(`unknown call ${JSON.stringify(method)}`)) });
          break;
        }
        this.#exec(method, args).then(
          (value) => {
            const inner = this.#inner;
            const docs = inner === undefined ? [] : touched(method, args).map(([c, id]): [string, string, RawDoc | null] => [c, id, this.get(c, id) ?? null]);
            answer({ ok: true, value, docs });
          },
          (e: unknown) => answer({ ok: false, error: errorData(e) }),
        );
        break;
      }
      default:
        break;
    }
  }

  /** Leader: runs a call on the wasm database; a synchronous throw becomes a rejection. */
  #exec(method: string, args: unknown[]): Promise<unknown> {
    const inner = this.#inner!;
    try {
      switch (method) {
        case "put":
          return this.#put(args[0] as string, args[1] as string, args[2], undefined);
        case "putIf":
          return this.#put(args[0] as string, args[1] as string, args[2], (args[3] as string | undefined) ?? null);
        case "transaction":
          return inner.transaction(packOps(args[0] as Op[]));
        default: {
          const f = (inner as unknown as Record<string, (...a: unknown[]) => unknown>)[method];
          return Promise.resolve(f.apply(inner, args));
        }
      }
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Leader: applies a put (`expected` given: a putIf) at once, so reads
   * see it, and returns a Promise of its revision once durable. The puts
   * of one turn of the event loop share one Promise from wasm for their
   * durability (one per put cost more than the write itself); each put's
   * own Promise settles from it, with its revision or its own error.
   */
  #put(collection: string, id: string, fields: unknown, expected: string | null | undefined): Promise<string> {
    try {
      this.#inner!.put(packPut(collection, id, fields, expected));
    } catch (e) {
      return Promise.reject(toConcordError(e));
    }
    const turn = (this.#turn ??= this.#startTurn());
    return turn.then(this.#turnRevision);
  }

  /**
   * Leader: a new turn's durability, asked of wasm once the turn's
   * synchronous code and microtasks queued so far have run; and the one
   * function every put of the turn chains on it. The reactions to one
   * Promise run in the order they were added, so the n-th call is the n-th
   * put's: a counter finds its revision and error, where a closure per put
   * (holding its index) cost as much garbage collection as the put itself.
   */
  #startTurn(): Promise<Turn> {
    const inner = this.#inner!;
    let next = 0;
    this.#turnRevision = (t) => {
      const i = next++;
      if (t.errors === undefined || t.errors[i] === null) return t.revisions.slice(i * REVISION_LENGTH, (i + 1) * REVISION_LENGTH);
      throw toConcordError(t.errors[i]);
    };
    return new Promise((resolve, reject) =>
      queueMicrotask(() => {
        this.#turn = undefined;
        // A throw here (a trapped wasm module) would otherwise leave every
        // put of the turn pending for good: it fails them instead.
        try {
          resolve(inner.durable() as Promise<Turn>);
        } catch (e) {
          reject(toConcordError(e));
        }
      }),
    );
  }

  /** Follower: forwards a call to the leader; resolves with the leader's answer. */
  #forward(method: string, args: unknown[]): Promise<any> {
    if (this.#closing) return Promise.reject(new ClosedError("Closed", "the database is closed"));
    return new Promise((resolve, reject) => {
      const rid = ++this.#nextRid;
      this.#pending.set(rid, { method, args, resolve, reject });
      this.#post({ t: "call", from: this.#tab, rid, method, args });
    });
  }

  /** A write or command: on the wasm database here, or forwarded to the leader. */
  #call(method: string, args: unknown[]): Promise<any> {
    if (this.#inner !== undefined) return this.#exec(method, args);
    return this.#forward(method, args);
  }

  /** The database's replica id (the leader's store's). */
  replicaId(): string {
    return this.#replicaId;
  }

  /** See `Collection.put`. */
  put(collection: string, id: string, fields: unknown): Promise<string> {
    // In the leader the wasm call applies the write before returning, so
    // reads see it at once; typedCall keeps its synchronous throws.
    if (this.#inner !== undefined) return this.#put(collection, id, fields, undefined);
    return typedCall(() => this.#forward("put", [collection, id, fields]));
  }

  /** See `Collection.putIf`. */
  putIf(collection: string, id: string, fields: unknown, expected: string | undefined): Promise<string> {
    if (this.#inner !== undefined) return this.#put(collection, id, fields, expected ?? null);
    return typedCall(() => this.#forward("putIf", [collection, id, fields, expected]));
  }

  /** See `Collection.unset`. */
  unset(collection: string, id: string, names: string[]): Promise<string> {
    return typedCall(() => this.#call("unset", [collection, id, names]));
  }

  /** See `Collection.delete`. */
  delete(collection: string, id: string): Promise<void> {
    return typedCall(() => this.#call("delete", [collection, id]));
  }

  /** See `Database.transaction`: `ops` as `Transaction` records them. */
  transaction(ops: Op[]): Promise<void> {
    return typedCall(() => this.#call("transaction", [ops]));
  }

  /** See `Database.flush`. */
  flush(): Promise<void> {
    return typedCall(() => this.#call("flush", []));
  }

  /** See `Database.connect` (a follower asks the leader). */
  connect(): void {
    if (this.#inner !== undefined) this.#inner.connect();
    else void this.#forward("connect", []).catch(() => {});
  }

  /** See `Database.disconnect` (a follower asks the leader). */
  disconnect(): void {
    if (this.#inner !== undefined) this.#inner.disconnect();
    else void this.#forward("disconnect", []).catch(() => {});
  }

  /** See `Database.setToken` (a follower hands it to the leader). */
  setToken(token: string): void {
    if (this.#inner !== undefined) this.#inner.setToken(token);
    else void this.#forward("setToken", [token]).catch(() => {});
  }

  /** A document: from the wasm database in the leader, from the copy in a follower. */
  get(collection: string, id: string): RawDoc | undefined {
    if (this.#inner !== undefined) {
      const packed = this.#inner.get(collection, id);
      return packed === undefined ? undefined : unpackDocument(packed);
    }
    return this.#docs?.get(collection)?.get(id);
  }

  /** Documents in id order, filtered and paged (see `Collection.list`). */
  list(collection: string, prefix?: string, after?: string, limit?: number): RawDoc[] {
    if (this.#inner !== undefined) return unpackDocuments(this.#inner.list(collection, prefix, after, limit));
    const docs = [...(this.#docs?.get(collection)?.values() ?? [])]
      .filter((d) => (prefix === undefined || d.id.startsWith(prefix)) && (after === undefined || d.id > after))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return limit === undefined ? docs : docs.slice(0, limit);
  }

  /** Calls `fn` for each change to the database, one collection, or one document; returns the function that stops it. */
  subscribe(collection: string | undefined, id: string | undefined, fn: (change: Change) => void): () => void {
    const listener = { collection, id, fn };
    this.#listeners.add(listener);
    this.#wantChanges();
    return () => {
      this.#listeners.delete(listener);
      this.#wantChanges();
    };
  }

  /** Where syncing stands (the leader's status, in every tab). */
  status(): Status {
    return this.#status!;
  }

  /** Calls `fn` with each new status; returns the function that stops it. */
  watchStatus(fn: (s: Status) => void): () => void {
    this.#statusListeners.add(fn);
    return () => {
      this.#statusListeners.delete(fn);
    };
  }

  /** Leader: closes the store, then lets the next tab lead. Follower: waits for its forwarded calls, then leaves. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#inner === undefined) {
      await Promise.allSettled([...this.#pending.values()].map((c) => new Promise((r) => ((c.resolve = this.#chain(c.resolve, r)), (c.reject = this.#chain(c.reject, r))))));
      this.#post({ t: "bye", from: this.#tab });
    }
    this.#lockAbort?.abort();
    // Takeover may have begun while waiting above: let it finish, then close.
    await this.#leadStarted?.catch(() => {});
    const inner = this.#inner;
    if (inner !== undefined) {
      await inner.close();
      this.#wantChanges();
      for (const sub of this.#innerSubs) {
        sub.cancel();
        sub.free();
      }
      globalThis.removeEventListener?.("online", this.#onOnline);
    }
    this.#listeners.clear();
    this.#statusListeners.clear();
    this.#channel?.close();
    this.#releaseLock();
  }

  #chain<T>(first: (v: T) => void, then: (v: unknown) => void): (v: T) => void {
    return (v: T) => {
      first(v);
      then(v);
    };
  }
}
