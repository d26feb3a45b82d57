// Modal dialogs with a form: the actions' and the definitions' "run" use them.
//
//   const result = await openDialog({
//     title: "Signal", fields: [el("label", {}, "Name", el("input", {name: "name"}))],
//     submitLabel: "Send",
//     onSubmit: async (form) => api(...),   // throw: the error shows in the dialog, it stays open
//   });                                     // the onSubmit result, or null if cancelled

import { el } from "./dom.js";

export function openDialog({ title, intro, fields = [], submitLabel = "OK", onSubmit, id }) {
  return new Promise((resolve) => {
    const error = el("p", { class: "nf-message nf-message-error nf-hidden", role: "alert" });
    const submit = el("button", { type: "submit", class: "nf-primary", "data-role": "submit" },
                      submitLabel);
    const cancel = el("button", { type: "button", "data-role": "cancel" }, "Cancel");
    const form = el("form", { method: "dialog" },
      el("h2", {}, title), intro ? el("p", { class: "nf-muted" }, intro) : null,
      fields, error, el("menu", {}, cancel, submit));
    const dialog = el("dialog", { class: "nf-dialog", id }, form);
    const finish = (value) => { dialog.close(); dialog.remove(); resolve(value); };
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      submit.disabled = true;
      error.classList.add("nf-hidden");
      try {
        finish(onSubmit ? await onSubmit(form) : true);
      } catch (err) {
        error.textContent = err.message || String(err);
        error.classList.remove("nf-hidden");
      } finally {
        submit.disabled = false;
      }
    });
    cancel.addEventListener("click", () => finish(null));
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); finish(null); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Parse JSON from a textarea's text, naming the field when it is not JSON. */
export function parseJsonField(text, field, { emptyAs } = {}) {
  if (!text.trim()) {
    if (emptyAs !== undefined) return emptyAs;
    throw new Error(`${field}: give a JSON value`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${field}: not JSON (${err.message})`);
  }
}
