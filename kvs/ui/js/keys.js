// The key tree: one folder at a time, listed by the API with separator "/" (a folder
// is listed once, as "a/b/"), a page at a time, filtered by a name prefix; each folder
// shows how many keys it holds. A create form makes keys create-only (cas: 0).
// The listing follows changes live through a blocking query on the folder.

import { kvPath, problem, request, watch } from "./api.js";
import { field, h, notice, rerender } from "./dom.js";
import { count } from "./format.js";
import { isConflict, parseTtl, parseValue } from "./kv.js";
import { crumbs, folderHref, keyHref, title } from "./nav.js";

export const PAGE = 50;        // names per page
const COUNT_LIMIT = 1000;      // a folder's keys are counted up to this, then "1000+"

export function mount(root, folder, signal) {
  document.title = `${folder || "Keys"} · kvs`;
  const filter = h("input", { type: "search", autocomplete: "off", spellcheck: "false", placeholder: "name starts with…" });
  const list = h("div", { class: "listing" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const status = notice();
  root.replaceChildren(
    crumbs(folder),
    title(folder ? ["Folder ", h("code", { class: "key" }, folder)] : "Keys"),
    h("form", { class: "toolbar", role: "search", onsubmit: (e) => e.preventDefault() },
      field(`Filter${folder ? ` in ${folder}` : ""} by prefix`, filter)),
    status, list, pager, createForm(folder));

  let pages = [null];          // `after` of each page seen so far: Previous goes back one
  let listing = new AbortController();
  signal.addEventListener("abort", () => listing.abort());

  function restart() {
    listing.abort();
    listing = new AbortController();
    const prefix = folder + filter.value;
    const after = pages.at(-1);
    watch(kvPath(prefix), { keys: true, separator: "/", limit: PAGE, after }, (reply) => {
      if (!reply.ok) { status.show(problem(reply), "error"); return; }
      status.show("");
      render(reply.body, listing.signal);
    }, listing.signal);
  }

  function render({ keys, next }, pageSignal) {
    const items = keys.map((name) => {
      const label = name.slice(folder.length);
      if (!name.endsWith("/")) {
        return h("li", { class: "key" }, h("a", { href: keyHref(name), "data-focus": name }, label));
      }
      const counter = h("span", { class: "count" }, "counting…");
      countKeys(name, counter, pageSignal);
      return h("li", { class: "folder" }, h("a", { href: folderHref(name), "data-focus": name }, label), counter);
    });
    rerender(list, items.length ? h("ul", {}, items)
      : h("p", { class: "empty" }, filter.value ? "No keys match this filter." : "No keys here yet."));
    const page = pages.length;
    rerender(pager,
      h("button", { type: "button", "data-focus": "prev", disabled: page === 1,
                    onclick: () => { pages.pop(); restart(); } }, "Previous page"),
      h("span", {}, `Page ${page}`),
      h("button", { type: "button", "data-focus": "next", disabled: next === null,
                    onclick: () => { pages.push(next); restart(); } }, "Next page"));
  }

  let typing;
  filter.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { pages = [null]; restart(); }, 200);
  });
  restart();
}

async function countKeys(folder, counter, signal) {
  try {
    const reply = await request("GET", kvPath(folder, { keys: true, limit: COUNT_LIMIT }), { signal });
    if (!reply.ok) return;
    const n = reply.body.keys.length;
    counter.textContent = reply.body.next === null ? count(n, "key") : `${COUNT_LIMIT}+ keys`;
  } catch {
    counter.textContent = "";  // unreachable: the header says so
  }
}

/** New key: create-only (cas: 0), so an existing key is never overwritten from here. */
function createForm(folder) {
  const name = h("input", { required: true, autocomplete: "off", spellcheck: "false", value: folder });
  const value = h("textarea", { rows: 4, spellcheck: "false" });
  const plain = h("input", { type: "checkbox" });
  const ttl = h("input", { type: "number", min: "0.001", step: "any", inputmode: "decimal" });
  const result = notice();
  async function create(event) {
    event.preventDefault();
    try {
      const body = { value: parseValue(value.value, plain.checked), cas: 0 };
      const seconds = parseTtl(ttl.value);
      if (seconds !== null) body.ttl = seconds;
      const reply = await request("PUT", kvPath(name.value), { body });
      if (reply.ok) {
        location.hash = keyHref(name.value);
      } else if (isConflict(reply)) {
        result.replaceChildren("A key with this name already exists: ", h("a", { href: keyHref(name.value) }, "open it"), ".");
        result.dataset.kind = "error";
      } else {
        result.show(problem(reply), "error");
      }
    } catch (err) {
      result.show(err.message, "error");
    }
  }
  return h("details", { class: "create" }, h("summary", {}, "New key"),
    h("form", { onsubmit: create, "aria-label": "New key" },
      field("Name", name), field("Value (JSON)", value),
      h("label", { class: "check" }, plain, "Plain string: store the text as it is"),
      field("TTL in seconds", ttl, "Optional. Empty: the key does not expire."),
      h("p", { class: "hint" }, "Create only: nothing is written if the key exists (cas: 0)."),
      result, h("button", { type: "submit", class: "primary" }, "Create")));
}
