// Loaded by page.html: the package imported unbundled, the way a page
// without a build step would, plus helpers the tests call through
// page.evaluate.
import * as concord from "/dist/index.js";

window.dbs = {};

/** Resolves once `check()` holds, re-checking on every change of `db`. */
window.until = (db, check) =>
  new Promise((resolve) => {
    if (check()) return resolve();
    const stop = db.subscribe(() => {
      if (check()) {
        stop();
        resolve();
      }
    });
  });

/** Resolves once `db`'s status satisfies `check`. */
window.untilStatus = (db, check) =>
  new Promise((resolve) => {
    if (check(db.status.value)) return resolve(db.status.value);
    const stop = db.status.subscribe((s) => {
      if (check(s)) {
        stop();
        resolve(s);
      }
    });
  });

window.concord = concord;
