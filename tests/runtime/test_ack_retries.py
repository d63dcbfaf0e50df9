"""SPEC §3.1 step 10: how the orchestration dispatcher handles a failing ack.

A retryable failure is retried up to 5 times, waiting 10 ms * 2**n before retry n (the wait is
injected: the simulated clock moves forward), then the item is abandoned for 50 ms; a
non-retryable failure fails the instance with an infrastructure error committed on the history
the turn was fetched with (the turn's own events are discarded).
"""

from __future__ import annotations

from duroxide_sim import ProviderError, Runtime, RuntimeOptions
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.runtime.client import Client
from duroxide_sim.sim.clock import SequentialIds, SimClock


class FlakyAcks(InMemoryProvider):
    """Fails the next ``fail`` orchestration acks with a ProviderError (nothing stored)."""

    def __init__(self, clock: SimClock) -> None:
        super().__init__(clock)
        self.fail = 0
        self.retryable = True
        self.attempts = 0
        self.abandons: list[int | None] = []

    def ack_orchestration_item(self, *args, **kwargs):
        self.attempts += 1
        if self.fail > 0:
            self.fail -= 1
            raise ProviderError("ack_orchestration_item: disk I/O error (injected)", operation="ack_orchestration_item",
                                retryable=self.retryable)
        return super().ack_orchestration_item(*args, **kwargs)

    def abandon_orchestration_item(self, lock_token, delay_ms=None, ignore_attempt=False):
        self.abandons.append(delay_ms)
        return super().abandon_orchestration_item(lock_token, delay_ms, ignore_attempt)


def _setup():
    clock = SimClock()
    provider = FlakyAcks(clock)
    waits: list[int] = []

    def sleep(ms: int) -> None:
        waits.append(ms)
        clock.advance(ms)

    rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(), sleep=sleep)
    rt.register_activity("inc", lambda ctx, x: x + 1)

    @rt.register_orchestration("One")
    def one(ctx, x):
        return (yield ctx.schedule_activity("inc", x))

    client = Client(provider, clock=clock, sleep=lambda ms: None)
    client.start_orchestration("i1", "One", 1)
    return clock, provider, rt, client, waits


def _finish(clock, rt):
    for _ in range(100):
        did = rt.orchestration_dispatcher.step()
        did = rt.worker_dispatcher.step() or did
        if not did:
            clock.advance(100)  # past any abandon delay


def test_retryable_ack_failures_are_retried_with_doubling_waits_and_then_commit():
    clock, provider, rt, client, waits = _setup()
    provider.fail = 3
    t0 = clock.now_ms()
    assert rt.orchestration_dispatcher.step()
    assert waits == [10, 20, 40]
    assert clock.now_ms() - t0 == 70  # simulated time passed during the back-off
    assert provider.attempts == 4 and provider.abandons == []
    assert [type(e).__name__ for e in provider.read("i1")] == ["OrchestrationStarted", "ActivityScheduled"]
    _finish(clock, rt)
    assert client.get_status("i1").output == 2


def test_an_ack_failing_six_times_is_abandoned_for_50_ms_and_the_turn_runs_again():
    clock, provider, rt, client, waits = _setup()
    provider.fail = 6
    assert rt.orchestration_dispatcher.step()
    assert waits == [10, 20, 40, 80, 160]  # five retries, then give up
    assert provider.attempts == 6
    assert provider.abandons == [50]
    assert provider.read("i1") == []  # nothing of the turn was stored
    assert client.get_status("i1").status == "NotFound"  # its first turn never committed
    _finish(clock, rt)
    assert client.get_status("i1").output == 2


def test_a_permanent_ack_failure_fails_the_instance_on_its_fetched_history():
    clock, provider, rt, client, waits = _setup()
    rt.orchestration_dispatcher.step()  # first turn commits: Started + ActivityScheduled
    rt.worker_dispatcher.step()  # the activity completes
    provider.fail, provider.retryable = 1, False
    assert rt.orchestration_dispatcher.step()
    assert waits == []  # not retried
    status = client.get_status("i1")
    assert status.status == "Failed"
    assert "disk I/O error" in status.error
    kinds = [type(e).__name__ for e in provider.read("i1")]
    # The turn's ActivityCompleted / OrchestrationCompleted were discarded: the failure is
    # recorded right after the history the turn was fetched with.
    assert kinds == ["OrchestrationStarted", "ActivityScheduled", "OrchestrationFailed"]


def test_a_permanent_ack_failure_of_a_first_turn_creates_the_instance_failed_with_the_cause():
    """A first turn has no fetched history. It used to be abandoned and re-run into the same
    refusal until poison ("exceeded N attempts"), which hid the store's reason (PostgreSQL
    refusing a KV key over its index limit, say). Now the instance is created failed with its
    OrchestrationStarted and the error."""
    clock, provider, rt, client, waits = _setup()
    provider.fail, provider.retryable = 1, False
    assert rt.orchestration_dispatcher.step()
    assert waits == [] and provider.abandons == []
    status = client.get_status("i1")
    assert status.status == "Failed"
    assert "disk I/O error" in status.error and "poison" not in status.error
    assert [type(e).__name__ for e in provider.read("i1")] == ["OrchestrationStarted", "OrchestrationFailed"]


def test_a_permanent_ack_failure_of_a_continue_as_new_start_fails_the_new_execution():
    """The first turn of the execution a continue-as-new starts is fetched with the previous
    execution's history. A permanent ack failure there used to append OrchestrationFailed to
    that previous (already continued-as-new) execution; it now creates the new execution, failed
    with the reason, and leaves the previous one as it was."""
    clock, provider, rt, client, waits = _setup()

    @rt.register_orchestration("Again")
    def again(ctx, n):
        if n == 0:
            return (yield ctx.continue_as_new(1))
        return n

    client.start_orchestration("c", "Again", 0)
    for _ in range(3):  # i1's first turn and c's first turn (which continues as new)
        if provider.read_with_execution("c", 1):
            break
        rt.orchestration_dispatcher.step()
    assert [type(e).__name__ for e in provider.read_with_execution("c", 1)][-1] == "OrchestrationContinuedAsNew"
    provider.fail, provider.retryable = 1, False
    while rt.orchestration_dispatcher.step():
        if provider.latest_execution_id("c") == 2:
            break
    first = [type(e).__name__ for e in provider.read_with_execution("c", 1)]
    assert first[-1] == "OrchestrationContinuedAsNew" and first.count("OrchestrationFailed") == 0
    assert [type(e).__name__ for e in provider.read_with_execution("c", 2)] == ["OrchestrationStarted", "OrchestrationFailed"]
    status = client.get_status("c")
    assert status.status == "Failed" and "disk I/O error" in status.error
