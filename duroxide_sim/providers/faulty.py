"""FaultyProvider: wraps any provider and injects storage faults when told to (SPEC §18).

The wrapper decides nothing itself: every fault opportunity is put to an injected
``decide(kind, operation) -> bool`` callback (the simulation answers from its seeded fault
source), so the same seed always injects the same faults. Faults injected here:

* ``transient``   - raise a retryable ``ProviderError`` *before* the operation runs;
* ``commit_lost`` - run a write, then raise a retryable ``ProviderError`` as if it failed;
* ``duplicate``   - after an activity ack commits, enqueue its completion a second time (every
  other one ``delay_ms`` later, so it meets the original in history, not in the same batch);
* ``delay``       - client messages (``enqueue_for_orchestrator``) become visible later.

Everything else is passed through unchanged, including management operations and test hooks.
:meth:`FaultyProvider.stop_injecting` turns the faultable operations into plain pass-throughs
too, once the caller knows no fault can fire any more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ProviderError

__all__ = ["FaultyProvider", "FAULTABLE_OPERATIONS"]

_WRITES = (
    "ack_orchestration_item",
    "abandon_orchestration_item",
    "ack_work_item",
    "abandon_work_item",
    "enqueue_for_orchestrator",
    "renew_work_item_lock",
    "renew_orchestration_item_lock",
)
_READS = ("fetch_orchestration_item", "fetch_work_item")
FAULTABLE_OPERATIONS = _READS + _WRITES


class FaultyProvider:
    """Pass-through provider that injects faults chosen by ``decide``."""

    def __init__(self, inner: Any, decide: Callable[[str, str], bool], *, delay_ms: int = 5_000,
                 on_fault: Callable[[str, str], None] | None = None) -> None:
        self._inner = inner
        self._decide = decide
        self._delay_ms = delay_ms
        self._on_fault = on_fault or (lambda kind, op: None)
        self._duplicates = 0
        for op in FAULTABLE_OPERATIONS:
            setattr(self, op, self._wrap(op))

    def stop_injecting(self) -> None:
        """The caller promises ``decide`` answers False from now on (e.g. a simulation's fault
        window has closed for good): the faultable operations become the inner provider's own
        methods, which is what the wrappers amount to when no fault fires."""
        for op in FAULTABLE_OPERATIONS:
            setattr(self, op, getattr(self._inner, op))

    @property
    def inner(self) -> Any:
        return self._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _fault(self, kind: str, op: str) -> bool:
        if self._decide(kind, op):
            self._on_fault(kind, op)
            return True
        return False

    def _wrap(self, op: str) -> Callable[..., Any]:
        """A specialised wrapper per operation (the checks that cannot apply are left out)."""
        target = getattr(self._inner, op)
        fault = self._fault

        def transient() -> ProviderError:
            return ProviderError(f"injected transient failure in {op}", operation=op, retryable=True, injected=True)

        def lost() -> ProviderError:
            return ProviderError(f"injected failure after {op} committed", operation=op, retryable=True, injected=True)

        if op in _READS:
            def call(*args: Any, **kwargs: Any) -> Any:
                if fault("transient", op):
                    raise transient()
                return target(*args, **kwargs)
        elif op == "enqueue_for_orchestrator":
            def call(*args: Any, **kwargs: Any) -> Any:
                if fault("transient", op):
                    raise transient()
                if fault("delay", op):
                    item = args[0] if args else kwargs.pop("item")
                    delay = (args[1] if len(args) > 1 else kwargs.get("delay_ms")) or 0
                    return target(item, delay + self._delay_ms)
                result = target(*args, **kwargs)
                if fault("commit_lost", op):
                    raise lost()
                return result
        elif op == "ack_work_item":
            def call(*args: Any, **kwargs: Any) -> Any:
                if fault("transient", op):
                    raise transient()
                result = target(*args, **kwargs)
                completion = args[1] if len(args) > 1 else kwargs.get("completion")
                if completion is not None and fault("duplicate", op):
                    # Every other duplicate comes later (after the original's turn, as a
                    # redelivery would): met by the history's completed ids, not only by the
                    # batch's own dedup (always in the same batch, that half went untested).
                    self._duplicates += 1
                    self._inner.enqueue_for_orchestrator(completion, self._delay_ms if self._duplicates % 2 == 0 else None)
                if fault("commit_lost", op):
                    raise lost()
                return result
        else:  # the other writes
            def call(*args: Any, **kwargs: Any) -> Any:
                if fault("transient", op):
                    raise transient()
                result = target(*args, **kwargs)
                if fault("commit_lost", op):
                    raise lost()
                return result

        call.__name__ = op
        return call
