"""``duroxide-sim run`` / ``explore`` / ``reproduce`` on a user's own scenario directory.

Each test asserts what a demanding user expects. Found by a probe in session 6 and fixed: a
broken module stopped every other scenario (now reported with its file, the others still run,
exit 2), some broken modules gave tracebacks or messages without the file; a wrong relative
import reported a misleading error; a flat directory could not import its own ``_helper.py``;
repro lines of package scenarios with relative imports failed; a second in-process run of
another directory with the same package name reused the first's modules; the printed repro
line was hard-wrapped; flat scenarios without ``ref`` had no repro command; ``reproduce`` of a
spec whose setup raises gave a traceback; a seed that raised in-process lost every row; a bad
``--faults`` was reported as a loading failure; ``--json`` broke when scenario code printed;
brackets in scenario names were rich markup and control characters reached the terminal;
Ctrl-C in-process gave a traceback; SIGTERM left ``--jobs`` workers running; an unknown
``--variants`` name got a misleading message; a livelocked scenario took minutes to reach
``max_steps`` (the 1-in-3 from-scratch check of cached turns made a run quadratic in its history
length; it now thins out as histories grow) and ``run`` had no ``--max-steps``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from duroxide_sim.cli import main as cli

# A scenario: `charge` is idempotent unless BUG is set (then crash_after_effect breaks idempotency).
SCENARIO = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start
    {imports}

    def setup(rt, world):
        @rt.register_activity("charge")
        def charge(ctx, oid):
            {effect}
            return "ok"

        @rt.register_orchestration("pay")
        def pay(ctx, oid):
            yield ctx.schedule_timer(1000)
            return (yield ctx.schedule_activity("charge", oid))

    SPEC = SimSpec(name={name!r}, setup=setup, {ref}
                   starts=[Start(instance=f"p{{i}}", orchestration="pay", input=i) for i in range({count})])
''')

IDEMPOTENT = 'world.put_if_absent(f"charged:{oid}", True)'
NOT_IDEMPOTENT = 'world.incr("charges")'
BUG_FAULTS = '{"rates": {"crash_after_effect": 0.3}}'


def scenario(name: str = "payments", *, bug: bool = False, ref: bool = True, imports: str = "", count: str = "3",
             effect: str | None = None) -> str:
    return SCENARIO.format(imports=imports, effect=effect or (NOT_IDEMPOTENT if bug else IDEMPOTENT), name=name,
                           ref='ref=__file__ + ":SPEC",' if ref else "", count=count)


def write_dir(where: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    where.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        p = where / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return where


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_sub(args: list[str], cwd: pathlib.Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duroxide_sim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def paste(line: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """Run a printed ``duroxide-sim reproduce ...`` line in a shell, as a user pasting it would."""
    script = f'duroxide-sim() {{ {shlex.quote(sys.executable)} -m duroxide_sim "$@"; }}\n{line}\n'
    return subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def repro_of(first_failure: str) -> str:
    line = next(ln for ln in first_failure.splitlines() if ln.startswith("reproduce: "))
    return line[len("reproduce: "):]


def session_processes(sid: int) -> list[int]:
    out = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) == sid:
                    out.append(int(entry.name))
    return out


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append(f"{pid}: " + pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
    return out


def kill_session(sid: int) -> None:
    """Cleanup: end the processes this test started (its own session), by pid."""
    for pid in session_processes(sid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def wait_for_text(path: pathlib.Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


# --- one broken module among good ones --------------------------------------------------------

BROKEN = {
    "missing_dependency": ("import nonexistent_dependency_xyz\n", [], "kaputt_mod"),
    "syntax_error": ("def f(:\n    pass\n", [], "kaputt_mod"),
    "raises_at_import": ('raise RuntimeError("config file missing")\n', [], "kaputt_mod"),
    "spec_not_a_simspec": ("SPEC = 42\n", [], "kaputt_mod"),
    "setup_raises": (textwrap.dedent('''
        from duroxide_sim.sim.harness import SimSpec
        def setup(rt, world):
            raise RuntimeError("setup boom")
        SPEC = SimSpec(name="boom", setup=setup, starts=[])
    '''), [], "boom"),
    "variants_not_a_dict": (scenario("kaputt").replace("SPEC = SimSpec", 'VARIANTS = ["a", "b"]\nSPEC = SimSpec'),
                            ["--variants", "all"], "kaputt_mod"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_module_is_a_usage_error_naming_it_without_a_traceback(tmp_path: pathlib.Path, kind: str) -> None:
    text, extra, named = BROKEN[kind]
    good = scenario("payments")
    files = {"good.py": good, "kaputt_mod.py": text}
    if kind == "variants_not_a_dict":
        files["good.py"] = good.replace("SPEC = SimSpec", "VARIANTS = {}\nSPEC = SimSpec")
    d = write_dir(tmp_path / "scen", files)
    proc = run_sub(["run", str(d), "--seeds", "2", "--faults", "none", *extra], cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert named in proc.stderr, f"the broken module/scenario {named!r} is not named: {proc.stderr!r}"


def test_a_wrong_relative_import_reports_the_real_import_error(tmp_path: pathlib.Path) -> None:
    """`from ._common import MISSING` in a package: the user must see that MISSING is missing,
    not an unrelated 'attempted relative import with no known parent package'."""
    pkg = f"scen_{uuid.uuid4().hex[:8]}"
    d = write_dir(tmp_path / pkg, {"__init__.py": "", "_common.py": "N = 3\n",
                                   "good.py": scenario(imports="from ._common import N, MISSING", count="N")})
    proc = run_sub(["run", str(d), "--seeds", "2"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "MISSING" in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_the_other_scenarios_still_run_when_one_module_is_broken(tmp_path: pathlib.Path, kind: str) -> None:
    text, extra, _named = BROKEN[kind]
    good = scenario("payments")
    if kind == "variants_not_a_dict":
        good += '\nVARIANTS = {"same": SPEC}\n'  # a target under --variants all: "payments/same"
    d = write_dir(tmp_path / "scen", {"good.py": good, "kaputt_mod.py": text})
    proc = run_sub(["run", str(d), "--seeds", "2", "--faults", "none", "--json", *extra], cwd=tmp_path)
    assert proc.returncode == 2
    data = json.loads(proc.stdout)  # the good scenario's row is still reported
    assert [r["scenario"] for r in data["scenarios"] if r["scenario"].startswith("payments")], data


def test_a_module_without_spec_is_skipped_and_the_others_run(tmp_path: pathlib.Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    d = write_dir(tmp_path / "scen", {"good.py": scenario(), "helpers.py": "X = 1\n"})
    code, out, _err = run_cli(["run", str(d), "--seeds", "2", "--json"], capsys)
    assert code == 0
    assert [r["scenario"] for r in json.loads(out)["scenarios"]] == ["payments"]


# --- imports between scenario modules -----------------------------------------------------------

def test_a_flat_directory_scenario_can_import_its_underscore_helper(tmp_path: pathlib.Path) -> None:
    """`_*.py` files are skipped as helpers; in a directory without __init__.py the only way to use
    one is `from _common import ...` (as `python good.py` or pytest would allow)."""
    d = write_dir(tmp_path / "flat", {"_common.py": "N = 2\n", "good.py": scenario(imports="from _common import N", count="N")})
    proc = run_sub(["run", str(d), "--seeds", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("jobs", ["1", "2", "auto"])
def test_package_scenarios_with_relative_absolute_and_subpackage_imports(tmp_path: pathlib.Path, jobs: str) -> None:
    pkg = f"scen_{uuid.uuid4().hex[:8]}"
    imports = f"from ._common import N\nfrom {pkg}.common import NAME\nfrom .lib.helpers import EFFECT"
    files = {"__init__.py": "", "_common.py": "N = 3\n", "common.py": 'NAME = "payments"\n',
             "lib/__init__.py": "", "lib/helpers.py": "EFFECT = 1\n",
             "good.py": scenario(imports=imports, count="N"),
             "single.py": scenario("single", imports="from ._common import N", count="N")}
    d = write_dir(tmp_path / pkg, files)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_sub(["run", str(d), "--seeds", "6", "--json", "--jobs", jobs], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)["scenarios"]
    assert sorted(r["scenario"] for r in rows) == ["payments", "single"] and all(r["seeds"] == 6 for r in rows)
    # One file of the package, by path.
    proc = run_sub(["run", str(d / "good.py"), "--seeds", "3", "--json", "--jobs", jobs], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_reproduce_line_of_a_package_scenario_with_relative_imports_reproduces(tmp_path: pathlib.Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    pkg = f"scen_{uuid.uuid4().hex[:8]}"
    d = write_dir(tmp_path / pkg, {"__init__.py": "", "_common.py": "N = 3\n",
                                   "buggy.py": scenario("buggy", bug=True, imports="from ._common import N", count="N")})
    code, out, _ = run_cli(["run", str(d), "--seeds", "5", "--faults", BUG_FAULTS, "--json"], capsys)
    assert code == 1
    first = json.loads(out)["scenarios"][0]["first_failure"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = paste(repro_of(first), cwd=elsewhere)
    assert proc.returncode == 1, proc.stderr
    assert first.splitlines()[0] in proc.stdout


def test_a_second_in_process_run_of_another_directory_with_the_same_package_name(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main() called twice in one process (a test suite, a notebook) on two directories that are
    both packages named `samepkg_probe`: the second run must run the second directory's scenarios."""
    a = write_dir(tmp_path / "a" / "samepkg_probe", {"__init__.py": "", "good.py": scenario("alpha")})
    b = write_dir(tmp_path / "b" / "samepkg_probe", {"__init__.py": "", "good.py": scenario("beta")})
    code, out, _ = run_cli(["run", str(a), "--seeds", "1", "--faults", "none", "--json"], capsys)
    assert code == 0 and [r["scenario"] for r in json.loads(out)["scenarios"]] == ["alpha"]
    code, out, _ = run_cli(["run", str(b), "--seeds", "1", "--faults", "none", "--json"], capsys)
    assert code == 0 and [r["scenario"] for r in json.loads(out)["scenarios"]] == ["beta"]


# --- the printed reproduce line -----------------------------------------------------------------

def test_the_printed_reproduce_line_reproduces_when_pasted_from_another_directory(tmp_path: pathlib.Path) -> None:
    d = write_dir(tmp_path / "scen", {"good.py": scenario(), "buggy.py": scenario("payments-buggy", bug=True)})
    proc = run_sub(["run", str(d), "--seeds", "5", "--faults", BUG_FAULTS], cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("reproduce: "))
    failure_line = lines[at - 1] if not lines[at - 1].startswith("(") else lines[at - 2]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pasted = paste(lines[at][len("reproduce: "):], cwd=elsewhere)
    assert pasted.returncode == 1, f"the printed line {lines[at]!r} does not run: {pasted.stderr[-800:]}"
    assert "idempotency [" in pasted.stdout and "(seed " in pasted.stdout, (failure_line, pasted.stdout)


def test_a_flat_scenario_without_ref_still_gets_a_reproduce_command(tmp_path: pathlib.Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """repro_command finds a ref-less spec as a module-level name of its module; the CLI loaded the
    module from a known file, so the failure must come with a command that works."""
    d = write_dir(tmp_path / "flat", {"buggy.py": scenario("buggy", bug=True, ref=False)})
    code, out, _ = run_cli(["run", str(d), "--seeds", "5", "--faults", BUG_FAULTS, "--json"], capsys)
    assert code == 1
    first = json.loads(out)["scenarios"][0]["first_failure"]
    assert repro_of(first).startswith("duroxide-sim reproduce "), first
    proc = paste(repro_of(first), cwd=tmp_path)
    assert proc.returncode == 1 and first.splitlines()[0] in proc.stdout


@pytest.mark.parametrize("faults", ["swarm", "all", BUG_FAULTS])
def test_repro_from_an_unusual_directory_name_reproduces_the_same_failure(tmp_path: pathlib.Path, faults: str,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    d = write_dir(tmp_path / "it's my scen (v2)", {"buggy.py": scenario("buggy", bug=True)})
    code, out, _ = run_cli(["run", str(d), "--seeds", "20", "--faults", faults, "--json"], capsys)
    assert code == 1
    first = json.loads(out)["scenarios"][0]["first_failure"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = paste(repro_of(first), cwd=elsewhere)
    assert proc.returncode == 1, proc.stderr
    assert first.splitlines()[0] in proc.stdout


def test_reproduce_of_a_spec_whose_setup_raises_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "boom.py").write_text(BROKEN["setup_raises"][0])
    proc = run_sub(["reproduce", "boom.py:SPEC", "--seed", "0"], cwd=tmp_path)
    assert proc.returncode == 2, proc.returncode
    assert "setup boom" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]


# --- a seed that raises -------------------------------------------------------------------------

SOME_SEEDS_RAISE = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        @rt.register_orchestration("O")
        def o(ctx, x):
            yield ctx.schedule_timer(10)
            return x

    def starts(rng):
        if rng.random() > 0.8:  # not seed 0 (the pre-check seed), but seed 3
            raise RuntimeError("starts boom")
        return [Start(instance="i", orchestration="O", input=1)]

    SPEC = SimSpec(name="midrun", setup=setup, ref=__file__ + ":SPEC", starts=starts)
''')


def test_a_seed_that_raises_in_process_is_reported_as_with_jobs(tmp_path: pathlib.Path) -> None:
    """README: with --jobs N a worker that raises is reported with its scenario and seed (exit 2),
    and --jobs N gives the same results as one process."""
    d = write_dir(tmp_path / "scen", {"midrun.py": SOME_SEEDS_RAISE})
    jobs = run_sub(["run", str(d), "--seeds", "10", "--faults", "none", "--jobs", "2"], cwd=tmp_path)
    # (which worker's error is reported first depends on which chunk fails first)
    assert jobs.returncode == 2 and "scenario midrun, seed" in jobs.stderr and "starts boom" in jobs.stderr
    one = run_sub(["run", str(d), "--seeds", "10", "--faults", "none"], cwd=tmp_path)
    assert one.returncode == 2, (one.returncode, one.stderr[-600:])
    assert "midrun" in one.stderr and "seed 3" in one.stderr and "starts boom" in one.stderr


# --- --faults ------------------------------------------------------------------------------------

@pytest.mark.parametrize("faults", ["{not json", "[]", '{"rates": {"nope": 0.1}}', '{"rates": {"crash": 3}}', '{"rate": {}}'])
def test_a_bad_faults_value_is_a_usage_error_about_faults(tmp_path: pathlib.Path, faults: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    d = write_dir(tmp_path / "scen", {"good.py": scenario()})
    code, _out, err = run_cli(["run", str(d), "--seeds", "1", "--faults", faults], capsys)
    assert code == 2 and "Traceback" not in err
    assert "fault" in err.lower()
    assert "cannot load scenarios" not in err, f"the scenarios loaded fine; the --faults value is wrong: {err!r}"
    code, _out, err = run_cli(["reproduce", str(d / "good.py") + ":SPEC", "--seed", "0", "--faults", faults], capsys)
    assert code == 2 and "Traceback" not in err


# --- --json and exit codes ----------------------------------------------------------------------

NOISY = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start

    print("printed at import")

    def setup(rt, world):
        print("printed in setup")
        rt.register_orchestration("Hello", lambda ctx, x: x)

    SPEC = SimSpec(name="noisy", setup=setup, starts=[Start(instance="h", orchestration="Hello", input=1)])
''')


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_json_stays_one_document_when_scenario_code_prints_at_import(tmp_path: pathlib.Path, jobs: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A scenario that prints when imported or set up: its output went to stdout before the JSON
    document (the modules were loaded, and each spec checked once, outside the redirect), so
    the document did not parse. ``reproduce --json`` likewise."""
    d = write_dir(tmp_path / "scen", {"noisy.py": NOISY})
    code, out, err = run_cli(["run", str(d), "--seeds", "2", "--jobs", jobs, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["ok"] is True
    assert "printed at import" in err and "printed in setup" in err
    code, out, err = run_cli(["reproduce", str(d / "noisy.py") + ":SPEC", "--seed", "0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["spec"] == "noisy", out


def test_json_lists_the_scenarios_it_left_out(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A module that cannot load left the other scenarios running and exited 2, but the JSON
    document said ``"ok": true`` and did not name it."""
    d = write_dir(tmp_path / "scen", {"good.py": scenario(), "broken.py": "import no_such_module_xyz\n"})
    code, out, err = run_cli(["run", str(d), "--seeds", "2", "--faults", "none", "--json"], capsys)
    assert code == 2, err
    data = json.loads(out)
    assert data["ok"] is False
    assert [e["scenario"] for e in data["load_errors"]] == [str(d / "broken.py")] or \
        any("broken" in e["scenario"] for e in data["load_errors"]), data["load_errors"]
    assert "no_such_module_xyz" in data["load_errors"][0]["problem"]

def test_json_is_one_document_with_stable_keys_matching_the_table(tmp_path: pathlib.Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    d = write_dir(tmp_path / "scen", {"good.py": scenario(), "buggy.py": scenario("payments-buggy", bug=True)})
    argv = ["run", str(d), "--seeds", "8", "--faults", BUG_FAULTS]
    code, out, _ = run_cli([*argv, "--json"], capsys)
    assert code == 1
    data = json.loads(out)
    assert set(data) == {"ok", "scenarios", "load_errors"} and data["ok"] is False and data["load_errors"] == []
    keys = {"scenario", "seeds", "faults_injected", "fault_kinds", "properties", "failures", "first_failure",
            "first_failing_seed", "unshrunk_failure", "budget_exhausted", "seconds"}
    assert all(set(r) == keys for r in data["scenarios"])
    code2, table, _ = run_cli(argv, capsys)
    assert code2 == 1
    for r in data["scenarios"]:
        row = next(ln for ln in table.splitlines() if re.match(rf"│ {re.escape(r['scenario'])}\s+│", ln))
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[1:4] == [str(r["seeds"]), str(r["faults_injected"]), str(len(r["fault_kinds"]))]
        assert cells[5] == str(r["failures"])
    # --jobs 2 gives the same document except seconds.
    code3, out3, _ = run_cli([*argv, "--json", "--jobs", "2"], capsys)
    strip = lambda doc: [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(doc)["scenarios"]]  # noqa: E731
    assert code3 == 1 and strip(out3) == strip(out)


def test_json_stays_one_valid_document_when_scenario_code_prints(tmp_path: pathlib.Path) -> None:
    noisy = scenario(effect='print("debug: charging", oid); world.put_if_absent(f"charged:{oid}", True)')
    d = write_dir(tmp_path / "scen", {"noisy.py": noisy})
    for jobs in ("1", "2"):
        proc = run_sub(["run", str(d), "--seeds", "2", "--faults", "none", "--json", "--jobs", jobs], cwd=tmp_path)
        assert proc.returncode == 0
        json.loads(proc.stdout)  # stdout is the JSON document only


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_exit_codes(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], jobs: str) -> None:
    good = write_dir(tmp_path / "good", {"good.py": scenario()})
    mixed = write_dir(tmp_path / "mixed", {"good.py": scenario(), "buggy.py": scenario("payments-buggy", bug=True)})
    j = ["--jobs", jobs]
    assert cli(["run", str(good), "--seeds", "3", *j]) == 0
    assert cli(["run", str(mixed), "--seeds", "5", "--faults", BUG_FAULTS, *j]) == 1
    assert cli(["run", str(mixed), "--seeds", "5", "--faults", "none", *j]) == 0
    assert cli(["explore", str(mixed), "--budget-s", "5", "--faults", BUG_FAULTS, *j]) == 1
    assert cli(["explore", str(good), "--budget-s", "0.5", *j]) == 0
    assert cli(["run", str(good / "good.py"), "--seeds", "2", *j]) == 0
    assert cli(["run", str(good / "nope.py"), *j]) == 2
    capsys.readouterr()


# --- unusual scenario names ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pay[/]x", "[bold]pay[/bold]", "pay[red]ments"])
def test_scenario_names_with_brackets_are_printed_literally(tmp_path: pathlib.Path, name: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    d = write_dir(tmp_path / "scen", {"good.py": scenario(name)})
    code, out, err = run_cli(["run", str(d), "--seeds", "2", "--faults", "none"], capsys)
    assert code == 0 and "Traceback" not in err
    assert name in out, out


def test_control_characters_in_a_scenario_name_do_not_reach_the_terminal_raw(tmp_path: pathlib.Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """As `duroxide-sim show` does for instance ids: an escape sequence or newline in a name is
    printed escaped, not executed by the terminal."""
    d = write_dir(tmp_path / "scen", {"good.py": scenario("pay\x1b[2Jments\nnext")})
    code, out, err = run_cli(["run", str(d), "--seeds", "2", "--faults", "none"], capsys)
    assert code == 0
    assert "\x1b" not in out and "\x1b" not in err


# --- a scenario that never ends -----------------------------------------------------------------

LIVELOCK = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        @rt.register_activity("Poll")
        def poll(ctx, x):
            return x

        @rt.register_orchestration("Forever")
        def forever(ctx, x):
            while True:  # a poller that never finishes (in the simulated world)
                yield ctx.schedule_activity("Poll", x)

    SPEC = SimSpec(name="forever", setup=setup, ref=__file__ + ":SPEC",
                   starts=[Start(instance="i", orchestration="Forever", input=1)])
''')


def _start(args: list[str], tmp_path: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path, pathlib.Path]:
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    proc = subprocess.Popen([sys.executable, "-m", "duroxide_sim", *args], cwd=tmp_path, stdout=out.open("w"),
                            stderr=err.open("w"), start_new_session=True)
    return proc, out, err


def test_ctrl_c_during_an_in_process_run_is_a_clean_message(tmp_path: pathlib.Path) -> None:
    d = write_dir(tmp_path / "scen", {"good.py": scenario()})
    proc, _out, err = _start(["run", str(d), "--seeds", "4000"], tmp_path)
    try:
        assert wait_for_text(err, "payments: 1000/4000", 30)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        kill_session(proc.pid)
    text = err.read_text()
    assert "Traceback" not in text, text[-1500:]
    assert proc.returncode == 130 and "interrupted" in text


def test_sigint_to_the_parent_only_during_explore_jobs_2(tmp_path: pathlib.Path) -> None:
    d = write_dir(tmp_path / "scen", {"good.py": scenario()})
    proc, _out, err = _start(["explore", str(d), "--budget-s", "60", "--jobs", "2"], tmp_path)
    try:
        time.sleep(3)
        os.kill(proc.pid, signal.SIGINT)  # `kill -INT <pid>`: the workers do not get it
        proc.wait(timeout=30)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and session_processes(proc.pid):
            time.sleep(0.2)
        left = describe(session_processes(proc.pid))
    finally:
        kill_session(proc.pid)
    assert proc.returncode == 130 and "Traceback" not in err.read_text()
    assert not left, f"worker processes outlived the command: {left}"


def test_sigterm_during_a_jobs_2_run_leaves_no_orphan_workers(tmp_path: pathlib.Path) -> None:
    """`kill <pid>`, `timeout 60 duroxide-sim ...` and CI cancellation send SIGTERM to the command."""
    d = write_dir(tmp_path / "scen", {"good.py": scenario()})
    proc, _out, err = _start(["run", str(d), "--seeds", "20000", "--jobs", "2"], tmp_path)
    try:
        assert wait_for_text(err, "payments: 5000/20000", 40)
        proc.terminate()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and session_processes(proc.pid):
            time.sleep(0.2)
        left = describe(session_processes(proc.pid))
    finally:
        kill_session(proc.pid)
    assert not left, f"worker processes kept running after the command was terminated: {left}"


def test_an_unknown_variant_name_says_so(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_dir(tmp_path / "scen", {"good.py": scenario() + '\nVARIANTS = {"double-charge": SPEC}\n'})
    code, _out, err = run_cli(["run", str(d), "--seeds", "1", "--variants", "duoble-charge"], capsys)
    assert code == 2
    assert "duoble-charge" in err and "double-charge" in err, err  # the typo and what exists


LIVELOCK = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        rt.register_activity("Poll", lambda ctx, x: x)

        @rt.register_orchestration("Forever")
        def forever(ctx, x):
            while True:  # BUG: never ends (no exit condition, no continue-as-new)
                yield ctx.schedule_activity("Poll", x)

    SPEC = SimSpec(name="livelock", setup=setup, starts=[Start(instance="l", orchestration="Forever", input=1)])
''')


def test_max_steps_bounds_a_livelocked_scenario(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``run --max-steps`` ends each seed of a scenario that never quiesces, as a liveness
    failure whose repro line carries the same bound."""
    d = write_dir(tmp_path / "scen", {"livelock.py": LIVELOCK})
    code, out, err = run_cli(["run", str(d), "--seeds", "1", "--faults", "none", "--max-steps", "3000", "--json"], capsys)
    assert code == 1, err
    row = json.loads(out)["scenarios"][0]
    assert "no quiescence within 3000 steps" in row["first_failure"]
    assert "--max-steps 3000" in row["first_failure"]
