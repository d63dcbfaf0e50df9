"""Each checker catches the bug it exists for, reports seed + step + repro, and passes correct code."""

from __future__ import annotations

import json
import pathlib
import shlex
import types

import pytest

from duroxide_sim.cli import main as cli_main
from duroxide_sim.sim.checkers import check_well_formed, run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation
from tests.core.histories import activity_completed, activity_scheduled, started
from tests.sim import specs


def _first(spec, plan, seeds, checker, **kw):
    for seed in range(seeds):
        result = run_and_check(Simulation(spec, seed, plan, **kw))
        hits = [f for f in result.failures if f.checker == checker]
        if hits:
            return seed, hits[0], result
    raise AssertionError(f"{checker} found nothing in {seeds} seeds")


def test_determinism_and_sandbox_catch_random_branching() -> None:
    """Branching on random.random(): the sandbox names the call and line; replay from scratch diverges."""
    seed, failure, result = _first(specs.RANDOM_BRANCH, FaultPlan.none(), 20, "determinism", sandbox=True)
    sandbox = [f for f in result.failures if f.checker == "sandbox"]
    assert sandbox, "the sandbox must flag the call too"
    assert "random.random() (global RNG)" in sandbox[0].message
    src = (pathlib.Path(specs.__file__)).read_text().splitlines()
    line = next(i for i, text in enumerate(src, 1) if "BUG: nondeterministic" in text)
    assert f"specs.py:{line}" in sandbox[0].message
    # The global RNG is unseeded, so which replay notices first varies between processes: the
    # runtime's own replay of a later turn (the instance fails as nondeterministic) or the
    # checker's replay from scratch after the run. Either names the line of the yield.
    assert ("replay from scratch diverged" in failure.message
            or "the runtime failed the instance as nondeterministic" in failure.message), failure.message
    assert "specs.py:" in failure.message, "the divergence names the source line of the yield"
    assert failure.step is not None


def test_idempotency_names_the_activity() -> None:
    seed, failure, _ = _first(specs.ORDERS_NON_IDEMPOTENT, FaultPlan.only("crash_after_effect", rate=0.3), 30, "idempotency")
    assert "activity 'Orders::activity::ship' changed the world when re-executed" in failure.message
    assert "(fault-free" in failure.message


def test_outcome_checker_reports_instance_and_both_outcomes() -> None:
    seed, failure, _ = _first(specs.REORDER_ASSUMPTION, FaultPlan.only("reorder", rate=0.5), 30, "outcome")
    assert failure.instance == "w"
    assert failure.step is not None


def test_liveness_reports_a_stuck_instance_even_without_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_and_check(Simulation(specs.STUCK_CHILD, 0, FaultPlan.none())).ok  # (before the plant)
    specs.plant_lost_child_completions(monkeypatch)
    seed, failure, _ = _first(specs.STUCK_CHILD, FaultPlan.none(), 5, "liveness")
    assert "stuck: SubOrchestrationScheduled" in failure.message
    assert "never completed" in failure.message


def test_invariants_checker_runs_user_properties() -> None:
    seed, failure, _ = _first(specs.SAGA_SKIPPED_COMPENSATION, FaultPlan.none(), 3, "invariants")
    assert "money_charged_iff_shipped_or_refunded: order 6 was charged but neither shipped nor refunded" in failure.message


def test_well_formed_checker_finds_structural_problems() -> None:
    """Planted histories: a completion applied twice, an unknown source, ids going backwards."""
    good = [started(), activity_scheduled(2, "A", "1"), activity_completed(3, 2, "2")]
    assert check_well_formed("i", 1, good) == []
    twice = good + [activity_completed(4, 2, "2")]
    assert check_well_formed("i", 1, twice) == [("completion for id 2 applied twice", 4)]
    unknown = [started(), activity_completed(2, 7, "x")]
    assert check_well_formed("i", 1, unknown) == [("ActivityCompleted for unknown schedule id 7", 2)]
    backwards = [started(), activity_scheduled(3, "A", "1"), activity_scheduled(2, "B", "1")]
    assert ("event id 2 does not increase (after 3)", 2) in check_well_formed("i", 1, backwards)


@pytest.mark.parametrize("spec", [specs.ORDERS_OK], ids=["orders-ok"])
def test_correct_workflow_passes_every_checker_with_sandbox(spec) -> None:
    for seed in range(25):
        result = run_and_check(Simulation(spec, seed, FaultPlan.all(0.05), sandbox=True))
        assert result.ok, [f.render() for f in result.failures]


def test_failure_report_ends_with_a_repro_that_reproduces_it(capsys: pytest.CaptureFixture[str]) -> None:
    """The last line of a rendered failure is a command; running it gives the same failure at the same step."""
    seed, failure, result = _first(specs.ORDERS_NON_IDEMPOTENT, FaultPlan.only("crash_after_effect", rate=0.3), 30, "idempotency")
    rendered = failure.render().splitlines()
    assert rendered[-1].startswith("reproduce: duroxide-sim reproduce ")
    argv = shlex.split(rendered[-1][len("reproduce: duroxide-sim "):])
    capsys.readouterr()
    code = cli_main(argv + ["--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1
    assert out["seed"] == seed
    assert out["trace_sha256"] == result.trace_hash
    again = [f for f in out["failures"] if f["checker"] == "idempotency"]
    assert again and again[0]["message"] == failure.message and again[0]["step"] == failure.step


def test_idempotency_names_the_activity_even_when_setup_seeded_the_key() -> None:
    """A key pre-populated by setup is blamed on the activity whose re-execution changed it."""
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        if not world.exists("pool:free"):
            world.put("pool:free", ["10.0.0.1"])

        @rt.register_activity("Ip::activity::release")
        def release(ctx, addr):
            world.append("pool:free", addr)  # BUG: releases again on every delivery
            return True

        @rt.register_orchestration("Ip::orchestration::free")
        def free(ctx, addr):
            return (yield ctx.schedule_activity("Ip::activity::release", addr))

    spec = SimSpec(name="ip", setup=setup, starts=[Start(instance="f", orchestration="Ip::orchestration::free", input="10.0.0.2")])
    seed, failure, _ = _first(spec, FaultPlan.only("crash_after_effect", rate=0.5), 30, "idempotency")
    assert failure.message.startswith("activity 'Ip::activity::release' changed the world when re-executed")


def _poison_spec():
    """Instance ``a`` marks two world keys; ``b`` (an hour later) reports whether the second is
    there. With max_attempts=1 one crash after ``a``'s first effect poisons ``a`` half-way."""
    from duroxide_sim import RuntimeOptions
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        rt.register_activity("mark", lambda ctx, key: world.put(key, True) or True)
        rt.register_activity("read", lambda ctx, key: world.get(key, False))

        def a(ctx, _):
            yield ctx.schedule_activity("mark", "a1")
            yield ctx.schedule_activity("mark", "a2")
            return "a"

        def b(ctx, _):
            return (yield ctx.schedule_activity("read", "a2"))

        rt.register_orchestration("A", a)
        rt.register_orchestration("B", b)

    return SimSpec(name="poison-downstream", setup=setup, options=RuntimeOptions(max_attempts=1),
                   starts=[Start(instance="a", orchestration="A"), Start(instance="b", orchestration="B", at_ms=3_600_000)])


def test_an_instance_poisoned_by_faults_does_not_make_its_dependents_look_broken() -> None:
    """``a`` poisoned half-way leaves the world without ``a2``, so ``b`` legitimately answers
    False where the fault-free run says True: counted as budget exhausted, not an outcome
    failure of ``b`` (the deletion scenario could report such false failures before)."""
    plan = FaultPlan(script=((1, "crash_after_effect"),))
    result = run_and_check(Simulation(_poison_spec(), 0, plan, nodes=1))
    outputs = result.outputs()
    assert outputs["a"][0] == "Failed" and str(outputs["a"][1]).startswith("poison:")
    assert outputs["b"] == ("Completed", False)  # the fault-free twin says True
    assert result.budget_exhausted == ["a"]
    assert result.failures == []


def test_the_same_crash_without_poison_leaves_nothing_exempt() -> None:
    """The same spec and crash with the retry budget intact: the activity is redelivered, nothing
    is poisoned, so the run is compared with its twin as usual (and, the workflow being correct,
    nothing differs; a real difference is reported: test_outcome_checker_reports_...)."""
    import attrs as _attrs

    from duroxide_sim import RuntimeOptions

    spec = _attrs.evolve(_poison_spec(), options=RuntimeOptions(max_attempts=10))
    result = run_and_check(Simulation(spec, 0, FaultPlan(script=((1, "crash_after_effect"),)), nodes=1))
    assert result.budget_exhausted == [] and result.failures == []
    assert result.outputs()["b"] == ("Completed", True)


def test_canonical_state_rewrites_only_values_that_need_it_and_follows_changes() -> None:
    """The idempotency comparison's canonical world: lists as multisets and floats rounded,
    subclasses included, scalars untouched; a later write is seen (the cached form is keyed by
    the world's size and ledger), and the world itself is never modified."""
    from collections import OrderedDict

    from duroxide_sim.sim.checkers import _canonical_state
    from duroxide_sim.sim.world import ExternalWorld

    class Tags(list):
        pass

    world = ExternalWorld()
    world.put("n", 3)
    world.put("s", "x")
    world.append("log", "b")
    world.append("log", "a")
    world.put("total", 0.1 + 0.2)
    world.state["tags"] = Tags(["z", "y"])  # a list subclass (written directly)
    world.state["meta"] = OrderedDict(v=[2, 1])
    result = types.SimpleNamespace(world=world)
    canon = _canonical_state(result)
    assert canon == {"n": 3, "s": "x", "log": ["a", "b"], "total": 0.3, "tags": ["y", "z"], "meta": {"v": [1, 2]}}
    assert world.state["log"] == ["b", "a"] and world.state["total"] != 0.3  # not modified
    world.append("log", "c")
    assert _canonical_state(result)["log"] == ["a", "b", "c"]
    world.put("m", 1)
    assert _canonical_state(result)["m"] == 1
    scalars = ExternalWorld()
    scalars.put("a", 1)
    assert _canonical_state(types.SimpleNamespace(world=scalars)) == {"a": 1}


def test_canonical_state_orders_list_items_whose_dicts_mix_key_types() -> None:
    """A list of dicts with int and str keys (``sort_keys`` cannot order them) is still compared
    as a multiset instead of crashing the checker."""
    from duroxide_sim.sim.checkers import _canonical_state
    from duroxide_sim.sim.world import ExternalWorld

    a, b = ExternalWorld(), ExternalWorld()
    for world, items in ((a, [{1: "x", "k": 2}, {"k": 1}]), (b, [{"k": 1}, {1: "x", "k": 2}])):
        for item in items:
            world.append("events", item)
    assert _canonical_state(types.SimpleNamespace(world=a)) == _canonical_state(types.SimpleNamespace(world=b))
