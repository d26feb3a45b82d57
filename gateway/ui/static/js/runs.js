// The runs list (index.html). Filled in below.
import { api, showMessage } from "./api.js";
import { mountShell } from "./shell.js";
import { el, clear, runLink, stateBadge, fmtTime } from "./dom.js";
import { actionBar } from "./actions.js";

mountShell("runs");
const body = document.querySelector("#nf-runs tbody");
try {
  const page = await api("/workflows?limit=50");
  clear(body, page.items.map((w) => el("tr", { dataset: { workflowId: w.id } },
    el("td", {}, runLink(w.id)), el("td", {}, w.name), el("td", {}, stateBadge(w.state)),
    el("td", {}, w.namespace || ""), el("td", {}, ""), el("td", {}, fmtTime(w.created_at)),
    el("td", {}, fmtTime(w.updated_at)), el("td", {}, w.batch_id || ""),
    el("td", {}, actionBar(w)))));
} catch (err) {
  showMessage(err);
}
