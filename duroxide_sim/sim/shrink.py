"""Shrinking the fault plan of a failing seed to a smaller one that fails the same way.

A seed that fails under a random (or swarm) plan usually injected dozens of faults, of which one
or two matter. :func:`shrink_failure` looks for the smallest *scripted* plan ("inject ``kind``
at its n-th opportunity", :meth:`.faults.FaultPlan.scripted`) under which the same seed still
fails with the same checker, re-running and re-checking every candidate. Used by
``duroxide-sim run`` / ``explore`` (:func:`..cli.seeds.shrink_rows`) and by the pytest plugin's
``simulate`` fixture, so the failure a user reads names only the faults that cause it.
"""

from __future__ import annotations

from typing import Any

from .checkers import run_and_check
from .faults import FaultPlan
from .harness import Simulation

__all__ = ["SHRINK_RUNS", "shrink_failure"]


#: Simulations a shrink may run for one failing scenario (each is one seed's run and check).
SHRINK_RUNS = 60


def shrink_failure(spec: Any, seed: int, plan: Any, sim_kwargs: dict[str, Any], *,
                   max_runs: int = SHRINK_RUNS, original: Any = None) -> tuple[Any, str] | None:
    """A smaller plan that fails ``seed`` with the same checker as ``plan`` does, as
    ``(result, note)``; None when there is nothing smaller (or it fails differently).

    Tried in order, within ``max_runs`` simulations: no faults at all; each fault the run
    injected, alone (as a scripted plan: "``kind`` at its n-th opportunity"), earliest first;
    then all of them as a script, removing one at a time while the failure stays, pass after
    pass until none can go (each remaining fault is needed, unless the runs ran out). The random
    plan's other draws (restart delays, which node crashes) differ under a script, so each
    candidate is run and checked, never assumed. ``original``: the failing run of ``plan`` when
    the caller has it already (it is not run again)."""
    budget = [max_runs]

    def run(candidate: Any) -> Any:
        if budget[0] <= 0:
            return None
        budget[0] -= 1
        return run_and_check(Simulation(spec, seed, candidate, **sim_kwargs))

    if original is None:
        original = run(plan)
    if original is None or not original.failures or not original.fired:
        return None
    plan = original.plan  # the plan as run ("swarm" is drawn from the seed)
    checker = original.failures[0].checker

    def same(result: Any) -> bool:
        return result is not None and any(f.checker == checker for f in result.failures)

    injected = len(original.fired)
    origin = f"seed {seed}'s plan ({plan.describe()}) injected {injected} fault{'s' if injected != 1 else ''}"
    bare = run(FaultPlan.none())
    if same(bare):
        return bare, f"shrunk: {origin}; it fails the same way with no faults at all"
    fired = list(dict.fromkeys(original.fired))
    for entry in fired:
        alone = run(FaultPlan.scripted([entry], plan.until_ms))
        if same(alone):
            return alone, f"shrunk: {origin}; the one fault {entry[1]} at opportunity {entry[0]} fails it the same way"
    if len(fired) < 2:
        return None
    script, best = fired, run(FaultPlan.scripted(fired, plan.until_ms))
    if not same(best):
        return None
    # Passes over the script until one removes nothing: a fault kept in an early pass may become
    # removable once later ones are gone (a single pass left plans with faults still to spare).
    # Scripts known to pass (each fault alone, above) are not run again.
    no_failure = {(entry,) for entry in fired}
    changed = True
    while changed and budget[0] > 0:
        changed = False
        i = 0
        while i < len(script) and budget[0] > 0:
            trial = script[:i] + script[i + 1:]
            result = None if tuple(trial) in no_failure else run(FaultPlan.scripted(trial, plan.until_ms))
            if same(result):
                script, best = trial, result
                changed = True
            else:
                if result is not None:
                    no_failure.add(tuple(trial))
                i += 1
    return best, (f"shrunk: {origin}; these {len(script)} of them fail it the same way"
                  + (" (shrinking stopped at its limit of runs)" if budget[0] <= 0 else ""))
