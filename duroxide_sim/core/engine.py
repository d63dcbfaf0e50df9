"""The orchestration interpreter: drives generator/coroutine code, matches its actions against
history, delivers completions (SPEC §3.4, §3.5, §4, §6).

``_Engine`` owns the state of one turn's replay: the FIFO of emitted actions, the slots of leaf
tasks bound to schedule ids, positional and queue subscriptions, the KV view and custom status,
dropped futures. The walk over events lives in :mod:`.replay`; the mapping of the outcome to
events and work in :mod:`.finalize`. Pure: no clock, no I/O."""

from __future__ import annotations

import dis
import inspect
import os
import sys
import traceback
import types
from collections import deque
from types import MappingProxyType
from typing import Any

from ..errors import TaskFailedError
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
    COMPLETION_EVENTS,
    SCHEDULE_EVENTS,
    Action,
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ApplicationError,
    CallActivity,
    ClearKeyValue,
    ClearKeyValues,
    ContinueAsNewAction,
    CreateTimer,
    CustomStatusUpdated,
    DequeueEvent,
    ErrorDetails,
    ExternalEvent,
    ExternalSubscribed,
    ExternalSubscribedCancelled,
    HistoryEvent,
    KeyValueCleared,
    KeyValuesCleared,
    KeyValueSet,
    OrchestrationCancelRequested,
    OrchestrationChained,
    OrchestrationStarted,
    QueueEventDelivered,
    QueueSubscribed,
    QueueSubscriptionCancelled,
    SetKeyValue,
    StartOrchestrationDetached,
    StartSubOrchestration,
    SubOrchestrationCancelRequested,
    SubOrchestrationCompleted,
    SubOrchestrationFailed,
    SubOrchestrationScheduled,
    TimerCreated,
    TimerFired,
    UpdateCustomStatus,
    WaitExternal,
)
from .nondeterminism import _Divergence, describe_event, describe_pair, nondeterminism_message
from .registry import Handler
from .turn import LIMITS, TurnInput

__all__: list[str] = []  # internal to the core



#: This package's directory with a trailing separator, so a user package beside it whose name
#: merely starts the same way (``duroxide_sim_workflows/``) is user code.
_PKG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")

#: SPEC §10.3 limits, checked after each turn.


class _Slot:
    """Engine-side state of one leaf task."""

    __slots__ = (
        "task", "kind", "action", "site", "event_id", "done", "ok", "value", "dropped",
        "cancelled", "child", "name", "parents", "owner",
    )

    def __init__(self, task: DurableTask, kind: str, action: Action | None, site: tuple[str, int] | None,
                 owner: Any = None) -> None:
        self.owner = owner  # the engine that started the task (see _Engine._start)
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
        self.parents: list[_Comp] = []  # joins/races waiting on this task

    def finish(self, ok: bool, value: Any) -> None:
        """Mark done exactly once and tell the waiting joins/races (O(1) readiness). The slot
        lets go of its task here: only a pending result is decoded against it (_resolve_text),
        and the pair task._st <-> slot.task would otherwise be a reference cycle that outlives
        the code's last use of the task until the cycle collector runs."""
        if self.done:
            return
        self.done, self.ok, self.value = True, ok, value
        self.task = None
        for parent in self.parents:
            parent.pending -= 1


class _Fiber:
    """Engine-side state of a retry task that is a child of a join/race: its retry loop (attempts,
    timeouts, back-off timers) runs as a strand of its own beside the code, resumed by the engine
    at each poll once the task it waits for is ready, so the join/race sees one child that
    finishes with the loop's outcome (duroxide-python 0.2.2 runs retry tasks inside
    ``all``/``race`` too). Dropped with its current task when it loses a race."""

    __slots__ = ("task", "gen", "waiting", "done", "ok", "value", "dropped", "parents", "owner", "kind", "event_id")

    def __init__(self, task: DurableTask, gen: Any, owner: Any) -> None:
        self.task = task
        self.gen = gen
        self.waiting: DurableTask | None = None
        self.done = False
        self.ok = True
        self.value: Any = None
        self.dropped = False
        self.parents: list[_Comp] = []
        self.owner = owner
        self.kind = "retry"  # (no history event of its own: dropped-future reconciliation skips it)
        self.event_id = None

    def finish(self, ok: bool, value: Any) -> None:
        _Slot.finish(self, ok, value)  # type: ignore[arg-type]  # (the same fields: done, ok, value, parents)
        self.gen = None


class _Comp:
    """Engine-side state of a join/race: how many children are still pending."""

    __slots__ = ("pending", "total", "owner")

    def __init__(self, total: int, owner: Any = None) -> None:
        self.pending = total
        self.total = total
        self.owner = owner


_ACTION_KIND = {
    ActivityTask: "activity",
    TimerTask: "timer",
    WaitEventTask: "wait",
    DequeueTask: "queue",
    SubOrchestrationTask: "sub",
    DetachedStartTask: "detached",
    ContinueAsNewTask: "can",
}


#: The most times one poll resumes the code without it waiting (see _Engine.poll).
_MAX_RESUMPTIONS = 2 * LIMITS["history_events"]


#: code object -> True when it is user code (not this package); membership/lookup only.
#: Verdicts by file name (the verdict depends on nothing else; keying by code object would let
#: two files' equal-bodied functions share one, since code objects compare by content).
_USER_CODE: dict[str, bool] = {}


#: ``Engine.root_frame`` of code that returned without yielding (a plain function): no frame.
_PLAIN_RETURNED: Any = object()


def _plain_return_site(fn: Any) -> tuple[str, int, bool] | None:
    """``(file, line, is_def_line)`` of a plain orchestration function's return, read from its
    bytecode (it has run to its end, so no frame is left): the line of its only ``return``
    statement, else its ``def`` line. None for a callable without Python code (a builtin, a
    ``functools.partial``) or outside user code."""
    code = getattr(inspect.unwrap(fn), "__code__", None) if callable(fn) else None
    if code is None or not _is_user_code(code):
        return None
    lines = sorted({i.positions.lineno for i in dis.get_instructions(code)
                    if i.opname in ("RETURN_VALUE", "RETURN_CONST") and i.positions and i.positions.lineno})
    if len(lines) == 1:
        return code.co_filename, lines[0], False
    return code.co_filename, code.co_firstlineno, True


def _is_user_code(code: Any) -> bool:
    filename = code.co_filename
    user = _USER_CODE.get(filename)
    if user is None:
        user = not filename.startswith(_PKG_DIR)
        if len(_USER_CODE) < 65_536:
            _USER_CODE[filename] = user
    return user


_KIND_LABEL = {"activity": "activity", "timer": "timer", "sub": "suborchestration", "wait": "external wait",
               "queue": "queue wait"}
_COMPLETION_KIND = {ActivityCompleted: "activity", ActivityFailed: "activity", TimerFired: "timer",
                    SubOrchestrationCompleted: "sub", SubOrchestrationFailed: "sub"}
#: Event class -> 1 schedule, 2 plain (status / KV), 3 completion, 0 other (exact classes).
_APPLY_ROLE: dict[type, int] = {
    **dict.fromkeys(SCHEDULE_EVENTS, 1),
    **dict.fromkeys((CustomStatusUpdated, KeyValueSet, KeyValueCleared, KeyValuesCleared), 2),
    **dict.fromkeys(COMPLETION_EVENTS, 3),
}


def _site_of(root: Any) -> tuple[str, int] | None:
    """Deepest user (non-library) frame in the suspended generator/coroutine chain."""
    if type(root) is _GENERATOR and root.gi_yieldfrom is None:
        # The common case, a generator that yields directly: the chain is this one frame.
        frame = root.gi_frame
        if frame is None:
            return None
        code = frame.f_code
        user = _USER_CODE.get(code.co_filename)
        if user is None:
            user = _is_user_code(code)
        return (code.co_filename, frame.f_lineno) if user else None
    found = None
    obj = root
    depth = 0
    while obj is not None and depth < 64:
        frame = getattr(obj, "gi_frame", None) or getattr(obj, "cr_frame", None)
        if frame is not None and _is_user_code(frame.f_code):
            found = (frame.f_code.co_filename, frame.f_lineno)
        obj = getattr(obj, "gi_yieldfrom", None) or getattr(obj, "cr_await", None)
        depth += 1
    return found


def _format_exception(exc: BaseException) -> str:
    """The exception as Python prints it (duroxide-python's error text is
    ``traceback.format_exc()``): ``Traceback (most recent call last):``, the user frames (engine
    frames left out), then ``Type: message`` and a newline last. Just ``Type: message`` without
    user frames."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_PKG_DIR)
    ]
    # A failed activity/sub-orchestration reaches user code as TaskFailedError where
    # duroxide-python throws a plain Exception: left uncaught, it reads the same as there.
    if type(exc) is TaskFailedError:
        text = str(exc)
        tail = f"Exception: {text}" if text else "Exception"
    else:
        tail = "".join(traceback.format_exception_only(exc)).rstrip("\n")
    if not frames:
        return codec.bounded_error_text(tail)
    # (ends with a newline, as traceback.format_exc() does: the peer's text is exactly that)
    return codec.bounded_error_text("Traceback (most recent call last):\n" + "".join(traceback.format_list(frames)) + tail + "\n")


#: The empty FIFO of an engine that has emitted nothing since it was last drained.
NO_FIFO: tuple[()] = ()
#: Shared read-only empties for containers an engine creates on first write.
_NO_MAP: Any = MappingProxyType({})
_NO_SET: Any = frozenset()


class _NotDurableLoop:
    """The running event loop asyncio sees while orchestration code runs: any use of it raises."""

    def __getattr__(self, name: str) -> Any:
        raise TypeError(f"orchestration code used asyncio (event loop .{name}); asyncio is not durable: a "
                        "replay would not reproduce it. Use the context's tasks: ctx.schedule_timer for "
                        "asyncio.sleep, ctx.all / ctx.race for gather / wait, an activity for other async work")


_NOT_DURABLE_LOOP = _NotDurableLoop()


#: What an orchestration call returns that the engine drives: a generator or a coroutine.
_RESUMABLE = (types.GeneratorType, types.CoroutineType)
_GENERATOR = types.GeneratorType


def _fresh(exc: BaseException) -> BaseException:
    """A task's failure as the code receives it: without the frames of an earlier delivery (a
    failed task yielded again re-raises its one exception object; as asyncio's futures do, the
    traceback then shows only the yield that raised it, not the earlier one under it)."""
    exc.__traceback__ = None
    return exc

class _Engine:
    # Slots: a cached engine (replay.EngineCache) lives between turns, often hundreds at once;
    # an instance __dict__ this wide costs ~1.5 KiB each.
    __slots__ = (
        "handler", "instance", "execution_id", "now_ms", "fifo", "by_id", "pos_subs",
        "pos_arrivals", "q_subs", "q_buffer", "settled", "dropped", "schedules", "completed", "crumbs",
        "cancel_reason", "last_event_id", "history_len", "can", "kv", "custom_status", "is_replaying", "logs",
        "output", "events", "cursor", "stack", "waiting", "started_code", "requested_versions", "ctx",
        "input_text", "started_ms", "root_frame", "unwalked", "fibers",
    )

    def __init__(self, inp: TurnInput, handler: Handler, started: OrchestrationStarted, execution_id: int) -> None:
        self.handler = handler
        self.instance = inp.instance
        self.execution_id = execution_id
        self.now_ms = inp.now_ms
        # Emitted actions not yet matched or converted. Created on the first emit and dropped
        # again when drained (replay._convert_new): an empty deque costs ~600 bytes in every
        # cached engine.
        self.fifo: deque[_Slot | tuple[Action, tuple[str, int] | None]] | tuple[()] = NO_FIFO
        self.by_id: dict[int, _Slot] = {}
        # Containers most orchestrations never fill start as shared empty read-only ones and
        # are created on first write (a cached engine pays ~64-216 bytes for each empty one).
        # Subscriptions by name: the *active* ones (not cancelled), in bind order; the n-th
        # active subscription of a name receives its n-th arrival (SPEC §6.1, §6.2).
        self.pos_subs: dict[str, list[_Slot]] = _NO_MAP  # type: ignore[assignment]
        self.pos_arrivals: dict[str, list[str]] = _NO_MAP  # type: ignore[assignment]
        self.q_subs: dict[str, list[_Slot]] = _NO_MAP  # type: ignore[assignment]
        self.q_buffer: dict[str, list[tuple[int, str]]] = _NO_MAP  # type: ignore[assignment]  # (event_id, data)
        # (kind, name) -> w: the first w active subscriptions of the name are all done, so a
        # settle starts there (an actor's n-th message costs O(1), not O(n): see _settle).
        self.settled: dict[tuple[str, str], int] = _NO_MAP  # type: ignore[assignment]
        self.dropped: list[_Slot] = []
        # Incremental views of the history walked so far, so a cached engine can take the next
        # turn without rescanning history (see replay.EngineCache).
        self.schedules: dict[int, HistoryEvent] = {}
        self.completed: set[int] = set()  # membership only
        self.crumbs: set[tuple[type, int | None]] = _NO_SET  # type: ignore[assignment]  # (breadcrumb type, source id); membership only
        self.cancel_reason: str | None = None
        self.last_event_id = 0
        self.history_len = 0
        self.can: ContinueAsNewTask | None = None
        # The store an execution starts with, in key order: providers hand it over in their own
        # order (SQLite sorted, memory by first write, the checkers rebuilt from history), and
        # get_kv_all_keys() must not depend on which one stored it.
        snapshot = inp.kv_snapshot
        self.kv: dict[str, tuple[str, int]] = dict(sorted(snapshot.items())) if len(snapshot) > 1 else dict(snapshot)
        self.custom_status: str | None = started.initial_custom_status
        self.is_replaying = False
        self.logs: list[tuple[int, str]] = []
        self.output: tuple[bool, Any] | None = None  # (ok, encoded output | ErrorDetails)
        self.events: list[HistoryEvent] = []
        self.cursor = 0
        self.stack: list[Any] = []
        # The frame of the generator/coroutine the orchestration call returned: once the code has
        # returned, its f_lineno is the line of the return (see return_site).
        self.root_frame: Any = None
        # Events of the last turn's walk left unwalked because the code returned first (SPEC §3.4:
        # the rest of the history is not walked); read by the CI replay check (verify).
        self.unwalked = 0
        self.waiting: DurableTask | None = None
        # Retry tasks running inside joins/races (_Fiber), in start order; usually none (a
        # shared empty tuple until the first: cached engines are many).
        self.fibers: list[_Fiber] = NO_FIFO  # type: ignore[assignment]
        self.started_code = False
        self.requested_versions: dict[int, str | None] = _NO_MAP  # type: ignore[assignment]
        self.ctx = OrchestrationContext(
            self,
            instance_id=inp.instance,
            execution_id=execution_id,
            orchestration_name=started.name,
            orchestration_version=started.version,
        )
        self.input_text = started.input
        # With the execution id and the input: which incarnation of the instance this engine
        # belongs to (an instance deleted and created again has a new OrchestrationStarted).
        self.started_ms = started.timestamp_ms

    def add_crumb(self, cls: type, source_id: int | None) -> None:
        if self.crumbs is _NO_SET:
            self.crumbs = set()
        self.crumbs.add((cls, source_id))

    def request_version(self, event_id: int, version: str | None) -> None:
        if self.requested_versions is _NO_MAP:
            self.requested_versions = {}
        self.requested_versions[event_id] = version

    def begin_turn(self, inp: TurnInput) -> None:
        """Reuse this engine (cached, settled) for a later turn of the same execution: the next
        one, or one after turns other runtimes took (see replay.EngineCache: catch-up)."""
        self.now_ms = inp.now_ms
        self.logs = []
        self.dropped = []
        self.requested_versions = _NO_MAP  # type: ignore[assignment]
        self.is_replaying = False

    def release(self) -> None:
        """Let go of the code's state once the engine will never run another turn (the cache
        dropped it, or its execution ended), so that reference counting frees it at once.

        A live engine sits in reference cycles: engine -> generator/frame -> ``ctx`` -> engine,
        engine -> slot -> ``owner`` -> engine, task <-> slot. Left to the cycle collector, a
        dropped engine that had lived long enough to reach the oldest generation (any engine
        that was cached) stayed in memory until the next full collection, and with thousands
        of instances in flight these piled up by the thousand. After this call the engine
        keeps only plain data (ids, history length, KV, status, output, logs).

        Dropping the stack frees the suspended generators now: Python closes each one as the
        collector would have (``GeneratorExit`` at its ``yield``, its ``finally`` blocks run
        with ``ctx.is_replaying()`` True, see finalize._finish), only at a fixed point instead
        of whenever a collection happens. The root frame is let go first: a frame object that
        is still referenced when its generator ends keeps the generator's locals."""
        self.root_frame = None
        self.waiting = None
        self.stack.clear()  # (innermost first, the order in which the code would unwind)
        for fiber in self.fibers:
            fiber.gen = fiber.waiting = fiber.task = None
        self.fibers = NO_FIFO  # type: ignore[assignment]
        # Pending tasks still point at their slots and the slots at them: break each pair.
        for slot in self.by_id.values():
            slot.task = None
        for entry in self.fifo:
            if type(entry) is _Slot:
                entry.task = None
        for slot in self.dropped:
            slot.task = None
        if self.can is not None:
            self.can._st.task = None
            self.can = None
        self.by_id = {}
        self.fifo = NO_FIFO
        self.dropped = []
        self.pos_subs = self.q_subs = _NO_MAP
        self.ctx = None  # type: ignore[assignment]

    # --- hooks used by OrchestrationContext -------------------------------------------------

    def ctx_now(self) -> int:
        """During replay, the time the replayed turn ran (timestamp of the next recorded
        event), so KV timestamps replay identically; else this turn's ``now_ms``."""
        if self.is_replaying and self.cursor < len(self.events):
            return self.events[self.cursor].timestamp_ms
        return self.now_ms

    def emit_plain(self, action: Action, site: tuple[str, int] | None) -> None:
        fifo = self.fifo
        if fifo is NO_FIFO:
            fifo = self.fifo = deque()
        fifo.append((action, site))

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
        """Run the code until it waits. While it runs, asyncio's running loop is a guard whose
        every method refuses with a message naming the problem: ``asyncio.sleep``,
        ``create_task``, ``gather`` or ``Future()`` in orchestration code otherwise failed with
        "no running event loop" (or, in a thread without a loop, installed one in it)."""
        if self.output is not None:
            return
        # (Looked up, not imported: a process that never imported asyncio pays nothing for it,
        # and its orchestration code has no asyncio to misuse.)
        events = sys.modules.get("asyncio.events")
        if events is None:
            self._poll()
            return
        previous = events._get_running_loop()
        events._set_running_loop(_NOT_DURABLE_LOOP)
        try:
            self._poll()
        finally:
            events._set_running_loop(previous)

    def _poll(self) -> None:
        send: Any = None
        throw: BaseException | None = None
        if not self.started_code:
            self.started_code = True
            try:
                result = self._begin()
            except KeyboardInterrupt:
                raise  # Ctrl-C (a simulation runs user code in the main thread) stops the process
            except BaseException as exc:  # noqa: BLE001 - user code may raise anything
                self._finish_error(exc)
                return
            # What the call returned decides, not how the function looked when registered: a
            # decorator (functools.wraps), a callable object or a lambda may hand back a
            # generator or a coroutine from a function that is neither itself.
            if not isinstance(result, _RESUMABLE):
                self.root_frame = _PLAIN_RETURNED  # (return_site reads the function's bytecode)
                self._finish_value(result)
                return
            self.root_frame = getattr(result, "gi_frame", None) or getattr(result, "cr_frame", None)
            self.stack.append(result)
        else:
            if self.fibers:
                self._drive_fibers()
            waiting = self.waiting
            if waiting is None:
                return
            if waiting.leaf:  # (_ready and _outcome of a leaf, inline: the common wait)
                slot = waiting._st
                if not slot.done:
                    return
                ok, value = slot.ok, slot.value
            else:
                if not self._ready(waiting):
                    return
                ok, value = self._outcome(waiting)
            self.waiting = None
            if ok:
                send = value
            else:
                throw = _fresh(value)
        # Each resumption that does not wait hands the code something already complete (a
        # finished task, an empty join): a loop that never waits would spin here forever.
        # Legitimate code waits at least once per event, and a history holds at most
        # LIMITS["history_events"]: after _MAX_RESUMPTIONS resumptions the code is failed (below).
        for _ in range(_MAX_RESUMPTIONS):
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
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001
                self.stack.pop()
                if not self.stack:
                    self._finish_error(exc)
                    return
                send, throw = None, exc
                continue
            send, throw = None, None
            if not isinstance(yielded, DurableTask):
                # (checked first: a coroutine is never a DurableTask, and tasks are the common yield)
                if type(yielded) is types.CoroutineType and not yielded.cr_suspended and yielded.cr_frame is not None \
                        and not yielded.cr_running:
                    # A generator orchestration yielding a durable ``async def`` helper it just
                    # called: driven as ``await`` would (the helper's own yields are the tasks).
                    self.stack.append(yielded)
                    continue
                throw = TypeError(
                    "orchestrations may only yield/await tasks from the context "
                    f"(ctx.schedule_activity, ctx.schedule_timer, ...), got {type(yielded).__name__}; "
                    "asyncio and other awaitables are not durable"
                )
                continue
            if isinstance(yielded, RetryTask):
                st = yielded._st  # (owning engine, (ok, value) once its body finished)
                if st is None:
                    yielded._st = (self, None)
                    self.stack.append(_run_once(yielded, yielded.body(self.ctx)))
                elif type(st) is _Fiber:  # it ran (or runs) inside a join/race
                    if st.owner is not self:
                        throw = TypeError("this retry task was created by another orchestration run; keep no tasks "
                                          "in globals or closures between runs: create them in the orchestration")
                    elif st.dropped:
                        throw = TypeError(f"this task ({yielded.describe()}) lost a race and was dropped: its result "
                                          "is not delivered; use the race's winner, or schedule it again")
                    elif not st.done:
                        throw = TypeError("this retry task is running inside a join/race: yield the join/race")
                    elif st.ok:
                        send = st.value
                    else:
                        throw = _fresh(st.value)
                elif st[0] is not self:
                    throw = TypeError("this retry task was created by another orchestration run (another instance, or "
                                      "an earlier replay of this one); keep no tasks in globals or closures between "
                                      "runs: create them in the orchestration")
                elif st[1] is None:
                    throw = TypeError("this retry task is still running: yield it once, or await its result")
                else:
                    ok, value = st[1]  # yielded again: its outcome, not a second run of the activity
                    if ok:
                        send = value
                    else:
                        throw = _fresh(value)
                continue
            try:
                self._start(yielded)
            except TypeError as exc:
                throw = exc
                continue
            if yielded._st.done if yielded.leaf else self._ready(yielded):  # (a leaf's _ready, inline)
                ok, value = self._outcome(yielded)
                if ok:
                    send = value
                else:
                    throw = _fresh(value)
                continue
            self.waiting = yielded
            return
        self.stack.clear()
        self._finish_error(RuntimeError(
            f"orchestration resumed {_MAX_RESUMPTIONS} times in one turn without waiting for anything "
            "(an endless loop over already-completed tasks?)"))

    def _finish_value(self, value: Any) -> None:
        if isinstance(value, ContinueAsNewTask):  # `return ctx.continue_as_new(x)` is accepted too
            self._start(value)
            self.output = None
            return
        try:
            self.output = (True, codec.encode(value, f"output of orchestration {self.handler.name!r}"))
        except Exception as exc:  # noqa: BLE001
            self.output = (False, ApplicationError(kind="OrchestrationFailed", message=str(exc)))

    def return_site(self) -> tuple[str, int] | None:
        """(file, line) of the ``return`` that ended the code (None: not returned yet, or not
        user code). A finished generator's frame keeps its last line. A plain function (it
        returned without yielding: no frame is left) is read from its bytecode: the line of its
        only ``return``; with several, its ``def`` line (see :meth:`return_is_def_line`)."""
        frame = self.root_frame
        if frame is _PLAIN_RETURNED:
            site = _plain_return_site(self.handler.fn)
            return site[:2] if site is not None else None
        if frame is None or self.stack or not _is_user_code(frame.f_code):
            return None
        return frame.f_code.co_filename, frame.f_lineno

    def return_is_def_line(self) -> bool:
        """Whether :meth:`return_site` names a plain function's ``def`` line (it has several
        ``return`` statements and left no frame to tell which one ran)."""
        if self.root_frame is not _PLAIN_RETURNED:
            return False
        site = _plain_return_site(self.handler.fn)
        return site is not None and site[2]

    def _finish_error(self, exc: BaseException) -> None:
        self.output = (False, ApplicationError(kind="OrchestrationFailed", message=_format_exception(exc)))

    def _start(self, task: DurableTask, site: Any = False) -> None:
        """Start ``task`` (a leaf gets its slot and queues its action; a join/race starts its
        children). ``site``: the yield site, when the caller has it (the children of one
        join/race share their parent's, computed once)."""
        st = task._st
        if st is not None:
            if st.owner is not self:
                # A task kept in a global or closure and yielded by another run (another
                # instance, or an earlier replay of this one): its state is that run's.
                raise TypeError(
                    "this task was created by another orchestration run (another instance, or an earlier "
                    "replay of this one); keep no tasks in globals or closures between runs: create them "
                    "in the orchestration")
            if getattr(st, "dropped", False):
                # It lost a race and was dropped (its activity cancelled, its subscription
                # cancelled): waiting for it would wait forever, and a late completion recorded
                # since is history only - it was never delivered, so the code gets no value
                # from it either (it used to resume with None, as if the activity returned None).
                raise TypeError(f"this task ({task.describe()}) lost a race and was dropped: its result is not "
                                "delivered; use the race's winner, or schedule it again")
            return
        if not task.leaf:
            if isinstance(task, RetryTask):
                # A child of a join/race (the code's own yield of a retry task runs it as nested
                # code, see _poll): its loop runs beside the code as a fiber.
                fiber = _Fiber(task, task.body(self.ctx), self)
                task._st = fiber
                if self.fibers is NO_FIFO:
                    self.fibers = []
                self.fibers.append(fiber)
                self._step_fiber(fiber, None, None, site)
                return
            children = task.children  # type: ignore[attr-defined]
            if site is False:
                site = _site_of(self.stack[0]) if self.stack else self.return_site()
            for child in children:
                self._start(child, site)
            comp = _Comp(len(children), self)
            for child in children:
                if child._st.done:
                    comp.pending -= 1
                else:
                    child._st.parents.append(comp)
            task._st = comp
            return
        if site is False:
            # (no stack: `return ctx.continue_as_new(...)` - the site is the return's line)
            site = _site_of(self.stack[0]) if self.stack else self.return_site()
        kind = _ACTION_KIND[type(task)]
        action = _action_for(task, kind, self.now_ms)
        slot = _Slot(task, kind, action, site, self)
        task._st = slot
        if kind == "detached":
            slot.finish(True, None)
        if kind == "can":
            self.can = task  # type: ignore[assignment]
            return
        fifo = self.fifo
        if fifo is NO_FIFO:
            fifo = self.fifo = deque()
        fifo.append(slot)

    def _ready(self, task: DurableTask) -> bool:
        st = task._st
        if task.leaf:
            return st.done
        if isinstance(task, AllTask):
            return st.pending == 0
        return st.pending < st.total

    def _outcome(self, task: DurableTask) -> tuple[bool, Any]:
        if task.leaf:
            slot = task._st
            return slot.ok, slot.value
        if isinstance(task, AllTask):
            for child in task.children:
                slot = child._st
                if not getattr(slot, "ok", True) and not isinstance(slot.value, TaskFailedError):
                    # A child completed, but its result does not fit the type its schedule asked
                    # for: raised at the yield (as a single typed yield and a race raise it), not
                    # handed over as an {"err": text} entry where the record should be.
                    return False, slot.value
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
        if not slot.ok and not isinstance(slot.value, TaskFailedError):
            # The winner completed, but its result does not fit the type the code asked for (a
            # typed schedule's result_type): raised at the yield, as a plain typed yield raises
            # it - not handed over as an error text in place of the value.
            return False, slot.value
        if task.mode == "raw":
            return True, (winner, slot.ok, slot.value)
        if task.mode == "either":
            cls = Either3 if len(task.children) == 3 else Either2
            return True, cls(winner, slot.value if slot.ok else None, None if slot.ok else str(slot.value))
        return True, {"index": winner, "value": slot.value if slot.ok else str(slot.value)}

    def _drive_fibers(self) -> None:
        """Resume every fiber whose task is ready, in start order (until none is)."""
        progressed = True
        while progressed:
            progressed = False
            for fiber in list(self.fibers):
                waiting = fiber.waiting
                if waiting is not None and not fiber.done and not fiber.dropped and self._ready(waiting):
                    fiber.waiting = None
                    ok, value = self._outcome(waiting)
                    self._step_fiber(fiber, value if ok else None, None if ok else value, False)
                    progressed = True

    def _step_fiber(self, fiber: _Fiber, send: Any, throw: BaseException | None, site: Any) -> None:
        """Run the fiber's loop until it waits for a task that is not ready, or ends."""
        gen = fiber.gen
        while True:
            try:
                yielded = gen.throw(throw) if throw is not None else gen.send(send)
            except StopIteration as stop:
                self._end_fiber(fiber, True, stop.value)
                return
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - the loop re-raises the last attempt's error
                self._end_fiber(fiber, False, exc)
                return
            send, throw = None, None
            self._start(yielded, site)
            if self._ready(yielded):
                ok, value = self._outcome(yielded)
                if ok:
                    send = value
                else:
                    throw = value
                continue
            fiber.waiting = yielded
            return

    def _end_fiber(self, fiber: _Fiber, ok: bool, value: Any) -> None:
        fiber.finish(ok, value)
        self.fibers.remove(fiber)

    def _drop(self, slot: _Slot | _Fiber) -> None:
        if slot.done or slot.dropped:
            return
        slot.dropped = True
        if type(slot) is _Fiber:
            # A retry task that lost a race: its current attempt (or back-off timer, or the
            # attempt's own timeout race) is dropped with it, and its loop never resumes.
            waiting, slot.waiting, slot.gen = slot.waiting, None, None
            self.fibers.remove(slot)
            if waiting is not None:
                for child in (waiting.children if not waiting.leaf else (waiting,)):  # type: ignore[attr-defined]
                    self._drop(child._st)
            return
        if slot.kind in ("wait", "queue"):
            self._cancel_sub(slot)
        self.dropped.append(slot)

    def _cancel_sub(self, slot: _Slot) -> None:
        """Mark a subscription cancelled (dropped, or a breadcrumb in history): it leaves its
        name's active list, and the later ones move up a position (they now pair with earlier
        arrivals). Other kinds of slot are only marked."""
        if slot.cancelled:
            return
        slot.cancelled = True
        kind = slot.kind
        if kind == "wait":
            subs = self.pos_subs.get(slot.name)  # type: ignore[arg-type]
        elif kind == "queue":
            subs = self.q_subs.get(slot.name)  # type: ignore[arg-type]
        else:
            return
        if not subs:
            return  # not bound yet: _bind leaves a cancelled slot out
        for p in range(len(subs) - 1, -1, -1):  # usually the newest
            if subs[p] is slot:
                del subs[p]
                key = (kind, slot.name)
                w = self.settled.get(key, 0)  # type: ignore[arg-type]
                if p < w:
                    self.settled[key] = w - 1  # type: ignore[index]
                return

    # --- walking history ----------------------------------------------------------------------

    def diverge(self, problem: str, ev: HistoryEvent | None, actual: str | Action | None,
                site: tuple[str, int] | None) -> _Divergence:
        """``actual``: what the code did, as text, or the action itself (then both sides are
        described together, long fields cut where they differ)."""
        if ev is not None and actual is not None and not isinstance(actual, str):
            expected, actual = describe_pair(ev, actual)
        else:
            expected = None if ev is None else describe_event(ev)
        return _Divergence(
            nondeterminism_message(
                problem,
                instance=self.instance,
                execution_id=self.execution_id,
                event_id=None if ev is None else ev.event_id,
                expected=expected,
                actual=actual,  # type: ignore[arg-type]
                site=site,
            )
        )

    def apply(self, ev: HistoryEvent) -> bool:
        """Apply one history event; return True if the code must be polled before the next."""
        t = type(ev)
        role = _APPLY_ROLE.get(t, 0)
        if role == 3:  # completions first: the most frequent kind in a replayed history
            sid = ev.source_event_id  # type: ignore[attr-defined]
            slot = self.by_id.get(sid)
            if slot is None or slot.done:
                raise self.diverge("completion without open schedule", ev, None, None)
            kind = _COMPLETION_KIND[t]
            if slot.kind != kind:
                # (SPEC 3.4: named by the kind the completion needs - "ActivityCompleted on a
                # non-activity: expected activity" - then what the id schedules)
                raise self.diverge(f"completion kind mismatch: expected {_KIND_LABEL[kind]} "
                                   f"(id {sid} schedules a {_KIND_LABEL.get(slot.kind, slot.kind)})",
                                   ev, None, slot.site)
            self.completed.add(sid)
            if slot.dropped:
                slot.finish(True, None)  # late completion of a dropped future: recorded, not delivered
                return False
            if t is ActivityCompleted or t is SubOrchestrationCompleted:
                self._resolve_text(slot, ev.result)  # type: ignore[attr-defined]
            elif t is TimerFired:
                slot.finish(True, None)
            else:
                self._fail(slot, ev.details)  # type: ignore[attr-defined]
            # Delivered: nothing looks this schedule up again (a second completion of the id is
            # refused as "without open schedule" either way, and a completion message for it is
            # dropped as a duplicate by the `completed` set before the schedule index is read),
            # so a long-lived cached engine does not keep every finished task.
            del self.by_id[sid]
            self.schedules.pop(sid, None)
            return True
        if role == 1:
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
                    ev, action, site,
                )
            return self._bind(entry, ev)
        if role == 2:
            if self.fifo:
                entry = self.fifo[0]
                action, site = (entry.action, entry.site) if isinstance(entry, _Slot) else entry
                problem = _plain_mismatch(action, ev)
                if problem:
                    raise self.diverge(problem, ev, action, site)
                self.fifo.popleft()
                if isinstance(ev, KeyValueSet) and self.kv.get(ev.key, (None,))[0] == ev.value:
                    self.kv[ev.key] = (ev.value, ev.last_updated_at_ms)  # Recommend: recorded ts
            return False
        if isinstance(ev, ExternalEvent):
            active = self.pos_subs.get(ev.name, ())
            if self.pos_arrivals is _NO_MAP:
                self.pos_arrivals = {}
            arrivals = self.pos_arrivals.setdefault(ev.name, [])
            if len(active) > len(arrivals):
                arrivals.append(ev.data)
                self._settle_positional(ev.name)
                return True
            return False
        if isinstance(ev, QueueEventDelivered):
            if self.q_buffer is _NO_MAP:
                self.q_buffer = {}
            self.q_buffer.setdefault(ev.name, []).append((ev.event_id, ev.data))
            self._settle_queue(ev.name)
            return True
        if isinstance(ev, (ExternalSubscribedCancelled, QueueSubscriptionCancelled)):
            self.add_crumb(type(ev), ev.source_event_id)  # type: ignore[attr-defined]
            slot = self.by_id.get(ev.source_event_id)  # type: ignore[arg-type]
            if slot is not None:
                self._cancel_sub(slot)
            return False
        if isinstance(ev, (ActivityCancelRequested, SubOrchestrationCancelRequested)):
            self.add_crumb(type(ev), ev.source_event_id)  # type: ignore[attr-defined]
        elif isinstance(ev, OrchestrationCancelRequested):
            self.cancel_reason = ev.reason
        return False  # Started and the rest: no effect on the code

    def _bind(self, slot: _Slot, ev: HistoryEvent) -> bool:
        event_id = slot.event_id = ev.event_id
        self.by_id[event_id] = slot
        self.schedules[event_id] = ev
        t = type(ev)
        if t is ActivityScheduled or t is TimerCreated:
            return False  # (the common kinds, exact classes: nothing more to bind)
        if isinstance(ev, SubOrchestrationScheduled):
            slot.child = ev.instance
        elif isinstance(ev, ExternalSubscribed):
            if self.pos_subs is _NO_MAP:
                self.pos_subs = {}
            subs = self.pos_subs.setdefault(ev.name, [])
            if not slot.cancelled:
                subs.append(slot)
            self._settle_positional(ev.name)
        elif isinstance(ev, QueueSubscribed):
            if self.q_subs is _NO_MAP:
                self.q_subs = {}
            subs = self.q_subs.setdefault(ev.name, [])
            if not slot.cancelled:
                subs.append(slot)
            self._settle_queue(ev.name)
            return True
        return False

    def _settle_positional(self, name: str) -> None:
        """Give the n-th active wait on ``name`` the n-th arrival, for every pair not done yet."""
        arrivals = self.pos_arrivals.get(name)
        if arrivals:
            self._settle("wait", name, self.pos_subs.get(name, ()), arrivals, False)

    def _settle_queue(self, name: str) -> None:
        """Give the n-th active dequeue on ``name`` the n-th buffered message (same pairing)."""
        buffer = self.q_buffer.get(name)
        if buffer:
            self._settle("queue", name, self.q_subs.get(name, ()), buffer, True)

    def _settle(self, kind: str, name: str, active: Any, items: list[Any], pair: bool) -> None:
        # Pairs below the watermark are done (each pass leaves every pair it reaches done;
        # arrivals only grow; a cancelled subscription below it lowers it by one), so the
        # pass starts there: the same pairing as walking every pair from 0, without the
        # quadratic cost for an actor that waits on one name thousands of times.
        n = min(len(active), len(items))
        key = (kind, name)
        w = self.settled.get(key, 0)
        if n <= w:
            return
        for idx in range(w, n):
            slot = active[idx]
            if not slot.done:
                self._resolve_text(slot, items[idx][1] if pair else items[idx])
        if self.settled is _NO_MAP:
            self.settled = {}
        self.settled[key] = n

    def _resolve_text(self, slot: _Slot, text: str) -> None:
        task = slot.task
        try:
            post = getattr(task, "post", None)
            if post is None:
                result_type = getattr(task, "result_type", None)
                if result_type is None:
                    # (what decode_typed does without a type; the task's description is only
                    # for the errors of a typed decode)
                    value: Any = codec.decode(text)
                else:
                    value = codec.decode_typed(text, result_type, f"result of {task.describe()}")
            elif post == "int":
                value = int(text)
            elif post == "str":
                value = text
            elif post == "kv":
                value = codec.decode(text)
            else:
                value = codec.decode_typed(text, getattr(task, "result_type", None), f"result of {task.describe()}")
        except Exception as exc:  # noqa: BLE001 - a result the code cannot accept fails at its yield
            slot.finish(False, exc)
            return
        slot.finish(True, value)

    def _fail(self, slot: _Slot, details: ErrorDetails) -> None:
        slot.finish(False, TaskFailedError(details.display_message(), details=details))


def _run_once(task: RetryTask, body: Any) -> Any:
    """A retry task's body (its attempts), recording the outcome on the task so that yielding
    the same task again delivers it instead of running the activity a second time."""
    try:
        value = yield from body
    except (GeneratorExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded, then raised at the yield as before
        task._st = (task._st[0], (False, exc))
        raise
    task._st = (task._st[0], (True, value))
    return value


def _entry(slot: _Slot) -> dict[str, Any]:
    return {"ok": slot.value} if slot.ok else {"err": str(slot.value)}


#: A timer's latest fire time: 2**61 ms (~73 million years) below 2**63, so lock expiries and
#: visibility times computed from a clock that reached it still fit 64-bit columns.
_LATEST_MS = 3 * 2**61


def _action_for(task: DurableTask, kind: str, now_ms: int) -> Action:
    if kind == "activity":
        return CallActivity(name=task.name, input=task.input, session_id=task.session_id, tag=task.tag)  # type: ignore[attr-defined]
    if kind == "timer":
        # Capped well inside a signed 64-bit ms column (MAX_TIMER_DELAY_MS keeps any delay under
        # the cap from a real clock; a simulated clock can be past 2**62 ms already).
        return CreateTimer(fire_at_ms=min(now_ms + task.delay_ms, _LATEST_MS))  # type: ignore[attr-defined]
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
