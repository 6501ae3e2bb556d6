"""Output of a run: the summary table (stdout and summary.txt), checks.json, and report.html.

report.html is one self-contained file (inline SVG and CSS, no scripts, nothing fetched),
at most PAGE_WIDTH px wide so it reads in a 1280 px window without horizontal scrolling:

    verdict, run facts, checks, "how to read the numbers", legend
    ┌ 0 s        5 s        10 s       15 s ─────────────── time axis (top and bottom) ┐
    │ n1   #2 kill 3.1-5.4 s   ▼                    fault bands, labelled with times │
    │      ▁▂▅▇▇▆▃ ▒▒▒▒ ▇▇▆▆▅▁▁▇▇▇▆   max 45   calls per bucket: ok / fail / unknown │
    │      ═══ lease holds ═══                                                       │
    │      ─ ─ ── ─  one row of calls per client (when there are few enough)         │
    │ n2   ...                                                                        │
    └────────────────────── time since the workload started (s) ─────────────────────┘
    fault table (every fault with its times), then every violation with a zoomed timeline
    of its minimal sub-history

Every mark (legend swatch and timeline element alike) is drawn from MARKS, so the legend
shows exactly what the timeline uses. Colours are from the Okabe-Ito palette, which stays
distinguishable with the common colour-vision deficiencies; a violation also differs by
shape (a triangle and a dashed line, never a bar).
"""

from __future__ import annotations

import html
import math
import textwrap
from pathlib import Path
from typing import Any

import orjson

from kvs.chaos.checkers import CheckResult
from kvs.chaos.checkers.leases import Hold, holds
from kvs.chaos.history import Call, Fault, History

HTML_FILE = "report.html"
CHECKS_FILE = "checks.json"
SUMMARY_FILE = "summary.txt"
MAX_OP_BARS = 6000
DOCS = 'docs/chaos.md, section "Reading the results"'

def op_counts(history: History) -> dict[str, int]:
    out = {"ok": 0, "fail": 0, "unknown": 0}
    for call in history.calls:
        if call.tag != "final":
            out[call.outcome] += 1
    return out


def summary_table(history: History, results: list[CheckResult]) -> str:
    rows = [("checker", "result", "summary")]
    rows += [(r.name, r.status.upper(), r.summary) for r in results]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]
    lines.insert(1, "-" * min(110, max(len(x) for x in lines)))
    counts = op_counts(history)
    total = sum(counts.values())
    span = _span(history)
    faults: dict[str, int] = {}
    for f in history.faults:
        faults[f.kind] = faults.get(f.kind, 0) + 1
    lines.append("")
    fault_text = ", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none"
    lines.append(f"operations: {total} (ok {counts['ok']}, fail {counts['fail']}, "
                 f"unknown {counts['unknown']}) over {span:.1f}s on {len(history.nodes)} nodes; "
                 f"faults: {fault_text}")
    for r in results:
        for note in r.notes[:5]:
            lines.append(f"note ({r.name}): {note}")
    lines.append("")
    lines.append(f"How to read these numbers (more in {DOCS}):")
    for term, text in glossary(history, results):
        lines.append(textwrap.fill(f"{term}: {text}", width=100, initial_indent="  ",
                                   subsequent_indent="      "))
    for r in results:
        for v in r.violations[:10]:
            lines.append("")
            lines.append(v.render())
    return "\n".join(lines)


# -- what the numbers mean --------------------------------------------------------------------

FAIL_TEXT = (
    "calls the node answered without changing anything: 409 (a CAS condition did not hold "
    "because another client wrote first -- the normal outcome of contention), 404 (the key was "
    "absent), or a refused connection (the node was down, so the request never reached it). "
    "Expected under contention and faults; the checkers use these answers as evidence.")
UNKNOWN_TEXT = (
    "calls without a definite answer (timeout, dropped connection, 5xx, cancelled at the end): "
    "each may or may not have taken effect, then or later, and the checkers accept either.")
CONFLICT_TEXT = (
    "CAS is atomic per node, not across nodes. Two nodes can both accept a CAS on the same "
    "version (during a partition, or before either has heard of the other's write). When they "
    "converge, the cluster keeps one winner by the conflict order (HLC timestamp first, the same "
    "on every node) and keeps the loser in the key's history, marked superseded. The losing "
    "branch's increments no longer count in the value, but nothing is silently lost: every "
    "acknowledged write stays visible in history (`kvs history KEY`, GET /kv/KEY?history=true), "
    "and the no-silent-loss checker verifies that on every node.")
LEASE_TEXT = (
    "two clients held the same lease through different nodes at once. Each node grants a lease "
    "atomically, but nodes that have not yet heard of each other's lease (a partition, a paused "
    "node, plain replication delay) can both grant it; one holder wins on convergence. Use a "
    "lease across nodes for efficiency, not for mutual exclusion.")


def glossary(history: History, results: list[CheckResult]) -> list[tuple[str, str]]:
    """The counts a reader could take for errors or losses, each with why it is allowed.

    Shown next to the numbers (summary and report.html), because "N lost" beside kvs's
    promise never to lose a version silently reads like a contradiction without it.
    """
    counts = op_counts(history)
    out = [(f"fail {counts['fail']}{_fail_reasons(history)}", FAIL_TEXT),
           (f"unknown {counts['unknown']}", UNKNOWN_TEXT)]
    by_name = {r.name: r for r in results}
    if "counters" in by_name:
        out.append((f"{by_name['counters'].stats.get('lost', 0)} increments lost to cross-node "
                    "conflicts (allowed)", CONFLICT_TEXT))
    cross = by_name["leases"].stats.get("cross_node_overlaps", 0) if "leases" in by_name else 0
    if cross:
        out.append((f"{cross} cross-node lease overlaps (expected)", LEASE_TEXT))
    return out


def _fail_reasons(history: History) -> str:
    """' (409 cas_conflict 180, 404 not_found 20, refused 5)': what the failed calls were."""
    reasons: dict[str, int] = {}
    for call in history.calls:
        if call.outcome == "fail" and call.tag != "final":
            reason = f"{call.status} {call.error}" if call.status else "refused"
            reasons[reason] = reasons.get(reason, 0) + 1
    top = sorted(reasons.items(), key=lambda item: -item[1])[:4]
    return f" ({', '.join(f'{r} {n}' for r, n in top)})" if top else ""


def _span(history: History) -> float:
    start = history.phases.get("workload")
    end = history.phases.get("workload_end")
    if start is None and history.calls:
        start = history.calls[0].inv
    if end is None and history.calls:
        end = max((call.end or call.inv) for call in history.calls)
    return (end - start) if start is not None and end is not None else 0.0


def write(out_dir: Path, history: History, results: list[CheckResult], *, seconds: float) -> None:
    out_dir = Path(out_dir)
    payload = {"passed": all(r.passed for r in results), "check_seconds": round(seconds, 2),
               "operations": op_counts(history), "results": [r.to_json() for r in results],
               "run_id": history.meta.get("run_id"), "seed": history.meta.get("seed")}
    (out_dir / CHECKS_FILE).write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    (out_dir / SUMMARY_FILE).write_text(summary_table(history, results) + "\n")
    (out_dir / HTML_FILE).write_text(render_html(history, results))


# -- HTML -------------------------------------------------------------------------------------

PAGE_WIDTH = 1160  # px: the widest element; fits 1280 px with the page margins and a scrollbar
LANE_LEFT = 70  # node names and their clock skew
LANE_RIGHT = 50  # each lane's peak count
CHAR_PX = 6.2  # width of one character at font-size 11, to decide whether a label fits

# name -> (legend text, SVG attributes). Timeline elements and legend swatches both use these.
MARKS: dict[str, tuple[str, dict[str, str]]] = {
    "ok": ("ok", {"fill": "#009E73"}),
    "fail": ("fail: answered, nothing changed", {"fill": "#BBBBBB"}),
    "unknown": ("unknown: may have taken effect", {"fill": "#E69F00"}),
    "kill": ("kill -9 (node down)", {"fill": "url(#kvs-hatch)"}),
    "pause": ("SIGSTOP pause", {"fill": "#CC79A7", "fill-opacity": "0.35"}),
    "side-a": ("partition side A", {"fill": "#0072B2", "fill-opacity": "0.25"}),
    "side-b": ("partition side B", {"fill": "#F0E442", "fill-opacity": "0.6"}),
    "skew": ("clock skew", {"fill": "#56B4E9"}),
    "jump": ("clock jump", {"fill": "#D55E00", "fill-opacity": "0.35"}),
    "voters": ("out of the voters", {"fill": "#000000", "fill-opacity": "0.15"}),
    "hold": ("lease hold", {"fill": "#555555"}),
    "violation": ("violation", {"fill": "#8B0000", "stroke": "#FFFFFF", "stroke-width": "1"}),
}
OUTCOMES = ("ok", "fail", "unknown")
HATCH = ("<svg width='0' height='0' style='position:absolute' aria-hidden='true'><defs>"
         "<pattern id='kvs-hatch' width='6' height='6' patternUnits='userSpaceOnUse' "
         "patternTransform='rotate(45)'><rect width='6' height='6' fill='#000000' fill-opacity='0.15'/>"
         "<rect width='2.5' height='6' fill='#000000' fill-opacity='0.6'/></pattern></defs></svg>")

# Vertical layout of one node's lane, in px from its top.
LABEL_H = 16  # fault labels and violation markers
BAR_H = 46  # calls per bucket
HOLD_H = 10  # lease holds
ROW_H = 5  # one client's calls
LANE_GAP = 16
TRACK_ROW = 18  # one row of fault brackets under the lanes
AXIS_H = 26


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _mark(name: str) -> str:
    """class and paint of a mark, as SVG attributes."""
    attrs = " ".join(f"{k}='{v}'" for k, v in MARKS[name][1].items())
    return f"class='mark-{name}' {attrs}"


def _rect(name: str, x: float, y: float, w: float, h: float, title: str) -> str:
    return (f"<rect {_mark(name)} x='{x:.1f}' y='{y:.1f}' width='{max(1.0, w):.1f}' height='{h:.1f}'>"
            f"<title>{_e(title)}</title></rect>")


def _triangle(x: float, y: float) -> str:
    """Path of a violation marker pointing down at (x, y + 10)."""
    return f"M{x - 6:.1f},{y:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},{y + 10:.1f} Z"


class _Scale:
    def __init__(self, t0: float, t1: float, width: float, left: float = LANE_LEFT) -> None:
        self.t0, self.t1 = t0, max(t1, t0 + 1e-3)
        self.width, self.left = width, left

    def x(self, t: float) -> float:
        t = min(max(t, self.t0), self.t1)
        return self.left + (t - self.t0) / (self.t1 - self.t0) * self.width

    def rel(self, t: float | None) -> str:
        """Seconds since the start of the scale, as labels show them."""
        return "?" if t is None else f"{t - self.t0:.1f}"


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
.pass { background: #dff3e3; } .fail { background: #f9d6d5; }
.skipped, .inconclusive { background: #fff2cc; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }
svg { max-width: 100%; height: auto; display: block; }
dl.glossary dt { font-weight: bold; margin-top: .4em; }
dl.glossary dd { margin-left: 1.5em; }
table.zoom td { border: none; padding: 1px 6px 1px 0; font: 11px ui-monospace, monospace; }
.caption { color: #555; font-size: 13px; }
""" + f"body {{ max-width: {PAGE_WIDTH}px; }}"


def render_html(history: History, results: list[CheckResult]) -> str:
    calls = [call for call in history.calls if call.tag != "final"]
    t0 = history.phases.get("workload", calls[0].inv if calls else history.meta.get("t0", 0.0))
    t1 = max([history.phases.get("workload_end", t0)] + [c.end or c.inv for c in calls[-200:]] + [t0 + 1])
    scale = _Scale(t0, t1, PAGE_WIDTH - LANE_LEFT - LANE_RIGHT)
    passed = all(r.passed for r in results)
    meta = history.meta
    timeline = _timeline(history, calls, results, scale)
    used = [name for name in MARKS if f"class='mark-{name}'" in timeline]
    parts = [f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kvs chaos {_e(meta.get('run_id', ''))}: {'PASS' if passed else 'FAIL'}</title>
<style>{CSS}</style></head><body>{HATCH}
<h1>kvs chaos run {_e(meta.get('run_id', '?'))}: {'all checks passed' if passed else 'VIOLATIONS FOUND'}</h1>
""", _facts(history, t1 - t0), _checks(results), _glossary_html(history, results),
             "<h2>Timeline per node</h2>", _legend(used), _caption(scale),
             timeline, _fault_table(history.faults, scale),
             _violations(history, results), "</body></html>"]
    return "".join(parts)


def _facts(history: History, span: float) -> str:
    meta = history.meta
    opts = meta.get("options", {})
    counts = op_counts(history)
    kinds: dict[str, int] = {}
    for f in history.faults:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    node_text = ", ".join(
        f"{n} ({v.get('url')}" + (f", skew {v['skew_ms']:+d} ms" if v.get("skew_ms") else "") + ")"
        for n, v in meta.get("nodes", {}).items())
    rows = (("nodes", node_text),
            ("clients / workloads", f"{opts.get('clients')} / {', '.join(opts.get('workloads', []))}"),
            ("duration", f"{span:.1f}s of workload, seed {meta.get('seed')}"),
            ("operations", f"{sum(counts.values())}: ok {counts['ok']}, fail {counts['fail']}, "
                           f"unknown {counts['unknown']}"),
            ("faults", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
             + (" (times in the fault table below the timeline)" if kinds else "none")))
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _checks(results: list[CheckResult]) -> str:
    out = ["<h2>Checks</h2><table><tr><th>checker</th><th>result</th><th>summary</th></tr>"]
    for r in results:
        notes = "".join(f"<br><small>{_e(n)}</small>" for n in r.notes[:8])
        out.append(f"<tr class='{r.status}'><td>{_e(r.name)}</td><td>{_e(r.status.upper())}</td>"
                   f"<td>{_e(r.summary)}{notes}</td></tr>")
    return "".join(out) + "</table>"


def _glossary_html(history: History, results: list[CheckResult]) -> str:
    items = "".join(f"<dt>{_e(term)}</dt><dd>{_e(text)}</dd>" for term, text in glossary(history, results))
    return (f"<h2>How to read these numbers</h2><dl class='glossary'>{items}</dl>"
            f"<p class='caption'>More in {_e(DOCS)} of the kvs source tree.</p>")


def _legend(names: list[str]) -> str:
    """One SVG row of swatches (wrapping), each painted like the timeline's marks."""
    items, x, y = [], 0.0, 4.0
    for name in names:
        text = MARKS[name][0]
        width = 22 + len(text) * CHAR_PX + 18
        if x + width > PAGE_WIDTH:
            x, y = 0.0, y + 22
        swatch = (f"<path {_mark(name)} d='{_triangle(x + 7, y + 2)}'/>" if name == "violation"
                  else f"<rect {_mark(name)} x='{x:.1f}' y='{y:.1f}' width='14' height='14'/>")
        items.append(f"{swatch}<text x='{x + 20:.1f}' y='{y + 11:.1f}'>{_e(text)}</text>")
        x += width
    return (f"<svg class='legend' xmlns='http://www.w3.org/2000/svg' width='{PAGE_WIDTH}' "
            f"height='{y + 22:.0f}' viewBox='0 0 {PAGE_WIDTH} {y + 22:.0f}' "
            f"font-family='system-ui,sans-serif' font-size='11'>{''.join(items)}</svg>")


def _caption(scale: _Scale) -> str:
    bucket = (scale.t1 - scale.t0) / _buckets(scale)
    return (f"<p class='caption'>Per node: bars count the calls started in each {bucket * 1000:.0f} ms, "
            "stacked ok / fail / unknown, scaled to the node's busiest interval (its count at the "
            "right). Bands are faults with their number; under the lanes each fault's span is "
            "bracketed with its number and start-end time in seconds since the workload started "
            "(also in the fault table). Below each node's bars: its lease holds, then one row per "
            "client with each call as a bar (when the run has few enough calls). Hover anything "
            "for details.</p>")


def _buckets(scale: _Scale) -> int:
    return max(1, int(scale.width / 4))


def _timeline(history: History, calls: list[Call], results: list[CheckResult], scale: _Scale) -> str:
    show_calls = len(calls) <= MAX_OP_BARS
    clients: dict[str, list[str]] = {n: [] for n in history.nodes}
    for call in calls:
        if call.node in clients and call.client not in clients[call.node]:
            clients[call.node].append(call.client)
    lanes, y = {}, AXIS_H
    for n in history.nodes:
        lanes[n] = y
        y += LABEL_H + BAR_H + HOLD_H + (len(clients[n]) * ROW_H if show_calls else 0) + LANE_GAP
    track, track_h = _fault_track(history.faults, scale, y)
    y += track_h
    height = y + AXIS_H + 14
    svg = [f"<svg class='timeline' xmlns='http://www.w3.org/2000/svg' width='{PAGE_WIDTH}' "
           f"height='{height}' viewBox='0 0 {PAGE_WIDTH} {height}' "
           "font-family='system-ui,sans-serif' font-size='11'>"]
    svg += _axis(scale, AXIS_H, y, height)
    svg += _fault_bands(history, lanes, scale)
    svg += track
    all_holds = holds(history)
    for n, top in lanes.items():
        svg += _lane(history, n, top, [c for c in calls if c.node == n], all_holds, scale)
        if show_calls:
            svg += _client_rows(n, top + LABEL_H + BAR_H + HOLD_H, clients[n], calls, scale)
    svg += _violation_marks(results, lanes, scale)
    svg.append("</svg>")
    return "".join(svg)


def _axis(scale: _Scale, top: float, bottom: float, height: float) -> list[str]:
    """Grid lines with their times at the top and the bottom, and the axis title."""
    out = []
    step = _tick(scale.t1 - scale.t0)
    t = 0.0
    while scale.t0 + t <= scale.t1 + 1e-9:
        x = scale.x(scale.t0 + t)
        out.append(f"<line x1='{x:.1f}' y1='{top - 6}' x2='{x:.1f}' y2='{bottom}' stroke='#e4e4e4'/>"
                   f"<text x='{x:.1f}' y='{top - 10}' text-anchor='middle' fill='#555'>{t:g}</text>"
                   f"<text x='{x:.1f}' y='{bottom + 12}' text-anchor='middle' fill='#555'>{t:g}</text>")
        t += step
    middle = scale.left + scale.width / 2
    out.append(f"<text class='axis-label' x='{middle:.1f}' y='{height - 4}' text-anchor='middle' "
               "font-size='12' fill='#222'>time since the workload started (s)</text>")
    return out


def _fault_bands(history: History, lanes: dict[str, float], scale: _Scale) -> list[str]:
    """Each fault as a band over the lanes it touched, labelled `#n kind start-end s` (only
    `#n` where that does not fit: the fault track under the lanes has the times)."""
    out = []
    for number, f in enumerate(history.faults, 1):
        if f.kind == "skew":
            continue  # a property of the node for the whole run: drawn in its lane
        x0, x1 = _extent(f, scale)
        times = _times(f, scale)
        title = f"#{number} {f.describe()} {times}"
        for n, mark in _band_nodes(f):
            if n not in lanes:
                continue
            out.append(_rect(mark, x0, lanes[n], x1 - x0, LABEL_H + BAR_H, title))
            label = next((text for text in (f"#{number} {f.kind} {times}", f"#{number}")
                          if len(text) * CHAR_PX <= x1 - x0 - 2), None)
            if label:
                out.append(f"<text class='fault-label' x='{x0 + 2:.1f}' y='{lanes[n] + 11}' fill='#111' "
                           f"stroke='#fff' stroke-width='3' paint-order='stroke'>{_e(label)}</text>")
    return out


def _fault_track(faults: list[Fault], scale: _Scale, top: float) -> tuple[list[str], int]:
    """Each fault's span as a bracket under the lanes with `#n fault start-end s` on it, so the
    times stay readable where a band is too narrow for its label. A label that would collide
    with an earlier one goes to the first row with room. Returns the marks and their height."""
    out: list[str] = []
    ends: list[float] = []  # right end of what each row holds so far
    for number, f in enumerate(faults, 1):
        if f.kind == "skew":
            continue
        x0, x1 = _extent(f, scale)
        label = f"#{number} {f.describe()} {_times(f, scale)}"
        width = len(label) * CHAR_PX
        if x0 + width <= PAGE_WIDTH:
            anchor, at, lo, hi = "start", x0, x0, max(x1, x0 + width)
        else:  # near the right edge: the label ends where the fault ends
            anchor, at, lo, hi = "end", x1, min(x0, x1 - width), x1
        row = next((i for i, end in enumerate(ends) if end + 8 <= lo), len(ends))
        ends[row:row + 1] = [hi]
        y = top + row * TRACK_ROW
        out.append(f"<path d='M{x0:.1f},{y + 11} V{y + 15} H{x1:.1f} V{y + 11}' fill='none' stroke='#444'/>"
                   f"<text class='fault-time' x='{at:.1f}' y='{y + 9}' text-anchor='{anchor}' "
                   f"font-size='10.5'>{_e(label)}</text>")
    if ends:
        out.append(f"<text x='4' y='{top + 11}' font-size='10.5' fill='#555'>faults</text>")
    return out, len(ends) * TRACK_ROW + (6 if ends else 0)


def _extent(f: Fault, scale: _Scale) -> tuple[float, float]:
    """x of a fault's begin and end (the end of the scale while it is still active)."""
    return scale.x(f.begin), scale.x(f.end if f.end is not None else scale.t1)


def _times(f: Fault, scale: _Scale) -> str:
    return f"{scale.rel(f.begin)}-{scale.rel(f.end)} s"


def _band_nodes(f: Fault) -> list[tuple[str, str]]:
    """(node, mark) for every lane a fault's band covers."""
    if f.kind in ("partition", "oneway"):  # a one-way cut drops side A's packets to side B
        return [(n, ("side-a", "side-b")[i % 2]) for i, side in enumerate(f.detail.get("sides", []))
                for n in side]
    return [(n, f.kind) for n in f.nodes if f.kind in MARKS]


def _lane(history: History, node: str, top: float, calls: list[Call], all_holds: list[Hold],
          scale: _Scale) -> list[str]:
    """Node name (and clock skew), the stacked histogram of its calls, its lease holds."""
    skew = history.meta.get("nodes", {}).get(node, {}).get("skew_ms") or 0
    base = top + LABEL_H + BAR_H
    out = [f"<text x='4' y='{base - BAR_H / 2:.0f}' font-weight='bold' font-size='13'>{_e(node)}</text>",
           f"<line x1='{scale.left}' y1='{base}' x2='{scale.left + scale.width}' y2='{base}' stroke='#bbb'/>"]
    if skew:
        out.append(f"<text x='4' y='{base - BAR_H / 2 + 14:.0f}' font-size='10'>clock</text>"
                   f"<text x='4' y='{base - BAR_H / 2 + 26:.0f}' font-size='10'>{skew:+d} ms</text>")
        out.append(_rect("skew", scale.left, top + LABEL_H - 3, scale.width, 3,
                         f"{node}'s clock runs {skew:+d} ms off for the whole run"))
    buckets = _buckets(scale)
    size = (scale.t1 - scale.t0) / buckets
    hist = [dict.fromkeys(OUTCOMES, 0) for _ in range(buckets)]
    for call in calls:
        hist[min(buckets - 1, max(0, int((call.inv - scale.t0) / size)))][call.outcome] += 1
    peak = max((sum(h.values()) for h in hist), default=1) or 1
    bw = scale.width / buckets
    for b, counts in enumerate(hist):
        y = base
        for kind in OUTCOMES:
            if counts[kind]:
                h = counts[kind] / peak * (BAR_H - 4)
                y -= h
                out.append(_rect(kind, scale.left + b * bw, y, bw, h,
                                 f"{node} {b * size:.2f}-{(b + 1) * size:.2f}s: {counts[kind]} {kind}"))
    out.append(f"<text x='{scale.left + scale.width + 4:.0f}' y='{base - BAR_H + 10:.0f}' fill='#777'>"
               f"{peak}</text>")
    for h in all_holds:
        if h.node == node:
            title = f"{h.client} holds {h.key} {scale.rel(h.start)}-{scale.rel(h.end)}s"
            out.append(_rect("hold", scale.x(h.start), base + 2, scale.x(h.end) - scale.x(h.start),
                             HOLD_H - 4, title))
    return out


def _client_rows(node: str, top: float, clients: list[str], calls: list[Call], scale: _Scale) -> list[str]:
    out = []
    for row, client in enumerate(clients):
        y = top + row * ROW_H + 1
        for call in calls:
            if call.node == node and call.client == client:
                x0 = scale.x(call.inv)
                x1 = scale.x(call.end if call.end is not None else call.inv + 0.01)
                out.append(_rect(call.outcome, x0, y, max(0.8, x1 - x0), ROW_H - 1, call.describe()))
    return out


def _violation_marks(results: list[CheckResult], lanes: dict[str, float], scale: _Scale) -> list[str]:
    """A triangle over the lane and a dashed line down through its bars: shape, not only colour."""
    out = []
    colour = MARKS["violation"][1]["fill"]
    for r in results:
        for v in r.violations:
            if v.t is None:
                continue
            x = scale.x(v.t)
            for n in [v.node] if v.node in lanes else list(lanes):
                top = lanes[n]
                out.append(f"<line x1='{x:.1f}' y1='{top + 10}' x2='{x:.1f}' y2='{top + LABEL_H + BAR_H}' "
                           f"stroke='{colour}' stroke-width='1.5' stroke-dasharray='3,2'/>"
                           f"<path {_mark('violation')} d='{_triangle(x, top)}'>"
                           f"<title>{_e(v.render())}</title></path>")
    return out


def _tick(span: float) -> float:
    raw = span / 12
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def _fault_table(faults: list[Fault], scale: _Scale) -> str:
    if not faults:
        return ""
    rows = "".join(
        f"<tr><td>#{n}</td><td>{_e(f.describe())}</td><td>{scale.rel(f.begin)}</td>"
        f"<td>{scale.rel(f.end)}</td><td>{'' if f.end is None else f'{f.end - f.begin:.1f}'}</td></tr>"
        for n, f in enumerate(faults, 1))
    return ("<h2>Faults</h2><table class='faults'><tr><th>#</th><th>fault</th><th>from (s)</th>"
            f"<th>to (s)</th><th>lasted (s)</th></tr>{rows}</table>")


def _violations(history: History, results: list[CheckResult]) -> str:
    violations = [v for r in results for v in r.violations]
    if not violations:
        return ""
    parts = [f"<h2>Violations ({len(violations)})</h2>"]
    by_id = {call.id: call for call in history.calls}
    for n, v in enumerate(violations[:60], 1):
        where = (f" — node {_e(v.node)}" if v.node else "") + (f" — key {_e(v.key)}" if v.key else "")
        parts.append(f"<h3 id='v{n}'>{n}. [{_e(v.checker)}] {_e(v.message)}{where}</h3>")
        involved = [by_id[i] for i in v.ops if i in by_id]
        if involved:
            parts.append(_zoom(involved))
        parts.append(f"<pre>{_e(chr(10).join(v.lines))}</pre>")
    return "".join(parts)


def _zoom(calls: list[Call]) -> str:
    """The calls of a violation, one table row each: a bar on a common time scale, then the text."""
    start = min(call.inv for call in calls)
    end = max((call.end or call.inv) for call in calls)
    pad = max(0.002, (end - start) * 0.05)
    scale = _Scale(start - pad, end + pad, 300, left=0)
    rows = [f"<tr><td colspan='2'>t0 = {start - pad:.3f}; bar width = "
            f"{(end - start + 2 * pad) * 1000:.0f} ms</td></tr>"]
    for call in sorted(calls, key=lambda c: c.inv):
        x0 = scale.x(call.inv)
        x1 = scale.x(call.end) if call.end is not None else scale.width
        bar = (f"<svg xmlns='http://www.w3.org/2000/svg' width='300' height='12'>"
               f"{_rect(call.outcome, x0, 1, max(2.0, x1 - x0), 10, call.describe())}</svg>")
        rows.append(f"<tr><td>{bar}</td><td>{_e(call.describe())}</td></tr>")
    return "<table class='zoom'>" + "".join(rows) + "</table>"
