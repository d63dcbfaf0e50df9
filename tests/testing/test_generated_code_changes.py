"""Generative probe of the CI nondeterminism check (``duroxide-sim replay`` / ``replay_documents``).

A program P (a small step DSL, rendered as a real module in a tmp dir, one step per line) is run
on the SequentialDriver (InMemoryProvider, or a SqliteProvider file) to completion and part-way
(too few external events, a virtual-time cut); its histories are exported. An edit P' (insert,
delete, rename/re-input an activity, swap, timer duration, loop count, append, version rename,
time.time()/random/uuid4 call, set-iteration order) is replayed against them.

The reference is an abstract walk of P' over the recorded events following SPEC §3.4-3.5 (FIFO
of emitted actions matched against schedule events; a timer matches any TimerCreated; the walk
stops at the return), extended by the README's promises for ``replay``: a finished history whose
code ends earlier is reported at the return; a running history whose replay emits new work in
its last recorded turn is reported at that yield; a changed output at the return. It predicts
clean / diverged-at-line; the test checks the real report names ``file:line`` of P'.

Properties: (a) P replays clean (CLI under another PYTHONHASHSEED too); (b) an edit that changes
what P' schedules within the recorded prefix is reported at the exact line, saying what differs;
(c) an edit after the recorded prefix of a running instance replays clean; (d) a sandbox call is
reported with its line when the replay reaches it, even when the history replays; (e) CLI exit
codes agree with the in-process result.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from duroxide_sim import Client, InMemoryProvider, Runtime
from duroxide_sim.core.events import (
    ActivityCompleted, ActivityScheduled, ExternalEvent, ExternalSubscribed, OrchestrationChained, OrchestrationCompleted,
    OrchestrationContinuedAsNew, OrchestrationFailed, OrchestrationStarted, SubOrchestrationCompleted,
    SubOrchestrationScheduled, TimerCreated, TimerFired,
)
from duroxide_sim.runtime.history_io import export_instance, export_to_path
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.testing.replay import SANDBOX_FINDING, build_registry, load_app, replay_documents

REPO = pathlib.Path(__file__).resolve().parents[2]
M = 10_007
ACTS = {"Inc": lambda x: (x + 1) % M, "Dbl": lambda x: (2 * x) % M, "Sq": lambda x: (x * x + 1) % M}
NAMES = tuple(ACTS)
TIMERS = (1000, 2000, 5000)
ND_CALLS = {"time": "_nd = time.time()", "random": "_nd = random.random()", "uuid": "_nd = uuid.uuid4()",
            "time_branch": "if time.time() < 0: acc = 0"}
ND_LABEL = {"time": "time.time", "random": "random", "uuid": "uuid4", "time_branch": "time.time"}
SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
_TMP = pathlib.Path(tempfile.mkdtemp(prefix="gen_code_changes_"))
atexit.register(shutil.rmtree, _TMP, True)
_COUNTER = [0]


def event_data(j: int) -> int:
    return 10 + j


# ------------------------------------------------------------------------------------------------
# Programs: data -> source text (one step per line; a loop's body on the next line)
# ------------------------------------------------------------------------------------------------


def _expr(k: int, loop: bool = False) -> str:
    return f"(acc + i + {k}) % M" if loop else f"(acc + {k}) % M"


def _set_literal(names: Any) -> str:
    """A set display, its elements always inserted in NAMES order (insertion order can matter)."""
    return "{" + ", ".join(json.dumps(n) for n in NAMES if n in names) + "}"


def render(prog: dict[str, Any]) -> tuple[str, dict[int, int], int, dict[int, int]]:
    """(source, action line of each step, line of the return, line of each sandbox call by position)."""
    aw = "await" if prog["style"] == "async" else "yield"
    head = [
        "import random", "import time", "import uuid", "", f"M = {M}", "", "",
        "def register(rt):",
        '    rt.register_activity("Inc", lambda ctx, x: (x + 1) % M)',
        '    rt.register_activity("Dbl", lambda ctx, x: (2 * x) % M)',
        '    rt.register_activity("Sq", lambda ctx, x: (x * x + 1) % M)',
        "",
        '    @rt.register_orchestration("Leaf")',
        "    def leaf(ctx, x):",
        '        return (yield ctx.schedule_activity("Inc", x))',
        "",
        f'    @rt.register_orchestration_versioned("Prog", "{prog["version"]}")',
        f"    {'async ' if prog['style'] == 'async' else ''}def prog(ctx, acc):",
    ]
    lines = list(head)
    at: dict[int, int] = {}
    nd_at: dict[int, int] = {}
    nd = dict((p, c) for p, c in prog.get("nd", []))
    IND = " " * 8
    for idx, step in enumerate([*prog["steps"], None]):
        if idx in nd:
            lines.append(IND + ND_CALLS[nd[idx]])
            nd_at[idx] = len(lines)
        if step is None:
            break
        kind = step[0]
        if kind == "act":
            lines.append(f'{IND}acc = {aw} ctx.schedule_activity("{step[1]}", {_expr(step[2])})')
        elif kind == "timer":
            lines.append(f"{IND}{aw} ctx.schedule_timer({step[1]})")
        elif kind == "wait":
            lines.append(f'{IND}acc = (acc + ({aw} ctx.wait_for_event("ev{step[1]}"))) % M')
        elif kind == "loop":
            lines.append(f"{IND}for i in range({step[1]}):")
            lines.append(f'{IND}    acc = {aw} ctx.schedule_activity("{step[2]}", {_expr(step[3], True)})')
        elif kind == "all":
            calls = ", ".join(f"ctx.schedule_timer({k})" if n == "T" else f'ctx.schedule_activity("{n}", {_expr(k)})'
                              for n, k in step[1])
            lines.append(f"{IND}res = {aw} ctx.all([{calls}])")
            at[idx] = len(lines)
            lines.append(f'{IND}acc = (acc + sum(r["ok"] or 0 for r in res)) % M')
            continue
        elif kind == "sub":
            lines.append(f'{IND}acc = {aw} ctx.schedule_sub_orchestration("Leaf", {_expr(step[1])})')
        elif kind == "detach":
            lines.append(f'{IND}{aw} ctx.start_orchestration("Leaf", ctx.instance_id + "-d{step[1]}", {_expr(step[1])})')
        elif kind == "setloop":  # iterates a list (P) or a set (P'): the order of the names
            coll = _set_literal(step[1]) if step[2] else json.dumps(list(step[1]))
            lines.append(f"{IND}for name in {coll}:")
            lines.append(f"{IND}    acc = {aw} ctx.schedule_activity(name, acc)")
        else:
            raise AssertionError(step)
        at[idx] = len(lines)
    lines.append(f"{IND}return acc")
    return "\n".join(lines) + "\n", at, len(lines), nd_at


def write_module(prog: dict[str, Any], tag: str) -> tuple[pathlib.Path, str, dict[int, int], int, dict[int, int]]:
    text, at, ret, nd_at = render(prog)
    _COUNTER[0] += 1
    path = _TMP / f"m{_COUNTER[0]:04d}_{tag}" / "workflows.py"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path, text, at, ret, nd_at


# ------------------------------------------------------------------------------------------------
# The abstract program (reference semantics) and the abstract replay walk (SPEC §3.4-3.5)
# ------------------------------------------------------------------------------------------------


def abstract(steps: list[Any], acc: int, reached: list[int], inst: str = "") -> Any:
    """Generator: yields (step index, [actions]) and receives the list of their results."""
    for idx, step in enumerate(steps):
        reached.append(idx)
        kind = step[0]
        if kind == "act":
            acc = (yield idx, [("act", step[1], (acc + step[2]) % M)])[0]
        elif kind == "timer":
            yield idx, [("timer",)]
        elif kind == "wait":
            acc = (acc + (yield idx, [("wait", f"ev{step[1]}")])[0]) % M
        elif kind == "loop":
            for i in range(step[1]):
                acc = (yield idx, [("act", step[2], (acc + i + step[3]) % M)])[0]
        elif kind == "all":
            res = yield idx, [("timer",) if n == "T" else ("act", n, (acc + k) % M) for n, k in step[1]]
            acc = (acc + sum(r or 0 for r in res)) % M
        elif kind == "sub":
            acc = (yield idx, [("sub", "Leaf", (acc + step[1]) % M)])[0]
        elif kind == "detach":
            yield idx, [("detach", "Leaf", f"{inst}-d{step[1]}", (acc + step[1]) % M)]
        elif kind == "setloop":
            order = step[1] if not step[2] else step[3]  # (a set: the order the test expects it in)
            for name in order:
                acc = (yield idx, [("act", name, acc)])[0]
        else:
            raise AssertionError(step)
    reached.append(len(steps))
    return acc


def evaluate(steps: list[Any], acc: int, inst: str = "") -> tuple[list[Any], int]:
    """Every action of a full run (all events raised) and the output."""
    gen = abstract(steps, acc, [], inst)
    actions, send = [], None
    while True:
        try:
            _idx, acts = gen.send(send)
        except StopIteration as stop:
            return actions, stop.value
        actions.extend(acts)
        send = [_result(a) for a in acts]


def _result(a: tuple) -> Any:
    if a[0] == "act":
        return ACTS[a[1]](a[2])
    if a[0] == "sub":
        return ACTS["Inc"](a[2])
    if a[0] == "wait":
        return event_data(int(a[1][2:]))
    return None  # timer, detached start


def _abstract_event(ev: Any) -> tuple | None:
    if isinstance(ev, ActivityScheduled):
        return ("act", ev.name, json.loads(ev.input))
    if isinstance(ev, TimerCreated):
        return ("timer",)
    if isinstance(ev, ExternalSubscribed):
        return ("wait", ev.name)
    if isinstance(ev, SubOrchestrationScheduled):
        return ("sub", ev.name, json.loads(ev.input))
    if isinstance(ev, OrchestrationChained):
        return ("detach", ev.name, ev.instance, json.loads(ev.input))
    return None


def _matches(action: tuple, recorded: tuple) -> bool:
    return action[0] == recorded[0] and (action[0] == "timer" or action[1:] == recorded[1:])



_COMPLETIONS = (ActivityCompleted, TimerFired, SubOrchestrationCompleted)
_ENDS = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)


class _Group:
    def __init__(self, idx: int, n: int) -> None:
        self.idx, self.res, self.got = idx, [None] * n, set()


def predict(prog: dict[str, Any], events: list[Any], at: dict[int, int], ret: int) -> tuple[tuple, list[int]]:
    """(outcome, step positions the code reached). Outcome: ("clean",) or ("diverge", line, why)."""
    started = events[0]
    assert isinstance(started, OrchestrationStarted)
    reached: list[int] = []
    if started.version != prog["version"]:
        return ("diverge", None, "version"), reached
    t_at = next((i for i, e in enumerate(events) if isinstance(e, _ENDS)), None)
    terminal = events[t_at] if t_at is not None else None
    persisted = events[:t_at] if t_at is not None else events
    gen = abstract(prog["steps"], json.loads(started.input), reached, started.instance_id)
    fifo: collections.deque = collections.deque()
    state: dict[str, Any] = {"cur": None, "ret": False, "out": None}
    bound: dict[int, tuple[_Group, int]] = {}
    waits: list[tuple[str, _Group, int]] = []

    def poll() -> list[tuple]:
        """Resume the code as far as it goes; the actions it emitted."""
        emitted: list[tuple] = []
        while True:
            cur = state["cur"]
            if state["ret"] or (cur is not None and len(cur.got) < len(cur.res)):
                return emitted
            try:
                idx, acts = gen.send(None if cur is None else cur.res)
            except StopIteration as stop:
                state["ret"], state["out"] = True, stop.value
                return emitted
            grp = _Group(idx, len(acts))
            state["cur"] = grp
            for pos, a in enumerate(acts):
                fifo.append((a, idx, grp, pos))
                emitted.append(a)
                if a[0] == "detach":  # a detached start resolves at once
                    grp.got.add(pos)

    must_poll, unwalked, last = True, [], []
    for i, ev in enumerate(persisted):
        if must_poll:
            last = poll()
            must_poll = False
        if state["ret"]:
            unwalked = persisted[i:]
            break
        rec = _abstract_event(ev)
        if rec is not None:
            if not fifo:
                return ("diverge", at[state["cur"].idx] if state["cur"] else ret, "noaction"), reached
            act, idx, grp, pos = fifo.popleft()
            if not _matches(act, rec):
                return ("diverge", at[idx], "mismatch"), reached
            bound[ev.event_id] = (grp, pos)
            if rec[0] == "wait":
                waits.append((rec[1], grp, pos))
        elif isinstance(ev, _COMPLETIONS):
            grp, pos = bound[ev.source_event_id]
            grp.res[pos] = json.loads(ev.result) if not isinstance(ev, TimerFired) else None
            grp.got.add(pos)
            must_poll = True
        elif isinstance(ev, ExternalEvent):
            for k, (name, grp, pos) in enumerate(waits):
                if name == ev.name:
                    grp.res[pos] = json.loads(ev.data)
                    grp.got.add(pos)
                    del waits[k]
                    must_poll = True
                    break
    else:
        if must_poll:
            last = poll()
    recorded = [_abstract_event(e) for e in unwalked if _abstract_event(e) is not None]
    if state["ret"] and any(k >= len(last) or not _matches(last[k], r) for k, r in enumerate(recorded)):
        return ("diverge", ret, "ended_early"), reached
    if terminal is None:
        if fifo:
            return ("diverge", at[fifo[0][1]], "new_work"), reached
        if state["ret"]:
            return ("diverge", ret, "ended_running"), reached
        return ("clean",), reached
    assert isinstance(terminal, OrchestrationCompleted), terminal
    if state["ret"]:
        return (("clean",) if state["out"] == json.loads(terminal.output) else ("diverge", ret, "output")), reached
    return ("diverge", at[fifo[0][1]] if fifo else None, "new_work_finished"), reached


# ------------------------------------------------------------------------------------------------
# Recording
# ------------------------------------------------------------------------------------------------


def _pending_wait(events: list[Any]) -> str | None:
    if any(isinstance(e, _ENDS) for e in events):
        return None
    subs = [e for e in events if isinstance(e, ExternalSubscribed)]
    if not subs or _abstract_event([e for e in events if _abstract_event(e)][-1])[0] != "wait":
        return None
    last = subs[-1]
    if any(isinstance(e, ExternalEvent) and e.event_id > last.event_id for e in events):
        return None
    return last.name


def record(path: pathlib.Path, runs: list[tuple[str, int, int, int | None]], db: pathlib.Path | None = None) -> list[dict]:
    """Run instances of ``Prog``: (instance, input, external events to raise, virtual-ms cut)."""
    from duroxide_sim.providers.sqlite import SqliteProvider

    register = load_app(f"{path}:register")
    clock = SimClock()
    provider = InMemoryProvider(clock) if db is None else SqliteProvider.open(str(db), clock=clock)
    rt = Runtime(provider, clock=clock, ids=SequentialIds())
    register(rt)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    for inst, acc0, n_events, limit in runs:
        client.start_orchestration(inst, "Prog", acc0)
        deadline = None if limit is None else clock.now_ms() + limit
        raised = 0
        while True:
            driver.run_until_quiet(None if deadline is None else max(0, deadline - clock.now_ms()))
            pending = _pending_wait(client.read_history_events(inst))
            if pending is None or raised >= n_events:
                break
            client.raise_event(inst, pending, event_data(int(pending[2:])))
            raised += 1
    docs = [export_instance(provider, i) for i in reversed(provider.list_instances())]
    if db is not None:
        provider.close()
    return docs


def main_events(doc: dict) -> list[Any]:
    from duroxide_sim.runtime.history_io import document_events

    execs = document_events(doc)
    assert list(execs) == [1]
    return execs[1]


# ------------------------------------------------------------------------------------------------
# Strategies: programs and edits
# ------------------------------------------------------------------------------------------------

name_st = st.sampled_from(NAMES)
k_st = st.integers(0, 20)
act_st = st.tuples(st.just("act"), name_st, k_st)
timer_st = st.tuples(st.just("timer"), st.sampled_from(TIMERS))
wait_st = st.tuples(st.just("wait"), st.integers(0, 1))
loop_st = st.tuples(st.just("loop"), st.integers(0, 3), name_st, k_st)
leaf_st = st.one_of(st.tuples(name_st, k_st), st.tuples(st.just("T"), st.sampled_from(TIMERS)))
all_st = st.tuples(st.just("all"), st.lists(leaf_st, min_size=1, max_size=3))
sub_st = st.tuples(st.just("sub"), k_st)
detach_st = st.tuples(st.just("detach"), st.integers(0, 9))
step_st = st.one_of(act_st, act_st, timer_st, wait_st, loop_st, all_st, sub_st, detach_st)


def _jsonify(x: Any) -> Any:
    return json.loads(json.dumps(x))


@st.composite
def programs(draw: Any, min_size: int = 1) -> dict[str, Any]:
    steps = draw(st.lists(step_st, min_size=min_size, max_size=6))
    seen: set[int] = set()  # (one detached start per child id)
    steps = [s for s in steps if s[0] != "detach" or not (s[1] in seen or seen.add(s[1]))]
    return _jsonify({"steps": steps, "style": draw(st.sampled_from(("gen", "async"))), "version": "1.0.0", "nd": []})


EDIT_KINDS = ("insert", "delete", "rename", "reinput", "swap", "timer", "loop_count", "append", "version", "nd",
              "grow_all", "split_all", "merge")


@st.composite
def edits(draw: Any, prog: dict[str, Any], kinds: tuple[str, ...] = EDIT_KINDS) -> tuple[str, dict[str, Any]]:
    steps = [list(s) if not isinstance(s, list) else json.loads(json.dumps(s)) for s in prog["steps"]]
    n = len(steps)
    kind = draw(st.sampled_from(kinds))
    new = _jsonify(prog)
    if kind == "insert":
        new["steps"].insert(draw(st.integers(0, n)), _jsonify(draw(step_st)))
    elif kind == "append":
        new["steps"].append(_jsonify(draw(step_st)))
    elif kind == "delete" and n:
        del new["steps"][draw(st.integers(0, n - 1))]
    elif kind in ("rename", "reinput"):
        cands = [i for i, s in enumerate(steps) if s[0] in ("act", "loop", "all", "sub")]
        if not cands or (kind == "rename" and all(steps[i][0] == "sub" for i in cands)):
            return kind, new
        i = draw(st.sampled_from(cands))
        s = new["steps"][i]
        if s[0] == "sub":
            s[1] = draw(k_st.filter(lambda k: k != s[1]))
        elif s[0] == "all":
            j = draw(st.integers(0, len(s[1]) - 1))
            pos = 0 if kind == "rename" else 1
            if s[1][j][0] == "T":
                return kind, new
            s[1][j][pos] = draw(name_st.filter(lambda v: v != s[1][j][0])) if kind == "rename" else draw(
                k_st.filter(lambda v: v != s[1][j][1]))
        else:
            pos = (1 if s[0] == "act" else 2) if kind == "rename" else (2 if s[0] == "act" else 3)
            s[pos] = draw(name_st.filter(lambda v: v != s[pos])) if kind == "rename" else draw(
                k_st.filter(lambda v: v != s[pos]))
    elif kind == "swap" and n >= 2:
        i = draw(st.integers(0, n - 2))
        j = draw(st.integers(i + 1, n - 1))
        new["steps"][i], new["steps"][j] = new["steps"][j], new["steps"][i]
    elif kind == "timer":
        cands = [i for i, s in enumerate(steps) if s[0] == "timer"]
        if cands:
            i = draw(st.sampled_from(cands))
            new["steps"][i][1] = draw(st.sampled_from([t for t in TIMERS if t != steps[i][1]]))
    elif kind == "loop_count":
        cands = [i for i, s in enumerate(steps) if s[0] == "loop"]
        if cands:
            i = draw(st.sampled_from(cands))
            new["steps"][i][1] = draw(st.integers(0, 4).filter(lambda c: c != steps[i][1]))
    elif kind == "version":
        new["version"] = "1.1.0"
    elif kind == "grow_all":
        cands = [i for i, s in enumerate(steps) if s[0] == "all"]
        if cands:
            i = draw(st.sampled_from(cands))
            new["steps"][i][1].insert(draw(st.integers(0, len(steps[i][1]))), list(draw(leaf_st)))
    elif kind == "split_all":  # all([a, b]) -> a; b  (same calls, one at a time)
        cands = [i for i, s in enumerate(steps) if s[0] == "all"]
        if cands:
            i = draw(st.sampled_from(cands))
            new["steps"][i:i + 1] = [["timer", k] if n == "T" else ["act", n, k] for n, k in steps[i][1]]
    elif kind == "merge":  # a; b -> all([a, b])
        cands = [i for i in range(n - 1) if steps[i][0] == "act" and steps[i + 1][0] == "act"]
        if cands:
            i = draw(st.sampled_from(cands))
            new["steps"][i:i + 2] = [["all", [[steps[i][1], steps[i][2]], [steps[i + 1][1], steps[i + 1][2]]]]]
    elif kind == "nd":
        new["nd"] = [[draw(st.integers(0, n)), draw(st.sampled_from(sorted(ND_CALLS)))]]
    return kind, new


# ------------------------------------------------------------------------------------------------
# The check of one edit against a recording
# ------------------------------------------------------------------------------------------------


MAIN = ("f", "p", "q")


def _runs(draw: Any, prog: dict[str, Any]) -> list[tuple[str, int, int, int | None]]:
    """f: to the end; p, q: part-way (fewer external events than waits, a virtual-time cut)."""
    n_waits = sum(1 for s in prog["steps"] if s[0] == "wait")
    return [("f", draw(st.integers(0, 50)), 99, None),
            ("p", draw(st.integers(0, 50)), draw(st.integers(0, n_waits)),
             draw(st.sampled_from((None, 500, 1500, 2500, 6500, 8500)))),
            ("q", draw(st.integers(0, 50)), draw(st.integers(0, n_waits)), draw(st.sampled_from((500, 1500, 3500))))]


def check_recording(prog: dict[str, Any], path: pathlib.Path, at: dict[int, int], ret: int, docs: list[dict]) -> None:
    """(a) the recording is what the reference says P does, and P replays it clean."""
    for doc in docs:
        if doc["instance_id"] not in MAIN:
            continue
        events = main_events(doc)
        started = events[0]
        want, out = evaluate(prog["steps"], json.loads(started.input), doc["instance_id"])
        got = [_abstract_event(e) for e in events if _abstract_event(e) is not None]
        assert [_strip(a) for a in want[:len(got)]] == got, (doc["instance_id"], want, got)
        term = [e for e in events if isinstance(e, _ENDS)]
        if doc["instance_id"] == "f":
            assert term and isinstance(term[0], OrchestrationCompleted), events[-3:]
            assert json.loads(term[0].output) == out and len(got) == len(want)
        assert predict(prog, events, at, ret)[0] == ("clean",)
    divs = replay_documents(docs, build_registry(load_app(f"{path}:register")))
    assert divs == [], [d.render() for d in divs]


def _strip(a: tuple) -> tuple:
    return a if a[0] != "timer" else ("timer",)


WHY_TEXT = {
    "mismatch": ("history has", "code did"),
    "noaction": ("no emitted action",),
    "ended_early": ("(its return)", "no longer takes"),
    "new_work": ("new work the history lacks", "code did"),
    "ended_running": ("(its return)",),
    "output": ("(its return)", "recorded Completed"),
    "new_work_finished": ("recorded Completed", "code did"),
    "version": ("Prog",),
}


def _note(text: str) -> None:
    from hypothesis import event
    from hypothesis.control import _current_build_context

    if _current_build_context.value is not None:
        event(text)


def check_edit(new: dict[str, Any], docs: list[dict], tag: str) -> list[str]:
    """Replay ``docs`` against ``new``; every problem with the report (empty: as predicted)."""
    path, text, at, ret, nd_at = write_module(new, tag)
    divs = replay_documents(docs, build_registry(load_app(f"{path}:register")))
    problems = []
    sandbox = [d for d in divs if d.message.startswith(SANDBOX_FINDING)]
    real = [d for d in divs if not d.message.startswith(SANDBOX_FINDING)]
    reached_any: set[int] = set()
    for doc in docs:
        inst = doc["instance_id"]
        mine = [d.message for d in real if d.instance == inst]
        if inst not in MAIN:
            if mine:
                problems.append(f"child {inst}: {mine}")
            continue
        (outcome, reached) = predict(new, main_events(doc), at, ret)
        _note(f"{inst}: {outcome[-1]}" + (" (running)" if not any(isinstance(e, _ENDS) for e in main_events(doc)) else ""))
        reached_any.update(reached)
        if outcome == ("clean",):
            if mine:
                problems.append(f"{inst}: expected clean, got {mine}")
            continue
        _, line, why = outcome
        if len(mine) != 1:
            problems.append(f"{inst}: expected one divergence ({why} at line {line}), got {mine}")
            continue
        msg = mine[0]
        if line is not None and f"{path}:{line}" not in msg:
            problems.append(f"{inst}: expected {why} at line {line} ({text.splitlines()[line - 1].strip()!r}), got {msg}")
        for needle in WHY_TEXT[why]:
            if needle not in msg:
                problems.append(f"{inst}: {why}: {needle!r} missing from {msg}")
    for pos, call in new.get("nd", []):
        site = f"{path}:{nd_at[pos]}"
        hits = [d.message for d in sandbox if site in d.message]
        if pos in reached_any:
            if len(hits) != 1 or ND_LABEL[call] not in hits[0]:
                problems.append(f"sandbox: {call} at line {nd_at[pos]} reached, reported {hits} (all: {[d.message for d in sandbox]})")
        elif hits:
            problems.append(f"sandbox: {call} at line {nd_at[pos]} not reached, reported {hits}")
    if not new.get("nd") and sandbox:
        problems.append(f"sandbox findings without a call: {[d.message for d in sandbox]}")
    return problems


# ------------------------------------------------------------------------------------------------
# (a)-(d) in process
# ------------------------------------------------------------------------------------------------


@settings(max_examples=1200, **SETTINGS)
@given(data=st.data())
def test_generated_edits_are_reported_as_the_reference_walk_predicts(data: Any) -> None:
    prog = data.draw(programs(), "P")
    runs = _runs(data.draw, prog)
    path, _text, at, ret, _ = write_module(prog, "p")
    docs = record(path, runs)
    check_recording(prog, path, at, ret, docs)
    for _ in range(3):
        kind, new = data.draw(edits(prog), "edit")
        problems = check_edit(new, docs, kind)
        if problems:
            pytest.fail(f"{kind}: P={prog} P'={new} runs={runs}\n" + "\n".join(problems))


# ------------------------------------------------------------------------------------------------
# SQLite recordings, and the CLI (subprocesses: a few examples)
# ------------------------------------------------------------------------------------------------


def _env(hash_seed: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(source: pathlib.Path, app: pathlib.Path, hash_seed: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duroxide_sim", "replay", str(source), "--app", f"{app}:register", *extra],
                          capture_output=True, text=True, env=_env(hash_seed), cwd=str(source.parent), timeout=120)


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_sqlite_recording_replays_as_predicted(data: Any) -> None:
    """The same properties on a SqliteProvider file, read back by ``replay_source``'s loader."""
    from duroxide_sim.testing.replay import load_source

    prog = data.draw(programs(), "P")
    runs = _runs(data.draw, prog)
    path, _text, at, ret, _ = write_module(prog, "sq")
    db = path.parent / "app.db"
    record(path, runs, db)
    docs = load_source(str(db))
    check_recording(prog, path, at, ret, docs)
    kind, new = data.draw(edits(prog), "edit")
    problems = check_edit(new, docs, kind)
    if problems:
        pytest.fail(f"{kind}: P={prog} P'={new} runs={runs}\n" + "\n".join(problems))


@settings(max_examples=5, phases=(Phase.generate,), **SETTINGS)  # (no shrinking of subprocess runs)
@given(data=st.data())
def test_cli_exit_code_and_sites_match_the_in_process_replay(data: Any) -> None:
    """(a) P replays clean under another PYTHONHASHSEED; (e) exit 1 with every in-process site on
    its line when P' diverges, else 0 (an export directory, as README's CI recipe)."""
    from duroxide_sim.providers.sqlite import SqliteProvider
    from duroxide_sim.testing.replay import load_source

    prog = data.draw(programs(), "P")
    runs = _runs(data.draw, prog)
    path, _text, _at, _ret, _ = write_module(prog, "cli")
    db = path.parent / "app.db"
    record(path, runs, db)
    out = path.parent / "histories"
    provider = SqliteProvider.open(str(db))
    export_to_path(provider, out)
    provider.close()
    clean = _cli(out, path, 5)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    kind, new = data.draw(edits(prog, kinds=("insert", "delete", "reinput", "swap", "append", "nd")), "edit")
    app, *_ = write_module(new, "cli_" + kind)
    docs = load_source(str(out))
    divs = replay_documents(docs, build_registry(load_app(f"{app}:register")))
    proc = _cli(out, app, 7)
    assert proc.returncode == (1 if divs else 0), (kind, new, [d.render() for d in divs], proc.stdout, proc.stderr)
    for d in divs:
        assert any(ln.strip() == d.render() for ln in proc.stdout.splitlines()), (d.render(), proc.stdout)


def _set_order(names: tuple[str, ...], hash_seed: int) -> list[str]:
    code = f"import json; print(json.dumps(list({_set_literal(names)})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(hash_seed), timeout=30)
    return json.loads(proc.stdout)


@settings(max_examples=2, phases=(Phase.generate,), **SETTINGS)
@given(prog=programs(), pos=st.integers(0, 6), acc0=st.integers(0, 50))
def test_set_iteration_order_edit_is_caught_by_the_cli(prog: dict[str, Any], pos: int, acc0: int) -> None:
    """P iterates a list in the order CI's hash seed iterates the set P' uses: the first replay
    passes, the CLI's second replay under another PYTHONHASHSEED must report the loop's yield."""
    names = NAMES
    seed = next(s for s in range(20, 60) if _set_order(names, s) != _set_order(names, s + 1))
    order = _set_order(names, seed)
    pos = min(pos, len(prog["steps"]))
    p = _jsonify(prog)
    p["steps"].insert(pos, ["setloop", order, False, order])
    path, _text, _at, _ret, _ = write_module(p, "setp")
    docs = record(path, [("f", acc0, 99, None)])
    new = _jsonify(p)
    new["steps"][pos][2] = True
    app, _text2, at2, _ret2, _ = write_module(new, "sets")
    out = path.parent / "histories"
    out.mkdir()
    for doc in docs:
        (out / f"{doc['instance_id'].replace(':', '_')}.json").write_text(json.dumps(doc))
    proc = _cli(out, app, seed)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{app}:{at2[pos]}" in proc.stdout, (at2[pos], proc.stdout)


# ------------------------------------------------------------------------------------------------
# What the probe found (failed before its fix)
# ------------------------------------------------------------------------------------------------


def test_a_plain_function_orchestration_is_reported_at_its_return() -> None:
    """P: ``acc = yield ctx.schedule_activity("Inc", (acc + 0) % M)`` then ``return acc``; P':
    the step deleted, leaving ``return acc`` (a plain function: no yield left). Recorded to the end.

    The report names ``workflows.py:<line of return acc>`` (README, replay: "a finished history
    whose code now ends before the history does (a deleted final step ...) is reported at that
    `return`"), in both styles. It used to name no line for the plain function: its frame is gone
    once it returned, so the engine now reads its return's line from the bytecode."""
    prog = {"steps": [["act", "Inc", 0]], "style": "gen", "version": "1.0.0", "nd": []}
    path, *_ = write_module(prog, "bug_plain_p")
    docs = record(path, [("f", 0, 99, None)])
    for style in ("async", "gen"):
        new = {**prog, "steps": [], "style": style}
        app, text, _at, ret, _ = write_module(new, "bug_plain_" + style)
        divs = [d.message for d in replay_documents(docs, build_registry(load_app(f"{app}:register")))]
        assert len(divs) == 1 and "no longer takes" in divs[0], divs
        assert f"{app}:{ret}" in divs[0], (style, text.splitlines()[ret - 1], divs[0])
