"""Versioning and the management API as users meet them, on InMemoryProvider and SqliteProvider
alike: numeric semver "latest", exact-version policies for sub-orchestrations / continue-as-new /
detached starts, upgrades while instances are in flight (pinned versions kept across restarts),
``supported_versions``, and trees, deletes, bulk deletes, pruning, metrics and queue depths that
agree with each other. A probe in session 6 found no defect here; these are its checks, kept."""

from __future__ import annotations

import pytest

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.errors import CannotDeleteSubOrchestration, InstanceNotFound, InstanceStillRunning
from duroxide_sim.providers.base import InstanceFilter, PruneOptions
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

PROVIDERS = ("mem", "sqlite")


class W:
    def __init__(self, kind, options=None, provider=None, clock=None):
        self.clock = clock or SimClock()
        if provider is None:
            provider = InMemoryProvider(self.clock) if kind == "mem" else SqliteProvider.in_memory(clock=self.clock)
        self.provider = provider
        self.rt = Runtime(provider, options or RuntimeOptions(), clock=self.clock, ids=SequentialIds())
        self.driver = SequentialDriver(self.rt, self.clock)
        self.client = Client(provider, clock=self.clock, sleep=self.driver.sleep)

    def run(self):
        self.driver.run_until_quiet()

    def again(self, options=None, ns=2):
        """A new deployment (fresh registry) over the same provider and clock."""
        w = W.__new__(W)
        w.clock, w.provider = self.clock, self.provider
        w.rt = Runtime(self.provider, options or RuntimeOptions(), clock=self.clock, ids=SequentialIds(ns))
        w.driver = SequentialDriver(w.rt, self.clock)
        w.client = Client(self.provider, clock=self.clock, sleep=w.driver.sleep)
        return w


def tag(label):
    def fn(ctx, inp):
        yield ctx.schedule_timer(1)
        return [label, ctx.orchestration_version, inp]
    return fn


# ---------------------------------------------------------------- versioning

@pytest.mark.parametrize("kind", PROVIDERS)
def test_semver_latest_is_numeric_not_lexicographic(kind):
    w = W(kind)
    w.rt.register_orchestration_versioned("F", "1.9.0", tag("a"))
    w.rt.register_orchestration_versioned("F", "1.10.0", tag("b"))
    w.client.start_orchestration("i", "F")
    w.run()
    assert w.client.get_status("i").output == ["b", "1.10.0", None]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_exact_policy_applies_to_sub_orchestration_without_version(kind):
    w = W(kind)
    w.rt.register_orchestration_versioned("C", "1.0.0", tag("c1"))
    w.rt.register_orchestration_versioned("C", "2.0.0", tag("c2"))

    def parent(ctx, _):
        a = yield ctx.schedule_sub_orchestration("C", 1)
        b = yield ctx.schedule_sub_orchestration_versioned("C", None, 2)
        c = yield ctx.schedule_sub_orchestration_versioned("C", "2.0.0", 3)
        return [a, b, c]

    w.rt.register_orchestration("P", parent)
    w.rt.set_orchestration_version_policy("C", "1.0.0")
    w.client.start_orchestration("p", "P")
    w.run()
    assert w.client.get_status("p").output == [["c1", "1.0.0", 1], ["c1", "1.0.0", 2], ["c2", "2.0.0", 3]]
    kids = w.client.get_instance_tree("p").all_ids
    versions = sorted(w.client.get_instance_info(k).orchestration_version for k in kids if k != "p")
    assert versions == ["1.0.0", "1.0.0", "2.0.0"]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_exact_policy_applies_to_continue_as_new_and_detached(kind):
    w = W(kind)

    def v1(ctx, n):
        yield ctx.schedule_timer(1)
        if n == 0:
            yield ctx.start_orchestration("L", "det", 99)
            yield ctx.schedule_timer(1)  # detached starts are dispatched on Continue turns (SPEC §7)
            yield ctx.continue_as_new(1)
        return ["v1", ctx.orchestration_version, n]

    w.rt.register_orchestration_versioned("L", "1.0.0", v1)
    w.rt.register_orchestration_versioned("L", "2.0.0", tag("v2"))
    w.rt.set_orchestration_version_policy("L", "1.0.0")
    w.client.start_orchestration("i", "L", 0)
    w.run()
    assert w.client.get_status("i").output == ["v1", "1.0.0", 1]
    assert w.client.get_status("det").output == ["v1", "1.0.0", 99]
    # switching the policy back to Latest (None) upgrades new starts
    w.rt.set_orchestration_version_policy("L", None)
    w.client.start_orchestration("j", "L", 5)
    w.run()
    assert w.client.get_status("j").output == ["v2", "2.0.0", 5]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_in_flight_sub_orchestration_keeps_pinned_version_across_redeploy(kind):
    w = W(kind)

    def child_v1(ctx, _):
        x = yield ctx.wait_for_event("go")
        return ["c1", ctx.orchestration_version, x]

    def parent_v1(ctx, _):
        r = yield ctx.schedule_sub_orchestration("C")
        return ["p1", ctx.orchestration_version, r]

    w.rt.register_orchestration_versioned("C", "1.0.0", child_v1)
    w.rt.register_orchestration_versioned("P", "1.0.0", parent_v1)
    w.client.start_orchestration("p", "P")
    w.run()
    child = [k for k in w.client.get_instance_tree("p").all_ids if k != "p"][0]
    assert w.client.get_status(child).status == "Running"

    w2 = w.again()
    w2.rt.register_orchestration_versioned("C", "1.0.0", child_v1)
    w2.rt.register_orchestration_versioned("C", "2.0.0", tag("c2"))
    w2.rt.register_orchestration_versioned("P", "1.0.0", parent_v1)
    w2.rt.register_orchestration_versioned("P", "2.0.0", tag("p2"))
    w2.client.raise_event(child, "go", 7)
    w2.run()
    assert w2.client.get_status("p").output == ["p1", "1.0.0", ["c1", "1.0.0", 7]]
    assert w2.client.get_instance_info(child).orchestration_version == "1.0.0"
    assert w2.client.get_instance_info("p").orchestration_version == "1.0.0"


@pytest.mark.parametrize("kind", PROVIDERS)
def test_runtime_with_other_supported_versions_leaves_pinned_instance_alone(kind):
    w = W(kind)

    def waiter(ctx, _):
        x = yield ctx.wait_for_event("go")
        return x

    w.rt.register_orchestration("O", waiter)
    w.client.start_orchestration("i", "O")
    w.run()
    assert w.client.get_status("i").status == "Running"
    # a runtime that only supports a later engine range must not touch the 0.1.0-pinned execution
    other = w.again(RuntimeOptions(supported_versions=("9.0.0", "9.9.9")))
    other.rt.register_orchestration("O", waiter)
    other.client.raise_event("i", "go", 1)
    other.run()
    assert other.client.get_status("i").status == "Running"
    assert other.client.get_queue_depths().orchestrator_queue == 1
    # a compatible runtime then finishes it
    back = w.again(ns=3)
    back.rt.register_orchestration("O", waiter)
    back.run()
    assert back.client.get_status("i").output == 1


# ---------------------------------------------------------------- management

def _tree_world(kind):
    w = W(kind)

    def leaf(ctx, _):
        x = yield ctx.wait_for_event("go")
        return x

    def mid(ctx, _):
        r = yield ctx.schedule_sub_orchestration("Leaf")
        return r

    def root(ctx, _):
        r = yield ctx.schedule_sub_orchestration("Mid")
        return r

    w.rt.register_orchestration("Leaf", leaf)
    w.rt.register_orchestration("Mid", mid)
    w.rt.register_orchestration("Root", root)
    return w


@pytest.mark.parametrize("kind", PROVIDERS)
def test_three_level_tree_management(kind):
    w = _tree_world(kind)
    w.client.start_orchestration("r", "Root")
    w.run()
    tree = w.client.get_instance_tree("r")
    assert tree.root_id == "r"
    assert len(tree.all_ids) == 3
    assert sorted(w.client.list_instances_by_status("Running")) == sorted(tree.all_ids)
    mid = [i for i in tree.all_ids if w.client.get_instance_info(i).orchestration_name == "Mid"][0]
    leaf = [i for i in tree.all_ids if w.client.get_instance_info(i).orchestration_name == "Leaf"][0]
    assert w.client.get_instance_info(leaf).parent_instance_id == mid
    assert w.client.get_instance_info(mid).parent_instance_id == "r"
    for child in (mid, leaf):
        with pytest.raises(CannotDeleteSubOrchestration):
            w.client.delete_instance(child, force=True)
    with pytest.raises(InstanceStillRunning):
        w.client.delete_instance("r")
    res = w.client.delete_instance("r", force=True)
    assert res.instances_deleted == 3
    assert res.executions_deleted == 3
    assert w.client.list_all_instances() == []
    m = w.client.get_system_metrics()
    assert (m.total_instances, m.total_executions, m.total_events, m.running_instances) == (0, 0, 0, 0)
    q0 = w.client.get_queue_depths()
    assert (q0.orchestrator_queue, q0.worker_queue) == (0, 0)
    # a QueueMessage to the deleted leaf is an orphan and is deleted (SPEC §3.12); nothing resurrects
    w.client.enqueue_event(leaf, "q", 1)
    w.run()
    assert w.client.list_all_instances() == []
    q = w.client.get_queue_depths()
    assert (q.orchestrator_queue, q.worker_queue) == (0, 0)


@pytest.mark.parametrize("kind", PROVIDERS)
def test_bulk_delete_filters(kind):
    w = W(kind)

    def quick(ctx, n):
        yield ctx.schedule_timer(n)
        return n

    def parent(ctx, _):
        r = yield ctx.schedule_sub_orchestration("Q", 1)
        return r

    def waiter(ctx, _):
        x = yield ctx.wait_for_event("go")
        return x

    w.rt.register_orchestration("Q", quick)
    w.rt.register_orchestration("P", parent)
    w.rt.register_orchestration("W", waiter)
    w.client.start_orchestration("a", "Q", 10)
    w.client.start_orchestration("b", "Q", 1000)
    w.client.start_orchestration("p", "P")
    w.client.start_orchestration("w", "W")
    w.run()
    child = [i for i in w.client.get_instance_tree("p").all_ids if i != "p"][0]
    t_a = w.client.get_execution_info("a", 1).completed_at
    t_b = w.client.get_execution_info("b", 1).completed_at
    assert t_a < t_b
    # child id in the list is not a root: not deleted; running 'w' skipped
    r = w.client.delete_instance_bulk(InstanceFilter(instance_ids=[child, "w"]))
    assert r.instances_deleted == 0
    assert child in w.client.list_all_instances()
    # completed_before: only 'a' (and p + child, whose completion is earlier too)
    r = w.client.delete_instance_bulk(InstanceFilter(completed_before=t_a + 1))
    remaining = set(w.client.list_all_instances())
    assert "a" not in remaining and "b" in remaining and "w" in remaining
    assert ("p" in remaining) == (child in remaining)
    # limit
    w.client.start_orchestration("c", "Q", 1)
    w.client.start_orchestration("d", "Q", 1)
    w.run()
    before = set(w.client.list_all_instances())
    r = w.client.delete_instance_bulk(InstanceFilter(limit=1))
    after = set(w.client.list_all_instances())
    assert len(before - after) >= 1
    assert r.instances_deleted == len(before - after)
    roots_deleted = [i for i in before - after if i != child]
    assert len(roots_deleted) == 1


@pytest.mark.parametrize("kind", PROVIDERS)
def test_prune_completed_before_and_running_instance(kind):
    w = W(kind)

    def looper(ctx, n):
        yield ctx.schedule_timer(10)
        if n < 4:
            yield ctx.continue_as_new(n + 1)
        x = yield ctx.wait_for_event("go")
        return x

    w.rt.register_orchestration("L", looper)
    w.client.start_orchestration("i", "L", 0)
    w.run()
    assert w.client.list_executions("i") == [1, 2, 3, 4, 5]
    assert w.client.get_status("i").status == "Running"
    assert w.client.list_instances_by_status("Running") == ["i"]
    cut = w.client.get_execution_info("i", 2).completed_at
    r = w.client.prune_executions("i", PruneOptions(completed_before=cut + 1))
    assert r.executions_deleted == 2
    assert w.client.list_executions("i") == [3, 4, 5]
    r = w.client.prune_executions("i", PruneOptions(keep_last=2))
    assert r.executions_deleted == 1
    assert w.client.list_executions("i") == [4, 5]
    r = w.client.prune_executions("i", PruneOptions(keep_last=0))
    assert w.client.list_executions("i") == [5]
    info = w.client.get_instance_info("i")
    assert info.current_execution_id == 5 and info.status == "Running"
    m = w.client.get_system_metrics()
    assert m.total_executions == 1
    assert m.total_events == len(w.client.read_execution_history("i", 5))
    w.client.raise_event("i", "go", 3)
    w.run()
    assert w.client.get_status("i").output == 3


@pytest.mark.parametrize("kind", PROVIDERS)
def test_unknown_lookups_raise(kind):
    w = W(kind)
    w.rt.register_orchestration("Q", tag("q"))
    w.client.start_orchestration("a", "Q")
    w.run()
    for call in (lambda: w.client.get_instance_info("nope"),
                 lambda: w.client.get_execution_info("a", 9),
                 lambda: w.client.prune_executions("nope", PruneOptions(keep_last=1)),
                 lambda: w.client.delete_instance("nope")):
        with pytest.raises(InstanceNotFound):
            call()


@pytest.mark.parametrize("kind", PROVIDERS)
def test_queue_depths_count_pending_work(kind):
    w = W(kind, RuntimeOptions(worker_concurrency=0))

    def o(ctx, _):
        a = yield ctx.schedule_activity("A", 1)
        return a

    w.rt.register_orchestration("O", o)
    w.rt.register_activity("A", lambda ctx, x: x)
    w.client.start_orchestration("i", "O")
    w.client.start_orchestration("j", "O")
    q = w.client.get_queue_depths()
    assert q.orchestrator_queue == 2 and q.worker_queue == 0
    # no instance rows before the first ack
    assert w.client.list_all_instances() == []
    w.run()
    q = w.client.get_queue_depths()
    assert (q.orchestrator_queue, q.worker_queue, q.timer_queue) == (0, 2, 0)
    assert sorted(w.client.list_all_instances()) == ["i", "j"]
    r = w.client.delete_instance("i", force=True)
    assert r.queue_messages_deleted == 1
    assert w.client.get_queue_depths().worker_queue == 1


@pytest.mark.parametrize("kind", PROVIDERS)
def test_list_all_instances_newest_first(kind):
    w = W(kind)
    w.rt.register_orchestration("Q", tag("q"))
    for name in ["x", "y", "z"]:
        w.client.start_orchestration(name, "Q")
        w.run()
        w.clock.advance(100) if hasattr(w.clock, "advance") else None
    assert w.client.list_all_instances() == ["z", "y", "x"]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_bulk_delete_cascades_and_empty_id_list_is_noop(kind):
    w = _tree_world(kind)
    w.client.start_orchestration("r", "Root")
    w.run()
    ids = w.client.get_instance_tree("r").all_ids
    leaf = [i for i in ids if w.client.get_instance_info(i).orchestration_name == "Leaf"][0]
    w.client.raise_event(leaf, "go", 5)
    w.run()
    assert w.client.get_status("r").output == 5
    assert w.client.delete_instance_bulk(InstanceFilter(instance_ids=[])).instances_deleted == 0
    assert len(w.client.list_all_instances()) == 3
    r = w.client.delete_instance_bulk(InstanceFilter(instance_ids=["r"]))
    assert r.instances_deleted == 3
    assert w.client.list_all_instances() == []
    assert w.client.get_system_metrics().total_events == 0


@pytest.mark.parametrize("kind", PROVIDERS)
def test_execution_info_and_history_agree_and_prune_bulk(kind):
    w = W(kind)

    def looper(ctx, n):
        yield ctx.schedule_timer(10)
        if n < 2:
            yield ctx.continue_as_new(n + 1)
        x = yield ctx.wait_for_event("go")
        return x

    w.rt.register_orchestration("L", looper)
    w.client.start_orchestration("i", "L", 0)
    w.client.start_orchestration("j", "L", 0)
    w.run()
    total = 0
    for inst in ("i", "j"):
        for e in w.client.list_executions(inst):
            n = len(w.client.read_execution_history(inst, e))
            assert w.client.get_execution_info(inst, e).event_count == n
            total += n
    m = w.client.get_system_metrics()
    assert m.total_events == total and m.total_executions == 6 and m.running_instances == 2
    r = w.client.prune_executions_bulk(InstanceFilter(), PruneOptions(keep_last=1))
    assert r.instances_processed == 2 and r.executions_deleted == 4
    assert w.client.list_executions("i") == [3] and w.client.list_executions("j") == [3]
    assert w.client.read_execution_history("i", 1) == []


@pytest.mark.parametrize("kind", PROVIDERS)
def test_sub_orchestration_to_missing_version_fails_parent_not_hangs(kind):
    w = W(kind, RuntimeOptions(max_attempts=2, unregistered_backoff_base_ms=1, unregistered_backoff_max_ms=2))
    w.rt.register_orchestration_versioned("C", "1.0.0", tag("c1"))

    def parent(ctx, _):
        r = yield ctx.schedule_sub_orchestration_versioned("C", "3.0.0", 1)
        return r

    w.rt.register_orchestration("P", parent)
    w.client.start_orchestration("p", "P")
    w.run()
    st = w.client.get_status("p")
    assert st.status == "Failed"
    assert "p" in w.client.list_instances_by_status("Failed")
    m = w.client.get_system_metrics()
    assert m.running_instances == len(w.client.list_instances_by_status("Running"))


@pytest.mark.parametrize("kind", PROVIDERS)
def test_continue_as_new_versioned_downgrade_updates_instance_info(kind):
    w = W(kind)

    def v2(ctx, n):
        yield ctx.schedule_timer(1)
        if n == 0:
            yield ctx.continue_as_new_versioned(1, "1.0.0")
        return ["v2", n]

    w.rt.register_orchestration_versioned("F", "1.0.0", tag("v1"))
    w.rt.register_orchestration_versioned("F", "2.0.0", v2)
    w.client.start_orchestration("i", "F", 0)
    w.run()
    assert w.client.get_status("i").output == ["v1", "1.0.0", 1]
    assert w.client.get_instance_info("i").orchestration_version == "1.0.0"
    started = [e for e in w.client.read_execution_history("i", 1) if e["kind"] == "OrchestrationStarted"][0]
    import json
    assert json.loads(started["data"])["version"] == "2.0.0"


def test_pinned_version_survives_process_restart_on_sqlite_file(tmp_path):
    path = str(tmp_path / "app.db")
    clock = SimClock()

    def v1(ctx, _):
        x = yield ctx.wait_for_event("go")
        return ["v1", ctx.orchestration_version, x]

    w = W("sqlite", provider=SqliteProvider.open(path, clock=clock), clock=clock)
    w.rt.register_orchestration_versioned("F", "1.0.0", v1)
    w.client.start_orchestration("i", "F")
    w.run()
    w.provider.close() if hasattr(w.provider, "close") else None
    w2 = W("sqlite", provider=SqliteProvider.open(path, clock=clock), clock=clock)
    w2.rt.register_orchestration_versioned("F", "1.0.0", v1)
    w2.rt.register_orchestration_versioned("F", "2.0.0", tag("v2"))
    w2.client.raise_event("i", "go", 1)
    w2.client.start_orchestration("j", "F", 2)
    w2.run()
    assert w2.client.get_status("i").output == ["v1", "1.0.0", 1]
    assert w2.client.get_status("j").output == ["v2", "2.0.0", 2]
    assert w2.client.list_all_instances() == ["j", "i"]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_runtime_whose_range_leaves_out_its_own_version_starts_no_execution(kind, caplog):
    """A runtime kept to drain older executions (supported_versions not holding its own engine
    version) must not take the first turn of a new instance: it would pin the execution to its
    own version and then never run it again (the instance hung Running after one turn). It
    leaves the instance unstarted (looking again every second, as for any incompatible item,
    SPEC §12) to a runtime that runs its version - and says so once, at construction."""
    w = W(kind)

    def counter(ctx, n):
        yield ctx.schedule_timer(10)
        if n < 2:
            return ctx.continue_as_new(n + 1)
        return n

    drain = w.again(RuntimeOptions(supported_versions=("0.0.0", "0.0.9")))
    assert any("leaves out this runtime's own engine version" in r.getMessage() for r in caplog.records)
    drain.rt.register_orchestration("C", counter)
    drain.client.start_orchestration("c", "C", 0)
    drain.driver.run_until_quiet(5_000)  # (it looks again every second: bounded)
    assert drain.client.get_status("c").status == "NotFound"
    assert drain.client.get_queue_depths().orchestrator_queue == 1
    full = w.again(ns=3)
    full.rt.register_orchestration("C", counter)
    full.run()
    assert full.client.get_status("c").output == 2
    assert full.client.list_executions("c") == [1, 2, 3]
