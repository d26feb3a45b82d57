// Small DOM and formatting helpers shared by every page.
//
//   el("a", { href: runUrl(id), class: "nf-link" }, id)  -> <a ...>id</a>
//   stateBadge("running")                                -> <span class="nf-state nf-state-running">
//   fmtTime(iso), fmtDuration(ms)

/**
 * Create an element. attrs: `class`, `dataset` (object), `on<event>` (listeners),
 * anything else as an attribute (false/null/undefined: left out). Children: nodes or text.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Remove every child of `node` (and append `children`, if any). */
export function clear(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

/** The run page of a workflow. */
export function runUrl(id) { return `/ui/run.html?id=${encodeURIComponent(id)}`; }

/** A link to the run page of a workflow, its id as text (or `label`). */
export function runLink(id, label) {
  return el("a", { href: runUrl(id), class: "nf-run-link", dataset: { workflowId: id } },
            label ?? id);
}

/** A coloured badge for a workflow or step state (CSS: .nf-state-<state>). */
export function stateBadge(state) {
  return el("span", { class: `nf-state nf-state-${state}`, dataset: { state } }, state);
}

/** Workflow states that end a run. */
export const TERMINAL = new Set(["completed", "failed", "stopped"]);
/** Every workflow state, in the order the UI lists them. */
export const WORKFLOW_STATES = ["created", "running", "paused", "stopping", "compensating",
                                "completed", "failed", "stopped"];

/** A local date-time ("2026-12-02 05:10:03"), or "" for nothing. */
export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} `
       + `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** "850 ms", "12.3 s", "4 min 5 s", "2 h 3 min". */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** Pretty JSON in a <pre>. */
export function jsonBlock(value) {
  return el("pre", { class: "nf-json" }, JSON.stringify(value, null, 2));
}
