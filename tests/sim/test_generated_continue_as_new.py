"""Generative probe of CONTINUE-AS-NEW (SPEC §8) and of everything that crosses an execution
boundary (§3.9 ContinueAsNew mapping, §6.1/§6.2 events and queue carry-forward, §7 children,
§12 versions, §13 custom status and KV, §14 management views), judged against a reference model
written from the SPEC text (not from the library's code).

What it generates (plain JSON data, shrinkable by Hypothesis):

* **Programs**: a chain of 1-6 executions of one orchestration (``CP``, generator, instance
  ``g``; ``CPA``, the same body as ``async def``, instance ``a``), registered as 1.0.0 or as
  1.0.0 and 2.0.0 (policy Latest; the client's start sometimes asks for 1.0.0). Each execution
  runs 0-5 steps, then continues as new - yielding ``continue_as_new`` (or
  ``continue_as_new_versioned`` with an explicit version when two are registered) or returning
  the task - with the next execution's index, the accumulator and every execution's log as the
  new input; the last one returns. Steps: an activity (``Add``: arithmetic that reports the
  execution it ran for), a timer, custom status set / reset, KV set / clear / clear-all /
  prune-all / read, a KV read through the ``get_kv_value_from_instance`` syscall, a positional
  wait, a dequeue, a mailbox drain (dequeue vs a 0 ms timer until the timer wins), and races:
  dequeue vs timer, wait vs timer, dequeue vs dequeue, activity vs a short timer (winner decided
  by timing: kept out of the compared log), activity vs a one-day timer (the timer stays
  outstanding across the continue-as-new), an activity no worker serves (tag ``nobody``) vs a
  timer, a wait for an event nobody raises vs a timer, a child that waits for good vs a timer
  (explicit id) - the race losers are the work left open at the continue-as-new - and an awaited
  sub-orchestration (auto id) that may itself continue as new once.
* **Signals**: raises and enqueues with unique payloads (``n0#s3``) at fixed times, at the times
  the program's timers end an execution (to land between executions), at seed-drawn times, to
  names nobody waits on, sometimes a burst of 22 messages to a queue nobody reads (the
  carry-forward cap); after the fault window one raise per waited name and one enqueue per read
  queue every 5 minutes (liveness rounds); after three days ``go`` to every held child.

The reference model (``evaluate``) gives each execution's log - execution id, version (explicit
-> exact, else Latest: §8/§12), the KV store and custom status it starts with (§8 "Carried"),
every deterministic step result - the final output, KV and custom status, the custom-status
version range (one bump per ack with a status event, none for a new execution: §13), and in
which turn each race loser is dropped: in the continue-as-new turn (§3.8 case 2, no
reconciliation: subscriptions get ``orchestration_terminal`` before the ending, activities
``orchestration_terminal_continued_as_new`` after it, children keep running - the reference
fixtures in tests/runtime/test_rust_reference_scenarios_c.py), or in a turn that ends otherwise
(``dropped_future``, the child cancelled: §3.10). History oracles (``oracle_queue``,
``oracle_positional``; §6.1/§6.2) judge what timing decides: which message or event each
subscription gets and what continue-as-new carries (per queue the first *k* consumed, *k* =
subscriptions never cancelled, the rest in history order, at most 20).

Checks: status, output, custom status (and its version) = model; every execution starts at
event id 1 with ``OrchestrationStarted`` carrying its input (the client's, then the previous
``OrchestrationContinuedAsNew`` input), version, initial custom status and exactly the oracle's
carry-forward list, which are its first ``QueueEventDelivered`` events; nothing after the ending
but terminal activity breadcrumbs (none for a completed activity); schedules match the program;
every activity completion / ``TimerFired`` / child result in execution *n* belongs to a schedule
of execution *n* (late completions of an earlier execution never leak, even when ids repeat);
values received = oracles; race winners agree with history; breadcrumb reasons and held
children's outcomes = model. Runs: (a) fault-free simulation, 1 and 2 nodes; (b)
``FaultPlan.all(0.05)`` (memory, 2 nodes), swarm (memory, 1 node; SQLite, 2 nodes):
``run_and_check`` ok and the same checks on every instance not poisoned (the spec is not
fault-transparent - timing decides the raw values - so the model replaces the fault-free twin);
(c) same seed, same trace; (d) the production ``Runtime`` on a ``SimClock`` (SequentialDriver)
on ``InMemoryProvider`` and a ``SqliteProvider`` file, signals sent exactly between executions
(right after each continue-as-new commits) and whenever the instance is idle, sometimes
``prune_executions(keep_last=1)`` in a gap, sometimes every instance exported and imported into
the other provider in a gap (``history_io``): the model, the oracles, signals sent in a gap
(the next execution's first events after the carried ones, a raise audit-only), ``get_status`` /
custom status and version / KV / ``get_instance_info`` / ``list_executions`` /
``get_execution_info`` at every gap and at the end, empty queues, identical histories and
management views on both providers; (e) the production ``Runtime`` on threads and the wall
clock (memory, SQLite file), rounds sent every few ms: the model and the oracles.

``DUROXIDE_CAN_PROBE_SCALE`` (default 1: about 20 s) multiplies every ``max_examples``.

Found (both fixed; each test failed before its fix): the actions a turn's code took after a
race of two dequeues that the buffer resolved in that turn - custom status, KV, a detached
start - were dropped when the code then returned or raised
(``test_actions_after_a_buffered_two_dequeue_race_are_kept_when_the_code_returns``); the custom
status of an instance whose setting execution was pruned was lost by export / import
(``test_custom_status_survives_prune_then_export_and_import``). Pinned
(``test_pinned_*``: the SPEC leaves them open): where signals sent between executions land; the
management views between executions; a ``continue_as_new`` task neither yielded nor returned
does nothing; a continue-as-new turn over the custom-status limit fails but its status is stored.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim.core.events import (
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ExternalEvent,
    ExternalSubscribed,
    ExternalSubscribedCancelled,
    HistoryEvent,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    QueueEventDelivered,
    QueueSubscribed,
    QueueSubscriptionCancelled,
    SubOrchestrationCancelRequested,
    SubOrchestrationCompleted,
    SubOrchestrationFailed,
    SubOrchestrationScheduled,
    TimerCreated,
    TimerFired,
)
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start

from ._drive import drive

M = 10_007
SEC, MIN = 1_000, 60_000
DAY = 86_400_000
V1, V2 = "1.0.0", "2.0.0"
WAIT_NAMES = ("n0", "n1")
QUEUES = ("q0", "q1")
UNUSED_WAIT, UNUSED_QUEUE = "n9", "q9"
BURST_QUEUE = "qx"
NEVER = "never"
TIMERS = (0, 1, 50, 1_000, 5_000)
#: Far beyond any KV timestamp: ``prune_kv_values_updated_before`` with it clears every key.
PRUNE_ALL = 4_000_000_000_000_000
CARRY_LIMIT = 20  # SPEC §6.2 / §10.3
ROUNDS_FROM, ROUND_EVERY, SPARE_ROUNDS = 11 * MIN, 5 * MIN, 2
GO_AT = 3 * DAY
SIGNAL_WINDOW = 20 * SEC
FIXED_TIMES = (0, 1, 50, 1_000, 2_000, 5_000, 6_000, 10_000, 15_000)
STYLES = (("g", "CP"), ("a", "CPA"))
DROPPED_CHILD = "canceled: parent dropped sub-orchestration future"
SCALE = max(1, int(os.environ.get("DUROXIDE_CAN_PROBE_SCALE", "1")))

#: Steps the code cannot get past in the turn that runs them (a timer, an activity or a child must
#: complete, an event must arrive after its subscription is persisted: SPEC §6.1): the code after
#: them runs in a later turn. A dequeue may resolve from the buffer in the same turn (§3.7).
FORCING = {"act", "kvx", "timer", "drain", "wait", "race_wt", "race_at", "race_ad", "race_nt", "race_nw", "sub", "sub_hold"}
AMBIGUOUS = {"deq", "race_qt", "race_qq"}
BLOCKING = {"wait", "deq", "race_qq"}

# ------------------------------------------------------------------------------------------------
# Activities and the interpreter (one generator body; the async variant awaits what it yields)
# ------------------------------------------------------------------------------------------------


def add(acc: int, k: int) -> int:
    return (acc * 3 + k) % M


def name_of(v: Any) -> Any:
    return v.split("#", 1)[0] if isinstance(v, str) else v


def hold_id(inst: str, i: int, j: int) -> str:
    return f"{inst}.h{i}.{j}"


def body(ctx: Any, inp: dict[str, Any], version: str) -> Any:
    execs, i, acc = inp["execs"], inp["i"], inp["acc"]
    ex = execs[i]
    elog: list[Any] = [["hdr", ctx.execution_id, ctx.orchestration_version, version,
                        sorted(ctx.get_kv_all_values().items()), ctx.get_custom_status()]]
    eraw: list[Any] = []
    for j, step in enumerate(ex["steps"]):
        kind = step[0]
        if kind == "act":
            r = yield ctx.schedule_activity("Add", {"acc": acc, "k": step[1]})
            acc = r["v"]
            elog.append(["act", acc, r["e"]])
        elif kind == "timer":
            yield ctx.schedule_timer(step[1])
            elog.append(["t"])
        elif kind == "cs":
            ctx.set_custom_status(step[1])
        elif kind == "csr":
            ctx.reset_custom_status()
        elif kind == "kv":
            ctx.set_kv_value(step[1], step[2])
        elif kind == "kvc":
            ctx.clear_kv_value(step[1])
        elif kind == "kvca":
            ctx.clear_all_kv_values()
        elif kind == "kvp":
            elog.append(["kvp", ctx.prune_kv_values_updated_before(PRUNE_ALL)])
        elif kind == "kvr":
            elog.append(["kvr", sorted(ctx.get_kv_all_values().items()), ctx.get_kv_length(), ctx.get_custom_status()])
        elif kind == "kvx":
            elog.append(["kvx", (yield ctx.get_kv_value_from_instance(ctx.instance_id, step[1]))])
        elif kind == "wait":
            v = yield ctx.wait_for_event(step[1])
            elog.append(["w", name_of(v)])
            eraw.append(["w", v])
        elif kind == "deq":
            v = yield ctx.dequeue_event(step[1])
            elog.append(["d", name_of(v)])
            eraw.append(["d", v])
        elif kind == "race_qt":
            r = yield ctx.race(ctx.dequeue_event(step[1]), ctx.schedule_timer(step[2]))
            eraw.append(["qt", r["index"], r["value"]])
        elif kind == "race_wt":
            r = yield ctx.race(ctx.wait_for_event(step[1]), ctx.schedule_timer(step[2]))
            eraw.append(["wt", r["index"], r["value"]])
        elif kind == "race_qq":
            r = yield ctx.race(ctx.dequeue_event(step[1]), ctx.dequeue_event(step[2]))
            elog.append(["qq"])
            eraw.append(["qq", r["index"], r["value"]])
        elif kind == "drain":  # an actor's mailbox drain: buffered messages resolve in this turn (§3.7)
            got = []
            while True:
                r = yield ctx.race(ctx.dequeue_event(step[1]), ctx.schedule_timer(0))
                if r["index"] == 1:
                    break
                got.append(r["value"])
            eraw.append(["drain", got])
        elif kind == "race_at":
            r = yield ctx.race(ctx.schedule_activity("Add", {"acc": acc, "k": step[1]}), ctx.schedule_timer(step[2]))
            eraw.append(["at", r["index"], r["value"]])
        elif kind == "race_ad":
            r = yield ctx.race(ctx.schedule_activity("Add", {"acc": acc, "k": step[1]}), ctx.schedule_timer(DAY))
            if r["index"] == 0:
                acc = r["value"]["v"]
            elog.append(["ad", r["index"], acc, r["value"]["e"] if r["index"] == 0 else None])
        elif kind == "race_nt":
            nobody = ctx.schedule_activity("Add", {"acc": acc, "k": 99}).with_tag("nobody")
            r = yield ctx.race(nobody, ctx.schedule_timer(step[1]))
            elog.append(["nt", r["index"]])
        elif kind == "race_nw":
            r = yield ctx.race(ctx.wait_for_event(NEVER), ctx.schedule_timer(step[1]))
            elog.append(["nw", r["index"]])
        elif kind == "sub":
            r = yield ctx.schedule_sub_orchestration("Child", {"k": (acc + step[1]) % M, "can": step[2]})
            acc = r["v"]
            elog.append(["sub", acc, r["e"]])
            eraw.append(["sub", r["me"]])
        elif kind == "sub_hold":
            child = ctx.schedule_sub_orchestration_with_id("Child", hold_id(ctx.instance_id, i, j), {"hold": True})
            r = yield ctx.race(child, ctx.schedule_timer(step[1]))
            elog.append(["sh", r["index"]])
        else:
            raise AssertionError(step)
    if i + 1 < len(execs):
        nxt = {**inp, "i": i + 1, "acc": acc, "log": [*inp["log"], elog], "raw": [*inp["raw"], eraw]}
        ver = ex.get("ver")
        task = ctx.continue_as_new(nxt) if ver is None else ctx.continue_as_new_versioned(nxt, ver)
        if ex.get("ret"):
            return task  # (returning the task continues as new too)
        yield task
        raise AssertionError("continue_as_new resumed")  # SPEC §8: its future never resolves
    return {"log": [*inp["log"], elog], "raw": [*inp["raw"], eraw], "acc": acc,
            "kv": sorted(ctx.get_kv_all_values().items()), "cs": ctx.get_custom_status()}


def child(ctx: Any, inp: dict[str, Any]) -> Any:
    if inp.get("hold"):
        yield ctx.wait_for_event("go")
        return {"v": -1, "me": ctx.instance_id, "e": ctx.execution_id}
    if inp.get("can"):
        yield ctx.continue_as_new({**inp, "can": False})
    r = yield ctx.schedule_activity("Add", {"acc": inp["k"], "k": 1})
    return {"v": r["v"], "me": ctx.instance_id, "e": ctx.execution_id}


def add_activity(ctx: Any, x: dict[str, Any]) -> dict[str, int]:
    return {"v": add(x["acc"], x["k"]), "e": ctx.execution_id}


def make_setup(versions: tuple[str, ...]) -> Any:
    def setup(rt: Any, world: Any) -> None:
        rt.register_activity("Add", add_activity)
        rt.register_orchestration("Child", child)
        for v in versions:
            def gen(ctx: Any, inp: Any, v: str = v) -> Any:
                return (yield from body(ctx, inp, v))

            async def coro(ctx: Any, inp: Any, v: str = v) -> Any:
                return await drive(body(ctx, inp, v))

            rt.register_orchestration_versioned("CP", v, gen)
            rt.register_orchestration_versioned("CPA", v, coro)

    return setup


def initial_input(prog: dict[str, Any]) -> dict[str, Any]:
    return {"execs": prog["execs"], "i": 0, "acc": prog["acc0"], "log": [], "raw": []}


# ------------------------------------------------------------------------------------------------
# The reference model (SPEC text only)
# ------------------------------------------------------------------------------------------------


@attrs.define
class Expected:
    log: list[Any]
    acc: int
    kv: list[list[str]]
    cs: str | None
    cs_version: tuple[int, int]  # (lowest, highest): how many acks carry a status event
    versions: list[str]  # per execution (SPEC §8/§12: explicit -> exact, else the policy's Latest)
    kv_end: list[dict[str, str]]  # the KV store when each execution ends
    cs_end: list[str | None]  # the custom status when each execution ends
    cs_version_end: list[tuple[int, int]]  # the custom status version range when each execution ends
    acc_at: dict[tuple[int, int], int]  # the accumulator when step (execution index, step) runs
    drop: dict[tuple[int, int], str]  # race step -> "can" | "early" | "either": its loser's drop turn


def drop_turn(steps: list[Any], j: int, last: bool) -> str:
    """In which turn a race loser of step ``j`` is dropped: the continue-as-new turn ("can": SPEC
    §3.8 case 2, no dropped-future reconciliation), or a turn that ends otherwise - a later yield
    that cannot resolve at once, or the final Completed turn (case 3) - ("early": §3.10
    reconciliation, ``dropped_future``). A dequeue in between may or may not resolve in the same
    turn ("either")."""
    after = [s[0] for s in steps[j + 1:]]
    if last or any(k in FORCING for k in after):
        return "early"
    if any(k in AMBIGUOUS for k in after):
        return "either"
    return "can"


def evaluate(prog: dict[str, Any]) -> Expected:
    latest = prog["versions"][-1]
    kv: dict[str, str] = {}
    cs: str | None = None
    acc = prog["acc0"]
    log: list[Any] = []
    versions: list[str] = []
    kv_end: list[dict[str, str]] = []
    cs_end: list[str | None] = []
    cs_version_end: list[tuple[int, int]] = []
    acc_at: dict[tuple[int, int], int] = {}
    drop: dict[tuple[int, int], str] = {}
    lo = hi = 0
    ver = prog["start_ver"] or latest
    n = len(prog["execs"])
    for i, ex in enumerate(prog["execs"]):
        versions.append(ver)
        elog: list[Any] = [["hdr", i + 1, ver, ver, [[k, v] for k, v in sorted(kv.items())], cs]]
        seg_lo = seg_hi = False  # a status event in the current (fewest / most) turn
        for j, step in enumerate(ex["steps"]):
            kind = step[0]
            acc_at[(i, j)] = acc
            if kind == "act":
                acc = add(acc, step[1])
                elog.append(["act", acc, i + 1])
            elif kind == "timer":
                elog.append(["t"])
            elif kind in ("cs", "csr"):
                cs = step[1] if kind == "cs" else None
                seg_lo = seg_hi = True
            elif kind == "kv":
                kv[step[1]] = step[2]
            elif kind == "kvc":
                kv.pop(step[1], None)
            elif kind == "kvca":
                kv.clear()
            elif kind == "kvp":
                elog.append(["kvp", len(kv)])
                kv.clear()
            elif kind == "kvr":
                elog.append(["kvr", [[k, v] for k, v in sorted(kv.items())], len(kv), cs])
            elif kind == "kvx":  # SPEC §5: a syscall activity reading the instance's KV (store + delta)
                elog.append(["kvx", kv.get(step[1])])
            elif kind == "wait":
                elog.append(["w", step[1]])
            elif kind == "deq":
                elog.append(["d", step[1]])
            elif kind == "race_qq":  # (the round sends to both queues: either may win)
                elog.append(["qq"])
            elif kind == "race_ad":
                acc = add(acc, step[1])
                elog.append(["ad", 0, acc, i + 1])
            elif kind == "race_nt":
                elog.append(["nt", 1])
            elif kind == "race_nw":
                elog.append(["nw", 1])
            elif kind == "sub":
                acc = add((acc + step[1]) % M, 1)
                elog.append(["sub", acc, 2 if step[2] else 1])
            elif kind == "sub_hold":
                elog.append(["sh", 1])
            if kind.startswith("race_") or kind in ("sub_hold", "drain"):
                drop[(i, j)] = drop_turn(ex["steps"], j, i + 1 == n)
            if kind in FORCING:
                lo, hi, seg_lo, seg_hi = lo + seg_lo, hi + seg_hi, False, False
            elif kind in AMBIGUOUS:
                hi, seg_hi = hi + seg_hi, False
        lo, hi = lo + seg_lo, hi + seg_hi  # an execution's last turn is its own ack (§8)
        log.append(elog)
        kv_end.append(dict(kv))
        cs_end.append(cs)
        cs_version_end.append((lo, hi))
        if i + 1 < n:
            ver = ex.get("ver") or latest
    return Expected(log, acc, [[k, v] for k, v in sorted(kv.items())], cs, (lo, hi), versions, kv_end, cs_end,
                    cs_version_end, acc_at, drop)


# ------------------------------------------------------------------------------------------------
# History oracles (SPEC §6.1 / §6.2 applied to one execution's recorded history)
# ------------------------------------------------------------------------------------------------

MISSING = object()


def decode(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


@attrs.define
class QueueVerdict:
    value: dict[int, tuple[int, Any]]  # live subscription id -> (history position, decoded data)
    cancelled: dict[int, tuple[int, str]]  # subscription id -> (position, reason) of its breadcrumb
    buffers: dict[str, list[tuple[int, str]]]
    carry: list[tuple[str, str]]
    live_before: dict[int, int]  # subscription id -> live same-name subscriptions created before it


def oracle_queue(events: list[HistoryEvent]) -> QueueVerdict:
    """§6.2: every QueueEventDelivered is buffered per name; the i-th subscription that is never
    cancelled gets the i-th message; on continue-as-new the first k (= such subscriptions) are
    consumed and the rest, in history order, at most 20, are carried forward."""
    subs: list[tuple[int, str]] = []
    cancelled: dict[int, tuple[int, str]] = {}
    buffers: dict[str, list[tuple[int, str]]] = {}
    for pos, e in enumerate(events):
        if isinstance(e, QueueSubscribed):
            subs.append((e.event_id, e.name))
        elif isinstance(e, QueueSubscriptionCancelled):
            cancelled.setdefault(e.source_event_id, (pos, e.reason))  # type: ignore[arg-type]
        elif isinstance(e, QueueEventDelivered):
            buffers.setdefault(e.name, []).append((pos, e.data))
    value: dict[int, tuple[int, Any]] = {}
    live_before: dict[int, int] = {}
    taken: Counter = Counter()
    for sid, name in subs:
        live_before[sid] = taken[name]
        if sid in cancelled:
            continue
        items = buffers.get(name, [])
        if taken[name] < len(items):
            pos, data = items[taken[name]]
            value[sid] = (pos, decode(data))
        taken[name] += 1
    left = sorted((pos, name, data) for name, items in buffers.items() for pos, data in items[taken[name]:])
    return QueueVerdict(value, cancelled, buffers, [(name, data) for _p, name, data in left][:CARRY_LIMIT], live_before)


def oracle_positional(events: list[HistoryEvent], dropped_at: dict[int, int]) -> dict[int, tuple[int, Any]]:
    """§6.1: an ExternalEvent joins its name's arrival list only if active (created, not yet
    cancelled) subscriptions outnumber the arrivals joined so far; a subscription never
    cancelled resolves with ``arrivals[raw - cancelled subscriptions with a lower raw index]``.
    ``dropped_at``: a race loser counts as cancelled from the poll that dropped it (the reference's
    reading, pinned in tests/sim/test_generated_event_matching.py)."""
    subs: dict[str, list[tuple[int, int]]] = {}  # name -> [(event id, position)]
    crumb: dict[int, int] = {}
    for pos, e in enumerate(events):
        if isinstance(e, ExternalSubscribedCancelled):
            crumb.setdefault(e.source_event_id, pos)  # type: ignore[arg-type]
    cancel_at = {sid: min(p, dropped_at.get(sid, p)) for sid, p in crumb.items()}
    for sid, p in dropped_at.items():
        cancel_at[sid] = min(cancel_at.get(sid, p), p)
    arrivals: dict[str, list[tuple[int, Any]]] = {}
    for pos, e in enumerate(events):
        if isinstance(e, ExternalSubscribed):
            subs.setdefault(e.name, []).append((e.event_id, pos))
        elif isinstance(e, ExternalEvent):
            active = sum(1 for sid, _p in subs.get(e.name, ()) if cancel_at.get(sid, 1 << 60) > pos)
            joined = arrivals.setdefault(e.name, [])
            if active > len(joined):
                joined.append((pos, decode(e.data)))
    out: dict[int, tuple[int, Any]] = {}
    for name, same in subs.items():
        for raw, (sid, _p) in enumerate(same):
            if sid in cancel_at:
                continue
            idx = raw - sum(1 for r2, (s2, _p2) in enumerate(same) if r2 < raw and s2 in cancel_at)
            items = arrivals.get(name, [])
            if idx < len(items):
                out[sid] = items[idx]
    return out


# ------------------------------------------------------------------------------------------------
# Checking one instance's executions against the model and the oracles
# ------------------------------------------------------------------------------------------------

SCHEDULES = (ActivityScheduled, TimerCreated, ExternalSubscribed, QueueSubscribed, SubOrchestrationScheduled)


def plan_of(steps: list[Any], steps_raw: dict[int, Any]) -> list[tuple[str, Any, int, int]]:
    """The schedule events the program emits, in order: (code, name, step, slot). A drain emits
    a (dequeue, timer) pair per message it took (its raw log says how many) and one more."""
    out: list[tuple[str, Any, int, int]] = []
    for j, s in enumerate(steps):
        k = s[0]
        if k == "race_qq":
            out += [("Q", s[1], j, 0), ("Q", s[2], j, 1)]
            continue
        if k == "drain":
            r = steps_raw.get(j)
            for m in range(len(r[1]) + 1 if r is not None else 1):
                out += [("Q", s[1], j, 2 * m), ("T", None, j, 2 * m + 1)]
            continue
        first = {"act": ("A", None), "kvx": ("A", None), "timer": ("T", None), "wait": ("W", s[1] if len(s) > 1 else None),
                 "deq": ("Q", s[1] if len(s) > 1 else None), "race_qt": ("Q", s[1] if len(s) > 1 else None),
                 "race_wt": ("W", s[1] if len(s) > 1 else None), "race_at": ("A", None), "race_ad": ("A", None),
                 "race_nt": ("A", None), "race_nw": ("W", NEVER), "sub": ("S", None), "sub_hold": ("S", None)}.get(k)
        if first is None:
            continue
        out.append((*first, j, 0))
        if k.startswith("race_") or k == "sub_hold":
            out.append(("T", None, j, 1))
    return out


def code_of(e: HistoryEvent) -> tuple[str, Any]:
    if isinstance(e, ActivityScheduled):
        return ("A", None)
    if isinstance(e, TimerCreated):
        return ("T", None)
    if isinstance(e, ExternalSubscribed):
        return ("W", e.name)
    if isinstance(e, QueueSubscribed):
        return ("Q", e.name)
    return ("S", None)


def child_of(parent: str, sched: SubOrchestrationScheduled) -> str:
    """SPEC §7: an auto id (``sub::...``) is relative to the parent; an explicit one is verbatim."""
    return f"{parent}::{sched.instance}" if sched.instance.startswith("sub::") else sched.instance


def _kind(e: Any) -> str:
    return type(e).__name__


def execution_problems(prog: dict[str, Any], exp: Expected, inst: str, n: int, events: list[HistoryEvent],
                       prev: list[HistoryEvent] | None, eraw: list[Any] | None, start_input: Any) -> list[str]:
    """Execution ``n`` (1-based) of ``inst``: ``eraw`` is the code's raw log for it (None: the
    code's log is not known)."""
    where = f"{inst}/exe{n}"
    out: list[str] = []
    i = n - 1
    ex = prog["execs"][i]
    last = n == len(prog["execs"])
    if not events or not isinstance(events[0], OrchestrationStarted):
        return [f"{where}: does not start with OrchestrationStarted: {[_kind(e) for e in events[:3]]}"]
    started = events[0]
    if started.event_id != 1 or started.execution_id != n:
        out.append(f"{where}: OrchestrationStarted has event id {started.event_id}, execution {started.execution_id} "
                   "(SPEC §1: each execution's history starts at event id 1)")
    # -- the Started event: input, version, initial custom status, carry-forward (SPEC §8) ------
    if n == 1:
        if decode(started.input) != start_input:
            out.append(f"{where}: Started.input {started.input[:200]!r} is not the client's input")
        if started.carry_forward_events or started.initial_custom_status is not None:
            out.append(f"{where}: execution 1 starts with carry {started.carry_forward_events!r} / "
                       f"custom status {started.initial_custom_status!r}")
    elif prev:
        can = next((e for e in prev if isinstance(e, OrchestrationContinuedAsNew)), None)
        if can is None or can.input != started.input:
            out.append(f"{where}: Started.input {started.input[:200]!r} != the previous OrchestrationContinuedAsNew "
                       f"input {None if can is None else can.input[:200]!r} (SPEC §8)")
        if started.initial_custom_status != exp.cs_end[i - 1]:
            out.append(f"{where}: Started.initial_custom_status {started.initial_custom_status!r}, the status when "
                       f"execution {n - 1} continued was {exp.cs_end[i - 1]!r} (SPEC §3.9/§8)")
        carry = oracle_queue(prev).carry
        got = [tuple(x) for x in (started.carry_forward_events or ())]
        if got != carry:
            out.append(f"{where}: carry_forward_events {got!r:.500} != SPEC §6.2 {carry!r:.500}")
        first = [(e.name, e.data) for e in events[1:1 + len(carry)] if isinstance(e, QueueEventDelivered)]
        if first != carry:
            out.append(f"{where}: events after Started {[_kind(e) for e in events[1:1 + len(carry)]]} "
                       f"{first!r:.300} are not the carried messages {carry!r:.300} (SPEC §6.2)")
    if started.version != exp.versions[i]:
        out.append(f"{where}: version {started.version!r}, SPEC §8/§12 says {exp.versions[i]!r}")
    # -- the ending ------------------------------------------------------------------------------
    ends = [p for p, e in enumerate(events) if isinstance(e, (OrchestrationCompleted, OrchestrationFailed,
                                                                OrchestrationContinuedAsNew))]
    if not ends:
        return out  # still running (a run cut by the horizon): judged no further
    end = ends[0]
    want_end = OrchestrationCompleted if last else OrchestrationContinuedAsNew
    if len(ends) != 1 or not isinstance(events[end], want_end):
        return [*out, f"{where}: endings {[_kind(events[p]) for p in ends]}, expected one {want_end.__name__}"]
    reason_after = "orchestration_terminal_completed" if last else "orchestration_terminal_continued_as_new"
    for e in events[end + 1:]:
        if not (isinstance(e, ActivityCancelRequested) and e.reason == reason_after):
            out.append(f"{where}: {_kind(e)} {getattr(e, 'reason', '')!r} after the ending (SPEC §3.1 step 9 allows "
                       f"only ActivityCancelRequested{{{reason_after}}})")
    # -- schedules vs the program --------------------------------------------------------------
    raws = iter(eraw or [])
    steps_raw: dict[int, Any] = {}
    for j, s in enumerate(ex["steps"]):
        if s[0] in ("wait", "deq", "race_qt", "race_wt", "race_at", "race_qq", "drain", "sub"):
            steps_raw[j] = next(raws, None)
    plan = plan_of(ex["steps"], steps_raw)
    scheds = [e for e in events if isinstance(e, SCHEDULES)]
    if [(c, nm) for c, nm, _j, _s in plan] != [code_of(e) for e in scheds]:
        return [*out, f"{where}: schedules {[code_of(e) for e in scheds]} vs program {[(c, nm) for c, nm, *_ in plan]}"]
    ids = {(j, slot): e.event_id for (_c, _n, j, slot), e in zip(plan, scheds, strict=True)}
    by_id = {e.event_id: e for e in scheds}
    pos_of = {e.event_id: p for p, e in enumerate(events)}
    fired = {e.source_event_id: p for p, e in enumerate(events) if isinstance(e, TimerFired)}
    completions: dict[int, list[tuple[int, HistoryEvent]]] = {}
    crumbs: dict[int, list[tuple[int, HistoryEvent]]] = {}
    for p, e in enumerate(events):
        sid = getattr(e, "source_event_id", None)
        if sid is None:
            continue
        if isinstance(e, (ActivityCompleted, ActivityFailed, SubOrchestrationCompleted, SubOrchestrationFailed)):
            completions.setdefault(sid, []).append((p, e))
        elif isinstance(e, (ActivityCancelRequested, ExternalSubscribedCancelled, QueueSubscriptionCancelled,
                            SubOrchestrationCancelRequested)):
            crumbs.setdefault(sid, []).append((p, e))
    for p, e in enumerate(events):
        if isinstance(e, TimerFired):
            tc = by_id.get(e.source_event_id)  # type: ignore[arg-type]
            if not isinstance(tc, TimerCreated) or tc.fire_at_ms != e.fire_at_ms or pos_of[tc.event_id] > p:
                out.append(f"{where}: TimerFired {e!r:.200} does not match a TimerCreated of this execution "
                           f"({tc!r:.200}): a stale timer of another execution? (SPEC §8)")
    # -- completions belong to this execution's schedules (no leak across the boundary) --------
    for sid, comps in completions.items():
        sched = by_id.get(sid)
        for _p, c in comps:
            if isinstance(c, ActivityCompleted):
                r = decode(c.result)
                want = None
                if isinstance(sched, ActivityScheduled) and sched.name != "Add":
                    continue  # (the KV syscall: its value is the code's, checked against the model)
                if isinstance(sched, ActivityScheduled):
                    a = decode(sched.input)
                    want = {"v": add(a["acc"], a["k"]), "e": n}
                if r != want:
                    out.append(f"{where}: ActivityCompleted for id {sid} = {r!r}, its schedule {sched!r:.200} "
                               f"in this execution gives {want!r} (a completion from another execution?)")
            elif isinstance(c, SubOrchestrationCompleted):
                r = decode(c.result)
                want_me = child_of(inst, sched) if isinstance(sched, SubOrchestrationScheduled) else None
                if not isinstance(r, dict) or r.get("me") != want_me:
                    out.append(f"{where}: SubOrchestrationCompleted for id {sid} comes from {r!r:.200}, its "
                               f"schedule started {want_me!r} (a child of another execution?)")
            elif isinstance(c, SubOrchestrationFailed) and any(
                    isinstance(x, SubOrchestrationCancelRequested) and x.reason == "dropped_future" and q < _p
                    for q, x in crumbs.get(sid, [])):
                # a child this execution dropped (and so cancelled: SPEC §3.10) reports its
                # cancellation back (§7); completions after a cancel are tolerated (§16.43)
                if getattr(c.details, "display_message", lambda: "")() != DROPPED_CHILD:
                    out.append(f"{where}: the dropped child of id {sid} failed with {c.details!r:.200}")
            else:
                out.append(f"{where}: unexpected {_kind(c)} for id {sid}: {c!r:.300}")
    # -- every schedule left open at the ending is closed (SPEC §3.9, §3.1 step 9) -------------
    for e in scheds:
        if isinstance(e, ActivityScheduled) and e.event_id not in completions and e.event_id not in crumbs:
            out.append(f"{where}: ActivityScheduled id {e.event_id} neither completed nor cancelled at the ending")
        done_before = [p for p, _c in completions.get(e.event_id, []) if p < end]
        late = [x.reason for _p, x in crumbs.get(e.event_id, []) if x.reason.startswith("orchestration_terminal")]
        if isinstance(e, ActivityScheduled) and done_before and late:
            out.append(f"{where}: activity id {e.event_id} completed at position {done_before[0]} and still got "
                       f"{late} (SPEC §3.1 step 9: only activities not completed)")
    # -- the oracles and the code's values -------------------------------------------------------
    qv = oracle_queue(events)
    for e in scheds:
        if isinstance(e, QueueSubscribed) and e.event_id not in qv.value and e.event_id not in qv.cancelled:
            out.append(f"{where}: QueueSubscribed id {e.event_id} ({e.name}) neither resolved nor cancelled at the end")
    if eraw is None:
        return out
    dropped_at: dict[int, int] = {}
    for j, s in enumerate(ex["steps"]):
        r = steps_raw.get(j)
        if s[0] == "race_wt" and r is not None and r[1] == 1 and ids[(j, 1)] in fired:
            dropped_at[ids[(j, 0)]] = fired[ids[(j, 1)]] + 1
    pv = oracle_positional(events, dropped_at)
    for j, s in enumerate(ex["steps"]):
        kind, r = s[0], steps_raw.get(j)
        at = f"{where} step {j} {s}"
        if kind in ("wait", "deq"):
            sid = ids[(j, 0)]
            got = (pv if kind == "wait" else qv.value).get(sid)
            if r is None or got is None or got[1] != r[1]:
                out.append(f"{at}: the code got {None if r is None else r[1]!r}, SPEC §6 gives "
                           f"{None if got is None else got[1]!r}")
        elif kind in ("race_qt", "race_wt"):
            sid, tid = ids[(j, 0)], ids[(j, 1)]
            oracle = qv.value if kind == "race_qt" else pv
            cancelled = sid in (qv.cancelled if kind == "race_qt" else crumbs)
            if r is None:
                out.append(f"{at}: no raw log entry")
            elif r[1] == 0:
                got = oracle.get(sid)
                if cancelled or got is None or got[1] != r[2]:
                    out.append(f"{at}: the subscription won with {r[2]!r}; SPEC §6 gives "
                               f"{None if got is None else got[1]!r} (cancelled: {cancelled})")
                elif tid in fired and got[0] > fired[tid]:
                    out.append(f"{at}: the subscription won, but its arrival (position {got[0]}) comes after the "
                               f"TimerFired (position {fired[tid]}): SPEC §4, the first completion in history wins")
            else:
                if not cancelled:
                    out.append(f"{at}: the timer won but the subscription id {sid} was never cancelled (SPEC §4)")
                if tid not in fired:
                    out.append(f"{at}: the timer won but there is no TimerFired for id {tid}")
                elif kind == "race_qt":
                    before = sum(1 for p, _d in qv.buffers.get(s[1], []) if p < fired[tid])
                    if qv.live_before[sid] < before:
                        out.append(f"{at}: the timer won although message #{qv.live_before[sid]} of {s[1]!r} was "
                                   f"in history before the TimerFired (SPEC §4/§6.2)")
                out += crumb_problems(at, exp.drop[(i, j)], crumbs.get(sid, []), pos_of, end, subscription=True)
        elif kind == "race_qq":
            win, lose = ids[(j, r[1])] if r is not None else None, ids[(j, 1 - r[1])] if r is not None else None
            got = qv.value.get(win)
            if r is None or win in qv.cancelled or got is None or got[1] != r[2]:
                out.append(f"{at}: dequeue {None if r is None else r[1]} won with {None if r is None else r[2]!r}; "
                           f"SPEC §6.2 gives {None if got is None else got[1]!r}")
            elif lose not in qv.cancelled:
                out.append(f"{at}: the losing dequeue id {lose} was never cancelled (SPEC §4)")
            else:
                out += crumb_problems(at, exp.drop[(i, j)], crumbs.get(lose, []), pos_of, end, subscription=True)
        elif kind == "drain":
            for m, v in enumerate(r[1] if r is not None else []):
                got = qv.value.get(ids[(j, 2 * m)])
                if got is None or got[1] != v:
                    out.append(f"{at}: drained #{m} {v!r}, SPEC §6.2 gives {None if got is None else got[1]!r}")
            if r is not None:
                last_sub = ids[(j, 2 * len(r[1]))]
                if last_sub not in qv.cancelled:
                    out.append(f"{at}: the drain's last dequeue (lost to its timer) was never cancelled")
                else:
                    out += crumb_problems(at, exp.drop[(i, j)], crumbs.get(last_sub, []), pos_of, end, subscription=True)
        elif kind == "race_at" and r is not None and r[1] == 0:
            want = {"v": add(exp.acc_at[(i, j)], s[1]), "e": n}
            if r[2] != want:
                out.append(f"{at}: the activity won with {r[2]!r}, expected {want!r}")
        elif kind == "sub" and r is not None:
            sched = by_id[ids[(j, 0)]]
            if r[1] != child_of(inst, sched):
                out.append(f"{at}: the child reported {r[1]!r}, its schedule names {child_of(inst, sched)!r}")
        elif kind == "race_nt":
            aid = ids[(j, 0)]
            if aid in completions:
                out.append(f"{at}: the activity no worker serves completed: {completions[aid]!r:.200}")
            out += crumb_problems(at, exp.drop[(i, j)], crumbs.get(aid, []), pos_of, end, subscription=False)
        elif kind == "race_nw":
            out += crumb_problems(at, exp.drop[(i, j)], crumbs.get(ids[(j, 0)], []), pos_of, end, subscription=True)
        elif kind == "sub_hold":
            cid = ids[(j, 0)]
            got = [e.reason for _p, e in crumbs.get(cid, []) if isinstance(e, SubOrchestrationCancelRequested)]
            want = {"can": [[]], "early": [["dropped_future"]], "either": [[], ["dropped_future"]]}[exp.drop[(i, j)]]
            if got not in want:
                out.append(f"{at}: SubOrchestrationCancelRequested reasons {got}, expected one of {want} (dropped in the "
                           f"{exp.drop[(i, j)]} turn: SPEC §3.8 case 2 / §3.10)")
            if any(isinstance(c, SubOrchestrationCompleted) for _p, c in completions.get(cid, [])):
                out.append(f"{at}: the held child's result reached this execution: {completions[cid]!r:.200}")
    return out


def crumb_problems(at: str, turn: str, crumbs: list[tuple[int, HistoryEvent]], pos_of: dict[int, int], end: int,
                   subscription: bool) -> list[str]:
    """A race loser dropped in the continue-as-new turn is closed like any open schedule of an
    ending execution (subscriptions ``orchestration_terminal`` before the ending, activities
    ``orchestration_terminal_continued_as_new`` after it); dropped in a turn that ends otherwise,
    it gets ``dropped_future`` (SPEC §3.8-§3.10; reference fixtures in scenarios_c)."""
    if len(crumbs) != 1:
        return [f"{at}: {len(crumbs)} cancel breadcrumbs for the loser: {[e for _p, e in crumbs]!r:.300}"]
    p, e = crumbs[0]
    terminal = ("orchestration_terminal", p < end) if subscription else ("orchestration_terminal_continued_as_new", p > end)
    ok_can = e.reason == terminal[0] and terminal[1]
    ok_early = e.reason == "dropped_future" and p < end
    if (turn == "can" and not ok_can) or (turn == "early" and not ok_early) or (turn == "either" and not (ok_can or ok_early)):
        return [f"{at}: breadcrumb {_kind(e)}{{{e.reason}}} at position {p} (ending at {end}); the loser is dropped "
                f"in the {turn!r} turn (SPEC §3.8 case 2, §3.9, §3.10)"]
    return []


def instance_problems(prog: dict[str, Any], exp: Expected, inst: str, executions: dict[int, list[HistoryEvent]],
                      status: Any, statuses: dict[str, Any] | None = None, settled: bool = True) -> list[str]:
    """Everything about one instance (and its held children, when ``statuses`` is given)."""
    out: list[str] = []
    n = len(prog["execs"])
    if status is None or status.status != "Completed":
        return [f"{inst}: status {None if status is None else (status.status, status.error)!r:.600}"]
    o = status.output
    got = {"log": o.get("log"), "acc": o.get("acc"), "kv": o.get("kv"), "cs": o.get("cs")}
    want = {"log": exp.log, "acc": exp.acc, "kv": exp.kv, "cs": exp.cs}
    for key in want:
        if got[key] != want[key]:
            if key == "log":
                for e, (a, b) in enumerate(zip(got[key] or [], want[key], strict=False), start=1):
                    if a != b:
                        out.append(f"{inst}: execution {e} log {a!r:.700} != model {b!r:.700}")
                        break
                else:
                    out.append(f"{inst}: {len(got[key] or [])} execution logs, model {len(want[key])}")
            else:
                out.append(f"{inst}: final {key} {got[key]!r:.300} != model {want[key]!r:.300}")
    if status.custom_status != exp.cs:
        out.append(f"{inst}: custom status {status.custom_status!r} != model {exp.cs!r} (SPEC §8/§13)")
    lo, hi = exp.cs_version
    if not lo <= status.custom_status_version <= hi:
        out.append(f"{inst}: custom_status_version {status.custom_status_version}, SPEC §13 gives {lo}..{hi} "
                   "(one bump per ack holding a status event; none for a new execution)")
    if sorted(executions) != list(range(1, n + 1)):
        return [*out, f"{inst}: executions {sorted(executions)}, expected 1..{n}"]
    raw = o.get("raw") or []
    start_input = initial_input(prog)
    for e in range(1, n + 1):
        out += execution_problems(prog, exp, inst, e, executions[e], executions.get(e - 1),
                                  raw[e - 1] if e - 1 < len(raw) else None, start_input)
    if statuses is not None:
        out += held_children_problems(prog, exp, inst, statuses, settled)
    return out


def held_children_problems(prog: dict[str, Any], exp: Expected, inst: str, statuses: dict[str, Any],
                           settled: bool) -> list[str]:
    """A child dropped in the continue-as-new turn keeps running (pinned with the reference) and
    completes once told to; one dropped earlier is cancelled (SPEC §3.10)."""
    out = []
    for i, ex in enumerate(prog["execs"]):
        for j, s in enumerate(ex["steps"]):
            if s[0] != "sub_hold":
                continue
            cid = hold_id(inst, i, j)
            st_ = statuses.get(cid)
            got = None if st_ is None else (st_.status, st_.output if st_.status == "Completed" else st_.error)
            done = ("Completed", {"v": -1, "me": cid, "e": 1})
            want = {"can": [done], "early": [("Failed", DROPPED_CHILD)],
                    "either": [done, ("Failed", DROPPED_CHILD)]}[exp.drop[(i, j)]]
            if not settled:
                want = [*want, ("Running", None)]
            if got not in want:
                out.append(f"{cid}: {got!r:.300}, expected one of {want!r:.300} (dropped in the {exp.drop[(i, j)]} turn)")
    return out


# ------------------------------------------------------------------------------------------------
# Strategies and the simulation spec
# ------------------------------------------------------------------------------------------------


def _steps() -> Any:
    timer = st.sampled_from(TIMERS)
    wname = st.sampled_from(WAIT_NAMES)
    qname = st.sampled_from(QUEUES)
    key = st.sampled_from(("a", "b", "c"))
    return st.one_of(
        st.tuples(st.just("act"), st.integers(0, 30)),
        st.tuples(st.just("timer"), timer),
        st.tuples(st.just("cs"), st.sampled_from(("s0", "s1", ""))),
        st.tuples(st.just("csr")),
        st.tuples(st.just("kv"), key, st.sampled_from(("1", "2", ""))),
        st.tuples(st.just("kvc"), key),
        st.tuples(st.just("kvca")),
        st.tuples(st.just("kvp")),
        st.tuples(st.just("kvr")),
        st.tuples(st.just("kvx"), key),
        st.tuples(st.just("wait"), wname),
        st.tuples(st.just("deq"), qname),
        st.tuples(st.just("race_qt"), qname, timer),
        st.tuples(st.just("race_wt"), wname, timer),
        st.tuples(st.just("race_qq"), qname, qname),
        st.tuples(st.just("drain"), st.sampled_from((*QUEUES, BURST_QUEUE))),
        st.tuples(st.just("race_at"), st.integers(0, 30), timer),
        st.tuples(st.just("race_ad"), st.integers(0, 30)),
        st.tuples(st.just("race_nt"), timer),
        st.tuples(st.just("race_nw"), timer),
        st.tuples(st.just("sub"), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("sub_hold"), timer),
    ).map(list)


@st.composite
def programs(draw: Any, max_execs: int = 6, max_steps: int = 5, max_blocking: int = 6) -> dict[str, Any]:
    versions = draw(st.sampled_from(((V1,), (V1, V2))))
    n = draw(st.integers(1, max_execs))
    execs = []
    blocking = 0
    for i in range(n):
        steps = []
        for s in draw(st.lists(_steps(), max_size=max_steps)):
            if s[0] in BLOCKING:
                if blocking >= max_blocking:
                    continue
                blocking += 1
            steps.append(s)
        ver = draw(st.sampled_from((None, *versions))) if len(versions) > 1 and i + 1 < n else None
        execs.append({"steps": steps, "ver": ver, **({"ret": True} if i + 1 < n and draw(st.integers(0, 4)) == 0 else {})})
    start_ver = draw(st.sampled_from((None, V1))) if len(versions) > 1 else None
    return json.loads(json.dumps({"versions": list(versions), "execs": execs, "start_ver": start_ver,
                                  "acc0": draw(st.integers(0, 50))}))


def used_names(prog: dict[str, Any]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(every waited name, every read queue, blocking waits' names, blocking dequeues' queues)."""
    waits, queues, bw, bq = set(), set(), set(), set()
    for ex in prog["execs"]:
        for s in ex["steps"]:
            if s[0] in ("wait", "race_wt"):
                waits.add(s[1])
            if s[0] in ("deq", "race_qt", "drain"):
                queues.add(s[1])
            if s[0] == "race_qq":
                queues.update(s[1:3])
                bq.update(s[1:3])
            if s[0] == "wait":
                bw.add(s[1])
            if s[0] == "deq":
                bq.add(s[1])
    return sorted(waits), sorted(queues), sorted(bw), sorted(bq)


def gap_times(prog: dict[str, Any]) -> list[int]:
    """When the executions would end if nothing had to wait for a signal: a signal sent then
    often lands between two executions (or in the batch of the continue-as-new turn)."""
    out, t = [], 0
    for ex in prog["execs"]:
        for s in ex["steps"]:
            if s[0] in BLOCKING:
                return out
            if s[0] == "timer":
                t += s[1]
            elif s[0] in ("race_nt", "race_nw", "sub_hold", "race_qt", "race_wt", "race_at"):
                t += s[-1]
        out.append(t)
    return out


@st.composite
def scenarios(draw: Any, **kw: Any) -> dict[str, Any]:
    prog = draw(programs(**kw))
    waits, queues, _bw, _bq = used_names(prog)
    gaps = gap_times(prog)
    when = st.one_of(st.none(), st.sampled_from(FIXED_TIMES), *([st.sampled_from(gaps)] if gaps else []),
                     *([st.sampled_from([g + 1 for g in gaps])] if gaps else []))
    signals = []
    for k in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(("raise", "enqueue")))
        pool = [*waits, UNUSED_WAIT] if kind == "raise" else [*queues, UNUSED_QUEUE]
        name = draw(st.sampled_from(pool))
        signals.append([kind, name, f"{name}#s{k}", draw(when)])
    if draw(st.integers(0, 3)) == 0:  # a burst to a queue nobody reads: the carry-forward cap
        at = draw(st.sampled_from((1, *gaps)))
        signals += [["enqueue", BURST_QUEUE, f"{BURST_QUEUE}#b{k}", at] for k in range(22)]
    n = len(prog["execs"])
    # (production runs only: prune the old executions, keep_last=1, in the gap after this one)
    prune_at = draw(st.sampled_from((None, *range(2, n)))) if n > 2 else None
    # (production runs only: export every instance and import it into the other provider there)
    move_at = draw(st.sampled_from((None, *range(1, n)))) if n > 1 else None
    return {"prog": prog, "signals": signals, "prune_at": prune_at, "move_at": move_at}


def round_signals(prog: dict[str, Any], inst: str) -> list[Signal]:
    """After the fault window: every 5 minutes one raise per blocking wait name and one enqueue per
    blocking queue, as many rounds as blocking steps (+2): each round resolves at least one."""
    _w, _q, bw, bq = used_names(prog)
    n = sum(1 for ex in prog["execs"] for s in ex["steps"] if s[0] in BLOCKING)
    out = []
    for k in range(n + SPARE_ROUNDS if n else 0):
        at = ROUNDS_FROM + ROUND_EVERY * k
        out += [Signal(instance=inst, name=nm, data=f"{nm}#R{k}", at_ms=at) for nm in bw]
        out += [Signal(instance=inst, name=q, data=f"{q}#R{k}", at_ms=at, kind="enqueue") for q in bq]
    return out


def go_signals(prog: dict[str, Any], inst: str) -> list[Signal]:
    return [Signal(instance=hold_id(inst, i, j), name="go", data="go", at_ms=GO_AT + m * MIN)
            for i, ex in enumerate(prog["execs"]) for j, s in enumerate(ex["steps"]) if s[0] == "sub_hold"
            for m in range(3)]


def make_spec(sc: dict[str, Any], name: str = "gen-can") -> SimSpec:
    prog = sc["prog"]
    starts, signals = [], []
    for inst, orch in STYLES:
        starts.append(Start(instance=inst, orchestration=orch, input=initial_input(prog), version=prog["start_ver"]))
        signals += [Signal(instance=inst, name=nm, data=data, at_ms=at, kind=kind) for kind, nm, data, at in sc["signals"]]
        signals += round_signals(prog, inst) + go_signals(prog, inst)
    return SimSpec(name=name, setup=make_setup(tuple(prog["versions"])), starts=starts, signals=signals,
                   signal_window_ms=SIGNAL_WINDOW, fault_transparent=False)


def poisoned(status: Any) -> bool:
    return status is not None and status.status == "Failed" and (status.error or "").startswith("poison:")


def sim_problems(sc: dict[str, Any], result: Any, faulty: bool) -> list[str]:
    prog = sc["prog"]
    exp = evaluate(prog)
    out = []
    for inst, _orch in STYLES:
        status = result.statuses.get(inst)
        if faulty and poisoned(status):
            continue  # a fault storm used up the retry budget (SPEC §10.2): not judged
        if faulty and any(poisoned(result.statuses.get(hold_id(inst, i, j)))
                          for i, ex in enumerate(prog["execs"]) for j, _s in enumerate(ex["steps"])):
            continue
        out += instance_problems(prog, exp, inst, result.histories.get(inst, {}), status, result.statuses,
                                 settled=result.quiescent)
    return out


SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ------------------------------------------------------------------------------------------------
# (a) fault-free simulation, 1 and 2 nodes
# ------------------------------------------------------------------------------------------------


@settings(max_examples=250 * SCALE, **SETTINGS)
@given(sc=scenarios(), seed=st.integers(0, 10_000))
def test_fault_free_simulation_matches_the_model(sc: dict[str, Any], seed: int) -> None:
    spec = make_spec(sc)
    for s, nodes in ((seed, 1), (seed + 1, 2)):
        result = run_and_check(Simulation(spec, s, None, nodes=nodes))
        assert result.ok, result.failures[0].render()
        problems = sim_problems(sc, result, faulty=False)
        assert not problems, (s, nodes, problems)


# ------------------------------------------------------------------------------------------------
# (b) under faults: the checkers pass, the model and the oracles hold
# ------------------------------------------------------------------------------------------------


@settings(max_examples=100 * SCALE, **SETTINGS)
@given(sc=scenarios(), seed=st.integers(0, 10_000))
def test_faulty_simulation_passes_checkers_and_matches_the_model(sc: dict[str, Any], seed: int) -> None:
    spec = make_spec(sc)
    runs = ((seed, FaultPlan.all(0.05), "memory", 2), (seed + 1, "swarm", "memory", 1),
            (seed + 2, "swarm", "sqlite", 2))
    for s, plan, provider, nodes in runs:
        result = run_and_check(Simulation(spec, s, plan, provider=provider, nodes=nodes))
        assert result.ok, result.failures[0].render()
        problems = sim_problems(sc, result, faulty=True)
        assert not problems, (s, plan if isinstance(plan, str) else plan.to_json(), provider, problems)


# ------------------------------------------------------------------------------------------------
# (c) same seed, same trace
# ------------------------------------------------------------------------------------------------


@settings(max_examples=20 * SCALE, **SETTINGS)
@given(sc=scenarios(max_execs=4), seed=st.integers(0, 10_000))
def test_same_seed_gives_identical_trace(sc: dict[str, Any], seed: int) -> None:
    spec = make_spec(sc)
    one = Simulation(spec, seed, "swarm").run()
    two = Simulation(spec, seed, "swarm").run()
    assert one.trace_hash == two.trace_hash
    assert one.outputs() == two.outputs()


# ------------------------------------------------------------------------------------------------
# (d) production Runtime (SequentialDriver + SimClock), memory and SQLite file, signals in the gaps
# ------------------------------------------------------------------------------------------------


@attrs.define
class Live:
    histories: dict[str, dict[int, list[HistoryEvent]]]
    statuses: dict[str, Any]
    problems: list[str]
    gaps: dict[tuple[str, int], list[tuple[str, str, str]]]  # (inst, execution) -> sent (kind, name, data)
    views: list[Any] = attrs.Factory(list)  # management views at every gap and at the end (provider parity)
    moved: bool = False  # exported and imported into another provider in a gap


def run_production(sc: dict[str, Any], make_provider: Any, move_to: Any = None) -> Live:
    """The production ``Runtime`` stepped on a ``SimClock``. Signals: the scenario's burst right
    after the starts; right after each continue-as-new commits (before the next execution's first
    turn) one raise per waited name and one enqueue per read queue (``#G{execution}``); whenever
    nothing is left to run, a round (``#R{k}``) for the blocking names; once both instances have
    ended, ``go`` to every held child. Checks the client's views at every gap and at the end.
    ``prune_at``: in that gap, ``prune_executions(keep_last=1)`` (SPEC §14: never the current
    execution) - the chain must go on unchanged; each execution's history is read when it ends,
    so the pruned ones are still judged. ``move_at`` (with ``move_to``, a provider factory): in
    that gap, after its signals, every instance is exported with its queued work
    (``history_io``: the ContinueAsNew item, carried and gap messages, timers, activities) and
    imported into a fresh provider, where a new Runtime carries on."""
    from duroxide_sim import Client, Runtime, RuntimeOptions
    from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
    from duroxide_sim.sim.clock import DEFAULT_EPOCH_MS

    prog = sc["prog"]
    exp = evaluate(prog)
    clock = SimClock(DEFAULT_EPOCH_MS)
    w: dict[str, Any] = {}

    def boot(provider: Any, n: int) -> None:
        rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(n))
        make_setup(tuple(prog["versions"]))(rt, None)
        driver = SequentialDriver(rt, clock)
        w.update(provider=provider, rt=rt, driver=driver, client=Client(provider, clock=clock, sleep=driver.sleep))

    boot(make_provider(clock), 0)
    waits, queues, bw, bq = used_names(prog)
    problems: list[str] = []
    gaps: dict[tuple[str, int], list[tuple[str, str, str]]] = {}
    ended: dict[str, dict[int, list[HistoryEvent]]] = {inst: {} for inst, _ in STYLES}
    views: list[Any] = []
    inp = initial_input(prog)
    for inst, orch in STYLES:
        if prog["start_ver"] is None:
            w["client"].start_orchestration(inst, orch, inp)
        else:
            w["client"].start_orchestration_versioned(inst, orch, inp, prog["start_ver"])
        for _kind, nm, data, _at in sc["signals"]:
            if nm == BURST_QUEUE:
                w["client"].enqueue_event(inst, nm, data)

    def terminal(inst: str) -> bool:
        return w["client"].get_status(inst).status in ("Completed", "Failed")

    def move() -> None:
        from duroxide_sim.runtime.history_io import export_instance, import_documents, queued_by_instance

        old = w["provider"]
        queued = queued_by_instance(old)
        docs = [json.loads(json.dumps(export_instance(old, i, queued))) for i in w["client"].list_all_instances()]
        getattr(old, "close", lambda: None)()
        fresh = move_to(clock)
        import_documents(fresh, docs)
        boot(fresh, 1)

    def at_gap() -> None:
        provider, client = w["provider"], w["client"]
        for inst, _orch in STYLES:
            e = provider.latest_execution_id(inst) or 0
            if not e or (inst, e) in gaps:
                continue
            events = list(provider.read_with_execution(inst, e))
            can = next((x for x in events if isinstance(x, OrchestrationContinuedAsNew)), None)
            if can is None:
                continue
            pa = sc.get("prune_at")
            problems.extend(gap_view_problems(client, exp, inst, e, decode(can.input), pa if pa and pa < e else 1))
            views.append((inst, e, management_view(client)))
            ended[inst][e] = events
            if sc.get("prune_at") == e:
                from duroxide_sim import PruneOptions

                res = client.prune_executions(inst, PruneOptions(keep_last=1))
                if (res.executions_deleted, client.list_executions(inst)) != (e - 1, [e]):
                    problems.append(f"{inst}: prune(keep_last=1) in the gap after execution {e} deleted "
                                    f"{res.executions_deleted}, left {client.list_executions(inst)} (SPEC §14)")
            sent = [("raise", nm, f"{nm}#G{e}") for nm in waits] + [("enqueue", q, f"{q}#G{e}") for q in queues]
            for kind, nm, data in sent:
                (client.raise_event if kind == "raise" else client.enqueue_event)(inst, nm, data)
            gaps[(inst, e)] = sent
        # (once the first instance has reached that gap and every instance exists: an instance
        # whose start has not run yet has no history to export)
        reached = any(i == STYLES[0][0] and e >= (sc.get("move_at") or 1 << 30) for i, e in gaps)
        if move_to is not None and not w.get("moved") and reached and all(
                provider.latest_execution_id(i) for i, _ in STYLES):
            move()
            w["moved"] = True
            provider, client = w["provider"], w["client"]
            for inst, _orch in STYLES:  # an instance that is between executions still is
                e = provider.latest_execution_id(inst)
                events = list(provider.read_with_execution(inst, e))
                can = next((x for x in events if isinstance(x, OrchestrationContinuedAsNew)), None)
                if can is not None:
                    pa = sc.get("prune_at")
                    problems.extend(f"after the move: {p}" for p in gap_view_problems(
                        client, exp, inst, e, decode(can.input), pa if pa and pa <= e else 1))

    rounds = 0
    went = False
    while True:
        while w["driver"]._step_once():
            at_gap()
        nxt = w["driver"]._next_deadline()
        if nxt is not None:
            clock.advance_to(nxt)
            continue
        client = w["client"]
        if all(terminal(inst) for inst, _ in STYLES):
            if went:
                break
            went = True
            for inst, _ in STYLES:
                for sig in go_signals(prog, inst):
                    client.raise_event(sig.instance, sig.name, sig.data)
            continue
        rounds += 1
        if rounds > 40:
            problems.append(f"no progress after {rounds} rounds: {[client.get_status(i).status for i, _ in STYLES]}")
            break
        for inst, _ in STYLES:
            if terminal(inst):
                continue
            for nm in bw:
                client.raise_event(inst, nm, f"{nm}#R{rounds}")
            for q in bq:
                client.enqueue_event(inst, q, f"{q}#R{rounds}")
    provider, client = w["provider"], w["client"]
    first = sc.get("prune_at") or 1
    histories = {inst: {**ended[inst], **{e: list(provider.read_with_execution(inst, e))
                                          for e in range(first, (provider.latest_execution_id(inst) or 0) + 1)}}
                 for inst, _ in STYLES}
    names = [inst for inst, _ in STYLES] + [hold_id(inst, i, j) for inst, _ in STYLES
                                            for i, ex in enumerate(prog["execs"]) for j, s in enumerate(ex["steps"])
                                            if s[0] == "sub_hold"]
    statuses = {nm: client.get_status(nm) for nm in names}
    for inst, _ in STYLES:
        problems += end_view_problems(client, exp, inst, histories[inst], statuses[inst], first)
        problems += gap_delivery_problems(prog, inst, histories[inst], gaps, statuses[inst])
    views.append(("end", 0, management_view(client)))
    depths = client.get_queue_depths()
    if (depths.orchestrator_queue, depths.worker_queue) != (0, 0):
        problems.append(f"queues left at the end: orchestrator {depths.orchestrator_queue}, worker "
                        f"{depths.worker_queue} (dropped activities' rows are deleted: SPEC §3.9/§3.10)")
    getattr(provider, "close", lambda: None)()
    return Live(histories, statuses, problems, gaps, views, bool(w.get("moved")))


def management_view(client: Any) -> dict[str, Any]:
    """What the management API says about every instance (compared across providers)."""
    out: dict[str, Any] = {"metrics": attrs.asdict(client.get_system_metrics()),
                           "depths": attrs.asdict(client.get_queue_depths()),
                           "by_status": {s: sorted(client.list_instances_by_status(s))
                                         for s in ("Running", "Completed", "Failed", "ContinuedAsNew")},
                           "all": sorted(client.list_all_instances())}
    for inst in out["all"]:
        info = attrs.asdict(client.get_instance_info(inst))
        info.pop("created_at", None)
        info.pop("updated_at", None)
        st_ = client.get_status(inst)
        out[inst] = {"info": info, "status": (st_.status, st_.output, st_.error, st_.custom_status,
                                              st_.custom_status_version),
                     "kv": client.get_kv_all_values(inst),
                     "execs": [attrs.asdict(client.get_execution_info(inst, e)) for e in client.list_executions(inst)]}
    return out


def gap_view_problems(client: Any, exp: Expected, inst: str, e: int, can_input: Any, first: int) -> list[str]:
    """Between executions (SPEC §8 Clients; §13): status Running with the instance's custom
    status; the KV of the ended execution merged; the instance and execution views."""
    out = []
    where = f"{inst} gap after execution {e}"
    st_ = client.get_status(inst)
    if st_.status != "Running" or st_.custom_status != exp.cs_end[e - 1]:
        out.append(f"{where}: status {st_.status!r} custom status {st_.custom_status!r}, expected Running "
                   f"{exp.cs_end[e - 1]!r}")
    lo, hi = exp.cs_version_end[e - 1]
    if not lo <= st_.custom_status_version <= hi:
        out.append(f"{where}: custom_status_version {st_.custom_status_version}, SPEC §13 gives {lo}..{hi}")
    kv = client.get_kv_all_values(inst)
    if kv != exp.kv_end[e - 1]:
        out.append(f"{where}: client KV {kv!r}, expected {exp.kv_end[e - 1]!r} (SPEC §13: delta merged at the end)")
    info = client.get_instance_info(inst)
    if (info.status, info.current_execution_id, info.orchestration_version) != ("ContinuedAsNew", e, exp.versions[e - 1]):
        out.append(f"{where}: instance info {(info.status, info.current_execution_id, info.orchestration_version)}, "
                   f"expected {('ContinuedAsNew', e, exp.versions[e - 1])}")
    if client.list_executions(inst) != list(range(first, e + 1)):
        out.append(f"{where}: list_executions {client.list_executions(inst)}")
    xi = client.get_execution_info(inst, e)
    if xi.status != "ContinuedAsNew" or decode(xi.output) != can_input:
        out.append(f"{where}: execution info {xi.status!r} output {str(xi.output)[:200]!r} (SPEC §2.6: the new input)")
    return out


def end_view_problems(client: Any, exp: Expected, inst: str, execs: dict[int, list[HistoryEvent]], status: Any,
                      first: int) -> list[str]:
    out = []
    n = len(exp.versions)
    if client.list_executions(inst) != list(range(first, n + 1)):
        out.append(f"{inst}: list_executions {client.list_executions(inst)}, expected {first}..{n}")
    info = client.get_instance_info(inst)
    if (info.status, info.current_execution_id, info.orchestration_version) != ("Completed", n, exp.versions[-1]):
        out.append(f"{inst}: instance info {(info.status, info.current_execution_id, info.orchestration_version)}, "
                   f"expected {('Completed', n, exp.versions[-1])}")
    for e in range(first, n + 1):
        if e not in execs:
            continue
        xi = client.get_execution_info(inst, e)
        want_status = "Completed" if e == n else "ContinuedAsNew"
        want_out = status.output if e == n else decode(execs[e + 1][0].input) if e + 1 in execs else None
        if (xi.status, decode(xi.output), xi.event_count) != (want_status, want_out, len(execs[e])):
            out.append(f"{inst}: execution {e} info {(xi.status, str(xi.output)[:120], xi.event_count)}, expected "
                       f"{(want_status, str(json.dumps(want_out))[:120], len(execs[e]))}")
    infos = [client.get_execution_info(inst, e) for e in range(first, n + 1) if e in execs]
    for a, b in zip(infos, infos[1:], strict=False):
        if a.completed_at is None or not a.started_at <= a.completed_at <= b.started_at:
            out.append(f"{inst}: execution {a.execution_id} ran {a.started_at}..{a.completed_at}, the next started "
                       f"{b.started_at}")
    kv = client.get_kv_all_values(inst)
    if kv != dict((k, v) for k, v in exp.kv):
        out.append(f"{inst}: client KV {kv!r}, model {exp.kv!r}")
    return out


def gap_delivery_problems(prog: dict[str, Any], inst: str, execs: dict[int, list[HistoryEvent]],
                          gaps: dict[tuple[str, int], list[tuple[str, str, str]]], status: Any) -> list[str]:
    """Signals sent between executions reach the next one, after its carried messages: a raise
    as an audit-only ExternalEvent (no subscription exists yet: SPEC §6.1 "those during a CAN gap"
    are lost), an enqueue as a QueueEventDelivered that a later dequeue may take (§6.2)."""
    out = []
    got = json.dumps(status.output.get("raw")) if status.status == "Completed" else ""
    for (gi, e), sent in gaps.items():
        if gi != inst or e + 1 not in execs:
            continue
        events = execs[e + 1]
        started = events[0]
        k = len(started.carry_forward_events or ())
        seq = [(("raise" if isinstance(x, ExternalEvent) else "enqueue"), x.name, decode(x.data))
               for x in events[1 + k:1 + k + len(sent)] if isinstance(x, (ExternalEvent, QueueEventDelivered))]
        if seq != sent:
            out.append(f"{inst}/exe{e + 1}: after Started and {k} carried messages come {seq!r:.400}, expected the gap's "
                       f"signals in send order {sent!r:.400}")
        for kind, _nm, data in sent:
            if kind == "raise" and json.dumps(data) in got:
                out.append(f"{inst}: the code received {data!r}, raised between executions (SPEC §6.1: lost)")
    return out


def canonical(histories: dict[str, dict[int, list[HistoryEvent]]]) -> dict[str, Any]:
    return {inst: {e: [(_kind(x), attrs.asdict(x)) for x in events] for e, events in execs.items()}
            for inst, execs in histories.items()}


@settings(max_examples=60 * SCALE, **SETTINGS)
@given(sc=scenarios(max_execs=5))
def test_production_runtime_matches_the_model_on_memory_and_sqlite(sc: dict[str, Any], tmp_path_factory: Any) -> None:
    from duroxide_sim import InMemoryProvider, SqliteProvider

    prog = sc["prog"]
    exp = evaluate(prog)
    path = tmp_path_factory.mktemp("can") / "app.db"
    path2 = path.with_name("moved.db")
    mem = run_production(sc, lambda clock: InMemoryProvider(clock), lambda clock: SqliteProvider.open(str(path2), clock=clock))
    sql = run_production(sc, lambda clock: SqliteProvider.open(str(path), clock=clock), lambda clock: InMemoryProvider(clock))
    for label, live in (("memory", mem), ("sqlite", sql)):
        problems = list(live.problems)
        for inst, _ in STYLES:
            problems += instance_problems(prog, exp, inst, live.histories[inst], live.statuses[inst], live.statuses)
        assert not problems, (label, problems)
    assert canonical(mem.histories) == canonical(sql.histories)
    for a, b in zip(mem.views, sql.views, strict=True):
        assert a == b, (a[:2], [(k, a[2][k], b[2].get(k)) for k in a[2] if a[2][k] != b[2].get(k)])
    assert {k: (v.status, v.output, v.error, v.custom_status, v.custom_status_version) for k, v in mem.statuses.items()} \
        == {k: (v.status, v.output, v.error, v.custom_status, v.custom_status_version) for k, v in sql.statuses.items()}


# ------------------------------------------------------------------------------------------------
# (e) production Runtime on real threads and the wall clock (memory, SQLite file)
# ------------------------------------------------------------------------------------------------

LIVE_TIMERS = {0: 0, 1: 1, 50: 3, 1_000: 8, 5_000: 15}


def live_program(prog: dict[str, Any]) -> dict[str, Any]:
    """The program on production time scales (ms timers; the one-day race timer stays)."""
    out = json.loads(json.dumps(prog))
    for ex in out["execs"]:
        for s in ex["steps"]:
            if s[0] in ("timer", "race_nt", "race_nw", "sub_hold"):
                s[1] = LIVE_TIMERS[s[1]]
            elif s[0] in ("race_qt", "race_wt", "race_at"):
                s[2] = LIVE_TIMERS[s[2]]
    return out


def run_threaded(prog: dict[str, Any], burst: bool, provider: Any, timeout_s: float = 10.0) -> Live:
    """A live ``Runtime`` (threads, wall clock) and a client that sends a round (one raise per
    blocking wait name, one enqueue per blocking queue) every few ms until both instances end,
    so rounds land at arbitrary points - in gaps between executions too; then ``go`` to the held
    children. Only timing-independent properties are judged (the model and the oracles)."""
    import time

    from duroxide_sim import Client, Runtime, RuntimeOptions

    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    make_setup(tuple(prog["versions"]))(rt, None)
    client = Client(provider)
    _w, _q, bw, bq = used_names(prog)
    problems: list[str] = []
    inp = initial_input(prog)
    holds = [hold_id(inst, i, j) for inst, _ in STYLES for i, ex in enumerate(prog["execs"])
             for j, s in enumerate(ex["steps"]) if s[0] == "sub_hold"]
    rt.start()
    try:
        for inst, orch in STYLES:
            if prog["start_ver"] is None:
                client.start_orchestration(inst, orch, inp)
            else:
                client.start_orchestration_versioned(inst, orch, inp, prog["start_ver"])
            if burst:
                for k in range(22):
                    client.enqueue_event(inst, BURST_QUEUE, f"{BURST_QUEUE}#b{k}")

        def ended(name: str) -> bool:
            return client.get_status(name).status in ("Completed", "Failed")

        deadline = time.monotonic() + timeout_s
        k = 0
        while time.monotonic() < deadline:
            running = [inst for inst, _ in STYLES if not ended(inst)]
            if not running:
                break
            k += 1
            for inst in running:
                for nm in bw:
                    client.raise_event(inst, nm, f"{nm}#R{k}")
                for q in bq:
                    client.enqueue_event(inst, q, f"{q}#R{k}")
            time.sleep(0.004)
        # "go" to the held children, again while one still runs: one raised before its
        # subscribing turn is committed is lost (SPEC §6.1), a late copy is discarded
        pending = list(holds)
        while pending and time.monotonic() < deadline:
            for h in pending:
                client.raise_event(h, "go", "go")
            time.sleep(0.02)
            pending = [h for h in pending if client.get_status(h).status == "Running"]
        statuses = {nm: client.get_status(nm) for nm in [*(i for i, _ in STYLES), *holds]}
    finally:
        rt.shutdown(2_000)
    histories = {inst: {e: list(provider.read_with_execution(inst, e))
                        for e in range(1, (provider.latest_execution_id(inst) or 0) + 1)} for inst, _ in STYLES}
    exp = evaluate(prog)
    for inst, _ in STYLES:
        if statuses[inst].status == "Completed":
            problems += end_view_problems(client, exp, inst, histories[inst], statuses[inst], 1)
    getattr(provider, "close", lambda: None)()
    return Live(histories, statuses, problems, {})


@pytest.mark.realtime
@settings(max_examples=6 * SCALE, **SETTINGS)
@given(sc=scenarios(max_execs=5))
def test_threaded_production_runtime_matches_the_model(sc: dict[str, Any], tmp_path_factory: Any) -> None:
    from duroxide_sim import InMemoryProvider, SqliteProvider

    prog = live_program(sc["prog"])
    exp = evaluate(prog)
    burst = any(s[1] == BURST_QUEUE for s in sc["signals"])
    path = tmp_path_factory.mktemp("can-live") / "app.db"
    for label, provider in (("memory", InMemoryProvider()), ("sqlite", SqliteProvider.open(str(path)))):
        live = run_threaded(prog, burst, provider)
        problems = list(live.problems)
        for inst, _ in STYLES:
            problems += instance_problems(prog, exp, inst, live.histories[inst], live.statuses[inst], live.statuses)
        assert not problems, (label, problems)


# ------------------------------------------------------------------------------------------------
# Behaviour the SPEC leaves open, pinned as observed
# ------------------------------------------------------------------------------------------------


def _stepped(kind: str = "memory") -> Any:
    """A production Runtime, Client and SequentialDriver on a SimClock."""
    from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider
    from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

    clock = SimClock()
    provider = InMemoryProvider(clock) if kind == "memory" else SqliteProvider.in_memory(clock=clock)
    rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(0))
    driver = SequentialDriver(rt, clock)
    return rt, driver, Client(provider, clock=clock, sleep=driver.sleep), provider


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_pinned_signals_sent_between_executions_open_the_next_one(kind: str) -> None:
    """Pinned (SPEC §3.2/§3.3 say where such messages go - ExternalRaised/QueueMessage "always
    target the current execution", the batch holding the ContinueAsNew item is the new one - but
    not where in its history they land). A raise and an enqueue sent after the continue-as-new
    turn committed and before the next execution's first turn: execution 2 starts
    ``OrchestrationStarted`` (carry-forward ["q", "carried"]), the carried ``QueueEventDelivered``,
    then the gap's ``ExternalEvent`` and ``QueueEventDelivered`` in send order, then the code's
    subscriptions. The raise is audit-only (§6.1: "those during a CAN gap" are lost): the wait
    gets the next raise; the dequeues get the carried message, then the gap's."""
    rt, driver, client, provider = _stepped(kind)

    @rt.register_orchestration("O")
    def orch(ctx: Any, n: int) -> Any:
        if n == 0:
            yield ctx.wait_for_event("go")
            yield ctx.continue_as_new(1)
        a = yield ctx.dequeue_event("q")
        b = yield ctx.dequeue_event("q")
        e = yield ctx.wait_for_event("e")
        return [a, b, e]

    client.start_orchestration("i", "O", 0)
    driver.run_until_quiet()
    client.enqueue_event("i", "q", "carried")
    client.raise_event("i", "go", 1)
    while client.get_instance_info("i").status != "ContinuedAsNew":
        assert rt.orchestration_dispatcher.step()
    client.raise_event("i", "e", "in-gap")
    client.enqueue_event("i", "q", "in-gap")
    driver.run_until_quiet()
    assert client.get_status("i").status == "Running"
    client.raise_event("i", "e", "after")
    driver.run_until_quiet()
    st_ = client.get_status("i")
    assert (st_.status, st_.output) == ("Completed", ["carried", "in-gap", "after"])
    events = list(provider.read_with_execution("i", 2))
    assert [(type(x).__name__, getattr(x, "data", None)) for x in events[:6]] == [
        ("OrchestrationStarted", None), ("QueueEventDelivered", '"carried"'), ("ExternalEvent", '"in-gap"'),
        ("QueueEventDelivered", '"in-gap"'), ("QueueSubscribed", None), ("QueueSubscribed", None)]
    assert list(events[0].carry_forward_events) == [("q", '"carried"')]
    getattr(provider, "close", lambda: None)()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_pinned_management_views_between_executions(kind: str) -> None:
    """Pinned (SPEC §8 fixes only ``get_status`` - Running - for the gap; §14 reads "the current
    execution's status" for the rest). Between executions: ``get_status`` is Running with the
    custom status set before continuing; ``get_instance_info`` says ContinuedAsNew (execution 1);
    ``list_instances_by_status`` lists it under ContinuedAsNew, not Running;
    ``get_system_metrics().running_instances`` does not count it; the execution's info is
    ContinuedAsNew with the new input as output; the KV set before continuing is visible."""
    rt, driver, client, provider = _stepped(kind)

    @rt.register_orchestration("O")
    def orch(ctx: Any, n: int) -> Any:
        if n == 0:
            ctx.set_custom_status("before")
            ctx.set_kv_value("k", "v")
            yield ctx.wait_for_event("go")
            yield ctx.continue_as_new(1)
        yield ctx.wait_for_event("never")

    client.start_orchestration("i", "O", 0)
    driver.run_until_quiet()
    client.raise_event("i", "go", 1)
    assert rt.orchestration_dispatcher.step()  # the continue-as-new turn only
    st_ = client.get_status("i")
    assert (st_.status, st_.custom_status, st_.custom_status_version) == ("Running", "before", 1)
    info = client.get_instance_info("i")
    assert (info.status, info.current_execution_id) == ("ContinuedAsNew", 1)
    assert client.list_instances_by_status("ContinuedAsNew") == ["i"]
    assert client.list_instances_by_status("Running") == []
    assert client.get_system_metrics().running_instances == 0
    xi = client.get_execution_info("i", 1)
    assert (xi.status, decode(xi.output)) == ("ContinuedAsNew", 1)
    assert client.get_kv_all_values("i") == {"k": "v"}
    driver.run_until_quiet()
    assert client.list_instances_by_status("Running") == ["i"]
    assert client.get_system_metrics().running_instances == 1
    getattr(provider, "close", lambda: None)()


def test_pinned_continue_as_new_built_but_not_returned_or_yielded_does_nothing() -> None:
    """Pinned (SPEC §8, from the Rust core, reads "if code returns a value anyway, CAN still
    wins"; §17, the Python face, says descriptors built but not yielded do nothing). Code that
    calls ``ctx.continue_as_new(1)`` without yielding or returning the task and then returns
    "returned" completes with "returned" in execution 1: the §17 reading. Returning the task
    itself continues as new (tests/runtime/test_continue_as_new.py)."""
    rt, driver, client, provider = _stepped()

    @rt.register_orchestration("O")
    def orch(ctx: Any, n: int) -> Any:
        if n == 0:
            ctx.continue_as_new(1)
            return "returned"
        return n
        yield  # (a generator)

    client.start_orchestration("i", "O", 0)
    driver.run_until_quiet()
    st_ = client.get_status("i")
    assert (st_.status, st_.output, client.list_executions("i")) == ("Completed", "returned", [1])


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_pinned_oversized_custom_status_in_the_continue_as_new_turn(kind: str) -> None:
    """Pinned (SPEC §10.3 says a violating turn gets ``OrchestrationFailed`` appended - after its
    own terminal event - and loses its work items; it does not say whether the turn's status
    and KV events still apply). A continue-as-new turn that sets a 300,000-byte custom status
    and a KV key: execution 1 ends ``OrchestrationContinuedAsNew``, ``OrchestrationFailed``; no
    execution 2 (the ContinueAsNew item was discarded); the instance is Failed with the limit
    message - and the oversized status *is* stored (version 2, §13: the ack applies the delta's
    last ``CustomStatusUpdated``), the KV key merged."""
    rt, driver, client, provider = _stepped(kind)

    @rt.register_orchestration("O")
    def orch(ctx: Any, n: int) -> Any:
        ctx.set_custom_status("small")
        yield ctx.schedule_timer(1)
        ctx.set_custom_status("x" * 300_000)
        ctx.set_kv_value("k", "v")
        yield ctx.continue_as_new(n + 1)

    client.start_orchestration("i", "O", 0)
    driver.run_until_quiet()
    st_ = client.get_status("i")
    assert (st_.status, st_.error) == ("Failed", "Custom status size (300000 bytes) exceeds limit (262144 bytes)")
    assert client.list_executions("i") == [1]
    assert [type(x).__name__ for x in provider.read_with_execution("i", 1)][-2:] == [
        "OrchestrationContinuedAsNew", "OrchestrationFailed"]
    assert (len(st_.custom_status or ""), st_.custom_status_version) == (300_000, 2)
    assert client.get_kv_all_values("i") == {"k": "v"}
    getattr(provider, "close", lambda: None)()


# ------------------------------------------------------------------------------------------------
# Bugs found (fixed; each test failed before its fix)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_actions_after_a_buffered_two_dequeue_race_are_kept_when_the_code_returns(kind: str) -> None:
    """SPEC §3.6 ("remaining FIFO actions are converted in emission order"), §13 (each
    ``set_custom_status`` / ``set_kv_value`` emits an event; the provider applies them), §3.9 /
    §7 (a pending detached start is dispatched on a Completed turn).

    Execution 1 sets custom status "exec1", waits for "go" and continues as new; the queue
    message "hello" it never read is carried into execution 2 (§6.2). Execution 2's first turn:
    ``race(dequeue("q"), dequeue("other"))`` - "hello" is buffered, the first dequeue wins in
    that same turn (§3.7) - then ``set_custom_status("exec2")``, ``set_kv_value("last", ...)``,
    a detached ``start_orchestration("Kid", "kid")`` and ``return``.

    Expected: execution 2's history holds ``CustomStatusUpdated``, ``KeyValueSet`` and
    ``OrchestrationChained`` before ``OrchestrationCompleted``; the client reads custom status
    "exec2" (version 2), KV {"last": "hello"}, and "kid" runs to completion.
    Was (before the fix): none of the three events is recorded (history: Started, QueueEventDelivered,
    QueueSubscribed x2, QueueSubscriptionCancelled, OrchestrationCompleted); the client still
    reads "exec1" (version 1) while the code's own ``get_custom_status()`` returned "exec2"; the
    KV store is empty; "kid" is never started (NotFound).

    Cause (duroxide_sim/core/replay.py, quiescence loop): ``_convert_new`` stops after binding a
    ``QueueSubscribed`` the buffer satisfies (to poll before binding the next one); after that
    poll it converts the race's second ``QueueSubscribed`` (the dropped loser, whose bind also
    reports ready) and stops again with the code's later actions still queued - and the loop
    then breaks because the code has returned, discarding them. Continue-as-new is not needed
    (a message in the start batch does the same in execution 1); it makes the symptom worse: the
    client keeps showing the previous execution's status. Raising instead of returning (a Failed
    turn) loses them the same way. With ``race(dequeue, timer)``,
    ``race(dequeue("other"), dequeue("q"))``, a later yield, or a continue-as-new ending, the
    actions are kept. Found by ``test_faulty_simulation_passes_checkers_and_matches_the_model``
    (a carried message and ``race_qq`` then ``cs`` in the final execution)."""
    rt, driver, client, provider = _stepped(kind)

    @rt.register_orchestration("Kid")
    def kid(ctx: Any, _inp: Any) -> Any:
        return "kid done"

    @rt.register_orchestration("Mailbox")
    def mailbox(ctx: Any, n: int) -> Any:
        if n == 0:
            ctx.set_custom_status("exec1")
            yield ctx.wait_for_event("go")
            yield ctx.continue_as_new(1)
        r = yield ctx.race(ctx.dequeue_event("q"), ctx.dequeue_event("other"))
        ctx.set_custom_status("exec2")
        ctx.set_kv_value("last", r["value"])
        yield ctx.start_orchestration("Kid", "kid", None)
        return [r, ctx.get_custom_status()]

    client.start_orchestration("m", "Mailbox", 0)
    driver.run_until_quiet()
    client.enqueue_event("m", "q", "hello")  # not read by execution 1: carried forward
    client.raise_event("m", "go", 1)
    driver.run_until_quiet()
    st_ = client.get_status("m")
    assert (st_.status, st_.output) == ("Completed", [{"index": 0, "value": "hello"}, "exec2"])
    kinds = [type(x).__name__ for x in provider.read_with_execution("m", 2)]
    observed = (kinds, st_.custom_status, st_.custom_status_version, client.get_kv_all_values("m"),
                client.get_status("kid").status)
    assert {"CustomStatusUpdated", "KeyValueSet", "OrchestrationChained"} <= set(kinds), observed
    assert (st_.custom_status, st_.custom_status_version) == ("exec2", 2), observed
    assert client.get_kv_all_values("m") == {"last": "hello"}, observed
    assert client.get_status("kid").status == "Completed", observed
    getattr(provider, "close", lambda: None)()


@pytest.mark.parametrize(("source", "target"), [("memory", "sqlite"), ("sqlite", "memory"), ("sqlite", "sqlite")])
def test_custom_status_survives_prune_then_export_and_import(source: str, target: str) -> None:
    """SPEC §8 (custom status is carried across continue-as-new: the instance-level value and
    version), §13 (it persists across turns and continue-as-new; the client reads it), §14
    (``prune_executions`` removes old *executions*; the custom status is the instance's), and the
    README's export/import promise ("restore them (histories, queued work, statuses, custom
    status, KV)"; for pruned instances the stored KV store travels as ``kv_base``).

    Execution 1 sets custom status "phase-1" and KV k=v and continues as new; execution 2 waits
    for "go". The operator prunes (``keep_last=1``: execution 1 goes), then exports the instance
    (``history_io.export_instance`` with its queued work) and imports it into a fresh provider.

    Expected: the restored instance reads custom status "phase-1" (version 1), as before the
    export, and keeps it when execution 2 completes. Was (before the fix): custom status ``None`` with
    version 1 on every provider pair, to the end - while the orchestration's own
    ``get_custom_status()`` still returns "phase-1" (execution 2's ``OrchestrationStarted``
    carries it as ``initial_custom_status``) and the KV store survives (``kv_base``). The import
    rebuilds the status only from ``CustomStatusUpdated`` events (pruned away) and the export
    carries only its version. Without the prune the status survives. Found by
    ``test_production_runtime_matches_the_model_on_memory_and_sqlite`` (prune and move in the same
    gap)."""
    from duroxide_sim import Client, InMemoryProvider, PruneOptions, Runtime, RuntimeOptions, SqliteProvider
    from duroxide_sim.runtime.history_io import export_instance, import_documents, queued_by_instance
    from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

    clock = SimClock()

    def open_world(kind: str, ids: int) -> Any:
        provider = InMemoryProvider(clock) if kind == "memory" else SqliteProvider.in_memory(clock=clock)
        rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(ids))

        @rt.register_orchestration("O")
        def orch(ctx: Any, n: int) -> Any:
            if n == 0:
                ctx.set_custom_status("phase-1")
                ctx.set_kv_value("k", "v")
                yield ctx.continue_as_new(1)
            yield ctx.wait_for_event("go")
            return [ctx.get_custom_status(), ctx.get_kv_all_values()]

        driver = SequentialDriver(rt, clock)
        return provider, driver, Client(provider, clock=clock, sleep=driver.sleep)

    provider, driver, client = open_world(source, 0)
    client.start_orchestration("i", "O", 0)
    driver.run_until_quiet()
    assert client.prune_executions("i", PruneOptions(keep_last=1)).executions_deleted == 1
    st_ = client.get_status("i")
    assert (st_.status, st_.custom_status, st_.custom_status_version) == ("Running", "phase-1", 1)
    doc = json.loads(json.dumps(export_instance(provider, "i", queued_by_instance(provider))))
    provider2, driver2, client2 = open_world(target, 1)
    import_documents(provider2, [doc])
    restored = client2.get_status("i")
    client2.raise_event("i", "go", 1)
    driver2.run_until_quiet()
    end = client2.get_status("i")
    assert (end.status, end.output) == ("Completed", ["phase-1", {"k": "v"}])  # (the code still sees it)
    assert client2.get_kv_all_values("i") == {"k": "v"}
    observed = ((restored.custom_status, restored.custom_status_version), (end.custom_status, end.custom_status_version))
    assert observed == (("phase-1", 1), ("phase-1", 1)), observed
    for p in (provider, provider2):
        getattr(p, "close", lambda: None)()
