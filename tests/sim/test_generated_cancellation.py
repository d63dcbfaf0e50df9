"""Generative probe of INSTANCE CANCELLATION (SPEC §11, §3.8-§3.10, §7) on trees of orchestrations.

A tree is plain JSON data: a root program (at most 6 steps) whose steps run activities, timers,
external-event waits, joins, races and sub-orchestrations (explicit or auto ids, depth <= 3 below
the root), detached (fire-and-forget) starts, and optionally one continue-as-new. The client
cancels the root at one or two generated virtual times (sometimes long after it finished) and
sometimes cancels a child directly. Runs fault-free and under ``FaultPlan.all(0.05)`` / swarm
plans, one or two runtime processes.

The outcome of a program depends on *when* the cancel lands, so the properties are judged per
instance from what the run recorded, against the SPEC:

* (P1) an execution with an ``OrchestrationCancelRequested{r}`` has exactly one, ends with
  ``OrchestrationFailed{Application{Cancelled{r}, message:""}}`` (no other terminal event), its
  instance's status is ``Failed`` with error exactly ``canceled: {r}`` (§2.3, §3.8, §11.1), and
  ``r`` is a reason somebody actually sent it (client, ``parent canceled``, ``parent dropped
  sub-orchestration future``); its open waits got ``…Cancelled{orchestration_terminal}`` before
  the ending, the cancel turn wrote no ``SubOrchestrationCancelRequested`` (§3.9 ⚠), and a parent
  that heard about it recorded ``SubOrchFailed{Cancelled{r}}``; custom status = last value set;
* (P2) an execution without a cancel request ends as its program says, evaluated from its own
  input and the statuses its children really ended with (compositional reference evaluator):
  cancelling a finished instance changes nothing, a child cancelled directly gives its parent
  ``Err("canceled: …")`` (§7), a detached start is never cancelled by its starter's cancel;
* (P3) cascade: every sub-orchestration outstanding when its parent was cancelled (scheduled in an
  earlier turn, no completion in the parent's history) ends Completed/Failed; a child / detached
  start first scheduled in the cancel turn is never started (§3.9 "Cancelled": no dispatch);
  a dropped race loser is cancelled (§3.10); a child cancelled directly after it existed ends;
* (P4) activities: every activity of a cancelled execution left open gets
  ``ActivityCancelRequested{orchestration_terminal_failed}``; once the cancel turn committed, its
  open activities' work items are gone: never fetched again (§11.1, §11.2 "a row deleted before
  any fetch never runs"); activities first scheduled in the cancel turn are never fetched; no
  activity item is left queued for a terminal instance when the run is quiet;
* (P5) fault-free: a cancel is prompt - an instance whose ending turn was fetched after a
  ``CancelInstance`` for it had been queued ends cancelled; two client cancels: the first wins;
* (P6) ``run_and_check``'s checkers pass (replay from scratch, well-formedness, no completion for a
  cancelled-and-deleted activity, ...), and the same seed gives the same trace.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim.core.events import (
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ApplicationError,
    CustomStatusUpdated,
    ExternalEvent,
    ExternalSubscribed,
    ExternalSubscribedCancelled,
    OrchestrationCancelRequested,
    OrchestrationChained,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    QueueSubscribed,
    QueueSubscriptionCancelled,
    SubOrchestrationCancelRequested,
    SubOrchestrationCompleted,
    SubOrchestrationFailed,
    SubOrchestrationScheduled,
)
from duroxide_sim.core.turn import child_instance_id
from duroxide_sim.sim.checkers import _check, _step_of, _trace_records
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.gc_pause import quiet_gc
from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start, _Run
from tests.sim.test_generated_programs import M, MIN, _policy, act_error, act_fn, norm, num

#: (the recursive strategies have long reprs: Hypothesis warns when it builds one)
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

DAY = 86_400_000
NAME = "CxNode"
ROOT = "r"
TIMERS = (0, 10, 250, 2_000, 30_000)
#: Events for ``wait`` steps: a few early (so some waits resolve before a cancel), then re-sent
#: after the fault window (positional events raised before the subscription exist are lost, §6.1).
EV_AT = (1_000, 20_000, 2 * MIN, 6 * MIN) + tuple(12 * MIN + 10 * MIN * k for k in range(10))
#: Cancel times: at once (the scheduler then picks the step it lands on), on the timers' fire
#: times, just after them, mid-way, and long after everything could have finished.
CANCEL_TIMES = (0, 0, 1, 10, 11, 250, 300, 2_000, 2_100, 30_000, 31_000, 5 * MIN, 20 * MIN, 2 * DAY)
PARENT_CANCELED = "parent canceled"
DROPPED = "parent dropped sub-orchestration future"
TERMINAL = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)


def cid(parent: str, rnd: int, idx: int, j: int) -> str:
    # ("::" of an auto id replaced: ids containing "::sub::" are reserved for auto ids)
    return f"{parent.replace('::', '~')}-r{rnd}s{idx}j{j}"


# ------------------------------------------------------------------------------------------------
# The orchestration (one generator interpreting the program in its input)
# ------------------------------------------------------------------------------------------------


def _child_input(prog: list[Any], acc: int) -> dict[str, Any]:
    return {"prog": prog, "acc": acc, "round": 0, "max_round": 0}


def _sub(ctx: Any, leaf: list[Any], acc: int, rnd: int, idx: int, j: int) -> Any:
    """``["sub", prog, auto]``: a sub-orchestration with an explicit id, or an auto id."""
    if leaf[2]:
        return ctx.schedule_sub_orchestration(NAME, _child_input(leaf[1], acc))
    return ctx.schedule_sub_orchestration_with_id(NAME, cid(ctx.instance_id, rnd, idx, j), _child_input(leaf[1], acc))


def _leaf(ctx: Any, leaf: list[Any], acc: int, rnd: int, idx: int, j: int) -> Any:
    kind = leaf[0]
    if kind == "act":
        return ctx.schedule_activity(leaf[1], (acc + leaf[2]) % M)
    if kind == "timer":
        return ctx.schedule_timer(leaf[1])
    if kind == "hang":
        return ctx.wait_for_event("never")
    if kind == "sub":
        return _sub(ctx, leaf, acc, rnd, idx, j)
    raise AssertionError(leaf)


def node(ctx: Any, inp: dict[str, Any]) -> Any:
    prog, acc, rnd = inp["prog"], inp["acc"], inp["round"]
    trail: list[Any] = []
    for idx, step in enumerate(prog):
        kind = step[0]
        if kind == "act":
            acc = yield ctx.schedule_activity(step[1], (acc + step[2]) % M)
        elif kind == "try":
            try:
                acc = yield ctx.schedule_activity(step[1], (acc + step[2]) % M)
                trail.append(acc)
            except Exception as exc:  # noqa: BLE001 - the program catches the activity's failure
                trail.append(["caught", norm(str(exc))])
                acc = (acc + 3) % M
        elif kind == "timer":
            yield ctx.schedule_timer(step[1])
            acc = (acc + 1) % M
        elif kind == "hang":
            yield ctx.wait_for_event("never")
        elif kind == "hangq":  # waits for good on a queue nobody writes to
            yield ctx.dequeue_event("nothing")
        elif kind == "hangact":  # an activity no worker serves (its tag): queued until cancelled
            yield ctx.schedule_activity("Inc", acc).with_tag("nobody")
        elif kind == "retry":
            acc = yield ctx.schedule_activity_with_retry(step[1], (acc + step[2]) % M, _policy(step))
        elif kind == "status":
            ctx.set_custom_status(f"s{acc}")
        elif kind == "wait":
            v = yield ctx.wait_for_event("ev")
            trail.append(v["n"])
            acc = (acc + v["n"]) % M
        elif kind == "sub":
            v = yield _sub(ctx, step, acc, rnd, idx, 0)
            trail.append(["sub", v["acc"]])
            acc = (acc + v["acc"]) % M
        elif kind == "trysub":
            try:
                v = yield _sub(ctx, step, acc, rnd, idx, 0)
                trail.append(["sub", v["acc"]])
                acc = (acc + v["acc"]) % M
            except Exception as exc:  # noqa: BLE001 - a failed (or cancelled) child is caught
                trail.append(["caught", norm(str(exc))])
                acc = (acc + 3) % M
        elif kind == "all":
            res = yield ctx.all([_leaf(ctx, leaf, acc, rnd, idx, j) for j, leaf in enumerate(step[1])])
            vals = []
            for r in res:
                if "ok" in r:
                    vals.append(num(r["ok"]))
                else:
                    vals.append(["err", norm(r["err"])])
            for v in vals:
                acc = (acc + (1000 if isinstance(v, list) else v)) % M
            trail.append(vals)
        elif kind == "race_at":  # an activity against a one-day timer: the activity wins
            r = yield ctx.race(ctx.schedule_activity(step[1], (acc + step[2]) % M), ctx.schedule_timer(DAY))
            trail.append([r["index"], norm(r["value"])])
            acc = (acc + num(r["value"])) % M
        elif kind == "race_ts":  # a timer against a child that never ends: the child is dropped
            r = yield ctx.race(ctx.schedule_timer(step[1]),
                               ctx.schedule_sub_orchestration_with_id(NAME, cid(ctx.instance_id, rnd, idx, 9),
                                                                      _child_input([["hang"]], acc)))
            trail.append([r["index"], r["value"]])
        elif kind == "race_st":  # a finite child against a one-day timer: the child wins
            r = yield ctx.race(ctx.schedule_sub_orchestration_with_id(NAME, cid(ctx.instance_id, rnd, idx, 0),
                                                                      _child_input(step[1], acc)),
                               ctx.schedule_timer(DAY))
            v = r["value"]
            trail.append([r["index"], v["acc"] if isinstance(v, dict) else norm(v)])
            acc = (acc + num(v)) % M
        elif kind == "subcan":  # a child that continues as new once before it ends
            v = yield ctx.schedule_sub_orchestration_with_id(NAME, cid(ctx.instance_id, rnd, idx, 0),
                                                             {**_child_input(step[1], acc), "max_round": 1})
            trail.append(["sub", v["acc"]])
            acc = (acc + v["acc"]) % M
        elif kind == "detach":
            yield ctx.start_orchestration(NAME, cid(ctx.instance_id, rnd, idx, 7), _child_input(step[1], acc))
            trail.append("detached")
        elif kind == "can":
            if rnd < inp["max_round"]:
                yield ctx.continue_as_new({**inp, "acc": acc, "round": rnd + 1})
            trail.append("last")
        else:
            raise AssertionError(step)
    return {"acc": acc, "trail": trail}


def setup(rt: Any, world: Any) -> None:
    for name in ("Inc", "Dbl", "Sq", "Bad"):
        rt.register_activity(name, (lambda n: lambda ctx, x: act_fn(n, x))(name))
    rt.register_orchestration(NAME, node)


# ------------------------------------------------------------------------------------------------
# The compositional reference evaluator: one execution, given its children's real endings
# ------------------------------------------------------------------------------------------------


class _Fail(Exception):
    pass


class _Hang(Exception):
    pass


class _Mismatch(Exception):
    pass


def _act(name: str, x: int) -> int:
    try:
        return act_fn(name, x)
    except ValueError:
        raise _Fail(act_error(name, x)) from None


def evaluate(inst: str, inp: dict[str, Any], subs: list[str], ending: Any) -> tuple[str, Any]:
    """What execution ``inp`` of ``inst`` must end with: ("Completed", output) | ("Failed",
    normalized error) | ("Hang", None) | ("CAN", next input). ``subs``: the child instances its
    history scheduled, in order; ``ending(child)``: ("Completed", output) / ("Failed", raw error)
    or None while the child has not ended."""
    prog, acc, rnd = inp["prog"], inp["acc"], inp["round"]
    queue = list(subs)
    trail: list[Any] = []

    def take(expected: str | None) -> str:
        if not queue:
            raise _Mismatch(f"program reaches a sub-orchestration ({expected or 'auto id'}) its history never scheduled")
        got = queue.pop(0)
        if expected is not None and got != expected:
            raise _Mismatch(f"history scheduled child {got!r} where the program starts {expected!r}")
        return got

    def child_value(child: str) -> Any:  # the child's output, or _Fail with its raw error text
        end = ending(child)
        if end is None:
            raise _Hang()
        if end[0] == "Failed":
            raise _Fail(end[1])
        return end[1]

    def sub_id(leaf: list[Any], idx: int, j: int) -> str:
        return take(None if leaf[2] else cid(inst, rnd, idx, j))

    try:
        for idx, step in enumerate(prog):
            kind = step[0]
            if kind == "act":
                acc = _act(step[1], (acc + step[2]) % M)
            elif kind == "try":
                try:
                    acc = _act(step[1], (acc + step[2]) % M)
                    trail.append(acc)
                except _Fail as f:
                    trail.append(["caught", norm(f.args[0])])
                    acc = (acc + 3) % M
            elif kind == "timer":
                acc = (acc + 1) % M
            elif kind in ("hang", "hangq", "hangact"):
                raise _Hang()
            elif kind == "retry":
                acc = _act(step[1], (acc + step[2]) % M)
            elif kind == "status":
                pass
            elif kind == "wait":
                trail.append(100)
                acc = (acc + 100) % M
            elif kind == "sub":
                v = child_value(sub_id(step, idx, 0))
                trail.append(["sub", v["acc"]])
                acc = (acc + v["acc"]) % M
            elif kind == "trysub":
                child = sub_id(step, idx, 0)
                try:
                    v = child_value(child)
                    trail.append(["sub", v["acc"]])
                    acc = (acc + v["acc"]) % M
                except _Fail as f:
                    trail.append(["caught", norm(f.args[0])])
                    acc = (acc + 3) % M
            elif kind == "all":
                children = {j: sub_id(leaf, idx, j) for j, leaf in enumerate(step[1]) if leaf[0] == "sub"}
                vals: list[Any] = []
                hang = False
                for j, leaf in enumerate(step[1]):
                    try:
                        if leaf[0] == "act":
                            vals.append(_act(leaf[1], (acc + leaf[2]) % M))
                        elif leaf[0] == "timer":
                            vals.append(0)
                        elif leaf[0] == "hang":
                            hang = True
                        else:
                            vals.append(num(child_value(children[j])))
                    except _Fail as f:
                        vals.append(["err", norm(f.args[0])])
                    except _Hang:
                        hang = True
                if hang:
                    raise _Hang()
                for v in vals:
                    acc = (acc + (1000 if isinstance(v, list) else v)) % M
                trail.append(vals)
            elif kind == "race_at":
                try:
                    v: Any = _act(step[1], (acc + step[2]) % M)
                except _Fail as f:
                    v = f.args[0]
                trail.append([0, norm(v)])
                acc = (acc + num(v)) % M
            elif kind == "race_ts":
                take(cid(inst, rnd, idx, 9))
                trail.append([0, None])
            elif kind == "race_st":
                child = take(cid(inst, rnd, idx, 0))
                try:
                    v = child_value(child)
                    trail.append([0, v["acc"]])
                except _Fail as f:
                    v = f.args[0]
                    trail.append([0, norm(v)])
                acc = (acc + num(v)) % M
            elif kind == "subcan":
                v = child_value(take(cid(inst, rnd, idx, 0)))
                trail.append(["sub", v["acc"]])
                acc = (acc + v["acc"]) % M
            elif kind == "detach":
                trail.append("detached")
            elif kind == "can":
                if rnd < inp["max_round"]:
                    return ("CAN", {**inp, "acc": acc, "round": rnd + 1})
                trail.append("last")
    except _Fail as f:
        return ("Failed", norm(f.args[0]))
    except _Hang:
        return ("Hang", None)
    return ("Completed", {"acc": acc, "trail": trail})


# ------------------------------------------------------------------------------------------------
# Trees as data: the Hypothesis strategy
# ------------------------------------------------------------------------------------------------

MAX_DEPTH = 3  # levels of sub-orchestrations below the root


def _flat(waits: bool, hang: bool) -> Any:
    act = st.tuples(st.just("act"), st.sampled_from(("Inc", "Dbl", "Sq", "Bad")), st.integers(0, 30))
    try_ = st.tuples(st.just("try"), st.sampled_from(("Inc", "Bad")), st.integers(0, 30))
    timer = st.tuples(st.just("timer"), st.sampled_from(TIMERS))
    race_at = st.tuples(st.just("race_at"), st.sampled_from(("Inc", "Bad")), st.integers(0, 30))
    retry = st.tuples(st.just("retry"), st.sampled_from(("Inc", "Bad")), st.integers(0, 30), st.integers(1, 3),
                      st.sampled_from((0, 5, 1_000)), st.booleans())
    status = st.tuples(st.just("status"))
    opts = [act, act, try_, timer, timer, race_at, retry, status]
    if hang:
        opts.append(st.tuples(st.just("hang")))
        opts.append(st.tuples(st.just("hangq")))
        opts.append(st.tuples(st.just("hangact")))
    if waits:
        opts.append(st.tuples(st.just("wait")))
    return st.one_of(*opts)


@functools.lru_cache(maxsize=None)
def program(depth: int, waits: bool = True, hang: bool = True) -> Any:
    """A program at ``depth`` (0 = root). ``waits``: may wait for the ``ev`` event (only
    instances whose id the client knows: explicit ids); ``hang``: may wait for good."""
    flat = _flat(waits, hang)
    if depth >= MAX_DEPTH:
        return st.lists(flat, max_size=2).map(lambda s: [list(x) for x in s])
    child = st.deferred(lambda: program(depth + 1, waits=waits))
    child_auto = st.deferred(lambda: program(depth + 1, waits=False))
    child_finite = st.deferred(lambda: program(depth + 1, waits=False, hang=False))
    sub = st.one_of(st.tuples(st.just("sub"), child, st.just(False)),
                    st.tuples(st.just("sub"), child_auto, st.just(True)))
    trysub = st.one_of(st.tuples(st.just("trysub"), child, st.just(False)),
                       st.tuples(st.just("trysub"), child_auto, st.just(True)))
    leaf = st.one_of(st.tuples(st.just("act"), st.sampled_from(("Inc", "Bad")), st.integers(0, 30)),
                     st.tuples(st.just("timer"), st.sampled_from(TIMERS)),
                     st.tuples(st.just("hang")) if hang else st.tuples(st.just("timer"), st.just(0)),
                     st.tuples(st.just("sub"), child, st.just(False)),
                     st.tuples(st.just("sub"), child_auto, st.just(True)))
    all_ = st.tuples(st.just("all"), st.lists(leaf, min_size=1, max_size=3))
    race_ts = st.tuples(st.just("race_ts"), st.sampled_from(TIMERS))
    race_st = st.tuples(st.just("race_st"), child_finite)
    detach = st.tuples(st.just("detach"), child)
    subcan = st.tuples(st.just("subcan"), child.map(
        lambda p: [x for x in p if x[0] not in ("detach", "race_ts")] + [["can"]]))
    if not hang:  # (a finite program: no child that may wait for good, no race loser)
        sub = trysub = st.tuples(st.just("sub"), child_finite, st.just(False))
        all_ = st.tuples(st.just("all"), st.lists(st.one_of(
            st.tuples(st.just("act"), st.sampled_from(("Inc", "Bad")), st.integers(0, 30)),
            st.tuples(st.just("timer"), st.sampled_from(TIMERS))), min_size=1, max_size=3))
        race_ts = race_st
        detach = st.tuples(st.just("detach"), child_finite)
        subcan = st.tuples(st.just("subcan"), child_finite.map(
            lambda p: [x for x in p if x[0] not in ("detach", "race_ts")] + [["can"]]))
    size = (6, 4, 3)[depth]
    if depth == 0:  # (the root: mostly trees, not lone instances)
        step = st.one_of(sub, trysub, all_, race_ts, race_st, detach, subcan, sub, flat)
    else:
        step = st.one_of(flat, flat, sub, sub, trysub, all_, race_ts, race_st, detach, subcan)
    return st.lists(step, min_size=1 if depth == 0 else 0, max_size=size).map(lambda s: json.loads(json.dumps(s)))


def _walk(inst: str, prog: list[Any], rnd: int, out: dict[str, dict[str, Any]], role: str) -> None:
    """Instances with explicit ids: id -> {"prog", "role"} (role: sub | race_ts | race_st | detach)."""
    out.setdefault(inst, {"prog": prog, "role": role})
    for idx, step in enumerate(prog):
        kind = step[0]
        if kind in ("sub", "trysub") and not step[2]:
            _walk(cid(inst, rnd, idx, 0), step[1], 0, out, "sub")
        elif kind == "all":
            for j, leaf in enumerate(step[1]):
                if leaf[0] == "sub" and not leaf[2]:
                    _walk(cid(inst, rnd, idx, j), leaf[1], 0, out, "sub")
        elif kind == "race_ts":
            _walk(cid(inst, rnd, idx, 9), [["hang"]], 0, out, "race_ts")
        elif kind == "race_st":
            _walk(cid(inst, rnd, idx, 0), step[1], 0, out, "race_st")
        elif kind == "detach":
            _walk(cid(inst, rnd, idx, 7), step[1], 0, out, "detach")
        elif kind == "subcan":
            for r in (0, 1):
                _walk(cid(inst, rnd, idx, 0), step[1], r, out, "sub")


def known_instances(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for rnd in range(tree["max_round"] + 1):
        _walk(ROOT, tree["prog"], rnd, out, "root")
    return out


def _size(prog: list[Any]) -> int:
    n = 1
    for step in prog:
        if step[0] in ("sub", "trysub", "race_st", "detach"):
            n += _size(step[1])
        elif step[0] == "subcan":
            n += 2 * _size(step[1])
        elif step[0] == "race_ts":
            n += 1
        elif step[0] == "all":
            n += sum(_size(leaf[1]) for leaf in step[1] if leaf[0] == "sub")
    return n


_cancel_time = st.one_of(st.sampled_from(CANCEL_TIMES), st.integers(0, 40_000))


@st.composite
def trees(draw: Any) -> dict[str, Any]:
    prog = draw(program(0).filter(lambda p: _size(p) <= 12))
    has_can = draw(st.integers(0, 5)) == 0
    if has_can:
        # (detached starts and dropped children of a continue-as-new turn are not dispatched /
        # not cancelled, SPEC §3.9 and §3.8 case 2: kept out, as in test_generated_programs)
        prog = [s for s in prog if s[0] not in ("detach", "race_ts")] + [["can"]]
    tree: dict[str, Any] = {"prog": prog, "acc": draw(st.integers(0, 50)), "round": 0, "max_round": 1 if has_can else 0}
    # The client's cancels of the root: one or two (sometimes none: the tree left alone).
    n_root = draw(st.sampled_from((1, 1, 1, 2, 2, 0)))
    cancels = [[ROOT, f"stop{k}", draw(_cancel_time)] for k in range(n_root)]
    # Sometimes a child cancelled directly (not race_ts losers - that would change which side
    # wins the race - and not detached starts, which must show they are never cancelled).
    targets = sorted(i for i, v in known_instances(tree).items() if v["role"] in ("sub", "race_st"))
    if targets:
        for k in range(draw(st.sampled_from((0, 1, 1, 2, 3)))):
            cancels.append([draw(st.sampled_from(targets)), f"direct{k}", draw(_cancel_time)])
    tree["cancels"] = cancels
    return tree


def _has_wait(prog: list[Any]) -> bool:
    return any(s[0] == "wait" for s in prog)


def make_spec(tree: dict[str, Any], name: str = "gen-cancel") -> SimSpec:
    inp = {k: tree[k] for k in ("prog", "acc", "round", "max_round")}
    signals: list[Signal] = []
    for inst, info in known_instances(tree).items():
        if _has_wait(info["prog"]):
            signals.extend(Signal(instance=inst, name="ev", data={"n": 100}, at_ms=t) for t in EV_AT)
    for inst, reason, at in tree["cancels"]:
        signals.append(Signal(instance=inst, name=reason, at_ms=at, kind="cancel"))
    return SimSpec(name=name, setup=setup, starts=[Start(instance=ROOT, orchestration=NAME, input=inp)],
                   signals=signals, fault_transparent=False)


# ------------------------------------------------------------------------------------------------
# Running and judging
# ------------------------------------------------------------------------------------------------


def run_checked(sim: Simulation) -> tuple[Any, dict[str, list[Any]]]:
    """``run_and_check`` (no fault-free twin: the specs are not fault-transparent), keeping the
    store to look at what is left queued."""
    with quiet_gc():
        run = _Run(sim, sim.plan)
        result = run.execute()
        result.failures = _check(sim, result, None, [])
    queued = run.inner.queued_work() if hasattr(run.inner, "queued_work") else {}
    return result, queued


def _ending(result: Any, inst: str) -> Any:
    st_ = result.statuses.get(inst)
    if st_ is None or st_.status not in ("Completed", "Failed"):
        return None
    return (st_.status, st_.output if st_.status == "Completed" else st_.error)


def _closed(events: list[Any], sched_id: int, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(e, kinds) and e.source_event_id == sched_id for e in events)


def _open_waits(events: list[Any], before: int) -> list[int]:
    """Positional subscriptions still open at event ``before``: not cancelled by an earlier
    breadcrumb and not resolved by an arrival (pairing of SPEC §6.1: an arrival is delivered
    when the name's active subscriptions outnumber the arrivals delivered so far)."""
    subs: dict[str, list[int]] = {}
    cancelled: set[int] = set()
    delivered: dict[str, int] = {}
    for e in events:
        if e.event_id >= before:
            break
        if isinstance(e, ExternalSubscribed):
            subs.setdefault(e.name, []).append(e.event_id)
        elif isinstance(e, ExternalSubscribedCancelled):
            cancelled.add(e.source_event_id)
        elif isinstance(e, ExternalEvent):
            active = [i for i in subs.get(e.name, []) if i not in cancelled]
            if len(active) > delivered.get(e.name, 0):
                delivered[e.name] = delivered.get(e.name, 0) + 1
    out = []
    for name, ids in subs.items():
        active = [i for i in ids if i not in cancelled]
        out.extend(active[delivered.get(name, 0):])
    return sorted(out)


def problems(result: Any, queued: dict[str, list[Any]], tree: dict[str, Any], fault_free: bool) -> list[str]:
    out: list[str] = []
    hist = result.histories
    records = list(_trace_records(result.trace))

    def ending(inst: str) -> Any:
        return _ending(result, inst)

    poisoned = any(s.status == "Failed" and str(s.error).startswith("poison:") for s in result.statuses.values())

    # client cancels, realized: instance -> [(step, reason)] in delivery order
    client: dict[str, list[tuple[int, str]]] = {}
    realized = {(s.instance, s.name) for s in result.realized[1] if s.kind == "cancel"}
    for rec in records:
        if rec.get("op") == "client" and rec.get("what") == "cancel":
            client.setdefault(rec["instance"], []).append((rec["step"], rec["name"]))
    assert {(i, n) for i, v in client.items() for _, n in v} == realized, "every cancel was delivered"
    first_turn: dict[str, int] = {}
    fetches: dict[str, list[int]] = {}
    for rec in records:
        if rec.get("op") == "orch_turn" and rec.get("result") is not None:
            first_turn.setdefault(rec["instance"], rec["step"])
        elif rec.get("op") == "orch_fetch":
            fetches.setdefault(rec["instance"], []).append(rec["step"])

    reasons: dict[str, set[str]] = {i: {r for _, r in v} for i, v in client.items()}
    must_end: dict[str, str] = {}
    must_not_exist: dict[str, str] = {}
    sources: dict[str, list[int]] = {}  # instance -> steps at which a CancelInstance for it was queued
    for inst, v in client.items():
        # (the root's start is queued before any cancel; a child may not exist yet when cancelled
        # directly: its cancel is then parked until it starts, or expires, SPEC §3.12)
        after = [step for step, _ in v if inst == ROOT or (inst in first_turn and step > first_turn[inst])]
        if after:
            must_end[inst] = "cancelled by the client after it started"
            sources.setdefault(inst, []).extend(after)

    def exists(inst: str) -> bool:
        return any(hist.get(inst, {}).values())

    # --- (P1) and the cascade sources, per execution ----------------------------------------------
    for inst, execs in hist.items():
        last = max(execs) if execs else 0
        single = len(execs) == 1
        for exe, events in execs.items():
            if not events:
                continue
            cancels = [e for e in events if isinstance(e, OrchestrationCancelRequested)]
            terms = [e for e in events if isinstance(e, TERMINAL)]
            for e in events:
                if isinstance(e, SubOrchestrationCancelRequested) and e.reason == "dropped_future":
                    sched = next(s for s in events if s.event_id == e.source_event_id)
                    child = child_instance_id(inst, sched.instance)
                    reasons.setdefault(child, set()).add(DROPPED)
                    must_end[child] = f"dropped by its parent {inst}"
                    step = _step_of(result, inst, e.event_id) if single else None
                    if step is not None:
                        sources.setdefault(child, []).append(step)
            if not cancels:
                continue
            where = f"{inst} execution {exe}"
            if len(cancels) > 1:
                out.append(f"{where}: {len(cancels)} OrchestrationCancelRequested events (duplicate cancel not filtered, §3.3)")
            c = cancels[0]
            want_details = ("Application", "Cancelled", c.reason, "")
            if len(terms) != 1 or not isinstance(terms[0], OrchestrationFailed):
                out.append(f"{where}: cancel requested but endings are {[type(t).__name__ for t in terms]} (§3.8: Cancelled wins)")
                continue
            t = terms[0]
            if poisoned and not isinstance(t.details, ApplicationError):
                continue  # (an abort error - a poisoned child or activity - fails the turn before the cancel applies, §3.4)
            got_details = (t.details.category.capitalize(), getattr(t.details, "kind", None),
                           getattr(t.details, "reason", None), getattr(t.details, "message", None))
            if got_details != want_details:
                out.append(f"{where}: ending details {got_details}, expected {want_details} (§3.9 Cancelled)")
            after = [type(e).__name__ for e in events if e.event_id > t.event_id and not isinstance(e, ActivityCancelRequested)]
            if after:
                out.append(f"{where}: events after the cancelled ending: {after}")
            if exe != last:
                out.append(f"{where}: cancelled, yet a later execution exists")
            else:
                st_ = result.statuses.get(inst)
                if st_ is None or (st_.status, st_.error) != ("Failed", f"canceled: {c.reason}"):
                    out.append(f"{inst}: status {None if st_ is None else (st_.status, st_.error)!r}, expected "
                               f"('Failed', 'canceled: {c.reason}') (§11.1)")
            # open positional waits are closed (…Cancelled{orchestration_terminal}) before the ending (§3.9)
            for sub_id in _open_waits(events, t.event_id):
                crumb = next((e for e in events if isinstance(e, ExternalSubscribedCancelled) and e.source_event_id == sub_id), None)
                if crumb is None or crumb.reason != "orchestration_terminal" or crumb.event_id > t.event_id:
                    out.append(f"{where}: open wait {sub_id} closed by {crumb!r:.200} (expected ExternalSubscribedCancelled"
                               "{orchestration_terminal} before the ending, §3.9)")
            for q in events:
                if isinstance(q, QueueSubscribed) and q.name == "nothing" and q.event_id < t.event_id:
                    crumb = next((e for e in events if isinstance(e, QueueSubscriptionCancelled) and e.source_event_id == q.event_id), None)
                    if crumb is None or crumb.event_id > t.event_id or crumb.reason not in ("orchestration_terminal", "dropped_future"):
                        out.append(f"{where}: open queue wait {q.event_id} closed by {crumb!r:.200} (§3.9)")
            # a cancelled turn writes no SubOrchestrationCancelRequested (§3.9 ⚠)
            late = [e.event_id for e in events if isinstance(e, SubOrchestrationCancelRequested) and e.event_id > c.event_id]
            if late:
                out.append(f"{where}: SubOrchestrationCancelRequested {late} written by the cancel turn (§3.9: none)")
            # the parent, if it still waited, hears Err(canceled: r) (§3.9 SubOrchFailed, §7)
            parent, pid = events[0].parent_instance, events[0].parent_id
            pexe = events[0].parent_execution_id or (1 if len(hist.get(parent or "", {})) == 1 else None)
            if parent is not None and pid is not None and pexe is not None and exe == 1:
                pev = [e for e in hist.get(parent, {}).get(pexe, [])
                       if isinstance(e, (SubOrchestrationCompleted, SubOrchestrationFailed)) and e.source_event_id == pid]
                for e in pev:
                    ok = (isinstance(e, SubOrchestrationFailed) and isinstance(e.details, ApplicationError)
                          and e.details.kind == "Cancelled" and e.details.reason == c.reason)
                    if not ok:
                        out.append(f"{inst}: cancelled ({c.reason!r}) but its parent {parent} recorded {e!r:.300}")
            # activities left open get the terminal breadcrumb after the ending (§3.1 step 9, §11.1)
            for s in events:
                if isinstance(s, ActivityScheduled) and not _closed(events, s.event_id, (ActivityCompleted, ActivityFailed)):
                    crumbs = [e for e in events if isinstance(e, ActivityCancelRequested) and e.source_event_id == s.event_id]
                    if not crumbs:
                        out.append(f"{where}: open activity {s.event_id} ({s.name}) got no ActivityCancelRequested")
                    elif crumbs[0].reason not in ("dropped_future", "orchestration_terminal_failed"):
                        out.append(f"{where}: activity {s.event_id} breadcrumb reason {crumbs[0].reason!r}")
            cancel_step = _step_of(result, inst, t.event_id) if single else None
            # (P3) children and detached starts
            for s in events:
                if isinstance(s, SubOrchestrationScheduled):
                    child = child_instance_id(inst, s.instance)
                    if s.event_id > c.event_id:
                        must_not_exist[child] = f"first scheduled in the turn that cancelled {inst}"
                        continue
                    reasons.setdefault(child, set()).add(PARENT_CANCELED)
                    if not _closed(events, s.event_id, (SubOrchestrationCompleted, SubOrchestrationFailed)):
                        must_end[child] = f"outstanding child of the cancelled {inst}"
                        if cancel_step is not None:
                            sources.setdefault(child, []).append(cancel_step)
                elif isinstance(s, OrchestrationChained) and s.event_id > c.event_id:
                    must_not_exist[s.instance] = f"detached start first scheduled in the turn that cancelled {inst} (§3.9 ⚠)"
            # (P4) activities: no fetch of an activity whose row the cancel turn deleted
            if single:
                for s in events:
                    if not isinstance(s, ActivityScheduled):
                        continue
                    fresh = s.event_id > c.event_id
                    crumb = next((e for e in events if isinstance(e, ActivityCancelRequested)
                                  and e.source_event_id == s.event_id and e.event_id > t.event_id), None)
                    if not fresh and (crumb is None or cancel_step is None):
                        continue
                    for rec in records:
                        if (rec.get("op") == "work_fetch" and rec["instance"] == inst and rec["id"] == s.event_id
                                and (fresh or rec["step"] > cancel_step)):
                            what = "first scheduled in the cancel turn" if fresh else f"cancelled at step {cancel_step}"
                            out.append(f"{where}: activity {s.event_id} ({s.name}) {what} was fetched by a worker at "
                                       f"step {rec['step']} (its work item must not exist, §11.2)")
                            break

    # --- reasons, cascade, existence -------------------------------------------------------------
    for inst, execs in hist.items():
        for events in execs.values():
            for c in [e for e in events if isinstance(e, OrchestrationCancelRequested)][:1]:
                if c.reason not in reasons.get(inst, set()):
                    out.append(f"{inst}: cancelled with reason {c.reason!r}, which nobody sent it "
                               f"(sent: {sorted(reasons.get(inst, set()))})")
    for inst, why in must_end.items():
        if poisoned:
            break
        if ending(inst) is None:
            st_ = result.statuses.get(inst)
            out.append(f"{inst}: {why}, but it ended {None if st_ is None else st_.status} (§3.9/§3.10/§11.1 cascade)")
    for inst, why in must_not_exist.items():
        if exists(inst):
            st_ = result.statuses.get(inst)
            out.append(f"{inst}: {why}, but it was started (status {None if st_ is None else st_.status})")

    # --- (P2) executions without a cancel request end as their program says ----------------------
    if not poisoned:
        for inst, execs in hist.items():
            if not execs:
                continue
            last = max(execs)
            for exe, events in execs.items():
                if not events or any(isinstance(e, OrchestrationCancelRequested) for e in events):
                    continue
                started = events[0]
                assert isinstance(started, OrchestrationStarted)
                inp = json.loads(started.input)
                subs = [child_instance_id(inst, e.instance) for e in events if isinstance(e, SubOrchestrationScheduled)]
                try:
                    want = evaluate(inst, inp, subs, ending)
                except _Mismatch as exc:
                    out.append(f"{inst} execution {exe}: {exc}")
                    continue
                terms = [e for e in events if isinstance(e, TERMINAL)]
                if want[0] == "CAN":
                    ok = (exe != last and len(terms) == 1 and isinstance(terms[0], OrchestrationContinuedAsNew)
                          and json.loads(terms[0].input) == want[1])
                    if not ok:
                        out.append(f"{inst} execution {exe}: expected continue-as-new with {want[1]!r:.300}, got "
                                   f"{[(type(t).__name__) for t in terms]}")
                    continue
                if exe != last:
                    out.append(f"{inst} execution {exe}: a later execution exists, but it should end {want[0]}")
                    continue
                st_ = result.statuses.get(inst)
                got = (st_.status, st_.output if st_.status == "Completed" else norm(st_.error)) if st_ else None
                expected = ("Running", None) if want[0] == "Hang" else want
                if got != expected:
                    out.append(f"{inst}: ended {got!r:.400}, expected {expected!r:.400} (no cancel request in its history)")

    # --- custom status: the last value set (§13), also for cancelled instances -------------------
    for inst, execs in hist.items():
        sets = [e.status for exe in sorted(execs) for e in execs[exe] if isinstance(e, CustomStatusUpdated)]
        st_ = result.statuses.get(inst)
        if st_ is not None and sets and st_.custom_status != sets[-1]:
            out.append(f"{inst}: custom status {st_.custom_status!r}, last set {sets[-1]!r} (§13)")

    # --- detached starts dispatched (Continue / Completed / Failed turns, §7) exist ---------------
    if not poisoned:
        for inst, execs in hist.items():
            for events in execs.values():
                c = next((e for e in events if isinstance(e, OrchestrationCancelRequested)), None)
                can = any(isinstance(e, OrchestrationContinuedAsNew) for e in events)
                for e in events:
                    if isinstance(e, OrchestrationChained) and not can and (c is None or e.event_id < c.event_id):
                        if not exists(e.instance):
                            out.append(f"{inst}: detached start {e.instance} (event {e.event_id}) never started")

    # --- detached starts dispatched before any cancel exist and are never cancelled ---------------
    for inst, info in known_instances(tree).items():
        if info["role"] != "detach" or inst in must_not_exist:
            continue
        for execs in hist.get(inst, {}).values():
            if any(isinstance(e, OrchestrationCancelRequested) for e in execs):
                out.append(f"detached {inst} was cancelled (a detached start has no parent link, §7)")

    # --- (P4) nothing left queued for a terminal instance -----------------------------------------
    if result.quiescent:
        for inst, items in queued.items():
            if not exists(inst):
                continue  # (a parked message for an instance that never started, §3.12)
            if result.statuses[inst].status == "Running" and all(getattr(i, "tag", None) == "nobody" for i in items):
                continue  # (waits on an activity nobody serves: hangact)
            kinds = [type(i).__name__ for i in items]
            out.append(f"{inst} ({result.statuses[inst].status}): items left queued after the run went quiet: {kinds}")

    # --- (P5) fault-free: prompt cancels, first cancel wins ---------------------------------------
    if fault_free:
        for inst, steps in sources.items():
            execs = hist.get(inst, {})
            if len(execs) != 1 or not steps:
                continue
            events = execs[1]
            term = next((e for e in events if isinstance(e, TERMINAL)), None)
            if term is None or any(isinstance(e, OrchestrationCancelRequested) for e in events):
                continue
            tstep = _step_of(result, inst, term.event_id)
            fetch = max((f for f in fetches.get(inst, []) if tstep is not None and f < tstep), default=None)
            if fetch is not None and fetch > min(steps):
                out.append(f"{inst}: a CancelInstance was queued for it at step {min(steps)}, yet its turn fetched at "
                           f"step {fetch} ended it {type(term).__name__} without the cancel (§3.3, §11.1)")
        if ROOT in client:
            got = [e.reason for ev in hist.get(ROOT, {}).values() for e in ev if isinstance(e, OrchestrationCancelRequested)]
            first = client[ROOT][0][1]
            if got and got[0] != first:
                out.append(f"{ROOT}: cancelled with {got[0]!r}, but {first!r} was delivered first (§3.3: first wins)")
    return out


SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def _expected_failure(f: Any, result: Any) -> bool:
    """The liveness checker's verdict on an instance left waiting for good on an activity no
    worker serves (``hangact``: tag ``nobody``): what that step is for."""
    m = re.match(r"stuck: ActivityScheduled id (\d+) ", f.message)
    if f.checker != "liveness" or m is None or f.instance not in result.histories:
        return False
    execs = result.histories[f.instance]
    return any(isinstance(e, ActivityScheduled) and e.event_id == int(m.group(1)) and e.tag == "nobody"
               for e in execs[max(execs)])


def _judge(tree: dict[str, Any], seed: int, plan: Any, nodes: int, provider: str = "memory") -> None:
    sim = Simulation(make_spec(tree), seed, plan, provider=provider, nodes=nodes)
    result, queued = run_checked(sim)
    real = [f for f in result.failures if not _expected_failure(f, result)]
    assert not real, real[0].render()
    probs = problems(result, queued, tree, fault_free=plan is None)
    label = plan if plan is None or isinstance(plan, str) else plan.to_json()
    assert not probs, (seed, label, nodes, provider, probs)


# ------------------------------------------------------------------------------------------------
# The probes
# ------------------------------------------------------------------------------------------------


@settings(max_examples=2000, **SETTINGS)
@given(tree=trees(), seed=st.integers(0, 10_000), nodes=st.integers(1, 2))
def test_cancelled_trees_fault_free(tree: dict[str, Any], seed: int, nodes: int) -> None:
    _judge(tree, seed, None, nodes)


@settings(max_examples=2500, **SETTINGS)
@given(tree=trees(), seed=st.integers(0, 10_000), nodes=st.integers(1, 2), swarm=st.booleans())
def test_cancelled_trees_under_faults(tree: dict[str, Any], seed: int, nodes: int, swarm: bool) -> None:
    _judge(tree, seed, "swarm" if swarm else FaultPlan.all(0.05), nodes)


@settings(max_examples=250, **SETTINGS)
@given(tree=trees(), seed=st.integers(0, 10_000))
def test_cancelled_trees_on_sqlite(tree: dict[str, Any], seed: int) -> None:
    _judge(tree, seed, "swarm", 2, "sqlite")


@settings(max_examples=150, **SETTINGS)
@given(tree=trees(), seed=st.integers(0, 10_000))
def test_same_seed_gives_identical_trace(tree: dict[str, Any], seed: int) -> None:
    spec = make_spec(tree)
    one = Simulation(spec, seed, "swarm").run()
    two = Simulation(spec, seed, "swarm").run()
    assert one.trace_hash == two.trace_hash


# ------------------------------------------------------------------------------------------------
# Bugs the probe found (each failed before its fix)
# ------------------------------------------------------------------------------------------------


def test_late_messages_of_a_cancelled_instance_are_discarded_not_poisoned() -> None:
    """A message for an instance that is already cancelled (here a raised event; in the probe it
    was the ``SubOrchFailed`` of the cascaded child) that gets delivered more than
    ``max_attempts`` times - crashes / lock expiries while it is held, simulated below with
    plain abandons - must not take the poison path (SPEC §3.1 step 1, §10.2): it appended
    ``OrchestrationFailed{Poison}`` after the cancelled ending, a second terminal event.

    Expected (SPEC §3.12 "Anything for a Completed/Failed instance → discarded without
    history"; §11.1 a cancel's outcome is ``Failed`` / ``canceled: {reason}``; §2.2 / the
    harness's well-formedness invariant: one terminal event): the message is discarded, the
    history keeps its one ending and the status stays ``canceled: stop``.
    Before the fix: history ``…, OrchestrationFailed{Cancelled}, OrchestrationFailed{Poison}``
    and the status became ``poison: orchestration w exceeded 11 attempts (max 10)``.
    (Cause: ``OrchestrationDispatcher.process`` checks ``attempt_count > max_attempts`` and
    commits ``poison_turn`` before anything looks at whether the execution already ended;
    ``poison_turn`` appends after any history. SPEC §3.1 lists the poison check as step 1,
    before step 3's "terminal → ack with no changes", without saying what happens to a
    terminal history: ambiguous in the SPEC, but §3.12 and the single-ending invariant say
    discard.) Found by ``test_cancelled_trees_under_faults`` (swarm: crash + lock_expiry)."""
    from duroxide_sim import InMemoryProvider
    from duroxide_sim.runtime.client import Client
    from duroxide_sim.runtime.options import RuntimeOptions
    from duroxide_sim.runtime.runtime import Runtime
    from duroxide_sim.sim.clock import DEFAULT_EPOCH_MS, SimClock

    clock = SimClock(DEFAULT_EPOCH_MS)
    provider = InMemoryProvider(clock)
    rt = Runtime(provider, RuntimeOptions(), clock=clock)

    def waits(ctx: Any, _inp: Any) -> Any:
        yield ctx.wait_for_event("never")

    rt.register_orchestration("W", waits)
    client = Client(provider, clock=clock, sleep=lambda ms: None)
    disp = rt.orchestration_dispatcher
    client.start_orchestration("w", "W", None)
    disp.process(disp.fetch())
    client.cancel_instance("w", "stop")
    disp.process(disp.fetch())
    assert (client.get_status("w").status, client.get_status("w").error) == ("Failed", "canceled: stop")

    client.raise_event("w", "late", None)  # a late message for the ended instance
    for _ in range(RuntimeOptions().max_attempts):  # delivered, then lost (crash / lock expiry)
        item = provider.fetch_orchestration_item(5_000, 0)
        provider.abandon_orchestration_item(item.lock_token, None, False)
    disp.process(disp.fetch())

    endings = [type(e).__name__ for e in provider.read_with_execution("w", 1) if isinstance(e, TERMINAL)]
    status = client.get_status("w")
    assert (status.status, status.error, endings) == ("Failed", "canceled: stop", ["OrchestrationFailed"])
