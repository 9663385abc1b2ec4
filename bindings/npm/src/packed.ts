/**
 * The packed encoding of writes and documents (its layout is described in
 * sync-wasm's `src/packed.rs`, which reads and writes the other end): one
 * byte string crosses into wasm per write or transaction, and one comes
 * back per read, instead of one wasm-bindgen call per field and value.
 *
 * Values: null and undefined → null; booleans; numbers (wasm stores safe
 * integers as Int, other numbers as Float); bigints within 64 bits;
 * strings; `Uint8Array`/`ArrayBuffer` → bytes; arrays → lists; plain
 * objects → maps (properties set to `undefined` are left out, as JSON
 * does). Anything else (functions, symbols, class instances such as
 * `Date`) is refused with an `EncodeError` naming the field. Back in
 * JavaScript, integers within ±2^53 are numbers and larger ones bigints.
 * @internal
 * @module
 */
import { EncodeError } from "./errors.js";

const NULL = 0;
const FALSE = 1;
const TRUE = 2;
const NUMBER = 3;
const INT = 4;
const STRING = 5;
const BYTES = 6;
const LIST = 7;
const MAP = 8;

/** Nesting deeper than this below a field is refused (as wasm refuses it). */
const MAX_DEPTH = 64;

/** Op kinds. */
const PUT = 0;
const PUT_IF = 1;
const UNSET = 2;
const DELETE = 3;

/** A document as the wasm module returns it, unpacked. */
export interface RawDoc {
  /** The document id. */
  id: string;
  /** Its revision. */
  revision: string;
  /** Its fields. */
  fields: any;
}

/** A transaction's write, as `Transaction` records it. */
export type Op =
  | { op: "put"; collection: string; id: string; fields: object }
  | { op: "putIf"; collection: string; id: string; fields: object; expected: string | null }
  | { op: "unset"; collection: string; id: string; names: string[] }
  | { op: "delete"; collection: string; id: string };

/** A value that cannot be stored; `path` is filled in on the way out. */
class Unstorable {
  constructor(
    readonly reason: string,
    readonly path: Array<string | number> = [],
  ) {}

  /** The `EncodeError` naming the field as `a.b[2]`. */
  error(): EncodeError {
    const path = this.path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? p : `.${p}`)).join("");
    return new EncodeError("Encode", `${path} ${this.reason}`);
  }
}

const CANNOT =
  "cannot be stored: only null, booleans, numbers, bigints, strings, Uint8Array, arrays and plain objects can (convert dates to numbers or strings)";

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== "object" || v === null) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === null || proto === Object.prototype;
}

const utf8In = new TextEncoder();
const utf8Out = new TextDecoder();

/** Appends packed bytes to a buffer reused from one write to the next. */
class Packer {
  buf = new Uint8Array(1024);
  view = new DataView(this.buf.buffer);
  at = 0;
  /** Set while a write is being packed here (see `packer`). */
  busy = false;

  /** Room for `n` more bytes. */
  reserve(n: number): void {
    const need = this.at + n;
    if (need <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const buf = new Uint8Array(size);
    buf.set(this.buf.subarray(0, this.at));
    this.buf = buf;
    this.view = new DataView(buf.buffer);
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.at++] = b;
  }

  varint(n: number): void {
    this.reserve(5);
    while (n >= 0x80) {
      this.buf[this.at++] = (n & 0x7f) | 0x80;
      n >>>= 7;
    }
    this.buf[this.at++] = n;
  }

  string(s: string): void {
    const n = s.length;
    // Short ASCII strings (ids, field names) are copied by hand: cheaper
    // than TextEncoder for a few bytes.
    if (n < 0x80) {
      this.reserve(1 + n);
      const buf = this.buf;
      let at = this.at + 1;
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[at++] = c;
      }
      if (i === n) {
        buf[this.at] = n;
        this.at = at;
        return;
      }
    }
    // At most 3 bytes per UTF-16 unit; the length goes in front once known.
    this.reserve(5 + 3 * n);
    const { written } = utf8In.encodeInto(s, this.buf.subarray(this.at + 5));
    const start = this.at;
    this.varint(written);
    if (this.at !== start + 5) this.buf.copyWithin(this.at, start + 5, start + 5 + written);
    this.at += written;
  }

  /** A count of at most `max`, filled in later by `patch`. */
  placeholder(max: number): number {
    const at = this.at;
    if (max < 0x80) {
      this.byte(0);
    } else {
      this.reserve(5);
      this.buf.set([0x80, 0x80, 0x80, 0x80, 0], at);
      this.at += 5;
    }
    return at;
  }

  patch(at: number, max: number, n: number): void {
    if (max < 0x80) {
      this.buf[at] = n;
      return;
    }
    for (let i = 0; i < 4; i++, n >>>= 7) this.buf[at + i] = (n & 0x7f) | 0x80;
    this.buf[at + 4] = n;
  }

  value(v: unknown, depth: number): void {
    if (depth > MAX_DEPTH) throw new Unstorable("is nested too deeply");
    switch (typeof v) {
      case "number":
        this.reserve(9);
        this.buf[this.at] = NUMBER;
        this.view.setFloat64(this.at + 1, v, true);
        this.at += 9;
        return;
      case "string":
        this.byte(STRING);
        this.string(v);
        return;
      case "boolean":
        this.byte(v ? TRUE : FALSE);
        return;
      case "undefined":
        this.byte(NULL);
        return;
      case "bigint":
        if (BigInt.asIntN(64, v) !== v) throw new Unstorable("is a bigint outside the 64-bit range");
        this.reserve(9);
        this.buf[this.at] = INT;
        this.view.setBigInt64(this.at + 1, v, true);
        this.at += 9;
        return;
      case "object":
        break;
      default:
        throw new Unstorable(CANNOT);
    }
    if (v === null) {
      this.byte(NULL);
    } else if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
      const bytes = v instanceof Uint8Array ? v : new Uint8Array(v);
      this.byte(BYTES);
      this.varint(bytes.length);
      this.reserve(bytes.length);
      this.buf.set(bytes, this.at);
      this.at += bytes.length;
    } else if (Array.isArray(v)) {
      this.byte(LIST);
      this.varint(v.length);
      for (let i = 0; i < v.length; i++) {
        try {
          this.value(v[i], depth + 1);
        } catch (e) {
          if (e instanceof Unstorable) e.path.unshift(i);
          throw e;
        }
      }
    } else if (isPlainObject(v)) {
      this.byte(MAP);
      this.entries(v, depth + 1);
    } else {
      throw new Unstorable(CANNOT);
    }
  }

  /** The count of `object`'s properties that are not `undefined`, then each as name and value. */
  entries(object: Record<string, unknown>, depth: number): void {
    const keys = Object.keys(object);
    const at = this.placeholder(keys.length);
    let n = 0;
    for (const key of keys) {
      const item = object[key];
      if (item === undefined) continue;
      this.string(key);
      try {
        this.value(item, depth);
      } catch (e) {
        if (e instanceof Unstorable) e.path.unshift(key);
        throw e;
      }
      n++;
    }
    this.patch(at, keys.length, n);
  }

  fields(fields: unknown): void {
    if (!isPlainObject(fields)) throw new EncodeError("Encode", "a document must be a plain object of fields");
    this.entries(fields, 0);
  }

  /** The start of an op: its kind, collection and id. */
  target(kind: number, collection: unknown, id: unknown): void {
    if (typeof collection !== "string") throw new TypeError("the collection must be a string");
    if (typeof id !== "string") throw new TypeError("the document id must be a string");
    this.byte(kind);
    this.string(collection);
    this.string(id);
  }

  /** A put, or a putIf when `expected` is given (`null`: only if absent). */
  put(collection: unknown, id: unknown, fields: unknown, expected: string | null | undefined): void {
    this.target(expected === undefined ? PUT : PUT_IF, collection, id);
    if (expected === null) {
      this.byte(0);
    } else if (expected !== undefined) {
      if (typeof expected !== "string") throw new TypeError("the expected revision must be a string or null");
      this.byte(1);
      this.string(expected);
    }
    this.fields(fields);
  }

  op(op: Op): void {
    switch (op.op) {
      case "put":
        return this.put(op.collection, op.id, op.fields, undefined);
      case "putIf":
        return this.put(op.collection, op.id, op.fields, op.expected ?? null);
      case "unset": {
        this.target(UNSET, op.collection, op.id);
        const names = Array.from(op.names ?? []).filter((n): n is string => typeof n === "string");
        this.varint(names.length);
        for (const name of names) this.string(name);
        return;
      }
      case "delete":
        return this.target(DELETE, op.collection, op.id);
      default:
        throw new TypeError(`unknown transaction operation ${JSON.stringify((op as { op: unknown }).op)}`);
    }
  }

  /** What `pack` packs into the emptied buffer; Unstorable becomes EncodeError. */
  take(pack: () => void): Uint8Array {
    this.at = 0;
    this.busy = true;
    try {
      pack();
    } catch (e) {
      throw e instanceof Unstorable ? e.error() : e;
    } finally {
      this.busy = false;
    }
    return this.buf.subarray(0, this.at);
  }
}

const shared = new Packer();

/**
 * The packer for a new write: the shared one, unless a write is being
 * packed in it. Packing reads the caller's objects, and a getter among
 * them may write to the database: that write must not pack over the
 * bytes of the one whose fields it is read for.
 */
function packer(): Packer {
  return shared.busy ? new Packer() : shared;
}

/**
 * One put (or putIf, when `expected` is given; `null`: only if absent).
 * The bytes are valid until the next call: wasm copies them at once.
 */
export function packPut(collection: string, id: string, fields: unknown, expected?: string | null): Uint8Array {
  // Not through `take`: a closure per put shows in the garbage collector.
  const p = packer();
  p.at = 0;
  p.busy = true;
  try {
    p.put(collection, id, fields, expected);
  } catch (e) {
    throw e instanceof Unstorable ? e.error() : e;
  } finally {
    p.busy = false;
  }
  return p.buf.subarray(0, p.at);
}

/** A transaction's writes. Valid until the next call. */
export function packOps(ops: Op[]): Uint8Array {
  const p = packer();
  return p.take(() => {
    p.varint(ops.length);
    for (const op of ops) p.op(op);
  });
}

/** Reads packed bytes from wasm. */
class Unpacker {
  at = 0;
  readonly view: DataView;

  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  varint(): number {
    let n = 0;
    for (let shift = 0; ; shift += 7) {
      const b = this.buf[this.at++];
      n += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return n;
    }
  }

  string(): string {
    const n = this.varint();
    const buf = this.buf;
    const start = this.at;
    const end = start + n;
    this.at = end;
    // Short ASCII strings by hand: cheaper than TextDecoder for a few bytes.
    if (n <= 32) {
      let s = "";
      let i = start;
      for (; i < end; i++) {
        const c = buf[i];
        if (c >= 0x80) break;
        s += String.fromCharCode(c);
      }
      if (i === end) return s;
    }
    return utf8Out.decode(buf.subarray(start, end));
  }

  value(): unknown {
    switch (this.buf[this.at++]) {
      case NULL:
        return null;
      case FALSE:
        return false;
      case TRUE:
        return true;
      case NUMBER: {
        const n = this.view.getFloat64(this.at, true);
        this.at += 8;
        return n;
      }
      case INT: {
        const n = this.view.getBigInt64(this.at, true);
        this.at += 8;
        return n;
      }
      case STRING:
        return this.string();
      case BYTES: {
        const n = this.varint();
        this.at += n;
        return this.buf.slice(this.at - n, this.at);
      }
      case LIST: {
        const n = this.varint();
        const list = new Array(n);
        for (let i = 0; i < n; i++) list[i] = this.value();
        return list;
      }
      case MAP:
        return this.map();
      default:
        throw new Error("concord-sync: corrupt packed value from wasm");
    }
  }

  map(): Record<string, unknown> {
    const n = this.varint();
    const map: Record<string, unknown> = {};
    for (let i = 0; i < n; i++) {
      const key = this.string();
      const value = this.value();
      // Assigning `__proto__` would set the object's prototype and drop
      // the field (a peer's document may name one so): define it instead.
      if (key === "__proto__") {
        Object.defineProperty(map, key, { value, enumerable: true, writable: true, configurable: true });
      } else {
        map[key] = value;
      }
    }
    return map;
  }

  document(): RawDoc {
    const id = this.string();
    const revision = this.string();
    return { id, revision, fields: this.map() };
  }
}

/** A packed document (id, revision, fields). */
export function unpackDocument(bytes: Uint8Array): RawDoc {
  return new Unpacker(bytes).document();
}

/** Packed documents: a count, then each document. */
export function unpackDocuments(bytes: Uint8Array): RawDoc[] {
  const u = new Unpacker(bytes);
  const n = u.varint();
  const docs = new Array<RawDoc>(n);
  for (let i = 0; i < n; i++) docs[i] = u.document();
  return docs;
}
