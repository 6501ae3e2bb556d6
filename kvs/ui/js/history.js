// A key's history as this node holds it: every version newest first (the conflict
// order), tombstones, expired and superseded versions marked; a diff between any two;
// and restore, a CAS write of an old value on top of the current version.

import { kvPath, problem, watch } from "./api.js";
import { conflictView } from "./conflict.js";
import { diffView } from "./diff.js";
import { h, notice, rerender, table as tableView } from "./dom.js";
import { compact, editable, hlc, shortId } from "./format.js";
import { apply, current, isConflict, putIntent } from "./kv.js";
import { keyHeader } from "./nav.js";

const PREVIEW = 80;  // characters of a value shown in the table

/**
 * For each superseded version, the version that superseded it. A version is superseded
 * when it is not on the parent chain of the current version (the first); the one that
 * beat it is the oldest version of that chain ranked above it in the conflict order.
 */
export function supersededBy(revisions) {
  const byId = new Map(revisions.map((v) => [v.version, v]));
  const chain = new Set();
  for (let v = revisions[0]; v && !chain.has(v.version); v = byId.get(v.parent)) chain.add(v.version);
  const winners = new Map();
  revisions.forEach((v, rank) => {
    if (!v.superseded) return;
    const above = revisions.slice(0, rank).filter((w) => chain.has(w.version));
    if (above.length) winners.set(v.version, above.at(-1));
  });
  return winners;
}

/** Whether a version is live: a value, not a tombstone, TTL not run out. */
const live = (v, now = Date.now()) => !v.deleted && (v.expires_at === null || v.expires_at > now);

export function mount(root, key, signal) {
  document.title = `History of ${key} · kvs`;
  const status = notice();
  const conflict = h("div");
  const table = h("div");
  const compare = h("div", { class: "compare" });
  root.replaceChildren(...keyHeader(key, "History"), status, conflict, table,
                       h("h2", {}, "Compare two versions"), compare);
  let revisions = [];
  let from = null, to = null;  // the versions compared (ids)

  function render() {
    const winners = supersededBy(revisions);
    const head = revisions[0];
    const rows = revisions.map((v) => {
      const pick = (name, chosen) => h("input", {
        type: "radio", name, value: v.version, checked: chosen === v.version, "data-focus": `${name}-${v.version}`,
        "aria-label": `Compare ${name} version ${shortId(v.version)}`,
        onchange: () => { if (name === "from") from = v.version; else to = v.version; renderCompare(); } });
      const current = v === head && live(v);
      const restorable = !v.deleted && !current;
      return { attrs: { class: v.superseded || v.deleted ? "marked" : null }, cells: [
        h("code", { title: v.version }, shortId(v.version)),
        hlc(v),
        v.origin,
        h("span", { class: "marks" }, current && h("span", { class: "tag current" }, "current"), marks(v, winners)),
        v.deleted ? "—" : h("span", { class: "preview" }, preview(v.value)),
        h("span", { class: "pick" }, pick("from", from), pick("to", to)),
        restorable && h("button", { type: "button", "data-focus": `restore-${v.version}`,
          "aria-label": `Restore version ${shortId(v.version)}`, onclick: () => restore(v) }, "Restore"),
      ] };
    });
    rerender(table, tableView({ label: "History", className: "history", rows,
      caption: `${revisions.length} versions held by this node, newest first`,
      headers: ["Version", "Written (HLC)", "Origin", "State", "Value", "Compare from / to", ""] }));
    renderCompare();
  }

  function renderCompare() {
    const a = revisions.find((v) => v.version === from), b = revisions.find((v) => v.version === to);
    const text = (v) => (v.deleted ? "(deleted)" : editable(v.value));
    rerender(compare, a && b ? diffView(text(a), text(b), `version ${shortId(a.version)}`, `version ${shortId(b.version)}`)
                             : h("p", {}, "Pick a version in the From column and one in the To column."));
  }

  /** Write an old value on top of what is current now (create-only if the key is gone). */
  async function restore(old) {
    try {
      const base = await current(key, signal);
      await write(putIntent(old.value), base);
    } catch (err) {
      status.show(err.message, "error");
    }
  }

  async function write(intent, base) {
    const reply = await apply(key, intent, base);
    if (reply.ok) {
      conflict.replaceChildren();
      status.show(`Restored as version ${shortId(reply.body.version)}.`, "ok");
    } else if (isConflict(reply)) {
      const now = await current(key, signal);
      const done = () => { conflict.replaceChildren(); status.show(""); };
      conflict.replaceChildren(conflictView({ intent, seen: base, current: now,
        onRetry: () => write(intent, now).catch((err) => status.show(err.message, "error")),
        onDiscard: done }));
      conflict.querySelector("#conflict-title").focus();
    } else {
      status.show(problem(reply), "error");
    }
  }

  watch(kvPath(key), { history: true }, (reply) => {
    if (reply.status === 404) {
      revisions = [];
      rerender(table, h("p", { class: "empty" }, "This node holds no version of this key."));
      return;
    }
    if (!reply.ok) { status.show(problem(reply), "error"); return; }
    revisions = reply.body.revisions;
    const ids = new Set(revisions.map((v) => v.version));
    if (!ids.has(to)) to = revisions[0]?.version ?? null;
    if (!ids.has(from)) from = revisions[1]?.version ?? null;
    render();
  }, signal);
}

function marks(v, winners) {
  const out = [];
  if (v.deleted) out.push(h("span", { class: "tag deleted" }, "deleted"));
  else if (v.expires_at !== null && v.expires_at <= Date.now()) out.push(h("span", { class: "tag expired" }, "expired"));
  if (v.superseded) {
    const by = winners.get(v.version);
    out.push(h("span", { class: "tag superseded" }, "superseded",
      by ? [" by ", h("code", { title: by.version }, shortId(by.version)), ` (${by.origin}, ${hlc(by)})`] : ""));
  }
  return out;
}

function preview(value) {
  const text = compact(value);
  return text.length > PREVIEW ? text.slice(0, PREVIEW - 1) + "…" : text;
}
