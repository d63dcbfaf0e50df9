"""SqliteProvider's production fast paths: ack-and-fetch-next in one transaction, the one writer
connection, the bounded history cache and the per-instance commit listener.

The plain Provider contract is covered by the conformance suite; these tests pin what the
combined calls add: the ack part behaves exactly like the plain ack, the fetch part like the plain
fetch, and a failure in the fetch part never undoes the ack.
"""

from __future__ import annotations

import pytest

from duroxide_sim.errors import LockLostError, ProviderError
from duroxide_sim.providers import sqlite as sqlite_mod
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.testing.conformance import (
    LOCK, ConformanceClock, act, act_done, completed_ev, create, fetch, meta, start_item, started, timer_created,
    wfetch,
)


@pytest.fixture
def provider(tmp_path):
    p = SqliteProvider.open(tmp_path / "chained.db", clock=ConformanceClock())
    yield p
    if not p._closed:
        p._check()
        p.close()


def _ack_fetch(p, item, delta=(), worker=(), orch=(), md=None):
    return p.ack_orchestration_item_and_fetch(
        item.lock_token, item.execution_id, list(delta), list(worker), list(orch), md or meta(), [],
        lock_timeout_ms=LOCK)


def test_ack_and_fetch_commits_the_turn_and_locks_the_next_instance(provider):
    p = provider
    p.enqueue_for_orchestrator(start_item("a"))
    p.enqueue_for_orchestrator(start_item("b"))
    first = fetch(p)
    assert first.instance == "a"
    nxt = _ack_fetch(p, first, [started("a")], worker=[act("a", 2)])
    assert nxt is not None and nxt.instance == "b" and nxt.attempt_count == 1
    assert [type(e).__name__ for e in p.read("a")] == ["OrchestrationStarted"]
    assert fetch(p) is None  # b is locked by the chained fetch, a has nothing visible
    assert wfetch(p).item.id == 2
    p.ack_orchestration_item(nxt.lock_token, nxt.execution_id, [started("b")], [], [], meta(), [])
    assert p.read("b") == [started("b")]


def test_ack_and_fetch_returns_none_when_nothing_is_visible(provider):
    p = provider
    p.enqueue_for_orchestrator(start_item("a"))
    assert _ack_fetch(p, fetch(p), [started("a")]) is None
    assert p.read("a") == [started("a")]


def test_ack_part_errors_are_the_plain_acks(provider):
    p = provider
    item = create(p, "a")
    with pytest.raises(LockLostError):
        _ack_fetch(p, item, [completed_ev("a", 2)])  # the lock was released by create's ack
    p.enqueue_for_orchestrator(act_done("a", 5))
    item = fetch(p)
    with pytest.raises(ProviderError, match="duplicate event_id 1"):
        _ack_fetch(p, item, [started("a")])
    assert p.read("a") == [started("a")]  # nothing kept, lock still held
    p.abandon_orchestration_item(item.lock_token, None, True)


def test_a_failing_fetch_part_never_undoes_the_ack(provider, monkeypatch):
    p = provider
    p.enqueue_for_orchestrator(start_item("a"))
    p.enqueue_for_orchestrator(start_item("b"))
    item = fetch(p)

    def broken(*args, **kwargs):
        raise ProviderError("fetch_orchestration_item: unreadable queued work item", operation="fetch")

    monkeypatch.setattr(p, "_fetch_orch", broken)
    assert _ack_fetch(p, item, [started("a")]) is None
    monkeypatch.undo()
    assert p.read("a") == [started("a")]  # the ack committed
    assert fetch(p).instance == "b"  # and the failed fetch left no lock behind


def test_subclass_overriding_the_plain_calls_still_sees_every_ack_and_fetch(tmp_path):
    calls: list[str] = []

    class Logged(SqliteProvider):
        def ack_orchestration_item(self, *args, **kwargs):
            calls.append("ack")
            return super().ack_orchestration_item(*args, **kwargs)

        def fetch_work_item(self, *args, **kwargs):
            calls.append("wfetch")
            return super().fetch_work_item(*args, **kwargs)

    p = Logged.open(tmp_path / "logged.db", clock=ConformanceClock())
    p.enqueue_for_orchestrator(start_item("a"))
    p.enqueue_for_orchestrator(start_item("b"))
    nxt = _ack_fetch(p, fetch(p), [started("a")], worker=[act("a", 2), act("a", 3)])
    assert calls == ["ack"] and nxt.instance == "b"
    lease = wfetch(p)
    follow = p.ack_work_item_and_fetch(lease.lock_token, act_done("a", 2), lock_timeout_ms=LOCK)
    assert calls == ["ack", "wfetch", "wfetch"] and follow.item.id == 3
    p.close()


def test_ack_work_and_fetch(provider):
    p = provider
    create(p, "a", worker=[act("a", 2), act("a", 3)])
    lease = wfetch(p)
    follow = p.ack_work_item_and_fetch(lease.lock_token, act_done("a", 2), lock_timeout_ms=LOCK)
    assert follow is not None and follow.item.id == 3 and follow.attempt_count == 1
    last = p.ack_work_item_and_fetch(follow.lock_token, act_done("a", 3), lock_timeout_ms=LOCK)
    assert last is None
    item = fetch(p)
    assert [m.id for m in item.messages] == [2, 3]  # both completions were queued
    with pytest.raises(LockLostError):
        p.ack_work_item_and_fetch(lease.lock_token, act_done("a", 2), lock_timeout_ms=LOCK)


def test_commit_listener_names_the_instance(provider):
    p = provider
    seen: list[str] = []
    p.add_commit_listener(seen.append)
    p.enqueue_for_orchestrator(start_item("a"))
    p.enqueue_for_orchestrator(start_item("b"))
    nxt = _ack_fetch(p, fetch(p), [started("a")])
    p.ack_orchestration_item(nxt.lock_token, nxt.execution_id, [started("b")], [], [], meta(), [])
    assert seen == ["a", "b"]


def test_terminal_instances_leave_the_history_cache(provider):
    p = provider
    item = create(p, "a", extra=[])
    p.enqueue_for_orchestrator(act_done("a", 9))
    item = fetch(p)
    assert "a" in p._hcache
    p.ack_orchestration_item(item.lock_token, item.execution_id, [completed_ev("a", 2)], [], [],
                             meta(status="Completed", output="done"), [])
    assert "a" not in p._hcache
    assert [type(e).__name__ for e in p.read("a")] == ["OrchestrationStarted", "OrchestrationCompleted"]


def test_an_ack_that_fetches_its_own_instance_again_keeps_its_decoded_history(provider, monkeypatch):
    """The fetch an ack chains in its own transaction reads the turn's new events into the history
    cache; the ack must not then drop that entry as if an id below its tail had been filled in
    later (it did: every later fetch of an instance whose ack fetched it again decoded its whole
    history anew - W3's fan-in of 1,000 activities took 12x as long)."""
    p = provider
    p.enqueue_for_orchestrator(start_item("a"))
    item = fetch(p)
    p.enqueue_for_orchestrator(act_done("a", 2))  # queued while "a" is locked: the chained fetch takes it
    nxt = _ack_fetch(p, item, [started("a"), timer_created("a", 2), timer_created("a", 3)])
    assert nxt is not None and nxt.instance == "a" and [e.event_id for e in nxt.history] == [1, 2, 3]
    assert [e.event_id for e in p._hcache["a"][2]] == [1, 2, 3]
    decoded_after: list[int] = []
    real = p._decode_rows
    monkeypatch.setattr(p, "_decode_rows", lambda db, inst, exe, after: decoded_after.append(after) or real(db, inst, exe, after))
    p.enqueue_for_orchestrator(act_done("a", 3))
    again = _ack_fetch(p, nxt, [completed_ev("a", 4)])
    assert again is not None and [e.event_id for e in again.history] == [1, 2, 3, 4]
    assert decoded_after == [3]  # only the rows after the cached tail were read


def test_short_histories_are_cached_only_while_few(provider, monkeypatch):
    p = provider
    monkeypatch.setattr(sqlite_mod, "_FEW_HISTORIES", 2)
    for name in ("a", "b", "c"):
        create(p, name)
    for name in ("a", "b", "c"):
        p.enqueue_for_orchestrator(act_done(name, 9))
    for name in ("a", "b", "c"):
        item = fetch(p)
        assert item.instance == name and item.history == (started(name),)
        p.abandon_orchestration_item(item.lock_token, 60_000, True)  # hidden: the next fetch takes another
    assert sorted(p._hcache) == ["a", "b"]
    assert p.read("c") == [started("c")]  # uncached histories are decoded from the rows


def test_writes_share_one_connection_and_reads_use_their_own(provider):
    p = provider
    create(p, "a")
    assert p._conn("w", True) is p._shared
    assert p._conn("r") is not p._shared
