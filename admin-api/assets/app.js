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

// GET an admin API path with the bearer token; the JSON body, or an Error
// whose message is for the user.
async function api(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  } catch (e) {
    throw new Error("The admin service cannot be reached. Is it running?");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (response.status === 401) {
    signOut();
    throw new Error("Your token was not accepted (unknown, expired or revoked). Sign in again.");
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function show(view) {
  const signedIn = view !== "sign-in";
  $("sign-in").hidden = signedIn;
  $("search").hidden = view !== "search";
  $("nav").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
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

function start() {
  show("search");
  refreshJobs();
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
    const response = await fetch("/admin/audit/stream/ticket", {
      method: "POST", headers: { Authorization: `Bearer ${token()}` },
    });
    if (response.status === 401) { signOut(); throw new Error("Your token was not accepted. Sign in again."); }
    if (!response.ok) throw new Error(`The live stream is not available (HTTP ${response.status}).`);
    ticket = (await response.json()).ticket;
  } catch (e) {
    notice(e.message.startsWith("Failed") ? "The admin service cannot be reached. Is it running?" : e.message);
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/admin/audit/stream?ticket=${encodeURIComponent(ticket)}`);
  const filter = {};
  const params = new URLSearchParams(location.search);
  for (const name of LIVE_FILTERS) {
    const values = params.getAll(name);
    if (values.length) filter[name] = REPEATABLE.has(name) ? values : values[0];
  }
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

async function send(method, path, body) {
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
  const json = await response.json().catch(() => null);
  if (response.status === 401) { signOut(); throw new Error("Your token was not accepted. Sign in again."); }
  if (response.status === 403) throw new Error("This token lacks the export scope.");
  if (!response.ok) throw new Error(json && json.error ? json.error.message : `HTTP ${response.status}`);
  return json;
}

async function startExport(form) {
  const filters = {};
  const params = new URLSearchParams(location.search);
  for (const name of FILTERS) {
    if (name === "order") continue;
    const values = params.getAll(name);
    if (values.length) filters[name] = REPEATABLE.has(name) ? values : values[0];
  }
  const data = new FormData(form);
  try {
    await send("POST", "/admin/audit/exports", {
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
    list = await send("GET", "/admin/audit/exports?limit=20");
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
    const response = await fetch(job.download, { headers: { Authorization: `Bearer ${token()}` } });
    if (!response.ok) throw new Error(`The download failed (HTTP ${response.status}).`);
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
    notice(e.message.startsWith("Failed") ? "The admin service cannot be reached. Is it running?" : e.message);
  }
}

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
