"""Keep the cyclic garbage collector off the simulator's back while a run executes.

A simulation allocates heavily (events, work items, trace lines) on top of a large heap of
long-lived objects (modules, classes, the caller's data). CPython's collector re-scans that heap
at every full collection and runs a young collection every 700 container allocations: measured
at 8-15 % of a scenario's run time.

:func:`quiet_gc` (a context manager, re-entrant) for the duration of a run:

- freezes the objects that exist when the run starts (``gc.freeze``): they are left out of every
  collection during the run, and given back to the collector (``gc.unfreeze``) when it ends, so
  garbage among them is collected later as usual;
- raises the young-generation threshold to at least ``YOUNG_THRESHOLD`` allocations, so most of
  a step's short-lived objects are freed by reference counting before a collection looks at them.

Garbage made during the run is still collected during the run. Collection timing never feeds a
decision of the simulator (the scheduler and the faults draw only from their seeded sources), so
traces are unchanged. When the collector is disabled by the caller, nothing is touched.

The collector's settings are process-wide, and the simulator is single-threaded (no locks here,
like the rest of ``sim``): pauses nest within one thread; simulations run in parallel use
processes (``duroxide-sim run --jobs``), each with its own collector.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["quiet_gc", "YOUNG_THRESHOLD"]

#: Young-generation threshold during a run (CPython's default is 700).
YOUNG_THRESHOLD = 10_000

_depth = 0
_saved: tuple[int, ...] | None = None
_froze = False  # False when the caller had frozen objects already: theirs to unfreeze


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Freeze the existing heap and collect the young generation less often, until exit."""
    global _depth, _saved, _froze
    if _depth == 0 and gc.isenabled():
        _saved = gc.get_threshold()
        _froze = gc.get_freeze_count() == 0
        if _froze:
            gc.freeze()
        gc.set_threshold(max(_saved[0], YOUNG_THRESHOLD), *_saved[1:])
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            if _froze:
                gc.unfreeze()
            _saved = None
