// One key: its value (pretty JSON or raw), metadata and TTL countdown; edit, delete and
// TTL changes with CAS on the version shown; the conflict view when that version is
// no longer current. The view follows the key live through a blocking query.

import { kvPath, problem, request, watch } from "./api.js";
import { conflictView } from "./conflict.js";
import { field, h, notice, rerender } from "./dom.js";
import { editable, hlc, pretty, shortId, when } from "./format.js";
import { apply, current, deleteIntent, flagsSafe, isConflict, parentFolder, parseTtl, parseValue, putIntent }
  from "./kv.js";
import { folderHref, historyHref, keyHeader } from "./nav.js";

export function mount(root, key, signal) {
  document.title = `${key} · kvs`;
  const body = h("div");
  const status = notice();
  root.replaceChildren(...keyHeader(key, "Value"), status, body);
  let latest;                 // current version (null: absent); undefined until the first read
  let mode = { name: "view" }; // view | confirm {base} | edit {base, changed} | conflict {intent, seen}
  let format = "pretty";
  let raw = { version: null, text: "" };
  let ttlDraft = "";          // the TTL field survives live redraws

  function show() {
    if (mode.name === "conflict") {
      rerender(body, conflictView({
        intent: mode.intent, seen: mode.seen, current: latest,
        onRetry: () => perform(mode.intent, latest),
        onDiscard: () => { mode = { name: "view" }; show(); },
        onEditAgain: () => edit(latest, editable(mode.intent.value), typeof mode.intent.value === "string"),
      }));
    } else if (latest === null) {
      rerender(body, absent());
    } else if (latest !== undefined) {
      rerender(body, valueCard());
    }
  }

  function absent() {
    return h("section", { class: "card" },
      h("p", {}, "No live key here: it was never written, was deleted, or its TTL ran out."),
      h("div", { class: "actions" },
        h("a", { class: "button", href: historyHref(key) }, "History"),
        h("button", { type: "button", "data-focus": "create", onclick: () => edit(null, "") }, "Create it"),
        h("a", { class: "button", href: folderHref(parentFolder(key)) }, "Back to the folder")));
  }

  function valueCard() {
    const v = latest;
    const choose = (name, text) => h("label", {}, h("input", {
      type: "radio", name: "format", value: name, checked: format === name, "data-focus": `format-${name}`,
      onchange: () => { format = name; show(); } }), text);
    const shown = format === "raw" ? rawText(v) : pretty(v.value);
    return h("section", { class: "card" },
      h("fieldset", { class: "toggle" }, h("legend", {}, "Show as"),
        choose("pretty", "Pretty JSON"), choose("raw", "Raw")),
      h("pre", { class: "value", tabindex: 0, "aria-label": "Value", "data-focus": "value" }, shown),
      mode.name === "confirm" ? confirmDelete(mode.base) : h("div", { class: "actions" },
        h("button", { type: "button", class: "primary", "data-focus": "edit", disabled: !flagsSafe(v),
                      onclick: () => edit(v, editable(v.value), typeof v.value === "string") }, "Edit"),
        h("button", { type: "button", "data-focus": "delete",
                      onclick: () => { mode = { name: "confirm", base: v }; show(); focus("confirm"); } }, "Delete"),
        h("a", { class: "button", href: historyHref(key) }, "History")),
      flagsSafe(v) ? null : h("p", { class: "notice", "data-kind": "error" },
        "This key's flags are larger than a browser can hold exactly; change it with the kvs command instead."),
      h("dl", { class: "meta" },
        meta("Version", h("code", { title: v.version }, v.version)),
        meta("Written", `${hlc(v)} on ${v.origin}`),
        meta("Indexes", `modify ${v.modify_index}, create ${v.create_index}`),
        meta("Flags", String(v.flags)),
        meta("Expires", v.expires_at === null ? "never (no TTL)"
          : [h("span", { "data-expires": v.expires_at, class: "countdown" }), ` (${when(v.expires_at)})`])),
      ttlForm(v));
  }

  function rawText(v) {
    if (raw.version === v.version) return raw.text;
    request("GET", kvPath(key, { raw: true }), { signal }).then((reply) => {
      raw = { version: v.version, text: reply.text };
      show();
    }, () => {});
    return "…";
  }

  function ttlForm(v) {
    const input = h("input", { type: "number", min: "0.001", step: "any", inputmode: "decimal", required: true,
                               "data-focus": "ttl", value: ttlDraft, oninput: () => { ttlDraft = input.value; } });
    const submit = (ttl) => {
      try {
        perform(putIntent(v.value, ttl === undefined ? parseTtl(input.value) : ttl), v);
      } catch (err) {
        status.show(err.message, "error");
      }
    };
    return h("form", { class: "ttl", "aria-label": "TTL", onsubmit: (e) => { e.preventDefault(); submit(); } },
      h("div", { class: "row" }, field("TTL in seconds", input),
        h("button", { type: "submit", "data-focus": "ttl-set", disabled: !flagsSafe(v) },
          v.expires_at === null ? "Set TTL" : "Refresh TTL"),
        v.expires_at !== null && h("button", { type: "button", "data-focus": "ttl-remove", disabled: !flagsSafe(v),
                                               onclick: () => submit(null) }, "Remove TTL")),
      h("p", { class: "hint" }, "Rewrites the value with the new TTL, only if it is still this version."));
  }

  function confirmDelete(base) {
    return h("div", { class: "confirm", role: "group", "aria-label": "Confirm delete" },
      h("p", {}, "Delete version ", h("code", {}, shortId(base.version)), "? Only if nobody changed the key since."),
      h("button", { type: "button", class: "danger", "data-focus": "confirm", onclick: () => perform(deleteIntent(), base) }, "Delete"),
      h("button", { type: "button", "data-focus": "cancel", onclick: () => { mode = { name: "view" }; show(); focus("delete"); } }, "Cancel"));
  }

  /** The editor, on top of `base` (null: create). It is not redrawn by live updates. */
  function edit(base, text, asString = false) {
    const value = h("textarea", { rows: 12, spellcheck: "false", "data-focus": "editor" }, text);
    const plain = h("input", { type: "checkbox", checked: asString });
    const ttl = h("input", { type: "number", min: "0.001", step: "any", inputmode: "decimal",
                             value: base?.expires_at ? String(Math.max(1, Math.ceil((base.expires_at - Date.now()) / 1000))) : "" });
    const changed = notice();
    const problemLine = notice();
    mode = { name: "edit", base, changed };
    const save = (event) => {
      event.preventDefault();
      try {
        perform(putIntent(parseValue(value.value, plain.checked), parseTtl(ttl.value)), base);
      } catch (err) {
        problemLine.show(err.message, "error");
      }
    };
    rerender(body, h("form", { class: "card editor", onsubmit: save, "aria-label": base ? "Edit value" : "Create key" },
      field("Value (JSON)", value),
      h("label", { class: "check" }, plain, "Plain string: store the text as it is"),
      field("TTL in seconds", ttl, "Empty: the key does not expire."),
      h("p", { class: "hint" }, base ? ["Saving writes only if the key is still at version ", h("code", {}, shortId(base.version)), " (if_version)."]
                                     : "Creating writes only if the key does not exist (cas: 0)."),
      changed, problemLine,
      h("div", { class: "actions" },
        h("button", { type: "submit", class: "primary" }, base ? "Save" : "Create"),
        h("button", { type: "button", onclick: () => { mode = { name: "view" }; show(); } }, "Cancel"))));
    value.focus();
  }

  /** Apply the intent on top of `base`; a conflict opens the conflict view. */
  async function perform(intent, base) {
    try {
      const reply = await apply(key, intent, base);
      if (reply.ok) {
        mode = { name: "view" };
        status.show(intent.kind === "delete" ? `Deleted (tombstone ${shortId(reply.body.version)}).`
                                             : `Saved version ${shortId(reply.body.version)}.`, "ok");
      } else if (isConflict(reply)) {
        mode = { name: "conflict", intent, seen: base };
        status.show("");
      } else {
        status.show(problem(reply), "error");
        return;
      }
      latest = await current(key, signal);
      show();
      if (mode.name === "conflict") body.querySelector("#conflict-title").focus();
    } catch (err) {
      status.show(err.message, "error");  // unreachable: the user may retry
    }
  }

  function focus(id) { body.querySelector(`[data-focus="${id}"]`)?.focus(); }

  watch(kvPath(key), {}, (reply) => {
    if (reply.status !== 200 && reply.status !== 404) { status.show(problem(reply), "error"); return; }
    latest = reply.status === 200 ? reply.body : null;
    if (mode.name !== "edit") { show(); return; }
    const base = mode.base;
    if ((latest?.version ?? null) !== (base?.version ?? null)) {
      mode.changed.show(latest ? `Changed since you opened the editor: the key is now at version ${shortId(latest.version)}. Saving will show you both.`
                               : "The key was deleted since you opened the editor. Saving will show you both.", "warn");
    }
  }, signal);
}

function meta(name, value) {
  return [h("dt", {}, name), h("dd", {}, value)];
}
