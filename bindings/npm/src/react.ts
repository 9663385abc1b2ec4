/**
 * concord-sync/react: hooks that keep a component in step with a database.
 * Each re-renders only when something it shows changed: `useCollection` on
 * changes to documents of its collection (and prefix), `useDocument` on
 * changes to its document, `useStatus` on status changes.
 *
 * @example
 * ```tsx
 * import { useCollection, useStatus } from "concord-sync/react";
 * function Todos({ db }: { db: Database }) {
 *   const todos = useCollection(db.collection<Todo>("todos"));
 *   const status = useStatus(db);
 *   return <ul title={status.connection}>{todos.map((t) => <li key={t.id}>{t.data.title}</li>)}</ul>;
 * }
 * ```
 * @module
 */
import { useCallback, useRef, useSyncExternalStore } from "react";
import type { Change, Collection, Database, Doc, ListOptions, Status } from "./index.js";

/** The snapshot a hook last returned, and what it was computed from. */
interface Cached<V> {
  version: number;
  key: unknown;
  value: V;
}

/**
 * Subscribes through `listen`, counting relevant changes; `read` runs only
 * when that count (or `key`) moved, so unchanged data keeps its identity.
 */
function useLive<V>(listen: (onChange: () => void) => () => void, read: () => V, key: unknown): V {
  const version = useRef(0);
  const cache = useRef<Cached<V> | null>(null);
  const subscribe = useCallback(
    (notify: () => void) =>
      listen(() => {
        version.current++;
        notify();
      }),
    [listen],
  );
  const snapshot = (): V => {
    const cached = cache.current;
    if (cached !== null && cached.version === version.current && Object.is(cached.key, key)) return cached.value;
    const value = read();
    cache.current = { version: version.current, key, value };
    return value;
  };
  return useSyncExternalStore(subscribe, snapshot, snapshot);
}

/** The documents of `collection` (filtered and paged by `options`), kept current. */
export function useCollection<T extends object>(collection: Collection<T>, options: ListOptions = {}): Doc<T>[] {
  const { prefix, after, limit } = options;
  const listen = useCallback(
    (onChange: () => void) =>
      collection.subscribe((change: Change) => {
        if (change.type === "document" && prefix !== undefined && !change.id.startsWith(prefix)) return;
        onChange();
      }),
    [collection, prefix],
  );
  const key = `${collection.name}\u0000${prefix ?? ""}\u0000${after ?? ""}\u0000${limit ?? ""}`;
  return useLive(listen, () => collection.list({ prefix, after, limit }), key);
}

/** Document `id` of `collection` (`undefined` while it does not exist), kept current. */
export function useDocument<T extends object>(collection: Collection<T>, id: string): Doc<T> | undefined {
  const listen = useCallback((onChange: () => void) => collection.subscribeDoc(id, onChange), [collection, id]);
  return useLive(listen, () => collection.getDoc(id), `${collection.name}\u0000${id}`);
}

/** Where `db`'s syncing stands, kept current. */
export function useStatus(db: Database): Status {
  const subscribe = useCallback((notify: () => void) => db.status.subscribe(notify), [db]);
  return useSyncExternalStore(subscribe, () => db.status.value, () => db.status.value);
}
