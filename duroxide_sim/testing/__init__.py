"""Public testing helpers for duroxide_sim users.

``duroxide_sim.testing.conformance`` is the provider conformance suite (SPEC §16 A–I): a third
party provider runs it with one import and one fixture (see that module's docstring).

Importing this package registers the conformance module for pytest's assertion rewriting (when
pytest is installed), so a failing conformance check shows the values it compared. It does
nothing else: no threads, no I/O.
"""

from __future__ import annotations

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is a test-time dependency only
    pass
else:
    pytest.register_assert_rewrite("duroxide_sim.testing.conformance")

__all__: list[str] = []
