// The run page's actions: the shell's action bar (stop, pause, resume, retry, rerun,
// signal; refusals such as a 409 shown as the API's message), fed with what the page
// knows of the run (the signal a waiting step waits for comes from its events), and
// "rerun from" the chosen step.
import { actionBar, rerunRun } from "./actions.js";
import { showMessage } from "./api.js";
import { el, runUrl } from "./dom.js";

export class RunActions {
  constructor(root, page) {
    this.page = page;
    this.bar = actionBar(this.run(), { onDone: (result, action) => this.done(result, action) });
    this.from = el("button", { type: "button", dataset: { action: "rerun-from" }, hidden: true });
    this.from.addEventListener("click", () => this.rerunFrom());
    root.replaceChildren(this.bar, this.from);
  }

  // The run as actions.js reads it: the status, with the model's steps.
  run() {
    const m = this.page.model;
    return { ...m.status, steps: m.order.map((id) => m.steps.get(id)) };
  }

  done(result, action) {
    if (action === "rerun" && result && result.id && result.id !== this.page.id) {
      location.href = runUrl(result.id);
      return;
    }
    this.page.refollow(); // a retried run's stream may have ended: follow it again
  }

  async rerunFrom() {
    const step = this.page.graph.selected;
    try {
      const result = await rerunRun(this.page.id, { from_step: step });
      showMessage(`${this.page.id} rerun from ${step} as ${result.id}`, "ok");
      location.href = runUrl(result.id);
    } catch (err) {
      showMessage(err);
    }
  }

  update() {
    this.bar.update(this.run());
    const sel = this.page.graph.selected;
    this.from.hidden = !sel;
    if (sel) this.from.textContent = `Rerun from ${sel}`;
  }
}
