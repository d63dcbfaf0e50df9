"""Print the per-scenario simulation timings measured by test_correct_scenarios."""

from __future__ import annotations

from ._support import TIMINGS


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001, ANN201
    if not TIMINGS:
        return
    terminalreporter.section("scenario simulation timings (FaultPlan.all(0.05), faulty run + fault-free twin per seed)")
    wall_total = cpu_total = 0.0
    for name, (seeds, wall, cpu) in TIMINGS.items():
        wall_total += wall
        cpu_total += cpu
        terminalreporter.write_line(
            f"{name:16s} {seeds:5d} seeds  wall {wall:8.1f} s ({seeds / wall:7.2f} seeds/s)  cpu {cpu:8.1f} s ({seeds / cpu:7.2f} seeds/s)"
        )
    terminalreporter.write_line(f"{'total':16s}              wall {wall_total:8.1f} s                     cpu {cpu_total:8.1f} s")
