"""Runtime: registers handlers and runs the dispatchers against a provider (SPEC §14, §17).

``Runtime(provider, options)`` mirrors duroxide-python: ``register_activity`` /
``register_orchestration`` (plain, ``_typed``, ``_versioned``), usable as decorators,
``start()``, ``shutdown(timeout_ms)``, ``metrics_snapshot()``.

The clock, id source and driver are injectable; by default they come from ``realtime.py``
(wall clock, uuid4, threads). ``start()`` returns once the dispatcher threads run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..core.registry import Registry, parse_semver
from ..core.texts import plain_text, text_problem
from ..errors import ConfigurationError
from ..providers.base import Clock
from .client import Client, check_provider
from .dispatchers import IdSource, OrchestrationDispatcher, Services, WorkerDispatcher
from .options import LOG_LEVELS, RuntimeOptions, renewal_period_ms
from .records import MetricsSnapshot

__all__ = ["Runtime"]

#: What a runtime calls on its provider (the rest of the Provider protocol is optional or
#: management): checked at construction.
_PROVIDER_METHODS = ("fetch_orchestration_item", "ack_orchestration_item", "abandon_orchestration_item",
                     "fetch_work_item", "ack_work_item", "abandon_work_item")


class Runtime:
    """A durable runtime over one provider."""

    def __init__(
        self,
        provider: Any,
        options: RuntimeOptions | None = None,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        registry: Registry | None = None,
        verify_cache: bool = False,
        runtime_id: str | None = None,
        sleep: Callable[[int], None] | None = None,
        run_coroutine: Callable[..., Any] | None = None,
    ) -> None:
        from . import realtime

        if options is not None and not isinstance(options, RuntimeOptions):
            raise ConfigurationError(f"options must be RuntimeOptions, got {type(options).__name__}")
        # (a path given for a provider started, then every dispatcher step crashed)
        check_provider(provider, _PROVIDER_METHODS)
        self.provider = provider
        self.options = options or RuntimeOptions()
        if self.options.log_level is not None:
            # As duroxide-python's log_level (a process-wide filter): the level of the
            # ``duroxide_sim`` loggers - the runtime's records and the orchestrations' and
            # activities' trace lines. A simulation's trace does not go through logging and is
            # not filtered (the same seed gives the same trace whatever the process configured).
            logging.getLogger("duroxide_sim").setLevel(LOG_LEVELS[self.options.log_level.strip().lower()])
        self.clock = clock or realtime.SystemClock()
        # A virtual clock (SimClock, ConformanceClock: it has ``advance``) moves only when told;
        # any other clock - the default, SystemClock passed explicitly, a user's wrapper of the
        # wall clock - is real time, whatever the driver.
        virtual = realtime.is_virtual_clock(clock)
        if hasattr(provider, "bind_clock"):
            provider.bind_clock(self.clock)
        self.registry = registry or Registry()
        # Names this process as a worker (session owner). The simulation passes its own, so a
        # seeded run draws nothing from uuid4.
        if runtime_id is not None:
            # (it is the workers' identity when worker_node_id is unset, bound into every fetch:
            # NUL or a lone surrogate broke each PostgreSQL / SQLite worker fetch, an int
            # PostgreSQL's query)
            problem = text_problem(runtime_id) if isinstance(runtime_id, str) else "must be a non-empty string"
            if problem is not None:
                raise ConfigurationError(f"runtime_id {problem}, got {runtime_id!r}"[:300])
            runtime_id = plain_text(runtime_id)
        self.runtime_id = runtime_id if runtime_id is not None else realtime.new_runtime_id()
        self._services = Services(
            provider=provider,
            registry=self.registry,
            options=self.options,
            clock=self.clock,
            ids=ids or realtime.UuidIds(),
            # How async activities run: a fresh real event loop each (the simulation passes one
            # on virtual time, sim/vloop.py).
            run_coroutine=run_coroutine or realtime.run_coroutine,
            client_factory=self._shared_client,
            worker_id=self.runtime_id,
            verify_cache=verify_cache,
            # Back-off between ack retries: real sleep in real time; a virtual clock moves
            # forward instead, so simulated time passes as real time would.
            sleep=sleep if sleep is not None else (clock.advance if virtual else realtime.sleep_ms),
        )
        self.orchestration_dispatcher = OrchestrationDispatcher(self._services)
        self.worker_dispatcher = WorkerDispatcher(self._services)
        self._driver: Any = None
        self._renewer: Any = None
        self._last_cleanup = 0
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        # How the activities' client waits (wait_for_orchestration & co.): in real time, for
        # commits; on a virtual clock (a simulation, a sequential driver) time cannot pass
        # while an activity runs - one step at a time - so a wait that is not already
        # satisfied ends at once (an activity blocked there hung the whole run).
        self._client_sleep: Callable[[float], None] | None = _no_wait_in_a_step if virtual else None
        self._wake_listener: Callable[[str], None] | None = None
        self._stop_lock = threading.Lock()
        self._stop_done: threading.Event | None = None  # set when the running shutdown() finishes
        self._stopping: Any = None  # the driver a running shutdown() is stopping

    def _shared_client(self) -> Client:
        """The Client that ``ctx.get_client()`` hands to activities: one per runtime (a Client
        is safe to share between threads), not a new one per call."""
        with self._client_lock:
            if self._client is None:
                self._client = Client(self.provider, clock=self.clock, sleep=self._client_sleep)
            return self._client

    # --- registration (decorator-friendly, duroxide-python names) ---------------------------

    def _decorate(self, register: Callable[[Callable[..., Any]], Any], fn: Callable[..., Any] | None) -> Any:
        if fn is not None:
            register(fn)
            return fn

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            register(func)
            return func

        return decorator

    def register_activity(self, name: str, fn: Callable[..., Any] | None = None) -> Any:
        """``fn(ctx, input)`` (sync or async). Input is JSON-decoded; the return is JSON-encoded."""
        return self._decorate(lambda f: self.registry.add_activity(name, f), fn)

    def register_activity_typed(self, name: str, fn: Callable[..., Any] | None = None) -> Any:
        """Like ``register_activity``; the input is structured into the annotated type."""
        return self._decorate(lambda f: self.registry.add_activity(name, f, typed=True), fn)

    def register_orchestration(self, name: str, fn: Callable[..., Any] | None = None) -> Any:
        """Register version 1.0.0 of an orchestration (generator, ``async def`` or plain)."""
        return self._decorate(lambda f: self.registry.add_orchestration(name, f), fn)

    def register_orchestration_typed(self, name: str, fn: Callable[..., Any] | None = None) -> Any:
        return self._decorate(lambda f: self.registry.add_orchestration(name, f, typed=True), fn)

    def register_orchestration_versioned(self, name: str, version: str, fn: Callable[..., Any] | None = None) -> Any:
        parse_semver(version)  # (None is not "the default version" here: a missing value is refused)
        return self._decorate(lambda f: self.registry.add_orchestration(name, f, version=version), fn)

    def register_orchestration_versioned_typed(self, name: str, version: str, fn: Callable[..., Any] | None = None) -> Any:
        parse_semver(version)
        return self._decorate(lambda f: self.registry.add_orchestration(name, f, version=version, typed=True), fn)

    def set_orchestration_version_policy(self, name: str, exact_version: str | None) -> None:
        """``None`` = start the latest registered version (default); else always that version."""
        self.registry.set_version_policy(name, exact_version)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Runtime":
        from . import realtime

        if self._driver is not None:
            raise ConfigurationError("runtime already started")
        opts = self.options
        self.worker_dispatcher.resume()
        self._renewer = realtime.ThreadRenewer(
            self.provider, self.clock,
            orch_buffer_ms=opts.orchestrator_lock_renewal_buffer_ms,
            worker_buffer_ms=opts.worker_lock_renewal_buffer_ms,
        )
        self._services.renewer = self._renewer
        self._renewer.start()
        self._driver = realtime.ThreadDriver(
            orchestration_step=self.orchestration_dispatcher.step,
            worker_step=self.worker_dispatcher.step,
            orchestration_release=self.orchestration_dispatcher.release,
            worker_release=self.worker_dispatcher.release,
            orchestration_threads=opts.orchestration_concurrency,
            worker_threads=0 if opts.worker_tag_filter.mode == "none" else opts.worker_concurrency,
            poll_interval_ms=opts.dispatcher_poll_interval_ms,
            maintenance=self._maintenance,
            maintenance_interval_ms=min(
                renewal_period_ms(opts.session_lock_timeout_ms, opts.session_lock_renewal_buffer_ms), 1_000
            ),
        )
        if hasattr(self.provider, "add_wakeup_listener"):
            self._wake_listener = self._driver.wake  # the same object is removed at shutdown
            self.provider.add_wakeup_listener(self._wake_listener)
        self._driver.start()
        return self

    def _maintenance(self) -> None:
        """Renew session locks of sessions with in-flight work; clean up orphaned sessions."""
        opts = self.options
        workers = 0 if opts.worker_tag_filter.mode == "none" or self._driver is None else opts.worker_concurrency
        owners = self.worker_dispatcher.session_owners(workers)
        self.provider.renew_session_lock(owners, opts.session_lock_timeout_ms, opts.session_idle_timeout_ms)
        now = self.clock.now_ms()
        if now - self._last_cleanup >= opts.session_cleanup_interval_ms:
            self._last_cleanup = now
            self.provider.cleanup_orphaned_sessions(opts.session_idle_timeout_ms)

    def shutdown(self, timeout_ms: int | None = None) -> None:
        """Stop dispatching; wait up to ``timeout_ms`` (default 1000) for in-flight steps. Async
        activities still running then are cancelled and their work items given back for another
        runtime (attempt not counted); sync activities cannot be interrupted: they run to their
        end, but what they return is not committed (a stopped runtime writes nothing more; the
        work item runs again when its lock expires). A ``timeout_ms`` that is not a
        non-negative integer (or None) is refused before anything stops."""
        if timeout_ms is not None and (type(timeout_ms) is not int or timeout_ms < 0):
            # (duroxide-python converts it first too: "0" is a TypeError, -1 an OverflowError)
            if type(timeout_ms) is int:
                raise ValueError(f"shutdown: timeout_ms must be >= 0 (ms), got {timeout_ms}")
            raise TypeError(f"shutdown: timeout_ms must be an int of ms or None, got {type(timeout_ms).__name__} "
                            f"{timeout_ms!r}"[:200])
        with self._stop_lock:
            driver, self._driver = self._driver, None
            if driver is None:
                # Not running - or another thread's shutdown() is stopping it: wait for that one
                # as long as this call's own timeout allows (returning at once told the second
                # caller that work was over while activities still ran). A shorter timeout cuts
                # the stop in progress short (shutdown(0) ends a 10 s grace period at once).
                pending, stopping = self._stop_done, self._stopping
            else:
                pending = None
                done = self._stop_done = threading.Event()
                self._stopping = driver
        if driver is None:
            if pending is not None:
                wait_s = (1_000 if timeout_ms is None else timeout_ms) / 1000
                if stopping is not None:
                    stopping.shorten(wait_s)
                pending.wait(wait_s + 1.0)
            return
        remove = getattr(self.provider, "remove_wakeup_listener", None)
        if remove is not None and self._wake_listener is not None:
            remove(self._wake_listener)  # a stopped runtime is not kept alive by the provider
            self._wake_listener = None
        try:
            if not driver.stop(timeout_ms) and self.worker_dispatcher.abort_running():
                # Async activities still running past the timeout were cancelled; their threads
                # give the leases back (a sync activity cannot be interrupted: it finishes, and
                # its outcome is dropped - WorkerDispatcher.abort_running).
                driver.stop(1_000)
        finally:
            self._renewer.stop()
            self._stopping = None
            done.set()

    def metrics_snapshot(self) -> MetricsSnapshot:
        """The runtime's counters (SPEC §14) as attributes (``m.orch_completions``, as in
        duroxide-python) and as a read-only mapping (``m["orch_completions"]``)."""
        return MetricsSnapshot(**self._services.metrics.snapshot())

    def __enter__(self) -> "Runtime":
        return self.start() if self._driver is None else self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def _no_wait_in_a_step(ms: float) -> None:
    from ..errors import OperationTimeout

    raise OperationTimeout(
        "Operation timed out: on a simulated clock no time passes while an activity runs (one step at a time), so "
        "a client wait inside an activity that is not already satisfied cannot be, and ends at once; in production "
        "it would wait. Wait in the orchestration instead (a sub-orchestration, an event, a timer)")
