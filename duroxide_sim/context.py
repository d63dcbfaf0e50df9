"""The contexts under the module path duroxide-python users import them from:
``from duroxide.context import OrchestrationContext`` becomes
``from duroxide_sim.context import OrchestrationContext`` (same objects as the package's;
``ScheduledTask`` is the base class of every task a scheduling call returns)."""

from __future__ import annotations

from .core.context import OrchestrationContext, ScheduledTask
from .runtime.activity import ActivityContext

__all__ = ["OrchestrationContext", "ActivityContext", "ScheduledTask"]
