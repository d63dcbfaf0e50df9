"""Same seed -> byte-identical trace; different seeds explore different interleavings."""

from __future__ import annotations

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.harness import Simulation
from tests.sim.specs import ORDERS_OK


def test_same_seed_gives_identical_trace_bytes_over_200_seeds() -> None:
    """Each of 200 seeds (swarm fault plans) run twice yields exactly the same trace lines."""
    for seed in range(200):
        a = Simulation(ORDERS_OK, seed).run()
        b = Simulation(ORDERS_OK, seed).run()
        assert a.trace == b.trace, f"seed {seed} diverged"
        assert a.trace_hash == b.trace_hash


def test_different_seeds_explore_different_interleavings() -> None:
    """Fault-free runs of 50 seeds differ only in scheduling, yet give many distinct traces."""
    hashes = {Simulation(ORDERS_OK, seed, None).run().trace_hash for seed in range(50)}
    assert len(hashes) >= 40


def test_repeat_check_passes_for_a_deterministic_world() -> None:
    """run_and_check(check_repeat=True) re-runs the seed and finds no trace difference."""
    result = run_and_check(Simulation(ORDERS_OK, 7), check_repeat=True)
    assert not [f for f in result.failures if "same seed" in f.message]


def test_repeat_check_catches_hidden_global_state() -> None:
    """Planted: an activity result depends on process-global state, so a re-run differs."""
    import attrs

    counter = {"n": 0}

    def setup(rt, world):
        ORDERS_OK.setup(rt, world)

        @rt.register_activity("Leak::activity::count")
        def count(ctx, _):
            counter["n"] += 1  # BUG: survives across runs of the same seed
            return counter["n"]

        @rt.register_orchestration("Leak::orchestration::main")
        def main(ctx, _):
            return (yield ctx.schedule_activity("Leak::activity::count", None))

    from duroxide_sim.sim.harness import Start

    spec = attrs.evolve(ORDERS_OK, name="leaky", setup=setup, starts=[Start(instance="l", orchestration="Leak::orchestration::main")])
    result = run_and_check(Simulation(spec, 1, None), check_repeat=True)
    assert any(f.checker == "determinism" and "same seed gave a different trace" in f.message for f in result.failures)


def test_same_seed_same_trace_in_another_checkout_directory(tmp_path) -> None:
    """A failing orchestration's error holds a traceback with file paths, and the trace's turn
    digests hash the events: the same spec in another directory (another checkout, another
    machine) gave another trace hash. Frame paths now enter the digest by file name only."""
    import importlib.util
    import textwrap

    source = textwrap.dedent('''
        from duroxide_sim.sim.harness import SimSpec, Start

        def setup(rt, world):
            @rt.register_activity("Boom::activity::check")
            def check(ctx, n):
                raise ValueError(f"bad input {n}")

            @rt.register_orchestration("Boom::orchestration::main")
            def main(ctx, n):
                yield ctx.schedule_activity("Boom::activity::check", n)
                raise RuntimeError("unreachable")

        SPEC = SimSpec(name="boom", setup=setup,
                       starts=[Start(instance=f"b{i}", orchestration="Boom::orchestration::main", input=i) for i in range(3)])
    ''')
    hashes = []
    for n, where in enumerate(("checkout-a", "somewhere/else/checkout-b")):
        path = tmp_path / where / "boom_spec.py"
        path.parent.mkdir(parents=True)
        path.write_text(source)
        module_spec = importlib.util.spec_from_file_location(f"_boom_spec_{n}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        result = Simulation(module.SPEC, 4, None).run()
        assert all(st.status == "Failed" and str(path) in st.error for st in result.statuses.values())
        hashes.append(result.trace_hash)
    assert hashes[0] == hashes[1]
