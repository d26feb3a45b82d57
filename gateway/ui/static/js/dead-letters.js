// Dead letters (dead-letters.html): what natsflow could not use, newest first, with
// the reason, the subject and the payload it kept.

import { api, qs, showMessage } from "./api.js";
import { clear, el, fmtTime } from "./dom.js";
import { mountShell } from "./shell.js";

mountShell("dead-letters");
const main = document.getElementById("nf-main");
const before = new URLSearchParams(location.search).get("before");

function payload(letter) {
  let text = letter.data;
  try { text = JSON.stringify(JSON.parse(letter.data), null, 2); } catch { /* not JSON: as is */ }
  return el("details", {}, el("summary", {}, `payload (${letter.size ?? text.length} bytes${letter.truncated ? ", cut short" : ""})`),
            el("pre", { class: "nf-json" }, text));
}

try {
  const page = await api("/dead-letters" + qs({ before, limit: 50 }));
  clear(main, el("div", { class: "nf-row" }, el("h1", { class: "nf-grow" }, "Dead letters"),
                 el("span", { class: "nf-muted" }, `${page.total} kept`)),
    page.items.length ? el("table", { class: "nf-table", id: "nf-letters" },
      el("thead", {}, el("tr", {}, ["#", "When", "Reason", "Subject", "Deliveries", "Message"].map((h) => el("th", {}, h)))),
      el("tbody", {}, page.items.map(({ seq, letter }) => el("tr", { dataset: { seq, reason: letter.reason.code } },
        el("td", {}, seq), el("td", {}, fmtTime(letter.time)),
        el("td", {}, el("code", {}, letter.reason.code), el("div", { class: "nf-reason" }, letter.reason.message),
           letter.reason.errors ? el("div", { class: "nf-small nf-muted" }, letter.reason.errors.map((e) => `${e.field || e.loc || ""}: ${e.message || e.msg || ""}`).join("; ")) : null),
        el("td", { class: "nf-mono" }, letter.subject), el("td", {}, letter.deliveries ?? ""),
        el("td", {}, payload(letter))))))
      : el("p", { class: "nf-empty" }, "No dead letters."),
    el("div", { class: "nf-row", id: "nf-pager" },
      before ? el("a", { href: "/ui/dead-letters.html" }, "← newest") : null,
      page.next_before ? el("a", { href: `/ui/dead-letters.html${qs({ before: page.next_before })}`, dataset: { page: "older" } }, "Older →") : null));
  document.body.dataset.loaded = "true";
} catch (err) {
  showMessage(err);
}
