// The header every page shares: the product name, the navigation, the API key control.
//
//   import { mountShell } from "./shell.js";
//   mountShell("runs");   // one of: runs, definitions, batches, dead-letters, schedules, triggers, limits (run: none)

import { clearKey, getKey, askForKey, showMessage } from "./api.js";
import { el } from "./dom.js";

export const NAV = [
  ["runs", "Runs", "/ui/"],
  ["definitions", "Definitions", "/ui/definitions.html"],
  ["batches", "Batches", "/ui/batches.html"],
  ["dead-letters", "Dead letters", "/ui/dead-letters.html"],
  ["schedules", "Schedules", "/ui/schedules.html"],
  ["triggers", "Triggers", "/ui/triggers.html"],
  ["limits", "Limits", "/ui/limits.html"],
];

/** Put the shared header at the top of <body> (into #nf-header if the page has one). */
export function mountShell(active) {
  const header = document.getElementById("nf-header") || el("header", { id: "nf-header" });
  header.className = "nf-header";
  const keyButton = el("button", { type: "button", class: "nf-key-button", id: "nf-key-button" });
  const renderKey = () => {
    keyButton.textContent = getKey() ? "Forget key" : "API key…";
    keyButton.title = getKey() ? "Forget the API key of this tab" : "Give an API key";
  };
  keyButton.addEventListener("click", async () => {
    if (getKey()) {
      clearKey();
      showMessage("The API key is forgotten.", "info");
    } else if (await askForKey()) {
      location.reload();
    }
  });
  document.addEventListener("natsflow:key", renderKey);
  renderKey();
  header.replaceChildren(
    el("a", { href: "/ui/", class: "nf-brand" }, "natsflow"),
    el("nav", { class: "nf-nav" }, NAV.map(([id, label, href]) =>
      el("a", { href, class: id === active ? "nf-active" : "", "aria-current": id === active ? "page" : false, dataset: { nav: id } }, label))),
    el("span", { class: "nf-spacer" }),
    el("a", { href: "/docs", class: "nf-nav-aside" }, "API docs"),
    keyButton,
  );
  if (!header.isConnected) document.body.prepend(header);
  if (!document.getElementById("nf-messages")) {
    document.body.append(el("div", { id: "nf-messages", "aria-live": "polite" }));
  }
  return header;
}
