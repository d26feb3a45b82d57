// The runs list (index.html): filters, counts by state, pages newest first, and live
// updates from `GET /events` (workflow-level events of the key's namespaces) without
// reloading. Filters live in the address (?state=failed&name=...), so a view can be
// shared and survives a reload.

import { api, qs, sse, showMessage } from "./api.js";
import { actionBar } from "./actions.js";
import { clear, el, fmtDuration, fmtTime, runLink, stateBadge, WORKFLOW_STATES } from "./dom.js";
import { mountShell } from "./shell.js";

/**
 * The filters: name in the address and the API's query parameter, and how they read.
 * `asLabel`: the filter is a label of that key (a schedule's runs carry
 * `natsflow.schedule:<name>`, docs/schedules.md); the API gets it as a `label`.
 */
export const FILTERS = [
  { name: "name", label: "Name", placeholder: "workflow name" },
  { name: "label", label: "Labels", placeholder: "key:value, key:value", list: true },
  { name: "namespace", label: "Namespace", placeholder: "any" },
  { name: "batch", label: "Batch", placeholder: "batch id" },
  { name: "schedule", label: "Schedule", placeholder: "schedule name", asLabel: "natsflow.schedule" },
  { name: "created_after", label: "Created after", type: "datetime-local", time: true },
  { name: "created_before", label: "Created before", type: "datetime-local", time: true },
];

/** Which state each workflow-level event leaves a run in. */
const STATE_AFTER = {
  "workflow.created": "created", "workflow.started": "running",
  "workflow.completed": "completed", "workflow.failed": "failed",
  "workflow.stopping": "stopping", "workflow.stopped": "stopped",
  "workflow.compensating": "compensating", "workflow.paused": "paused",
  "workflow.resumed": "running", "workflow.retried": "running",
};

mountShell("runs");

const form = document.getElementById("nf-filters");
const tbody = document.querySelector("#nf-runs tbody");
const countsBox = document.getElementById("nf-counts");
const pager = document.getElementById("nf-pager");
const live = document.getElementById("nf-live");

const view = {
  filters: readFilters(new URLSearchParams(location.search)),
  cursors: [null],  // cursors[i]: where page i starts; the last is the shown page's
  next: null,
  limit: Number(new URLSearchParams(location.search).get("limit")) || 50,
  rows: new Map(),  // workflow id -> {tr, summary, bar}
};

function readFilters(params) {
  const filters = { state: params.getAll("state") };
  for (const f of FILTERS) filters[f.name] = f.list ? params.getAll(f.name) : params.get(f.name) || "";
  return filters;
}

function toApiTime(local) {
  if (!local) return "";
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? local : d.toISOString();
}

function apiQuery(extra) {
  const q = { state: view.filters.state };
  for (const f of FILTERS) {
    if (f.asLabel) continue;
    q[f.name] = f.time ? toApiTime(view.filters[f.name]) : view.filters[f.name];
  }
  for (const f of FILTERS.filter((f) => f.asLabel && view.filters[f.name])) {
    q.label = [...q.label, `${f.asLabel}:${view.filters[f.name]}`];
  }
  return qs({ ...q, limit: view.limit, ...extra });
}

function writeAddress() {
  const params = { state: view.filters.state, limit: view.limit === 50 ? "" : view.limit };
  for (const f of FILTERS) params[f.name] = view.filters[f.name];
  history.replaceState(null, "", location.pathname + qs(params));
}

// -- the filter form ----------------------------------------------------------------

function buildForm() {
  const inputs = FILTERS.map((f) => el("label", {}, f.label, el("input", {
    name: f.name, type: f.type || "search", placeholder: f.placeholder || "",
    value: f.list ? view.filters[f.name].join(", ") : view.filters[f.name],
    dataset: { filter: f.name },
  })));
  const stateSelect = el("select", { name: "state", multiple: true, size: 3, dataset: { filter: "state" },
                                     title: "Any of these states (none: all)" },
    WORKFLOW_STATES.map((s) => el("option", { value: s, selected: view.filters.state.includes(s) }, s)));
  const limit = el("select", { name: "limit", dataset: { filter: "limit" } },
    [25, 50, 100, 200].map((n) => el("option", { value: n, selected: n === view.limit }, n)));
  clear(form,
    el("label", {}, "State", stateSelect), inputs, el("label", {}, "Per page", limit),
    el("button", { type: "submit", class: "nf-primary" }, "Apply"),
    el("button", { type: "button", dataset: { role: "reset" }, onclick: () => {
      view.filters = readFilters(new URLSearchParams());
      buildForm();
      applyFilters();
    } }, "Clear"));
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const data = new FormData(form);
  view.filters.state = data.getAll("state");
  for (const f of FILTERS) {
    const value = String(data.get(f.name) || "").trim();
    view.filters[f.name] = f.list ? value.split(/[,\s]+/).filter(Boolean) : value;
  }
  view.limit = Number(data.get("limit")) || 50;
  applyFilters();
});

function applyFilters() {
  view.cursors = [null];
  writeAddress();
  countsAt = 0;
  load();
}

// -- counts by state ---------------------------------------------------------------

function renderCounts(counts) {
  const total = Object.values(counts || {}).reduce((a, b) => a + b, 0);
  const chip = (state, n, label) => el("button", {
    type: "button", class: `nf-count ${(state ? view.filters.state.includes(state) : !view.filters.state.length) ? "nf-active" : ""}`,
    dataset: { count: state || "all" }, title: state ? `only ${state}` : "every state",
    onclick: () => {
      view.filters.state = state ? (view.filters.state.length === 1 && view.filters.state[0] === state ? [] : [state]) : [];
      buildForm();
      applyFilters();
    },
  }, state ? stateBadge(state) : el("span", {}, label), el("b", {}, n));
  clear(countsBox, chip(null, total, "all"),
        WORKFLOW_STATES.filter((s) => counts && counts[s]).map((s) => chip(s, counts[s])));
}

// -- the table ---------------------------------------------------------------------

function duration(w) {
  if (!w.started_at) return "";
  const end = w.finished_at ? new Date(w.finished_at) : new Date();
  return fmtDuration(end - new Date(w.started_at));
}

function labelChips(labels) {
  return Object.entries(labels || {}).map(([k, v]) => el("code", { class: "nf-label" }, `${k}:${v}`));
}

function renderRow(w) {
  const bar = actionBar(w, { onDone: () => scheduleRefresh(300) });
  const tr = el("tr", { dataset: { workflowId: w.id, state: w.state } },
    el("td", {}, runLink(w.id), w.parent_id ? el("div", { class: "nf-small nf-muted" }, "child of ", runLink(w.parent_id)) : null),
    el("td", {}, w.name, w.definition ? el("div", { class: "nf-small nf-muted" }, `definition ${w.definition}`) : null),
    el("td", { class: "nf-cell-state" }, stateBadge(w.state),
       w.error_code ? el("div", { class: "nf-small nf-muted" }, w.error_code) : null),
    el("td", {}, w.namespace || "default"),
    el("td", {}, labelChips(w.labels)),
    el("td", { title: w.created_at }, fmtTime(w.created_at)),
    el("td", {}, duration(w)),
    el("td", {}, w.batch_id ? el("a", { href: `/ui/batches.html?id=${encodeURIComponent(w.batch_id)}` }, w.batch_id) : ""),
    el("td", {}, bar));
  view.rows.set(w.id, { tr, summary: w, bar });
  return tr;
}

function renderPage(page) {
  view.rows.clear();
  if (!page.items.length) {
    clear(tbody, el("tr", {}, el("td", { colspan: 9, class: "nf-empty" }, "No runs match.")));
  } else {
    clear(tbody, page.items.map(renderRow));
  }
  view.next = page.next_cursor || null;
  const index = view.cursors.length - 1;
  clear(pager,
    el("button", { type: "button", dataset: { page: "newer" }, disabled: index === 0,
                   onclick: () => { view.cursors.pop(); load({ counts: false }); } }, "← Newer"),
    el("span", { class: "nf-muted" }, `page ${index + 1}`),
    el("button", { type: "button", dataset: { page: "older" }, disabled: !view.next,
                   onclick: () => { view.cursors.push(view.next); load({ counts: false }); } }, "Older →"));
}

let loading = null;
/** Load the shown page; then the counts (a second request: with a filter they take a
 *  pass over every stored summary, and the page must not wait for that). */
async function load({ counts = true } = {}) {
  const cursor = view.cursors[view.cursors.length - 1];
  const request = api("/workflows" + apiQuery({ cursor }));
  loading = request;
  try {
    const page = await request;
    if (loading !== request) return;  // a newer load is under way
    renderPage(page);
    if (!document.body.dataset.loaded) performance.mark("nf:first-page");  // bench/ui_list.py
    document.body.dataset.loaded = "true";
  } catch (err) {
    if (loading !== request) return;
    showMessage(err);
    // Not ready yet (503: no index answering, 0: no gateway): try again shortly.
    if (err.status === 503 || err.status === 0) setTimeout(() => load({ counts }), 3000);
    return;
  }
  if (counts) loadCounts();
}

let countsLoading = null;
let countsAt = 0;
let countsTimer = null;
/** Reload the counts, at most once every 3 s while events keep coming. */
function loadCounts({ now = false } = {}) {
  const wait = now ? 0 : Math.max(0, countsAt + 3000 - Date.now());
  clearTimeout(countsTimer);
  countsTimer = setTimeout(async () => {
    countsAt = Date.now();
    const request = api("/workflows" + apiQuery({ limit: 1, counts: "true" }));
    countsLoading = request;
    try {
      const answer = await request;
      if (countsLoading === request) renderCounts(answer.counts);
    } catch (err) {
      if (countsLoading === request) showMessage(err);
    }
  }, wait);
}

// -- live --------------------------------------------------------------------------

let refreshTimer = null;
let settleTimer = null;
/** Reload the shown page soon (at most once per `delay`), and once more when quiet:
 *  the index follows the engine within moments, not in lockstep. */
function scheduleRefresh(delay = 400) {
  if (!refreshTimer) refreshTimer = setTimeout(() => { refreshTimer = null; load(); }, delay);
  clearTimeout(settleTimer);
  settleTimer = setTimeout(load, 1500);
}

function applyEvent(event) {
  const wid = event.data && event.data.workflow_id;
  const state = STATE_AFTER[event.type];
  const row = wid && view.rows.get(wid);
  if (row && state) {
    row.summary = { ...row.summary, state };
    row.tr.dataset.state = state;
    clear(row.tr.querySelector(".nf-cell-state"), stateBadge(state));
    row.bar.update(row.summary);
    row.tr.classList.remove("nf-flash");
    void row.tr.offsetWidth;  // restart the animation
    row.tr.classList.add("nf-flash");
  }
  scheduleRefresh();
}

function follow() {
  sse("/events" + qs({ subject: "*.workflow.*" }), applyEvent, {
    reconnect: "always",
    onOpen: () => {
      live.classList.add("nf-on");
      live.title = "following every run's events";
      // What happened between the page's read and the stream's start sends no event
      // here: read the page again now that the stream is open (and after a reconnect).
      scheduleRefresh(0);
    },
    onError: (err) => {
      live.classList.remove("nf-on");
      live.title = err.message;
      if (err.status >= 400) showMessage(err);
    },
  });
}

buildForm();
await load();
follow();
