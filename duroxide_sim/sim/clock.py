"""SimClock: integer virtual milliseconds that move only when told; SequentialIds: GUIDs from
a counter. Together they replace the wall clock and uuid4 in simulation, so a run is a pure
function of its inputs."""

from __future__ import annotations

import hashlib

__all__ = ["SimClock", "SequentialIds", "DEFAULT_EPOCH_MS"]

#: 2026-01-01T00:00:00Z: a fixed, realistic starting time for simulated runs.
DEFAULT_EPOCH_MS = 1_767_225_600_000


class SimClock:
    """A clock that advances only through :meth:`advance` / :meth:`advance_to`."""

    def __init__(self, start_ms: int = DEFAULT_EPOCH_MS) -> None:
        self._now = int(start_ms)

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError(f"cannot move the clock backwards by {ms} ms")
        self._now += int(ms)

    def advance_to(self, when_ms: int) -> None:
        """Jump forward to ``when_ms`` (never backwards)."""
        if when_ms > self._now:
            self._now = int(when_ms)


class SequentialIds:
    """UUID-shaped ids from a counter (and an optional prefix to tell runs apart)."""

    def __init__(self, namespace: int = 0) -> None:
        self._namespace = namespace & 0xFFFFFFFF
        self._n = 0

    def new_guid(self) -> str:
        self._n += 1
        return f"{self._namespace:08x}-0000-4000-8000-{self._n:012x}"

    @staticmethod
    def guid_for(instance: str, execution_id: int, event_id: int) -> str:
        """The GUID an orchestration's ``new_guid()`` gets in a simulation: a function of where
        it was asked for (instance, execution, event id), not of the process or the seed, so
        the fault-free twin draws the same GUIDs and an idempotency key made from one compares
        equal (a counter per simulated process gave every run different keys)."""
        digest = hashlib.sha256(f"{instance}\x00{execution_id}\x00{event_id}".encode("utf-8", "surrogatepass")).hexdigest()
        return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"
