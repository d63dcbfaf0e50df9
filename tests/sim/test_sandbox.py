"""The sandbox flags clock, randomness and I/O in orchestration code (not in activities), and the
hash-seed check exposes set-order dependence."""

from __future__ import annotations

import datetime
import os
import pathlib
import random
import time
import uuid
from time import time as imported_time

import pytest

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.harness import Simulation, SimSpec, Start
from duroxide_sim.testing.hashseed import check_hash_seed_independence

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _spec_calling(fn, *, in_activity=False):
    def setup(rt, world):
        @rt.register_activity("Probe::activity::run")
        def run(ctx, _):
            if in_activity:
                fn()
            return "ok"

        @rt.register_orchestration("Probe::orchestration::main")
        def main(ctx, _):
            if not in_activity:
                fn()  # PROBE
            return (yield ctx.schedule_activity("Probe::activity::run", None))

    return SimSpec(name="probe", setup=setup, starts=[Start(instance="p", orchestration="Probe::orchestration::main")], fault_transparent=False)


PROBES = {
    "time.time()": lambda: time.time(),
    "from-import time()": lambda: imported_time(),
    "time.monotonic()": lambda: time.monotonic(),
    "datetime.now()": lambda: datetime.datetime.now(),
    "datetime.utcnow()": lambda: datetime.datetime.utcnow(),
    "random.random()": lambda: random.random(),
    "random.randint()": lambda: random.randint(1, 6),
    "uuid.uuid4()": lambda: uuid.uuid4(),
    "os.urandom()": lambda: os.urandom(4),
    "print()": lambda: print("hello"),
    "time.process_time()": lambda: time.process_time(),
    "time.localtime()": lambda: time.localtime(),
    "time.gmtime()": lambda: time.gmtime(),
    "time.strftime(fmt)": lambda: time.strftime("%Y-%m-%d"),
    "time.ctime()": lambda: time.ctime(),
}
EXPECTED = {
    "time.time()": "time.time()", "from-import time()": "time.time()", "time.monotonic()": "time.monotonic()",
    "datetime.now()": "datetime.now()", "datetime.utcnow()": "datetime.utcnow()", "random.random()": "random.random()",
    "random.randint()": "random.randint()", "uuid.uuid4()": "uuid.uuid4()", "os.urandom()": "os.urandom()", "print()": "print()",
    "time.process_time()": "time.process_time()",
    "time.localtime()": "time.localtime() without a time argument", "time.gmtime()": "time.gmtime() without a time argument",
    "time.strftime(fmt)": "time.strftime() without a time argument", "time.ctime()": "time.ctime() without a time argument",
}


@pytest.mark.parametrize("probe", list(PROBES))
def test_sandbox_flags_forbidden_call_in_orchestration(probe: str) -> None:
    result = run_and_check(Simulation(_spec_calling(PROBES[probe]), 0, None, sandbox=True))
    flagged = [f.message for f in result.failures if f.checker == "sandbox"]
    assert flagged, f"{probe} was not flagged"
    assert f"called {EXPECTED[probe]}" in flagged[0]
    assert "orchestration 'Probe::orchestration::main'" in flagged[0]
    assert "test_sandbox.py:" in flagged[0]


@pytest.mark.parametrize("probe", ["time.time()", "random.random()", "uuid.uuid4()", "print()"])
def test_sandbox_allows_the_same_calls_in_activities(probe: str) -> None:
    result = run_and_check(Simulation(_spec_calling(PROBES[probe], in_activity=True), 0, None, sandbox=True))
    assert not [f for f in result.failures if f.checker == "sandbox"]


@pytest.mark.parametrize("pure", [
    lambda: time.localtime(5), lambda: time.gmtime(0), lambda: time.strftime("%Y", time.gmtime(5)),
    lambda: time.ctime(5), lambda: time.asctime(time.gmtime(5)),
], ids=["localtime(ts)", "gmtime(ts)", "strftime(fmt, t)", "ctime(ts)", "asctime(t)"])
def test_time_functions_given_a_time_are_pure_and_allowed(pure) -> None:
    """Formatting a time the orchestration got from its context (ctx.utc_now) is deterministic."""
    result = run_and_check(Simulation(_spec_calling(pure), 0, None, sandbox=True))
    assert not [f for f in result.failures if f.checker == "sandbox"]


def test_seeded_random_instance_is_allowed() -> None:
    rng = random.Random(3)
    result = run_and_check(Simulation(_spec_calling(lambda: rng.randint(1, 6)), 0, None, sandbox=True))
    assert not [f for f in result.failures if f.checker == "sandbox"]


def test_hash_seed_check_exposes_set_order_dependence() -> None:
    """The same seed under PYTHONHASHSEED 0 and 1 gives different traces for set iteration."""
    message = check_hash_seed_independence("tests/sim/specs.py:SET_ORDER", 0, hash_seeds=(0, 1), cwd=str(ROOT))
    assert message is not None
    assert "depends on PYTHONHASHSEED" in message


def test_hash_seed_check_passes_order_independent_code() -> None:
    assert check_hash_seed_independence("tests/sim/specs.py:ORDERS_OK", 3, hash_seeds=(0, 1), cwd=str(ROOT)) is None
