// Batches (batches.html): the batches of recent runs with their progress, and one
// batch (?id=...) with its members, updating live, and Stop.

import { api, qs, sse, showMessage } from "./api.js";
import { clear, el, fmtTime, runLink, stateBadge, TERMINAL } from "./dom.js";
import { progressBar } from "./progress.js";
import { mountShell } from "./shell.js";

mountShell("batches");
const main = document.getElementById("nf-main");
const id = new URLSearchParams(location.search).get("id");
const enc = encodeURIComponent;
const batchUrl = (b) => `/ui/batches.html${qs({ id: b })}`;

function summary(batch) {
  const total = batch.members.length;
  const done = Object.entries(batch.counts).filter(([s]) => TERMINAL.has(s)).reduce((a, [, n]) => a + n, 0);
  return el("span", { class: "nf-row" }, progressBar(batch.counts, total),
            el("span", { class: "nf-muted", dataset: { role: "done" } }, `${done} / ${total} finished`));
}

async function showList() {
  // No list of batches in the API: those of the newest runs (one page of 500).
  const page = await api("/workflows" + qs({ limit: 500 }));
  const ids = [...new Set(page.items.map((w) => w.batch_id).filter(Boolean))];
  const search = el("form", { class: "nf-row nf-panel" },
    el("label", {}, "Batch id", el("input", { name: "id", required: true, autocomplete: "off" })),
    el("button", { type: "submit", class: "nf-primary" }, "Open"));
  search.addEventListener("submit", (e) => { e.preventDefault(); location.href = batchUrl(search.id.value.trim()); });
  const tbody = el("tbody");
  clear(main, el("h1", {}, "Batches"), search,
    ids.length ? el("table", { class: "nf-table", id: "nf-batches" },
      el("thead", {}, el("tr", {}, ["Batch", "Name", "State", "Progress", "Created"].map((h) => el("th", {}, h)))), tbody)
      : el("p", { class: "nf-empty" }, "No batch among the newest runs."));
  for (const b of ids.slice(0, 50)) {
    try {
      const batch = await api(`/batches/${enc(b)}`);
      tbody.append(el("tr", { dataset: { batch: b } }, el("td", {}, el("a", { href: batchUrl(b) }, b)),
        el("td", {}, batch.name), el("td", {}, stateBadge(batch.state)), el("td", {}, summary(batch)),
        el("td", {}, fmtTime(batch.created_at))));
    } catch (err) {
      tbody.append(el("tr", {}, el("td", {}, b), el("td", { colspan: 4, class: "nf-muted" }, err.message)));
    }
  }
}

async function showBatch() {
  const box = el("div");
  const stop = el("button", { type: "button", class: "nf-danger", dataset: { action: "stop-batch" } }, "Stop batch");
  stop.addEventListener("click", async () => {
    try {
      render(await api(`/batches/${enc(id)}/stop`, { method: "POST" }));
      showMessage(`batch ${id}: stopping`, "ok");
    } catch (err) { showMessage(err); }
  });
  const render = (batch) => {
    clear(box,
      el("div", { class: "nf-row" }, el("h1", { class: "nf-grow" }, `Batch ${batch.id}`), stateBadge(batch.state), stop),
      el("p", {}, el("a", { href: "/ui/batches.html" }, "← batches"), " · ",
         el("a", { href: `/ui/${qs({ batch: batch.id })}` }, "its runs in the list"), " · ",
         `${batch.name} · ${batch.namespace} · created ${fmtTime(batch.created_at)}`,
         batch.max_concurrency ? ` · at most ${batch.max_concurrency} at a time` : ""),
      el("div", { class: "nf-panel", id: "nf-batch-progress" }, summary(batch), " ",
         el("span", { class: "nf-counts" }, Object.entries(batch.counts).map(([s, n]) =>
           el("span", { class: "nf-count", dataset: { count: s } }, stateBadge(s), el("b", {}, n))))),
      el("table", { class: "nf-table", id: "nf-members" },
        el("thead", {}, el("tr", {}, ["#", "Workflow", "State"].map((h) => el("th", {}, h)))),
        el("tbody", {}, batch.members.map((m) => el("tr", { dataset: { workflowId: m.workflow_id, state: m.state } },
          el("td", {}, m.index), el("td", {}, m.state === "pending" ? m.workflow_id : runLink(m.workflow_id)),
          el("td", {}, stateBadge(m.state)))))));
    document.body.dataset.loaded = "true";
  };
  clear(main, box);
  let batch = await api(`/batches/${enc(id)}`);
  render(batch);
  const members = new Set(batch.members.map((m) => m.workflow_id));
  let timer = null;
  const unfinished = (b) => Object.entries(b.counts).some(([s, n]) => n > 0 && !TERMINAL.has(s));
  const refresh = (delay) => {
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      try { batch = await api(`/batches/${enc(id)}`); render(batch); } catch (err) { showMessage(err); }
      // A member's event can come before the batch record counts it (the batch is told of
      // its members' ends after their events are out): look again while any is unfinished.
      if (unfinished(batch)) refresh(2000);
    }, delay);
  };
  sse("/events" + qs({ subject: "*.workflow.*" }), (ev) => {
    if (members.has(ev.data && ev.data.workflow_id)) refresh(300);
  }, { reconnect: "always" });
  if (unfinished(batch)) refresh(2000);
}

try {
  await (id ? showBatch() : showList());
  document.body.dataset.loaded = "true";
} catch (err) {
  showMessage(err);
}
