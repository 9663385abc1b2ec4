// The IndexedDB calls of src/store.rs, as Promises. Written in JavaScript
// rather than through a Rust IndexedDB crate: event handlers and Promises
// are native here, and each would otherwise be a Rust closure and its glue
// in the wasm that every user downloads.

/** A request's result, or its error. */
function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/**
 * Opens database `name` at `version`, creating the object stores in
 * `stores` that it lacks. A connection of an older version (another tab
 * running an older package) that does not close blocks the upgrade: that
 * rejects with an error named `BlockedError` rather than waiting without
 * end; the upgrade then runs once the other connection closes, and the
 * connection this request opens then is closed at once.
 */
export function openDb(name, version, stores) {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(name, version);
    let blocked = false;
    request.onupgradeneeded = () => {
      const db = request.result;
      for (const store of stores) {
        if (!db.objectStoreNames.contains(store)) db.createObjectStore(store);
      }
    };
    request.onsuccess = () => {
      const db = request.result;
      if (blocked) return db.close();
      // A newer package asking to upgrade is not kept waiting by this one.
      db.onversionchange = () => db.close();
      resolve(db);
    };
    request.onerror = () => reject(request.error);
    request.onblocked = () => {
      blocked = true;
      const error = new Error(
        `database ${name} is open in another tab running an older version of concord-sync; ` +
          `close or reload that tab, then open it again here (schema ${version} cannot be opened by older versions)`,
      );
      error.name = "BlockedError";
      reject(error);
    };
  });
}

/**
 * A transaction over `stores`; a read-write one completes only once the
 * browser has flushed it to disk (strict durability), which is what a
 * resolved write promises.
 */
export function begin(db, stores, write) {
  return write ? db.transaction(stores, "readwrite", { durability: "strict" }) : db.transaction(stores, "readonly");
}

/** Commits `tx` now (no more requests follow) and resolves once it is complete. */
export function commit(tx) {
  const complete = new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new DOMException("the transaction was aborted", "AbortError"));
  });
  tx.commit?.();
  return complete;
}

/** Queues a put of `value` under `key` in `store`, or a delete when `value` is undefined. */
export function queue(store, key, value) {
  if (value === undefined) store.delete(key);
  else store.put(value, key);
}

/** Queues the delete of every key of `store` from `first` to `last`, both included. */
export function queueRange(store, first, last) {
  store.delete(IDBKeyRange.bound(first, last));
}

/**
 * Up to `limit` records of object store `name` after key `after` (from the
 * first when undefined; every record when `limit` is undefined), in key
 * order, in one read-only transaction: `[keys, values]`.
 */
export function readPage(db, name, after, limit) {
  const store = db.transaction(name, "readonly").objectStore(name);
  const range = after === undefined ? undefined : IDBKeyRange.lowerBound(after, true);
  return Promise.all([done(store.getAllKeys(range, limit)), done(store.getAll(range, limit))]);
}

/** The value under `key` in object store `name`, or undefined. */
export function readOne(db, name, key) {
  return done(db.transaction(name, "readonly").objectStore(name).get(key));
}
