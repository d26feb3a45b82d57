// Attempts as bars over time: one row per step, one bar per attempt. Bars are placed in
// seconds from the workflow's creation through CSS variables, so a growing time axis is
// one style change on the container, not a redraw of every bar.

export class Timeline {
  constructor(root, model, { onSelect }) {
    this.root = root;
    this.model = model;
    this.onSelect = onSelect;
    this.rows = new Map(); // step id -> {track, bars: Map(attempt -> el), mark}
    this.t0 = null; // the first attempt's start: a workflow created to start later
    // does not open its timeline with empty time
    this.span = 1;
  }

  draw(order) {
    const frag = document.createDocumentFragment();
    const axis = document.createElement("div");
    axis.className = "tl-axis";
    this.axisLabel = document.createElement("span");
    axis.append(document.createElement("span"), this.axisLabel);
    frag.append(axis);
    for (const id of order) {
      const row = document.createElement("div");
      row.className = "tl-row";
      row.dataset.step = id;
      const label = document.createElement("span");
      label.className = "tl-label";
      label.textContent = id;
      label.title = id;
      const track = document.createElement("span");
      track.className = "tl-track";
      row.append(label, track);
      row.addEventListener("click", () => this.onSelect(id));
      frag.append(row);
      this.rows.set(id, { row, track, bars: new Map(), mark: null });
    }
    this.root.replaceChildren(frag);
    for (const id of order) this.update(id);
    this.tick();
  }

  secs(t) { return (t - (this.t0 ?? t)) / 1000; }

  update(id) {
    const r = this.rows.get(id);
    const step = this.model.steps.get(id);
    if (!r || !step) return;
    for (const a of step.history.values()) {
      if (a.begun === null) continue;
      if (this.t0 === null) this.t0 = a.begun; // events come in order: the earliest
      let bar = r.bars.get(a.attempt);
      if (!bar) {
        bar = document.createElement("span");
        r.track.append(bar);
        r.bars.set(a.attempt, bar);
      }
      const outcome = a.outcome || (step.state === "retrying" ? "failed" : step.state);
      const cls = `tl-bar o-${outcome}`;
      if (bar.className !== cls) bar.className = cls;
      bar.style.setProperty("--b", this.secs(a.begun).toFixed(3));
      const end = a.ended ?? (STEP_DONE.has(step.state) ? a.begun : null);
      bar.dataset.open = end === null ? "1" : "";
      if (end !== null) bar.style.setProperty("--d", ((end - a.begun) / 1000).toFixed(3));
      bar.title = `${id} attempt ${a.attempt}: ${a.outcome || "under way"}`
        + (a.error ? ` (${a.error.code}: ${a.error.message})` : "");
      this.span = Math.max(this.span, this.secs(end ?? Date.now()));
    }
    if (step.state === "skipped" && !r.mark) {
      r.mark = document.createElement("span");
      r.mark.className = "tl-skip";
      r.mark.title = `${id} skipped${step.skipReason ? `: ${step.skipReason}` : ""}`;
      r.mark.style.setProperty("--b", this.secs(step.skippedAt ?? Date.parse(step.finished_at)
                                                ?? this.t0).toFixed(3));
      r.track.append(r.mark);
    }
  }

  // Once a second (and after each batch of events): stretch open bars and the axis.
  tick() {
    if (this.t0 === null) return;
    const live = !this.model.status.finished_at;
    const now = live ? Date.now() : Date.parse(this.model.status.finished_at);
    const nowS = this.secs(now);
    this.span = Math.max(this.span, nowS, 1);
    for (const r of this.rows.values()) {
      for (const bar of r.bars.values()) {
        if (bar.dataset.open === "1") {
          const b = Number(bar.style.getPropertyValue("--b"));
          bar.style.setProperty("--d", Math.max(0, nowS - b).toFixed(3));
        }
      }
    }
    const width = Math.max(100, (this.root.clientWidth || 800) - 170);
    this.root.style.setProperty("--pxs", (width / this.span).toFixed(4));
    this.axisLabel.textContent = `${this.span.toFixed(1)} s`;
  }
}

const STEP_DONE = new Set(["succeeded", "failed", "cancelled", "skipped"]);
