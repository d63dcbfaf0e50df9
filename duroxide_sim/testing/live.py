"""Run a simulation spec on the production runtime: the same ``setup`` and client operations,
real dispatcher threads and the wall clock.

:func:`run_live` is what checking "the code I simulated runs the same in production" takes: a
``Runtime`` on the provider you pass, the spec's ``setup(runtime, world)``, its starts and
signals sent at their ``at_ms`` (real milliseconds from the start), then every instance awaited
until it is terminal. The :class:`LiveResult` has the fields a spec's invariants read from a
``SimResult`` (``world``, ``statuses``, ``histories``), so they can be checked on it
(:meth:`LiveResult.failures`). The world is a :class:`ThreadSafeWorld` unless you pass one:
production runs activities on several threads at once.

Wall-clock code (threads, sleeps): a test helper, not part of the simulator.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import attrs

from ..runtime.client import Client
from ..runtime.options import RuntimeOptions
from ..runtime.runtime import Runtime
from ..sim.harness import SimSpec, Start
from ..sim.world import ExternalWorld

__all__ = ["LiveResult", "ThreadSafeWorld", "run_live"]

_ENDED = ("Completed", "Failed")


class ThreadSafeWorld(ExternalWorld):
    """An :class:`ExternalWorld` whose every operation is atomic, for running a spec's ``setup``
    in production, where activities run on several worker threads at once (``incr`` and
    ``append`` read then write: two threads lost updates). The simulator runs one activity at a
    time and uses the plain world; real activities act on real stores, which bring their own
    atomicity."""

    def __init__(self) -> None:
        super().__init__()
        self._mutex = threading.RLock()

    def _locked(name: str):  # type: ignore[misc]  # noqa: N805 - a decorator factory used in the class body
        plain = getattr(ExternalWorld, name)

        def op(self: "ThreadSafeWorld", *args: Any, **kwargs: Any) -> Any:
            with self._mutex:
                return plain(self, *args, **kwargs)

        op.__name__ = op.__qualname__ = name
        op.__doc__ = plain.__doc__
        return op

    get = _locked("get")
    exists = _locked("exists")
    put = _locked("put")
    put_if_absent = _locked("put_if_absent")
    delete = _locked("delete")
    incr = _locked("incr")
    append = _locked("append")
    items = _locked("items")
    snapshot = _locked("snapshot")
    writers = _locked("writers")
    del _locked



@attrs.define
class LiveResult:
    """What a live run ended with: what a spec's invariants read from a ``SimResult``."""

    world: ExternalWorld
    statuses: dict[str, Any]
    histories: dict[str, dict[int, list[Any]]]
    seconds: float
    #: (Always empty: no faults, so no retry budget is used up; invariants may read it.)
    budget_exhausted: list[str] = attrs.Factory(list)

    def failures(self, spec: SimSpec) -> list[str]:
        """Instances not terminal, and the spec's invariants that do not hold."""
        out = [f"{inst} is still {st.status}" for inst, st in self.statuses.items() if st.status not in _ENDED]
        for inv in spec.invariants:
            message = inv(self)
            if message:
                out.append(f"{getattr(inv, '__name__', 'invariant')}: {message}")
        return out


def run_live(
    spec: SimSpec,
    provider: Any,
    *,
    world: ExternalWorld | None = None,
    seed: int = 0,
    options: RuntimeOptions | None = None,
    operations: tuple[list[Any], list[Any]] | None = None,
    timeout_s: float = 10.0,
) -> LiveResult:
    """Run ``spec`` on a production ``Runtime`` over ``provider`` (which stays open).

    ``operations``: the (starts, signals) to send - e.g. a simulation's ``SimResult.realized``,
    so both runs get the same inputs; by default the spec's own, with signals at
    ``at_ms=None`` drawn from ``random.Random(seed)`` within the spec's ``signal_window_ms``
    (else the first second). ``options``: the runtime's (default: the defaults with a 5 ms
    dispatcher poll interval). Waits at most ``timeout_s`` for every instance to end; the
    runtime is shut down before returning."""
    world = ThreadSafeWorld() if world is None else world
    runtime = Runtime(provider, options or RuntimeOptions(dispatcher_poll_interval_ms=5))
    spec.setup(runtime, world)
    if operations is not None:
        starts, signals = list(operations[0]), list(operations[1])
    else:
        rng = random.Random(seed)
        starts = list(spec.starts(rng) if callable(spec.starts) else spec.starts)
        signals = list(spec.signals(rng) if callable(spec.signals) else spec.signals)
        window = spec.signal_window_ms or 1_000
        signals = [attrs.evolve(s, at_ms=rng.randrange(window)) if s.at_ms is None else s for s in signals]
    ops = sorted(starts + signals, key=lambda op: op.at_ms)  # stable: the spec's own order on ties
    client = Client(provider)
    runtime.start()
    began = time.monotonic()
    statuses: dict[str, Any] = {}
    try:
        for op in ops:
            wait = began + op.at_ms / 1000 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if isinstance(op, Start):
                if op.version is None:
                    client.start_orchestration(op.instance, op.orchestration, op.input)
                else:
                    client.start_orchestration_versioned(op.instance, op.orchestration, op.input, op.version)
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
            if all(st.status in _ENDED for st in statuses.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    finally:
        runtime.shutdown(2_000)
    seconds = time.monotonic() - began
    histories = {
        name: {e: list(provider.read_with_execution(name, e)) for e in range(1, (provider.latest_execution_id(name) or 0) + 1)}
        for name in statuses
    }
    return LiveResult(world=world, statuses=statuses, histories=histories, seconds=seconds)
