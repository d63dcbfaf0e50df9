"""HistoryView: a fetch hands the turn an O(1) read-only view of the cached, append-only history
instead of a fresh tuple copy, and it behaves like the tuple it replaces."""

from __future__ import annotations

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.providers._shared import HistoryView


def test_view_behaves_like_a_tuple_and_never_changes():
    events = ["a", "b", "c"]
    view = HistoryView(events)
    assert len(view) == 3 and view[0] == "a" and view[-1] == "c" and view[1:] == ("b", "c")
    assert list(view) == events and tuple(view) == ("a", "b", "c")
    assert view == ("a", "b", "c") and ("a", "b", "c") == view and view == ["a", "b", "c"]
    assert view != ("a", "b") and view != ("a", "b", "x")
    assert view + ("d",) == ("a", "b", "c", "d") and ("z",) + view == ("z", "a", "b", "c")
    assert hash(view) == hash(("a", "b", "c")) and repr(view) == repr(("a", "b", "c"))
    assert bool(HistoryView([])) is False and "b" in view and view.index("c") == 2
    events.extend(["d", "e"])  # the provider appends newer events to its cached list ...
    assert len(view) == 3 and view[-1] == "c" and list(view) == ["a", "b", "c"]  # ... the view is unchanged
    with pytest.raises(IndexError):
        view[3]
    with pytest.raises(IndexError):
        view[-4]
    assert HistoryView(events) == ("a", "b", "c", "d", "e")


def test_sqlite_fetches_share_the_cached_history_without_copying(tmp_path):
    provider = SqliteProvider.open(tmp_path / "h.db")
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    seen: list = []

    @rt.register_activity("inc")
    def inc(ctx, x):
        return x + 1

    @rt.register_orchestration("Chain")
    def chain(ctx, n):
        x = 0
        for _ in range(n):
            x = yield ctx.schedule_activity("inc", x)
        return x

    original = provider._load_events

    def spy(*args, **kwargs):
        view = original(*args, **kwargs)
        seen.append((view, len(view), tuple(view)))
        return view

    provider._load_events = spy
    rt.start()
    try:
        client = Client(provider)
        client.start_orchestration("c", "Chain", 30)
        status = client.wait_for_orchestration("c", 20_000)
    finally:
        rt.shutdown()
    assert status.status == "Completed" and status.output == 30
    views = [v for v, n, _ in seen if n > 0]
    assert len(views) >= 10
    assert all(isinstance(v, HistoryView) for v in views)
    # Later fetches appended to the same list; every earlier view still shows what it saw.
    lists: list = []
    for v in views:
        if not any(v._events is known for known in lists):
            lists.append(v._events)
    assert len(lists) < len(views)
    assert all(tuple(v) == snapshot and len(v) == n for v, n, snapshot in seen)


def test_a_reader_never_sees_cached_events_its_snapshot_does_not_hold(tmp_path):
    """The decoded-history cache is shared with the writer, whose group commit appends events
    before its COMMIT; a client read must return only what its own transaction sees."""
    from duroxide_sim.core.events import ExternalEvent

    provider = SqliteProvider.open(tmp_path / "r.db")
    rt = Runtime(provider, RuntimeOptions())

    @rt.register_orchestration("Waits")
    def waits(ctx, _):
        value = yield ctx.wait_for_event("go")
        return value

    client = Client(provider)
    client.start_orchestration("w", "Waits", None)
    while rt.orchestration_dispatcher.step():
        pass
    committed = provider.read("w")
    assert [type(e).__name__ for e in committed] == ["OrchestrationStarted", "ExternalSubscribed"]
    entry = provider._hcache.get("w")
    assert entry is not None, "the read should have cached the decoded history"
    in_flight = ExternalEvent(event_id=3, instance_id="w", execution_id=1, timestamp_ms=0, name="go", data='"x"')
    entry[2].append(in_flight)  # what a group write does before its COMMIT
    assert provider.read("w") == committed
    assert provider.read_with_execution("w", 1) == committed
    provider.close()
