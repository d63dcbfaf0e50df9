"""Where the runtime's own log records go: the ``logging`` tree, or a sink (simulation).

In production the dispatchers' records (replay-safe ``trace_*`` lines of orchestrations and
activities, retry and ack warnings) are ordinary ``logging`` records under ``duroxide_sim.*``.
A simulation records them in its trace instead, and the trace must not depend on how the
process configured ``logging``: a level set on a child logger, ``logging.disable`` or a
``dictConfig`` that disables existing loggers would silently drop lines, and the same seed
would give a different trace. So the simulated path hands them to a sink installed for the
duration of the run (:func:`captured`), bypassing ``logging`` altogether.

The sink is a :class:`~contextvars.ContextVar`: a simulation running in one thread does not
capture the records of a production runtime's threads in the same process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["emit", "captured"]

#: ``sink(level, logger_name, message, extra)``
Sink = Callable[[int, str, str, "Mapping[str, Any] | None"], None]

_SINK: ContextVar[Sink | None] = ContextVar("duroxide_sim_log_sink", default=None)


def emit(logger: logging.Logger, level: int, fmt: str, *args: Any, extra: Mapping[str, Any] | None = None) -> None:
    """``logger.log(level, fmt, *args, extra=extra)``, or the installed sink's record of it."""
    sink = _SINK.get()
    if sink is None:
        # stacklevel: the record names the runtime code that logged it, not this function.
        logger.log(level, fmt, *args, extra=extra, stacklevel=2)  # type: ignore[arg-type]
    else:
        sink(level, logger.name, fmt % args if args else fmt, extra)


@contextmanager
def captured(sink: Sink) -> Iterator[None]:
    """Send this context's runtime records to ``sink`` until the block ends."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)
