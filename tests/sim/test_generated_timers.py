"""Generative probe of timers, ``utc_now`` / ``new_guid`` system calls and retry back-off in
virtual time (SPEC §5, §4, §9, §8).

A program is a list of steps run by one generator orchestration (``TProg``). Every step is
bracketed by ``utc_now()`` calls, so in each execution's history the ``utc_now`` activity
schedules split the other schedules into one *segment* per step; the checks read the program's
log (its output) and the history side by side:

* timers: ``TimerCreated.fire_at_ms = timestamp_ms + delay`` (the turn's now, SPEC §5);
  ``TimerFired`` never processed before ``fire_at_ms``; after a timer of ``d`` ms (or ``all`` of
  timers) the next ``utc_now`` is at least the previous one + ``d`` (max d);
* ``utc_now`` monotone (within an execution and across continue-as-new), values equal to the
  recorded ``ActivityCompleted`` results (replay-stable);
* ``new_guid``: 36 chars, UUID-shaped, unique per instance, equal to the recorded result;
* races (timer/timer incl. ties, timer/activity (succeeding or failing), timer/external event
  raised at a drawn virtual time): the winner is the child whose completion is first in history
  (SPEC §4); a losing activity/wait that never completed got its cancel breadcrumb; fault-free,
  unequal timers: the shorter wins; a retried activity raced against a timer (fault-free: it wins
  iff its back-off total is below the timer's delay);
* retry (SPEC §9; RetryPolicy and §17's dict form, checked against delays computed from the
  SPEC text, not the library's Backoff): one ActivityScheduled per attempt, a deadline TimerCreated per attempt with a
  timeout, a back-off TimerCreated of exactly ``Backoff.delay_ms(n)`` after failure *n* when
  non-zero, the last error unchanged / ``timeout: activity timed out`` (never retried);
  fault-free: attempts = min(failures + 1, max_attempts) and the virtual time spent is at least
  the sum of the back-offs; a timed-out attempt is cancelled;
* continue-as-new between timers; ``run_and_check``'s checkers pass under FaultPlan.all(0.05)
  and "swarm" on 1-2 nodes (memory) and FaultPlan.all(0.05) on SQLite (an activity poisoned by
  a fault storm is accepted, SPEC §10.2); the same seed gives the same trace.

No bug was found; no ``test_bug_*`` test exists.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim.core.context import RetryPolicy
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start

from ._drive import backoff

DAY = 86_400_000
UTC = "__duroxide_syscall:utc_now_ms"
GUID = "__duroxide_syscall:new_guid"
TIMEOUT_ERR = "timeout: activity timed out"
GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# ------------------------------------------------------------------------------------------------
# Activities and the program interpreter
# ------------------------------------------------------------------------------------------------


def _flaky(world: Any) -> Any:
    """Fails the first ``f`` attempts of retry step ``k``: an attempt's rank is the position of its
    activity id among the distinct ids seen for (instance, execution, k), so a duplicate
    execution of one attempt (lock expiry under faults) does not count twice."""

    def flaky(ctx: Any, inp: dict[str, Any]) -> Any:
        seen = world.__dict__.setdefault("_timer_probe_ids", {})
        ids = seen.setdefault((ctx.instance_id, ctx.execution_id, inp["k"]), set())
        ids.add(ctx.activity_id)
        rank = sorted(ids).index(ctx.activity_id) + 1
        if rank <= inp["f"]:
            raise ValueError(f"fail {rank}")
        return {"k": inp["k"], "rank": rank}

    return flaky


def flaky_error(rank: int) -> str:
    return f"Activity 'Flaky' call failed: ValueError: fail {rank}"


def policy_of(spec: Any) -> RetryPolicy:
    if isinstance(spec, dict):  # duroxide-python's dict form (SPEC §17)
        return RetryPolicy.from_dict(spec)
    attempts, kind, base, mult, mx, timeout = spec
    b = backoff(kind, base, mult, mx)
    return RetryPolicy(attempts, b, timeout)


def ref_policy(spec: Any) -> tuple[int, Any, int | None]:
    """(max_attempts, delay(n), timeout) straight from the SPEC text (§9; dict form §17)."""
    if isinstance(spec, dict):
        attempts = spec.get("max_attempts", spec.get("maxAttempts", 3))
        timeout = spec.get("total_timeout_ms", spec.get("timeout_ms"))
        b = spec.get("backoff")
        if b is None or b == "exponential":
            kind, base, mult, mx = "exponential", 100, 2.0, 30_000
        elif b == "fixed":
            kind, base, mult, mx = "fixed", 1_000, 1.0, 1_000
        else:
            kind, base, mult, mx = "linear", 100, 1.0, 30_000
    else:
        attempts, kind, base, mult, mx, timeout = spec

    def delay(n: int) -> int:
        if kind == "none":
            return 0
        if kind == "fixed":
            return base
        if kind == "linear":
            return min(base * n, mx)
        return int(min(base * mult ** (n - 1), mx))

    return attempts, delay, timeout


def tprog(ctx: Any, inp: dict[str, Any]) -> Any:
    prog, rnd, log = inp["prog"], inp["round"], list(inp["log"])
    t = yield ctx.utc_now()
    log.append(["start", rnd, t])
    for idx in range(inp["pos"], len(prog)):
        step = prog[idx]
        kind = step[0]
        entry: list[Any] = [kind, idx]
        if kind == "timer":
            yield ctx.schedule_timer(step[1])
        elif kind == "all_t":
            res = yield ctx.all([ctx.schedule_timer(d) for d in step[1]])
            entry.append(res)
        elif kind == "guid":
            entry.append((yield ctx.new_guid()))
        elif kind == "race_tt":
            r = yield ctx.race(ctx.schedule_timer(step[1]), ctx.schedule_timer(step[2]))
            entry += [r["index"], r["value"]]
        elif kind == "race_ta":
            act = ctx.schedule_activity("Echo", step[2]) if step[2] >= 0 else \
                ctx.schedule_activity("Flaky", {"k": f"{rnd}_{idx}", "f": 1})
            r = yield ctx.race(ctx.schedule_timer(step[1]), act)
            entry += [r["index"], r["value"]]
        elif kind == "race_te":
            r = yield ctx.race(ctx.schedule_timer(step[1]), ctx.wait_for_event(f"e{rnd}_{idx}"))
            entry += [r["index"], r["value"]]
        elif kind == "retry":
            try:
                v = yield ctx.schedule_activity_with_retry(
                    "Flaky", {"k": f"{rnd}_{idx}", "f": step[1]},
                    step[2] if isinstance(step[2], dict) else policy_of(step[2]))
                entry += ["ok", v]
            except Exception as exc:  # noqa: BLE001
                entry += ["err", str(exc)]
        elif kind == "race_rt":  # a retried activity (no timeout) against a timer
            retry = ctx.schedule_activity_with_retry("Flaky", {"k": f"{rnd}_{idx}", "f": step[1]}, policy_of(step[2]))
            r = yield ctx.race(retry, ctx.schedule_timer(step[3]))
            entry += [r["index"], r["value"]]
        elif kind == "can":
            if rnd < inp["max_round"]:
                log.append(entry + ["cont"])
                yield ctx.continue_as_new({**inp, "round": rnd + 1, "log": log, "pos": idx + 1})
            entry.append("last")
        else:
            raise AssertionError(step)
        t = yield ctx.utc_now()
        entry.append(t)
        log.append(entry)
    return {"log": log}


def setup(rt: Any, world: Any) -> None:
    rt.register_activity("Echo", lambda ctx, x: x)
    rt.register_activity("Flaky", _flaky(world))
    rt.register_orchestration("TProg", tprog)


# ------------------------------------------------------------------------------------------------
# Strategy
# ------------------------------------------------------------------------------------------------

SMALL = (0, 0, 1, 2, 7, 100, 1_000, 60_000)
BIG = (3_600_000, DAY, 2 * DAY)


def delays(big: bool) -> Any:
    return st.sampled_from(SMALL + (BIG if big else ()))


def retry_dict() -> Any:
    return st.fixed_dictionaries({}, optional={
        "max_attempts": st.integers(1, 4),
        "backoff": st.sampled_from(("exponential", "fixed", "linear", "other")),
        "timeout_ms": st.sampled_from((DAY, 50)),
        "total_timeout_ms": st.sampled_from((DAY, 1)),
    })


def retry_spec() -> Any:
    return st.tuples(
        st.integers(1, 4),  # max_attempts
        st.sampled_from(("none", "fixed", "linear", "exponential")),
        st.sampled_from((0, 1, 50, 1_000, 40_000)),  # base
        st.sampled_from((1.0, 1.5, 2.0, 3.0)),  # multiplier
        st.sampled_from((0, 100, 2_000, 30_000)),  # max
        st.sampled_from((None, None, DAY, 1, 50)),  # per-attempt timeout
    ).map(list)


def step_strategy(big: bool = True) -> Any:
    d = delays(big)
    return st.one_of(
        st.tuples(st.just("timer"), d),
        st.tuples(st.just("all_t"), st.lists(d, min_size=1, max_size=3)),
        st.tuples(st.just("guid")),
        st.tuples(st.just("race_tt"), d, d),
        st.tuples(st.just("race_tt"), st.sampled_from(SMALL), st.sampled_from(SMALL)),
        st.tuples(st.just("race_ta"), st.sampled_from((0, 1, 5, 1_000, DAY)), st.integers(-1, 99)),
        st.tuples(st.just("race_te"), st.sampled_from((0, 5, 1_000, 60_000, DAY)),
                  st.sampled_from((1, 3, 500, 2_000, 30_000, 200_000))),
        st.tuples(st.just("retry"), st.integers(0, 4), retry_spec()),
        st.tuples(st.just("retry"), st.integers(0, 4), retry_dict()),
        st.tuples(st.just("race_rt"), st.integers(0, 4),
                  retry_spec().map(lambda s: [*s[:5], None]), st.sampled_from((0, 1, 50, 100, 1_000, 5_000, DAY))),
        st.tuples(st.just("can")),
    ).map(list)


@st.composite
def programs(draw: Any, big: bool = True) -> dict[str, Any]:
    steps = draw(st.lists(step_strategy(big), max_size=7))
    out, n_can = [], 0
    for s in steps:
        if s[0] == "can":
            n_can += 1
            if n_can > 2:
                continue
        out.append(s)
    return {"prog": out, "round": 0, "max_round": draw(st.integers(0, 2)) if n_can else 0, "pos": 0, "log": []}


def make_spec(inp: dict[str, Any], name: str = "gen-timers") -> SimSpec:
    signals = []
    for rnd in range(inp["max_round"] + 1):
        for idx, s in enumerate(inp["prog"]):
            if s[0] == "race_te":  # raised at a drawn virtual time (ms from the start)
                signals.append(Signal(instance="t", name=f"e{rnd}_{idx}", data={"ev": idx}, at_ms=s[2] + rnd))
    return SimSpec(name=name, setup=setup, starts=[Start(instance="t", orchestration="TProg", input=inp)],
                   signals=signals, fault_transparent=False, horizon_ms=90 * DAY)


# ------------------------------------------------------------------------------------------------
# History analysis
# ------------------------------------------------------------------------------------------------

SCHEDULES = ("ActivityScheduled", "TimerCreated", "ExternalSubscribed", "SubOrchestrationScheduled",
             "QueueSubscribed", "OrchestrationChained")


def _k(e: Any) -> str:
    return type(e).__name__


class ExecView:
    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.pos = {e.event_id: i for i, e in enumerate(events)}
        self.first_completion: dict[int, tuple[int, Any]] = {}
        for i, e in enumerate(events):
            sid = getattr(e, "source_event_id", None)
            if sid is not None and _k(e) in ("ActivityCompleted", "ActivityFailed", "TimerFired"):
                self.first_completion.setdefault(sid, (i, e))
        self.schedules = [e for e in events if _k(e) in SCHEDULES]

    def segments(self) -> list[list[Any]]:
        """Schedules between consecutive utc_now schedules (the first utc_now opens the run)."""
        segs: list[list[Any]] = []
        cur: list[Any] | None = None
        for e in self.schedules:
            if _k(e) == "ActivityScheduled" and e.name == UTC:
                if cur is not None:
                    segs.append(cur)
                cur = []
            else:
                assert cur is not None, ("schedule before the first utc_now", e)
                cur.append(e)
        if cur:
            segs.append(cur)
        return segs

    def utc_results(self) -> list[int]:
        out = []
        for e in self.schedules:
            if _k(e) == "ActivityScheduled" and e.name == UTC and e.event_id in self.first_completion:
                c = self.first_completion[e.event_id][1]
                out.append(int(json.loads(c.result)) if _k(c) == "ActivityCompleted" else None)
        return out

    def cancelled(self, sched: Any) -> bool:
        return any(getattr(e, "source_event_id", None) == sched.event_id
                   and _k(e) in ("ActivityCancelRequested", "ExternalSubscribedCancelled") for e in self.events)

    def completion_pos(self, sched: Any) -> int | None:
        if _k(sched) == "ExternalSubscribed":
            for i in range(self.pos[sched.event_id] + 1, len(self.events)):
                e = self.events[i]
                if _k(e) == "ExternalEvent" and e.name == sched.name:
                    return i
            return None
        c = self.first_completion.get(sched.event_id)
        return None if c is None else c[0]


def check_run(result: Any, inp: dict[str, Any], fault_free: bool) -> list[str]:
    """Every property above, for instance ``t``; returns the problems found."""
    p: list[str] = []
    st_ = result.statuses.get("t")
    if not fault_free and st_ is not None and st_.status == "Failed" and (st_.error or "").startswith("poison:"):
        return []  # a fault storm (lock expiries, failing acks) can poison an activity: SPEC §10.2
    if st_ is None or st_.status != "Completed":
        return [f"status {None if st_ is None else (st_.status, st_.error)!r:.800}"]
    log = st_.output["log"]
    prog = inp["prog"]
    execs = result.histories["t"]
    # -- every timer: fire_at = now + delay; fired at or after fire_at --------------------------
    for ex, events in execs.items():
        created = {e.event_id: e for e in events if _k(e) == "TimerCreated"}
        for e in events:
            if _k(e) == "TimerFired":
                c = created.get(e.source_event_id)
                if c is None or c.fire_at_ms != e.fire_at_ms:
                    p.append(f"exec {ex}: TimerFired {e} without its TimerCreated {c}")
                elif e.timestamp_ms < e.fire_at_ms:
                    p.append(f"exec {ex}: TimerFired processed at {e.timestamp_ms} < fire_at {e.fire_at_ms}")
    # -- split the log per execution -----------------------------------------------------------
    per_exec: list[list[Any]] = []
    for entry in log:
        if entry[0] == "start":
            per_exec.append([entry])
        else:
            per_exec[-1].append(entry)
    if sorted(execs) != list(range(1, len(per_exec) + 1)):
        return p + [f"executions {sorted(execs)} vs log runs {len(per_exec)}"]
    # -- utc_now monotone overall ---------------------------------------------------------------
    times = [e[-1] for e in log if e[-1] != "cont"]
    if times != sorted(times):
        p.append(f"utc_now not monotone: {times}")
    guids = [e[2] for e in log if e[0] == "guid"]
    if len(set(guids)) != len(guids):
        p.append(f"duplicate guids {guids}")
    for g in guids:
        if not (isinstance(g, str) and len(g) == 36 and GUID_RE.match(g)):
            p.append(f"guid shape {g!r}")
    for ex, run in enumerate(per_exec, start=1):
        view = ExecView(execs[ex])
        utc = view.utc_results()
        run_times = [e[-1] for e in run if e[-1] != "cont"]
        if utc[: len(run_times)] != run_times:
            p.append(f"exec {ex}: utc_now log {run_times} vs history {utc}")
        segs = view.segments()
        steps = run[1:]
        if steps and steps[-1][-1] == "cont":
            steps = steps[:-1]  # the continuing step: no closing utc_now in this execution
        if len(segs) < len(steps):
            p.append(f"exec {ex}: {len(segs)} segments for {len(steps)} steps")
            continue
        prev_t = run[0][-1]
        for entry, seg in zip(steps, segs, strict=False):
            p += check_step(entry, prog[entry[1]], seg, view, prev_t, fault_free, ex)
            prev_t = entry[-1]
    return p


def _dec(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _delay(tc: Any) -> int:
    return tc.fire_at_ms - tc.timestamp_ms


def check_step(entry: list[Any], step: list[Any], seg: list[Any], view: ExecView, t0: int,
               fault_free: bool, ex: int) -> list[str]:
    p: list[str] = []
    kind, t1 = step[0], entry[-1]
    where = f"exec {ex} step {entry[1]} {step}"
    kinds = [(_k(e), getattr(e, "name", None)) for e in seg]
    if kind == "timer":
        if len(seg) != 1 or _k(seg[0]) != "TimerCreated" or _delay(seg[0]) != step[1]:
            p.append(f"{where}: segment {seg}")
        if t1 - t0 < step[1]:
            p.append(f"{where}: utc_now went {t0} -> {t1}, less than the timer's {step[1]} ms")
    elif kind == "all_t":
        if [_delay(e) for e in seg] != step[1]:
            p.append(f"{where}: timer delays {[_delay(e) for e in seg]}")
        if entry[2] != [{"ok": None}] * len(step[1]):
            p.append(f"{where}: all result {entry[2]}")
        if t1 - t0 < max(step[1]):
            p.append(f"{where}: utc_now went {t0} -> {t1}, less than max {max(step[1])} ms")
    elif kind == "guid":
        c = view.first_completion.get(seg[0].event_id) if seg else None
        if kinds != [("ActivityScheduled", GUID)] or c is None or _dec(c[1].result) != entry[2]:
            p.append(f"{where}: guid {entry[2]} vs history {seg} {c}")
    elif kind in ("race_tt", "race_ta", "race_te"):
        if len(seg) != 2:
            return [f"{where}: segment {seg}"]
        idx, value = entry[2], entry[3]
        pa, pb = view.completion_pos(seg[0]), view.completion_pos(seg[1])
        first = 0 if pb is None or (pa is not None and pa < pb) else 1
        if pa is None and pb is None:
            p.append(f"{where}: no completion in history for either child")
        elif idx != first:
            p.append(f"{where}: winner {idx} but first completion in history is child {first} "
                     f"(positions {pa}, {pb})")
        if _delay(seg[0]) != step[1]:
            p.append(f"{where}: first timer delay {_delay(seg[0])}")
        if kind != "race_tt" and idx == 0 and pb is None and not view.cancelled(seg[1]):
            p.append(f"{where}: the losing {_k(seg[1])} got no cancel breadcrumb (SPEC §4, §3.10)")
        if kind == "race_tt":
            if _delay(seg[1]) != step[2]:
                p.append(f"{where}: second timer delay {_delay(seg[1])}")
            if value is not None:
                p.append(f"{where}: timer winner value {value!r}")
            win_d = step[1 + idx]
            if t1 - t0 < min(step[1], step[2]):
                p.append(f"{where}: utc_now {t0} -> {t1} before the first timer could fire")
            if fault_free and step[1] != step[2] and win_d != min(step[1], step[2]):
                p.append(f"{where}: fault-free, the {win_d} ms timer beat the shorter one")
        elif idx == 0:
            if value is not None or t1 - t0 < step[1]:
                p.append(f"{where}: timer won with {value!r}, {t0} -> {t1}")
        elif kind == "race_ta" and value != (step[2] if step[2] >= 0 else flaky_error(1)):
            p.append(f"{where}: activity winner value {value!r}")
        elif kind == "race_te" and value != {"ev": entry[1]}:
            p.append(f"{where}: event winner value {value!r}")
    elif kind == "race_rt":
        p += check_race_rt(entry, step, t0, fault_free, where)
    elif kind == "retry":
        p += check_retry(entry, step, seg, view, t0, fault_free, where)
    elif kind == "can":
        if seg:
            p.append(f"{where}: schedules {seg}")
    return p


def check_race_rt(entry: list[Any], step: list[Any], t0: int, fault_free: bool, where: str) -> list[str]:
    fails, pol, d = step[1], policy_of(step[2]), step[3]
    idx, value, t1 = entry[2], entry[3], entry[-1]
    p = []
    if idx == 1 and (value is not None or t1 - t0 < d):
        p.append(f"{where}: timer won with {value!r}, utc_now {t0} -> {t1}")
    if not fault_free:
        return p
    attempts = min(fails + 1, pol.max_attempts)
    spent = sum(ref_policy(step[2])[1](n) for n in range(1, attempts))
    if fails < pol.max_attempts:
        exp_value: Any = {"k": f"{json.loads(json.dumps(entry[1]))}", "rank": fails + 1}
    else:
        exp_value = flaky_error(pol.max_attempts)
    if spent < d and (idx != 0 or (isinstance(value, dict) and value.get("rank") != fails + 1)
                      or (isinstance(value, str) and value != exp_value)):
        p.append(f"{where}: fault-free, the retry ends after {spent} ms < timer {d} ms but got {idx}, {value!r}")
    if spent > d and idx != 1:
        p.append(f"{where}: fault-free, the retry needs {spent} ms > timer {d} ms but got {idx}, {value!r}")
    return p


def check_retry(entry: list[Any], step: list[Any], seg: list[Any], view: ExecView, t0: int,
                fault_free: bool, where: str) -> list[str]:
    fails, spec = step[1], step[2]
    max_attempts, ref_delay, ref_timeout = ref_policy(spec)
    pol = policy_of(spec)
    p: list[str] = []
    if (pol.max_attempts, pol.timeout_ms) != (max_attempts, ref_timeout):
        p.append(f"{where}: policy {pol} vs SPEC attempts={max_attempts} timeout={ref_timeout}")
    i, attempts, backoff_total = 0, 0, 0
    outcome: tuple[str, Any] | None = None
    while i < len(seg):
        act = seg[i]
        if _k(act) != "ActivityScheduled" or act.name != "Flaky":
            return p + [f"{where}: expected attempt at {i}: {seg}"]
        attempts += 1
        i += 1
        pa = view.completion_pos(act)
        timed_out = False
        if pol.timeout_ms is not None:
            if i >= len(seg) or _k(seg[i]) != "TimerCreated" or _delay(seg[i]) != pol.timeout_ms:
                return p + [f"{where}: attempt {attempts} has no deadline timer of {pol.timeout_ms}: {seg}"]
            pt = view.completion_pos(seg[i])
            i += 1
            timed_out = pt is not None and (pa is None or pt < pa)
        if timed_out:
            outcome = ("err", TIMEOUT_ERR)
            if pa is None and not view.cancelled(act):
                p.append(f"{where}: timed-out attempt {attempts} was not cancelled (SPEC §9)")
            break
        if pa is None:
            return p + [f"{where}: attempt {attempts} never completed"]
        c = view.events[pa]
        if _k(c) == "ActivityCompleted":
            outcome = ("ok", json.loads(c.result))
            break
        err = c.details.message if hasattr(c.details, "message") else str(c.details)
        outcome = ("err", err)
        if attempts < pol.max_attempts:
            d = ref_delay(attempts)
            backoff_total += d
            if d > 0:
                if i >= len(seg) or _k(seg[i]) != "TimerCreated" or _delay(seg[i]) != d:
                    return p + [f"{where}: after failure {attempts} expected a back-off timer of {d} ms: {seg[i:]}"]
                i += 1
    if i != len(seg):
        p.append(f"{where}: extra schedules after the outcome: {seg[i:]}")
    if outcome is None:
        return p + [f"{where}: no attempts"]
    got = (entry[2], entry[3])
    if outcome[0] == "err":
        if got[0] != "err" or got[1] != outcome[1]:
            p.append(f"{where}: result {got!r} vs history {outcome!r}")
        if outcome[1] != TIMEOUT_ERR and attempts != pol.max_attempts:
            p.append(f"{where}: gave up after {attempts} of {pol.max_attempts} attempts")
    elif got != outcome:
        p.append(f"{where}: result {got!r} vs history {outcome!r}")
    if entry[-1] - t0 < backoff_total:
        p.append(f"{where}: utc_now {t0} -> {entry[-1]} less than the back-off total {backoff_total}")
    if fault_free and (pol.timeout_ms is None or pol.timeout_ms == DAY):
        exp_attempts = min(fails + 1, pol.max_attempts)
        exp = ("ok", {"k": json.loads(seg[0].input)["k"], "rank": fails + 1}) if fails < pol.max_attempts \
            else ("err", flaky_error(pol.max_attempts))
        if attempts != exp_attempts or got != exp:
            p.append(f"{where}: fault-free attempts {attempts}, result {got!r}; expected {exp_attempts}, {exp!r}")
    return p


# ------------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------------

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@settings(max_examples=700, **SETTINGS)
@given(inp=programs())
def test_fault_free_timers_syscalls_and_retry(inp: dict[str, Any]) -> None:
    for nodes in (1, 2):
        result = run_and_check(Simulation(make_spec(inp), 0, None, nodes=nodes))
        assert result.ok, result.failures[0].render()
        problems = check_run(result, inp, fault_free=True)
        assert not problems, problems


@settings(max_examples=250, **SETTINGS)
@given(inp=programs(), seed=st.integers(0, 10_000))
def test_faulty_timers_syscalls_and_retry(inp: dict[str, Any], seed: int) -> None:
    spec = make_spec(inp)
    runs = ((seed, FaultPlan.all(0.05), 2, "memory"), (seed + 1, "swarm", 1, "memory"), (seed + 2, "swarm", 2, "memory"),
            (seed + 3, FaultPlan.all(0.05), 1, "sqlite"))
    for s, plan, nodes, provider in runs:
        result = run_and_check(Simulation(spec, s, plan, nodes=nodes, provider=provider))
        assert result.ok, result.failures[0].render()
        if "t" in result.budget_exhausted:
            continue
        problems = check_run(result, inp, fault_free=False)
        assert not problems, (s, plan if isinstance(plan, str) else plan.to_json(), problems)


@settings(max_examples=60, **SETTINGS)
@given(inp=programs(), seed=st.integers(0, 10_000))
def test_same_seed_same_trace(inp: dict[str, Any], seed: int) -> None:
    spec = make_spec(inp)
    one = Simulation(spec, seed, "swarm").run()
    two = Simulation(spec, seed, "swarm").run()
    assert one.trace_hash == two.trace_hash
    assert one.statuses["t"].output == two.statuses["t"].output
