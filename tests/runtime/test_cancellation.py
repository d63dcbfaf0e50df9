"""End-to-end: instance cancellation, cascading to children, activity cancellation (SPEC §11)."""

from __future__ import annotations

import threading
import time

import pytest

from duroxide_sim import TaskFailedError

from ._helpers import STYLES, events_of, kinds, pick


def _waiting(world, style, name="Waiting"):
    def gen(ctx, _):
        return (yield ctx.wait_for_event("never"))

    async def coro(ctx, _):
        return await ctx.wait_for_event("never")

    world.runtime.register_orchestration(name, pick(style, gen, coro))


@pytest.mark.parametrize("style", STYLES)
def test_cancel_running_instance_fails_with_reason(world, style):
    """cancel_instance on a running instance ends it Failed with 'canceled: {reason}'."""
    _waiting(world, style)
    world.client.start_orchestration("i1", "Waiting")
    world.run()
    world.client.cancel_instance("i1", "user abort")
    st = world.result("i1")
    assert st.status == "Failed"
    assert st.error == "canceled: user abort"
    ks = kinds(world, "i1")
    assert ks[-3:] == ["OrchestrationCancelRequested", "ExternalSubscribedCancelled", "OrchestrationFailed"]
    assert events_of(world, "i1", "OrchestrationCancelRequested")[0]["data"]["reason"] == "user abort"


def test_cancel_without_reason(world):
    """cancel_instance without a reason gives 'canceled: ' with an empty reason."""
    _waiting(world, "generator")
    world.client.start_orchestration("i1", "Waiting")
    world.run()
    world.client.cancel_instance("i1")
    assert world.result("i1").error == "canceled: "


def test_cancel_in_start_batch(world):
    """Start and cancel in one batch give Started, CancelRequested, Failed."""
    _waiting(world, "generator")
    world.client.start_orchestration("i1", "Waiting")
    world.client.cancel_instance("i1", "too soon")
    st = world.result("i1")
    assert st.error == "canceled: too soon"
    assert kinds(world, "i1")[:2] == ["OrchestrationStarted", "OrchestrationCancelRequested"]
    assert kinds(world, "i1")[-1] == "OrchestrationFailed"


def test_cancel_completed_instance_is_ignored(world):
    """Cancelling a completed instance changes nothing."""

    @world.runtime.register_orchestration("Quick")
    def quick(ctx, _):
        return "done"

    world.client.start_orchestration("i1", "Quick")
    assert world.result("i1").output == "done"
    world.client.cancel_instance("i1", "late")
    world.run()
    st = world.client.get_status("i1")
    assert (st.status, st.output) == ("Completed", "done")
    assert "OrchestrationCancelRequested" not in kinds(world, "i1")


def test_cancel_unknown_instance_is_not_an_error(world):
    """cancel_instance on an unknown id succeeds and does not block other instances."""
    _waiting(world, "generator")
    world.client.cancel_instance("ghost", "x")
    world.client.start_orchestration("i1", "Waiting")
    world.run()
    world.client.raise_event("i1", "never", 1)
    assert world.result("i1").output == 1
    assert world.client.get_status("ghost").status == "NotFound"


def test_cancel_twice_records_one_request(world):
    """A second cancel is filtered: only one OrchestrationCancelRequested is recorded."""
    _waiting(world, "generator")
    world.client.start_orchestration("i1", "Waiting")
    world.run()
    world.client.cancel_instance("i1", "first")
    world.client.cancel_instance("i1", "second")
    assert world.result("i1").error == "canceled: first"
    assert kinds(world, "i1").count("OrchestrationCancelRequested") == 1


@pytest.mark.parametrize("style", STYLES)
def test_cancel_cascades_to_running_child(world, style):
    """Cancelling a parent cancels its running child with 'canceled: parent canceled'."""
    _waiting(world, "generator", name="Child")

    def gen(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("Child", "kid"))

    async def coro(ctx, _):
        return await ctx.schedule_sub_orchestration_with_id("Child", "kid")

    world.runtime.register_orchestration("Parent", pick(style, gen, coro))
    world.client.start_orchestration("p", "Parent")
    world.run()
    assert world.client.get_status("kid").status == "Running"
    world.client.cancel_instance("p", "shutdown")
    assert world.result("p").error == "canceled: shutdown"
    assert world.result("kid").error == "canceled: parent canceled"


def test_cancel_cascades_to_grandchildren(world):
    """Cancellation cascades through every level of sub-orchestrations."""
    _waiting(world, "generator", name="Leaf")

    @world.runtime.register_orchestration("Mid")
    def mid(ctx, _):
        return (yield ctx.schedule_sub_orchestration("Leaf"))

    @world.runtime.register_orchestration("Root")
    def root(ctx, _):
        return (yield ctx.schedule_sub_orchestration("Mid"))

    world.client.start_orchestration("r", "Root")
    world.run()
    world.client.cancel_instance("r", "all of it")
    assert world.result("r").error == "canceled: all of it"
    assert world.result("r::sub::2").error == "canceled: parent canceled"
    assert world.result("r::sub::2::sub::2").error == "canceled: parent canceled"


@pytest.mark.parametrize("style", STYLES)
def test_parent_sees_cancelled_child_as_task_failed(world, style):
    """A parent whose child is cancelled directly gets TaskFailedError('canceled: ...')."""
    _waiting(world, "generator", name="Child")

    def gen(ctx, _):
        try:
            yield ctx.schedule_sub_orchestration_with_id("Child", "kid")
        except TaskFailedError as exc:
            return f"child said: {exc}"

    async def coro(ctx, _):
        try:
            await ctx.schedule_sub_orchestration_with_id("Child", "kid")
        except TaskFailedError as exc:
            return f"child said: {exc}"

    world.runtime.register_orchestration("Parent", pick(style, gen, coro))
    world.client.start_orchestration("p", "Parent")
    world.run()
    world.client.cancel_instance("kid", "operator")
    assert world.result("kid").error == "canceled: operator"
    assert world.result("p").output == "child said: canceled: operator"


def test_uncaught_child_cancellation_fails_parent(world):
    """A cancelled child the parent does not handle fails the parent with 'canceled: ...' in the error."""
    _waiting(world, "generator", name="Child")

    @world.runtime.register_orchestration("Parent")
    async def parent(ctx, _):
        return await ctx.schedule_sub_orchestration_with_id("Child", "kid")

    world.client.start_orchestration("p", "Parent")
    world.run()
    world.client.cancel_instance("kid", "stop")
    st = world.result("p")
    assert st.status == "Failed"
    assert "canceled: stop" in st.error


def test_cancel_removes_queued_activity(world):
    """Cancelling an instance with a queued activity records a terminal breadcrumb and deletes its work item."""
    calls = []

    @world.runtime.register_activity("Gpu")
    def gpu(ctx, _):
        calls.append(1)

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_activity("Gpu").with_tag("gpu")  # no gpu worker: stays queued

    world.client.start_orchestration("i1", "O")
    world.run()
    assert world.client.get_queue_depths().worker_queue == 1
    world.client.cancel_instance("i1", "no gpu today")
    assert world.result("i1").error == "canceled: no gpu today"
    crumbs = events_of(world, "i1", "ActivityCancelRequested")
    assert [c["data"]["reason"] for c in crumbs] == ["orchestration_terminal_failed"]
    assert world.client.get_queue_depths().worker_queue == 0
    assert calls == []


def test_cancel_beats_completion_in_same_turn(world):
    """A cancel request that arrives with the last completion wins over the return value."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.wait_for_event("go")
        return "finished"

    world.client.start_orchestration("i1", "O")
    world.run()
    world.client.raise_event("i1", "go")
    world.client.cancel_instance("i1", "raced")
    st = world.result("i1")
    assert (st.status, st.error) == ("Failed", "canceled: raced")


def test_metrics_count_cancellation_as_failure(world):
    """A cancelled instance counts as an orchestration failure (application error)."""
    _waiting(world, "generator")
    world.client.start_orchestration("i1", "Waiting")
    world.run()
    world.client.cancel_instance("i1", "x")
    world.result("i1")
    m = world.runtime.metrics_snapshot()
    assert m["orch_failures"] == 1
    assert m["orch_application_errors"] == 1


# --- real threads: cooperative activity cancellation ------------------------------------------


@pytest.mark.realtime
def test_running_activity_observes_cancellation(live_world):
    """A running activity sees ctx.is_cancelled() become true after its instance is cancelled."""
    world = live_world
    started = threading.Event()
    outcome = {}

    @world.runtime.register_activity("LongJob")
    def long_job(ctx, _):
        started.set()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if ctx.is_cancelled():
                outcome["cancelled"] = True
                return "stopped early"
            time.sleep(0.02)
        outcome["cancelled"] = False
        return "ran to the end"

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("LongJob"))

    world.runtime.start()
    world.client.start_orchestration("i1", "O")
    assert started.wait(2.0)
    world.client.cancel_instance("i1", "stop it")
    st = world.client.wait_for_orchestration("i1", 2_000)
    assert st.error == "canceled: stop it"
    t0 = time.monotonic()
    while "cancelled" not in outcome and time.monotonic() - t0 < 2.0:
        time.sleep(0.02)
    assert outcome.get("cancelled") is True


@pytest.mark.realtime
def test_race_loser_activity_observes_cancellation(live_world):
    """A running activity that loses a race to a timer is told to stop via is_cancelled()."""
    world = live_world
    observed = threading.Event()

    @world.runtime.register_activity("Loser")
    def loser(ctx, _):
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if ctx.is_cancelled():
                observed.set()
                return None
            time.sleep(0.02)
        return None

    @world.runtime.register_orchestration("O")
    async def orch(ctx, _):
        r = await ctx.race(ctx.schedule_activity("Loser"), ctx.schedule_timer(50))
        return r["index"]

    world.runtime.start()
    world.client.start_orchestration("i1", "O")
    assert world.client.wait_for_orchestration("i1", 2_000).output == 1
    assert observed.wait(1.8)
