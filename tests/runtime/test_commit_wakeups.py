"""A commit wakes only the clients waiting for its instance (found by ``bench/instance_scaling.py``:
with the in-memory provider every commit woke every waiting client, 2 ms per ack with 10,000
waiting; each then re-read its status). The in-memory provider now names the instance to the
waiters, as SQLite and PostgreSQL do."""

from __future__ import annotations

import pytest

from duroxide_sim import SqliteProvider
from duroxide_sim.core.events import OrchestrationStarted, StartOrchestration
from duroxide_sim.providers.base import ExecutionMetadata
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.runtime.realtime import CommitWaiter
from duroxide_sim.sim import SimClock


def _first_turn(provider, clock, instance):
    provider.enqueue_for_orchestrator(StartOrchestration(instance=instance, orchestration="O", input="null"), None)
    item = provider.fetch_orchestration_item(30_000)
    started = OrchestrationStarted(event_id=1, instance_id=instance, execution_id=1, timestamp_ms=clock.now_ms(),
                                   name="O", version="1.0.0", input="null")
    provider.ack_orchestration_item(item.lock_token, 1, [started], [], [],
                                    ExecutionMetadata(orchestration_name="O", orchestration_version="1.0.0"))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_commit_wakes_the_waiters_of_its_instance_only(kind, tmp_path):
    clock = SimClock()
    provider = InMemoryProvider(clock) if kind == "memory" else SqliteProvider.open(tmp_path / "w.db", clock=clock)
    waiter = CommitWaiter(provider)
    signal = waiter._event("a")  # this thread now waits for instance "a"
    _first_turn(provider, clock, "b")
    assert not signal.is_set(), "a commit of another instance woke the waiter"
    _first_turn(provider, clock, "a")
    assert signal.is_set()
    waiter.done()
