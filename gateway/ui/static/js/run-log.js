// The live event log: one row per event, appended in batches; only the newest rows stay
// in the page (the rest are counted), so a long run does not grow the DOM without end.

const KEEP = 1500;

function summary(ev) {
  const d = ev.data || {};
  if (d.error) return `${d.error.code}: ${d.error.message}`;
  if (d.item_failed) return `item ${d.item_failed.item} failed: ${d.item_failed.error?.message ?? ""}`;
  if (d.item !== undefined && d.error) return `item ${d.item}: ${d.error.message}`;
  if (d.progress !== undefined) return `progress ${JSON.stringify(d.progress)}`;
  if (d.reason) return d.reason;
  if (d.signal) return `signal ${d.signal}`;
  if (d.child) return `child ${d.child}`;
  if (ev.type === "signal.received") return `signal ${d.name}${d.kept ? " (kept)" : ""}`;
  if (ev.type === "workflow.retried") return `run ${d.run}: ${(d.steps || []).join(", ")}`;
  if (d.items !== undefined) return `${d.items} items`;
  if (d.output !== undefined) {
    const s = JSON.stringify(d.output);
    return `output ${s.length > 120 ? `${s.slice(0, 119)}…` : s}`;
  }
  return "";
}

export class EventLog {
  constructor(root, { onSelect }) {
    this.root = root;
    this.onSelect = onSelect;
    this.count = 0;
    this.hidden = 0;
    this.note = document.createElement("div");
    this.note.className = "log-note";
    this.list = document.createElement("div");
    this.list.className = "log-rows";
    root.replaceChildren(this.note, this.list);
  }

  append(events) {
    if (!events.length) return;
    const stick = this.root.scrollTop + this.root.clientHeight >= this.root.scrollHeight - 8;
    const frag = document.createDocumentFragment();
    for (const ev of events) {
      const row = document.createElement("div");
      row.className = `log-row t-${ev.type.replace(".", "-")}`;
      row.dataset.seq = ev.seq;
      const cells = [String(ev.seq), ev.time.slice(11, 23), ev.type,
                     ev.step_id ? `${ev.step_id}${ev.attempt ? ` #${ev.attempt}` : ""}` : "",
                     summary(ev)];
      for (const c of cells) {
        const span = document.createElement("span");
        span.textContent = c;
        row.append(span);
      }
      if (ev.step_id) row.addEventListener("click", () => this.onSelect(ev.step_id));
      frag.append(row);
    }
    this.list.append(frag);
    this.count += events.length;
    while (this.list.childElementCount > KEEP) {
      this.list.firstElementChild.remove();
      this.hidden += 1;
    }
    this.note.textContent = this.hidden ? `${this.hidden} earlier events not shown` : "";
    if (stick) this.root.scrollTop = this.root.scrollHeight;
  }
}
