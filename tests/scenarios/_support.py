"""Shared by the scenario tests: the scenario list, timings, and the production-mode runner."""

from __future__ import annotations

import importlib
import random
import time
from pathlib import Path
from typing import Any

import attrs

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.sim.harness import Start
from duroxide_sim.sim.world import ExternalWorld, ThreadSafeWorld

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


@attrs.define
class ProductionResult:
    """What the spec invariants read from a SimResult: ``world``, ``statuses``, ``histories``."""

    world: ExternalWorld
    statuses: dict[str, Any]
    histories: dict[str, dict[int, list[Any]]]
    seconds: float
    budget_exhausted: list[str] = attrs.Factory(list)

    def failures(self, spec: Any) -> list[str]:
        out = []
        for inst, st in self.statuses.items():
            if st.status not in ("Completed", "Failed"):
                out.append(f"{inst} is still {st.status}")
        for inv in spec.invariants:
            message = inv(self)
            if message:
                out.append(f"{inv.__name__}: {message}")
        return out


def run_production(spec: Any, db_path: Path, *, timeout_s: float = 10.0, seed: int = 0) -> ProductionResult:
    """Run ``spec`` on the production runtime: SQLite file, dispatcher threads, wall clock.

    Starts and signals are sent at their ``at_ms`` (real milliseconds from the start; a signal
    with ``at_ms=None`` at a time drawn from ``random.Random(seed)`` within the first second),
    then every instance is awaited until it is terminal or ``timeout_s`` has passed."""
    provider = SqliteProvider.open(str(db_path))
    runtime = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    world = AtomicWorld()
    spec.setup(runtime, world)
    rng = random.Random(seed)
    starts = list(spec.starts(rng) if callable(spec.starts) else spec.starts)
    signals = list(spec.signals(rng) if callable(spec.signals) else spec.signals)
    signals = [attrs.evolve(s, at_ms=rng.randrange(1_000)) if s.at_ms is None else s for s in signals]
    ops = sorted(starts + signals, key=lambda op: op.at_ms)
    client = Client(provider)
    runtime.start()
    began = time.monotonic()
    try:
        for op in ops:
            wait = began + op.at_ms / 1000 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if isinstance(op, Start):
                client.start_orchestration(op.instance, op.orchestration, op.input)
            elif op.kind == "raise":
                client.raise_event(op.instance, op.name, op.data)
            elif op.kind == "enqueue":
                client.enqueue_event(op.instance, op.name, op.data)
            else:
                client.cancel_instance(op.instance, op.name or None)
        deadline = began + timeout_s
        while True:
            names = list(dict.fromkeys([s.instance for s in starts] + sorted(client.list_all_instances())))
            statuses = {name: client.get_status(name) for name in names}
            if all(st.status in ("Completed", "Failed") for st in statuses.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    finally:
        runtime.shutdown(2_000)
    seconds = time.monotonic() - began
    histories = {
        name: {e: list(provider.read_with_execution(name, e)) for e in range(1, (provider.latest_execution_id(name) or 0) + 1)}
        for name in statuses
    }
    provider.close()
    return ProductionResult(world=world, statuses=statuses, histories=histories, seconds=seconds)
