"""Nondeterminism detection journeys: the product's use #2, probed as a demanding user.

Promise (README): "replay recorded histories against the new code and point at the exact
``yield`` that diverged; catch ``time.time()``, ``random``, ``uuid4`` and set-order dependence
inside orchestrations". The simulation's sandbox (``Simulation(..., sandbox=True)`` /
``run_and_check``) and the CI replay (``replay_documents`` / ``replay_source`` /
``assert_replays`` and ``duroxide-sim replay``) must both

* report each nondeterministic thing real orchestration code does - naming the call and the
  user's ``file:line`` - even where the recorded history still happens to replay, and
* never report legitimate code (``ctx.utc_now()``, ``ctx.new_guid()``, a ``Random`` seeded from
  the input, ``sorted(set(...))``, ``json``, ``decimal``, ``re``, ``zoneinfo``, ``uuid5``,
  ``logging`` that emits nothing, traceback formatting, warnings...).

What ``tests/sim/test_sandbox.py``, ``tests/testing/test_sandbox_coverage.py`` and the CI replay
tests already cover (``time.time``, ``monotonic``, ``datetime.now/utcnow``, ``date.today``,
``random.random/randint/choices``, ``uuid4/uuid1``, ``os.urandom``, ``os.getrandom``, ``secrets``,
``print``, unseeded ``Random()``, dataclass default factories, datetime subclasses, logging,
``os.environ`` in CI, set iteration of a literal set) is not repeated here.

Defects this probe found (all fixed; the test named after each failed before its fix):

1. one call, two sandbox failures: ``uuid.uuid4()`` also reported as ``os.urandom()``,
   ``random.choice()`` as ``random.getrandbits()`` - calls nested in a forbidden call are no
   longer reported (``test_one_nondeterministic_call_is_one_sandbox_failure``);
2. ``os.getpid()``, ``socket.gethostname()``, ``threading.get_ident()`` were not flagged
   (``test_process_and_host_identity_reads_are_reported``);
3. filesystem I/O other than ``open()`` (``os.path.exists``, ``os.listdir``) was not flagged
   (``test_filesystem_checks_are_reported_as_io``);
4. ``subprocess.run`` was reported as an environment read
   (``test_subprocess_is_reported_as_starting_a_process_not_as_reading_the_environment``);
5. a clock read through ``functools.partial`` (C calling C) is invisible to a profile hook: a
   CPython limit, not fixable cheaply - the two tests that asked for it were removed and the
   limitation is documented (``duroxide_sim.sim.sandbox``, README);
6. a typed result whose default factory reads the clock was never flagged, being decoded
   outside ``_Engine.poll`` (``test_typed_result_whose_default_factory_reads_the_clock_is_reported_in_simulation``,
   ``test_ci_replay_reports_a_typed_result_factory_that_reads_the_clock``);
7. ``traceback.format_exc()`` / ``warnings.warn`` in orchestration code were reported as
   ``open() (file I/O)`` (linecache), and ``duroxide-sim replay`` failed on them
   (``test_formatting_a_caught_exception_is_not_reported_as_file_io``,
   ``test_cli_does_not_report_a_warning_as_file_io``);
8. the CI replay named only the first nondeterministic call of a line
   (``test_ci_replay_names_every_nondeterministic_call_on_a_line``);
9. ``duroxide-sim replay`` listed a hash-seed-dependent execution twice, overcounted the header
   and called it "found only under PYTHONHASHSEED" although the first replay found it
   (``test_cli_reports_a_hash_dependent_execution_once_and_says_why``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import decimal
import email.utils
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import pathlib
import random
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import zoneinfo

import attrs
import pytest

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation, SimSpec, Start
from duroxide_sim.testing.replay import assert_replays, load_app
from tests.testing.test_replay_divergences import _record, _replay

HERE = pathlib.Path(__file__).resolve()
REPO = HERE.parents[2]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _spec(orchestration, *, activity=None, name="main", extra=None, ref=None) -> SimSpec:
    def setup(rt, world):
        rt.register_activity("act", activity or (lambda ctx, x: x))
        rt.register_orchestration(name, orchestration)
        for other_name, other in (extra or {}).items():
            rt.register_orchestration(other_name, other)

    return SimSpec(name="journey", setup=setup, starts=[Start(instance="p", orchestration=name, input=1)],
                   fault_transparent=False, ref=ref)


def _calling(fn):
    """An orchestration whose first turn calls ``fn()`` (the reported line is ``fn``'s)."""

    def main(ctx, x):
        fn()
        return (yield ctx.schedule_activity("act", x))

    return main


def _sim(spec: SimSpec, plan=None, **kw):
    return run_and_check(Simulation(spec, 0, plan, sandbox=True, **kw))


def _sandbox_messages(spec: SimSpec, plan=None) -> list[str]:
    return [f.message for f in _sim(spec, plan).failures if f.checker == "sandbox"]


def _line(fn, marker: str) -> int:
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, text in enumerate(lines) if marker in text)


def _at(fn) -> str:
    """``file:line`` of a one-line lambda probe."""
    return f"{HERE}:{fn.__code__.co_firstlineno}"


def _acts(rt) -> None:
    rt.register_activity("act", lambda ctx, x: x)
    rt.register_activity("A", lambda ctx, x: x)
    rt.register_activity("B", lambda ctx, x: x)


def _waiting_on(fn):
    """An orchestration that calls ``fn()`` in a branch that goes the same way every time (the
    history replays) and then waits for an event (in-flight when recorded)."""

    def o(ctx, x):
        if fn() is not None or True:
            yield ctx.schedule_activity("act", x)
        yield ctx.wait_for_event("go")
        return x

    return o


# ============================================================================================
# A. The simulator's sandbox (run_and_check with sandbox=True)
# ============================================================================================

# Each probe on its own line: the report must name this file and that line.
SIM_PROBES = {
    "time.time_ns()": lambda: time.time_ns(),
    "time.perf_counter()": lambda: time.perf_counter(),
    "datetime.today()": lambda: datetime.datetime.today(),
    "random.shuffle()": lambda: random.shuffle([1, 2, 3]),
    "random.sample()": lambda: random.sample([1, 2, 3], 2),
    "without a seed": lambda: random.Random(None).random(),
    "random.getrandbits()": lambda: uuid.UUID(int=random.getrandbits(128)),
    "time.time()": lambda: email.utils.formatdate(),  # a stdlib helper that reads the clock
    "time.sleep()": lambda: time.sleep(0),
    "os.environ": lambda: dict(os.environ),
}


def test_sim_reports_clock_rng_and_environment_variants_at_the_users_line() -> None:
    """The user runs a simulated seed with ``sandbox=True`` over orchestration code that reads
    ``time_ns``/``perf_counter``, ``datetime.today``, shuffles/samples with the global RNG, makes a
    ``Random(None)``, builds a UUID from ``getrandbits``, calls ``email.utils.formatdate()`` (which
    reads the clock inside the stdlib), sleeps, or copies ``os.environ``. Each must be reported as
    a sandbox failure naming the orchestration, the call and this file's line of the probe."""
    missed = []
    for label, probe in SIM_PROBES.items():
        messages = _sandbox_messages(_spec(_calling(probe)))
        if not any(label in m and _at(probe) in m and "orchestration 'main'" in m for m in messages):
            missed.append((label, messages))
    assert not missed, missed


@pytest.mark.parametrize("call", ["uuid.uuid4()", "random.choice()"])
def test_one_nondeterministic_call_is_one_sandbox_failure(call: str) -> None:
    """The user writes ONE ``uuid.uuid4()`` (or ``random.choice(xs)``) in an orchestration. The
    simulation must report it once, as that call: a second failure for the same line naming a
    call the user never wrote (``os.urandom()``, ``random.getrandbits()``: what the stdlib does
    inside) is noise that doubles every count. (The CI replay already keeps one report per line:
    "uuid4 reads os.urandom: one report per line".)"""
    probes = {"uuid.uuid4()": lambda: uuid.uuid4(), "random.choice()": lambda: random.choice(["a", "b", "c"])}
    messages = _sandbox_messages(_spec(_calling(probes[call])))
    assert len(messages) == 1, messages
    assert f"called {call}" in messages[0] and _at(probes[call]) in messages[0], messages


IDENTITY_PROBES = {
    "os.getpid": lambda: os.getpid(),
    "socket.gethostname": lambda: socket.gethostname(),
    "threading.get_ident": lambda: threading.get_ident(),
}


@pytest.mark.parametrize("call", list(IDENTITY_PROBES))
def test_process_and_host_identity_reads_are_reported(call: str) -> None:
    """The user builds a "worker id" inside an orchestration (``f"{socket.gethostname()}-
    {os.getpid()}"``, or ``threading.get_ident()``) and passes it to an activity. That value
    differs between the process that recorded the history and every process that replays it - the
    same kind of nondeterminism as ``os.environ``, which the sandbox does flag. The simulation's
    sandbox must report the call with its line."""
    probe = IDENTITY_PROBES[call]
    messages = _sandbox_messages(_spec(_calling(probe)))
    assert messages, f"{call}() in orchestration code was not reported"
    assert call.split(".")[-1] in messages[0] and _at(probe) in messages[0], messages


FS_PROBES = {
    "os.path.exists": lambda: os.path.exists("/etc/duroxide-maintenance-flag"),
    "os.listdir": lambda: os.listdir("/"),
}


@pytest.mark.parametrize("call", list(FS_PROBES))
def test_filesystem_checks_are_reported_as_io(call: str) -> None:
    """The user gates a step on a feature-flag file (``if os.path.exists(FLAG): ...``) or on a
    directory listing. README: the sandbox flags "I/O in orchestration code with the source line";
    only ``open()`` is caught today, so a file that appears between recording and replay changes
    the path unseen. The call must be reported with its line."""
    probe = FS_PROBES[call]
    messages = _sandbox_messages(_spec(_calling(probe)))
    assert messages, f"{call}() (filesystem I/O) in orchestration code was not reported"
    assert _at(probe) in messages[0], messages


def test_subprocess_is_reported_as_starting_a_process_not_as_reading_the_environment() -> None:
    """The user (wrongly) shells out from an orchestration: ``subprocess.run(["true"])``. It is
    reported at the right line, but as "os.environ / os.getenv() (the environment differs between
    machines and runs)" - what ``subprocess`` does inside - which sends the user looking for an
    environment read that is not there. The report must say it ran a subprocess (I/O)."""
    probe = lambda: subprocess.run(["true"], check=False)  # noqa: E731
    messages = _sandbox_messages(_spec(_calling(probe)))
    assert messages and _at(probe) in messages[0], messages
    assert any("subprocess" in m or "Popen" in m for m in messages), messages


@attrs.frozen
class _Quote:
    """An activity result type that gained a field "with a default" (README: reading old results
    with it keeps working) - the default being the time the object is built."""

    total: int
    quoted_at: str = attrs.field(factory=lambda: datetime.datetime.utcnow().isoformat())  # FACTORY


def _typed_quote(ctx, x):
    quote = yield ctx.schedule_activity_typed("Quote", x, _Quote)  # TYPED-YIELD
    yield ctx.schedule_activity("act", quote.total)
    return quote.total


def test_typed_result_whose_default_factory_reads_the_clock_is_reported_in_simulation() -> None:
    """The user's typed activity result (``schedule_activity_typed(..., _Quote)``) is built by the
    engine on each replay; its ``quoted_at`` default reads ``datetime.utcnow()``, so every replay
    sees another value. The sandbox watches only the code the engine runs inside ``poll``; the
    typed result is decoded when the completion is applied, outside it, so nothing is reported
    (and the output does not differ, so the determinism check is silent too). It must be reported
    (``datetime.utcnow()``, at the factory's or the yield's line)."""

    def setup(rt, world):
        rt.register_activity("act", lambda ctx, x: x)
        rt.register_activity("Quote", lambda ctx, x: {"total": 5})  # an old-shape result: no quoted_at
        rt.register_orchestration("main", _typed_quote)

    spec = SimSpec(name="journey", setup=setup, starts=[Start(instance="p", orchestration="main", input=1)],
                   fault_transparent=False)
    result = _sim(spec)
    assert result.statuses["p"].status == "Completed", result.statuses["p"]
    messages = [f.message for f in result.failures if f.checker == "sandbox"]
    assert any("datetime.utcnow()" in m for m in messages), [f.render() for f in result.failures]
    assert any(f"{HERE}:{_line(_Quote, '# FACTORY')}" in m or f"{HERE}:{_line(_typed_quote, '# TYPED-YIELD')}" in m
               for m in messages), messages


_STARTS: dict[str, int] = {"n": 0}


def _counter_driven(ctx, x):
    _STARTS["n"] += 1  # a module-level counter: differs between the live run and any replay
    first = "A" if _STARTS["n"] == 1 else "B"
    got = yield ctx.schedule_activity(first, x)  # COUNTER-YIELD
    return got


def test_global_counter_dependence_is_caught_by_the_determinism_check_at_the_yield() -> None:
    """The user's orchestration branches on a module-level counter (state that survives between
    runs of the code). No sandbox rule can see that, but the simulation's determinism check
    replays every history from scratch: it must report the divergence naming what the history has
    ('A'), what the code did now ('B') and the exact line of the diverging ``yield``."""
    _STARTS["n"] = 0

    def setup(rt, world):
        _acts(rt)
        rt.register_orchestration("main", _counter_driven)

    spec = SimSpec(name="journey", setup=setup, starts=[Start(instance="p", orchestration="main", input=1)],
                   fault_transparent=False)
    result = run_and_check(Simulation(spec, 0, None, nodes=1))
    det = [f.message for f in result.failures if f.checker == "determinism"]
    assert det, [f.render() for f in result.failures]
    assert f"{HERE}:{_line(_counter_driven, '# COUNTER-YIELD')}" in det[0], det
    assert "name='A'" in det[0] and "name='B'" in det[0], det


def _child_rolls(ctx, x):
    roll = random.random()  # CHILD-RANDOM
    return (yield ctx.schedule_activity("act", roll > 2))


def _parent(ctx, x):
    return (yield ctx.schedule_sub_orchestration("Child", x))


_PARENT_SPEC = _spec(_parent, name="Parent", extra={"Child": _child_rolls},
                     ref="tests/testing/test_sandbox_detection_journeys.py:_PARENT_SPEC")


def test_violation_in_a_sub_orchestration_names_the_child_and_the_repro_keeps_the_sandbox() -> None:
    """The nondeterministic call sits in a child orchestration started by a parent. The report
    must name the child (not the parent) and the child's line, and the printed reproduce command
    must re-run with ``--sandbox`` (else pasting it does not show the failure)."""
    result = _sim(_PARENT_SPEC)
    sandbox = [f for f in result.failures if f.checker == "sandbox"]
    assert len(sandbox) == 1, [f.render() for f in result.failures]
    assert "orchestration 'Child'" in sandbox[0].message, sandbox[0].message
    assert f"{HERE}:{_line(_child_rolls, '# CHILD-RANDOM')}" in sandbox[0].message
    assert "--sandbox" in sandbox[0].render().splitlines()[-1], sandbox[0].render()


def _loop_with_clock(ctx, x):
    total = 0
    for i in range(4):
        stamp = time.time()  # LOOP-CLOCK
        total += yield ctx.schedule_activity("act", i if stamp else i)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_call_replayed_many_times_under_crashes_is_reported_once(seed: int) -> None:
    """Under faults (crashes, lost locks: many replays of the same code in many instances) the
    same ``time.time()`` line runs dozens of times; the user must get ONE sandbox failure for it,
    not one per replay or per instance."""
    spec = SimSpec(name="journey", setup=_spec(_loop_with_clock).setup,
                   starts=[Start(instance=f"p{i}", orchestration="main", input=i) for i in range(3)],
                   fault_transparent=False)
    result = run_and_check(Simulation(spec, seed, FaultPlan.all(0.2), sandbox=True))
    sandbox = [f.message for f in result.failures if f.checker == "sandbox"]
    assert len(sandbox) == 1, sandbox
    assert f"{HERE}:{_line(_loop_with_clock, '# LOOP-CLOCK')}" in sandbox[0]


async def _async_sleeps(ctx, x):
    await asyncio.sleep(0.01)  # ASYNCIO
    return (await ctx.schedule_activity("act", x))


async def _async_gathers(ctx, x):
    a, b = await asyncio.gather(ctx.schedule_activity("act", 1), ctx.schedule_activity("act", 2))  # ASYNCIO
    return a + b


@pytest.mark.parametrize("orchestration", [_async_sleeps, _async_gathers], ids=["asyncio.sleep", "asyncio.gather"])
def test_asyncio_in_an_async_orchestration_fails_it_with_guidance_at_the_line(orchestration) -> None:
    """An ``async def`` orchestration uses ``asyncio.sleep`` / ``asyncio.gather`` as the user
    would in ordinary async code. README: it "fails with an error that says asyncio is not durable
    and what to use instead". The instance must fail (not hang), the error must name the line and
    point at ``ctx.schedule_timer`` / ``ctx.all``."""
    result = _sim(_spec(orchestration))
    status = result.statuses["p"]
    assert status.status == "Failed", status
    assert "asyncio is not durable" in status.error, status.error
    assert "ctx.schedule_timer" in status.error and "ctx.all" in status.error, status.error
    assert f'File "{HERE}", line {_line(orchestration, "# ASYNCIO")}' in status.error, status.error


@dataclasses.dataclass
class _Line:
    sku: str
    qty: int = 1


@attrs.frozen
class _Plan:
    lines: list
    due: str


_LOG = logging.getLogger("journey.shop")
_SKU_RE = re.compile(r"[^A-Z0-9]")


def _legit_order(ctx, order):
    """Everything here is deterministic given the history and the input."""
    now = yield ctx.utc_now()
    guid = yield ctx.new_guid()
    ctx.trace_info(f"order {order['id']} at {now}")
    _LOG.debug("order %s", order["id"])  # below the logger's level: no record, no clock read
    rng = random.Random(order["seed"])  # seeded from the input
    skus = sorted(set(order["skus"]))
    rng.shuffle(skus)
    start = datetime.datetime.fromtimestamp(now / 1000, tz=datetime.timezone.utc)
    local = start.astimezone(zoneinfo.ZoneInfo("America/Sao_Paulo"))
    due = (start + datetime.timedelta(days=3)).isoformat()
    parsed = datetime.datetime.strptime(order["placed"], "%Y-%m-%d").date().isoformat()
    total = sum((decimal.Decimal(p) for p in order["prices"]), decimal.Decimal("0")).quantize(decimal.Decimal("0.01"))
    ref = uuid.uuid5(uuid.NAMESPACE_URL, f"order/{order['id']}")
    code = _SKU_RE.sub("", order["id"].upper()) + re.sub(r"\s+", "-", " x  y ")
    plan = _Plan([dataclasses.asdict(_Line(s)) for s in skus], due)
    counts = collections.Counter(order["skus"])
    cached = functools.lru_cache(maxsize=4)(lambda s: s.lower())
    payload = json.dumps({
        "plan": attrs.asdict(plan), "total": str(total), "ref": str(ref), "code": code, "guid": guid,
        "hour": local.hour, "parsed": parsed, "digest": hashlib.sha256(code.encode()).hexdigest()[:8],
        "label": "{:>8}|{:.3f}".format(code, math.sqrt(2)), "counts": dict(sorted(counts.items())),
        "lower": cached("ABC"), "stamp": time.strftime("%Y-%m-%d", time.gmtime(now // 1000)),
    }, sort_keys=True)
    got = yield ctx.schedule_activity("act", payload)
    yield ctx.schedule_timer(int(datetime.timedelta(seconds=30).total_seconds() * 1000))
    return len(got)


_LEGIT_INPUT = {"id": "o-17/x", "seed": 17, "skus": ["b", "a", "c", "a"], "prices": ["1.10", "2.25"],
                "placed": "2024-02-29"}


async def _activity_does_anything(ctx, x):
    await asyncio.sleep(0.01)  # activities may use asyncio, the clock, randomness and the OS
    return (x, datetime.datetime.now().isoformat(), random.random(), str(uuid.uuid4()), os.getpid())[0]


def test_legitimate_orchestration_code_is_never_flagged_in_simulation() -> None:
    """A realistic orchestration uses ctx.utc_now/new_guid, trace_info, a debug log line that is
    not emitted, ``random.Random(seed_from_input)``, ``sorted(set(...))``, tz-aware datetime and
    ``timedelta`` arithmetic, ``zoneinfo``, ``strptime``, ``decimal``, ``uuid5``, ``re`` (which
    caches), dataclass/attrs construction, ``Counter``, ``lru_cache``, ``hashlib``, ``str.format``,
    ``time.strftime`` of a given time and ``json.dumps``; its async activity sleeps, reads the
    clock, draws randomness and a uuid4. Nothing may be flagged (false positives are as bad as
    misses), and the run must pass every checker."""
    spec = SimSpec(name="journey", setup=_spec(_legit_order, activity=_activity_does_anything).setup,
                   starts=[Start(instance="p", orchestration="main", input=_LEGIT_INPUT)], fault_transparent=False)
    result = _sim(spec)
    assert result.statuses["p"].status == "Completed", result.statuses["p"]
    assert result.failures == [], [f.render() for f in result.failures]


_TRACEBACK_APP = '''
import traceback

def setup(rt, world):
    rt.register_activity("act", lambda ctx, x: x)

    @rt.register_orchestration("main")
    def main(ctx, x):
        try:
            qty = int("twelve")
        except ValueError:
            ctx.trace_warn("bad quantity, using 1: " + traceback.format_exc())  # FORMAT
            qty = 1
        return (yield ctx.schedule_activity("act", qty))
'''


def test_formatting_a_caught_exception_is_not_reported_as_file_io(tmp_path: pathlib.Path) -> None:
    """The user catches a parsing error inside the orchestration and logs it with
    ``ctx.trace_warn(traceback.format_exc())`` - replay-safe logging of a deterministic error. The
    traceback machinery reads the source file (linecache) the first time it sees it, and the
    sandbox reports that as the orchestration calling ``open() (file I/O)``: a false positive that
    comes and goes with what the process formatted before (the engine's own traceback formatting
    was exempted for the same reason). It must not be reported."""
    path = tmp_path / "journey_traceback_app.py"  # a fresh file: not in linecache yet
    path.write_text(textwrap.dedent(_TRACEBACK_APP))
    spec = SimSpec(name="journey", setup=load_app(f"{path}:setup"),
                   starts=[Start(instance="p", orchestration="main", input=1)], fault_transparent=False)
    result = _sim(spec)
    assert result.statuses["p"].status == "Completed", result.statuses["p"]
    assert [f.message for f in result.failures if f.checker == "sandbox"] == []


# ============================================================================================
# B. CI replay through the Python API (replay_documents / replay_source / assert_replays)
# ============================================================================================

REPLAY_PROBES = {
    "time.time_ns()": lambda: time.time_ns(),
    "time.perf_counter()": lambda: time.perf_counter(),
    "date.today()": lambda: datetime.date.today(),
    "random.shuffle()": lambda: random.shuffle([3, 1, 2]),
    "uuid.uuid1()": lambda: uuid.uuid1(),
    "without a seed": lambda: random.Random(),
}


def _register_probes(probes):
    def register(rt):
        _acts(rt)
        for i, probe in enumerate(probes.values()):
            rt.register_orchestration(f"P{i}", _waiting_on(probe))

    return register


def test_ci_replay_reports_each_call_even_though_the_history_replays() -> None:
    """Production recorded in-flight instances of orchestrations that read ``time_ns`` /
    ``perf_counter`` / ``date.today``, shuffle with the global RNG, make a ``uuid1`` or an unseeded
    ``Random()`` - each in a branch that went the same way this time, so the history replays. The
    CI replay must still report every one: the instance, "in-flight", the call, this file's line,
    and the advice (ctx.utc_now / ctx.new_guid / an activity)."""
    register = _register_probes(REPLAY_PROBES)
    starts = [(f"i{i}", f"P{i}", i) for i in range(len(REPLAY_PROBES))]
    docs, _, _ = _record(register, starts)
    rendered = [d.render() for d in _replay(docs, register)]
    missed = []
    for i, (label, probe) in enumerate(REPLAY_PROBES.items()):
        mine = [r for r in rendered if r.startswith(f"i{i} (execution 1, in-flight)")]
        if not any(label in r and _at(probe) in r and f"orchestration 'P{i}'" in r for r in mine):
            missed.append((label, mine))
    assert not missed, (missed, rendered)
    assert all("ctx.utc_now()" in r and "ctx.new_guid()" in r and "still replays" in r for r in rendered), rendered


def _two_calls_one_line(ctx, x):
    if time.time() > 0 and random.random() < 2:  # TWO-CALLS
        yield ctx.schedule_activity("act", x)
    yield ctx.wait_for_event("go")


def test_ci_replay_names_every_nondeterministic_call_on_a_line() -> None:
    """One line reads the clock AND draws from the global RNG. The replay keeps one report per
    source line (its dedup key is the file:line, not the call), so only ``time.time()`` is named:
    the user fixes it, pushes, and only then learns about ``random.random()``. Both calls must be
    named (in one report or two)."""
    register = lambda rt: (_acts(rt), rt.register_orchestration("O", _two_calls_one_line))  # noqa: E731
    docs, _, _ = _record(register, [("i", "O", 1)])
    rendered = [d.render() for d in _replay(docs, register)]
    site = f"{HERE}:{_line(_two_calls_one_line, '# TWO-CALLS')}"
    assert any("time.time()" in r and site in r for r in rendered), rendered
    assert any("random.random()" in r and site in r for r in rendered), rendered


def _typed_quote_waits(ctx, x):
    quote = yield ctx.schedule_activity_typed("Quote", x, _Quote)  # TYPED-YIELD
    yield ctx.wait_for_event("go")
    return quote.total


def test_ci_replay_reports_a_typed_result_factory_that_reads_the_clock() -> None:
    """An in-flight instance recorded a ``Quote`` activity result; the result type's new field
    defaults to ``datetime.utcnow()``, so each replay builds a different object. The CI replay runs
    under the sandbox, yet reports nothing, because the typed result is decoded outside the
    engine's ``poll`` (the only code the sandbox watches). It must report ``datetime.utcnow()``."""

    def register(rt):
        _acts(rt)
        rt.register_activity("Quote", lambda ctx, x: {"total": 5})
        rt.register_orchestration("O", _typed_quote_waits)

    docs, _, _ = _record(register, [("i", "O", 1)])
    rendered = [d.render() for d in _replay(docs, register)]
    assert any("datetime.utcnow()" in r for r in rendered), rendered


_PRICE_CACHE: dict[str, int] = {}


def _cached_price(ctx, sku):
    if sku not in _PRICE_CACHE:  # a process-wide memo: filled by whichever run came first
        _PRICE_CACHE[sku] = yield ctx.schedule_activity("A", sku)
    yield ctx.wait_for_event("go")  # CACHE-WAIT
    return _PRICE_CACHE[sku]


def test_ci_replay_points_at_the_yield_that_diverged_because_of_global_state() -> None:
    """An orchestration memoizes activity results in a module-level dict. Recorded, the instance
    scheduled the activity; replayed in a process where the memo is already filled, the code skips
    it and goes straight to the wait. The replay must report the instance, what the history has
    (ActivityScheduled 'A'), what the code did (WaitExternal 'go') and the line of that yield."""
    _PRICE_CACHE.clear()
    register = lambda rt: (_acts(rt), rt.register_orchestration("O", _cached_price))  # noqa: E731
    docs, _, _ = _record(register, [("i", "O", "sku-1")])
    divergences = _replay(docs, register)
    assert len(divergences) == 1, [d.render() for d in divergences]
    message = divergences[0].message
    assert divergences[0].instance == "i" and divergences[0].in_flight
    assert "history has ActivityScheduled(name='A'" in message and "WaitExternal(name='go')" in message, message
    assert f"{HERE}:{_line(_cached_price, '# CACHE-WAIT')}" in message, message


def test_ci_replay_of_legitimate_code_is_clean_and_assert_replays_passes(tmp_path: pathlib.Path) -> None:
    """The realistic deterministic orchestration of section A (ctx.utc_now, new_guid, seeded
    Random, sorted(set), zoneinfo, decimal, re, json, attrs/dataclasses, timedelta...) is recorded
    to completion and replayed in CI: no divergence, ``replay_source`` on the export returns [] and
    ``assert_replays`` passes."""
    def register(rt):
        _acts(rt)
        rt.register_orchestration("O", _legit_order)

    docs, client, _ = _record(register, [("i", "O", _LEGIT_INPUT)])
    assert client.get_status("i").status == "Completed"
    assert _replay(docs, register) == []
    (tmp_path / "i.json").write_text(json.dumps(docs[0]))
    assert_replays(str(tmp_path), register)


def test_assert_replays_lists_a_sandbox_finding_with_its_line(tmp_path: pathlib.Path) -> None:
    """The pytest helper ``assert_replays`` is the user's CI gate. A ``uuid.uuid4()`` in the
    orchestration (the history still replays) must fail it with a message that names the instance,
    ``uuid.uuid4()`` and its line - one line per finding."""

    def uses_uuid(ctx, x):
        ref = str(uuid.uuid4())  # UUID4
        yield ctx.schedule_activity("act", x if ref else x)
        yield ctx.wait_for_event("go")

    register = lambda rt: (_acts(rt), rt.register_orchestration("O", uses_uuid))  # noqa: E731
    docs, _, _ = _record(register, [("u-1", "O", 1)])
    (tmp_path / "u-1.json").write_text(json.dumps(docs[0]))
    with pytest.raises(AssertionError) as info:
        assert_replays(str(tmp_path), register)
    text = str(info.value)
    assert text.startswith("1 recorded execution(s) no longer replay:"), text
    (line,) = text.splitlines()[1:]
    assert line.startswith("u-1 (execution 1, in-flight)") and "uuid.uuid4()" in line, line
    assert f"{HERE}:{_line(uses_uuid, '# UUID4')}" in line, line


# ============================================================================================
# C. duroxide-sim replay (CLI): hash-seed dependence beyond a literal set, and clean reports
# ============================================================================================

_HASH_APP = '''\
CHANNELS = ("email", "sms", "push", "slack", "pager")
REGIONS = ("eu", "us", "ap", "sa", "af")


def register(rt):
    rt.register_activity("Notify", lambda ctx, x: x)
    rt.register_activity("Route", lambda ctx, x: x)

    def frozen(ctx, _):
        for region in frozenset(REGIONS):
            yield ctx.schedule_activity("Notify", region)  # FROZEN
        return "ok"

    def fromkeys(ctx, _):
        plan = dict.fromkeys(set(CHANNELS), 0)
        for channel in plan:
            yield ctx.schedule_activity("Notify", channel)  # FROMKEYS
        return "ok"

    def shard(ctx, order):
        return (yield ctx.schedule_activity("Route", hash(order) % 1_000_000))  # SHARD

    def ordered(ctx, _):
        for channel in sorted(set(CHANNELS)):  # SORTED
            yield ctx.schedule_activity("Notify", channel)
        return "ok"

    rt.register_orchestration("Frozen", frozen)
    rt.register_orchestration("FromKeys", fromkeys)
    rt.register_orchestration("Shard", shard)
    rt.register_orchestration("Sorted", ordered)
'''

_RECORDER = '''\
import sys
from duroxide_sim import Client, Runtime
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.testing.replay import load_app
clock = SimClock()
provider = SqliteProvider.open(sys.argv[1], clock=clock)
rt = Runtime(provider, clock=clock, ids=SequentialIds())
load_app(sys.argv[2])(rt)
driver = SequentialDriver(rt, clock)
client = Client(provider, clock=clock, sleep=driver.sleep)
for inst, name, inp in [("frozen-1", "Frozen", None), ("fromkeys-1", "FromKeys", None),
                        ("shard-1", "Shard", "order-17"), ("sorted-1", "Sorted", None)]:
    client.start_orchestration(inst, name, inp)
driver.run_until_quiet()
provider.close()
'''

# What each hash-dependent orchestration of _HASH_APP does first, under a given hash seed.
_SIGNATURE = ("import json; C = ('email', 'sms', 'push', 'slack', 'pager'); R = ('eu', 'us', 'ap', 'sa', 'af'); "
              "print(json.dumps([list(frozenset(R)), list(dict.fromkeys(set(C), 0)), hash('order-17') % 1_000_000]))")


def _env(hash_seed: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@functools.lru_cache(maxsize=None)
def _signature(hash_seed: int) -> tuple:
    proc = subprocess.run([sys.executable, "-S", "-c", _SIGNATURE], capture_output=True, text=True,
                          env=_env(hash_seed), timeout=30)
    return tuple(json.dumps(part) for part in json.loads(proc.stdout))


@attrs.frozen
class _HashRecording:
    root: pathlib.Path
    db: pathlib.Path
    app: pathlib.Path
    seed: int  # the recording's PYTHONHASHSEED; under seed + 1 every construct iterates differently


@pytest.fixture(scope="module")
def hash_rec(tmp_path_factory: pytest.TempPathFactory) -> _HashRecording:
    seed = next(s for s in range(40) if all(a != b for a, b in zip(_signature(s), _signature(s + 1), strict=True)))
    root = tmp_path_factory.mktemp("hash_rec")
    app = root / "hash_app.py"
    app.write_text(_HASH_APP)
    (root / "record.py").write_text(_RECORDER)
    db = root / "prod.db"
    proc = subprocess.run([sys.executable, str(root / "record.py"), str(db), f"{app}:register"], capture_output=True,
                          text=True, env=_env(seed), cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return _HashRecording(root, db, app, seed)


def _cli_replay(rec: _HashRecording, app: pathlib.Path, hash_seed: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duroxide_sim", "replay", str(rec.db), "--app", f"{app}:register", *extra],
                          capture_output=True, text=True, env=_env(hash_seed), cwd=rec.root, timeout=120)


def _report_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith("  ")]


def _marker_line(path: pathlib.Path, marker: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if marker in t)


def test_cli_catches_frozenset_dict_from_a_set_and_hash_of_a_string_but_not_sorted_set(hash_rec: _HashRecording) -> None:
    """Production (one PYTHONHASHSEED) recorded four orchestrations: one iterates a ``frozenset``
    of strings, one a ``dict.fromkeys(set(...))``, one routes by ``hash(order_id) % N``, and one
    iterates ``sorted(set(...))``. CI happens to run under production's hash seed, so the first
    replay passes; README: the CLI replays again under another seed and "adds what only that replay
    finds, saying so". The three hash-dependent ones must be reported at their yield with the
    PYTHONHASHSEED explanation, and ``sorted(set(...))`` must not be."""
    proc = _cli_replay(hash_rec, hash_rec.app, hash_rec.seed)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = _report_lines(proc)
    for instance, marker in (("frozen-1", "# FROZEN"), ("fromkeys-1", "# FROMKEYS"), ("shard-1", "# SHARD")):
        site = f"{hash_rec.app}:{_marker_line(hash_rec.app, marker)}"
        mine = [ln for ln in lines if ln.startswith(f"{instance} (")]
        assert mine and any(site in ln and "PYTHONHASHSEED" in ln for ln in mine), (instance, site, proc.stdout)
    assert not [ln for ln in lines if ln.startswith("sorted-1 (")], proc.stdout


def test_cli_reports_a_hash_dependent_execution_once_and_says_why(hash_rec: _HashRecording) -> None:
    """Now CI runs under yet another hash seed (the usual case: CI and production draw theirs at
    random). ``shard-1`` routes by ``hash(order_id)``: the first replay already finds it diverging,
    and the second replay (another seed) finds it diverging with another value. The report lists
    the one execution twice - the header counts it twice ("N execution(s) diverge") and the second
    line claims it was "found only under PYTHONHASHSEED=..." although the first replay found it -
    while the first line does not say it depends on string hashing. Expected: one line per
    diverging execution, and that line says the code depends on the hash seed."""
    ci_seed = next(s for s in range(hash_rec.seed + 2, hash_rec.seed + 60)
                   if len({_signature(hash_rec.seed)[2], _signature(s)[2], _signature(s + 1)[2]}) == 3)
    proc = _cli_replay(hash_rec, hash_rec.app, ci_seed)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = _report_lines(proc)
    shard = [ln for ln in lines if ln.startswith("shard-1 (")]
    assert len(shard) == 1, proc.stdout
    header = proc.stdout.splitlines()[0]
    instances = {ln.split(" (")[0] for ln in lines}
    assert header.startswith(f"{len(instances)} execution(s) diverge"), proc.stdout
    assert "PYTHONHASHSEED" in shard[0] or "hash" in shard[0].split("(instance")[-1], shard[0]


def test_cli_does_not_report_a_warning_as_file_io(hash_rec: _HashRecording) -> None:
    """The team adds ``warnings.warn("the channels option is deprecated")`` to an orchestration
    (or a library it calls emits a UserWarning). Showing the warning makes Python read the source
    line (linecache -> ``open``), and ``duroxide-sim replay`` fails CI with "called open() (file
    I/O)" at the warn line, although the code is deterministic and its history replays. The
    replay must exit 0 (or at least not claim the orchestration does file I/O)."""
    text = hash_rec.app.read_text().replace(
        "        for channel in sorted(set(CHANNELS)):  # SORTED\n",
        '        __import__("warnings").warn("the channels option is deprecated")  # WARN\n'
        "        for channel in sorted(set(CHANNELS)):  # SORTED\n")
    warn_app = hash_rec.root / "hash_app_warn.py"
    warn_app.write_text(text)
    proc = _cli_replay(hash_rec, warn_app, hash_rec.seed, "--no-hash-seed-check")
    assert "open() (file I/O)" not in proc.stdout, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
