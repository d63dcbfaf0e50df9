"""duroxide_sim: durable workflows with Duroxide semantics, in pure Python, plus a deterministic
simulation and testing harness.

The public API mirrors duroxide-python (``Runtime``, ``Client``, ``RuntimeOptions``,
``OrchestrationContext``, ``ActivityContext``, ``TagFilter``...) so workflow modules move over
by changing the import. Importing this package only defines names: no threads, no logging
configuration, no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    CannotDeleteSubOrchestration,
    ConfigurationError,
    DuroxideError,
    InstanceNotFound,
    InstanceStillRunning,
    InvalidInputError,
    InvalidInputTypeError,
    LockLostError,
    ManagementNotAvailable,
    NondeterminismError,
    OperationTimeout,
    OrchestrationFailedError,
    PayloadTooLargeError,
    ProviderError,
    SerializationError,
    TaskFailedError,
)

if TYPE_CHECKING:  # the names below are imported on first use (see __getattr__)
    from .core.codec import MAX_PAYLOAD_BYTES
    from .core.context import (
        MAX_TIMER_DELAY_MS,
        Backoff,
        Either2,
        Either3,
        OrchestrationContext,
        RetryPolicy,
        ScheduledTask,
    )
    from .core.registry import Registry
    from .providers.base import (
        DeleteInstanceResult,
        ExecutionInfo,
        InstanceFilter,
        InstanceInfo,
        InstanceTree,
        PruneOptions,
        PruneResult,
        QueueDepths,
        SystemMetrics,
        TagFilter,
    )
    from .providers.memory import InMemoryProvider
    from .providers.postgres import PostgresProvider
    from .providers.sqlite import SqliteProvider
    from .runtime.activity import ActivityContext
    from .runtime.client import Client, OrchestrationResult
    from .runtime.options import RuntimeOptions
    from .runtime.runtime import Runtime
    from .runtime.tracing import init_tracing

# Public name -> defining module. Imported lazily (PEP 562) so that ``import duroxide_sim``
# stays cheap and a program loads only what it uses (e.g. not the in-memory provider or the
# typed codec's cattrs when it never touches them).
_LAZY = {
    "MAX_PAYLOAD_BYTES": ".core.codec",
    "Backoff": ".core.context", "Either2": ".core.context", "Either3": ".core.context",
    "OrchestrationContext": ".core.context", "RetryPolicy": ".core.context", "MAX_TIMER_DELAY_MS": ".core.context",
    "ScheduledTask": ".core.context",
    "Registry": ".core.registry",
    "DeleteInstanceResult": ".providers.base", "ExecutionInfo": ".providers.base", "InstanceFilter": ".providers.base",
    "InstanceInfo": ".providers.base", "InstanceTree": ".providers.base", "PruneOptions": ".providers.base",
    "PruneResult": ".providers.base", "QueueDepths": ".providers.base", "SystemMetrics": ".providers.base",
    "TagFilter": ".providers.base",
    "InMemoryProvider": ".providers.memory",
    "SqliteProvider": ".providers.sqlite",
    "PostgresProvider": ".providers.postgres",  # (psycopg is imported only when this name is used)
    "ActivityContext": ".runtime.activity",
    "Client": ".runtime.client", "OrchestrationResult": ".runtime.client",
    "RuntimeOptions": ".runtime.options",
    "Runtime": ".runtime.runtime",
    "init_tracing": ".runtime.tracing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"


def parse_result(result):  # noqa: ANN001, ANN201 - mirrors duroxide-python's helper
    """Unwrap ``all``/``race`` results: a list of ``{"ok": v}`` -> ``[v, ...]``; ``{"ok": v}`` -> v;
    ``{"err": e}`` raises ``TaskFailedError(e)``."""
    if isinstance(result, list):
        return [item.get("ok") if isinstance(item, dict) and "ok" in item else item for item in result]
    if isinstance(result, dict):
        if "ok" in result:
            return result["ok"]
        if "err" in result:
            raise TaskFailedError(str(result["err"]))
    return result


__all__ = [
    "ActivityContext",
    "Backoff",
    "CannotDeleteSubOrchestration",
    "Client",
    "ConfigurationError",
    "DeleteInstanceResult",
    "DuroxideError",
    "Either2",
    "Either3",
    "ExecutionInfo",
    "InMemoryProvider",
    "InstanceFilter",
    "InstanceInfo",
    "InstanceNotFound",
    "InstanceStillRunning",
    "InstanceTree",
    "InvalidInputError",
    "InvalidInputTypeError",
    "LockLostError",
    "MAX_PAYLOAD_BYTES",
    "MAX_TIMER_DELAY_MS",
    "ManagementNotAvailable",
    "NondeterminismError",
    "OperationTimeout",
    "OrchestrationContext",
    "OrchestrationFailedError",
    "OrchestrationResult",
    "PayloadTooLargeError",
    "PostgresProvider",
    "ProviderError",
    "PruneOptions",
    "PruneResult",
    "QueueDepths",
    "Registry",
    "RetryPolicy",
    "Runtime",
    "RuntimeOptions",
    "ScheduledTask",
    "SerializationError",
    "SqliteProvider",
    "SystemMetrics",
    "TagFilter",
    "TaskFailedError",
    "init_tracing",
    "parse_result",
]
