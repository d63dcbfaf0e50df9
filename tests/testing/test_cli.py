"""The duroxide-sim command line: run / explore / reproduce, progress, tables, exit codes."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from duroxide_sim.cli import main as cli

GOOD = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        @rt.register_activity("Pay::activity::charge")
        def charge(ctx, oid):
            world.put_if_absent(f"charged:{oid}", True)
            return "ok"

        @rt.register_orchestration("Pay::orchestration::pay")
        def pay(ctx, oid):
            yield ctx.schedule_timer(1000)
            return (yield ctx.schedule_activity("Pay::activity::charge", oid))

    SPEC = SimSpec(name="payments", setup=setup, ref=__file__ + ":SPEC",
                   starts=[Start(instance=f"p{i}", orchestration="Pay::orchestration::pay", input=i) for i in range(3)])
''')

BUGGY = GOOD.replace('world.put_if_absent(f"charged:{oid}", True)', 'world.incr("charges")').replace('"payments"', '"payments-buggy"')


def _write(tmp_path: pathlib.Path, **files: str) -> pathlib.Path:
    d = tmp_path / "scen"
    d.mkdir()
    for name, text in files.items():
        (d / f"{name}.py").write_text(text)
    return d


def _run(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duroxide_sim", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_run_shows_progress_table_and_exits_0(tmp_path: pathlib.Path) -> None:
    d = _write(tmp_path, good=GOOD)
    proc = _run("run", str(d), "--seeds", "40", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "payments: 40/40 seeds, 0 failing" in proc.stderr  # progress (not a terminal: plain lines)
    assert "scenario properties under faults" in proc.stdout
    assert "payments" in proc.stdout and "determinism" in proc.stdout
    assert "all properties held" in proc.stdout


def test_run_with_a_planted_bug_exits_1_and_prints_the_repro(tmp_path: pathlib.Path) -> None:
    d = _write(tmp_path, good=GOOD, buggy=BUGGY)
    proc = _run("run", str(d), "--seeds", "40", "--faults", '{"rates": {"crash_after_effect": 0.3}}', cwd=tmp_path)
    assert proc.returncode == 1
    assert "FAILED payments-buggy" in proc.stdout
    repro = next(line for line in proc.stdout.splitlines() if line.startswith("reproduce: "))
    assert "duroxide-sim reproduce" in repro and "--seed" in repro


def test_run_json_output(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _write(tmp_path, good=GOOD)
    assert cli(["run", str(d), "--seeds", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert data["scenarios"][0]["scenario"] == "payments" and data["scenarios"][0]["seeds"] == 5


def test_explore_stops_at_the_first_failure(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _write(tmp_path, buggy=BUGGY)
    code = cli(["explore", str(d), "--budget-s", "60", "--faults", '{"rates": {"crash_after_effect": 0.3}}', "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    row = data["scenarios"][0]
    assert row["failures"] == 1 and row["seeds"] < 1000
    assert "idempotency" in row["first_failure"]


def test_explore_respects_the_time_budget(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _write(tmp_path, good=GOOD)
    assert cli(["explore", str(d), "--budget-s", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scenarios"][0]["seeds"] >= 1


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "no/such/dir"],
        ["run", "."],  # a directory with no scenario modules
        ["run", "scen", "--faults", "{not json"],
        ["reproduce", "nocolon", "--seed", "1"],
        ["reproduce", "scen/good.py:MISSING", "--seed", "1"],
        ["frobnicate"],
        [],
        # Nonsense numbers are usage errors (0 seeds used to report "all properties held").
        ["run", "scen", "--seeds", "0"],
        ["run", "scen", "--seeds", "-1"],
        ["run", "scen", "--nodes", "0"],
        ["run", "scen", "--rate", "1.5"],
        ["run", "scen", "--rate", "nan"],
        ["explore", "scen", "--budget-s", "-1"],
        ["explore", "scen", "--budget-s", "inf"],
        ["reproduce", "scen/good.py:SPEC", "--seed", "1", "--nodes", "0"],
    ],
)
def test_usage_errors_exit_2(tmp_path: pathlib.Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, good=GOOD)
    monkeypatch.chdir(tmp_path)
    assert cli(argv) == 2


def test_python_dash_m_entry_point(tmp_path: pathlib.Path) -> None:
    proc = _run("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "reproduce" in proc.stdout and "replay" in proc.stdout


def test_a_scenario_that_cannot_run_is_a_usage_error_naming_the_reason(tmp_path: pathlib.Path) -> None:
    """A typo in a start's orchestration name used to pass every seed (the start never ran and
    nothing could call it stuck); now the scenario is refused before any seed runs."""
    typo = GOOD.replace('orchestration="Pay::orchestration::pay"', 'orchestration="Pay::orchestration::pya"')
    d = _write(tmp_path, typo=typo)
    proc = _run("run", str(d), "--seeds", "5", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "scenario payments cannot run" in proc.stderr
    assert "'Pay::orchestration::pya', which its setup does not register (registered: 'Pay::orchestration::pay')" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_property_that_raises_is_a_failing_property_with_a_repro(tmp_path: pathlib.Path) -> None:
    crashing = GOOD.replace(
        'SPEC = SimSpec(name="payments", setup=setup,',
        'def charged_everything(result):\n    return result.statuses["nobody"]\n\n'
        'SPEC = SimSpec(name="payments", setup=setup, invariants=[charged_everything],')
    d = _write(tmp_path, crashing=crashing)
    proc = _run("run", str(d), "--seeds", "3", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "invariants (seed 0): charged_everything: raised KeyError: 'nobody' (at " in proc.stdout
    assert "duroxide-sim reproduce" in proc.stdout and "Traceback" not in proc.stderr


def test_reproduce_with_an_unwritable_timeline_path_is_a_usage_error(tmp_path: pathlib.Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, good=GOOD)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_directory").mkdir()
    assert cli(["reproduce", "scen/good.py:SPEC", "--seed", "1", "--timeline", "a_directory"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the timeline to a_directory" in err and "Traceback" not in err


def test_run_on_a_directory_whose_scenarios_sit_in_subdirectories_says_where_they_are(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only a directory's own modules are scenarios; a team that grouped them one level down
    (scen/billing/*.py) is told which subdirectories to name instead of only "no scenario
    modules"; a directory with nothing below gets no hint."""
    d = _write(tmp_path)
    (d / "billing").mkdir()
    (d / "billing" / "good.py").write_text(GOOD)
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.py").write_text("")
    assert cli(["run", str(d)]) == 2
    err = capsys.readouterr().err
    assert "no scenario modules" in err and "subdirectories are not searched" in err, err
    assert str(d / "billing") in err and "__pycache__" not in err, err
    assert cli(["run", str(d / "billing"), "--seeds", "1"]) == 0
    capsys.readouterr()
    (d / "billing" / "good.py").unlink()
    assert cli(["run", str(d)]) == 2
    assert "subdirectories" not in capsys.readouterr().err
