"""Orchestration-facing API: the context object, durable tasks, join/select, retry (SPEC §4–§9, §17).

Orchestration code receives an :class:`OrchestrationContext`. Its scheduling methods return
*task descriptors* (``DurableTask``). Nothing happens until a task is yielded (generator
orchestrations, duroxide-python style) or awaited (``async def`` orchestrations): the replay
engine then emits the task's action, matches it against history, and resumes the code with the
result. Built-but-never-yielded descriptors do nothing, as in duroxide-python.

Both styles share one engine because ``DurableTask.__await__`` simply yields the task itself:
an ``async def`` orchestration is driven with ``send``/``throw`` exactly like a generator.

Retries are ordinary replayable orchestration code (:func:`_retry_loop`), run by the engine as a
nested generator, so their timers and attempts appear in history like hand-written code would.

This module must stay pure: no clock (time comes from the engine), no I/O, no randomness.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from . import codec
from .events import ClearKeyValue, ClearKeyValues, SetKeyValue, UpdateCustomStatus
from .registry import SYSCALL_GET_KV, SYSCALL_NEW_GUID, SYSCALL_UTC_NOW, parse_semver
from .texts import plain_text, text_problem

if TYPE_CHECKING:  # pragma: no cover
    from .replay import _Engine

__all__ = [
    "DurableTask",
    "ScheduledTask",
    "ActivityTask",
    "TimerTask",
    "WaitEventTask",
    "DequeueTask",
    "SubOrchestrationTask",
    "DetachedStartTask",
    "ContinueAsNewTask",
    "AllTask",
    "RaceTask",
    "RetryTask",
    "Either2",
    "Either3",
    "RetryPolicy",
    "Backoff",
    "OrchestrationContext",
    "ORCHESTRATION_LOGGER",
]

ORCHESTRATION_LOGGER = "duroxide_sim.orchestration"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


class DurableTask:
    """Something orchestration code can yield/await. Engine-owned state lives in ``_st``."""

    __slots__ = ("_st",)
    leaf = True

    def __init__(self) -> None:
        self._st: Any = None  # set by the engine when first started

    def __await__(self) -> Generator["DurableTask", Any, Any]:
        return (yield self)

    def describe(self) -> str:
        return type(self).__name__

    def with_tag(self, tag: str) -> "DurableTask":
        """Only activities are routed by tag (SPEC §6): tagging anything else is refused (in
        duroxide-python it put a key on the descriptor that nothing read)."""
        raise TypeError(f"with_tag({tag!r}): only activities can be tagged, not {self.describe()}"[:300])


#: duroxide-python's name for what a scheduling call returns (its descriptors are dict subclasses;
#: ours are task objects): importable under that name so ``isinstance(task, ScheduledTask)`` and
#: type hints in a migrated module keep working.
ScheduledTask = DurableTask


class ActivityTask(DurableTask):
    __slots__ = ("name", "input", "session_id", "tag", "result_type", "post")

    def __init__(
        self,
        name: str,
        input: str,
        session_id: str | None = None,
        tag: str | None = None,
        result_type: Any = None,
        post: str | None = None,
    ) -> None:
        self._st = None  # (DurableTask.__init__, inline: one per scheduled activity)
        self.name = name
        self.input = input
        self.session_id = session_id
        self.tag = tag
        self.result_type = result_type
        self.post = post  # syscall post-processing: "int" for utc_now, "kv" for get_kv

    def with_tag(self, tag: str) -> "ActivityTask":
        """Route this activity to workers whose ``worker_tag_filter`` accepts ``tag``. Tags this
        task and returns it, as duroxide-python's does: ``t.with_tag("gpu"); yield t`` runs
        on a gpu worker (a copy left ``t`` untagged, on the default workers, silently)."""
        tag = _check_tag(tag)
        if self.post is not None:
            # A system call (utc_now, new_guid, get_kv_value_from_instance) runs on any worker: a
            # tagged one waited for good where no worker took the tag (duroxide-python's syscall
            # descriptors have no with_tag at all).
            raise TypeError(f"{self.name.split(':', 1)[-1]} is a system call and cannot be tagged: it runs on any worker")
        if self._st is not None:
            raise TypeError(f"with_tag({tag!r}) on activity {self.name!r} after it was yielded: it is scheduled "
                            "already; tag it before yielding it")
        self.tag = tag
        return self

    def describe(self) -> str:
        return f"activity {self.name!r}"


def _check_tag(tag: object) -> str:
    """A worker tag as stored: a non-empty plain str that every provider can hold (no NUL: a
    PostgreSQL text column; valid Unicode: the turn's tag-size check and SQLite's insert
    encoded it and crashed the dispatcher on a lone surrogate). Its size is checked when the
    turn ends (SPEC §10.3: the orchestration fails)."""
    if not isinstance(tag, str) or not tag:
        raise TypeError(f"with_tag expects a non-empty string, got {tag!r}"[:200])
    problem = text_problem(tag)
    if problem is not None:
        raise ValueError(f"with_tag: the tag {problem}, got {tag!r}"[:200])
    return plain_text(tag)


class TimerTask(DurableTask):
    __slots__ = ("delay_ms",)

    def __init__(self, delay_ms: int) -> None:
        super().__init__()
        self.delay_ms = delay_ms

    def describe(self) -> str:
        return f"timer {self.delay_ms} ms"


class WaitEventTask(DurableTask):
    __slots__ = ("name", "result_type")

    def __init__(self, name: str, result_type: Any = None) -> None:
        super().__init__()
        self.name = name
        self.result_type = result_type

    def describe(self) -> str:
        return f"wait for event {self.name!r}"


class DequeueTask(DurableTask):
    __slots__ = ("name", "result_type")

    def __init__(self, name: str, result_type: Any = None) -> None:
        super().__init__()
        self.name = name
        self.result_type = result_type

    def describe(self) -> str:
        return f"dequeue from {self.name!r}"


def _version(version: Any) -> str | None:
    """A version the code asks for: None (the registry's policy) or a semver string, checked at
    the call - a dict or a number (``continue_as_new_versioned(version, input)``, the Rust
    argument order) would otherwise reach the store's version columns and fail every ack."""
    if version is not None:
        parse_semver(version)  # ConfigurationError naming it
    return version


class SubOrchestrationTask(DurableTask):
    __slots__ = ("name", "instance", "input", "version", "result_type")

    def __init__(
        self, name: str, instance: str | None, input: str, version: str | None, result_type: Any = None
    ) -> None:
        super().__init__()
        self.name = name
        self.instance = instance
        self.input = input
        self.version = _version(version)
        self.result_type = result_type

    def describe(self) -> str:
        return f"sub-orchestration {self.name!r}"


class DetachedStartTask(DurableTask):
    """Fire-and-forget start of another orchestration; resolves at once with ``None``."""

    __slots__ = ("name", "instance", "input", "version")

    def __init__(self, name: str, instance: str, input: str, version: str | None) -> None:
        super().__init__()
        self.name = name
        self.instance = instance
        self.input = input
        self.version = _version(version)


class ContinueAsNewTask(DurableTask):
    """Never resolves: the execution ends and a new one starts with ``input``."""

    __slots__ = ("input", "version")

    def __init__(self, input: str, version: str | None) -> None:
        super().__init__()
        self.input = input
        self.version = _version(version)


class AllTask(DurableTask):
    """Wait for every child; results in list order (SPEC §4)."""

    __slots__ = ("children", "mode")
    leaf = False

    def __init__(self, children: Sequence[DurableTask], mode: str = "all") -> None:
        super().__init__()
        self.children = _check_children(children, "join")
        self.mode = mode  # "all" | "all_typed" | "join2" (tuple)


class RaceTask(DurableTask):
    """First child to complete (by history order) wins; the others are dropped (SPEC §4)."""

    __slots__ = ("children", "mode")
    leaf = False

    def __init__(self, children: Sequence[DurableTask], mode: str = "race") -> None:
        super().__init__()
        self.children = _check_children(children, "select")
        self.mode = mode  # "race" | "race_typed" | "either" | "raw"


def _check_children(children: Iterable[Any], what: str) -> tuple[DurableTask, ...]:
    out = tuple(children)
    for child in out:
        if not isinstance(child, DurableTask):
            raise TypeError(
                f"{what} takes tasks returned by ctx.schedule_*/wait_for_event/..., got {type(child).__name__}"
            )
        if isinstance(child, RetryTask):
            continue  # runs as its own strand of the join/race (the engine's _Fiber)
        if not child.leaf:
            raise TypeError(f"nested join/select inside {what} is not supported")
        if isinstance(child, (ContinueAsNewTask, DetachedStartTask)):
            raise TypeError(f"{type(child).__name__} inside {what} is not supported")
    return out


class RetryTask(DurableTask):
    """Activity with a retry policy; the engine runs :func:`_retry_loop` as nested code."""

    __slots__ = ("activity", "policy")
    leaf = False

    def __init__(self, activity: ActivityTask, policy: "RetryPolicy") -> None:
        super().__init__()
        self.activity = activity
        self.policy = policy

    def body(self, ctx: "OrchestrationContext") -> Generator[DurableTask, Any, Any]:
        return _retry_loop(ctx, self.activity, self.policy)

    def with_tag(self, tag: str) -> "RetryTask":
        """Route every attempt to workers whose ``worker_tag_filter`` accepts ``tag`` (as
        duroxide-python allows on retry tasks too). Tags this task and returns it."""
        _check_tag(tag)
        if self._st is not None:
            raise TypeError(f"with_tag({tag!r}) on activity {self.activity.name!r} after it was yielded: it is "
                            "scheduled already; tag it before yielding it")
        self.activity.with_tag(tag)  # (the template: every attempt is a fresh copy of it)
        return self


#: The retry dict keys duroxide-python's SDK reads (SPEC §17); it ignores any other.
RETRY_KEYS = frozenset({"max_attempts", "maxAttempts", "timeout_ms", "timeoutMs", "total_timeout_ms", "totalTimeoutMs",
                        "backoff"})


def _unknown_retry_keys(retry: dict) -> list[str]:
    return sorted(repr(k) if not isinstance(k, str) else k for k in retry if k not in RETRY_KEYS)


@attrs.frozen
class Either2:
    """Result of ``select2``: which branch won and its value (Rust ``Either2``)."""

    winner: int
    value: Any
    error: str | None = None

    def index(self) -> int:
        return self.winner

    def into_tuple(self) -> tuple[int, Any]:
        return (self.winner, self.value)

    @property
    def is_first(self) -> bool:
        return self.winner == 0

    @property
    def is_second(self) -> bool:
        return self.winner == 1


@attrs.frozen
class Either3(Either2):
    @property
    def is_third(self) -> bool:
        return self.winner == 2


# ---------------------------------------------------------------------------------------------
# Retry policy (SPEC §9)
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Backoff:
    """Delay before retry *n* (1-based): none, fixed, linear or exponential, capped at max_ms."""

    kind: str = "exponential"  # "none" | "fixed" | "linear" | "exponential"
    base_ms: int = 100
    multiplier: float = 2.0
    max_ms: int = 30_000

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("none", "fixed", "linear", "exponential"):
            raise ValueError(f"Backoff.kind must be 'none', 'fixed', 'linear' or 'exponential', got {self.kind!r}")
        for name in ("base_ms", "max_ms"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_TIMER_DELAY_MS:
                raise ValueError(f"Backoff.{name} must be an integer of ms in 0..{MAX_TIMER_DELAY_MS}, got {value!r}")
        m = self.multiplier
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < float("inf"):
            raise ValueError(f"Backoff.multiplier must be a positive finite number, got {m!r}")

    @classmethod
    def none(cls) -> "Backoff":
        return cls("none", 0)

    @classmethod
    def fixed(cls, delay_ms: int) -> "Backoff":
        return cls("fixed", delay_ms, 1.0, delay_ms)

    @classmethod
    def linear(cls, base_ms: int = 100, max_ms: int = 30_000) -> "Backoff":
        return cls("linear", base_ms, 1.0, max_ms)

    @classmethod
    def exponential(cls, base_ms: int = 100, multiplier: float = 2.0, max_ms: int = 30_000) -> "Backoff":
        return cls("exponential", base_ms, multiplier, max_ms)

    def delay_ms(self, failure: int) -> int:
        if self.kind == "none":
            return 0
        if self.kind == "fixed":
            return self.base_ms
        if self.kind == "linear":
            return min(self.base_ms * failure, self.max_ms)
        # exponential, overflow-safe: stop multiplying once past the cap
        delay = float(self.base_ms)
        for _ in range(failure - 1):
            delay *= self.multiplier
            if delay >= self.max_ms:
                return self.max_ms
        return min(int(delay), self.max_ms)


@attrs.frozen
class RetryPolicy:
    """``max_attempts`` (>= 1), backoff between attempts, optional per-attempt timeout."""

    max_attempts: int = 3
    backoff: Backoff = attrs.field(factory=Backoff)
    timeout_ms: int | None = None

    def __attrs_post_init__(self) -> None:
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if self.timeout_ms is not None and (type(self.timeout_ms) is not int or not 0 < self.timeout_ms <= MAX_TIMER_DELAY_MS):
            raise ValueError(f"RetryPolicy.timeout_ms must be a positive integer of ms (at most {MAX_TIMER_DELAY_MS}), "
                             f"got {self.timeout_ms!r}")
        if not isinstance(self.backoff, Backoff):
            raise ValueError(f"RetryPolicy.backoff must be a Backoff, got {type(self.backoff).__name__}")

    def with_timeout(self, timeout_ms: int) -> "RetryPolicy":
        return attrs.evolve(self, timeout_ms=timeout_ms)

    with_total_timeout = with_timeout  # alias, per-attempt (SPEC §9)

    def with_backoff(self, backoff: Backoff) -> "RetryPolicy":
        return attrs.evolve(self, backoff=backoff)

    @classmethod
    def from_dict(cls, retry: Any, *, strict: bool = True) -> "RetryPolicy":
        """duroxide-python's dict form: max_attempts/maxAttempts, timeout_ms/timeoutMs,
        total_timeout_ms/totalTimeoutMs (overrides), backoff "exponential"|"fixed"|other=linear.
        A key outside these raises ``ValueError`` unless ``strict`` is False (then it is
        ignored, as duroxide-python ignores it; the scheduling calls warn about it instead)."""
        if isinstance(retry, RetryPolicy):
            return retry
        if retry is None:
            retry = {}
        if not isinstance(retry, dict):
            raise TypeError(f"retry must be a dict or RetryPolicy, got {type(retry).__name__}")
        unknown = _unknown_retry_keys(retry)
        if unknown and strict:
            raise ValueError(f"unknown retry option(s) {unknown}; expected some of {sorted(RETRY_KEYS)}")
        attempts = retry.get("max_attempts", retry.get("maxAttempts", 3))
        timeout = retry.get("timeout_ms", retry.get("timeoutMs"))
        total = retry.get("total_timeout_ms", retry.get("totalTimeoutMs"))
        if total is not None:
            timeout = total
        spec = retry.get("backoff")
        if spec is None or spec == "exponential":
            backoff = Backoff.exponential()
        elif isinstance(spec, Backoff):
            backoff = spec
        elif not isinstance(spec, str):
            # duroxide-python passes it on to the core, which fails the orchestration ("expected
            # a string"): refused at the call here, with the values it takes.
            raise TypeError(f"retry backoff must be 'exponential', 'fixed', another string (linear) or a Backoff, "
                            f"got {type(spec).__name__} {spec!r}")
        elif spec == "fixed":
            backoff = Backoff.fixed(1000)
        else:
            backoff = Backoff.linear()
        return cls(attempts, backoff, timeout)


_TIMEOUT_ERROR = "timeout: activity timed out"


def _retry_loop(
    ctx: "OrchestrationContext", template: ActivityTask, policy: RetryPolicy
) -> Generator[DurableTask, Any, Any]:
    """Attempts 1..max: race against a deadline timer if a timeout is set (timeouts are never
    retried), back off with a durable timer between failures, re-raise the last error."""
    from ..errors import TaskFailedError

    last: BaseException | None = None
    for attempt in range(1, policy.max_attempts + 1):
        act = ActivityTask(template.name, template.input, template.session_id, template.tag, template.result_type)
        if policy.timeout_ms is not None:
            index, ok, value = yield RaceTask([act, TimerTask(policy.timeout_ms)], mode="raw")
            if index == 1:
                raise TaskFailedError(_TIMEOUT_ERROR)
            if ok:
                return value
            if not isinstance(value, TaskFailedError):
                raise value  # e.g. a result that does not match result_type: the activity did succeed
            last = value
        else:
            try:
                return (yield act)
            except TaskFailedError as exc:
                last = exc
        if attempt < policy.max_attempts:
            delay = policy.backoff.delay_ms(attempt)
            ctx.trace_warn(
                f"activity {template.name!r} attempt {attempt}/{policy.max_attempts} failed: {last}; "
                f"retrying in {delay} ms"
            )
            if delay > 0:
                yield TimerTask(delay)
    assert last is not None
    raise last


# ---------------------------------------------------------------------------------------------
# The context
# ---------------------------------------------------------------------------------------------


def _caller_site() -> tuple[str, int]:
    frame = sys._getframe(2)
    return frame.f_code.co_filename, frame.f_lineno


class OrchestrationContext:
    """What orchestration code sees. Mirrors duroxide-python's names and signatures.

    Methods that schedule work return tasks: ``yield`` them (generator orchestrations) or
    ``await`` them (``async def`` orchestrations). ``set_custom_status``, the KV methods and
    ``trace_*`` act immediately and are replay-safe.
    """

    def __init__(
        self,
        engine: "_Engine",
        *,
        instance_id: str,
        execution_id: int,
        orchestration_name: str,
        orchestration_version: str,
    ) -> None:
        self._engine = engine
        self.instance_id = instance_id
        self.execution_id = execution_id
        self.orchestration_name = orchestration_name
        self.orchestration_version = orchestration_version

    # --- activities -----------------------------------------------------------------------

    def schedule_activity(self, name: str, input: Any = None, session_id: str | None = None) -> ActivityTask:
        return ActivityTask(_name(name, "activity"), codec.encode(input, f"input of activity {name!r}"),
                            None if session_id is None else _sid(session_id))

    def _retry_policy(self, retry: Any) -> RetryPolicy:
        """The retry argument of the scheduling calls. Keys duroxide-python does not read are
        ignored as it ignores them (its own guide passes ``backoff_strategy``), with a warning
        in the orchestration's log (replay-safe: once, not on every replay) so a misspelt
        ``max_attempt`` does not go unnoticed."""
        policy = RetryPolicy.from_dict(retry, strict=False)
        if isinstance(retry, dict):
            unknown = _unknown_retry_keys(retry)
            if unknown:
                self.trace_warn(f"retry option(s) {unknown} not used (duroxide-python ignores them too); "
                                f"the options are {sorted(RETRY_KEYS)}")
        return policy

    def schedule_activity_on_session(self, name: str, input: Any, session_id: str) -> ActivityTask:
        if session_id is None:
            raise TypeError("schedule_activity_on_session requires a session_id")
        return self.schedule_activity(name, input, session_id)

    def schedule_activity_with_retry(self, name: str, input: Any, retry: Any) -> RetryTask:
        return RetryTask(self.schedule_activity(name, input), self._retry_policy(retry))

    def schedule_activity_with_retry_on_session(self, name: str, input: Any, retry: Any, session_id: str) -> RetryTask:
        return RetryTask(self.schedule_activity_on_session(name, input, session_id), self._retry_policy(retry))

    def schedule_activity_typed(self, name: str, input: Any = None, result_type: Any = None) -> ActivityTask:
        return ActivityTask(_name(name, "activity"), codec.encode_typed(input, f"input of activity {name!r}"), None, None,
                            codec.check_result_type(result_type))

    def schedule_activity_on_session_typed(
        self, name: str, input: Any = None, session_id: str | None = None, result_type: Any = None
    ) -> ActivityTask:
        if session_id is None:  # (duroxide-python's core fails the orchestration: "expected a string")
            raise TypeError("schedule_activity_on_session_typed requires a session_id")
        task = self.schedule_activity_typed(name, input, result_type)
        task.session_id = _sid(session_id)
        return task

    def schedule_activity_with_retry_typed(
        self, name: str, input: Any = None, retry: Any = None, result_type: Any = None
    ) -> RetryTask:
        return RetryTask(self.schedule_activity_typed(name, input, result_type), self._retry_policy(retry))

    def schedule_activity_with_retry_on_session_typed(
        self, name: str, input: Any = None, retry: Any = None, session_id: str | None = None, result_type: Any = None
    ) -> RetryTask:
        task = self.schedule_activity_on_session_typed(name, input, session_id, result_type)
        return RetryTask(task, self._retry_policy(retry))

    # --- timers, events, queues -----------------------------------------------------------

    def schedule_timer(self, delay_ms: int) -> TimerTask:
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or delay_ms < 0:
            raise TypeError(f"schedule_timer expects a non-negative integer of ms, got {delay_ms!r}")
        if delay_ms > MAX_TIMER_DELAY_MS:
            # Its fire time must fit the providers' 64-bit time columns (else every ack of the
            # turn fails and the instance is stuck until it is poisoned).
            raise ValueError(f"schedule_timer delay {delay_ms} ms is over the maximum of {MAX_TIMER_DELAY_MS} ms "
                             "(about 146 million years)")
        return TimerTask(delay_ms)

    def wait_for_event(self, name: str) -> WaitEventTask:
        return WaitEventTask(_name(name, "event"))

    def wait_for_event_typed(self, name: str, result_type: Any = None) -> WaitEventTask:
        return WaitEventTask(_name(name, "event"), codec.check_result_type(result_type))

    def dequeue_event(self, queue_name: str) -> DequeueTask:
        return DequeueTask(_name(queue_name, "queue"))

    def dequeue_event_typed(self, queue_name: str, result_type: Any = None) -> DequeueTask:
        return DequeueTask(_name(queue_name, "queue"), codec.check_result_type(result_type))

    # --- sub-orchestrations and detached starts -------------------------------------------

    def schedule_sub_orchestration(self, name: str, input: Any = None) -> SubOrchestrationTask:
        return SubOrchestrationTask(_name(name, "orchestration"), None, codec.encode(input, f"input of {name!r}"), None)

    def schedule_sub_orchestration_with_id(self, name: str, instance_id: str, input: Any = None) -> SubOrchestrationTask:
        return SubOrchestrationTask(_name(name, "orchestration"), _instance_id(instance_id), codec.encode(input, f"input of {name!r}"), None)

    def schedule_sub_orchestration_versioned(self, name: str, version: str | None = None, input: Any = None) -> SubOrchestrationTask:
        return SubOrchestrationTask(_name(name, "orchestration"), None, codec.encode(input, f"input of {name!r}"), version)

    def schedule_sub_orchestration_versioned_with_id(
        self, name: str, version: str | None, instance_id: str, input: Any = None
    ) -> SubOrchestrationTask:
        return SubOrchestrationTask(_name(name, "orchestration"), _instance_id(instance_id), codec.encode(input, f"input of {name!r}"), version)

    def schedule_sub_orchestration_typed(self, name: str, input: Any = None, result_type: Any = None) -> SubOrchestrationTask:
        return SubOrchestrationTask(_name(name, "orchestration"), None, codec.encode_typed(input, f"input of {name!r}"), None,
                                    codec.check_result_type(result_type))

    def schedule_sub_orchestration_with_id_typed(
        self, name: str, instance_id: str, input: Any = None, result_type: Any = None
    ) -> SubOrchestrationTask:
        return SubOrchestrationTask(
            _name(name, "orchestration"), _instance_id(instance_id), codec.encode_typed(input, f"input of {name!r}"), None,
            codec.check_result_type(result_type)
        )

    def start_orchestration(self, name: str, instance_id: str, input: Any = None) -> DetachedStartTask:
        return DetachedStartTask(_name(name, "orchestration"), _detached_id(instance_id), codec.encode(input, f"input of {name!r}"), None)

    def start_orchestration_versioned(self, name: str, version: str | None, instance_id: str, input: Any = None) -> DetachedStartTask:
        return DetachedStartTask(_name(name, "orchestration"), _detached_id(instance_id), codec.encode(input, f"input of {name!r}"), version)

    def start_orchestration_typed(self, name: str, instance_id: str, input: Any = None) -> DetachedStartTask:
        return DetachedStartTask(_name(name, "orchestration"), _detached_id(instance_id), codec.encode_typed(input, f"input of {name!r}"), None)

    def start_orchestration_versioned_typed(
        self, name: str, version: str | None, instance_id: str, input: Any = None
    ) -> DetachedStartTask:
        return DetachedStartTask(_name(name, "orchestration"), _detached_id(instance_id), codec.encode_typed(input, f"input of {name!r}"), version)

    # --- continue-as-new --------------------------------------------------------------------

    def continue_as_new(self, input: Any = None) -> ContinueAsNewTask:
        return ContinueAsNewTask(codec.encode(input, "continue-as-new input"), None)

    def continue_as_new_versioned(self, input: Any, version: str | None = None) -> ContinueAsNewTask:
        return ContinueAsNewTask(codec.encode(input, "continue-as-new input"), version)

    def continue_as_new_typed(self, input: Any = None) -> ContinueAsNewTask:
        return ContinueAsNewTask(codec.encode_typed(input, "continue-as-new input"), None)

    # --- system calls (activities with reserved names, SPEC §5) ------------------------------

    def new_guid(self) -> ActivityTask:
        return ActivityTask(SYSCALL_NEW_GUID, "", post="str")

    def utc_now(self) -> ActivityTask:
        return ActivityTask(SYSCALL_UTC_NOW, "", post="int")

    def get_kv_value_from_instance(self, instance_id: str, key: str) -> ActivityTask:
        # (checked here, where the code can catch it: a bad id used to reach the worker's
        # syscall, which crashed there and left the orchestration waiting for its lock)
        instance_id = _instance_id(instance_id)
        key = _kv_key(key)
        payload = codec.encode({"instance_id": instance_id, "key": key})
        return ActivityTask(SYSCALL_GET_KV, payload, post="kv")

    # --- composition --------------------------------------------------------------------------

    def all(self, tasks: Sequence[DurableTask]) -> AllTask:
        return AllTask(tasks, "all")

    def all_typed(self, tasks: Sequence[DurableTask]) -> AllTask:
        return AllTask(tasks, "all_typed")

    def race(self, *tasks: DurableTask) -> RaceTask:
        if len(tasks) == 1 and isinstance(tasks[0], (list, tuple)):
            tasks = tuple(tasks[0])
        if len(tasks) != 2:
            raise ValueError("select currently supports exactly 2 tasks")
        return RaceTask(tasks, "race")

    def race_typed(self, *tasks: DurableTask) -> RaceTask:
        task = self.race(*tasks)
        task.mode = "race_typed"
        return task

    # Rust-style aliases
    def schedule_wait(self, name: str) -> WaitEventTask:
        return self.wait_for_event(name)

    def schedule_orchestration(self, name: str, instance_id: str, input: Any = None) -> DetachedStartTask:
        return self.start_orchestration(name, instance_id, input)

    def schedule_orchestration_versioned(self, name: str, version: str | None, instance_id: str, input: Any = None) -> DetachedStartTask:
        return self.start_orchestration_versioned(name, version, instance_id, input)

    def join(self, tasks: Sequence[DurableTask]) -> AllTask:
        return AllTask(tasks, "all")

    def join2(self, a: DurableTask, b: DurableTask) -> AllTask:
        return AllTask((a, b), "tuple")

    def join3(self, a: DurableTask, b: DurableTask, c: DurableTask) -> AllTask:
        return AllTask((a, b, c), "tuple")

    def select2(self, a: DurableTask, b: DurableTask) -> RaceTask:
        return RaceTask((a, b), "either")

    def select3(self, a: DurableTask, b: DurableTask, c: DurableTask) -> RaceTask:
        return RaceTask((a, b, c), "either")

    # --- custom status ----------------------------------------------------------------------

    def set_custom_status(self, status: Any) -> None:
        text = codec.check_text(status, "custom status") if isinstance(status, str) else codec.encode(status, "custom status")
        self._engine.custom_status = text
        self._engine.emit_plain(UpdateCustomStatus(status=text), _caller_site())

    def reset_custom_status(self) -> None:
        self._engine.custom_status = None
        self._engine.emit_plain(UpdateCustomStatus(status=None), _caller_site())

    def get_custom_status(self) -> str | None:
        return self._engine.custom_status

    # --- key/value store (SPEC §13) --------------------------------------------------------

    def set_kv_value(self, key: str, value: Any) -> None:
        key = _kv_key_written(key)
        what = f"KV value for {key!r}"
        text = codec.check_text(value, what) if isinstance(value, str) else codec.encode(value, what)
        ts = self._engine.ctx_now()
        self._engine.kv[key] = (text, ts)
        self._engine.emit_plain(SetKeyValue(key=key, value=text, ts=ts), _caller_site())

    def get_kv_value(self, key: str) -> str | None:
        _kv_key(key)  # (a non-string key is refused, as set_kv_value refuses it)
        entry = self._engine.kv.get(key)
        return None if entry is None else entry[0]

    def get_kv_all_values(self) -> dict[str, str]:
        return {k: v for k, (v, _) in self._engine.kv.items()}

    def get_kv_all_keys(self) -> list[str]:
        return list(self._engine.kv)

    def get_kv_length(self) -> int:
        return len(self._engine.kv)

    def clear_kv_value(self, key: str) -> None:
        _kv_key_written(key)  # (a non-string key would clear nothing here and fail the ack, or worse)
        self._engine.kv.pop(key, None)
        self._engine.emit_plain(ClearKeyValue(key=key), _caller_site())

    def clear_all_kv_values(self) -> None:
        self._engine.kv.clear()
        self._engine.emit_plain(ClearKeyValues(), _caller_site())

    def prune_kv_values_updated_before(self, cutoff_ms: int) -> int:
        if type(cutoff_ms) is not int:  # (bool is refused too; the peer: "cannot be interpreted as an integer")
            raise TypeError(f"cutoff_ms must be an integer (ms since the epoch), got {type(cutoff_ms).__name__}")
        stale = [k for k, (_, ts) in self._engine.kv.items() if ts < cutoff_ms]
        for key in stale:
            self._engine.kv.pop(key)
            self._engine.emit_plain(ClearKeyValue(key=key), _caller_site())
        return len(stale)

    # --- replay-safe logging ------------------------------------------------------------------

    def trace(self, level: str, message: str) -> None:
        lvl = _LEVELS.get(str(level).lower())
        if lvl is None:
            raise ValueError(f"unknown trace level {level!r}; use debug/info/warn/error")
        self._engine.log(lvl, _message_text(message))

    def trace_info(self, message: str) -> None:
        self._engine.log(logging.INFO, _message_text(message))

    def trace_warn(self, message: str) -> None:
        self._engine.log(logging.WARNING, _message_text(message))

    def trace_error(self, message: str) -> None:
        self._engine.log(logging.ERROR, _message_text(message))

    def trace_debug(self, message: str) -> None:
        self._engine.log(logging.DEBUG, _message_text(message))

    def is_replaying(self) -> bool:
        """True while the code re-executes steps already recorded in history."""
        return self._engine.is_replaying


#: The longest instance id accepted anywhere (client starts, sub-orchestration and detached ids).
MAX_INSTANCE_ID_BYTES = 16_384
#: The longest timer: now + delay must fit a signed 64-bit millisecond column.
MAX_TIMER_DELAY_MS = 2**62


def _message_text(message: Any) -> str:
    """A ``trace_*`` message as text; an object whose ``str()`` raises is logged as Python's
    logging and traceback printers show it, not allowed to fail the orchestration."""
    if type(message) is str:
        return message
    try:
        return str(message)
    except Exception:  # noqa: BLE001
        return f"<{type(message).__name__} object: str() failed>"


def _instance_id(value: Any) -> str:
    """A sub-orchestration or detached instance id: the client's rules (a non-empty string,
    no NUL, valid Unicode, at most MAX_INSTANCE_ID_BYTES), so every instance can also be
    addressed by a client."""
    problem = text_problem(value, MAX_INSTANCE_ID_BYTES)
    if problem is not None:
        raise TypeError(f"instance id {problem}" + (f", got {value!r}" if "NUL" in problem else ""))
    return plain_text(value)


#: The longest KV key a turn may write (UTF-8 bytes): every provider indexes keys, and
#: PostgreSQL's btree rows end near 2.7 KB (a longer key failed the turn there with an
#: infrastructure error while memory and SQLite stored it). Reads of a longer key find nothing.
MAX_KV_KEY_BYTES = 1_024


def _kv_key(value: Any) -> str:
    """A KV key: any string a store can hold, the empty one included (as duroxide-python
    accepts it)."""
    if type(value) is str and not value:
        return value
    return _name(value, "KV key")


def _kv_key_written(value: Any) -> str:
    """A KV key a turn writes (set / clear): :func:`_kv_key` and at most MAX_KV_KEY_BYTES."""
    key = _kv_key(value)
    if len(key) > MAX_KV_KEY_BYTES // 4 and len(key.encode("utf-8")) > MAX_KV_KEY_BYTES:
        raise ValueError(f"KV key {key[:40]!r}... is {len(key.encode('utf-8'))} bytes; "
                         f"KV keys are limited to {MAX_KV_KEY_BYTES} bytes (UTF-8)")
    return key


def _detached_id(value: Any) -> str:
    """A detached start's instance id: the client's rules, including the reserved marker."""
    instance_id = _instance_id(value)
    problem = reserved_id_problem(instance_id)
    if problem is not None:
        raise ValueError(f"detached orchestration instance id {instance_id!r} {problem}"[:400])
    return instance_id


def reserved_id_problem(instance_id: str) -> str | None:
    """Why a root instance id (a client's start, a detached start) is refused, or None: the
    runtime names auto child ids ``{parent}::sub::{n}``, so a root id that starts with ``sub::``
    or contains ``::sub::`` could take a child's place (duroxide-python refuses these too)."""
    if instance_id.startswith("sub::") or "::sub::" in instance_id:
        return ("uses the reserved sub-orchestration marker 'sub::'; root instance ids must not start with it "
                "or contain '::sub::'")
    return None


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} name must be a non-empty string, got {value!r}")
    if "\x00" in value or (not value.isascii() and text_problem(value) is not None):
        # (every provider must store it: PostgreSQL text holds no NUL, no driver a lone surrogate)
        raise TypeError(f"{what} name must be valid Unicode without NUL characters, got {value!r}")
    return value if type(value) is str else plain_text(value)


#: The longest session id: every provider keys a sessions table by it (PostgreSQL's btree rows end
#: near 2.7 KB: a longer id made every session-aware fetch of the schema fail).
MAX_SESSION_ID_BYTES = 1_024


def _sid(session_id: Any) -> str | None:
    if session_id is None:
        return None
    problem = text_problem(session_id, MAX_SESSION_ID_BYTES)
    if problem is not None:
        raise TypeError(f"session_id {problem}")
    return plain_text(session_id)

