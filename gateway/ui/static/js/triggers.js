// Triggers (triggers.html): every trigger with its subject, its workflow, whether it is
// paused (and why) and its counters (received, matched, skipped by `when`, started,
// duplicates, failed mapping); pause (with a note) and resume.

import { api, qs, showMessage } from "./api.js";
import { openDialog } from "./dialog.js";
import { clear, el, fmtTime, stateBadge } from "./dom.js";
import { mountShell } from "./shell.js";

mountShell("triggers");
const main = document.getElementById("nf-main");
const enc = encodeURIComponent;
const path = (spec, action = "") => `/triggers/${enc(spec.name)}${action}${qs({ namespace: spec.namespace || "default" })}`;

/** The counters, in the order a message goes through them. */
export const COUNTERS = [
  ["received", "received", "messages taken"],
  ["matched", "matched", "messages whose `when` held (or that have none)"],
  ["skipped", "skipped", "messages whose `when` was false"],
  ["started", "started", "workflows created"],
  ["duplicates", "duplicates", "creates that found the workflow there already"],
  ["failed", "failed mapping", "messages the mapping could not handle"],
];

async function act(label, run) {
  try {
    if (await run() !== null) showMessage(label, "ok");
  } catch (err) {
    showMessage(err);
  }
  await load();
}

function actions(t) {
  const spec = t.spec;
  const button = (action, text, onclick) => el("button", { type: "button", dataset: { action }, onclick }, text);
  return el("span", { class: "nf-actions" },
    t.paused
      ? button("resume", "Resume", () => act(`${spec.name}: resumed`, () => api(path(spec, "/resume"), { method: "POST" })))
      : button("pause", "Pause…", () => act(`${spec.name}: paused`, () => openDialog({
          id: "nf-pause-dialog", title: `Pause ${spec.name}`, submitLabel: "Pause",
          intro: "It consumes no more until resumed; what arrives meanwhile waits (a core NATS subject: while natsflow captures it).",
          fields: [el("label", {}, "Note (why)", el("input", { name: "note", maxlength: 1024, autocomplete: "off" }))],
          onSubmit: (form) => api(path(spec, "/pause"), { method: "POST", body: form.note.value.trim() ? { note: form.note.value.trim() } : {} }),
        }))),
    el("a", { href: `/ui/${qs({ label: `trigger:${spec.name}`, namespace: spec.namespace && spec.namespace !== "default" ? spec.namespace : "" })}`,
              dataset: { role: "runs" } }, "its runs"));
}

function row({ trigger: t, stats }) {
  const spec = t.spec;
  const ns = spec.namespace || "default";
  const workflow = spec.definition ? `definition ${spec.definition}${spec.version ? ` v${spec.version}` : ""}`
                                   : `inline ${(spec.config && spec.config.name) || ""}`;
  return el("tr", { dataset: { trigger: spec.name, namespace: ns, paused: String(t.paused) } },
    el("td", {}, el("b", {}, spec.name), el("div", { class: "nf-small nf-muted" }, ns)),
    el("td", {}, el("code", {}, spec.subject),
       el("div", { class: "nf-small nf-muted" }, spec.stream ? `stream ${spec.stream} (${spec.deliver})` : "core NATS")),
    el("td", {}, workflow, spec.when ? el("div", { class: "nf-small nf-muted" }, "when ", el("code", {}, spec.when)) : null),
    el("td", { class: "nf-cell-state" }, t.paused ? stateBadge("paused") : el("span", { class: "nf-state nf-state-running", dataset: { state: "active" } }, "active"),
       t.note ? el("div", { class: "nf-small", dataset: { role: "note" } }, t.note) : null,
       el("div", { class: "nf-small nf-muted" }, `since ${fmtTime(t.updated_at)}`)),
    COUNTERS.map(([name, , title]) => el("td", { class: "nf-num", title, dataset: { counter: name } }, stats[name] ?? 0)),
    el("td", {}, actions(t)));
}

async function load() {
  const list = await api("/triggers");
  clear(main, el("div", { class: "nf-row" }, el("h1", { class: "nf-grow" }, "Triggers"),
                 el("span", { class: "nf-muted" }, `${list.triggers.length} trigger${list.triggers.length === 1 ? "" : "s"}`)),
    list.triggers.length ? el("table", { class: "nf-table", id: "nf-triggers" },
      el("thead", {}, el("tr", {}, ["Trigger", "Subject", "Workflow", "State"].map((h) => el("th", {}, h)),
        COUNTERS.map(([, label, title]) => el("th", { title }, label)), el("th", {}, "Actions"))),
      el("tbody", {}, list.triggers.map(row)))
      : el("p", { class: "nf-empty" }, "No triggers. Make one with POST /triggers."));
  document.body.dataset.loaded = "true";
}

try {
  await load();
  // The counters move with the messages: look again every 5 s.
  setInterval(() => { if (!document.querySelector("dialog[open]")) load().catch(showMessage); }, 5_000);
} catch (err) {
  showMessage(err);
}
