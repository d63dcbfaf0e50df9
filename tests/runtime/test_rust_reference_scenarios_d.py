"""Scenarios from the reference's e2e samples, reliability, poison, session, sub-orchestration
id and KV suites, written fresh against duroxide_sim.

The first group is the one place where duroxide_sim misbehaved (session 13, fixed since): a
sub-orchestration whose child instance id already names another instance. The child's
StartOrchestration reached a Completed instance and was discarded (SPEC §3.1 step 3, §3.12), or
was absorbed by a running one (§3.2), so no SubOrchCompleted/Failed was ever sent back and the
parent stayed Running forever with nothing queued. SPEC §7 says nothing about the parent's side
of that collision; a parent that can never finish, with no error anywhere, is broken. Now the
parent's code gets a failed child whose error says the id already exists (as the reference's
later versions do; they also refuse client ids with the reserved `::sub::` marker, which we do
not: the parent no longer hangs either way).

The rest are passing checks of scenarios the suite did not cover in this form.
"""

from __future__ import annotations

import json

import attrs

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions
from duroxide_sim.core.events import ActivityCompletedMsg, ExternalRaised, StartOrchestration, TimerFiredMsg
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

from tests.conftest import make_world

from ._helpers import events_of, kinds

TERMINAL = ("Completed", "Failed")


# ---------------------------------------------------------------------------------------------
# child id collides with an instance that already finished: the parent must not hang
# ---------------------------------------------------------------------------------------------


def test_sub_orchestration_onto_finished_explicit_id_does_not_hang_parent():
    """Reference: scenarios/suborch_id_collision::legacy_provider_bypass_terminal_collision_does_not_hang_parent
    (the reference fails the parent with a message containing "already exists").

    Two parents use the same explicit child id. The first parent's child completes; the second
    parent's StartOrchestration then lands on a Completed instance and is discarded (SPEC §3.1
    step 3). A user expects the second parent to end (fail with an error naming the collision),
    not to stay Running forever with no work queued anywhere. SPEC §7 (sub-orchestrations) is
    silent on this collision; a silent permanent hang is the defect."""
    world = make_world()

    @world.runtime.register_orchestration("Child")
    def child(ctx, inp):
        return f"child-done:{inp}"

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, inp):
        return (yield ctx.schedule_sub_orchestration_with_id("Child", "shared-kid", inp))

    world.client.start_orchestration("p1", "Parent", "a")
    world.run()
    assert world.client.get_status("p1").output == "child-done:a"

    world.client.start_orchestration("p2", "Parent", "b")
    world.run()

    st = world.client.get_status("p2")
    depths = world.client.get_queue_depths()
    assert st.status in TERMINAL, (
        f"parent p2 is {st.status} with history {kinds(world, 'p2')} and queues {depths}: "
        "it waits forever for a child that already finished"
    )
    assert st.status == "Failed" and "'shared-kid' already exists" in st.error, st.error
    assert kinds(world, "p2")[-2:] == ["SubOrchestrationFailed", "OrchestrationFailed"]
    assert world.client.get_status("shared-kid").output == "child-done:a"  # the first child is untouched


def test_auto_child_id_taken_by_client_start_does_not_hang_parent():
    """Reference: scenarios/suborch_id_collision::legacy_provider_bypass_terminal_collision_does_not_hang_parent
    and instance_id_validation_tests::start_orchestration_rejects_reserved_infix.

    The client accepts `job-1::sub::2`, exactly the id SPEC §7 derives for job-1's first child
    (`{parent}::sub::{schedule id}`). Once that instance has finished, job-1's child start is
    discarded and job-1 would wait forever. A user expects either the client to refuse the
    reserved id or the parent to end; here the client accepts it, so the parent must not hang."""
    world = make_world()

    @world.runtime.register_orchestration("Squatter")
    def squatter(ctx, _):
        return "squatted"

    @world.runtime.register_orchestration("Child")
    def child(ctx, inp):
        return f"child-done:{inp}"

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration("Child", "child-input"))

    try:
        world.client.start_orchestration("job-1::sub::2", "Squatter")
    except Exception:  # noqa: BLE001 - refusing the reserved id is an acceptable answer too
        return
    world.run()
    assert world.client.get_status("job-1::sub::2").status == "Completed"

    world.client.start_orchestration("job-1", "Parent")
    world.run()

    st = world.client.get_status("job-1")
    assert st.status in TERMINAL, (
        f"parent job-1 is {st.status} with history {kinds(world, 'job-1')}: its child id "
        "job-1::sub::2 already names a finished instance, so the parent waits forever"
    )
    assert st.status == "Failed" and "already exists" in st.error, st.error


def test_child_id_of_a_running_instance_fails_the_parent_code_can_catch_it():
    """The id names an instance that is running for someone else (started by a client, no
    parent link): the start would be absorbed as a duplicate (SPEC §3.2) and the parent would
    wait for good. The parent's code gets the failure as an exception it can handle (§7:
    application failures reach parent code as errors), and the running instance is left alone.
    A redelivered start of a child's own link is not a collision (next test file section)."""
    world = make_world()

    @world.runtime.register_orchestration("Waiter")
    def waiter(ctx, _):
        return (yield ctx.wait_for_event("go"))

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        try:
            return (yield ctx.schedule_sub_orchestration_with_id("Waiter", "busy-one", None))
        except Exception as exc:  # noqa: BLE001
            return f"handled: {exc}"

    world.client.start_orchestration("busy-one", "Waiter")
    world.run()
    world.client.start_orchestration("p", "Parent")
    world.run()
    st = world.client.get_status("p")
    assert st.status == "Completed" and "'busy-one' already exists (is running for another caller)" in st.output, st
    assert world.client.get_status("busy-one").status == "Running"
    world.client.raise_event("busy-one", "go", 1)
    world.run()
    assert world.client.get_status("busy-one").output == 1


# ---------------------------------------------------------------------------------------------
# passing checks: duplicates, stale routing, redelivery, poison chains
# ---------------------------------------------------------------------------------------------


def test_duplicate_external_events_are_both_recorded_and_only_the_first_is_delivered(world):
    """Reference: reliability_tests::external_duplicate_workitems_dedup.

    Two identical ExternalRaised messages for one waiting subscription: SPEC §3.3 step 4
    materializes both as ExternalEvent (never deduplicated); §6.1 delivers only the first (one
    active subscription), the second stays audit-only."""

    @world.runtime.register_orchestration("WaitEvt")
    def wait_evt(ctx, _):
        return (yield ctx.wait_for_event("Evt"))

    world.client.start_orchestration("e", "WaitEvt")
    world.run()
    msg = ExternalRaised(instance="e", name="Evt", data=json.dumps("ok"))
    world.provider.enqueue_for_orchestrator(msg)
    world.provider.enqueue_for_orchestrator(msg)
    world.run()

    st = world.client.get_status("e")
    assert (st.status, st.output) == ("Completed", "ok")
    assert kinds(world, "e").count("ExternalEvent") == 2


def test_duplicate_timer_and_activity_completions_are_recorded_once():
    """Reference: reliability_tests::timer_duplicate_workitems_dedup,
    activity_duplicate_completion_workitems_dedup, crash_after_append_before_ack_timer.

    SPEC §3.3 step 2: a TimerFired / ActivityCompleted whose source already has one in history or
    in this batch is dropped. Injected twice each, history keeps exactly one of each."""
    world = make_world(RuntimeOptions(worker_concurrency=0))  # the test delivers the completion

    @world.runtime.register_orchestration("TimerThenActivity")
    def flow(ctx, _):
        yield ctx.schedule_timer(100)
        return (yield ctx.schedule_activity("Echo", "x"))

    world.client.start_orchestration("t", "TimerThenActivity")
    world.run_for(1)
    timer = events_of(world, "t", "TimerCreated")[0]
    fired = TimerFiredMsg(instance="t", execution_id=1, id=timer["event_id"], fire_at_ms=timer["data"]["fireAtMs"])
    world.provider.enqueue_for_orchestrator(fired)
    world.provider.enqueue_for_orchestrator(fired)
    world.run()
    act = events_of(world, "t", "ActivityScheduled")[0]["event_id"]
    done = ActivityCompletedMsg(instance="t", execution_id=1, id=act, result=json.dumps("x"))
    world.provider.enqueue_for_orchestrator(done)
    world.provider.enqueue_for_orchestrator(done)
    world.run()

    st = world.client.get_status("t")
    assert (st.status, st.output) == ("Completed", "x")
    ks = kinds(world, "t")
    assert ks.count("TimerFired") == 1 and ks.count("ActivityCompleted") == 1, ks


def test_child_outliving_a_continue_as_new_reports_to_its_own_execution_not_the_current_one(world):
    """Reference: scenarios/suborch_id_collision::suborch_completion_routes_to_scheduling_execution_not_current.

    Execution 1 loses a race of a child against a timer and continues-as-new in the same turn
    (no dropped-future reconciliation, SPEC §3.8 case 2, so the child keeps running). Execution 2
    parks on an event. When the child finishes, its SubOrchCompleted belongs to execution 1 and
    is dropped by the execution filter (SPEC §3.3 step 1); execution 2, where event 2 is not a
    sub-orchestration, must not see it (that would be nondeterminism)."""

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, inp):
        if not inp:
            yield ctx.race(ctx.schedule_sub_orchestration("Child", "x"), ctx.schedule_timer(50))
            yield ctx.continue_as_new("1")
        yield ctx.wait_for_event("Release")
        return "done"

    @world.runtime.register_orchestration("Child")
    def child(ctx, _):
        yield ctx.wait_for_event("ChildGo")
        return "child-late"

    world.client.start_orchestration("P", "Parent")
    world.run()
    assert world.client.get_status("P::sub::2").status == "Running"

    world.client.raise_event("P::sub::2", "ChildGo", "go")
    world.run()
    assert world.client.get_status("P::sub::2").output == "child-late"
    assert world.client.get_status("P").status == "Running"
    assert kinds(world, "P", 2) == ["OrchestrationStarted", "ExternalSubscribed"]

    world.client.raise_event("P", "Release", "go")
    world.run()
    st = world.client.get_status("P")
    assert (st.status, st.output) == ("Completed", "done")


def test_redelivered_start_of_a_finished_child_leaves_the_parent_alone(world):
    """Reference: scenarios/suborch_id_collision::redelivered_child_start_does_not_fail_parent.

    At-least-once redelivery of a completed child's own StartOrchestration (same parent link)
    reaches a Completed instance: discarded without history (SPEC §3.1 step 3, §3.12). The parent
    gets no new event and nothing stays queued."""

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        r = yield ctx.schedule_sub_orchestration("Child", "child-input")
        return f"parent-got:{r}"

    @world.runtime.register_orchestration("Child")
    def child(ctx, inp):
        return f"child-done:{inp}"

    world.client.start_orchestration("job-2", "Parent")
    world.run()
    assert world.client.get_status("job-2").output == "parent-got:child-done:child-input"
    before = kinds(world, "job-2")

    world.provider.enqueue_for_orchestrator(StartOrchestration(
        instance="job-2::sub::2", orchestration="Child", input=json.dumps("child-input"),
        parent_instance="job-2", parent_id=2))
    world.run()

    assert kinds(world, "job-2") == before
    assert world.client.get_status("job-2").status == "Completed"
    assert world.client.get_queue_depths().orchestrator_queue == 0


class _InflatedWorkerAttempts:
    """Pass-through provider that reports every fetched activity as delivered ``attempts`` times
    (the reference's PoisonInjectingProvider, persistent activity mode)."""

    def __init__(self, inner, attempts):
        self._inner = inner
        self._attempts = attempts

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def fetch_work_item(self, *args, **kwargs):
        lease = self._inner.fetch_work_item(*args, **kwargs)
        return None if lease is None else attrs.evolve(lease, attempt_count=self._attempts)


def test_poisoned_activity_in_a_child_fails_the_grandparent_with_the_same_poison():
    """Reference: poison_message_tests::e2e_activity_poisons_suborchestration_poisons_parent.

    The child's activity is fetched with attempt 11 > max 10 (SPEC §10.2): the worker acks
    ActivityFailed{Poison{Activity}}, the child aborts with it, and SPEC §7 propagation aborts the
    parent with the same details, so both show the activity's poison text; the activity never runs."""
    clock = SimClock()
    inner = InMemoryProvider(clock)
    runtime = Runtime(_InflatedWorkerAttempts(inner, 11), RuntimeOptions(max_attempts=10), clock=clock, ids=SequentialIds())
    driver = SequentialDriver(runtime, clock)
    client = Client(inner, clock=clock, sleep=driver.sleep)
    ran = []

    @runtime.register_activity("ChildActivity")
    def child_activity(ctx, _):
        ran.append(1)
        return "activity-result"

    @runtime.register_orchestration("ChildWithActivity")
    def child(ctx, _):
        return (yield ctx.schedule_activity("ChildActivity", {}))

    @runtime.register_orchestration("Grandparent")
    def grandparent(ctx, _):
        try:
            return (yield ctx.schedule_sub_orchestration("ChildWithActivity", {}))
        except Exception:  # noqa: BLE001 - poison must not reach user code
            return "swallowed"

    client.start_orchestration("gp", "Grandparent")
    driver.run_until_quiet()

    expected = "poison: activity ChildActivity#2 exceeded 11 attempts (max 10)"
    st = client.get_status("gp")
    assert (st.status, st.error) == ("Failed", expected)
    assert client.get_status("gp::sub::2").error == expected
    assert ran == []
