"""What importing the package costs, and what it must still do.

``duroxide-sim`` commands and every ``--jobs`` worker process import ``duroxide_sim.cli``; it
used to import pytest (~80 ms of a ~0.36 s start-up) only to register the conformance suite for
assertion rewriting. The registration now happens only when pytest is already running - which
it always is when the suite is collected, because pytest imports its plugins (ours included)
before any test module.
"""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


def test_the_cli_and_the_simulator_do_not_import_pytest_or_hypothesis() -> None:
    for statement in ("import duroxide_sim.cli", "import duroxide_sim.sim", "import duroxide_sim.testing",
                      "import duroxide_sim"):
        loaded = _modules_after(statement)
        assert "pytest" not in loaded and "_pytest" not in loaded, statement
        assert "hypothesis" not in loaded, statement


def test_under_pytest_the_conformance_suite_is_assertion_rewritten() -> None:
    """A failing conformance check must show the values it compared: pytest rewrote the module
    (this test runs under pytest, so the plugin registered it before the module was imported)."""
    import duroxide_sim.testing.conformance as conformance

    assert type(conformance.__loader__).__name__ == "AssertionRewritingHook"


def test_a_sqlite_runtime_does_not_load_openssl() -> None:
    """``hashlib`` loads OpenSSL (~3.7 MiB resident): a production process on SQLite never needs
    it (only PostgreSQL's advisory keys and channel names, history export's file names, and the
    simulator hash). A module-level import in the providers' shared helpers raised W4's peak
    RSS from 27.8 to 31.6 MiB, over the peer's."""
    loaded = _modules_after("import duroxide_sim\nfrom duroxide_sim import Client, Runtime, RuntimeOptions\n"
                            "from duroxide_sim.providers.sqlite import SqliteProvider")
    assert "hashlib" not in loaded and "_hashlib" not in loaded
