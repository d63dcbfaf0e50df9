"""Print the per-scenario simulation timings measured by test_correct_scenarios."""

from __future__ import annotations

from ._support import TIMINGS


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001, ANN201
    if not TIMINGS:
        return
    terminalreporter.section("scenario simulation timings (FaultPlan.all(0.05), faulty run + fault-free twin per seed)")
    total = 0.0
    for name, (seeds, seconds) in TIMINGS.items():
        total += seconds
        terminalreporter.write_line(f"{name:16s} {seeds:5d} seeds {seconds:9.1f} s  {seeds / seconds:8.2f} seeds/s")
    terminalreporter.write_line(f"{'total':16s} {'':5s}       {total:9.1f} s")
