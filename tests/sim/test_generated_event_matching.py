"""Generative probe of positional events and event queues (SPEC §6), judged on recorded history.

What it generates (plain JSON data, shrinkable by Hypothesis):

* **Programs**: 1-7 steps (plus at most one ``can``) on 1-3 names (``n0``..``n2``; positional waits and queues share
  the names, which are separate namespaces): ``wait`` (``schedule_wait``), ``deq``
  (``dequeue_event``), ``race`` of one wait or dequeue against a timer (either argument order;
  the timer winning cancels the subscription, SPEC §4), ``all`` of two waits/dequeues, ``timer``,
  and ``can`` (continue-as-new for ``max_round`` rounds: the next execution runs the
  program from the start again; queues carry forward, positional waits do not, SPEC §8). The
  code records every value it received and which race branch won, one log per execution, in
  its continue-as-new input and its output. One instance runs it as a generator (``g``), one as
  ``async def`` (``a``).
* **Signals**: raises and enqueues whose payloads identify them (``r:n1#3``, ``q:n0#5``), at
  fixed or seed-drawn times, including duplicates with identical payloads, names never waited on
  (``n9`` and unused ``n*``), signals before the instance starts (the start is then delayed by
  4 s) and long after it ends. Liveness comes from *rounds*: after the fault window, every 30 s,
  one raise and one enqueue per name the program blocks on (payload ``...#L{k}``), as many
  rounds as it has blocking subscriptions, so each round resolves at least one of them. No signal
  is re-sent to hide timing: which arrival each subscription gets is the property under test.

The oracle (``oracle`` below, a pure function written from SPEC §6 alone) reads one
execution's history: §6.1 subscriptions get raw indexes per name; an ``ExternalEvent`` joins the
name's arrival list only if, at its position, active (not yet cancelled) subscriptions outnumber
the arrivals already joined; a non-cancelled subscription resolves with
``arrivals[raw - cancelled subscriptions of the name with a lower raw index]``. §6.2: every
``QueueEventDelivered`` is buffered per name; a non-cancelled subscription's arrival index is the
number of non-cancelled same-name subscriptions created before it; on continue-as-new the
first *k* (= non-cancelled subscriptions) of each name are consumed and the rest, in global
history order, at most 20, are carried forward as the next execution's first
``QueueEventDelivered`` events (and its ``OrchestrationStarted.carry_forward_events``).

Checks on every recorded execution (``execution_problems``): the code's schedule order matches
the history's subscriptions/timers; every value the code received is the one the oracle assigns
(so no arrival reaches two subscriptions, identical payloads are distinct arrivals); a race's
winner is the branch whose completion comes first in history (the oracle on the history prefix
before the timer fired); a subscription the code left unresolved is cancelled by a breadcrumb
by the time the execution ends; carry-forward is exactly the oracle's; no payload reaches the
code more often than it arrived (nor, without faults, more often than the client sent it). In
fault-free simulations also (``delivery_problems``, from the trace): every enqueue sent between
the start and the fetch of the final turn is in some history (never lost while the instance
runs); an enqueue sent before the instance exists is in none (SPEC §6.2: fetched alone, deleted
by the provider) unless a raise sent before it holds the batch (SPEC §3.12: not queue-only, so
kept and delivered with the start - pinned by
``test_an_enqueue_behind_an_early_raise_is_kept_until_the_start``).

Properties: (a) fault-free simulation, 1 and 2 nodes: ``run_and_check`` ok, both instances
complete, and the oracle holds; (b) ``FaultPlan.all(0.05)`` and swarm plans (memory and
SQLite): ``run_and_check`` ok (the spec is not fault-transparent: delivery timing changes which
arrival a subscription gets) and the oracle holds on whatever history was recorded; (c) same
seed, same trace bytes; (d) production ``Runtime`` on ``InMemoryProvider`` and a
``SqliteProvider`` file with a real client sending the signals (own driver: the pre-start
signals go first, then the starts): the oracle holds on the histories read from the provider,
the instances complete, and lone pre-start enqueues are dropped.

The oracle reads §6.1's "active (non-cancelled)" as the reference does: a positional wait the
code drops (a race it lost) is cancelled from the poll that dropped it, not from its breadcrumb
(the reference fixtures pinned in tests/runtime/test_rust_reference_scenarios_h.py / _k.py; a
literal reading, cancelled only at the breadcrumb, would deliver a signal that arrives in the
batch where the wait loses - the reference loses it, and so does this engine:
``test_positional_event_in_the_batch_where_the_wait_loses_is_audit_only``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim.core.events import (
    ExternalEvent,
    ExternalSubscribed,
    ExternalSubscribedCancelled,
    HistoryEvent,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    QueueEventDelivered,
    QueueSubscribed,
    QueueSubscriptionCancelled,
    TimerCreated,
    TimerFired,
)
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start

NAMES = ("n0", "n1", "n2")
UNUSED = "n9"
SEC = 1_000
MIN = 60 * SEC
#: Simulated times: the start of a delayed instance; the window of seed-drawn signal times; the
#: late rounds (after the default 10-minute fault window, 30 s apart: longer than any timer).
DELAYED_START = 4 * SEC
SIGNAL_WINDOW = 20 * SEC
ROUNDS_FROM, ROUND_EVERY = 11 * MIN, 30 * SEC
AFTER_END = 20 * 3600 * SEC
SIM_TIMERS = (0, 1, 50, 1_000, 5_000)
#: Fixed signal times; several are when a timer created at 0 or at the delayed start fires, so a
#: signal and a timer often land in one batch (the event after the timer: the race is lost).
FIXED_TIMES = (0, 1, 50, 300, 1_000, 2_000, DELAYED_START, DELAYED_START + 1, DELAYED_START + 50,
               DELAYED_START + 1_000, 5_000, 6_000, 9_000, 15_000)
CARRY_LIMIT = 20  # SPEC §6.2 / §10.3

# ------------------------------------------------------------------------------------------------
# The interpreter (one generator body; the async variant awaits what it yields)
# ------------------------------------------------------------------------------------------------


def _sub(ctx: Any, kind: str, name: str) -> Any:
    return ctx.schedule_wait(name) if kind == "w" else ctx.dequeue_event(name)


def body(ctx: Any, inp: dict[str, Any]) -> Any:
    prog, rnd = inp["prog"], inp["round"]
    logs = list(inp["logs"])
    log: list[Any] = []
    for step in prog:
        kind = step[0]
        if kind == "wait":
            log.append(["w", (yield ctx.schedule_wait(step[1]))])
        elif kind == "deq":
            log.append(["d", (yield ctx.dequeue_event(step[1]))])
        elif kind == "race":
            _, sk, name, delay, timer_first = step
            sub, timer = _sub(ctx, sk, name), ctx.schedule_timer(delay)
            r = yield (ctx.race(timer, sub) if timer_first else ctx.race(sub, timer))
            won = r["index"] == (1 if timer_first else 0)
            log.append(["r", won, r["value"] if won else None])
        elif kind == "all":
            res = yield ctx.all([_sub(ctx, sk, name) for sk, name in step[1:]])
            log.append(["a", [x.get("ok") for x in res]])
        elif kind == "timer":
            yield ctx.schedule_timer(step[1])
            log.append(["t"])
        elif kind == "can":
            if rnd < inp["max_round"]:
                yield ctx.continue_as_new({**inp, "round": rnd + 1, "logs": [*logs, log]})
            log.append(["c"])
        else:
            raise AssertionError(step)
    return {"logs": [*logs, log]}


def prog_gen(ctx: Any, inp: dict[str, Any]) -> Any:
    return (yield from body(ctx, inp))


async def prog_async(ctx: Any, inp: dict[str, Any]) -> Any:
    gen = body(ctx, inp)
    value: Any = None
    while True:
        try:
            task = gen.send(value)
        except StopIteration as stop:
            return stop.value
        value = await task


def setup(rt: Any, world: Any) -> None:
    rt.register_orchestration("EvGen", prog_gen)
    rt.register_orchestration("EvAsync", prog_async)


STYLES = (("g", "EvGen"), ("a", "EvAsync"))

# ------------------------------------------------------------------------------------------------
# What the program schedules (pure): per execution, its subscriptions and timers in order
# ------------------------------------------------------------------------------------------------


def steps_run(inp: dict[str, Any], rnd: int) -> list[list[Any]]:
    """The steps execution ``rnd`` (0-based) runs: up to the continue-as-new, or all in the last."""
    prog = inp["prog"]
    if rnd < inp["max_round"]:
        for i, step in enumerate(prog):
            if step[0] == "can":
                return prog[: i + 1]
    return prog


def schedule_plan(steps: list[list[Any]]) -> list[tuple[str, str | None, int, int]]:
    """``(kind w|d|t, name, step index, slot)`` for every subscription and timer, in emission
    order (a race emits its arguments in argument order, SPEC §4)."""
    out: list[tuple[str, str | None, int, int]] = []
    for i, step in enumerate(steps):
        kind = step[0]
        if kind in ("wait", "deq"):
            out.append(("w" if kind == "wait" else "d", step[1], i, 0))
        elif kind == "race":
            sub, tm = (step[1], step[2], i, 0), ("t", None, i, 1)
            out.extend([tm, sub] if step[4] else [sub, tm])
        elif kind == "all":
            out.extend((sk, name, i, j) for j, (sk, name) in enumerate(step[1:]))
        elif kind == "timer":
            out.append(("t", None, i, 0))
    return out


def blocking_subscriptions(inp: dict[str, Any]) -> int:
    """Subscriptions outside races, over every execution: each needs an arrival to move on."""
    total = 0
    for rnd in range(inp["max_round"] + 1):
        total += sum(1 for k, _n, i, _s in schedule_plan(steps_run(inp, rnd))
                     if k != "t" and steps_run(inp, rnd)[i][0] != "race")
    return total


def blocking_names(inp: dict[str, Any]) -> tuple[list[str], list[str]]:
    waits, deqs = set(), set()
    for step in inp["prog"]:
        pairs = [(("w" if step[0] == "wait" else "d"), step[1])] if step[0] in ("wait", "deq") else (
            [tuple(p) for p in step[1:]] if step[0] == "all" else [])
        for sk, name in pairs:
            (waits if sk == "w" else deqs).add(name)
    return sorted(waits), sorted(deqs)


# ------------------------------------------------------------------------------------------------
# The oracle: SPEC §6 applied to one execution's history (pure)
# ------------------------------------------------------------------------------------------------

MISSING = object()


@attrs.define
class Sub:
    kind: str  # "w" positional | "d" queue
    name: str
    event_id: int
    pos: int  # index in the history list
    raw: int  # creation index among same-kind same-name subscriptions
    cancelled_at: int | None = None
    value: Any = MISSING  # the decoded payload it resolves with
    arrival_pos: int | None = None  # where that arrival is in history


@attrs.define
class Verdict:
    subs: list[Sub]
    #: positional arrivals per name that joined the arrival list / stayed audit-only: (pos, data)
    arrivals: dict[str, list[tuple[int, Any]]]
    audit_only: dict[str, list[tuple[int, Any]]]
    #: queue arrivals per name (pos, data)
    buffers: dict[str, list[tuple[int, Any]]]
    #: for an execution that continued as new: the (name, raw data) it must carry forward
    carry: list[tuple[str, str]] | None
    timers: dict[int, int]  # TimerCreated id -> position of its TimerFired (if any)
    timer_order: list[int]  # TimerCreated ids in order
    terminal: str | None


def _decode(data: str) -> Any:
    try:
        return json.loads(data)
    except (TypeError, ValueError):
        return data


def oracle(events: list[HistoryEvent], dropped_at: dict[int, int] | None = None) -> Verdict:
    """Which value every subscription of one execution must resolve with (SPEC §6.1/§6.2), and
    what the execution must carry forward (§6.2, §8).

    ``dropped_at`` (subscription id -> history position): when the code dropped a positional
    wait (a race it lost), which then counts as cancelled from that position - not only from its
    breadcrumb, written when the turn ends. That is the reference's reading of §6.1's "active
    (non-cancelled)" (its queue_race_upgrade / positional_unbound_races fixtures, pinned in
    tests/runtime/test_rust_reference_scenarios_h.py and _k.py): a signal in the batch where the
    wait loses is audit-only."""
    early = dropped_at or {}
    subs: list[Sub] = []
    by_id: dict[int, Sub] = {}
    per_name: dict[tuple[str, str], list[Sub]] = {}
    arrivals: dict[str, list[tuple[int, Any]]] = {}
    audit: dict[str, list[tuple[int, Any]]] = {}
    buffers: dict[str, list[tuple[int, Any]]] = {}
    raw_buffers: dict[str, list[tuple[int, str]]] = {}
    timers: dict[int, int] = {}
    timer_order: list[int] = []
    terminal = None
    for pos, e in enumerate(events):
        if isinstance(e, (ExternalSubscribed, QueueSubscribed)):
            kind = "w" if isinstance(e, ExternalSubscribed) else "d"
            same = per_name.setdefault((kind, e.name), [])
            s = Sub(kind, e.name, e.event_id, pos, len(same))
            same.append(s)
            subs.append(s)
            by_id[e.event_id] = s
        elif isinstance(e, (ExternalSubscribedCancelled, QueueSubscriptionCancelled)):
            s = by_id.get(e.source_event_id)  # type: ignore[arg-type]
            if s is not None and s.cancelled_at is None:
                s.cancelled_at = pos
        elif isinstance(e, ExternalEvent):
            # §6.1: joins only if, at its position, active (non-cancelled) subscriptions
            # outnumber the arrivals already joined.
            active = sum(1 for s in per_name.get(("w", e.name), ())
                         if s.cancelled_at is None and early.get(s.event_id, pos + 1) > pos)
            joined = arrivals.setdefault(e.name, [])
            (joined if active > len(joined) else audit.setdefault(e.name, [])).append((pos, _decode(e.data)))
        elif isinstance(e, QueueEventDelivered):
            buffers.setdefault(e.name, []).append((pos, _decode(e.data)))
            raw_buffers.setdefault(e.name, []).append((pos, e.data))
        elif isinstance(e, TimerCreated):
            timer_order.append(e.event_id)
        elif isinstance(e, TimerFired):
            timers.setdefault(e.source_event_id, pos)  # type: ignore[arg-type]
        elif isinstance(e, (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)) and terminal is None:
            terminal = type(e).__name__
    for s in subs:  # (a wait dropped before this history ends is cancelled from its drop)
        if s.cancelled_at is None and early.get(s.event_id, len(events)) < len(events):
            s.cancelled_at = early[s.event_id]
    for (kind, name), same in per_name.items():
        live = [s for s in same if s.cancelled_at is None]
        items = arrivals.get(name, []) if kind == "w" else buffers.get(name, [])
        for s in live:
            if kind == "w":
                idx = s.raw - sum(1 for o in same if o.cancelled_at is not None and o.raw < s.raw)
            else:
                idx = sum(1 for o in live if o.raw < s.raw)
            if idx < len(items):
                s.arrival_pos, s.value = items[idx]
    carry = None
    if terminal == "OrchestrationContinuedAsNew":
        left: list[tuple[int, str, str]] = []
        for name, items in raw_buffers.items():
            k = sum(1 for s in per_name.get(("d", name), ()) if s.cancelled_at is None)
            left.extend((pos, name, data) for pos, data in items[k:])
        carry = [(name, data) for _pos, name, data in sorted(left)][:CARRY_LIMIT]
    return Verdict(subs, arrivals, audit, buffers, carry, timers, timer_order, terminal)


# ------------------------------------------------------------------------------------------------
# Checking recorded histories against the oracle and the code's logs
# ------------------------------------------------------------------------------------------------


def _code_log(events: list[HistoryEvent]) -> list[Any] | None:
    """The execution's own log, as the code wrote it (its continue-as-new input or output)."""
    for e in events:
        if isinstance(e, OrchestrationContinuedAsNew):
            return json.loads(e.input)["logs"][-1]
        if isinstance(e, OrchestrationCompleted):
            return json.loads(e.output)["logs"][-1]
    return None


def _code_outcomes(steps: list[list[Any]], log: list[Any]) -> dict[tuple[int, int], tuple[str, Any]]:
    """(step, slot) -> ("got", value) | ("lost", None) for each subscription, from the log."""
    out: dict[tuple[int, int], tuple[str, Any]] = {}
    for i, step in enumerate(steps):
        if i >= len(log):
            break
        rec = log[i]
        if step[0] in ("wait", "deq"):
            out[(i, 0)] = ("got", rec[1])
        elif step[0] == "race":
            out[(i, 0)] = ("got", rec[2]) if rec[1] else ("lost", None)
        elif step[0] == "all":
            for j, v in enumerate(rec[1]):
                out[(i, j)] = ("got", v)
    return out


def _schedules(events: list[HistoryEvent]) -> list[tuple[str, str | None, int]]:
    out = []
    for e in events:
        if isinstance(e, ExternalSubscribed):
            out.append(("w", e.name, e.event_id))
        elif isinstance(e, QueueSubscribed):
            out.append(("d", e.name, e.event_id))
        elif isinstance(e, TimerCreated):
            out.append(("t", None, e.event_id))
    return out


def _race_drops(inp: dict[str, Any], rnd: int, events: list[HistoryEvent]) -> dict[int, int] | None:
    """Where each positional wait that lost its race was dropped: the poll right after its
    timer fired (see :func:`oracle`)."""
    log = _code_log(events)
    if log is None:
        return None
    steps = steps_run(inp, rnd)
    plan, hist = schedule_plan(steps), _schedules(events)
    if len(plan) != len(hist):
        return None
    fired = {e.source_event_id: pos for pos, e in enumerate(events) if isinstance(e, TimerFired)}
    ids = {(i, slot): eid for (_k, _n, i, slot), (_k2, _n2, eid) in zip(plan, hist, strict=True)}
    out = {}
    for i, step in enumerate(steps):
        if step[0] == "race" and step[1] == "w" and i < len(log) and not log[i][1] and ids[(i, 1)] in fired:
            out[ids[(i, 0)]] = fired[ids[(i, 1)]] + 1
    return out


def _one_execution(inp: dict[str, Any], where: str, rnd: int, events: list[HistoryEvent],
                   nxt: list[HistoryEvent] | None, received: Counter) -> list[str]:
    out: list[str] = []
    drops = _race_drops(inp, rnd, events)
    v = oracle(events, drops)
    # -- history-only: carry-forward into the next execution (SPEC §6.2, §8)
    if v.carry is not None and nxt:
        cf = [tuple(x) for x in (getattr(nxt[0], "carry_forward_events", None) or ())]
        if cf != v.carry:
            out.append(f"{where}: carried forward {cf!r:.400}, SPEC §6.2 says {v.carry!r:.400}")
        first = [(e.name, e.data) for e in nxt if isinstance(e, QueueEventDelivered)][: len(v.carry)]
        if first != v.carry:
            out.append(f"{where}: the next execution's first QueueEventDelivered events are {first!r:.400}, "
                       f"expected the carried {v.carry!r:.400}")
    # -- history-only: the same arrival never resolves two subscriptions
    taken = [s.arrival_pos for s in v.subs if s.arrival_pos is not None]
    if len(taken) != len(set(taken)):
        out.append(f"{where}: one arrival assigned twice {taken}")
    if v.terminal is None:
        return out  # still running (or stopped by the horizon): no code log to compare with
    # -- history-only: an unresolved subscription of an ended execution is cancelled (§3.9)
    if v.terminal != "OrchestrationFailed":
        for s in v.subs:
            if s.value is MISSING and s.cancelled_at is None:
                out.append(f"{where}: subscription {s.kind}:{s.name} id {s.event_id} neither resolved nor "
                           "cancelled at the end (SPEC §3.9)")
    log = _code_log(events)
    if log is None:
        return out  # failed (poison under faults, say): no log
    steps = steps_run(inp, rnd)
    plan = schedule_plan(steps)
    hist = _schedules(events)
    if [(k, n) for k, n, _i, _s in plan] != [(k, n) for k, n, _id in hist]:
        return [*out, f"{where}: schedules {[(k, n) for k, n, _ in hist]} vs program {[(k, n) for k, n, *_ in plan]}"]
    outcomes = _code_outcomes(steps, log)
    sub_of = {s.event_id: s for s in v.subs}
    ids = {(i, slot, k): eid for (k, _n, i, slot), (_k, _n2, eid) in zip(plan, hist, strict=True)}
    for (k, name, i, slot), (_k, _n, eid) in zip(plan, hist, strict=True):
        if k == "t":
            continue
        s = sub_of[eid]
        got = outcomes.get((i, slot))
        if got is None:
            out.append(f"{where}: step {i} has no log entry")
            continue
        if got[0] == "got":
            received[(k, got[1])] += 1
            if s.cancelled_at is not None:
                out.append(f"{where}: step {i} {k}:{name} received {got[1]!r} but its subscription was cancelled")
            elif s.value is MISSING:
                out.append(f"{where}: step {i} {k}:{name} received {got[1]!r}; SPEC §6 gives it no arrival")
            elif s.value != got[1]:
                out.append(f"{where}: step {i} {k}:{name} received {got[1]!r}; SPEC §6 gives "
                           f"{s.value!r} (arrival at history position {s.arrival_pos})")
        elif s.cancelled_at is None:
            out.append(f"{where}: step {i} {k}:{name} lost its race but was never cancelled")
        if steps[i][0] == "race":
            # The winner is the branch whose completion is first in history (SPEC §4): the
            # subscription wins iff the oracle resolves it on the history before the timer
            # fired. (Not judged when what made it resolvable is a breadcrumb cancelling a lower
            # subscription: breadcrumbs do not poll the code (§3.4), so both branches may be
            # ready at the same poll, where argument order decides.)
            tid = ids[(i, 1, "t")]
            cut = v.timers.get(tid, len(events))
            ready = next((n for n in range(s.pos + 1, cut + 1)
                          if next(x for x in oracle(events[:n], drops).subs if x.event_id == eid).value
                          is not MISSING), None)
            if ready is not None and isinstance(events[ready - 1], (ExternalSubscribedCancelled, QueueSubscriptionCancelled)):
                continue
            should_win = ready is not None
            if should_win != (got[0] == "got"):
                out.append(f"{where}: race at step {i} ({k}:{name} vs timer id {tid}): the code says "
                           f"{'subscription' if got[0] == 'got' else 'timer'} won, history says "
                           f"{'subscription' if should_win else 'timer'} (timer fired at position {cut})")
    return out


def execution_problems(inp: dict[str, Any], inst: str, executions: dict[int, list[HistoryEvent]],
                       received: Counter) -> list[str]:
    """What one instance's recorded executions break (see the module docstring). ``received``
    collects (kind, payload) -> times the code received it."""
    out: list[str] = []
    for exe in sorted(executions):
        events = executions[exe]
        if not events:
            continue
        where, got = f"{inst}/exe{exe}", Counter()
        out += _one_execution(inp, where, exe - 1, events, executions.get(exe + 1), got)
        received.update(got)
    return out


def original_arrivals(executions: dict[int, list[HistoryEvent]]) -> Counter:
    """(kind, payload) -> how many arrivals the instance's history records (carried-forward
    copies are the same message, not counted again)."""
    c: Counter = Counter()
    prev: Verdict | None = None
    for exe in sorted(executions):
        events = executions[exe]
        skip = len(prev.carry) if prev is not None and prev.carry else 0
        for e in events:
            if isinstance(e, ExternalEvent):
                c[("w", _decode(e.data))] += 1
            elif isinstance(e, QueueEventDelivered):
                if skip:
                    skip -= 1
                    continue
                c[("d", _decode(e.data))] += 1
        prev = oracle(events) if events else None
    return c


def history_problems(inp: dict[str, Any], histories: dict[str, dict[int, list[HistoryEvent]]],
                     sent: dict[str, Counter] | None = None) -> list[str]:
    """Every instance's executions checked; ``sent``: (kind, payload) -> sends per instance
    (fault-free runs: nothing may reach the code more often than the client sent it)."""
    out: list[str] = []
    for inst, _name in STYLES:
        executions = histories.get(inst) or {}
        received: Counter = Counter()
        out += execution_problems(inp, inst, executions, received)
        arrived = original_arrivals(executions)
        for key, n in received.items():
            if n > arrived[key]:
                out.append(f"{inst}: {key} reached the code {n} times, arrived {arrived[key]} times")
            if sent is not None and n > sent[inst][key]:
                out.append(f"{inst}: {key} reached the code {n} times, sent {sent[inst][key]} times")
    return out


# ------------------------------------------------------------------------------------------------
# Signals as data, and the spec
# ------------------------------------------------------------------------------------------------


def payload(kind: str, name: str, tag: Any) -> str:
    return f"{'r' if kind == 'raise' else 'q'}:{name}#{tag}"


def round_signals(inp: dict[str, Any], inst: str, first: int, every: int, spare: int = 1) -> list[Signal]:
    """One raise per blocking positional name and one enqueue per blocking queue name per round,
    as many rounds as blocking subscriptions (+ ``spare``): each round resolves at least one."""
    waits, deqs = blocking_names(inp)
    out = []
    for k in range(blocking_subscriptions(inp) + spare):
        at = first + every * k
        out += [Signal(instance=inst, name=n, data=payload("raise", n, f"L{k}"), at_ms=at) for n in waits]
        out += [Signal(instance=inst, name=n, data=payload("enqueue", n, f"L{k}"), at_ms=at, kind="enqueue") for n in deqs]
    return out


@st.composite
def scenarios(draw: Any, timers: tuple[int, ...] = SIM_TIMERS, max_steps: int = 7) -> dict[str, Any]:
    """A program and its signals: ``{"inp": program input, "delayed": bool, "signals": [[kind,
    name, payload, at_ms | None], ...], "pre": [[kind, name, payload, at_ms], ...]}`` (``pre``:
    sent before a delayed start)."""
    names = list(NAMES[: draw(st.integers(1, 3))])
    name = st.sampled_from(names)
    sk = st.sampled_from(("w", "d"))
    step = st.one_of(
        st.tuples(st.just("wait"), name),
        st.tuples(st.just("deq"), name),
        st.tuples(st.just("race"), sk, name, st.sampled_from(timers), st.booleans()),
        st.tuples(st.just("all"), st.tuples(sk, name), st.tuples(sk, name)),
        st.tuples(st.just("timer"), st.sampled_from(timers)),
    )
    prog = draw(st.lists(step, min_size=1, max_size=max_steps))
    can_at = draw(st.one_of(st.none(), st.integers(0, len(prog))))
    if can_at is not None:
        prog.insert(can_at, ("can",))
    inp = json.loads(json.dumps({"prog": prog, "round": 0, "max_round": 0 if can_at is None else draw(st.integers(1, 2)),
                                 "logs": []}))
    counter = iter(range(10_000))
    kinds = st.sampled_from(("raise", "enqueue"))
    target = st.sampled_from([*names, UNUSED])
    when = st.one_of(st.none(), st.sampled_from(FIXED_TIMES), st.just(AFTER_END))
    signals = []
    for _ in range(draw(st.integers(0, 14))):
        kind, nm = draw(kinds), draw(target)
        data = payload(kind, nm, next(counter))
        signals.append([kind, nm, data, draw(when)])
        if draw(st.integers(0, 4)) == 0:  # a duplicate: identical payload, same or other time
            signals.append([kind, nm, data, draw(st.one_of(st.just(signals[-1][3]), when))])
    for step in prog:  # aimed at a race's timer: lands with it when the race is the first step
        if step[0] == "race" and draw(st.booleans()):
            kind = "raise" if step[1] == "w" else "enqueue"
            offset = draw(st.sampled_from((0, DELAYED_START)))
            signals.append([kind, step[2], payload(kind, step[2], next(counter)), offset + step[3]])
    if draw(st.integers(0, 3)) == 0:  # a burst to one queue nobody dequeues (carry-forward overflow)
        at = draw(st.sampled_from((300, DELAYED_START + 1)))
        signals += [["enqueue", UNUSED, payload("enqueue", UNUSED, f"B{k}"), at + k] for k in range(22)]
    delayed = draw(st.booleans())
    pre = []
    if delayed:
        for _ in range(draw(st.integers(1, 3))):
            kind, nm = draw(kinds), draw(target)
            pre.append([kind, nm, payload(kind, nm, f"P{next(counter)}"), draw(st.sampled_from((0, 1, 500, 1_000)))])
    return {"inp": inp, "delayed": delayed, "signals": signals, "pre": pre}


def make_spec(sc: dict[str, Any], name: str = "ev-match") -> SimSpec:
    starts, signals = [], []
    for inst, orch in STYLES:
        starts.append(Start(instance=inst, orchestration=orch, input=sc["inp"],
                            at_ms=DELAYED_START if sc["delayed"] else 0))
        for kind, nm, data, at in [*sc["pre"], *sc["signals"]]:
            signals.append(Signal(instance=inst, name=nm, data=data, at_ms=at, kind=kind))
        signals += round_signals(sc["inp"], inst, ROUNDS_FROM, ROUND_EVERY)
    return SimSpec(name=name, setup=setup, starts=starts, signals=signals, signal_window_ms=SIGNAL_WINDOW,
                   fault_transparent=False)


def sent_counts(sc: dict[str, Any], spec: SimSpec) -> dict[str, Counter]:
    out: dict[str, Counter] = {inst: Counter() for inst, _ in STYLES}
    for s in spec.signals:  # type: ignore[union-attr]
        out[s.instance][("w" if s.kind == "raise" else "d", s.data)] += 1
    return out


# ------------------------------------------------------------------------------------------------
# Fault-free delivery from the trace: enqueues while running are never lost; before: dropped
# ------------------------------------------------------------------------------------------------


def delivery_problems(result: Any) -> list[str]:
    """From the trace: the client operations in delivery order (the harness delivers its
    realized operations sorted by time, stably), each instance's first client step (its Start)
    and the fetch of its final turn. Fault-free runs only (no client retries, no delays)."""
    starts, signals = result.realized
    ops = sorted([*starts, *signals], key=lambda x: x.at_ms)
    recs = [json.loads(line) for line in result.trace]
    client_steps = [r["step"] for r in recs if r["op"] == "client"]
    assert len(client_steps) == len(ops), (len(client_steps), len(ops))
    last_fetch: dict[str, int] = {}
    final_fetch: dict[str, int] = {}
    for r in recs:
        if r["op"] == "orch_fetch":
            last_fetch[r["instance"]] = r["step"]
        elif r["op"] == "orch_turn" and r["result"] in ("completed", "failed", "cancelled") \
                and r["instance"] not in final_fetch:
            final_fetch[r["instance"]] = last_fetch[r["instance"]]
    start_step = {op.instance: step for op, step in zip(ops, client_steps, strict=True) if isinstance(op, Start)}
    # A raise to an instance that does not exist yet stays queued (SPEC §3.12: only a batch of
    # nothing but queue messages is deleted), so an enqueue after it is fetched with it, kept,
    # and delivered with the start; one that is due at the same time may or may not share a batch.
    early_raise: dict[str, list[int]] = {}
    for op, step in zip(ops, client_steps, strict=True):
        if not isinstance(op, Start) and op.kind == "raise" and step < start_step[op.instance]:
            early_raise.setdefault(op.instance, []).append(op.at_ms)
    must: Counter = Counter()
    either: Counter = Counter()
    for op, step in zip(ops, client_steps, strict=True):
        if isinstance(op, Start) or op.kind != "enqueue":
            continue
        key = (op.instance, op.data)
        if step < start_step[op.instance]:
            raises = early_raise.get(op.instance, [])
            if any(t < op.at_ms for t in raises):
                must[key] += 1
            elif any(t == op.at_ms for t in raises):
                either[key] += 1
            # else: fetched alone before the instance exists: deleted (SPEC §6.2)
        elif step < final_fetch.get(op.instance, 1 << 60):
            must[key] += 1  # reached a running instance: never lost
        # else: after the fetch of the final turn: discarded (SPEC §6.2)
    out = []
    for inst in start_step:
        arrived = original_arrivals(result.histories.get(inst) or {})
        for key in sorted({k for k in [*must, *either] if k[0] == inst} | {(inst, d) for (kd, d) in arrived if kd == "d"}):
            got, lo, hi = arrived[("d", key[1])], must[key], must[key] + either[key]
            if not lo <= got <= hi:
                out.append(f"{inst}: {key[1]!r} delivered {got} times; of its sends {lo} reached the running "
                           f"instance (or queued behind a raise before it existed), {hi - lo} may have; the others "
                           "were before it existed, fetched alone, or after it ended (SPEC §6.2)")
    return out


SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ------------------------------------------------------------------------------------------------
# (a) fault-free simulation, 1 and 2 nodes
# ------------------------------------------------------------------------------------------------


@settings(max_examples=700, **SETTINGS)
@given(sc=scenarios(), seed=st.integers(0, 10_000))
def test_fault_free_simulation_matches_spec_matching(sc: dict[str, Any], seed: int) -> None:
    spec = make_spec(sc)
    for s, nodes in ((seed, 1), (seed + 1, 2)):
        result = run_and_check(Simulation(spec, s, None, nodes=nodes))
        assert result.ok, result.failures[0].render()
        for inst, _ in STYLES:
            assert result.statuses[inst].status == "Completed", (inst, result.statuses[inst])
        problems = history_problems(sc["inp"], result.histories, sent_counts(sc, spec))
        problems += delivery_problems(result)
        assert not problems, (s, nodes, problems)


# ------------------------------------------------------------------------------------------------
# (b) under faults: checkers pass, the oracle holds on whatever was recorded
# ------------------------------------------------------------------------------------------------


@settings(max_examples=300, **SETTINGS)
@given(sc=scenarios(), seed=st.integers(0, 10_000))
def test_faulty_simulation_passes_checkers_and_matches_spec_matching(sc: dict[str, Any], seed: int) -> None:
    spec = make_spec(sc)
    runs = ((seed, FaultPlan.all(0.05), "memory", 2), (seed + 1, "swarm", "memory", 2),
            (seed + 2, "swarm", "sqlite", 2))
    for s, plan, provider, nodes in runs:
        result = run_and_check(Simulation(spec, s, plan, provider=provider, nodes=nodes))
        assert result.ok, result.failures[0].render()
        problems = history_problems(sc["inp"], result.histories)
        assert not problems, (s, plan if isinstance(plan, str) else plan.to_json(), provider, problems)


# ------------------------------------------------------------------------------------------------
# (c) same seed, same trace bytes
# ------------------------------------------------------------------------------------------------


@settings(max_examples=80, **SETTINGS)
@given(sc=scenarios(), seed=st.integers(0, 10_000))
def test_same_seed_gives_identical_trace(sc: dict[str, Any], seed: int) -> None:
    spec = make_spec(sc)
    one = Simulation(spec, seed, "swarm").run()
    two = Simulation(spec, seed, "swarm").run()
    assert list(one.trace) == list(two.trace)


# ------------------------------------------------------------------------------------------------
# (d) production runtime, real client: the oracle holds on the recorded histories
# ------------------------------------------------------------------------------------------------

LIVE_TIMERS = (0, 1, 5, 20)
LIVE_TIMES = (0, 2, 10, 30, 60, 120)  # ms after the start; None: drawn in [0, 200)
LIVE_ROUNDS_FROM, LIVE_ROUND_EVERY, LIVE_SPARE = 300, 80, 20  # (spare rounds: a slow machine may miss several;
# those left once both instances ended are sent at once, so they cost a fast run nothing)


def _live_run(sc: dict[str, Any], provider: Any, seed: int, timeout_s: float = 6.0) -> tuple[Any, list[str]]:
    """Run the scenario on a production ``Runtime`` (threads, wall clock) with a real client:
    the pre-start signals first (those before the first raise alone, until the provider has
    deleted them; then the raise and the rest, which stay queued), then the starts, the signals
    at their times (ms after the start), the rounds; once both instances have ended the rest is
    sent at once (all after the end). Returns the histories read from the provider and what the
    completion and pre-start delivery rules break."""
    import random

    from duroxide_sim import Client, Runtime, RuntimeOptions

    rng = random.Random(seed)
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    setup(rt, None)
    client = Client(provider)
    problems: list[str] = []
    rt.start()
    try:
        # The enqueues before the first pre-start raise go alone (and are deleted once fetched:
        # wait for the queue to empty); the raise and what follows stay queued (SPEC §3.12).
        first_raise = next((i for i, s in enumerate(sc["pre"]) if s[0] == "raise"), len(sc["pre"]))
        for inst, _ in STYLES:
            for _kind, nm, data, _at in sc["pre"][:first_raise]:
                client.enqueue_event(inst, nm, data)
        deadline = time.monotonic() + 3.0
        while client.get_queue_depths().orchestrator_queue and time.monotonic() < deadline:
            time.sleep(0.005)
        for inst, _ in STYLES:
            for kind, nm, data, _at in sc["pre"][first_raise:]:
                (client.raise_event if kind == "raise" else client.enqueue_event)(inst, nm, data)
        for inst, orch in STYLES:
            client.start_orchestration(inst, orch, sc["inp"])
        began = time.monotonic()
        ops = []
        for inst, _ in STYLES:
            ops += [(rng.randrange(200) if at is None else at, inst, kind, nm, data)
                    for kind, nm, data, at in sc["signals"]]
            ops += [(s.at_ms, inst, s.kind, s.name, s.data)
                    for s in round_signals(sc["inp"], inst, LIVE_ROUNDS_FROM, LIVE_ROUND_EVERY, LIVE_SPARE)]
        ops.sort(key=lambda op: op[0])
        ended = False
        for at, inst, kind, nm, data in ops:
            while not ended and time.monotonic() < began + at / 1000:
                ended = all(client.get_status(i).status in ("Completed", "Failed") for i, _ in STYLES)
                time.sleep(0.003)
            (client.raise_event if kind == "raise" else client.enqueue_event)(inst, nm, data)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not all(
                client.get_status(i).status in ("Completed", "Failed") for i, _ in STYLES):
            time.sleep(0.01)
        time.sleep(0.05)  # (the messages sent after the end: discarded)
    finally:
        rt.shutdown(2_000)
    histories = {inst: {e: list(provider.read_with_execution(inst, e))
                        for e in range(1, (provider.latest_execution_id(inst) or 0) + 1)} for inst, _ in STYLES}
    for inst, _ in STYLES:
        if client.get_status(inst).status != "Completed":
            problems.append(f"{inst}: {client.get_status(inst).status} (the rounds should have completed it)")
    first_raise = next((i for i, s in enumerate(sc["pre"]) if s[0] == "raise"), len(sc["pre"]))
    lone = {s[2] for s in sc["pre"][:first_raise] if s[0] == "enqueue"}
    behind = {s[2] for s in sc["pre"][first_raise:] if s[0] == "enqueue"}
    for inst, execs in histories.items():
        got = {_decode(e.data) for events in execs.values() for e in events if isinstance(e, QueueEventDelivered)}
        problems += [f"{inst}: pre-start {d!r}, enqueued alone, was delivered (SPEC §6.2: deleted by the provider)"
                     for d in sorted(lone & got)]
        problems += [f"{inst}: pre-start {d!r}, enqueued behind a raise, was not delivered (SPEC §3.12: kept)"
                     for d in sorted(behind - got)]
    return histories, problems


def _live_sent(sc: dict[str, Any]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for inst, _ in STYLES:
        c = out.setdefault(inst, Counter())
        for kind, _nm, data, _at in [*sc["pre"], *sc["signals"]]:
            c[("w" if kind == "raise" else "d", data)] += 1
        for s in round_signals(sc["inp"], inst, LIVE_ROUNDS_FROM, LIVE_ROUND_EVERY, LIVE_SPARE):
            c[("w" if s.kind == "raise" else "d", s.data)] += 1
    return out


def live_scenarios() -> Any:
    """Short programs on production time scales: ms timers, signals within 200 ms."""
    def rescale(sc: dict[str, Any]) -> dict[str, Any]:
        times = {t: LIVE_TIMES[i % len(LIVE_TIMES)] for i, t in enumerate((*FIXED_TIMES, AFTER_END))}
        sc["signals"] = [[k, n, d, None if at is None else times.get(at, 150)] for k, n, d, at in sc["signals"]]
        return sc
    return scenarios(timers=LIVE_TIMERS, max_steps=4).map(rescale)


@pytest.mark.realtime
@settings(max_examples=10, **SETTINGS)
@given(sc=live_scenarios(), seed=st.integers(0, 10_000))
def test_production_runtime_matches_spec_matching(sc: dict[str, Any], seed: int, tmp_path_factory: Any) -> None:
    from duroxide_sim import InMemoryProvider, SqliteProvider

    histories, problems = _live_run(sc, InMemoryProvider(), seed)
    problems += history_problems(sc["inp"], histories, _live_sent(sc))
    assert not problems, ("memory", problems)
    provider = SqliteProvider.open(str(tmp_path_factory.mktemp("evm") / "app.db"))
    try:
        histories, problems = _live_run(sc, provider, seed)
        problems += history_problems(sc["inp"], histories, _live_sent(sc))
    finally:
        getattr(provider, "close", lambda: None)()
    assert not problems, ("sqlite", problems)


# ------------------------------------------------------------------------------------------------
# Behaviour the SPEC leaves open, pinned
# ------------------------------------------------------------------------------------------------


def test_an_enqueue_behind_an_early_raise_is_kept_until_the_start() -> None:
    """Pinned (SPEC §3.12 describes it for SQLite only; §6.2 says a lone pre-start enqueue is
    deleted). Signals to an instance that does not exist yet: an enqueue fetched alone is
    deleted; a raise is not (the batch is not queue-only), stays queued (the fetch skips the
    instance, the §3.12 Recommend) and is recorded with the start as an audit-only
    ``ExternalEvent`` (no subscription yet, §6.1); an enqueue sent after that raise is fetched
    with it, so it is kept too and delivered to the execution that starts. Observed the same on
    the memory and SQLite providers."""
    inp = {"prog": [["deq", "n0"], ["wait", "n0"]], "round": 0, "max_round": 0, "logs": []}
    sc = {"inp": inp, "delayed": True, "signals": [],
          "pre": [["enqueue", "n0", "q:n0#alone", 0], ["raise", "n0", "r:n0#early", 500],
                  ["enqueue", "n0", "q:n0#behind", 1_000]]}
    for provider in ("memory", "sqlite"):
        result = run_and_check(Simulation(make_spec(sc), 0, None, provider=provider, nodes=1))
        assert result.ok, result.failures[0].render()
        events = result.histories["g"][1]
        assert [type(e).__name__ for e in events[:3]] == ["OrchestrationStarted", "ExternalEvent", "QueueEventDelivered"]
        assert (events[1].data, events[2].data) == ('"r:n0#early"', '"q:n0#behind"')
        assert not any(getattr(e, "data", None) == '"q:n0#alone"' for e in events)
        log = json.loads(events[-1].output)["logs"][0]
        assert log == [["d", "q:n0#behind"], ["w", "r:n0#L0"]], log
        assert not history_problems(inp, result.histories) and not delivery_problems(result)


# ------------------------------------------------------------------------------------------------
# Bugs found (each fails today)
# ------------------------------------------------------------------------------------------------


def test_positional_event_in_the_batch_where_the_wait_loses_is_audit_only() -> None:
    """SPEC §6.1 as the reference reads it: ``race(wait("x"), timer(1 s))`` then ``wait("x")``;
    the raise of "x" lands in the batch of the timer, after ``TimerFired``.

    History: Started, ExternalSubscribed#2(x), TimerCreated#3, TimerFired#4,
    ExternalEvent#5(x,"first"), ExternalSubscribed#6(x), ExternalSubscribedCancelled#7(source 2,
    dropped_future), then the next raise ExternalEvent#8(x,"second").

    The timer wins at the poll after #4, and the code drops wait #2 there: from then on it is
    cancelled, so at #5 no subscription is active and "first" is audit-only; the second wait gets
    "second". A literal reading of "active (non-cancelled) at its position" - cancelled only at
    the breadcrumb #7, written when the turn ends - would give "first" (this probe first reported
    that as a bug, and a change that delivered it broke the reference fixtures of
    tests/runtime/test_rust_reference_scenarios_h.py / _k.py, whose checkpoint records "b": the
    reference loses the signal too). Pinned, with the oracle's reading (``dropped_at``)."""
    from duroxide_sim import Client, Runtime, RuntimeOptions
    from duroxide_sim.providers.memory import InMemoryProvider
    from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
    from duroxide_sim.sim.clock import DEFAULT_EPOCH_MS

    def orch(ctx: Any, _inp: Any) -> Any:
        r = yield ctx.race(ctx.schedule_wait("x"), ctx.schedule_timer(1_000))
        v = yield ctx.schedule_wait("x")
        return [r["index"], v]

    clock = SimClock(DEFAULT_EPOCH_MS)
    provider = InMemoryProvider(clock)
    rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(0))
    rt.register_orchestration("O")(orch)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    client.start_orchestration("i", "O")
    driver.run_until_quiet(limit_ms=0)
    clock.advance(1_000)
    client.raise_event("i", "x", "first")  # queued behind the due TimerFired: one batch
    driver.run_until_idle()
    client.raise_event("i", "x", "second")
    driver.run_until_quiet(limit_ms=10_000)
    history = list(provider.read_with_execution("i", 1))
    assert [type(e).__name__ for e in history[:7]] == [
        "OrchestrationStarted", "ExternalSubscribed", "TimerCreated", "TimerFired", "ExternalEvent",
        "ExternalSubscribed", "ExternalSubscribedCancelled"]
    assert history[4].data == '"first"'
    assert history[7].data == '"second"'
    second_wait = next(s for s in oracle(history, {2: 4}).subs if s.event_id == 6)  # (dropped at the poll after #4)
    assert second_wait.value == "second"
    assert next(s for s in oracle(history).subs if s.event_id == 6).value == "first"  # (the literal reading)
    assert client.get_orchestration_status("i").output == [1, "second"]
