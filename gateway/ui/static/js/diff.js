// A line diff (longest common subsequence) of two texts, as rows for .nf-diff.
//
//   diffLines(a, b) -> [{op: "same"|"add"|"del", text}]
//   diffView(a, b)  -> <div class="nf-diff"> with one <div> per line

import { el } from "./dom.js";

export function diffLines(a, b) {
  const x = a.split("\n");
  const y = b.split("\n");
  const n = x.length;
  const m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push({ op: "same", text: x[i] }); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) { out.push({ op: "del", text: x[i] }); i++; }
    else { out.push({ op: "add", text: y[j] }); j++; }
  }
  while (i < n) out.push({ op: "del", text: x[i++] });
  while (j < m) out.push({ op: "add", text: y[j++] });
  return out;
}

export function diffView(a, b) {
  const rows = diffLines(a, b);
  const changed = rows.some((r) => r.op !== "same");
  return el("div", { class: "nf-diff", dataset: { changed: String(changed) } },
    changed ? null : el("div", { class: "nf-same" }, "(no difference)"),
    rows.map((r) => el("div", { class: `nf-${r.op}` },
      `${r.op === "add" ? "+" : r.op === "del" ? "-" : " "} ${r.text}`)));
}
