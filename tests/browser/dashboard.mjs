// Drives Debian's Chromium (headless) through the dashboard. Run by the
// Rust test `dashboard::a_browser_signs_in_searches_pages_and_opens_an_event`,
// which starts the services, stores the events and passes:
//   ADMIN (http://127.0.0.1:<port>), TOKEN (scope read), USER (whose events
//   to search), EXPECTED (their ids, comma-separated, newest first),
//   INGEST (the gateway's URL) and PUBLISH_TOKEN (for the live tail),
//   SCREENSHOTS (a directory for the pictures a reviewer looks at).
// Prints one line per check; exits non-zero on the first failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const { ADMIN, TOKEN, USER, EXPECTED, SCREENSHOTS, INGEST, PUBLISH_TOKEN } = process.env;
const expected = EXPECTED.split(",");
mkdirSync(SCREENSHOTS, { recursive: true });

function check(condition, what) {
  if (!condition) {
    throw new Error(`FAILED: ${what}`);
  }
  console.log(`ok: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1366, height: 800 } });
  // Every request the page makes must go to the admin service.
  const foreign = [];
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(ADMIN)) {
      route.continue();
    } else {
      foreign.push(url);
      route.abort();
    }
  });
  const policyErrors = [];
  page.on("console", (m) => {
    if (m.type() === "error") policyErrors.push(m.text());
  });

  await page.goto(`${ADMIN}/admin/`);
  check(await page.isVisible("#sign-in"), "the sign-in form is shown first");

  // A wrong token: a clear message, still signed out.
  await page.fill("#token", "alt_0000_wrong");
  await page.click("#sign-in-form button[type=submit]");
  await page.waitForSelector("#notice:not([hidden])");
  const message = await page.textContent("#notice");
  check(/not accepted/.test(message), `a wrong token is refused clearly: "${message}"`);
  check(await page.isVisible("#sign-in"), "still at the sign-in form");
  await page.screenshot({ path: `${SCREENSHOTS}/sign-in-refused.png`, fullPage: true });

  // Sign in, search by user.
  await page.fill("#token", TOKEN);
  await page.click("#sign-in-form button[type=submit]");
  await page.waitForSelector("#search:not([hidden])");
  check(!(await page.evaluate(() => location.href)).includes(TOKEN), "the token is not in the URL");
  await page.fill("input[name=user_id]", USER);
  await page.click("#search-form button[type=submit]");
  await page.waitForFunction(() => /^Page 1/.test(document.querySelector("#status").textContent));
  check(new URL(page.url()).searchParams.get("user_id") === USER, "the filter is in the page URL");
  await page.screenshot({ path: `${SCREENSHOTS}/search.png`, fullPage: true });

  // Page forward through every result, then back to the first page.
  const ids = async () =>
    page.$$eval("#results tbody tr", (rows) => rows.map((r) => r.dataset.eventId));
  const users = async () =>
    page.$$eval("#results tbody tr td:nth-child(2)", (cells) => cells.map((c) => c.textContent));
  const first = await ids();
  const seen = [...first];
  check((await users()).every((u) => u === USER), "every row is the user's");
  let pageNo = 1;
  while (!(await page.isDisabled("#next"))) {
    pageNo += 1;
    await page.click("#next");
    await page.waitForFunction(
      (n) => document.querySelector("#status").textContent.startsWith(`Page ${n}:`),
      pageNo,
    );
    seen.push(...(await ids()));
    check((await users()).every((u) => u === USER), `page ${pageNo}: every row is the user's`);
  }
  check(
    JSON.stringify(seen) === JSON.stringify(expected),
    `paging forward shows exactly the user's ${expected.length} events, newest first, once each`,
  );
  while (!(await page.isDisabled("#previous"))) {
    pageNo -= 1;
    await page.click("#previous");
    await page.waitForFunction(
      (n) => document.querySelector("#status").textContent.startsWith(`Page ${n}:`),
      pageNo,
    );
  }
  check(JSON.stringify(await ids()) === JSON.stringify(first), "paging back returns to the first page");

  // A shared link opens the same search.
  const link = page.url();
  const other = await browser.newPage();
  await other.goto(link);
  // Same tab storage is per page: sign in there too.
  await other.fill("#token", TOKEN);
  await other.click("#sign-in-form button[type=submit]");
  await other.waitForFunction(() => /^Page 1/.test(document.querySelector("#status").textContent));
  check(
    (await other.inputValue("input[name=user_id]")) === USER,
    "a bookmarked URL restores the filters",
  );
  await other.close();

  // Live tail: an event published now shows on top within 2 s; while
  // paused, new events are held, and shown on resume.
  const publish = async (endpoint) => {
    const response = await fetch(`${INGEST}/v1/events`, {
      method: "POST",
      headers: { Authorization: `Bearer ${PUBLISH_TOKEN}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        occurred_at: new Date().toISOString(), session_id: "live", user_id: USER,
        action_type: "file", endpoint, http_method: "GET", status_code: 200, success: true,
      }),
    });
    if (response.status !== 202) throw new Error(`FAILED: publish answered ${response.status}`);
  };
  await page.click("#live");
  await page.waitForFunction(() => /Waiting/.test(document.querySelector("#live-status").textContent));
  const sent = Date.now();
  await publish("/live/first");
  await page.waitForFunction(
    () => document.querySelector("#results tbody tr td.endpoint")?.textContent === "/live/first",
    null,
    { timeout: 10_000 },
  );
  const shownAfter = Date.now() - sent;
  check(shownAfter <= 2000, `a published event appeared live after ${shownAfter} ms (at most 2,000)`);
  await page.screenshot({ path: `${SCREENSHOTS}/live.png`, fullPage: true });
  await page.click("#pause");
  await publish("/live/while-paused");
  await page.waitForFunction(() => /held/.test(document.querySelector("#live-status").textContent));
  check(
    (await page.textContent("#results tbody tr td.endpoint")) === "/live/first",
    "while paused, new events are held, not shown",
  );
  await page.click("#pause");
  check(
    (await page.textContent("#results tbody tr td.endpoint")) === "/live/while-paused",
    "resuming shows the held events",
  );
  await page.click("#live");
  check((await page.getAttribute("#live", "aria-pressed")) === "false", "live tail turns off");

  // Export the search and download the file.
  await page.selectOption("#export-form select[name=format]", "csv");
  await page.click("#export-form button[type=submit]");
  await page.waitForSelector("#jobs tbody tr button", { timeout: 30_000 });
  const [file] = await Promise.all([
    page.waitForEvent("download"),
    page.click("#jobs tbody tr button"),
  ]);
  const { readFileSync } = await import("node:fs");
  const csv = readFileSync(await file.path(), "utf8").trim().split(/\r?\n/);
  // The user's stored events plus the two published during the live tail.
  check(csv.length === 1 + expected.length + 2, `the downloaded CSV has a header and ${expected.length + 2} rows`);
  check(csv.slice(1).every((line) => line.includes(`,${USER},`)), "every exported row is the user's");
  check(/\.csv$/.test(file.suggestedFilename()), `the file is named ${file.suggestedFilename()}`);
  await page.screenshot({ path: `${SCREENSHOTS}/export.png`, fullPage: true });

  // Schedules: a bad cron is refused with the server's message; a good one
  // is listed with the search's filters; deleting removes it.
  await page.fill("#schedule-form input[name=name]", "nightly");
  await page.fill("#schedule-form input[name=cron]", "61 * * * *");
  await page.click("#schedule-form button[type=submit]");
  await page.waitForSelector("#notice:not([hidden])");
  check(/cron/.test(await page.textContent("#notice")), "a bad cron is refused with a message naming it");
  await page.fill("#schedule-form input[name=cron]", "5 0 * * *");
  await page.click("#schedule-form button[type=submit]");
  await page.waitForSelector("#schedules tbody tr");
  check(
    (await page.textContent("#schedules tbody tr td:first-child")) === "nightly",
    "the schedule is listed",
  );
  const listed = await (await fetch(`${ADMIN}/admin/audit/export-schedules`, {
    headers: { Authorization: `Bearer ${TOKEN}` },
  })).json();
  check(
    JSON.stringify(listed.schedules[0].filters) === JSON.stringify({ user_id: USER }),
    "the schedule carries the search's filters",
  );
  await page.screenshot({ path: `${SCREENSHOTS}/schedules.png`, fullPage: true });
  await page.click("#schedules tbody tr button");
  await page.waitForFunction(() => document.querySelectorAll("#schedules tbody tr").length === 0);
  check(true, "deleting a schedule removes it");

  // Users: sortable summaries, a user's hourly timeline.
  await page.click("#nav a[data-view=users]");
  await page.waitForSelector(`#user-table tbody tr[data-user-id="${USER}"]`);
  // The rollups fold committed events in every 2 s: the live ones may come a little later.
  const totalCell = `#user-table tbody tr[data-user-id="${USER}"] td:nth-child(2)`;
  let total = await page.textContent(totalCell);
  for (let i = 0; i < 40 && Number(total) !== expected.length + 2; i++) {
    await page.waitForTimeout(250);
    await page.evaluate(() => loadUsers(null));
    await page.waitForSelector(totalCell);
    total = await page.textContent(totalCell);
  }
  check(Number(total) === expected.length + 2, `the users table counts ${total} actions for ${USER}`);
  await page.click("#user-table th button[data-sort=user_id]");
  await page.waitForSelector("#user-table th button[data-sort=user_id][aria-sort]");
  const order = await page.$$eval("#user-table tbody tr", (rows) => rows.map((r) => r.dataset.userId));
  check(JSON.stringify(order) === JSON.stringify([...order].sort().reverse()), "sorting by user works");
  await page.screenshot({ path: `${SCREENSHOTS}/users.png`, fullPage: true });
  await page.click(`#user-table tbody tr[data-user-id="${USER}"]`);
  await page.waitForSelector("#timeline[data-hours]");
  check(Number(await page.getAttribute("#timeline", "data-hours")) > 0, "the user page draws an hourly timeline");
  check(/User /.test(await page.textContent("#user-title")), "the user page names the user");
  await page.screenshot({ path: `${SCREENSHOTS}/user.png`, fullPage: true });

  // Overview: windows, charts, top lists.
  await page.click("#nav a[data-view=overview]");
  await page.waitForSelector("#chart-rate[data-points]");
  check((await page.$$("#windows tbody tr")).length === 3, "the overview shows the 1, 5 and 15 minute windows");
  check((await page.$$("#top-users li")).length > 0, "the overview lists the top users");
  await page.screenshot({ path: `${SCREENSHOTS}/overview.png`, fullPage: true });
  await page.click("#nav a[data-view=search]");
  await page.waitForSelector("#search:not([hidden])");

  // The detail panel.
  await page.click(`#results tbody tr[data-event-id="${first[0]}"]`);
  await page.waitForSelector("#detail:not([hidden])");
  const detail = JSON.parse(await page.textContent("#detail-json"));
  check(detail.event_id === first[0] && detail.user_id === USER, "the detail panel shows the whole event");
  await page.screenshot({ path: `${SCREENSHOTS}/detail.png`, fullPage: true });

  // The server going away is said plainly.
  const down = (route) => route.abort("connectionrefused");
  await page.route("**/admin/audit/logs**", down);
  await page.click("#search-form button[type=submit]");
  await page.waitForFunction(() => /cannot be reached/.test(document.querySelector("#notice").textContent));
  check(true, "an unreachable server is reported as such");
  await page.screenshot({ path: `${SCREENSHOTS}/server-down.png`, fullPage: true });
  await page.unroute("**/admin/audit/logs**", down);

  // Sign out.
  await page.click("#sign-out");
  check(await page.isVisible("#sign-in"), "signing out returns to the sign-in form");
  check(
    (await page.evaluate(() => sessionStorage.getItem("auditline.token"))) === null,
    "signing out forgets the token",
  );
  check(foreign.length === 0, `no request left the admin service (${foreign.join(", ")})`);
  check(
    !policyErrors.some((e) => /Content Security Policy/.test(e)),
    `nothing was blocked by the policy (${policyErrors.join(" | ")})`,
  );
} catch (e) {
  failed = true;
  console.log(e.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
