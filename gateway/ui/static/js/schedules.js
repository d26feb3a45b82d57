// Schedules (schedules.html): every schedule with its spec, whether it is paused (and
// why), its next fire times and its last runs with their states; pause (with a note),
// unpause, fire now and delete, with the API's refusals shown as messages.

import { api, qs, showMessage } from "./api.js";
import { openDialog } from "./dialog.js";
import { clear, el, fmtTime, runLink, stateBadge } from "./dom.js";
import { mountShell } from "./shell.js";

mountShell("schedules");
const main = document.getElementById("nf-main");
const enc = encodeURIComponent;

/** `/schedules/{name}[/action]?namespace=...` of a schedule. */
const path = (s, action = "") => `/schedules/${enc(s.name)}${action}${qs({ namespace: s.namespace || "default" })}`;

/** "cron 30 2 * * * (Europe/Paris)", "every 300 s + 30 s", "at 2 times". */
export function specText(spec) {
  const tz = spec.timezone && spec.timezone !== "UTC" ? ` (${spec.timezone})` : "";
  if (spec.cron) return `cron ${spec.cron}${tz}`;
  if (spec.every) return `every ${spec.every} s${spec.offset ? ` + ${spec.offset} s` : ""}`;
  if (spec.at) return `at ${spec.at.length} time${spec.at.length === 1 ? "" : "s"}`;
  return "";
}

function target(schedule) {
  const w = schedule.workflow || {};
  if (w.definition) return `definition ${w.definition}${w.version ? ` v${w.version}` : ""}`;
  return w.config ? `inline ${w.config.name}` : "";
}

function lastRuns(recent) {
  if (!recent.length) return el("span", { class: "nf-muted" }, "none yet");
  return el("ul", { class: "nf-plain" }, recent.slice(0, 5).map((r) => el("li", {
    dataset: { workflowId: r.workflow_id, outcome: r.outcome } },
    r.outcome === "started" ? runLink(r.workflow_id) : el("span", { class: "nf-mono" }, r.workflow_id), " ",
    r.state ? stateBadge(r.state) : el("span", { class: "nf-muted" }, r.outcome),
    r.reason ? el("span", { class: "nf-small nf-muted" }, ` ${r.reason}`) : null,
    el("div", { class: "nf-small nf-muted" }, `fire time ${fmtTime(r.fire_time)}`))));
}

async function act(label, run) {
  try {
    const answer = await run();
    if (answer !== null) showMessage(typeof label === "function" ? label(answer) : label, "ok");
  } catch (err) {
    showMessage(err);
  }
  await load();
}

function actions(info) {
  const s = info.schedule;
  const button = (action, text, onclick, cls) => el("button", { type: "button", class: cls || "", dataset: { action }, onclick }, text);
  return el("span", { class: "nf-actions" },
    s.paused
      ? button("unpause", "Unpause", () => act(`${s.name}: unpaused`, () => api(path(s, "/unpause"), { method: "POST" })))
      : button("pause", "Pause…", () => act(`${s.name}: paused`, () => openDialog({
          id: "nf-pause-dialog", title: `Pause ${s.name}`, submitLabel: "Pause",
          intro: "It fires no more until unpaused; runs going on go on.",
          fields: [el("label", {}, "Note (why)", el("input", { name: "note", autocomplete: "off" }))],
          onSubmit: (form) => api(path(s, "/pause"), { method: "POST", body: { note: form.note.value.trim() } }),
        }))),
    button("trigger", "Fire now", () => act((fired) => `${s.name}: fired as ${fired.workflow_id}`,
      () => api(path(s, "/trigger"), { method: "POST" }))),
    button("delete", "Delete…", () => act(`${s.name}: deleted`, () => openDialog({
      id: "nf-delete-dialog", title: `Delete ${s.name}?`, submitLabel: "Delete",
      intro: "The schedule is deleted; its runs going on go on.",
      onSubmit: () => api(path(s), { method: "DELETE" }).then(() => true),
    })), "nf-danger"),
    el("a", { href: `/ui/${qs({ schedule: s.name, namespace: s.namespace && s.namespace !== "default" ? s.namespace : "" })}`,
              dataset: { role: "runs" } }, "its runs"));
}

function row(info) {
  const s = info.schedule;
  const ns = s.namespace || "default";
  return el("tr", { dataset: { schedule: s.name, namespace: ns, paused: String(s.paused) } },
    el("td", {}, el("b", {}, s.name), el("div", { class: "nf-small nf-muted" }, ns)),
    el("td", {}, el("code", {}, specText(s.spec)), el("div", { class: "nf-small nf-muted" },
      `${target(s)} · overlap ${s.overlap}`)),
    el("td", { class: "nf-cell-state" }, s.paused ? stateBadge("paused") : el("span", { class: "nf-state nf-state-running", dataset: { state: "active" } }, "active"),
       s.note ? el("div", { class: "nf-small", dataset: { role: "note" } }, s.note) : null,
       info.missed ? el("div", { class: "nf-small nf-muted" }, `${info.missed} missed`) : null),
    el("td", { dataset: { role: "next" } }, info.next_fire_times.length
      ? el("ul", { class: "nf-plain" }, info.next_fire_times.slice(0, 3).map((t) => el("li", { title: t }, fmtTime(t))))
      : el("span", { class: "nf-muted" }, s.paused ? "paused" : "none")),
    el("td", { dataset: { role: "recent" } }, lastRuns(info.recent)),
    el("td", {}, actions(info)));
}

async function load() {
  const list = await api("/schedules");
  const infos = [];
  for (const s of list.schedules) {
    try {
      infos.push(await api(path(s)));
    } catch (err) {
      if (err.status !== 404) showMessage(err);  // deleted meanwhile: left out
    }
  }
  clear(main, el("div", { class: "nf-row" }, el("h1", { class: "nf-grow" }, "Schedules"),
                 el("span", { class: "nf-muted" }, `${infos.length} schedule${infos.length === 1 ? "" : "s"}`)),
    infos.length ? el("table", { class: "nf-table", id: "nf-schedules" },
      el("thead", {}, el("tr", {}, ["Schedule", "When", "State", "Next fire times", "Last runs", "Actions"].map((h) => el("th", {}, h)))),
      el("tbody", {}, infos.map(row)))
      : el("p", { class: "nf-empty" }, "No schedules. Make one with POST /schedules or `natsflow schedules create`."));
  document.body.dataset.loaded = "true";
}

try {
  await load();
  // Fire times pass and runs end: look again every 10 s.
  setInterval(() => { if (!document.querySelector("dialog[open]")) load().catch(showMessage); }, 10_000);
} catch (err) {
  showMessage(err);
}
