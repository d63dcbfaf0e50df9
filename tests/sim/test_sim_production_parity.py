"""The seam: a shipped scenario's workflows run on the production runtime end as simulated.

The promise: users "run their workflows in production on a SQLite provider with the same code
that was simulated". Each test takes a scenario's own ``setup(rt, world)`` registrations and its
client operations (its ``PRODUCTION`` spec: the same workflow with millisecond durations; the
``SPEC`` where a module has none), runs them on ``Runtime`` + ``Client`` with real threads, and
compares every instance's final status and output (and the external world) with the simulator's
fault-free run of the same spec. The world handed to ``setup`` in production is the package's
``ThreadSafeWorld`` (``duroxide_sim.testing.live``, which also has ``run_live``, the runner these
tests use): the simulated world with atomic operations.

Found by this file and fixed: the package offered no world that production's concurrent worker
threads can share (``ExternalWorld.incr`` lost updates; a thread-safe one lived only in the
tests: now ``ThreadSafeWorld``); deletion.py's ``describe_instance`` iterated ``world.state``
while other activities wrote it (now ``world.items(prefix)``, a snapshot); mailbox.PRODUCTION
drew its "arbitrary time" messages within 10 minutes although its mailboxes close at 1.5 s, so
the simulated and the production run had different inputs (now ``SimSpec.signal_window_ms``).
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from typing import Any

import attrs
import pytest

from duroxide_sim import InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation
from duroxide_sim.sim.world import ExternalWorld
from duroxide_sim.testing.live import ThreadSafeWorld
from duroxide_sim.testing.live import LiveResult, run_live

pytestmark = pytest.mark.realtime

SCENARIOS = ("greetings", "order_saga", "approval", "mailbox", "provisioning", "instance_actor", "deletion", "batch_fanout")


def _spec(name: str) -> SimSpec:
    module = importlib.import_module(f"scenarios.{name}")
    return getattr(module, "PRODUCTION", module.SPEC)


def _run_production(spec: SimSpec, provider: Any, world: Any, *, timeout_s: float = 8.0,
                    options: RuntimeOptions | None = None, realized: Any = None) -> LiveResult:
    """What a user does (``duroxide_sim.testing.live.run_live``): a Runtime on ``provider``, the
    spec's setup, its starts and signals at their ``at_ms`` (real ms), every instance awaited.
    ``realized``: the (starts, signals) a simulation drew for its seed (``SimResult.realized``),
    used when they all fall within 5 s, so that both runs get the same client operations."""
    ops = realized if realized is not None and max(
        (op.at_ms for op in realized[0] + realized[1]), default=0) <= 5_000 else None
    return run_live(spec, provider, world=world, options=options, operations=ops, timeout_s=timeout_s)


def _outcomes(statuses: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    return {i: (st.status, st.output if st.status == "Completed" else st.error) for i, st in statuses.items()}


def _canonical_world(state: dict[str, Any]) -> dict[str, Any]:
    """The world with list order ignored (``pool:free`` is appended to by concurrent deletions in
    whatever order they finish: scheduling, not an outcome)."""
    return {k: sorted(v, key=repr) if isinstance(v, list) else v for k, v in state.items()}


def _diff(sim: dict[str, Any], prod: dict[str, Any]) -> list[str]:
    return [f"{k}: simulated {sim.get(k)!r:.200} vs production {prod.get(k)!r:.200}"
            for k in sorted(set(sim) | set(prod)) if sim.get(k) != prod.get(k)]


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_on_sqlite_ends_as_the_fault_free_simulation(name: str, tmp_path) -> None:
    """A user runs a scenario's setup on SqliteProvider.open(file) with dispatcher threads and the
    spec's starts/signals: every instance (including ones the workflow started itself) ends with
    the same status and output as in Simulation(spec, 0, FaultPlan.none()), the external world
    ends in the same state, and the spec's invariants hold on the production result."""
    spec = _spec(name)
    sim = Simulation(spec, 0, FaultPlan.none()).run()
    provider = SqliteProvider.open(str(tmp_path / "prod.db"))
    try:
        prod = _run_production(spec, provider, ThreadSafeWorld(), realized=sim.realized)
    finally:
        provider.close()
    assert not _diff(_outcomes(sim.statuses), _outcomes(prod.statuses)), _diff(_outcomes(sim.statuses), _outcomes(prod.statuses))
    assert not _diff(_canonical_world(sim.world.state), _canonical_world(prod.world.state)), _diff(
        _canonical_world(sim.world.state), _canonical_world(prod.world.state))
    broken = [f"{inv.__name__}: {msg}" for inv in spec.invariants if (msg := inv(prod))]
    assert not broken, broken


@pytest.mark.parametrize("name", ("order_saga", "approval"))
def test_scenario_on_in_memory_provider_with_threads_ends_as_simulated(name: str) -> None:
    """The same on InMemoryProvider() driven by the production thread driver (Runtime.start):
    statuses, outputs and world match the fault-free simulation."""
    spec = _spec(name)
    sim = Simulation(spec, 0, FaultPlan.none()).run()
    prod = _run_production(spec, InMemoryProvider(), ThreadSafeWorld(), realized=sim.realized)
    assert not _diff(_outcomes(sim.statuses), _outcomes(prod.statuses)), _diff(_outcomes(sim.statuses), _outcomes(prod.statuses))
    assert not _diff(_canonical_world(sim.world.state), _canonical_world(prod.world.state)), _diff(
        _canonical_world(sim.world.state), _canonical_world(prod.world.state))


def test_simulated_nodes_use_the_production_default_options() -> None:
    """A spec without ``options`` is simulated with exactly the RuntimeOptions a user gets from
    ``Runtime(provider)`` in production (lock timeouts, max_attempts, cache size, concurrency...)."""
    seen: list[Any] = []
    base = _spec("greetings")

    def setup(rt: Runtime, world: ExternalWorld) -> None:
        seen.append(rt.options)
        base.setup(rt, world)

    Simulation(attrs.evolve(base, setup=setup, options=None), 0, FaultPlan.none()).run()
    production = Runtime(InMemoryProvider()).options
    assert seen
    for opts in seen:
        assert attrs.asdict(opts) == attrs.asdict(production)


def test_simulated_nodes_use_the_spec_options_as_given() -> None:
    """A spec's ``options`` reach every simulated node unchanged (what the user deploys)."""
    seen: list[Any] = []
    base = _spec("greetings")
    options = RuntimeOptions(max_attempts=3, orchestrator_lock_timeout_ms=7_000, instance_cache_size=0)

    def setup(rt: Runtime, world: ExternalWorld) -> None:
        seen.append(rt.options)
        base.setup(rt, world)

    result = Simulation(attrs.evolve(base, setup=setup, options=options), 0, FaultPlan.none()).run()
    assert seen and all(attrs.asdict(o) == attrs.asdict(options) for o in seen)
    assert _outcomes(result.statuses) == _outcomes(Simulation(base, 0, FaultPlan.none()).run().statuses)


def test_every_scenario_has_a_production_form_or_needs_none() -> None:
    """Every shipped scenario the user can simulate can be run in production in seconds: it has a
    ``PRODUCTION`` spec with the same orchestrations as ``SPEC`` (greetings has no durations, so
    its SPEC serves), and a spec's starts only name orchestrations its setup registers."""
    for name in SCENARIOS:
        module = importlib.import_module(f"scenarios.{name}")
        prod = getattr(module, "PRODUCTION", None)
        if prod is None:
            assert name == "greetings", f"{name} has no PRODUCTION spec"
            continue
        assert {s.orchestration for s in prod.starts} == {s.orchestration for s in module.SPEC.starts}, name
        rt = Runtime(InMemoryProvider())
        prod.setup(rt, ThreadSafeWorld())
        for s in prod.starts:
            assert rt.registry.resolve(s.orchestration, s.version) is not None, (name, s.orchestration)


def test_package_world_keeps_every_update_under_concurrent_worker_threads() -> None:
    """In production, activities run concurrently on ``worker_concurrency`` threads and act on the
    world the user passed to ``setup``. The world the package provides for that, ThreadSafeWorld,
    must not lose updates when two activities ``incr`` the same key at once (batch_fanout and
    order_saga do exactly that); otherwise production silently diverges from the simulation,
    which runs activities one at a time and can never show the race."""
    world = ThreadSafeWorld()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    done = 0
    deadline = time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            def work() -> None:
                for _ in range(5_000):
                    world.incr("items_written", 1)

            threads = [threading.Thread(target=work) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            done += 20_000
            if world.get("items_written") != done:
                break
    finally:
        sys.setswitchinterval(old)
    assert world.get("items_written") == done, f"lost {done - world.get('items_written')} of {done} increments"


def test_deletion_describe_activity_survives_concurrent_world_writes() -> None:
    """deletion.py's ``describe_instance`` activity scans ``world.state`` while, in production,
    another worker thread's activity writes the world. The scan must not fail with 'dictionary
    changed size during iteration' (in simulation activities never overlap, so it cannot)."""
    deletion = importlib.import_module("scenarios.deletion")
    spec = deletion.PRODUCTION
    world = ExternalWorld()
    captured: dict[str, Any] = {}

    class _Capture:  # records the plain functions the setup registers
        def __getattr__(self, _method: str) -> Any:
            def register(name: str, *args: Any, **kwargs: Any) -> Any:
                def deco(fn: Any) -> Any:
                    captured[name] = fn
                    return fn
                return deco
            return register

    spec.setup(_Capture(), world)
    handler = captured[deletion.Names.Activities.DESCRIBE]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            world.put(f"backup:db-99:{n}", {"size_gb": 1})
            world.delete(f"backup:db-99:{n}")
            n += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not errors:
            try:
                handler(None, "db-10")
            except RuntimeError as exc:
                errors.append(exc)
            except Exception:
                pass  # typed input / ctx use: only the iteration race matters here
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert not errors, errors[0]


def test_arbitrary_time_signals_of_a_production_spec_arrive_while_the_workflow_listens() -> None:
    """mailbox.PRODUCTION closes its mailboxes at 1.5 s and sends 8 messages "at an arbitrary time"
    (``Signal(at_ms=None)``). Simulating that spec must draw those times within the workflow's
    life, as the production-mode runner does (first second): otherwise the simulated run sends them
    minutes after ``close`` and never delivers them, while production delivers all of them - the
    two modes exercise different inputs and end with different worlds."""
    mailbox = importlib.import_module("scenarios.mailbox")
    spec = mailbox.PRODUCTION
    result = Simulation(spec, 0, FaultPlan.none()).run()
    close_at = max(s.at_ms for s in result.realized[1] if s.at_ms is not None and getattr(s.data, "kind", "") == "close")
    late = sorted(s.at_ms for s in result.realized[1] if s.at_ms > close_at)
    assert not late, f"{len(late)} signals drawn after close at {close_at} ms: {late}"


@pytest.mark.parametrize("cls", [ExternalWorld, ThreadSafeWorld])
def test_world_items_is_a_prefix_scan_that_returns_copies(cls) -> None:
    """``world.items(prefix)``: the keys starting with ``prefix`` in first-write order, with
    copies of their values (changing one does not change the world), and no ledger entry (a
    read). The thread-safe world's operations behave as the plain one's."""
    world = cls()
    world.put("ip:10.0.0.1", "db-1")
    world.put("backup:db-1:1", {"size_gb": 1})
    world.put("ip:10.0.0.2", "db-2")
    assert world.items("ip:") == [("ip:10.0.0.1", "db-1"), ("ip:10.0.0.2", "db-2")]
    (key, value), = world.items("backup:")
    value["size_gb"] = 99
    assert world.get("backup:db-1:1") == {"size_gb": 1}
    assert len(world.ledger) == 3 and [k for k, _ in world.items()] == ["ip:10.0.0.1", "backup:db-1:1", "ip:10.0.0.2"]
    assert world.incr("n") == 1 and world.append("l", 1) == [1] and world.put_if_absent("n", 5) is False
    assert world.writers("n") == ["<outside an activity>"]
