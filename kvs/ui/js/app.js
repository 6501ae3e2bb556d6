// The UI's entry point: routes (#/keys/<folder>, #/key/<key>, #/history/<key>,
// #/leases, #/cluster) to views, the header (this node's id, whether it answers), and
// one ticker for every TTL countdown on the page.
//
// A view is mount(root, argument, signal): it draws into root and runs until signal
// aborts, which is when the route changes (its blocking queries are cancelled then).

import { heartbeat, onReachability, request } from "./api.js";
import * as cluster from "./cluster.js";
import { remaining } from "./format.js";
import * as history from "./history.js";
import * as key from "./key.js";
import * as keys from "./keys.js";
import * as leases from "./leases.js";

const ROUTES = [
  [/^#\/keys\/(.*)$/, keys, "keys"],
  [/^#\/key\/(.+)$/, key, "keys"],
  [/^#\/history\/(.+)$/, history, "keys"],
  [/^#\/leases$/, leases, "leases"],
  [/^#\/cluster$/, cluster, "cluster"],
];
const TICK_MS = 100;        // TTL countdowns
const HEARTBEAT_MS = 2000;  // how soon an unreachable node shows

const main = document.getElementById("main");
let running = new AbortController();

function route() {
  const hash = location.hash || "#/keys/";
  const found = ROUTES.map(([pattern, view, section]) => [pattern.exec(hash), view, section]).find(([m]) => m);
  if (!found) {
    location.replace("#/keys/");
    return;
  }
  const [match, view, section] = found;
  running.abort();
  running = new AbortController();
  for (const link of document.querySelectorAll("nav[aria-label=Main] a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  let argument;
  try {
    argument = match[1] === undefined ? undefined : decodeURIComponent(match[1]);
  } catch {
    location.replace("#/keys/");
    return;
  }
  view.mount(main, argument, running.signal);
  main.querySelector("h1")?.focus({ preventScroll: true });
}

function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-expires]")) {
    const text = remaining(Number(el.dataset.expires), now);
    if (el.textContent !== text) el.textContent = text;
  }
}

async function showNode() {
  const status = document.getElementById("node-status");
  let node = "";
  onReachability((up) => {
    status.textContent = up ? (node ? `node ${node}` : "connected") : "node unreachable, retrying…";
    status.dataset.kind = up ? "ok" : "error";
  });
  try {
    node = (await request("GET", "/health")).body?.node ?? "";
    status.textContent = `node ${node}`;
  } catch {
    // the indicator already says unreachable; the views keep retrying
  }
}

document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();  // the hash is the route: focus the content instead
  main.focus();
});
window.addEventListener("hashchange", route);
setInterval(tick, TICK_MS);
heartbeat(HEARTBEAT_MS);
showNode();
route();
