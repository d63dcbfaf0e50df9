"""Timeline view of one simulated run: a single self-contained HTML page.

:func:`render_timeline` turns a :class:`~duroxide_sim.sim.harness.SimResult` into one HTML
document (inline CSS and JS; no network, no external fonts or scripts) that shows the run as
horizontal lanes over virtual time:

* a ``run`` lane (``data-lane="global"``) with begin/end, every fault, crash, restart, lock
  expiry, provider error and checker failure;
* one lane per runtime process (``data-lane="node:n0"``, ...): the orchestration and activity
  work it did, its crashes and restarts, and a hatched band while it was down;
* one lane per orchestration instance (``data-lane="instance:<id>"``; sub-orchestrations are
  indented under their parent): client operations, orchestration fetches and turns, activity
  fetch/exec/ack, log records, and failures that name the instance.

The x axis is the rank of each trace record in the trace (which is ordered by virtual time
``t`` and then step), so records at the same virtual millisecond never overlap; ticks on the
axis row show where virtual time advanced. A failure gets its own column right after the
last record of its step (or at the end when it has no step). Faults, crashes, restarts, lock
expiries and failures also draw a thin vertical guide across every lane.

Every marker is ``<i class="ev op-<op> ..." data-step="N" data-i="<trace index>">`` (failures
carry ``data-f`` instead of ``data-i``). Clicking one shows, in the details panel, the trace
record (its canonical line and pretty JSON) and, for an orchestration turn, the history events
that turn wrote, taken from ``result.histories`` and checked against the turn's digest. The
arrow keys step through records; ``#step=N`` / ``#i=N`` in the URL selects a record on load.

Everything from the run (instance ids, payloads, messages) is HTML-escaped, and the data block
is JSON with ``<``, ``>`` and ``&`` written as ``\\u`` escapes. Uncaught script errors are
recorded into ``#js-errors`` (empty when the page is healthy). Rendering is a pure function of
the result: no wall clock, no randomness, identical input gives identical bytes.
"""

from __future__ import annotations

import html
import json
import pathlib
import re
from collections.abc import Sequence
from typing import Any

from ..core.events import HistoryEvent, to_dict
from .harness import Failure, SimResult, _digest

__all__ = ["render_timeline", "write_timeline"]

#: Records drawn in the run lane (as well as in their node lane, when they name one).
_GLOBAL_OPS = frozenset({"begin", "end", "fault", "crash", "restart", "lock_expiry", "provider_error", "client_retry"})
#: Records that also draw a vertical guide across every lane.
_GUIDE_OPS = frozenset({"fault", "crash", "restart", "lock_expiry"})
#: Records drawn in the lane of the node that did them.
_NODE_OPS = frozenset({"orch_fetch", "orch_turn", "work_fetch", "work_exec", "work_ack", "crash", "restart"})
#: Records drawn in the lane of the instance they name.
_INSTANCE_OPS = frozenset({"client", "client_retry", "orch_fetch", "orch_turn", "work_fetch", "work_exec", "work_ack", "log"})

_SAFE_CLASS = re.compile(r"[^A-Za-z0-9_-]")

_LEGEND = (
    ("client", "client op"),
    ("orch_fetch", "orch fetch"),
    ("orch_turn", "orch turn"),
    ("orch_turn res-completed", "turn: completed"),
    ("orch_turn res-failed", "turn: failed"),
    ("work_fetch", "activity fetch"),
    ("work_exec", "activity exec"),
    ("work_ack", "activity ack"),
    ("work_ack nc", "ack not committed"),
    ("fault", "fault"),
    ("crash", "crash"),
    ("restart", "restart"),
    ("lock_expiry", "lock expiry"),
    ("provider_error", "provider error"),
    ("log", "log"),
    ("failure", "checker failure"),
)


#: Characters HTML must not carry raw (C0 controls but tab/newline/CR, DEL, C1 controls, lone
#: surrogates): shown as their ``\\xNN`` / ``\\uXXXX`` escape, as the text trace shows them.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _unsafe_char(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")


def _e(value: Any) -> str:
    """HTML-escape any value (text and attribute values alike); control characters and lone
    surrogates become visible escapes (raw, they are parse errors, or unencodable)."""
    return _UNSAFE.sub(_unsafe_char, html.escape(str(value), quote=True))


def _cls(value: Any) -> str:
    return _SAFE_CLASS.sub("_", str(value))


def _script_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` survive."""
    text = json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":"), default=repr)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fmt_ms(ms: int) -> str:
    """Virtual time for axis labels: ``250ms``, ``1.5s``, ``2m3s``, ``4h5m``, ``30d2h``."""
    ms = int(ms)
    if ms < 1_000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if ms < 3_600_000:
        m, rest = divmod(ms, 60_000)
        return f"{m}m" + (f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s" if rest else "")
    if ms < 86_400_000:
        h, rest = divmod(ms, 3_600_000)
        return f"{h}h{rest // 60_000}m"
    d, rest = divmod(ms, 86_400_000)
    return f"{d}d{rest // 3_600_000}h"


# --------------------------------------------------------------------------------------------
# What goes where
# --------------------------------------------------------------------------------------------


def _parse(trace: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for line in trace:
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {"op": "unparsed", "line": line}
        if not isinstance(rec, dict):
            rec = {"op": "unparsed", "line": line}
        out.append(rec)
    return out


def _instances(result: SimResult, records: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Every instance (first appearance order), children right after their parent, with depth."""
    seen: dict[str, None] = {}
    for rec in records:
        inst = rec.get("instance")
        if isinstance(inst, str):
            seen.setdefault(inst)
    for inst in list(result.histories) + list(result.statuses):
        seen.setdefault(inst)
    for f in result.failures:
        if f.instance:
            seen.setdefault(f.instance)
    names = list(seen)
    children: dict[str, list[str]] = {}
    roots = []
    for inst in names:
        parent = inst.rsplit("::sub::", 1)[0] if "::sub::" in inst else None
        if parent is not None and parent in seen and parent != inst:
            children.setdefault(parent, []).append(inst)
        else:
            roots.append(inst)
    ordered: list[tuple[str, int]] = []
    placed: set[str] = set()

    def visit(inst: str, depth: int) -> None:
        if inst in placed:
            return
        placed.add(inst)
        ordered.append((inst, depth))
        for child in children.get(inst, []):
            visit(child, depth + 1)

    for inst in roots:
        visit(inst, 0)
    for inst in names:  # a parent cycle cannot happen with real ids; never drop a lane anyway
        visit(inst, 0)
    return ordered


def _nodes(records: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for rec in records:
        if rec.get("op") == "begin" and isinstance(rec.get("nodes"), int):
            for k in range(rec["nodes"]):
                names.setdefault(f"n{k}")
    for rec in records:
        node = rec.get("node")
        if isinstance(node, str):
            names.setdefault(node)
    return list(names)


def _turn_writes(result: SimResult, records: list[dict[str, Any]]) -> dict[str, Any]:
    """For each orch_turn (by trace index): the history events it wrote, found in the final
    history of the execution its fetch named (other executions as a fallback), and whether
    their digest equals the digest the turn recorded."""
    index: dict[tuple[str, int], dict[int, HistoryEvent]] = {}
    for inst, executions in result.histories.items():
        for exe, events in executions.items():
            index[(inst, exe)] = {ev.event_id: ev for ev in events}
    fetched: dict[tuple[Any, Any], Any] = {}
    out: dict[str, Any] = {}
    for i, rec in enumerate(records):
        op = rec.get("op")
        if op == "orch_fetch":
            fetched[(rec.get("node"), rec.get("instance"))] = rec.get("execution")
            continue
        if op != "orch_turn" or not rec.get("events"):
            continue
        inst = rec.get("instance")
        wanted = []
        for name in rec["events"]:
            ident, _, kind = str(name).partition(":")
            wanted.append((int(ident) if ident.isdigit() else None, kind))
        first = fetched.get((rec.get("node"), inst))
        candidates = [first] + sorted(e for (n, e) in index if n == inst and e != first)
        # The fetch names the execution the turn started from; a continue-as-new turn writes
        # into the next one. Prefer the execution whose events match the turn's digest.
        entry: dict[str, Any] = {"execution": first, "events": [], "found": False, "verified": False}
        for exe in candidates:
            by_id = index.get((inst, exe)) if isinstance(exe, int) else None
            if not by_id:
                continue
            found = [by_id.get(ident) if ident is not None else None for ident, _ in wanted]
            if all(ev is not None and type(ev).__name__ == kind for ev, (_, kind) in zip(found, wanted, strict=True)):
                events = [ev for ev in found if ev is not None]
                verified = _digest(events) == rec.get("digest")
                if not entry["found"] or verified:
                    entry = {"execution": exe, "events": [to_dict(ev) for ev in events], "found": True, "verified": verified}
                if verified:
                    break
        out[str(i)] = entry
    return out


def _failure_anchor(records: list[dict[str, Any]], failure: Failure) -> int:
    """Index of the column a failure goes after: the last record of its step (end when unknown)."""
    if failure.step is None:
        return len(records)
    anchor = 0
    for i, rec in enumerate(records):
        step = rec.get("step")
        if isinstance(step, int) and step <= failure.step:
            anchor = i + 1
    return anchor


def _spec_from_repro(failures: Sequence[Failure]) -> str | None:
    for f in failures:
        m = re.match(r"duroxide-sim reproduce (\S+) ", f.repro or "")
        if m:
            return m.group(1)
    return None


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render_timeline(
    result: SimResult,
    *,
    title: str | None = None,
    spec_name: str | None = None,
    repro: str | None = None,
) -> str:
    """One self-contained HTML document showing ``result`` as lanes over virtual time.

    ``spec_name`` and ``repro`` (the run's repro command) are shown in the header when given;
    without them the spec is taken from a failure's repro line when there is one."""
    records = _parse(result.trace)
    failures = list(result.failures)
    spec_label = spec_name or _spec_from_repro(failures) or "(unknown spec)"
    heading = title or f"{spec_label} · seed {result.seed}"

    # Columns: every trace record in order, each failure right after the last record of its step.
    anchors = sorted(range(len(failures)), key=lambda k: _failure_anchor(records, failures[k]))
    columns: list[tuple[str, int]] = []
    fi = 0
    for i in range(len(records) + 1):
        while fi < len(anchors) and _failure_anchor(records, failures[anchors[fi]]) <= i:
            columns.append(("f", anchors[fi]))
            fi += 1
        if i < len(records):
            columns.append(("r", i))
    x_of_record: dict[int, int] = {}
    x_of_failure: dict[int, int] = {}
    for x, (what, k) in enumerate(columns):
        (x_of_record if what == "r" else x_of_failure)[k] = x

    instances = _instances(result, records)
    nodes = _nodes(records)
    lanes: dict[str, list[str]] = {"global": []}
    for node in nodes:
        lanes[f"node:{node}"] = []
    for inst, _ in instances:
        lanes[f"instance:{inst}"] = []
    guides: list[str] = []
    ticks: list[str] = []
    down: dict[str, list[str]] = {node: [] for node in nodes}
    down_since: dict[str, int] = {}
    last_t: Any = None
    last_step = 0

    for x, (what, k) in enumerate(columns):
        if what == "f":
            f = failures[k]
            step = f.step if f.step is not None else last_step
            marker = (f'<i class="ev op-failure ck-{_cls(f.checker)}" data-f="{k}" data-step="{_e(step)}" style="--x:{x}">'
                      f'<span class="fl">{_e(f.checker)}</span></i>')
            lanes["global"].append(marker)
            if f.instance and f"instance:{f.instance}" in lanes:
                lanes[f"instance:{f.instance}"].append(marker)
            guides.append(f'<i class="vl op-failure" style="--x:{x}"></i>')
            continue
        rec = records[k]
        op = str(rec.get("op", ""))
        t = rec.get("t")
        if isinstance(rec.get("step"), int):
            last_step = rec["step"]
        if t != last_t and isinstance(t, int):
            ticks.append(f'<span class="tick" data-x="{x}" style="--x:{x}">{_e(_fmt_ms(t))}</span>')
            last_t = t
        classes = ["ev", f"op-{_cls(op)}"]
        if op == "orch_turn" and rec.get("result"):
            classes.append(f"res-{_cls(rec['result'])}")
        elif op == "work_exec" and rec.get("outcome") not in (None, "ack"):
            classes.append(f"res-{_cls(rec['outcome'])}")
        elif op == "work_ack" and rec.get("committed") is False:
            classes.append("nc")
        elif op == "fault" and rec.get("kind"):
            classes.append(f"k-{_cls(rec['kind'])}")
        marker = f'<i class="{" ".join(classes)}" data-i="{k}" data-step="{_e(rec.get("step", ""))}" style="--x:{x}"></i>'
        inst = rec.get("instance")
        node = rec.get("node")
        placed = False
        if op in _GLOBAL_OPS or (op == "log" and not isinstance(inst, str)) or op not in (_NODE_OPS | _INSTANCE_OPS):
            lanes["global"].append(marker)
            placed = True
        if op in _NODE_OPS and isinstance(node, str):
            lanes[f"node:{node}"].append(marker)
            placed = True
        if op in _INSTANCE_OPS and isinstance(inst, str):
            lanes[f"instance:{inst}"].append(marker)
            placed = True
        if not placed:
            lanes["global"].append(marker)
        if op in _GUIDE_OPS:
            guides.append(f'<i class="vl op-{_cls(op)}" style="--x:{x}"></i>')
        if op == "crash" and isinstance(node, str):
            down_since.setdefault(node, x)
        elif op == "restart" and isinstance(node, str) and node in down_since:
            start = down_since.pop(node)
            down[node].append(f'<i class="down" style="--x:{start};--w:{x - start}" title="down"></i>')
    for node, start in down_since.items():
        down[node].append(f'<i class="down" style="--x:{start};--w:{len(columns) - start}" title="down"></i>')

    # Lane rows.
    statuses = result.statuses
    rows: list[str] = []
    rows.append('<div class="lane axis"><div class="lane-label">virtual time</div>'
                f'<div class="track">{"".join(ticks)}</div></div>')
    rows.append('<div class="lane lane-global" data-lane="global"><div class="lane-label">run</div>'
                f'<div class="track">{"".join(lanes["global"])}</div></div>')
    crash_count: dict[str, int] = {}
    for rec in records:
        if rec.get("op") == "crash" and isinstance(rec.get("node"), str):
            crash_count[rec["node"]] = crash_count.get(rec["node"], 0) + 1
    for node in nodes:
        crashes = crash_count.get(node, 0)
        note = f' <span class="note">{crashes} crash{"es" if crashes != 1 else ""}</span>' if crashes else ""
        rows.append(f'<div class="lane lane-node" data-lane="node:{_e(node)}">'
                    f'<div class="lane-label" title="node {_e(node)}">node {_e(node)}{note}</div>'
                    f'<div class="track">{"".join(down[node])}{"".join(lanes[f"node:{node}"])}</div></div>')
    for inst, depth in instances:
        status = statuses.get(inst)
        state = getattr(status, "status", None)
        pill = f' <span class="st st-{_cls(state)}">{_e(state)}</span>' if state else ""
        indent = f' style="padding-left:{6 + 14 * depth}px"' if depth else ""
        rows.append(f'<div class="lane lane-instance" data-lane="instance:{_e(inst)}">'
                    f'<div class="lane-label"{indent} title="{_e(inst)}"><span class="nm">{_e(inst)}</span>{pill}</div>'
                    f'<div class="track">{"".join(lanes[f"instance:{inst}"])}</div></div>')

    data = {
        "trace": list(result.trace),
        "turns": _turn_writes(result, records),
        "failures": [{"checker": f.checker, "message": f.message, "seed": f.seed, "step": f.step,
                      "instance": f.instance, "repro": f.repro} for f in failures],
    }
    return _PAGE.format(
        title=_e(heading),
        head=_header(result, heading, spec_label, failures, records, len(nodes), len(instances), repro),
        legend="".join(f'<span class="li"><i class="lg op-{op}"></i>{_e(label)}</span>' for op, label in _LEGEND),
        ncols=len(columns),
        rows="".join(rows),
        guides="".join(guides),
        data=_script_json(data),
        css=_CSS,
        js=_JS,
        onerror=_ONERROR_JS,
    )


def _header(result: SimResult, heading: str, spec_label: str, failures: list[Failure], records: list[dict[str, Any]],
            n_nodes: int, n_instances: int, repro: str | None) -> str:
    plan = result.plan
    faults = ", ".join(f"{k}={v}" for k, v in sorted(result.faults_injected.items())) or "none"
    parts = [f"<h1>{_e(heading)}</h1>", '<dl class="facts">']
    facts = [
        ("spec", spec_label),
        ("seed", result.seed),
        ("fault plan", plan.describe()),
        ("faults injected", faults),
        ("steps", f"{result.steps} ({len(records)} trace records)"),
        ("virtual end", f"{_fmt_ms(result.end_ms)} ({result.end_ms} ms)"),
        ("quiescent", "yes" if result.quiescent else "no"),
        ("lanes", f"{n_instances} instances, {n_nodes} nodes"),
        ("trace sha256", result.trace_hash[:16]),
    ]
    for name, value in facts:
        parts.append(f"<div><dt>{_e(name)}</dt><dd>{_e(value)}</dd></div>")
    parts.append("</dl>")
    parts.append(f'<div class="plan">fault plan JSON: <code>{_e(plan.to_json())}</code></div>')
    if repro:
        parts.append(f'<div class="plan">reproduce: <code>{_e(repro)}</code></div>')
    if result.budget_exhausted:
        parts.append(f'<div class="plan">retry budget exhausted by faults: {_e(", ".join(result.budget_exhausted))}</div>')
    if failures:
        parts.append(f'<h2 class="bad">{len(failures)} failure{"s" if len(failures) != 1 else ""}</h2><ol class="failures">')
        for k, f in enumerate(failures):
            where = (f" [{_e(f.instance)}]" if f.instance else "") + (f" at step {_e(f.step)}" if f.step is not None else "")
            parts.append(f'<li><a href="#" class="goto-f" data-goto-f="{k}">{_e(f.checker)}</a>{where}: '
                         f'<span class="msg">{_e(f.message)}</span>'
                         + (f'<div class="repro">reproduce: <code>{_e(f.repro)}</code></div>' if f.repro else "")
                         + "</li>")
        parts.append("</ol>")
    else:
        parts.append('<h2 class="good">all properties hold</h2>')
    return "".join(parts)


def write_timeline(result: SimResult, path: str | pathlib.Path, **kwargs: Any) -> pathlib.Path:
    """Render ``result`` (keyword arguments as :func:`render_timeline`) to ``path`` (UTF-8)."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # (escaped text holds no lone surrogate; the guard keeps an unforeseen one from losing the page)
    out.write_text(render_timeline(result, **kwargs), encoding="utf-8", errors="backslashreplace")
    return out


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

_CSS = """
:root{--col:12px;--lane-h:24px;--label-w:230px}
html,body{margin:0;height:100%}
body{display:flex;flex-direction:column;font:13px/1.35 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1a202c;background:#fff}
header{flex:none;max-height:34vh;overflow:auto;padding:6px 12px;border-bottom:1px solid #cbd5e0;background:#f7fafc}
h1{font-size:17px;margin:2px 0 4px}
h2{font-size:14px;margin:6px 0 2px}
h2.bad{color:#c53030}h2.good{color:#2f855a}
dl.facts{display:flex;flex-wrap:wrap;gap:2px 18px;margin:0}
dl.facts div{display:flex;gap:5px}dt{color:#718096}dd{margin:0;font-weight:600}
.plan{color:#4a5568;margin-top:2px}
code{font:12px/1.3 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;background:#edf2f7;padding:0 3px;border-radius:3px;word-break:break-all}
ol.failures{margin:2px 0;padding-left:22px}ol.failures li{margin:2px 0}
ol.failures a{color:#c53030;font-weight:700}
.repro{color:#4a5568}
.controls{flex:none;display:flex;flex-wrap:wrap;align-items:center;gap:6px 12px;padding:4px 12px;border-bottom:1px solid #cbd5e0;font-size:12px}
.controls button{font:inherit;padding:1px 8px}
.legend{display:flex;flex-wrap:wrap;gap:2px 10px}
.li{display:inline-flex;align-items:center;gap:4px;white-space:nowrap}
#tl{flex:1 1 auto;overflow:auto;position:relative;min-height:140px}
.lanes{position:relative;width:max-content;min-width:100%}
.lane{display:flex;height:var(--lane-h);border-bottom:1px solid #edf2f7}
.lane:hover{background:rgba(66,153,225,.06)}
.lane-label{position:sticky;left:0;z-index:3;flex:0 0 var(--label-w);width:var(--label-w);box-sizing:border-box;padding:0 6px;
 line-height:var(--lane-h);white-space:nowrap;overflow:hidden;text-overflow:ellipsis;background:#fff;border-right:1px solid #cbd5e0}
.lane-instance .lane-label{display:flex;align-items:center;gap:4px}
.nm{overflow:hidden;text-overflow:ellipsis;min-width:0;flex:0 1 auto}.st{flex:none}
.lane-global .lane-label{font-weight:700;background:#fffaf0}
.lane-node .lane-label{background:#f0fff4;font-weight:600}
.lane.axis{position:sticky;top:0;z-index:4;background:#fff;border-bottom:1px solid #a0aec0}
.lane.axis .lane-label{z-index:5;color:#718096;font-size:11px}
.track{position:relative;flex:none;width:calc(var(--n) * var(--col) + 130px)}
.tick{position:absolute;left:calc(var(--x) * var(--col));top:0;bottom:0;border-left:1px solid #a0aec0;padding-left:2px;
 font-size:11px;line-height:var(--lane-h);color:#4a5568;white-space:nowrap}
.tick.hid{display:none}
.note{color:#c53030;font-weight:400;font-size:11px}
.st{font-size:10px;line-height:14px;font-weight:600;padding:0 4px;border-radius:6px;background:#e2e8f0;color:#4a5568}
.st-Completed{background:#c6f6d5;color:#22543d}.st-Failed{background:#fed7d7;color:#822727}.st-Running{background:#bee3f8;color:#2a4365}
.vlines{position:absolute;top:0;bottom:0;left:var(--label-w);pointer-events:none;z-index:0}
.vl{position:absolute;top:0;bottom:0;left:calc(var(--x) * var(--col) + var(--col) / 2);border-left:1px dashed #e53e3e;opacity:.45}
.vl.op-crash{border-left:2px solid #9b2c2c;opacity:.5}.vl.op-restart{border-left-color:#38a169}
.vl.op-lock_expiry{border-left:1px dotted #b7791f;opacity:.8}.vl.op-failure{border-left:2px solid #c53030;opacity:.8}
.down{position:absolute;top:3px;bottom:3px;left:calc(var(--x) * var(--col) + var(--col) / 2);width:calc(var(--w) * var(--col));
 background:repeating-linear-gradient(45deg,#fed7d7 0 4px,#fff5f5 4px 8px);border-radius:3px}
.ev{position:absolute;z-index:1;top:50%;left:calc(var(--x) * var(--col) + var(--col) / 2);transform:translate(-50%,-50%);cursor:pointer;
 width:clamp(3px,calc(var(--col) - 2px),11px);height:clamp(3px,calc(var(--col) - 2px),11px);box-sizing:border-box}
.ev:hover{z-index:2;filter:brightness(1.25) drop-shadow(0 0 2px #2b6cb0)}
.lg{display:inline-block;position:relative;width:11px;height:11px;box-sizing:border-box}
.op-client{background:#6b46c1;clip-path:polygon(0 0,100% 50%,0 100%)}
.op-client_retry{background:#b83280;clip-path:polygon(0 0,100% 50%,0 100%)}
.op-orch_fetch{border:2px solid #3182ce;border-radius:50%;background:#fff}
.op-orch_turn{background:#2b6cb0;border-radius:50%}
.op-orch_turn.res-completed{background:#2f855a}.op-orch_turn.res-failed,.op-orch_turn.res-cancelled{background:#c53030}
.op-orch_turn.res-continued_as_new{background:#319795}
.op-work_fetch{border:2px solid #dd6b20;background:#fff}
.op-work_exec{background:#dd6b20}.op-work_exec.res-abandon,.op-work_exec.res-drop{background:#975a16}
.op-work_ack{background:#38a169;border:2px solid #dd6b20}.op-work_ack.nc{background:#fff;border:2px dashed #c53030}
.op-fault{background:#e53e3e;clip-path:polygon(50% 0,100% 50%,50% 100%,0 50%)}
.op-crash{background:#742a2a;clip-path:polygon(0 0,100% 0,50% 100%)}
.op-restart{background:#38a169;clip-path:polygon(50% 0,100% 100%,0 100%)}
.op-lock_expiry{background:#d69e2e;clip-path:polygon(0 0,100% 0,50% 50%,100% 100%,0 100%,50% 50%)}
.op-provider_error{background:#b83280}
.op-log{background:#a0aec0;border-radius:50%;transform:translate(-50%,-50%) scale(.6)}
.lg.op-log{transform:scale(.6)}
.op-begin,.op-end{background:#4a5568;width:3px!important;height:calc(var(--lane-h) - 6px)!important}
.lg.op-failure,.ev.op-failure{background:#c53030}
.ev.op-failure{width:4px;height:calc(var(--lane-h) - 2px);z-index:2}
.ev.op-failure .fl{position:absolute;left:6px;top:1px;font-size:11px;font-weight:700;color:#c53030;background:#fff5f5;
 padding:0 3px;border:1px solid #feb2b2;border-radius:3px;white-space:nowrap;line-height:15px}
.sel-ring{position:absolute;z-index:2;top:50%;left:calc(var(--x) * var(--col) + var(--col) / 2);width:17px;height:17px;
 transform:translate(-50%,-50%);border:2px solid #d53f8c;border-radius:50%;pointer-events:none;box-sizing:border-box}
body.nologs .op-log{display:none}
#details{flex:0 0 30vh;overflow:auto;border-top:2px solid #a0aec0;padding:4px 12px 10px;background:#f7fafc}
#details h2{margin:4px 0}#details h3{font-size:13px;margin:8px 0 2px}
#details pre{margin:0;padding:6px 8px;background:#fff;border:1px solid #e2e8f0;border-radius:4px;
 font:12px/1.35 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all}
#details .hint{color:#718096}#details .warn{color:#975a16}
#js-errors:not(:empty){position:fixed;right:8px;bottom:8px;z-index:10;max-width:50vw;background:#fff5f5;color:#c53030;
 border:1px solid #c53030;padding:6px;font:12px ui-monospace,monospace;white-space:pre-wrap}
"""

# Installed first, so that an error anywhere later in the page is recorded in #js-errors.
_ONERROR_JS = """
window.__tlErrors=[];
window.onerror=function(msg,src,line,col){window.__tlErrors.push(String(msg)+" ("+line+":"+col+")");
 var box=document.getElementById("js-errors");if(box){box.textContent=window.__tlErrors.join("\\n");}return false;};
window.addEventListener("unhandledrejection",function(ev){window.onerror("unhandled rejection: "+ev.reason,"",0,0);});
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("tl-data").textContent);
  var root = document.documentElement;
  var body = document.body;
  var scroller = document.getElementById("tl");
  var details = document.getElementById("details");
  var ncols = +root.style.getPropertyValue("--n") || 1;
  var parsed = {};
  var selected = null;

  function rec(i) {
    if (!(i in parsed)) {
      try { parsed[i] = JSON.parse(data.trace[i]); } catch (e) { parsed[i] = {op: "unparsed", line: data.trace[i]}; }
    }
    return parsed[i];
  }
  function fmt(ms) {
    if (typeof ms !== "number") return String(ms);
    if (ms < 1000) return ms + "ms";
    if (ms < 60000) return String(+(ms / 1000).toFixed(3)) + "s";
    if (ms < 3600000) return Math.floor(ms / 60000) + "m" + (ms % 60000 ? String(+(ms % 60000 / 1000).toFixed(3)) + "s" : "");
    if (ms < 86400000) return Math.floor(ms / 3600000) + "h" + Math.floor(ms % 3600000 / 60000) + "m";
    return Math.floor(ms / 86400000) + "d" + Math.floor(ms % 86400000 / 3600000) + "h";
  }
  function summary(r) {
    var s = r.op;
    if (r.instance != null) s += " " + r.instance;
    if (r.node != null) s += " @" + r.node;
    if (r.op === "orch_turn") s += " -> " + r.result + (r.events && r.events.length ? " [" + r.events.join(", ") + "]" : "");
    else if (r.activity != null) s += " " + r.activity + (r.id != null ? " #" + r.id : "") + (r.outcome ? " -> " + r.outcome : "");
    else if (r.op === "work_ack") s += " #" + r.id + (r.committed ? " committed" : " NOT committed");
    else if (r.op === "fault") s += " " + r.kind + " (" + r.operation + ")";
    else if (r.op === "crash") s += ": " + r.reason;
    else if (r.op === "log") s += " " + r.level + ": " + r.message;
    else if (r.op === "client") s += " " + r.what + " " + r.name;
    else if (r.error != null) s += ": " + r.error;
    return s;
  }
  function add(parent, tag, text, cls) {
    var el = document.createElement(tag);
    if (text != null) el.textContent = text;
    if (cls) el.className = cls;
    parent.appendChild(el);
    return el;
  }
  function setCol(c) {
    c = Math.max(1, Math.min(64, c));
    root.style.setProperty("--col", c + "px");
    thinTicks(c);
  }
  function col() { return parseFloat(getComputedStyle(root).getPropertyValue("--col")) || 12; }
  function thinTicks(c) {
    var last = -1e9;
    var ticks = document.querySelectorAll(".tick");
    for (var k = 0; k < ticks.length; k++) {
      var x = +ticks[k].getAttribute("data-x") * c;
      if (x - last < 72) { ticks[k].classList.add("hid"); } else { ticks[k].classList.remove("hid"); last = x; }
    }
  }
  function fitCol() {
    var labelW = parseFloat(getComputedStyle(root).getPropertyValue("--label-w")) || 230;
    return (scroller.clientWidth - labelW - 140) / ncols;
  }
  function markers(sel) { return document.querySelectorAll(sel); }
  function select(sel, scroll) {
    var rings = markers(".sel-ring");
    for (var k = 0; k < rings.length; k++) rings[k].remove();
    var found = markers(sel);
    for (var j = 0; j < found.length; j++) {
      var ring = document.createElement("i");
      ring.className = "sel-ring";
      ring.style.setProperty("--x", found[j].style.getPropertyValue("--x"));
      found[j].parentNode.appendChild(ring);
    }
    if (scroll && found.length) found[0].scrollIntoView({block: "nearest", inline: "center"});
    return found.length;
  }
  function showRecord(i, scroll) {
    var r = rec(i);
    selected = i;
    select('.ev[data-i="' + i + '"]', scroll);
    details.textContent = "";
    add(details, "h2", "step " + r.step + " \u00b7 " + r.op + " \u00b7 t=" + fmt(r.t) + " (" + r.t + " ms)");
    add(details, "div", summary(r), "hint");
    add(details, "h3", "trace record #" + i + " (canonical line)");
    add(details, "pre", data.trace[i]);
    add(details, "h3", "trace record (pretty)");
    add(details, "pre", JSON.stringify(r, null, 2));
    if (r.op === "orch_turn") {
      var w = data.turns[String(i)];
      if (!w) {
        add(details, "h3", "history events written: none");
      } else {
        add(details, "h3", "history events written (execution " + w.execution + ", " + w.events.length + " events)");
        if (!w.found) add(details, "div", "these event ids are not in the final history: the turn's writes were lost", "warn");
        else if (!w.verified) add(details, "div", "the final history holds these ids, but their digest differs from the turn's digest " + r.digest, "warn");
        else add(details, "div", "digest " + r.digest + " matches the final history", "hint");
        add(details, "pre", JSON.stringify(w.events, null, 2));
      }
    }
  }
  function showFailure(k, scroll) {
    var f = data.failures[k];
    selected = null;
    select('.ev[data-f="' + k + '"]', scroll);
    details.textContent = "";
    add(details, "h2", "failure: " + f.checker + (f.instance ? " [" + f.instance + "]" : "") + (f.step != null ? " at step " + f.step : ""));
    add(details, "pre", f.message);
    if (f.repro) { add(details, "h3", "reproduce"); add(details, "pre", f.repro); }
    add(details, "h3", "failure (JSON)");
    add(details, "pre", JSON.stringify(f, null, 2));
  }
  function visible(i) { return !(body.classList.contains("nologs") && rec(i).op === "log"); }

  scroller.addEventListener("click", function (ev) {
    var m = ev.target.closest(".ev");
    if (!m) return;
    if (m.hasAttribute("data-f")) showFailure(+m.getAttribute("data-f"), false);
    else showRecord(+m.getAttribute("data-i"), false);
  });
  scroller.addEventListener("mouseover", function (ev) {
    var m = ev.target.closest(".ev");
    if (!m || m.title) return;
    if (m.hasAttribute("data-f")) { var f = data.failures[+m.getAttribute("data-f")]; m.title = "FAILURE " + f.checker + ": " + f.message; }
    else { var r = rec(+m.getAttribute("data-i")); m.title = "step " + r.step + " t=" + fmt(r.t) + "  " + summary(r); }
  });
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest("[data-goto-f]");
    if (!a) return;
    ev.preventDefault();
    showFailure(+a.getAttribute("data-goto-f"), true);
  });
  document.addEventListener("keydown", function (ev) {
    if (selected == null || (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft")) return;
    var d = ev.key === "ArrowRight" ? 1 : -1;
    for (var i = selected + d; i >= 0 && i < data.trace.length; i += d) {
      if (visible(i)) { ev.preventDefault(); showRecord(i, true); return; }
    }
  });
  document.getElementById("zoom-in").addEventListener("click", function () { setCol(col() * 1.5); });
  document.getElementById("zoom-out").addEventListener("click", function () { setCol(col() / 1.5); });
  document.getElementById("zoom-fit").addEventListener("click", function () { setCol(fitCol()); });
  document.getElementById("show-logs").addEventListener("change", function (ev) { body.classList.toggle("nologs", !ev.target.checked); });

  setCol(Math.max(6, Math.min(28, fitCol())));
  var m = /^#(step|i)=(\d+)$/.exec(location.hash || "");
  if (m) {
    var n = +m[2];
    if (m[1] === "i" && n < data.trace.length) showRecord(n, true);
    if (m[1] === "step") {
      for (var i = 0; i < data.trace.length; i++) { if (rec(i).step === n) { showRecord(i, true); break; } }
    }
  }
  var status = document.getElementById("tl-status");
  status.setAttribute("data-markers", String(document.querySelectorAll(".ev").length));
  status.setAttribute("data-ready", "1");
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en" style="--n:{ncols}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<script>{onerror}</script>
<style>{css}</style>
</head>
<body>
<div id="js-errors"></div>
<header>{head}</header>
<div class="controls">
<span>zoom <button type="button" id="zoom-out">&minus;</button> <button type="button" id="zoom-in">+</button>
<button type="button" id="zoom-fit">fit</button></span>
<label><input type="checkbox" id="show-logs" checked> log records</label>
<span class="hint">click a marker for its record; &larr;/&rarr; step through records</span>
<span class="legend">{legend}</span>
<output id="tl-status" data-ready="0"></output>
</div>
<div id="tl"><div class="lanes"><div class="vlines">{guides}</div>{rows}</div></div>
<section id="details"><p class="hint">Click a marker to see its trace record (and, for an orchestration turn, the history events it wrote).</p></section>
<script type="application/json" id="tl-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""
