// Limits (limits.html): every concurrency and rate limit in use, per key value, from
// GET /limits: permits in use of the limit, who holds them, who waits (next first),
// and a rate limit's next free begin time. Looked at again every 2 s.

import { api, qs, showMessage } from "./api.js";
import { clear, el, fmtTime, runLink } from "./dom.js";
import { mountShell } from "./shell.js";

mountShell("limits");
const main = document.getElementById("nf-main");
const only = new URLSearchParams(location.search).get("limit") || "";

/** `wf-1#1` or `wf-1/charge#2` (a holder or a waiter): a link to its run. */
function who(entry) {
  const m = /^([^/#]+)(.*)$/.exec(entry);
  return el("li", { dataset: { who: entry } }, m ? [runLink(m[1]), el("span", { class: "nf-muted" }, m[2])] : entry);
}

function use(l) {
  const pct = Math.min(100, (100 * l.in_use) / (l.max || 1));
  return el("span", { class: "nf-row" },
    el("span", { class: "nf-progress", title: `${l.in_use} of ${l.max}` },
       el("span", { style: `width:${pct}%;background:var(--state-${l.in_use >= l.max ? "stopping" : "running"})` })),
    el("span", { dataset: { role: "in-use" } }, `${l.in_use} / ${l.max}`));
}

function row(l) {
  const list = (items) => items.length ? el("ul", { class: "nf-plain" }, items.slice(0, 10).map(who),
    items.length > 10 ? el("li", { class: "nf-muted" }, `… ${items.length - 10} more`) : null) : el("span", { class: "nf-muted" }, "—");
  return el("tr", { dataset: { limit: l.limit, key: l.key, namespace: l.namespace || "default", kind: l.kind } },
    el("td", {}, el("code", {}, l.limit), el("div", { class: "nf-small nf-muted" }, l.namespace || "default")),
    el("td", {}, l.key ? el("code", {}, l.key) : el("span", { class: "nf-muted" }, "(no key)")),
    el("td", {}, l.kind === "rate" ? `rate: ${l.max} per ${l.per} s` : `concurrency: ${l.max}`),
    el("td", {}, l.kind === "rate" ? el("span", { class: "nf-muted" }, l.next_free ? `next free ${fmtTime(l.next_free)}` : "free") : use(l)),
    el("td", { class: "nf-num", dataset: { role: "waiting" } }, l.waiting),
    el("td", {}, list(l.holders)),
    el("td", {}, list(l.queue)));
}

async function load() {
  const { limits } = await api("/limits" + qs({ limit: only }));
  const filter = el("form", { class: "nf-row nf-panel" },
    el("label", {}, "Limit", el("input", { name: "limit", value: only, placeholder: "wf:invoice, step:billing.charge", autocomplete: "off" })),
    el("button", { type: "submit", class: "nf-primary" }, "Show"),
    only ? el("a", { href: "/ui/limits.html" }, "every limit") : null);
  filter.addEventListener("submit", (e) => { e.preventDefault(); location.href = `/ui/limits.html${qs({ limit: filter.limit.value.trim() })}`; });
  const waiting = limits.reduce((n, l) => n + l.waiting, 0);
  clear(main, el("div", { class: "nf-row" }, el("h1", { class: "nf-grow" }, "Limits"),
                 el("span", { class: "nf-muted", dataset: { role: "summary" } }, `${limits.length} in use · ${waiting} waiting`)),
    filter,
    limits.length ? el("table", { class: "nf-table", id: "nf-limits" },
      el("thead", {}, el("tr", {}, ["Limit", "Key", "Kind", "In use", "Waiting", "Held by", "Queue (next first)"].map((h) => el("th", {}, h)))),
      el("tbody", {}, limits.map(row)))
      : el("p", { class: "nf-empty" }, "No limit in use. Limits appear here while a run or a step holds or waits for a permit (docs/flow-control.md)."));
  document.body.dataset.loaded = "true";
}

try {
  await load();
  setInterval(() => { if (document.activeElement?.name !== "limit") load().catch(showMessage); }, 2_000);
} catch (err) {
  showMessage(err);
}
