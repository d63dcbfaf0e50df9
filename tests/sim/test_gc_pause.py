"""gc_pause.quiet_gc: the heap that exists when a run starts is frozen and the young generation
collected less often while the run executes; everything is restored afterwards, and the
simulation's results do not depend on it."""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest

from duroxide_sim.sim import checkers, harness
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.gc_pause import YOUNG_THRESHOLD, quiet_gc
from duroxide_sim.sim.harness import Simulation


@pytest.fixture(autouse=True)
def _restore_gc():
    before = (gc.isenabled(), gc.get_threshold())
    yield
    assert (gc.isenabled(), gc.get_threshold()) == before
    assert gc.get_freeze_count() == 0


def test_freezes_and_raises_the_threshold_until_exit():
    before = gc.get_threshold()
    with quiet_gc():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == max(before[0], YOUNG_THRESHOLD)
        assert gc.get_threshold()[1:] == before[1:]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_reentrant_and_restored_after_an_error():
    before = gc.get_threshold()
    with pytest.raises(RuntimeError):
        with quiet_gc():
            with quiet_gc():
                pass
            assert gc.get_freeze_count() > 0  # the inner exit did not undo the outer pause
            assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
            raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_leaves_a_disabled_collector_alone():
    gc.disable()
    try:
        before = gc.get_threshold()
        with quiet_gc():
            assert gc.get_freeze_count() == 0
            assert gc.get_threshold() == before
    finally:
        gc.enable()


def test_a_heap_the_caller_froze_stays_frozen():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with quiet_gc():
            assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
        assert gc.get_freeze_count() >= frozen  # not unfrozen behind the caller's back
    finally:
        gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_cycles_made_during_a_run_are_still_collected_and_older_ones_after_it():
    old = _cycle()  # garbage that exists before the run: frozen during it
    with quiet_gc():
        new = _cycle()
        gc.collect()
        assert new() is None  # garbage made during the run is collected during the run
        assert old() is not None  # the frozen heap is left alone...
    gc.collect()
    assert old() is None  # ...and collected once the run is over


def test_traces_do_not_depend_on_the_collector(monkeypatch):
    """Byte-identical traces with and without the pause (the scheduler never looks at the GC)."""
    from scenarios import mailbox

    def traces():
        return [checkers.run_and_check(Simulation(mailbox.SPEC, seed, FaultPlan.all(0.05))).trace for seed in (0, 1)]

    paused = traces()
    monkeypatch.setattr(harness, "quiet_gc", contextlib.nullcontext)
    monkeypatch.setattr(checkers, "quiet_gc", contextlib.nullcontext)
    gc.disable()
    try:
        unpaused = traces()
    finally:
        gc.enable()
    assert paused == unpaused


def test_a_simulation_run_pauses_the_collector(monkeypatch):
    from scenarios import greetings

    seen = []
    real = harness._Run._execute

    def spy(self):
        seen.append((gc.get_freeze_count() > 0, gc.get_threshold()[0]))
        return real(self)

    monkeypatch.setattr(harness._Run, "_execute", spy)
    Simulation(greetings.SPEC, 0, FaultPlan.none()).run()
    checkers.run_and_check(Simulation(greetings.SPEC, 0, FaultPlan.all(0.05)))
    assert len(seen) >= 3  # the plain run, the checked run and its fault-free twin
    assert all(frozen and threshold >= YOUNG_THRESHOLD for frozen, threshold in seen)
