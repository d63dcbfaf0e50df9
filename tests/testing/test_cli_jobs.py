"""``duroxide-sim run/explore --jobs N``: seeds spread over worker processes, same results as one."""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from duroxide_sim.cli import _aggregate, _jobs, _SeedSummary
from duroxide_sim.cli import main as cli

from .test_cli import BUGGY, GOOD, _write

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Seeds 6, 9 and 15 of 0..29 break idempotency with this plan: the first failure is not seed 0, and
# with --jobs 2 the chunk holding seed 9 may finish before the one holding seed 6.
SPARSE_BUG = '{"rates": {"crash_after_effect": 0.05}}'

# A scenario that works in the parent process but raises (or kills its process) in a worker.
WORKER_ONLY_BOOM = textwrap.dedent('''
    import multiprocessing, os
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        if multiprocessing.parent_process() is not None:
            if os.environ.get("DUROXIDE_TEST_BOOM") == "exit":
                os._exit(3)
            raise RuntimeError("boom in a worker")

        @rt.register_orchestration("O")
        def o(ctx, x):
            yield ctx.schedule_timer(10)
            return x

    SPEC = SimSpec(name="boom", setup=setup, ref=__file__ + ":SPEC", starts=[Start(instance="i", orchestration="O", input=1)])
''')


def _json_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict], str]:
    code = cli(argv)
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["scenarios"]
    for row in rows:
        assert isinstance(row.pop("seconds"), float)
    return code, rows, captured.err


def _children() -> list[tuple[int, str, str]]:
    """(pid, state, command line) of this process's child processes, from /proc."""
    out = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid():
            out.append((int(entry.name), state, cmd))
    return out


def _assert_no_workers_left() -> None:
    if not pathlib.Path("/proc/self/stat").exists():
        return
    left = [c for c in _children() if c[1] == "Z" or "spawn_main" in c[2]]
    assert not left, f"zombie or still-running worker processes: {left}"


def test_run_jobs_2_gives_the_rows_of_jobs_1(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _write(tmp_path, good=GOOD, buggy=BUGGY)
    code1, rows1, _ = _json_run(["run", str(d), "--seeds", "12", "--first-seed", "3", "--json"], capsys)
    code2, rows2, err2 = _json_run(["run", str(d), "--seeds", "12", "--first-seed", "3", "--json", "--jobs", "2"], capsys)
    assert (code2, rows2) == (code1, rows1)
    assert [r["scenario"] for r in rows2] == ["payments-buggy", "payments"] and rows2[1]["seeds"] == 12
    assert "payments: 12/12 seeds, 0 failing" in err2  # progress lines still come (stderr is not a terminal)
    _assert_no_workers_left()


def test_run_jobs_2_on_a_shipped_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(ROOT / "scenarios" / "greetings.py")
    code1, rows1, _ = _json_run(["run", path, "--seeds", "8", "--json"], capsys)
    code2, rows2, _ = _json_run(["run", path, "--seeds", "8", "--json", "--jobs", "2"], capsys)
    assert code1 == code2 == 0
    assert rows2 == rows1 and rows2[0]["faults_injected"] > 0


def test_planted_bug_jobs_2_reports_the_lowest_failing_seed_and_its_repro(tmp_path: pathlib.Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    d = _write(tmp_path, buggy=BUGGY)
    argv = ["run", str(d), "--seeds", "20", "--faults", SPARSE_BUG, "--json"]
    code1, rows1, _ = _json_run(argv, capsys)
    code2, rows2, _ = _json_run([*argv, "--jobs", "2"], capsys)
    assert code1 == code2 == 1
    assert rows2 == rows1
    assert rows2[0]["failures"] == 3  # seeds 6, 9 and 15
    first = rows2[0]["first_failure"]
    assert "(seed 6)" in first and "reproduce: duroxide-sim reproduce" in first and "--seed 6 " in first
    # The human-readable report prints the same repro line.
    assert cli(["run", str(d), "--seeds", "20", "--faults", SPARSE_BUG, "--jobs", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAILED payments-buggy: 3 of 20 seeds" in out
    assert next(line for line in out.splitlines() if line.startswith("reproduce: ")) in first


def test_explore_jobs_2_stops_at_the_same_first_failure(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _write(tmp_path, good=GOOD, buggy=BUGGY)
    argv = ["explore", str(d), "--budget-s", "60", "--faults", SPARSE_BUG, "--json"]
    code1, rows1, _ = _json_run(argv, capsys)
    code2, rows2, _ = _json_run([*argv, "--jobs", "2"], capsys)
    assert code1 == code2 == 1
    assert rows2 == rows1
    assert len(rows2) == 1 and rows2[0]["seeds"] == 7 and rows2[0]["failures"] == 1  # seeds 0..6, then stop
    assert "(seed 6)" in rows2[0]["first_failure"]
    _assert_no_workers_left()


def test_explore_jobs_2_respects_the_time_budget(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _write(tmp_path, good=GOOD)
    began = time.monotonic()
    code, rows, _ = _json_run(["explore", str(d), "--budget-s", "1", "--json", "--jobs", "2"], capsys)
    assert code == 0 and rows[0]["seeds"] >= 1 and rows[0]["failures"] == 0
    assert time.monotonic() - began < 15


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", ""])
@pytest.mark.parametrize("command", ["run", "explore"])
def test_invalid_jobs_is_a_usage_error_naming_the_option(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                                         command: str, value: str) -> None:
    d = _write(tmp_path, good=GOOD)
    assert cli([command, str(d), "--jobs", value]) == 2
    err = capsys.readouterr().err
    assert "argument --jobs" in err and "positive integer or 'auto'" in err


def test_jobs_auto_is_one_per_cpu() -> None:
    assert _jobs("auto") == (os.cpu_count() or 1)
    assert _jobs("3") == 3


def test_a_worker_exception_is_reported_with_scenario_and_seed_and_exit_2(tmp_path: pathlib.Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    d = _write(tmp_path, boom=WORKER_ONLY_BOOM)
    assert cli(["run", str(d), "--seeds", "4"]) == 0  # in-process the scenario is fine
    capsys.readouterr()
    assert cli(["run", str(d), "--seeds", "4", "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert "duroxide-sim: worker error in scenario boom, seed " in err
    assert "RuntimeError: boom in a worker" in err
    assert "Traceback" in err  # the worker's traceback, to find the line
    _assert_no_workers_left()


def test_a_dying_worker_is_reported_and_exit_2(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUROXIDE_TEST_BOOM", "exit")
    d = _write(tmp_path, boom=WORKER_ONLY_BOOM)
    assert cli(["explore", str(d), "--budget-s", "30", "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert "worker error in scenario boom" in err and "a worker process died abruptly" in err
    _assert_no_workers_left()


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists() or sys.platform != "linux", reason="needs /proc and signals")
def test_ctrl_c_stops_the_workers_and_exits_130(tmp_path: pathlib.Path) -> None:
    d = _write(tmp_path, good=GOOD)
    proc = subprocess.Popen([sys.executable, "-m", "duroxide_sim", "run", str(d), "--seeds", "2000", "--jobs", "2"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = proc.stderr.readline()  # "payments: 500/2000 seeds, 0 failing": the workers are busy
        assert "payments: " in first
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted; the worker processes were stopped" in err and "Traceback" not in err
    workers = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == proc.pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                    workers.append(entry.name)
            except OSError:
                continue
    assert not workers, f"workers outlived the command: {workers}"


def test_aggregation_is_in_seed_order_whatever_order_chunks_arrive() -> None:
    summaries = [_SeedSummary(seed, {"crash": seed % 3, "drop": 1} if seed % 2 else {}, f"boom (seed {seed})" if seed in (4, 7) else None,
                              seed % 2) for seed in range(10)]
    expected = _aggregate("s", ["p"], summaries)
    shuffled = summaries[:]
    random.Random(1).shuffle(shuffled)
    assert _aggregate("s", ["p"], shuffled) == expected
    assert expected == {"scenario": "s", "seeds": 10, "faults_injected": 4 + 5, "fault_kinds": ["crash", "drop"],
                        "properties": ["p"], "failures": 2, "first_failure": "boom (seed 4)", "first_failing_seed": 4,
                        "unshrunk_failure": None, "budget_exhausted": 5, "seconds": 0.0}
    # explore: only the seeds up to the lowest failing one count, even when later seeds ran.
    upto = _aggregate("s", ["p"], shuffled, upto=4)
    assert (upto["seeds"], upto["failures"], upto["first_failure"]) == (5, 1, "boom (seed 4)")
    with pytest.raises(ValueError, match="seed 3 was run twice"):
        _aggregate("s", ["p"], [*summaries, summaries[3]])


def test_stopping_a_busy_pool_ends_its_workers_and_its_manager_thread() -> None:
    """_stop_pool (used on Ctrl-C and worker errors) kills running workers and leaves no pool
    thread behind for the interpreter to wait for at exit (a CI run once hung there)."""
    from duroxide_sim.cli import seeds

    with pytest.raises(KeyboardInterrupt):
        with seeds._process_pool(2) as pool:
            for _ in range(6):  # more work than workers; the workers may still be starting
                pool.submit(time.sleep, 30)
            manager = pool._executor_manager_thread
            processes = list(pool._processes.values())
            deadline = time.monotonic() + 20
            while not all(p.is_alive() for p in processes) and time.monotonic() < deadline:
                time.sleep(0.01)
            raise KeyboardInterrupt  # what Ctrl-C raises in the parent while it waits
    assert not any(p.is_alive() for p in processes)
    assert manager is not None and not manager.is_alive()
    assert not seeds.pool_left_running()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_explore_shares_the_budget_between_scenarios(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                                     jobs: str) -> None:
    """Each scenario gets an equal share of what is left of the budget: the first one does not
    take it all (the later ones used to get a single seed each)."""
    d = _write(tmp_path, a=GOOD, b=GOOD.replace('name="payments"', 'name="payments-b"'),
               c=GOOD.replace('name="payments"', 'name="payments-c"'))
    began = time.monotonic()
    code, rows, _ = _json_run(["explore", str(d), "--budget-s", "3", "--json", "--jobs", jobs], capsys)
    elapsed = time.monotonic() - began
    assert code == 0 and [r["scenario"] for r in rows] == ["payments", "payments-b", "payments-c"]
    seeds = [r["seeds"] for r in rows]
    assert min(seeds) >= 5, seeds  # a seed of this scenario takes milliseconds: a ~1 s share runs many
    assert max(seeds) <= 4 * min(seeds), seeds
    assert elapsed < 15


def test_explore_does_not_charge_the_workers_start_up_to_the_first_scenario(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The scenario modules take 1.5 s to import in a worker (planted): the workers are started
    and loaded before the first scenario's share is measured, so it gets a share like the others
    instead of a single seed (the start-up ate its whole third of the budget before)."""
    slow = "import multiprocessing, time\nif multiprocessing.parent_process() is not None:\n    time.sleep(1.5)\n"
    d = _write(tmp_path, a=slow + GOOD, b=slow + GOOD.replace('name="payments"', 'name="payments-b"'),
               c=slow + GOOD.replace('name="payments"', 'name="payments-c"'))
    code, rows, _ = _json_run(["explore", str(d), "--budget-s", "6", "--json", "--jobs", "2"], capsys)
    assert code == 0 and [r["scenario"] for r in rows] == ["payments", "payments-b", "payments-c"]
    seeds = [r["seeds"] for r in rows]
    assert min(seeds) >= 5, seeds
    assert seeds[0] * 4 >= max(seeds), seeds


def test_an_error_while_simulating_in_process_is_not_called_a_worker_error(tmp_path: pathlib.Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """With ``--jobs 1`` there is no worker: a spec whose start input cannot be encoded as JSON
    (an object) stops the run with exit 2 and "error in scenario NAME, seed N: ...", not "worker
    error" (which the same failure reads as under ``--jobs 2``)."""
    bad = GOOD.replace('name="payments"', 'name="bad-input"').replace("input=i)", "input=object())")
    assert "input=object()" in bad
    d = _write(tmp_path, bad=bad)
    assert cli(["run", str(d), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "duroxide-sim: error in scenario bad-input, seed 0: " in err and "worker error" not in err, err
