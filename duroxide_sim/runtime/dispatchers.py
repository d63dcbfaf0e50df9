"""Orchestration and worker dispatchers as non-blocking steps (SPEC §3.1, §10.2, §11.2).

A dispatcher step does at most one unit of work: fetch one item, execute it, commit it. The
three phases are separate methods (``fetch`` / ``process`` for orchestrations, ``fetch`` /
``execute`` / ``commit`` for activities) so a scheduler can interleave them, crash between
them, or reorder them; ``step()`` simply runs them back to back. Nothing here sleeps, starts
threads or reads the wall clock: time comes from the injected ``clock``, ids from ``ids``,
lock renewal from an injected ``renewer``. The production driver (``realtime.py``) and the
simulation drive these same objects.

Dispatchers see providers only through the Provider protocol.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from ..core import codec
from ..core.context import ORCHESTRATION_LOGGER
from ..core.events import (
    ENGINE_VERSION,
    ActivityCompletedMsg,
    ActivityExecute,
    ActivityFailedMsg,
    ApplicationError,
    ContinueAsNew,
    InfrastructureError,
    OrchestrationFailed,
    OrchestrationStarted,
    PoisonError,
    SubOrchCompletedMsg,
    SubOrchFailedMsg,
    SubOrchestrationScheduled,
    WorkItem,
)
from ..core.registry import SYSCALL_GET_KV, SYSCALL_NEW_GUID, SYSCALL_UTC_NOW, Registry, parse_engine_version
from ..core.replay import EngineCache, TurnInput, TurnResult, execute_turn, poison_turn
from ..errors import DuroxideError, LockLostError, NondeterminismError, ProviderError
from ..providers.base import (
    Clock,
    ExecutionMetadata,
    OrchestrationItem,
    Provider,
    ScheduledActivityIdentifier,
    SessionConfig,
    WorkItemLease,
)
from .activity import ActivityContext
from ..core.logsink import emit
from .options import RuntimeOptions

__all__ = [
    "IdSource",
    "Renewer",
    "NullRenewer",
    "Metrics",
    "Services",
    "OrchestrationDispatcher",
    "WorkerDispatcher",
    "ActivityOutcome",
]

_orch_log = logging.getLogger(ORCHESTRATION_LOGGER)

#: Engine cache admission: engines of short histories (replaying them costs little) are kept
#: in an LRU of at most _FEW_ENGINES, so thousands of concurrent small instances do not each pin
#: a live generator (~3 KiB each once parked: about 1.5 MiB for 512); long histories are kept
#: up to ``instance_cache_size``. (Admitting short ones only while the whole cache held fewer
#: than 512 let stale engines - instances another runtime took over, or deleted ones - fill it
#: for good: the hit rate of a long-running process fell to zero.)
_FEW_ENGINES = 512
_LONG_HISTORY = 32
#: SPEC §3.1 step 10: a retryable ack failure is retried up to _ACK_RETRIES times, waiting
#: _ACK_RETRY_BASE_MS * 2**n before retry n (10, 20, 40, 80, 160 ms), then the item is abandoned.
_ACK_RETRIES = 5
_ACK_RETRY_BASE_MS = 10
_log = logging.getLogger("duroxide_sim.runtime")


class IdSource(Protocol):
    """Where GUIDs for ``ctx.new_guid()`` come from (uuid4 in production, seeded in simulation)."""

    def new_guid(self) -> str: ...


class Renewer(Protocol):
    """Keeps locks alive while work runs; calls ``on_lost`` when a renewal fails."""

    def watch(self, kind: str, token: str, timeout_ms: int, on_lost: Callable[[], None]) -> None: ...

    def unwatch(self, token: str) -> None: ...


class NullRenewer:
    """No background renewal: work must finish within its lock timeout.

    Its methods do nothing, so the dispatchers do not call them (nor build their callbacks)
    when the services' renewer is exactly a NullRenewer (``type(renewer) is NullRenewer``: a
    subclass may override them)."""

    def watch(self, kind: str, token: str, timeout_ms: int, on_lost: Callable[[], None]) -> None:
        return None

    def unwatch(self, token: str) -> None:
        return None


def _ignore_lost() -> None:
    """An orchestration turn's ``on_lost``: nothing to cancel (the ack finds the lock gone)."""


_METRIC_NAMES = (
    "orch_starts", "orch_completions", "orch_failures", "orch_application_errors",
    "orch_infrastructure_errors", "orch_configuration_errors", "orch_poison", "activity_success",
    "activity_app_errors", "activity_infra_errors", "activity_config_errors", "activity_poison",
    "orch_dispatcher_items_fetched", "worker_dispatcher_items_fetched", "orch_continue_as_new",
    "suborchestration_calls", "provider_errors",
)


class Metrics:
    """Thread-safe counters (SPEC §14 ``metrics_snapshot``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_METRIC_NAMES, 0)

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def add(self, counts: tuple[tuple[str, int], ...], sign: int = 1) -> None:
        """Several counters at once: a snapshot sees all of them or none (``sign=-1`` takes
        back counts bumped for an ack that then did not commit)."""
        if counts:
            with self._lock:
                for name, n in counts:
                    self._counts[name] += sign * n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


#: History length over which the from-scratch check of cached turns thins out (see process).
_VERIFY_SPAN = 256


@attrs.define(kw_only=True)
class Services:
    """Everything the dispatchers need, injected."""

    provider: Provider
    registry: Registry
    options: RuntimeOptions
    clock: Clock
    ids: IdSource
    metrics: Metrics = attrs.field(factory=Metrics)
    renewer: Renewer = attrs.field(factory=NullRenewer)
    #: ``run_coroutine(awaitable, on_start)`` runs an async activity; ``on_start`` receives a
    #: thread-safe function that cancels it.
    run_coroutine: Callable[[Any, Callable[[Callable[[], None]], None]], Any] | None = None
    client_factory: Callable[[], Any] = lambda: None
    worker_id: str = "worker"
    #: Re-run every cached (warm) turn from scratch too and fail loudly if they differ. The
    #: simulation turns this on; production leaves it off.
    verify_cache: bool = False
    #: With ``verify_cache``: check one warm turn in this many (deterministically, by count), and
    #: one in ``every * (1 + history // 256)`` once histories grow long.
    verify_cache_every: int = 3
    #: Waits ``ms`` between ack retries (SPEC §3.1 step 10): ``time.sleep`` in production, the
    #: simulated clock moving forward in simulation.
    sleep: Callable[[int], None] = lambda ms: None


def _chain(provider: Any, name: str, carry: dict | None) -> Any:
    """The provider's ack-and-fetch-next method ``name``, if it has one and the caller (the
    production driver) passed a ``carry``; else None (plain ack; the simulation's path)."""
    return getattr(provider, name, None) if carry is not None else None


class OrchestrationDispatcher:
    """fetch -> replay turn -> ack, for one instance batch at a time.

    ``step(carry)``: with a per-thread ``carry`` dict (production driver) and a provider that
    has ``ack_orchestration_item_and_fetch``, the ack also fetches the thread's next item in the
    same transaction and leaves it in ``carry["item"]`` (see ``realtime.ThreadDriver``)."""

    def __init__(self, services: Services) -> None:
        self.s = services
        opts = services.options
        self.filter = opts.supported_versions or ("0.0.0", ENGINE_VERSION)
        self._bounds = tuple(parse_engine_version(v) for v in self.filter)
        self._pins: dict[Any, bool | None] = {}  # stored engine stamp -> in range (None: not a version)
        # Whether this runtime may start executions: each new one is pinned to its own engine
        # version, so a range that leaves that out (a runtime kept to drain older executions)
        # must leave new instances and continue-as-new to a runtime that will run them.
        self._starts = self._bounds[0] <= parse_engine_version(ENGINE_VERSION) <= self._bounds[1]
        if not self._starts:
            emit(_log, logging.WARNING, "supported_versions %s..%s leaves out this runtime's own engine version %s: it "
                 "runs executions pinned in that range and starts none (new instances and continue-as-new are left "
                 "to other runtimes)", self.filter[0], self.filter[1], ENGINE_VERSION)
        size = opts.instance_cache_size
        self.cache = EngineCache(size, threading.Lock(), short_capacity=min(size, _FEW_ENGINES)) if size > 0 else None

    def fetch(self) -> OrchestrationItem | None:
        item = self.s.provider.fetch_orchestration_item(self.s.options.orchestrator_lock_timeout_ms, 0, self.filter)
        if item is not None:
            self.s.metrics.inc("orch_dispatcher_items_fetched")
        return item

    def step(self, carry: dict | None = None) -> bool:
        item = carry.pop("item", None) if carry is not None else None
        if item is None:
            try:
                item = self.fetch()
            except ProviderError:
                self.s.metrics.inc("provider_errors")
                raise
            if item is None:
                return False
        self.process(item, carry)
        return True

    def release(self, carry: dict) -> None:
        """Give back a prefetched item (the thread stops): unlock it, attempt not counted."""
        item = carry.pop("item", None)
        if item is not None:
            try:
                self.s.provider.abandon_orchestration_item(item.lock_token, None, True)
            except ProviderError:
                pass  # lock expiry re-exposes the item anyway

    def turn_input(self, item: OrchestrationItem) -> TurnInput:
        return TurnInput(
            instance=item.instance,
            execution_id=item.execution_id,
            orchestration_name=item.orchestration_name,
            version=item.version,
            history=item.history,
            messages=item.messages,
            now_ms=self.s.clock.now_ms(),
            kv_snapshot={k: (e.value, e.last_updated_at_ms) for k, e in item.kv_snapshot.items()} if item.kv_snapshot else {},
        )

    def process(self, item: OrchestrationItem, carry: dict | None = None) -> TurnResult | None:
        """Run the turn for a fetched item and commit it. Returns what was committed."""
        s = self.s
        opts, provider = s.options, s.provider
        if type(s.renewer) is not NullRenewer:  # (a NullRenewer's methods do nothing)
            s.renewer.watch("orchestration", item.lock_token, opts.orchestrator_lock_timeout_ms, _ignore_lost)
        try:
            if not self._compatible(item):
                # SPEC §12: the provider's capability filter let through an execution pinned to
                # an engine version outside this runtime's range: left for a runtime that runs
                # it (1 s; the attempt is not counted - the turn never ran).
                provider.abandon_orchestration_item(item.lock_token, 1_000, True)
                return None
            inp = self.turn_input(item)
            if item.history_error is not None:
                if item.attempt_count > opts.max_attempts:
                    result = poison_turn(inp, attempt_count=item.attempt_count, max_attempts=opts.max_attempts, history_error=item.history_error)
                    _log_poison("orchestration message", item.instance, item.attempt_count, opts.max_attempts)
                    return self._commit(item, result, carry)
                provider.abandon_orchestration_item(item.lock_token, 1_000, False)
                return None
            if item.attempt_count > opts.max_attempts:
                result = poison_turn(inp, attempt_count=item.attempt_count, max_attempts=opts.max_attempts)
                if result.kind != "noop":  # (an ended execution's late messages are discarded, not poison)
                    _log_poison("orchestration message", item.instance, item.attempt_count, opts.max_attempts)
                return self._commit(item, result, carry)
            cache = self.cache
            hits = cache.hits if cache is not None else 0
            result = execute_turn(inp, s.registry, cache)
            # One warm turn in verify_cache_every is re-run from scratch, and fewer as the history
            # grows (a from-scratch turn costs the whole history: checking every third turn of
            # an ever-growing history made a long run quadratic in its length).
            if (s.verify_cache and cache is not None and cache.hits > hits
                    and cache.hits % (s.verify_cache_every * (1 + len(inp.history) // _VERIFY_SPAN)) == 0):
                _verify_warm_turn(inp, s.registry, result)
            if result.kind == "unregistered":
                delay = opts.unregistered_backoff_ms(item.attempt_count)
                emit(_log, logging.WARNING, "%s (instance %r); retrying in %d ms", result.message, item.instance, delay,
                     extra={"instance_id": item.instance})
                provider.abandon_orchestration_item(item.lock_token, delay, False)
                return None
            return self._commit(item, result, carry)
        finally:
            if type(s.renewer) is not NullRenewer:
                s.renewer.unwatch(item.lock_token)

    def _pin_state(self, pin: Any) -> bool | None:
        """A stored engine stamp: True in this runtime's range, False outside it, None when it
        is not a version at all (cached: a few distinct stamps, one dict lookup per turn)."""
        try:
            return self._pins[pin]
        except KeyError:
            pass
        try:
            state: bool | None = self._bounds[0] <= parse_engine_version(pin) <= self._bounds[1]
        except DuroxideError:
            state = None
        except TypeError:  # (an unhashable stamp from a hand-written history)
            return None
        if len(self._pins) < 64:
            self._pins[pin] = state
        return state

    def _compatible(self, item: OrchestrationItem) -> bool:
        """The fetched execution's pin (its OrchestrationStarted's engine version) lies in this
        runtime's supported range (no pin: compatible). A turn that starts an execution - the
        instance's first (no history yet) or a continue-as-new's next - pins it to this
        runtime's own version: compatible when the range holds that version.

        A stamp that is not a version (empty, garbage: written by another tool or an old
        writer) runs as an unpinned (legacy) execution, as the reference does, with a warning
        naming the instance on every turn that reads it."""
        history = item.history
        if not history:
            return self._starts  # (the first turn pins the instance to this runtime's version)
        pin = getattr(history[0], "duroxide_version", None)
        ok = True if pin is None else self._pins.get(pin, _UNKNOWN)  # (one dict lookup per turn)
        if ok is _UNKNOWN:
            ok = self._pin_state(pin)
        if ok is None:
            emit(_log, logging.WARNING, "invalid pinned engine version %r in the history of instance %r; "
                 "running it as an unpinned (legacy) execution", _short_text(str(pin)), item.instance,
                 extra={"instance_id": item.instance, "execution_id": item.execution_id})
            ok = True
        if ok and self._starts:
            return True  # (the common turn)
        if any(type(m) is ContinueAsNew for m in item.messages):
            return self._starts  # the turn starts the next execution, pinned to this runtime's version
        return ok

    def _storable_pin(self, pin: str | None) -> str | None:
        """The pin an ack stores: an unreadable stamp is not passed on (the providers refuse it,
        and the execution runs unpinned)."""
        if pin is None:
            return None
        state = self._pins.get(pin, _UNKNOWN)
        if state is _UNKNOWN:
            state = self._pin_state(pin)
        return None if state is None else pin

    def _fill_parent_execution(self, items: tuple[WorkItem, ...]) -> list[WorkItem]:
        out: list[WorkItem] = []
        for wi in items:
            if isinstance(wi, (SubOrchCompletedMsg, SubOrchFailedMsg)) and wi.parent_execution_id == 0:
                # Recommend (SPEC §7): address the parent's current execution, read from storage.
                pexec = self.s.provider.latest_execution_id(wi.parent_instance) or 1
                wi = attrs.evolve(wi, parent_execution_id=pexec)
            out.append(wi)
        return out

    def _commit(self, item: OrchestrationItem, result: TurnResult, carry: dict | None = None) -> TurnResult | None:
        s = self.s
        metadata = ExecutionMetadata(
            status=result.status,
            output=result.output,
            orchestration_name=result.orchestration_name,
            orchestration_version=result.orchestration_version,
            parent_instance_id=result.parent_instance,
            pinned_duroxide_version=pin if (pin := result.pinned_version) is None or self._pins.get(pin) is True
            else self._storable_pin(pin),  # (rare: a stamp not known to be in range)
        )
        # (most turns cancel nothing and send nothing to other instances: no comprehension or
        # call for them, the same empty lists)
        cancelled = [ScheduledActivityIdentifier(i, e, a) for i, e, a in result.cancelled] if result.cancelled else []
        chain = None if carry is None else _chain(s.provider, "ack_orchestration_item_and_fetch", carry)
        orch_items = result.orchestrator_items
        retries = 0
        # The turn's counters go up before its ack, as the reference core counts while it builds
        # the turn: a client that sees the ack's outcome (Completed, say) must find it counted in
        # metrics_snapshot(). Counting after the ack returned let a client read the new status
        # and the old counts. An ack that does not commit takes the counts back.
        counts = _turn_counts(result)
        if counts:
            s.metrics.add(counts)
        while True:
            try:
                args = (item.lock_token, result.execution_id, result.delta, result.worker_items,
                        self._fill_parent_execution(orch_items) if orch_items else [], metadata, cancelled)
                if chain is None:
                    s.provider.ack_orchestration_item(*args)
                else:
                    assert carry is not None
                    nxt = chain(*args, lock_timeout_ms=s.options.orchestrator_lock_timeout_ms, filter=self.filter)
                    if nxt is None:
                        carry["empty"] = True
                    else:
                        s.metrics.inc("orch_dispatcher_items_fetched")
                        carry["item"] = nxt
                        carry["backlog"] = nxt.instance != item.instance
                break
            except LockLostError:
                s.metrics.inc("provider_errors")
                if retries:
                    # An earlier attempt failed retryably and this one finds the lock gone: that
                    # attempt most likely committed and only its reply was lost. The turn's code
                    # ran live, so its trace lines and counts are recorded (at least once: if
                    # the lock was taken instead, the next owner records the turn again).
                    self._log_turn(result)
                else:
                    s.metrics.add(counts, -1)
                return None  # the lock expired or was taken: another dispatcher owns this turn now
            except ProviderError as exc:
                s.metrics.inc("provider_errors")
                if exc.retryable and retries < _ACK_RETRIES:
                    # The ack is one transaction: nothing of it was stored, so it can run again.
                    s.sleep(_ACK_RETRY_BASE_MS << retries)
                    retries += 1
                    continue
                s.metrics.add(counts, -1)
                if exc.retryable:
                    emit(_log, logging.WARNING, "ack of instance %r failed %d times (%s); abandoning the turn",
                         item.instance, retries + 1, exc)
                    self._abandon_quietly(item.lock_token, 50)
                    return None
                return self._commit_infrastructure_failure(item, exc, result)
            except BaseException:
                s.metrics.add(counts, -1)  # (an unexpected error: nothing known to be committed)
                raise
        cache = self.cache
        if cache is not None and result.engine is not None:
            # committed: the next turn may resume it
            cache.put(item.instance, result.engine, short=result.engine.history_len < _LONG_HISTORY)
        self._log_turn(result)
        return result

    def _commit_infrastructure_failure(self, item: OrchestrationItem, exc: ProviderError,
                                       result: TurnResult | None = None) -> TurnResult | None:
        """SPEC §3.1 step 10: a permanent ack failure fails the instance on its fetched history.

        A first turn has no fetched history: the instance is created failed, with its turn's
        ``OrchestrationStarted`` and the error (and a parent hears of it). Abandoning it instead
        re-ran the turn into the same refusal until poison, which hid the store's reason (a KV
        key or a child id over PostgreSQL's index limit, say)."""
        details = InfrastructureError(operation="ack_orchestration_item", message=str(exc), is_retryable=False)
        started = None
        # The first turn of an execution: of the instance (no history fetched), or of the
        # execution a continue-as-new starts (its history is the previous execution's).
        if not item.history or (result is not None and result.execution_id != item.execution_id):
            started = next((e for e in (result.delta if result is not None else ()) if isinstance(e, OrchestrationStarted)), None)
            if started is None:
                self._abandon_quietly(item.lock_token, 50)
                return None
        execution_id = result.execution_id if started is not None and result is not None else item.execution_id
        last = started.event_id if started is not None else item.history[-1].event_id
        ev = OrchestrationFailed(
            event_id=last + 1, instance_id=item.instance, execution_id=execution_id,
            timestamp_ms=self.s.clock.now_ms(), details=details,
        )
        events: list[Any] = [ev] if started is None else [started, ev]
        # Parents told that their child start collided with this instance are told still: the
        # failed ack wrote nothing, so without this they would wait for good.
        notify = self._fill_parent_execution(result.collisions) if result is not None and result.collisions else []
        if started is not None and started.parent_instance is not None and started.parent_id is not None:
            notify += self._fill_parent_execution([SubOrchFailedMsg(
                parent_instance=started.parent_instance, parent_execution_id=started.parent_execution_id or 0,
                parent_id=started.parent_id, details=details)])
        metadata = (ExecutionMetadata(status="Failed", output=details.display_message()) if started is None else
                    ExecutionMetadata(status="Failed", output=details.display_message(), orchestration_name=started.name,
                                      orchestration_version=started.version, parent_instance_id=started.parent_instance,
                                      pinned_duroxide_version=self._storable_pin(started.duroxide_version)))
        try:
            self.s.provider.ack_orchestration_item(item.lock_token, execution_id, events, [], notify, metadata, [])
        except ProviderError:
            self._abandon_quietly(item.lock_token, 50)
            return None
        # The execution failed (and, on a first turn, started): counted like any committed
        # failure (_turn_counts), its category being infrastructure.
        counts = [("orch_failures", 1), ("orch_infrastructure_errors", 1)]
        if started is not None:
            counts.append(("orch_starts", 1))
        self.s.metrics.add(tuple(counts))
        return None

    def _abandon_quietly(self, token: str, delay_ms: int) -> None:
        try:
            self.s.provider.abandon_orchestration_item(token, delay_ms, False)
        except ProviderError:
            pass  # lock expiry re-exposes the item anyway

    def _log_turn(self, result: TurnResult) -> None:
        """The committed turn's log lines: a failed orchestration (once, on its failing turn)
        and the code's trace_* messages (emitted only now: a replayed turn does not repeat them)."""
        if result.kind in ("failed", "cancelled"):
            category = getattr(result.error, "category", "application")
            # Logged once (the failing turn, after its commit), with the instance, as
            # duroxide-python logs "Orchestration failed": an error when the code, not the work,
            # is wrong (nondeterminism and the like), a warning for the rest.
            instance = result.delta[0].instance_id if result.delta else ""
            if category != "poison":  # (poison: logged once where it is detected, _log_poison)
                emit(_log, logging.ERROR if category == "configuration" else logging.WARNING,
                     "orchestration %r (%s) failed: %s", instance, result.orchestration_name,
                     _short_text(_last_line(result.error.display_message())),
                     extra={"instance_id": instance, "execution_id": result.execution_id,
                            "orchestration_name": result.orchestration_name,
                            "orchestration_version": result.orchestration_version})
        if result.logs:
            first = result.delta[0] if result.delta else None
            extra = {"instance_id": first.instance_id if first is not None else "",
                     "execution_id": first.execution_id if first is not None else result.execution_id,
                     "orchestration_name": result.orchestration_name,
                     "orchestration_version": result.orchestration_version}
            for level, message in result.logs:
                emit(_orch_log, level, "%s", message, extra=extra)


_NO_COUNTS: tuple[tuple[str, int], ...] = ()
_SYSCALLS = (SYSCALL_UTC_NOW, SYSCALL_NEW_GUID, SYSCALL_GET_KV)  # (activity names the runtime answers itself)
_UNKNOWN = object()  # (a stamp not in OrchestrationDispatcher._pins yet)
_WORKER_ACK_FAILED = (("provider_errors", 1), ("activity_infra_errors", 1))
_FAILURE_COUNTER = {"configuration": "orch_configuration_errors", "infrastructure": "orch_infrastructure_errors",
                    "poison": "orch_poison"}


def _turn_counts(result: TurnResult) -> tuple[tuple[str, int], ...]:
    """The metrics a turn adds once committed (SPEC §14): starts, sub-orchestration calls and
    the execution's outcome."""
    delta = result.delta
    types = set(map(type, delta))  # (the events' classes, gathered without a Python loop)
    started = OrchestrationStarted in types
    subs = sum(type(e) is SubOrchestrationScheduled for e in delta) if SubOrchestrationScheduled in types else 0
    kind = result.kind
    if not started and not subs and kind == "continue":
        return _NO_COUNTS  # (the common turn)
    out = []
    if started:
        out.append(("orch_starts", 1))
    if subs:
        out.append(("suborchestration_calls", subs))
    # orch_completions counts every execution that ended by running its code - completed,
    # failed or cancelled, continued as new - as the reference counts it (a completion with a
    # status label); a poisoned one never ran and is counted as poison only.
    if kind == "completed":
        out.append(("orch_completions", 1))
    elif kind in ("failed", "cancelled"):
        category = getattr(result.error, "category", "application")
        out.append(("orch_failures", 1))
        out.append((_FAILURE_COUNTER.get(category, "orch_application_errors"), 1))
        if category != "poison":
            out.append(("orch_completions", 1))
    elif kind == "continued_as_new":
        out.append(("orch_continue_as_new", 1))
        out.append(("orch_completions", 1))
    return tuple(out)


def _verify_warm_turn(inp: TurnInput, registry: Registry, warm: TurnResult) -> None:
    """The instance cache must be invisible: a full replay must produce the same turn."""
    cold = execute_turn(inp, registry)
    if cold.kind == "failed" and getattr(cold.error, "category", "") == "configuration" and warm.kind != "failed":
        raise NondeterminismError(
            f"replay from scratch diverged from the live turn of {inp.instance!r}: {cold.error.display_message()}",  # type: ignore[union-attr]
            instance_id=inp.instance,
        )
    fields = ("kind", "delta", "worker_items", "orchestrator_items", "cancelled", "status", "output", "error")
    for name in fields:
        if getattr(cold, name) != getattr(warm, name):
            # Either the cache is wrong or the orchestration code is not deterministic (a full
            # replay of the same history behaves differently from the live code).
            raise NondeterminismError(
                f"a full replay of {inp.instance!r} differs from its live (cached) turn in {name}: "
                f"live {_short(getattr(warm, name))} vs replayed {_short(getattr(cold, name))}",
                instance_id=inp.instance,
            )


def _last_line(text: str) -> str:
    """The line that names the error (a traceback's last line); the status keeps the rest."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def _short_text(text: str, limit: int = 2_000) -> str:
    """An error text as a log line carries it: the first ``limit`` characters (the instance's
    status holds the whole text)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _exc_str(exc: BaseException) -> str:
    """``str(exc)``, or the placeholder Python's own traceback printer uses when that raises (an
    exception class with a broken ``__str__`` used to crash the worker step: the lease was never
    acked and the instance hung)."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return "<exception str() failed>"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:297] + "..."


@attrs.define
class ActivityOutcome:
    """Result of executing one activity: ack with ``completion`` or abandon after ``delay_ms``."""

    action: str  # "ack" | "abandon"
    completion: WorkItem | None = None
    delay_ms: int | None = None


class WorkerDispatcher:
    """fetch -> execute -> ack for activities, with sessions, tags, poison and cancellation."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self._sessions: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._session_cfgs: dict[int | None, SessionConfig] = {}  # by worker slot (None: not a worker thread)
        #: lock token -> how to cancel the async activity running under it (run_coroutine).
        self._aborts: dict[str, Callable[[], None]] = {}
        #: tokens of async activities cancelled because the runtime stopped: given back, not acked.
        self._stopped_tokens: set[str] = set()
        # Leases whose activity code is running (set operations are atomic: no lock), and those
        # a shutdown that ran out of time left behind: a sync activity cannot be interrupted,
        # and its late outcome is not committed - a stopped runtime writes nothing more.
        self._running: set[str] = set()
        self._halted_tokens: set[str] = set()
        #: tokens whose async activity was cancelled by us (shutdown, or a lost lock): the
        #: cancellation it raises is not the activity failing.
        self._aborted_tokens: set[str] = set()

    def _register_abort(self, token: str, abort: Callable[[], None]) -> None:
        with self._lock:
            self._aborts[token] = abort

    def _abort(self, token: str) -> bool:
        """Cancel the async activity running under ``token`` (True if there was one)."""
        with self._lock:
            abort = self._aborts.pop(token, None)
            if abort is not None:
                self._aborted_tokens.add(token)
        if abort is not None:
            abort()
        return abort is not None

    def _lock_lost(self, token: str, ctx: ActivityContext) -> None:
        """The renewer could not keep the lease (SPEC §11.2): the activity sees ``is_cancelled()``
        at once; an async one that is still running after the grace period is cancelled (its
        outcome is not committed: the lock is gone). A sync one cannot be interrupted."""
        ctx._cancel()
        grace_s = self.s.options.activity_cancellation_grace_period_ms / 1000.0
        timer = threading.Timer(grace_s, self._abort, (token,))
        timer.daemon = True
        timer.start()

    def abort_running(self) -> int:
        """Runtime shutdown ran out of time: cancel every async activity still running; their
        leases are given back (abandoned, attempt not counted) so another runtime runs them.
        Sync activities still running are marked: their outcome will not be committed.
        Returns how many were cancelled."""
        with self._lock:
            tokens = sorted(self._aborts)
            self._stopped_tokens.update(tokens)
            self._halted_tokens.update(t for t in list(self._running) if t not in self._aborts)
        return sum(self._abort(t) for t in tokens)

    def resume(self) -> None:
        """The runtime starts (again): outcomes of sync activities that outlived an earlier
        timed-out shutdown are committed after all (the runtime is running)."""
        with self._lock:
            self._halted_tokens.clear()

    @property
    def owner_id(self) -> str:
        """The worker identity of a caller that is not one of the runtime's worker threads (the
        simulation, a sequential driver): ``worker_node_id`` when set, else the runtime's id."""
        return self.s.options.worker_node_id or self.s.worker_id

    def slot_owner(self, slot: int | None) -> str:
        """The identity worker thread ``slot`` fetches, owns sessions and runs activities as.
        With ``worker_node_id`` set every slot shares it (any slot of the node serves the
        node's sessions, and they survive a restart under the same node id); without it each
        slot has its own, as in the reference: a session is served by one slot at a time, so
        its activities run one after another."""
        if slot is None or self.s.options.worker_node_id:
            return self.owner_id
        return f"{self.s.worker_id}-{slot}"

    def session_owners(self, slots: int) -> list[str]:
        """Every identity whose session locks the runtime renews (``slots`` worker threads)."""
        if self.s.options.worker_node_id or slots <= 0:
            return [self.owner_id]
        return [self.slot_owner(i) for i in range(slots)]

    def active_sessions(self) -> list[str]:
        with self._lock:
            return sorted(k for k, v in self._sessions.items() if v > 0)

    def fetch(self, slot: int | None = None) -> WorkItemLease | None:
        opts = self.s.options
        session = self._session_config(slot)
        return self._accept(self.s.provider.fetch_work_item(opts.worker_lock_timeout_ms, 0, session, opts.worker_tag_filter))

    def _session_config(self, slot: int | None = None) -> SessionConfig | None:
        opts = self.s.options
        # Entries are deleted when their count drops to 0, so len() is the number of active
        # sessions (read without the lock: one atomic read, as stale the moment it returns
        # as a locked one). Asked on every fetch, so the config record is built once per slot.
        if len(self._sessions) >= opts.max_sessions_per_runtime:
            return None
        cfg = self._session_cfgs.get(slot)
        owner = (opts.worker_node_id or self.s.worker_id) if slot is None else self.slot_owner(slot)
        if cfg is None or cfg.owner_id != owner or cfg.lock_timeout_ms != opts.session_lock_timeout_ms:
            cfg = self._session_cfgs[slot] = SessionConfig(owner_id=owner, lock_timeout_ms=opts.session_lock_timeout_ms)
        return cfg

    def _accept(self, lease: WorkItemLease | None) -> WorkItemLease | None:
        """Count a fetched lease and claim its session slot (abandon it when over the cap)."""
        opts = self.s.options
        if lease is None:
            return None
        self.s.metrics.inc("worker_dispatcher_items_fetched")
        sid = lease.item.session_id
        if sid is not None:
            with self._lock:
                over = self._sessions[sid] == 0 and len(self._sessions) >= opts.max_sessions_per_runtime
                if not over:
                    self._sessions[sid] += 1
            if over:
                self.s.provider.abandon_work_item(lease.lock_token, 100, True)
                return None
        return lease

    def step(self, carry: dict | None = None) -> bool:
        """fetch -> execute -> commit. With a ``carry`` (production driver) the ack may fetch
        the next lease in the same transaction (see :class:`OrchestrationDispatcher`)."""
        if carry is None:
            lease = slot = None
        else:
            lease = carry.pop("item", None)
            slot = carry.get("slot")  # (set by the thread driver)
        if lease is not None:
            lease = self._accept(lease)
            if lease is None:
                return True  # given back (session cap); look again
        else:
            try:
                lease = self.fetch(slot)
            except ProviderError:
                self.s.metrics.inc("provider_errors")
                raise
            if lease is None:
                return False
        outcome = self.execute(lease, self.make_context(lease, slot))
        self.commit(lease, outcome, carry)
        return True

    def release(self, carry: dict) -> None:
        """Give back a prefetched lease (the thread stops): unlock it, attempt not counted."""
        lease = carry.pop("item", None)
        if lease is not None:
            try:
                self.s.provider.abandon_work_item(lease.lock_token, None, True)
            except ProviderError:
                pass  # lock expiry re-exposes the item anyway

    def make_context(self, lease: WorkItemLease, slot: int | None = None) -> ActivityContext:
        item = lease.item
        return ActivityContext(
            instance_id=item.instance,
            execution_id=item.execution_id,
            orchestration_name=item.orchestration_name,
            orchestration_version=item.orchestration_version,
            activity_name=item.name,
            activity_id=item.id,
            worker_id=(self.s.options.worker_node_id or self.s.worker_id) if slot is None else self.slot_owner(slot),
            session_id=item.session_id,
            tag=item.tag,
            client_factory=self.s.client_factory,
            attempt=lease.attempt_count,
        )

    def execute(self, lease: WorkItemLease, ctx: ActivityContext | None = None) -> ActivityOutcome:
        s = self.s
        opts = s.options
        item = lease.item
        if lease.attempt_count > opts.max_attempts:
            s.metrics.inc("activity_poison")
            _log_poison(f"activity {item.name!r} (id {item.id})", item.instance, lease.attempt_count, opts.max_attempts)
            details = PoisonError(
                attempt_count=lease.attempt_count, max_attempts=opts.max_attempts, message_type="Activity",
                instance=item.instance, execution_id=item.execution_id, activity_name=item.name, activity_id=item.id,
            )
            return ActivityOutcome("ack", _failed(item, details))
        if item.name in _SYSCALLS:
            return ActivityOutcome("ack", self._syscall(item))
        handler = s.registry.activity(item.name)
        if handler is None:
            delay = opts.unregistered_backoff_ms(lease.attempt_count)
            emit(_log, logging.WARNING, "activity %r is not registered (instance %r); retrying in %d ms", item.name,
                 item.instance, delay, extra={"instance_id": item.instance})
            return ActivityOutcome("abandon", delay_ms=delay)
        ctx = ctx or self.make_context(lease)
        token = lease.lock_token
        self._running.add(token)  # (until commit())
        if type(s.renewer) is not NullRenewer:  # (a NullRenewer's methods do nothing)
            s.renewer.watch("worker", token, opts.worker_lock_timeout_ms, functools.partial(self._lock_lost, token, ctx))
        # Only an async activity can register an abort (run_coroutine's on_start), so only its
        # token can be in _aborts / _aborted_tokens afterwards: a sync one has nothing to clear.
        is_async = False
        try:
            arg = (
                codec.decode_typed(item.input, handler.input_type, f"input of activity {item.name!r}")
                if handler.typed
                else codec.decode(item.input)
            )
            result = handler.fn(ctx, arg) if handler.takes_input else handler.fn(ctx)
            if handler.style == "async" or hasattr(result, "__await__"):
                if s.run_coroutine is None:
                    raise RuntimeError("this runtime has no event loop for async activities")
                is_async = True
                result = s.run_coroutine(result, functools.partial(self._register_abort, token))
            text = codec.encode(result, f"result of activity {item.name!r}")
        except BaseException as exc:  # noqa: BLE001 - activity code may raise anything
            # sys.exit() in an activity fails the activity; it used to end the worker thread
            # (and, redelivered, every other one). So does asyncio.CancelledError from an async
            # activity (a BaseException: it escaped, the lease was never acked, and the activity
            # ran again after each lock expiry until poison). KeyboardInterrupt still stops the
            # process.
            # KeyboardInterrupt still stops a process whose main thread runs the activity (a
            # simulation: that is Ctrl-C); on a worker thread it is the activity's own raise and
            # fails it like any other (it used to escape the step: the lease was never acked).
            if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
                s.renewer.unwatch(token)
                raise
            with self._lock:
                aborted = token in self._aborted_tokens
                self._aborted_tokens.discard(token)
            if aborted:
                # Cancelled by us (the runtime stopped, or its lock was lost): not the activity
                # failing, so neither counted nor logged as one. Given back (a shutdown: attempt
                # not counted) or left to the lock's new owner.
                emit(_log, logging.INFO, "activity %r (instance %r, id %d) cancelled: %s", item.name, item.instance,
                     item.id, "the runtime is shutting down" if token in self._stopped_tokens else "its lock was lost",
                     extra={"instance_id": item.instance, "execution_id": item.execution_id})
                return ActivityOutcome("abandon", delay_ms=None)
            s.metrics.inc("activity_app_errors")
            message = codec.bounded_error_text(f"Activity '{item.name}' call failed: {type(exc).__name__}: {_exc_str(exc)}")
            emit(_log, logging.WARNING, "activity %r (instance %r, id %d) failed: %s", item.name,
                 item.instance, item.id, _short_text(message),
                 extra={"instance_id": item.instance, "execution_id": item.execution_id})
            return ActivityOutcome("ack", _failed(item, ApplicationError(kind="ActivityFailed", message=message)))
        finally:
            # (the lease stays watched - renewed - until commit() has acked it: a slow ack must
            # not let the lock expire and the activity run again elsewhere)
            if is_async:
                with self._lock:
                    self._aborts.pop(token, None)
                    self._aborted_tokens.discard(token)
        s.metrics.inc("activity_success")
        return ActivityOutcome("ack", ActivityCompletedMsg(instance=item.instance, execution_id=item.execution_id, id=item.id, result=text))

    def _syscall(self, item: ActivityExecute) -> WorkItem:
        if item.name == SYSCALL_UTC_NOW:
            text = str(self.s.clock.now_ms())
        elif item.name == SYSCALL_NEW_GUID:
            # An id source may tie the GUID to where it was asked for (the simulation's does).
            guid_for = getattr(self.s.ids, "guid_for", None)
            text = guid_for(item.instance, item.execution_id, item.id) if guid_for is not None else self.s.ids.new_guid()
        else:
            args = codec.decode(item.input)
            value = self.s.provider.get_kv_value(args["instance_id"], args["key"])
            text = codec.encode(value)
        return ActivityCompletedMsg(instance=item.instance, execution_id=item.execution_id, id=item.id, result=text)

    def commit(self, lease: WorkItemLease, outcome: ActivityOutcome, carry: dict | None = None) -> bool:
        """Ack or abandon. False when the lock was lost (the activity was cancelled or stolen)."""
        s = self.s
        provider = s.provider
        token = lease.lock_token
        # Both sets are empty but while a shutdown runs out of time (abort_running), so they are
        # looked at under the lock only when one holds anything. (Read without the lock, an
        # empty set is what the locked read would have found at that moment: this token gets
        # into _stopped_tokens only while its activity runs, before commit(), and one that gets
        # into _halted_tokens later is as late as if abort_running had taken the lock after us.)
        stopped = halted = False
        if self._stopped_tokens or self._halted_tokens:
            with self._lock:
                stopped = token in self._stopped_tokens
                if stopped:
                    self._stopped_tokens.discard(token)
                halted = token in self._halted_tokens
                if halted:
                    self._halted_tokens.discard(token)
        if stopped:  # cancelled by a runtime shutdown: not the activity's outcome
            outcome = ActivityOutcome("abandon", delay_ms=None)
        try:
            if halted:
                # A sync activity that outlived shutdown(timeout): the runtime has stopped, so
                # its outcome is not committed (nor the lease given back); the work item runs
                # again once its lock expires, on whichever runtime fetches it then.
                emit(_log, logging.WARNING, "activity %r (instance %r, id %d) finished after its runtime stopped; its "
                     "outcome is not committed (the work item is redelivered when its lock expires)",
                     lease.item.name, lease.item.instance, lease.item.id, extra={"instance_id": lease.item.instance})
                return False
            if outcome.action == "abandon":
                # (stopped by a shutdown: given back with its attempt not counted, as documented -
                # ten restarts during one long activity poisoned it)
                provider.abandon_work_item(lease.lock_token, outcome.delay_ms, stopped)
                return True
            chain = None if carry is None else _chain(provider, "ack_work_item_and_fetch", carry)
            if chain is None:
                provider.ack_work_item(lease.lock_token, outcome.completion)
                return True
            assert carry is not None
            opts = s.options
            nxt = chain(lease.lock_token, outcome.completion, lock_timeout_ms=opts.worker_lock_timeout_ms,
                        session=self._session_config(carry.get("slot")), tag_filter=opts.worker_tag_filter)
            if nxt is None:
                carry["empty"] = True
            else:
                carry["item"] = nxt
                carry["backlog"] = True
            return True
        except LockLostError:
            s.metrics.inc("activity_infra_errors")
            return False
        except ProviderError:
            # SPEC §10.2: a failed worker ack is given back (100 ms) and counted as an activity
            # infrastructure error, as a lost lock is (and as a provider error: the store failed).
            s.metrics.add(_WORKER_ACK_FAILED)
            try:
                provider.abandon_work_item(lease.lock_token, 100, False)
            except ProviderError:
                pass
            return False
        finally:
            self._running.discard(token)
            if type(s.renewer) is not NullRenewer:
                s.renewer.unwatch(token)  # (watched since execute(): renewed through the ack)
            sid = lease.item.session_id
            if sid is not None:
                with self._lock:
                    self._sessions[sid] -= 1
                    if self._sessions[sid] <= 0:
                        del self._sessions[sid]


def _log_poison(what: str, instance: str, attempts: int, max_attempts: int) -> None:
    """One warning per poisoning (the delivery that exceeds the budget), with the instance, as
    duroxide-python logs "... exceeded max attempts, marking as poison"."""
    emit(_log, logging.WARNING, "%s exceeded max attempts (%d of %d), marking as poison (instance %r)",
         what, attempts, max_attempts, instance, extra={"instance_id": instance})


def _failed(item: ActivityExecute, details: Any) -> ActivityFailedMsg:
    return ActivityFailedMsg(instance=item.instance, execution_id=item.execution_id, id=item.id, details=details)
