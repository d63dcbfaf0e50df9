"""Client: start, signal, cancel, observe and manage orchestration instances (SPEC §14, §17).

Names, argument orders and result shapes follow duroxide-python: inputs are JSON-encoded,
``get_status``/``wait_for_orchestration`` return :class:`OrchestrationResult` with the output
JSON-decoded, waits that run out of time raise ``RuntimeError("Operation timed out")``
(:class:`~duroxide_sim.errors.OperationTimeout`, which is also a ``TimeoutError``).

Reads and management go straight to the provider; the client never touches the engine. Time
and sleeping are injected (``clock``, ``sleep``) so waits run on a simulated clock too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..core import codec
from ..core.context import MAX_INSTANCE_ID_BYTES as _MAX_INSTANCE_ID_BYTES
from ..core.context import reserved_id_problem
from ..core.texts import plain_text, text_problem
from ..core.events import (
    CancelInstance,
    ExternalRaised,
    HistoryEvent,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    QueueMessage,
    StartOrchestration,
    to_dict,
)
from ..errors import (
    ConfigurationError,
    InstanceNotFound,
    InvalidInputError,
    InvalidInputTypeError,
    ManagementNotAvailable,
    OperationTimeout,
    OrchestrationFailedError,
    ProviderError,
    SerializationError,
)
from ..providers.base import Clock, InstanceFilter, InstanceTree, PruneOptions
from .records import Event, OrchestrationStats, event_record

__all__ = ["Client", "OrchestrationResult", "Event", "OrchestrationStats", "event_to_public_dict", "MAX_INSTANCE_ID_BYTES", "MAX_ANY_INSTANCE_ID_BYTES"]

#: Longest instance id a client may start (UTF-8 bytes); the same bound applies to the ids
#: orchestrations give their sub-orchestrations and detached starts (core.context).
MAX_INSTANCE_ID_BYTES = _MAX_INSTANCE_ID_BYTES
#: Longest id accepted by every other call: sub-orchestration ids derive from their parent's id
#: (``{parent}::sub::N``), so they may run a little past the start limit and must stay reachable.
MAX_ANY_INSTANCE_ID_BYTES = MAX_INSTANCE_ID_BYTES + 1_024


@attrs.define(slots=False)
class OrchestrationResult:
    """Status of an instance: ``status`` in NotFound | Running | Completed | Failed. A plain
    object as in duroxide-python (``vars(result)`` gives its five fields)."""

    status: str
    output: Any = None
    error: str | None = None
    custom_status: str | None = None
    custom_status_version: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.status in ("Completed", "Failed")


def event_to_public_dict(ev: HistoryEvent) -> Event:
    """The public form of a history event (``read_execution_history``): an :class:`Event` with
    ``event_id, kind, source_event_id, timestamp_ms, data`` as attributes and as mapping keys;
    ``data`` as duroxide-python gives it (see :func:`~duroxide_sim.runtime.records.event_record`)."""
    return event_record(ev)


def _check_id(instance_id: Any, limit: int = MAX_ANY_INSTANCE_ID_BYTES) -> str:
    if not isinstance(instance_id, str):
        raise InvalidInputTypeError(f"instance_id must be a string, got {type(instance_id).__name__}")
    problem = text_problem(instance_id, limit)
    if problem is not None:
        raise InvalidInputError(f"instance_id {problem}" if instance_id else "instance_id must not be empty")
    return plain_text(instance_id)


def _check_result_type(result_type: Any) -> None:
    try:
        codec.check_result_type(result_type)
    except TypeError as exc:
        raise InvalidInputTypeError(str(exc)) from None


def _check_execution_id(execution_id: Any) -> int:
    # (bounded like a store's 64-bit column: a larger one failed inside the SQLite driver)
    if type(execution_id) is not int or not 1 <= execution_id <= 2**63 - 1:
        raise InvalidInputError(f"execution_id must be a positive integer up to 2**63 - 1 (executions count from 1), "
                                f"got {execution_id!r}"[:300])
    return execution_id


def _check_record(value: Any, cls: type, what: str) -> Any:
    """``value`` if it is a ``cls`` (None: the default one), else a clear error (a dict is not
    read as one: its keys would be unchecked)."""
    if value is None:
        return cls()
    if not isinstance(value, cls):
        hint = f" (build one with {cls.__name__}(**your_dict))" if isinstance(value, Mapping) else ""
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise InvalidInputError(f"{what} must be {article} {cls.__name__}, got {type(value).__name__}{hint}")
    return value


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise InvalidInputTypeError(f"KV key must be a string, got {key!r}"[:200])
    if not key:
        return key  # (an empty key is a key, as in duroxide-python)
    problem = text_problem(key)  # (no store holds a NUL or a lone surrogate: SQLite raised UnicodeEncodeError)
    if problem is not None:
        raise InvalidInputError(f"KV key {problem}, got {key!r}"[:200])
    return key


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise InvalidInputTypeError(f"{what} must be a non-empty string, got {name!r}")
    if not name:
        raise InvalidInputError(f"{what} must be a non-empty string, got {name!r}")
    problem = text_problem(name)  # (every provider must store it: no NUL, no lone surrogate)
    if problem is not None:
        raise InvalidInputError(f"{what} {problem}, got {name!r}")
    return plain_text(name)


#: What a client calls on every provider (the management views are optional: ManagementNotAvailable).
_CLIENT_PROVIDER_METHODS = ("enqueue_for_orchestrator", "read")


def check_provider(provider: Any, methods: tuple[str, ...]) -> None:
    """ConfigurationError unless ``provider`` has the ``methods`` a Runtime or Client calls,
    naming what it got (with a hint when it is a path)."""
    missing = [m for m in methods if not callable(getattr(provider, m, None))]
    if missing:
        hint = (" (open one: SqliteProvider.open(path))"
                if isinstance(provider, (str, bytes)) or hasattr(provider, "__fspath__") else "")
        raise ConfigurationError(f"provider must be a Provider (SqliteProvider, PostgresProvider, InMemoryProvider, ...), "
                                 f"got {type(provider).__name__} without {', '.join(missing)}{hint}")


class Client:
    """Talks to a provider on behalf of applications."""

    def __init__(self, provider: Any, *, clock: Clock | None = None, sleep: Callable[[float], None] | None = None) -> None:
        from . import realtime

        # (a path or None given for a provider was accepted, and every call then failed with an
        # AttributeError about the value's missing methods)
        check_provider(provider, _CLIENT_PROVIDER_METHODS)
        self.provider = provider
        self.clock = clock or getattr(provider, "clock", None) or realtime.SystemClock()
        if hasattr(provider, "bind_clock"):
            provider.bind_clock(self.clock)
        self._sleep = sleep or realtime.CommitWaiter(provider)
        # What a wait's timeout is measured on: a duration in real time when the client sleeps
        # in real time (a wall-clock step must neither stretch nor cut it); the injected clock
        # when the sleep is injected too (a simulation moves that clock while it "sleeps").
        self._elapsed_ms: Callable[[], float] = self.clock.now_ms if sleep is not None else realtime.monotonic_ms

    # --- starting and signalling ------------------------------------------------------------

    def _start(self, instance_id: str, name: str, input_text: str, version: str | None) -> None:
        instance_id = _check_id(instance_id, MAX_INSTANCE_ID_BYTES)
        problem = reserved_id_problem(instance_id)
        if problem is not None:
            raise InvalidInputError(f"Invalid input: instance id {instance_id!r} {problem}"[:400])
        name = _check_name(name, "orchestration name")
        if version is not None:
            from ..core.registry import parse_semver

            parse_semver(version)
            version = plain_text(version)
        self.provider.enqueue_for_orchestrator(
            StartOrchestration(instance=instance_id, orchestration=name, input=input_text, version=version)
        )

    def start_orchestration(self, instance_id: str, name: str, input: Any = None) -> None:
        self._start(instance_id, name, codec.encode(input, f"input of orchestration {name!r}"), None)

    def start_orchestration_versioned(self, instance_id: str, name: str, input: Any, version: str) -> None:
        self._start(instance_id, name, codec.encode(input, f"input of orchestration {name!r}"), version)


    def raise_event(self, instance_id: str, event_name: str, data: Any = None) -> None:
        self.provider.enqueue_for_orchestrator(
            ExternalRaised(instance=_check_id(instance_id), name=_check_name(event_name, "event name"), data=codec.encode(data, f"data of event {event_name!r}"))
        )


    def enqueue_event(self, instance_id: str, queue_name: str, data: Any = None) -> None:
        self.provider.enqueue_for_orchestrator(
            QueueMessage(instance=_check_id(instance_id), name=_check_name(queue_name, "queue name"), data=codec.encode(data, f"message for queue {queue_name!r}"))
        )


    raise_event_persistent = enqueue_event  # deprecated Rust name

    # The client's typed start/raise/enqueue are aliases of the plain calls, as in duroxide-python
    # (SPEC §17): a str is JSON-encoded like any value, so an order id "12345" arrives as the
    # string "12345", not as the number a raw pass-through made of it. (The orchestration
    # context's typed calls are the ones that pass strings through raw.)
    start_orchestration_typed = start_orchestration
    start_orchestration_versioned_typed = start_orchestration_versioned
    raise_event_typed = raise_event
    enqueue_event_typed = enqueue_event

    def cancel_instance(self, instance_id: str, reason: str | None = None) -> None:
        if reason is not None and not isinstance(reason, str):
            raise InvalidInputError(f"cancel reason must be a string or None, got {type(reason).__name__}")
        # Text every store can hold, within the payload limit (a lone surrogate failed SQLite's
        # insert and was kept by the in-memory provider; a reason of any size was stored whole).
        if reason:
            try:
                reason = codec.check_size(reason, "cancel reason")
            except SerializationError as exc:
                raise InvalidInputError(str(exc)) from None
        else:
            reason = ""
        self.provider.enqueue_for_orchestrator(CancelInstance(instance=_check_id(instance_id), reason=reason))

    # --- status -----------------------------------------------------------------------------

    def get_status(self, instance_id: str) -> OrchestrationResult:
        _check_id(instance_id)
        fast = getattr(self.provider, "read_status", None)
        row = fast(instance_id) if fast is not None else None
        if row is not None:
            # The execution row mirrors the terminal event (SPEC §2.6 metadata): no history read.
            status, text, custom, version = row
            if status == "Completed":
                return OrchestrationResult("Completed", codec.decode(text), None, custom, version)
            if status == "Failed":
                return OrchestrationResult("Failed", None, text, custom, version)
            return OrchestrationResult("Running", None, None, custom, version)
        history = self.provider.read(instance_id)
        cs = self.provider.get_custom_status(instance_id, 0)
        custom, version = cs if cs is not None else (None, 0)
        status = "NotFound"
        output: Any = None
        error: str | None = None
        for ev in history:
            if isinstance(ev, OrchestrationStarted) and status == "NotFound":
                status = "Running"
            elif isinstance(ev, OrchestrationCompleted):
                status, output, error = "Completed", codec.decode(ev.output), None
            elif isinstance(ev, OrchestrationFailed):
                status, output, error = "Failed", None, ev.details.display_message()
            elif isinstance(ev, OrchestrationContinuedAsNew):
                status = "Running"
        if status == "NotFound":
            # Read apart from the history: a first turn committing between the two reads must
            # not give a NotFound that carries its custom status (and a version change).
            custom, version = None, 0
        return OrchestrationResult(status, output, error, custom, version)

    get_orchestration_status = get_status

    def _wait(self, check: Callable[[], Any], timeout_ms: int, instance: str | None = None,
              poll_ms: int | None = None, final_only: bool = False) -> Any:
        """Check, then poll until ``check`` returns something or ``timeout_ms`` passes: every
        ``poll_ms``, or (None) 5 ms doubling to 100 ms (SPEC §14). An in-process provider
        wakes the wait at once when the instance commits (``final_only``: when a commit ends
        it, for a ``check`` that only an end can satisfy), so the polls only bound how late a
        change made elsewhere (another process) is seen."""
        if type(timeout_ms) is not int or timeout_ms < 0:  # (a bool is not a timeout)
            raise InvalidInputError(f"timeout_ms must be a non-negative integer, got {timeout_ms!r}")
        now = self._elapsed_ms
        deadline = now() + timeout_ms
        delay, cap = (5, 100) if poll_ms is None else (poll_ms, poll_ms)
        # A sleeper that can wake for one instance's commits (the in-process CommitWaiter).
        wait_for = getattr(self._sleep, "wait_for", None) if instance is not None else None
        try:
            while True:
                try:
                    found = check()
                except ProviderError as exc:
                    # A retryable provider error (a dropped connection, a busy database) is
                    # waited out like a not-yet answer, until the deadline; then it is reported.
                    if not exc.retryable or deadline - now() <= 0:
                        raise
                    found = None
                if found is not None:
                    return found
                remaining = deadline - now()
                if remaining <= 0:
                    raise OperationTimeout("Operation timed out")
                if wait_for is not None:
                    if final_only:
                        wait_for(min(delay, remaining), instance, True)
                    else:
                        wait_for(min(delay, remaining), instance)
                else:
                    self._sleep(min(delay, remaining))
                delay = min(delay * 2, cap)
        finally:
            done = getattr(self._sleep, "done", None) if wait_for is not None else None
            if done is not None:
                done()

    def wait_for_orchestration(self, instance_id: str, timeout_ms: int = 30_000) -> OrchestrationResult:
        """Wait until the instance is Completed or Failed (a continue-as-new is not final)."""

        def check() -> OrchestrationResult | None:
            st = self.get_status(instance_id)
            return st if st.is_terminal else None

        return self._wait(check, timeout_ms, instance_id, final_only=True)

    def wait_for_orchestration_typed(self, instance_id: str, timeout_ms: int = 30_000, result_type: Any = None) -> Any:
        """The output of a completed instance (structured into ``result_type`` if given);
        raises :class:`OrchestrationFailedError` with the error text if it failed."""
        _check_result_type(result_type)
        st = self.wait_for_orchestration(instance_id, timeout_ms)
        if st.status == "Failed":
            raise OrchestrationFailedError(st.error or "Orchestration failed", instance_id=instance_id)
        if result_type is None:
            return st.output
        return codec.decode_typed(self._output_text(instance_id), result_type,
                                  f"output of orchestration instance {instance_id!r}")

    def _output_text(self, instance_id: str) -> str | None:
        """The completed instance's output as stored (the typed API reads the text, not the
        JSON value: a raw string output stays exactly as written)."""
        fast = getattr(self.provider, "read_status", None)
        row = fast(instance_id) if fast is not None else None
        if row is not None and row[0] == "Completed":
            return row[1]
        for ev in reversed(self.provider.read(instance_id)):
            if isinstance(ev, OrchestrationCompleted):
                return ev.output
        return None

    def wait_for_status_change(
        self, instance_id: str, last_seen_version: int = 0, poll_interval_ms: int = 200, timeout_ms: int = 30_000
    ) -> OrchestrationResult:
        """Return once ``custom_status_version > last_seen_version`` or the instance is terminal."""
        if type(last_seen_version) is not int or last_seen_version < 0:
            raise InvalidInputError(f"last_seen_version must be a non-negative integer, got {last_seen_version!r}")
        if type(poll_interval_ms) is not int or poll_interval_ms < 1:
            raise InvalidInputError(f"poll_interval_ms must be a positive integer, got {poll_interval_ms!r}")

        def check() -> OrchestrationResult | None:
            st = self.get_status(instance_id)
            return st if st.custom_status_version > last_seen_version or st.is_terminal else None

        return self._wait(check, timeout_ms, instance_id, poll_interval_ms)

    # --- KV ---------------------------------------------------------------------------------

    def get_kv_value(self, instance_id: str, key: str) -> str | None:
        return self.provider.get_kv_value(_check_id(instance_id), _check_key(key))

    def get_kv_value_typed(self, instance_id: str, key: str, result_type: Any = None) -> Any:
        _check_result_type(result_type)
        raw = self.get_kv_value(instance_id, key)
        return None if raw is None else codec.decode_typed(raw, result_type, f"KV value {key!r}")

    def get_kv_all_values(self, instance_id: str) -> dict[str, str]:
        return dict(self.provider.get_kv_all_values(_check_id(instance_id)))

    def wait_for_kv_value(self, instance_id: str, key: str, timeout_ms: int = 30_000) -> str:
        try:
            return self._wait(lambda: self.get_kv_value(instance_id, key), timeout_ms, instance_id)
        except OperationTimeout:
            raise OperationTimeout(f"Timed out waiting for value '{key}' on instance '{instance_id}'") from None

    def wait_for_kv_value_typed(self, instance_id: str, key: str, timeout_ms: int = 30_000, result_type: Any = None) -> Any:
        _check_result_type(result_type)
        return codec.decode_typed(self.wait_for_kv_value(instance_id, key, timeout_ms), result_type, f"KV value {key!r}")

    # --- management -------------------------------------------------------------------------

    def has_management_capability(self) -> bool:
        return hasattr(self.provider, "list_instances")

    def _admin(self) -> Any:
        if not self.has_management_capability():
            raise ManagementNotAvailable(f"{type(self.provider).__name__} does not support management operations")
        return self.provider

    def list_all_instances(self) -> list[str]:
        return self._admin().list_instances()

    def list_instances_by_status(self, status: str) -> list[str]:
        if status not in ("Running", "Completed", "Failed", "ContinuedAsNew"):
            raise InvalidInputError(f"unknown status {status!r}; use Running, Completed, Failed or ContinuedAsNew")
        return self._admin().list_instances_by_status(status)

    def get_instance_info(self, instance_id: str) -> Any:
        return self._admin().get_instance_info(_check_id(instance_id))

    def get_execution_info(self, instance_id: str, execution_id: int) -> Any:
        return self._admin().get_execution_info(_check_id(instance_id), _check_execution_id(execution_id))

    def list_executions(self, instance_id: str) -> list[int]:
        return self._admin().list_executions(_check_id(instance_id))

    def read_execution_history(self, instance_id: str, execution_id: int) -> list[Event]:
        events = self.provider.read_with_execution(_check_id(instance_id), _check_execution_id(execution_id))
        return [event_to_public_dict(ev) for ev in events]

    def read_history_events(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        """The typed events (not dicts) of an execution; the latest when ``execution_id`` is None."""
        if execution_id is None:
            return list(self.provider.read(_check_id(instance_id)))
        return list(self.provider.read_with_execution(_check_id(instance_id), _check_execution_id(execution_id)))

    def get_instance_tree(self, instance_id: str) -> Any:
        """The instance and its descendants, root first, as duroxide-python lists them (a
        depth-first walk: an instance, then its last-created child's subtree, ..., its first
        child's subtree). Providers list the tree for deletion, children before parents (the
        reference's provider contract): this is that order reversed. An unknown id gives a tree
        of that id alone, as duroxide-python answers (the provider's own call raises
        InstanceNotFound)."""
        admin = self._admin()
        try:
            tree = admin.get_instance_tree(_check_id(instance_id))
        except InstanceNotFound:
            return InstanceTree(root_id=instance_id, all_ids=(instance_id,))
        return InstanceTree(root_id=tree.root_id, all_ids=tree.all_ids[::-1])

    def get_system_metrics(self) -> Any:
        return self._admin().get_system_metrics()

    def get_queue_depths(self) -> Any:
        return self._admin().get_queue_depths()

    def get_orchestration_stats(self, instance_id: str) -> OrchestrationStats | None:
        """[SDK-only] Size figures of an instance (duroxide-python's ``SystemStats`` fields: the
        current execution's event count and JSON size, KV key count and value bytes, messages
        queued for it) plus its status, executions and custom status version. ``None`` for an
        instance that does not exist and has nothing queued for it (duroxide-python's answer for
        an unknown id, and SPEC §14's rule for reads of unknown instances); one not started yet
        whose start or events are queued gets its figures, status ``NotFound``."""
        st = self.get_status(_check_id(instance_id))
        pending = getattr(self.provider, "pending_messages", None)
        if st.status == "NotFound" and not self.provider.latest_execution_id(instance_id) and (
                pending is None or not pending(instance_id)):
            return None
        history = self.provider.read(instance_id)
        kv = self.provider.get_kv_all_values(instance_id)
        return OrchestrationStats(
            history_event_count=len(history),
            history_size_bytes=sum(len(json.dumps(to_dict(ev), separators=(",", ":")).encode()) for ev in history),
            kv_user_key_count=len(kv),
            kv_total_value_bytes=sum(len(v.encode("utf-8", "surrogatepass")) for v in kv.values()),
            queue_pending_count=pending(instance_id) if pending is not None else 0,
            instance_id=instance_id,
            status=st.status,
            executions=self.provider.latest_execution_id(instance_id) or 0,
            custom_status_version=st.custom_status_version,
        )

    def delete_instance(self, instance_id: str, force: bool = False) -> Any:
        if type(force) is not bool:  # a truthy "no" or "false" deleted a running instance
            raise TypeError(f"delete_instance: force must be True or False, got {type(force).__name__} {force!r}"[:200])
        return self._admin().delete_instance(_check_id(instance_id), force)

    def delete_instance_bulk(self, filter: InstanceFilter | None = None) -> Any:
        return self._admin().delete_instance_bulk(_check_record(filter, InstanceFilter, "filter"))

    def prune_executions(self, instance_id: str, options: PruneOptions | None = None) -> Any:
        return self._admin().prune_executions(_check_id(instance_id), _check_record(options, PruneOptions, "options"))

    def prune_executions_bulk(self, filter: InstanceFilter | None = None, options: PruneOptions | None = None) -> Any:
        return self._admin().prune_executions_bulk(_check_record(filter, InstanceFilter, "filter"),
                                                   _check_record(options, PruneOptions, "options"))
