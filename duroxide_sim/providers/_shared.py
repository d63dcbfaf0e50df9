"""Small helpers shared by the provider implementations (memory, SQLite, PostgreSQL).

Kept here so every provider parses pins and reports lost locks the same way; no I/O."""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..core.events import (
    CustomStatusUpdated,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
)
from ..core.registry import semver_numbers
from ..errors import InvalidInputError, InvalidInputTypeError, LockLostError, ProviderError
from .base import ExecutionMetadata

__all__ = ["parse_semver", "lock_lost", "HistoryView", "tree_order", "forget_if_filled_below", "ImportedExecution", "imported_execution",
           "imported_executions", "ORPHAN_PARK_SHIFT", "PARKED_BELOW", "ORPHAN_RETENTION_MS",
           "ORPHAN_SWEEP_INTERVAL_MS", "ENDED_STATUSES"]

#: An orchestration ack whose metadata status is one of these ended its instance: providers call
#: their final commit listeners for it (a continue-as-new ends an execution, not the instance).
ENDED_STATUSES = ("Completed", "Failed")

# --- orphan messages (SPEC §3.12) -------------------------------------------------------------
#
# An orphan is a queued message whose instance has no row, no history and no start /
# ContinueAsNew item in its batch: typically a late ``raise_event`` / ``cancel_instance`` for an
# instance that was deleted (retention) or never started. Every provider handles them alike:
#
# * A batch of QueueMessages only, with no start item queued, is deleted (SPEC §6.2).
# * Anything else is PARKED the first time a fetch examines it: its ``visible_at`` is shifted
#   down by ORPHAN_PARK_SHIFT, below PARKED_BELOW. Candidate scans start at PARKED_BELOW, so
#   no later fetch walks past it again (fetch cost does not grow with the number of orphans,
#   and an idle poll stays one empty look). A parked row still counts as visible (its
#   ``visible_at`` is <= now), so when the instance's start arrives the start's batch carries
#   it, in its original order and before anything newer, exactly as if it had waited visibly.
# * Expiry: a parked row whose original ``visible_at`` is ORPHAN_RETENTION_MS in the past is
#   deleted if its instance still has no row, no history and no start / ContinueAsNew item
#   queued; if the instance exists by then (history imported, say), its parked rows are shifted
#   back and delivered normally; with a start queued they are left for its batch. Each provider
#   runs this sweep at most every ORPHAN_SWEEP_INTERVAL_MS of its clock, from a fetch (so a
#   message expires between RETENTION and RETENTION + INTERVAL after it became visible).
#
# Real ``visible_at`` values (ms timestamps, fire times) are assumed to lie in (-2**61, 2**61).
ORPHAN_PARK_SHIFT = 1 << 62
PARKED_BELOW = -(1 << 61)
ORPHAN_RETENTION_MS = 300_000  # 5 minutes (as the runtime's session idle timeout)
ORPHAN_SWEEP_INTERVAL_MS = 60_000


def parse_semver(text: str, what: str) -> tuple[int, int, int]:
    """``"1.2.3"`` (optionally ``-pre``/``+build``) -> ``(1, 2, 3)``; bad text -> InvalidInputError.

    Providers parse the same few versions on every fetch and ack (filters, pins), so parses of
    strings are memoized (bounded; errors are not cached)."""
    if type(text) is str:
        return _parse_semver_str(text, what)
    return _parse_semver_uncached(text, what)


def _parse_semver_uncached(text: Any, what: str) -> tuple[int, int, int]:
    # The rule itself is core's (registry.semver_numbers); only the error type and wording are
    # the providers' own. (A non-string is read through str(), as the providers always did.)
    numbers = semver_numbers(str(text), suffix=True)
    if numbers is None:
        raise InvalidInputError(f"{what} must be a semver 'major.minor.patch' (ASCII numbers without leading "
                                f"zeros, at most 18 digits each), got {text!r}"[:300])
    return numbers


_parse_semver_str = functools.lru_cache(maxsize=256)(_parse_semver_uncached)


def tree_order(root: str, children: Callable[[str], list[str]]) -> list[str]:
    """``root`` and its descendants in the reference's order (depth-first, then reversed, so
    children come before their parents); ``children(id)`` lists an instance's direct children."""
    out: list[str] = []
    stack = [root]
    while stack:
        current = stack.pop()
        if current not in out:  # defensive: a parent cycle must not loop forever
            out.append(current)
            stack.extend(children(current))
    return out[::-1]


_EVENT_ID = operator.attrgetter("event_id")


def forget_if_filled_below(cache: Any, lock: Any, instance: str, execution_id: int, events: Sequence[Any]) -> None:
    """After a commit that stored ``events``: drop the decoded-history cache entry of that
    execution (``cache[instance] = (seq, execution_id, events)``, under ``lock``) when it already
    holds a higher event id - the SQL providers' caches read only rows after their last cached id,
    so an id stored verbatim below it (SPEC §1: gaps may be filled) would never be read. Called
    after the commit: a reader may have cached the history between the write and the commit.
    Only this process's cache: another process's writes below a cached id are not seen (the
    runtime never makes them; ``append_with_execution`` is for tests and tools)."""
    if not events:
        return
    with lock:
        entry = cache.get(instance)
        if entry is None or entry[1] != execution_id or not entry[2]:
            return
        cached = entry[2]
        last = cached[-1].event_id
        for event in events:
            eid = event.event_id
            if eid < last:
                # Below the cached tail: stale only if the cache does not hold it. A reader that
                # cached the history after the write (the fetch an ack chains in its own
                # transaction, another thread after the commit) holds every stored event; dropping
                # its entry then made the next fetch decode the whole history again, on every
                # turn of an instance whose ack fetched it again (W3's fan-in: 12x slower).
                at = bisect.bisect_left(cached, eid, key=_EVENT_ID)
                if at == len(cached) or cached[at].event_id != eid:
                    del cache[instance]
                    return


def lock_lost(op: str, token: str, message: str, **fields: Any) -> LockLostError:
    """The error for an unknown, expired or stolen lock token (message names the token)."""
    return LockLostError(message, operation=op, retryable=False, lock_token=token, **fields)


class HistoryView(Sequence[Any]):
    """The first ``n`` events of an append-only list, read-only: what a fetch hands a turn.

    A provider that keeps a decoded history cached appends new events to the cached list and
    gives each fetch a view of the events it saw, in O(1) instead of copying the whole history
    into a new tuple per turn (which made a long chain's cost per turn grow with its length).
    Events already in the list are never changed or removed, so a view never changes. Behaves
    like a tuple of events: ``len``, indexing and slicing (slices are tuples), iteration,
    equality and ordering-free comparison with tuples, lists and other views, ``+``, hashing."""

    __slots__ = ("_events", "_n")

    def __init__(self, events: list[Any], n: int | None = None) -> None:
        self._events = events
        self._n = len(events) if n is None else n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            # Only the selected events are copied (a catch-up turn slices off a short suffix
            # of a long history).
            start, stop, step = index.indices(self._n)
            if step == 1:
                return tuple(self._events[start:stop]) if start < stop else ()
            return tuple(self._events[i] for i in range(start, stop, step))
        i = index.__index__()
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("history index out of range")
        return self._events[i]

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self._events, self._n)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (HistoryView, tuple, list)):
            return len(other) == self._n and all(a == b for a, b in zip(self, other, strict=False))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __add__(self, other: Any) -> tuple[Any, ...]:
        return tuple(self) + tuple(other)

    def __radd__(self, other: Any) -> Any:
        return type(other)(other) + type(other)(self) if isinstance(other, (tuple, list)) else NotImplemented

    def __repr__(self) -> str:
        return repr(tuple(self))


class ImportedExecution:
    """What the acks of a recorded execution stored beside its events, read back from the events
    (``import_history``): the execution's status, output and pin, the instance's name, version
    and parent, its last custom status update, and the times that bound it."""

    __slots__ = ("metadata", "started_ms", "ended_ms", "custom_status")

    def __init__(self, metadata: Any, started_ms: int, ended_ms: int, custom_status: Any) -> None:
        self.metadata = metadata
        self.started_ms = started_ms
        self.ended_ms = ended_ms
        self.custom_status = custom_status  # the last CustomStatusUpdated event, or None


def imported_execution(instance: str, execution_id: int, events: Sequence[Any], op: str) -> ImportedExecution:
    """Read an execution's metadata from its events, as its turns' acks would have recorded it
    (status and output of the terminal event: Completed -> output, Failed -> the error's display
    message, ContinuedAsNew -> the next input). ProviderError if it does not begin with
    OrchestrationStarted."""
    if type(execution_id) is not int or execution_id < 1:
        raise ProviderError(f"{op}: execution ids count from 1, got {execution_id!r} (instance {instance!r})",
                            operation=op, instance_id=instance)
    if not events or not isinstance(events[0], OrchestrationStarted):
        raise ProviderError(f"{op}: execution {execution_id} of instance {instance!r} does not begin with "
                            "OrchestrationStarted", operation=op, instance_id=instance)
    for event in events:
        if event.instance_id != instance or event.execution_id != execution_id:
            raise ProviderError(
                f"{op}: event {event.event_id} belongs to instance {event.instance_id!r} execution {event.execution_id}, "
                f"not to instance {instance!r} execution {execution_id}", operation=op, instance_id=instance)
    started = events[0]
    status = output = None
    ended_ms = events[-1].timestamp_ms
    custom = None
    for event in events:
        if isinstance(event, CustomStatusUpdated):
            custom = event
        elif isinstance(event, (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)):
            # (the last one decides: a size-limit failure follows the turn's own ending, SPEC §10.3)
            ended_ms = event.timestamp_ms
            if isinstance(event, OrchestrationCompleted):
                status, output = "Completed", event.output
            elif isinstance(event, OrchestrationFailed):
                status, output = "Failed", event.details.display_message()
            else:
                status, output = "ContinuedAsNew", event.input
    metadata = ExecutionMetadata(status=status, output=output, orchestration_name=started.name,
                                 orchestration_version=started.version, parent_instance_id=started.parent_instance,
                                 pinned_duroxide_version=started.duroxide_version)
    return ImportedExecution(metadata, started.timestamp_ms, ended_ms, custom)


def imported_executions(instance: str, executions: Sequence[tuple[int, Sequence[Any]]],
                        op: str) -> list[tuple[int, list[Any], ImportedExecution]]:
    """Every execution of an import checked (see :func:`imported_execution`) and put in execution
    order - the instance's current state (custom status, KV, current execution) is the last
    execution's - before anything is written; a repeated execution id is refused."""
    out = []
    for execution_id, recorded in executions:
        events = list(recorded)
        out.append((execution_id, events, imported_execution(instance, execution_id, events, op)))
    out.sort(key=lambda entry: entry[0])
    for a, b in zip(out, out[1:], strict=False):
        if a[0] == b[0]:
            raise ProviderError(f"{op}: execution {a[0]} of instance {instance!r} appears twice", operation=op,
                                instance_id=instance)
    return out


def check_instance_arg(instance: Any, op: str) -> None:
    """A provider method's instance id must be a string: anything else is the caller's bug,
    refused alike by every provider (PostgreSQL answered with its own SQL error text -
    "operator does not exist: text = smallint" - where SQLite answered "not found")."""
    if not isinstance(instance, str):
        raise InvalidInputTypeError(f"{op}: instance id must be a string, got {type(instance).__name__}",
                                    operation=op)


def advisory_key32(text: str) -> int:
    """Deterministic signed 32-bit key for PostgreSQL advisory locks (an instance's fetch claim)."""
    import hashlib  # (here, not at the top: only PostgreSQL needs it, and hashlib loads OpenSSL -
    # ~3.7 MiB of resident memory every SQLite process paid, W4's peak RSS over the peer's)

    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "big", signed=True)
