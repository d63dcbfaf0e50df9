"""HistoryView: a fetch hands the turn an O(1) read-only view of the cached, append-only history
instead of a fresh tuple copy, and it behaves like the tuple it replaces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


@given(
    events=st.lists(st.integers(0, 99), max_size=12),
    extra=st.lists(st.integers(0, 99), max_size=4),
    start=st.none() | st.integers(-15, 15),
    stop=st.none() | st.integers(-15, 15),
    step=st.none() | st.integers(-4, 4).filter(lambda s: s != 0),
)
def test_slices_select_what_the_same_slice_of_a_tuple_selects(events, extra, start, stop, step):
    """Slicing copies only the selected events (a catch-up turn slices a short suffix off a long
    history), including negative and out-of-range bounds and steps; events appended after the
    view was taken are never included."""
    backing = list(events)
    view = HistoryView(backing)
    backing.extend(extra)
    assert view[start:stop:step] == tuple(events)[start:stop:step]


def test_memory_fetch_hands_out_a_view_that_an_out_of_order_insert_leaves_unchanged():
    """The in-memory provider's fetch returns a view of its stored history (not a copy per turn);
    an event inserted before others (``append_with_execution``) goes into a new list, so a view
    already handed out still shows exactly what its fetch saw."""
    from duroxide_sim.core.events import ActivityScheduled, OrchestrationStarted, StartOrchestration
    from duroxide_sim.providers.memory import InMemoryProvider
    from duroxide_sim.sim import SimClock

    provider = InMemoryProvider(SimClock())
    env = {"instance_id": "i", "execution_id": 1, "timestamp_ms": 0}
    provider.append_with_execution("i", 1, [
        OrchestrationStarted(event_id=1, name="O", version="1.0.0", input="null", **env),
        *(ActivityScheduled(event_id=n, name="a", input=str(n), **env) for n in range(5, 205, 2)),
    ])
    provider.enqueue_for_orchestrator(StartOrchestration(instance="i", orchestration="O", input="null"), None)
    item = provider.fetch_orchestration_item(30_000)
    assert isinstance(item.history, HistoryView)  # long: a view (short ones are copied)
    before = tuple(item.history)
    assert [e.event_id for e in before[:3]] == [1, 5, 7] and len(before) == 101
    provider.append_with_execution("i", 1, [ActivityScheduled(event_id=3, name="b", input="2", **env)])
    assert tuple(item.history) == before
    assert [e.event_id for e in provider.read("i")[:4]] == [1, 3, 5, 7]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_abandon_with_delay_and_ignore_attempt_untags_every_batch_row(tmp_path, kind):
    """Abandoning hides the batch for the delay and gives back the attempt; the rows keep no lock
    tag (the providers' self-check walks every row), the next fetch after the delay gets the same
    batch with the same attempt count, and its ack removes all of it - also with rows queued
    for much later beside them (an instance's far-off timers, which the ack no longer walks)."""
    from duroxide_sim.core.events import ExternalRaised, StartOrchestration, TimerFiredMsg
    from duroxide_sim.providers.base import ExecutionMetadata
    from duroxide_sim.providers.memory import InMemoryProvider
    from duroxide_sim.sim import SimClock

    clock = SimClock()
    provider = InMemoryProvider(clock) if kind == "memory" else SqliteProvider.open(tmp_path / "a.db", clock=clock)
    provider.enqueue_for_orchestrator(StartOrchestration(instance="i", orchestration="O", input="null"), None)
    provider.enqueue_for_orchestrator(ExternalRaised(instance="i", name="e", data="1"), None)
    for n in range(5):  # queued for an hour from now: not part of any batch below
        provider.enqueue_for_orchestrator(TimerFiredMsg(instance="i", execution_id=1, id=100 + n, fire_at_ms=0), 3_600_000)
    first = provider.fetch_orchestration_item(30_000)
    assert first is not None and len(first.messages) == 2 and first.attempt_count == 1
    provider.abandon_orchestration_item(first.lock_token, 1_000, True)
    provider._check()
    assert provider.fetch_orchestration_item(30_000) is None  # hidden for the delay
    clock.advance(1_000)
    again = provider.fetch_orchestration_item(30_000)
    assert again is not None and [type(m).__name__ for m in again.messages] == ["StartOrchestration", "ExternalRaised"]
    assert again.attempt_count == 1  # the abandoned fetch's attempt was given back
    from duroxide_sim.core.events import OrchestrationStarted
    started = OrchestrationStarted(event_id=1, instance_id="i", execution_id=1, timestamp_ms=clock.now_ms(),
                                   name="O", version="1.0.0", input="null")
    provider.ack_orchestration_item(again.lock_token, 1, [started], [], [],
                                    ExecutionMetadata(orchestration_name="O", orchestration_version="1.0.0"))
    provider._check()
    assert provider.fetch_orchestration_item(30_000) is None  # the batch is gone; the timers wait
    clock.advance(3_600_000)
    later = provider.fetch_orchestration_item(30_000)
    assert later is not None and len(later.messages) == 5
