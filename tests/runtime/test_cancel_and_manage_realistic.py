"""Cancellation and the management API in realistic use (a probe written in session 9, kept) (SPEC §3.8-3.10, §7, §8, §9,
§11, §14, §17), on InMemoryProvider and on one SqliteProvider file, stepped deterministically,
plus cancel signals at arbitrary times in the fault-injecting simulation.

Each test asserts the behaviour SPEC/README promise. Found and fixed (its tests failed before):
force-deleting a root whose
children's StartOrchestration messages are still queued (the root's turn was acked, the children
have no instance row yet) leaves those starts in the queue; the children then start with a
parent link to the deleted root, are undeletable (CannotDeleteSubOrchestration: their root is
gone; bulk delete only takes roots), and their completions are parked for the deleted id and
delivered to a recreated root of the same id, which fails `nondeterministic: no matching schedule
for sub-orchestration id=2`. Deletion now takes the queued starts of unstarted children with
the tree (tests/providers/test_delete_unstarted_children.py checks it on every provider).
"""

from __future__ import annotations

import asyncio
import threading
import time

import attrs
import pytest

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider, TaskFailedError
from duroxide_sim.core.context import Backoff, RetryPolicy
from duroxide_sim.errors import CannotDeleteSubOrchestration, InstanceNotFound, InstanceStillRunning
from duroxide_sim.providers.base import InstanceFilter, PruneOptions
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, Simulation, SimSpec, Start

PROVIDERS = ("mem", "sqlite")
MIN = 60_000


class W:
    """Production Runtime + Client on a SimClock over one provider (memory, or a SQLite file)."""

    def __init__(self, kind: str, tmp_path=None):
        self.clock = SimClock()
        if kind == "mem":
            self.provider = InMemoryProvider(self.clock)
        else:
            self.provider = SqliteProvider.open(str(tmp_path / "probe.db"), clock=self.clock)
        self.rt = Runtime(self.provider, RuntimeOptions(), clock=self.clock, ids=SequentialIds())
        self.driver = SequentialDriver(self.rt, self.clock)
        self.client = Client(self.provider, clock=self.clock, sleep=self.driver.sleep)

    def run(self, limit_ms: int | None = None) -> None:
        self.driver.run_until_quiet(limit_ms)

    def idle(self) -> None:
        self.driver.run_until_idle()

    def st(self, instance: str):
        s = self.client.get_status(instance)
        return (s.status, s.output, s.error)

    def kinds(self, instance: str, execution: int = 1) -> list[str]:
        return [e["kind"] for e in self.client.read_execution_history(instance, execution)]

    def into_can_gap(self) -> None:
        """Fire the next due timer and run exactly one orchestration turn (the CAN turn)."""
        self.clock.advance_to(self.provider.next_wakeup_ms())
        assert self.rt.orchestration_dispatcher.step()


@pytest.fixture(params=PROVIDERS)
def w(request, tmp_path):
    return W(request.param, tmp_path)


# =============================================================================================
# Defect: force-delete of a root while its children's starts are still queued
# =============================================================================================


def _root_with_two_children(w: W) -> None:
    @w.rt.register_orchestration("Kid")
    def kid(ctx, x):
        yield ctx.schedule_timer(1000)
        return x

    @w.rt.register_orchestration("Root")
    def root(ctx, _):
        return (yield ctx.all([ctx.schedule_sub_orchestration("Kid", 1),
                               ctx.schedule_sub_orchestration_with_id("Kid", "explicit-kid", 2)]))


def test_force_delete_root_with_queued_child_starts_leaves_no_orphan_children(w):
    """SPEC §14: delete_instance(force) deletes the whole tree atomically; §7: children cannot be
    deleted directly (only through their root); §16 F19/F21: deletion cleans queues and an
    in-flight piece of the tree must not resurrect. The root's first turn was acked (the children's
    StartOrchestration are queued, no child row yet) when the root is force-deleted: nothing of
    that tree may come to life afterwards, and nothing may be left that no call can delete."""
    _root_with_two_children(w)
    w.client.start_orchestration("r", "Root")
    assert w.rt.orchestration_dispatcher.step()  # root's first turn: two child starts queued
    assert w.client.delete_instance("r", True).instances_deleted == 1
    w.run()
    leftovers = w.client.list_all_instances()
    undeletable = []
    for inst in leftovers:
        try:
            w.client.delete_instance(inst, True)
        except CannotDeleteSubOrchestration:
            undeletable.append(inst)
    assert leftovers == [], f"children of the deleted root started afterwards: {leftovers}; undeletable: {undeletable}"


def test_recreated_root_is_not_hit_by_children_of_its_deleted_predecessor(w):
    """SPEC §16 F19 (ids reusable after delete) / F21 (nothing stale completes into a recreated
    instance): after force-deleting a root whose child starts were still queued, a new instance
    with the same id and the same code must run normally."""
    _root_with_two_children(w)
    w.client.start_orchestration("r", "Root")
    assert w.rt.orchestration_dispatcher.step()
    w.client.delete_instance("r", True)
    w.run()  # whatever the deleted tree left behind runs now
    w.client.start_orchestration("r", "Root")
    w.run()
    assert w.st("r") == ("Completed", [{"ok": 1}, {"ok": 2}], None)


# =============================================================================================
# What behaved correctly (pinned)
# =============================================================================================


def test_cancel_tree_mid_flight_timer_retry_backoff_auto_and_explicit_ids(w):
    """§3.9/§11.1: a cancel reaches every descendant (auto and explicit ids, 3 levels), during
    timers and during a retry backoff; the first reason wins over a second cancel (§3.3.4)."""

    @w.rt.register_activity("A")
    def a(ctx, x):
        raise ValueError("boom")

    @w.rt.register_orchestration("Leaf")
    def leaf(ctx, x):
        yield ctx.schedule_timer(60_000)
        return x

    @w.rt.register_orchestration("Mid")
    def mid(ctx, x):
        return (yield ctx.all([ctx.schedule_sub_orchestration("Leaf", 1),
                               ctx.schedule_sub_orchestration_with_id("Leaf", f"exp-{ctx.instance_id}", 2)]))

    @w.rt.register_orchestration("Retrier")
    def retrier(ctx, _):
        return (yield ctx.schedule_activity_with_retry("A", "x", RetryPolicy(max_attempts=5)))

    @w.rt.register_orchestration("Root")
    def root(ctx, _):
        return (yield ctx.all([ctx.schedule_sub_orchestration("Mid", 1),
                               ctx.schedule_sub_orchestration_with_id("Mid", "m2", 2),
                               ctx.schedule_sub_orchestration("Retrier", 0)]))

    w.client.start_orchestration("r", "Root")
    w.run(1000)  # retrier is in its 800 ms backoff after attempt 4
    tree = set(w.client.get_instance_tree("r").all_ids)
    assert tree == {"r", "r::sub::2", "m2", "r::sub::4", "r::sub::2::sub::2", "exp-r::sub::2", "m2::sub::2", "exp-m2"}
    w.client.cancel_instance("r", "stop1")
    w.client.cancel_instance("r", "stop2")
    w.run()
    assert w.st("r") == ("Failed", None, "canceled: stop1")
    for inst in tree - {"r"}:
        assert w.st(inst) == ("Failed", None, "canceled: parent canceled"), inst
    assert w.kinds("r::sub::4")[-3:] == ["TimerCreated", "OrchestrationCancelRequested", "OrchestrationFailed"]
    assert w.client.get_instance_info("m2").parent_instance_id == "r"
    assert w.client.get_execution_info("r", 1).output == "canceled: stop1"
    assert sorted(w.client.list_instances_by_status("Failed")) == sorted(tree)
    with pytest.raises(CannotDeleteSubOrchestration):
        w.client.delete_instance("m2", True)
    res = w.client.delete_instance("r")
    assert res.instances_deleted == 8 and w.client.list_all_instances() == []


def test_cancel_child_directly_parent_sees_canceled_error_and_late_events_ignored(w):
    """§7: cancelling a child directly gives the parent Err("canceled: ..."); events raised to a
    cancelled instance are discarded (§3.12)."""

    @w.rt.register_orchestration("Child")
    def child(ctx, x):
        return (yield ctx.wait_for_event("go"))

    @w.rt.register_orchestration("P")
    def p(ctx, _):
        try:
            return ["ok", (yield ctx.schedule_sub_orchestration_with_id("Child", "kid", 0))]
        except TaskFailedError as e:
            return ["err", str(e)]

    w.client.start_orchestration("p", "P")
    w.run()
    w.client.cancel_instance("kid", "kill kid")
    w.run()
    assert w.st("p") == ("Completed", ["err", "canceled: kill kid"], None)
    before = w.kinds("kid")
    w.client.raise_event("kid", "go", 1)
    w.run()
    assert w.kinds("kid") == before and w.st("kid") == ("Failed", None, "canceled: kill kid")


def test_cancel_child_that_continued_as_new_reports_to_parent(w):
    """README: continue-as-new keeps a child's parent link; so a direct cancel of such a child
    still reaches the parent as Err("canceled: ...")."""

    @w.rt.register_orchestration("CanChild")
    def canchild(ctx, n):
        yield ctx.schedule_timer(1000)
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        return (yield ctx.wait_for_event("go"))

    @w.rt.register_orchestration("P")
    def p(ctx, _):
        try:
            return ["ok", (yield ctx.schedule_sub_orchestration_with_id("CanChild", "kid", 0))]
        except TaskFailedError as e:
            return ["err", str(e)]

    w.client.start_orchestration("p", "P")
    w.run(1500)
    assert w.client.list_executions("kid") == [1, 2]
    w.client.cancel_instance("kid", "kill can kid")
    w.run()
    assert w.st("p") == ("Completed", ["err", "canceled: kill can kid"], None)


def test_parent_cancel_during_child_continue_as_new_gap(w):
    """§3.9/§8: a parent cancelled while its child sits between executions cancels the child's
    next execution; the tree still lists the child."""

    @w.rt.register_orchestration("CanKid")
    def cankid(ctx, n):
        yield ctx.schedule_timer(1000)
        if n < 5:
            yield ctx.continue_as_new(n + 1)
        return n

    @w.rt.register_orchestration("Par")
    def par(ctx, _):
        return (yield ctx.schedule_sub_orchestration("CanKid", 0))

    w.client.start_orchestration("par", "Par")
    w.run(2500)
    w.into_can_gap()
    assert w.client.get_instance_info("par::sub::2").status == "ContinuedAsNew"
    assert w.st("par::sub::2")[0] == "Running"
    w.client.cancel_instance("par", "stop par")
    w.run()
    assert w.st("par") == ("Failed", None, "canceled: stop par")
    assert w.st("par::sub::2") == ("Failed", None, "canceled: parent canceled")
    assert w.client.list_executions("par::sub::2") == [1, 2, 3, 4]
    assert set(w.client.get_instance_tree("par").all_ids) == {"par", "par::sub::2"}


def test_delete_running_with_and_without_force_and_recreate(w):
    """§14: Running without force -> InstanceStillRunning; unknown -> InstanceNotFound; forced
    delete works; the id is reusable (§16 F19)."""

    @w.rt.register_activity("A")
    def a(ctx, x):
        return x

    @w.rt.register_orchestration("Wait")
    def wait(ctx, x):
        r = yield ctx.schedule_activity("A", x)
        return [r, (yield ctx.wait_for_event("go"))]

    w.client.start_orchestration("d", "Wait", "one")
    w.run()
    with pytest.raises(InstanceStillRunning):
        w.client.delete_instance("d")
    with pytest.raises(InstanceNotFound):
        w.client.delete_instance("nope")
    assert w.client.delete_instance("d", True).instances_deleted == 1
    assert w.st("d") == ("NotFound", None, None)
    w.client.start_orchestration("d", "Wait", "two")
    w.run()
    w.client.raise_event("d", "go", "x")
    w.run()
    assert w.st("d") == ("Completed", ["two", "x"], None)


def test_force_delete_while_turn_in_flight_and_stale_activity_into_recreated_instance(w):
    """§16 F21: a turn fetched before a force-delete cannot resurrect the instance; an activity
    leased before the delete cannot complete into a recreated instance of the same id."""

    @w.rt.register_activity("A")
    def a(ctx, x):
        return "res:" + x

    @w.rt.register_orchestration("Wait")
    def wait(ctx, x):
        r = yield ctx.schedule_activity("A", x)
        return [r, (yield ctx.wait_for_event("go"))]

    w.client.start_orchestration("d3", "Wait", "four")
    w.run()
    w.client.raise_event("d3", "go", "y")
    item = w.rt.orchestration_dispatcher.fetch()
    assert item.instance == "d3"
    w.client.delete_instance("d3", True)
    w.rt.orchestration_dispatcher.process(item)
    w.run()
    assert w.st("d3") == ("NotFound", None, None) and "d3" not in w.client.list_all_instances()

    w.client.start_orchestration("s", "Wait", "old")
    while w.rt.orchestration_dispatcher.step():
        pass
    lease = w.rt.worker_dispatcher.fetch()
    outcome = w.rt.worker_dispatcher.execute(lease)
    w.client.delete_instance("s", True)
    w.client.start_orchestration("s", "Wait", "new")
    while w.rt.orchestration_dispatcher.step():
        pass
    assert w.rt.worker_dispatcher.commit(lease, outcome) is False
    w.run()
    w.client.raise_event("s", "go", 1)
    w.run()
    assert w.st("s") == ("Completed", ["res:new", 1], None)


def test_stale_timer_of_deleted_instance_does_not_fire_into_recreated_one(w):
    @w.rt.register_orchestration("T")
    def t(ctx, d):
        yield ctx.schedule_timer(d)
        return d

    w.client.start_orchestration("t", "T", 60_000)
    w.run(1000)
    w.client.delete_instance("t", True)
    w.client.start_orchestration("t", "T", 3_600_000)
    w.run(120_000)
    assert w.st("t")[0] == "Running"
    w.run()
    assert w.st("t") == ("Completed", 3_600_000, None)


def test_bulk_delete_filters_and_prune_of_running_eternal(w):
    """§14: bulk delete takes terminal roots only (children cascade, running skipped, named child
    ignored, empty id list -> nothing), filters AND-ed, limit honoured; prune never touches the
    current execution, also between executions; KV survives prune."""

    @w.rt.register_orchestration("Quick")
    def quick(ctx, x):
        if x == "fail":
            raise ValueError("nope")
        yield ctx.schedule_timer(x * 1000)
        return x

    @w.rt.register_orchestration("Wait")
    def wait(ctx, _):
        return (yield ctx.wait_for_event("go"))

    @w.rt.register_orchestration("Eternal")
    def eternal(ctx, n):
        yield ctx.schedule_timer(1000)
        ctx.set_kv_value("n", str(n))
        yield ctx.continue_as_new(n + 1)

    @w.rt.register_orchestration("Tree")
    def tree(ctx, _):
        yield ctx.schedule_sub_orchestration("Quick", 1)
        return "t"

    t0 = w.clock.now_ms()
    for i in range(1, 6):
        w.client.start_orchestration(f"q{i}", "Quick", i)
    for inst, name, arg in (("f1", "Quick", "fail"), ("w1", "Wait", None), ("t1", "Tree", None),
                            ("e1", "Eternal", 0), ("c1", "Wait", None)):
        w.client.start_orchestration(inst, name, arg)
    w.run(10_000)
    w.client.cancel_instance("c1", "bye")
    w.run(100)
    assert sorted(w.client.list_instances_by_status("Running")) == ["e1", "w1"]
    assert sorted(w.client.list_instances_by_status("Failed")) == ["c1", "f1"]
    assert w.client.get_instance_info("c1").output == "canceled: bye"

    r = w.client.prune_executions("e1", PruneOptions(keep_last=2))
    assert r.executions_deleted == 9 and w.client.list_executions("e1") == [10, 11]
    assert w.client.get_kv_value("e1", "n") == "9"
    w.run(1500)
    w.into_can_gap()
    cur = w.client.get_instance_info("e1").current_execution_id
    w.client.prune_executions("e1", PruneOptions(keep_last=1))
    assert w.client.list_executions("e1") == [cur]
    w.run(3000)
    assert w.st("e1")[0] == "Running"

    assert w.client.delete_instance_bulk(InstanceFilter(instance_ids=[])).instances_deleted == 0
    assert w.client.delete_instance_bulk(InstanceFilter(instance_ids=["t1::sub::2"])).instances_deleted == 0
    r = w.client.delete_instance_bulk(InstanceFilter(completed_before=t0 + 3500))
    assert r.instances_deleted == 6  # q1 q2 q3 f1 t1 + t1's child
    assert sorted(w.client.list_all_instances()) == ["c1", "e1", "q4", "q5", "w1"]
    assert w.client.delete_instance_bulk(InstanceFilter(limit=1)).instances_deleted == 1
    w.client.delete_instance_bulk()
    assert sorted(w.client.list_all_instances()) == ["e1", "w1"]


# --- cooperative cancellation on real threads ----------------------------------------------------


@pytest.mark.realtime
@pytest.mark.parametrize("kind", PROVIDERS)
def test_async_session_activity_observes_is_cancelled(kind, tmp_path):
    """§11.2/§17: an async activity on a session sees ctx.is_cancelled() after its instance is
    cancelled; the instance ends Failed 'canceled: ...' with the activity breadcrumb after it."""
    provider = InMemoryProvider() if kind == "mem" else SqliteProvider.open(str(tmp_path / "rt.db"))
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5, worker_lock_timeout_ms=2_000,
                                          session_idle_timeout_ms=60_000))
    client = Client(provider)
    out: dict[str, str] = {}
    started = threading.Event()

    @rt.register_activity("AsyncJob")
    async def job(ctx, x):
        started.set()
        for _ in range(300):
            if ctx.is_cancelled():
                out[x] = "cancelled"
                return "stopped"
            await asyncio.sleep(0.01)
        out[x] = "ran"
        return "done"

    @rt.register_orchestration("O")
    def o(ctx, x):
        return (yield ctx.schedule_activity_on_session("AsyncJob", x, "sess-1"))

    rt.start()
    try:
        client.start_orchestration("i1", "O", "a")
        assert started.wait(3)
        client.cancel_instance("i1", "stop async")
        st = client.wait_for_orchestration("i1", 3000)
        assert (st.status, st.error) == ("Failed", "canceled: stop async")
        t0 = time.monotonic()
        while "a" not in out and time.monotonic() - t0 < 3.5:
            time.sleep(0.02)
        assert out.get("a") == "cancelled"
        assert [e["kind"] for e in client.read_execution_history("i1", 1)][-2:] == ["OrchestrationFailed",
                                                                                   "ActivityCancelRequested"]
    finally:
        rt.shutdown(2000)


# --- simulation: cancel signals at arbitrary times -------------------------------------------------


def _cancel_setup(rt, world):
    @rt.register_activity("Charge")
    def charge(ctx, key):
        world.put_if_absent(f"charged:{key}", True)
        return key

    @rt.register_activity("Flaky")
    def flaky(ctx, key):
        n = (world.get(f"tries:{key}") or 0) + 1
        world.put(f"tries:{key}", n)
        if n <= 2:
            raise RuntimeError("503")
        return "ok"

    @rt.register_activity("SessWork")
    def sess(ctx, key):
        world.put_if_absent(f"sess:{key}", ctx.session_id)
        return key

    @rt.register_orchestration("Leaf")
    def leaf(ctx, x):
        for i in range(4):
            yield ctx.schedule_timer(10 * MIN)
            yield ctx.schedule_activity("Charge", f"{ctx.instance_id}:{i}")
        return x

    @rt.register_orchestration("Looper")
    def looper(ctx, n):
        yield ctx.schedule_timer(5 * MIN)
        yield ctx.schedule_activity_on_session("SessWork", f"{ctx.instance_id}:{n}", "s1")
        if n < 4:
            yield ctx.continue_as_new(n + 1)
        return n

    @rt.register_orchestration("Root")
    def root(ctx, x):
        yield ctx.schedule_activity("Charge", f"root:{x}:start")
        r = yield ctx.all([ctx.schedule_sub_orchestration("Leaf", 1),
                           ctx.schedule_sub_orchestration_with_id("Leaf", f"{ctx.instance_id}-leaf2", 2),
                           ctx.schedule_sub_orchestration_with_id("Looper", f"{ctx.instance_id}-loop", 0)])
        try:
            yield ctx.schedule_activity_with_retry("Flaky", ctx.instance_id,
                                                   RetryPolicy(max_attempts=5, backoff=Backoff.exponential(30_000, 2.0, 600_000)))
        except TaskFailedError as e:
            return ["flaky failed", str(e)]
        return r


def _all_terminal(res):
    bad = {k: v for k, v in res.outputs().items() if v[0] not in ("Completed", "Failed")}
    return f"not terminal: {bad}" if bad else None


def _cancel_outcomes(res):
    out = res.outputs()
    for r in ("r0", "r1"):
        if out.get(r) != ("Failed", "canceled: stop"):
            return f"{r}: {out.get(r)}"
    if out.get("r2", ("?",))[0] != "Completed":
        return f"r2: {out.get('r2')}"
    for inst, (status, text) in out.items():
        if inst.startswith(("r0", "r1")) and inst not in ("r0", "r1", "r1-loop"):
            if (status, text) != ("Failed", "canceled: parent canceled"):
                return f"{inst}: {(status, text)}"
    return None


# Cancels land anywhere in the fault window, so outcomes legitimately depend on faults: per
# scenarios/README.md ("Deadlines inside the fault window ... require fault_transparent=False with
# invariants only") the safety checkers and the invariants judge it.
CANCEL_ANYTIME = SimSpec(
    name="probe-cancel-anytime", setup=_cancel_setup, fault_transparent=False,
    ref="tests/runtime/test_cancel_manage_probe.py:CANCEL_ANYTIME",
    invariants=[_all_terminal, _cancel_outcomes],
    starts=[Start(instance=f"r{i}", orchestration="Root", input=i) for i in range(3)],
    signals=[Signal(instance="r0", name="stop", at_ms=None, kind="cancel"),
             Signal(instance="r1", name="stop", at_ms=None, kind="cancel"),
             Signal(instance="r1-loop", name="kill loop", at_ms=None, kind="cancel")],
)


@pytest.mark.parametrize("provider,seeds", [("memory", range(25)), ("sqlite", range(8))])
def test_cancel_signals_at_arbitrary_times_pass_checkers(provider, seeds):
    failures = []
    for seed in seeds:
        res = run_and_check(Simulation(CANCEL_ANYTIME, seed, FaultPlan.all(0.05), provider=provider))
        failures += [f.render() for f in res.failures]
    assert not failures, failures[:2]


def test_cancel_anytime_spec_is_a_real_spec():
    """The spec above is only meaningful if its cancels bite: sanity-check one fault-free run."""
    res = run_and_check(Simulation(attrs.evolve(CANCEL_ANYTIME), 3, None))
    assert not res.failures
    assert res.outputs()["r0"] == ("Failed", "canceled: stop")
