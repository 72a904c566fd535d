// The Auditline dashboard: plain JavaScript served by the admin service, no
// build step, no external request. Data is only ever put into the page with
// textContent (never as HTML), and the Content-Security-Policy forbids inline
// scripts and styles.
"use strict";

const TOKEN_KEY = "auditline.token";
const PAGE = 50;
const FILTERS = ["user_id", "session_id", "service", "action_type", "endpoint", "http_method",
  "status", "success", "client_ip", "from", "to", "min_response_time_ms", "q", "order"];
// Filters that take several values, typed comma-separated.
const REPEATABLE = new Set(["user_id", "session_id", "service", "action_type", "http_method", "status"]);

const $ = (id) => document.getElementById(id);
let cursors = [null]; // the cursor of each page shown so far (null: the first)
let page = 0;

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function notice(text) {
  const el = $("notice");
  el.textContent = text || "";
  el.hidden = !text;
}

// Calls the admin API with the bearer token (and a JSON body, if any); the
// response when it succeeded, else an Error whose message is for the user.
async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new Error("The admin service cannot be reached. Is it running?");
  }
  if (response.status === 401) {
    signOut();
    throw new Error("Your token was not accepted (unknown, expired or revoked). Sign in again.");
  }
  if (!response.ok) {
    const json = await response.json().catch(() => null);
    throw new Error(json && json.error ? json.error.message : `HTTP ${response.status}`);
  }
  return response;
}

// The JSON answer of an API call.
async function api(path, method = "GET", body = undefined) {
  return (await call(method, path, body)).json();
}

// The search filters of the page URL named in `names`, as a JSON object
// (repeatable ones as arrays).
function urlFilters(names) {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const name of names) {
    const values = params.getAll(name);
    if (values.length) filters[name] = REPEATABLE.has(name) ? values : values[0];
  }
  return filters;
}

const VIEWS = ["search", "users", "overview"];

function show(view) {
  const signedIn = view !== "sign-in";
  $("sign-in").hidden = signedIn;
  for (const v of VIEWS) $(v).hidden = view !== v;
  $("nav").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (view !== "overview") clearTimeout(overviewTimer);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  liveOff();
  show("sign-in");
}

// The search form as query parameters (repeatable ones split on commas).
function formParams() {
  const form = new FormData($("search-form"));
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = String(form.get(name) || "").trim();
    if (!value || (name === "order" && value === "desc")) continue;
    const values = REPEATABLE.has(name) ? value.split(",").map((v) => v.trim()).filter(Boolean) : [value];
    for (const v of values) params.append(name, v);
  }
  return params;
}

// Fills the form from the page URL (a shared or bookmarked search).
function fillForm(params) {
  const form = $("search-form");
  for (const name of FILTERS) {
    const values = params.getAll(name);
    if (form.elements[name]) form.elements[name].value = values.join(", ");
  }
  if (!params.get("order")) form.elements.order.value = "desc";
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

function render(events) {
  const body = $("results").querySelector("tbody");
  body.replaceChildren();
  for (const e of events) {
    const row = document.createElement("tr");
    row.tabIndex = 0;
    row.dataset.eventId = e.event_id;
    if (!e.success) row.classList.add("failed");
    cell(row, e.occurred_at.replace("T", " ").replace("Z", ""));
    cell(row, e.user_id);
    cell(row, e.service);
    cell(row, e.action_type);
    cell(row, e.http_method);
    cell(row, e.endpoint, "endpoint");
    cell(row, e.status_code, "status");
    cell(row, e.response_time_ms);
    const open = () => detail(e);
    row.addEventListener("click", open);
    row.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
    body.appendChild(row);
  }
}

function detail(event) {
  $("detail-json").textContent = JSON.stringify(event, null, 2);
  $("detail").hidden = false;
  $("detail-close").focus();
}

async function search() {
  const params = new URLSearchParams(location.search);
  params.set("limit", String(PAGE));
  const cursor = cursors[page];
  if (cursor) params.set("cursor", cursor);
  $("status").textContent = "Searching…";
  try {
    const result = await api(`/admin/audit/logs?${params}`);
    notice("");
    render(result.events);
    cursors[page + 1] = result.next_cursor;
    $("next").disabled = !result.next_cursor;
    $("previous").disabled = page === 0;
    $("status").textContent = result.events.length
      ? `Page ${page + 1}: ${result.events.length} events.`
      : "No event matches these filters in this time window.";
  } catch (e) {
    $("status").textContent = "";
    render([]);
    notice(e.message);
  }
}

// A new search: the filters go into the page URL, paging starts over.
function newSearch() {
  const params = formParams();
  history.pushState(null, "", `${location.pathname}${params.toString() ? "?" + params : ""}`);
  cursors = [null];
  page = 0;
  $("detail").hidden = true;
  search();
  // The live tail follows the new filters.
  if (socket) { liveOff(); liveOn(); }
}

async function signIn(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  try {
    await api("/admin/audit/metrics");
  } catch (e) {
    notice(e.message);
    signOut();
    return;
  }
  notice("");
  start();
}

// The view named by the page's hash (#users, #users/<id>, #overview).
function route() {
  const [view, arg] = location.hash.slice(1).split("/");
  if (view === "users") {
    show("users");
    loadUsers(arg ? decodeURIComponent(arg) : null);
    return true;
  }
  if (view === "overview") {
    show("overview");
    overview();
    return true;
  }
  return false;
}

function start() {
  if (route()) return;
  show("search");
  refreshJobs();
  refreshSchedules();
  fillForm(new URLSearchParams(location.search));
  cursors = [null];
  page = 0;
  search();
}

// Live tail: a ticket, then a websocket; matching events go on top of the
// table as they are stored.
const LIVE_FILTERS = ["user_id", "session_id", "service", "action_type", "http_method", "status",
  "success", "endpoint", "min_response_time_ms"];
const LIVE_ROWS = 500;
let socket = null;
let paused = false;
let held = [];

function liveStatus(text) { $("live-status").textContent = text; }

async function liveOn() {
  let ticket;
  try {
    ticket = (await api("/admin/audit/stream/ticket", "POST")).ticket;
  } catch (e) {
    notice(e.message);
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/admin/audit/stream?ticket=${encodeURIComponent(ticket)}`);
  const filter = urlFilters(LIVE_FILTERS);
  socket.addEventListener("open", () => {
    socket.send(JSON.stringify({ type: "subscribe", filter }));
    $("live").setAttribute("aria-pressed", "true");
    $("live").textContent = "Live tail: on";
    $("pause").hidden = false;
    liveStatus("Waiting for new events…");
  });
  socket.addEventListener("message", (m) => {
    const message = JSON.parse(m.data);
    if (message.type === "events") {
      if (paused) {
        held.push(...message.events);
        liveStatus(`Paused: ${held.length} new events held.`);
      } else {
        prepend(message.events);
      }
    } else if (message.type === "lagged") {
      notice(`The live tail fell behind: ${message.dropped} events were skipped. Search to see them all.`);
    } else if (message.type === "error") {
      notice(message.error.message);
    }
  });
  socket.addEventListener("close", () => {
    if (socket) { liveStatus("The live stream closed."); }
    liveReset();
  });
}

function liveReset() {
  socket = null;
  paused = false;
  held = [];
  $("live").setAttribute("aria-pressed", "false");
  $("live").textContent = "Live tail: off";
  $("pause").hidden = true;
  $("pause").textContent = "Pause";
  $("pause").setAttribute("aria-pressed", "false");
}

function liveOff() {
  const s = socket;
  socket = null;
  if (s) s.close();
  liveReset();
  liveStatus("");
}

// New events on top of the table, newest first.
function prepend(events) {
  const body = $("results").querySelector("tbody");
  const current = [...body.children];
  render(events.slice().reverse());
  const fresh = [...body.children];
  fresh.forEach((row) => row.classList.add("new"));
  body.replaceChildren(...fresh, ...current.slice(0, Math.max(0, LIVE_ROWS - fresh.length)));
  liveStatus(`${events.length} new event${events.length === 1 ? "" : "s"} at ${new Date().toLocaleTimeString()}.`);
}

// Exports of the current search: start one, watch it, download it.
let watching = null;

async function startExport(form) {
  const filters = urlFilters(FILTERS.filter((name) => name !== "order"));
  const data = new FormData(form);
  try {
    await api("/admin/audit/exports", "POST", {
      format: data.get("format"), compression: data.get("compression"), filters,
    });
    notice("");
    refreshJobs();
  } catch (e) {
    notice(e.message);
  }
}

async function refreshJobs() {
  let list;
  try {
    list = await api("/admin/audit/exports?limit=20");
  } catch (e) {
    return;
  }
  const body = $("jobs").querySelector("tbody");
  body.replaceChildren();
  let active = false;
  for (const job of list.jobs) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.id;
    cell(row, job.created_at.replace("T", " ").slice(0, 19));
    cell(row, job.format + (job.compression === "zstd" ? " + zstd" : ""));
    cell(row, job.state, "state");
    cell(row, job.rows);
    cell(row, `${Math.round(job.progress * 100)}%`);
    const td = document.createElement("td");
    if (job.state === "done") {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Download";
      button.addEventListener("click", () => download(job));
      td.appendChild(button);
    } else if (job.error) {
      td.textContent = job.error;
    }
    row.appendChild(td);
    body.appendChild(row);
    active ||= job.state === "queued" || job.state === "running";
  }
  clearTimeout(watching);
  if (active) watching = setTimeout(refreshJobs, 1000);
}

async function download(job) {
  try {
    const response = await call("GET", job.download);
    const name = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = name ? name[1] : `export-${job.id}`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (e) {
    notice(e.message);
  }
}

// Users: the per-user summaries, sortable; a user's hourly timeline.
let userSort = { by: "total", order: "desc" };

async function loadUsers(userId) {
  try {
    const page = await api(`/admin/audit/users?sort=${userSort.by}&order=${userSort.order}&limit=100`);
    notice("");
    const body = $("user-table").querySelector("tbody");
    body.replaceChildren();
    for (const u of page.users) {
      const row = document.createElement("tr");
      row.tabIndex = 0;
      row.dataset.userId = u.user_id;
      cell(row, u.user_id);
      cell(row, u.total);
      cell(row, u.failures);
      cell(row, `${(u.failure_rate * 100).toFixed(1)}%`);
      cell(row, u.avg_response_time_ms == null ? "" : u.avg_response_time_ms.toFixed(1));
      cell(row, u.last_seen.replace("T", " ").slice(0, 19));
      cell(row, u.top_action_types.map((a) => `${a.action_type} ${a.count}`).join(", "));
      const open = () => { location.hash = `#users/${encodeURIComponent(u.user_id)}`; };
      row.addEventListener("click", open);
      row.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
      body.appendChild(row);
    }
    for (const b of document.querySelectorAll("#user-table th button")) {
      if (b.dataset.sort === userSort.by) b.setAttribute("aria-sort", userSort.order === "desc" ? "descending" : "ascending");
      else b.removeAttribute("aria-sort");
    }
    if (!page.users.length) $("user-table").querySelector("tbody").textContent = "No activity in the last 24 hours.";
  } catch (e) {
    notice(e.message);
  }
  $("user").hidden = !userId;
  if (userId) loadUser(userId);
}

// A namespace name, not an address: nothing is fetched from it.
const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) el.setAttribute(k, String(v));
  return el;
}

async function loadUser(userId) {
  try {
    const detail = await api(`/admin/audit/users/${encodeURIComponent(userId)}`);
    const s = detail.summary;
    $("user-title").textContent = `User ${s.user_id}`;
    $("user-summary").textContent = `${s.total} actions, ${s.failures} failed, first seen ${s.first_seen}, last seen ${s.last_seen}.`;
    const chart = $("timeline");
    chart.replaceChildren();
    const hours = detail.timeline;
    const max = Math.max(1, ...hours.map((h) => h.total));
    const width = 960 / Math.max(1, hours.length);
    hours.forEach((h, i) => {
      const total = (h.total / max) * 150;
      const failed = (h.failures / max) * 150;
      const bar = svg("rect", { x: i * width + 1, y: 160 - total, width: Math.max(1, width - 2), height: total, fill: "#7aa7f0" });
      const title = svg("title", {});
      title.textContent = `${h.hour}: ${h.total} actions, ${h.failures} failed`;
      bar.appendChild(title);
      chart.appendChild(bar);
      chart.appendChild(svg("rect", { x: i * width + 1, y: 160 - failed, width: Math.max(1, width - 2), height: failed, fill: "#a4161a" }));
    });
    chart.dataset.hours = String(hours.length);
  } catch (e) {
    notice(e.message);
  }
}

// Overview: the trailing windows every 5 s; the 1-minute window's figures
// are kept as points for the three charts.
let overviewTimer = null;
const points = [];

function line(id, values) {
  const chart = $(id);
  chart.replaceChildren();
  if (values.length < 1) return;
  const max = Math.max(1e-9, ...values);
  const step = 300 / Math.max(1, values.length - 1);
  const path = values.map((v, i) => `${(i * step).toFixed(1)},${(98 - (v / max) * 94).toFixed(1)}`).join(" ");
  chart.appendChild(svg("polyline", { points: values.length === 1 ? `0,${path.split(",")[1]} 300,${path.split(",")[1]}` : path, fill: "none", stroke: "#1f5fbf", "stroke-width": 2 }));
  chart.dataset.points = String(values.length);
}

async function overview() {
  clearTimeout(overviewTimer);
  try {
    const m = await api("/admin/audit/metrics");
    notice("");
    const body = $("windows").querySelector("tbody");
    body.replaceChildren();
    for (const w of m.windows) {
      const row = document.createElement("tr");
      cell(row, `${w.minutes} min`);
      cell(row, w.events);
      cell(row, w.events_per_second.toFixed(2));
      cell(row, `${(w.failure_rate * 100).toFixed(1)}%`);
      cell(row, w.p50_response_time_ms ?? "");
      cell(row, w.p95_response_time_ms ?? "");
      body.appendChild(row);
    }
    const one = m.windows.find((w) => w.minutes === 1);
    if (one) {
      points.push({ rate: one.events_per_second * 60, failures: one.failure_rate, p95: one.p95_response_time_ms || 0 });
      if (points.length > 120) points.shift();
    }
    line("chart-rate", points.map((p) => p.rate));
    line("chart-failures", points.map((p) => p.failures));
    line("chart-p95", points.map((p) => p.p95));
    for (const [id, list] of [["top-users", m.top_users], ["top-actions", m.top_action_types]]) {
      const ol = $(id);
      ol.replaceChildren();
      for (const r of list) {
        const li = document.createElement("li");
        li.textContent = `${r.name}: ${r.events}`;
        ol.appendChild(li);
      }
    }
  } catch (e) {
    notice(e.message);
  }
  if (!$("overview").hidden) overviewTimer = setTimeout(overview, 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("#user-table th button")) {
    b.addEventListener("click", () => {
      userSort = { by: b.dataset.sort, order: userSort.by === b.dataset.sort && userSort.order === "desc" ? "asc" : "desc" };
      loadUsers(null);
    });
  }
  window.addEventListener("hashchange", () => { if (token()) { if (!route()) { show("search"); } } });
});

// Schedules: list, add (with the current search's filters, without its
// time window: each run covers its own), delete.
async function refreshSchedules() {
  let list;
  try {
    list = await api("/admin/audit/export-schedules");
  } catch (e) {
    return;
  }
  const body = $("schedules").querySelector("tbody");
  body.replaceChildren();
  for (const s of list.schedules) {
    const row = document.createElement("tr");
    row.dataset.scheduleId = s.id;
    cell(row, s.name);
    cell(row, s.cron);
    cell(row, s.window.replace("_", " "));
    cell(row, s.format + (s.compression === "zstd" ? " + zstd" : ""));
    cell(row, s.destination);
    cell(row, s.next_run_at.replace("T", " ").slice(0, 16));
    cell(row, s.runs);
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Delete";
    button.setAttribute("aria-label", `Delete schedule ${s.name}`);
    button.addEventListener("click", async () => {
      try {
        await call("DELETE", `/admin/audit/export-schedules/${s.id}`);
        refreshSchedules();
      } catch (e) {
        notice(e.message);
      }
    });
    td.appendChild(button);
    row.appendChild(td);
    body.appendChild(row);
  }
}

async function addSchedule(form) {
  const data = new FormData(form);
  // Without the time window: each run covers its own.
  const filters = urlFilters(FILTERS.filter((name) => !["order", "from", "to"].includes(name)));
  try {
    await api("/admin/audit/export-schedules", "POST", {
      name: data.get("name"), cron: data.get("cron"), window: data.get("window"),
      format: data.get("format"), compression: data.get("compression"),
      destination: data.get("destination") || "local", filters,
    });
    notice("");
    form.reset();
    refreshSchedules();
  } catch (e) {
    notice(e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("schedule-form").addEventListener("submit", (ev) => { ev.preventDefault(); addSchedule(ev.target); });
});

document.addEventListener("DOMContentLoaded", () => {
  $("export-form").addEventListener("submit", (ev) => { ev.preventDefault(); startExport(ev.target); });
});

document.addEventListener("DOMContentLoaded", () => {
  $("live").addEventListener("click", () => { if (socket) liveOff(); else liveOn(); });
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(paused));
    if (!paused && held.length) { prepend(held); held = []; }
    if (paused) liveStatus("Paused.");
  });
});

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const field = $("token");
    const value = field.value.trim();
    field.value = "";
    if (value) signIn(value);
  });
  $("sign-out").addEventListener("click", () => { signOut(); notice(""); });
  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); newSearch(); });
  $("search-form").addEventListener("reset", () => {
    setTimeout(() => { history.pushState(null, "", location.pathname); }, 0);
  });
  $("next").addEventListener("click", () => { page += 1; search(); });
  $("previous").addEventListener("click", () => { if (page > 0) { page -= 1; search(); } });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  window.addEventListener("popstate", () => { if (token()) start(); });
  if (token()) start(); else show("sign-in");
});
