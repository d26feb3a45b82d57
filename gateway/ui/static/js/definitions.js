// Definitions (definitions.html): every stored definition; one definition's versions,
// a diff between two of them, and "Run" with a form made from its input JSON Schema.
//   /ui/definitions.html                          the list
//   /ui/definitions.html?name=greet&namespace=a   one definition

import { api, qs, showMessage } from "./api.js";
import { openDialog } from "./dialog.js";
import { diffView } from "./diff.js";
import { clear, el, fmtTime, jsonBlock, runUrl } from "./dom.js";
import { schemaForm } from "./schemaform.js";
import { mountShell } from "./shell.js";

mountShell("definitions");
const main = document.getElementById("nf-main");
const params = new URLSearchParams(location.search);
const enc = encodeURIComponent;

const detailUrl = (d) => `/ui/definitions.html${qs({ name: d.name, namespace: d.namespace })}`;

async function showList() {
  const list = await api("/definitions");
  const rows = list.definitions.map((d) => el("tr", { dataset: { definition: d.name } },
    el("td", {}, el("a", { href: detailUrl(d) }, d.name)), el("td", {}, d.namespace || "default"),
    el("td", {}, `v${d.latest_version}`), el("td", {}, fmtTime(d.updated_at))));
  clear(main, el("h1", {}, "Definitions"),
    rows.length
      ? el("table", { class: "nf-table", id: "nf-definitions" },
          el("thead", {}, el("tr", {}, ["Name", "Namespace", "Latest", "Updated"].map((h) => el("th", {}, h)))),
          el("tbody", {}, rows))
      : el("p", { class: "nf-empty" }, "No definitions yet: store one with PUT /definitions/{name} or natsflow definitions put."));
}

async function showDefinition(name, namespace) {
  const ns = qs({ namespace });
  const info = await api(`/definitions/${enc(name)}${ns}`);
  const versions = [...info.versions].sort((a, b) => b.version - a.version);
  const latest = info.latest;
  const cache = new Map([[latest.version, latest]]);
  const version = async (v) => {
    if (!cache.has(v)) cache.set(v, await api(`/definitions/${enc(name)}/versions/${v}${ns}`));
    return cache.get(v);
  };
  const pick = (id, selected) => el("select", { id },
    versions.map((v) => el("option", { value: v.version, selected: v.version === selected }, `v${v.version}`)));
  const from = pick("nf-diff-from", versions.length > 1 ? versions[1].version : latest.version);
  const to = pick("nf-diff-to", latest.version);
  const diffBox = el("div", { id: "nf-diff" });
  const configBox = el("div", { id: "nf-config" }, jsonBlock(latest.config));
  const showDiff = async () => {
    const [a, b] = await Promise.all([version(Number(from.value)), version(Number(to.value))]);
    clear(diffBox, diffView(JSON.stringify(a.config, null, 2), JSON.stringify(b.config, null, 2)));
  };
  from.addEventListener("change", showDiff);
  to.addEventListener("change", showDiff);
  const runButton = el("button", { type: "button", class: "nf-primary", dataset: { action: "run" } }, "Run…");
  runButton.addEventListener("click", () => runDialog(info, version, versions));

  clear(main,
    el("div", { class: "nf-row" }, el("h1", { class: "nf-grow" }, name,
       el("span", { class: "nf-muted" }, `  ${info.namespace || "default"} · latest v${latest.version}`)), runButton),
    el("p", {}, el("a", { href: "/ui/definitions.html" }, "← every definition"), " · ",
       el("a", { href: `/ui/${qs({ name: latest.config.name, namespace: info.namespace })}` }, "its runs")),
    el("div", { class: "nf-panel" }, el("h2", {}, "Versions"),
      el("table", { class: "nf-table", id: "nf-versions" },
        el("thead", {}, el("tr", {}, ["Version", "Stored", "Fingerprint"].map((h) => el("th", {}, h)))),
        el("tbody", {}, versions.map((v) => el("tr", { dataset: { version: v.version } },
          el("td", {}, `v${v.version}`), el("td", {}, fmtTime(v.created_at)),
          el("td", { class: "nf-mono" }, v.fingerprint.slice(0, 16))))))),
    el("div", { class: "nf-panel" }, el("h2", {}, "Diff"),
      el("div", { class: "nf-row" }, el("label", {}, "From", from), el("label", {}, "To", to)), diffBox),
    el("div", { class: "nf-panel" }, el("h2", {}, `Config (v${latest.version})`), configBox));
  await showDiff();
}

async function runDialog(info, version, versions) {
  const pickVersion = el("select", { name: "version" },
    versions.map((v) => el("option", { value: v.version }, `v${v.version}${v.version === info.latest.version ? " (latest)" : ""}`)));
  const formBox = el("div", { id: "nf-run-form" });
  let form = null;
  const build = async () => {
    const def = await version(Number(pickVersion.value));
    const schema = def.config.input_schema;
    form = schemaForm(schema || {}, { value: def.config.input && Object.keys(def.config.input).length ? def.config.input : undefined });
    clear(formBox, schema ? null : el("p", { class: "nf-muted nf-small" }, "No input schema: give the input as JSON."), form.element);
  };
  pickVersion.addEventListener("change", build);
  await build();
  const created = await openDialog({
    id: "nf-run-dialog", title: `Run ${info.name}`, submitLabel: "Run",
    fields: [el("label", {}, "Version", pickVersion), formBox,
             el("label", {}, "Workflow id (optional)", el("input", { name: "wid", autocomplete: "off" }))],
    onSubmit: async (f) => {
      const body = { definition: info.name, version: Number(pickVersion.value), input: form.read() ?? {},
                     namespace: info.namespace };
      if (f.wid.value.trim()) body.id = f.wid.value.trim();
      return api("/workflows", { method: "POST", body });
    },
  });
  if (created && created.id) location.href = runUrl(created.id);
}

try {
  if (params.get("name")) await showDefinition(params.get("name"), params.get("namespace") || "");
  else await showList();
  document.body.dataset.loaded = "true";
} catch (err) {
  showMessage(err);
}
