// Locations inside the UI (hash routes) and the headings that lead between them.

import { h } from "./dom.js";

export const folderHref = (folder) => "#/keys/" + encodeURIComponent(folder);
export const keyHref = (key) => "#/key/" + encodeURIComponent(key);
export const historyHref = (key) => "#/history/" + encodeURIComponent(key);

/** Links to the root and every folder above `path`: (root) / app/ / app/config/. */
export function crumbs(path) {
  const links = [h("a", { href: folderHref("") }, "(root)")];
  let at = 0;
  for (let cut = path.indexOf("/"); cut !== -1; cut = path.indexOf("/", at)) {
    const folder = path.slice(0, cut + 1);
    links.push(" / ", h("a", { href: folderHref(folder) }, path.slice(at, cut + 1)));
    at = cut + 1;
  }
  return h("nav", { class: "crumbs", "aria-label": "Folders" }, links);
}

/** The heading of a page; focused on arrival so a screen reader announces it. */
export const title = (...content) => h("h1", { tabindex: -1 }, content);

/** Heading, folder links and the Value / History tabs of one key. */
export function keyHeader(key, active) {
  const tab = (name, href) => h("a", { href, "aria-current": name === active ? "page" : null }, name);
  return [
    crumbs(key),
    title(active === "History" ? "History of " : "Key ", h("code", { class: "key" }, key)),
    h("nav", { class: "tabs", "aria-label": "Key views" }, tab("Value", keyHref(key)), tab("History", historyHref(key))),
  ];
}
