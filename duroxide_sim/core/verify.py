"""Replay verification: does the current code reproduce a recorded history? (SPEC §16 J33)

:func:`verify_execution` replays one execution's recorded events from scratch against the
registered code, with no new messages, and compares what the code does with what was recorded:

* the code must match every recorded schedule (else the engine's nondeterminism message);
* a terminal history must end the same way (same output, same error - compared without the
  traceback, whose file paths and line numbers change with a checkout or an added comment -
  same continue-as-new input);
* a running history must not make the code emit work that is missing from the history.

Each report says what differs and, where the code's side has one, the source line (the yield
of new work or of the continue-as-new, the innermost user frame of a new exception).
Failures the runtime imposed (poison, infrastructure) are not re-derivable: the steps recorded
before them must replay without a schedule mismatch, and the ending is accepted as recorded; a
size-limit failure (SPEC §10.3) is accepted when the replayed history breaks the same limit.
A recorded nondeterminism failure is compared without the file:line it names. An execution after a continue-as-new starts with the KV store its
predecessors left (:func:`kv_snapshots` rebuilds it from their events). Used by the simulation's
determinism checker and the CI replay checker. Pure: no clock, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .events import (
    SCHEDULE_EVENTS,
    ActivityScheduled,
    ConfigurationErrorDetails,
    ErrorDetails,
    HistoryEvent,
    KeyValueCleared,
    KeyValuesCleared,
    KeyValueSet,
    OrchestrationChained,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    SubOrchestrationScheduled,
)
from .finalize import _check_limits
from .nondeterminism import describe_event
from .registry import Registry
from .replay import TurnInput, execute_turn

__all__ = ["verify_execution", "kv_snapshots"]

#: The first line of an exception the engine formatted with its user frames (then the frames,
#: indented, then ``Type: message``).
_TRACEBACK = "Traceback (most recent call last):\n"
_FRAME = re.compile(r'^  File "(.*)", line (\d+)', re.MULTILINE)


def kv_snapshots(executions: Mapping[int, Sequence[HistoryEvent]]) -> dict[int, dict[str, tuple[str, int]]]:
    """The KV store each execution started with, rebuilt from the events of the ones before it
    (values set in an execution carry over a continue-as-new; SPEC §13)."""
    out: dict[int, dict[str, tuple[str, int]]] = {}
    store: dict[str, tuple[str, int]] = {}
    for exe in sorted(executions):
        out[exe] = dict(store)
        for ev in executions[exe]:
            if isinstance(ev, KeyValueSet):
                store[ev.key] = (ev.value, ev.last_updated_at_ms)
            elif isinstance(ev, KeyValueCleared):
                store.pop(ev.key, None)
            elif isinstance(ev, KeyValuesCleared):
                store.clear()
    return out


def _split_traceback(text: str) -> tuple[str, str]:
    """(frames, ``Type: message``) of an error text; frames empty when it has none. The frames
    are the indented lines after the ``Traceback`` header (a message can span lines too)."""
    if not text.startswith(_TRACEBACK):
        return "", text
    lines = text[len(_TRACEBACK):].split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith("  "):
        i += 1
    return "\n".join(lines[:i]), "\n".join(lines[i:])


def _without_traceback(text: str | None) -> str | None:
    """Everything but the frames: a message whose frames moved is the same failure."""
    if text is None:
        return None
    for marker in (_TRACEBACK, "\n" + _TRACEBACK):  # (an application error may wrap one)
        at = text.find(marker)
        if at >= 0:
            start = at + (1 if marker.startswith("\n") else 0)
            return text[:start] + _split_traceback(text[start:])[1]
    return text


_SITE = re.compile(r"(, |: )at .+?:\d+( \(instance )")


def _without_sites(message: str) -> str:
    """A nondeterminism message without the ``at file:line`` of the code's side."""
    return _SITE.sub(r"\1at <site>\2", message)


def _raise_site(error: ErrorDetails | None) -> str:
    """`` at file:line`` of the innermost user frame of an exception the engine formatted."""
    text = error.display_message() if error is not None else ""
    at = text.find(_TRACEBACK)
    if at < 0:
        return ""
    frames = _FRAME.findall(_split_traceback(text[at:])[0])
    return f" at {frames[-1][0]}:{frames[-1][1]}" if frames else ""


def _site_of_event(engine: Any, ev: HistoryEvent) -> str:
    slot = engine.by_id.get(ev.event_id) if engine is not None else None
    site = getattr(slot, "site", None)
    return f" at {site[0]}:{site[1]}" if site else ""


def _new_work(engine: Any, delta: Sequence[HistoryEvent]) -> str | None:
    """``ActivityScheduled(name='C', input='2') at file:line`` for the first new schedule."""
    for ev in delta:
        if isinstance(ev, SCHEDULE_EVENTS):
            return describe_event(ev) + _site_of_event(engine, ev)
    return None

_TERMINAL = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)


def verify_execution(
    instance: str,
    execution_id: int,
    history: Sequence[HistoryEvent],
    registry: Registry,
    kv_snapshot: dict[str, tuple[str, int]] | None = None,
) -> str | None:
    """None when the code replays the history faithfully, else a description of the divergence."""
    if not history:
        return None
    first = history[0]
    if not isinstance(first, OrchestrationStarted):
        return f"instance {instance!r} execution {execution_id}: first event is {type(first).__name__}, not OrchestrationStarted"
    terminal_at = next((i for i, e in enumerate(history) if isinstance(e, _TERMINAL)), None)
    # The last terminal event decides how the execution ended: a size-limit failure is appended
    # after the turn's own terminal event (SPEC §10.3), and replaying that turn breaks the
    # limit again.
    terminal = next((e for e in reversed(history) if isinstance(e, _TERMINAL)), None)
    if isinstance(terminal, OrchestrationFailed) and terminal.event_id == 99999:
        return None  # poisoned because its history could not be read: nothing to replay
    # Poison and infrastructure failures are the runtime's, not the code's (the turn that got
    # them may never have run the code): the recorded steps before them are still the code's,
    # and must replay without a schedule mismatch; how it would have gone on is not known.
    imposed = isinstance(terminal, OrchestrationFailed) and terminal.details.category in ("poison", "infrastructure")
    if imposed and terminal_at is not None and terminal_at <= 1:
        return None  # no step of the code was recorded (poison writes the OrchestrationStarted itself)
    persisted = list(history[:terminal_at]) if terminal_at is not None else list(history)
    now = history[-1].timestamp_ms
    inspect: list[Any] = []
    result = execute_turn(
        TurnInput(
            instance=instance,
            execution_id=execution_id,
            orchestration_name=first.name,
            version=first.version,
            history=persisted,
            messages=(),
            now_ms=now,
            kv_snapshot=kv_snapshot or {},
        ),
        registry,
        inspect=inspect,
    )
    engine = inspect[0] if inspect else None
    where = f"instance {instance!r} execution {execution_id}"
    if result.kind == "unregistered":
        return f"{where}: {result.message}"
    if result.kind == "failed" and isinstance(result.error, ConfigurationErrorDetails):
        recorded = terminal.details.display_message() if isinstance(terminal, OrchestrationFailed) else None
        # (a recorded nondeterminism failure names the production checkout's file and line)
        if recorded is None or _without_sites(recorded) != _without_sites(result.error.display_message()):
            return result.error.display_message()  # already names instance, execution, event, line
        return None
    if imposed:
        return None
    skipped = _step_after_the_end(engine, persisted, result.delta)
    if skipped is not None:
        # The code ended (returned, raised) before the recorded history did: SPEC §3.4 stops the
        # walk there, so a turn would not notice a removed step - but the history holds work the
        # code no longer does (a deleted final step, a shorter loop), which CI must report.
        return (f"{where}: the code ended with {_outcome(result)}{_ending_site(engine, result)} before the recorded "
                f"{describe_event(skipped)} (event {skipped.event_id}): the history has a step the code no longer takes")
    new_work = _new_work(engine, result.delta)
    if (isinstance(terminal, OrchestrationFailed) and result.kind == "continue" and new_work is None
            and terminal.details.category == "application" and getattr(terminal.details, "kind", None) == "OrchestrationFailed"
            and engine is not None and _check_limits(engine, persisted) == terminal.details.message):
        # A size limit (SPEC §10.3) failed the instance in a turn whose code went on waiting: the
        # offending event is in the replayed history and breaks the same limit.
        return None
    if terminal is None:
        if new_work is not None:
            return f"{where}: replay of a running history produced new work the history lacks: code did {new_work}"
        if result.kind != "continue":
            return f"{where}: replay of a running history ended it ({_outcome(result)}){_ending_site(engine, result)}"
        return None
    if isinstance(terminal, OrchestrationCompleted):
        if result.kind != "completed" or result.output != terminal.output:
            return (f"{where}: recorded Completed({terminal.output!r}), replay gave {_outcome(result)}"
                    f"{_ending_site(engine, result)}" + (f"; code did {new_work}" if new_work else ""))
    elif isinstance(terminal, OrchestrationContinuedAsNew):
        if result.kind != "continued_as_new" or result.output != terminal.input:
            return (f"{where}: recorded ContinuedAsNew({terminal.input!r}), replay gave {_outcome(result)}"
                    f"{_ending_site(engine, result)}" + (f"; code did {new_work}" if new_work else ""))
    else:
        assert isinstance(terminal, OrchestrationFailed)
        want = terminal.details.display_message()
        got = result.error.display_message() if result.error is not None else None
        if result.kind not in ("failed", "cancelled") or _without_traceback(got) != _without_traceback(want):
            return (f"{where}: recorded Failed({_without_traceback(want)!r}), replay gave {_outcome(result)}"
                    f"{_ending_site(engine, result)}" + (f"; code did {new_work}" if new_work else ""))
    return None


def _outcome(result: Any) -> str:
    """``kind(output)`` of a replayed turn; an error without its traceback (the site says where)."""
    if result.error is not None:
        return f"{result.kind}({_without_traceback(result.error.display_message())!r})"
    return f"{result.kind}({result.output!r})"


def _step_after_the_end(engine: Any, persisted: Sequence[HistoryEvent], delta: Sequence[HistoryEvent]) -> HistoryEvent | None:
    """The first recorded schedule the replay did not reach because the code ended first, and
    that the code's last actions do not account for. (The walk stops when the code returns, so
    what it asked for in that last resumption - a detached start before its ``return``, say - is
    recorded after the stop; the replay turns those actions into new events, in order, which
    must be the same steps.)"""
    unwalked = getattr(engine, "unwalked", 0) if engine is not None else 0
    if not unwalked or unwalked > len(persisted):
        return None
    recorded = [e for e in persisted[len(persisted) - unwalked:] if isinstance(e, SCHEDULE_EVENTS)]
    emitted = [e for e in delta if isinstance(e, SCHEDULE_EVENTS)]
    for i, ev in enumerate(recorded):
        if i >= len(emitted) or not _same_step(ev, emitted[i]):
            return ev
    return None


def _same_step(a: HistoryEvent, b: HistoryEvent) -> bool:
    """Two schedule events ask for the same step (SPEC §3.5's matching fields; a timer's fire
    time follows the turn's clock, not the code)."""
    if type(a) is not type(b):
        return False
    fields = _STEP_FIELDS.get(type(a), ("name",) if hasattr(a, "name") else ())
    return all(getattr(a, f) == getattr(b, f) for f in fields)


_STEP_FIELDS: dict[type, tuple[str, ...]] = {
    ActivityScheduled: ("name", "input", "session_id", "tag"),
    SubOrchestrationScheduled: ("name", "input"),
    OrchestrationChained: ("name", "instance", "input"),
}


def _ending_site(engine: Any, result: Any) -> str:
    """Where the replayed code ended differently: its return, its continue-as-new, or the raise."""
    if result.kind == "continued_as_new" and engine is not None and engine.can is not None:
        site = getattr(engine.can._st, "site", None)
        return f" at {site[0]}:{site[1]}" if site else ""
    if result.kind == "failed":
        return _raise_site(result.error)
    if result.kind == "completed" and engine is not None:
        site = engine.return_site()
        if site is None:
            return ""
        if engine.return_is_def_line():
            return f" at {site[0]}:{site[1]} (the function, which returned without yielding)"
        return f" at {site[0]}:{site[1]} (its return)"
    return ""
