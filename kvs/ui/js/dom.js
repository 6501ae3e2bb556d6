// Building DOM without a framework: h() makes elements (text is always text, never
// HTML), rerender() swaps content while keeping the keyboard user's focus.

/**
 * h("a", {href: "#/x", onclick: fn}, "text", child): attributes by name, `on…` as event
 * listeners; null, undefined and false attributes and children are left out.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  el.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/**
 * Replace root's content. The element that had the focus (found again by its
 * data-focus attribute) gets it back, so a live update never throws a keyboard user
 * back to the top of the page.
 */
export function rerender(root, ...nodes) {
  const focused = document.activeElement;
  const id = root.contains(focused) ? focused.closest("[data-focus]")?.dataset.focus : undefined;
  root.replaceChildren(...nodes);
  if (id !== undefined) root.querySelector(`[data-focus="${CSS.escape(id)}"]`)?.focus();
}

/** A labelled form field: <label>text <control></label> (a label on every control). */
export function field(text, control, hint) {
  return h("label", { class: "field" }, h("span", {}, text), control, hint && h("small", {}, hint));
}

/** A status line for a form's outcome, announced to screen readers. */
export function notice() {
  const el = h("p", { class: "notice", role: "status", "aria-live": "polite" });
  el.show = (text, kind = "info") => { el.textContent = text; el.dataset.kind = kind; };
  return el;
}

/**
 * A table: {label, caption, headers, rows: [{attrs, cells}]}. The first cell is the row's
 * header. On a narrow screen each row stacks as a card whose cells carry their column's
 * name (data-label); on a wide one a table too wide scrolls sideways in its own box.
 */
export function table({ label, caption, headers, rows, className = "" }) {
  const cell = (content, i) => h(i === 0 ? "th" : "td", { scope: i === 0 ? "row" : null, "data-label": headers[i] },
    h("span", {}, content));  // one box beside the column name when the row stacks
  return h("div", { class: "scroll", role: "region", "aria-label": label, tabindex: 0, "data-focus": label },
    h("table", { class: `stack ${className}` },
      caption && h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows.map(({ attrs, cells }) => h("tr", attrs ?? {}, cells.map(cell))))));
}
