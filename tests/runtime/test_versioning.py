"""End-to-end: versioned orchestrations, pinning and upgrades at continue-as-new (SPEC §12)."""

from __future__ import annotations

import pytest

from duroxide_sim import ConfigurationError, RuntimeOptions

from ._helpers import STYLES, SecondRuntime, events_of, pick


def _register_v1_v2(rt, style):
    """Register 'Flow' 1.0.0 and 2.0.0; each returns its version tag (and its ctx version)."""

    def v1_gen(ctx, _):
        yield ctx.schedule_timer(1)
        return ["v1", ctx.orchestration_version]

    async def v1_coro(ctx, _):
        await ctx.schedule_timer(1)
        return ["v1", ctx.orchestration_version]

    def v2_gen(ctx, _):
        yield ctx.schedule_timer(2)
        return ["v2", ctx.orchestration_version]

    async def v2_coro(ctx, _):
        await ctx.schedule_timer(2)
        return ["v2", ctx.orchestration_version]

    rt.register_orchestration_versioned("Flow", "1.0.0", pick(style, v1_gen, v1_coro))
    rt.register_orchestration_versioned("Flow", "2.0.0", pick(style, v2_gen, v2_coro))


@pytest.mark.parametrize("style", STYLES)
def test_new_start_gets_latest_version(world, style):
    """Without a version, a new instance runs the latest registered version."""
    _register_v1_v2(world.runtime, style)
    world.client.start_orchestration("i1", "Flow")
    assert world.result("i1").output == ["v2", "2.0.0"]
    assert world.client.get_instance_info("i1").orchestration_version == "2.0.0"
    assert events_of(world, "i1", "OrchestrationStarted")[0]["data"]["version"] == "2.0.0"


@pytest.mark.parametrize("style", STYLES)
def test_start_orchestration_versioned_pins_version(world, style):
    """client.start_orchestration_versioned runs exactly the requested version."""
    _register_v1_v2(world.runtime, style)
    world.client.start_orchestration_versioned("i1", "Flow", None, "1.0.0")
    assert world.result("i1").output == ["v1", "1.0.0"]
    assert world.client.get_instance_info("i1").orchestration_version == "1.0.0"


def test_plain_register_is_version_1_0_0(world):
    """register_orchestration registers version 1.0.0."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return ctx.orchestration_version

    world.client.start_orchestration_versioned("i1", "O", None, "1.0.0")
    assert world.result("i1").output == "1.0.0"


@pytest.mark.parametrize("style", STYLES)
def test_running_instance_keeps_its_version_after_upgrade(world, style):
    """An instance started on 1.0.0 keeps running 1.0.0 after a new runtime registers 2.0.0."""

    def v1_gen(ctx, _):
        got = yield ctx.wait_for_event("go")
        return ["v1", got, ctx.orchestration_version]

    async def v1_coro(ctx, _):
        got = await ctx.wait_for_event("go")
        return ["v1", got, ctx.orchestration_version]

    def v2_gen(ctx, _):
        got = yield ctx.wait_for_event("go")
        return ["v2", got, ctx.orchestration_version]

    async def v2_coro(ctx, _):
        got = await ctx.wait_for_event("go")
        return ["v2", got, ctx.orchestration_version]

    world.runtime.register_orchestration("Flow", pick(style, v1_gen, v1_coro))
    world.client.start_orchestration("old", "Flow")
    world.run()
    assert world.client.get_status("old").status == "Running"

    # deploy new code: a fresh runtime that knows 1.0.0 and 2.0.0
    new = SecondRuntime(world)
    new.runtime.register_orchestration_versioned("Flow", "1.0.0", pick(style, v1_gen, v1_coro))
    new.runtime.register_orchestration_versioned("Flow", "2.0.0", pick(style, v2_gen, v2_coro))
    new.client.start_orchestration("fresh", "Flow")
    new.run()
    new.client.raise_event("old", "go", 1)
    new.client.raise_event("fresh", "go", 2)
    assert new.result("old").output == ["v1", 1, "1.0.0"]
    assert new.result("fresh").output == ["v2", 2, "2.0.0"]


@pytest.mark.parametrize("style", STYLES)
def test_continue_as_new_upgrades_to_latest(world, style):
    """continue_as_new (no version) starts the next execution on the latest registered version."""

    def v1_gen(ctx, _):
        yield ctx.schedule_timer(1)
        yield ctx.continue_as_new("from v1")

    async def v1_coro(ctx, _):
        await ctx.schedule_timer(1)
        await ctx.continue_as_new("from v1")

    def v2_gen(ctx, inp):
        yield ctx.schedule_timer(1)
        return {"version": ctx.orchestration_version, "input": inp, "execution": ctx.execution_id}

    async def v2_coro(ctx, inp):
        await ctx.schedule_timer(1)
        return {"version": ctx.orchestration_version, "input": inp, "execution": ctx.execution_id}

    world.runtime.register_orchestration_versioned("Flow", "1.0.0", pick(style, v1_gen, v1_coro))
    world.runtime.register_orchestration_versioned("Flow", "2.0.0", pick(style, v2_gen, v2_coro))
    world.client.start_orchestration_versioned("i1", "Flow", None, "1.0.0")
    assert world.result("i1").output == {"version": "2.0.0", "input": "from v1", "execution": 2}
    assert events_of(world, "i1", "OrchestrationStarted", 1)[0]["data"]["version"] == "1.0.0"
    assert events_of(world, "i1", "OrchestrationStarted", 2)[0]["data"]["version"] == "2.0.0"


@pytest.mark.parametrize("style", STYLES)
def test_continue_as_new_versioned_picks_exact_version(world, style):
    """continue_as_new_versioned(input, version) runs exactly that version next."""

    def make(tag):
        def gen(ctx, n):
            yield ctx.schedule_timer(1)
            if n == 0:
                yield ctx.continue_as_new_versioned(1, "2.0.0")
            return [tag, n]

        async def coro(ctx, n):
            await ctx.schedule_timer(1)
            if n == 0:
                await ctx.continue_as_new_versioned(1, "2.0.0")
            return [tag, n]

        return pick(style, gen, coro)

    world.runtime.register_orchestration_versioned("Flow", "1.0.0", make("v1"))
    world.runtime.register_orchestration_versioned("Flow", "2.0.0", make("v2"))
    world.runtime.register_orchestration_versioned("Flow", "3.0.0", make("v3"))
    world.client.start_orchestration_versioned("i1", "Flow", 0, "1.0.0")
    assert world.result("i1").output == ["v2", 1]


def test_sub_orchestration_versioned(world):
    """schedule_sub_orchestration_versioned runs the requested child version; without one, the latest."""
    _register_v1_v2(world.runtime, "generator")

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        pinned = yield ctx.schedule_sub_orchestration_versioned("Flow", "1.0.0")
        latest = yield ctx.schedule_sub_orchestration_versioned("Flow", None)
        with_id = yield ctx.schedule_sub_orchestration_versioned_with_id("Flow", "1.0.0", "kid")
        return [pinned, latest, with_id]

    world.client.start_orchestration("p", "Parent")
    assert world.result("p").output == [["v1", "1.0.0"], ["v2", "2.0.0"], ["v1", "1.0.0"]]


def test_detached_start_versioned(world):
    """start_orchestration_versioned (detached) runs the requested version."""
    _register_v1_v2(world.runtime, "async")

    @world.runtime.register_orchestration("Starter")
    def starter(ctx, _):
        yield ctx.start_orchestration_versioned("Flow", "1.0.0", "d1")
        yield ctx.start_orchestration("Flow", "d2")
        return "started"

    world.client.start_orchestration("s", "Starter")
    assert world.result("s").output == "started"
    assert world.result("d1").output == ["v1", "1.0.0"]
    assert world.result("d2").output == ["v2", "2.0.0"]


def test_exact_version_policy(world):
    """set_orchestration_version_policy makes unversioned starts use that exact version."""
    _register_v1_v2(world.runtime, "generator")
    world.runtime.set_orchestration_version_policy("Flow", "1.0.0")
    world.client.start_orchestration("i1", "Flow")
    assert world.result("i1").output == ["v1", "1.0.0"]


def test_versions_must_be_registered_in_ascending_order(world):
    """Registering a lower version after a higher one, or a duplicate, is a ConfigurationError."""
    world.runtime.register_orchestration_versioned("Flow", "2.0.0", lambda ctx, x: x)
    with pytest.raises(ConfigurationError):
        world.runtime.register_orchestration_versioned("Flow", "1.0.0", lambda ctx, x: x)
    with pytest.raises(ConfigurationError):
        world.runtime.register_orchestration_versioned("Flow", "2.0.0", lambda ctx, x: x)
    with pytest.raises(ConfigurationError):
        world.runtime.register_orchestration_versioned("Other", "1.0", lambda ctx, x: x)


def test_client_rejects_malformed_version(world):
    """start_orchestration_versioned with a non-semver version is rejected by the client."""
    with pytest.raises(ConfigurationError):
        world.client.start_orchestration_versioned("i1", "Flow", None, "latest")


def test_unregistered_version_poisons(world):
    """Starting a version no runtime has ends Failed with a poison error after max_attempts."""
    from tests.conftest import make_world

    w = make_world(RuntimeOptions(max_attempts=3))
    _register_v1_v2(w.runtime, "generator")
    w.client.start_orchestration_versioned("i1", "Flow", None, "9.9.9")
    st = w.result("i1")
    assert st.status == "Failed"
    assert st.error.startswith("poison: orchestration i1 exceeded 4 attempts (max 3)")


def test_continue_as_new_to_missing_version_poisons(world):
    """continue_as_new_versioned to a version no runtime has poisons the instance."""
    from tests.conftest import make_world

    w = make_world(RuntimeOptions(max_attempts=2))

    @w.runtime.register_orchestration("O")
    def orch(ctx, x):
        yield ctx.continue_as_new_versioned(x, "5.0.0")

    w.client.start_orchestration("i1", "O", 0)
    st = w.result("i1")
    assert st.status == "Failed"
    assert st.error == "poison: orchestration i1 exceeded 3 attempts (max 2)"
