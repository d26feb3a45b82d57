// The chosen step: its state, error, output, input, attempts, progress and heartbeats,
// and for a map its items (a window of rows over all of them, never one row per item).
import { mapCounts } from "./run-model.js";

const ROW = 22; // px per item row in the drill-down
const MAX_JSON = 8000;

function h(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

export function json(value) {
  let s = JSON.stringify(value, null, 2) ?? "null";
  if (s.length > MAX_JSON) s = JSON.stringify(value); // big: dense rather than tall
  return s.length > MAX_JSON ? `${s.slice(0, MAX_JSON)}\n… (${s.length} characters)` : s;
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return s < 1 ? " (just now)" : ` (${s} s ago)`;
}

const fmt = (iso) => (iso ? iso.replace("T", " ").slice(0, 23) : "—");

export class StepDetail {
  constructor(root, model, { childHref, configOf }) {
    this.root = root;
    this.model = model;
    this.childHref = childHref;
    this.configOf = configOf; // step id -> its config, when the definition is known
    this.id = null;
    this.filter = "all";
  }

  show(id) {
    this.id = id;
    this.items = null;
    this.filter = "all";
    this.render();
  }

  // Re-render the panel if it shows this step (cheap: one panel, not the graph).
  update(id) { if (id === this.id) this.render(); }

  render() {
    const step = this.id && this.model.steps.get(this.id);
    if (!step) {
      this.root.replaceChildren(h("p", { class: "hint",
        text: "Choose a step on the graph to see its input, output, error and attempts." }));
      return;
    }
    // A map's item window stays in place while the step is shown (it keeps its scroll);
    // only its rows and counts are redrawn.
    const keepWindow = this.items && this.itemsFor === `${step.id}/${this.filter}`;
    const scrolled = keepWindow ? this.items.scrollTop : 0;
    const rows = [
      ["state", step.state + (step.skipReason ? ` (${step.skipReason})` : "")],
      ["kind", step.kind + (step.task ? ` · ${step.task}` : "")],
      ["attempts", `${step.attempts - (step.attempt_base || 0)}`
        + (step.attempt_base ? ` in this run (${step.attempts} in all)` : "")],
      ["dispatched", fmt(step.dispatched_at)],
      ["started", fmt(step.started_at)],
      ["finished", fmt(step.finished_at)],
    ];
    if (step.heartbeat_at) rows.push(["heartbeat", fmt(step.heartbeat_at) + ago(step.heartbeat_at)]);
    if (step.next_attempt_at) rows.push(["next attempt", fmt(step.next_attempt_at)]);
    if (step.wake_at) rows.push(["wakes", fmt(step.wake_at)]);
    if (step.signal) rows.push(["signal", step.signal]);
    if (step.waiting_for_worker) rows.push(["worker", `waiting: ${step.waiting_for_worker}`]);
    if (step.reused_from) rows.push(["reused from", step.reused_from]);
    if (step.compensates) rows.push(["compensates", step.compensates]);
    const dl = h("dl", { class: "facts" });
    for (const [k, v] of rows) dl.append(h("dt", { text: k }), h("dd", { text: v }));
    if (step.child_id) {
      dl.append(h("dt", { text: "child" }),
                h("dd", {}, h("a", { href: this.childHref(step.child_id), class: "child-link",
                                     text: step.child_id })));
    }
    const parts = [h("h3", { text: step.id }), dl];
    if (step.error) {
      parts.push(h("h4", { text: "error" }),
                 h("div", { class: "error-box" },
                   h("strong", { text: step.error.code }), ": ",
                   h("span", { class: "error-message", text: step.error.message }),
                   step.error.retryable ? " (retryable)" : ""));
      if (step.error.details) parts.push(h("pre", { text: json(step.error.details) }));
    }
    if (step.progress !== null && step.progress !== undefined) {
      parts.push(h("h4", { text: "progress" }), h("pre", { text: json(step.progress) }));
    }
    if (step.kind === "map" && step.map) parts.push(this.mapPart(step, keepWindow));
    else this.items = null;
    if (step.output !== null && step.output !== undefined) {
      parts.push(h("h4", { text: "output" }), h("pre", { class: "output", text: json(step.output) }));
    }
    const cfg = this.configOf(step.id);
    if (step.input_override) {
      parts.push(h("h4", { text: "input (given by a retry)" }), h("pre", { text: json(step.input_override) }));
    } else if (cfg) {
      const { id, depends_on, ...rest } = cfg; // eslint-disable-line no-unused-vars
      parts.push(h("h4", { text: "input and settings (from the definition)" }),
                 h("pre", { text: json(rest) }));
    } else {
      parts.push(h("p", { class: "hint", text: "input: rendered from the workflow's input "
        + "(above) by the step's templates when it is dispatched" }));
    }
    parts.push(this.attemptsPart(step));
    this.root.replaceChildren(...parts);
    if (keepWindow) this.items.scrollTop = scrolled; // moving it in the page reset it
    if (this.items) this.fillItems();
  }

  attemptsPart(step) {
    const table = h("table", { class: "attempts" },
      h("thead", {}, h("tr", {}, ...["#", "began", "ended", "took", "outcome"].map(
        (t) => h("th", { text: t })))));
    const body = h("tbody");
    for (const a of [...step.history.values()].sort((x, y) => x.attempt - y.attempt)) {
      const took = a.begun !== null && a.ended !== null ? `${((a.ended - a.begun) / 1000).toFixed(2)} s` : "";
      body.append(h("tr", { class: `o-${a.outcome || "open"}` },
        h("td", { text: String(a.attempt) }),
        h("td", { text: a.begun ? new Date(a.begun).toISOString().slice(11, 23) : "" }),
        h("td", { text: a.ended ? new Date(a.ended).toISOString().slice(11, 23) : "" }),
        h("td", { text: took }),
        h("td", { text: (a.outcome || "under way") + (a.error ? ` — ${a.error.code}: ${a.error.message}` : "") })));
    }
    table.append(body);
    return h("div", {}, h("h4", { text: "attempts" }), table);
  }

  // The map's items: counts, a filter, and a scrolling window of rows.
  mapPart(step, keepWindow) {
    const c = mapCounts(step);
    const wrap = h("div", { class: "map-items" });
    const bar = h("div", { class: "map-filter" });
    for (const [f, n] of [["all", c.total], ["succeeded", c.done], ["running", c.running],
                          ["retrying", c.retrying], ["failed", c.failed], ["pending", c.pending]]) {
      bar.append(h("button", { class: f === this.filter ? "on" : "", "data-filter": f,
                               text: `${f} ${n}`,
                               onclick: () => { this.filter = f; this.render(); } }));
    }
    if (!keepWindow) {
      this.items = h("div", { class: "item-window" });
      this.items.addEventListener("scroll", () => this.fillItems());
      this.itemsInner = h("div", { class: "item-inner" });
      this.items.append(this.itemsInner);
      this.itemsFor = `${step.id}/${this.filter}`;
    }
    wrap.append(h("h4", { text: `items (${c.total})` }), bar, this.items);
    if (step.map.errors.length) {
      wrap.append(h("h4", { text: "first item errors" }));
      for (const e of step.map.errors) {
        wrap.append(h("div", { class: "error-box" }, h("strong", { text: e.step || "" }), ` ${e.code}: `,
                          h("span", { class: "error-message", text: e.message })));
      }
    }
    return wrap;
  }

  // The item indexes the filter selects, without listing all of them unless asked.
  selection(step) {
    const m = step.map;
    const keys = (o) => Object.keys(o).map(Number).sort((a, b) => a - b);
    switch (this.filter) {
      case "running": return keys(m.running);
      case "retrying": return keys(m.retrying);
      case "failed": return [...m.failed].sort((a, b) => a - b);
      default: return null; // every index (or a derived subset), counted below
    }
  }

  fillItems() {
    const step = this.model.steps.get(this.id);
    if (!step || !step.map || !this.items) return;
    const list = this.selection(step);
    let indexes;
    let count;
    if (list) {
      indexes = (i) => list[i];
      count = list.length;
    } else if (this.filter === "all") {
      indexes = (i) => i;
      count = step.map.total;
    } else {
      // succeeded / pending: scan for them (linear, but only on demand and in chunks).
      const want = this.filter;
      const found = [];
      for (let i = 0; i < step.map.total; i += 1) {
        if (this.model.itemState(step, i) === want) found.push(i);
      }
      indexes = (i) => found[i];
      count = found.length;
    }
    this.itemsInner.style.height = `${count * ROW}px`;
    const first = Math.floor(this.items.scrollTop / ROW);
    const visible = Math.ceil((this.items.clientHeight || 300) / ROW) + 2;
    const frag = document.createDocumentFragment();
    const outputs = Array.isArray(step.output) ? step.output : null;
    for (let r = first; r < Math.min(count, first + visible); r += 1) {
      const i = indexes(r);
      const state = this.model.itemState(step, i);
      const row = h("div", { class: `item-row st-${state}`, "data-index": String(i) });
      row.style.top = `${r * ROW}px`;
      row.append(h("span", { class: "idx", text: `[${i}]` }), h("span", { class: "ist", text: state }));
      const attempt = step.map.running[String(i)] ?? step.map.retrying[String(i)];
      if (attempt !== undefined) row.append(h("span", { text: `attempt ${attempt}` }));
      if (state === "running" && !step.task && attempt !== undefined) {
        // A map over child workflows: the item's child has its own run page.
        const cid = `${this.model.status.id}-${step.id}-${i}-${attempt}`.slice(0, 128);
        row.append(h("a", { href: this.childHref(cid), text: "child ↗" }));
      }
      const err = step.map.errors.find((e) => e.step === `${step.id}[${i}]`);
      if (err) row.append(h("span", { class: "error-message", text: `${err.code}: ${err.message}` }));
      if (outputs && state === "succeeded") {
        const s = JSON.stringify(outputs[i]);
        row.append(h("span", { class: "iout", text: s && s.length > 80 ? `${s.slice(0, 79)}…` : s }));
      }
      frag.append(row);
    }
    this.itemsInner.replaceChildren(frag);
  }
}
