"""A client waiting for an instance's end is woken by the ack that ends it, not by every turn.

``wait_for_orchestration`` can only be satisfied by a Completed or Failed status. The in-process
providers report such acks apart (``add_final_commit_listener``), and the client's
``CommitWaiter`` wakes an end-waiter only for them; waiters that want every change
(``wait_for_status_change``, ``wait_for_kv_value``) still wake on every ack of their instance.
Before, a continue-as-new chain of 200 executions woke its waiter ~400 times, each time for a
status read that found the instance still running.
"""

from __future__ import annotations

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.runtime.realtime import CommitWaiter
from duroxide_sim.testing.conformance import ConformanceClock, act_done, create, fetch, meta, start_item, started


class _Fake:
    """A provider that only records the listeners a waiter registers."""

    def __init__(self, final: bool) -> None:
        self.commit: list = []
        self.final: list = []
        if final:
            self.add_final_commit_listener = self.final.append

    def add_commit_listener(self, cb) -> None:
        self.commit.append(cb)


def test_an_end_waiter_wakes_only_for_the_end_and_a_change_waiter_for_every_turn():
    fake = _Fake(final=True)
    waiter = CommitWaiter(fake)
    assert len(fake.commit) == 1 and len(fake.final) == 1
    end = waiter._event("a", final_only=True)
    fake.commit[0]("a")  # a turn of "a" that did not end it
    assert not end.is_set()
    fake.final[0]("b")  # another instance ended
    assert not end.is_set()
    fake.final[0]("a")
    assert end.is_set()
    waiter.wait_for(3_600_000, "a", True)  # pending: returns at once and consumes it
    assert not end.is_set()
    # The same thread now waits for every change of "a": a plain turn wakes it.
    change = waiter._event("a")
    assert change is end
    fake.commit[0]("a")
    assert change.is_set()
    waiter.done()
    assert waiter._waiters == {}


def test_without_end_reports_an_end_waiter_wakes_for_every_commit_of_its_instance():
    fake = _Fake(final=False)
    waiter = CommitWaiter(fake)
    end = waiter._event("a", final_only=True)
    fake.commit[0]("b")
    assert not end.is_set()
    fake.commit[0]("a")  # the provider cannot tell an end apart: woken, to look
    assert end.is_set()


def _provider(kind: str, tmp_path):
    if kind == "sqlite":
        return SqliteProvider.open(tmp_path / "d.db", clock=ConformanceClock())
    return InMemoryProvider(clock=ConformanceClock())


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_providers_report_an_end_only_for_completed_or_failed_acks(kind, tmp_path):
    p = _provider(kind, tmp_path)
    try:
        turns: list[str] = []
        ends: list[str] = []
        p.add_commit_listener(turns.append)
        on_end = ends.append  # (one bound method object: removal matches by identity)
        p.add_final_commit_listener(on_end)
        create(p, "a")  # a first turn: running
        create(p, "b")
        for inst, status in (("a", "ContinuedAsNew"), ("b", "Failed")):
            p.enqueue_for_orchestrator(act_done(inst, 9))
            item = fetch(p)
            p.ack_orchestration_item(item.lock_token, item.execution_id, [], [], [],
                                     meta(status=status, output="x"), [])
        assert turns == ["a", "b", "a", "b"] and ends == ["b"]
        # a continued-as-new execution starts again; its completion is an end
        p.enqueue_for_orchestrator(start_item("c"))
        item = fetch(p)
        p.ack_orchestration_item(item.lock_token, item.execution_id, [started("c")], [], [],
                                 meta(status="Completed", output="1"), [])
        assert ends == ["b", "c"]
        p.remove_final_commit_listener(on_end)
        p.enqueue_for_orchestrator(start_item("d"))
        item = fetch(p)
        p.ack_orchestration_item(item.lock_token, item.execution_id, [started("d")], [], [],
                                 meta(status="Completed", output="1"), [])
        assert ends == ["b", "c"] and turns[-1] == "d"
    finally:
        if kind == "sqlite":
            p.close()


def test_waiting_for_a_continue_as_new_chain_reads_its_status_a_few_times_not_per_turn(tmp_path):
    """200 executions (400 turns) on a SQLite file, waited for by a client in the same process.
    Each status read that finds the chain running is a wasted wake-up; the waiter's own polls
    (5 ms doubling to 100 ms) still read a few times. Planted bug (the waiter woken by every
    turn): ~one read per turn."""
    executions = 200

    def inc(ctx, x):
        return x + 1

    def chain(ctx, n):
        m = yield ctx.schedule_activity("inc", n)
        if m >= executions:
            return m
        yield ctx.continue_as_new(m)

    provider = SqliteProvider.open(tmp_path / "chain.db")
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    rt.register_activity("inc", inc)
    rt.register_orchestration("Chain", chain)
    rt.start()
    try:
        client = Client(provider)
        reads: list[str] = []
        real = provider.read_status

        def counted(instance):
            reads.append(instance)
            return real(instance)

        provider.read_status = counted
        client.start_orchestration("c", "Chain", 0)
        result = client.wait_for_orchestration("c", 120_000)
        assert result.status == "Completed" and result.output == executions
        # the polls alone: 5, 10, 20, 40, 80 ms, then one per 100 ms of the chain's run
        assert len(reads) < 60, f"{len(reads)} status reads while waiting for {2 * executions} turns"
    finally:
        rt.shutdown(5_000)
        provider.close()
