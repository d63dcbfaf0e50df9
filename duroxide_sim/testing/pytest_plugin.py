"""pytest plugin: simulation fixtures, ``--sim-*`` options, and one-line repro on failure.

Registered through the ``pytest11`` entry point under its own dotted path, so it loads once
whether it comes from the installed package or from a conftest's ``pytest_plugins``.

Options:

``--sim-seed N``      run simulation tests with exactly this seed (reproduce a failure)
``--sim-runs N``      seeds per simulation test (default 20)
``--sim-faults F``    ``all`` (default), ``swarm``, ``none`` or a fault plan as JSON
``--sim-sandbox``     flag clock/random/I-O calls in orchestration code

Fixtures:

``simulate``          ``simulate(spec)`` runs the spec over the selected seeds and fails with the
                      first broken property, its report and a repro line
``sim_world``         a Runtime + Client on the in-memory provider, driven deterministically on a
                      simulated clock (no threads): ``sim_world.client.wait_for_orchestration``
                      runs the world
``memory_runtime``    a started production Runtime (threads) on the in-memory provider
``sqlite_runtime``    a started production Runtime on a temporary SQLite file

Marker: ``@pytest.mark.simulation`` (for selection; ``simulate`` works without it).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from .argtypes import positive_int

__all__ = ["SimulationFailed", "SimWorld", "RuntimeHandle"]


class SimulationFailed(AssertionError):
    """A simulated property broke; ``repro`` is the pytest command that reproduces it."""

    def __init__(self, message: str, repro: str, seed: int) -> None:
        super().__init__(message)
        self.repro = repro
        self.seed = seed


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("duroxide-sim", "duroxide_sim simulation")
    group.addoption("--sim-seed", type=int, default=None, help="run simulation tests with exactly this seed")
    group.addoption("--sim-runs", type=positive_int, default=20, help="seeds per simulation test (default 20)")
    group.addoption("--sim-faults", default="all", help="all (default) | swarm | none | fault plan JSON")
    group.addoption("--sim-sandbox", action="store_true", help="flag clock/random/I-O calls in orchestration code")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "simulation: a test that runs duroxide_sim simulations")
    from . import SESSION_DEFAULTS

    # --sim-sandbox reaches @simulation_test too (its seeds and plans come from Hypothesis, so
    # --sim-seed and --sim-faults do not apply to it)
    SESSION_DEFAULTS.clear()
    if config.getoption("--sim-sandbox", default=False):
        SESSION_DEFAULTS["sandbox"] = True
    faults = config.getoption("--sim-faults", default=None)
    if faults is not None:
        try:
            _plan(faults)  # a bad value is a usage error before any test runs, like --sim-runs
        except ValueError as exc:
            raise pytest.UsageError(f"--sim-faults: {exc}") from None


def _plan(value: Any) -> Any:
    """``all`` | ``swarm`` | ``none`` | a fault plan as JSON | a FaultPlan | None -> what
    Simulation takes; anything else is a ValueError naming the accepted forms."""
    from ..sim.faults import FaultPlan

    if value is None or isinstance(value, FaultPlan):
        return value
    if not isinstance(value, str):
        raise ValueError(f"faults must be 'all', 'swarm', 'none', a fault plan as JSON or a FaultPlan, got {value!r}")
    if value == "all":
        return FaultPlan.all(0.05)
    if value == "none":
        return None
    if value == "swarm":
        return "swarm"
    if not value.lstrip().startswith("{"):
        raise ValueError(f"expected 'all', 'swarm', 'none' or a fault plan as a JSON object, got {value!r}")
    return FaultPlan.from_json(value)


@pytest.fixture
def simulate(request: pytest.FixtureRequest) -> Any:
    """``simulate(spec, seeds=None, faults=None, **kw) -> list[SimResult]``; ``faults`` takes what
    ``--sim-faults`` takes (``"all"``, ``"swarm"``, ``"none"``, JSON) or a FaultPlan."""
    from ..sim.checkers import run_and_check
    from ..sim.harness import Simulation

    config = request.config
    chosen = config.getoption("--sim-seed")
    runs = config.getoption("--sim-runs")
    faults_opt = config.getoption("--sim-faults")
    sandbox = config.getoption("--sim-sandbox")

    def run(spec: Any, seeds: Any = None, faults: Any = None, **kw: Any) -> list[Any]:
        if seeds is not None and (isinstance(seeds, (int, str, bytes)) or not hasattr(seeds, "__iter__")):
            raise TypeError(f"simulate(): seeds must be an iterable of seed numbers, e.g. range({seeds!r}) or [7], "
                            f"got {seeds!r} (how many seeds to run by default: --sim-runs)"[:300])
        seed_list = [chosen] if chosen is not None else list(seeds if seeds is not None else range(runs))
        if not seed_list:
            raise ValueError("simulate() got no seeds to run: a property checked on no seed would pass vacuously")
        plan = _plan(faults_opt) if faults is None else _plan(faults)
        # Taken once: every seed runs with the caller's sandbox choice (popping it inside the loop
        # gave only the first seed the caller's value).
        use_sandbox = kw.pop("sandbox", sandbox)
        results = []
        for seed in seed_list:
            result = run_and_check(Simulation(spec, seed, plan, sandbox=use_sandbox, **kw))
            results.append(result)
            if result.failures:
                repro = _repro_line(request, seed, result.plan, faults is not None)
                report = "\n\n".join(f.render() for f in result.failures)
                raise SimulationFailed(f"{report}\n\nreproduce with pytest: {repro}", repro, seed)
        return results

    return run


def _cwd_relative(config: pytest.Config, nodeid: str) -> str:
    """The node id as pytest prints it: its path relative to the directory pytest was started
    in (node ids are relative to the rootdir). Computed here: pytest's own helper for this
    changed its argument type between versions."""
    import os

    path, sep, rest = nodeid.partition("::")
    start = config.invocation_params.dir
    if not path or start == config.rootpath:
        return nodeid
    rel = os.path.relpath(config.rootpath / path, start)
    return rel + sep + rest


def _repro_line(request: pytest.FixtureRequest, seed: int, plan: Any, explicit_plan: bool) -> str:
    parts = ["pytest", _cwd_relative(request.config, request.node.nodeid), "--sim-seed", str(seed)]
    if not explicit_plan:
        faults = request.config.getoption("--sim-faults")
        if faults not in ("all", "none"):
            faults = plan.to_json()
        parts += ["--sim-faults", faults]
    if request.config.getoption("--sim-sandbox"):
        parts.append("--sim-sandbox")
    return " ".join(shlex.quote(p) for p in parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if call.excinfo is not None and isinstance(call.excinfo.value, SimulationFailed):
        report.sections.append(("duroxide-sim repro", call.excinfo.value.repro))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = []
    # (a simulation that fails inside a fixture is a setup error, filed under "error")
    for rep in [*terminalreporter.stats.get("failed", []), *terminalreporter.stats.get("error", [])]:
        for title, content in getattr(rep, "sections", []):
            if title == "duroxide-sim repro":
                lines.append(content)
    if lines:
        terminalreporter.section("duroxide-sim: reproduce failing simulations")
        for line in lines:
            terminalreporter.write_line(line)


@attrs.define
class SimWorld:
    provider: Any
    runtime: Any
    client: Any
    clock: Any
    driver: Any

    def run(self) -> None:
        self.driver.run_until_quiet()

    def run_for(self, ms: int) -> None:
        self.driver.run_until_quiet(ms)


@pytest.fixture
def sim_world() -> Iterator[SimWorld]:
    from ..providers.memory import InMemoryProvider
    from ..runtime.client import Client
    from ..runtime.runtime import Runtime
    from ..sim import SequentialDriver, SequentialIds, SimClock

    clock = SimClock()
    provider = InMemoryProvider(clock)
    runtime = Runtime(provider, clock=clock, ids=SequentialIds())
    driver = SequentialDriver(runtime, clock)
    yield SimWorld(provider, runtime, Client(provider, clock=clock, sleep=driver.sleep), clock, driver)
    provider._check()


@attrs.define
class RuntimeHandle:
    """A production runtime: register handlers, then ``start()``; stopped at teardown."""

    provider: Any
    runtime: Any
    client: Any

    def start(self) -> "RuntimeHandle":
        self.runtime.start()
        return self


def _fast_options() -> Any:
    from ..runtime.options import RuntimeOptions

    return RuntimeOptions(dispatcher_poll_interval_ms=5)


@pytest.fixture
def memory_runtime() -> Iterator[RuntimeHandle]:
    from ..providers.memory import InMemoryProvider
    from ..runtime.client import Client
    from ..runtime.runtime import Runtime

    provider = InMemoryProvider()
    runtime = Runtime(provider, _fast_options())
    handle = RuntimeHandle(provider, runtime, Client(provider))
    yield handle
    runtime.shutdown(2_000)


@pytest.fixture
def sqlite_runtime(tmp_path: Any) -> Iterator[RuntimeHandle]:
    from ..providers.sqlite import SqliteProvider
    from ..runtime.client import Client
    from ..runtime.runtime import Runtime

    provider = SqliteProvider.open(str(tmp_path / "duroxide.db"))
    runtime = Runtime(provider, _fast_options())
    handle = RuntimeHandle(provider, runtime, Client(provider))
    yield handle
    runtime.shutdown(2_000)
    provider.close()
