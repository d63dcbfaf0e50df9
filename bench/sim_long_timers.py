"""Benchmark: a workflow with a 30-day timer and a 7-day retry back-off, simulated.

The simulated clock jumps to each next deadline, so virtual months cost microseconds. Prints
one JSON line with the median/min/max wall time over fresh runs (each run builds a new world).
Usage: python bench/sim_long_timers.py [runs]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

from duroxide_sim import Backoff
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.harness import Simulation, SimSpec, Start

DAY = 24 * 3600 * 1000


def setup(rt, world):
    @rt.register_activity("Renew::activity::renew_certificate")
    def renew(ctx, name):
        tries = world.incr(f"tries:{name}")
        if tries < 3:
            raise ConnectionError("CA unavailable")
        return f"renewed {name}"

    @rt.register_orchestration("Renew::orchestration::monthly")
    def monthly(ctx, name):
        yield ctx.schedule_timer(30 * DAY)
        policy = {"max_attempts": 5, "backoff": Backoff.fixed(7 * DAY)}
        return (yield ctx.schedule_activity_with_retry("Renew::activity::renew_certificate", name, policy))


SPEC = SimSpec(
    name="long-timers",
    setup=setup,
    starts=[Start(instance="cert-1", orchestration="Renew::orchestration::monthly", input="example.org")],
    horizon_ms=400 * DAY,
    fault_transparent=False,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="?", type=int, default=7, help="fresh runs to time (default 7)")
    runs = ap.parse_args(argv).runs
    if runs < 1:
        ap.error("runs must be >= 1")
    times = []
    virtual_days = None
    for seed in range(runs):
        started = time.perf_counter()
        result = run_and_check(Simulation(SPEC, seed, None))
        times.append(time.perf_counter() - started)
        status = result.statuses["cert-1"]
        assert result.ok and status.status == "Completed" and status.output == "renewed example.org", result.failures
        virtual_days = result.end_ms / DAY
    print(json.dumps({
        "benchmark": "sim_long_timers",
        "virtual_days": round(virtual_days, 2),
        "runs": runs,
        "median_s": round(statistics.median(times), 5),
        "min_s": round(min(times), 5),
        "max_s": round(max(times), 5),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "ok": True,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
