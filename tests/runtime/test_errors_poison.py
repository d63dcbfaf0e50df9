"""End-to-end: orchestration errors, poison messages, unregistered handlers, nondeterminism (SPEC §10, §3.11)."""

from __future__ import annotations

import pytest

from duroxide_sim import RuntimeOptions, TaskFailedError
from tests.conftest import make_world

from ._helpers import STYLES, SecondRuntime, kinds, pick


@pytest.fixture
def strict():
    """A world that poisons after 3 attempts."""
    w = make_world(RuntimeOptions(max_attempts=3))
    yield w
    w.provider._check()


@pytest.mark.parametrize("style", STYLES)
def test_orchestration_exception_fails_with_type_message_and_traceback(world, style):
    """An exception escaping the orchestration fails it with 'Type: message' plus the user traceback."""

    def gen(ctx, _):
        yield ctx.schedule_timer(1)
        raise ValueError("broken invariant")

    async def coro(ctx, _):
        await ctx.schedule_timer(1)
        raise ValueError("broken invariant")

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Failed"
    assert st.error.startswith("Traceback (most recent call last):")
    assert st.error.splitlines()[-1] == "ValueError: broken invariant"
    assert "Traceback" in st.error and "test_errors_poison.py" in st.error
    assert "duroxide_sim" not in st.error.split("Traceback", 1)[1]  # engine frames left out


def test_exception_before_first_yield_fails(world):
    """An exception before the first yield fails the orchestration on its first turn."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, x):
        raise KeyError(x)
        yield

    world.client.start_orchestration("i1", "O", "k")
    st = world.result("i1")
    assert st.error.splitlines()[-1] == "KeyError: 'k'"
    assert kinds(world, "i1") == ["OrchestrationStarted", "OrchestrationFailed"]


def test_plain_function_orchestration_completes_immediately(world):
    """A non-generator orchestration function completes with its return value in one turn."""

    @world.runtime.register_orchestration("Plain")
    def plain(ctx, x):
        return {"doubled": x * 2, "instance": ctx.instance_id}

    world.client.start_orchestration("i1", "Plain", 4)
    assert world.result("i1").output == {"doubled": 8, "instance": "i1"}


@pytest.mark.parametrize("style", STYLES)
def test_yielding_a_non_task_raises_type_error(world, style):
    """Yielding/awaiting something that is not a durable task raises TypeError in the orchestration."""
    import asyncio

    def gen(ctx, _):
        try:
            yield 42
        except TypeError as exc:
            return str(exc)

    async def coro(ctx, _):
        try:
            await asyncio.sleep(0)
        except TypeError as exc:
            return str(exc)

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert "only yield/await tasks" in world.result("i1").output


def test_unserializable_output_fails_instance(world):
    """An orchestration output JSON cannot encode fails the instance with a serialization message."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return object()

    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Failed"
    assert "cannot be encoded as JSON" in st.error and "object" in st.error


def test_unregistered_orchestration_poisons(strict):
    """An unregistered orchestration name is retried with backoff, then fails with a poison error."""
    t0 = strict.clock.now_ms()
    strict.client.start_orchestration("i1", "Nope", {"x": 1})
    st = strict.result("i1")
    assert st.status == "Failed"
    assert st.error == "poison: orchestration i1 exceeded 4 attempts (max 3)"
    assert kinds(strict, "i1") == ["OrchestrationStarted", "OrchestrationFailed"]
    # backoff between the three failed resolutions: 1 s, 2 s, 4 s
    assert strict.clock.now_ms() - t0 >= 7_000
    assert strict.runtime.metrics_snapshot()["orch_poison"] == 1


def test_unregistered_orchestration_runs_once_deployed(strict):
    """An instance waiting for an unregistered name runs when a runtime that knows it appears."""
    strict.client.start_orchestration("i1", "Late", 5)
    strict.run_for(1_500)  # first attempt failed to resolve; not yet poisoned
    assert strict.client.get_status("i1").status == "NotFound"
    new = SecondRuntime(strict, RuntimeOptions(max_attempts=3))
    new.runtime.register_orchestration("Late", lambda ctx, x: x + 1)
    assert new.result("i1").output == 6


@pytest.mark.parametrize("style", STYLES)
def test_unregistered_activity_poisons_orchestration(strict, style):
    """An unregistered activity poisons; the orchestration fails with it (user code cannot catch it)."""
    caught = []

    def gen(ctx, _):
        try:
            yield ctx.schedule_activity("Missing", 1)
        except TaskFailedError as exc:
            caught.append(str(exc))
        return "not reached"

    async def coro(ctx, _):
        try:
            await ctx.schedule_activity("Missing", 1)
        except TaskFailedError as exc:
            caught.append(str(exc))
        return "not reached"

    strict.runtime.register_orchestration("O", pick(style, gen, coro))
    strict.client.start_orchestration("i1", "O")
    st = strict.result("i1")
    assert st.status == "Failed"
    assert st.error == "poison: activity Missing#2 exceeded 4 attempts (max 3)"
    assert caught == []
    assert strict.runtime.metrics_snapshot()["activity_poison"] == 1


def test_poisoned_child_fails_parent(strict):
    """A child that poisons fails its parent with the same poison error."""

    @strict.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        try:
            yield ctx.schedule_sub_orchestration_with_id("Ghost", "kid")
        except TaskFailedError:
            return "swallowed"

    strict.client.start_orchestration("p", "Parent")
    st = strict.result("p")
    assert st.status == "Failed"
    assert st.error == "poison: orchestration kid exceeded 4 attempts (max 3)"
    assert strict.client.get_status("kid").error == st.error


@pytest.mark.parametrize("style", STYLES)
def test_changed_code_is_nondeterministic(world, style):
    """Redeploying changed code under an in-flight instance fails it with 'nondeterministic: ...'."""

    @world.runtime.register_activity("A")
    def a(ctx, x):
        return x

    def old_gen(ctx, _):
        yield ctx.schedule_activity("A", 1)
        return (yield ctx.wait_for_event("go"))

    async def old_coro(ctx, _):
        await ctx.schedule_activity("A", 1)
        return await ctx.wait_for_event("go")

    def new_gen(ctx, _):
        yield ctx.schedule_activity("B", 1)
        return (yield ctx.wait_for_event("go"))

    async def new_coro(ctx, _):
        await ctx.schedule_activity("B", 1)
        return await ctx.wait_for_event("go")

    world.runtime.register_orchestration("Flow", pick(style, old_gen, old_coro))
    world.client.start_orchestration("i1", "Flow")
    world.run()
    assert world.client.get_status("i1").status == "Running"

    new = SecondRuntime(world)
    new.runtime.register_activity("B", lambda ctx, x: x)
    new.runtime.register_orchestration("Flow", pick(style, new_gen, new_coro))
    new.client.raise_event("i1", "go", "x")
    st = new.result("i1")
    assert st.status == "Failed"
    assert st.error.startswith("nondeterministic: schedule mismatch")
    assert "'A'" in st.error and "'B'" in st.error


def test_removed_step_is_nondeterministic(world):
    """New code that no longer emits a recorded schedule fails as nondeterministic."""

    @world.runtime.register_orchestration("Flow")
    def old(ctx, _):
        yield ctx.schedule_timer(10)
        return (yield ctx.wait_for_event("go"))

    world.client.start_orchestration("i1", "Flow")
    world.run()

    new = SecondRuntime(world)

    @new.runtime.register_orchestration("Flow")
    def changed(ctx, _):
        return (yield ctx.wait_for_event("go"))

    new.client.raise_event("i1", "go", 1)
    st = new.result("i1")
    assert st.status == "Failed"
    assert st.error.startswith("nondeterministic:")


def test_identical_redeploy_is_deterministic(world):
    """Redeploying the same code under an in-flight instance finishes normally."""

    def flow(ctx, _):
        yield ctx.schedule_timer(10)
        return (yield ctx.wait_for_event("go"))

    world.runtime.register_orchestration("Flow", flow)
    world.client.start_orchestration("i1", "Flow")
    world.run()
    new = SecondRuntime(world)
    new.runtime.register_orchestration("Flow", flow)
    new.client.raise_event("i1", "go", "fine")
    assert new.result("i1").output == "fine"


def test_nondeterministic_child_fails_parent(world):
    """A child failing with nondeterminism aborts its parent with the same error."""

    @world.runtime.register_orchestration("Child")
    def child(ctx, _):
        yield ctx.schedule_timer(10)
        return (yield ctx.wait_for_event("go"))

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        try:
            return (yield ctx.schedule_sub_orchestration_with_id("Child", "kid"))
        except TaskFailedError:
            return "swallowed"

    world.client.start_orchestration("p", "Parent")
    world.run()

    new = SecondRuntime(world)
    new.runtime.register_orchestration("Parent", parent)

    @new.runtime.register_orchestration("Child")
    def child_v2(ctx, _):
        yield ctx.schedule_activity("Different")
        return (yield ctx.wait_for_event("go"))

    new.client.raise_event("kid", "go", 1)
    st = new.result("p")
    assert st.status == "Failed"
    assert st.error.startswith("nondeterministic:")
    assert new.client.get_status("kid").error == st.error
    assert new.runtime.metrics_snapshot()["orch_configuration_errors"] == 2


@pytest.mark.parametrize("style", STYLES)
def test_changed_kv_write_is_nondeterministic(world, style):
    """New code writing a different KV value than history recorded fails with 'nondeterministic: kv set mismatch'."""

    def make(value):
        def gen(ctx, _):
            ctx.set_kv_value("mode", value)
            return (yield ctx.wait_for_event("go"))

        async def coro(ctx, _):
            ctx.set_kv_value("mode", value)
            return await ctx.wait_for_event("go")

        return pick(style, gen, coro)

    world.runtime.register_orchestration("Flow", make("fast"))
    world.client.start_orchestration("i1", "Flow")
    world.run()
    new = SecondRuntime(world)
    new.runtime.register_orchestration("Flow", make("slow"))
    new.client.raise_event("i1", "go", 1)
    st = new.result("i1")
    assert st.status == "Failed"
    assert st.error.startswith("nondeterministic: kv set mismatch")


def test_poisoned_continue_as_new_fails_the_new_execution(strict):
    """A continue-as-new to a missing version poisons execution 2; execution 1 stays ContinuedAsNew."""

    @strict.runtime.register_orchestration("O")
    def o(ctx, x):
        yield ctx.continue_as_new_versioned(x, "5.0.0")

    strict.client.start_orchestration("i1", "O", 1)
    st = strict.result("i1")
    assert st.status == "Failed"
    assert st.error.startswith("poison: orchestration i1 exceeded")
    assert strict.client.list_executions("i1") == [1, 2]
    first = [e["kind"] for e in strict.client.read_execution_history("i1", 1)]
    assert first == ["OrchestrationStarted", "OrchestrationContinuedAsNew"]
    second = [e["kind"] for e in strict.client.read_execution_history("i1", 2)]
    assert second == ["OrchestrationStarted", "OrchestrationFailed"]
