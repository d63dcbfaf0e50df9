"""Activity-context journeys: what an activity sees (``ActivityContext``) and activities that talk
back to the runtime through ``ctx.get_client()`` - starting follow-ups, notifying waiters,
reading other instances, cancelling, waiting - in production (threads, wall clock, SQLite and
in-memory providers), on the sequential ``world`` and in the fault-injecting simulator.

Peer observations (duroxide 0.2.2 under bench/.peer, SqliteProvider.in_memory(), scripts in
/tmp/probe6) are quoted in the docstrings as "peer-observed".

Found by this file and fixed: in a simulation (or any runtime on an injected clock) an activity
that called ``ctx.get_client().wait_for_orchestration(...)`` for an instance not yet finished
hung the whole run (the client waited on real time while no simulated step could run); the
activities' client now ends such a wait at once with an OperationTimeout saying why.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start

from ._helpers import wait_until

PEER_ATTRS = ["activity_name", "execution_id", "instance_id", "orchestration_name",
              "orchestration_version", "session_id", "worker_id"]


def _live(provider: Any = None, **opts: Any) -> tuple[Runtime, Client]:
    provider = provider or InMemoryProvider()
    o = dict(dispatcher_poll_interval_ms=5, worker_lock_timeout_ms=1_000)
    o.update(opts)
    rt = Runtime(provider, RuntimeOptions(**o))
    return rt, Client(provider)


def _bounded(fn: Any, timeout_s: float) -> tuple[bool, Any]:
    """Run fn in a daemon thread; (finished, result-or-exception)."""
    box: dict[str, Any] = {}

    def go() -> None:
        try:
            box["r"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["r"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout_s)
    return (not t.is_alive()), box.get("r")


# ─── what the context carries ───────────────────────────────────────────────────────────────


def test_context_attributes_match_the_peer_and_tag_session_flow_through(world) -> None:
    """A user's activity reports who it works for. SPEC §17 lists instance_id, execution_id,
    orchestration_name/version, activity_name, worker_id, session_id, tag(), trace_*. Peer-observed
    (untagged, no session): attrs == PEER_ATTRS, execution_id 1, version '1.0.0', tag None,
    session None, trace_* return None. Here with a tag and a session both must arrive."""
    seen: dict[str, Any] = {}

    @world.runtime.register_activity("Describe")
    def describe(ctx, _):
        seen.update(
            instance_id=ctx.instance_id, execution_id=ctx.execution_id,
            orchestration_name=ctx.orchestration_name, orchestration_version=ctx.orchestration_version,
            activity_name=ctx.activity_name, session_id=ctx.session_id, tag=ctx.tag(),
            worker_id=ctx.worker_id, cancelled=ctx.is_cancelled(),
            traces=[ctx.trace_info("i"), ctx.trace_warn("w"), ctx.trace_error("e"), ctx.trace_debug("d")],
        )
        return "ok"

    @world.runtime.register_orchestration("Desc")
    def desc(ctx, _):
        a = yield ctx.schedule_activity("Describe", None)
        b = yield ctx.schedule_activity_on_session("Describe", None, "sess-1")
        return [a, b]

    world.client.start_orchestration("d-1", "Desc", None)
    world.run()
    assert world.result("d-1").output == ["ok", "ok"]
    assert seen["instance_id"] == "d-1" and seen["execution_id"] == 1
    assert seen["orchestration_name"] == "Desc" and seen["orchestration_version"] == "1.0.0"
    assert seen["activity_name"] == "Describe" and seen["session_id"] == "sess-1"
    assert seen["tag"] is None and isinstance(seen["worker_id"], str) and seen["worker_id"]
    assert seen["cancelled"] is False and seen["traces"] == [None] * 4


def test_context_has_every_peer_public_attribute(world) -> None:
    """Code written for the peer introspects ``vars(ctx)``-level attributes; every one the peer has
    must exist here (extras such as activity_id/attempt are allowed). Peer-observed:
    ``sorted(k for k in vars(ctx) if not k.startswith('_')) == PEER_ATTRS``."""
    names: list[str] = []

    @world.runtime.register_activity("A")
    def a(ctx, _):
        names.extend(k for k in vars(ctx) if not k.startswith("_"))
        return None

    @world.runtime.register_orchestration("O")
    def o(ctx, _):
        yield ctx.schedule_activity("A", None).with_tag("gpu")

    from duroxide_sim import TagFilter

    world.runtime.options.worker_tag_filter = TagFilter.ANY if hasattr(TagFilter, "ANY") else None
    world.client.start_orchestration("attrs", "O", None)
    world.run()
    assert set(PEER_ATTRS) <= set(names), f"missing: {set(PEER_ATTRS) - set(names)}"


def test_get_client_returns_a_client_usable_after_the_activity_returned(live_world) -> None:
    """A user stashes ``ctx.get_client()`` (e.g. in a cache) and uses it after the activity
    finished. Peer-observed: type 'duroxide.Client'; the stashed client still works afterwards
    (``stash_client_after => Completed``)."""
    stash: dict[str, Any] = {}

    @live_world.runtime.register_activity("Grab")
    def grab(ctx, _):
        stash["c"] = ctx.get_client()
        return type(stash["c"]).__name__

    @live_world.runtime.register_orchestration("G")
    def g(ctx, _):
        return (yield ctx.schedule_activity("Grab", None))

    live_world.runtime.start()
    live_world.client.start_orchestration("g-1", "G", None)
    assert live_world.client.wait_for_orchestration("g-1", 5_000).output == "Client"
    assert isinstance(stash["c"], Client)
    assert stash["c"].get_status("g-1").status == "Completed"


# ─── activities that talk back (production) ─────────────────────────────────────────────────


def _talkback(rt: Runtime) -> None:
    @rt.register_activity("StartOther")
    def start_other(ctx, inp):
        return ctx.get_client().start_orchestration(inp["id"], "Child", inp["v"])

    @rt.register_activity("Notify")
    def notify(ctx, inp):
        ctx.get_client().raise_event(inp["target"], "go", inp["data"])
        return "sent"

    @rt.register_activity("ReadOther")
    def read_other(ctx, target):
        c = ctx.get_client()
        s = c.get_status(target)
        return {"status": s.status, "output": s.output, "kv": c.get_kv_value(target, "k")}

    @rt.register_activity("CancelOther")
    def cancel_other(ctx, target):
        ctx.get_client().cancel_instance(target, "by activity")
        return "cancelled"

    @rt.register_activity("WaitOther")
    def wait_other(ctx, target):
        r = ctx.get_client().wait_for_orchestration(target, 1_500)
        return {"status": r.status, "output": r.output}

    @rt.register_activity("Double")
    def double(ctx, n):
        return n * 2

    @rt.register_orchestration("Child")
    def child(ctx, v):
        ctx.set_kv_value("k", f"kv-{v}")
        return (yield ctx.schedule_activity("Double", v))

    @rt.register_orchestration("Waiter")
    def waiter(ctx, _):
        v = yield ctx.wait_for_event("go")
        return {"got": v}

    @rt.register_orchestration("Parent")
    def parent(ctx, inp):
        return (yield ctx.schedule_activity(inp["act"], inp["arg"]))


@pytest.fixture(params=["inmemory", "sqlite"])
def talk(request, tmp_path):
    provider = InMemoryProvider() if request.param == "inmemory" else SqliteProvider.open(str(tmp_path / "a.db"))
    rt, client = _live(provider)
    _talkback(rt)
    rt.start()
    yield rt, client
    rt.shutdown(2_000)


def test_activity_starts_a_follow_up_and_a_second_start_of_the_same_id_is_absorbed(talk) -> None:
    """An activity starts a follow-up workflow with a fixed id; a later activity starts the same
    id again with other input. Peer-observed: start_orchestration returns None inside an activity;
    ch1 completes with 6; the second start (input 5) leaves ch1's output 6 and its history
    untouched: [OrchestrationStarted, KeyValueSet, ActivityScheduled, ActivityCompleted,
    OrchestrationCompleted] (SPEC §7 detached/§3.2: starting onto an existing id is not an error)."""
    rt, c = talk
    c.start_orchestration("s1", "Parent", {"act": "StartOther", "arg": {"id": "ch1", "v": 3}})
    assert c.wait_for_orchestration("s1", 3_000).status == "Completed"
    assert c.wait_for_orchestration("s1", 3_000).output is None
    assert c.wait_for_orchestration("ch1", 3_000).output == 6
    c.start_orchestration("s2", "Parent", {"act": "StartOther", "arg": {"id": "ch1", "v": 5}})
    assert c.wait_for_orchestration("s2", 3_000).status == "Completed"
    time.sleep(0.2)
    assert c.get_status("ch1").output == 6
    assert [e["kind"] for e in c.read_execution_history("ch1", 1)] == [
        "OrchestrationStarted", "KeyValueSet", "ActivityScheduled", "ActivityCompleted", "OrchestrationCompleted"]


def test_notify_the_waiter_activity(talk) -> None:
    """A "notify the waiter" activity raises an event to another, already waiting instance.
    Peer-observed: notifier output 'sent', waiter output {'got': {'x': 1}}."""
    rt, c = talk
    c.start_orchestration("w1", "Waiter", None)
    deadline = time.time() + 3
    while "ExternalSubscribed" not in [e["kind"] for e in (c.read_execution_history("w1", 1) if c.get_status("w1").status != "NotFound" else [])]:
        assert time.time() < deadline
        time.sleep(0.01)
    c.start_orchestration("n1", "Parent", {"act": "Notify", "arg": {"target": "w1", "data": {"x": 1}}})
    assert c.wait_for_orchestration("n1", 3_000).output == "sent"
    assert c.wait_for_orchestration("w1", 3_000).output == {"got": {"x": 1}}


def test_notify_an_instance_that_does_not_exist_completes_the_notifier(talk) -> None:
    """raise_event to an unknown id from an activity: SPEC §11.1/§14 client raise is enqueue-only,
    so the activity returns 'sent' and the notifier completes; the target stays NotFound (the
    orphan message must not wedge the runtime: a later workflow still runs). Peer-observed: the
    peer's in-memory SQLite run timed out here (its dispatcher logged 'database is deadlocked'
    retries); this implementation must not."""
    rt, c = talk
    c.start_orchestration("n2", "Parent", {"act": "Notify", "arg": {"target": "nobody", "data": 1}})
    r = c.wait_for_orchestration("n2", 3_000)
    assert (r.status, r.output) == ("Completed", "sent")
    assert c.get_status("nobody").status == "NotFound"
    c.start_orchestration("after", "Child", 4)
    assert c.wait_for_orchestration("after", 3_000).output == 8


def test_activity_reads_another_instances_status_and_kv(talk) -> None:
    """Peer-observed: {'status': 'Completed', 'output': 6, 'kv': 'kv-3'} for a completed child,
    {'status': 'NotFound', 'output': None, 'kv': None} for an unknown id."""
    rt, c = talk
    c.start_orchestration("ch", "Child", 3)
    c.wait_for_orchestration("ch", 3_000)
    c.start_orchestration("r1", "Parent", {"act": "ReadOther", "arg": "ch"})
    assert c.wait_for_orchestration("r1", 3_000).output == {"status": "Completed", "output": 6, "kv": "kv-3"}
    c.start_orchestration("r2", "Parent", {"act": "ReadOther", "arg": "nope"})
    assert c.wait_for_orchestration("r2", 3_000).output == {"status": "NotFound", "output": None, "kv": None}


def test_activity_cancels_another_instance(talk) -> None:
    """An activity cancels a waiting instance: SPEC §11.1, status Failed, error 'canceled: by activity'."""
    rt, c = talk
    c.start_orchestration("w2", "Waiter", None)
    time.sleep(0.1)
    c.start_orchestration("co", "Parent", {"act": "CancelOther", "arg": "w2"})
    assert c.wait_for_orchestration("co", 3_000).output == "cancelled"
    s = c.wait_for_orchestration("w2", 3_000)
    assert s.status == "Failed" and "canceled: by activity" in (s.error or "")


def test_activity_waits_for_another_instance(talk) -> None:
    """An activity blocks on ``wait_for_orchestration`` of another instance that needs an activity
    slot itself; with the default worker concurrency there is a free slot. Peer-observed:
    {'status': 'Completed', 'output': 14}."""
    rt, c = talk
    c.start_orchestration("wt", "Child", 7)
    c.start_orchestration("wo", "Parent", {"act": "WaitOther", "arg": "wt"})
    assert c.wait_for_orchestration("wo", 3_000).output == {"status": "Completed", "output": 14}


def test_waiting_activity_with_one_worker_slot_times_out_instead_of_hanging() -> None:
    """The deadlock a user walks into: worker_concurrency=1, an activity waits for an instance whose
    own activity needs that only slot. The wait must end by its own timeout_ms (RuntimeError
    'Operation timed out', §17), the activity fails (Application error, not a hang), and the
    starved child then runs to completion."""
    rt, c = _live(worker_concurrency=1, worker_lock_timeout_ms=5_000)
    _talkback(rt)
    rt.start()
    try:
        c.start_orchestration("wo", "Parent", {"act": "WaitOther", "arg": "wt"})
        time.sleep(0.15)  # the waiting activity holds the only slot
        c.start_orchestration("wt", "Child", 7)
        r = c.wait_for_orchestration("wo", 4_000)
        assert r.status == "Failed" and "timed out" in (r.error or "").lower(), r.error
        assert c.wait_for_orchestration("wt", 3_000).output == 14
    finally:
        rt.shutdown(2_000)


def test_self_notify_by_raise_event_before_subscribing_is_lost(live_world) -> None:
    """An activity raises an event to its *own* instance, then the orchestration waits for it.
    SPEC §6.1: events raised before the subscription is persisted are lost, so the orchestration
    keeps waiting. Peer-observed: both orderings (wait built before the activity but not yielded,
    and wait after) time out. The queue (enqueue_event/dequeue_event, §6.2) is the working way."""
    @live_world.runtime.register_activity("NotifySelf")
    def notify_self(ctx, how):
        c = ctx.get_client()
        if how == "queue":
            c.enqueue_event(ctx.instance_id, "self", {"from": ctx.activity_name})
        else:
            c.raise_event(ctx.instance_id, "self", {"from": ctx.activity_name})
        return how

    @live_world.runtime.register_orchestration("SelfNotify")
    def self_notify(ctx, how):
        a = yield ctx.schedule_activity("NotifySelf", how)
        ev = yield (ctx.dequeue_event("self") if how == "queue" else ctx.wait_for_event("self"))
        return {"a": a, "ev": ev}

    live_world.runtime.start()
    c = live_world.client
    c.start_orchestration("sq", "SelfNotify", "queue")
    c.start_orchestration("se", "SelfNotify", "event")
    assert c.wait_for_orchestration("sq", 3_000).output == {"a": "queue", "ev": {"from": "NotifySelf"}}
    # the event is recorded (audit-only) with the activity's completion, and then nothing comes
    assert wait_until(lambda: "ActivityCompleted" in [e["kind"] for e in c.read_execution_history("se", 1)], 10)
    assert "ExternalEvent" in [e["kind"] for e in c.read_execution_history("se", 1)]
    time.sleep(0.3)
    assert c.get_status("se").status == "Running"


# ─── async activities ───────────────────────────────────────────────────────────────────────


def test_async_activity_can_use_the_client_and_the_context(live_world) -> None:
    """README: activities may be ``async def``. One awaits, uses ctx.get_client() and reports
    is_cancelled()."""
    @live_world.runtime.register_activity("AsyncStart")
    async def astart(ctx, n):
        await asyncio.sleep(0.01)
        ctx.get_client().start_orchestration(f"{ctx.instance_id}-child", "Leaf", n)
        return {"n": n * 2, "cancelled": ctx.is_cancelled(), "name": ctx.activity_name}

    @live_world.runtime.register_orchestration("Leaf")
    def leaf(ctx, n):
        return n + 1

    @live_world.runtime.register_orchestration("AP")
    async def ap(ctx, n):
        return await ctx.schedule_activity("AsyncStart", n)

    live_world.runtime.start()
    live_world.client.start_orchestration("ap", "AP", 21)
    assert live_world.client.wait_for_orchestration("ap", 3_000).output == {"n": 42, "cancelled": False, "name": "AsyncStart"}
    assert live_world.client.wait_for_orchestration("ap-child", 3_000).output == 22


# ─── cooperative cancellation ───────────────────────────────────────────────────────────────


def _long(rt: Runtime, seen: dict[str, Any]) -> None:
    @rt.register_activity("Long")
    def long(ctx, key):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5:
            if ctx.is_cancelled():
                seen[key] = time.monotonic() - t0
                return "stopped"
            time.sleep(0.01)
        seen[key] = None
        return "done"

    @rt.register_orchestration("LongO")
    def long_o(ctx, key):
        return (yield ctx.schedule_activity("Long", key))

    @rt.register_orchestration("RaceLong")
    def race_long(ctx, key):
        return (yield ctx.race(ctx.schedule_activity("Long", key), ctx.schedule_timer(100)))


def test_long_activity_sees_is_cancelled_when_its_orchestration_is_cancelled() -> None:
    """SPEC §11.1/§11.2: cancelling the instance deletes the activity's worker row; the worker
    notices on lock renewal and is_cancelled() turns true well before the 5 s loop ends."""
    rt, c = _live(worker_lock_timeout_ms=600)
    seen: dict[str, Any] = {}
    _long(rt, seen)
    rt.start()
    try:
        c.start_orchestration("l1", "LongO", "l1")
        time.sleep(0.2)
        c.cancel_instance("l1", "stop")
        r = c.wait_for_orchestration("l1", 2_000)
        assert r.status == "Failed" and "canceled: stop" in r.error
        deadline = time.time() + 2.5
        while "l1" not in seen and time.time() < deadline:
            time.sleep(0.02)
        assert seen.get("l1") is not None and seen["l1"] < 2.5, seen
    finally:
        rt.shutdown(2_000)


def test_long_activity_that_loses_a_race_sees_is_cancelled() -> None:
    """SPEC §5 losers: a race lost to a 100 ms timer → ActivityCancelRequested + worker row deleted
    → the activity's is_cancelled() turns true. Output {'index': 1, 'value': None}."""
    rt, c = _live(worker_lock_timeout_ms=600)
    seen: dict[str, Any] = {}
    _long(rt, seen)
    rt.start()
    try:
        c.start_orchestration("rl", "RaceLong", "rl")
        assert c.wait_for_orchestration("rl", 2_000).output == {"index": 1, "value": None}
        deadline = time.time() + 2.5
        while "rl" not in seen and time.time() < deadline:
            time.sleep(0.02)
        assert seen.get("rl") is not None, seen
    finally:
        rt.shutdown(2_000)


def test_is_cancelled_in_the_sequential_world_after_a_lost_race(world) -> None:
    """The same race on the sequential driver (virtual clock): the activity checks is_cancelled()
    on each of several attempts; wait_cancelled(timeout) must not block on wall time forever."""
    calls: list[bool] = []

    @world.runtime.register_activity("Check")
    def check(ctx, _):
        calls.append(ctx.is_cancelled())
        return "x"

    @world.runtime.register_orchestration("R")
    def r(ctx, _):
        return (yield ctx.race(ctx.schedule_timer(10), ctx.schedule_activity("Check", None)))

    world.client.start_orchestration("r", "R", None)
    world.run()
    out = world.result("r").output
    assert out["index"] in (0, 1)
    assert all(c is False for c in calls)  # a finished activity was never told to stop before it ran


# ─── in the simulator ───────────────────────────────────────────────────────────────────────


def _follow_setup(rt, world):
    @rt.register_activity("Open")
    def open_(ctx, case):
        ctx.get_client().start_orchestration(f"dispute-{case}", "Dispute", case)  # fixed id: idempotent
        return True

    @rt.register_orchestration("Dispute")
    def dispute(ctx, case):
        yield ctx.schedule_timer(10)
        return case

    @rt.register_orchestration("Chargeback")
    def chargeback(ctx, case):
        yield ctx.schedule_activity("Open", case)
        return "opened"


FOLLOW = SimSpec(name="actx-fixed-id-followup", setup=_follow_setup,
                 starts=[Start(instance="cb", orchestration="Chargeback", input=7)])


def test_sim_fixed_id_start_from_an_activity_passes_under_crash_after_effect() -> None:
    """Re-delivered after a crash right after its effect, the activity starts dispute-7 a second
    time; that start is absorbed (§3.2/§7), so the run must pass every checker and end with one
    dispute. get_client() works in the simulator."""
    result = run_and_check(Simulation(FOLLOW, 0, FaultPlan.scripted([(1, "crash_after_effect")]), nodes=1))
    assert result.fired == [(1, "crash_after_effect")]
    assert result.outputs() == {"cb": ("Completed", "opened"), "dispute-7": ("Completed", 7)}
    assert result.ok, [f.render()[:300] for f in result.failures]


def test_sim_get_client_runs_are_deterministic_per_seed() -> None:
    """Same seed, same faults → byte-identical trace even when activities use the client."""
    plan = FaultPlan.only("crash_after_effect", "duplicate", rate=0.3)
    a = Simulation(FOLLOW, 3, plan).run()
    b = Simulation(FOLLOW, 3, plan).run()
    assert list(a.trace) == list(b.trace)


def _credit_setup(rt, world):
    @rt.register_activity("Credit")
    def credit(ctx, amount):
        ctx.get_client().enqueue_event("account", "credit", amount)  # not idempotent
        return True

    @rt.register_orchestration("Pay")
    def pay(ctx, amount):
        yield ctx.schedule_activity("Credit", amount)
        return "paid"

    @rt.register_orchestration("Account")
    def account(ctx, _):
        total = 0
        for _i in range(2):
            total += (yield ctx.dequeue_event("credit"))
        yield ctx.schedule_timer(1_000)
        extra = yield ctx.race(ctx.dequeue_event("credit"), ctx.schedule_timer(120_000))  # > lock timeout: a re-delivery lands inside
        if extra["index"] == 0:
            total += extra["value"]
        return total


CREDIT = SimSpec(name="actx-credit", setup=_credit_setup,
                 starts=[Start(instance="account", orchestration="Account"),
                         Start(instance="p1", orchestration="Pay", input=10),
                         Start(instance="p2", orchestration="Pay", input=5)])


def test_sim_non_idempotent_client_call_is_reported_under_crash_after_effect() -> None:
    """A re-delivered "credit the account" activity enqueues the credit twice: the account's total
    differs from the fault-free run, and run_and_check must report it (outcome/idempotency)."""
    clean = run_and_check(Simulation(CREDIT, 0, FaultPlan.none()))
    assert clean.ok and clean.outputs()["account"] == ("Completed", 15), clean.outputs()
    result = run_and_check(Simulation(CREDIT, 0, FaultPlan.scripted([(1, "crash_after_effect")]), nodes=1))
    assert result.fired == [(1, "crash_after_effect")]
    assert result.outputs()["account"][1] != 15
    assert not result.ok and any(f.checker in ("outcome", "idempotency") for f in result.failures), \
        [f.render()[:200] for f in result.failures]


def _waiter_setup(rt, world):
    @rt.register_activity("WaitOther")
    def wait_other(ctx, target):
        return ctx.get_client().wait_for_orchestration(target, 60_000).output

    @rt.register_activity("Double")
    def double(ctx, n):
        return n * 2

    @rt.register_orchestration("Child")
    def child(ctx, n):
        yield ctx.schedule_timer(5)
        return (yield ctx.schedule_activity("Double", n))

    @rt.register_orchestration("Parent")
    def parent(ctx, target):
        return (yield ctx.schedule_activity("WaitOther", target))


WAITER = SimSpec(name="actx-wait-other", setup=_waiter_setup,
                 starts=[Start(instance="wo", orchestration="Parent", input="wt"),
                         Start(instance="wt", orchestration="Child", input=7)])


def test_sim_activity_blocking_on_another_instance_does_not_hang_the_simulator() -> None:
    """In the simulator everything runs on one thread and virtual time: an activity that blocks
    in ``get_client().wait_for_orchestration`` cannot let the child progress. The simulation must
    still end (virtual-time timeout → the activity fails, or a documented error) within seconds
    of wall time, not hang the test process."""
    done, res = _bounded(lambda: Simulation(WAITER, 0, FaultPlan.none()).run(), 3)
    assert done, "Simulation hung: an activity waiting on another instance blocks the whole simulator"
    assert not isinstance(res, BaseException), repr(res)
    # The wait ends at once, saying why (the activity fails; the parent sees it), and the
    # instance it waited for still finishes.
    waiter = [st for inst, st in res.statuses.items() if st.status == "Failed"]
    assert waiter and "no time passes while an activity runs" in waiter[0].error, res.statuses
    assert any(st.status == "Completed" for st in res.statuses.values()), res.statuses
