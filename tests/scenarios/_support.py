"""Shared by the scenario tests: the scenario list, timings, and the production-mode runner."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from duroxide_sim.providers.sqlite import SqliteProvider

from duroxide_sim.testing.live import LiveResult, ThreadSafeWorld, run_live

ROOT = Path(__file__).resolve().parents[2]

#: The realistic scenario modules (``scenarios/<name>.py``), each with SPEC, PRODUCTION, VARIANTS.
SCENARIOS = ("provisioning", "instance_actor", "deletion", "order_saga", "approval", "batch_fanout", "mailbox")

#: scenario -> (seeds, wall seconds, CPU seconds), filled by test_correct_scenarios, printed by conftest.py.
TIMINGS: dict[str, tuple[int, float, float]] = {}


def scenario(name: str) -> Any:
    return importlib.import_module(f"scenarios.{name}")


#: The external world as production sees it (activities run concurrently on worker threads,
#: each operation of the store atomic, as in a real database): now the package's.
AtomicWorld = ThreadSafeWorld
ProductionResult = LiveResult


def run_production(spec: Any, db_path: Path, *, timeout_s: float = 10.0, seed: int = 0) -> LiveResult:
    """Run ``spec`` on the production runtime: SQLite file, dispatcher threads, wall clock
    (:func:`duroxide_sim.testing.live.run_live`; signals at ``at_ms=None`` drawn from
    ``random.Random(seed)`` within the spec's signal window, else the first second)."""
    provider = SqliteProvider.open(str(db_path))
    try:
        return run_live(spec, provider, seed=seed, timeout_s=timeout_s)
    finally:
        provider.close()
