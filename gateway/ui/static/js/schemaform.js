// A form generated from a JSON Schema (a definition's `input_schema`).
//
//   const form = schemaForm(schema, { value: defaults });
//   container.append(form.element);
//   const input = form.read();   // throws Error naming the field when a value is not valid
//
// Objects become fieldsets of their properties; strings, numbers, integers and booleans
// become inputs (an `enum` a select); anything else (arrays, unions, free objects) a JSON
// text area. The API validates the input against the schema again: this form only helps.

import { el } from "./dom.js";

export function schemaForm(schema, { value } = {}) {
  const root = field(schema || {}, value, "input", true, "input");
  return { element: el("div", { class: "nf-form" }, root.element), read: () => root.read() };
}

function field(schema, value, name, required, path) {
  const title = schema.title || name;
  const head = el("span", { class: `nf-field-title ${required ? "nf-required" : ""}` }, title);
  const desc = schema.description ? el("span", { class: "nf-field-desc" }, schema.description) : null;
  const initial = value !== undefined ? value : schema.default;
  const type = Array.isArray(schema.type) ? null : schema.type;

  if ((type === "object" || (!type && schema.properties)) && schema.properties) {
    const need = new Set(schema.required || []);
    const children = Object.entries(schema.properties).map(([key, sub]) =>
      [key, field(sub, initial ? initial[key] : undefined, key, need.has(key), `${path}.${key}`)]);
    const element = path === "input"
      ? el("div", { class: "nf-form" }, desc, children.map(([, c]) => c.element))
      : el("fieldset", { class: "nf-field" }, el("legend", {}, head), desc, children.map(([, c]) => c.element));
    return { element, read: () => {
      const out = {};
      for (const [key, child] of children) {
        const v = child.read();
        if (v !== undefined) out[key] = v;
      }
      return out;
    } };
  }

  let input;
  let read;
  if (Array.isArray(schema.enum)) {
    input = el("select", { name: path, dataset: { field: path } },
      required ? null : el("option", { value: "" }, "—"),
      schema.enum.map((v, i) => el("option", { value: i, selected: initial === v }, JSON.stringify(v))));
    read = () => (input.value === "" ? undefined : schema.enum[Number(input.value)]);
  } else if (type === "boolean") {
    input = el("input", { type: "checkbox", name: path, checked: !!initial, dataset: { field: path } });
    read = () => input.checked;
  } else if (type === "integer" || type === "number") {
    input = el("input", { type: "number", name: path, step: type === "integer" ? 1 : "any",
                          value: initial ?? "", min: schema.minimum, max: schema.maximum,
                          dataset: { field: path } });
    read = () => {
      if (input.value === "") {
        if (required) throw new Error(`${path}: give a number`);
        return undefined;
      }
      const n = Number(input.value);
      if (type === "integer" && !Number.isInteger(n)) throw new Error(`${path}: give a whole number`);
      return n;
    };
  } else if (type === "string") {
    input = el("input", { type: "text", name: path, value: initial ?? "", dataset: { field: path },
                          placeholder: schema.format || "", minlength: schema.minLength,
                          maxlength: schema.maxLength, pattern: schema.pattern });
    // Empty is left out: a required field then comes back from the API, named.
    read = () => (input.value === "" ? undefined : input.value);
  } else {
    input = el("textarea", { name: path, spellcheck: "false", dataset: { field: path },
                             placeholder: "JSON" }, initial === undefined ? "" : JSON.stringify(initial, null, 2));
    read = () => {
      if (!input.value.trim()) {
        if (required) throw new Error(`${path}: give a JSON value`);
        return undefined;
      }
      try { return JSON.parse(input.value); } catch (err) { throw new Error(`${path}: not JSON (${err.message})`); }
    };
  }
  const element = type === "boolean"
    ? el("label", { class: "nf-field nf-check" }, input, head, desc)
    : el("label", { class: "nf-field" }, head, desc, input);
  return { element, read };
}
