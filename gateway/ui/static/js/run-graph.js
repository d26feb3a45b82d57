// The DAG as SVG: laid out once (dagre, left to right), then updated node by node.
import dagre from "../vendor/dagre/dagre.esm.js";
import { mapCounts } from "./run-model.js";

const NS = "http://www.w3.org/2000/svg";
const W = 188;
const H = 50;
const H_MAP = 70;

function el(name, attrs = {}, parent = null) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

// The one line under a node's name: what a person wants to know of it at a glance.
export function stepLine(step) {
  const att = step.attempts - (step.attempt_base || 0);
  switch (step.state) {
    case "skipped": return `skipped${step.skipReason ? `: ${step.skipReason}` : ""}`;
    case "failed": return `failed${step.error ? `: ${step.error.code}` : ""}`;
    case "retrying": return `retrying after attempt ${att}`;
    case "waiting":
      if (step.signal) return `waiting for signal ${step.signal}`;
      if (step.child_id) return "waiting for its child";
      return "waiting";
    case "succeeded":
      if (step.kind === "switch" && step.output && step.output.case !== undefined) {
        return `case ${step.output.case}`;
      }
      if (step.reused_from) return "reused from the earlier run";
      return att > 1 ? `succeeded on attempt ${att}` : "succeeded";
    case "dispatched":
      return step.waiting_for_worker ? `queued: ${step.waiting_for_worker}` : "dispatched";
    case "running": {
      const p = step.progress;
      if (step.kind !== "map" && p && typeof p === "object" && p.done !== undefined) {
        return `running ${p.done}/${p.of ?? p.total ?? "?"}`;
      }
      return att > 1 ? `running, attempt ${att}` : "running";
    }
    default: return step.state;
  }
}

export class RunGraph {
  constructor(svg, model, { onSelect, childHref }) {
    this.svg = svg;
    this.model = model;
    this.onSelect = onSelect;
    this.childHref = childHref;
    this.nodes = new Map(); // step id -> {g, rect, line, bar parts}
    this.incoming = new Map(); // step id -> edge paths into it
    this.view = { x: 0, y: 0, k: 1 };
    this.selected = null;
  }

  // Lay the graph out and draw every node and edge: once per page.
  draw() {
    const t0 = performance.now();
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 16, ranksep: 56, marginx: 16, marginy: 16 });
    g.setDefaultEdgeLabel(() => ({}));
    const steps = this.model.order.map((id) => this.model.steps.get(id));
    for (const s of steps) g.setNode(s.id, { width: W, height: s.kind === "map" ? H_MAP : H });
    for (const s of steps) {
      for (const d of s.depends_on) if (this.model.steps.has(d)) g.setEdge(d, s.id);
      if (s.compensates && this.model.steps.has(s.compensates)) {
        g.setEdge(s.compensates, s.id, { compensation: true });
      }
    }
    dagre.layout(g);
    this.layoutMs = performance.now() - t0;
    const size = g.graph();
    this.width = size.width || W;
    this.height = size.height || H;

    this.svg.replaceChildren();
    const defs = el("defs", {}, this.svg);
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
                                  markerWidth: "7", markerHeight: "7",
                                  orient: "auto-start-reverse" }, defs);
    el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }, marker);
    this.viewport = el("g", { class: "viewport" });
    const edges = el("g", { class: "edges" }, this.viewport);
    const nodes = el("g", { class: "nodes" }, this.viewport);
    for (const e of g.edges()) {
      const pts = g.edge(e).points;
      const d = pts.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join("");
      const path = el("path", { d, class: g.edge(e).compensation ? "edge compensation" : "edge",
                                "marker-end": "url(#arrow)", "data-from": e.v, "data-to": e.w },
                      edges);
      if (!this.incoming.has(e.w)) this.incoming.set(e.w, []);
      this.incoming.get(e.w).push(path);
    }
    for (const s of steps) {
      const n = g.node(s.id);
      this.nodes.set(s.id, this.drawNode(nodes, s, n.x - n.width / 2, n.y - n.height / 2,
                                         n.height));
      this.position(s.id, n.x, n.y);
    }
    this.svg.appendChild(this.viewport);
    for (const s of steps) this.update(s.id);
    this.drawMs = performance.now() - t0;
    this.fit();
    this.panZoom();
  }

  position(id, x, y) { this.nodes.get(id).center = { x, y }; }

  drawNode(parent, step, x, y, h) {
    const g = el("g", { class: "node", transform: `translate(${x},${y})`, "data-step": step.id,
                        tabindex: "0", role: "button" }, parent);
    const title = el("title", {}, g);
    const rect = el("rect", { width: W, height: h, rx: "7" }, g);
    el("text", { x: "10", y: "19", class: "name" }, g).textContent = clip(step.id, 24);
    const kind = el("text", { x: W - 8, y: "19", class: "kind", "text-anchor": "end" }, g);
    kind.textContent = step.kind;
    const line = el("text", { x: "10", y: "38", class: "line" }, g);
    const badge = el("text", { x: W - 8, y: "38", class: "badge", "text-anchor": "end" }, g);
    const node = { g, rect, title, line, badge, step: step.id };
    if (step.kind === "map") {
      const bar = el("g", { class: "mapbar", transform: "translate(10,48)" }, g);
      el("rect", { width: W - 20, height: "6", class: "bar-bg", rx: "2" }, bar);
      node.barDone = el("rect", { width: "0", height: "6", class: "bar-done" }, bar);
      node.barRun = el("rect", { width: "0", height: "6", class: "bar-running" }, bar);
      node.barFail = el("rect", { width: "0", height: "6", class: "bar-failed" }, bar);
      node.counts = el("text", { x: "10", y: "65", class: "counts" }, g);
    }
    g.addEventListener("click", () => this.select(step.id));
    g.addEventListener("keydown", (e) => { if (e.key === "Enter") this.select(step.id); });
    return node;
  }

  select(id) {
    if (this.selected) this.nodes.get(this.selected)?.g.classList.remove("selected");
    this.selected = id;
    if (id) this.nodes.get(id)?.g.classList.add("selected");
    this.onSelect(id);
  }

  // Bring one node (and the edges into it) up to date: a few attributes, nothing else.
  update(id) {
    const node = this.nodes.get(id);
    const step = this.model.steps.get(id);
    if (!node || !step) return;
    const retried = step.failedAttempts > 0 || step.attempts - (step.attempt_base || 0) > 1;
    const cls = `node st-${step.state} kind-${step.kind}${retried ? " retried" : ""}`
      + `${this.selected === id ? " selected" : ""}`;
    if (node.cls !== cls) { node.g.setAttribute("class", cls); node.cls = cls; }
    node.g.dataset.state = step.state;
    const line = stepLine(step);
    if (node.line.textContent !== clip(line, 30)) node.line.textContent = clip(line, 30);
    const att = step.attempts - (step.attempt_base || 0);
    const badge = step.failedAttempts > 0 ? `↻${step.failedAttempts}` : att > 1 ? `#${att}` : "";
    node.badge.textContent = badge;
    node.title.textContent = `${step.id} (${step.kind}${step.task ? ` ${step.task}` : ""}): `
      + `${line}${step.failedAttempts ? `; ${step.failedAttempts} failed attempt(s)` : ""}`;
    if (node.counts) this.updateMap(node, step);
    if (step.child_id && !node.child) {
      // A workflow step: its child has a run page of its own.
      node.child = el("a", { href: this.childHref(step.child_id), class: "child" }, node.g);
      el("text", { x: W - 8, y: "-4", "text-anchor": "end" }, node.child).textContent =
        "child run ↗";
      node.child.addEventListener("click", (e) => e.stopPropagation());
    }
    const edgeCls = step.state === "skipped" ? "edge skipped"
      : STEP_TAKEN.has(step.state) ? "edge taken" : "edge";
    for (const p of this.incoming.get(id) || []) {
      const c = p.classList.contains("compensation") ? `${edgeCls} compensation` : edgeCls;
      if (p.getAttribute("class") !== c) p.setAttribute("class", c);
    }
  }

  updateMap(node, step) {
    const c = mapCounts(step);
    const w = W - 20;
    if (!c || !c.total) {
      node.counts.textContent = c ? "no items" : "items not computed yet";
      return;
    }
    const px = (n) => ((n / c.total) * w).toFixed(1);
    node.barDone.setAttribute("width", px(c.done));
    node.barFail.setAttribute("x", px(c.done));
    node.barFail.setAttribute("width", px(c.failed));
    node.barRun.setAttribute("x", px(c.done + c.failed));
    node.barRun.setAttribute("width", px(c.running + c.retrying));
    node.counts.textContent = `${c.done} done · ${c.running + c.retrying} running · `
      + `${c.failed} failed of ${c.total}`;
    node.g.dataset.done = c.done;
    node.g.dataset.total = c.total;
  }

  // Pan with the pointer, zoom with the wheel, fit on a double click.
  panZoom() {
    let drag = null;
    this.svg.addEventListener("pointerdown", (e) => {
      if (e.target.closest(".node")) return;
      drag = { x: e.clientX, y: e.clientY, vx: this.view.x, vy: this.view.y };
      this.svg.setPointerCapture(e.pointerId);
    });
    this.svg.addEventListener("pointermove", (e) => {
      if (!drag) return;
      this.view.x = drag.vx + e.clientX - drag.x;
      this.view.y = drag.vy + e.clientY - drag.y;
      this.apply();
    });
    this.svg.addEventListener("pointerup", () => { drag = null; });
    this.svg.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = this.svg.getBoundingClientRect();
      const mx = e.clientX - r.left, my = e.clientY - r.top;
      const k = Math.min(3, Math.max(0.05, this.view.k * Math.exp(-e.deltaY / 400)));
      this.view.x = mx - ((mx - this.view.x) * k) / this.view.k;
      this.view.y = my - ((my - this.view.y) * k) / this.view.k;
      this.view.k = k;
      this.apply();
    }, { passive: false });
    this.svg.addEventListener("dblclick", (e) => { if (!e.target.closest(".node")) this.fit(); });
  }

  fit() {
    const r = this.svg.getBoundingClientRect();
    const k = Math.min(1, (r.width || 800) / this.width, (r.height || 400) / this.height);
    // Many steps: stay readable and let the person pan, rather than shrink to dots.
    this.view.k = Math.max(k, 0.35);
    this.view.x = Math.max(0, ((r.width || 800) - this.width * this.view.k) / 2);
    this.view.y = Math.max(0, ((r.height || 400) - this.height * this.view.k) / 2);
    this.apply();
  }

  apply() {
    const { x, y, k } = this.view;
    this.viewport.setAttribute("transform", `translate(${x.toFixed(1)},${y.toFixed(1)}) scale(${k.toFixed(4)})`);
  }

  // The steps in reading order (left to right, then top to bottom), for the timeline.
  readingOrder() {
    return [...this.nodes.values()]
      .sort((a, b) => a.center.x - b.center.x || a.center.y - b.center.y)
      .map((n) => n.step);
  }
}

const STEP_TAKEN = new Set(["dispatched", "running", "waiting", "retrying", "succeeded",
                            "failed", "cancelled"]);
