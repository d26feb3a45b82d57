// The run page: GET /workflows/{id} once, the graph laid out once, then the workflow's
// event stream (replayed from the first event, then live) applied event by event.
import { api, sse, showMessage } from "./api.js";
import { runUrl } from "./dom.js";
import { mountShell } from "./shell.js";
import { RunModel, WORKFLOW, WORKFLOW_TERMINAL, STEP_ACTIVE } from "./run-model.js";
import { RunGraph } from "./run-graph.js";
import { Timeline } from "./run-timeline.js";
import { EventLog } from "./run-log.js";
import { StepDetail, json } from "./run-detail.js";
import { RunActions } from "./run-actions.js";

const $ = (sel) => document.querySelector(sel);
const enc = encodeURIComponent;
const childHref = runUrl;

class RunPage {
  constructor(id) {
    this.id = id;
    this.queue = [];
    this.frame = 0;
    this.readAt = 0;
    this.reading = null;
    this.config = new Map();
    this.stats = { events: 0, batches: 0, maxBatchMs: 0, applyMs: 0 };
    window.natsflowRun = this; // for the browser tests and the curious
  }

  async start() {
    const t0 = performance.now();
    let status;
    try {
      status = await api(`/workflows/${enc(this.id)}`);
    } catch (err) {
      this.fatal(err.status === 404 ? `No workflow ${this.id} (or not one this key may see).`
        : `Could not read the workflow: ${err.message}`);
      return;
    }
    this.model = new RunModel(status);
    this.detail = new StepDetail($("#detail"), this.model, {
      childHref, configOf: (sid) => this.config.get(sid) });
    this.graph = new RunGraph($("#graph"), this.model, {
      childHref, onSelect: (sid) => this.selected(sid) });
    this.graph.draw();
    this.timeline = new Timeline($("#timeline"), this.model, {
      onSelect: (sid) => this.graph.select(sid) });
    this.timeline.draw(this.graph.readingOrder());
    this.log = new EventLog($("#log"), { onSelect: (sid) => this.graph.select(sid) });
    this.actions = new RunActions($("#actions"), this);
    this.header();
    this.detail.show(null);
    this.stats.firstPaintMs = performance.now() - t0;
    this.stats.layoutMs = this.graph.layoutMs;
    this.stats.drawMs = this.graph.drawMs;
    document.body.dataset.ready = "1";
    this.loadDefinition(status);
    setInterval(() => this.everySecond(), 1000);
    this.follow();
  }

  fatal(text) {
    $("#run-title").textContent = this.id;
    showMessage(text, "error");
  }

  // The step configs, when the workflow came from a stored definition (for its input).
  async loadDefinition(status) {
    if (!status.definition) return;
    try {
      const ns = status.namespace ? `?namespace=${enc(status.namespace)}` : "";
      const path = status.definition_version
        ? `/definitions/${enc(status.definition)}/versions/${status.definition_version}${ns}`
        : `/definitions/${enc(status.definition)}${ns}`;
      const def = await api(path);
      const cfg = def.config || def;
      for (const s of cfg.steps || []) this.config.set(s.id, s);
      if (this.graph.selected) this.detail.update(this.graph.selected);
    } catch { /* the page works without it */ }
  }

  // Events replayed from the first, then live; the shell's sse() resumes after the last
  // id seen when the connection drops, and stops when the server ends the stream (the
  // run's terminal event).
  follow() {
    this.stream = sse(`/workflows/${enc(this.id)}/events?after=0`, ({ data }) => {
      if (!data || typeof data !== "object") return;
      this.queue.push(data);
      this.schedule();
    }, {
      onOpen: () => this.setLive(true),
      onEnd: () => { this.ended = true; this.setLive(false); },
      onError: (err) => {
        this.setLive(false);
        if (err.status >= 400) showMessage(`The event stream was refused: ${err.message}`);
      },
    });
  }

  // After a retry (or resume) from this page: a stream that had ended goes on.
  refollow() {
    if (!this.ended) return;
    this.ended = false;
    const after = this.model.events.length ? this.model.events.at(-1).seq : 0;
    this.stream = sse(`/workflows/${enc(this.id)}/events?after=${after}`, ({ data }) => {
      if (!data || typeof data !== "object") return;
      this.queue.push(data);
      this.schedule();
    }, { onOpen: () => this.setLive(true),
         onEnd: () => { this.ended = true; this.setLive(false); } });
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  // Apply every queued event, then touch only the nodes they changed.
  flush() {
    this.frame = 0;
    const t0 = performance.now();
    const batch = this.queue;
    this.queue = [];
    const changed = new Set();
    for (const ev of batch) for (const c of this.model.apply(ev)) changed.add(c);
    this.render(changed);
    this.log.append(batch);
    this.setLive(!WORKFLOW_TERMINAL.has(this.model.state));
    const ms = performance.now() - t0;
    this.stats.events += batch.length;
    this.stats.batches += 1;
    this.stats.applyMs += ms;
    this.stats.maxBatchMs = Math.max(this.stats.maxBatchMs, ms);
    document.body.dataset.seq = String(this.model.appliedSeq);
    document.body.dataset.state = this.model.state;
    if (this.model.needsRead || [...changed].some((c) => this.model.steps.get(c)?.kind === "map")) {
      this.read();
    }
    if (WORKFLOW_TERMINAL.has(this.model.state)) this.read(); // the final word, once
  }

  render(changed) {
    for (const c of changed) {
      if (c === WORKFLOW) continue;
      this.graph.update(c);
      this.timeline.update(c);
      this.detail.update(c);
    }
    if (changed.has(WORKFLOW)) this.header();
    if (changed.size) this.actions.update(); // its dialogs read the run as it is now
    this.timeline.tick();
  }

  // A status read, at most once a second: for what events do not carry (a map's running
  // items, heartbeats, a retry's reset steps). Taken only when at least as new as the
  // events applied, so it never moves a node backwards.
  read() {
    if (this.reading) { this.readAgain = true; return; }
    const wait = Math.max(0, this.readAt + 1000 - Date.now());
    this.reading = new Promise((r) => setTimeout(r, wait)).then(async () => {
      this.readAt = Date.now();
      try {
        const status = await api(`/workflows/${enc(this.id)}`);
        if ((status.last_seq || 0) >= this.model.appliedSeq) {
          this.model.needsRead = false;
          this.render(this.model.reset(status));
        } else {
          this.readAgain = true;
        }
      } catch { /* next time */ }
      this.reading = null;
      if (this.readAgain) { this.readAgain = false; this.read(); }
    });
  }

  everySecond() {
    this.timeline.tick();
    const sel = this.graph.selected && this.model.steps.get(this.graph.selected);
    if (sel && STEP_ACTIVE.has(sel.state)) this.read(); // its heartbeats and progress
  }

  selected(sid) {
    this.detail.show(sid);
    this.actions.update();
    for (const r of document.querySelectorAll(".tl-row.selected")) r.classList.remove("selected");
    if (sid) document.querySelector(`.tl-row[data-step="${CSS.escape(sid)}"]`)?.classList.add("selected");
  }

  setLive(on) {
    const b = $("#live");
    b.textContent = on ? "live" : WORKFLOW_TERMINAL.has(this.model.state) ? "finished" : "reconnecting";
    b.className = `nf-live${on ? " nf-on" : ""}`;
  }

  header() {
    const s = this.model.status;
    document.title = `${s.id} · natsflow`;
    $("#run-title").textContent = s.id;
    const st = $("#run-state");
    st.textContent = s.state;
    st.className = `nf-state nf-state-${s.state}`;
    const facts = [["name", s.name], ["namespace", s.namespace],
                   ["created", s.created_at], ["finished", s.finished_at || "—"],
                   ["runs", String(s.runs || 1)], ["steps", String(s.steps.length)]];
    if (s.definition) facts.push(["definition", `${s.definition} v${s.definition_version ?? "?"}`]);
    if (s.batch_id) facts.push(["batch", s.batch_id]);
    const dl = $("#run-facts");
    dl.replaceChildren();
    for (const [k, v] of facts) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
    const links = [];
    if (s.parent) links.push([`parent: ${s.parent.workflow_id}`, childHref(s.parent.workflow_id)]);
    if (s.rerun_of) links.push([`rerun of ${s.rerun_of}`, childHref(s.rerun_of)]);
    const nav = $("#run-links");
    nav.replaceChildren(...links.map(([t, href]) => {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = t;
      return a;
    }));
    $("#run-input").textContent = json(s.input);
    const err = $("#run-error");
    err.hidden = !s.error;
    if (s.error) err.textContent = `${s.error.code}: ${s.error.message}`;
    const out = $("#run-output");
    out.hidden = s.output === null || s.output === undefined;
    if (!out.hidden) out.textContent = json(s.output);
  }
}

mountShell("runs");
const id = new URLSearchParams(location.search).get("id");
if (!id) {
  showMessage("No workflow id: open run.html?id=<workflow id>.");
} else {
  new RunPage(id).start();
}
