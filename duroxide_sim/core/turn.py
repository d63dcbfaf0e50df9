"""Turn records: what a turn takes (TurnInput) and what it returns (TurnResult), the SPEC §10.3
limits, and the builder that stamps new events with consecutive ids. Pure data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .events import (
    ENGINE_VERSION,
    ActivityExecute,
    ContinueAsNew,
    ErrorDetails,
    HistoryEvent,
    StartOrchestration,
    WorkItem,
)

__all__ = ["TurnInput", "TurnResult", "LIMITS", "child_instance_id", "batch_start"]


def batch_start(messages: Sequence[WorkItem]) -> StartOrchestration | ContinueAsNew | None:
    """The batch's start item (SPEC §3.2): the first StartOrchestration or ContinueAsNew; later
    ones are ignored - except that a ContinueAsNew beats a StartOrchestration queued before it.
    That StartOrchestration is a duplicate start of the existing instance (a client's "ensure
    started" retry, a detached start onto an actor) which arrived while the continue-as-new
    turn held the lock; taking it as the batch's start dropped the ContinueAsNew and stranded
    the instance between executions (the reference ignores the duplicate start). The turn and
    the poison path read the batch the same way."""
    start: StartOrchestration | ContinueAsNew | None = None
    for msg in messages:
        kind = type(msg)
        if kind is ContinueAsNew:
            if start is None or type(start) is StartOrchestration:
                start = msg
        elif kind is StartOrchestration and start is None:
            start = msg
    return start



LIMITS = {
    "custom_status_bytes": 262_144,
    "tag_bytes": 256,
    # duroxide-python's core (0.1.27+, SPEC §10.3's SDK note): the SDK users come from enforces
    # these, and a workflow that fits there must fit here (the older core: 16,384 B / 100 keys).
    "kv_value_bytes": 65_536,
    "kv_keys": 150,
    "carry_forward": 20,
    "quiescence_iterations": 100,
    "history_events": 100_000,  # per execution; a turn that would exceed it fails the orchestration
}



# TurnInput and TurnResult are built once per turn on the hot path: plain slotted records (a
# frozen attrs class sets every field through object.__setattr__, twice the cost). Nothing
# mutates them after construction.
@attrs.define(kw_only=True)
class TurnInput:
    """Everything a turn needs, as data."""

    instance: str
    execution_id: int
    orchestration_name: str
    version: str | None
    history: Sequence[HistoryEvent]
    messages: Sequence[WorkItem]
    now_ms: int
    kv_snapshot: Mapping[str, tuple[str, int]] = attrs.field(factory=dict)


@attrs.define(kw_only=True)
class TurnResult:
    """What to commit. ``kind``: continue | completed | failed | continued_as_new | cancelled |
    noop (ack, change nothing) | unregistered (abandon with back-off, nothing executed)."""

    kind: str
    execution_id: int
    delta: tuple[HistoryEvent, ...] = ()
    worker_items: tuple[ActivityExecute, ...] = ()
    orchestrator_items: tuple[WorkItem, ...] = ()
    cancelled: tuple[tuple[str, int, int], ...] = ()
    status: str | None = None
    output: str | None = None
    error: ErrorDetails | None = None
    orchestration_name: str | None = None
    orchestration_version: str | None = None
    parent_instance: str | None = None
    pinned_version: str | None = None
    logs: tuple[tuple[int, str], ...] = ()
    message: str = ""
    #: Failure notices to parents whose child start collided with this instance (also in
    #: ``orchestrator_items``): kept apart so a turn whose ack fails still sends them.
    collisions: tuple[WorkItem, ...] = ()
    #: The live engine after a ``continue`` turn, for :class:`~duroxide_sim.core.replay.EngineCache`.
    engine: Any = attrs.field(default=None, eq=False, repr=False)


class _Builder:
    """Appends new events to the turn delta with consecutive ids and the turn's envelope."""

    def __init__(self, delta: list[HistoryEvent], last_id: int, instance: str, execution_id: int, now_ms: int) -> None:
        self.delta = delta
        self.last_id = last_id
        self.env = {"instance_id": instance, "execution_id": execution_id, "timestamp_ms": now_ms, "duroxide_version": ENGINE_VERSION}

    def peek_id(self) -> int:
        return self.last_id + 1

    def __call__(self, cls: type, **fields: Any) -> Any:
        self.last_id += 1
        ev = cls(event_id=self.last_id, **self.env, **fields)
        self.delta.append(ev)
        return ev


def child_instance_id(parent: str, recorded: str) -> str:
    """Full child id: ``{parent}::sub::{id}`` for auto ids (and ⚠ explicit ids starting with
    ``sub::``), else the explicit id verbatim (SPEC §7)."""
    return f"{parent}::{recorded}" if recorded.startswith("sub::") else recorded
