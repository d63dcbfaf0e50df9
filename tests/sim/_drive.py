"""Shared by the generative probes: run a generator orchestration body as ``async def`` code, and
build a retry back-off from its generated description.

The probes write each program's body once, as a generator, and register it twice - as the
generator and as an ``async def`` that awaits the tasks the generator yields - so both styles run
the same steps (their histories must be identical)."""

from __future__ import annotations

from typing import Any

from duroxide_sim.core.context import Backoff


async def drive(gen: Any) -> Any:
    """Await every task ``gen`` yields and hand back its value, or throw its error into ``gen``
    (as the engine does for a generator); the generator's return value is the result."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            task = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = await task, None
        except Exception as exc:  # noqa: BLE001 - handed to the program, as a generator gets it
            value, error = None, exc


def backoff(kind: str, base: int, mult: float, mx: int) -> Backoff:
    """The library's ``Backoff`` of a generated kind (``none``, ``fixed``, ``linear`` or
    ``exponential``); the arguments a kind does not take are ignored."""
    if kind == "none":
        return Backoff.none()
    if kind == "fixed":
        return Backoff.fixed(base)
    if kind == "linear":
        return Backoff.linear(base, mx)
    return Backoff.exponential(base, mult, mx)
