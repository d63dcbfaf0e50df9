"""The management / observability API as an operator of a production system uses it (SPEC §13,
§14, §16 F18-F24, §17), on the real Runtime over InMemoryProvider, SqliteProvider (a file) and
PostgresProvider (a fresh schema on the test process's private server), with the same assertions
on each: status and info shapes for every status, histories and executions across
continue-as-new, trees three levels deep, deletes (single, tree, running, bulk with every
filter), pruning by count and by age, runtime metrics after a known workload, queue depths,
orchestration stats, custom-status versions and waits, client KV reads, and hostile arguments to
every management call.

Expected values come from SPEC, the README, and what duroxide-python 0.2.2 (the peer) returned
for the same calls (``bench/.peer``; quoted in the tests where it decides a case).

Found by this file and fixed (each test failed before): ``delete_instance(id, "no")`` deleted a
running instance (any truthy ``force`` counted; now only a bool, as the peer); execution ids and
filter limits/times past 2**63 - 1 failed inside the SQL drivers (refused at the call now); a
bulk filter's ids were not checked like single ids (a NUL or lone surrogate failed PostgreSQL's
or SQLite's whole call).
"""

from __future__ import annotations

import json
import os
import unicodedata
import uuid

import pytest

from duroxide_sim import (
    CannotDeleteSubOrchestration,
    Client,
    InMemoryProvider,
    InstanceFilter,
    InstanceNotFound,
    InstanceStillRunning,
    InvalidInputError,
    OperationTimeout,
    PruneOptions,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
)
from duroxide_sim.errors import ManagementNotAvailable
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

PROVIDERS = ("memory", "sqlite", "postgres")
SEC = 1_000


class Env:
    """Production Runtime + Client over one provider, driven on a simulated clock."""

    def __init__(self, provider, clock, options: RuntimeOptions | None = None) -> None:
        self.provider, self.clock = provider, clock
        self.rt = Runtime(provider, options or RuntimeOptions(), clock=clock, ids=SequentialIds())
        self.driver = SequentialDriver(self.rt, clock)
        self.client = Client(provider, clock=clock, sleep=self.driver.sleep)

    def run(self, limit_ms: int | None = None) -> None:
        self.driver.run_until_quiet(limit_ms)

    def idle(self) -> None:
        self.driver.run_until_idle()

    def into_can_gap(self) -> None:
        """Fire the next due timer and run exactly one orchestration turn (the CAN turn)."""
        self.clock.advance_to(self.provider.next_wakeup_ms())
        assert self.rt.orchestration_dispatcher.step()

    def history(self, instance: str, execution: int = 1) -> list:
        return self.client.read_execution_history(instance, execution)

    def kinds(self, instance: str, execution: int = 1) -> list[str]:
        return [e.kind for e in self.history(instance, execution)]


def _drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=PROVIDERS)
def make_env(request, tmp_path):
    """``make_env(options=None)`` -> an Env over a fresh store of the parametrized provider."""
    made: list = []
    schemas: list[str] = []
    url_box: list[str] = []

    def make(options: RuntimeOptions | None = None) -> Env:
        clock = SimClock()
        if request.param == "memory":
            provider = InMemoryProvider(clock)
        elif request.param == "sqlite":
            provider = SqliteProvider.open(tmp_path / f"journeys{len(made)}.db", clock=clock)
        else:
            from duroxide_sim.providers.postgres import PostgresProvider
            from tests import pg_server

            if not url_box:
                url_box.append(pg_server.shared_url())
            schema = f"dx_mgmt_{os.getpid()}_{uuid.uuid4().hex[:10]}"
            schemas.append(schema)
            provider = PostgresProvider.connect_with_schema(url_box[0], schema, clock=clock)
        made.append(provider)
        return Env(provider, clock, options)

    make.kind = request.param
    yield make
    for provider in made:
        getattr(provider, "close", lambda: None)()
    for schema in schemas:
        _drop_schema(url_box[0], schema)


@pytest.fixture
def env(make_env) -> Env:
    return make_env()


# ---------------------------------------------------------------------------------------------
# A small application the journeys share
# ---------------------------------------------------------------------------------------------


def register_app(env: Env) -> dict:
    """Handlers an operator's application might have. Returns a dict of call counters."""
    rt = env.rt
    calls = {"flaky": 0}

    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_activity("Boom")
    def boom(ctx, x):
        raise ValueError(f"boom {x}")

    @rt.register_activity("Flaky")
    def flaky(ctx, x):
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RuntimeError("flake")
        return x

    @rt.register_orchestration("Ok")
    def ok(ctx, x):
        return (yield ctx.schedule_activity("Echo", x))

    @rt.register_orchestration("Fail")
    def fail(ctx, x):
        return (yield ctx.schedule_activity("Boom", x))

    @rt.register_orchestration("Catch")
    def catch(ctx, x):
        try:
            yield ctx.schedule_activity("Boom", x)
        except Exception:  # noqa: BLE001 - the workflow handles it
            return "caught"

    @rt.register_orchestration("Retry")
    def retry(ctx, x):
        return (yield ctx.schedule_activity_with_retry("Flaky", x, {"max_attempts": 5, "backoff": "fixed"}))

    @rt.register_orchestration("Counter")
    def counter(ctx, n):
        ctx.set_kv_value(f"n{n}", str(n))
        ctx.set_custom_status(f"at {n}")
        yield ctx.schedule_activity("Echo", n)
        if n < 2:
            yield ctx.continue_as_new(n + 1)
        return n

    @rt.register_orchestration("Leaf")
    def leaf(ctx, x):
        return (yield ctx.schedule_activity("Echo", x))

    @rt.register_orchestration("Mid")
    def mid(ctx, x):
        return (yield ctx.schedule_sub_orchestration("Leaf", x))

    @rt.register_orchestration("Root")
    def root(ctx, x):
        return (yield ctx.schedule_sub_orchestration_with_id("Mid", f"{ctx.instance_id}-mid", x))

    @rt.register_orchestration("Waiter")
    def waiter(ctx, _):
        ctx.set_custom_status("waiting")
        ctx.set_kv_value("phase", "waiting")
        return (yield ctx.wait_for_event("go"))

    return calls


def start_workload(env: Env) -> None:
    c = env.client
    c.start_orchestration("ok", "Ok", 1)
    c.start_orchestration("fail", "Fail", 2)
    c.start_orchestration("catch", "Catch", 3)
    c.start_orchestration("retry", "Retry", "r")
    c.start_orchestration("counter", "Counter", 0)
    c.start_orchestration("root", "Root", 7)
    c.start_orchestration("w", "Waiter")
    c.start_orchestration("cx", "Waiter")
    env.run()
    c.cancel_instance("cx", "stop it")
    env.run()


# ---------------------------------------------------------------------------------------------
# Status and info shapes for every status
# ---------------------------------------------------------------------------------------------


def test_status_and_instance_info_for_every_status(env):
    """SPEC §14/§17: get_status gives {status, output (decoded), error (display text),
    custom_status, custom_status_version}; get_instance_info the §14 fields with the raw output
    text (Completed: the JSON, Failed: the display message, ContinuedAsNew chain: the final
    execution's). Peer, same workload: info('cx').output == 'canceled: stop it',
    info('counter').current_execution_id == 4 (ours: 3 executions here), info('<root>-mid')
    .parent_instance_id == 'root'."""
    register_app(env)
    start_workload(env)
    c = env.client
    expected = {
        "ok": ("Completed", 1, None, None, 0),
        "catch": ("Completed", "caught", None, None, 0),
        "retry": ("Completed", "r", None, None, 0),
        "counter": ("Completed", 2, None, "at 2", 3),
        "root": ("Completed", 7, None, None, 0),
        "root-mid": ("Completed", 7, None, None, 0),
        "w": ("Running", None, None, "waiting", 1),
        "cx": ("Failed", None, "canceled: stop it", "waiting", 1),
    }
    for inst, want in expected.items():
        st = c.get_status(inst)
        assert (st.status, st.output, st.error, st.custom_status, st.custom_status_version) == want, inst
        assert c.get_orchestration_status(inst) == st
    st = c.get_status("fail")
    assert st.status == "Failed" and st.output is None
    assert st.error.splitlines()[-1] == "Exception: Activity 'Boom' call failed: ValueError: boom 2"
    assert vars(c.get_status("never-started")) == {"status": "NotFound", "output": None, "error": None,
                                                   "custom_status": None, "custom_status_version": 0}

    now = env.clock.now_ms()
    infos = {i: c.get_instance_info(i) for i in list(expected) + ["fail"]}
    for inst, info in infos.items():
        assert info.instance_id == inst
        assert info.orchestration_version == "1.0.0"
        assert isinstance(info.created_at, int) and isinstance(info.updated_at, int)
        assert info.created_at <= info.updated_at <= now, inst
    assert (infos["ok"].status, infos["ok"].output, infos["ok"].orchestration_name) == ("Completed", "1", "Ok")
    assert (infos["counter"].status, infos["counter"].output, infos["counter"].current_execution_id) == ("Completed", "2", 3)
    assert (infos["cx"].status, infos["cx"].output) == ("Failed", "canceled: stop it")
    assert infos["fail"].status == "Failed" and infos["fail"].output == c.get_status("fail").error
    assert infos["w"].status == "Running" and infos["w"].output in (None, "")  # peer: ''
    assert infos["root-mid"].parent_instance_id == "root" and infos["root"].parent_instance_id is None
    leaf = [i for i in c.get_instance_tree("root").all_ids if i not in ("root", "root-mid")]
    assert len(leaf) == 1 and c.get_instance_info(leaf[0]).parent_instance_id == "root-mid"


def test_timestamps_follow_the_clock_across_continue_as_new(env):
    """created_at is the first ack, updated_at the last; each execution's started_at /
    completed_at are the times of its first and terminal turns (integer ms)."""
    c = env.client

    @env.rt.register_orchestration("Slow")
    def slow(ctx, n):
        yield ctx.schedule_timer(60 * SEC)
        if n < 2:
            yield ctx.continue_as_new(n + 1)
        return n

    t0 = env.clock.now_ms()
    c.start_orchestration("s", "Slow", 0)
    env.run()
    info = c.get_instance_info("s")
    assert (info.created_at, info.updated_at) == (t0, t0 + 180 * SEC)
    assert c.list_executions("s") == [1, 2, 3]
    for e in (1, 2, 3):
        ex = c.get_execution_info("s", e)
        assert (ex.started_at, ex.completed_at) == (t0 + (e - 1) * 60 * SEC, t0 + e * 60 * SEC), e
        assert ex.status == ("Completed" if e == 3 else "ContinuedAsNew")
        assert ex.output == str(e if e < 3 else 2)  # ContinuedAsNew: the next input; Completed: the output
        assert ex.event_count == len(env.history("s", e))


# ---------------------------------------------------------------------------------------------
# Histories and executions across continue-as-new
# ---------------------------------------------------------------------------------------------


def test_history_and_executions_across_continue_as_new(env):
    """SPEC §8: list_executions = [1..n]; each execution's history is readable on its own and
    starts at event 1; an execution that does not exist reads as [] and its info is
    InstanceNotFound (peer: "get_execution_info: Execution 5 not found for instance can")."""
    register_app(env)
    c = env.client
    c.start_orchestration("counter", "Counter", 0)
    env.run()
    assert c.list_executions("counter") == [1, 2, 3]
    for e in (1, 2, 3):
        hist = env.history("counter", e)
        assert [h.event_id for h in hist] == list(range(1, len(hist) + 1))
        assert hist[0].kind == "OrchestrationStarted" and json.loads(hist[0].data)["input"] == e - 1
        assert hist[-1].kind == ("OrchestrationCompleted" if e == 3 else "OrchestrationContinuedAsNew")
        assert "KeyValueSet" in [h.kind for h in hist] and "CustomStatusUpdated" in [h.kind for h in hist]
    assert env.history("counter", 4) == []
    with pytest.raises(InstanceNotFound, match="4") as info:
        c.get_execution_info("counter", 4)
    assert isinstance(info.value, RuntimeError)
    assert c.read_history_events("counter")[-1].event_id == len(env.history("counter", 3))


# ---------------------------------------------------------------------------------------------
# Listing and system metrics
# ---------------------------------------------------------------------------------------------


def test_listing_agrees_with_system_metrics_and_statuses(env):
    """list_all_instances newest first (SPEC §14); list_instances_by_status by the current
    execution; get_system_metrics counts the same sets; a start still queued has no row."""
    register_app(env)
    start_workload(env)
    c = env.client
    c.start_orchestration("queued", "Ok", 1)  # enqueued only: no instance row yet (§14)
    everything = c.list_all_instances()
    assert "queued" not in everything
    assert len(everything) == len(set(everything)) == 10
    assert everything[-1] == "ok"  # the first one started
    # children are created after their parents: they come first
    assert everything.index("root-mid::sub::2") < everything.index("root-mid") < everything.index("root")
    running = c.list_instances_by_status("Running")
    completed = c.list_instances_by_status("Completed")
    failed = c.list_instances_by_status("Failed")
    assert running == ["w"]
    assert sorted(failed) == ["cx", "fail"]
    assert sorted(completed) == sorted(set(everything) - {"w", "cx", "fail"})
    assert c.list_instances_by_status("ContinuedAsNew") == []
    for listing in (running, completed, failed):  # each filtered list keeps the newest-first order
        assert listing == [i for i in everything if i in listing]
    m = c.get_system_metrics()
    assert (m.total_instances, m.running_instances, m.completed_instances, m.failed_instances) == (10, 1, 7, 2)
    assert m.total_executions == sum(len(c.list_executions(i)) for i in everything) == 12
    assert m.total_events == sum(len(env.history(i, e)) for i in everything for e in c.list_executions(i))
    for status in ("running", "", "Bogus", None, 5):
        with pytest.raises(InvalidInputError):
            c.list_instances_by_status(status)


def test_an_instance_between_executions(env):
    """In the gap after a continue-as-new turn (its next execution not yet started) the client
    status is Running with the carried custom status (SPEC §8); the instance lists under its
    current execution's status, ContinuedAsNew (§14), and its KV is readable."""
    c = env.client

    @env.rt.register_orchestration("Eternal")
    def eternal(ctx, n):
        yield ctx.schedule_timer(SEC)
        ctx.set_custom_status(f"gen {n}")
        ctx.set_kv_value(f"k{n}", str(n))
        yield ctx.continue_as_new(n + 1)

    c.start_orchestration("e", "Eternal", 0)
    env.idle()
    env.into_can_gap()
    st = c.get_status("e")
    assert (st.status, st.custom_status, st.custom_status_version) == ("Running", "gen 0", 1)
    info = c.get_instance_info("e")
    assert (info.current_execution_id, info.status, info.output) == (1, "ContinuedAsNew", "1")
    assert c.list_instances_by_status("ContinuedAsNew") == ["e"]
    assert c.get_kv_all_values("e") == {"k0": "0"}
    assert c.get_queue_depths().orchestrator_queue == 1  # the ContinueAsNew item
    env.idle()
    assert c.get_instance_info("e").current_execution_id == 2
    assert c.list_instances_by_status("Running") == ["e"]


# ---------------------------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------------------------


def _register_tree(env: Env) -> None:
    @env.rt.register_orchestration("TLeaf")
    def tleaf(ctx, _):
        ctx.set_kv_value("leaf", "yes")
        return (yield ctx.wait_for_event("go"))

    @env.rt.register_orchestration("TMid")
    def tmid(ctx, n):
        if n == 0:
            yield ctx.schedule_timer(SEC)
            yield ctx.continue_as_new(1)  # README: a child keeps its parent link across CAN
        return (yield ctx.schedule_sub_orchestration("TLeaf", None))

    @env.rt.register_orchestration("TRoot")
    def troot(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("TMid", "mid", 0))


def test_instance_tree_three_levels_and_deleting_it(env):
    """get_instance_tree from each node lists it and its descendants (peer: tree('mid-1') ==
    ['mid-1', 'mid-1::sub::2'], tree(leaf) == [leaf]); children cannot be deleted, even forced;
    a running tree needs force; deleting the root removes everything, counts exact (§14)."""
    _register_tree(env)
    c = env.client
    c.start_orchestration("r", "TRoot")
    env.run()
    tree = c.get_instance_tree("r")
    assert tree.root_id == "r" and tree.size == 3
    leaf = next(i for i in tree.all_ids if i not in ("r", "mid"))
    assert set(tree.all_ids) == {"r", "mid", leaf}
    assert c.get_instance_info("mid").parent_instance_id == "r"
    assert c.get_instance_info("mid").current_execution_id == 2
    assert c.get_instance_info(leaf).parent_instance_id == "mid"
    mid_tree = c.get_instance_tree("mid")
    assert (mid_tree.root_id, set(mid_tree.all_ids)) == ("mid", {"mid", leaf})
    leaf_tree = c.get_instance_tree(leaf)
    assert (leaf_tree.root_id, list(leaf_tree.all_ids)) == (leaf, [leaf])

    for child in ("mid", leaf):
        for force in (False, True):
            with pytest.raises(CannotDeleteSubOrchestration):
                c.delete_instance(child, force)
    with pytest.raises(InstanceStillRunning):
        c.delete_instance("r")
    assert len(c.list_all_instances()) == 3  # nothing deleted on the way

    c.raise_event(leaf, "go", "done")
    env.run()
    assert c.get_status("r").output == "done"
    executions = sum(len(c.list_executions(i)) for i in tree.all_ids)
    events = sum(len(env.history(i, e)) for i in tree.all_ids for e in c.list_executions(i))
    assert executions == 4
    result = c.delete_instance("r")
    assert (result.instances_deleted, result.executions_deleted, result.events_deleted) == (3, executions, events)
    assert c.list_all_instances() == []
    assert c.get_kv_value(leaf, "leaf") is None
    m = c.get_system_metrics()
    assert (m.total_instances, m.total_executions, m.total_events) == (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Delete
# ---------------------------------------------------------------------------------------------


def test_force_delete_running_instance_cleans_everything_and_id_is_reusable(env):
    """Forced delete of a running instance removes history, queued messages (counted), KV and
    custom status; the id then starts from scratch (SPEC §16 F19)."""
    register_app(env)
    c = env.client
    c.start_orchestration("w", "Waiter")
    env.run()
    c.raise_event("w", "unrelated", 1)
    c.enqueue_event("w", "box", 2)
    assert c.get_orchestration_stats("w").queue_pending_count == 2
    with pytest.raises(InstanceStillRunning):
        c.delete_instance("w")
    res = c.delete_instance("w", force=True)
    assert (res.instances_deleted, res.executions_deleted, res.queue_messages_deleted) == (1, 1, 2)
    assert res.events_deleted == 4  # Started, CustomStatusUpdated, KeyValueSet, ExternalSubscribed
    assert c.get_queue_depths().orchestrator_queue == 0
    assert vars(c.get_status("w"))["status"] == "NotFound"
    assert c.get_kv_all_values("w") == {} and c.list_executions("w") == [] and env.history("w") == []
    with pytest.raises(InstanceNotFound):
        c.get_instance_info("w")
    with pytest.raises(InstanceNotFound):
        c.delete_instance("w", force=True)

    @env.rt.register_orchestration("Fresh")
    def fresh(ctx, _):
        yield ctx.schedule_timer(1)
        return [ctx.get_kv_value("phase"), ctx.get_custom_status()]

    c.start_orchestration("w", "Fresh")
    env.run()
    st = c.get_status("w")
    assert (st.status, st.output, st.custom_status, st.custom_status_version) == ("Completed", [None, None], None, 0)
    assert c.list_executions("w") == [1] and c.get_kv_all_values("w") == {}


@pytest.mark.parametrize("force", ["no", "false", "False", "0", 0.0, [], [False]], ids=repr)
def test_delete_force_flag_must_be_a_bool(env, force):
    """duroxide-python's ``delete_instance(id, force: bool = False)`` refuses anything but a bool
    (peer: ``c.delete_instance('w', 'no')`` -> ``TypeError: argument 'force': 'str' object cannot
    be converted to 'PyBool'``, and the running instance is kept). A truthy string such as
    "no"/"false" must never be read as force=True: that deletes a running instance."""
    register_app(env)
    c = env.client
    c.start_orchestration("w", "Waiter")
    env.run()
    try:
        c.delete_instance("w", force)
    except (InvalidInputError, TypeError) as exc:
        assert "force" in str(exc)
    except InstanceStillRunning:
        pass  # a falsy value read as "not forced" is harmless
    st = c.get_status("w")
    assert st.status == "Running", f"delete_instance('w', {force!r}) deleted a running instance"
    assert c.list_all_instances() == ["w"]


def test_bulk_delete_by_age_limit_ids_running_and_iteration(env):
    """SPEC §14/§16 F23: delete_instance_bulk takes terminal roots only (Completed/Failed),
    filters AND-ed, completed_before strict, limit honoured and iterable, running skipped,
    unknown and repeated ids harmless; counts add up."""
    c = env.client

    @env.rt.register_orchestration("After")
    def after(ctx, secs):
        yield ctx.schedule_timer(secs * SEC)
        if secs == 15:
            raise ValueError("late failure")
        return secs

    @env.rt.register_orchestration("Hold")
    def hold(ctx, _):
        return (yield ctx.wait_for_event("go"))

    t0 = env.clock.now_ms()
    for secs in (10, 15, 20, 30, 40):
        c.start_orchestration(f"a{secs}", "After", secs)
    c.start_orchestration("hold", "Hold")
    env.run()
    assert c.get_status("a15").status == "Failed"
    done = {i: c.get_execution_info(i, 1).completed_at for i in ("a10", "a15", "a20", "a30", "a40")}
    assert done["a20"] == t0 + 20 * SEC

    r = c.delete_instance_bulk(InstanceFilter(completed_before=done["a20"]))  # strict: a20 stays
    assert r.instances_deleted == 2 and r.executions_deleted == 2
    assert sorted(c.list_all_instances()) == ["a20", "a30", "a40", "hold"]

    r = c.delete_instance_bulk(InstanceFilter(instance_ids=["a20", "a20", "ghost", "hold"]))
    assert (r.instances_deleted, r.executions_deleted) == (1, 1)
    assert r.events_deleted == 4  # Started, TimerCreated, TimerFired, Completed
    assert sorted(c.list_all_instances()) == ["a30", "a40", "hold"]

    r = c.delete_instance_bulk(InstanceFilter(instance_ids=["a30", "a40"], completed_before=done["a40"]))
    assert r.instances_deleted == 1 and sorted(c.list_all_instances()) == ["a40", "hold"]

    assert c.delete_instance_bulk(InstanceFilter(limit=0)).instances_deleted == 0
    assert c.delete_instance_bulk(InstanceFilter(limit=1)).instances_deleted == 1
    assert c.delete_instance_bulk(InstanceFilter(limit=1)).instances_deleted == 0  # only 'hold' is left: running
    assert c.list_all_instances() == ["hold"]
    assert c.get_status("hold").status == "Running"


# ---------------------------------------------------------------------------------------------
# Prune
# ---------------------------------------------------------------------------------------------


def test_prune_by_count_and_age_keeps_current_kv_and_status(env):
    """SPEC §14: prune_executions never removes the current execution; keep_last and
    completed_before (strict) combine; events_deleted matches the histories removed; KV and
    custom status are instance-scoped and survive; the instance runs on afterwards."""
    c = env.client

    @env.rt.register_orchestration("Chain")
    def chain(ctx, n):
        ctx.set_kv_value(f"k{n}", str(n))
        ctx.set_custom_status(f"gen {n}")
        yield ctx.schedule_timer(10 * SEC)
        if n < 5:
            yield ctx.continue_as_new(n + 1)
        return (yield ctx.wait_for_event("go"))

    c.start_orchestration("ch", "Chain", 0)
    env.run()
    assert c.list_executions("ch") == [1, 2, 3, 4, 5, 6]
    sizes = {e: c.get_execution_info("ch", e).event_count for e in range(1, 7)}

    r = c.prune_executions("ch", PruneOptions(keep_last=3))
    assert (r.instances_processed, r.executions_deleted, r.events_deleted) == (1, 3, sizes[1] + sizes[2] + sizes[3])
    assert c.list_executions("ch") == [4, 5, 6]
    assert env.history("ch", 2) == []
    with pytest.raises(InstanceNotFound):
        c.get_execution_info("ch", 2)

    cut = c.get_execution_info("ch", 5).completed_at
    r = c.prune_executions("ch", PruneOptions(completed_before=cut))  # strict: 5 stays
    assert (r.executions_deleted, r.events_deleted) == (1, sizes[4])
    assert c.list_executions("ch") == [5, 6]

    r = c.prune_executions("ch", PruneOptions(keep_last=5, completed_before=cut + 1))  # AND-ed: keep_last wins
    assert r.executions_deleted == 0
    r = c.prune_executions("ch")  # no options: everything but the current execution
    assert (r.executions_deleted, r.events_deleted) == (1, sizes[5])
    assert c.list_executions("ch") == [6]
    assert c.prune_executions("ch", PruneOptions(keep_last=0)).executions_deleted == 0

    assert c.get_kv_all_values("ch") == {f"k{n}": str(n) for n in range(6)}
    st = c.get_status("ch")
    assert (st.status, st.custom_status, st.custom_status_version) == ("Running", "gen 5", 6)
    m = c.get_system_metrics()
    assert (m.total_executions, m.total_events) == (1, sizes[6])
    info = c.get_instance_info("ch")
    assert (info.current_execution_id, info.status) == (6, "Running")
    c.raise_event("ch", "go", "finished")
    env.run()
    assert c.get_status("ch").output == "finished"
    assert c.list_executions("ch") == [6]


def test_prune_bulk_covers_running_and_finished_instances(env):
    """prune_executions_bulk(filter, options) prunes instances of any status (SPEC §14);
    instances_processed counts those the filter selects."""
    c = env.client

    @env.rt.register_orchestration("Loop")
    def loop(ctx, n):
        yield ctx.schedule_timer(SEC)
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        if ctx.instance_id == "running":
            return (yield ctx.wait_for_event("go"))
        return n

    c.start_orchestration("running", "Loop", 0)
    c.start_orchestration("finished", "Loop", 0)
    c.start_orchestration("single", "Loop", 3)
    env.run()
    r = c.prune_executions_bulk(InstanceFilter(instance_ids=["running", "ghost"]), PruneOptions(keep_last=2))
    assert (r.instances_processed, r.executions_deleted) == (1, 2)
    assert c.list_executions("running") == [3, 4]
    r = c.prune_executions_bulk(None, PruneOptions(keep_last=1))
    assert (r.instances_processed, r.executions_deleted) == (3, 4)
    for inst in ("running", "finished", "single"):
        assert c.list_executions(inst) == [4 if inst != "single" else 1]
    assert c.get_status("running").status == "Running" and c.get_status("finished").output == 3


# ---------------------------------------------------------------------------------------------
# Runtime metrics after a known workload
# ---------------------------------------------------------------------------------------------


def test_metrics_snapshot_counts_a_known_workload(env):
    """metrics_snapshot() after a workload whose outcome is known, counter by counter (SPEC
    §14 names). Starts count every execution started (instances + continue-as-new executions,
    as the reference's `initiated_by=continueAsNew` starts); completions count every execution
    that ended - completed, failed, cancelled or continued as new - as the peer counts them
    (checked against duroxide 0.2.2 from PyPI), failures the failed ones; activity counters
    count executions (a retried activity counts each attempt)."""
    register_app(env)
    start_workload(env)
    m = env.rt.metrics_snapshot()
    # ok, fail, catch, retry, counter x3, root + mid + leaf, w, cx
    assert m.orch_starts == 12
    # ok, catch, retry, counter x3 (two continued as new), root, mid, leaf; fail, cx
    assert m.orch_completions == 11
    assert (m.orch_failures, m.orch_application_errors) == (2, 2)  # fail, cx (cancelled)
    assert (m.orch_infrastructure_errors, m.orch_configuration_errors, m.orch_poison) == (0, 0, 0)
    assert m.orch_continue_as_new == 2
    assert m.suborchestration_calls == 2
    # Echo: ok, counter x3, leaf; Flaky's third attempt
    assert m.activity_success == 6
    # Boom: fail, catch; Flaky: two failed attempts
    assert m.activity_app_errors == 4
    assert (m.activity_infra_errors, m.activity_config_errors, m.activity_poison, m.provider_errors) == (0, 0, 0, 0)
    assert m.worker_dispatcher_items_fetched == 10
    assert m.orch_dispatcher_items_fetched >= 12
    assert m["orch_completions"] == m.orch_completions and set(dict(m)) >= {
        "orch_starts", "orch_completions", "orch_failures", "activity_success", "activity_app_errors"}
    sysm = env.client.get_system_metrics()
    assert (sysm.completed_instances, sysm.failed_instances, sysm.running_instances) == (7, 2, 1)


def test_metrics_snapshot_counts_poison(make_env):
    """An unregistered orchestration and an unregistered activity end in Poison (SPEC §10.2)
    and are counted as such."""
    env = make_env(RuntimeOptions(max_attempts=2, unregistered_backoff_base_ms=1, unregistered_backoff_max_ms=2))

    @env.rt.register_orchestration("UsesMissing")
    def uses_missing(ctx, _):
        return (yield ctx.schedule_activity("Missing", None))

    env.client.start_orchestration("u", "UsesMissing")
    env.client.start_orchestration("nobody", "NotRegistered")
    env.run()
    assert env.client.get_status("u").error == "poison: activity Missing#2 exceeded 3 attempts (max 2)"
    assert env.client.get_status("nobody").error == "poison: orchestration nobody exceeded 3 attempts (max 2)"
    m = env.rt.metrics_snapshot()
    assert (m.orch_failures, m.orch_poison, m.activity_poison) == (2, 2, 1)
    assert (m.orch_completions, m.orch_application_errors, m.activity_success) == (0, 0, 0)
    assert env.client.get_instance_info("nobody").status == "Failed"


# ---------------------------------------------------------------------------------------------
# Queue depths and orchestration stats
# ---------------------------------------------------------------------------------------------


def test_queue_depths_count_unlocked_rows(make_env):
    """get_queue_depths counts rows not under a live lock (SPEC §14), delayed timers included,
    timer_queue always 0; the same state gives the same numbers on every provider."""
    env = make_env(RuntimeOptions(worker_concurrency=0))
    c, p = env.client, env.provider

    @env.rt.register_orchestration("A")
    def a(ctx, _):
        return (yield ctx.schedule_activity("Echo", 1))

    @env.rt.register_orchestration("T")
    def t(ctx, _):
        yield ctx.schedule_timer(3_600 * SEC)

    c.start_orchestration("a1", "A")
    c.start_orchestration("a2", "A")
    c.start_orchestration("t", "T")
    d = c.get_queue_depths()
    assert (d.orchestrator_queue, d.worker_queue, d.timer_queue) == (3, 0, 0)
    item = p.fetch_orchestration_item(30 * SEC, 0, None)
    assert item is not None
    assert c.get_queue_depths().orchestrator_queue == 2  # the locked one is not counted
    p.abandon_orchestration_item(item.lock_token, None, True)
    assert c.get_queue_depths().orchestrator_queue == 3
    env.idle()
    d = c.get_queue_depths()
    assert (d.orchestrator_queue, d.worker_queue, d.timer_queue) == (1, 2, 0)  # the hour timer; two activities
    lease = p.fetch_work_item(30 * SEC, 0)
    assert lease is not None
    assert c.get_queue_depths().worker_queue == 1
    env.clock.advance(31 * SEC)  # the lease expires: counted again
    assert c.get_queue_depths().worker_queue == 2
    assert c.get_orchestration_stats("t").queue_pending_count == 1


def test_orchestration_stats_across_continue_as_new(env):
    """get_orchestration_stats: the peer's fields (history_event_count of the current execution,
    kv_user_key_count over the instance's KV, ...) after a continue-as-new chain (peer, the same
    Counter workload to 3: history_event_count 6, kv_user_key_count 4, kv_total_value_bytes 4)."""
    register_app(env)
    c = env.client
    c.start_orchestration("counter", "Counter", 0)
    env.run()
    s = c.get_orchestration_stats("counter")
    assert s.history_event_count == len(env.history("counter", 3)) == 6
    assert (s.kv_user_key_count, s.kv_total_value_bytes, s.queue_pending_count) == (3, 3, 0)
    assert s.history_size_bytes > 0
    assert (s.status, s.executions, s.custom_status_version) == ("Completed", 3, 3)


# ---------------------------------------------------------------------------------------------
# Custom status versions and waits; KV from the client side
# ---------------------------------------------------------------------------------------------


def test_custom_status_versions_and_waits_across_continue_as_new(env):
    """SPEC §13: the version rises once per turn that sets a status and carries across
    continue-as-new; wait_for_status_change returns each new version in turn, returns at once
    for a terminal instance, and waits for the end when last_seen_version is ahead."""
    c = env.client

    @env.rt.register_orchestration("Steps")
    def steps(ctx, n):
        ctx.set_custom_status(f"step {n}")
        yield ctx.schedule_timer(60 * SEC)
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        return "done"

    c.start_orchestration("s", "Steps", 0)
    seen, version = [], 0
    while True:
        st = c.wait_for_status_change("s", version, 10, 10**9)
        if st.is_terminal:
            break
        seen.append((st.status, st.custom_status, st.custom_status_version))
        version = st.custom_status_version
    assert seen == [("Running", f"step {n}", n + 1) for n in range(4)]
    assert (st.status, st.output, st.custom_status, st.custom_status_version) == ("Completed", "done", "step 3", 4)
    t = env.clock.now_ms()
    again = c.wait_for_status_change("s", 100, 10, 0)  # terminal: at once, whatever was seen
    assert (again.status, again.custom_status_version) == ("Completed", 4) and env.clock.now_ms() == t

    c.start_orchestration("s2", "Steps", 2)
    st = c.wait_for_status_change("s2", 100, 10, 10**9)  # ahead of any version: only the end returns
    assert (st.status, st.custom_status_version) == ("Completed", 2)
    with pytest.raises(OperationTimeout) as info:
        c.wait_for_status_change("nobody", 0, 10, 500)  # peer: RuntimeError "Operation timed out"
    assert isinstance(info.value, RuntimeError)


def test_client_kv_reads_across_continue_as_new_prune_and_completion(env):
    """SPEC §13: client reads are the store overlaid by the running execution's delta
    (tombstones hide keys); KV carries across continue-as-new, survives prune, and stays
    readable after completion; wait_for_kv_value sees a key set in a later execution."""
    c = env.client

    @env.rt.register_orchestration("Kv")
    def kv(ctx, n):
        if n == 0:
            ctx.set_kv_value("a", "1")
            ctx.set_kv_value("b", "2")
            yield ctx.schedule_timer(SEC)
            yield ctx.continue_as_new(1)
        ctx.clear_kv_value("a")
        ctx.set_kv_value("c", "3")
        got = yield ctx.wait_for_event("go")
        ctx.set_kv_value("d", got)
        return sorted(ctx.get_kv_all_keys())

    c.start_orchestration("kv", "Kv", 0)
    env.run()
    assert c.list_executions("kv") == [1, 2]
    assert c.get_kv_all_values("kv") == {"b": "2", "c": "3"}
    assert c.get_kv_value("kv", "a") is None and c.get_kv_value("kv", "b") == "2"
    assert c.prune_executions("kv").executions_deleted == 1
    assert c.get_kv_all_values("kv") == {"b": "2", "c": "3"}
    c.raise_event("kv", "go", "4")
    assert c.wait_for_kv_value("kv", "d", 10**9) == "4"
    assert c.wait_for_orchestration("kv", 10**9).output == ["b", "c", "d"]
    assert c.get_kv_all_values("kv") == {"b": "2", "c": "3", "d": "4"}
    assert c.get_kv_value_typed("kv", "d", int) == 4
    assert c.get_orchestration_stats("kv").kv_user_key_count == 3


# ---------------------------------------------------------------------------------------------
# Unusual but valid instance ids, end to end
# ---------------------------------------------------------------------------------------------

ODD_IDS = [
    "line\nbreak", "tab\tid", "ünï©ødé-🚀", "quote'\"`;--", "100%_off", "back\\slash", "sp ace ",
    "sp ace", "CaseX", "casex", unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"),
]


def test_unusual_ids_live_and_die_independently(env):
    """Ids with newlines, quotes, LIKE wildcards, trailing spaces, case and Unicode
    normalization variants are distinct instances through every management call; deleting one
    leaves its look-alikes (and their children and KV) untouched."""
    c = env.client
    assert len(set(ODD_IDS)) == len(ODD_IDS)

    @env.rt.register_orchestration("Kid")
    def kid(ctx, x):
        yield ctx.schedule_timer(1)
        return x

    @env.rt.register_orchestration("Odd")
    def odd(ctx, x):
        ctx.set_kv_value("me", ctx.instance_id)
        ctx.set_custom_status(ctx.instance_id)
        return (yield ctx.schedule_sub_orchestration("Kid", x))

    for i, inst in enumerate(ODD_IDS):
        c.start_orchestration(inst, "Odd", i)
    env.run()
    everything = set(c.list_all_instances())
    assert len(everything) == 2 * len(ODD_IDS)
    child = {}
    for i, inst in enumerate(ODD_IDS):
        st = c.get_status(inst)
        assert (st.status, st.output, st.custom_status) == ("Completed", i, inst), repr(inst)
        assert c.get_kv_value(inst, "me") == inst
        assert c.get_instance_info(inst).instance_id == inst
        tree = c.get_instance_tree(inst)
        assert tree.size == 2 and tree.root_id == inst, repr(inst)
        child[inst] = next(x for x in tree.all_ids if x != inst)
        assert child[inst].startswith(f"{inst}::sub::"), repr(child[inst])
        assert c.get_instance_info(child[inst]).parent_instance_id == inst
    assert len(set(child.values())) == len(ODD_IDS)
    for victim in ("sp ace", "casex", unicodedata.normalize("NFD", "café"), "100%_off"):
        res = c.delete_instance(victim)
        assert res.instances_deleted == 2, repr(victim)
    survivors = [i for i in ODD_IDS if i not in ("sp ace", "casex", unicodedata.normalize("NFD", "café"), "100%_off")]
    assert set(c.list_all_instances()) == {x for i in survivors for x in (i, child[i])}
    for inst in survivors:
        assert c.get_kv_value(inst, "me") == inst and c.get_status(inst).status == "Completed", repr(inst)


# ---------------------------------------------------------------------------------------------
# Hostile arguments
# ---------------------------------------------------------------------------------------------


def _id_calls(c: Client) -> dict:
    return {
        "get_status": lambda i: c.get_status(i),
        "get_instance_info": lambda i: c.get_instance_info(i),
        "get_execution_info": lambda i: c.get_execution_info(i, 1),
        "list_executions": lambda i: c.list_executions(i),
        "read_execution_history": lambda i: c.read_execution_history(i, 1),
        "get_instance_tree": lambda i: c.get_instance_tree(i),
        "delete_instance": lambda i: c.delete_instance(i, True),
        "prune_executions": lambda i: c.prune_executions(i),
        "get_kv_value": lambda i: c.get_kv_value(i, "k"),
        "get_kv_all_values": lambda i: c.get_kv_all_values(i),
        "get_orchestration_stats": lambda i: c.get_orchestration_stats(i),
        "wait_for_orchestration": lambda i: c.wait_for_orchestration(i, 10),
        "wait_for_status_change": lambda i: c.wait_for_status_change(i, 0, 10, 10),
        "wait_for_kv_value": lambda i: c.wait_for_kv_value(i, "k", 10),
    }


BAD_IDS = [None, 5, 1.5, b"ok", ["ok"], "", "a\x00b", "\udc00", "x" * 20_000]


@pytest.mark.parametrize("bad", BAD_IDS, ids=["None", "int", "float", "bytes", "list", "empty", "nul",
                                              "surrogate", "too-long"])
def test_every_id_taking_call_refuses_ids_no_store_can_hold(env, bad):
    """A wrong-typed, empty, NUL, lone-surrogate or over-long id is an InvalidInputError naming
    instance_id (peer: TypeError "argument 'instance_id': ..." for the wrong types), from every
    call, and nothing in the store changes."""
    register_app(env)
    env.client.start_orchestration("ok", "Ok", 1)
    env.run()
    for _name, call in _id_calls(env.client).items():
        with pytest.raises(InvalidInputError, match="instance_id"):
            call(bad)
    assert env.client.list_all_instances() == ["ok"] and env.client.get_status("ok").output == 1


@pytest.mark.parametrize("unknown", ["ghost", "a\nb", "ünï©ødé", " ", "ok ", "OK", "%", "_"])
def test_unknown_but_valid_ids_give_documented_answers(env, unknown):
    """For a valid id that names nothing, every call answers as SPEC/README/the peer do:
    NotFound / [] / None / {} / a tree of that id alone, InstanceNotFound (a RuntimeError) from
    info, execution info, delete and prune; waits time out; nothing else is touched."""
    register_app(env)
    c = env.client
    c.start_orchestration("ok", "Ok", 1)
    env.run()
    assert c.get_status(unknown).status == "NotFound"
    assert c.list_executions(unknown) == []
    assert c.read_execution_history(unknown, 1) == []
    tree = c.get_instance_tree(unknown)
    assert (tree.root_id, list(tree.all_ids), tree.size) == (unknown, [unknown], 1)
    assert c.get_kv_value(unknown, "k") is None and c.get_kv_all_values(unknown) == {}
    assert c.get_orchestration_stats(unknown) is None  # (duroxide-python: None)
    for call in (lambda: c.get_instance_info(unknown), lambda: c.get_execution_info(unknown, 1),
                 lambda: c.delete_instance(unknown), lambda: c.delete_instance(unknown, True),
                 lambda: c.prune_executions(unknown, PruneOptions(keep_last=1))):
        with pytest.raises(InstanceNotFound) as info:
            call()
        assert isinstance(info.value, RuntimeError)
    for call in (lambda: c.wait_for_orchestration(unknown, 50), lambda: c.wait_for_status_change(unknown, 0, 10, 50),
                 lambda: c.wait_for_kv_value(unknown, "k", 50)):
        with pytest.raises(TimeoutError):
            call()
    assert c.list_all_instances() == ["ok"] and c.get_status("ok").output == 1


HUGE = [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**70]


@pytest.mark.parametrize("huge", HUGE, ids=lambda v: f"2^{v.bit_length() - 1}" if v & (v - 1) == 0 else str(v))
def test_huge_execution_ids_read_as_missing(env, huge):
    """An execution id past any real one is a missing execution, the same on every provider:
    an empty history and InstanceNotFound from get_execution_info (InMemoryProvider and
    PostgresProvider answer so for every size; the peer for ids below 2**63: 'get_execution_info:
    Execution 1099511627776 not found for instance ok'), or at most an InvalidInputError naming
    execution_id at the call (the peer refuses ids >= 2**63 at its argument boundary, with
    OverflowError, for every provider) - not an OverflowError raised from inside the SQLite
    driver after the client accepted the id (Client._check_execution_id takes any positive int)."""
    register_app(env)
    c = env.client
    c.start_orchestration("ok", "Ok", 1)
    env.run()
    try:
        assert c.read_execution_history("ok", huge) == []
    except InvalidInputError as exc:
        assert "execution_id" in str(exc)
    try:
        c.get_execution_info("ok", huge)
    except InstanceNotFound:
        pass
    except InvalidInputError as exc:
        assert "execution_id" in str(exc)
    else:
        pytest.fail("get_execution_info of a missing execution returned something")
    assert [e.kind for e in c.read_execution_history("ok", 1)][-1] == "OrchestrationCompleted"


@pytest.mark.parametrize("huge", [2**63, 2**64, 2**70], ids=["2^63", "2^64", "2^70"])
@pytest.mark.parametrize("field", ["limit", "completed_before"])
def test_huge_filter_numbers_behave_like_no_bound(env, field, huge):
    """InstanceFilter accepts any non-negative int for limit / completed_before (its own
    validator). A bound beyond every real count or time then means "no bound", as on
    InMemoryProvider - or the value is refused up front with an InvalidInputError naming the
    field. Never an OverflowError from the SQLite driver or a PostgreSQL 'bigint out of range'
    ProviderError that names neither the call's argument nor what to do."""
    register_app(env)
    c = env.client
    for inst in ("x1", "x2", "x3"):
        c.start_orchestration(inst, "Ok", 1)
    c.start_orchestration("w", "Waiter")
    env.run()
    try:
        flt = InstanceFilter(**{field: huge})
    except InvalidInputError as exc:
        assert field in str(exc)
        return
    problems = {}
    for label, call, check in (
        ("prune_executions_bulk", lambda: c.prune_executions_bulk(flt, PruneOptions(keep_last=1)),
         # every instance; by completion time: the three finished ones (the running one has none)
         lambda r: r.instances_processed == (4 if field == "limit" else 3)),
        ("delete_instance_bulk", lambda: c.delete_instance_bulk(flt), lambda r: r.instances_deleted == 3),
    ):
        try:
            result = call()
        except InvalidInputError as exc:
            if field not in str(exc):
                problems[label] = f"InvalidInputError not naming {field}: {exc}"
            continue
        except Exception as exc:  # noqa: BLE001 - the finding
            problems[label] = f"{type(exc).__name__}: {exc}"
            continue
        if not check(result):
            problems[label] = repr(result)
    assert problems == {}, f"InstanceFilter({field}={huge}): {problems}"
    assert "w" in c.list_all_instances()


@pytest.mark.parametrize("bad", ["a\x00b", "\udc00"], ids=["nul", "surrogate"])
def test_bulk_filter_ids_are_checked_like_every_other_id(env, bad):
    """Every single-id call refuses NUL and lone-surrogate ids with InvalidInputError (README:
    instance ids have no NUL and are valid Unicode). An InstanceFilter naming such an id must
    behave the same on every provider: refused with InvalidInputError naming instance_ids, or
    the id ignored (it cannot name an instance; what InMemoryProvider does) - not a
    UnicodeEncodeError from inside the SQLite driver, nor a PostgreSQL ProviderError that fails
    the whole bulk call on one provider only. (The peer: a lone surrogate fails PyO3's string
    conversion with UnicodeEncodeError at the call, for every provider.)"""
    register_app(env)
    c = env.client
    c.start_orchestration("a", "Ok", 1)
    c.start_orchestration("b", "Ok", 2)
    env.run()
    problems = {}
    try:
        flt = InstanceFilter(instance_ids=[bad, "a"])
    except InvalidInputError as exc:
        assert "instance_ids" in str(exc)
        return
    for label, call, check in (
        ("prune_executions_bulk", lambda: c.prune_executions_bulk(flt), lambda r: r.instances_processed == 1),
        ("delete_instance_bulk", lambda: c.delete_instance_bulk(flt), lambda r: r.instances_deleted == 1),
    ):
        try:
            result = call()
        except InvalidInputError as exc:
            if "instance_ids" not in str(exc):
                problems[label] = f"InvalidInputError not naming instance_ids: {exc}"
            continue
        except Exception as exc:  # noqa: BLE001 - the finding
            problems[label] = f"{type(exc).__name__}: {exc}"
            continue
        if not check(result):
            problems[label] = repr(result)
    assert problems == {}, f"InstanceFilter(instance_ids=[{bad!r}, 'a']): {problems}"
    assert "b" in c.list_all_instances()


def test_management_calls_without_admin_capability(env):
    """A provider without the admin capability: has_management_capability() is False and the
    management calls raise ManagementNotAvailable (SPEC §14); status and KV reads still work."""

    class NoAdmin:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            if name in ("list_instances", "read_status"):
                raise AttributeError(name)
            return getattr(self._inner, name)

    register_app(env)
    env.client.start_orchestration("ok", "Ok", 1)
    env.run()
    c = Client(NoAdmin(env.provider), clock=env.clock, sleep=env.driver.sleep)
    assert c.has_management_capability() is False
    assert c.get_status("ok").output == 1
    assert c.get_kv_all_values("ok") == {}
    for call in (c.list_all_instances, c.get_system_metrics, c.get_queue_depths, lambda: c.list_instances_by_status("Running"),
                 lambda: c.get_instance_info("ok"), lambda: c.list_executions("ok"), lambda: c.get_instance_tree("ok"),
                 lambda: c.delete_instance("ok"), lambda: c.delete_instance_bulk(), lambda: c.prune_executions("ok"),
                 lambda: c.prune_executions_bulk()):
        with pytest.raises(ManagementNotAvailable):
            call()
    assert env.client.list_all_instances() == ["ok"]


def test_recreated_instance_lists_as_newest_and_detached_starts_are_not_in_the_tree(env):
    """An id deleted and started again is the newest instance (list_all_instances is newest
    first, SPEC §14) with a new created_at; a detached start has no parent link (SPEC §7), so it
    is its own root: not in its starter's tree, and not deleted with it."""
    c = env.client

    @env.rt.register_orchestration("Quick")
    def quick(ctx, _):
        yield ctx.schedule_timer(1)
        return ctx.instance_id

    @env.rt.register_orchestration("Starter")
    def starter(ctx, _):
        yield ctx.start_orchestration("Quick", "detached-1", None)
        return "started"

    for inst in ("a", "b", "c"):
        c.start_orchestration(inst, "Quick")
        env.run()
        env.clock.advance(SEC)
    assert c.list_all_instances() == ["c", "b", "a"]
    first_created = c.get_instance_info("a").created_at
    c.delete_instance("a")
    c.start_orchestration("a", "Quick")
    env.run()
    assert c.list_all_instances() == ["a", "c", "b"]
    assert c.get_instance_info("a").created_at > first_created

    c.start_orchestration("st", "Starter")
    env.run()
    assert c.get_status("detached-1").output == "detached-1"
    assert c.get_instance_info("detached-1").parent_instance_id is None
    assert list(c.get_instance_tree("st").all_ids) == ["st"]
    assert c.delete_instance("st").instances_deleted == 1
    assert c.get_status("detached-1").status == "Completed"
