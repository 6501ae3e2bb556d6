// Line diff of two texts, for the conflict view and for history comparisons.
// A longest-common-subsequence table after trimming the common start and end:
// values are edited by hand, so the differing middle is small; past MAX_CELLS the
// two texts are shown whole instead.

import { h } from "./dom.js";

const MAX_CELLS = 4_000_000;

/** [[op, line]]: op " " in both, "-" only in a, "+" only in b; null if too large. */
export function diffLines(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  let start = 0;
  while (start < x.length && start < y.length && x[start] === y[start]) start++;
  let endX = x.length, endY = y.length;
  while (endX > start && endY > start && x[endX - 1] === y[endY - 1]) { endX--; endY--; }
  const n = endX - start, m = endY - start;
  if (n * m > MAX_CELLS) return null;
  // lcs[i][j]: length of the common subsequence of x[start+i..endX) and y[start+j..endY)
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[start + i] === y[start + j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = x.slice(0, start).map((line) => [" ", line]);
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[start + i] === y[start + j]) { out.push([" ", x[start + i]]); i++; j++; }
    else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) { out.push(["-", x[start + i]]); i++; }
    else { out.push(["+", y[start + j]]); j++; }
  }
  return out.concat(x.slice(endX).map((line) => [" ", line]));
}

/** A diff as a <pre>: every line keeps its -, + or space, so it reads without colour. */
export function diffView(a, b, labelA, labelB) {
  const lines = diffLines(a, b);
  const legend = h("p", { class: "legend" }, h("span", { class: "del" }, `- ${labelA}`), " ",
                   h("span", { class: "ins" }, `+ ${labelB}`));
  if (lines === null) return h("div", { class: "diff" }, legend, h("p", {}, "Too large to compare line by line."));
  const same = lines.every(([op]) => op === " ");
  return h("div", { class: "diff" }, legend,
    same ? h("p", {}, "No difference.") : h("pre", { tabindex: 0, "aria-label": `Changes from ${labelA} to ${labelB}` },
      lines.map(([op, line]) => h("span", { class: { "-": "del", "+": "ins", " ": "same" }[op] }, `${op} ${line}\n`))));
}
