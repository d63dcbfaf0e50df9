"""Generative probe of activity retry policies (SPEC §9; the dict form of §17; errors §10; turns §3;
simulation hooks §18), compared with a small pure reference model written from the SPEC text.

What is generated
-----------------
A *program* is JSON data: 1-3 steps run in order by one interpreter, as a generator
orchestration (instance ``g``) and as an ``async def`` one (instance ``a``). A step is

* ``one``: ``yield ctx.schedule_activity_with_retry(...)`` with the error caught;
* ``bare``: the same uncaught (last step only: an exhausted retry fails the instance);
* ``all``: ``ctx.all([retry, retry])``;
* ``race``: ``ctx.race(retry, retry | timer)`` (exactly two tasks, SPEC §17).

Each retry task has a **policy** - a ``RetryPolicy`` object (``Backoff.none/fixed/linear/
exponential`` with any base, multiplier, cap, a per-attempt timeout given as an argument or by
``with_timeout`` / ``with_total_timeout``) or a retry dict (``max_attempts``/``maxAttempts``,
``timeout_ms``/``timeoutMs``, ``total_timeout_ms``/``totalTimeoutMs``, ``backoff`` strings) - an
**API** (plain, ``..._on_session``, ``_typed`` with an attrs result, typed on session, a retry
task tagged with ``.with_tag``, which workers accepting the tag run) and a
**behaviour**: the activity ``Flaky`` fails its first ``f`` attempts with an application error
(an attempt's rank is the position of its schedule id among the ids run for that task, so a
re-delivered attempt answers the same) and then succeeds; or the task calls ``Hang``, an activity
no process registers, so an attempt is never run (abandoned with the unregistered back-off,
SPEC §10.2): with a per-attempt timeout it times out, without one it is poisoned after
``max_attempts`` deliveries (about 303 s of virtual time). Activities take no virtual time in the
simulator (``sim/vloop.py``: an activity's own time does not move the simulation's clock), so a
*slow* attempt is made with a scripted ``crash_after_effect`` fault at that attempt's execution:
its result is lost and the attempt is run again when its lease expires, a worker lock timeout
(30 s) later.

The reference model (``spec_*`` / ``model_*`` below, from SPEC §9/§17 only) predicts, per task:
the outcome (the result, the last error unchanged, ``timeout: activity timed out``, or a poison),
the attempts scheduled (``ActivityScheduled`` events), each back-off delay (``TimerCreated.fire_at``
minus the time of the ``ActivityFailed`` it follows; zero delays create no timer), a deadline
timer of exactly ``timeout`` per attempt, and the virtual time at which the task ends - which
decides a race (ties allow either winner; a loser's attempts are those started before the
winner ended).

Properties
----------
(a) fault-free simulation = model (outputs, error texts, attempts, back-off and deadline delays,
    next attempt exactly at the back-off's fire time, one replay-safe warning per retried
    failure, every attempt completed or cancelled, every attempt on the task's session / tag,
    the children of all/race first scheduled in argument order, §4);
(b) under ``FaultPlan.all(0.05)`` and swarm plans (memory and SQLite): ``run_and_check`` reports
    no failure and outcomes, attempts and delays = model (instances the checkers count as
    ``budget_exhausted`` - a ``poison:`` from a fault storm - excepted, as in
    test_generated_programs.py). Programs here have fault-robust timing: races are won by
    a margin of a day, and only never-running attempts have short timeouts;
(c) a slow attempt (scripted crash after its effect) times out iff its timeout is below the
    worker lock timeout, and otherwise the retry carries on as the model says;
(d) the production runtime on InMemoryProvider and SqliteProvider = model;
(e) bad policies (zero/negative/non-int/bool values, wrong types, out-of-range multipliers and
    delays) raise at the call site - catchable, nothing scheduled - with a message naming the
    field; left uncaught they fail the instance in its first turn, never poison it.

SPEC gaps met (spec silent; observed behaviour pinned in normally named tests, see their
docstrings): unknown retry-dict keys are ignored with a warning, not refused; snake_case wins over
camelCase when both spellings are given; a fractional exponential delay is truncated to whole ms;
a typed result that does not decode is raised at once, not retried; an error about
``total_timeout_ms`` names ``timeout_ms``.

Bug found and fixed with it (``test_race_loser_retried_in_the_final_turn_replays``): when the
losing retry task of a race scheduled its next attempt in the very turn that decided the race and
ended the instance, the history the runtime wrote did not replay from scratch (``cancellation
mismatch (activities)``, SPEC §16 J.33 / §18): the replay stops where the code returns (§3.4),
before that schedule, and the dropped-future check compared the turn's own breadcrumb with it.
Breadcrumbs past the point where the walk stopped are no longer compared (``walked_to`` in
``core.finalize._reconcile_dropped``).
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim import MAX_TIMER_DELAY_MS, RuntimeOptions, TagFilter
from duroxide_sim.core.context import Backoff, RetryPolicy
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start

from ._drive import backoff, drive

DAY = 86_400_000
#: RuntimeOptions' default worker lock timeout (SPEC §1/§14): a lease whose worker crashed after
#: running it is fetched again this long after it was fetched.
LOCK_MS = 30_000
#: When a never-running attempt is poisoned (SPEC §3.1 step 5, §10.2): abandoned with the
#: unregistered back-off min(1 s * 2^min(n-1, 6), 60 s) after fetches 1..10, poisoned at fetch 11.
POISON_MS = sum(min(1_000 * 2 ** min(n - 1, 6), 60_000) for n in range(1, 11))
TIMEOUT_ERR = "timeout: activity timed out"
POISON_RE = re.compile(r"^poison: activity Hang#(\d+) exceeded (\d+) attempts \(max 10\)$")
STYLES = (("g", "RGen"), ("a", "RAsync"))
TAG = "gpu"

# ------------------------------------------------------------------------------------------------
# Activities and the interpreter
# ------------------------------------------------------------------------------------------------


@attrs.frozen
class Res:
    k: str
    rank: int


def flaky_error(rank: int) -> str:
    return f"Activity 'Flaky' call failed: ValueError: fail {rank}"


def _flaky(world: Any) -> Any:
    def flaky(ctx: Any, inp: dict[str, Any]) -> dict[str, Any]:
        seen = world.__dict__.setdefault("_retry_probe_ids", {})
        ids = seen.setdefault((ctx.instance_id, inp["k"]), set())
        ids.add(ctx.activity_id)
        rank = sorted(ids).index(ctx.activity_id) + 1
        if rank <= inp["f"]:
            raise ValueError(f"fail {rank}")
        return {"k": inp["k"], "rank": rank}

    return flaky


def build_policy(desc: dict[str, Any]) -> Any:
    """The policy argument the orchestration passes (library objects or the dict verbatim)."""
    form = desc["form"]
    if form == "dict":
        return dict(desc["d"])
    if form == "default":
        return RetryPolicy()
    kind, base, mult, mx = desc["kind"], desc["base"], desc["mult"], desc["max"]
    b = backoff(kind, base, mult, mx)
    t, via = desc["timeout"], desc["via"]
    if t is None:
        return RetryPolicy(desc["n"], b)
    if via == "arg":
        return RetryPolicy(desc["n"], b, t)
    if via == "with_timeout":
        return RetryPolicy(desc["n"]).with_backoff(b).with_timeout(t)
    return RetryPolicy(desc["n"], b).with_total_timeout(t)


def make_task(ctx: Any, t: dict[str, Any]) -> Any:
    name = "Hang" if t["beh"]["hang"] else "Flaky"
    inp = {"k": t["key"], "f": t["beh"]["f"]}
    pol, api, sid = build_policy(t["pol"]), t["api"], "s-" + t["key"]
    if api == "plain":
        return ctx.schedule_activity_with_retry(name, inp, pol)
    if api == "session":
        return ctx.schedule_activity_with_retry_on_session(name, inp, pol, sid)
    if api == "typed":
        return ctx.schedule_activity_with_retry_typed(name, inp, pol, Res)
    if api == "tagged":
        return ctx.schedule_activity_with_retry(name, inp, pol).with_tag(TAG)
    return ctx.schedule_activity_with_retry_on_session_typed(name, inp, pol, sid, Res)


def norm_val(v: Any) -> Any:
    if isinstance(v, Res):
        return {"typed": True, "k": v.k, "rank": v.rank}
    return v


def body(ctx: Any, prog: list[Any]) -> Any:
    out: list[Any] = []
    for i, step in enumerate(prog):
        ctx.set_custom_status(f"step {i}")  # a CustomStatusUpdated marker between the steps' schedules
        kind = step[0]
        if kind == "one":
            try:
                out.append(["ok", norm_val((yield make_task(ctx, step[1])))])
            except Exception as exc:  # noqa: BLE001 - the program records the retry's error
                out.append(["err", str(exc)])
        elif kind == "bare":
            out.append(["ok", norm_val((yield make_task(ctx, step[1])))])
        elif kind == "all":
            res = yield ctx.all([make_task(ctx, t) for t in step[1:]])
            out.append([{"ok": norm_val(r["ok"])} if "ok" in r else {"err": r["err"]} for r in res])
        elif kind == "race":
            other = ctx.schedule_timer(step[2]["timer"]) if "timer" in step[2] else make_task(ctx, step[2])
            r = yield ctx.race(make_task(ctx, step[1]), other)
            out.append([r["index"], norm_val(r["value"])])
        else:
            raise AssertionError(step)
    return {"steps": out}


def r_gen(ctx: Any, prog: list[Any]) -> Any:
    return (yield from body(ctx, prog))


async def r_async(ctx: Any, prog: list[Any]) -> Any:
    return await drive(body(ctx, prog))


def setup(rt: Any, world: Any) -> None:
    rt.register_activity("Flaky", _flaky(world))  # ("Hang" is registered nowhere: never runs)
    rt.register_orchestration("RGen", r_gen)
    rt.register_orchestration("RAsync", r_async)


#: Workers run untagged activities and those tagged TAG (the ``tagged`` API variant).
OPTIONS = RuntimeOptions(worker_tag_filter=TagFilter.default_and([TAG]))
LIVE_OPTIONS = RuntimeOptions(dispatcher_poll_interval_ms=5, worker_tag_filter=TagFilter.default_and([TAG]))


def make_spec(prog: list[Any], name: str = "gen-retry", transparent: bool = True) -> SimSpec:
    return SimSpec(name=name, setup=setup, fault_transparent=transparent, horizon_ms=30 * DAY, options=OPTIONS,
                   starts=[Start(instance=inst, orchestration=orch, input=prog) for inst, orch in STYLES])


# ------------------------------------------------------------------------------------------------
# The reference model (SPEC §9, dict form §17) - no library code
# ------------------------------------------------------------------------------------------------


def spec_policy(desc: dict[str, Any]) -> tuple[int, tuple[str, int, Fraction, int], int | None]:
    """(max_attempts, backoff (kind, base, multiplier, max), per-attempt timeout) as SPEC §9/§17
    define them: default 3 / Exponential{100 ms, x2, max 30 s} / none; the dict's
    ``total_timeout_ms`` overrides ``timeout_ms`` and is per attempt; ``"fixed"`` is 1 s, other
    strings Linear(100 ms, <= 30 s)."""
    exp_default = ("exponential", 100, Fraction(2), 30_000)
    if desc["form"] == "default":
        return 3, exp_default, None
    if desc["form"] == "obj":
        return desc["n"], (desc["kind"], desc["base"], Fraction(desc["mult"]), desc["max"]), desc["timeout"]
    d = desc["d"]
    n = d["max_attempts"] if "max_attempts" in d else d.get("maxAttempts", 3)
    timeout = d.get("timeout_ms", d.get("timeoutMs"))
    total = d.get("total_timeout_ms", d.get("totalTimeoutMs"))
    if total is not None:
        timeout = total
    b = d.get("backoff")
    if b is None or b == "exponential":
        backoff = exp_default
    elif b == "fixed":
        backoff = ("fixed", 1_000, Fraction(1), 1_000)
    else:
        backoff = ("linear", 100, Fraction(1), 30_000)
    return n, backoff, timeout


def spec_delay(backoff: tuple[str, int, Fraction, int], n: int) -> int:
    """Delay after failure ``n`` (1-based): None 0; Fixed d; Linear min(base*n, max);
    Exponential min(base*mult^(n-1), max), in whole ms (truncated: see the pinned test)."""
    kind, base, mult, mx = backoff
    if kind == "none":
        return 0
    if kind == "fixed":
        return base
    if kind == "linear":
        return min(base * n, mx)
    return min(math.floor(base * mult ** (n - 1)), mx)


@attrs.define
class TaskRun:
    key: str
    outcome: tuple[Any, ...]  # ("ok", value) | ("err", text) | ("poison",)
    finish: int | None  # virtual ms from the step's start (None: poisoned, ~303 s)
    starts: list[int]  # start time of each attempt
    backoffs: list[tuple[int, int]]  # (end of failed attempt n, its delay) for failures with attempts left
    max_attempts: int
    backoff: tuple[str, int, Fraction, int]
    timeout: int | None
    session: str | None
    tag: str | None


def model_task(t: dict[str, Any]) -> TaskRun:
    n_max, backoff, timeout = spec_policy(t["pol"])
    beh, key = t["beh"], t["key"]
    run = TaskRun(key, ("?",), None, [], [], n_max, backoff, timeout,
                  ("s-" + key) if t["api"] in ("session", "typed_session") else None, TAG if t["api"] == "tagged" else None)
    now = 0
    for n in range(1, n_max + 1):
        run.starts.append(now)
        # Never run: the deadline wins, or the poison comes first and is not retried (§9: only
        # Application errors reach the loop; §10.2: a poisoned activity fails the instance).
        if beh["hang"]:
            if timeout is None or timeout > POISON_MS:
                run.outcome = ("poison",)
            else:
                run.outcome, run.finish = ("err", TIMEOUT_ERR), now + timeout
            return run
        took = LOCK_MS if n == beh.get("slow") else 0
        if timeout is not None and timeout < took:
            run.outcome, run.finish = ("err", TIMEOUT_ERR), now + timeout  # timeouts are never retried
            return run
        end = now + took
        if n > beh["f"]:
            value = {"k": key, "rank": n}
            if t["api"].startswith("typed"):
                value = {"typed": True, **value}
            run.outcome, run.finish = ("ok", value), end
            return run
        if n == n_max:
            run.outcome, run.finish = ("err", flaky_error(n)), end  # the last error, unchanged
            return run
        d = spec_delay(backoff, n)
        run.backoffs.append((end, d))
        now = end + d
    raise AssertionError("unreachable")


def _entry(run: TaskRun, where: str) -> Any:
    if where == "one":
        return list(run.outcome)
    if where == "all":
        return {"ok": run.outcome[1]} if run.outcome[0] == "ok" else {"err": run.outcome[1]}
    return run.outcome[1]  # a race's value: a failing winner's error text, no flag (§17 ⚠)


@attrs.define
class StepModel:
    """One step: ``options`` maps an acceptable output entry (JSON) to the per-task expectations
    it implies: ``(run, None)`` exact, ``(run, W)`` a race loser cut at the winner's end W."""

    options: dict[str, dict[str, tuple[TaskRun, int | None]]]
    poison: TaskRun | None = None  # the step ends the instance with this task's poison
    error: str | None = None  # a bare step's uncaught error


def model_step(step: list[Any]) -> StepModel:
    kind = step[0]
    if kind in ("one", "bare"):
        run = model_task(step[1])
        if run.outcome[0] == "poison":
            return StepModel({}, poison=run)
        if kind == "bare" and run.outcome[0] == "err":
            return StepModel({}, error=run.outcome[1])
        entry = ["ok", run.outcome[1]] if kind == "bare" else _entry(run, "one")
        return StepModel({json.dumps(entry, sort_keys=True): {run.key: (run, None)}})
    if kind == "all":
        runs = [model_task(t) for t in step[1:]]
        poisoned = [r for r in runs if r.outcome[0] == "poison"]
        if poisoned:
            return StepModel({}, poison=poisoned[0])
        return StepModel({json.dumps([_entry(r, "all") for r in runs], sort_keys=True): {r.key: (r, None) for r in runs}})
    a = model_task(step[1])
    b = model_task(step[2]) if "timer" not in step[2] else None
    fa = a.finish
    fb = step[2]["timer"] if b is None else b.finish
    assert fa is not None and fb is not None, "poisoning tasks are not raced"
    options: dict[str, dict[str, tuple[TaskRun, int | None]]] = {}
    for idx, (mine, theirs) in enumerate(((fa, fb), (fb, fa))):
        if mine > theirs:
            continue
        value = _entry(a, "race") if idx == 0 else (None if b is None else _entry(b, "race"))
        exp = {a.key: (a, None if idx == 0 else mine)}
        if b is not None:
            exp[b.key] = (b, None if idx == 1 else mine)
        options[json.dumps([idx, value], sort_keys=True)] = exp
    return StepModel(options)


# ------------------------------------------------------------------------------------------------
# Reading a history: per task, attempts, deadline and back-off timers
# ------------------------------------------------------------------------------------------------


def _k(e: Any) -> str:
    return type(e).__name__


@attrs.define
class Obs:
    scheduled: list[Any] = attrs.Factory(list)  # ActivityScheduled per attempt
    deadlines: list[int] = attrs.Factory(list)  # fire_at - ActivityScheduled.timestamp
    backoffs: list[tuple[int, int, int]] = attrs.Factory(list)  # (failure n, fire_at - failure time, fire_at)


def observe(events: list[Any], runs: dict[str, TaskRun], races: list[int],
            step_of: dict[str, int]) -> tuple[dict[str, Obs], list[str]]:
    """Attribute every schedule of the execution to its task. Steps are split by the program's
    CustomStatusUpdated markers; an attempt's deadline timer is emitted right after its activity
    (§9: activity first, timer on first poll); a back-off timer belongs to the earliest failure
    still owed one (completions are delivered one per poll, §3.4, so timers follow failures in
    order); any other TimerCreated is a race's timer. ``races``: race timers per step;
    ``step_of``: each task's step."""
    obs = {k: Obs() for k in runs}
    problems: list[str] = []
    firsts: list[list[tuple[int, str]]] = [[] for _ in races]  # per step: (event id, "key" | "timer")
    owner: dict[int, str] = {}
    done: set[int] = set()
    pending: list[tuple[str, int, int]] = []
    step, plain = -1, [0] * len(races)
    prev: Any = None
    cancelled = {e.source_event_id for e in events if _k(e) == "ActivityCancelRequested"}
    for e in events:
        kind = _k(e)
        if kind == "CustomStatusUpdated":
            step, pending = step + 1, []
        elif kind == "ActivityScheduled":
            key = json.loads(e.input)["k"]
            owner[e.event_id] = key
            if not obs[key].scheduled and 0 <= step_of[key] < len(firsts):
                firsts[step_of[key]].append((e.event_id, key))
            obs[key].scheduled.append(e)
        elif kind == "TimerCreated":
            pkey = owner.get(prev.event_id) if prev is not None and _k(prev) == "ActivityScheduled" else None
            if pkey is not None and runs[pkey].timeout is not None:
                obs[pkey].deadlines.append(e.fire_at_ms - prev.timestamp_ms)
            elif pending:
                key, fail_ts, n = pending.pop(0)
                obs[key].backoffs.append((n, e.fire_at_ms - fail_ts, e.fire_at_ms))
            elif 0 <= step < len(plain):
                plain[step] += 1
                firsts[step].append((e.event_id, "timer"))
            else:
                problems.append(f"a TimerCreated outside any step: {e}")
        elif kind in ("ActivityCompleted", "ActivityFailed") and e.source_event_id in owner:
            if e.source_event_id in done:
                problems.append(f"a second completion for attempt {e.source_event_id}: {e}")
            done.add(e.source_event_id)
            key = owner[e.source_event_id]
            run = runs[key]
            n = [s.event_id for s in obs[key].scheduled].index(e.source_event_id) + 1
            if kind == "ActivityFailed" and _k(e.details) == "ApplicationError" and n < run.max_attempts \
                    and spec_delay(run.backoff, n) > 0 and step_of[key] == step:  # (not a dropped loser's,
                # delivered after its race was decided: a turn that decides a race runs on to the next marker)
                pending.append((key, e.timestamp_ms, n))
        prev = e
    if plain != races:
        problems.append(f"race timers per step {plain}, expected {races} (an unexplained TimerCreated?)")
    for i, got in enumerate(firsts):  # all/race poll their children in argument order (§4)
        want = [k for k, s in sorted(step_of.items(), key=lambda kv: kv[0][1:].isdigit() and int(kv[0][1:])) if s == i]
        want += ["timer"] * races[i]
        if [k for _, k in sorted(got)] != want:
            problems.append(f"step {i}: children first scheduled in the order {[k for _, k in sorted(got)]}, expected {want}")
    for sid in owner:
        if sid not in done and sid not in cancelled:
            problems.append(f"attempt {sid} ({owner[sid]}) neither completed nor cancelled")
    return obs, problems


def check_task(o: Obs, run: TaskRun, cut: int | None, exact_time: bool) -> list[str]:
    """The observed schedules of one task against the model (``cut``: a race loser, cut at the
    winner's end)."""
    p: list[str] = []
    got = len(o.scheduled)
    want_b = [d for _, d in run.backoffs if d > 0]
    if cut is None:
        lo = hi = len(run.starts)
    else:
        # (a race polls both children first, so each one's first attempt is always scheduled, §4)
        lo, hi = max(1, sum(s < cut for s in run.starts)), sum(s <= cut for s in run.starts)
    if not lo <= got <= hi:
        p.append(f"{run.key}: {got} attempts scheduled, expected {lo}..{hi}")
    if o.deadlines != ([run.timeout] * got if run.timeout is not None else []):
        p.append(f"{run.key}: deadline timers {o.deadlines} for {got} attempts, timeout {run.timeout}")
    got_b = [d for _, d, _ in o.backoffs]
    if (cut is None and got_b != want_b) or got_b != want_b[: len(got_b)]:
        p.append(f"{run.key}: back-off delays {got_b}, expected {want_b}{' (a prefix)' if cut is not None else ''}")
    nonzero = [n for n, (_, d) in enumerate(run.backoffs, start=1) if d > 0]
    for n, _d, fire_at in o.backoffs:
        if n < got:  # attempt n+1 was scheduled: never before the back-off fired (exactly then, fault-free)
            ts = o.scheduled[n].timestamp_ms
            if ts < fire_at or (exact_time and ts != fire_at):
                p.append(f"{run.key}: attempt {n + 1} scheduled at {ts}, back-off fires at {fire_at}")
    if [n for n, _, _ in o.backoffs] != nonzero[: len(o.backoffs)]:
        p.append(f"{run.key}: back-offs after failures {[n for n, _, _ in o.backoffs]}, expected {nonzero}")
    for e in o.scheduled:
        if e.session_id != run.session:
            p.append(f"{run.key}: attempt {e.event_id} on session {e.session_id!r}, expected {run.session!r}")
        if e.tag != run.tag:
            p.append(f"{run.key}: attempt {e.event_id} tagged {e.tag!r}, expected {run.tag!r}")
    return p


def last_line(text: str | None) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def warnings_of(result: Any, inst: str) -> int:
    n = 0
    for line in result.trace:
        if '"op":"log"' in line and "retrying in" in line:
            rec = json.loads(line)
            n += (rec.get("instance") == inst and rec.get("level") == "WARNING"
                  and rec.get("logger") == "duroxide_sim.orchestration" and " attempt " in rec.get("message", ""))
    return n


def instance_problems(prog: list[Any], status: Any, events: list[Any], *, exact_time: bool,
                      warnings: int | None = None) -> list[str]:
    """Everything the model says about one instance (status, output, histories)."""
    if status is None:
        return ["no status"]
    models = [model_step(s) for s in prog]
    runs: dict[str, TaskRun] = {}
    for m in models:
        for exp in m.options.values():
            runs.update({k: r for k, (r, _) in exp.items()})
        if m.poison is not None:
            runs[m.poison.key] = m.poison
    for s in prog:  # tasks of steps after an abort still need a policy for the history walk
        for t in s[1:]:
            if "key" in t and t["key"] not in runs:
                runs[t["key"]] = model_task(t)
    races = [int(s[0] == "race" and "timer" in s[2]) for s in prog]
    p: list[str] = []
    # -- status and output ----------------------------------------------------------------------
    entries = status.output["steps"] if status.status == "Completed" and isinstance(status.output, dict) else None
    expected_end: tuple[str, Any] = ("Completed", None)
    reached = len(prog)
    for i, m in enumerate(models):
        if m.poison is not None:
            expected_end, reached = ("poison", m.poison), i + 1
            break
        if m.error is not None:
            expected_end, reached = ("error", m.error), i + 1
            break
    if expected_end[0] == "Completed":
        if entries is None or len(entries) != len(prog):
            return [f"status {status.status} {status.output if status.status == 'Completed' else status.error!r:.600}, "
                    f"expected Completed with {len(prog)} step entries"]
    elif expected_end[0] == "error":
        if status.status != "Failed" or last_line(status.error) != f"Exception: {expected_end[1]}":
            return [f"status {status.status} {status.output if status.status == 'Completed' else status.error!r:.600}, "
                    f"expected Failed with last line 'Exception: {expected_end[1]}'"]
    else:
        m_ = POISON_RE.match(status.error or "") if status.status == "Failed" else None
        if m_ is None:
            return [f"status {status.status} {status.output if status.status == 'Completed' else status.error!r:.600}, "
                    f"expected a poison of Hang ({expected_end[1].key})"]
    # -- per-step expectations ------------------------------------------------------------------
    step_of = {t["key"]: i for i, s in enumerate(prog) for t in s[1:] if "key" in t}
    obs, p2 = observe(events, runs, races[:reached], step_of)
    p += p2
    for i, m in enumerate(models[:reached]):
        if m.poison is not None:
            sched = obs[m.poison.key].scheduled
            if len(sched) != 1 or f"Hang#{sched[0].event_id} " not in (status.error or ""):
                p.append(f"step {i}: the poisoned Hang attempt {[e.event_id for e in sched]} vs {status.error!r}")
            continue  # (other tasks of the step are cut at an instant the model does not time)
        if m.error is not None:
            exps = {k: (r, None) for k, r in runs.items() if k == prog[i][1]["key"]}
        elif entries is None:  # (a bare step failed the instance: no output to read the earlier steps' from)
            if len(m.options) != 1:
                continue
            exps = next(iter(m.options.values()))
        else:
            got = json.dumps(entries[i], sort_keys=True)
            if got not in m.options:
                p.append(f"step {i} {prog[i][0]}: got {got:.400}, expected one of {sorted(m.options)!r:.800}")
                continue
            exps = m.options[got]
        for key, (run, cut) in exps.items():
            p += [f"step {i}: {x}" for x in check_task(obs[key], run, cut, exact_time)]
    if warnings is not None and not any(s[0] == "race" for s in prog) and expected_end[0] != "poison":
        want = sum(len(o.scheduled) - 1 for o in obs.values())  # one per retried failure (§9)
        if warnings != want:
            p.append(f"{warnings} retry warnings, expected {want}")
    return p


def program_problems(result: Any, prog: list[Any], *, exact_time: bool, skip: tuple[str, ...] = (),
                     count_warnings: bool = False) -> list[str]:
    out = []
    for inst, _ in STYLES:
        if inst in skip:
            continue
        events = result.histories.get(inst, {}).get(1, [])
        w = warnings_of(result, inst) if count_warnings else None
        out += [f"{inst}: {x}" for x in instance_problems(prog, result.statuses.get(inst), events,
                                                           exact_time=exact_time, warnings=w)]
    return out


# ------------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------------

BASES = (0, 1, 7, 50, 100, 1_000, 40_000)
MULTS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 1000.0)
MAXES = (0, 5, 100, 2_000, 30_000, DAY)


@st.composite
def policies(draw: Any, timeouts: tuple[Any, ...], bases: tuple[int, ...] = BASES, maxes: tuple[int, ...] = MAXES,
             mults: tuple[float, ...] = MULTS, max_n: int = 5, dict_backoffs: tuple[Any, ...] = (
                 None, "exponential", "fixed", "linear", "none", "Exponential", "")) -> dict[str, Any]:
    form = draw(st.sampled_from(("obj", "obj", "obj", "dict", "dict", "default")))
    if form == "default":
        return {"form": "default"}
    if form == "obj":
        return {"form": "obj", "n": draw(st.integers(1, max_n)),
                "kind": draw(st.sampled_from(("none", "fixed", "linear", "exponential", "exponential"))),
                "base": draw(st.sampled_from(bases)), "mult": draw(st.sampled_from(mults)),
                "max": draw(st.sampled_from(maxes)), "timeout": draw(st.sampled_from(timeouts)),
                "via": draw(st.sampled_from(("arg", "with_timeout", "with_total_timeout")))}
    d: dict[str, Any] = {}
    if draw(st.booleans()):
        d[draw(st.sampled_from(("max_attempts", "maxAttempts")))] = draw(st.integers(1, max_n))
    b = draw(st.sampled_from(dict_backoffs))
    if b is not None:
        d["backoff"] = b
    t = draw(st.sampled_from(timeouts))
    if t is not None:
        d[draw(st.sampled_from(("timeout_ms", "timeoutMs", "total_timeout_ms", "totalTimeoutMs")))] = t
        if draw(st.integers(0, 3)) == 0:  # both given: the total one overrides (§17)
            d["timeout_ms"], d["total_timeout_ms"] = draw(st.sampled_from(timeouts)) or 7, t
    return {"form": "dict", "d": d}


def tasks(timeouts: tuple[Any, ...], hang: Any, **kw: Any) -> Any:
    """A task without its key (``number`` gives keys): behaviour, policy, API."""
    return st.fixed_dictionaries({
        "beh": st.fixed_dictionaries({"f": st.sampled_from((0, 0, 1, 1, 2, 3, 4, 6)), "hang": hang}),
        "pol": policies(timeouts, **kw),
        "api": st.sampled_from(("plain", "plain", "session", "typed", "typed_session", "tagged")),
    })


def _no_poison_in_race(t: dict[str, Any]) -> dict[str, Any]:
    timeout = spec_policy(t["pol"])[2]
    if t["beh"]["hang"] and (timeout is None or timeout > POISON_MS):
        return {**t, "beh": {**t["beh"], "hang": False}}
    return t


def number(prog: list[Any]) -> list[Any]:
    """Give every task a unique key; JSON round trip (the orchestration input)."""
    n = 0
    out = []
    for step in prog:
        new = [step[0]]
        for t in step[1:]:
            if "timer" in t:
                new.append(t)
            else:
                new.append({**t, "key": f"t{n}"})
                n += 1
        out.append(new)
    return json.loads(json.dumps(out))


SIM_TIMEOUTS = (None, None, None, 1, 50, 1_000, 60_000, DAY)


@st.composite
def sim_programs(draw: Any) -> list[Any]:
    """Fault-free programs: any timing (races of any two tasks, ties included)."""
    task = tasks(SIM_TIMEOUTS, st.sampled_from((False,) * 7 + (True,)))
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("one", "one", "all", "race", "race")))
        if kind == "one":
            steps.append(["one", draw(task)])
        elif kind == "all":
            steps.append(["all", draw(task), draw(task)])
        else:
            a = _no_poison_in_race(draw(task))
            other = draw(st.one_of(task.map(_no_poison_in_race),
                                   st.sampled_from((0, 50, 100, 300, 1_000, DAY)).map(lambda d: {"timer": d})))
            steps.append(["race", a, other])
    if draw(st.booleans()):
        steps.append(["bare", draw(task)])
    return number(steps)


# Fault-robust programs: a task that runs has no timeout shorter than a day (a fault may stall it
# for minutes); only never-running attempts have short timeouts. A race is won by a day's margin:
# its other side is a one-day timer or a task whose second attempt waits a one-day back-off.
ROBUST_TIMEOUTS = (None, None, DAY)


def _robust_task(short_timeouts: tuple[int, ...], **kw: Any) -> Any:
    def hang_sometimes(t: dict[str, Any], hang: bool, timeout: int) -> dict[str, Any]:
        if not hang:
            return t
        return {**t, "beh": {"f": 0, "hang": True}, "pol": {"form": "obj", "n": 3, "kind": "fixed", "base": 5,
                                                          "mult": 1.0, "max": 5, "timeout": timeout, "via": "arg"}}

    return st.builds(hang_sometimes, tasks(ROBUST_TIMEOUTS, st.just(False), **kw),
                     st.sampled_from((False,) * 5 + (True,)), st.sampled_from(short_timeouts))


def _day_loser(api: str) -> dict[str, Any]:
    return {"beh": {"f": 1, "hang": False}, "api": api,
            "pol": {"form": "obj", "n": 2, "kind": "fixed", "base": DAY, "mult": 1.0, "max": DAY, "timeout": None,
                    "via": "arg"}}


@st.composite
def robust_programs(draw: Any, short_timeouts: tuple[int, ...] = (1, 50, 500), live: bool = False, **kw: Any) -> list[Any]:
    task = _robust_task(short_timeouts, **kw)
    steps = []
    for _ in range(draw(st.integers(1, 2 if live else 3))):
        kind = draw(st.sampled_from(("one", "all", "race")))
        if kind == "one":
            steps.append(["one", draw(task)])
        elif kind == "all":
            steps.append(["all", draw(task), draw(task)])
        else:
            long = draw(st.one_of(st.just({"timer": DAY}), st.sampled_from(("plain", "typed")).map(_day_loser)))
            short = draw(task)
            steps.append(["race", short, long] if draw(st.booleans()) else ["race", long, short])
    if draw(st.booleans()):
        steps.append(["bare", draw(task)])
    prog = []
    for s in steps:  # (a race's first side must be a task: ctx.race(task, task | timer))
        if s[0] == "race" and "timer" in s[1]:
            s = ["race", s[2], s[1]]
        prog.append(s)
    return number(prog)


SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ------------------------------------------------------------------------------------------------
# (a) fault-free simulation = model
# ------------------------------------------------------------------------------------------------


@settings(max_examples=1200, **SETTINGS)
@given(prog=sim_programs(), nodes=st.sampled_from((1, 2)))
def test_fault_free_simulation_matches_model(prog: list[Any], nodes: int) -> None:
    """(a) SPEC §9/§17: outcomes, error texts, attempts, back-off and deadline timers, the
    retry warnings and race winners (by virtual time) are the model's, on one and two nodes."""
    result = run_and_check(Simulation(make_spec(prog), 0, None, nodes=nodes))
    assert not result.failures, result.failures[0].render()
    problems = program_problems(result, prog, exact_time=True, count_warnings=True)
    assert not problems, (prog, problems)


# ------------------------------------------------------------------------------------------------
# (b) under faults: checkers pass, outcomes and schedules = model
# ------------------------------------------------------------------------------------------------


@settings(max_examples=250, **SETTINGS)
@given(prog=robust_programs(), seed=st.integers(0, 10_000))
def test_faulty_simulation_passes_checkers_and_matches_model(prog: list[Any], seed: int) -> None:
    """(b) SPEC §18: under every fault kind the checkers hold and the retries still end, schedule
    and back off as the model says (a poison from a fault storm is the documented exception)."""
    spec = make_spec(prog)
    for s, plan, provider, nodes in ((seed, FaultPlan.all(0.05), "memory", 2), (seed + 1, "swarm", "memory", 2),
                                     (seed + 2, "swarm", "sqlite", 1)):
        result = run_and_check(Simulation(spec, s, plan, provider=provider, nodes=nodes))
        assert not result.failures, result.failures[0].render()
        problems = program_problems(result, prog, exact_time=False, skip=tuple(result.budget_exhausted))
        assert not problems, (s, plan if isinstance(plan, str) else plan.to_json(), prog, problems)


# ------------------------------------------------------------------------------------------------
# (c) a slow attempt: the worker crashes after running it, so its result comes a lock timeout later
# ------------------------------------------------------------------------------------------------


@settings(max_examples=300, **SETTINGS)
@given(f=st.integers(0, 4), slow=st.integers(1, 4), nodes=st.sampled_from((1, 2)), bare=st.booleans(),
       pol=policies((None, 1, 50, 1_000, 20_000, 60_000, DAY), max_n=5), api=st.sampled_from(("plain", "typed")))
def test_slow_attempt_times_out_iff_its_timeout_is_below_the_delay(f: int, slow: int, nodes: int, bare: bool,
                                                                   pol: dict[str, Any], api: str) -> None:
    """SPEC §9: with a timeout, each attempt races its deadline; the slow attempt (its result lost
    in a crash and re-run after the 30 s worker lock) loses iff the timeout is shorter: then the
    retry ends with ``timeout: activity timed out`` at once (never retried, the attempt
    cancelled); otherwise the late result counts like any other and the retry carries on."""
    prog = number([["bare" if bare else "one", {"beh": {"f": f, "hang": False, "slow": slow}, "pol": pol, "api": api}]])
    spec = SimSpec(name="gen-retry-slow", setup=setup, fault_transparent=False, horizon_ms=30 * DAY,
                   starts=[Start(instance="g", orchestration="RGen", input=prog)])
    result = run_and_check(Simulation(spec, slow * 10 + f, FaultPlan.scripted([(slow, "crash_after_effect")]), nodes=nodes))
    assert result.ok, result.failures[0].render()
    run = model_task(prog[0][1])
    reached = len(run.starts) >= slow
    assert result.faults_injected == ({"crash_after_effect": 1} if reached else {}), result.faults_injected
    events = result.histories["g"][1]
    problems = instance_problems(prog, result.statuses["g"], events, exact_time=False)
    assert not problems, (prog, problems)
    if reached and run.outcome == ("err", TIMEOUT_ERR):  # the timed-out attempt was dropped: cancelled
        sched = [e for e in events if _k(e) == "ActivityScheduled"][-1]
        crumbs = [e.reason for e in events if _k(e) == "ActivityCancelRequested" and e.source_event_id == sched.event_id]
        assert crumbs == ["dropped_future"], crumbs


# ------------------------------------------------------------------------------------------------
# (d) production runtime = model
# ------------------------------------------------------------------------------------------------

LIVE_KW = dict(bases=(0, 1, 5, 10), maxes=(0, 5, 20), mults=(0.5, 1.0, 2.0), max_n=3,
               dict_backoffs=(None, "exponential", "linear", "none"))


def _live_problems(prog: list[Any], provider: Any) -> list[str]:
    from duroxide_sim.testing.live import run_live

    live = run_live(make_spec(prog), provider, options=LIVE_OPTIONS, timeout_s=20.0)
    return program_problems(live, prog, exact_time=False)


@pytest.mark.realtime
@settings(max_examples=10, **SETTINGS)
@given(prog=robust_programs(short_timeouts=(30, 60), live=True, **LIVE_KW))
def test_production_runtime_matches_model(prog: list[Any], tmp_path_factory: Any) -> None:
    """(d) The real Runtime (threads, wall clock) on both providers gives the model's outcomes,
    attempts and back-off delays (short delays; never-running attempts time out in 30-60 ms)."""
    from duroxide_sim import InMemoryProvider, SqliteProvider

    problems = _live_problems(prog, InMemoryProvider())
    assert not problems, ("memory", prog, problems)
    provider = SqliteProvider.open(str(tmp_path_factory.mktemp("gr") / "app.db"))
    try:
        problems = _live_problems(prog, provider)
    finally:
        getattr(provider, "close", lambda: None)()
    assert not problems, ("sqlite", prog, problems)


# ------------------------------------------------------------------------------------------------
# (e) bad policies raise at the call site, naming the field
# ------------------------------------------------------------------------------------------------

#: (what the orchestration passes, a text the error must contain). Policy objects are built in the
#: orchestration, so their constructors' errors are raised at the call site too.
BAD: list[tuple[Any, str]] = [
    ({"max_attempts": 0}, "max_attempts"),
    ({"maxAttempts": 0}, "max_attempts"),
    ({"max_attempts": -3}, "max_attempts"),
    ({"max_attempts": 2.0}, "max_attempts"),
    ({"max_attempts": "3"}, "max_attempts"),
    ({"max_attempts": True}, "max_attempts"),
    ({"max_attempts": None}, "max_attempts"),
    ({"timeout_ms": 0}, "timeout_ms"),
    ({"timeoutMs": -1}, "timeout_ms"),
    ({"timeout_ms": 2.5}, "timeout_ms"),
    ({"timeout_ms": "100"}, "timeout_ms"),
    ({"timeout_ms": False}, "timeout_ms"),
    ({"timeout_ms": MAX_TIMER_DELAY_MS + 1}, "timeout_ms"),
    ({"total_timeout_ms": 0}, "timeout_ms"),
    ({"totalTimeoutMs": -5}, "timeout_ms"),
    ({"max_attempts": 2, "total_timeout_ms": "1s"}, "timeout_ms"),
    ({"backoff": 100}, "backoff"),
    ({"backoff": -1}, "backoff"),
    ({"backoff": ["fixed"]}, "backoff"),
    ({"backoff": {"kind": "fixed"}}, "backoff"),
    ("fast", "retry"),
    (3, "retry"),
    ([("max_attempts", 2)], "retry"),
    (("obj", {"max_attempts": 0}), "max_attempts"),
    (("obj", {"max_attempts": -1}), "max_attempts"),
    (("obj", {"max_attempts": 1.5}), "max_attempts"),
    (("obj", {"max_attempts": 2, "timeout_ms": 0}), "timeout_ms"),
    (("obj", {"max_attempts": 2, "timeout_ms": -10}), "timeout_ms"),
    (("obj", {"max_attempts": 2, "backoff": "fixed"}), "backoff"),
    (("with_timeout", 0), "timeout_ms"),
    (("with_total_timeout", -1), "timeout_ms"),
    (("fixed", -1), "base_ms"),
    (("fixed", 1.5), "base_ms"),
    (("linear", (10, -1)), "max_ms"),
    (("exponential", (10, 0, 100)), "multiplier"),
    (("exponential", (10, -2.0, 100)), "multiplier"),
    (("exponential", (10, float("inf"), 100)), "multiplier"),
    (("exponential", (10, float("nan"), 100)), "multiplier"),
    (("exponential", (10, True, 100)), "multiplier"),
    (("exponential", (-10, 2.0, 100)), "base_ms"),
]
APIS = ("plain", "session", "typed", "typed_session")


def _bad_policy(i: int) -> Any:
    spec = BAD[i][0]
    if isinstance(spec, tuple):
        kind, arg = spec
        if kind == "obj":
            return RetryPolicy(**arg)
        if kind == "with_timeout":
            return RetryPolicy(2).with_timeout(arg)
        if kind == "with_total_timeout":
            return RetryPolicy(2).with_total_timeout(arg)
        if kind == "fixed":
            return RetryPolicy(2, Backoff.fixed(arg))
        if kind == "linear":
            return RetryPolicy(2, Backoff.linear(*arg))
        return RetryPolicy(2, Backoff.exponential(*arg))
    return spec


def _bad_setup(rt: Any, world: Any) -> None:
    rt.register_activity("Flaky", _flaky(world))

    @rt.register_orchestration("Bad")
    def bad(ctx: Any, inp: list[Any]) -> Any:
        i, api, catch = inp
        try:
            task = _bad_task(ctx, i, api)
        except (TypeError, ValueError) as exc:
            if not catch:
                raise
            return {"raised": type(exc).__name__, "msg": str(exc)}
        return {"raised": None, "result": (yield task)}


def _bad_task(ctx: Any, i: int, api: str) -> Any:
    inp, sid = {"k": f"b{i}", "f": 0}, f"s{i}"
    if api == "plain":
        return ctx.schedule_activity_with_retry("Flaky", inp, _bad_policy(i))
    if api == "session":
        return ctx.schedule_activity_with_retry_on_session("Flaky", inp, _bad_policy(i), sid)
    if api == "typed":
        return ctx.schedule_activity_with_retry_typed("Flaky", inp, _bad_policy(i), Res)
    return ctx.schedule_activity_with_retry_on_session_typed("Flaky", inp, _bad_policy(i), sid, Res)


def test_bad_policies_raise_at_the_call_naming_the_field() -> None:
    """SPEC §9 (max_attempts >= 1, 0 rejected) and §17's retry dict: a bad value or type is refused
    where ``schedule_activity_with_retry*`` (or the policy object) is called - a TypeError or
    ValueError the orchestration can catch, whose message names the field - and nothing is
    scheduled. Every API variant (plain, on session, typed, typed on session) checks alike."""
    starts = [Start(instance=f"b{i}-{api}", orchestration="Bad", input=[i, api, True])
              for i in range(len(BAD)) for api in APIS]
    result = run_and_check(Simulation(SimSpec(name="bad-retry", setup=_bad_setup, starts=starts), 0, None, nodes=1))
    assert result.ok, result.failures[0].render()
    problems = []
    for i, (spec, field) in enumerate(BAD):
        for api in APIS:
            inst = f"b{i}-{api}"
            st_ = result.statuses[inst]
            out = st_.output if st_.status == "Completed" else None
            if out is None or out.get("raised") not in ("TypeError", "ValueError") or field not in out["msg"]:
                problems.append((spec, api, st_.status, out, st_.error))
            if any(_k(e) == "ActivityScheduled" for e in result.histories[inst][1]):
                problems.append((spec, api, "scheduled an activity"))
    assert not problems, problems


@pytest.mark.parametrize("i", [0, 7, 16, 20, 29, 34], ids=lambda i: repr(BAD[i][0])[:30])
def test_uncaught_bad_policy_fails_the_instance_in_its_first_turn_not_poison(i: int) -> None:
    """Left uncaught, the call's error fails the orchestration in its first turn (SPEC §17: an
    exception escaping the code fails it, message = the traceback; its last line is the error),
    with nothing scheduled and no poison (§10.2 is for repeated delivery, not a code error)."""
    spec = SimSpec(name="bad-retry-uncaught", setup=_bad_setup,
                   starts=[Start(instance="u", orchestration="Bad", input=[i, "plain", False])])
    result = run_and_check(Simulation(spec, 0, None, nodes=1))
    assert result.ok, result.failures[0].render()
    st_ = result.statuses["u"]
    assert st_.status == "Failed", st_
    assert re.match(r"^(TypeError|ValueError): ", last_line(st_.error)) and BAD[i][1] in last_line(st_.error), st_.error
    assert "poison" not in st_.error
    assert [_k(e) for e in result.histories["u"][1]] == ["OrchestrationStarted", "OrchestrationFailed"]


# ------------------------------------------------------------------------------------------------
# Bugs found (each fails today)
# ------------------------------------------------------------------------------------------------


def _race_setup(rt: Any, world: Any) -> None:
    calls = world.__dict__.setdefault("_race_calls", {})

    @rt.register_activity("Flaky")
    def flaky(ctx: Any, x: str) -> str:
        calls[x] = calls.get(x, 0) + 1
        if x == "a" and calls[x] == 1:
            raise ValueError("first attempt fails")
        return x

    @rt.register_orchestration("RaceRetry")
    def race_retry(ctx: Any, _: Any) -> Any:
        policy = RetryPolicy(2, Backoff.none())
        return (yield ctx.race(ctx.schedule_activity_with_retry("Flaky", "a", policy),
                               ctx.schedule_activity_with_retry("Flaky", "b", policy)))


def test_race_loser_retried_in_the_final_turn_replays() -> None:
    """SPEC §16 J.33 ("full histories replay to the same outcome") and §18 ("identical outcomes on
    replay"): a history the runtime wrote must replay from scratch to the outcome it recorded.

    Program: ``return (yield ctx.race(retry("Flaky", "a"), retry("Flaky", "b")))``, both
    ``RetryPolicy(2, Backoff.none())``; ``a``'s first attempt fails, ``b`` succeeds. When both
    completions reach the orchestration in one batch, failure first (seed 1, one node), the live
    turn delivers ``ActivityFailed(a#1)``, polls - ``a``'s loop retries at once and emits attempt 2 -
    then delivers ``ActivityCompleted(b)``, polls - ``b`` wins and the code returns. The loser's
    attempt 2 is dropped, so the turn writes ``ActivityScheduled(a#2)``,
    ``ActivityCancelRequested(a#2, dropped_future)`` and ``OrchestrationCompleted`` (§3.6, §3.10).

    Replaying that history from scratch (the simulator's determinism checker, ``duroxide-sim
    replay`` / ``assert_replays``, all through ``core.verify.verify_execution``) stops the walk at
    the poll where the code returns (§3.4 step 2), before ``ActivityScheduled(a#2)`` is matched.
    It used to compare the turn's own breadcrumb for a#2 with the code's drops and report
    ``nondeterministic: cancellation mismatch (activities): history dropped [6], code dropped []``;
    breadcrumbs past the stop are now ignored like the rest of the unwalked history, and the
    replay gives ``Completed({"index": 1, "value": "b"})``, as recorded. (A live turn never replays a
    terminal history, so the instance itself is unaffected; every replay-based check of it reports
    a nondeterminism the code does not have. The production runtime writes such histories too,
    whenever both completions share a batch. A per-attempt timeout does not avoid it; a non-zero
    back-off does: the loser then emits a timer, and dropped timers get no breadcrumb.)"""
    from duroxide_sim.core.verify import verify_execution

    spec = SimSpec(name="race-retry-replay", setup=_race_setup, starts=[Start(instance="i", orchestration="RaceRetry")])
    result = run_and_check(Simulation(spec, 1, None, nodes=1))
    events = result.histories["i"][1]
    shape = [(_k(e), getattr(e, "source_event_id", None), getattr(e, "reason", None)) for e in events]
    assert shape == [("OrchestrationStarted", None, None), ("ActivityScheduled", None, None),
                     ("ActivityScheduled", None, None), ("ActivityFailed", 2, None), ("ActivityCompleted", 3, None),
                     ("ActivityScheduled", None, None), ("ActivityCancelRequested", 6, "dropped_future"),
                     ("OrchestrationCompleted", None, None)], shape  # (the schedule that triggers it)
    assert result.statuses["i"].output == {"index": 1, "value": "b"}
    assert verify_execution("i", 1, events, result.registry) is None
    assert result.ok, result.failures[0].render()


# ------------------------------------------------------------------------------------------------
# SPEC gaps: observed behaviour pinned
# ------------------------------------------------------------------------------------------------


def _one_task_result(pol: Any, f: int, inst: str = "p") -> Any:
    prog = number([["one", {"beh": {"f": f, "hang": False}, "pol": {"form": "dict", "d": pol}, "api": "plain"}]])
    spec = SimSpec(name="pin", setup=setup, starts=[Start(instance=inst, orchestration="RGen", input=prog)])
    result = run_and_check(Simulation(spec, 0, None, nodes=1))
    assert result.ok, result.failures[0].render()
    return result


def test_gap_unknown_retry_dict_keys_are_ignored_with_a_warning() -> None:
    """SPEC gap: §17 lists the retry dict's keys but says nothing of others. Observed (kept for
    duroxide-python parity, whose SDK ignores them): an unknown key - even a misspelt
    ``max_attempt: 0`` - is not refused at the call; it is ignored (the defaults apply: 3
    attempts, exponential 100/200 ms) and the orchestration logs one warning naming it."""
    result = _one_task_result({"max_attempt": 0, "backof": "fixed"}, 5)
    ev = result.histories["p"][1]
    assert result.statuses["p"].output == {"steps": [["err", flaky_error(3)]]}
    assert len([e for e in ev if _k(e) == "ActivityScheduled"]) == 3
    assert [e.fire_at_ms - e.timestamp_ms for e in ev if _k(e) == "TimerCreated"] == [100, 200]
    warns = [json.loads(ln)["message"] for ln in result.trace if '"op":"log"' in ln and "not used" in ln]
    assert len(warns) == 1 and "'backof', 'max_attempt'" in warns[0], warns


def test_gap_snake_case_wins_over_camel_case_when_both_are_given() -> None:
    """SPEC gap: §17 names both spellings (``max_attempts``/``maxAttempts``,
    ``timeout_ms``/``timeoutMs``) but not which wins when both are present. Observed: the
    snake_case one (2 attempts, not 5)."""
    result = _one_task_result({"max_attempts": 2, "maxAttempts": 5, "timeout_ms": 60_000, "timeoutMs": 7, "backoff": "linear"}, 9)
    ev = result.histories["p"][1]
    assert len([e for e in ev if _k(e) == "ActivityScheduled"]) == 2
    assert sorted(e.fire_at_ms - e.timestamp_ms for e in ev if _k(e) == "TimerCreated") == [100, 60_000, 60_000]


def test_gap_fractional_exponential_delays_are_truncated_to_whole_ms() -> None:
    """SPEC gap: §9 gives Exponential as min(base*mult^(n-1), max) without saying how a
    fractional product becomes whole milliseconds. Observed: truncated (75*1.5 = 112.5 -> 112;
    75*1.5^2 = 168.75 -> 168), as Rust's float-to-integer cast would."""
    spec = SimSpec(name="pin-exp", setup=setup, starts=[Start(instance="p", orchestration="RGen", input=number([
        ["one", {"beh": {"f": 9, "hang": False}, "api": "plain",
                 "pol": {"form": "obj", "n": 4, "kind": "exponential", "base": 75, "mult": 1.5, "max": DAY,
                         "timeout": None, "via": "arg"}}]]))])
    result = run_and_check(Simulation(spec, 0, None, nodes=1))
    assert result.ok
    assert [e.fire_at_ms - e.timestamp_ms for e in result.histories["p"][1] if _k(e) == "TimerCreated"] == [75, 112, 168]


def test_gap_a_typed_result_that_does_not_decode_is_raised_not_retried() -> None:
    """SPEC gap: §9 retries on activity errors; §17's typed variants do not say what a result
    that does not match ``result_type`` does inside a retry. Observed, with and without a
    per-attempt timeout: the attempt succeeded, so it is not retried - the decoding error
    (SerializationError, a TypeError) is raised at once in the orchestration."""

    def setup_bad(rt: Any, world: Any) -> None:
        rt.register_activity("Shape", lambda ctx, x: {"other": x})

        @rt.register_orchestration("T")
        def t(ctx: Any, timeout: Any) -> Any:
            try:
                return (yield ctx.schedule_activity_with_retry_typed("Shape", 1, {"max_attempts": 3, "timeout_ms": timeout}, Res))
            except Exception as exc:  # noqa: BLE001
                return [type(exc).__name__, isinstance(exc, TypeError), str(exc)]

    spec = SimSpec(name="pin-typed", setup=setup_bad, starts=[Start(instance=f"t{i}", orchestration="T", input=t)
                                                              for i, t in enumerate((None, DAY))])
    result = run_and_check(Simulation(spec, 0, None, nodes=1))
    assert result.ok
    for inst in ("t0", "t1"):
        name, is_type_error, msg = result.statuses[inst].output
        assert (name, is_type_error) == ("SerializationError", True) and "does not match type Res" in msg, msg
        assert len([e for e in result.histories[inst][1] if _k(e) == "ActivityScheduled"]) == 1


def test_gap_total_timeout_errors_name_timeout_ms() -> None:
    """SPEC gap: §9/§17 make ``total_timeout_ms`` an alias of the per-attempt timeout and do not
    word the errors. Observed: a bad ``total_timeout_ms`` (or ``totalTimeoutMs``) is reported as
    ``RetryPolicy.timeout_ms must be a positive integer ...`` - the field it sets, not the key
    the caller wrote (likewise ``maxAttempts`` is reported as ``max_attempts``)."""
    for pol, field in (({"total_timeout_ms": 0}, "RetryPolicy.timeout_ms"), ({"totalTimeoutMs": -1}, "RetryPolicy.timeout_ms"),
                       ({"maxAttempts": 0}, "RetryPolicy.max_attempts")):
        with pytest.raises(ValueError) as info:
            RetryPolicy.from_dict(pol, strict=False)
        assert str(info.value).startswith(field), str(info.value)
