"""Probes of the simulation sandbox (``Simulation(..., sandbox=True)``) and the hash-seed check.

Each test states what a demanding user expects: forbidden calls in orchestration code are
flagged with the user's source line, wherever that code lives and however the call is made;
legitimate code is never flagged. The tests under the "fixed" heading failed before session
6's fixes (the engine's own traceback formatting reported as file I/O, apps installed in
site-packages, generated ``__init__`` frames, unseeded ``Random()``, ``os.getrandom``, datetime
subclasses).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import random
import secrets
import sysconfig
import textwrap
import time
import types
import uuid
from time import time as aliased_time

import pytest

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.harness import Simulation, SimSpec, Start
from duroxide_sim.testing.hashseed import check_hash_seed_independence
from duroxide_sim.testing.replay import load_app

HERE = pathlib.Path(__file__).resolve()


def _spec(orchestration, *, activity=None) -> SimSpec:
    def setup(rt, world):
        rt.register_activity("act", activity or (lambda ctx, x: x))
        rt.register_orchestration("main", orchestration)

    return SimSpec(name="probe", setup=setup, starts=[Start(instance="p", orchestration="main", input=1)],
                   fault_transparent=False)


def _calling(fn):
    def main(ctx, x):
        fn()
        return (yield ctx.schedule_activity("act", x))

    return main


def _sandbox_messages(spec: SimSpec) -> list[str]:
    result = run_and_check(Simulation(spec, 0, None, sandbox=True))
    return [f.message for f in result.failures if f.checker == "sandbox"]


# --------------------------------------------------------------------------------------------
# Fixed
# --------------------------------------------------------------------------------------------


def test_orchestration_that_raises_on_purpose_is_not_flagged(tmp_path: pathlib.Path) -> None:
    """A business-rule failure (``raise ValueError``) is legitimate orchestration code. The engine
    formats the traceback inside the poll, and the first time a source file is read the
    traceback machinery open()s it (linecache): the sandbox reports that as the orchestration
    doing file I/O, at a line that is not in the orchestration at all."""
    path = tmp_path / "probe_raising_orchestration.py"  # a fresh file: not in linecache yet
    path.write_text(textwrap.dedent('''
        def setup(rt, world):
            rt.register_activity("act", lambda ctx, x: x)

            @rt.register_orchestration("main")
            def main(ctx, x):
                yield ctx.schedule_activity("act", x)
                raise ValueError("order rejected: over the credit limit")
    '''))
    setup = load_app(f"{path}:setup")
    spec = SimSpec(name="probe", setup=setup, starts=[Start(instance="p", orchestration="main", input=1)],
                   fault_transparent=False)
    result = run_and_check(Simulation(spec, 0, None, sandbox=True))
    assert result.statuses["p"].status == "Failed"
    assert [f.message for f in result.failures if f.checker == "sandbox"] == []


def test_violation_in_orchestration_code_installed_in_site_packages_names_its_line() -> None:
    """In CI the application is often pip-installed (site-packages) and run with
    ``duroxide-sim run``. The sandbox skips frames whose file starts with the stdlib directory to
    find "the user's line", and site-packages lies inside it: the user's own frames are skipped
    and the violation is attributed to whatever frame is outside (here: this test file)."""
    fake_file = os.path.join(sysconfig.get_paths()["purelib"], "probe_installed_app", "workflows.py")
    source = textwrap.dedent('''
        import time
        def setup(rt, world):
            rt.register_activity("act", lambda ctx, x: x)
            def main(ctx, x):
                stamp = time.time()
                return (yield ctx.schedule_activity("act", stamp))
            rt.register_orchestration("main", main)
    ''')
    module = types.ModuleType("probe_installed_app_workflows")
    exec(compile(source, fake_file, "exec"), module.__dict__)
    spec = SimSpec(name="probe", setup=module.setup, starts=[Start(instance="p", orchestration="main")],
                   fault_transparent=False)
    messages = _sandbox_messages(spec)
    assert messages, "time.time() in an installed orchestration was not flagged"
    assert f"{fake_file}:6" in messages[0], messages


@dataclasses.dataclass
class _Shipment:
    order: str
    created_at: datetime.datetime = dataclasses.field(default_factory=datetime.datetime.utcnow)


def test_clock_read_by_a_dataclass_default_factory_names_the_orchestration_line() -> None:
    """``field(default_factory=datetime.utcnow)`` is a common model pattern; building such an
    object in an orchestration reads the clock. It is flagged, but at ``<string>:N`` (the
    dataclass-generated __init__), not at the orchestration line that built the object."""
    messages = _sandbox_messages(_spec(_calling(lambda: _Shipment("o-1"))))
    assert messages, "not flagged at all"
    assert f"{HERE}:" in messages[0] and "<string>" not in messages[0], messages


class _UtcDateTime(datetime.datetime):
    """Project-specific datetime subclass (as pendulum, arrow, freezegun's FakeDatetime...)."""


@pytest.mark.parametrize("probe", ["random.Random() unseeded", "os.getrandom()", "datetime subclass .now()"])
def test_entropy_and_clock_sources_that_escape_the_sandbox(probe: str) -> None:
    calls = {
        "random.Random() unseeded": lambda: random.Random().randint(1, 6),  # seeded from OS entropy
        "os.getrandom()": lambda: os.getrandom(4),
        "datetime subclass .now()": lambda: _UtcDateTime.now(),
    }
    messages = _sandbox_messages(_spec(_calling(calls[probe])))
    assert messages, f"{probe} in orchestration code was not flagged"
    assert f"{HERE}:" in messages[0]


# --------------------------------------------------------------------------------------------
# Behaviour checked and found correct
# --------------------------------------------------------------------------------------------


def test_indirect_calls_are_flagged_at_the_right_line(tmp_path: pathlib.Path) -> None:
    helper = tmp_path / "probe_clock_helper.py"
    helper.write_text("import time, random\n\ndef stamp():\n    return time.time()\n\ndef pick(xs):\n    return random.choice(xs)\n")
    stamp = load_app(f"{helper}:stamp")
    pick = load_app(f"{helper}:pick")
    assert f"{helper}:4" in _sandbox_messages(_spec(_calling(stamp)))[0]
    assert f"{helper}:7" in _sandbox_messages(_spec(_calling(lambda: pick([1, 2, 3]))))[0]
    for call in (lambda: aliased_time(), lambda: secrets.token_hex(4), lambda: random.SystemRandom().random(),
                 lambda: datetime.datetime.utcnow(), lambda: datetime.date.today(), lambda: time.monotonic(),
                 lambda: uuid.uuid1(), lambda: random.choices([1, 2], k=2), lambda: time.perf_counter_ns()):
        messages = _sandbox_messages(_spec(_calling(call)))
        # the innermost user frame is the lambda in this file
        assert messages and f"{HERE}:{call.__code__.co_firstlineno}" in messages[0], messages


def test_async_orchestration_after_an_await_is_watched() -> None:
    async def main(ctx, x):
        await ctx.schedule_activity("act", x)
        return time.time()  # MARK-ASYNC

    import inspect

    lines, first = inspect.getsourcelines(main)
    line = first + next(i for i, t in enumerate(lines) if "# MARK-ASYNC" in t)
    messages = _sandbox_messages(_spec(main))
    assert messages and f"{HERE}:{line}" in messages[0]


def test_legitimate_code_is_not_flagged() -> None:
    def main(ctx, x):
        now = yield ctx.utc_now()
        guid = yield ctx.new_guid()
        ctx.trace_info(f"at {now}: {guid}")
        ctx.set_custom_status({"at": now})
        ctx.set_kv_value("guid", guid)
        rng = random.Random(guid)  # seeded from history: deterministic
        yield ctx.schedule_activity_with_retry("act", rng.randint(1, 6), {"max_attempts": 2, "timeout_ms": 1000})
        yield ctx.schedule_timer(10)
        yield ctx.all([ctx.schedule_activity("act", i) for i in range(3)])
        return time.strftime("%Y", time.gmtime(now / 1000))

    def activity(ctx, x):  # activities may do anything
        return (time.time(), random.random(), str(uuid.uuid4()), datetime.datetime.now().isoformat(), x)[-1]

    assert _sandbox_messages(_spec(main, activity=activity)) == []


_HASH_SPECS = '''
from duroxide_sim.sim.harness import SimSpec, Start

CH = ("email", "sms", "push", "slack", "pager")

def _status(rt, world):
    rt.register_activity("noop", lambda ctx, x: x)
    @rt.register_orchestration("S")
    def s(ctx, _):
        ctx.set_custom_status(",".join(set(CH)))   # order only visible in the custom status
        return (yield ctx.schedule_activity("noop", 1))

def _kv(rt, world):
    rt.register_activity("noop", lambda ctx, x: x)
    @rt.register_orchestration("S")
    def s(ctx, _):
        ctx.set_kv_value("order", ",".join(set(CH)))   # order only visible in a KV value
        return (yield ctx.schedule_activity("noop", 1))

STATUS = SimSpec(name="status", setup=_status, starts=[Start(instance="n", orchestration="S")], fault_transparent=False)
KV = SimSpec(name="kv", setup=_kv, starts=[Start(instance="n", orchestration="S")], fault_transparent=False)
'''


@pytest.mark.parametrize("name", ["STATUS", "KV"])
def test_hash_seed_check_sees_set_order_in_status_and_kv(tmp_path: pathlib.Path, name: str) -> None:
    (tmp_path / "probe_hash_specs.py").write_text(_HASH_SPECS)
    message = check_hash_seed_independence(f"probe_hash_specs.py:{name}", 0, hash_seeds=(0, 1), cwd=str(tmp_path))
    assert message is not None and "depends on PYTHONHASHSEED" in message


def test_logging_in_an_orchestration_is_reported_as_logging_not_as_a_clock_read() -> None:
    """``logging`` reads the clock for its records; the report says what the user did (and what
    to use instead), at the user's line."""
    import inspect
    import logging

    log = logging.getLogger("probe.orchestration")

    def main(ctx, x):
        log.warning("starting %s", x)  # MARK
        return (yield ctx.schedule_activity("act", x))

    lines, first = inspect.getsourcelines(main)
    line = first + next(i for i, text in enumerate(lines) if "# MARK" in text)
    messages = _sandbox_messages(_spec(main))
    assert any("logging" in m and "ctx.trace_info" in m and f"{HERE}:{line}" in m for m in messages), messages
