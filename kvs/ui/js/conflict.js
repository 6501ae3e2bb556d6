// The conflict view: shown when a write found the key changed (409) or gone (404).
// Nothing was written. It puts the key's current version next to what the user
// wanted, with a diff, and lets them retry on top of the current version, go back to
// editing, or discard: the choice is always the user's.

import { h } from "./dom.js";
import { diffView } from "./diff.js";
import { editable, hlc, shortId } from "./format.js";

/**
 * {intent, seen, current}: what the user asked for, the version they started from
 * (null: they created), the key's current version (null: absent). Handlers:
 * onRetry, onDiscard, onEditAgain (edits only).
 */
export function conflictView({ intent, seen, current, onRetry, onDiscard, onEditAgain }) {
  const editing = intent.kind === "put";
  const now = current
    ? ["it is now at version ", h("code", {}, shortId(current.version)), `, written on ${current.origin} at ${hlc(current)}.`]
    : ["it has been deleted, or its TTL ran out."];
  const since = seen ? ["You started from version ", h("code", {}, shortId(seen.version)), "; "]
                     : ["You meant to create it; "];
  const mine = editing ? h("pre", { tabindex: 0 }, editable(intent.value)) : h("p", {}, "Delete the key.");
  const theirs = current ? h("pre", { tabindex: 0 }, editable(current.value)) : h("p", {}, "(no live version)");
  const retry = !current && !editing ? null : h("button", { type: "button", class: "primary", "data-focus": "retry", onclick: onRetry },
    editing ? (current ? `Save my edit on top of version ${shortId(current.version)}` : "Create the key with my edit")
            : `Delete version ${shortId(current.version)}`);
  return h("section", { class: "conflict", "aria-labelledby": "conflict-title" },
    h("h2", { id: "conflict-title", tabindex: -1 }, "Conflict: the key changed, nothing was written"),
    h("p", {}, since, now),
    h("div", { class: "sides" },
      h("figure", {}, h("figcaption", {}, current ? `Current version ${shortId(current.version)}` : "Current"), theirs),
      h("figure", {}, h("figcaption", {}, editing ? "Your edit" : "Your action"), mine)),
    editing && h("h3", {}, "Changes from the current version to your edit"),
    editing && diffView(current ? editable(current.value) : "", editable(intent.value), "current", "your edit"),
    h("div", { class: "actions" }, retry,
      editing && onEditAgain && h("button", { type: "button", "data-focus": "again", onclick: onEditAgain }, "Edit my version again"),
      h("button", { type: "button", "data-focus": "discard", onclick: onDiscard },
        editing ? "Discard my edit" : current ? "Keep the key" : "Back")));
}
