// What a person can do to a run, with the API's own rules: the buttons of the runs list
// and of the run page. Every refusal (409 already-finished, invalid-state...) is shown
// as a message, as the API words it.
//
//   import { actionBar, stopRun } from "./actions.js";
//   container.append(actionBar(status, { onDone: (result, action) => refresh() }));
//   await stopRun("order_42");          // the WorkflowStatus; throws ApiError

import { api, showMessage } from "./api.js";
import { openDialog, parseJsonField } from "./dialog.js";
import { el, runUrl, TERMINAL } from "./dom.js";

const path = (id, what) => `/workflows/${encodeURIComponent(id)}/${what}`;

export const stopRun = (id) => api(path(id, "stop"), { method: "POST" });
export const pauseRun = (id) => api(path(id, "pause"), { method: "POST" });
export const resumeRun = (id) => api(path(id, "resume"), { method: "POST" });
export const startRun = (id) => api(path(id, "start"), { method: "POST" });
/** Retry a failed or stopped run; `inputs`: {step id: new input} for retried steps. */
export const retryRun = (id, inputs) =>
  api(path(id, "retry"), { method: "POST", body: inputs && Object.keys(inputs).length ? { inputs } : {} });
/** A new run of the same config: {input, from_step, new_id}, each optional. */
export const rerunRun = (id, { input, from_step, new_id } = {}) => {
  const body = {};
  if (input !== undefined) body.input = input;
  if (from_step) body.from_step = from_step;
  if (new_id) body.new_id = new_id;
  return api(path(id, "rerun"), { method: "POST", body });
};
/** Send the signal `name` with a JSON `payload` (undefined: none). */
export const signalRun = (id, name, payload) =>
  api(path(id, `signals/${encodeURIComponent(name)}`), { method: "POST", body: payload });

/** Which actions fit a state (the others are still offered: the API has the last word). */
export function likelyActions(state) {
  if (state === "created") return ["start", "stop"];
  if (state === "running") return ["pause", "stop", "signal"];
  if (state === "paused") return ["resume", "stop", "signal"];
  if (state === "stopping" || state === "compensating") return [];
  if (state === "failed" || state === "stopped") return ["retry", "rerun"];
  if (state === "completed") return ["rerun"];
  return [];
}

const stepIds = (run) => (run.steps || []).map((s) => s.id);
const waitingSignals = (run) => (run.steps || [])
  .filter((s) => s.state === "waiting" && s.signal).map((s) => s.signal);

const textarea = (name, value) => el("textarea", { name, spellcheck: "false" },
  value === undefined ? "" : JSON.stringify(value, null, 2));

async function retryDialog(run) {
  const failed = (run.steps || []).filter((s) => !["succeeded", "skipped"].includes(s.state));
  return openDialog({
    id: "nf-retry-dialog", title: `Retry ${run.id}`, submitLabel: "Retry",
    intro: "Runs the unfinished steps again; steps that succeeded keep their output. "
         + "Override the input of retried steps as {\"<step id>\": {...}} (optional).",
    fields: [el("label", {}, "Input overrides",
      textarea("inputs", Object.fromEntries(failed.filter((s) => s.input !== undefined)
        .map((s) => [s.id, s.input]))))],
    onSubmit: (form) => retryRun(run.id, parseJsonField(form.inputs.value, "inputs", { emptyAs: {} })),
  });
}

async function rerunDialog(run) {
  const select = el("select", { name: "from_step" }, el("option", { value: "" }, "(all steps)"),
                    stepIds(run).map((id) => el("option", { value: id }, id)));
  return openDialog({
    id: "nf-rerun-dialog", title: `Rerun ${run.id}`, submitLabel: "Rerun",
    intro: "A new run of the same config. From a step: only it and the steps after it run; "
         + "the others reuse their outputs.",
    fields: [
      el("label", {}, "From step", select),
      el("label", {}, "Input (JSON; empty: the same input)", textarea("input", run.input)),
      el("label", {}, "New id (optional)", el("input", { name: "new_id", autocomplete: "off" })),
    ],
    onSubmit: (form) => rerunRun(run.id, {
      input: parseJsonField(form.input.value, "input", { emptyAs: undefined }),
      from_step: form.from_step.value || undefined,
      new_id: form.new_id.value.trim() || undefined,
    }),
  });
}

async function signalDialog(run) {
  const names = waitingSignals(run);
  const list = el("datalist", { id: "nf-signal-names" }, names.map((n) => el("option", { value: n })));
  return openDialog({
    id: "nf-signal-dialog", title: `Signal ${run.id}`, submitLabel: "Send",
    intro: "A wait step waiting for this signal takes it at once, with the payload as its "
         + "output; otherwise the signal is kept until one starts.",
    fields: [
      el("label", {}, "Signal name", el("input", { name: "name", required: true, list: "nf-signal-names",
        value: names[0] || "", pattern: "[A-Za-z0-9_\\-]+", autocomplete: "off" }), list),
      el("label", {}, "Payload (JSON, optional)", textarea("payload", undefined)),
    ],
    onSubmit: (form) => signalRun(run.id, form.name.value.trim(),
      parseJsonField(form.payload.value, "payload", { emptyAs: undefined })),
  });
}

const ACTIONS = {
  start: { label: "Start", run: (r) => startRun(r.id), done: "started" },
  pause: { label: "Pause", run: (r) => pauseRun(r.id), done: "paused" },
  resume: { label: "Resume", run: (r) => resumeRun(r.id), done: "resumed" },
  stop: { label: "Stop", run: (r) => stopRun(r.id), done: "stopping", danger: true },
  retry: { label: "Retry…", run: retryDialog, done: "retried" },
  rerun: { label: "Rerun…", run: rerunDialog, done: "rerun as" },
  signal: { label: "Signal…", run: signalDialog, done: "signal sent to" },
};

/**
 * Do `action` (a key of ACTIONS) to `run` ({id, state, steps?, input?}); shows the
 * outcome as a message. Resolves with the API's answer, or null (cancelled or refused).
 */
export async function runAction(action, run) {
  const spec = ACTIONS[action];
  try {
    const result = await spec.run(run);
    if (result === null) return null;  // a dialog was cancelled
    const newId = action === "rerun" && result && result.id;
    showMessage(newId ? `${run.id} rerun as ${newId}` : `${run.id}: ${spec.done}`, "ok");
    return result;
  } catch (err) {
    showMessage(err);
    return null;
  }
}

/**
 * The buttons for a run: every action, those that fit its state first and marked.
 * Options: onDone(result, action) after a success; only: a list of action names.
 */
export function actionBar(run, { onDone, only } = {}) {
  const names = only || ["start", "pause", "resume", "stop", "retry", "rerun", "signal"];
  const bar = el("span", { class: "nf-actions", dataset: { workflowId: run.id } });
  const render = (current) => {
    const fit = likelyActions(current.state);
    bar.replaceChildren(...names
      .filter((n) => n !== "start" || current.state === "created")
      .map((name) => {
        const spec = ACTIONS[name];
        const button = el("button", {
          type: "button", dataset: { action: name },
          class: [fit.includes(name) ? "nf-fit" : "nf-unfit", spec.danger ? "nf-danger" : ""].join(" "),
          title: fit.includes(name) ? "" : `${current.state}: the API will probably refuse this`,
        }, spec.label);
        button.addEventListener("click", async (e) => {
          e.stopPropagation();
          button.disabled = true;
          try {
            const result = await runAction(name, current);
            if (result) {
              if (name === "rerun" && result.id && result.id !== current.id && !onDone) {
                location.href = runUrl(result.id);
              }
              onDone?.(result, name);
            }
          } finally {
            button.disabled = false;
          }
        });
        return button;
      }));
  };
  render(run);
  bar.update = render;  // bar.update(newStatus): re-render for a new state
  return bar;
}
