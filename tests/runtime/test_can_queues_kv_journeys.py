"""User journeys: continue-as-new (SPEC §8), event queues and carry-forward (§6.2), positional
events across continue-as-new (§6.1), custom status and the per-instance KV store (§13, §10.3).

Written as a demanding user's probe, on InMemoryProvider and SqliteProvider (stepped on a
simulated clock, and in production on real threads) and under the fault-injecting simulator.
Where SPEC is silent or ambiguous the expected values are what duroxide 0.2.2 (the Rust core with
its Python SDK, ``bench/.peer``) was observed to do with the same workflow; such tests say
"peer-observed" and quote it.

Defects found by this file, all fixed (each of these tests failed before the fix): a duplicate start that arrives while the continue-as-new turn
holds the lock displaces the ContinueAsNew item and strands the instance in ContinuedAsNew for
good (sequential and production, both providers); a custom status over the limit followed by a
reset in the same turn passes; ``get_kv_value_from_instance`` with a non-string or lone-surrogate
instance id returns None or crashes the worker step; ``prune_kv_values_updated_before`` takes a
non-integer cutoff without a TypeError; a ``StrEnum`` status/KV key comes back as the caller's
object on the memory provider; the client's KV reads pass a lone-surrogate key to the provider
(None on memory, UnicodeEncodeError on SQLite); the simulator's liveness checker passes a run
whose instance waits forever for an event dropped by the execution before a continue-as-new.

Noted while probing, judged correct or deliberate (not asserted as defects here):
* duroxide 0.2.2 carries up to 100 queue messages across continue-as-new (one warning per dropped
  message); SPEC §6.2 (from 0.1.26) says 20 and this project follows SPEC.
* the peer accepts ``dequeue_event("")`` and KV key ``""``; this project refuses empty names at
  the call (README documents the KV-key rule).
* a non-string custom status / KV value is stored as JSON here, ``str(value)`` in the peer
  (documented deviation).
"""

from __future__ import annotations

import enum
import json
import logging
import threading

import pytest

from duroxide_sim import (
    Client,
    InMemoryProvider,
    InvalidInputError,
    OperationTimeout,
    Runtime,
    RuntimeOptions,
    SerializationError,
    SqliteProvider,
)
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start

PROVIDERS = ("mem", "sqlite")
HERE = __file__


class W:
    """A runtime + client on a simulated clock over one provider (memory or SQLite)."""

    def __init__(self, kind: str) -> None:
        self.clock = SimClock()
        self.provider = InMemoryProvider(self.clock) if kind == "mem" else SqliteProvider.in_memory(clock=self.clock)
        self.rt = Runtime(self.provider, RuntimeOptions(), clock=self.clock, ids=SequentialIds())
        self.driver = SequentialDriver(self.rt, self.clock)
        self.client = Client(self.provider, clock=self.clock, sleep=self.driver.sleep)

    def run(self, limit_ms: int | None = None) -> None:
        self.driver.run_until_quiet(limit_ms)

    def result(self, instance: str):
        return self.client.wait_for_orchestration(instance, 10**12)

    def hist(self, instance: str, execution_id: int = 1) -> list[tuple[str, object]]:
        return [(e["kind"], json.loads(e["data"]) if e["data"] else None)
                for e in self.client.read_execution_history(instance, execution_id)]


@pytest.fixture(params=PROVIDERS)
def w(request):
    world = W(request.param)
    yield world
    if request.param == "sqlite":
        world.provider.close()


def _last_line(error: str | None) -> str:
    return (error or "").strip().splitlines()[-1] if error else ""


# =================================================================================================
# Continue-as-new and the event queue (SPEC §6.2, §8)
# =================================================================================================


def test_carry_forward_accumulates_over_two_continue_as_new_then_caps_at_twenty(w, caplog):
    """A user's actor continues-as-new twice without consuming its queue: 15 messages arrive in
    execution 1, 10 more in execution 2. SPEC §6.2: the unconsumed messages are carried in global
    order, at most 20; execution 3 gets messages 0..19, the 5 newest are dropped with a WARNING
    that says how many."""

    @w.rt.register_orchestration("Actor")
    def actor(ctx, n):
        if n < 2:
            yield ctx.wait_for_event(f"go{n}")
            yield ctx.continue_as_new(n + 1)
        got = []
        while True:
            r = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(10))
            if r["index"] == 1:
                return got
            got.append(r["value"])

    w.client.start_orchestration("a", "Actor", 0)
    w.run(5)
    for i in range(15):
        w.client.enqueue_event("a", "q", i)
    w.run(5)
    w.client.raise_event("a", "go0", 1)
    w.run(5)
    for i in range(15, 25):
        w.client.enqueue_event("a", "q", i)
    w.run(5)
    with caplog.at_level(logging.WARNING):
        w.client.raise_event("a", "go1", 1)
        st = w.result("a")
    assert (st.status, st.output) == ("Completed", list(range(20)))
    started3 = w.hist("a", 3)[0][1]
    assert started3["carry_forward_events"] == [["q", str(i)] for i in range(20)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "carry-forward" in r.getMessage()]
    assert len(warnings) == 1 and "5 queued message(s)" in warnings[0]


def test_race_losing_dequeues_consume_nothing_and_are_carried(w):
    """peer-observed (duroxide 0.2.2): ``race(dequeue q, dequeue q)`` takes q1, the losing
    subscription consumes nothing; ``race(dequeue a, dequeue b)`` with b1, a1, b2 arriving takes
    b1. After continue-as-new the next execution gets q2, q3, a1, b2 (global history order), the
    peer's exact output and carry-forward list."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            r1 = yield ctx.race(ctx.dequeue_event("q"), ctx.dequeue_event("q"))
            r2 = yield ctx.race(ctx.dequeue_event("a"), ctx.dequeue_event("b"))
            yield ctx.wait_for_event("go")
            yield ctx.continue_as_new([r1, r2])
        rest = []
        for q in ["q", "q", "a", "b"]:
            r = yield ctx.race(ctx.dequeue_event(q), ctx.schedule_timer(200))
            rest.append([q, r["index"], r["value"]])
        return {"prev": n, "rest": rest}

    w.client.start_orchestration("i", "O", 0)
    w.run()
    for v in ["q1", "q2", "q3"]:
        w.client.enqueue_event("i", "q", v)
    w.run()
    for q, v in [("b", "b1"), ("a", "a1"), ("b", "b2")]:
        w.client.enqueue_event("i", q, v)
    w.run()
    w.client.raise_event("i", "go", 1)
    st = w.result("i")
    assert st.output == {"prev": [{"index": 0, "value": "q1"}, {"index": 1, "value": "b1"}],
                         "rest": [["q", 0, "q2"], ["q", 0, "q3"], ["a", 0, "a1"], ["b", 0, "b2"]]}
    assert w.hist("i", 2)[0][1]["carry_forward_events"] == [["q", '"q2"'], ["q", '"q3"'], ["a", '"a1"'], ["b", '"b2"']]


def test_queue_and_positional_event_names_do_not_mix_across_can(w):
    """peer-observed: a ``raise_event('x')`` does not feed ``dequeue_event('x')`` and an
    ``enqueue_event('y')`` does not feed ``wait_for_event('y')``; the queued 'y' (never dequeued in
    execution 1) is carried and resolves ``dequeue_event('y')`` in execution 2."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        r1 = yield ctx.race(ctx.dequeue_event("x"), ctx.schedule_timer(300))
        r2 = yield ctx.race(ctx.wait_for_event("y"), ctx.schedule_timer(300))
        if n == 0:
            yield ctx.continue_as_new(1)
        r3 = yield ctx.race(ctx.dequeue_event("y"), ctx.schedule_timer(300))
        return [r1, r2, r3]

    w.client.start_orchestration("i", "O", 0)
    w.run(10)
    w.client.raise_event("i", "x", "raised-x")
    w.client.enqueue_event("i", "y", "queued-y")
    st = w.result("i")
    assert st.output == [{"index": 1, "value": None}, {"index": 1, "value": None}, {"index": 0, "value": "queued-y"}]


def test_duplicate_start_sent_while_the_can_turn_runs_does_not_kill_the_instance(w):
    """A client re-sends ``start_orchestration`` for a long-running actor (an "ensure started"
    retry) while the actor's continue-as-new turn holds the instance lock; a queue message is sent
    at the same moment. peer-observed (duroxide 0.2.2 logs "Ignoring duplicate StartOrchestration
    for an existing instance"): execution 2 starts with the carried message then the new one and
    completes ``[1, 2, {'index': 0, 'value': 'carried'}]``. Expected the same here: the duplicate
    start must not displace the ContinueAsNew item of the batch (SPEC §3.2: the start is ignored
    for an instance with history)."""

    @w.rt.register_orchestration("Actor")
    def actor(ctx, n):
        if n == 0:
            yield ctx.wait_for_event("go")
            yield ctx.continue_as_new(1)
        r = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(10))
        return [n, ctx.execution_id, r]

    w.client.start_orchestration("i", "Actor", 0)
    w.run()
    w.client.enqueue_event("i", "q", "carried")
    w.run()
    w.client.raise_event("i", "go", 1)
    item = w.rt.orchestration_dispatcher.fetch()  # the continue-as-new turn takes the lock ...
    w.client.start_orchestration("i", "Actor", 50)  # ... a duplicate start arrives meanwhile
    w.client.enqueue_event("i", "q", "during-lock")
    w.rt.orchestration_dispatcher.process(item)
    w.run()
    st = w.client.get_status("i")
    assert w.client.list_executions("i") == [1, 2], (st.status, w.client.get_instance_info("i").status)
    assert (st.status, st.output) == ("Completed", [1, 2, {"index": 0, "value": "carried"}])
    assert [d for k, d in w.hist("i", 2) if k == "QueueEventDelivered"] == [
        {"name": "q", "data": "carried"}, {"name": "q", "data": "during-lock"}]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_production_duplicate_start_during_can_turn_does_not_strand_the_actor(kind, tmp_path):
    """Production (threads): the same journey as above on a live Runtime - the continue-as-new
    turn is held open by the orchestration code while the client re-sends the start. The
    instance must go on to execution 2 and complete (peer-observed), not stay in ContinuedAsNew
    with status Running forever."""
    provider = SqliteProvider.open(str(tmp_path / "d.db")) if kind == "sqlite" else InMemoryProvider()
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    client = Client(provider)
    entered, release = threading.Event(), threading.Event()

    @rt.register_orchestration("Actor")
    def actor(ctx, n):
        if n == 0:
            ctx.set_kv_value("ready", "yes")
            yield ctx.wait_for_event("go")
            if not ctx.is_replaying():
                entered.set()
                release.wait(5)
            yield ctx.continue_as_new(1)
        r = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(50))
        return [ctx.execution_id, r]

    rt.start()
    try:
        client.start_orchestration("i", "Actor", 0)
        assert client.wait_for_kv_value("i", "ready", 3_000) == "yes"  # execution 1 waits for "go"
        client.enqueue_event("i", "q", "carried")
        client.raise_event("i", "go", 1)
        assert entered.wait(5)
        client.start_orchestration("i", "Actor", 99)
        release.set()
        try:
            st = client.wait_for_orchestration("i", 1_000)
        except OperationTimeout:
            pytest.fail(f"stranded: executions {client.list_executions('i')}, "
                        f"instance status {client.get_instance_info('i').status}")
        assert (st.status, st.output) == ("Completed", [2, {"index": 0, "value": "carried"}])
    finally:
        release.set()
        rt.shutdown(2_000)
        if kind == "sqlite":
            provider.close()


def test_large_payloads_and_hostile_queue_name_survive_carry_forward(w):
    """Twenty 200 KB messages on a queue whose name holds quotes, SQL, an emoji, a newline and a
    tab are carried across continue-as-new intact and in order on both providers."""
    name = "q'\"; DROP TABLE x;--🚀\n\t"

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            yield ctx.wait_for_event("go")
            yield ctx.continue_as_new(1)
        got = []
        for _ in range(20):
            got.append((yield ctx.dequeue_event(name)))
        return [(m[:3], len(m)) for m in got]

    w.client.start_orchestration("i", "O", 0)
    w.run()
    for i in range(20):
        w.client.enqueue_event("i", name, f"{i:03d}" + "x" * 200_000)
    w.run()
    w.client.raise_event("i", "go", 1)
    st = w.result("i")
    assert st.status == "Completed"
    assert st.output == [[f"{i:03d}", 200_003] for i in range(20)]


def test_clients_do_not_mistake_the_can_gap_for_an_ending(w):
    """Between the continue-as-new turn and the next execution's first turn the instance reads
    Running (SPEC §8) with its custom status; ``wait_for_status_change`` and
    ``wait_for_orchestration`` keep waiting (they time out) instead of returning the
    ContinuedAsNew execution as final."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        ctx.set_custom_status(f"exec{n}")
        yield ctx.wait_for_event("go")
        if n == 0:
            yield ctx.continue_as_new(1)
        return n

    w.client.start_orchestration("i", "O", 0)
    w.run()
    w.client.raise_event("i", "go", 1)
    w.rt.orchestration_dispatcher.step()  # only the continue-as-new turn
    st = w.client.get_status("i")
    assert (st.status, st.output, st.custom_status, st.custom_status_version) == ("Running", None, "exec0", 1)
    frozen = Client(w.provider, clock=w.clock, sleep=lambda ms: w.clock.advance(int(ms)))  # time passes, nothing runs
    with pytest.raises(OperationTimeout):
        frozen.wait_for_status_change("i", 1, 10, 100)
    with pytest.raises(OperationTimeout):
        frozen.wait_for_orchestration("i", 100)
    w.run()
    st = w.client.get_status("i")
    assert (st.status, st.custom_status, st.custom_status_version) == ("Running", "exec1", 2)


def test_can_to_missing_version_leaves_a_gap_that_a_plain_delete_may_remove(w):
    """peer-observed: an instance whose continue-as-new names an unregistered version stays in the
    gap (status Running, instance info ContinuedAsNew, listed under ContinuedAsNew, executions [1]);
    ``delete_instance(id, force=False)`` succeeds and takes its KV with it."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        ctx.set_kv_value("k", "v")
        yield ctx.continue_as_new_versioned(1, "9.9.9")

    w.client.start_orchestration("i", "O", 0)
    w.run(1_000)
    c = w.client
    assert c.get_status("i").status == "Running"
    assert c.get_instance_info("i").status == "ContinuedAsNew"
    assert c.list_executions("i") == [1]
    assert c.list_instances_by_status("Running") == [] and c.list_instances_by_status("ContinuedAsNew") == ["i"]
    assert c.delete_instance("i", False).instances_deleted == 1
    assert c.get_kv_value("i", "k") is None and c.get_status("i").status == "NotFound"


def test_delete_during_can_gap_then_restart_starts_clean(w):
    """A user force-deletes an instance right after its continue-as-new turn (KV set, custom
    status set, a queue message waiting to be carried) and starts a new one under the same id:
    the new instance is execution 1 with no KV, no custom status (version 0) and no carried
    message."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            ctx.set_kv_value("a", "1")
            ctx.set_custom_status("old")
            yield ctx.wait_for_event("go")
            yield ctx.continue_as_new(1)
        r = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(10))
        return {"kv": ctx.get_kv_all_values(), "cs": ctx.get_custom_status(), "q": r, "exe": ctx.execution_id}

    w.client.start_orchestration("i", "O", 0)
    w.run()
    w.client.enqueue_event("i", "q", "stale")
    w.run()
    w.client.raise_event("i", "go", 1)
    w.rt.orchestration_dispatcher.step()
    assert w.client.delete_instance("i", True).instances_deleted == 1
    w.client.start_orchestration("i", "O", 5)
    st = w.result("i")
    assert st.output == {"kv": {}, "cs": None, "q": {"index": 1, "value": None}, "exe": 1}
    assert (st.custom_status, st.custom_status_version) == (None, 0)


# =================================================================================================
# Positional events across continue-as-new (SPEC §6.1)
# =================================================================================================


@pytest.mark.parametrize("kind", PROVIDERS)
def test_production_event_sent_before_the_can_trigger_is_lost_the_next_one_arrives(kind, tmp_path):
    """Production: the client raises "e" and then "go" (which makes the instance continue-as-new);
    execution 2 waits for "e". SPEC §6.1/§8: "e" reached execution 1, which had no subscription
    for it, and positional events are not carried - lost; the instance waits, and a second "e"
    sent once execution 2 waits resolves it."""
    provider = SqliteProvider.open(str(tmp_path / "d.db")) if kind == "sqlite" else InMemoryProvider()
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    client = Client(provider)

    @rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            ctx.set_kv_value("ready", "yes")
            yield ctx.wait_for_event("go")
            yield ctx.continue_as_new(1)
        ctx.set_kv_value("waiting", "yes")
        return (yield ctx.wait_for_event("e"))

    rt.start()
    try:
        client.start_orchestration("i", "O", 0)
        assert client.wait_for_kv_value("i", "ready", 3_000) == "yes"  # execution 1 waits for "go"
        client.raise_event("i", "e", "first")
        client.raise_event("i", "go", 1)
        assert client.wait_for_kv_value("i", "waiting", 3_000) == "yes"
        with pytest.raises(OperationTimeout):
            client.wait_for_orchestration("i", 200)
        client.raise_event("i", "e", "second")
        assert client.wait_for_orchestration("i", 3_000).output == "second"
    finally:
        rt.shutdown(2_000)
        if kind == "sqlite":
            provider.close()


def _gap_setup(rt, world):
    @rt.register_orchestration("Gap")
    def gap(ctx, n):
        if n == 0:
            yield ctx.wait_for_event("go")
            yield ctx.continue_as_new(1)
        return (yield ctx.wait_for_event("e"))


GAP_SPEC = SimSpec(
    name="can-gap-event-lost", setup=_gap_setup, ref=f"{HERE}:GAP_SPEC",
    starts=[Start(instance="a", orchestration="Gap", input=0)],
    signals=[Signal(instance="a", name="e", data="E", at_ms=9), Signal(instance="a", name="go", data=1, at_ms=10)],
)


def test_simulation_liveness_reports_an_event_dropped_before_the_continue_as_new():
    """Simulation: the sender raises "e" just before "go"; "e" lands in execution 1 (which does not
    wait for it) and is dropped (SPEC §6.1), so execution 2 waits for "e" forever - in production
    the instance hangs. The liveness checker reports the same mistake within one execution
    ("waits for event 'e', which was raised before it subscribed and so was dropped"); it must
    report it here too instead of passing the run."""
    for seed in range(3):
        result = run_and_check(Simulation(GAP_SPEC, seed, None))
        assert result.outputs()["a"] == ("Running", None)  # stuck: nothing will ever resolve it
        assert any(f.checker == "liveness" and "'e'" in f.message for f in result.failures), \
            f"seed {seed}: the run passed: {[f.render() for f in result.failures]}"


# =================================================================================================
# Custom status (SPEC §13, §10.3)
# =================================================================================================


def test_custom_status_reset_before_can_and_versions_across_executions(w):
    """peer-observed: execution 1 sets "a", then "b" (next turn), then resets in its
    continue-as-new turn; execution 2 starts with ``get_custom_status() is None`` and the client
    reads (None, 3); execution 2 sets "c" in its continue-as-new turn -> ("c", 4); execution 3
    starts with "c" and completes reporting "c" with version 4 (no new event)."""
    seen = []

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            ctx.set_custom_status("a")
            yield ctx.schedule_timer(20)
            ctx.set_custom_status("b")
            yield ctx.schedule_timer(20)
            ctx.reset_custom_status()
            yield ctx.continue_as_new(1)
        if n == 1:
            seen.append(("exec2", ctx.get_custom_status()))
            yield ctx.wait_for_event("go")
            ctx.set_custom_status("c")
            yield ctx.continue_as_new(2)
        seen.append(("exec3", ctx.get_custom_status()))
        yield ctx.wait_for_event("go2")
        return ctx.get_custom_status()

    w.client.start_orchestration("i", "O", 0)
    w.run()
    st = w.client.get_status("i")
    assert (st.status, st.custom_status, st.custom_status_version) == ("Running", None, 3)
    w.client.raise_event("i", "go", 1)
    w.run()
    st = w.client.get_status("i")
    assert (st.custom_status, st.custom_status_version, w.client.list_executions("i")) == ("c", 4, [1, 2, 3])
    w.client.raise_event("i", "go2", 1)
    st = w.result("i")
    assert (st.status, st.output, st.custom_status, st.custom_status_version) == ("Completed", "c", "c", 4)
    assert sorted(set(seen)) == [("exec2", None), ("exec3", "c")]


def test_empty_custom_status_and_empty_kv_value_survive_can(w):
    """peer-observed: ``set_custom_status("")`` and ``set_kv_value("e", "")`` are values, not
    absence: after continue-as-new the next execution reads ``""`` for both and the client
    reports custom status ``""`` (version 1) and KV ``""``."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            ctx.set_custom_status("")
            ctx.set_kv_value("e", "")
            yield ctx.schedule_timer(1)
            yield ctx.continue_as_new(1)
        yield ctx.schedule_timer(1)
        return [ctx.get_custom_status(), ctx.get_kv_value("e"), ctx.get_kv_length()]

    w.client.start_orchestration("i", "O", 0)
    st = w.result("i")
    assert st.output == ["", "", 1]
    assert (st.custom_status, st.custom_status_version) == ("", 1)
    assert w.client.get_kv_value("i", "e") == ""


def test_custom_status_over_limit_then_reset_in_the_same_turn_still_fails(w):
    """SPEC §10.3 checks the custom status *last set* in a turn. peer-observed (duroxide 0.2.2):
    ``set_custom_status(300000 chars)`` followed by ``reset_custom_status()`` in the same turn
    fails the instance with "Custom status size (300000 bytes) exceeds limit (262144 bytes)"
    (a later ``set_custom_status("s")`` instead would pass). Expected the same here."""

    @w.rt.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_timer(1)
        ctx.set_custom_status("x" * 300_000)
        ctx.reset_custom_status()
        yield ctx.schedule_timer(1)
        return "ok"

    w.client.start_orchestration("i", "O", None)
    st = w.result("i")
    assert (st.status, st.error) == ("Failed", "Custom status size (300000 bytes) exceeds limit (262144 bytes)")


class Color(enum.StrEnum):
    RED = "red"


def test_str_subclass_status_and_kv_read_back_as_plain_str_on_every_provider(w):
    """A user passes a ``StrEnum`` member as custom status, KV key and KV value. The client and the
    next execution must read plain ``str`` values on both providers (peer-observed: duroxide
    0.2.2 gives ``str`` for all of them, ``ctx.get_custom_status()`` in the next execution
    included); the in-memory provider must not hand back the caller's own objects where SQLite
    gives strings."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            ctx.set_custom_status(Color.RED)
            ctx.set_kv_value(Color.RED, Color.RED)
            yield ctx.schedule_timer(1)
            yield ctx.continue_as_new(1)
        yield ctx.wait_for_event("go")
        return [type(ctx.get_custom_status()).__name__, sorted(type(k).__name__ for k in ctx.get_kv_all_keys())]

    w.client.start_orchestration("i", "O", 0)
    w.run()
    st = w.client.get_status("i")
    kv = w.client.get_kv_all_values("i")
    assert [type(st.custom_status), [type(k) for k in kv], type(w.client.get_kv_value("i", "red"))] == [str, [str], str]
    w.client.raise_event("i", "go", 1)
    assert w.result("i").output == ["str", ["str"]]


# =================================================================================================
# KV store (SPEC §13, §10.3)
# =================================================================================================


def test_kv_visibility_across_a_can_chain_for_code_syscall_and_client(w):
    """peer-observed: execution 2 starts with every key of execution 1 (also one set in the
    continue-as-new turn); ``get_kv_value_from_instance`` on its own id reads them, and None for an
    unknown instance; after ``clear_all_kv_values`` + set "c" the client sees only "c" (the
    earlier executions' keys are hidden by the tombstones), the syscall reads "3" and None, and
    execution 3 starts with only "c"."""
    log = []

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            ctx.set_kv_value("a", "1")
            ctx.set_kv_value("b", "2")
            yield ctx.schedule_timer(20)
            ctx.set_kv_value("e", "5")
            yield ctx.continue_as_new(1)
        if n == 1:
            log.append(("e2", sorted(ctx.get_kv_all_values().items()), ctx.get_kv_length()))
            own_a = yield ctx.get_kv_value_from_instance(ctx.instance_id, "a")
            own_e = yield ctx.get_kv_value_from_instance(ctx.instance_id, "e")
            missing = yield ctx.get_kv_value_from_instance("nobody", "a")
            log.append(("own", own_a, own_e, missing))
            ctx.clear_all_kv_values()
            ctx.set_kv_value("c", "3")
            yield ctx.wait_for_event("go")
            own_c = yield ctx.get_kv_value_from_instance(ctx.instance_id, "c")
            own_b = yield ctx.get_kv_value_from_instance(ctx.instance_id, "b")
            log.append(("own2", own_c, own_b))
            yield ctx.continue_as_new(2)
        log.append(("e3", sorted(ctx.get_kv_all_values().items())))
        yield ctx.wait_for_event("go2")
        return sorted(ctx.get_kv_all_keys())

    w.client.start_orchestration("i", "O", 0)
    w.run()
    assert (w.client.get_kv_value("i", "a"), w.client.get_kv_value("i", "c")) == (None, "3")
    assert w.client.get_kv_all_values("i") == {"c": "3"}
    w.client.raise_event("i", "go", 1)
    w.run()
    w.client.raise_event("i", "go2", 1)
    assert w.result("i").output == ["c"]
    distinct = []  # (a turn replays earlier lines when the engine is not cached)
    for line in log:
        if line not in distinct:
            distinct.append(line)
    assert distinct == [
        ("e2", [("a", "1"), ("b", "2"), ("e", "5")], 3),
        ("own", "1", "5", None),
        ("own2", "3", None),
        ("e3", [("c", "3")]),
    ]


@pytest.mark.parametrize(("first", "second", "clear", "want"), [
    (100, 50, False, ("Completed", 150, None)),
    (100, 51, False, ("Failed", None, "KV key count (151) exceeds limit (150)")),
    (140, 20, True, ("Completed", 20, None)),
])
def test_kv_key_limit_counts_keys_kept_from_earlier_executions(w, first, second, clear, want):
    """peer-observed (duroxide 0.2.2, 150-key limit, SPEC §10.3's SDK note): keys carried from
    execution 1 count toward execution 2's limit - 100 + 50 is fine, 100 + 51 fails with
    "KV key count (151) exceeds limit (150)"; after clear_all 20 new keys are fine."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            for i in range(first):
                ctx.set_kv_value(f"a{i}", "x")
            yield ctx.schedule_timer(5)
            yield ctx.continue_as_new(1)
        if clear:
            ctx.clear_all_kv_values()
        for i in range(second):
            ctx.set_kv_value(f"b{i}", "y")
        yield ctx.schedule_timer(5)
        return ctx.get_kv_length()

    w.client.start_orchestration("i", "O", 0)
    st = w.result("i")
    assert (st.status, st.output, st.error) == want
    assert w.client.list_executions("i") == [1, 2]


@pytest.mark.parametrize(("body", "want"), [
    (lambda c: (c.set_kv_value("k", "x" * 70_000), c.set_kv_value("k", "s")),
     ("Failed", "KV value for key 'k' (70000 bytes) exceeds limit (65536 bytes)")),
    (lambda c: (c.set_kv_value("k", "x" * 70_000), c.clear_all_kv_values()),
     ("Failed", "KV value for key 'k' (70000 bytes) exceeds limit (65536 bytes)")),
    (lambda c: c.set_kv_value("k", "é" * 32_768), ("Completed", None)),
    (lambda c: c.set_kv_value("k", "é" * 32_769), ("Failed", "KV value for key 'k' (65538 bytes) exceeds limit (65536 bytes)")),
    (lambda c: ([c.set_kv_value(f"k{i}", "v") for i in range(151)], c.clear_kv_value("k0")), ("Completed", None)),
], ids=["big-then-small", "big-then-clear-all", "exact-multibyte", "over-multibyte", "151-then-clear"])
def test_kv_limits_in_a_continue_as_new_turn(w, body, want):
    """peer-observed: in a continue-as-new turn the value limit counts UTF-8 bytes of *every* set
    (overwriting or clearing it later in the turn does not help), the key count is taken at the end
    of the turn; a violation fails the instance instead of continuing (executions stay [1])."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            yield ctx.schedule_timer(1)
            body(ctx)
            yield ctx.continue_as_new(1)
        return "ok"

    w.client.start_orchestration("i", "O", 0)
    st = w.result("i")
    assert (st.status, st.error) == want
    assert w.client.list_executions("i") == ([1] if want[0] == "Failed" else [1, 2])


def test_kv_prune_uses_the_original_timestamps_after_can(w):
    """peer-observed: a key set in execution 1 keeps its own timestamp through two
    continue-as-new (400 ms apart); in execution 3, ``prune_kv_values_updated_before(now - 200)``
    removes it and keeps the key just set -> ``[1, ['new']]``; the client agrees."""

    @w.rt.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            ctx.set_kv_value("old", "1")
            yield ctx.schedule_timer(400)
            yield ctx.continue_as_new(1)
        if n == 1:
            yield ctx.schedule_timer(400)
            yield ctx.continue_as_new(2)
        ctx.set_kv_value("new", "2")
        now = yield ctx.utc_now()
        pruned = ctx.prune_kv_values_updated_before(now - 200)
        return [pruned, sorted(ctx.get_kv_all_keys())]

    w.client.start_orchestration("i", "O", 0)
    assert w.result("i").output == [1, ["new"]]
    assert (w.client.get_kv_value("i", "old"), w.client.get_kv_value("i", "new")) == (None, "2")


def test_get_kv_value_from_instance_with_a_bad_instance_id_is_an_error_not_a_crash(w):
    """peer-observed (duroxide 0.2.2): ``get_kv_value_from_instance(id, "k")`` with id ``5``,
    ``None`` or ``{"a": 1}`` fails at the yield with "get_kv_value: missing instance_id", and with
    a lone surrogate ``"\\udcff"`` with "get_kv_value: invalid input: lone leading surrogate ...";
    the orchestration can catch each. Expected here: an error the orchestration sees (a TypeError
    at the call, as a bad *key* already gets, or a failure at the yield) - never a silent None that
    reads like "key not set", and never an exception that escapes the runtime (a dispatcher
    crash: on SQLite the surrogate raises UnicodeEncodeError in the worker, the dict a
    ProviderError; on memory the dict raises TypeError)."""

    @w.rt.register_orchestration("O")
    def orch(ctx, _):
        out = []
        for bad in (5, None, {"a": 1}, "\udcff"):
            try:
                v = yield ctx.get_kv_value_from_instance(bad, "k")
            except Exception as exc:  # noqa: BLE001 - TypeError at the call or a failure at the yield
                out.append(["error", type(exc).__name__])
            else:
                out.append(["value", v])
        return out

    w.client.start_orchestration("i", "O", None)
    try:
        st = w.result("i")
    except Exception as exc:  # noqa: BLE001 - the defect: it escapes the runtime's step
        pytest.fail(f"the runtime's worker step crashed: {type(exc).__name__}: {exc}")
    assert st.status == "Completed"
    assert [r[0] for r in st.output] == ["error"] * 4, st.output


def test_client_kv_reads_refuse_a_lone_surrogate_key_alike_on_both_providers(w):
    """Hostile input at the client: a KV key holding a lone surrogate (e.g. from ``os.fsdecode``).
    The client already refuses such an instance id or queue name with InvalidInputError ("... is
    not valid Unicode"); ``get_kv_value``, ``get_kv_value_typed`` and ``wait_for_kv_value`` must
    refuse the key the same way on both providers - not return None on memory while SQLite
    raises a raw UnicodeEncodeError from the driver."""

    @w.rt.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_kv_value("k", "v")
        yield ctx.wait_for_event("never")

    w.client.start_orchestration("i", "O", None)
    w.run()
    assert w.client.get_kv_value("i", "k") == "v"
    for call in (lambda: w.client.get_kv_value("i", "\udcff"),
                 lambda: w.client.get_kv_value_typed("i", "\udcff"),
                 lambda: w.client.wait_for_kv_value("i", "\udcff", 5)):
        with pytest.raises(InvalidInputError, match="KV key"):
            call()


def test_prune_kv_with_a_non_integer_cutoff_is_a_clear_type_error(w):
    """peer-observed: ``prune_kv_values_updated_before("abc")`` raises ``TypeError: argument
    'cutoff_ms': 'str' object cannot be interpreted as an integer`` whether or not any key exists.
    Expected here: a TypeError naming the cutoff both with no keys (not a silent 0) and with keys
    (not an internal "'<' not supported between instances of 'int' and 'str'")."""

    @w.rt.register_orchestration("O")
    def orch(ctx, _):
        out = []
        for with_key in (False, True):
            if with_key:
                ctx.set_kv_value("k", "v")
            try:
                pruned = ctx.prune_kv_values_updated_before("abc")
            except TypeError as exc:
                out.append(["TypeError", "cutoff" in str(exc)])
            else:
                out.append(["accepted", pruned])
        yield ctx.schedule_timer(1)
        return out

    w.client.start_orchestration("i", "O", None)
    st = w.result("i")
    assert (st.status, st.output) == ("Completed", [["TypeError", True], ["TypeError", True]]), (st.output, _last_line(st.error))


def test_bad_payloads_and_names_fail_clearly_and_enqueue_nothing(w):
    """Hostile input: the client refuses a non-JSON / NaN queue payload (SerializationError) and
    an empty, None or int queue name (InvalidInputError) without enqueuing; inside orchestration
    code a non-JSON KV value, custom status or continue-as-new input fails the instance with a
    SerializationError naming what could not be encoded (no execution 2), and an empty queue
    name is a TypeError - never a dispatcher crash."""

    @w.rt.register_orchestration("Wait")
    def wait(ctx, _):
        return (yield ctx.dequeue_event("q"))

    w.client.start_orchestration("t", "Wait", None)
    w.run()
    for data in (object(), float("nan"), b"bytes", {1, 2}):
        with pytest.raises(SerializationError):
            w.client.enqueue_event("t", "q", data)
    for name in ("", None, 5):
        with pytest.raises(InvalidInputError):
            w.client.enqueue_event("t", name, 1)
    assert w.client.get_queue_depths().orchestrator_queue == 0
    w.client.enqueue_event("t", "q", {"ok": True})
    assert w.result("t").output == {"ok": True}

    bodies = {
        "kv": (lambda c: c.set_kv_value("k", object()), "SerializationError: KV value for 'k' cannot be encoded as JSON"),
        "status": (lambda c: c.set_custom_status({1, 2}), "SerializationError: custom status cannot be encoded as JSON"),
        "can": (lambda c: c.continue_as_new({1, 2}), "SerializationError: continue-as-new input cannot be encoded as JSON"),
        "queue": (lambda c: c.dequeue_event(""), "TypeError: queue name must be a non-empty string"),
    }
    for name, (body, _) in bodies.items():
        def make(body=body):
            def orch(ctx, n):
                yield ctx.schedule_timer(1)
                task = body(ctx)
                if task is not None:
                    yield task
                return "unreachable"
            return orch
        w.rt.register_orchestration(name, make())
        w.client.start_orchestration(name, name, 0)
    w.run()
    for name, (_, message) in bodies.items():
        st = w.result(name)
        assert st.status == "Failed" and message in _last_line(st.error), (name, _last_line(st.error))
        assert w.client.list_executions(name) == [1]


# =================================================================================================
# Cross-checks: the reference, the two providers, production threads, the simulator
# =================================================================================================


def _actor(ctx, state):
    """A command-driven actor: each queued command is one turn; 'can' continues as new."""
    state = state or {"seq": 0, "log": []}
    while True:
        cmd = yield ctx.dequeue_event("cmd")
        state["seq"] += 1
        op, out = cmd["op"], None
        if op == "set":
            ctx.set_kv_value(cmd["k"], cmd["v"])
        elif op == "clear":
            ctx.clear_kv_value(cmd["k"])
        elif op == "clear_all":
            ctx.clear_all_kv_values()
        elif op == "status":
            ctx.set_custom_status(cmd["s"])
        elif op == "reset":
            ctx.reset_custom_status()
        elif op == "drain":
            got = []
            for _ in range(cmd["n"]):
                r = yield ctx.race(ctx.dequeue_event("data"), ctx.schedule_timer(1))
                got.append(r["value"] if r["index"] == 0 else "<none>")
            out = got
        elif op == "read_own":
            out = yield ctx.get_kv_value_from_instance(ctx.instance_id, cmd["k"])
        elif op == "view":
            out = [sorted(ctx.get_kv_all_values().items()), ctx.get_custom_status(), ctx.get_kv_length()]
        state["log"].append([state["seq"], op, out])
        ctx.set_kv_value("__ack", str(state["seq"]))
        if op == "can":
            yield ctx.continue_as_new(state)
        if op == "done":
            return {"log": state["log"], "kv": sorted(ctx.get_kv_all_values().items()), "cs": ctx.get_custom_status()}


def _drive(w: W, cmds: list[dict]) -> dict:
    snaps = []
    for seq, cmd in enumerate(cmds, 1):
        if cmd["op"] == "data":
            for item in cmd["items"]:
                w.client.enqueue_event("i", "data", item)
            cmd = {"op": "noop"}
        w.client.enqueue_event("i", "cmd", cmd)
        if cmd["op"] == "done":
            break
        w.run()
        assert w.client.get_kv_value("i", "__ack") == str(seq)
        st = w.client.get_status("i")
        snaps.append([seq, st.custom_status, st.custom_status_version, [w.client.get_kv_value("i", k) for k in "abc"]])
    st = w.result("i")
    return {"snaps": snaps, "status": st.status, "output": st.output, "cs": st.custom_status,
            "csv": st.custom_status_version, "execs": w.client.list_executions("i")}


SCRIPT = [
    {"op": "set", "k": "a", "v": "1"}, {"op": "status", "s": "s1"}, {"op": "data", "items": ["d0", "d1", "d2"]},
    {"op": "drain", "n": 1}, {"op": "can"}, {"op": "set", "k": "b", "v": "2"}, {"op": "clear", "k": "a"},
    {"op": "read_own", "k": "b"}, {"op": "reset"}, {"op": "can"}, {"op": "drain", "n": 3}, {"op": "view"},
    {"op": "clear_all"}, {"op": "status", "s": "s2"}, {"op": "set", "k": "c", "v": "3"}, {"op": "can"},
    {"op": "view"}, {"op": "done"},
]

#: What duroxide 0.2.2 (bench/.peer, SqliteProvider, live runtime, each command sent after the
#: previous one's ack) produced for SCRIPT: client snapshots after each command, final status.
PEER_OBSERVED = json.loads("""
{"snaps": [[1, null, 0, ["1", null, null]], [2, "s1", 1, ["1", null, null]], [3, "s1", 1, ["1", null, null]],
 [4, "s1", 1, ["1", null, null]], [5, "s1", 1, ["1", null, null]], [6, "s1", 1, ["1", "2", null]],
 [7, "s1", 1, [null, "2", null]], [8, "s1", 1, [null, "2", null]], [9, null, 2, [null, "2", null]],
 [10, null, 2, [null, "2", null]], [11, null, 2, [null, "2", null]], [12, null, 2, [null, "2", null]],
 [13, null, 2, [null, null, null]], [14, "s2", 3, [null, null, null]], [15, "s2", 3, [null, null, "3"]],
 [16, "s2", 3, [null, null, "3"]], [17, "s2", 3, [null, null, "3"]]],
 "status": "Completed",
 "output": {"log": [[1, "set", null], [2, "status", null], [3, "noop", null], [4, "drain", ["d0"]], [5, "can", null],
  [6, "set", null], [7, "clear", null], [8, "read_own", "2"], [9, "reset", null], [10, "can", null],
  [11, "drain", ["d1", "d2", "<none>"]], [12, "view", [[["__ack", "11"], ["b", "2"]], null, 2]],
  [13, "clear_all", null], [14, "status", null], [15, "set", null], [16, "can", null],
  [17, "view", [[["__ack", "16"], ["c", "3"]], "s2", 2]], [18, "done", null]],
  "kv": [["__ack", "18"], ["c", "3"]], "cs": "s2"},
 "cs": "s2", "csv": 3, "execs": [1, 2, 3, 4]}
""")


def test_command_actor_matches_the_reference_step_by_step(w):
    """peer-observed: a command-driven actor (KV set/clear/clear-all, custom status set/reset,
    queue drains racing a timer, own-KV syscall reads, three continue-as-new) gives, after every
    command, the same client-visible custom status, status version and KV values as duroxide
    0.2.2, the same final output and executions [1, 2, 3, 4]."""
    w.rt.register_orchestration("A", _actor)
    w.client.start_orchestration("i", "A", None)
    w.run()
    assert _drive(w, [dict(c) for c in SCRIPT]) == PEER_OBSERVED


@pytest.mark.parametrize("kind", PROVIDERS)
def test_production_queue_actors_get_every_message_once_in_order(kind, tmp_path):
    """Production (threads; two runtimes on one SQLite file, or one runtime on memory): three
    actors each continue-as-new every 4 messages while 40 messages per actor are sent from three
    client threads in bursts of 10 (each burst once the previous one is counted, so no backlog
    reaches the carry-forward cap of 20); every actor gets each message exactly once, in send
    order, and its custom status counts them."""
    n_msgs = 40

    def register(rt):
        @rt.register_orchestration("Actor")
        def actor(ctx, state):
            state = state or []
            for _ in range(4):
                state.append((yield ctx.dequeue_event("inbox")))
                ctx.set_custom_status(str(len(state)))
                if len(state) == n_msgs:
                    return state
            yield ctx.continue_as_new(state)

    opts = RuntimeOptions(dispatcher_poll_interval_ms=5, orchestration_concurrency=2)
    providers, runtimes = [], []
    if kind == "sqlite":
        for _ in range(2):
            providers.append(SqliteProvider.open(str(tmp_path / "d.db")))
            runtimes.append(Runtime(providers[-1], opts))
        client_provider = SqliteProvider.open(str(tmp_path / "d.db"))
        providers.append(client_provider)
    else:
        client_provider = InMemoryProvider()
        runtimes.append(Runtime(client_provider, opts))
    for rt in runtimes:
        register(rt)
        rt.start()
    try:
        client = Client(client_provider)
        actors = ["a0", "a1", "a2"]
        for a in actors:
            client.start_orchestration(a, "Actor", None)

        def send(actor_id):
            for i in range(n_msgs):
                client.enqueue_event(actor_id, "inbox", i)
                if i % 10 == 9 and i + 1 < n_msgs:
                    version = 0
                    while True:  # the burst is consumed once the status says so
                        st = client.wait_for_status_change(actor_id, version, 5, 10_000)
                        if st.custom_status == str(i + 1) or st.status != "Running":
                            break
                        version = st.custom_status_version

        threads = [threading.Thread(target=send, args=(a,)) for a in actors]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for a in actors:
            st = client.wait_for_orchestration(a, 15_000)
            assert (st.status, st.output, st.custom_status) == ("Completed", list(range(n_msgs)), str(n_msgs))
            assert client.list_executions(a) == list(range(1, n_msgs // 4 + 1))
    finally:
        for rt in runtimes:
            rt.shutdown(2_000)
        for p in providers:
            p.close()


N_ITEMS = 12


def _can_actor_setup(rt, world):
    @rt.register_activity("Record")
    def record(ctx, item):
        if world.put_if_absent(f"rec:{item}", True):
            world.append("records", item)
        return item

    @rt.register_orchestration("Actor")
    def actor(ctx, state):
        state = state or {"seen": [], "batch": 0}
        for _ in range(3):
            item = yield ctx.dequeue_event("inbox")
            if item in state["seen"]:
                continue  # a client retry (lost commit) may send a message twice: at-least-once
            yield ctx.schedule_activity("Record", item)
            state["seen"].append(item)
            ctx.set_kv_value(f"k{item}", "seen")
            ctx.set_custom_status(f"seen {len(state['seen'])}")
            if len(state["seen"]) == N_ITEMS:
                return [sorted(state["seen"]), sorted(ctx.get_kv_all_keys())]
        state["batch"] += 1
        yield ctx.continue_as_new(state)


def _every_item_once(result):
    st = result.statuses.get("a")
    if st is None or st.status != "Completed":
        return f"not completed: {None if st is None else (st.status, st.error)}"
    if st.output != [list(range(N_ITEMS)), sorted(f"k{i}" for i in range(N_ITEMS))]:
        return f"wrong output {st.output}"
    if st.custom_status != f"seen {N_ITEMS}":
        return f"custom status {st.custom_status!r}"
    return None


CAN_ACTOR = SimSpec(
    name="can-actor-queue-kv-status", setup=_can_actor_setup, ref=f"{HERE}:CAN_ACTOR",
    starts=[Start(instance="a", orchestration="Actor")],
    signals=[Signal(instance="a", name="inbox", data=i, at_ms=None, kind="enqueue") for i in range(N_ITEMS)],
    invariants=[_every_item_once],
)


@pytest.mark.parametrize("provider", ["memory", "sqlite"])
def test_simulated_can_actor_keeps_messages_kv_and_status_under_faults(provider):
    """Simulation with every fault kind: an actor that records each queue message through an
    activity, writes KV and custom status, and continues-as-new every 3 messages (messages sent at
    seed-chosen times, so many land in continue-as-new gaps) ends with every message once, every
    KV key and the final status - on the memory and the SQLite provider - and every checker
    passes (a run whose faults used up the retry budget is not judged)."""
    for seed in range(12):
        result = run_and_check(Simulation(CAN_ACTOR, seed, FaultPlan.all(0.05), provider=provider))
        if "a" in result.budget_exhausted:
            continue
        assert result.ok, [f.render() for f in result.failures]
