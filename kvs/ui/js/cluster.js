// The cluster as this node's gossip sees it (/cluster/members), with each member's own
// /cluster/status: Merkle root, live keys, index and its last anti-entropy rounds, so
// a user can watch the nodes converge (equal roots mean equal data). Members are asked
// directly from the browser (those two reads allow any origin); the service registry
// comes from this node. Refreshed every second.

import { problem, request, sleep } from "./api.js";
import { h, notice, rerender, table } from "./dom.js";
import { ago, count, when } from "./format.js";
import { title } from "./nav.js";

const REFRESH_MS = 1000;

export function mount(root, _, signal) {
  document.title = "Cluster · kvs";
  const status = notice();
  const summary = h("p", { class: "summary", role: "status", "aria-live": "polite" });
  const members = h("div");
  const rounds = h("div");
  const services = h("div");
  root.replaceChildren(title("Cluster"), status, summary, members,
    h("h2", {}, "Anti-entropy: last rounds per node"), rounds,
    h("h2", {}, "Services"), services);
  const open = new Set();  // ids whose rounds are expanded, kept across refreshes

  async function refresh() {
    const [self, list, registry] = await Promise.all([
      request("GET", "/health", { signal }), request("GET", "/cluster/members", { signal }),
      request("GET", "/services", { signal })]);
    if (!list.ok) { status.show(problem(list), "error"); return; }
    status.show("");
    const statuses = await Promise.all(list.body.map((m) => memberStatus(m, self.body?.node, signal)));
    renderMembers(list.body, statuses, self.body?.node);
    renderRounds(list.body, statuses);
    renderServices(registry.ok ? registry.body.services : []);
  }

  function renderMembers(list, statuses, selfId) {
    const reached = statuses.filter((s) => s);
    const roots = new Set(reached.map((s) => s.merkle_root));
    const alive = list.filter((m) => m.state === "alive").length;
    summary.textContent = `${count(list.length, "member")}, ${alive} alive. ` + (
      reached.length < list.length ? `${list.length - reached.length} not reachable from this browser. ` : "") + (
      roots.size === 1 ? `Merkle roots equal on ${count(reached.length, "node")}: same data.`
                       : `Merkle roots differ (${roots.size} distinct): the nodes have not converged yet.`);
    summary.dataset.kind = roots.size === 1 ? "ok" : "warn";
    rerender(members, table({ label: "Members", className: "members",
      caption: "Members, as this node's gossip sees them",
      headers: ["Node", "Address", "State", "Incarnation", "Last seen", "Keys", "Index", "Merkle root"],
      rows: list.map((m, i) => {
        const s = statuses[i];
        return { attrs: { "data-node": m.id }, cells: [
          [m.id, m.id === selfId ? h("span", { class: "tag" }, "this node") : null],
          m.address,
          h("span", { class: `tag state-${m.state}` }, m.state),
          String(m.incarnation),
          h("span", { title: when(m.last_seen) }, m.id === selfId ? "—" : ago(m.last_seen)),
          s ? String(s.keys) : "?",
          s ? String(s.index) : "?",
          s ? h("code", { class: "root" }, s.merkle_root) : "not reachable"] };
      }) }));
  }

  function renderRounds(list, statuses) {
    rerender(rounds, ...list.map((m, i) => {
      const last = statuses[i]?.last_rounds ?? [];
      const details = h("details", { "data-node": m.id, open: open.has(m.id), ontoggle: () => (details.open ? open.add(m.id) : open.delete(m.id)) },
        h("summary", { "data-focus": `rounds-${m.id}` }, `${m.id}: ${count(last.length, "round")}`,
          last[0] ? `, last ${ago(last[0].at)}` : ""),
        last.length === 0 ? h("p", {}, statuses[i] ? "No round yet." : "Not reachable from this browser.")
          : table({ label: `Anti-entropy rounds of ${m.id}`, className: "rounds",
            headers: ["Peer", "Keys repaired", "Bytes", "Duration", "When", "Error"],
            rows: last.map((r) => ({ cells: [r.peer, String(r.keys_repaired), String(r.bytes),
              `${r.duration_ms.toFixed(1)} ms`, h("span", { title: when(r.at) }, ago(r.at)), r.error ?? ""] })) }));
      return details;
    }));
  }

  function renderServices(list) {
    rerender(services, list.length === 0 ? h("p", { class: "empty" }, "No service registered.") : table({
      label: "Services", className: "services", headers: ["Name", "Address", "Port", "Tags", "Meta", "TTL"],
      rows: list.map((s) => ({ cells: [s.name, s.address ?? "", s.port === null ? "" : String(s.port),
        s.tags.join(", "), Object.entries(s.meta).map(([k, v]) => `${k}=${v}`).join(", "),
        s.ttl === null ? "" : `${s.ttl} s`] })) }));
  }

  (async () => {
    while (!signal.aborted) {
      try {
        await refresh();
      } catch (err) {
        status.show(err.message, "error");
      }
      await sleep(REFRESH_MS, signal);
    }
  })();
}

/**
 * A member's /cluster/status, asked of the member itself (this node: same origin). A
 * member bound to a wildcard address is asked at the host this page came from.
 */
async function memberStatus(member, selfId, signal) {
  if (member.state !== "alive" && member.state !== "suspect") return null;
  try {
    const origin = member.id === selfId ? "" : memberOrigin(member.address);
    const reply = await request("GET", "/cluster/status", { signal, origin });
    return reply.ok ? reply.body : null;
  } catch {
    return null;
  }
}

/** http://host:port of a member's "host:port" address; a wildcard host is this page's host. */
function memberOrigin(address) {
  const cut = address.lastIndexOf(":");
  let host = address.slice(0, cut).replace(/^\[(.*)\]$/, "$1");
  if (host === "0.0.0.0" || host === "::") host = location.hostname;
  else if (host.includes(":")) host = `[${host}]`;
  return `${location.protocol}//${host}:${address.slice(cut + 1)}`;
}
