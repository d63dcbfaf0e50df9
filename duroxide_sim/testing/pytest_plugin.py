"""pytest plugin: simulation fixtures, ``--sim-*`` options, and one-line repro on failure.

Registered through the ``pytest11`` entry point under its own dotted path, so it loads once
whether it comes from the installed package or from a conftest's ``pytest_plugins``.

Options:

``--sim-seed N``      run simulation tests with exactly this seed (reproduce a failure)
``--sim-runs N``      seeds per simulation test (default 20)
``--sim-faults F``    ``all`` (default), ``swarm``, ``none`` or a fault plan as JSON
``--sim-sandbox``     flag clock/random/I-O calls in orchestration code
``--sim-plan P``      replay exactly this fault plan (JSON, or ``none``), overriding
                      ``--sim-faults`` and a test's own ``faults=``: what the repro line of a
                      shrunk failure sets
``--sim-shrink-runs N``  simulations ``simulate`` may spend shrinking a failing seed's fault
                      plan (default 60; 0 reports the failure as first found)

Fixtures:

``simulate``          ``simulate(spec)`` runs the spec over the selected seeds and fails with the
                      first broken property, its report and a repro line; when the failing
                      seed's plan injected faults, the plan is first shrunk to the fewest
                      faults that fail the seed the same way (``..sim.shrink``), and the report
                      and repro line are those of the shrunk plan
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

from .argtypes import non_negative_int, positive_int

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
    group.addoption("--sim-plan", default=None,
                    help="replay exactly this fault plan (JSON or 'none'), overriding --sim-faults and a test's faults=")
    group.addoption("--sim-shrink-runs", type=non_negative_int, default=60,
                    help="simulations spent shrinking a failing seed's fault plan (default 60; 0: do not shrink)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "simulation: a test that runs duroxide_sim simulations")
    from . import SESSION_DEFAULTS

    # --sim-sandbox reaches @simulation_test too (its seeds and plans come from Hypothesis, so
    # --sim-seed and --sim-faults do not apply to it)
    SESSION_DEFAULTS.clear()
    if config.getoption("--sim-sandbox", default=False):
        SESSION_DEFAULTS["sandbox"] = True
    for option in ("--sim-faults", "--sim-plan"):
        value = config.getoption(option, default=None)
        if value is not None:
            try:
                _plan(value)  # a bad value is a usage error before any test runs, like --sim-runs
            except ValueError as exc:
                raise pytest.UsageError(f"{option}: {exc}") from None


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
    replayed = config.getoption("--sim-plan")
    shrink_runs = config.getoption("--sim-shrink-runs")
    sandbox = config.getoption("--sim-sandbox")

    def run(spec: Any, seeds: Any = None, faults: Any = None, **kw: Any) -> list[Any]:
        if seeds is not None and (isinstance(seeds, (int, str, bytes)) or not hasattr(seeds, "__iter__")):
            raise TypeError(f"simulate(): seeds must be an iterable of seed numbers, e.g. range({seeds!r}) or [7], "
                            f"got {seeds!r} (how many seeds to run by default: --sim-runs)"[:300])
        seed_list = [chosen] if chosen is not None else list(seeds if seeds is not None else range(runs))
        if not seed_list:
            raise ValueError("simulate() got no seeds to run: a property checked on no seed would pass vacuously")
        if replayed is not None:
            plan = _plan(replayed)
        else:
            plan = _plan(faults_opt) if faults is None else _plan(faults)
        # Taken once: every seed runs with the caller's sandbox choice (popping it inside the loop
        # gave only the first seed the caller's value).
        use_sandbox = kw.pop("sandbox", sandbox)
        results = []
        for seed in seed_list:
            result = run_and_check(Simulation(spec, seed, plan, sandbox=use_sandbox, **kw))
            results.append(result)
            if result.failures:
                _fail(request, spec, seed, plan, result, {"sandbox": use_sandbox, **kw},
                      explicit_plan=faults is not None, replayed=replayed is not None, shrink_runs=shrink_runs)
        return results

    return run


def _fail(request: pytest.FixtureRequest, spec: Any, seed: int, plan: Any, result: Any, sim_kwargs: dict[str, Any], *,
          explicit_plan: bool, replayed: bool, shrink_runs: int) -> None:
    """Raise SimulationFailed for ``seed``'s failing ``result``: with the failure of the smallest
    plan that fails the seed the same way (when the run injected faults and shrinking is on; a
    plan replayed with ``--sim-plan`` is reported as it is) and a repro line for it."""
    repro = _repro_line(request, seed, result.plan, explicit_plan, replayed=replayed)
    found, unshrunk = None, ""
    if shrink_runs and not replayed and result.fired:
        from ..sim.shrink import shrink_failure

        try:
            found = shrink_failure(spec, seed, plan, sim_kwargs, max_runs=shrink_runs, original=result)
            if found is not None and len(found[0].fired) >= len(result.fired):
                found = None  # nothing smaller (a plan that is minimal already is reported as given)
        except Exception as exc:  # noqa: BLE001 - the failure as found is still reported
            unshrunk = "\n\n" + f"(could not shrink its plan: {type(exc).__name__}: {exc})"[:500]
    if found is None:
        report = "\n\n".join(f.render() for f in result.failures)
        raise SimulationFailed(f"{report}{unshrunk}\n\nreproduce with pytest: {repro}", repro, seed)
    small, note = found
    small_repro = _repro_line(request, seed, small.plan, explicit_plan, replayed=True)
    report = "\n\n".join(f.render() for f in small.failures)
    raise SimulationFailed(
        f"{report}\n\n({note})\n\nreproduce with pytest: {small_repro}\n"
        f"(the seed with its whole plan: {repro})", small_repro, seed)


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


def _repro_line(request: pytest.FixtureRequest, seed: int, plan: Any, explicit_plan: bool, *,
                replayed: bool = False) -> str:
    """The pytest command that runs this test's ``seed`` with ``plan`` again. A ``replayed``
    plan (a shrunk one, or one given with ``--sim-plan``) is passed with ``--sim-plan``, which
    overrides a test's own ``faults=``; otherwise the plan comes from ``--sim-faults`` as before
    (left out when the test names its own plan)."""
    parts = ["pytest", _cwd_relative(request.config, request.node.nodeid), "--sim-seed", str(seed)]
    if replayed:
        parts += ["--sim-plan", plan.to_json() if plan is not None and plan.enabled() else "none"]
    elif not explicit_plan:
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
