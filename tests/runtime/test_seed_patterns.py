"""The seed workflow patterns, end to end on the simulated world.

Each test is a pattern a Duroxide user writes daily: an idempotent activity that checks before
acting, retry with exponential back-off and a per-attempt timeout, a sub-orchestration, a
detached orchestration, an actor that exits when ``select2(timer, wait("InstanceDeleted"))``
picks the signal, and a continue-as-new loop whose history stays bounded.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import World

STYLES = ["generator", "async"]


def test_idempotent_activity_survives_duplicate_delivery(world: World) -> None:
    """An activity that checks before creating leaves one resource even when run twice."""
    store: dict[str, dict] = {}
    calls: list[str] = []

    @world.runtime.register_activity("Provision::activity::create_record")
    def create_record(ctx, req):
        calls.append(req["id"])
        if req["id"] in store:  # check first: a re-delivered call must not create twice
            return store[req["id"]]
        store[req["id"]] = {"id": req["id"], "size": req["size"]}
        return store[req["id"]]

    @world.runtime.register_orchestration("Provision::orchestration::create")
    def create(ctx, req):
        return (yield ctx.schedule_activity("Provision::activity::create_record", req))

    world.client.start_orchestration("db-1", "Provision::orchestration::create", {"id": "db-1", "size": 8})
    world.runtime.orchestration_dispatcher.step()  # the first turn dispatches the activity
    # A worker runs the activity, then "crashes" before acking: its lock expires and the
    # activity is delivered again.
    lease = world.runtime.worker_dispatcher.fetch()
    assert lease is not None
    world.runtime.worker_dispatcher.execute(lease)
    world.clock.advance(world.runtime.options.worker_lock_timeout_ms + 1)
    status = world.result("db-1")
    assert status.status == "Completed"
    assert status.output == {"id": "db-1", "size": 8}
    assert calls == ["db-1", "db-1"], "the activity must have been delivered twice"
    assert list(store) == ["db-1"]


@pytest.mark.parametrize("style", STYLES)
def test_retry_with_exponential_backoff_and_timeout(world: World, style: str) -> None:
    """Two failures then success: back-off timers of 100 ms and 200 ms, a timeout timer per attempt."""
    attempts = []

    @world.runtime.register_activity("Deploy::activity::deploy")
    def deploy(ctx, name):
        attempts.append(ctx.attempt)
        if len(attempts) < 3:
            raise ConnectionError("control plane busy")
        return f"deployed {name}"

    policy = {"max_attempts": 5, "backoff": "exponential", "timeout_ms": 60_000}
    if style == "generator":

        def orch(ctx, name):
            return (yield ctx.schedule_activity_with_retry("Deploy::activity::deploy", name, policy))
    else:

        async def orch(ctx, name):
            return await ctx.schedule_activity_with_retry("Deploy::activity::deploy", name, policy)

    world.runtime.register_orchestration("Deploy::orchestration::deploy", orch)
    world.client.start_orchestration("dep-1", "Deploy::orchestration::deploy", "pg-1")
    status = world.result("dep-1")
    assert status.status == "Completed", status.error
    assert status.output == "deployed pg-1"
    history = world.client.read_execution_history("dep-1", 1)
    kinds = [e["kind"] for e in history]
    assert kinds.count("ActivityScheduled") == 3
    assert kinds.count("ActivityFailed") == 2
    timers = [(e["event_id"], json.loads(e["data"])["fireAtMs"], e["timestamp_ms"]) for e in history if e["kind"] == "TimerCreated"]
    # attempt timeout timers (60 s) interleaved with back-off timers (100 ms, then 200 ms)
    delays = [fire - ts for _, fire, ts in timers]
    assert delays == [60_000, 100, 60_000, 200, 60_000]


@pytest.mark.parametrize("style", STYLES)
def test_retry_timeout_is_not_retried(world: World, style: str) -> None:
    """An attempt that exceeds its timeout fails the call with 'timeout: activity timed out'."""
    runs = []

    @world.runtime.register_activity("Slow::activity::never_acks")
    def never_acks(ctx, _):
        runs.append(1)
        return "late"

    policy = {"max_attempts": 3, "timeout_ms": 1_000}

    if style == "generator":

        def orch(ctx, _):
            try:
                yield ctx.schedule_activity_with_retry("Slow::activity::never_acks", None, policy)
            except Exception as exc:  # noqa: BLE001
                return str(exc)
    else:

        async def orch(ctx, _):
            try:
                await ctx.schedule_activity_with_retry("Slow::activity::never_acks", None, policy)
            except Exception as exc:  # noqa: BLE001
                return str(exc)

    world.runtime.register_orchestration("Slow::orchestration::call", orch)
    world.client.start_orchestration("slow-1", "Slow::orchestration::call", None)
    # Run only orchestration turns, so the activity never completes and the timer wins.
    world.runtime.orchestration_dispatcher.step()
    world.clock.advance(1_001)
    while world.runtime.orchestration_dispatcher.step():
        pass
    status = world.client.get_status("slow-1")
    assert status.status == "Completed"
    assert status.output == "timeout: activity timed out"
    kinds = [e["kind"] for e in world.client.read_execution_history("slow-1", 1)]
    assert kinds.count("ActivityScheduled") == 1, "timeouts are never retried"
    assert "ActivityCancelRequested" in kinds, "the timed-out attempt is cancelled"


@pytest.mark.parametrize("style", STYLES)
def test_sub_orchestration(world: World, style: str) -> None:
    """A parent awaits a child; the child's output is the parent's value; ids are derived."""

    @world.runtime.register_activity("Math::activity::square")
    def square(ctx, x):
        return x * x

    @world.runtime.register_orchestration("Math::orchestration::child")
    def child(ctx, x):
        return (yield ctx.schedule_activity("Math::activity::square", x))

    if style == "generator":

        def parent(ctx, xs):
            total = 0
            for x in xs:
                total += yield ctx.schedule_sub_orchestration("Math::orchestration::child", x)
            return total
    else:

        async def parent(ctx, xs):
            total = 0
            for x in xs:
                total += await ctx.schedule_sub_orchestration("Math::orchestration::child", x)
            return total

    world.runtime.register_orchestration("Math::orchestration::parent", parent)
    world.client.start_orchestration("p", "Math::orchestration::parent", [1, 2, 3])
    assert world.result("p").output == 14
    children = sorted(i for i in world.client.list_all_instances() if i != "p")
    assert children == ["p::sub::2", "p::sub::4", "p::sub::6"]
    assert world.client.get_instance_info("p::sub::2").parent_instance_id == "p"


@pytest.mark.parametrize("style", STYLES)
def test_detached_orchestration(world: World, style: str) -> None:
    """A fire-and-forget start runs on its own, with no parent link, after the starter ends."""

    @world.runtime.register_orchestration("Actor::orchestration::actor")
    def actor(ctx, name):
        yield ctx.schedule_timer(60_000)
        return f"actor {name} done"

    if style == "generator":

        def starter(ctx, name):
            yield ctx.start_orchestration("Actor::orchestration::actor", f"actor-{name}", name)
            return "started"
    else:

        async def starter(ctx, name):
            await ctx.start_orchestration("Actor::orchestration::actor", f"actor-{name}", name)
            return "started"

    world.runtime.register_orchestration("Actor::orchestration::starter", starter)
    world.client.start_orchestration("s", "Actor::orchestration::starter", "db1")
    assert world.result("s").output == "started"
    assert world.result("actor-db1").output == "actor db1 done"
    assert world.client.get_instance_info("actor-db1").parent_instance_id is None


@pytest.mark.parametrize("style", STYLES)
def test_actor_exits_on_instance_deleted_signal(world: World, style: str) -> None:
    """select2(timer, wait('InstanceDeleted')) loops with continue-as-new until the signal wins."""

    @world.runtime.register_activity("Actor::activity::health_check")
    def health_check(ctx, n):
        return n + 1

    if style == "generator":

        def actor(ctx, checks):
            checks = yield ctx.schedule_activity("Actor::activity::health_check", checks)
            winner = yield ctx.select2(ctx.schedule_timer(5 * 60_000), ctx.schedule_wait("InstanceDeleted"))
            if winner.index() == 1:
                return {"exit": "deleted", "checks": checks, "signal": winner.value}
            yield ctx.continue_as_new(checks)
    else:

        async def actor(ctx, checks):
            checks = await ctx.schedule_activity("Actor::activity::health_check", checks)
            winner = await ctx.select2(ctx.schedule_timer(5 * 60_000), ctx.schedule_wait("InstanceDeleted"))
            if winner.index() == 1:
                return {"exit": "deleted", "checks": checks, "signal": winner.value}
            await ctx.continue_as_new(checks)

    world.runtime.register_orchestration("Actor::orchestration::instance_actor", actor)
    world.client.start_orchestration("actor-1", "Actor::orchestration::instance_actor", 0)
    world.run_for(3 * 5 * 60_000 + 1_000)  # three timer periods pass: executions 1..4
    assert world.client.get_status("actor-1").status == "Running"
    world.client.raise_event("actor-1", "InstanceDeleted", {"by": "ops"})
    status = world.result("actor-1")
    assert status.status == "Completed"
    assert status.output == {"exit": "deleted", "checks": 4, "signal": {"by": "ops"}}
    assert world.client.list_executions("actor-1") == [1, 2, 3, 4]


@pytest.mark.parametrize("style", STYLES)
def test_continue_as_new_loop_keeps_history_bounded(world: World, style: str) -> None:
    """100 iterations of timer + continue-as-new: 101 executions, each with the same small history."""
    if style == "generator":

        def loop(ctx, n):
            yield ctx.schedule_timer(1_000)
            if n >= 100:
                return n
            yield ctx.continue_as_new(n + 1)
    else:

        async def loop(ctx, n):
            await ctx.schedule_timer(1_000)
            if n >= 100:
                return n
            await ctx.continue_as_new(n + 1)

    world.runtime.register_orchestration("Loop::orchestration::tick", loop)
    world.client.start_orchestration("loop", "Loop::orchestration::tick", 0)
    status = world.result("loop")
    assert status.output == 100
    executions = world.client.list_executions("loop")
    assert executions == list(range(1, 102))
    sizes = {len(world.client.read_execution_history("loop", e)) for e in executions}
    assert max(sizes) <= 4, sizes  # Started, TimerCreated, TimerFired, terminal
