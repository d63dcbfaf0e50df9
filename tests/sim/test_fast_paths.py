"""The simulation's fast paths change cost, not verdicts.

* the fault-free twin is a function of the realized inputs and is shared between seeds that
  draw the same inputs; seeds that draw different inputs get their own;
* the provider self-check is paced by the work it does, and still catches corruption;
* faults of kinds that are off are not rolled, so the storage wrapper is skipped;
* the external world copies mutable values and stores immutable ones as they are;
* handler introspection is cached per code object, keyed by annotations too.
"""

from __future__ import annotations

import attrs
import pytest

from duroxide_sim.core.registry import Registry
from duroxide_sim.providers.faulty import FaultyProvider
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.sim import checkers
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, Simulation, SimSpec, Start, _Run
from duroxide_sim.sim.world import ExternalWorld

from .specs import ORDERS_NON_IDEMPOTENT, ORDERS_OK


def test_twin_is_shared_by_seeds_with_the_same_inputs():
    checkers._TWINS.clear()
    plan = FaultPlan.only("crash", "transient", rate=0.1)
    a = run_and_check(Simulation(ORDERS_OK, 1, plan))
    b = run_and_check(Simulation(ORDERS_OK, 2, plan))
    assert a.ok and b.ok
    assert len(checkers._TWINS) == 1  # the second seed reused the first seed's reference
    (identity, reference), = checkers._TWINS.values()
    assert identity[0].obj is ORDERS_OK
    # The shared reference is what a fresh twin of either seed computes.
    fresh = _Run(Simulation(ORDERS_OK, 2, FaultPlan.none(), nodes=1, check_invariants=False, verify_cache=False),
                 FaultPlan.none(), twin_of=b.realized).execute()
    assert fresh.trace[1:] == reference.trace[1:]  # line 0 names the seed it was computed for
    assert fresh.outputs() == reference.outputs()


def test_twin_is_not_shared_when_the_seed_draws_other_inputs():
    checkers._TWINS.clear()
    spec = attrs.evolve(ORDERS_OK, signals=[Signal(instance="o0", name="expedite", at_ms=None)])
    plan = FaultPlan.only("transient", rate=0.1)
    results = [run_and_check(Simulation(spec, seed, plan)) for seed in (1, 2, 3)]
    assert all(r.ok for r in results)
    times = {r.realized[1][0].at_ms for r in results}
    assert len(times) == 3  # three different signal times ...
    assert len(checkers._TWINS) == 3  # ... three references


def test_a_shared_twin_still_catches_the_planted_non_idempotent_activity():
    checkers._TWINS.clear()
    plan = FaultPlan.only("crash_after_effect", rate=0.3)
    caught = [run_and_check(Simulation(ORDERS_NON_IDEMPOTENT, seed, plan)) for seed in range(6)]
    assert len(checkers._TWINS) == 1
    assert any(f.checker == "idempotency" for r in caught for f in r.failures)


def test_provider_self_check_is_paced_but_still_catches_corruption():
    calls = []

    class Corrupting(InMemoryProvider):
        def _check(self):
            calls.append(1)
            if len(calls) == 3:
                raise AssertionError("planted corruption")
            return super()._check()

    sim = Simulation(ORDERS_OK, 0, None)
    sim._make_provider = lambda clock: Corrupting(clock)
    with pytest.raises(AssertionError, match="planted corruption"):
        sim.run()

    calls.clear()

    class Counting(InMemoryProvider):
        def _check(self):
            calls.append(1)
            return super()._check()

    sim = Simulation(ORDERS_OK, 0, None)
    sim._make_provider = lambda clock: Counting(clock)
    result = sim.run()
    assert 2 <= len(calls) <= result.steps // 16 + 1  # at most one check per 16 steps, plus the final one


def test_storage_wrapper_only_when_a_storage_fault_can_fire():
    off = _Run(Simulation(ORDERS_OK, 0, FaultPlan.only("crash", "reorder")), FaultPlan.only("crash", "reorder"))
    assert isinstance(off.provider, InMemoryProvider)
    on = _Run(Simulation(ORDERS_OK, 0, FaultPlan.only("transient")), FaultPlan.only("transient"))
    assert isinstance(on.provider, FaultyProvider)
    scripted = FaultPlan.scripted([(2, "commit_lost")])
    assert isinstance(_Run(Simulation(ORDERS_OK, 0, scripted), scripted).provider, FaultyProvider)


def test_kinds_that_are_off_do_not_change_the_trace_of_the_kinds_that_are_on():
    """Only enabled kinds are counted and rolled: adding a zero-rate kind changes nothing."""
    a = Simulation(ORDERS_OK, 4, FaultPlan({"crash": 0.1})).run()
    b = Simulation(ORDERS_OK, 4, FaultPlan({"crash": 0.1, "delay": 0.0})).run()
    assert a.trace[1:] == b.trace[1:]  # line 0 prints the plan itself
    assert a.faults_injected == b.faults_injected and a.faults_injected.get("crash")


def test_world_copies_mutable_values_and_keeps_atoms():
    world = ExternalWorld()
    payload = {"items": [1, 2]}
    world.put("k", payload)
    payload["items"].append(3)  # the caller's object changes afterwards ...
    assert world.get("k") == {"items": [1, 2]}  # ... the world does not
    got = world.get("k")
    got["items"].clear()
    assert world.get("k") == {"items": [1, 2]}
    assert world.ledger[-1].value == {"items": [1, 2]}
    world.put_if_absent("n", 7)
    world.append("log", ["a"])
    assert world.state["n"] == 7 and world.state["log"] == [["a"]]
    assert [(e.op, e.key) for e in world.ledger] == [("put", "k"), ("put", "n"), ("append", "log")]


def test_handler_shape_cache_distinguishes_annotations():
    @attrs.frozen
    class A:
        x: int

    @attrs.frozen
    class B:
        y: str

    def make(t):
        def act(ctx, value):  # same code object, different annotation each time
            return value

        act.__annotations__ = {"value": t}

        return act

    reg = Registry()
    ha = reg.add_activity("a", make(A), typed=True)
    hb = reg.add_activity("b", make(B), typed=True)
    hc = reg.add_activity("c", make(A), typed=True)
    assert (ha.input_type, hb.input_type, hc.input_type) == (A, B, A)
    assert ha.style == hb.style == "sync"


def test_twin_inputs_that_the_codec_refuses_are_not_shared():
    checkers._TWINS.clear()
    spec = SimSpec(
        name="unencodable",
        setup=lambda rt, world: rt.register_orchestration("O", lambda ctx, x: x),
        starts=[Start(instance="i", orchestration="O", input={1, 2})],  # a set: the codec refuses it
    )
    key = checkers._twin_key(Simulation(spec, 0, FaultPlan.only("transient")), ([spec.starts[0]], []))
    assert key is None


def test_trace_encoder_writes_the_same_bytes_as_json_dumps():
    import json

    from duroxide_sim.sim.harness import _ENCODE

    rec = {"step": 3, "t": 0, "op": "orch_turn", "instance": '<img src=x onerror=alert(1)>"\u00fc\u2713\n',
           "events": ["1:OrchestrationStarted"], "n": [1, 2.5, None, True, False], "nested": {"k": "v"}}
    assert _ENCODE(rec) == json.dumps(rec, separators=(",", ":"), default=str)


def test_trace_is_encoded_when_first_read_and_reads_like_a_list():
    result = Simulation(ORDERS_OK, 3, FaultPlan.only("crash", rate=0.1)).run()
    trace = result.trace
    n = len(trace)
    assert trace._records and not trace._lines  # nothing encoded yet
    lines = list(trace)
    assert len(lines) == n and trace == lines and trace[0] == lines[0] and trace[-2:] == lines[-2:]
    assert not trace._records  # encoded once, kept
    again = Simulation(ORDERS_OK, 3, FaultPlan.only("crash", rate=0.1)).run()
    assert again.trace == trace and again.trace_hash == result.trace_hash
    assert trace != lines[:-1]


def test_a_spec_edited_in_place_does_not_reuse_its_old_twin():
    checkers._TWINS.clear()
    spec = attrs.evolve(ORDERS_OK)
    plan = FaultPlan.only("transient", rate=0.1)
    assert run_and_check(Simulation(spec, 1, plan)).ok
    spec.setup = ORDERS_NON_IDEMPOTENT.setup  # same object, other code
    run_and_check(Simulation(spec, 2, plan))
    (identity, _), = checkers._TWINS.values()  # same key: the stale entry was replaced ...
    assert identity[1].obj is ORDERS_NON_IDEMPOTENT.setup  # ... by a reference of the new code


def test_a_simulated_run_draws_nothing_from_uuid4(monkeypatch):
    import uuid

    def forbidden():
        raise AssertionError("uuid4 called inside a seeded simulation")

    monkeypatch.setattr(uuid, "uuid4", forbidden)
    run = _Run(Simulation(ORDERS_OK, 5, FaultPlan.only("crash", rate=0.2)), FaultPlan.only("crash", rate=0.2))
    assert [n.runtime.runtime_id for n in run.nodes] == ["sim-n0-0", "sim-n1-0"]
    result = run.execute()
    assert result.quiescent and all(s.status == "Completed" for s in result.statuses.values())
