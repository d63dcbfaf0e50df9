"""The in-memory provider's queue (two lanes: an in-order deque and a SortedList) against a
reference model: one list kept sorted by ``(visible_at, seq)``.

Hypothesis drives adds (visible now, later, or earlier than rows already queued), removals
anywhere, moves (later, to the same time, parked far below zero) and a clock that mostly goes
forward but may step back. After every operation the walk of visible rows, the wake-up time,
the emptiness test and the groups must be exactly the model's; ``check()`` must pass.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim.providers._shared import ORPHAN_PARK_SHIFT, PARKED_BELOW
from duroxide_sim.providers.memory import _Queue


@attrs.define
class _Row:
    seq: int
    group: str
    visible_at: int
    attempt_count: int = 0
    qkey: tuple[int, int] | None = None
    in_fifo: bool = False


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abc"), st.integers(-3, 3)),  # visible_at = now + d
        st.tuples(st.just("remove"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("move"), st.integers(0, 50), st.integers(-2, 5)),
        st.tuples(st.just("park"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("clock"), st.just(""), st.integers(-2, 4)),
    ),
    max_size=120,
)


def _expect(model: dict[int, _Row], now: int) -> list[int]:
    return [r.seq for r in sorted(model.values(), key=lambda r: (r.visible_at, r.seq))
            if PARKED_BELOW <= r.visible_at <= now]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_queue_walks_rows_in_key_order(ops):
    q = _Queue()
    model: dict[int, _Row] = {}
    now, seq = 100, 0
    for op, a, b in ops:
        live = sorted(model)
        if op == "add":
            seq += 1
            row = _Row(seq, a, now + b)
            q.add(row, now)
            model[seq] = row
        elif op == "remove" and live:
            row = model.pop(live[a % len(live)])
            q.remove(row)
        elif op == "move" and live:
            row = model[live[a % len(live)]]
            q.move(row, max(row.visible_at, now + b) if b >= 0 else now + b, now)
        elif op == "park" and live:
            row = model[live[a % len(live)]]
            if row.visible_at >= PARKED_BELOW:
                q.move(row, row.visible_at - ORPHAN_PARK_SHIFT, now)
        elif op == "clock":
            now += b
        q.check()
        assert [r.seq for r in q.visible(now)] == _expect(model, now)
        # any_visible may say yes for nothing (a parked row, a clock stepped back: the scan then
        # finds nothing), never no for something.
        if _expect(model, now):
            assert q.any_visible(now)
        if not model or all(r.visible_at > now for r in model.values()):
            assert not q.any_visible(now) or q.fifo_last[0] > now
        later = [r.visible_at for r in model.values() if r.visible_at > now]
        assert q.next_visible_after(now) == (min(later) if later else None)
        assert {g: sorted(s) for g, s in q.groups.items()} == {
            g: sorted(r.seq for r in model.values() if r.group == g) for g in {r.group for r in model.values()}}
        assert q.parked_up_to(PARKED_BELOW - 1) == sorted(
            (r for r in model.values() if r.visible_at < PARKED_BELOW), key=lambda r: (r.visible_at, r.seq))


def test_dead_entries_are_compacted():
    """Removing rows behind a row that stays (a long-running activity's locked row at the head)
    leaves dead entries in the in-order lane; they are dropped once they outnumber the live ones,
    so the lane does not grow without bound and walks do not slow down."""
    q = _Queue()
    head = _Row(0, "x", 0)
    q.add(head, 0)
    for i in range(1, 10_001):
        row = _Row(i, "y", 0)
        q.add(row, 0)
        q.remove(row)
    assert len(q.fifo) <= 2 * 64 + 2
    q.check()
    assert [r.seq for r in q.visible(0)] == [0]


def test_rows_queued_for_later_do_not_block_the_in_order_lane():
    """A row queued for later goes to the sorted lane, so rows queued after it for now stay in
    the deque (appending them behind a future key would break its order)."""
    q = _Queue()
    q.add(_Row(1, "t", 500), 0)
    for i in range(2, 6):
        q.add(_Row(i, "a", 0), 0)
    assert list(q.late) == [(500, 1)] and len(q.fifo) == 4
    assert [r.seq for r in q.visible(0)] == [2, 3, 4, 5]
    assert [r.seq for r in q.visible(500)] == [2, 3, 4, 5, 1]
    assert q.next_visible_after(0) == 500


@pytest.mark.parametrize("back", [1, 50])
def test_clock_stepping_back_keeps_order(back):
    """Keys that would not extend the deque's order (the clock stepped back) go to the sorted lane
    and the walk still merges both in key order."""
    q = _Queue()
    q.add(_Row(1, "a", 100), 100)
    q.add(_Row(2, "a", 100 - back), 100 - back)
    q.add(_Row(3, "a", 100), 100)
    assert [r.seq for r in q.visible(100)] == [2, 1, 3]
    q.check()
