/**
 * Typed errors. Every error the package throws or rejects with is a
 * `ConcordError`; its subclasses tell apart the cases an application
 * handles differently, and `kind` names the case as a string.
 */

/** The base class of every error from concord-sync. */
export class ConcordError extends Error {
  /** Which case this is, e.g. `"Conflict"` or `"Closed"`. */
  readonly kind: string;
  constructor(kind: string, message: string) {
    super(message);
    this.kind = kind;
    this.name = new.target.name;
  }
}

/**
 * A conditional write (`putIf`) found the document at another revision:
 * read it again, reapply the change and retry.
 */
export class ConflictError extends ConcordError {
  /** The collection. */
  readonly collection: string;
  /** The document id. */
  readonly id: string;
  /** The revision the write expected (`null`: that it did not exist). */
  readonly expected: string | null;
  /** The revision it has (`null`: it does not exist). */
  readonly actual: string | null;
  constructor(message: string, detail: { collection: string; id: string; expected: string | null; actual: string | null }) {
    super("Conflict", message);
    this.collection = detail.collection;
    this.id = detail.id;
    this.expected = detail.expected;
    this.actual = detail.actual;
  }
}

/** A write broke the data model's rules (names, sizes, nesting); nothing changed. */
export class InvalidWriteError extends ConcordError {}

/** A value cannot be stored (a function, a Date, a class instance...); nothing changed. */
export class EncodeError extends ConcordError {}

/** The local store (IndexedDB) failed; `storeKind` says how (`Full`, `Io`, `Closed`...). */
export class StoreError extends ConcordError {
  /** `Locked`, `Corrupt`, `Full`, `Io` or `Closed`. */
  readonly storeKind: string;
  constructor(message: string, storeKind: string) {
    super("Store", message);
    this.storeKind = storeKind;
  }
}

/** The stored database cannot be loaded (corrupt, or from a newer version). */
export class LoadError extends ConcordError {}

/** The relay refused local writes for good; their effect was taken back out. */
export class RejectedError extends ConcordError {
  /** How many writes. */
  readonly count: number;
  constructor(message: string, count: number) {
    super("Rejected", message);
    this.count = count;
  }
}

/**
 * Syncing stopped and will not resume by itself (refused token with no way
 * to refresh it, wrong room, incompatible relay). Fix it, then `connect()`.
 */
export class OfflineError extends ConcordError {
  /** The close code that ended it, e.g. `"TokenExpired"`. */
  readonly code: string;
  constructor(message: string, code: string) {
    super("Offline", message);
    this.code = code;
  }
}

/** The token only allows reading; local writes stay on this device. */
export class ReadOnlyError extends ConcordError {}

/** The database has no relay; pass one to `open`. */
export class NoRelayError extends ConcordError {}

/** The database was closed. */
export class ClosedError extends ConcordError {}

/** Turns whatever the wasm module threw into the matching typed error. */
export function toConcordError(e: unknown): unknown {
  if (e instanceof ConcordError || !(e instanceof Error)) return e;
  const d = e as Error & Record<string, any>;
  const message = d.message;
  switch (d.kind) {
    case "Conflict":
      return new ConflictError(message, { collection: d.collection, id: d.id, expected: d.expected, actual: d.actual });
    case "InvalidWrite":
      return new InvalidWriteError("InvalidWrite", message);
    case "Encode":
      return new EncodeError("Encode", message);
    case "Decode":
      return new EncodeError("Decode", message);
    case "Store":
      return new StoreError(message, d.storeKind);
    case "Load":
      return new LoadError("Load", message);
    case "Rejected":
      return new RejectedError(message, d.count);
    case "Offline":
      return new OfflineError(message, d.code);
    case "ReadOnly":
      return new ReadOnlyError("ReadOnly", message);
    case "NoRelay":
      return new NoRelayError("NoRelay", message);
    case "Closed":
      return new ClosedError("Closed", message);
    case undefined:
      return e;
    default:
      return new ConcordError(String(d.kind), message);
  }
}

/** Runs `f`, rethrowing its errors as typed ones. */
export function typed<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw toConcordError(e);
  }
}

/** `promise`, rejecting with typed errors. */
export function typedAsync<T>(promise: Promise<T>): Promise<T> {
  return promise.catch((e: unknown) => {
    throw toConcordError(e);
  });
}

/**
 * Calls `f` (which starts its work at once) and returns its Promise with
 * typed errors; a synchronous throw becomes a rejection, so a write's
 * caller handles every failure in one place.
 */
export function typedCall<T>(f: () => Promise<T>): Promise<T> {
  try {
    return typedAsync(f());
  } catch (e) {
    return Promise.reject(toConcordError(e));
  }
}
