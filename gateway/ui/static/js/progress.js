// A progress bar of counts by state: progressBar({completed: 3, running: 1}, 10).
import { el } from "./dom.js";

export function progressBar(counts, total) {
  const sum = total || Object.values(counts || {}).reduce((a, b) => a + b, 0) || 1;
  const order = ["completed", "succeeded", "failed", "stopped", "running", "stopping", "paused", "created", "pending"];
  const states = Object.keys(counts || {}).sort((a, b) => order.indexOf(a) - order.indexOf(b));
  return el("span", { class: "nf-progress", title: states.map((s) => `${s}: ${counts[s]}`).join(", ") },
    states.filter((s) => counts[s]).map((s) => el("span", {
      style: `width:${(100 * counts[s]) / sum}%;background:var(--state-${s}, #999)`, dataset: { state: s } })));
}
