"""The production driver's hand-offs (runtime/realtime.py): wake ONE idle thread per report,
never lose a report, one poller per queue, per-instance client wake-ups, quiet maintenance
failures, and prefetched items (ack-and-fetch) given back on stop. No timed assertions: the
waits below either return at once or are never reached."""

from __future__ import annotations

import logging
import threading

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.runtime import dispatchers
from duroxide_sim.runtime.realtime import CommitWaiter, Signal, ThreadDriver, _Lane


def test_a_signal_set_before_the_wait_is_kept_and_consumed_once():
    sig = Signal()
    assert not sig.is_set()
    assert sig.wait(0) is False  # nothing pending: times out
    sig.set()
    sig.set()  # a second set while one is pending is the same single wake-up (no error)
    assert sig.is_set()
    assert sig.wait(3600.0) is True  # returns at once: the pending wake-up
    assert not sig.is_set() and sig.wait(0) is False  # consumed, and only once
    sig.set()
    sig.clear()
    assert not sig.is_set() and sig.wait(0) is False


def test_a_signal_set_by_another_thread_wakes_a_blocked_wait():
    sig, woke = Signal(), []
    t = threading.Thread(target=lambda: woke.append(sig.wait(3600.0)))
    t.start()
    sig.set()
    t.join(60)
    assert woke == [True] and not sig.is_set()


def test_a_report_wakes_exactly_one_idle_thread():
    lane = _Lane()
    a, b = Signal(), Signal()
    lane._idle.extend([a, b])
    lane.wake()
    assert [a.is_set(), b.is_set()].count(True) == 1
    lane.wake_helper()
    assert a.is_set() and b.is_set()
    lane.wake_helper()  # nobody idle: no mark (the caller is busy and looks again anyway)
    assert lane._pending is False


def test_a_report_with_nobody_idle_is_kept_for_the_next_thread_to_park():
    lane = _Lane()
    lane.wake()
    assert lane._pending
    lane.park(Signal(), 3600.0)  # returns at once: a report arrived since the last look
    assert not lane._pending and lane._idle == []


def test_stop_wakes_every_parked_thread():
    lane = _Lane()
    events = [Signal() for _ in range(3)]
    lane._idle.extend(events)
    lane.wake_all()
    assert all(e.is_set() for e in events) and lane._idle == []


def test_commit_waiter_wakes_only_for_the_awaited_instance():
    listeners = []

    class Fake:
        def add_commit_listener(self, cb):
            listeners.append(cb)

    waiter = CommitWaiter(Fake())
    event = waiter._event("a")
    listeners[0]("b")
    assert not event.is_set()
    listeners[0]("a")
    assert event.is_set()
    waiter.wait_for(3600_000, "a")  # already set: returns at once, then clears
    assert not event.is_set()
    waiter.done()
    assert waiter._waiters == {}


def test_commit_waiter_without_instance_reports_wakes_on_every_commit():
    listeners = []

    class Fake:
        def add_wakeup_listener(self, cb):
            listeners.append(cb)

    waiter = CommitWaiter(Fake())
    event = waiter._event("a")
    listeners[0]("worker")
    assert not event.is_set()
    listeners[0]("committed")
    assert event.is_set()


def test_maintenance_failures_are_logged_once_per_outage(caplog):
    calls = {"n": 0}
    outcomes = [False, False, False, True, False, True]  # False = raises

    def maintenance():
        i = calls["n"]
        calls["n"] += 1
        if i + 1 >= len(outcomes):
            driver._stop.set()
        if not outcomes[i]:
            raise RuntimeError("provider is down")

    driver = ThreadDriver(orchestration_step=lambda c: False, worker_step=lambda c: False, orchestration_threads=0,
                          worker_threads=0, poll_interval_ms=5, maintenance=maintenance, maintenance_interval_ms=0)
    with caplog.at_level(logging.DEBUG, logger="duroxide_sim.runtime"):
        driver._maintain()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    recovered = [r for r in caplog.records if "works again" in r.getMessage()]
    assert calls["n"] == len(outcomes)
    assert len(errors) == 2 and len(recovered) == 2  # two outages, each reported once


def test_a_prefetched_item_is_given_back_when_the_thread_stops(tmp_path):
    provider = SqliteProvider.open(tmp_path / "stop.db")
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    rt.register_activity("inc", lambda ctx, x: x + 1)
    rt.register_orchestration("Inc", lambda ctx, x: (yield ctx.schedule_activity("inc", x)))
    client = Client(provider)
    client.start_orchestration("a", "Inc", 1)
    client.start_orchestration("b", "Inc", 1)
    # Drive the dispatcher by hand as the driver thread does: the first step's ack fetches "b".
    carry: dict = {}
    assert rt.orchestration_dispatcher.step(carry)
    assert carry["item"].instance == "b" and carry.get("backlog")
    rt.orchestration_dispatcher.release(carry)
    assert "item" not in carry
    item = provider.fetch_orchestration_item(30_000)
    assert item.instance == "b" and item.attempt_count == 1  # unlocked, the attempt not counted
    provider.abandon_orchestration_item(item.lock_token, None, True)
    rt.start()
    assert client.wait_for_orchestration("a", 60_000).output == 2
    assert client.wait_for_orchestration("b", 60_000).output == 2
    rt.shutdown()
    provider.close()


def test_engine_cache_keeps_few_short_histories(tmp_path, monkeypatch):
    monkeypatch.setattr(dispatchers, "_FEW_ENGINES", 2)
    provider = SqliteProvider.open(tmp_path / "cache.db")
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    rt.register_activity("inc", lambda ctx, x: x + 1)

    def chain(ctx, x):
        for _ in range(3):
            x = yield ctx.schedule_activity("inc", x)
        return x

    rt.register_orchestration("Chain", chain)
    client = Client(provider)
    for i in range(6):
        client.start_orchestration(f"c{i}", "Chain", 0)
    # Run the first turn of every instance: each schedules an activity and stays running.
    d = rt.orchestration_dispatcher
    while d.step():
        pass
    assert len(d.cache) == 2
    rt.start()
    assert [client.wait_for_orchestration(f"c{i}", 60_000).output for i in range(6)] == [3] * 6
    rt.shutdown()
    provider.close()
