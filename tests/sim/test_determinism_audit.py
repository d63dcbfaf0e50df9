"""Determinism audit: the same seed gives the byte-identical trace (and the same verdict).

Checked here, beyond ``test_determinism.py``:

- every shipped scenario under ``PYTHONHASHSEED`` 0, 1 and 12345 (fresh processes), with
  ``FaultPlan.all(0.05)`` and the default swarm plan, 1/2/3 nodes, memory and SQLite;
- the same seed twice in one process with other seeds (and checks) run in between: no hidden
  process-global state (twin cache, registry shape cache, engine/codec caches, gc, logging);
- ``duroxide-sim run --jobs 1`` vs ``--jobs 2``; a scenario's verdict does not depend on which
  other scenarios ran before it in the same process;
- KV snapshot order (a dict order chosen by storage) is the same on every provider and in the
  checker's from-scratch replay;
- ``duroxide-sim reproduce`` of a failing seed prints the same failure and trace hash as the
  original run, under any hash seed, with identical timeline bytes.

Written as a probe; the defects it found were fixed with it: the registry's shape cache shared
one handler's signature with every handler of a ``functools.wraps`` decorator and one setup's
local class with later setups (``core/registry._shape_key``); the trace's log lines went
through ``logging`` and so depended on the process's logging configuration
(``core/logsink``); a KV store carried over continue-as-new came in each storage's own key
order (``_Engine`` sorts the snapshot).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import pathlib
import shlex
import subprocess
import sys
import textwrap

import attrs

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCENARIOS = ("approval", "batch_fanout", "deletion", "greetings", "instance_actor", "mailbox", "order_saga", "provisioning")
#: Planted-bug variants whose bug *is* nondeterminism in the user's code (global ``random``):
#: their traces are expected to differ between runs.
NONDETERMINISTIC_VARIANTS = {("instance_actor", "jittered-interval")}


# --- helpers ------------------------------------------------------------------------------------


def _env(hash_seed: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = str(hash_seed)
    return env


def _python(args: list[str], *, hash_seed: int | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(hash_seed), capture_output=True, text=True,
                          timeout=timeout)


def _scenario(name: str):
    return importlib.import_module(f"scenarios.{name}")


def _verdict(result) -> tuple:
    """Everything a run reports that must be a function of the seed."""
    statuses = {k: (v.status, repr(getattr(v, "output", None)), repr(getattr(v, "error", None)))
                for k, v in result.statuses.items()}
    return (
        result.trace_hash,
        tuple(result.trace),
        json.dumps(statuses, sort_keys=True),
        result.world.snapshot(),
        tuple((f.checker, f.message, f.instance, f.step, f.repro) for f in result.failures),
        tuple(result.budget_exhausted),
    )


def _statuses(result) -> dict:
    return {k: (v.status, getattr(v, "output", None), getattr(v, "error", None)) for k, v in result.statuses.items()}


# A child process: run every shipped scenario over a grid of (seed, plan, provider, nodes) and
# print one digest per run (trace hash, statuses, world, verdicts).
_GRID_SCRIPT = textwrap.dedent('''
    import hashlib, importlib, json, sys
    from duroxide_sim.sim.checkers import run_and_check
    from duroxide_sim.sim.faults import FaultPlan
    from duroxide_sim.sim.harness import Simulation

    GRID = [  # (seed, plan, provider, nodes)
        (3, "all", "memory", 2), (3, "swarm", "memory", 2), (17, "all", "memory", 1),
        (17, "swarm", "memory", 3), (5, "all", "sqlite", 2), (8, "swarm", "sqlite", 3),
    ]
    out = {}
    for name in sys.argv[1].split(","):
        spec = importlib.import_module("scenarios." + name).SPEC
        for seed, plan, provider, nodes in GRID:
            faults = FaultPlan.all(0.05) if plan == "all" else "swarm"
            r = run_and_check(Simulation(spec, seed, faults, provider=provider, nodes=nodes))
            st = {k: [v.status, repr(getattr(v, "output", None)), repr(getattr(v, "error", None))] for k, v in r.statuses.items()}
            digest = hashlib.sha256(json.dumps([st, r.world.snapshot(), sorted(r.histories),
                                                [[f.checker, f.message, f.instance, f.step] for f in r.failures]],
                                               sort_keys=True).encode()).hexdigest()
            out[f"{name}/{seed}/{plan}/{provider}/{nodes}"] = [r.trace_hash, digest, len(r.failures)]
    print(json.dumps(out, sort_keys=True))
''')


# --- 1. hash seeds, fresh processes ---------------------------------------------------------------


def test_every_scenario_is_independent_of_the_hash_seed() -> None:
    """Fresh processes under PYTHONHASHSEED 0, 1 and 12345: identical trace hashes, statuses,
    world state and verdicts for every shipped scenario (all/swarm plans, 1-3 nodes, memory and
    SQLite)."""
    runs = {}
    for hash_seed in (0, 1, 12345):
        proc = _python(["-c", _GRID_SCRIPT, ",".join(SCENARIOS)], hash_seed=hash_seed)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[hash_seed] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(runs[0]) == len(SCENARIOS) * 6
    for key, value in runs[0].items():
        assert runs[1][key] == value, f"{key}: PYTHONHASHSEED 0 vs 1"
        assert runs[12345][key] == value, f"{key}: PYTHONHASHSEED 0 vs 12345"
    # The shipped scenarios are correct: no run may fail.
    assert {k: v for k, v in runs[0].items() if v[2]} == {}


# --- 2. hidden process-global state ---------------------------------------------------------------


def test_same_seed_same_bytes_and_verdicts_after_other_seeds_in_one_process() -> None:
    """Every scenario and planted-bug variant, seed 5, all(0.05) and swarm: run, run other
    seeds (checked and fault-free, other providers and node counts) in between, run again in the
    reverse order: identical trace bytes and identical run_and_check verdicts."""
    targets = []
    for name in SCENARIOS:
        module = _scenario(name)
        targets.append((name, "SPEC", module.SPEC))
        for variant, spec in getattr(module, "VARIANTS", {}).items():
            if (name, variant) not in NONDETERMINISTIC_VARIANTS:
                targets.append((name, variant, spec))
    plans = (("all", FaultPlan.all(0.05)), ("swarm", "swarm"))
    first = {(n, v, p): _verdict(run_and_check(Simulation(s, 5, plan))) for n, v, s in targets for p, plan in plans}
    for _n, _v, spec in targets:
        for seed in (6, 7):
            run_and_check(Simulation(spec, seed, FaultPlan.all(0.05)))
            Simulation(spec, seed, None, nodes=3).run()
    import gc

    gc.collect()
    for n, v, spec in reversed(targets):
        for p, plan in reversed(plans):
            again = _verdict(run_and_check(Simulation(spec, 5, plan)))
            assert again == first[(n, v, p)], f"{n}/{v} plan {p}: the same seed gave another trace or verdict"


def test_check_repeat_finds_no_difference_in_the_shipped_scenarios() -> None:
    """run_and_check(check_repeat=True) (the harness's own same-seed rerun) stays quiet, SQLite too."""
    for name in SCENARIOS:
        for provider in ("memory", "sqlite"):
            result = run_and_check(Simulation(_scenario(name).SPEC, 11, FaultPlan.all(0.05), provider=provider),
                                   check_repeat=True)
            assert not [f.render() for f in result.failures], f"{name} on {provider}"


def test_trace_does_not_depend_on_the_collectors_state_and_leaves_it_as_found() -> None:
    """The same seed with gc disabled, with objects already frozen, and with a collection at
    every allocation: identical traces and verdicts; the caller's gc settings are restored."""
    import gc

    spec = _scenario("order_saga").SPEC
    reference = _verdict(run_and_check(Simulation(spec, 4, FaultPlan.all(0.05))))
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    try:
        gc.disable()
        assert _verdict(run_and_check(Simulation(spec, 4, FaultPlan.all(0.05)))) == reference
        assert not gc.isenabled()
        gc.enable()
        gc.freeze()
        frozen = gc.get_freeze_count()
        assert _verdict(run_and_check(Simulation(spec, 4, FaultPlan.all(0.05)))) == reference
        # The caller's frozen objects stay frozen (the run neither froze nor unfroze them); a few
        # of them may have been freed by reference counting meanwhile, hence not an equality.
        assert frozen // 2 < gc.get_freeze_count() <= frozen
        gc.unfreeze()
        gc.set_threshold(1, 1, 1)
        assert _verdict(run_and_check(Simulation(spec, 4, FaultPlan.all(0.05)))) == reference
        assert gc.get_threshold() == (1, 1, 1)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        (gc.enable if enabled else gc.disable)()


def _traced(f):
    """A pass-through decorator, as teams put on handlers (logging, metrics, tracing)."""

    @functools.wraps(f)
    def wrapper(*args):
        return f(*args)

    return wrapper


def test_decorated_handlers_keep_their_own_signature_whatever_ran_before() -> None:
    """Two specs whose activities share one ``functools.wraps`` decorator (one activity without
    an input, one with): each runs correctly, whichever ran first in the process.

    Was a defect (fixed; this test failed before): ``core/registry._shape`` caches (style, parameter count, input type) by the code
    object, which is the *wrapper's* code for every decorated handler, while
    ``inspect.signature`` follows ``__wrapped__``: the first handler's parameter count is lent
    to the second, which is then called with the wrong arguments."""

    def setup_no_input(rt, world):
        @rt.register_activity("Audit::activity::ping")
        @_traced
        def ping(ctx):
            return "pong"

        @rt.register_orchestration("Audit::orchestration::ping")
        def orch(ctx, _):
            return (yield ctx.schedule_activity("Audit::activity::ping", None))

    def setup_with_input(rt, world):
        @rt.register_activity("Audit::activity::double")
        @_traced
        def double(ctx, x):
            return x * 2

        @rt.register_orchestration("Audit::orchestration::double")
        def orch(ctx, x):
            return (yield ctx.schedule_activity("Audit::activity::double", x))

    no_input = SimSpec(name="no-input", setup=setup_no_input,
                       starts=[Start(instance="p", orchestration="Audit::orchestration::ping")])
    with_input = SimSpec(name="with-input", setup=setup_with_input,
                         starts=[Start(instance="d", orchestration="Audit::orchestration::double", input=21)])
    a = Simulation(no_input, 1, None).run()
    b = Simulation(with_input, 1, None).run()
    assert _statuses(a) == {"p": ("Completed", "pong", None)}
    assert _statuses(b) == {"d": ("Completed", 42, None)}, "the decorated activity got another handler's arity"


def test_handler_typed_with_a_setup_local_class_replays_the_same_every_run() -> None:
    """A typed activity annotated with a class defined in ``setup`` (a string annotation,
    resolved from the closure): the same seed three times in one process gives the same trace
    and the activity receives an instance of *its own* class each time.

    Was a defect (fixed; this test failed before): the registry shape cache key (code, globals id, annotations) ignores the closure, so
    every later ``setup`` call (each simulated process boot, each later run) gets the input
    type resolved for the first one: a class from an earlier run."""

    def setup(rt, world):
        @attrs.frozen
        class Order:
            n: int

        @rt.register_activity_typed("Audit::activity::check")
        def check(ctx, order: Order) -> str:  # a string annotation (PEP 563)
            return f"{type(order) is Order}:{order.n}"

        @rt.register_orchestration("Audit::orchestration::check")
        def orch(ctx, _):
            return (yield ctx.schedule_activity_typed("Audit::activity::check", Order(3)))

    spec = SimSpec(name="local-class", setup=setup,
                   starts=[Start(instance="c", orchestration="Audit::orchestration::check")])
    runs = [Simulation(spec, 1, None, nodes=1).run() for _ in range(3)]
    assert [_statuses(r)["c"] for r in runs] == [("Completed", "True:3", None)] * 3
    assert runs[1].trace == runs[0].trace and runs[2].trace == runs[0].trace


def _logging_spec() -> SimSpec:
    def setup(rt, world):
        @rt.register_activity("Audit::activity::note")
        def note(ctx, x):
            ctx.trace_info(f"activity saw {x}")
            return x

        @rt.register_orchestration("Audit::orchestration::note")
        def orch(ctx, x):
            ctx.trace_info("starting")
            r = yield ctx.schedule_activity("Audit::activity::note", x)
            ctx.trace_warn(f"done with {r}")
            return r

    return SimSpec(name="logging", setup=setup, starts=[Start(instance="n", orchestration="Audit::orchestration::note", input=1)])


def test_trace_does_not_depend_on_the_process_logging_configuration() -> None:
    """A child logger's level (what ``caplog.set_level(..., logger=...)`` or an app's logging
    config sets) or ``logging.disable`` does not change the seed's trace.

    Was a defect (fixed; this test failed before): ``sim/harness._Run.execute`` captures ``trace_*`` records through the package logger,
    adjusting only the ``duroxide_sim`` logger itself; a level on ``duroxide_sim.orchestration``
    / ``duroxide_sim.activity``, a disabled logger or ``logging.disable`` drops the lines from
    the trace, so the trace is a function of process-global logging state, not of the seed."""
    spec = _logging_spec()
    reference = Simulation(spec, 1, None).run()
    assert sum('"op":"log"' in line for line in reference.trace) == 3
    child = logging.getLogger("duroxide_sim.orchestration")
    saved_level = child.level
    try:
        child.setLevel(logging.ERROR)
        assert Simulation(spec, 1, None).run().trace == reference.trace, "a child logger's level changed the trace"
    finally:
        child.setLevel(saved_level)
    try:
        logging.disable(logging.INFO)
        assert Simulation(spec, 1, None).run().trace == reference.trace, "logging.disable changed the trace"
    finally:
        logging.disable(logging.NOTSET)
    assert Simulation(spec, 1, None).run().trace == reference.trace


_DICTCONFIG_SCRIPT = textwrap.dedent('''
    import json, logging.config
    from tests.sim.test_determinism_audit import _logging_spec
    from duroxide_sim.sim.harness import Simulation
    spec = _logging_spec()
    before = Simulation(spec, 1, None).run()
    # The most common logging setup of an application (disable_existing_loggers defaults to True).
    logging.config.dictConfig({"version": 1, "root": {"level": "WARNING"}})
    after = Simulation(spec, 1, None).run()
    print(json.dumps([before.trace_hash, after.trace_hash, sum('"op":"log"' in l for l in after.trace)]))
''')


def test_trace_survives_an_application_dictconfig() -> None:
    """``logging.config.dictConfig`` (which disables loggers that already exist) leaves the
    seed's trace unchanged (same defect as above; run in a child process)."""
    proc = _python(["-c", _DICTCONFIG_SCRIPT])
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after, log_lines = json.loads(proc.stdout.strip().splitlines()[-1])
    assert log_lines == 3 and after == before, "dictConfig removed the trace_* lines from the trace"


# --- KV order: a dict order chosen by storage ----------------------------------------------------


def _kv_spec(*, clear_and_reset: bool) -> SimSpec:
    def setup(rt, world):
        @rt.register_activity("Audit::activity::record")
        def record(ctx, keys):
            world.put("keys", keys)
            return keys

        @rt.register_orchestration("Audit::orchestration::kv")
        def orch(ctx, phase):
            if phase == 0:
                if clear_and_reset:
                    ctx.set_kv_value("a", 1)
                    ctx.set_kv_value("b", 2)
                    ctx.clear_kv_value("a")
                    ctx.set_kv_value("a", 3)
                else:
                    ctx.set_kv_value("b", 1)
                    ctx.set_kv_value("a", 2)
                return (yield ctx.continue_as_new(1))
            # The next execution reads the store the previous one left (SPEC §13).
            return (yield ctx.schedule_activity("Audit::activity::record", ctx.get_kv_all_keys()))

    return SimSpec(name="kv-order", setup=setup, starts=[Start(instance="k", orchestration="Audit::orchestration::kv", input=0)])


def test_kv_keys_after_continue_as_new_replay_from_scratch_on_every_provider() -> None:
    """A workflow that passes ``ctx.get_kv_all_keys()`` to an activity after continue-as-new is
    deterministic: the checker's from-scratch replay agrees with the live run, and memory and
    SQLite give the same history and trace for the same seed.

    Was a defect (fixed; this test failed before): the KV snapshot's key order is whatever each component's storage yields - SQLite
    ``ORDER BY key`` (providers/sqlite.py fetch), the memory provider's delta order where a
    cleared and re-set key keeps its first position (providers/memory.py ``_merge_kv``), and
    history order in ``core/verify.kv_snapshots`` - and the engine (``core/engine.py``
    ``self.kv = dict(inp.kv_snapshot)``) exposes it as is: false "replay from scratch diverged"
    findings, and a different trace per provider."""
    for clear_and_reset in (False, True):
        spec = _kv_spec(clear_and_reset=clear_and_reset)
        results = {}
        for provider in ("memory", "sqlite"):
            result = run_and_check(Simulation(spec, 1, None, provider=provider))
            assert [f.render() for f in result.failures] == [], f"{provider}, clear_and_reset={clear_and_reset}"
            results[provider] = result
        assert results["memory"].outputs() == results["sqlite"].outputs(), f"clear_and_reset={clear_and_reset}"
        assert results["memory"].trace == results["sqlite"].trace, f"clear_and_reset={clear_and_reset}"


# --- 3. the command line ---------------------------------------------------------------------------


def _rows(stdout: str) -> list[dict]:
    rows = json.loads(stdout)["scenarios"]
    for row in rows:
        assert isinstance(row.pop("seconds"), float)
    return rows


def test_cli_run_jobs_1_and_jobs_2_give_identical_rows() -> None:
    """``run scenarios --seeds 2 --json --variants all`` with --jobs 1 and --jobs 2: the same rows
    (first failures and repro lines included) apart from wall-clock seconds."""
    base = ["-m", "duroxide_sim", "run", "scenarios", "--seeds", "2", "--json", "--variants", "all"]
    one = _python(base + ["--jobs", "1"])
    two = _python(base + ["--jobs", "2"])
    assert one.returncode == two.returncode, (one.stderr[-1000:], two.stderr[-1000:])
    rows1, rows2 = _rows(one.stdout), _rows(two.stdout)
    assert len(rows1) >= len(SCENARIOS)
    assert rows1 == rows2


_DECORATOR = '''
import functools

def traced(f):
    @functools.wraps(f)
    def wrapper(*args):
        return f(*args)
    return wrapper
'''

_NO_INPUT = '''
from duroxide_sim.sim.harness import SimSpec, Start
from _deco import traced

def setup(rt, world):
    @rt.register_activity("Ping")
    @traced
    def ping(ctx):
        return "pong"

    @rt.register_orchestration("PingFlow")
    def flow(ctx, _):
        return (yield ctx.schedule_activity("Ping", None))

def completed(result):
    bad = {i: s.status for i, s in result.statuses.items() if s.status != "Completed"}
    return f"not completed: {bad}" if bad else None

SPEC = SimSpec(name="a_ping", setup=setup, invariants=[completed], starts=[Start(instance="p", orchestration="PingFlow")])
'''

_WITH_INPUT = '''
from duroxide_sim.sim.harness import SimSpec, Start
from _deco import traced

def setup(rt, world):
    @rt.register_activity("Double")
    @traced
    def double(ctx, x):
        return 2 * x

    @rt.register_orchestration("DoubleFlow")
    def flow(ctx, x):
        return (yield ctx.schedule_activity("Double", x))

def completed(result):
    bad = {i: s.status for i, s in result.statuses.items() if s.status != "Completed"}
    return f"not completed: {bad}" if bad else None

SPEC = SimSpec(name="b_double", setup=setup, invariants=[completed],
               starts=[Start(instance="d", orchestration="DoubleFlow", input=21)])
'''


def test_cli_verdict_of_a_scenario_does_not_depend_on_the_scenarios_run_before_it(tmp_path: pathlib.Path) -> None:
    """``run DIR`` (the scenarios one after another in one process) and ``run DIR/b.py`` alone
    give the same row for ``b``. Two scenarios share a ``functools.wraps`` decorator from a
    helper module; the registry shape cache (core/registry.py ``_shape``) lends the first
    scenario's activity arity to the second, so ``b`` fails only when ``a`` ran before it."""
    (tmp_path / "_deco.py").write_text(_DECORATOR)
    (tmp_path / "a_ping.py").write_text(_NO_INPUT)
    (tmp_path / "b_double.py").write_text(_WITH_INPUT)
    args = ["--seeds", "2", "--faults", "none", "--json", "--jobs", "1"]
    together = _python(["-m", "duroxide_sim", "run", str(tmp_path), *args])
    alone = _python(["-m", "duroxide_sim", "run", str(tmp_path / "b_double.py"), *args])
    assert alone.returncode == 0, alone.stdout[-2000:] + alone.stderr[-2000:]
    row_alone = _rows(alone.stdout)[0]
    row_together = next(r for r in _rows(together.stdout) if r["scenario"] == "b_double")
    assert row_together == row_alone
    assert together.returncode == 0, together.stdout[-2000:]


# --- 5. reproduce ------------------------------------------------------------------------------------


_PLANTED = '''
from duroxide_sim.sim.harness import SimSpec, Start

def setup(rt, world):
    @rt.register_activity("Charge")
    def charge(ctx, n):
        world.incr("charged", n)  # BUG: not idempotent (a re-delivery charges twice)
        return n

    @rt.register_orchestration("Pay")
    def pay(ctx, n):
        a = yield ctx.schedule_activity("Charge", n)
        if n == 2:
            raise ValueError(f"declined {a}")  # an orchestration failure: a traceback in history
        b = yield ctx.schedule_activity("Charge", n + 1)
        return a + b

SPEC = SimSpec(name="planted", setup=setup,
               starts=[Start(instance=f"p{i}", orchestration="Pay", input=i) for i in range(4)])
'''


def _load_planted(path: pathlib.Path):
    name = f"_audit_planted_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_reproduce_prints_the_same_failure_and_trace_hash_as_the_original_run(tmp_path: pathlib.Path) -> None:
    """A planted non-idempotent activity: the first failing seed's repro line, run twice (under
    PYTHONHASHSEED 0 and 1, with --timeline), prints the same failure and the trace hash of the
    original in-process run, and writes byte-identical timelines; ``--json`` gives the full hash."""
    path = tmp_path / "planted.py"
    path.write_text(_PLANTED)
    module = _load_planted(path)
    try:
        for plan_name, plan in (("all", FaultPlan.all(0.05)), ("swarm", "swarm")):
            for seed in range(40):
                sim = Simulation(module.SPEC, seed, plan)
                original = run_and_check(sim)
                if any(f.checker == "idempotency" for f in original.failures):
                    break
            else:
                raise AssertionError(f"no failing seed found with the {plan_name} plan")
            argv = shlex.split(original.failures[0].repro)
            assert argv[:2] == ["duroxide-sim", "reproduce"], original.failures[0].repro
            cmd = ["-m", "duroxide_sim", *argv[1:]]
            outs = []
            for hash_seed in (0, 1):
                timeline = tmp_path / f"timeline-{plan_name}-{hash_seed}.html"
                proc = _python(cmd + ["--timeline", str(timeline)], hash_seed=hash_seed)
                assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
                text = proc.stdout.replace(str(timeline), "<timeline>")
                outs.append(text)
                assert original.trace_hash[:16] in text, f"{plan_name}: reproduce printed another trace hash"
                for failure in original.failures:
                    assert failure.message in text, f"{plan_name}: reproduce did not print {failure.message!r}"
            assert outs[0] == outs[1], f"{plan_name}: reproduce output depends on PYTHONHASHSEED"
            html = [(tmp_path / f"timeline-{plan_name}-{h}.html").read_bytes() for h in (0, 1)]
            assert html[0] == html[1], f"{plan_name}: timeline bytes depend on PYTHONHASHSEED"
            proc = _python(cmd + ["--json"])
            summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
            assert summary["trace_sha256"] == original.trace_hash
            assert [f["message"] for f in summary["failures"]] == [f.message for f in original.failures]
    finally:
        sys.modules.pop(module.__name__, None)
