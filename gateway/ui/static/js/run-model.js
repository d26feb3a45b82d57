// What the run page knows of one workflow: its status (GET /workflows/{id}) brought up to
// date by its events, one at a time. No DOM here: the views ask which steps changed.

export const WORKFLOW_TERMINAL = new Set(["completed", "failed", "stopped"]);
export const STEP_ACTIVE = new Set(["dispatched", "running", "waiting", "retrying"]);
export const WORKFLOW = "*"; // the "step id" of changes to the workflow itself

const time = (iso) => (iso ? Date.parse(iso) : null);

// One attempt of a step as the events tell it (the status keeps only the last one).
function attemptOf(step, n) {
  let a = step.history.get(n);
  if (!a) {
    a = { attempt: n, begun: null, started: null, ended: null, outcome: null, error: null };
    step.history.set(n, a);
  }
  return a;
}

function freshMap(total) {
  return { total, next: 0, running: {}, retrying: {}, succeeded: 0, failed: [], errors: [],
           joining: false };
}

export class RunModel {
  constructor(status) {
    this.steps = new Map();
    this.order = [];
    this.reset(status);
    this.events = [];
  }

  // Take a status read as the truth (the first, or one at least as new as the events).
  reset(status) {
    this.status = status;
    this.snapshotSeq = status.last_seq || 0;
    this.appliedSeq = Math.max(this.appliedSeq || 0, this.snapshotSeq);
    const changed = new Set([WORKFLOW]);
    for (const s of status.steps) {
      const old = this.steps.get(s.id);
      const step = { ...s, history: old ? old.history : new Map(),
                     signal: old ? old.signal : null, skipReason: old ? old.skipReason : null,
                     failedAttempts: old ? old.failedAttempts : 0 };
      if (!old) this.order.push(s.id);
      if (!old || sameLook(old, step) === false) changed.add(s.id);
      this.steps.set(s.id, step);
    }
    return changed;
  }

  get state() { return this.status.state; }

  // Apply one event; returns the ids of what changed (WORKFLOW for the workflow).
  // Events up to the status read's seq only add history: their effect is in the read.
  apply(ev) {
    this.events.push(ev);
    const changed = new Set();
    const live = ev.seq > this.appliedSeq;
    if (live) this.appliedSeq = ev.seq;
    const t = time(ev.time);
    const d = ev.data || {};
    if (ev.step_id && this.steps.has(ev.step_id)) {
      const step = this.steps.get(ev.step_id);
      this.history(step, ev, t, d);
      if (live) this.stepEvent(step, ev, d);
      changed.add(step.id);
    } else if (ev.type.startsWith("workflow.")) {
      if (live) this.workflowEvent(ev, d);
      changed.add(WORKFLOW);
    }
    return changed;
  }

  history(step, ev, t, d) {
    const n = ev.attempt;
    switch (ev.type) {
      case "step.dispatched":
        attemptOf(step, n).begun = t;
        break;
      case "step.started": {
        const a = attemptOf(step, n);
        if (a.begun === null) a.begun = t;
        a.started = t;
        break;
      }
      case "step.waiting": {
        const a = attemptOf(step, n);
        if (a.begun === null) a.begun = t;
        if (d.signal) step.signal = d.signal;
        if (d.child) step.child = d.child;
        break;
      }
      case "step.retrying":
      case "step.succeeded":
      case "step.failed":
      case "step.cancelled": {
        if (d.item !== undefined || n === null || n === undefined) break; // a map's item
        const a = attemptOf(step, n);
        if (a.begun === null) a.begun = t;
        a.ended = t;
        a.outcome = ev.type === "step.retrying" ? "failed" : ev.type.slice(5);
        a.error = d.error || null;
        if (ev.type === "step.retrying" || ev.type === "step.failed") step.failedAttempts += 1;
        break;
      }
      case "step.skipped":
        step.skipReason = d.reason || null;
        step.skippedAt = t;
        break;
      default:
    }
  }

  stepEvent(step, ev, d) {
    const m = step.map;
    switch (ev.type) {
      case "step.dispatched":
        step.state = "dispatched";
        step.attempts = Math.max(step.attempts, ev.attempt || 0);
        step.dispatched_at = ev.time;
        step.waiting_for_worker = null;
        break;
      case "step.started":
        step.state = "running";
        step.started_at = ev.time;
        step.waiting_for_worker = null;
        if (step.kind === "map" && d.items !== undefined) {
          step.attempts = Math.max(step.attempts, ev.attempt || 0);
          step.map = freshMap(d.items);
        }
        break;
      case "step.progress":
        if (d.progress !== undefined) step.progress = d.progress;
        if (m && d.progress && typeof d.progress.done === "number") {
          m.succeeded = Math.max(m.succeeded, d.progress.done - (d.progress.failed || 0));
          m.next = Math.max(m.next, d.progress.done);
        }
        if (m && d.item_failed) {
          const i = d.item_failed.item;
          if (!m.failed.includes(i)) m.failed.push(i);
          delete m.running[String(i)];
          delete m.retrying[String(i)];
          if (d.item_failed.error && m.errors.length < 10) {
            m.errors.push({ ...d.item_failed.error, step: `${step.id}[${i}]` });
          }
        }
        break;
      case "step.retrying":
        if (d.item !== undefined) {
          if (m) m.retrying[String(d.item)] = d.next_attempt;
          break;
        }
        step.state = "retrying";
        step.error = d.error || step.error;
        break;
      case "step.waiting":
        step.state = "waiting";
        step.attempts = Math.max(step.attempts, ev.attempt || 0);
        if (d.child) step.child_id = d.child;
        if (d.until) step.wake_at = d.until;
        break;
      case "step.waiting_for_worker":
        step.waiting_for_worker = d.reason || "unknown";
        break;
      case "step.succeeded":
        step.state = "succeeded";
        step.output = d.output;
        step.error = null;
        step.finished_at = ev.time;
        if (m) {
          m.succeeded = m.total - m.failed.length;
          m.next = m.total;
          m.running = {};
          m.retrying = {};
        }
        break;
      case "step.failed":
        step.state = "failed";
        step.error = d.error || step.error;
        step.finished_at = ev.time;
        if (m) { m.running = {}; m.retrying = {}; }
        break;
      case "step.cancelled":
        step.state = "cancelled";
        if (d.error) step.error = d.error;
        step.finished_at = ev.time;
        if (m) { m.running = {}; m.retrying = {}; }
        break;
      case "step.skipped":
        step.state = "skipped";
        step.finished_at = ev.time;
        break;
      default:
    }
  }

  workflowEvent(ev, d) {
    const s = this.status;
    switch (ev.type) {
      case "workflow.started": s.state = "running"; s.started_at = ev.time; break;
      case "workflow.resumed": s.state = "running"; break;
      case "workflow.paused": s.state = "paused"; break;
      case "workflow.stopping": s.state = "stopping"; break;
      case "workflow.compensating": s.state = "compensating"; break;
      case "workflow.completed":
        s.state = "completed"; s.output = d.output; s.finished_at = ev.time; break;
      case "workflow.failed":
        s.state = "failed"; s.error = d.error || s.error; s.finished_at = ev.time; break;
      case "workflow.stopped": s.state = "stopped"; s.finished_at = ev.time; break;
      case "workflow.retried":
        s.state = "running"; s.runs = d.run || s.runs; s.finished_at = null;
        this.needsRead = true; // which steps go again, and how, is in the status
        break;
      default:
    }
  }

  // The map items' states, derived exactly from the map's progress record.
  itemState(step, i) {
    const m = step.map;
    const k = String(i);
    if (m.running[k] !== undefined) return "running";
    if (m.retrying[k] !== undefined) return "retrying";
    if (m.failed.includes(i)) return "failed";
    if (i >= m.next) return step.state === "cancelled" || step.state === "failed"
      ? "cancelled" : "pending";
    return "succeeded";
  }
}

// Whether two versions of a step look the same on the graph.
function sameLook(a, b) {
  if (a.state !== b.state || a.attempts !== b.attempts || a.child_id !== b.child_id
      || a.waiting_for_worker !== b.waiting_for_worker) return false;
  const ma = a.map, mb = b.map;
  if (!ma !== !mb) return false;
  if (ma && (ma.total !== mb.total || ma.succeeded !== mb.succeeded
             || ma.failed.length !== mb.failed.length
             || Object.keys(ma.running).length !== Object.keys(mb.running).length)) {
    return false;
  }
  return JSON.stringify(a.progress) === JSON.stringify(b.progress);
}

export function mapCounts(step) {
  const m = step.map;
  if (!m) return null;
  const failed = m.failed.length;
  const running = Object.keys(m.running).length;
  const retrying = Object.keys(m.retrying).length;
  return { total: m.total, done: m.succeeded, failed, running, retrying,
           pending: Math.max(0, m.total - m.succeeded - failed - running - retrying) };
}
