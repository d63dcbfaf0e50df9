"""ActivityContext: what an activity function receives (SPEC §17).

Activities are ordinary code (sync or ``async def``): they may do I/O, read the clock, call
services. The context tells them who they are working for, lets them log with instance
correlation, and reports cooperative cancellation (``is_cancelled()``), which becomes true
when the orchestration no longer wants the result (its worker row was deleted and the lock
renewal failed, SPEC §11.2).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..core.logsink import emit

__all__ = ["ActivityContext", "ACTIVITY_LOGGER"]

ACTIVITY_LOGGER = "duroxide_sim.activity"
_log = logging.getLogger(ACTIVITY_LOGGER)
_event_lock = threading.Lock()  # creates ActivityContext cancellation events on first use


class ActivityContext:
    """Identity, logging and cancellation for one activity execution."""

    def __init__(
        self,
        *,
        instance_id: str,
        execution_id: int,
        orchestration_name: str,
        orchestration_version: str,
        activity_name: str,
        activity_id: int,
        worker_id: str,
        session_id: str | None,
        tag: str | None,
        client_factory: Callable[[], Any],
        attempt: int = 1,
    ) -> None:
        self.instance_id = instance_id
        self.execution_id = execution_id
        self.orchestration_name = orchestration_name
        self.orchestration_version = orchestration_version
        self.activity_name = activity_name
        self.activity_id = activity_id
        self.worker_id = worker_id
        self.session_id = session_id
        self.attempt = attempt
        self._tag = tag
        self._client_factory = client_factory
        # Created on first use: most activities never look at cancellation.
        self._cancelled: threading.Event | None = None
        self._cancel_flag = False

    def tag(self) -> str | None:
        return self._tag

    def is_cancelled(self) -> bool:
        """True once the orchestration has given up on this activity; stop work early."""
        return self._cancel_flag

    def _event(self) -> threading.Event:
        with _event_lock:
            if self._cancelled is None:
                self._cancelled = threading.Event()
                if self._cancel_flag:
                    self._cancelled.set()
            return self._cancelled

    def _cancel(self) -> None:
        self._cancel_flag = True
        self._event().set()  # rare: creating the event here costs nothing on the common path

    def wait_cancelled(self, timeout_s: float | None = None) -> bool:
        """Block until cancelled (or timeout); returns whether it was cancelled."""
        return self._event().wait(timeout_s)

    def get_client(self) -> Any:
        """A :class:`~duroxide_sim.runtime.client.Client` on the same provider."""
        return self._client_factory()

    def _emit(self, level: int, message: str) -> None:
        emit(
            _log,
            level,
            "%s",
            message,
            extra={
                "instance_id": self.instance_id,
                "execution_id": self.execution_id,
                "orchestration_name": self.orchestration_name,
                "orchestration_version": self.orchestration_version,
                "activity_name": self.activity_name,
                "activity_id": self.activity_id,
                "worker_id": self.worker_id,
            },
        )

    def trace_info(self, message: str) -> None:
        self._emit(logging.INFO, str(message))

    def trace_warn(self, message: str) -> None:
        self._emit(logging.WARNING, str(message))

    def trace_error(self, message: str) -> None:
        self._emit(logging.ERROR, str(message))

    def trace_debug(self, message: str) -> None:
        self._emit(logging.DEBUG, str(message))
