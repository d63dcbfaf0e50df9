"""Exception hierarchy for duroxide_sim.

One root, :class:`DuroxideError`; every leaf also subclasses the builtin a caller would
naturally catch (``ValueError`` for bad arguments, ``TypeError`` for unserializable payloads,
``RuntimeError`` for operational failures, ``TimeoutError`` for waits), so code written
against duroxide-python's plain ``RuntimeError``/``Exception`` keeps working.

Errors carry structured fields (``operation``, ``retryable``, ``instance_id``, ``event_id``)
so tooling can act on them without parsing messages. This module imports nothing from the
package; everything else may import it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DuroxideError",
    "ConfigurationError",
    "InvalidInputError",
    "InvalidInputTypeError",
    "SerializationError",
    "PayloadTooLargeError",
    "NondeterminismError",
    "TaskFailedError",
    "OrchestrationFailedError",
    "ProviderError",
    "LockLostError",
    "ManagementNotAvailable",
    "InstanceNotFound",
    "InstanceStillRunning",
    "CannotDeleteSubOrchestration",
    "OperationTimeout",
]


class DuroxideError(Exception):
    """Root of every error raised by duroxide_sim."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in fields.items():
            setattr(self, key, value)


class ConfigurationError(DuroxideError, ValueError):
    """The runtime was set up wrongly: bad registration, bad options, reserved names."""


class InvalidInputError(DuroxideError, ValueError):
    """An argument is of the wrong type or shape (ids, names, delays, filters)."""


class InvalidInputTypeError(InvalidInputError, TypeError):
    """An argument of the wrong type (an int where an instance id goes): also a TypeError, which
    is what duroxide-python raises there, so code written for it catches this too."""


class SerializationError(DuroxideError, TypeError):
    """A payload could not be encoded to, or decoded from, JSON."""


class PayloadTooLargeError(InvalidInputError):
    """A payload exceeds the documented size limit (``MAX_PAYLOAD_BYTES``)."""


class NondeterminismError(DuroxideError, RuntimeError):
    """Orchestration code diverged from its recorded history.

    Fields: ``instance_id``, ``execution_id``, ``event_id``, ``expected``, ``actual``,
    ``source`` (``file:line`` of the orchestration's yield/await, when known).
    """


class TaskFailedError(DuroxideError):
    """Raised *inside orchestration code* when an awaited activity or sub-orchestration fails.

    ``str(err)`` is the error text exactly as duroxide-python shows it (an activity that raised
    ``ValueError("x")`` gives ``Activity 'Name' call failed: ValueError: x``).
    """


class OrchestrationFailedError(DuroxideError, RuntimeError):
    """Raised by ``Client.wait_for_orchestration_typed`` when the instance failed."""


class ProviderError(DuroxideError, RuntimeError):
    """A storage operation failed. ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, operation: str = "", retryable: bool = False, **fields: Any):
        super().__init__(message, operation=operation, retryable=retryable, **fields)


class LockLostError(ProviderError):
    """A lock token is unknown, expired or was stolen; the work it guarded must not commit."""


class ManagementNotAvailable(DuroxideError, NotImplementedError):
    """The provider does not implement the management (admin) capability."""


class InstanceNotFound(DuroxideError, LookupError, RuntimeError):
    """No instance with that id exists. Also a ``RuntimeError``, as duroxide-python raises it."""


class InstanceStillRunning(DuroxideError, RuntimeError):
    """The instance is running; pass ``force=True`` to delete it anyway."""


class CannotDeleteSubOrchestration(DuroxideError, ValueError, RuntimeError):
    """Sub-orchestrations are deleted with their root, never on their own. Also a
    ``RuntimeError``, as duroxide-python raises it."""


class OperationTimeout(DuroxideError, RuntimeError, TimeoutError):
    """A client wait ran out of time. Both ``RuntimeError`` (duroxide-python) and ``TimeoutError``."""
