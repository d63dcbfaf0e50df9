"""The Provider protocol (SPEC §15) and the records that cross it.

A provider is durable storage plus two peek-lock queues (orchestrator and worker). The runtime
sees providers only through this protocol; it never imports a concrete provider. Every
operation is one atomic step: it either happens entirely or not at all.

Time: providers never read a wall clock themselves. They hold a :class:`Clock` (``now_ms()``),
injected at construction or bound later with :meth:`Provider.bind_clock` (the runtime and
client bind the system clock when none was given; the simulation binds its virtual clock).

This module defines data and protocols only; it must not import sqlite3, threads or time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from ..core.events import ActivityExecute, HistoryEvent, WorkItem
from ..core.texts import plain_text, text_problem
from ..errors import InvalidInputError

__all__ = [
    "Clock",
    "TagFilter",
    "SessionConfig",
    "KvEntry",
    "OrchestrationItem",
    "WorkItemLease",
    "ExecutionMetadata",
    "ScheduledActivityIdentifier",
    "InstanceInfo",
    "ExecutionInfo",
    "SystemMetrics",
    "QueueDepths",
    "InstanceTree",
    "DeleteInstanceResult",
    "InstanceFilter",
    "PruneOptions",
    "PruneResult",
    "Provider",
    "ManagementProvider",
    "SimulationHooks",
]


@runtime_checkable
class Clock(Protocol):
    """Source of time for providers, dispatchers and clients: integer ms since the epoch."""

    def now_ms(self) -> int: ...


_TAG_MODES = ("default_only", "tags", "default_and", "any", "none")


class TagFilter(str):
    """Which activity tags a worker fetches (SPEC §15.3).

    ``mode`` is one of ``default_only`` (untagged only; the default), ``tags`` (only the
    listed tags), ``default_and`` (untagged plus listed), ``any`` (everything), ``none``
    (nothing: a runtime that runs no activities); ``tag_set`` holds the listed tags.

    The value *is* duroxide-python's string form, as its ``TagFilter`` members are plain
    strings: ``TagFilter.ANY == "any"``, and ``TagFilter.tags(["gpu"])`` is the JSON text
    ``{"tags": ["gpu"]}`` (tags sorted, so equal filters are equal strings), which
    ``json.loads`` reads and a config file can hold. Immutable.
    """

    __slots__ = ("mode", "tag_set")  # (read-only: set once in __new__)

    def __new__(cls, mode: str = "default_only", tag_set: Iterable[str] = frozenset()) -> "TagFilter":
        from ..errors import ConfigurationError

        if not isinstance(mode, str):
            raise ConfigurationError(f"TagFilter mode must be a string, got {type(mode).__name__}")
        tags = frozenset(tag_set)
        if mode not in _TAG_MODES:
            if not tags:  # the string form itself (a config value, or pickle rebuilding one)
                return cls.from_value(mode)
            raise ConfigurationError(f"unknown TagFilter mode {mode!r}: expected one of {', '.join(_TAG_MODES)}")
        if mode in ("tags", "default_and"):
            tags = cls._check_tags(tags)
            text = json.dumps({mode: sorted(tags)})
        elif tags:
            raise ConfigurationError(f"TagFilter mode {mode!r} takes no tags, got {sorted(map(str, tags))}")
        else:
            text = mode
        self = str.__new__(cls, text)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "tag_set", tags)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"TagFilter is immutable (cannot set {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (TagFilter, (self.mode, self.tag_set))

    def __repr__(self) -> str:
        if self.mode in ("tags", "default_and"):
            return f"TagFilter.{self.mode}({sorted(self.tag_set)!r})"
        return f"TagFilter({self.mode!r})"

    @classmethod
    def default_only(cls) -> "TagFilter":
        return cls("default_only")

    @classmethod
    def any(cls) -> "TagFilter":
        return cls("any")

    @classmethod
    def none(cls) -> "TagFilter":
        return cls("none")

    @classmethod
    def tags(cls, tags: Iterable[str]) -> "TagFilter":
        return cls("tags", cls._check_tags(tags))

    @classmethod
    def default_and(cls, tags: Iterable[str]) -> "TagFilter":
        return cls("default_and", cls._check_tags(tags))

    @staticmethod
    def _check_tags(tags: Iterable[str]) -> frozenset[str]:
        from ..errors import ConfigurationError

        if isinstance(tags, str):
            raise ConfigurationError("TagFilter expects a list of tags, not a single string")
        found = frozenset(tags)
        if not 1 <= len(found) <= 5:
            raise ConfigurationError(f"a worker tag filter takes 1 to 5 tags, got {len(found)}")
        for tag in found:
            if not isinstance(tag, str) or not tag:
                raise ConfigurationError(f"tags must be non-empty strings, got {tag!r}")
            problem = text_problem(tag)  # (a lone surrogate failed every SQLite worker fetch)
            if problem is not None:
                raise ConfigurationError(f"worker tag filter: the tag {problem}, got {tag!r}"[:300])
        return frozenset(map(plain_text, found))

    @classmethod
    def from_value(cls, value: Any) -> "TagFilter":
        """A TagFilter from itself or from duroxide-python's string forms: ``"default_only"``,
        ``"any"``, ``"none"``, or the JSON its ``TagFilter.tags([...])`` /
        ``TagFilter.default_and([...])`` return (``{"tags": [...]}`` / ``{"default_and": [...]}``),
        as a config file or environment variable may keep them."""
        from ..errors import ConfigurationError

        if isinstance(value, TagFilter):
            return value
        if not isinstance(value, str):
            raise ConfigurationError(f"a worker tag filter must be a TagFilter or its string form, got {type(value).__name__}")
        if value in ("default_only", "any", "none"):
            return cls(value)
        try:
            data = json.loads(value)
        except ValueError:
            data = None
        if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in ("tags", "default_and"):
            mode, tags = next(iter(data.items()))
            if isinstance(tags, list):
                return cls(mode, cls._check_tags(tags))
        raise ConfigurationError(f"unknown worker tag filter {value!r}: expected 'default_only', 'any', 'none', "
                                 "'{\"tags\": [...]}' or '{\"default_and\": [...]}'")

    def matches(self, tag: str | None) -> bool:
        mode = self.mode
        if mode == "any":
            return True
        if mode == "none":
            return False
        if tag is None:
            return mode in ("default_only", "default_and")
        return mode in ("tags", "default_and") and tag in self.tag_set


# duroxide-python's constants: TagFilter.DEFAULT_ONLY / ANY / NONE.
TagFilter.DEFAULT_ONLY = TagFilter("default_only")  # type: ignore[attr-defined]
TagFilter.ANY = TagFilter("any")  # type: ignore[attr-defined]
TagFilter.NONE = TagFilter("none")  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True)
class SessionConfig:
    """Passed to ``fetch_work_item`` by workers that take session-pinned activities."""

    owner_id: str
    lock_timeout_ms: int = 30_000


@attrs.frozen
class KvEntry:
    value: str
    last_updated_at_ms: int


@attrs.frozen(kw_only=True)
class OrchestrationItem:
    """One locked batch for one instance (SPEC §2.6)."""

    instance: str
    orchestration_name: str
    execution_id: int
    version: str | None
    history: tuple[HistoryEvent, ...]
    messages: tuple[WorkItem, ...]
    lock_token: str
    attempt_count: int
    history_error: str | None = None
    kv_snapshot: Mapping[str, KvEntry] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class WorkItemLease:
    item: ActivityExecute
    lock_token: str
    attempt_count: int


@attrs.frozen(kw_only=True)
class ExecutionMetadata:
    """What the runtime tells the provider about the execution after a turn (SPEC §2.6)."""

    status: str | None = None  # "Completed" | "Failed" | "ContinuedAsNew" | None (running)
    output: str | None = None
    orchestration_name: str | None = None
    orchestration_version: str | None = None
    parent_instance_id: str | None = None
    pinned_duroxide_version: str | None = None


@attrs.frozen
class ScheduledActivityIdentifier:
    instance: str
    execution_id: int
    activity_id: int


# --- management records (SPEC §14) ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class InstanceInfo:
    instance_id: str
    orchestration_name: str
    orchestration_version: str | None
    current_execution_id: int
    status: str
    output: str | None
    created_at: int
    updated_at: int
    parent_instance_id: str | None = None


@attrs.frozen(kw_only=True)
class ExecutionInfo:
    execution_id: int
    status: str
    output: str | None
    started_at: int
    completed_at: int | None
    event_count: int


@attrs.frozen(kw_only=True)
class SystemMetrics:
    total_instances: int
    total_executions: int
    running_instances: int
    completed_instances: int
    failed_instances: int
    total_events: int


@attrs.frozen(kw_only=True)
class QueueDepths:
    orchestrator_queue: int
    worker_queue: int
    timer_queue: int = 0


@attrs.frozen(kw_only=True, hash=False)
class InstanceTree:
    """The root and every instance under it. A provider's ``get_instance_tree`` lists them
    children before parents (the order a delete needs, the reference's provider contract);
    ``Client.get_instance_tree`` lists them root first, as duroxide-python does (that order
    reversed). ``all_ids`` is a list, as duroxide-python returns it (a tuple compared unequal to
    a list)."""

    root_id: str
    all_ids: list[str] = attrs.field(converter=list)

    @property
    def size(self) -> int:
        """How many instances the tree holds (the root included), as in duroxide-python."""
        return len(self.all_ids)


@attrs.frozen(kw_only=True)
class DeleteInstanceResult:
    instances_deleted: int = 0
    executions_deleted: int = 0
    events_deleted: int = 0
    queue_messages_deleted: int = 0


def _instance_ids(value: Any) -> tuple[str, ...] | None:
    """``instance_ids`` as a tuple of non-empty strings. A bare string is refused: iterating it
    would name every single-character instance id (a bulk delete of the wrong instances)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise InvalidInputError(
            f"instance_ids must be a list of instance ids, got the {type(value).__name__} {value!r} "
            "(for one instance, pass [id])")
    if not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise InvalidInputError(f"instance_ids must be a list of instance ids, got {type(value).__name__}")
    ids = tuple(value)
    for one in ids:
        if not isinstance(one, str) or not one:
            raise InvalidInputError(f"instance_ids must hold non-empty strings, got {one!r}")
        problem = text_problem(one)  # as every single-id call checks it (no store holds a NUL / lone surrogate)
        if problem is not None:
            raise InvalidInputError(f"instance_ids: {one!r} {problem}"[:300])
    return ids


#: The largest count or time a store's 64-bit integer column (and a SQL LIMIT) takes.
MAX_COUNT = 2**63 - 1


def _optional_count(_instance: Any, attribute: Any, value: Any) -> None:
    """None, or an int from 0 to MAX_COUNT (not a bool): limits, counts and epoch-millisecond
    times (a larger one failed inside the SQL drivers; duroxide-python refuses it here too)."""
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_COUNT):
        raise InvalidInputError(f"{attribute.name} must be None or an integer from 0 to 2**63 - 1, got {value!r}"[:300])


@attrs.frozen
class InstanceFilter:
    """Which instances a bulk operation touches: all of ``instance_ids`` (when given), completed
    before ``completed_before`` (epoch ms, when given), at most ``limit`` of them. Validated on
    construction (a wrong type is an InvalidInputError, never a partial match)."""

    instance_ids: tuple[str, ...] | None = attrs.field(default=None, converter=_instance_ids)
    completed_before: int | None = attrs.field(default=None, validator=_optional_count)
    limit: int | None = attrs.field(default=None, validator=_optional_count)


@attrs.frozen
class PruneOptions:
    """Which old executions ``prune_executions`` deletes (validated like InstanceFilter)."""

    keep_last: int | None = attrs.field(default=None, validator=_optional_count)
    completed_before: int | None = attrs.field(default=None, validator=_optional_count)


@attrs.frozen(kw_only=True)
class PruneResult:
    instances_processed: int = 0
    executions_deleted: int = 0
    events_deleted: int = 0


# --- the protocol ----------------------------------------------------------------------------


class Provider(Protocol):
    """Storage + queues. Every method is atomic. Times are integer ms from ``self.clock``.

    Errors: :class:`~duroxide_sim.errors.ProviderError` with ``retryable``; lock problems raise
    :class:`~duroxide_sim.errors.LockLostError` (its message mentions the lock token).

    Optional extras, looked up with ``getattr`` and never required: the simulation hook
    :meth:`SimulationHooks.next_wakeup_ms`, and the test hooks ``_corrupt_history(instance,
    error)`` and ``_check()`` used by the conformance suite (``duroxide_sim.testing.conformance``),
    which checks any provider against this contract.
    """

    clock: Clock | None

    def bind_clock(self, clock: Clock) -> None:
        """Use ``clock`` if no clock was injected at construction (never replaces one)."""

    def add_wakeup_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("orchestrator"|"worker")`` after new work becomes visible
        in-process (enqueue, ack), and ``callback("committed")`` after every orchestration ack.
        Lets the driver, and clients waiting for a status, wake at once instead of polling."""

    # orchestrator queue
    def fetch_orchestration_item(
        self, lock_timeout_ms: int, poll_timeout_ms: int = 0, filter: tuple[str, str] | None = None
    ) -> OrchestrationItem | None: ...

    def ack_orchestration_item(
        self,
        lock_token: str,
        execution_id: int,
        history_delta: Sequence[HistoryEvent],
        worker_items: Sequence[ActivityExecute],
        orchestrator_items: Sequence[WorkItem],
        metadata: ExecutionMetadata,
        cancelled_activities: Sequence[ScheduledActivityIdentifier] = (),
    ) -> None: ...

    def abandon_orchestration_item(
        self, lock_token: str, delay_ms: int | None = None, ignore_attempt: bool = False
    ) -> None: ...

    def renew_orchestration_item_lock(self, lock_token: str, extend_ms: int) -> None: ...

    # worker queue
    def fetch_work_item(
        self,
        lock_timeout_ms: int,
        poll_timeout_ms: int = 0,
        session: SessionConfig | None = None,
        tag_filter: TagFilter = TagFilter("default_only"),
    ) -> WorkItemLease | None: ...

    def ack_work_item(self, lock_token: str, completion: WorkItem | None) -> None: ...

    def renew_work_item_lock(self, lock_token: str, extend_ms: int) -> None: ...

    def abandon_work_item(
        self, lock_token: str, delay_ms: int | None = None, ignore_attempt: bool = False
    ) -> None: ...

    # enqueue and reads
    def enqueue_for_orchestrator(self, item: WorkItem, delay_ms: int | None = None) -> None: ...

    def enqueue_for_worker(self, item: ActivityExecute) -> None: ...

    def read(self, instance: str) -> list[HistoryEvent]: ...

    def read_with_execution(self, instance: str, execution_id: int) -> list[HistoryEvent]: ...

    def append_with_execution(
        self, instance: str, execution_id: int, events: Sequence[HistoryEvent]
    ) -> None: ...

    def latest_execution_id(self, instance: str) -> int | None: ...

    def get_custom_status(self, instance: str, last_seen_version: int) -> tuple[str | None, int] | None: ...

    def get_kv_value(self, instance: str, key: str) -> str | None: ...

    def get_kv_all_values(self, instance: str) -> dict[str, str]: ...

    def renew_session_lock(self, owner_ids: Sequence[str], extend_ms: int, idle_timeout_ms: int) -> int: ...

    def cleanup_orphaned_sessions(self, idle_timeout_ms: int) -> int: ...


class SimulationHooks(Protocol):
    """Optional provider extras (SPEC §18). Callers use ``getattr(provider, name, None)``, so a
    provider without them still satisfies :class:`Provider`."""

    def next_wakeup_ms(self) -> int | None:
        """Earliest future time (ms, by the provider's clock) at which a queued message becomes
        visible or a live lock expires; None if nothing is pending. Lets a simulated clock jump
        straight to the next deadline instead of polling."""

    def _corrupt_history(self, instance: str, error: str | None = ...) -> None:
        """Test hook: make the current execution's history of ``instance`` undeserializable
        (fetches then return ``history_error``); ``error=None`` repairs it."""

    def _check(self) -> None:
        """Test hook: assert the provider's internal invariants (raises AssertionError)."""


class ManagementProvider(Provider, Protocol):
    """Admin capability (SPEC §14/§15.1). ``Client`` checks for it with ``hasattr``."""

    def list_instances(self) -> list[str]: ...

    def list_instances_by_status(self, status: str) -> list[str]: ...

    def get_instance_info(self, instance: str) -> InstanceInfo: ...

    def get_execution_info(self, instance: str, execution_id: int) -> ExecutionInfo: ...

    def list_executions(self, instance: str) -> list[int]: ...

    def get_system_metrics(self) -> SystemMetrics: ...

    def get_queue_depths(self) -> QueueDepths: ...

    def get_instance_tree(self, instance: str) -> InstanceTree: ...

    def list_children(self, instance: str) -> list[str]: ...

    def get_parent_id(self, instance: str) -> str | None: ...

    def delete_instances_atomic(self, ids: Sequence[str], force: bool) -> DeleteInstanceResult: ...

    def delete_instance(self, instance: str, force: bool) -> DeleteInstanceResult: ...

    def delete_instance_bulk(self, filter: InstanceFilter) -> DeleteInstanceResult: ...

    def prune_executions(self, instance: str, options: PruneOptions) -> PruneResult: ...

    def prune_executions_bulk(self, filter: InstanceFilter, options: PruneOptions) -> PruneResult: ...
