"""User code and arguments that used to break the runtime instead of failing cleanly.

Found by probing the API with wrong values: a timer too long for the providers' 64-bit time
columns (every ack failed, the instance hung until poisoned), ``sys.exit()`` in an activity (it
ended the worker thread, and on redelivery every other one), sub-orchestration ids no client
could address (NUL), cattrs' summary line instead of the field that did not match, and Ctrl-C
converted into an orchestration failure (a simulation runs user code in the main thread).
"""

from __future__ import annotations

import threading

import attrs
import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.core import codec
from duroxide_sim.core.context import MAX_INSTANCE_ID_BYTES, MAX_TIMER_DELAY_MS, Backoff, RetryPolicy
from duroxide_sim.core.events import StartOrchestration
from duroxide_sim.core.registry import Registry
from duroxide_sim.core.replay import TurnInput, execute_turn
from duroxide_sim.errors import SerializationError
from duroxide_sim.runtime.realtime import ThreadDriver


def _run(world, name, fn, instance="i"):
    world.runtime.register_orchestration(name, fn)
    world.client.start_orchestration(instance, name, 1)
    world.run()
    return world.client.get_status(instance)


def test_a_timer_past_the_storable_time_fails_the_orchestration_at_its_yield(world):
    def too_long(ctx, _):
        yield ctx.schedule_timer(MAX_TIMER_DELAY_MS + 1)

    st = _run(world, "TooLong", too_long)
    assert st.status == "Failed" and "over the maximum" in st.error and "schedule_timer" in st.error


def test_the_longest_timer_is_stored_by_sqlite(tmp_path):
    """MAX_TIMER_DELAY_MS from now still fits SQLite's INTEGER (the turn commits)."""
    provider = SqliteProvider.open(tmp_path / "t.db")
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=2))

    def longest(ctx, _):
        yield ctx.schedule_timer(MAX_TIMER_DELAY_MS)

    rt.register_orchestration("Longest", longest)
    client = Client(provider)
    client.start_orchestration("l", "Longest", 1)
    item = rt.orchestration_dispatcher.fetch()
    assert rt.orchestration_dispatcher.process(item) is not None  # committed
    assert [e["kind"] for e in client.read_execution_history("l", 1)] == ["OrchestrationStarted", "TimerCreated"]
    provider.close()


@pytest.mark.parametrize("make", [
    lambda: Backoff.fixed(MAX_TIMER_DELAY_MS + 1),
    lambda: Backoff("exponential", -1),
    lambda: Backoff("sometimes"),
    lambda: Backoff("exponential", 100, float("nan")),
    lambda: Backoff("linear", 100, 1.0, "30000"),
    lambda: RetryPolicy(3, Backoff(), MAX_TIMER_DELAY_MS + 1),
    lambda: RetryPolicy(True),
    lambda: RetryPolicy(3, "fixed"),
])
def test_retry_policies_with_impossible_values_are_refused(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("bad", ["a\x00b", "x" * (MAX_INSTANCE_ID_BYTES + 1), "é" * (MAX_INSTANCE_ID_BYTES // 2 + 1)])
def test_sub_orchestration_and_detached_ids_follow_the_client_id_rules(world, bad):
    world.runtime.register_orchestration("Child", lambda ctx, x: x)

    def sub(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("Child", bad, 1))

    def detached(ctx, _):
        yield ctx.start_orchestration("Child", bad, 1)

    for name, fn in (("Sub", sub), ("Detached", detached)):
        st = _run(world, name, fn, instance=name.lower())
        assert st.status == "Failed" and "instance id" in st.error, st
    assert sorted(world.client.list_all_instances()) == ["detached", "sub"]  # no child was created


def test_sys_exit_in_an_activity_fails_the_activity_and_the_worker_lives_on(tmp_path):
    provider = SqliteProvider.open(tmp_path / "w.db")
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=2, worker_concurrency=1))

    def exits(ctx, code):
        raise SystemExit(code)

    rt.register_activity("Exit", exits)
    rt.register_activity("Inc", lambda ctx, x: x + 1)

    def calls(ctx, name):
        try:
            return (yield ctx.schedule_activity(name, 1))
        except Exception as exc:  # noqa: BLE001
            return f"failed: {exc}"

    rt.register_orchestration("Calls", calls)
    client = Client(provider)
    rt.start()
    try:
        client.start_orchestration("exit", "Calls", "Exit")
        first = client.wait_for_orchestration("exit", 30_000)
        # The one worker thread is still there: a later activity runs (this waited forever before).
        client.start_orchestration("inc", "Calls", "Inc")
        second = client.wait_for_orchestration("inc", 30_000)
    finally:
        rt.shutdown()
    assert first.status == "Completed" and "SystemExit: 1" in first.output
    assert (second.status, second.output) == ("Completed", 2)


def test_a_dispatcher_thread_survives_a_step_that_raises_system_exit():
    calls = []
    again = threading.Event()

    def step(carry):
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("from a step")
        again.set()
        return False

    driver = ThreadDriver(orchestration_step=step, worker_step=lambda carry: False, orchestration_threads=1,
                          worker_threads=0, poll_interval_ms=1)
    driver.start()
    try:
        assert again.wait(30)  # the same thread stepped again after the SystemExit
    finally:
        assert driver.stop(30_000)
    assert len(calls) >= 2


def test_ctrl_c_in_orchestration_code_is_not_an_orchestration_failure():
    registry = Registry()

    def interrupted(ctx, _):
        raise KeyboardInterrupt

    registry.add_orchestration("Interrupted", interrupted)
    inp = TurnInput(instance="k", execution_id=1, orchestration_name="Interrupted", version=None, history=(),
                    messages=(StartOrchestration(instance="k", orchestration="Interrupted", input="1"),), now_ms=0)
    with pytest.raises(KeyboardInterrupt):
        execute_turn(inp, registry)


@attrs.define
class _Inp:
    n: int
    tags: list[str]


def test_a_typed_payload_mismatch_names_the_field():
    with pytest.raises(SerializationError, match=r"does not match type _Inp: expected an integer, got a string .x. @ \$\.n"):
        codec.decode_typed('{"n": "x", "tags": []}', _Inp, "input")
    with pytest.raises(SerializationError, match=r"required field missing @ \$\.tags"):
        codec.decode_typed('{"n": 1}', _Inp, "input")
    with pytest.raises(SerializationError, match="expected a JSON object, got str 'zzz'"):
        codec.decode_typed('"zzz"', _Inp, "input")
    assert codec.decode_typed('{"n": 1, "tags": ["a"]}', _Inp) == _Inp(1, ["a"])


def test_a_session_id_longer_than_the_limit_fails_the_orchestration_at_its_yield(world):
    """Every provider keys its sessions by the id; on PostgreSQL a ~3 KB id made every
    session-aware fetch of the whole schema fail. Ids are bounded (MAX_SESSION_ID_BYTES)."""
    from duroxide_sim.core.context import MAX_SESSION_ID_BYTES

    world.runtime.register_activity("Echo", lambda ctx, x: x)

    def on_session(ctx, sid):
        return (yield ctx.schedule_activity_on_session("Echo", 1, sid))

    world.runtime.register_orchestration("OnSession", on_session)
    world.client.start_orchestration("long", "OnSession", "s" * (MAX_SESSION_ID_BYTES + 1))
    world.client.start_orchestration("ok", "OnSession", "s" * MAX_SESSION_ID_BYTES)
    world.run()
    long, ok = world.client.get_status("long"), world.client.get_status("ok")
    assert long.status == "Failed" and f"longer than {MAX_SESSION_ID_BYTES} bytes" in long.error
    assert (ok.status, ok.output) == ("Completed", 1)
