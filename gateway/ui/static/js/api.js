// The one way the UI talks to natsflow: the public REST API and its Server-Sent Events.
//
//   import { api, sse, qs, ApiError, showMessage } from "./api.js";
//   const page = await api("/workflows" + qs({ state: ["running"], limit: 50 }));
//   await api(`/workflows/${id}/stop`, { method: "POST" });          // throws ApiError
//   const stream = sse("/events", (ev) => ..., { lastEventId: 0 });  // stream.close()
//
// With API keys on, a 401 asks for a key once (a dialog), keeps it in sessionStorage
// (this tab only) and sends it as `Authorization: Bearer <key>` on every request, SSE
// included: EventSource cannot send headers, so streams are read with fetch() and a
// ReadableStream parser. Problem documents (RFC 9457) become ApiError with their title,
// detail and code, ready to be shown as a message.

const KEY_STORAGE = "natsflow.apiKey";

/** An answer that is not 2xx: `status`, `code` and the problem document, if any. */
export class ApiError extends Error {
  constructor(status, problem, fallback) {
    const detail = problem && (problem.detail || problem.title);
    super(detail ? `${status} ${problem.title || ""}: ${detail}`.replace(" : ", ": ")
                 : `${status} ${fallback || "request failed"}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem || null;
    this.code = (problem && problem.code) || null;
  }
}

// -- the API key ------------------------------------------------------------------

export function getKey() {
  try { return sessionStorage.getItem(KEY_STORAGE); } catch { return null; }
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  document.dispatchEvent(new CustomEvent("natsflow:key", { detail: { present: !!key } }));
}

export function clearKey() { setKey(null); }

let pendingPrompt = null;

/**
 * Ask the person for an API key (one dialog however many requests are waiting).
 * Resolves with the key, or null when the dialog was cancelled.
 */
export function askForKey(reason) {
  if (pendingPrompt) return pendingPrompt;
  pendingPrompt = new Promise((resolve) => {
    const dialog = document.createElement("dialog");
    dialog.id = "nf-key-dialog";
    dialog.className = "nf-dialog";
    dialog.innerHTML = `
      <form method="dialog">
        <h2>API key</h2>
        <p class="nf-muted"></p>
        <label>Key <input name="key" type="password" autocomplete="off"
               placeholder="nfk_..." required autofocus></label>
        <p class="nf-small nf-muted">Kept for this browser tab only (sessionStorage).
           Make one with <code>natsflow keys create</code>.</p>
        <menu>
          <button type="button" value="cancel" data-role="cancel">Cancel</button>
          <button type="submit" value="ok" class="nf-primary">Use key</button>
        </menu>
      </form>`;
    dialog.querySelector("p").textContent = reason || "This natsflow gateway needs an API key.";
    const input = dialog.querySelector("input");
    const finish = (key) => {
      dialog.close();
      dialog.remove();
      pendingPrompt = null;
      if (key) setKey(key);
      resolve(key);
    };
    dialog.querySelector("form").addEventListener("submit", (e) => {
      e.preventDefault();
      finish(input.value.trim() || null);
    });
    dialog.querySelector("[data-role=cancel]").addEventListener("click", () => finish(null));
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); finish(null); });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
  return pendingPrompt;
}

function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = getKey();
  if (key && !headers.has("Authorization")) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

async function readProblem(resp) {
  const type = resp.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try { return await resp.json(); } catch { return null; }
  }
  return null;
}

/** Whether a 401 should prompt: the key is missing or no good (not a mere 403). */
async function promptAfter401(resp) {
  const problem = await readProblem(resp);
  const had = !!getKey();
  if (had) clearKey();
  const key = await askForKey(had ? "The API key was refused (unknown, revoked or expired). "
                                    + "Give another one."
                                  : (problem && problem.detail) || undefined);
  return { key, problem };
}

// -- requests ---------------------------------------------------------------------

/**
 * A query string from an object: empty values are left out, arrays repeat the name.
 * qs({state: ["running", "failed"], name: ""}) === "?state=running&state=failed"
 */
export function qs(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== undefined && v !== null && v !== "") search.append(name, String(v));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * Call the API. `body` (any JSON value) is sent as JSON. Resolves with the parsed JSON
 * answer (null when empty); throws ApiError for any status that is not 2xx, after
 * asking for a key once on a 401.
 */
export async function api(path, { method = "GET", body, headers, signal } = {}) {
  const init = { method, headers: authHeaders(headers), signal };
  if (body !== undefined) {
    init.headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, null, `the gateway is not reachable (${err.message})`);
  }
  if (resp.status === 401) {
    // Asked again as long as the person gives keys: each try waits for them.
    const { key, problem } = await promptAfter401(resp);
    if (!key) throw new ApiError(401, problem, "an API key is needed");
    return api(path, { method, body, headers, signal });
  }
  if (!resp.ok) throw new ApiError(resp.status, await readProblem(resp), resp.statusText);
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

// -- Server-Sent Events -----------------------------------------------------------

/**
 * Parse an SSE byte stream. Calls onMessage({id, type, data}) for each message
 * (`data` is the raw text); comments (keep-alives) are skipped.
 */
export async function readSse(body, onMessage, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let msg = { id: null, type: "message", data: [] };
  const dispatch = () => {
    if (msg.data.length) onMessage({ id: msg.id, type: msg.type, data: msg.data.join("\n") });
    msg = { id: msg.id, type: "message", data: [] };
  };
  try {
    for (;;) {
      if (signal && signal.aborted) return;
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer[nl] === "\r" && buffer[nl + 1] === "\n" ? 2 : 1));
        if (line === "") { dispatch(); continue; }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") msg.data.push(value);
        else if (field === "event") msg.type = value;
        else if (field === "id") msg.id = value;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * Follow an SSE route of the API: `onEvent({id, type, data})` for each message, `data`
 * parsed from JSON. Reconnects (sending `Last-Event-ID`) when the connection drops;
 * a stream the server ends (a workflow's events after its terminal event) calls
 * `onEnd` and stays closed unless `reconnect: "always"`.
 *
 * Options: lastEventId (resume after it), onOpen(), onEnd(), onError(ApiError),
 * reconnect ("drop": after a dropped connection only, the default; "always"; "never").
 * Returns { close(), get lastEventId() }.
 */
export function sse(path, onEvent, options = {}) {
  const { onOpen, onEnd, onError, reconnect = "drop" } = options;
  let lastEventId = options.lastEventId ?? null;
  let closed = false;
  let controller = null;
  let delay = 500;

  const run = async () => {
    while (!closed) {
      controller = new AbortController();
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastEventId !== null && lastEventId !== undefined) {
        headers.set("Last-Event-ID", String(lastEventId));
      }
      let ended = false;
      try {
        const resp = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
        if (resp.status === 401) {
          const { key, problem } = await promptAfter401(resp);
          if (!key) { closed = true; onError?.(new ApiError(401, problem, "an API key is needed")); return; }
          continue;
        }
        if (!resp.ok) {
          const err = new ApiError(resp.status, await readProblem(resp), resp.statusText);
          onError?.(err);
          if (resp.status >= 400 && resp.status < 500) { closed = true; return; }
        } else {
          delay = 500;
          onOpen?.();
          await readSse(resp.body, (msg) => {
            if (msg.id !== null) lastEventId = msg.id;
            let data = msg.data;
            try { data = JSON.parse(msg.data); } catch { /* not JSON: kept as text */ }
            onEvent({ id: msg.id, type: msg.type, data });
          }, controller.signal);
          ended = true;
        }
      } catch (err) {
        if (closed || err.name === "AbortError") return;
        onError?.(new ApiError(0, null, `event stream interrupted (${err.message})`));
      }
      if (closed) return;
      if (ended && reconnect !== "always") { closed = true; onEnd?.(); return; }
      if (reconnect === "never") { closed = true; onEnd?.(); return; }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  };
  run();
  return {
    close() { closed = true; controller?.abort(); },
    get lastEventId() { return lastEventId; },
  };
}

// -- messages ---------------------------------------------------------------------

/**
 * Show a message in the page's message area (top right): kind "error", "ok" or "info".
 * Errors stay until closed; others go after a few seconds. Accepts an Error too.
 */
export function showMessage(message, kind = "error") {
  const text = message instanceof Error ? message.message : String(message);
  let area = document.getElementById("nf-messages");
  if (!area) {
    area = document.createElement("div");
    area.id = "nf-messages";
    area.setAttribute("aria-live", "polite");
    document.body.append(area);
  }
  const item = document.createElement("div");
  item.className = `nf-message nf-message-${kind}`;
  item.setAttribute("role", kind === "error" ? "alert" : "status");
  const span = document.createElement("span");
  span.textContent = text;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "nf-message-close";
  close.setAttribute("aria-label", "dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => item.remove());
  item.append(span, close);
  area.append(item);
  if (kind !== "error") setTimeout(() => item.remove(), 4000);
  return item;
}
