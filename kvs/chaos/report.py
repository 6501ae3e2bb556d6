"""Output of a run: the summary table (stdout and summary.txt), checks.json, and report.html.

report.html is one self-contained file (inline SVG and CSS, no scripts, nothing fetched):

    ┌ verdict table, run facts, every violation with its minimal sub-history ───────────┐
    │ n1 ▕▁▂▅▇▇▆▃ ▇▇▆▆▅▁▁▁▇▇▇▆  ops per interval: ok green, fail grey, unknown red  │
    │    ▕███ kill ███        partition side A (blue) / B (orange), pause (purple)   │
    │    ▕ ═══ lease holds ═══    ▼ violation (hover for the text)                   │
    │ n2 ▕ ...                                                                        │
    └──────────────────────────────────────────────────────────────────────────────────┘

Per-operation bars (one row per client) are drawn when the run has few enough
operations to stay readable; each violation also gets its own zoomed timeline of the
operations in its minimal sub-history. Hover any element for its details.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import orjson

from kvs.chaos.checkers import CheckResult
from kvs.chaos.checkers.leases import holds
from kvs.chaos.history import Call, History

HTML_FILE = "report.html"
CHECKS_FILE = "checks.json"
SUMMARY_FILE = "summary.txt"
MAX_OP_BARS = 6000

COLORS = {"ok": "#2e9e44", "fail": "#9a9a9a", "unknown": "#d62728"}
FAULT_COLORS = {"kill": "#222222", "pause": "#8e44ad", "skew": "#e0b000"}
SIDE_COLORS = ("#1f77b4", "#ff7f0e")


def op_counts(history: History) -> dict[str, int]:
    out = {"ok": 0, "fail": 0, "unknown": 0}
    for op in history.calls:
        if op.tag != "final":
            out[op.outcome] += 1
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
    for r in results:
        for v in r.violations[:10]:
            lines.append("")
            lines.append(v.render())
    return "\n".join(lines)


def _span(history: History) -> float:
    start = history.phases.get("workload")
    end = history.phases.get("workload_end")
    if start is None and history.calls:
        start = history.calls[0].inv
    if end is None and history.calls:
        end = max((op.end or op.inv) for op in history.calls)
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

def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


class _Scale:
    def __init__(self, t0: float, t1: float, width: float, left: float = 70) -> None:
        self.t0, self.t1 = t0, max(t1, t0 + 1e-3)
        self.width, self.left = width, left

    def x(self, t: float) -> float:
        t = min(max(t, self.t0), self.t1)
        return self.left + (t - self.t0) / (self.t1 - self.t0) * self.width


def render_html(history: History, results: list[CheckResult]) -> str:
    ops = [op for op in history.calls if op.tag != "final"]
    t0 = history.phases.get("workload", ops[0].inv if ops else history.meta.get("t0", 0.0))
    t1 = max([history.phases.get("workload_end", t0)] + [op.end or op.inv for op in ops[-200:]] + [t0 + 1])
    span = t1 - t0
    width = min(8000.0, max(1000.0, span * 25))
    scale = _Scale(t0, t1, width)
    passed = all(r.passed for r in results)
    meta = history.meta
    parts = [f"""<!doctype html><html><head><meta charset="utf-8">
<title>kvs chaos {_e(meta.get('run_id', ''))}: {'PASS' if passed else 'FAIL'}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
.pass {{ background: #dff3e3; }} .fail {{ background: #f9d6d5; }}
.skipped, .inconclusive {{ background: #fff2cc; }}
pre {{ background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }}
.scroll {{ overflow-x: auto; border: 1px solid #ddd; }}
.legend span {{ display: inline-block; margin-right: 1.2em; }}
.sw {{ display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin-right: 4px; }}
</style></head><body>
<h1>kvs chaos run {_e(meta.get('run_id', '?'))}: {'all checks passed' if passed else 'VIOLATIONS FOUND'}</h1>
"""]
    counts = op_counts(history)
    opts = meta.get("options", {})
    parts.append("<table>")
    node_text = ", ".join(
        f"{n} ({v.get('url')}" + (f", skew {v['skew_ms']:+d} ms" if v.get("skew_ms") else "") + ")"
        for n, v in meta.get("nodes", {}).items())
    for label, value in (
            ("nodes", node_text),
            ("clients / workloads", f"{opts.get('clients')} / {', '.join(opts.get('workloads', []))}"),
            ("duration", f"{span:.1f}s of workload, seed {meta.get('seed')}"),
            ("operations", f"{sum(counts.values())}: ok {counts['ok']}, fail {counts['fail']}, "
                           f"unknown {counts['unknown']}"),
            ("faults", ", ".join(f.describe() for f in history.faults[:40])
             + (" ..." if len(history.faults) > 40 else "") or "none")):
        parts.append(f"<tr><th>{_e(label)}</th><td>{_e(value)}</td></tr>")
    parts.append("</table><h2>Checks</h2><table><tr><th>checker</th><th>result</th><th>summary</th></tr>")
    for r in results:
        notes = "".join(f"<br><small>{_e(n)}</small>" for n in r.notes[:8])
        parts.append(f"<tr class='{r.status}'><td>{_e(r.name)}</td><td>{_e(r.status.upper())}</td>"
                     f"<td>{_e(r.summary)}{notes}</td></tr>")
    parts.append("</table>")
    parts.append(_legend())
    parts.append("<h2>Timeline per node</h2><div class='scroll'>")
    parts.append(_timeline(history, ops, results, scale))
    parts.append("</div>")
    violations = [v for r in results for v in r.violations]
    if violations:
        parts.append(f"<h2>Violations ({len(violations)})</h2>")
        by_id = {op.id: op for op in history.calls}
        for n, v in enumerate(violations[:60], 1):
            where = (f" — node {_e(v.node)}" if v.node else "") + (f" — key {_e(v.key)}" if v.key else "")
            parts.append(f"<h3 id='v{n}'>{n}. [{_e(v.checker)}] {_e(v.message)}{where}</h3>")
            involved = [by_id[i] for i in v.ops if i in by_id]
            if involved:
                parts.append(_zoom(involved))
            parts.append(f"<pre>{_e(chr(10).join(v.lines))}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


def _legend() -> str:
    items = [("ok", COLORS["ok"]), ("fail (answered, nothing changed)", COLORS["fail"]),
             ("unknown (timeout / dropped)", COLORS["unknown"]), ("kill -9", FAULT_COLORS["kill"]),
             ("SIGSTOP pause", FAULT_COLORS["pause"]), ("partition side A", SIDE_COLORS[0]),
             ("partition side B", SIDE_COLORS[1]), ("clock skew", FAULT_COLORS["skew"]),
             ("lease hold", "#4b6cb7"), ("violation", "#ff0000")]
    return "<p class='legend'>" + "".join(
        f"<span><i class='sw' style='background:{c}'></i>{_e(t)}</span>" for t, c in items) + "</p>"


def _timeline(history: History, ops: list[Call], results: list[CheckResult], scale: _Scale) -> str:
    nodes = history.nodes
    show_ops = len(ops) <= MAX_OP_BARS
    clients_by_node: dict[str, list[str]] = {n: [] for n in nodes}
    for op in ops:
        if op.node in clients_by_node and op.client not in clients_by_node[op.node]:
            clients_by_node[op.node].append(op.client)
    bar_h, hold_h, row_h = 46, 10, 5
    lanes = {}
    y = 30
    for n in nodes:
        rows = len(clients_by_node[n]) if show_ops else 0
        lanes[n] = y
        y += bar_h + hold_h + rows * row_h + 22
    height = y + 10
    width = scale.left + scale.width + 20
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height}' "
           "font-family='system-ui,sans-serif' font-size='11'>"]
    step = _tick(scale.t1 - scale.t0)
    t = 0.0
    while scale.t0 + t <= scale.t1:
        x = scale.x(scale.t0 + t)
        svg.append(f"<line x1='{x:.1f}' y1='18' x2='{x:.1f}' y2='{height}' stroke='#eee'/>"
                   f"<text x='{x:.1f}' y='14' text-anchor='middle' fill='#666'>{t:g}s</text>")
        t += step
    # Faults, behind everything else.
    for f in history.faults:
        x0, x1 = scale.x(f.begin), scale.x(f.end if f.end is not None else scale.t1)
        title = _e(f"{f.describe()} from {f.begin - scale.t0:.2f}s to "
                   f"{(f.end - scale.t0) if f.end else float('nan'):.2f}s")
        if f.kind == "partition":
            for side_no, side in enumerate(f.detail.get("sides", [])):
                for n in side:
                    if n in lanes:
                        svg.append(f"<rect x='{x0:.1f}' y='{lanes[n] - 4}' width='{max(1, x1 - x0):.1f}' "
                                   f"height='{bar_h + 8}' fill='{SIDE_COLORS[side_no % 2]}' opacity='0.18'>"
                                   f"<title>{title}</title></rect>")
        else:
            for n in f.nodes:
                if n not in lanes:
                    continue
                color = FAULT_COLORS.get(f.kind, "#999")
                w = max(1, x1 - x0)
                if f.kind == "skew":
                    svg.append(f"<rect x='{x0:.1f}' y='{lanes[n] - 6}' width='{w:.1f}' height='3' "
                               f"fill='{color}'><title>{title}</title></rect>")
                else:
                    svg.append(f"<rect x='{x0:.1f}' y='{lanes[n] - 4}' width='{w:.1f}' height='{bar_h + 8}' "
                               f"fill='{color}' opacity='0.22'><title>{title}</title></rect>")
    all_holds = holds(history)
    buckets = max(1, int(scale.width / 4))
    size = (scale.t1 - scale.t0) / buckets
    for n in nodes:
        top = lanes[n]
        svg.append(f"<text x='4' y='{top + bar_h / 2 + 4:.0f}' font-weight='bold' font-size='13'>"
                   f"{_e(n)}</text>"
                   f"<line x1='{scale.left}' y1='{top + bar_h}' x2='{scale.left + scale.width}' "
                   f"y2='{top + bar_h}' stroke='#bbb'/>")
        hist = [[0, 0, 0] for _ in range(buckets)]
        for op in ops:
            if op.node == n:
                b = min(buckets - 1, max(0, int((op.inv - scale.t0) / size)))
                hist[b][("ok", "fail", "unknown").index(op.outcome)] += 1
        peak = max((sum(h) for h in hist), default=1) or 1
        for b, (ok, fail, unk) in enumerate(hist):
            x = scale.left + b * scale.width / buckets
            base = top + bar_h
            for count, kind in ((ok, "ok"), (fail, "fail"), (unk, "unknown")):
                if not count:
                    continue
                h = count / peak * (bar_h - 4)
                base -= h
                svg.append(f"<rect x='{x:.1f}' y='{base:.1f}' width='{scale.width / buckets:.1f}' "
                           f"height='{h:.1f}' fill='{COLORS[kind]}'><title>{_e(n)} "
                           f"{b * size:.2f}-{(b + 1) * size:.2f}s: {count} {kind}</title></rect>")
        svg.append(f"<text x='{scale.left + scale.width + 4}' y='{top + 8}' fill='#999'>{peak}</text>")
        for h in all_holds:
            if h.node != n:
                continue
            svg.append(f"<rect x='{scale.x(h.start):.1f}' y='{top + bar_h + 2}' "
                       f"width='{max(1.0, scale.x(h.end) - scale.x(h.start)):.1f}' height='{hold_h - 3}' "
                       f"fill='#4b6cb7' opacity='0.6'><title>{_e(h.client)} holds {_e(h.key)} "
                       f"{h.start - scale.t0:.2f}-{h.end - scale.t0:.2f}s</title></rect>")
        if show_ops:
            for row, client in enumerate(clients_by_node[n]):
                ry = top + bar_h + hold_h + row * row_h + 1
                for op in ops:
                    if op.node != n or op.client != client:
                        continue
                    x0 = scale.x(op.inv)
                    x1 = scale.x(op.end if op.end is not None else op.inv + 0.01)
                    svg.append(f"<rect x='{x0:.1f}' y='{ry}' width='{max(0.8, x1 - x0):.1f}' "
                               f"height='{row_h - 1}' fill='{COLORS[op.outcome]}'>"
                               f"<title>{_e(op.describe())}</title></rect>")
    for r in results:
        for v in r.violations:
            if v.t is None:
                continue
            targets = [v.node] if v.node in lanes else nodes
            for n in targets:
                x = scale.x(v.t)
                top = lanes[n] - 4
                svg.append(f"<path d='M{x - 6:.1f},{top - 8} L{x + 6:.1f},{top - 8} L{x:.1f},{top + 2} Z' "
                           f"fill='#ff0000'><title>{_e(v.render())}</title></path>")
    svg.append("</svg>")
    return "".join(svg)


def _tick(span: float) -> float:
    raw = span / 12
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def _zoom(ops: list[Call]) -> str:
    """A small timeline of the ops in a violation: one row each, label at the right."""
    start = min(op.inv for op in ops)
    end = max((op.end or op.inv) for op in ops)
    pad = max(0.002, (end - start) * 0.05)
    scale = _Scale(start - pad, end + pad, 420, left=10)
    row = 16
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='1300' height='{len(ops) * row + 24}' "
           "font-family='ui-monospace,monospace' font-size='11'>"]
    svg.append(f"<text x='10' y='12' fill='#666'>t0 = {start - pad:.3f}; width = "
               f"{(end - start + 2 * pad) * 1000:.0f} ms</text>")
    for i, op in enumerate(sorted(ops, key=lambda o: o.inv)):
        y = 20 + i * row
        x0 = scale.x(op.inv)
        x1 = scale.x(op.end) if op.end is not None else scale.x(end + pad)
        dash = " stroke-dasharray='3,2' stroke='#d62728' fill='none'" if op.end is None else \
            f" fill='{COLORS[op.outcome]}'"
        svg.append(f"<rect x='{x0:.1f}' y='{y}' width='{max(2, x1 - x0):.1f}' height='{row - 4}'{dash}>"
                   f"<title>{_e(op.describe())}</title></rect>"
                   f"<text x='440' y='{y + 10}'>{_e(op.describe())}</text>")
    svg.append("</svg>")
    return "<div class='scroll'>" + "".join(svg) + "</div>"
