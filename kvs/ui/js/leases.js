// Locks and leases: the live keys with a TTL under a prefix, who holds them and how
// long they have left. A lease is a key written with a TTL (kvs lock writes
// {"holder", "token"}; a service registration with a TTL is one too); the list follows
// changes and expiries live.

import { kvPath, problem, request, url, watch } from "./api.js";
import { field, h, notice, rerender, table as tableView } from "./dom.js";
import { compact, when } from "./format.js";
import { keyHref, title } from "./nav.js";

const PAGE = 500;          // versions per listing request
const SCAN_LIMIT = 10_000; // keys looked at, at most, per refresh

export function mount(root, _, signal) {
  document.title = "Locks and leases · kvs";
  const prefix = h("input", { type: "search", autocomplete: "off", spellcheck: "false", placeholder: "all keys" });
  const status = notice();
  const table = h("div");
  root.replaceChildren(title("Locks and leases"),
    h("p", { class: "hint" }, "Live keys with a TTL: a lock or lease is held until its TTL runs out unless renewed."),
    h("form", { class: "toolbar", role: "search", onsubmit: (e) => e.preventDefault() }, field("Keys under prefix", prefix)),
    status, table);

  let scan = new AbortController();
  signal.addEventListener("abort", () => scan.abort());

  function restart() {
    scan.abort();
    scan = new AbortController();
    const path = kvPath(prefix.value);
    watch(path, { recurse: true, limit: PAGE }, async (reply) => {
      if (!reply.ok && reply.status !== 404) { status.show(problem(reply), "error"); return; }
      const { items, complete } = await rest(path, reply.body, scan.signal);
      status.show(complete ? "" : `Only the first ${SCAN_LIMIT} keys were looked at; narrow the prefix.`, "warn");
      render(items.filter((v) => v.expires_at !== null).sort((a, b) => a.expires_at - b.expires_at));
    }, scan.signal);
  }

  function render(leases) {
    rerender(table, leases.length === 0 ? h("p", { class: "empty" }, "No key with a TTL here.") : tableView({
      label: "Locks and leases", className: "leases",
      caption: `${leases.length} keys with a TTL, soonest to expire first`,
      headers: ["Key", "Holder", "Time left", "Expires at", "Written on"],
      rows: leases.map((v) => ({ cells: [
        h("a", { href: keyHref(v.key), "data-focus": v.key }, v.key),
        holder(v.value),
        h("span", { class: "countdown", "data-expires": v.expires_at }),
        when(v.expires_at),
        v.origin] })) }));
  }

  let typing;
  prefix.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(restart, 200); });
  restart();
}

/** The first page's items plus the following pages, up to SCAN_LIMIT. */
async function rest(path, first, signal) {
  const items = [...(first?.items ?? [])];
  let next = first?.next ?? null;
  while (next !== null && items.length < SCAN_LIMIT) {
    const reply = await request("GET", url(path, { recurse: true, limit: PAGE, after: next }), { signal });
    if (!reply.ok) break;
    items.push(...reply.body.items);
    next = reply.body.next;
  }
  return { items, complete: next === null };
}

/** Who holds a lease: a lock's "holder", else the value itself. */
function holder(value) {
  const shown = value && typeof value === "object" && "holder" in value ? value.holder : value;
  const text = typeof shown === "string" ? shown : compact(shown);
  return text.length > 60 ? text.slice(0, 59) + "…" : text;
}
