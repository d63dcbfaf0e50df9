"""End-to-end: the Client API - status, waits, listing, history, management, input checks (SPEC §14, §17)."""

from __future__ import annotations

import json

import pytest

from duroxide_sim import (
    CannotDeleteSubOrchestration,
    InstanceFilter,
    InstanceNotFound,
    InstanceStillRunning,
    InvalidInputError,
    OperationTimeout,
    PruneOptions,
    SerializationError,
)

from ._helpers import STYLES, pick


@pytest.fixture
def app(world):
    @world.runtime.register_activity("Echo")
    def echo(ctx, x):
        return x

    @world.runtime.register_orchestration("Echoer")
    def echoer(ctx, x):
        return (yield ctx.schedule_activity("Echo", x))

    @world.runtime.register_orchestration("Waiter")
    async def waiter(ctx, _):
        return await ctx.wait_for_event("go")

    @world.runtime.register_orchestration("Failer")
    def failer(ctx, msg):
        yield ctx.schedule_timer(1)
        raise ValueError(msg)

    return world


@pytest.mark.parametrize("style", STYLES)
def test_status_lifecycle_not_found_running_completed(app, style):
    """get_status goes NotFound -> Running -> Completed with the decoded output."""
    world = app

    def gen(ctx, _):
        return {"reply": (yield ctx.wait_for_event("go"))}

    async def coro(ctx, _):
        return {"reply": await ctx.wait_for_event("go")}

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    assert world.client.get_status("i1").status == "NotFound"
    world.client.start_orchestration("i1", "O")
    assert world.client.get_status("i1").status == "NotFound"  # enqueued, not yet started
    world.run()
    st = world.client.get_status("i1")
    assert (st.status, st.output, st.error) == ("Running", None, None)
    assert not st.is_terminal
    world.client.raise_event("i1", "go", [1, 2])
    world.run()
    st = world.client.get_status("i1")
    assert (st.status, st.output, st.error, st.is_terminal) == ("Completed", {"reply": [1, 2]}, None, True)


def test_status_failed_has_error_and_no_output(app):
    """A failed instance reports status Failed, error text and no output."""
    world = app
    world.client.start_orchestration("i1", "Failer", "it broke")
    st = world.result("i1")
    assert st.status == "Failed"
    assert st.output is None
    assert st.error.startswith("Traceback (most recent call last):")
    assert st.error.splitlines()[-1] == "ValueError: it broke"


def test_get_orchestration_status_alias(app):
    """get_orchestration_status is the Rust-named alias of get_status."""
    world = app
    world.client.start_orchestration("i1", "Echoer", 1)
    world.run()
    assert world.client.get_orchestration_status("i1") == world.client.get_status("i1")


def test_wait_timeout_raises_operation_timeout(app):
    """wait_for_orchestration raises OperationTimeout ('Operation timed out'), a RuntimeError and TimeoutError."""
    world = app
    world.client.start_orchestration("i1", "Waiter")
    t0 = world.clock.now_ms()
    with pytest.raises(OperationTimeout, match="Operation timed out") as info:
        world.client.wait_for_orchestration("i1", 5_000)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, TimeoutError)
    assert world.clock.now_ms() - t0 >= 5_000  # the timeout is in virtual time
    assert world.client.get_status("i1").status == "Running"


def test_wait_for_unknown_instance_times_out(app):
    """Waiting for an instance that was never started times out."""
    with pytest.raises(TimeoutError):
        app.client.wait_for_orchestration("ghost", 100)


def test_wait_returns_immediately_for_terminal_instance(app):
    """wait_for_orchestration on an already finished instance returns at once."""
    world = app
    world.client.start_orchestration("i1", "Echoer", "x")
    world.result("i1")
    t0 = world.clock.now_ms()
    assert world.client.wait_for_orchestration("i1", 0).output == "x"
    assert world.clock.now_ms() == t0


def test_list_instances_and_by_status(app):
    """list_all_instances lists every instance; list_instances_by_status filters by current status."""
    world = app
    world.client.start_orchestration("done", "Echoer", 1)
    world.client.start_orchestration("running", "Waiter")
    world.client.start_orchestration("failed", "Failer", "x")
    world.run()
    assert set(world.client.list_all_instances()) == {"done", "running", "failed"}
    assert world.client.list_instances_by_status("Completed") == ["done"]
    assert world.client.list_instances_by_status("Running") == ["running"]
    assert world.client.list_instances_by_status("Failed") == ["failed"]
    with pytest.raises(InvalidInputError):
        world.client.list_instances_by_status("Sleeping")


def test_read_execution_history_dict_shape(app):
    """read_execution_history returns Event records: {event_id, kind, source_event_id,
    timestamp_ms, data} as attributes (duroxide-python) and as mapping keys; ``data`` embeds
    payloads as JSON values, and is the payload itself for a payload-only event."""
    world = app
    world.client.start_orchestration("i1", "Echoer", {"a": 1})
    world.result("i1")
    hist = world.client.read_execution_history("i1", 1)
    assert [e["kind"] for e in hist] == ["OrchestrationStarted", "ActivityScheduled", "ActivityCompleted", "OrchestrationCompleted"]
    for e in hist:
        assert set(e) == {"event_id", "kind", "source_event_id", "timestamp_ms", "data"}
        assert isinstance(e["timestamp_ms"], int)
    assert [e["event_id"] for e in hist] == [1, 2, 3, 4]
    assert [e["source_event_id"] for e in hist] == [None, None, 2, None]
    assert [e.kind for e in hist] == [e["kind"] for e in hist] and hist[2].source_event_id == 2
    assert dict(hist[0]) == {k: getattr(hist[0], k) for k in ("event_id", "kind", "source_event_id", "timestamp_ms", "data")}
    started = json.loads(hist[0]["data"])
    assert started == {"name": "Echoer", "input": {"a": 1}, "version": "1.0.0"}
    assert json.loads(hist[1]["data"]) == {"name": "Echo", "input": {"a": 1}}
    assert json.loads(hist[2]["data"]) == {"a": 1}  # ActivityCompleted: the result
    assert json.loads(hist[3]["data"]) == {"a": 1}  # OrchestrationCompleted: the output


def test_read_history_of_unknown_instance_is_empty(app):
    """Reading history of an unknown instance returns an empty list."""
    assert app.client.read_execution_history("ghost", 1) == []


@pytest.mark.parametrize("bad", [object(), {1, 2}, float("nan"), b"bytes"], ids=["object", "set", "nan", "bytes"])
def test_non_json_input_raises_serialization_error(app, bad):
    """A non-JSON-serializable input raises SerializationError naming the type, and nothing is enqueued."""
    with pytest.raises(SerializationError, match=type(bad).__name__):
        app.client.start_orchestration("i1", "Echoer", bad)
    assert app.client.get_queue_depths().orchestrator_queue == 0


def test_serialization_error_is_type_error(app):
    """SerializationError is also a TypeError."""
    with pytest.raises(TypeError):
        app.client.raise_event("i1", "e", object())


@pytest.mark.parametrize("bad_id", ["", 42, None, "a\x00b"], ids=["empty", "int", "none", "nul"])
def test_bad_instance_id_raises_invalid_input(app, bad_id):
    """Empty, non-string or NUL-containing instance ids raise InvalidInputError (a ValueError)."""
    with pytest.raises(InvalidInputError) as info:
        app.client.start_orchestration(bad_id, "Echoer")
    assert isinstance(info.value, ValueError)
    for call in (
        lambda: app.client.get_status(bad_id),
        lambda: app.client.raise_event(bad_id, "e"),
        lambda: app.client.enqueue_event(bad_id, "q"),
        lambda: app.client.cancel_instance(bad_id),
    ):
        with pytest.raises(InvalidInputError):
            call()


def test_empty_names_raise_invalid_input(app):
    """Empty orchestration, event and queue names raise InvalidInputError."""
    with pytest.raises(InvalidInputError):
        app.client.start_orchestration("i1", "")
    with pytest.raises(InvalidInputError):
        app.client.raise_event("i1", "", 1)
    with pytest.raises(InvalidInputError):
        app.client.enqueue_event("i1", "", 1)


def test_negative_wait_timeout_is_invalid(app):
    """A negative timeout is an InvalidInputError."""
    with pytest.raises(InvalidInputError):
        app.client.wait_for_orchestration("i1", -1)


def test_instance_and_execution_info(app):
    """get_instance_info / get_execution_info describe the instance and its executions."""
    world = app
    world.client.start_orchestration("i1", "Echoer", "v")
    world.result("i1")
    info = world.client.get_instance_info("i1")
    assert info.instance_id == "i1"
    assert info.orchestration_name == "Echoer"
    assert info.orchestration_version == "1.0.0"
    assert info.current_execution_id == 1
    assert info.status == "Completed"
    assert info.parent_instance_id is None
    ex = world.client.get_execution_info("i1", 1)
    assert ex.execution_id == 1
    assert ex.status == "Completed"
    assert ex.event_count == 4
    assert ex.completed_at is not None


def test_system_metrics_and_queue_depths(app):
    """get_system_metrics counts instances by status; get_queue_depths counts queued work."""
    world = app
    world.client.start_orchestration("a", "Echoer", 1)
    world.client.start_orchestration("b", "Waiter")
    world.client.start_orchestration("c", "Failer", "x")
    depths = world.client.get_queue_depths()
    assert (depths.orchestrator_queue, depths.worker_queue) == (3, 0)
    world.run()
    m = world.client.get_system_metrics()
    assert (m.total_instances, m.running_instances, m.completed_instances, m.failed_instances) == (3, 1, 1, 1)
    assert m.total_executions == 3
    depths = world.client.get_queue_depths()
    assert (depths.orchestrator_queue, depths.worker_queue, depths.timer_queue) == (0, 0, 0)


def test_delete_instance(app):
    """delete_instance removes a terminal instance; running needs force; unknown raises InstanceNotFound."""
    world = app
    world.client.start_orchestration("done", "Echoer", 1)
    world.client.start_orchestration("running", "Waiter")
    world.run()
    result = world.client.delete_instance("done")
    assert result.instances_deleted == 1
    assert world.client.get_status("done").status == "NotFound"
    with pytest.raises(InstanceStillRunning):
        world.client.delete_instance("running")
    world.client.delete_instance("running", force=True)
    assert world.client.get_status("running").status == "NotFound"
    with pytest.raises(InstanceNotFound):
        world.client.delete_instance("ghost")


def test_deleted_instance_id_can_be_reused(app):
    """After deletion the same id can be started again from scratch."""
    world = app
    world.client.start_orchestration("i1", "Echoer", "first")
    world.result("i1")
    world.client.delete_instance("i1")
    world.client.start_orchestration("i1", "Echoer", "second")
    assert world.result("i1").output == "second"
    assert world.client.list_executions("i1") == [1]


def test_sub_orchestration_cannot_be_deleted_directly(app):
    """Deleting a child raises CannotDeleteSubOrchestration; deleting the root removes the tree."""
    world = app

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("Echoer", "kid", 5))

    world.client.start_orchestration("p", "Parent")
    assert world.result("p").output == 5
    with pytest.raises(CannotDeleteSubOrchestration):
        world.client.delete_instance("kid")
    result = world.client.delete_instance("p")
    assert result.instances_deleted == 2
    assert world.client.get_status("kid").status == "NotFound"


def test_prune_executions_keeps_current(app):
    """prune_executions removes old executions of a continued-as-new instance, never the current one."""
    world = app

    @world.runtime.register_orchestration("Loop")
    def loop(ctx, n):
        if n < 4:
            yield ctx.continue_as_new(n + 1)
        return n

    world.client.start_orchestration("i1", "Loop", 0)
    assert world.result("i1").output == 4
    assert world.client.list_executions("i1") == [1, 2, 3, 4, 5]
    result = world.client.prune_executions("i1", PruneOptions(keep_last=2))
    assert result.executions_deleted == 3
    assert world.client.list_executions("i1") == [4, 5]
    assert world.client.get_status("i1").output == 4


def test_orchestration_stats(app):
    """get_orchestration_stats summarises status, executions and history size."""
    world = app
    world.client.start_orchestration("i1", "Echoer", 1)
    world.result("i1")
    stats = world.client.get_orchestration_stats("i1")
    assert stats["status"] == "Completed"
    assert stats["executions"] == 1
    assert stats["history_event_count"] == 4
    assert world.client.has_management_capability()


def test_input_none_is_default(app):
    """start_orchestration without input delivers None to the orchestration."""
    world = app

    @world.runtime.register_orchestration("Inp")
    def inp(ctx, x):
        return {"input": x}

    world.client.start_orchestration("i1", "Inp")
    assert world.result("i1").output == {"input": None}


def test_duplicate_start_of_completed_instance_is_ignored(app):
    """Starting an id that already completed does not rerun it."""
    world = app
    world.client.start_orchestration("i1", "Echoer", "first")
    world.result("i1")
    world.client.start_orchestration("i1", "Echoer", "second")
    world.run()
    assert world.client.get_status("i1").output == "first"
    assert world.client.list_executions("i1") == [1]


def test_many_instances_run_independently(app):
    """Many instances interleave on one runtime and each gets its own result."""
    world = app
    for i in range(25):
        world.client.start_orchestration(f"i{i}", "Echoer", i)
    for i in range(25):
        assert world.result(f"i{i}").output == i


@pytest.mark.realtime
def test_thread_driver_runs_orchestrations_concurrently(live_world):
    """The production thread driver runs several orchestrations with activities and timers to completion."""
    world = live_world

    @world.runtime.register_activity("Add")
    def add(ctx, pair):
        return pair[0] + pair[1]

    @world.runtime.register_orchestration("Sum")
    def total(ctx, n):
        parts = yield ctx.all_typed([ctx.schedule_activity("Add", [i, i]) for i in range(n)])
        yield ctx.schedule_timer(20)
        return sum(parts)

    @world.runtime.register_orchestration("AsyncSum")
    async def async_total(ctx, n):
        acc = 0
        for i in range(n):
            acc = await ctx.schedule_activity("Add", [acc, i])
        return acc

    world.runtime.start()
    for i in range(5):
        world.client.start_orchestration(f"g{i}", "Sum", i + 2)
        world.client.start_orchestration(f"a{i}", "AsyncSum", i + 2)
    for i in range(5):
        n = i + 2
        assert world.client.wait_for_orchestration(f"g{i}", 1_500).output == 2 * sum(range(n))
        assert world.client.wait_for_orchestration(f"a{i}", 1_500).output == sum(range(n))


def test_oversized_payload_rejected(app):
    """An input over MAX_PAYLOAD_BYTES raises PayloadTooLargeError (an InvalidInputError) at the client."""
    from duroxide_sim import MAX_PAYLOAD_BYTES, PayloadTooLargeError

    with pytest.raises(PayloadTooLargeError) as info:
        app.client.start_orchestration("i1", "Echoer", "x" * MAX_PAYLOAD_BYTES)
    assert isinstance(info.value, InvalidInputError)
    assert app.client.get_queue_depths().orchestrator_queue == 0


def test_duplicate_client_start_while_running_is_absorbed(app):
    """A second start for a running instance does not restart it or change its input."""
    world = app

    @world.runtime.register_orchestration("W")
    def w(ctx, x):
        return [x, (yield ctx.wait_for_event("go"))]

    world.client.start_orchestration("t", "W", "first")
    world.run()
    world.client.start_orchestration("t", "W", "second")
    world.run()
    world.client.raise_event("t", "go", 1)
    assert world.result("t").output == ["first", 1]


class _NoFastStatus:
    """The same provider without its read_status shortcut (forces the history-based status)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name == "read_status":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_fast_status_read_agrees_with_history(world):
    """The row-based status shortcut gives exactly what reading the history gives, in every state."""
    from duroxide_sim import Client

    @world.runtime.register_orchestration("S")
    def s(ctx, mode):
        ctx.set_custom_status(f"mode {mode}")
        if mode == "fail":
            raise ValueError("no")
        if mode == "wait":
            yield ctx.wait_for_event("never")
        if mode == "can":
            yield ctx.continue_as_new("done")
        yield ctx.schedule_timer(10)
        return {"mode": mode}

    for mode in ("ok", "fail", "wait", "can", "cancel"):
        world.client.start_orchestration(mode, "S", "wait" if mode == "cancel" else mode)
    world.run()
    world.client.cancel_instance("cancel", "stop")
    world.run()
    slow = Client(_NoFastStatus(world.provider), clock=world.clock, sleep=world.driver.sleep)
    for inst in ("ok", "fail", "wait", "can", "cancel", "missing"):
        assert world.client.get_status(inst) == slow.get_status(inst), inst


@pytest.mark.parametrize("ids", ["ab", b"ab", {"a": 1}, 5, ["a", 1], ["a", ""]])
def test_instance_filter_refuses_ids_that_are_not_a_list_of_ids(app, ids):
    """A bare string used to be iterated character by character: InstanceFilter(instance_ids="ab")
    bulk-deleted the instances "a" and "b". Refused at construction now; nothing is deleted."""
    world = app
    for inst in ("a", "b", "ab"):
        world.client.start_orchestration(inst, "Echoer", 1)
    world.run()
    with pytest.raises(InvalidInputError, match="instance_ids"):
        InstanceFilter(instance_ids=ids)
    assert sorted(world.client.list_all_instances()) == ["a", "ab", "b"]
    assert world.client.delete_instance_bulk(InstanceFilter(instance_ids=["ab"])).instances_deleted == 1
    assert sorted(world.client.list_all_instances()) == ["a", "b"]


@pytest.mark.parametrize("kwargs", [
    {"limit": -1}, {"limit": True}, {"limit": 1.5}, {"completed_before": "5"},
])
def test_instance_filter_numbers_must_be_non_negative_integers(kwargs):
    with pytest.raises(InvalidInputError, match=next(iter(kwargs))):
        InstanceFilter(**kwargs)


@pytest.mark.parametrize("kwargs", [{"keep_last": -1}, {"keep_last": "2"}, {"completed_before": -5}])
def test_prune_options_numbers_must_be_non_negative_integers(kwargs):
    with pytest.raises(InvalidInputError, match=next(iter(kwargs))):
        PruneOptions(**kwargs)


def test_management_calls_refuse_dicts_and_other_types_for_filters_and_options(app):
    """A dict is not read as a filter or options (its keys would go unchecked): a clear error."""
    world = app
    world.client.start_orchestration("i1", "Echoer", 1)
    world.run()
    with pytest.raises(InvalidInputError, match=r"filter must be an InstanceFilter, got dict \(build one"):
        world.client.delete_instance_bulk({"instance_ids": ["i1"]})
    with pytest.raises(InvalidInputError, match="filter must be an InstanceFilter, got str"):
        world.client.prune_executions_bulk("i1")
    with pytest.raises(InvalidInputError, match="options must be a PruneOptions, got dict"):
        world.client.prune_executions("i1", {"keep_last": 1})
    with pytest.raises(InvalidInputError, match="options must be a PruneOptions"):
        world.client.prune_executions_bulk(None, {"keep_last": 1})
    assert world.client.list_all_instances() == ["i1"]  # nothing deleted on the way


@pytest.mark.parametrize("bad", ["1", -1, 0, 1.0, True, None])
def test_execution_ids_must_be_positive_integers(app, bad):
    world = app
    world.client.start_orchestration("i1", "Echoer", 1)
    world.run()
    for call in (world.client.read_execution_history, world.client.get_execution_info):
        with pytest.raises(InvalidInputError, match="execution_id must be a positive integer"):
            call("i1", bad)
    assert [e["kind"] for e in world.client.read_execution_history("i1", 1)][0] == "OrchestrationStarted"


def test_kv_keys_cancel_reasons_and_status_versions_are_type_checked(app):
    world = app
    world.client.start_orchestration("w", "Waiter")
    world.run()
    with pytest.raises(InvalidInputError, match="KV key must be a string"):
        world.client.get_kv_value("w", 5)
    assert world.client.get_kv_value("w", "") is None  # (an empty key is a key, as in duroxide-python)
    with pytest.raises(InvalidInputError, match="cancel reason must be a string"):
        world.client.cancel_instance("w", 3)
    with pytest.raises(InvalidInputError, match="last_seen_version"):
        world.client.wait_for_status_change("w", "0", 10, 10)
    with pytest.raises(InvalidInputError, match="poll_interval_ms"):
        world.client.wait_for_status_change("w", 0, 0, 10)
    assert world.client.get_status("w").status == "Running"  # the refused cancel did not land


@pytest.mark.parametrize("bad", ["a\x00b", "a\udc00b"])
def test_names_every_provider_cannot_store_are_refused(app, bad):
    """PostgreSQL text holds no NUL and no driver encodes a lone surrogate: refused up front for
    every provider (a NUL orchestration name used to make PostgreSQL loop on a failing ack)."""
    world = app
    with pytest.raises(InvalidInputError, match="orchestration name"):
        world.client.start_orchestration("i", bad)
    with pytest.raises(InvalidInputError, match="event name"):
        world.client.raise_event("i", bad)
    with pytest.raises(InvalidInputError, match="queue name"):
        world.client.enqueue_event("i", bad)
    assert world.client.list_all_instances() == []


def test_a_wait_rides_over_retryable_provider_errors(app):
    """A dropped connection or a busy database during a wait is waited out until the deadline
    (it used to end the wait at once); a permanent error still ends it."""
    from duroxide_sim.errors import ProviderError

    world = app
    world.client.start_orchestration("done", "Echoer", 1)
    world.run()
    real = world.provider.read_status
    failures = iter([ProviderError("read_status: connection lost", operation="read_status", retryable=True)] * 2)

    def flaky(instance):
        err = next(failures, None)
        if err is not None:
            raise err
        return real(instance)

    world.provider.read_status = flaky
    assert world.client.wait_for_orchestration("done", 60_000).output == 1
    world.provider.read_status = lambda instance: (_ for _ in ()).throw(
        ProviderError("read_status: broken", operation="read_status", retryable=False))
    with pytest.raises(ProviderError, match="broken"):
        world.client.wait_for_orchestration("done", 60_000)


@pytest.mark.parametrize("make", ["memory", "sqlite"])
def test_orchestration_stats_count_queued_messages_kv_and_history(make, tmp_path):
    """get_orchestration_stats: duroxide-python's fields, with attribute and mapping access."""
    from duroxide_sim import Client, InMemoryProvider, SqliteProvider
    from duroxide_sim.sim import SimClock

    clock = SimClock()
    provider = InMemoryProvider(clock) if make == "memory" else SqliteProvider.open(tmp_path / "s.db", clock=clock)
    client = Client(provider, clock=clock, sleep=lambda ms: None)
    client.start_orchestration("q", "Never", 1)  # nothing runs it: its messages stay queued
    client.raise_event("q", "e", {"x": 1})
    client.enqueue_event("q", "box", 2)
    client.start_orchestration("other", "Never", 1)
    stats = client.get_orchestration_stats("q")
    assert stats.queue_pending_count == 3 and stats["queue_pending_count"] == 3
    assert (stats.history_event_count, stats.history_size_bytes) == (0, 0)
    assert (stats.kv_user_key_count, stats.kv_total_value_bytes) == (0, 0)
    assert stats.status == "NotFound" and dict(stats)["instance_id"] == "q"
    getattr(provider, "close", lambda: None)()


@pytest.mark.parametrize("instance", ["sub::x", "a::sub::b", "p::sub::2"])
def test_root_ids_with_the_reserved_sub_marker_are_refused(app, instance):
    """Auto child ids are ``{parent}::sub::{n}``: a client start of an id that starts with
    ``sub::`` or contains ``::sub::`` could take a child's place, and duroxide-python refuses it
    ("Invalid input: instance id ... uses the reserved sub-orchestration marker 'sub::'").
    Ids that only look alike are fine."""
    world = app
    with pytest.raises(InvalidInputError, match="reserved sub-orchestration marker 'sub::'"):
        world.client.start_orchestration(instance, "Waiter")
    assert world.client.get_status(instance).status == "NotFound"
    for fine in ("xsub::y", "a::sub:b", "a:sub::b", "SUB::x"):
        world.client.start_orchestration(fine, "Waiter")
        world.run()
        assert world.client.get_status(fine).status == "Running", fine
