"""``queued_work()``: everything still queued, by instance - what the simulator's liveness
checker asks when a run stops with work left (tests/sim/test_liveness_without_quiescence.py).

Same answers from the in-memory, SQLite and PostgreSQL providers: orchestrator messages whether
visible or delayed, locked or not, parked orphans included; activity items whether queued or in
flight; each instance's orchestrator messages first, then its activity items, in queue order;
nothing for an instance once its last item is acked.
"""

from __future__ import annotations

import pytest

from duroxide_sim.core.events import ActivityCompletedMsg, ExternalRaised, TimerFiredMsg
from duroxide_sim.testing.conformance import (
    act, act_done, ack, create, fetch, meta, wfetch,
)


@pytest.fixture
def pair(each_provider):
    return each_provider


def _kinds(queued):
    return {inst: [(type(i).__name__, getattr(i, "id", getattr(i, "name", None))) for i in items]
            for inst, items in queued.items()}


def test_queued_work_lists_messages_and_activities_by_instance(pair) -> None:
    p, clock = pair
    assert p.queued_work() == {}
    # "a": two activities scheduled, a timer due in an hour, an event queued
    create(p, "a", worker=[act("a", 2), act("a", 3)])
    p.enqueue_for_orchestrator(TimerFiredMsg(instance="a", execution_id=1, id=4, fire_at_ms=clock.now_ms() + 3_600_000),
                               delay_ms=3_600_000)
    p.enqueue_for_orchestrator(ExternalRaised(instance="a", name="go", data="1"))
    # "ghost": an event for an instance that never started (parked by the next fetch)
    p.enqueue_for_orchestrator(ExternalRaised(instance="ghost", name="go", data="2"))
    lease = wfetch(p)  # activity 2 in flight, activity 3 queued
    assert lease is not None and lease.item.id == 2
    assert _kinds(p.queued_work()) == {
        "a": [("TimerFiredMsg", 4), ("ExternalRaised", "go"), ("ActivityExecute", 2), ("ActivityExecute", 3)],
        "ghost": [("ExternalRaised", "go")],
    }

    item = fetch(p)  # a's event is fetched (locked); the ghost's is parked by some fetch
    assert item is not None and item.instance == "a"
    fetch(p)
    assert _kinds(p.queued_work())["a"][:2] == [("TimerFiredMsg", 4), ("ExternalRaised", "go")]
    assert _kinds(p.queued_work())["ghost"] == [("ExternalRaised", "go")]
    ack(p, item, [], md=meta())
    p.ack_work_item(lease.lock_token, act_done("a", 2))
    got = p.queued_work()
    assert _kinds(got)["a"] == [("TimerFiredMsg", 4), ("ActivityCompletedMsg", 2), ("ActivityExecute", 3)]
    assert isinstance(got["a"][1], ActivityCompletedMsg) and got["a"][1].result == "ok"

    # consume it all: the completions, then (an hour later) the timer: nothing is listed
    ack(p, fetch(p), [], md=meta())
    lease = wfetch(p)
    p.ack_work_item(lease.lock_token, act_done("a", 3))
    assert _kinds(p.queued_work())["a"] == [("TimerFiredMsg", 4), ("ActivityCompletedMsg", 3)]
    ack(p, fetch(p), [], md=meta())
    assert _kinds(p.queued_work())["a"] == [("TimerFiredMsg", 4)]
    clock.advance(3_600_000)
    item = fetch(p)
    assert item is not None and item.instance == "a"
    ack(p, item, [], md=meta())
    # (the ghost's parked event expired meanwhile: orphans are kept ORPHAN_RETENTION_MS, 5 minutes)
    assert p.queued_work() == {}
