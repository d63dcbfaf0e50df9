"""The turn executor: (history, new messages, now_ms) -> TurnResult (SPEC §3, §4, §6–§8, §10.3).

One *turn* takes the persisted history of an instance's current execution plus a batch of
queued messages, reruns the orchestration code from the start, and returns what to commit:
new history events, work items to dispatch, activities to cancel, execution metadata.

How the code is driven: orchestration code yields (or awaits) task descriptors. Yielding a task
*emits* its action(s) into a FIFO; walking history *matches* schedule events against that FIFO
in order; completion events *deliver* results to the matched tasks; the code is resumed ("polled")
only when something it may be waiting on changed. Exactly one completion is delivered between
polls, which makes a race's winner the child whose completion comes first in history. Actions
left in the FIFO after the walk are new work: they get the next event ids.

Every divergence between code and history becomes a ``Configuration{Nondeterminism}`` failure
whose message is built by :func:`nondeterminism_message` (kind, event id, both sides, the
orchestration's source line) so that all such messages read alike.

Pure: receives ``now_ms`` as data, never reads a clock, does no I/O; trace messages are returned
in ``TurnResult.logs`` for the dispatcher to emit once the turn is committed.
"""

from __future__ import annotations

import os
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from . import codec
from .context import (
    ActivityTask,
    AllTask,
    ContinueAsNewTask,
    DequeueTask,
    DetachedStartTask,
    DurableTask,
    Either2,
    Either3,
    OrchestrationContext,
    RaceTask,
    RetryTask,
    SubOrchestrationTask,
    TimerTask,
    WaitEventTask,
)
from .events import (
    ENGINE_VERSION,
    SCHEDULE_EVENTS,
    Action,
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityCompletedMsg,
    ActivityExecute,
    ActivityFailed,
    ActivityFailedMsg,
    ActivityScheduled,
    ApplicationError,
    CallActivity,
    CancelInstance,
    ClearKeyValue,
    ClearKeyValues,
    ConfigurationErrorDetails,
    ContinueAsNew,
    ContinueAsNewAction,
    CreateTimer,
    CustomStatusUpdated,
    DequeueEvent,
    ErrorDetails,
    ExternalEvent,
    ExternalRaised,
    ExternalSubscribed,
    ExternalSubscribedCancelled,
    HistoryEvent,
    InfrastructureError,
    KeyValueCleared,
    KeyValuesCleared,
    KeyValueSet,
    OrchestrationCancelRequested,
    OrchestrationChained,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    PoisonError,
    QueueEventDelivered,
    QueueMessage,
    QueueSubscribed,
    QueueSubscriptionCancelled,
    SetKeyValue,
    StartOrchestration,
    StartOrchestrationDetached,
    StartSubOrchestration,
    SubOrchCompletedMsg,
    SubOrchestrationCancelRequested,
    SubOrchestrationCompleted,
    SubOrchestrationFailed,
    SubOrchestrationScheduled,
    SubOrchFailedMsg,
    TimerCreated,
    TimerFired,
    TimerFiredMsg,
    UpdateCustomStatus,
    WaitExternal,
    WorkItem,
)
from .registry import Handler, Registry

__all__ = [
    "TurnInput",
    "TurnResult",
    "LIMITS",
    "execute_turn",
    "poison_turn",
    "nondeterminism_message",
    "describe_event",
    "describe_action",
]

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: SPEC §10.3 limits, checked after each turn.
LIMITS = {
    "custom_status_bytes": 262_144,
    "tag_bytes": 256,
    "kv_value_bytes": 16_384,
    "kv_keys": 100,
    "carry_forward": 20,
    "quiescence_iterations": 100,
}

_COMPLETIONS = (ActivityCompleted, ActivityFailed, TimerFired, SubOrchestrationCompleted, SubOrchestrationFailed)


@attrs.frozen(kw_only=True)
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


@attrs.frozen(kw_only=True)
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


class _Divergence(Exception):
    """Internal: the code and the history disagree; carries the finished message."""


# ---------------------------------------------------------------------------------------------
# Descriptions and the one nondeterminism message builder
# ---------------------------------------------------------------------------------------------


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_event(ev: HistoryEvent) -> str:
    parts = []
    for field in ("name", "instance", "input", "session_id", "tag", "key", "value", "fire_at_ms"):
        if hasattr(ev, field) and getattr(ev, field) is not None:
            parts.append(f"{field}={_short(str(getattr(ev, field)))!r}" if field != "fire_at_ms" else f"{field}={ev.fire_at_ms}")  # type: ignore[attr-defined]
    return f"{type(ev).__name__}({', '.join(parts)})"


def describe_action(action: Action) -> str:
    parts = []
    for field in ("name", "instance", "input", "session_id", "tag", "key", "value", "fire_at_ms"):
        value = getattr(action, field, None)
        if value is not None:
            parts.append(f"{field}={_short(str(value))!r}" if field != "fire_at_ms" else f"{field}={value}")
    return f"{type(action).KIND}({', '.join(parts)})"


def nondeterminism_message(
    problem: str,
    *,
    instance: str,
    execution_id: int,
    event_id: int | None = None,
    expected: str | None = None,
    actual: str | None = None,
    site: tuple[str, int] | None = None,
) -> str:
    """The single format for every nondeterminism report.

    ``<problem>: history has <expected> at event_id=<n>, code did <actual> at <file:line>
    (instance '<id>', execution <n>)``. Parts that do not apply are left out.
    """
    text = problem
    details = []
    if expected is not None:
        details.append(f"history has {expected}" + (f" at event_id={event_id}" if event_id is not None else ""))
    elif event_id is not None:
        details.append(f"at event_id={event_id}")
    if actual is not None:
        details.append(f"code did {actual}")
    if site is not None:
        details.append(f"at {site[0]}:{site[1]}")
    if details:
        text += ": " + ", ".join(details)
    return f"{text} (instance {instance!r}, execution {execution_id})"


# ---------------------------------------------------------------------------------------------
# Engine state
# ---------------------------------------------------------------------------------------------


class _Slot:
    """Engine-side state of one leaf task."""

    __slots__ = (
        "task", "kind", "action", "site", "event_id", "done", "ok", "value", "dropped",
        "cancelled", "child", "name",
    )

    def __init__(self, task: DurableTask, kind: str, action: Action | None, site: tuple[str, int] | None) -> None:
        self.task = task
        self.kind = kind  # activity | timer | wait | queue | sub | detached | can
        self.action = action
        self.site = site
        self.event_id: int | None = None
        self.done = False
        self.ok = True
        self.value: Any = None
        self.dropped = False
        self.cancelled = False  # subscription cancelled (dropped or breadcrumb)
        self.child: str | None = None
        self.name = getattr(action, "name", None)


_ACTION_KIND = {
    ActivityTask: "activity",
    TimerTask: "timer",
    WaitEventTask: "wait",
    DequeueTask: "queue",
    SubOrchestrationTask: "sub",
    DetachedStartTask: "detached",
    ContinueAsNewTask: "can",
}


def _site_of(root: Any) -> tuple[str, int] | None:
    """Deepest user (non-library) frame in the suspended generator/coroutine chain."""
    found = None
    obj = root
    depth = 0
    while obj is not None and depth < 64:
        frame = getattr(obj, "gi_frame", None) or getattr(obj, "cr_frame", None)
        if frame is not None and not frame.f_code.co_filename.startswith(_PKG_DIR):
            found = (frame.f_code.co_filename, frame.f_lineno)
        obj = getattr(obj, "gi_yieldfrom", None) or getattr(obj, "cr_await", None)
        depth += 1
    return found


def _format_exception(exc: BaseException) -> str:
    """``Type: message`` plus the traceback of user frames (engine frames left out)."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_PKG_DIR)
    ]
    head = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if not frames:
        return head
    return head + "\nTraceback (most recent call last):\n" + "".join(traceback.format_list(frames)).rstrip()


class _Engine:
    def __init__(self, inp: TurnInput, handler: Handler, started: OrchestrationStarted, execution_id: int) -> None:
        self.inp = inp
        self.handler = handler
        self.instance = inp.instance
        self.execution_id = execution_id
        self.now_ms = inp.now_ms
        self.fifo: deque[_Slot | tuple[Action, tuple[str, int] | None]] = deque()
        self.by_id: dict[int, _Slot] = {}
        self.by_token: dict[int, _Slot] = {}
        self.pos_subs: dict[str, list[_Slot]] = {}
        self.pos_arrivals: dict[str, list[str]] = {}
        self.q_subs: dict[str, list[_Slot]] = {}
        self.q_buffer: dict[str, list[tuple[int, str]]] = {}  # (event_id, data)
        self.q_consumed: dict[str, int] = {}
        self.dropped: list[_Slot] = []
        self.can: ContinueAsNewTask | None = None
        self.kv: dict[str, tuple[str, int]] = dict(inp.kv_snapshot)
        self.custom_status: str | None = started.initial_custom_status
        self.is_replaying = False
        self.logs: list[tuple[int, str]] = []
        self.output: tuple[bool, Any] | None = None  # (ok, encoded output | ErrorDetails)
        self.events: list[HistoryEvent] = []
        self.cursor = 0
        self.stack: list[Any] = []
        self.waiting: DurableTask | None = None
        self.started_code = False
        self.requested_versions: dict[int, str | None] = {}
        self.ctx = OrchestrationContext(
            self,
            instance_id=inp.instance,
            execution_id=execution_id,
            orchestration_name=started.name,
            orchestration_version=started.version,
        )
        self.input_text = started.input

    # --- hooks used by OrchestrationContext -------------------------------------------------

    def ctx_now(self) -> int:
        """During replay, the time the replayed turn ran (timestamp of the next recorded
        event), so KV timestamps replay identically; else this turn's ``now_ms``."""
        if self.is_replaying and self.cursor < len(self.events):
            return self.events[self.cursor].timestamp_ms
        return self.now_ms

    def emit_plain(self, action: Action, site: tuple[str, int] | None) -> None:
        self.fifo.append((action, site))

    def log(self, level: int, message: str) -> None:
        if not self.is_replaying:
            self.logs.append((level, message))

    # --- driving the code -------------------------------------------------------------------

    def _begin(self) -> Any:
        h = self.handler
        arg = codec.decode_typed(self.input_text, h.input_type, f"input of orchestration {h.name!r}") if h.typed else codec.decode(self.input_text)
        args = (self.ctx, arg) if h.takes_input else (self.ctx,)
        return h.fn(*args)

    def poll(self) -> None:
        if self.output is not None:
            return
        send: Any = None
        throw: BaseException | None = None
        if not self.started_code:
            self.started_code = True
            try:
                result = self._begin()
            except BaseException as exc:  # noqa: BLE001 - user code may raise anything
                self._finish_error(exc)
                return
            if self.handler.style == "plain" or not hasattr(result, "send"):
                self._finish_value(result)
                return
            self.stack.append(result)
        else:
            if self.waiting is None or not self._ready(self.waiting):
                return
            ok, value = self._outcome(self.waiting)
            self.waiting = None
            if ok:
                send = value
            else:
                throw = value
        while True:
            gen = self.stack[-1]
            try:
                yielded = gen.throw(throw) if throw is not None else gen.send(send)
            except StopIteration as stop:
                self.stack.pop()
                send, throw = stop.value, None
                if not self.stack:
                    self._finish_value(send)
                    return
                continue
            except BaseException as exc:  # noqa: BLE001
                self.stack.pop()
                if not self.stack:
                    self._finish_error(exc)
                    return
                send, throw = None, exc
                continue
            send, throw = None, None
            if not isinstance(yielded, DurableTask):
                throw = TypeError(
                    "orchestrations may only yield/await tasks from the context "
                    f"(ctx.schedule_activity, ctx.schedule_timer, ...), got {type(yielded).__name__}; "
                    "asyncio and other awaitables are not durable"
                )
                continue
            if isinstance(yielded, RetryTask):
                self.stack.append(yielded.body(self.ctx))
                continue
            try:
                self._start(yielded)
            except TypeError as exc:
                throw = exc
                continue
            if self._ready(yielded):
                ok, value = self._outcome(yielded)
                if ok:
                    send = value
                else:
                    throw = value
                continue
            self.waiting = yielded
            return

    def _finish_value(self, value: Any) -> None:
        if isinstance(value, ContinueAsNewTask):  # `return ctx.continue_as_new(x)` is accepted too
            self._start(value)
            self.output = None
            return
        try:
            self.output = (True, codec.encode(value, f"output of orchestration {self.handler.name!r}"))
        except Exception as exc:  # noqa: BLE001
            self.output = (False, ApplicationError(kind="OrchestrationFailed", message=str(exc)))

    def _finish_error(self, exc: BaseException) -> None:
        self.output = (False, ApplicationError(kind="OrchestrationFailed", message=_format_exception(exc)))

    def _start(self, task: DurableTask) -> None:
        if task._st is not None:
            return
        if not task.leaf:
            if isinstance(task, RetryTask):
                raise TypeError("retry tasks cannot be joined or raced; yield them on their own")
            task._st = True
            for child in task.children:  # type: ignore[attr-defined]
                self._start(child)
            return
        site = _site_of(self.stack[0]) if self.stack else None
        kind = _ACTION_KIND[type(task)]
        action = _action_for(task, kind, self.now_ms)
        slot = _Slot(task, kind, action, site)
        task._st = slot
        if kind == "detached":
            slot.done = True
        if kind == "can":
            self.can = task  # type: ignore[assignment]
            return
        self.fifo.append(slot)

    def _ready(self, task: DurableTask) -> bool:
        if task.leaf:
            return task._st.done
        if isinstance(task, AllTask):
            return all(c._st.done for c in task.children)
        return any(c._st.done for c in task.children)  # type: ignore[attr-defined]

    def _outcome(self, task: DurableTask) -> tuple[bool, Any]:
        if task.leaf:
            slot = task._st
            return slot.ok, slot.value
        if isinstance(task, AllTask):
            entries = [_entry(c._st) for c in task.children]
            if task.mode == "all_typed":
                return True, [e.get("ok") if "ok" in e else e for e in entries]
            if task.mode == "tuple":
                return True, tuple(entries)
            return True, entries
        assert isinstance(task, RaceTask)
        winner = next(i for i, c in enumerate(task.children) if c._st.done)
        for i, child in enumerate(task.children):
            if i != winner:
                self._drop(child._st)
        slot = task.children[winner]._st
        if task.mode == "raw":
            return True, (winner, slot.ok, slot.value)
        if task.mode == "either":
            cls = Either3 if len(task.children) == 3 else Either2
            return True, cls(winner, slot.value if slot.ok else None, None if slot.ok else str(slot.value))
        return True, {"index": winner, "value": slot.value if slot.ok else str(slot.value)}

    def _drop(self, slot: _Slot) -> None:
        if slot.done or slot.dropped:
            return
        slot.dropped = True
        if slot.kind in ("wait", "queue"):
            slot.cancelled = True
        self.dropped.append(slot)

    # --- walking history ----------------------------------------------------------------------

    def diverge(self, problem: str, ev: HistoryEvent | None, actual: str | None, site: tuple[str, int] | None) -> _Divergence:
        return _Divergence(
            nondeterminism_message(
                problem,
                instance=self.instance,
                execution_id=self.execution_id,
                event_id=None if ev is None else ev.event_id,
                expected=None if ev is None else describe_event(ev),
                actual=actual,
                site=site,
            )
        )

    def apply(self, ev: HistoryEvent) -> bool:
        """Apply one history event; return True if the code must be polled before the next."""
        if isinstance(ev, SCHEDULE_EVENTS):
            if not self.fifo:
                label = "OrchestrationChained" if isinstance(ev, OrchestrationChained) else "schedule"
                raise self.diverge(
                    f"history {label} but no emitted action", ev, "nothing (it is waiting or returned)",
                    _site_of(self.stack[0]) if self.stack else None,
                )
            entry = self.fifo.popleft()
            if not isinstance(entry, _Slot) or not _matches(entry.action, ev):
                action, site = (entry.action, entry.site) if isinstance(entry, _Slot) else entry
                raise self.diverge(
                    f"schedule mismatch: action={type(action).KIND} vs event={type(ev).__name__}",
                    ev, describe_action(action), site,
                )
            return self._bind(entry, ev)
        if isinstance(ev, (CustomStatusUpdated, KeyValueSet, KeyValueCleared, KeyValuesCleared)):
            if self.fifo:
                entry = self.fifo[0]
                action, site = (entry.action, entry.site) if isinstance(entry, _Slot) else entry
                problem = _plain_mismatch(action, ev)
                if problem:
                    raise self.diverge(problem, ev, describe_action(action), site)
                self.fifo.popleft()
                if isinstance(ev, KeyValueSet) and self.kv.get(ev.key, (None,))[0] == ev.value:
                    self.kv[ev.key] = (ev.value, ev.last_updated_at_ms)  # Recommend: recorded ts
            return False
        if isinstance(ev, _COMPLETIONS):
            slot = self.by_id.get(ev.source_event_id)  # type: ignore[arg-type]
            if slot is None or slot.done:
                raise self.diverge("completion without open schedule", ev, None, None)
            want = {ActivityCompleted: "activity", ActivityFailed: "activity", TimerFired: "timer",
                    SubOrchestrationCompleted: "sub", SubOrchestrationFailed: "sub"}[type(ev)]
            if slot.kind != want:
                raise self.diverge(f"completion kind mismatch: expected {slot.kind}", ev, None, slot.site)
            if slot.dropped:
                slot.done = True  # late completion of a dropped future: recorded, not delivered
                return False
            if isinstance(ev, (ActivityFailed, SubOrchestrationFailed)):
                self._fail(slot, ev.details)
            elif isinstance(ev, TimerFired):
                self._resolve(slot, None)
            else:
                self._resolve_text(slot, ev.result)  # type: ignore[union-attr]
            return True
        if isinstance(ev, ExternalEvent):
            subs = self.pos_subs.get(ev.name, [])
            arrivals = self.pos_arrivals.setdefault(ev.name, [])
            active = [s for s in subs if not s.cancelled]
            if len(active) > len(arrivals):
                arrivals.append(ev.data)
                self._settle_positional(ev.name)
                return True
            return False
        if isinstance(ev, QueueEventDelivered):
            self.q_buffer.setdefault(ev.name, []).append((ev.event_id, ev.data))
            self._settle_queue(ev.name)
            return True
        if isinstance(ev, (ExternalSubscribedCancelled, QueueSubscriptionCancelled)):
            slot = self.by_id.get(ev.source_event_id)  # type: ignore[arg-type]
            if slot is not None:
                slot.cancelled = True
            return False
        return False  # Started, cancel requests, breadcrumbs for activities/children

    def _bind(self, slot: _Slot, ev: HistoryEvent) -> bool:
        slot.event_id = ev.event_id
        self.by_id[ev.event_id] = slot
        if isinstance(ev, SubOrchestrationScheduled):
            slot.child = ev.instance
        elif isinstance(ev, ExternalSubscribed):
            self.pos_subs.setdefault(ev.name, []).append(slot)
            self._settle_positional(ev.name)
        elif isinstance(ev, QueueSubscribed):
            self.q_subs.setdefault(ev.name, []).append(slot)
            self._settle_queue(ev.name)
            return True
        return False

    def _settle_positional(self, name: str) -> None:
        arrivals = self.pos_arrivals.get(name, [])
        active = [s for s in self.pos_subs.get(name, []) if not s.cancelled]
        for idx, slot in enumerate(active):
            if idx < len(arrivals) and not slot.done:
                self._resolve_text(slot, arrivals[idx])

    def _settle_queue(self, name: str) -> None:
        buffer = self.q_buffer.get(name, [])
        active = [s for s in self.q_subs.get(name, []) if not s.cancelled]
        for idx, slot in enumerate(active):
            if idx < len(buffer) and not slot.done:
                self._resolve_text(slot, buffer[idx][1])

    def _resolve(self, slot: _Slot, value: Any) -> None:
        slot.done, slot.ok, slot.value = True, True, value

    def _resolve_text(self, slot: _Slot, text: str) -> None:
        task = slot.task
        try:
            post = getattr(task, "post", None)
            if post == "int":
                value: Any = int(text)
            elif post == "str":
                value = text
            elif post == "kv":
                value = codec.decode(text)
            else:
                value = codec.decode_typed(text, getattr(task, "result_type", None), f"result of {task.describe()}")
        except Exception as exc:  # noqa: BLE001 - a result the code cannot accept fails at its yield
            slot.done, slot.ok, slot.value = True, False, exc
            return
        self._resolve(slot, value)

    def _fail(self, slot: _Slot, details: ErrorDetails) -> None:
        from ..errors import TaskFailedError

        slot.done, slot.ok = True, False
        slot.value = TaskFailedError(details.display_message(), details=details)


def _entry(slot: _Slot) -> dict[str, Any]:
    return {"ok": slot.value} if slot.ok else {"err": str(slot.value)}


def _action_for(task: DurableTask, kind: str, now_ms: int) -> Action:
    if kind == "activity":
        return CallActivity(name=task.name, input=task.input, session_id=task.session_id, tag=task.tag)  # type: ignore[attr-defined]
    if kind == "timer":
        return CreateTimer(fire_at_ms=now_ms + task.delay_ms)  # type: ignore[attr-defined]
    if kind == "wait":
        return WaitExternal(name=task.name)  # type: ignore[attr-defined]
    if kind == "queue":
        return DequeueEvent(name=task.name)  # type: ignore[attr-defined]
    if kind == "sub":
        return StartSubOrchestration(name=task.name, instance=task.instance or "", input=task.input, version=task.version)  # type: ignore[attr-defined]
    if kind == "detached":
        return StartOrchestrationDetached(name=task.name, instance=task.instance, input=task.input, version=task.version)  # type: ignore[attr-defined]
    return ContinueAsNewAction(input=task.input, version=task.version)  # type: ignore[attr-defined]


def _matches(action: Action | None, ev: HistoryEvent) -> bool:
    """SPEC §3.5 matching rules."""
    if isinstance(ev, ActivityScheduled):
        return (
            isinstance(action, CallActivity)
            and action.name == ev.name
            and action.input == ev.input
            and action.session_id == ev.session_id
            and action.tag == ev.tag
        )
    if isinstance(ev, TimerCreated):
        return isinstance(action, CreateTimer)
    if isinstance(ev, ExternalSubscribed):
        return isinstance(action, WaitExternal) and action.name == ev.name
    if isinstance(ev, QueueSubscribed):
        return isinstance(action, DequeueEvent) and action.name == ev.name
    if isinstance(ev, SubOrchestrationScheduled):
        return isinstance(action, StartSubOrchestration) and action.name == ev.name and action.input == ev.input
    if isinstance(ev, OrchestrationChained):
        return (
            isinstance(action, StartOrchestrationDetached)
            and action.name == ev.name
            and action.instance == ev.instance
            and action.input == ev.input
        )
    return False


def _plain_mismatch(action: Action, ev: HistoryEvent) -> str | None:
    if isinstance(ev, CustomStatusUpdated):
        return None if isinstance(action, UpdateCustomStatus) else "custom status mismatch"
    if isinstance(ev, KeyValueSet):
        ok = isinstance(action, SetKeyValue) and action.key == ev.key and action.value == ev.value
        return None if ok else "kv set mismatch"
    if isinstance(ev, KeyValueCleared):
        return None if isinstance(action, ClearKeyValue) and action.key == ev.key else "kv clear mismatch"
    return None if isinstance(action, ClearKeyValues) else "kv clear_all mismatch"


# ---------------------------------------------------------------------------------------------
# The turn
# ---------------------------------------------------------------------------------------------


def _completion_id(msg: WorkItem) -> int | None:
    if isinstance(msg, (ActivityCompletedMsg, ActivityFailedMsg, TimerFiredMsg)):
        return msg.id
    if isinstance(msg, (SubOrchCompletedMsg, SubOrchFailedMsg)):
        return msg.parent_id
    return None


_SCHED_FOR = {
    ActivityCompletedMsg: (ActivityScheduled, "activity"),
    ActivityFailedMsg: (ActivityScheduled, "activity"),
    TimerFiredMsg: (TimerCreated, "timer"),
    SubOrchCompletedMsg: (SubOrchestrationScheduled, "suborchestration"),
    SubOrchFailedMsg: (SubOrchestrationScheduled, "suborchestration"),
}
_KIND_NAME = {ActivityScheduled: "activity", TimerCreated: "timer", SubOrchestrationScheduled: "suborchestration",
              ExternalSubscribed: "external", QueueSubscribed: "queue", OrchestrationChained: "detached"}


def _already_completed(source_id: int, completed: set[int]) -> bool:
    """Duplicate filter (SPEC §3.3 step 2): a completion whose schedule already completed, in
    history or earlier in this batch, is dropped. The duplicate-delivery fault exists to catch
    an engine that gets this wrong."""
    return source_id in completed


def execute_turn(inp: TurnInput, registry: Registry) -> TurnResult:
    """Run one turn (SPEC §3.1 steps 3–9). Never raises for user-code problems."""
    history = list(inp.history)
    start: StartOrchestration | ContinueAsNew | None = None
    rest: list[WorkItem] = []
    for msg in inp.messages:
        if isinstance(msg, (StartOrchestration, ContinueAsNew)):
            if start is None:
                start = msg
            continue  # later start items are ignored (SPEC §3.2)
        rest.append(msg)

    terminal = next((e for e in history if isinstance(e, (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew))), None)
    is_can = isinstance(start, ContinueAsNew)
    if terminal is not None and not (is_can and isinstance(terminal, OrchestrationContinuedAsNew)):
        return TurnResult(kind="noop", execution_id=inp.execution_id, message="instance is already terminal")
    if is_can:
        assert isinstance(start, ContinueAsNew)
        execution_id = inp.execution_id + 1
        history = []
        carried = [QueueMessage(instance=inp.instance, name=n, data=d) for n, d in start.carry_forward_events]
        rest = carried + rest
    else:
        execution_id = inp.execution_id

    # Resolve the handler: pinned history version (Recommend, SPEC §3.2) > explicit > policy.
    if history:
        first = history[0]
        if not isinstance(first, OrchestrationStarted):
            return _corrupt(inp, execution_id, history, "corrupted history: first event must be OrchestrationStarted")
        name, version = first.name, first.version
    elif start is not None:
        name, version = start.orchestration, start.version
    else:
        return _corrupt(inp, execution_id, history, "corrupted history: empty")
    handler = registry.resolve(name, version)
    if handler is None:
        what = f"orchestration {name!r}" + (f" version {version}" if version else "")
        return TurnResult(kind="unregistered", execution_id=execution_id, message=f"{what} is not registered")

    delta: list[HistoryEvent] = []
    add = _Builder(delta, history[-1].event_id if history else 0, inp.instance, execution_id, inp.now_ms)

    if history:
        started = history[0]
        assert isinstance(started, OrchestrationStarted)
    else:
        assert start is not None
        started = add(
            OrchestrationStarted,
            name=name,
            version=handler.version,
            input=start.input,
            parent_instance=start.parent_instance,
            parent_id=start.parent_id,
            parent_execution_id=start.parent_execution_id,
            carry_forward_events=start.carry_forward_events if is_can and start.carry_forward_events else None,  # type: ignore[union-attr]
            initial_custom_status=start.initial_custom_status if is_can else None,  # type: ignore[union-attr]
        )  # type: ignore[assignment]

    # --- prep: messages -> events (SPEC §3.3) ---------------------------------------------
    abort: ErrorDetails | None = None
    schedules = {e.event_id: e for e in history if isinstance(e, SCHEDULE_EVENTS)}
    completed = {e.source_event_id for e in history if isinstance(e, _COMPLETIONS)}
    cancel_seen = any(isinstance(e, OrchestrationCancelRequested) for e in history)
    for msg in rest:
        sid = _completion_id(msg)
        if sid is not None:
            exec_of = msg.parent_execution_id if isinstance(msg, (SubOrchCompletedMsg, SubOrchFailedMsg)) else msg.execution_id  # type: ignore[attr-defined]
            if exec_of != execution_id:
                continue  # stale execution: dropped silently
            if _already_completed(sid, completed):
                continue  # duplicate (Recommend: any completion kind for an already-completed id)
            want, label = _SCHED_FOR[type(msg)]
            sched = schedules.get(sid)
            if sched is None:
                missing = {"activity": "completion", "timer": "timer", "suborchestration": "sub-orchestration"}[label]
                abort = abort or ConfigurationErrorDetails(message=f"no matching schedule for {missing} id={sid}")
                continue
            if not isinstance(sched, want):
                abort = abort or ConfigurationErrorDetails(
                    message=f"completion kind mismatch for id={sid}, expected '{_KIND_NAME[type(sched)]}', got '{label}'"
                )
                continue
            completed.add(sid)
            if isinstance(msg, ActivityCompletedMsg):
                add(ActivityCompleted, source_event_id=sid, result=msg.result)
            elif isinstance(msg, ActivityFailedMsg):
                add(ActivityFailed, source_event_id=sid, details=msg.details)
                if not isinstance(msg.details, ApplicationError):
                    abort = abort or msg.details
            elif isinstance(msg, TimerFiredMsg):
                add(TimerFired, source_event_id=sid, fire_at_ms=msg.fire_at_ms)
            elif isinstance(msg, SubOrchCompletedMsg):
                add(SubOrchestrationCompleted, source_event_id=sid, result=msg.result)
            else:
                assert isinstance(msg, SubOrchFailedMsg)
                add(SubOrchestrationFailed, source_event_id=sid, details=msg.details)
                if not isinstance(msg.details, ApplicationError):
                    abort = abort or msg.details
        elif isinstance(msg, ExternalRaised):
            add(ExternalEvent, name=msg.name, data=msg.data)
        elif isinstance(msg, QueueMessage):
            add(QueueEventDelivered, name=msg.name, data=msg.data)
        elif isinstance(msg, CancelInstance):
            if not cancel_seen:
                cancel_seen = True
                add(OrchestrationCancelRequested, reason=msg.reason)

    engine = _Engine(inp, handler, started, execution_id)
    base = dict(
        execution_id=execution_id,
        orchestration_name=started.name,
        orchestration_version=started.version,
        parent_instance=started.parent_instance,
        pinned_version=started.duroxide_version,
    )
    if abort is not None:
        return _finish(engine, history, delta, add, ("failed", abort), base, ran_code=False)

    # --- replay loop (SPEC §3.4) -------------------------------------------------------------
    events = history + delta
    engine.events = events
    persisted = len(history)
    engine.is_replaying = persisted > 0
    must_poll = True
    try:
        for i, ev in enumerate(events):
            engine.cursor = i
            if i >= persisted:
                engine.is_replaying = False
            if must_poll:
                engine.poll()
                must_poll = False
                if engine.output is not None:
                    break
            if engine.apply(ev):
                must_poll = True
        engine.is_replaying = False
        engine.cursor = len(events)
        if must_poll and engine.output is None:
            engine.poll()
        # --- new actions and quiescence (SPEC §3.6, §3.7) -------------------------------------
        iterations = 0
        while True:
            poll_again = _convert_new(engine, add)
            if engine.output is not None or not poll_again:
                break
            iterations += 1
            if iterations > LIMITS["quiescence_iterations"]:
                err = InfrastructureError(operation="quiescence_loop", message="orchestration did not settle within 100 iterations")
                return _finish(engine, history, delta, add, ("failed", err), base, ran_code=True)
            engine.poll()
    except _Divergence as div:
        return _finish(engine, history, delta, add, ("failed", ConfigurationErrorDetails(message=str(div))), base, ran_code=False)

    # --- finalization precedence (SPEC §3.8) ---------------------------------------------
    cancel = next((e for e in history + delta if isinstance(e, OrchestrationCancelRequested)), None)
    if cancel is not None:
        return _finish(engine, history, delta, add, ("cancelled", cancel.reason), base, ran_code=True)  # type: ignore[attr-defined]
    try:
        _reconcile_dropped(engine, history, delta, add)
    except _Divergence as div:
        return _finish(engine, history, delta, add, ("failed", ConfigurationErrorDetails(message=str(div))), base, ran_code=False)
    if engine.can is not None:
        return _finish(engine, history, delta, add, ("can", engine.can), base, ran_code=True)
    if engine.output is not None:
        ok, value = engine.output
        return _finish(engine, history, delta, add, ("completed", value) if ok else ("failed", value), base, ran_code=True)
    return _finish(engine, history, delta, add, ("continue", None), base, ran_code=True)


def _convert_new(engine: _Engine, add: Any) -> bool:
    """Turn FIFO actions into new events (SPEC §3.6). True if something became ready."""
    poll_again = False
    while engine.fifo:
        entry = engine.fifo.popleft()
        if isinstance(entry, tuple):
            action = entry[0]
            if isinstance(action, UpdateCustomStatus):
                add(CustomStatusUpdated, status=action.status)
            elif isinstance(action, SetKeyValue):
                add(KeyValueSet, key=action.key, value=action.value, last_updated_at_ms=action.ts)
            elif isinstance(action, ClearKeyValue):
                add(KeyValueCleared, key=action.key)
            else:
                add(KeyValuesCleared)
            continue
        slot, action = entry, entry.action
        if isinstance(action, CallActivity):
            ev = add(ActivityScheduled, name=action.name, input=action.input, session_id=action.session_id, tag=action.tag)
        elif isinstance(action, CreateTimer):
            ev = add(TimerCreated, fire_at_ms=action.fire_at_ms)
        elif isinstance(action, WaitExternal):
            ev = add(ExternalSubscribed, name=action.name)
        elif isinstance(action, DequeueEvent):
            ev = add(QueueSubscribed, name=action.name)
        elif isinstance(action, StartSubOrchestration):
            # Auto ids are `sub::{id}` (SPEC §7). Executions after a continue-as-new reuse event
            # ids, so they get `sub::e{execution}::{id}`: otherwise a new child would collide
            # with the previous execution's (completed) child and never start.
            if action.instance:
                child = action.instance
            elif engine.execution_id == 1:
                child = f"sub::{add.peek_id()}"
            else:
                child = f"sub::e{engine.execution_id}::{add.peek_id()}"
            ev = add(SubOrchestrationScheduled, name=action.name, instance=child, input=action.input)
            engine.requested_versions[ev.event_id] = action.version
        else:
            assert isinstance(action, StartOrchestrationDetached)
            ev = add(OrchestrationChained, name=action.name, instance=action.instance, input=action.input)
            engine.requested_versions[ev.event_id] = action.version
        if engine._bind(slot, ev):
            poll_again = True
    return poll_again


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


def _reconcile_dropped(engine: _Engine, history: list[HistoryEvent], delta: list[HistoryEvent], add: Any) -> None:
    """SPEC §3.10: check persisted dropped-future breadcrumbs, then add missing ones."""
    crumb_types = {
        "activity": ActivityCancelRequested,
        "sub": SubOrchestrationCancelRequested,
        "wait": ExternalSubscribedCancelled,
        "queue": QueueSubscriptionCancelled,
    }
    labels = {"activity": "activities", "sub": "sub-orchestrations", "wait": "external waits", "queue": "persistent waits"}
    persisted_ids = {e.event_id for e in history}
    if history:
        for kind, cls in crumb_types.items():
            b = {e.source_event_id for e in history if isinstance(e, cls) and getattr(e, "reason", "") == "dropped_future"}
            c = {s.event_id for s in engine.dropped if s.kind == kind and s.event_id in persisted_ids}
            if b and not b <= c:
                raise _Divergence(
                    nondeterminism_message(
                        f"cancellation mismatch ({labels[kind]}): history dropped {sorted(b)}, code dropped {sorted(c)}",
                        instance=engine.instance,
                        execution_id=engine.execution_id,
                    )
                )
    existing = {(type(e), e.source_event_id) for e in history + delta if isinstance(e, tuple(crumb_types.values()))}
    for slot in engine.dropped:
        cls = crumb_types.get(slot.kind)
        if cls is None or slot.event_id is None or (cls, slot.event_id) in existing:
            continue
        if slot.done and slot.kind in ("activity", "sub"):
            continue  # completed before the drop took effect: nothing to cancel
        add(cls, source_event_id=slot.event_id, reason="dropped_future")
        existing.add((cls, slot.event_id))


def _open_schedules(events: list[HistoryEvent], cls: type, done_types: tuple[type, ...]) -> list[HistoryEvent]:
    closed = {e.source_event_id for e in events if isinstance(e, done_types)}
    return [e for e in events if isinstance(e, cls) and e.event_id not in closed]


def _finish(
    engine: _Engine,
    history: list[HistoryEvent],
    delta: list[HistoryEvent],
    add: Any,
    outcome: tuple[str, Any],
    base: dict[str, Any],
    *,
    ran_code: bool,
) -> TurnResult:
    kind, value = outcome
    inst, exe = engine.instance, engine.execution_id
    started = (history or delta)[0]
    assert isinstance(started, OrchestrationStarted)
    worker: list[ActivityExecute] = []
    orch: list[WorkItem] = []
    cancelled: list[tuple[str, int, int]] = []
    status: str | None = None
    output: str | None = None
    error: ErrorDetails | None = None

    def sub_breadcrumbs() -> None:
        if not ran_code:
            return
        for slot in list(engine.by_id.values()):
            if slot.kind == "wait" and not slot.done and not slot.cancelled:
                add(ExternalSubscribedCancelled, source_event_id=slot.event_id, reason="orchestration_terminal")
            elif slot.kind == "queue" and not slot.done and not slot.cancelled:
                add(QueueSubscriptionCancelled, source_event_id=slot.event_id, reason="orchestration_terminal")

    def activity_breadcrumbs(reason: str) -> None:
        events = history + delta
        for ev in _open_schedules(events, ActivityScheduled, (ActivityCompleted, ActivityFailed, ActivityCancelRequested)):
            add(ActivityCancelRequested, source_event_id=ev.event_id, reason=reason)
            cancelled.append((inst, exe, ev.event_id))

    def dropped_side_effects() -> None:
        for ev in delta:
            if isinstance(ev, ActivityCancelRequested) and ev.reason == "dropped_future":
                cancelled.append((inst, exe, ev.source_event_id))  # type: ignore[arg-type]
            elif isinstance(ev, SubOrchestrationCancelRequested) and ev.reason == "dropped_future":
                sched = next(e for e in history + delta if e.event_id == ev.source_event_id)
                orch.append(CancelInstance(instance=child_instance_id(inst, sched.instance), reason="parent dropped sub-orchestration future"))  # type: ignore[attr-defined]

    def notify_parent(details: ErrorDetails | None, result: str | None) -> None:
        if started.parent_instance is None or started.parent_id is None:
            return
        pexec = started.parent_execution_id or 0  # 0 = "ask the provider" (dispatcher fills it)
        if details is None:
            orch.append(SubOrchCompletedMsg(parent_instance=started.parent_instance, parent_execution_id=pexec, parent_id=started.parent_id, result=result or "null"))
        else:
            orch.append(SubOrchFailedMsg(parent_instance=started.parent_instance, parent_execution_id=pexec, parent_id=started.parent_id, details=details))

    if kind == "continue":
        for ev in delta:
            orch_or_work = _dispatch(ev, inst, exe, started, engine.requested_versions)
            if isinstance(orch_or_work, ActivityExecute):
                worker.append(orch_or_work)
            elif orch_or_work is not None:
                orch.append(orch_or_work)
        dropped_side_effects()
    elif kind in ("completed", "failed"):
        detached = [ev for ev in delta if isinstance(ev, OrchestrationChained)]
        dropped_side_effects()
        orch.extend(_dispatch(ev, inst, exe, started, engine.requested_versions) for ev in detached)  # type: ignore[misc]
        sub_breadcrumbs()
        if kind == "completed":
            status, output = "Completed", value
            add(OrchestrationCompleted, output=value)
            notify_parent(None, value)
            activity_breadcrumbs("orchestration_terminal_completed")
        else:
            status, error = "Failed", value
            output = value.display_message()
            add(OrchestrationFailed, details=value)
            notify_parent(value, None)
            activity_breadcrumbs("orchestration_terminal_failed")
    elif kind == "can":
        task: ContinueAsNewTask = value
        carry = _carry_forward(engine, history + delta)
        dropped_side_effects()
        sub_breadcrumbs()
        status, output = "ContinuedAsNew", task.input
        add(OrchestrationContinuedAsNew, input=task.input)
        activity_breadcrumbs("orchestration_terminal_continued_as_new")
        orch.append(
            ContinueAsNew(
                instance=inst,
                orchestration=started.name,
                input=task.input,
                version=task.version,
                carry_forward_events=tuple(carry),
                initial_custom_status=engine.custom_status,
                parent_instance=started.parent_instance,
                parent_id=started.parent_id,
                parent_execution_id=started.parent_execution_id,
                execution_id=exe,
            )
        )
    else:  # cancelled
        reason = value
        sub_breadcrumbs()
        error = ApplicationError(kind="Cancelled", reason=reason, message="")
        status, output = "Failed", error.display_message()
        add(OrchestrationFailed, details=error)
        events = history + delta
        for ev in _open_schedules(events, SubOrchestrationScheduled, (SubOrchestrationCompleted, SubOrchestrationFailed)):
            orch.append(CancelInstance(instance=child_instance_id(inst, ev.instance), reason="parent canceled"))  # type: ignore[attr-defined]
        notify_parent(error, None)
        activity_breadcrumbs("orchestration_terminal_failed")
        kind = "cancelled"

    violation = _check_limits(engine if ran_code else None, delta)
    if violation is not None:
        cut = next((i for i, e in enumerate(delta) if isinstance(e, (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew))), len(delta))
        # Deliberate deviation (README): the violation *replaces* the turn's terminal event, so
        # the history keeps exactly one terminal event and consecutive ids.
        del delta[cut:]
        add.last_id = delta[-1].event_id if delta else (history[-1].event_id if history else 0)
        error = ApplicationError(kind="OrchestrationFailed", message=violation)
        status, output, kind = "Failed", violation, "failed"
        add(OrchestrationFailed, details=error)
        worker, orch, cancelled = [], [], []
        notify_parent(error, None)
        activity_breadcrumbs("orchestration_terminal_failed")

    if kind == "continue":
        result_kind = "continue"
    elif kind == "can":
        result_kind = "continued_as_new"
    else:
        result_kind = kind
    return TurnResult(
        kind=result_kind,
        delta=tuple(delta),
        worker_items=tuple(worker),
        orchestrator_items=tuple(orch),
        cancelled=tuple(dict.fromkeys(cancelled)),
        status=status,
        output=output,
        error=error,
        logs=tuple(engine.logs),
        **base,
    )


def _dispatch(ev: HistoryEvent, inst: str, exe: int, started: OrchestrationStarted, versions: dict[int, str | None]) -> WorkItem | None:
    """Work item for a schedule event created this turn. Requested child versions are not part
    of history events (SPEC §2.2), so the engine keeps them beside the delta."""
    if isinstance(ev, ActivityScheduled):
        return ActivityExecute(
            instance=inst, execution_id=exe, id=ev.event_id, name=ev.name, input=ev.input,
            session_id=ev.session_id, tag=ev.tag, orchestration_name=started.name, orchestration_version=started.version,
        )
    if isinstance(ev, TimerCreated):
        return TimerFiredMsg(instance=inst, execution_id=exe, id=ev.event_id, fire_at_ms=ev.fire_at_ms)
    if isinstance(ev, SubOrchestrationScheduled):
        return StartOrchestration(
            instance=child_instance_id(inst, ev.instance), orchestration=ev.name, input=ev.input,
            version=versions.get(ev.event_id), parent_instance=inst, parent_id=ev.event_id, parent_execution_id=exe,
        )
    if isinstance(ev, OrchestrationChained):
        return StartOrchestration(instance=ev.instance, orchestration=ev.name, input=ev.input, version=versions.get(ev.event_id))
    return None


def _carry_forward(engine: _Engine, events: list[HistoryEvent]) -> list[tuple[str, str]]:
    """Queue arrivals not consumed by active subscriptions, in history order, at most 20."""
    skip: set[int] = set()
    for name, buffer in engine.q_buffer.items():
        active = [s for s in engine.q_subs.get(name, []) if not s.cancelled]
        for event_id, _ in buffer[: len(active)]:
            skip.add(event_id)
    carried = [(e.name, e.data) for e in events if isinstance(e, QueueEventDelivered) and e.event_id not in skip]
    if len(carried) > LIMITS["carry_forward"]:
        engine.logs.append((30, f"continue-as-new: {len(carried) - LIMITS['carry_forward']} queued message(s) over the carry-forward limit of {LIMITS['carry_forward']} were dropped"))
    return carried[: LIMITS["carry_forward"]]


def _check_limits(engine: _Engine | None, delta: list[HistoryEvent]) -> str | None:
    statuses = [e for e in delta if isinstance(e, CustomStatusUpdated)]
    if statuses and statuses[-1].status is not None:
        n = len(statuses[-1].status.encode("utf-8"))
        if n > LIMITS["custom_status_bytes"]:
            return f"Custom status size ({n} bytes) exceeds limit ({LIMITS['custom_status_bytes']} bytes)"
    for ev in delta:
        if isinstance(ev, ActivityScheduled) and ev.tag is not None:
            n = len(ev.tag.encode("utf-8"))
            if n > LIMITS["tag_bytes"]:
                return f"Activity '{ev.name}' tag size ({n} bytes) exceeds limit ({LIMITS['tag_bytes']} bytes)"
        if isinstance(ev, KeyValueSet):
            n = len(ev.value.encode("utf-8"))
            if n > LIMITS["kv_value_bytes"]:
                return f"KV value for key '{ev.key}' ({n} bytes) exceeds limit ({LIMITS['kv_value_bytes']} bytes)"
    if engine is not None and len(engine.kv) > LIMITS["kv_keys"]:
        return f"KV key count ({len(engine.kv)}) exceeds limit ({LIMITS['kv_keys']})"
    return None


def _corrupt(inp: TurnInput, execution_id: int, history: list[HistoryEvent], message: str) -> TurnResult:
    details = ConfigurationErrorDetails(message=message)
    last = history[-1].event_id if history else 0
    ev = OrchestrationFailed(event_id=last + 1, instance_id=inp.instance, execution_id=execution_id, timestamp_ms=inp.now_ms, details=details)
    return TurnResult(kind="failed", execution_id=execution_id, delta=(ev,), status="Failed", output=details.display_message(), error=details)


def poison_turn(
    inp: TurnInput, *, attempt_count: int, max_attempts: int, history_error: str | None = None
) -> TurnResult:
    """SPEC §10.2: fail an instance whose batch was delivered too often (or whose history cannot
    be read). Writes ``OrchestrationStarted`` first when history is empty, so a never-started
    instance shows as Failed, and notifies a parent."""
    from .events import to_dict

    start = next((m for m in inp.messages if isinstance(m, (StartOrchestration, ContinueAsNew))), None)
    execution_id = inp.execution_id
    history = list(inp.history)
    if isinstance(start, ContinueAsNew) and any(isinstance(e, OrchestrationContinuedAsNew) for e in history):
        # A poisoned continue-as-new fails the *new* execution; the old one stays ContinuedAsNew.
        execution_id, history = inp.execution_id + 1, []
    env = {"instance_id": inp.instance, "execution_id": execution_id, "timestamp_ms": inp.now_ms}
    delta: list[HistoryEvent] = []
    started: OrchestrationStarted | None = history[0] if history and isinstance(history[0], OrchestrationStarted) else None
    if history_error is not None:
        details: ErrorDetails = PoisonError(
            attempt_count=attempt_count, max_attempts=max_attempts, message_type="FailedDeserialization",
            instance=inp.instance, execution_id=execution_id, error=history_error,
        )
        delta.append(OrchestrationFailed(event_id=99999, details=details, **env))
    else:
        batch = [to_dict(m) for m in inp.messages]
        import json

        details = PoisonError(
            attempt_count=attempt_count, max_attempts=max_attempts, message_type="Orchestration",
            instance=inp.instance, execution_id=execution_id, message=json.dumps(batch, sort_keys=True),
        )
        next_id = history[-1].event_id + 1 if history else 1
        if not history:
            started = OrchestrationStarted(
                event_id=1, name=start.orchestration if start else inp.orchestration_name,
                version=(start.version if start else inp.version) or "", input=start.input if start else "",
                parent_instance=getattr(start, "parent_instance", None), parent_id=getattr(start, "parent_id", None),
                parent_execution_id=getattr(start, "parent_execution_id", None), **env,
            )
            delta.append(started)
            next_id = 2
        delta.append(OrchestrationFailed(event_id=next_id, details=details, **env))
    orch: list[WorkItem] = []
    if started is not None and started.parent_instance is not None and started.parent_id is not None:
        orch.append(SubOrchFailedMsg(parent_instance=started.parent_instance, parent_execution_id=started.parent_execution_id or 0, parent_id=started.parent_id, details=details))
    return TurnResult(
        kind="failed", execution_id=execution_id, delta=tuple(delta), orchestrator_items=tuple(orch),
        status="Failed", output=details.display_message(), error=details,
        orchestration_name=started.name if started else inp.orchestration_name,
        orchestration_version=started.version if started else inp.version,
        parent_instance=started.parent_instance if started else None,
        pinned_version=started.duroxide_version if started else None,
    )
