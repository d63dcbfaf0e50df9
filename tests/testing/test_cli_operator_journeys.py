"""An operator / CI engineer driving ``duroxide-sim`` from a shell, end to end in subprocesses.

README ("Command line"): exit codes 0 all good, 1 a property failed or a history diverged, 2 usage
or input error; ``--json`` (run, explore, reproduce, replay) gives machine-readable output, and
with ``--json`` stdout holds only the JSON document; the printed ``reproduce`` line is one line,
ready to paste; Ctrl-C stops cleanly; ``replay``/``export``/``show`` read a database through an
in-memory copy (never changing it).

What is not repeated here (see test_cli*.py, test_scenario_author_journeys.py,
test_hostile_history_io.py, test_restore_journeys.py, test_ci_replay_code_changes.py): Ctrl-C and
SIGTERM during ``run``/``explore`` seeds, corrupt export files, bad ``--faults``, huge seed counts,
broken scenario modules in a directory.

Found by this file and fixed (each of these tests failed before): an over-long path gave an
OSError traceback and exit 1 (a finding) on every command; ``run ""`` (an unset variable) ran
every module of the current directory; ``run --json`` printed nothing when no module loaded;
``show`` of a text file without trace records printed nothing and exited 0; ``good.py:`` and
``:SPEC`` gave no hint of what a ref looks like; output into a closed pipe gave BrokenPipeError tracebacks; ``export``/``show``/
``replay`` created -wal/-shm files beside a cleanly closed database; Ctrl-C while loading the app
or the scenarios gave a KeyboardInterrupt traceback (now "interrupted", exit 130).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parents[2]

# The same clean spec and planted bug (a non-idempotent activity) as the command-line tests.
from .test_cli import BUGGY, GOOD  # noqa: E402

CRASHY = '{"rates": {"crash_after_effect": 0.3}}'

APP = textwrap.dedent('''
    def register(rt):
        @rt.register_activity("Inc")
        def inc(ctx, x):
            return x + 1

        @rt.register_orchestration("Work")
        def work(ctx, n):
            x = yield ctx.schedule_activity("Inc", n)
            yield ctx.schedule_timer(5)
            return (yield ctx.schedule_activity("Inc", x))
''')

#: A "production" process: a real Runtime on a SQLite file, starting instances for a while.
WRITER = textwrap.dedent('''
    import sqlite3, sys, time
    from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
    from duroxide_sim.testing.replay import load_app

    db, seconds = sys.argv[1], float(sys.argv[2])
    provider = SqliteProvider.open(db)
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    load_app("app.py:register")(rt)
    rt.start()
    client = Client(provider)
    started, i = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.start_orchestration(f"w{i}", "Work", i)
        started.append(f"w{i}")
        i += 1
        if i == 5:
            print("ready", flush=True)
        time.sleep(0.02)
    bad = [s for s in started if client.wait_for_orchestration(s, 20000).status != "Completed"]
    rt.shutdown(2000)
    provider.close()
    check = sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]
    print(f"DONE started={len(started)} bad={len(bad)} integrity={check}", flush=True)
''')


def _cli(*args: str, cwd: pathlib.Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duroxide_sim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))


def _cli_to_closed_pipe(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """stdout is a pipe whose reader is already gone (``... | head -1`` after head exited)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "duroxide_sim", *args], stdout=w, stderr=subprocess.PIPE,
                              text=True, cwd=cwd, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        os.close(w)


def _scen(tmp_path: pathlib.Path, **files: str) -> pathlib.Path:
    d = tmp_path / "scen"
    d.mkdir()
    for name, text in files.items():
        (d / f"{name}.py").write_text(text)
    return d


def _usage_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert proc.stdout == "", proc.stdout[:500]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-1500:])


def _session_processes(sid: int) -> list[str]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


def _interrupt_when(args: list[str], cwd: pathlib.Path, marker: str) -> tuple[int, str, str, list[str]]:
    """Start the CLI in its own session, wait for ``marker`` on stderr, press Ctrl-C (SIGINT to
    the process group); return code, stdout, stderr and processes of the session left behind."""
    proc = subprocess.Popen([sys.executable, "-m", "duroxide_sim", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        seen = ""
        deadline = time.monotonic() + 30
        while marker not in seen and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert marker in seen, seen
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        left_deadline = time.monotonic() + 5
        while _session_processes(proc.pid) and time.monotonic() < left_deadline:
            time.sleep(0.1)
        left = _session_processes(proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    return proc.returncode, out, seen + err, left


# --- arguments and input files ---------------------------------------------------------------------


def test_an_over_long_path_argument_is_an_input_error_on_every_command(tmp_path: pathlib.Path) -> None:
    """The operator pastes a garbled 5000-character path (a variable expanded twice, a log line):
    every command must say it cannot use that path and exit 2 - not die with an
    ``OSError: File name too long`` traceback and exit 1 (which CI reads as "a property failed")."""
    long = "a" * 5000
    (tmp_path / "app.py").write_text(APP)
    wrong = []
    for args in (["run", long, "--seeds", "1"], ["explore", long, "--budget-s", "1"],
                 ["reproduce", f"{long}.py:SPEC", "--seed", "1"], ["show", long], ["export", long, "--out", "o"],
                 ["import", long, "--db", "x.db"], ["replay", long, "--app", "app.py:register", "--no-hash-seed-check"]):
        proc = _cli(*args, cwd=tmp_path)
        if proc.returncode != 2 or "Traceback" in proc.stderr:
            wrong.append((args[0], proc.returncode, proc.stderr.strip().splitlines()[-1][:60]))
    assert not wrong, wrong


def test_an_empty_path_argument_is_refused_not_taken_as_the_current_directory(tmp_path: pathlib.Path) -> None:
    """``duroxide-sim run "$SCENARIOS"`` with the variable unset passes ``""``: the command must
    refuse it (exit 2, naming the problem), not quietly run every ``*.py`` in the working
    directory as scenarios (here: a stray script that must never be imported)."""
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "stray.py").write_text("import pathlib\npathlib.Path('STRAY_RAN').write_text('x')\n")
    proc = _cli("run", "", "--seeds", "1", "--faults", "none", cwd=tmp_path)
    assert not (tmp_path / "STRAY_RAN").exists(), "the empty path imported the working directory's modules"
    _usage_error(proc)


def test_counts_that_are_zero_negative_or_not_numbers_are_usage_errors_naming_the_option(tmp_path: pathlib.Path) -> None:
    """``--seeds 0``, ``--nodes -1``, ``--max-steps 0``, ``--jobs 0``, ``--budget-s -5``,
    ``--rate 2``: exit 2, nothing on stdout, stderr names the option and the value."""
    d = _scen(tmp_path, good=GOOD)
    for option, value in (("--seeds", "0"), ("--nodes", "-1"), ("--max-steps", "0"), ("--jobs", "0"),
                          ("--budget-s", "-5"), ("--rate", "2"), ("--seeds", "ten")):
        _usage_error(_cli("run", str(d), option, value, cwd=tmp_path), f"argument {option}", repr(value))
    for option, value in (("--nodes", "0"), ("--max-steps", "-3"), ("--seed", "x")):
        _usage_error(_cli("reproduce", f"{d}/good.py:SPEC", "--seed", "1", option, value, cwd=tmp_path),
                     f"argument {option}")


def test_options_the_command_would_ignore_are_refused_not_silently_dropped(tmp_path: pathlib.Path) -> None:
    """``--rate`` with a plan other than ``all`` (swarm draws its own rates, none has none),
    ``--budget-s`` on ``run`` (it runs every seed whatever the time) and ``--seeds`` on
    ``explore`` (it runs seeds until the budget ends) used to be accepted and ignored: exit 2,
    nothing on stdout, stderr names the option and what it is for. The same options where they
    apply still run."""
    d = _scen(tmp_path, good=GOOD)
    for args, option in ((["run", str(d), "--seeds", "1", "--faults", "none", "--rate", "0.5"], "--rate"),
                         (["run", str(d), "--seeds", "1", "--faults", "swarm", "--rate", "0.2"], "--rate"),
                         (["run", str(d), "--seeds", "1", "--budget-s", "5"], "--budget-s"),
                         (["explore", str(d), "--budget-s", "1", "--seeds", "3"], "--seeds")):
        _usage_error(_cli(*args, cwd=tmp_path), option, "does not apply")
    ok = _cli("run", str(d), "--seeds", "2", "--faults", "all", "--rate", "0.2", "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert [row["seeds"] for row in json.loads(ok.stdout)["scenarios"]] == [2]
    ok = _cli("explore", str(d), "--budget-s", "0.5", "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_unknown_options_and_a_missing_subcommand_are_usage_errors_on_stderr(tmp_path: pathlib.Path) -> None:
    """A typo'd option on any subcommand, or no subcommand at all: exit 2 with the usage on
    stderr, stdout empty (a CI step piping stdout into a JSON parser gets nothing, not help text)."""
    for args in (["run", ".", "--sedes", "3"], ["reproduce", "x.py:S", "--seed", "1", "--tarce"],
                 ["replay", "x.db", "--app", "a.py:r", "--lastest"], ["export", "x.db", "--out", "o", "--all"],
                 ["import", "x", "--db", "y.db", "--force"], ["show", "x.db", "--id", "i"], ["restore", "x"]):
        _usage_error(_cli(*args, cwd=tmp_path), "usage: duroxide-sim")
    proc = _cli(cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_modules_that_are_not_utf8_or_hold_nul_bytes_are_load_errors_naming_the_file(tmp_path: pathlib.Path) -> None:
    """A Latin-1 saved scenario and a binary file named ``.py``: ``run`` and ``reproduce`` name the
    file and the decoding problem, exit 2, no traceback; ``run --json`` still prints one document
    with ``ok: false`` and the file under ``load_errors``."""
    (tmp_path / "latin.py").write_bytes(b'NAME = "\xe9t\xe9"\n')
    (tmp_path / "binary.py").write_bytes(b"\xff\xfe\x00\x01SPEC")
    for name in ("latin.py", "binary.py"):
        _usage_error(_cli("run", name, "--seeds", "1", cwd=tmp_path), name)
        _usage_error(_cli("reproduce", f"{name}:SPEC", "--seed", "1", cwd=tmp_path), name)
    proc = _cli("run", "latin.py", "--seeds", "1", "--json", cwd=tmp_path)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["scenarios"] == [] and "latin.py" in doc["load_errors"][0]["scenario"]


def test_paths_of_the_wrong_kind_are_input_errors(tmp_path: pathlib.Path) -> None:
    """A directory where a file is expected (``reproduce dir.py:SPEC``, ``import ... --db dir``),
    an empty file (``run empty.py``), a text file given as a database (``export``/``show``/
    ``replay``) and a JSON-lines trace given to ``import``: exit 2, one message, no traceback,
    and nothing written."""
    (tmp_path / "dir.py").mkdir()
    (tmp_path / "empty.py").write_text("")
    (tmp_path / "notes.txt").write_text("not a database\n")
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "good.py").write_text(GOOD)
    trace = _cli("reproduce", "good.py:SPEC", "--seed", "1", "--faults", "none", "--trace", cwd=tmp_path)
    (tmp_path / "run.jsonl").write_text(trace.stdout)
    _usage_error(_cli("reproduce", "dir.py:SPEC", "--seed", "1", cwd=tmp_path), "dir.py")
    _usage_error(_cli("run", "empty.py", "--seeds", "1", cwd=tmp_path), "empty.py")
    _usage_error(_cli("run", "dir.py", "--seeds", "1", cwd=tmp_path), "dir.py")
    _usage_error(_cli("export", "notes.txt", "--out", "out", cwd=tmp_path), "not a SQLite database")
    _usage_error(_cli("show", "notes.txt", cwd=tmp_path))
    _usage_error(_cli("replay", "notes.txt", "--app", "app.py:register", "--no-hash-seed-check", cwd=tmp_path))
    _usage_error(_cli("import", "run.jsonl", "--db", "new.db", cwd=tmp_path), "run.jsonl")
    assert not (tmp_path / "out").exists() and not (tmp_path / "new.db").exists()
    assert (tmp_path / "notes.txt").read_text() == "not a database\n"


def test_a_ref_without_a_usable_name_says_what_a_ref_looks_like(tmp_path: pathlib.Path) -> None:
    """``reproduce good.py``, ``good.py:`` and ``:SPEC`` (the ``:NAME`` or the path lost in
    copy-paste): exit 2 and the hint ``path/to/file.py:NAME`` - not ``has no attribute ''`` or an
    ``Empty module name`` error pointing into the standard library's importlib."""
    (tmp_path / "good.py").write_text(GOOD)
    for ref in ("good.py", "good.py:", ":SPEC"):
        proc = _cli("reproduce", ref, "--seed", "1", cwd=tmp_path)
        _usage_error(proc, "path/to/file.py:NAME")
        assert "importlib" not in proc.stderr, proc.stderr


def test_a_ref_to_something_that_is_not_a_simspec_or_raises_at_import(tmp_path: pathlib.Path) -> None:
    """``reproduce`` of a module-level int, of a ``register`` function, and of a module that
    raises while imported: exit 2 naming the ref and what it is (or the exception), no traceback;
    with ``--json`` stdout stays empty."""
    (tmp_path / "odd.py").write_text("X = 42\n\ndef register(rt):\n    pass\n")
    (tmp_path / "boom.py").write_text("print('importing boom')\nraise RuntimeError('config missing')\n")
    _usage_error(_cli("reproduce", "odd.py:X", "--seed", "1", cwd=tmp_path), "odd.py:X is a int, not a SimSpec")
    _usage_error(_cli("reproduce", "odd.py:register", "--seed", "1", cwd=tmp_path), "not a SimSpec")
    proc = _cli("reproduce", "boom.py:SPEC", "--seed", "1", "--json", cwd=tmp_path)
    _usage_error(proc, "RuntimeError: config missing")
    assert "importing boom" in proc.stderr


# --- --json output ---------------------------------------------------------------------------------


def test_reproduce_json_with_trace_is_json_lines_with_the_summary_last(tmp_path: pathlib.Path) -> None:
    """``reproduce --json --trace`` in CI (the trace wanted as an artifact, the summary parsed):
    stdout is JSON lines - every trace record one JSON object per line, the summary the last line
    (README; tests/sim/test_user_property_journeys.py pastes repro lines this way). Nothing that
    is not JSON reaches stdout."""
    (tmp_path / "good.py").write_text(GOOD)
    proc = _cli("reproduce", "good.py:SPEC", "--seed", "1", "--faults", "none", "--json", "--trace", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert len(records) > 2 and records[0]["op"] == "begin" and records[-2]["op"] == "end"
    assert records[-1]["spec"] == "payments" and "trace_sha256" in records[-1]


def test_json_documents_on_success_and_on_a_finding_have_stable_shapes(tmp_path: pathlib.Path) -> None:
    """``run --json`` / ``reproduce --json`` of a clean and of a buggy scenario: stdout parses as
    one document (progress lines stay on stderr), the top-level keys are the same either way, and
    the exit code says which (0 / 1); the run row's reproduce line is the one reproduce reports."""
    d = _scen(tmp_path, good=GOOD, buggy=BUGGY)
    proc = _cli("run", str(d), "--seeds", "3", "--faults", CRASHY, "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-800:]
    doc = json.loads(proc.stdout)
    assert set(doc) == {"ok", "scenarios", "load_errors"} and doc["ok"] is False
    rows = {r["scenario"]: r for r in doc["scenarios"]}
    assert set(rows["payments"]) == set(rows["payments-buggy"])
    assert rows["payments"]["failures"] == 0 and rows["payments-buggy"]["failures"] >= 1
    repro = next(line for line in rows["payments-buggy"]["first_failure"].splitlines() if line.startswith("reproduce: "))
    args = _shell_args(repro)
    rep = _cli(*args, "--json", cwd=tmp_path)
    assert rep.returncode == 1
    summary = json.loads(rep.stdout)
    clean = json.loads(_cli("reproduce", f"{d}/good.py:SPEC", "--seed", "0", "--json", cwd=tmp_path).stdout)
    assert set(summary) == set(clean)
    assert summary["failures"][0]["repro"] == repro.removeprefix("reproduce: ")


def test_replay_json_is_a_list_on_stdout_and_nothing_on_an_input_error(tmp_path: pathlib.Path) -> None:
    """``replay --json`` of a clean export prints ``[]`` and exits 0; of a source that does not
    exist, exits 2 with stdout empty (no half document) and the message on stderr."""
    (tmp_path / "app.py").write_text(APP)
    _record(tmp_path, seconds=0.3)
    assert _cli("export", "app.db", "--out", "ex", cwd=tmp_path).returncode == 0
    proc = _cli("replay", "ex", "--app", "app.py:register", "--json", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [], proc.stderr
    _usage_error(_cli("replay", "missing.db", "--app", "app.py:register", "--json", cwd=tmp_path), "missing.db")


# --- pipes ---------------------------------------------------------------------------------------------


def test_run_json_into_a_closed_pipe_prints_no_traceback(tmp_path: pathlib.Path) -> None:
    """``duroxide-sim run scen --json | head -1`` where the reader is gone: no
    ``BrokenPipeError`` traceback on stderr (the conventional quiet exit of a filter)."""
    d = _scen(tmp_path, good=GOOD)
    proc = _cli_to_closed_pipe("run", str(d), "--seeds", "2", "--faults", "none", "--json", cwd=tmp_path)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr[-800:]


def test_reproduce_trace_into_a_closed_pipe_prints_no_traceback(tmp_path: pathlib.Path) -> None:
    """``duroxide-sim reproduce spec.py:SPEC --seed 1 --trace | head -1``: the trace is long, head
    leaves after one line; stderr must not get a ``BrokenPipeError`` traceback."""
    (tmp_path / "good.py").write_text(GOOD)
    proc = _cli_to_closed_pipe("reproduce", "good.py:SPEC", "--seed", "1", "--trace", cwd=tmp_path)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr[-800:]


def test_run_table_into_a_closed_pipe_prints_no_traceback(tmp_path: pathlib.Path) -> None:
    """The table (rich output) into a closed pipe: no traceback on stderr either."""
    d = _scen(tmp_path, good=GOOD)
    proc = _cli_to_closed_pipe("run", str(d), "--seeds", "2", "--faults", "none", cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]


# --- reproduce lines -----------------------------------------------------------------------------------


def _shell_args(repro_line: str) -> list[str]:
    import shlex

    words = shlex.split(repro_line.removeprefix("reproduce: "))
    assert words[:2] == ["duroxide-sim", "reproduce"], words
    return words[1:]


def test_pasted_reproduce_lines_reproduce_the_failure_byte_for_byte_with_non_default_options(
        tmp_path: pathlib.Path) -> None:
    """A run with ``--provider sqlite --nodes 3 --max-steps 20000 --sandbox --no-shrink`` and one
    with shrinking: each printed reproduce line, pasted, exits 1 and prints the very failure text
    (checker, instance, step, message) the run printed, and the same repro line."""
    d = _scen(tmp_path, buggy=BUGGY)
    for extra in (["--provider", "sqlite", "--nodes", "3", "--max-steps", "20000", "--sandbox", "--no-shrink"], []):
        proc = _cli("run", str(d), "--seeds", "3", "--faults", CRASHY, *extra, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr[-800:]
        lines = proc.stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("FAILED payments-buggy"))
        failure, repro = lines[at + 1], lines[at + 2]
        assert repro.startswith("reproduce: ")
        for option in extra:
            if option.startswith("--") and option != "--no-shrink":
                assert option in repro, (option, repro)
        rep = _cli(*_shell_args(repro), cwd=tmp_path)
        assert rep.returncode == 1, rep.stderr[-800:]
        out = rep.stdout.splitlines()
        assert failure in out and repro in out, (failure, repro, rep.stdout)


# --- a live database ----------------------------------------------------------------------------------


def _record(cwd: pathlib.Path, seconds: float) -> None:
    (cwd / "writer.py").write_text(WRITER)
    done = subprocess.run([sys.executable, "writer.py", "app.db", str(seconds)], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "DONE" in done.stdout and "bad=0" in done.stdout, done.stderr[-1500:]


def test_export_show_and_replay_of_a_database_a_live_runtime_is_writing(tmp_path: pathlib.Path) -> None:
    """While a real Runtime keeps starting and finishing instances in ``app.db``, the operator
    runs ``export``, ``show`` and ``replay``: each finishes promptly with exit 0, and the live
    system is neither blocked nor corrupted (every instance it started completes, integrity_check
    is ok)."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "writer.py").write_text(WRITER)
    writer = subprocess.Popen([sys.executable, "writer.py", "app.db", "3"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert writer.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        exp = _cli("export", "app.db", "--out", "ex", cwd=tmp_path, timeout=20)
        shw = _cli("show", "app.db", "--instance", "w0", cwd=tmp_path, timeout=20)
        rpl = _cli("replay", "app.db", "--app", "app.py:register", "--no-hash-seed-check", cwd=tmp_path, timeout=20)
        elapsed = time.monotonic() - t0
        out, err = writer.communicate(timeout=40)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert exp.returncode == 0 and exp.stdout.startswith("exported "), exp.stderr
    assert shw.returncode == 0 and "w0" in shw.stdout, shw.stderr
    assert rpl.returncode == 0 and "replays cleanly" in rpl.stdout, rpl.stdout + rpl.stderr
    assert elapsed < 15
    assert "bad=0 integrity=ok" in out, out + err[-1500:]
    assert (tmp_path / "ex").is_dir() and any((tmp_path / "ex").glob("*.json"))


def test_export_and_replay_never_change_the_database_file(tmp_path: pathlib.Path) -> None:
    """``export``/``show``/``replay`` of a finished database leave its bytes (and its
    write-ahead-log companions) exactly as they were, even when the file is read-only."""
    (tmp_path / "app.py").write_text(APP)
    _record(tmp_path, seconds=0.3)
    db = tmp_path / "app.db"
    before = {p.name: p.read_bytes() for p in tmp_path.glob("app.db*")}
    db.chmod(0o444)
    assert _cli("export", "app.db", "--out", "one.json", "--instance", "w0", cwd=tmp_path).returncode == 0
    assert _cli("show", "app.db", cwd=tmp_path).returncode == 0
    assert _cli("replay", "app.db", "--app", "app.py:register", "--no-hash-seed-check", cwd=tmp_path).returncode == 0
    assert {p.name: p.read_bytes() for p in tmp_path.glob("app.db*")} == before
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- Ctrl-C ----------------------------------------------------------------------------------------------

SLOW_IMPORT = textwrap.dedent('''
    import sys, time
    print("loading slow module", file=sys.stderr, flush=True)
    time.sleep(20)
''')


def test_ctrl_c_while_replay_loads_the_app_is_a_clean_interruption(tmp_path: pathlib.Path) -> None:
    """The app module takes long to import (a slow network mount, heavy dependencies); the
    operator presses Ctrl-C: ``replay`` says it was interrupted and exits 130 - no
    ``KeyboardInterrupt`` traceback - like ``run`` and ``reproduce`` do during their seeds."""
    (tmp_path / "app.py").write_text(APP)
    _record(tmp_path, seconds=0.2)
    (tmp_path / "slow.py").write_text(SLOW_IMPORT + APP)
    code, _out, err, left = _interrupt_when(["replay", "app.db", "--app", "slow.py:register"], tmp_path,
                                            "loading slow module")
    assert "Traceback" not in err, err[-1500:]
    assert code == 130 and "interrupted" in err, (code, err[-500:])
    assert not left, left


def test_ctrl_c_while_run_imports_the_scenarios_is_a_clean_interruption(tmp_path: pathlib.Path) -> None:
    """Ctrl-C while ``run`` is still importing a slow scenario module (before any seed): a
    message, exit 130, no traceback."""
    d = _scen(tmp_path, slow=SLOW_IMPORT + GOOD)
    code, _out, err, left = _interrupt_when(["run", str(d), "--seeds", "2"], tmp_path, "loading slow module")
    assert "Traceback" not in err, err[-1500:]
    assert code == 130 and "interrupted" in err, (code, err[-500:])
    assert not left, left


def test_ctrl_c_while_shrinking_with_jobs_2_is_clean_and_leaves_no_processes(tmp_path: pathlib.Path) -> None:
    """``run --jobs 2`` found failures and is shrinking their plans (in the parent) when the
    operator presses Ctrl-C: exit 130 with a message, no traceback, no worker process left in the
    session."""
    slow_bug = BUGGY.replace('world.incr("charges")', 'world.incr("charges"); __import__("time").sleep(0.05)')
    d = _scen(tmp_path, buggy=slow_bug)
    code, _out, err, left = _interrupt_when(["run", str(d), "--seeds", "4", "--jobs", "2", "--faults", CRASHY],
                                            tmp_path, "shrinking")
    assert "Traceback" not in err, err[-1500:]
    assert code == 130 and "interrupted" in err, (code, err[-500:])
    assert not left, left
