// The run page's calls to the public API: JSON reads and the workflow's event stream.
// Stands until the shell's api.js lands; then these delegate to it.

const KEY = "natsflow.apiKey";

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

export async function getJSON(path) {
  const resp = await fetch(path, { headers: headers({ Accept: "application/json" }) });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    const err = new Error((body && (body.detail || body.title)) || `HTTP ${resp.status}`);
    err.status = resp.status;
    err.problem = body;
    throw err;
  }
  return body;
}

// Server-Sent Events over fetch (so the API key can travel in a header). Calls
// onEvent(type, data, id) per message; resolves when the server ends the stream.
export async function sse(path, onEvent, { signal } = {}) {
  const resp = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!resp.ok) {
    const body = await resp.json().catch(() => null);
    const err = new Error((body && body.detail) || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const frame = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let id = null, type = "message", data = "";
      for (const line of frame.split("\n")) {
        if (line.startsWith(":")) continue;
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        const val = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
        if (field === "id") id = val;
        else if (field === "event") type = val;
        else if (field === "data") data += (data ? "\n" : "") + val;
      }
      if (data) onEvent(type, data, id);
    }
  }
}

// POST a JSON body; resolves to {ok, status, body} (a problem document when not ok).
export async function postJSON(path, body) {
  const init = { method: "POST", headers: headers({ Accept: "application/json" }) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  return { ok: resp.ok, status: resp.status, body: await resp.json().catch(() => null) };
}
