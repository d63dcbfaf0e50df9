"""Simulation: virtual clock, deterministic ids, and drivers that run the real dispatchers
without threads or wall time. Never imports pytest or hypothesis."""

from __future__ import annotations

from .clock import SequentialIds, SimClock
from .driver import SequentialDriver

__all__ = ["SimClock", "SequentialIds", "SequentialDriver"]
