"""A changed orchestration replayed against an in-flight history fails with a message naming the
event id, the recorded call, the new call and the source line of the new code's yield/await."""

from __future__ import annotations

import inspect

import pytest

from duroxide_sim import Client, Runtime
from duroxide_sim.sim import SequentialDriver, SequentialIds
from tests.conftest import World


def _v1(ctx, x):
    a = yield ctx.schedule_activity("Step::one", x)
    b = yield ctx.schedule_activity("Step::two", a)
    yield ctx.wait_for_event("go")
    return b


def _v2_renamed(ctx, x):
    a = yield ctx.schedule_activity("Step::uno", x)  # MARK
    b = yield ctx.schedule_activity("Step::two", a)
    yield ctx.wait_for_event("go")
    return b


def _v2_new_input(ctx, x):
    a = yield ctx.schedule_activity("Step::one", x + 100)  # MARK
    b = yield ctx.schedule_activity("Step::two", a)
    yield ctx.wait_for_event("go")
    return b


def _v2_removed_step(ctx, x):
    a = yield ctx.schedule_activity("Step::one", x)
    yield ctx.wait_for_event("go")  # MARK
    return a


async def _v2_async_renamed(ctx, x):
    a = await ctx.schedule_activity("Step::uno", x)  # MARK
    b = await ctx.schedule_activity("Step::two", a)
    await ctx.wait_for_event("go")
    return b


def _mark_line(fn) -> int:
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if "# MARK" in line)


def _register_activities(rt: Runtime) -> None:
    rt.register_activity("Step::one", lambda ctx, x: x + 1)
    rt.register_activity("Step::uno", lambda ctx, x: x + 1)
    rt.register_activity("Step::two", lambda ctx, x: x * 2)


CASES = [
    (_v2_renamed, 2, "ActivityScheduled(name='Step::one', input='1')", "CallActivity(name='Step::uno', input='1')"),
    (_v2_new_input, 2, "ActivityScheduled(name='Step::one', input='1')", "CallActivity(name='Step::one', input='101')"),
    (_v2_removed_step, 4, "ActivityScheduled(name='Step::two', input='2')", "WaitExternal(name='go')"),
    (_v2_async_renamed, 2, "ActivityScheduled(name='Step::one', input='1')", "CallActivity(name='Step::uno', input='1')"),
]


@pytest.mark.parametrize("v2, event_id, recorded, new_call", CASES, ids=[c[0].__name__ for c in CASES])
def test_changed_code_reports_exact_divergence(world: World, v2, event_id: int, recorded: str, new_call: str) -> None:
    """Deploying incompatible code mid-flight fails the instance with a precise message."""
    _register_activities(world.runtime)
    world.runtime.register_orchestration("Flow", _v1)
    world.client.start_orchestration("flow-1", "Flow", 1)
    world.run()
    assert world.client.get_status("flow-1").status == "Running"  # waiting for "go"

    # A new deployment: same provider, new code.
    rt2 = Runtime(world.provider, clock=world.clock, ids=SequentialIds(1))
    _register_activities(rt2)
    rt2.register_orchestration("Flow", v2)
    driver2 = SequentialDriver(rt2, world.clock)
    client2 = Client(world.provider, clock=world.clock, sleep=driver2.sleep)
    client2.raise_event("flow-1", "go", None)
    status = client2.wait_for_orchestration("flow-1", 10**9)

    assert status.status == "Failed"
    message = status.error
    assert message.startswith("nondeterministic: schedule mismatch"), message
    assert f"event_id={event_id}" in message
    assert recorded in message
    assert new_call in message
    assert f"{__file__}:{_mark_line(v2)}" in message
    assert "instance 'flow-1', execution 1" in message


def test_unchanged_code_replays_cleanly(world: World) -> None:
    """The same code deployed again finishes the in-flight instance normally."""
    _register_activities(world.runtime)
    world.runtime.register_orchestration("Flow", _v1)
    world.client.start_orchestration("flow-1", "Flow", 1)
    world.run()
    rt2 = Runtime(world.provider, clock=world.clock, ids=SequentialIds(1))
    _register_activities(rt2)
    rt2.register_orchestration("Flow", _v1)
    driver2 = SequentialDriver(rt2, world.clock)
    client2 = Client(world.provider, clock=world.clock, sleep=driver2.sleep)
    client2.raise_event("flow-1", "go", None)
    status = client2.wait_for_orchestration("flow-1", 10**9)
    assert (status.status, status.output) == ("Completed", 4)
