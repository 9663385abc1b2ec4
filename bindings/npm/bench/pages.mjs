// What the Chromium benchmarks share: a page of the test harness with the
// package loaded, and a room filled by another browser profile.

/** A page of `context` at the harness's page, once `window.concord` is there. */
export async function newPage(context, origin) {
  const page = await context.newPage();
  page.on("crash", () => console.error("the page crashed"));
  page.on("console", (m) => m.type() === "error" && console.error(m.text()));
  await page.goto(`${origin}/test/browser/page.html`);
  await page.waitForFunction(() => window.concord);
  return page;
}

/**
 * Fills `room` with `n` documents × 10 fields from a profile of its own
 * (an in-memory database, in transactions of 10,000), so the measured
 * profile starts empty; resolves to the relay's cursor once they are
 * acknowledged.
 */
export async function seedRoom(browser, origin, { url, token, room, n }) {
  const seeder = await newPage(await browser.newContext(), origin);
  return seeder.evaluate(
    async ({ url, token, room, n }) => {
      const db = await window.concord.open("seed", { relayUrl: url, room, token, storage: "memory" });
      for (let start = 0; start < n; start += 10_000) {
        await db.transaction((tx) => {
          for (let i = start; i < Math.min(n, start + 10_000); i++) {
            const fields = {};
            for (let f = 0; f < 10; f++) fields[`f${f}`] = `value ${i}.${f}`;
            tx.put("docs", `d${String(i).padStart(6, "0")}`, fields);
          }
        });
      }
      await db.flush();
      const cursor = db.status.value.cursor;
      await db.close();
      return cursor;
    },
    { url, token, room, n },
  );
}
