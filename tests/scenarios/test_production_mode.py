"""Each scenario on the production runtime: SQLite file, dispatcher threads, the wall clock.

The same registration code (``spec.setup(runtime, world)``) and the same invariants as in
simulation, on the module's ``PRODUCTION`` spec: the SPEC's workflow with durations passed as
orchestration input shortened from minutes and hours to milliseconds (and the signals moved
accordingly), so that each run takes a few seconds.
"""

from __future__ import annotations

import pytest

from ._support import SCENARIOS, run_production, scenario

pytestmark = pytest.mark.realtime


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_runs_in_production_mode(name: str, tmp_path) -> None:
    spec = scenario(name).PRODUCTION
    result = run_production(spec, tmp_path / "db.sqlite", timeout_s=10.0)
    problems = result.failures(spec)
    assert not problems, f"{name} in production mode ({result.seconds:.1f} s): " + "; ".join(problems)
    assert result.seconds < 10.0
    # Same workflows as simulated: the production spec starts the same orchestrations.
    assert {s.orchestration for s in spec.starts} == {s.orchestration for s in scenario(name).SPEC.starts}
