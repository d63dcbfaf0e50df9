"""Public testing helpers for duroxide_sim users.

``simulation_test`` and ``check_type_round_trips`` (from ``.strategies``: Hypothesis-driven
simulations and typed round trips) and ``assert_replays`` (from ``.replay``: the CI replay
check) are importable from here. ``duroxide_sim.testing.conformance`` is the provider conformance suite (SPEC §16 A–I): a third
party provider runs it with one import and one fixture (see that module's docstring).

Importing this package under a running pytest registers the conformance module for pytest's
assertion rewriting, so a failing conformance check shows the values it compared. It does
nothing else: no threads, no I/O.
"""

from __future__ import annotations

import sys as _sys

# Only when pytest is already running (it imports its plugins, ours included, before any test
# module): importing pytest here would cost every ``duroxide-sim`` command and every ``--jobs``
# worker ~80 ms of start-up for nothing, and outside pytest there is no assertion rewriting.
_pytest = _sys.modules.get("pytest")
if _pytest is not None and hasattr(_pytest, "register_assert_rewrite"):
    _pytest.register_assert_rewrite("duroxide_sim.testing.conformance")

__all__ = ["simulation_test", "check_type_round_trips", "assert_replays"]

#: Defaults the pytest plugin sets from its command-line options for the whole session
#: (``--sim-sandbox``: ``{"sandbox": True}``), read by ``@simulation_test``; an argument given to
#: the decorator wins.
SESSION_DEFAULTS: dict[str, object] = {}

# Imported on first use (PEP 562): the strategies need Hypothesis, a test-time dependency.
_LAZY = {"simulation_test": ".strategies", "check_type_round_trips": ".strategies", "assert_replays": ".replay"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
