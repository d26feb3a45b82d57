// The run page's action bar: stop, pause, resume, retry, rerun from the chosen step, and a
// signal with a JSON payload to a waiting step. Every button is one API call; the API
// decides, and a refusal (409 and the like) is shown as the message it sends.
import { postJSON } from "./run-http.js";

const enc = encodeURIComponent;

export class RunActions {
  constructor(root, page) {
    this.root = root;
    this.page = page;
    const base = `/workflows/${enc(page.id)}`;
    this.buttons = {};
    const add = (name, label, run) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.dataset.action = name;
      b.addEventListener("click", () => this.run(label, run));
      this.buttons[name] = b;
      root.append(b);
    };
    add("stop", "Stop", () => postJSON(`${base}/stop`));
    add("pause", "Pause", () => postJSON(`${base}/pause`));
    add("resume", "Resume", () => postJSON(`${base}/resume`));
    add("retry", "Retry", () => postJSON(`${base}/retry`));
    add("rerun", "Rerun", () => {
      const step = page.graph.selected;
      return postJSON(`${base}/rerun`, step ? { from_step: step } : {});
    });
    const form = document.createElement("form");
    form.className = "signal";
    form.innerHTML = `<input name="name" placeholder="signal name" aria-label="signal name">
      <textarea name="payload" rows="1" placeholder='{"payload": "JSON"}'
        aria-label="signal payload"></textarea>
      <button type="submit" data-action="signal">Signal</button>`;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const name = form.elements.name.value.trim();
      const text = form.elements.payload.value.trim();
      let payload;
      try {
        payload = text ? JSON.parse(text) : undefined;
      } catch (err) {
        this.say(`The payload is not JSON: ${err.message}`, true);
        return;
      }
      if (!name) { this.say("Name the signal to send.", true); return; }
      this.run(`Signal ${name}`, () => postJSON(`${base}/signals/${enc(name)}`, payload));
    });
    this.form = form;
    root.append(form);
  }

  async run(label, call) {
    this.say(`${label}…`, false);
    let res;
    try {
      res = await call();
    } catch (err) {
      this.say(`${label}: ${err.message}`, true);
      return;
    }
    if (res.ok) {
      const newId = res.body && res.body.id !== this.page.id ? res.body.id : null;
      this.say(`${label}: done (${res.status})`, false, newId);
    } else {
      const p = res.body || {};
      this.say(`${label} refused (${res.status}${p.code ? ` ${p.code}` : ""}): `
        + `${p.detail || p.title || "no detail"}`, true);
    }
  }

  say(text, isError, newId = null) {
    const p = document.querySelector("#message");
    p.textContent = text;
    p.className = `message ${isError ? "error" : "ok"}`;
    if (newId) {
      const a = document.createElement("a");
      a.href = `run.html?id=${enc(newId)}`;
      a.textContent = ` open ${newId}`;
      p.append(a);
    }
  }

  // Rerun names the chosen step; a waiting wait step fills in the signal's name.
  update() {
    const sel = this.page.graph.selected;
    const step = sel && this.page.model.steps.get(sel);
    this.buttons.rerun.textContent = step ? `Rerun from ${step.id}` : "Rerun";
    if (step && step.signal && step.state === "waiting" && !this.form.elements.name.value) {
      this.form.elements.name.value = step.signal;
    }
  }
}
