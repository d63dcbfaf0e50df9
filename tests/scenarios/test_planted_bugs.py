"""Each planted bug is found, by the checker that exists for it, within a few seeds.

For every variant: search seeds ``0..K-1`` (K stated per case, a little above the number of
seeds the search needs today) under the fault plan that exposes the bug; the first failure of
the expected checker must name the culprit (activity, instance, order, message...) and render
a ``duroxide-sim reproduce scenarios/<file>.py:<NAME> --seed N ...`` line, and running that
line must reproduce a failure (exit code 1).
"""

from __future__ import annotations

import shlex

import attrs
import pytest

from duroxide_sim.cli import main as cli_main
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation

from ._support import ROOT, SCENARIOS, scenario


@attrs.frozen
class Planted:
    module: str
    attr: str  # module-level name of the variant SimSpec
    plan: FaultPlan
    seeds: int  # K: seeds 0..K-1 are searched
    checker: str
    culprit: tuple[str, ...]  # all must appear in the failure message
    nodes: int = 2
    sandbox: bool = False

    @property
    def ref(self) -> str:
        return f"scenarios/{self.module}.py:{self.attr}"


PLANTED = [
    # Teardown relies on a process-local handle: a crash (new process) skips the compensation.
    Planted("provisioning", "IN_MEMORY_TEARDOWN", FaultPlan.only("crash", rate=0.1), 5, "invariants",
            ("failed_provisioning_leaves_nothing_behind", "db-4", "deployment:db-4"), nodes=1),
    # random.randint() inside the orchestration: the sandbox names the call and the line.
    Planted("instance_actor", "JITTERED_INTERVAL", FaultPlan.none(), 3, "sandbox",
            ("dbaas::orchestration::instance_actor", "random.randint() (global RNG)", "instance_actor.py:"), sandbox=True),
    # Frees the addresses it is given without checking ownership: a re-delivery frees twice.
    Planted("deletion", "NON_IDEMPOTENT_FREE", FaultPlan.only("crash_after_effect", rate=0.3), 10, "idempotency",
            ("dbaas::activity::release_ips", "pool:free")),
    # Reserve and charge concurrently, assuming the reservation completes first.
    Planted("order_saga", "PARALLEL_RESERVE_AND_CHARGE", FaultPlan.only("reorder", rate=0.5), 5, "invariants",
            ("expected_outcomes: order o-", "nothing reserved for o-")),
    # v2 deployed in place by a rolling restart: in-flight v1 histories replay differently.
    Planted("approval", "ROLLING_DEPLOY", FaultPlan.only("crash", rate=0.05), 5, "determinism",
            ("replay from scratch diverged", "schedule mismatch", "approvals::activity::notify", "approval-req-")),
    # Usage metering counted per delivery, not per item written.
    Planted("batch_fanout", "NON_IDEMPOTENT_METERING", FaultPlan.only("crash_after_effect", rate=0.1), 5, "idempotency",
            ("batch::activity::process_batch", "items_written")),
    # wait_for_event instead of dequeue_event: messages arriving while busy or between executions are dropped.
    Planted("mailbox", "POSITIONAL_INBOX", FaultPlan.none(), 3, "invariants",
            ("no_message_lost_or_duplicated", "alice", "messages lost", "a-burst-")),
    # Continue-as-new with a backlog over the carry-forward limit (20): the overflow is dropped.
    Planted("mailbox", "NO_DRAIN_BEFORE_CAN", FaultPlan.only("lock_expiry", "commit_lost", rate=0.2), 10, "invariants",
            ("no_message_lost_or_duplicated", "alice", "messages lost")),
]


def _first_hit(case: Planted):
    spec = getattr(scenario(case.module), case.attr)
    for seed in range(case.seeds):
        result = run_and_check(Simulation(spec, seed, case.plan, nodes=case.nodes, sandbox=case.sandbox))
        for failure in result.failures:
            if failure.checker == case.checker and all(c in failure.message for c in case.culprit):
                return seed, failure
    raise AssertionError(f"{case.ref}: no {case.checker} failure naming {case.culprit} in seeds 0..{case.seeds - 1}")


def test_every_variant_has_a_case() -> None:
    covered = {(c.module, c.attr) for c in PLANTED}
    for name in SCENARIOS:
        module = scenario(name)
        assert module.VARIANTS, f"scenarios/{name}.py plants no bug"
        for key, spec in module.VARIANTS.items():
            attr = spec.ref.rsplit(":", 1)[1]
            assert getattr(module, attr) is spec, f"{spec.ref} does not resolve to VARIANTS[{key!r}]"
            assert (name, attr) in covered, f"no planted-bug test for {spec.ref}"


@pytest.mark.parametrize("case", PLANTED, ids=lambda c: f"{c.module}-{c.attr}")
def test_planted_bug_is_caught(case: Planted, monkeypatch, capsys) -> None:
    seed, failure = _first_hit(case)
    rendered = failure.render()
    head = f"reproduce: duroxide-sim reproduce {case.ref} --seed {seed} --provider memory --nodes {case.nodes}"
    assert head in rendered, rendered
    assert ("--sandbox" in rendered) == case.sandbox
    # The repro line reproduces the failure.
    argv = shlex.split(rendered.split("reproduce: ", 1)[1])
    assert argv[0] == "duroxide-sim"
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    assert cli_main(argv[1:]) == 1
    out = capsys.readouterr().out
    assert f"{case.checker}" in out and case.culprit[0] in out
    with capsys.disabled():  # visible with -s / -rA: how many seeds the search needed
        print(f"\n{case.ref}: {case.checker} caught it at seed {seed} ({seed + 1} of K={case.seeds} seeds searched)")
