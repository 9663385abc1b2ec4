/**
 * The Concord todo demo: one collection of todos in a concord-sync
 * database. Every change is written locally first (IndexedDB) and synced
 * through the relay whenever it is reachable; fields merge one by one, so a
 * rename in one window and a completion in another both survive.
 */
import { open, type Database, type Collection, type Status } from "concord-sync";
import { moved, between } from "./order";
import "./style.css";

/** A todo document. `titleBy`/`doneBy` name who last set each field. */
interface Todo {
  title: string;
  done: boolean;
  order: number;
  titleBy?: string;
  doneBy?: string;
}

/** What the server hands out at /config.json (see serve.mjs). */
interface Config {
  relayUrl: string;
  room: string;
  token: string;
}

const NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Niklaus"];

/**
 * This tab's identity, kept in sessionStorage: each tab (and each window)
 * is its own replica with its own IndexedDB database, and a reload keeps it.
 */
function identity(): { name: string; dbName: string } {
  const saved = sessionStorage.getItem("concord-demo-identity");
  if (saved) return JSON.parse(saved);
  const suffix = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  // Tabs of one browser share localStorage: taking turns through the
  // names gives two windows opened side by side different ones.
  const next = Number(localStorage.getItem("concord-demo-next-name") ?? Math.floor(Math.random() * NAMES.length));
  localStorage.setItem("concord-demo-next-name", String((next + 1) % NAMES.length));
  const fresh = { name: NAMES[next % NAMES.length], dbName: `concord-todos-${suffix}` };
  sessionStorage.setItem("concord-demo-identity", JSON.stringify(fresh));
  return fresh;
}

/**
 * The relay URL, room and a fresh token from the server; the last one seen
 * when the server cannot be reached, so the app still opens offline.
 */
async function config(): Promise<Config> {
  try {
    const response = await fetch("/config.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`config: HTTP ${response.status}`);
    const fresh = (await response.json()) as Config;
    localStorage.setItem("concord-demo-config", JSON.stringify(fresh));
    return fresh;
  } catch (e) {
    const cached = localStorage.getItem("concord-demo-config");
    if (cached) return JSON.parse(cached) as Config;
    throw e;
  }
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function showError(e: unknown): void {
  const box = $("error");
  box.textContent = e instanceof Error ? e.message : String(e);
  box.hidden = false;
}

async function main(): Promise<void> {
  const me = identity();
  const first = await config();
  $("me").textContent = me.name;
  $("room").textContent = first.room;
  const db = await open(me.dbName, first.relayUrl, first.room, async () => (await config()).token);
  const todos = db.collection<Todo>("todos");
  (window as unknown as { todoApp: unknown }).todoApp = { db, todos };

  wireStatus(db);
  wireAdd(todos, me.name);
  const list = new TodoList(todos, me.name);
  todos.subscribe((change) => {
    if (change.type === "document" && change.origin === "remote") list.flash(change.id);
    list.render();
  });
  list.render();
  document.body.dataset.ready = "true";
}

/** The status pill, the pending/lag line and the offline button. */
function wireStatus(db: Database): void {
  let online = true;
  const toggle = $<HTMLButtonElement>("toggle");
  toggle.addEventListener("click", () => {
    online = !online;
    if (online) db.connect();
    else db.disconnect();
    toggle.textContent = online ? "Go offline" : "Go online";
    toggle.classList.toggle("active", !online);
  });
  const show = (s: Status) => {
    const pill = $("status");
    pill.className = `pill ${s.connection}`;
    pill.dataset.state = s.connection;
    const retry = s.retryAt === null ? "" : ` in ${Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000))}s`;
    pill.textContent = { online: "Live", offline: "Offline", connecting: "Connecting…", reconnecting: `Reconnecting${retry}` }[s.connection];
    pill.title = s.lastError ?? "";
    const pending = $("pending");
    pending.textContent = `${s.pendingWrites} pending`;
    pending.dataset.count = String(s.pendingWrites);
    $("lag").textContent = `lag ${s.lag}`;
    $("cursor").textContent = `offset ${s.cursor}`;
  };
  show(db.status.value);
  db.status.subscribe(show);
  // The retry countdown moves even when the status does not.
  setInterval(() => show(db.status.value), 1000);
}

function wireAdd(todos: Collection<Todo>, me: string): void {
  const form = $<HTMLFormElement>("add");
  const input = $<HTMLInputElement>("new-title");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const title = input.value.trim();
    if (!title) return;
    input.value = "";
    const last = sorted(todos).at(-1);
    const id = `${Date.now().toString(36)}-${crypto.getRandomValues(new Uint32Array(1))[0].toString(36)}`;
    todos.put(id, { title, done: false, order: between(last?.data.order, undefined), titleBy: me }).catch(showError);
  });
}

function sorted(todos: Collection<Todo>) {
  return todos.list().sort((a, b) => a.data.order - b.data.order || (a.id < b.id ? -1 : 1));
}

/** The list, updated in place (keyed by id) so an input being typed in keeps its focus. */
class TodoList {
  #rows = new Map<string, HTMLLIElement>();
  #root = $<HTMLUListElement>("list");

  constructor(
    private todos: Collection<Todo>,
    private me: string,
  ) {}

  render(): void {
    const docs = sorted(this.todos);
    const seen = new Set<string>();
    docs.forEach((doc, index) => {
      seen.add(doc.id);
      const row = this.#rows.get(doc.id) ?? this.#create(doc.id);
      this.#fill(row, doc.data, index, docs.length);
      // Appending an attached node moves it: the DOM ends in sorted order.
      if (this.#root.children[index] !== row) this.#root.insertBefore(row, this.#root.children[index] ?? null);
    });
    for (const [id, row] of this.#rows) {
      if (!seen.has(id)) {
        row.remove();
        this.#rows.delete(id);
      }
    }
    const left = docs.filter((d) => !d.data.done).length;
    $("left").textContent = `${left} left`;
  }

  /** Highlights a todo another replica just changed. */
  flash(id: string): void {
    const row = this.#rows.get(id);
    if (!row) return;
    row.classList.remove("flash");
    void row.offsetWidth; // restart the animation
    row.classList.add("flash");
  }

  #create(id: string): HTMLLIElement {
    const row = document.createElement("li");
    row.className = "todo";
    row.dataset.id = id;
    row.dataset.testid = "todo";
    row.innerHTML = `
      <input type="checkbox" class="done" data-testid="done" aria-label="done" />
      <div class="body">
        <input class="title" data-testid="title" aria-label="title" maxlength="200" />
        <div class="by" data-testid="by"></div>
      </div>
      <div class="actions">
        <button type="button" class="icon" data-testid="up" title="Move up">↑</button>
        <button type="button" class="icon" data-testid="down" title="Move down">↓</button>
        <button type="button" class="icon danger" data-testid="delete" title="Delete">✕</button>
      </div>`;
    const q = <T extends HTMLElement>(sel: string) => row.querySelector(sel) as T;
    const write = (fields: Partial<Todo>) => this.todos.put(id, fields).catch(showError);
    q<HTMLInputElement>(".done").addEventListener("change", (e) =>
      write({ done: (e.target as HTMLInputElement).checked, doneBy: this.me }),
    );
    const title = q<HTMLInputElement>(".title");
    const commit = () => {
      const value = title.value.trim();
      const current = this.todos.get(id);
      if (!current) return;
      if (value && value !== current.title) write({ title: value, titleBy: this.me });
      else title.value = current.title;
    };
    title.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        commit();
        title.blur();
      } else if (e.key === "Escape") {
        title.value = this.todos.get(id)?.title ?? "";
        title.blur();
      }
    });
    title.addEventListener("blur", commit);
    const move = (delta: -1 | 1) => {
      const docs = sorted(this.todos);
      const index = docs.findIndex((d) => d.id === id);
      const order = moved(
        docs.map((d) => d.data.order),
        index,
        delta,
      );
      if (order !== undefined) write({ order });
    };
    q(".actions [data-testid=up]").addEventListener("click", () => move(-1));
    q(".actions [data-testid=down]").addEventListener("click", () => move(1));
    q(".actions [data-testid=delete]").addEventListener("click", () => this.todos.delete(id).catch(showError));
    this.#rows.set(id, row);
    return row;
  }

  #fill(row: HTMLLIElement, todo: Todo, index: number, count: number): void {
    const q = <T extends HTMLElement>(sel: string) => row.querySelector(sel) as T;
    q<HTMLInputElement>(".done").checked = todo.done;
    row.classList.toggle("completed", todo.done);
    const title = q<HTMLInputElement>(".title");
    if (document.activeElement !== title) title.value = todo.title;
    const by = [todo.titleBy && `named by ${todo.titleBy}`, todo.doneBy && `${todo.done ? "done" : "reopened"} by ${todo.doneBy}`];
    q(".by").textContent = by.filter(Boolean).join(" · ");
    q<HTMLButtonElement>("[data-testid=up]").disabled = index === 0;
    q<HTMLButtonElement>("[data-testid=down]").disabled = index === count - 1;
  }
}

main().catch((e) => {
  showError(e);
  console.error(e);
});
